"""The ds.vz / ds.vzdask accessor names."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import xarray as xr

from vzdask import ChunkManifest, ManifestArray, create_array_metadata
from vzdask.accessor import VirtualDatasetAccessor


def virtual_dataset() -> xr.Dataset:
    metadata = create_array_metadata(shape=(4,), chunk_shape=(2,), dtype="int32", fill_value=3, dimension_names=("x",))
    array = ManifestArray(metadata, ChunkManifest.empty((2,)))
    return xr.Dataset({"a": xr.Variable(("x",), array)})


def test_vzdask_name_survives_another_package_taking_vz():
    class OtherAccessor:  # what another package registering "vz" (VirtualiZarr) does
        def __init__(self, ds):
            self.owner = "other"

    ds = virtual_dataset()
    try:
        with pytest.warns(xr.core.extensions.AccessorRegistrationWarning):
            xr.register_dataset_accessor("vz")(OtherAccessor)
        assert ds.vz.owner == "other"
        assert ds.vzdask.virtual_variables == ["a"]
        np.testing.assert_array_equal(ds.vzdask.compute().a.values, [3, 3, 3, 3])
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            xr.register_dataset_accessor("vz")(VirtualDatasetAccessor)
    assert isinstance(virtual_dataset().vz, VirtualDatasetAccessor)
