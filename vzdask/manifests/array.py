"""ManifestArray: zarr v3 array metadata plus the manifest of its chunks."""

from __future__ import annotations

import math
import operator
from typing import Any

import numpy as np
from zarr.core.metadata.v3 import ArrayV3Metadata

from vzdask.manifests.manifest import ChunkManifest
from vzdask.manifests.metadata import (
    as_array_metadata,
    check_ndim_change_allowed,
    chunk_grid_shape,
    chunk_shape,
    replace_metadata,
)


class ManifestArray:
    """An immutable virtual array: what it is (metadata) and where its chunks are (manifest).

    Parameters
    ----------
    metadata : zarr.core.metadata.v3.ArrayV3Metadata or dict
        Zarr v3 array metadata with a regular chunk grid.
    chunkmanifest : ChunkManifest
        One entry per chunk; its shape must equal the chunk grid's shape.

    Notes
    -----
    Combining (``np.concatenate``, ``np.stack``, ``np.expand_dims``,
    ``np.broadcast_to``) and chunk-aligned indexing work on the references
    alone and keep inlined and missing chunks as they are. Anything that would
    need the values raises an error that says why.
    """

    __slots__ = ("_metadata", "_manifest")
    __array_priority__ = 100

    def __init__(self, metadata: ArrayV3Metadata | dict[str, Any], chunkmanifest: ChunkManifest) -> None:
        metadata = as_array_metadata(metadata)
        if not isinstance(chunkmanifest, ChunkManifest):
            raise TypeError(f"chunkmanifest must be a ChunkManifest, not {type(chunkmanifest).__name__}")
        grid = chunk_grid_shape(metadata)
        if chunkmanifest.shape != grid:
            if grid == () and chunkmanifest.shape == (1,):
                chunkmanifest = chunkmanifest.map_grid(lambda a: a.reshape(()))
            else:
                raise ValueError(
                    f"manifest has chunk grid {chunkmanifest.shape} but an array of shape {tuple(metadata.shape)} "
                    f"with chunks {chunk_shape(metadata)} has chunk grid {grid}"
                )
        self._metadata = metadata
        self._manifest = chunkmanifest

    # -- description --------------------------------------------------------

    @property
    def metadata(self) -> ArrayV3Metadata:
        return self._metadata

    @property
    def manifest(self) -> ChunkManifest:
        return self._manifest

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self._metadata.shape)

    @property
    def dtype(self) -> np.dtype:
        return self._metadata.data_type.to_native_dtype()

    @property
    def ndim(self) -> int:
        return len(self._metadata.shape)

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        """Decoded size in bytes, as for a numpy array (``manifest.nbytes`` is the references' cost)."""
        return self.size * self.dtype.itemsize

    @property
    def chunk_shape(self) -> tuple[int, ...]:
        """Shape of one stored chunk."""
        return chunk_shape(self._metadata)

    @property
    def fill_value(self) -> Any:
        return self._metadata.fill_value

    @property
    def dimension_names(self) -> tuple[str | None, ...] | None:
        return self._metadata.dimension_names

    def __len__(self) -> int:
        if not self.shape:
            raise TypeError("len() of a 0-d virtual array")
        return self.shape[0]

    def __repr__(self) -> str:
        return f"ManifestArray<shape={self.shape}, dtype={self.dtype}, chunks={self.chunk_shape}, {self._manifest!r}>"

    def _repr_inline_(self, max_width: int) -> str:
        counts = self._manifest.count()
        text = f"ManifestArray<{counts['virtual']} virtual, {counts['inlined']} inlined, {counts['missing']} missing chunks>"
        return text[:max_width]

    def equals(self, other: object) -> bool:
        """Same metadata and same references (``==`` is kept for elementwise use)."""
        return (
            isinstance(other, ManifestArray)
            and self._metadata.to_dict() == other._metadata.to_dict()
            and self._manifest == other._manifest
        )

    def __array__(self, dtype=None, copy=None):
        raise TypeError(
            "a ManifestArray holds references to chunks, not values; read it through "
            "xr.open_zarr(ManifestStore(...)) or zarr.open_group, or load the variable with loadable_variables"
        )

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        raise TypeError(
            f"cannot apply {getattr(ufunc, '__name__', ufunc)!r} to a ManifestArray: it holds references, "
            "not values; load the variable first"
        )

    def __array_function__(self, func, types, args, kwargs):
        from vzdask.manifests.array_api import HANDLED_FUNCTIONS

        handler = HANDLED_FUNCTIONS.get(func)
        if handler is None:
            raise TypeError(
                f"{func.__module__}.{func.__name__} is not supported on a ManifestArray; supported: "
                + ", ".join(sorted(f.__name__ for f in HANDLED_FUNCTIONS))
            )
        return handler(*args, **kwargs)

    # -- reference-only transformations -------------------------------------

    def rename_paths(self, new) -> ManifestArray:
        """A copy whose virtual chunk urls are renamed (see ``ChunkManifest.rename_paths``)."""
        return ManifestArray(self._metadata, self._manifest.rename_paths(new))

    def __getitem__(self, key) -> ManifestArray:
        """Chunk-aligned indexing: slices on chunk boundaries, integers where the chunk size is 1, ``None``, ``...``."""
        grid_key, shape, chunks, dims, ndim_changed = _chunk_aligned_key(self, key)
        if ndim_changed:
            check_ndim_change_allowed(self._metadata, "this indexing")
        metadata = replace_metadata(
            self._metadata,
            shape=shape,
            chunk_shape=chunks,
            dimension_names=dims if self._metadata.dimension_names is not None else None,
        )
        return ManifestArray(metadata, self._manifest[grid_key])


