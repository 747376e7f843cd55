"""The error family: one base to catch everything vzdask raises on purpose, the builtin bases kept."""

from __future__ import annotations

import numpy as np
import pytest

import vzdask
from vzdask import errors
from vzdask.combine import CFEncodingMismatchError as from_combine
from vzdask.manifests.metadata import create_array_metadata
from vzdask.manifests.store import ReadOnlyStoreError as from_store
from vzdask.mfdataset import FileOpenError as from_mfdataset
from vzdask.parsers import ParseError as from_parsers


@pytest.mark.parametrize(
    "error, builtin",
    [
        (errors.ParseError, ValueError),
        (errors.ChunkReadError, OSError),
        (errors.CombineError, ValueError),
        (errors.CFEncodingMismatchError, ValueError),
        (errors.FileOpenError, RuntimeError),
        (errors.ReadOnlyStoreError, PermissionError),
    ],
)
def test_each_error_is_a_vzdask_error_and_its_builtin(error, builtin):
    assert issubclass(error, errors.VzdaskError)
    assert issubclass(error, builtin)


def test_old_import_locations_are_the_same_classes():
    assert from_parsers is errors.ParseError
    assert from_combine is errors.CFEncodingMismatchError
    assert from_store is errors.ReadOnlyStoreError
    assert from_mfdataset is errors.FileOpenError
    assert issubclass(errors.CFEncodingMismatchError, errors.CombineError)


def _array(length: int, chunk: int) -> vzdask.ManifestArray:
    metadata = create_array_metadata(shape=(length,), chunk_shape=(chunk,), dtype=np.dtype("f4"))
    return vzdask.ManifestArray(metadata, vzdask.ChunkManifest.empty((-(-length // chunk),)))


def test_concatenate_refusal_is_a_combine_error():
    """A partial last chunk inside the result: CombineError (still a ValueError), naming the array and sizes."""
    with pytest.raises(errors.CombineError, match="array 0 has length 31, not a multiple of the chunk size 10"):
        np.concatenate([_array(31, 10), _array(20, 10)])
    with pytest.raises(errors.CombineError, match="chunk_shape differs"):  # along the other axis
        np.stack([_array(30, 10), _array(30, 5)])
    # chunked differently along the concatenation axis: a rectilinear grid, not an error
    assert np.concatenate([_array(30, 10), _array(20, 5)]).chunk_sizes == ((10, 10, 10, 5, 5, 5, 5),)
