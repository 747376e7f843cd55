"""CF masking and unpacking inside the load tasks (vzdask.cf_tasks), and ``to_dask_array(convert=)``."""

from __future__ import annotations

import functools

import dask
import netCDF4
import numpy as np
import pytest
import xarray as xr
from netcdf_files import create_time_lat_lon

import vzdask  # noqa: F401  (registers ds.vz)
from vzdask.cf_tasks import decoded_in_tasks
from vzdask.mfdataset import open_mfdataset, open_virtual_mfdataset
from vzdask.xarray import open_virtual_dataset

NT, NLAT, NLON = 4, 6, 8


def write_nc(path, first: int, seed: int) -> None:
    """Every kind of elementwise CF encoding, plus a time-like data variable that xarray must decode."""
    rng = np.random.default_rng(seed)
    shape = (NT, NLAT, NLON)
    with netCDF4.Dataset(path, "w") as nc:
        create_time_lat_lon(nc, np.arange(first, first + NT), np.linspace(-50, 50, NLAT), np.arange(NLON) * 5.0)
        kw = {"zlib": True, "shuffle": True, "chunksizes": (1, NLAT // 2, NLON)}
        packed = nc.createVariable("packed", "i2", ("time", "lat", "lon"), fill_value=np.int16(-32767), **kw)
        packed.scale_factor, packed.add_offset = np.float32(0.01), np.float32(250.0)
        values = 250 + 50 * rng.random(shape)
        packed[:] = np.ma.masked_where(rng.random(shape) < 0.1, values)
        masked = nc.createVariable("masked", "f4", ("time", "lat", "lon"), fill_value=np.float32(-999.0), **kw)
        masked[:] = np.ma.masked_where(rng.random(shape) < 0.1, rng.random(shape).astype("f4"))
        missing = nc.createVariable("missing", "f8", ("time", "lat", "lon"), **kw)
        missing.missing_value = -1.0
        data = rng.random(shape)
        data[rng.random(shape) < 0.1] = -1.0
        missing[:] = data
        nc.set_auto_maskandscale(False)
        unsigned = nc.createVariable("unsigned", "i1", ("time", "lat", "lon"), **kw)
        unsigned._Unsigned = "true"
        unsigned[:] = rng.integers(-128, 128, shape, dtype="i1")
        plain = nc.createVariable("plain", "f4", ("time", "lat", "lon"), **kw)
        plain[:] = rng.random(shape).astype("f4")
        age = nc.createVariable("age", "f8", ("time", "lat", "lon"), **kw)
        age.units = "days"  # timedelta-like units: left to decode_cf, whatever it makes of them
        age[:] = rng.integers(0, 10, shape).astype("f8")


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    root = tmp_path_factory.mktemp("cf_tasks")
    out = []
    for i in range(3):
        path = root / f"f{i}.nc"
        write_nc(path, i * NT, seed=i)
        out.append(str(path))
    return out


DECODED_IN_TASKS = ("packed", "masked", "missing", "unsigned")


def test_open_mfdataset_decodes_in_the_load_tasks_like_xarray(paths):
    ds = open_mfdataset(paths)
    for name in DECODED_IN_TASKS:
        data = ds[name].data
        assert len(data.dask.layers) == 1, (name, list(data.dask.layers))  # no map_blocks layer on top
        assert "__dask_postcompute__" in vars(data), name  # computing it as it is decodes into one result
    # xarray's decode_cf of the same virtual variables, loaded whole: what open_mfdataset gave before
    ref = xr.decode_cf(open_virtual_mfdataset(paths).vz.compute())
    assert ref["unsigned"].dtype == np.uint8 and ref["packed"].dtype.kind == "f"
    for name in DECODED_IN_TASKS:  # not vacuous: there are masked points
        if name != "unsigned":
            assert int(ref[name].isnull().sum()) > 0, name
    for scheduler in ("sync", "threads", "processes"):
        got = ds.compute(scheduler=scheduler)
        xr.testing.assert_identical(got, ref)
        for name in ref.variables:  # the encoding decode_cf leaves (what to_netcdf writes back)
            for key in ("_FillValue", "scale_factor", "add_offset", "missing_value", "_Unsigned", "dtype"):
                assert np.array_equal(got[name].encoding.get(key), ref[name].encoding.get(key)), (name, key)
    # and exactly what xarray's netCDF-C reader gives: int16 packed with a float32 scale_factor unpacks
    # to float32 (the parser keeps float32 attributes' type: Float32Attribute)
    assert got["packed"].dtype == np.float32
    with xr.open_mfdataset(paths, engine="netcdf4", combine="by_coords") as netcdf:
        for name in ref.data_vars:
            assert got[name].dtype == netcdf[name].dtype, name
            np.testing.assert_array_equal(got[name].values, netcdf[name].values, err_msg=name)


def test_decoding_is_left_to_xarray_when_not_elementwise_by_attributes(paths):
    virtual = open_virtual_dataset(paths[0])
    for name in ("plain", "age", "time"):
        assert decoded_in_tasks(name, virtual[name].variable) is None, name
    packed = decoded_in_tasks("packed", virtual["packed"].variable)
    assert "scale_factor" not in packed.attrs and packed.encoding["scale_factor"] == np.float32(0.01)


def test_task_blocks_are_sized_by_the_decoded_values(paths):
    virtual = open_virtual_mfdataset(paths)
    budget = 2 * NLAT * NLON * 4  # two time steps of float32 (the float32 scale_factor's), or four of int16
    with dask.config.set({"vzdask.task-bytes": budget}):
        raw = virtual["packed"].data.to_dask_array()
        decoded = decoded_in_tasks("packed", virtual["packed"].variable).data
    assert raw.dtype == np.int16 and decoded.dtype == np.float32
    assert raw.chunks[0] == (4, 4, 4) and decoded.chunks[0] == (2,) * 6
    assert np.prod([c[0] for c in decoded.chunks]) * decoded.dtype.itemsize <= budget


def test_convert_runs_in_every_task_and_needs_its_dtype(paths):
    array = open_virtual_mfdataset(paths)["plain"].data
    expected = array.to_dask_array().compute()
    doubled = array.to_dask_array(chunks=(5, 3, 8), convert=functools.partial(np.multiply, 2.0), dtype="f8")
    assert doubled.dtype == np.float64 and doubled.chunks[0] == (5, 5, 2)
    for scheduler in ("sync", "threads", "processes"):
        np.testing.assert_array_equal(doubled.compute(scheduler=scheduler), 2.0 * expected)
    np.testing.assert_array_equal(doubled[3:7, 1].compute(), 2.0 * expected[3:7, 1])
    with pytest.raises(ValueError, match="convert and dtype"):
        array.to_dask_array(convert=np.negative)


def test_a_block_that_decodes_to_another_dtype_is_an_error(paths):
    from vzdask.cf_tasks import _decode_block

    block = np.zeros((1, 2, 2), "i2")
    attrs = {"scale_factor": np.float32(0.5)}
    assert _decode_block("v", ("a", "b", "c"), attrs, {}, "f4", block).dtype == np.float32
    with pytest.raises(TypeError, match="variable 'v'.*expected float64"):
        _decode_block("v", ("a", "b", "c"), attrs, {}, "f8", block)
