"""xarray's own writers on virtual datasets (issue 18 item 5): every engine writes the stored values.

Sources are written here with netCDF-C (netCDF4-python): a netCDF-4 file with
packed and masked variables, fill values, a chunk never written, char arrays
(ASCII and UTF-8 ``_Encoding``), variable-length strings, a big-endian and a
scalar variable and a time coordinate; and a netCDF-3 file. Each writer's
output is read back by another reader (xarray's netCDF4 engine, or its zarr
engine) and compared with ``xr.open_dataset`` of the source: decoded values,
dtypes and attributes identical, and the stored (``decode_cf=False``) values
equal.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import warnings
from pathlib import Path

import netCDF4
import numpy as np
import pytest
import xarray as xr

import vzdask
from vzdask.manifests.array import ManifestArray
from vzdask.xarray_writers import stored_values_dataset

# zarr's own note that fixed-width bytes (the char arrays) have no zarr v3 spec yet
pytestmark = pytest.mark.filterwarnings("ignore:The data type .NullTerminatedBytes")

#: netCDF-3 has no unsigned bytes nor strings: xarray refuses them for any data
NOT_IN_NETCDF3 = ["names", "flag"]


def write_source(path: Path, fmt: str) -> Path:
    netcdf4 = fmt == "NETCDF4"
    with netCDF4.Dataset(path, "w", format=fmt) as nc:
        nc.title, nc.history = "writers", "made by tests/test_xarray_writers.py"
        nc.createDimension("time", None)
        nc.createDimension("lat", 3)
        nc.createDimension("lon", 4)
        nc.createDimension("nchar", 5)
        time = nc.createVariable("time", "f8", ("time",))
        time.units, time.calendar = "days since 2000-01-01", "standard"
        time[:] = np.arange(4) * 1.5
        nc.createVariable("lat", "f4", ("lat",))[:] = [10, 20, 30]
        nc.createVariable("lon", "f4", ("lon",))[:] = [0, 90, 180, 270]
        chunks = {"zlib": True, "chunksizes": (1, 3, 2)} if netcdf4 else {}
        tas = nc.createVariable("tas", "i2", ("time", "lat", "lon"), fill_value=np.int16(-32767), **chunks)
        tas.scale_factor, tas.add_offset, tas.units = 0.01, 273.15, "K"
        tas.coordinates = "height"
        packed = (np.arange(48).reshape(4, 3, 4) * 7 - 100).astype("i2")
        tas[:] = np.ma.masked_array(packed, packed % 11 == 0)
        nc.createVariable("height", "f8", ())[...] = 2.0
        pr = nc.createVariable("pr", "f4", ("time", "lat", "lon"), fill_value=np.float32(1e20),
                               **({"chunksizes": (2, 3, 4)} if netcdf4 else {}))
        pr.missing_value = np.float32(1e20)
        pr[:2] = np.arange(24, dtype="f4").reshape(2, 3, 4) / 3  # netCDF-4: the second chunk is never written
        count = nc.createVariable("count", "i4", ("lat", "lon"), fill_value=False)  # nothing CF: no encoding step
        count[:] = np.arange(12).reshape(3, 4)
        big = nc.createVariable("big", ">i4", ("lon",), endian="big") if netcdf4 else nc.createVariable("big", "i4", ("lon",))
        big[:] = [1, -2, 3, -4]
        station = nc.createVariable("station", "S1", ("lat", "nchar"))
        station[:] = netCDF4.stringtochar(np.array([b"abc", b"", b"hello"], "S5"))
        if netcdf4:
            label = nc.createVariable("label", "S1", ("lat", "nchar"))
            label._Encoding = "utf-8"
            label[:] = np.array(["é".encode(), b"ab", "çà".encode()], "S5").view("S1").reshape(3, 5)
            flag = nc.createVariable("flag", "u1", ("lat",), fill_value=np.uint8(255))
            flag.flag_values = np.array([0, 1, 2], "u1")
            flag[:] = [0, 2, 255]
            nc.createVariable("names", str, ("lat",))[:] = np.array(["x", "yy", "zzz"], dtype=object)
    return path


@pytest.fixture(scope="module", params=["NETCDF4", "NETCDF3_CLASSIC"])
def source(request, tmp_path_factory) -> Path:
    return write_source(tmp_path_factory.mktemp("source") / f"{request.param.lower()}.nc", request.param)


def write(ds: xr.Dataset, out: Path, writer: str) -> None:
    if writer.startswith("zarr"):
        with warnings.catch_warnings():  # zarr: fixed-width bytes have no v3 spec yet; consolidated metadata
            warnings.simplefilter("ignore")
            ds.to_zarr(out, zarr_format=int(writer[-1]))
    else:
        ds.to_netcdf(out, engine=writer)


def read(path: Path, writer: str, **kwargs) -> xr.Dataset:
    with xr.open_dataset(path, engine="zarr" if writer.startswith("zarr") else "netcdf4", **kwargs) as ds:
        return ds.load()


def original(path: Path, drop=(), **kwargs) -> xr.Dataset:
    with xr.open_dataset(path, engine="netcdf4", **kwargs) as ds:
        return ds.drop_vars(list(drop), errors="ignore").load()


WRITERS = ["netcdf4", "h5netcdf", "scipy", "zarr2", "zarr3"]


@pytest.mark.parametrize("writer", WRITERS)
def test_every_writer_writes_the_stored_values(source, tmp_path, writer):
    drop = NOT_IN_NETCDF3 if writer == "scipy" else []
    vds = vzdask.open_virtual_dataset(str(source)).drop_vars(drop, errors="ignore")
    virtual = [name for name, var in vds.variables.items() if isinstance(var.data, ManifestArray)]
    assert {"tas", "pr", "count", "big", "station"} <= set(virtual)
    out = tmp_path / ("copy.zarr" if writer.startswith("zarr") else "copy.nc")
    write(vds, out, writer)

    got, want = read(out, writer), original(source, drop)
    xr.testing.assert_identical(got, want)  # decoded values, dims, attributes (also the global ones)
    for name in want.variables:
        assert got[name].dtype == want[name].dtype, name
    np.testing.assert_array_equal(got["station"].values, np.array([b"abc", b"", b"hello"], "S5"))
    if "label" in want:
        assert list(got["label"].values) == ["é", "ab", "çà"]

    raw_got, raw_want = read(out, writer, decode_cf=False), original(source, drop, decode_cf=False)
    for name in virtual:  # the stored values themselves, fill values and packing untouched
        xr.testing.assert_equal(raw_got[name].variable, raw_want[name].variable)
        if name not in ("big",):  # netCDF-3 and our copies store natively; the value is what counts
            assert raw_got[name].dtype == raw_want[name].dtype, name
    assert raw_got["pr"].attrs["missing_value"] == raw_want["pr"].attrs["missing_value"]
    assert source.exists()  # nothing happened to the source


def test_netcdf_copies_keep_the_characters_and_the_chunks(tmp_path):
    source = write_source(tmp_path / "source.nc", "NETCDF4")
    out = tmp_path / "copy.nc"
    vzdask.open_virtual_dataset(str(source)).to_netcdf(out, engine="h5netcdf")
    with netCDF4.Dataset(out) as copy, netCDF4.Dataset(source) as src:
        for name in ("station", "label"):  # char arrays over the same character dimension, byte for byte
            assert copy[name].dimensions == src[name].dimensions == ("lat", "nchar")
            assert copy[name].dtype == src[name].dtype == np.dtype("S1")
            copy[name].set_auto_chartostring(False)
            src[name].set_auto_chartostring(False)
            np.testing.assert_array_equal(copy[name][:], src[name][:])
        assert copy["tas"].chunking() == src["tas"].chunking() == [1, 3, 2]
        copy["tas"].set_auto_maskandscale(False)
        src["tas"].set_auto_maskandscale(False)
        np.testing.assert_array_equal(copy["tas"][:], src["tas"][:])


def test_files_of_different_lengths_joined(tmp_path):
    """A rectilinear virtual variable (3 + 2 + 4 steps) written with chunks of the largest file's length."""
    paths = []
    for i, n in enumerate([3, 2, 4]):
        path = tmp_path / f"part{i}.nc"
        with netCDF4.Dataset(path, "w") as nc:
            nc.createDimension("time", None)
            nc.createDimension("x", 5)
            time = nc.createVariable("time", "f8", ("time",))
            time.units = "days since 2000-01-01"
            time[:] = np.arange(n) + 10 * i
            v = nc.createVariable("v", "i2", ("time", "x"), fill_value=np.int16(-1), chunksizes=(n, 5))
            v.scale_factor = 0.5
            v[:] = np.arange(n * 5).reshape(n, 5) + i
        paths.append(path)
    vds = vzdask.open_virtual_mfdataset([str(p) for p in paths], combine="nested", concat_dim="time")
    assert vds["v"].data.is_rectilinear
    with xr.open_mfdataset(paths, combine="nested", concat_dim="time") as ds:
        want = ds.load()
    for writer in ("netcdf4", "zarr3"):
        out = tmp_path / f"joined-{writer}"
        write(vds, out, writer)
        got = read(out, writer)
        xr.testing.assert_identical(got, want)
        assert got["v"].encoding["chunksizes" if writer == "netcdf4" else "chunks"] == (4, 5)


