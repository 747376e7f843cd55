"""One writer plan for both writers: the same Dataset written to kerchunk and to Icechunk reads back the same.

Each output is read by an independent reader (fsspec's ReferenceFileSystem
for kerchunk JSON, icechunk + xarray for the repository) and compared value by
value with what xarray reads from the original netCDF file.
"""

from __future__ import annotations

import icechunk
import netCDF4
import numpy as np
import pytest
import xarray as xr

from vzdask.writers.icechunk import write_icechunk
from vzdask.writers.kerchunk import to_kerchunk
from vzdask.writers.plan import plan_write
from vzdask.xarray import open_virtual_dataset


@pytest.fixture(scope="module")
def nc_path(tmp_path_factory):
    """Packed data with a fill value, a 1-D auxiliary coordinate, a scalar coordinate nothing names, a group."""
    path = tmp_path_factory.mktemp("plan") / "f.nc"
    with netCDF4.Dataset(path, "w") as nc:
        nc.title = "plan"
        nc.createDimension("time", 3)
        nc.createDimension("x", 4)
        t = nc.createVariable("time", "f8", ("time",))
        t.units = "days since 2001-01-01"
        t[:] = [0, 1, 2]
        nc.createVariable("x", "f4", ("x",))[:] = [1, 2, 3, 4]
        nc.createVariable("lon", "f4", ("x",), zlib=True)[:] = [10, 20, 30, 40]
        nc.createVariable("height", "f4", ())[...] = 2.0
        v = nc.createVariable("v", "i2", ("time", "x"), zlib=True, chunksizes=(1, 4), fill_value=-9)
        v.scale_factor = 0.5
        v.add_offset = 100.0
        v.units = "K"
        v.set_auto_maskandscale(False)
        packed = np.arange(12, dtype="i2").reshape(3, 4)
        packed[1, 2] = -9
        v[:] = packed
        sub = nc.createGroup("sub")
        sub.createDimension("n", 2)
        sub.createVariable("n_values", "u1", ("n",))[:] = [7, 8]
    return path


def _dataset(path):
    """Virtual v, lon, height; loaded time and x; lon and height as non-index coordinates."""
    return open_virtual_dataset(str(path), loadable_variables=["time", "x"]).set_coords(["lon", "height"])


def test_plan_has_xarray_coordinates_encoding_and_plain_attributes(nc_path):
    ds = _dataset(nc_path)
    root = plan_write(ds, in_memory="inline")
    arrays = {a.path: a for a in root.all_arrays()}
    assert set(arrays) == {"time", "x", "lon", "height", "v"}
    assert arrays["v"].attributes["coordinates"] in ("lon height", "height lon")
    assert arrays["v"].attributes["_FillValue"] == -9  # the plain number, as xarray holds it
    assert arrays["v"].dimension_names == ("time", "x")
    kept = plan_write(ds)  # in_memory="keep": loaded variables go to xarray's zarr route
    assert set(kept.arrays) == {"lon", "height", "v"}
    assert set(kept.loaded.variables) == {"time", "x"}


def test_group_plan_keeps_subgroups(nc_path):
    from vzdask.parsers.hdf5 import HDFParser
    from vzdask.registry import ObjectStoreRegistry

    store = HDFParser()(f"file://{nc_path}", ObjectStoreRegistry())
    root = plan_write(store)
    assert [g.path for g in root.walk()] == ["", "sub"]
    assert [a.path for a in root.groups[0].arrays.values()] == ["sub/n_values"]


def test_kerchunk_and_icechunk_read_back_alike(nc_path, tmp_path):
    import fsspec

    ds = _dataset(nc_path)
    expected = xr.open_dataset(nc_path, engine="netcdf4").set_coords(["lon", "height"]).load()

    refs = tmp_path / "refs.json"
    to_kerchunk(ds, refs, format="json")
    mapper = fsspec.filesystem("reference", fo=str(refs)).get_mapper("")
    from_kerchunk = xr.open_dataset(mapper, engine="zarr", zarr_format=2, consolidated=False).load()

    storage = icechunk.local_filesystem_storage(str(tmp_path / "repo"))
    config = icechunk.RepositoryConfig.default()
    config.set_virtual_chunk_container(icechunk.VirtualChunkContainer(f"file://{nc_path.parent}/",
                                                                      icechunk.local_filesystem_store(str(nc_path.parent))))
    repo = icechunk.Repository.create(storage, config=config,
                                      authorize_virtual_chunk_access={f"file://{nc_path.parent}/": None})
    session = repo.writable_session("main")
    write_icechunk(ds, session, commit="plan")
    from_icechunk = xr.open_zarr(repo.readonly_session("main").store, consolidated=False).load()

    for got in (from_kerchunk, from_icechunk):
        assert set(got.coords) == {"time", "x", "lon", "height"}
        assert set(got.data_vars) == {"v"}
        for name in ("time", "x", "lon", "height", "v"):
            np.testing.assert_array_equal(got[name].values, expected[name].values)
            assert got[name].dtype == expected[name].dtype, name
        assert got["v"].attrs["units"] == "K"
        assert np.isnan(got["v"].values[1, 2])
