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


def test_to_netcdf_of_a_virtual_dataset_writes_the_stored_values(tmp_path):
    """xarray's default netCDF writer on a virtual dataset: stored values and CF attributes, read back exactly."""
    import netCDF4

    import vzdask

    source = tmp_path / "packed.nc"
    with netCDF4.Dataset(source, "w") as nc:
        nc.createDimension("t", None)
        nc.createDimension("x", 6)
        v = nc.createVariable("v", "i2", ("t", "x"), fill_value=-99, chunksizes=(1, 3), zlib=True)
        v.scale_factor, v.add_offset, v.units = 0.5, 1.0, "K"
        values = np.arange(12, dtype="i2").reshape(2, 6)
        v[:] = np.ma.masked_array(values, values % 5 == 0)
        s = nc.createVariable("s", "f8", ("x",))
        s[:] = np.linspace(0, 1, 6)
        t = nc.createVariable("t", "f8", ("t",))
        t.units = "days since 2000-01-01"
        t[:] = [0, 1]
    out = tmp_path / "copy.nc"
    vzdask.open_virtual_dataset(str(source)).to_netcdf(out)
    with xr.open_dataset(out) as copy, xr.open_dataset(source) as original:
        xr.testing.assert_equal(copy.load(), original.load())  # values (xarray adds a NaN _FillValue to floats)
    with xr.open_dataset(out, decode_cf=False) as copy, xr.open_dataset(source, decode_cf=False) as original:
        xr.testing.assert_identical(copy["v"].variable.load(), original["v"].variable.load())  # packed, as stored
    with netCDF4.Dataset(out) as copy, netCDF4.Dataset(source) as original:
        copy.set_auto_maskandscale(False)
        original.set_auto_maskandscale(False)
        np.testing.assert_array_equal(copy["v"][:], original["v"][:])


def _packed_file(path):
    import netCDF4

    with netCDF4.Dataset(path, "w") as nc:
        nc.createDimension("x", 6)
        v = nc.createVariable("v", "i2", ("x",), fill_value=-99)
        v.scale_factor, v.add_offset = 0.5, 1.0
        v[:] = np.ma.masked_array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0], [0, 0, 1, 0, 0, 0])
        plain = nc.createVariable("plain", "f4", ("x",))
        plain[:] = np.arange(6)
    return path


def test_math_on_an_encoded_virtual_variable_warns_once(tmp_path, monkeypatch):
    import vzdask
    import vzdask.manifests.array as array_module
    from vzdask.errors import RawValuesWarning

    monkeypatch.setattr(array_module, "_RAW_VALUES_WARNED", False)
    source = _packed_file(tmp_path / "packed.nc")
    vds = vzdask.open_virtual_dataset(str(source))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plain_mean = float(vds["plain"].mean())
    assert not [w for w in caught if issubclass(w.category, RawValuesWarning)]  # nothing encoded: no warning
    assert plain_mean == 2.5
    with pytest.warns(RawValuesWarning, match=r"stored values, which are CF-encoded \(_FillValue, add_offset, "
                      r"scale_factor\).*vzdask.open_mfdataset.*ds.vz.to_dask\(mask_and_scale=True\)") as record:
        raw_mean = float(vds["v"].mean())
    assert record[0].filename == __file__  # points at the user's line, not into xarray or dask
    with xr.open_dataset(source, decode_cf=False) as raw:
        assert raw_mean == pytest.approx(float(raw["v"].mean()))  # stored values, fill value included
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        (vds["v"] + 1).compute()
    assert not [w for w in caught if issubclass(w.category, RawValuesWarning)]  # once per process
    # the way out the warning names gives what netCDF readers give
    decoded = VirtualDatasetAccessor(vds).to_dask(mask_and_scale=True)
    with xr.open_dataset(source) as expected:
        np.testing.assert_array_equal(decoded["v"].values, expected["v"].values)
        assert float(decoded["v"].mean()) == pytest.approx(float(expected["v"].mean()))