@pytest.mark.parametrize("writer", ["netcdf4", "zarr2"])
def test_a_datatree_of_virtual_groups(tmp_path, writer):
    source = tmp_path / "tree.nc"
    with netCDF4.Dataset(source, "w") as nc:
        nc.createDimension("x", 3)
        nc.createDimension("nchar", 2)
        nc.createVariable("a", "i4", ("x",))[:] = [1, 2, 3]
        group = nc.createGroup("g")
        b = group.createVariable("b", "f4", ("x",), fill_value=np.float32(-9))
        b[:] = np.ma.masked_array([1, 2, 3], [0, 1, 0])
        group.createVariable("c", "S1", ("x", "nchar"))[:] = np.array([[b"a", b"b"], [b"c", b""], [b"", b""]])
    tree = vzdask.open_virtual_datatree(str(source))
    out = tmp_path / f"tree-{writer}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tree.to_zarr(out, zarr_format=2) if writer == "zarr2" else tree.to_netcdf(out, engine=writer)
    engine = "zarr" if writer == "zarr2" else "netcdf4"
    with xr.open_datatree(out, engine=engine) as got, xr.open_datatree(source, engine="netcdf4") as want:
        xr.testing.assert_identical(got.load(), want.load())


def test_lazy_in_memory_and_persisted_writes(tmp_path):
    source = write_source(tmp_path / "source.nc", "NETCDF4")
    want = original(source)
    vds = vzdask.open_virtual_dataset(str(source))

    delayed = vds.to_netcdf(tmp_path / "later.nc", compute=False)  # dask-backed data: a delayed write
    delayed.compute()
    xr.testing.assert_identical(read(tmp_path / "later.nc", "netcdf4"), want)

    memory = vds.drop_vars(NOT_IN_NETCDF3).to_netcdf(engine="scipy")  # no path: the bytes
    with xr.open_dataset(bytes(memory), engine="scipy") as ds:
        xr.testing.assert_identical(ds.load(), original(source, NOT_IN_NETCDF3))

    halves = [vds.isel(time=slice(0, 2)), vds.isel(time=slice(2, 4))]  # whole chunks of every variable
    xr.save_mfdataset(halves, [tmp_path / "first.nc", tmp_path / "second.nc"], engine="h5netcdf")
    with xr.open_mfdataset([tmp_path / "first.nc", tmp_path / "second.nc"], engine="netcdf4", combine="nested",
                           concat_dim="time", data_vars="minimal", coords="minimal", compat="override") as both:
        xr.testing.assert_identical(both.load(), want)

    persisted = vds.vz.persist()  # every chunk inlined: the same values
    assert all(persisted[n].data.count()["virtual"] == 0 for n in ("tas", "station"))
    write(persisted, tmp_path / "persisted.zarr", "zarr3")
    xr.testing.assert_identical(read(tmp_path / "persisted.zarr", "zarr3"), want)


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_appending_to_a_zarr_store_and_writing_a_region(tmp_path, zarr_format):
    """Writes into existing arrays encode with the store's encoding: the virtual variables go in decoded."""
    source = write_source(tmp_path / "source.nc", "NETCDF4")
    vds = vzdask.open_virtual_dataset(str(source))
    out = tmp_path / "grown.zarr"
    write(vds, out, f"zarr{zarr_format}")
    later = vds[["tas", "pr", "count"]].assign_coords(time=vds["time"] + np.timedelta64(10, "D"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        later.drop_vars("count").to_zarr(out, append_dim="time")
        # packed values again into a region of the appended steps (the same values into the same place)
        later[["tas"]].isel(time=slice(2, 4)).drop_vars(["height", "lat", "lon"]).to_zarr(out, mode="r+",
                                                                                         region="auto")
        vds[["count"]].drop_vars("height").to_zarr(out, mode="a")  # an existing array, written over whole
    got, want = read(out, "zarr"), original(source)
    assert got.sizes["time"] == 8
    xr.testing.assert_identical(got.isel(time=slice(0, 4)), want)
    xr.testing.assert_identical(got[["tas", "pr"]].isel(time=slice(4, 8)).drop_vars("time"),
                                want[["tas", "pr"]].drop_vars("time"))
    raw_got, raw_want = read(out, "zarr", decode_cf=False), original(source, decode_cf=False)
    np.testing.assert_array_equal(raw_got["tas"].values[4:], raw_want["tas"].values)  # packed, exactly as stored
    np.testing.assert_array_equal(raw_got["pr"].values[4:], raw_want["pr"].values)


def test_a_users_encoding_keeps_the_character_dimension(tmp_path):
    source = write_source(tmp_path / "source.nc", "NETCDF4")
    out = tmp_path / "copy.nc"
    vzdask.open_virtual_dataset(str(source)).to_netcdf(
        out, encoding={"station": {"zlib": True}, "tas": {"zlib": True, "complevel": 1}})
    xr.testing.assert_identical(read(out, "netcdf4"), original(source))
    with netCDF4.Dataset(out) as copy:
        assert copy["station"].dimensions == ("lat", "nchar")
        assert copy["station"].filters()["zlib"] and copy["tas"].filters()["complevel"] == 1


def test_a_missing_source_file_is_named(tmp_path):
    source = write_source(tmp_path / "gone.nc", "NETCDF4")
    vds = vzdask.open_virtual_dataset(str(source))
    os.remove(source)
    with pytest.raises(vzdask.errors.VzdaskError, match="gone.nc"):
        vds[["count"]].to_netcdf(tmp_path / "copy.nc")


def test_datasets_without_virtual_variables_are_written_untouched(tmp_path):
    ds = xr.Dataset({"a": ("x", np.arange(3))}, attrs={"title": "plain"})
    assert stored_values_dataset(ds, netcdf=True) is ds
    assert stored_values_dataset(ds.chunk(), netcdf=False).a.data is not None
    ds.to_netcdf(tmp_path / "plain.nc")
    xr.testing.assert_identical(read(tmp_path / "plain.nc", "netcdf4"), ds)


def test_the_hook_is_installed_once():
    from vzdask import _compat, xarray_writers

    module = importlib.import_module(
        "xarray.backends.writers" if importlib.util.find_spec("xarray.backends.writers") else "xarray.backends.api"
    )
    hook = module.dump_to_store
    importlib.reload(xarray_writers)  # installing again replaces the wrapper, it does not wrap it
    assert module.dump_to_store.__wrapped__ is hook.__wrapped__
    assert not hasattr(module.dump_to_store.__wrapped__, "__vzdask_prepare__")
    assert callable(_compat.install_xarray_write_hook)