def _chunk_aligned_key(array: ManifestArray, key):
    """Translate an index into a chunk-grid index plus the new shape, chunks and dimension names."""
    if not isinstance(key, tuple):
        key = (key,)
    if sum(k is Ellipsis for k in key) > 1:
        raise IndexError("an index can only have a single ellipsis ('...')")
    consumed = sum(1 for k in key if k is not None and k is not Ellipsis)
    if consumed > array.ndim:
        raise IndexError(f"too many indices for a {array.ndim}-d array")
    if Ellipsis in key:
        at = key.index(Ellipsis)
        key = key[:at] + (slice(None),) * (array.ndim - consumed) + key[at + 1 :]
    else:
        key = key + (slice(None),) * (array.ndim - consumed)

    dims_in = array.dimension_names or (None,) * array.ndim
    grid_key, shape, chunks, dims = [], [], [], []
    axis = 0
    ndim_changed = False
    for k in key:
        if k is None:
            grid_key.append(None)
            shape.append(1)
            chunks.append(1)
            dims.append(None)
            ndim_changed = True
            continue
        n, c = array.shape[axis], array.chunk_shape[axis]
        if isinstance(k, slice):
            start, stop, step = k.indices(n)
            if step != 1:
                raise IndexError(f"axis {axis}: step {step} is not supported on a virtual array, only contiguous slices")
            stop = max(stop, start)
            if start % c:
                raise IndexError(
                    f"axis {axis}: slice start {start} is not on a chunk boundary (chunk size {c}); "
                    "a virtual array can only be sliced along whole chunks"
                )
            if stop % c and stop != n:
                raise IndexError(
                    f"axis {axis}: slice stop {stop} is not on a chunk boundary (chunk size {c}) nor the end ({n}); "
                    "a virtual array can only be sliced along whole chunks"
                )
            grid_key.append(slice(start // c, -(-stop // c)))
            shape.append(stop - start)
            chunks.append(c)
            dims.append(dims_in[axis])
        else:
            try:
                i = operator.index(k)
            except TypeError:
                raise IndexError(
                    f"axis {axis}: index of type {type(k).__name__} is not supported on a virtual array; "
                    "use slices on chunk boundaries"
                ) from None
            if not -n <= i < n:
                raise IndexError(f"axis {axis}: index {i} is out of bounds for size {n}")
            if c != 1:
                raise IndexError(
                    f"axis {axis}: an integer index needs chunk size 1 along that axis, but it is {c}; "
                    f"use a slice such as [{(i % n) - (i % n) % c}:{(i % n) - (i % n) % c + c}] instead"
                )
            grid_key.append(i % n)
            ndim_changed = True
        axis += 1
    return tuple(grid_key), tuple(shape), tuple(chunks), tuple(dims), ndim_changed
