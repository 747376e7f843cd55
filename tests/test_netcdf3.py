"""NetCDF3Parser: real CDF-1/CDF-2/CDF-5 files written by scipy and netCDF4-python.

Every test compares against what xarray (through the netCDF C library) reads
from the same file, or against the file's own bytes.
"""

from __future__ import annotations

import json
import os
import re
import shutil

import netCDF4
import numpy as np
import pytest
import scipy.io
import xarray as xr

from vzdask.manifests.array import ManifestArray
from vzdask.manifests.manifest import INLINED, VIRTUAL
from vzdask.manifests.metadata import Float32Attribute
from vzdask.parsers import detect_parser
from vzdask.parsers.common import ObstoreFile, ParseError
from vzdask.parsers.netcdf3 import NetCDF3Parser, parse_header
from vzdask.policy import InlinePolicy
from vzdask.registry import ObjectStoreRegistry
from vzdask.xarray import open_virtual_dataset

pytestmark = pytest.mark.filterwarnings("ignore:.*does not have a Zarr V3 specification")

NT = 4  # records

# --------------------------------------------------------------------------- #
# Sample files
# --------------------------------------------------------------------------- #


def _create(ds, name, nc_type, dims, fill=None):
    """createVariable with a _FillValue: netCDF4 takes it at creation, scipy as an attribute."""
    if isinstance(ds, scipy.io.netcdf_file):
        var = ds.createVariable(name, nc_type, dims)
        if fill is not None:
            var._FillValue = fill
        return var
    return ds.createVariable(name, nc_type, dims, fill_value=fill)


def _content(ds, *, cdf5: bool) -> None:
    """The same dataset through either writer (scipy.io.netcdf_file or netCDF4.Dataset)."""
    rng = np.random.default_rng(0)
    ds.title = "vzdask netCDF3 sample"
    ds.source_version = np.int32(3)
    ds.numbers = np.array([1.5, -2.25], dtype="f4")
    ds.big = np.float64(1e300)
    ds.createDimension("time", None)
    ds.createDimension("y", 3)
    ds.createDimension("x", 4)
    ds.createDimension("nchar", 5)

    # record variables (interleaved in each record): f8, i2 (24 B), i1 (1 B -> padded to 4), f4
    time = ds.createVariable("time", "f8", ("time",))
    time.units = "days since 2000-01-01"
    time.calendar = "standard"
    temp = _create(ds, "temp", "i2", ("time", "y", "x"), np.int16(-999))
    # doubles (scipy writes a Python float as NC_FLOAT): see test_float32_packing_attributes
    temp.scale_factor = np.array([0.01])
    temp.add_offset = np.array([20.0])
    temp.units = "degC"
    temp.long_name = "temperature"
    flag = ds.createVariable("flag", "i1", ("time",))
    pres = _create(ds, "pres", "f4", ("time", "x"), np.float32(-1e30))

    # non-record variables
    y = ds.createVariable("y", "f4", ("y",))
    y.units = "m"
    x = ds.createVariable("x", "f8", ("x",))
    mask = ds.createVariable("mask", "i1", ("y", "x"))
    if not isinstance(ds, scipy.io.netcdf_file):  # scipy misplaces scalars: test_scipy_scalar_bug
        ds.createVariable("height", "f8", ())[...] = 2.5
    name = ds.createVariable("name", "c" if isinstance(ds, scipy.io.netcdf_file) else "S1", ("y", "nchar"))
    short = ds.createVariable("short", "i2", ("x",))
    short.valid_range = np.array([-5, 5], dtype="i2")

    if hasattr(ds, "set_auto_maskandscale"):
        ds.set_auto_maskandscale(False)  # netCDF4: write raw (packed) values as given
    raw = np.arange(NT * 12, dtype="i2").reshape(NT, 3, 4) * 7 - 100
    raw[1, 2, 3] = -999
    raw[3, 0, 0] = -999
    time[:] = np.array([0.0, 1.5, 3.0, 10.0])
    temp[:] = raw
    flag[:] = np.array([1, -2, 3, -4], dtype="i1")
    p = rng.normal(size=(NT, 4)).astype("f4")
    p[2, 1] = -1e30
    pres[:] = p
    y[:] = np.array([10.0, 20.0, 30.0], dtype="f4")
    x[:] = np.array([0.5, 1.5, 2.5, 3.5])
    mask[:] = np.array([[1, 0, -1, 2], [3, 4, 5, 6], [7, 8, 9, 10]], dtype="i1")
    chars = np.zeros((3, 5), dtype="S1")
    for i, word in enumerate([b"ab", b"cde", b"fghij"]):
        chars[i, : len(word)] = np.frombuffer(word, dtype="S1")
    name[:] = chars
    short[:] = np.array([-3, 0, 3, 5], dtype="i2")

    if cdf5:
        ub = _create(ds, "ub", "u1", ("x",), np.uint8(200))
        ub[:] = np.array([0, 200, 255, 7], dtype="u1")
        ds.createVariable("us", "u2", ("x",))[:] = np.array([0, 1, 65535, 40000], dtype="u2")
        ds.createVariable("ui", "u4", ("x",))[:] = np.array([0, 1, 2**32 - 1, 3_000_000_000], dtype="u4")
        big = ds.createVariable("i64", "i8", ("time",))
        big[:] = np.array([-(2**62), 0, 2**40, 2**63 - 1], dtype="i8")
        u64 = ds.createVariable("u64", "u8", ("x",))
        u64[:] = np.array([0, 2**63 + 5, 2**64 - 1, 12], dtype="u8")
        u64.a_ubyte = np.uint8(250)
        u64.a_ushort = np.array([1, 65535], dtype="u2")
        u64.a_uint = np.uint32(4_000_000_000)
        u64.a_int64 = np.array([-(2**40), 5], dtype="i8")
        u64.a_uint64 = np.uint64(2**64 - 2)


def write_netcdf4(path, fmt: str) -> str:
    with netCDF4.Dataset(path, "w", format=fmt) as ds:
        _content(ds, cdf5=fmt == "NETCDF3_64BIT_DATA")
    return str(path)


def write_scipy(path, version: int) -> str:
    with scipy.io.netcdf_file(path, "w", version=version) as ds:
        _content(ds, cdf5=False)
    return str(path)


WRITERS = {
    "scipy-v1": lambda p: write_scipy(p, 1),
    "scipy-v2": lambda p: write_scipy(p, 2),
    "nc4-classic": lambda p: write_netcdf4(p, "NETCDF3_CLASSIC"),
    "nc4-64bit-offset": lambda p: write_netcdf4(p, "NETCDF3_64BIT_OFFSET"),
    "nc4-cdf5": lambda p: write_netcdf4(p, "NETCDF3_64BIT_DATA"),
}
MAGIC = {"scipy-v1": 1, "scipy-v2": 2, "nc4-classic": 1, "nc4-64bit-offset": 2, "nc4-cdf5": 5}


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("nc3")
    return {kind: write(root / f"{kind}.nc") for kind, write in WRITERS.items()}


@pytest.fixture(params=list(WRITERS))
def sample(request, files) -> tuple[str, str]:
    return request.param, files[request.param]


def file_bytes(path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def assert_attrs_equal(a: dict, b: dict) -> None:
    assert set(a) == set(b), (sorted(a), sorted(b))
    for key in a:
        np.testing.assert_array_equal(np.asarray(a[key]), np.asarray(b[key]), err_msg=key)


def no_indexes(ds: xr.Dataset) -> xr.Dataset:
    return ds.drop_indexes(list(ds.xindexes))


def check_dataset(got: xr.Dataset, expected: xr.Dataset) -> None:
    """assert_identical plus dtypes and attrs checked element by element."""
    xr.testing.assert_identical(got, expected)
    assert_attrs_equal(got.attrs, expected.attrs)
    for name, var in expected.variables.items():
        assert got[name].dtype == var.dtype, name
        assert_attrs_equal(got[name].attrs, var.attrs)


# --------------------------------------------------------------------------- #
# Values
# --------------------------------------------------------------------------- #


def test_raw_values_equal_xarray(sample):
    kind, path = sample
    vds = open_virtual_dataset(path, parser=NetCDF3Parser(), loadable_variables=[])
    assert set(vds.vz.virtual_variables) == set(vds.variables)
    assert vds.attrs["title"] == "vzdask netCDF3 sample"
    with xr.open_dataset(path, decode_cf=False) as expected:
        # nothing loaded -> no indexes (virtual coordinates are not indexed)
        check_dataset(vds.vz.compute(), no_indexes(expected.load()))
    for name in vds.variables:
        array = vds[name].data
        assert isinstance(array, ManifestArray)
        np.testing.assert_array_equal(array.compute(), vds.vz.compute()[name].values)


def test_cf_decoded_values_equal_xarray(sample):
    kind, path = sample
    vds = open_virtual_dataset(path, parser=NetCDF3Parser())
    # dimension coordinates are loaded (and CF-decoded), everything else stays virtual
    assert set(vds.vz.virtual_variables) == set(vds.variables) - {"time", "x", "y"}
    assert vds["time"].dtype.kind == "M"
    decoded = xr.decode_cf(vds.vz.compute())
    with xr.open_dataset(path) as expected:
        check_dataset(decoded, expected.load())
        assert np.isnan(decoded["temp"].values[1, 2, 3]) and np.isnan(decoded["pres"].values[2, 1])
        np.testing.assert_allclose(decoded["temp"].values[0, 0, 1], -93 * 0.01 + 20.0)
        assert list(decoded["name"].values) == [b"ab", b"cde", b"fghij"]


def test_store_reads_with_xarray_zarr_backend(sample):
    """The ManifestStore itself is a valid zarr v3 store: xr.open_zarr decodes it like the file."""
    kind, path = sample
    store = NetCDF3Parser()("file://" + os.path.abspath(path), ObjectStoreRegistry.default())
    got = xr.open_zarr(store, zarr_format=3, consolidated=False, chunks=None).load()
    with xr.open_dataset(path) as expected:
        check_dataset(got, expected.load())


def test_detected_parser_gives_the_same_references(sample):
    kind, path = sample
    assert open(path, "rb").read(4) == b"CDF" + bytes([MAGIC[kind]])
    registry = ObjectStoreRegistry.default()
    assert isinstance(detect_parser("file://" + path, registry), NetCDF3Parser)
    explicit = open_virtual_dataset(path, parser=NetCDF3Parser())
    detected = open_virtual_dataset(path)
    assert set(explicit.variables) == set(detected.variables)
    for name in explicit.vz.virtual_variables:
        assert explicit[name].data.equals(detected[name].data), name
    xr.testing.assert_identical(explicit.vz.compute(), detected.vz.compute())


def test_cdf5_types_and_attributes(files):
    path = files["nc4-cdf5"]
    header = parse_header(ObstoreFile("file://" + path, ObjectStoreRegistry.default()))
    assert header.version == 5
    vds = open_virtual_dataset(path, parser=NetCDF3Parser())
    assert {n: vds[n].dtype for n in ["ub", "us", "ui", "i64", "u64"]} == {
        "ub": np.dtype("u1"),
        "us": np.dtype("u2"),
        "ui": np.dtype("u4"),
        "i64": np.dtype("i8"),
        "u64": np.dtype("u8"),
    }
    np.testing.assert_array_equal(vds["u64"].data.compute(), np.array([0, 2**63 + 5, 2**64 - 1, 12], dtype="u8"))
    np.testing.assert_array_equal(vds["i64"].data.compute(), np.array([-(2**62), 0, 2**40, 2**63 - 1]))
    attrs = vds["u64"].attrs
    assert attrs["a_ubyte"] == 250 and attrs["a_uint"] == 4_000_000_000 and attrs["a_uint64"] == 2**64 - 2
    assert attrs["a_ushort"] == [1, 65535] and attrs["a_int64"] == [-(2**40), 5]
    assert vds["ub"].attrs["_FillValue"] == 200
    decoded = xr.decode_cf(vds.vz.compute())
    assert np.isnan(decoded["ub"].values[1]) and decoded["ub"].values[2] == 255


def test_metadata_is_big_endian_with_netcdf_fill_values(files):
    vds = open_virtual_dataset(files["nc4-classic"], parser=NetCDF3Parser(), loadable_variables=[])
    temp = vds["temp"].data.metadata.to_dict()
    assert temp["data_type"] == "int16"
    assert list(temp["codecs"]) == [{"name": "bytes", "configuration": {"endian": "big"}}]
    assert temp["fill_value"] == -999
    assert temp["chunk_grid"]["configuration"]["chunk_shape"] == (1, 3, 4)
    assert temp["dimension_names"] == ("time", "y", "x")
    assert vds["temp"].attrs["scale_factor"] == 0.01 and vds["temp"].attrs["add_offset"] == 20.0
    assert vds["temp"].attrs["_FillValue"] == -999
    assert list(vds["mask"].data.metadata.to_dict()["codecs"]) == [{"name": "bytes"}]
    # netCDF default fill values where the file has no _FillValue
    assert vds["flag"].data.metadata.fill_value == -127
    assert vds["short"].data.metadata.fill_value == -32767
    assert float(vds["x"].data.metadata.fill_value) == 9.969209968386869e36
    assert "_FillValue" not in vds["x"].attrs
    assert vds["short"].attrs["valid_range"] == [-5, 5]
    assert vds["time"].attrs == {"units": "days since 2000-01-01", "calendar": "standard"}
    assert vds["height"].shape == () and vds["height"].data.compute() == 2.5


def test_float32_packing_attributes(tmp_path):
    """A float (NC_FLOAT) scale_factor keeps its value and its float32 type.

    So xarray decodes the virtual variable to float32, as it decodes the file,
    with the same numbers; what is written is a JSON number.
    """
    path = str(tmp_path / "f32.nc")
    with scipy.io.netcdf_file(path, "w") as ds:  # scipy writes a Python float as NC_FLOAT
        ds.createDimension("x", 5)
        v = ds.createVariable("v", "i2", ("x",))
        v[:] = np.array([0, 1, -32767, 1000, 7], dtype="i2")
        v.scale_factor = 0.1
        v._FillValue = np.int16(-32767)
        ds.nan_attribute = np.array([np.nan], dtype="f8")
    vds = open_virtual_dataset(path, parser=NetCDF3Parser())
    assert vds["v"].attrs["scale_factor"] == float(np.float32(0.1)) != 0.1
    assert type(vds["v"].attrs["scale_factor"]) is np.float32
    assert type(vds["v"].data.metadata.attributes["scale_factor"]) is Float32Attribute  # a float subclass
    assert json.loads(json.dumps(vds["v"].data.metadata.attributes))["scale_factor"] == float(np.float32(0.1))
    assert np.isnan(vds.attrs["nan_attribute"])
    decoded = xr.decode_cf(vds.vz.compute())
    with xr.open_dataset(path) as expected:
        assert expected["v"].dtype == np.float32 and decoded["v"].dtype == np.float32
        np.testing.assert_array_equal(decoded["v"].values, expected["v"].values)
        assert np.isnan(decoded["v"].values[2])
        assert np.isnan(expected.attrs["nan_attribute"])


# --------------------------------------------------------------------------- #
# Layout: record size, padding, streaming, zero records
# --------------------------------------------------------------------------- #


def test_record_layout_interleaves_padded_record_variables(files):
    path = files["nc4-classic"]
    header = parse_header(ObstoreFile("file://" + path, ObjectStoreRegistry.default()))
    assert header.numrecs == NT and not header.streaming
    assert header.record_variables == ["time", "temp", "flag", "pres"]
    # f8 + 3*4 i2 + one i1 padded to 4 + 4 f4
    assert header.recsize == 8 + 24 + 4 + 16
    vds = open_virtual_dataset(path, parser=NetCDF3Parser(), loadable_variables=[])
    data = file_bytes(path)
    flag = vds["flag"].data.manifest
    starts = [flag.entry((r,))[2] for r in range(NT)]
    assert np.diff(starts).tolist() == [header.recsize] * (NT - 1)
    assert [np.frombuffer(data[s : s + 1], "i1")[0] for s in starts] == [1, -2, 3, -4]
    assert all(flag.entry((r,))[3] == 1 for r in range(NT))


@pytest.mark.parametrize("dtype", ["i1", "i2", "f8"])
@pytest.mark.parametrize("writer", ["scipy", "netcdf4"])
def test_single_record_variable_has_no_padding(tmp_path, dtype, writer):
    path = str(tmp_path / "one.nc")
    values = (np.arange(5 * 3) - 4).reshape(5, 3).astype(dtype)
    if writer == "scipy":
        with scipy.io.netcdf_file(path, "w") as ds:
            ds.createDimension("t", None)
            ds.createDimension("n", 3)
            ds.createVariable("v", dtype, ("t", "n"))[:] = values
    else:
        with netCDF4.Dataset(path, "w", format="NETCDF3_CLASSIC") as ds:
            ds.createDimension("t", None)
            ds.createDimension("n", 3)
            ds.createVariable("v", dtype, ("t", "n"))[:] = values
    header = parse_header(ObstoreFile("file://" + path, ObjectStoreRegistry.default()))
    assert header.recsize == 3 * np.dtype(dtype).itemsize  # 3 bytes for i1: not padded to 4
    vds = open_virtual_dataset(path, parser=NetCDF3Parser())
    np.testing.assert_array_equal(vds["v"].data.compute(), values)
    with xr.open_dataset(path) as expected:
        np.testing.assert_array_equal(expected["v"].values, values)


@pytest.mark.parametrize("kind", ["nc4-classic", "nc4-cdf5"])
def test_streaming_numrecs_is_computed_from_the_file_size(tmp_path, files, kind):
    data = bytearray(file_bytes(files[kind]))
    width = 8 if kind == "nc4-cdf5" else 4
    assert int.from_bytes(data[4 : 4 + width], "big") == NT
    data[4 : 4 + width] = b"\xff" * width
    path = tmp_path / "streaming.nc"
    path.write_bytes(bytes(data))
    header = parse_header(ObstoreFile("file://" + str(path), ObjectStoreRegistry.default()))
    assert header.streaming and header.numrecs == NT
    got = open_virtual_dataset(str(path), parser=NetCDF3Parser(), loadable_variables=[]).vz.compute()
    with xr.open_dataset(files[kind], decode_cf=False) as expected:
        xr.testing.assert_identical(got, no_indexes(expected.load()))


def test_zero_records(tmp_path):
    path = str(tmp_path / "empty_records.nc")
    with netCDF4.Dataset(path, "w", format="NETCDF3_64BIT_OFFSET") as ds:
        ds.createDimension("time", None)
        ds.createDimension("x", 2)
        ds.createVariable("v", "f4", ("time", "x"))
        ds.createVariable("w", "i2", ("time",))
        ds.createVariable("x", "i4", ("x",))[:] = [7, 8]
    vds = open_virtual_dataset(path, parser=NetCDF3Parser())
    assert vds["v"].shape == (0, 2) and vds["w"].shape == (0,)
    assert vds["v"].data.manifest.shape == (0, 1)
    with xr.open_dataset(path) as expected:
        check_dataset(xr.decode_cf(vds.vz.compute()), expected.load())


def test_reads_only_the_header(tmp_path):
    path = str(tmp_path / "big.nc")
    with netCDF4.Dataset(path, "w", format="NETCDF3_CLASSIC") as ds:
        ds.createDimension("n", 2**19)
        ds.createVariable("a", "f8", ("n",))[:] = np.arange(2**19, dtype="f8")
        ds.long_attribute = "x" * 10_000  # a header larger than the first read
    size = os.path.getsize(path)
    assert size > 4 * 2**20
    file = ObstoreFile("file://" + path, ObjectStoreRegistry.default(), block_size=4096)
    header = parse_header(file)
    assert 10_000 < header.header_size < 10_300
    fetched = sum(len(block) for block in file._blocks.values())
    assert header.header_size <= fetched <= 4 * header.header_size
    vds = open_virtual_dataset(path, parser=NetCDF3Parser())
    assert vds.attrs["long_attribute"] == "x" * 10_000
    np.testing.assert_array_equal(vds["a"].data.compute(), np.arange(2**19, dtype="f8"))


# --------------------------------------------------------------------------- #
# InlinePolicy
# --------------------------------------------------------------------------- #


def _virtual_refs(path) -> dict:
    vds = open_virtual_dataset(path, parser=NetCDF3Parser(), loadable_variables=[])
    return {name: vds[name].data.manifest for name in vds.variables}


def test_inline_max_chunk_bytes_inlines_exactly_the_small_chunks(files):
    path = files["nc4-64bit-offset"]
    refs = _virtual_refs(path)
    data = file_bytes(path)
    parser = NetCDF3Parser(inline=InlinePolicy(max_chunk_bytes=8))
    vds = open_virtual_dataset(path, parser=parser, loadable_variables=[])
    n_inlined = 0
    for name, before in refs.items():
        after = vds[name].data.manifest
        small = before.lengths <= 8
        np.testing.assert_array_equal(after.states, np.where(small, INLINED, VIRTUAL), err_msg=name)
        for index in zip(*np.nonzero(small)) if before.ndim else ([()] if small[()] else []):
            _, url, offset, length = before.entry(index)
            assert after.inlined_data(index) == data[offset : offset + length]
            n_inlined += 1
    # time (8 B/record), flag (1 B/record), height (8 B), short (4 x 2 B) are inlined; nothing else
    assert n_inlined == NT + NT + 1 + 1
    with xr.open_dataset(path, decode_cf=False) as expected:
        xr.testing.assert_identical(vds.vz.compute(), no_indexes(expected.load()))


def test_inline_variables_survive_deleting_the_file(tmp_path, files):
    path = str(tmp_path / "copy.nc")
    shutil.copy(files["scipy-v1"], path)
    with xr.open_dataset(path, decode_cf=False) as f:
        expected = f.load()
    vds = open_virtual_dataset(
        path, parser=NetCDF3Parser(inline=InlinePolicy(variables=["flag", "temp"])), loadable_variables=[]
    )
    assert (vds["temp"].data.manifest.states == INLINED).all()
    assert (vds["pres"].data.manifest.states == VIRTUAL).all()
    os.remove(path)
    np.testing.assert_array_equal(vds["temp"].data.compute(), expected["temp"].values)
    np.testing.assert_array_equal(vds["flag"].data.compute(), expected["flag"].values)
    with pytest.raises(OSError, match="copy.nc"):  # still virtual: needs the file
        vds["pres"].data.compute()


def test_inline_coordinates(files):
    path = files["nc4-cdf5"]
    vds = open_virtual_dataset(path, parser=NetCDF3Parser(inline=InlinePolicy(coordinates=True)), loadable_variables=[])
    states = {name: set(np.unique(vds[name].data.manifest.states).tolist()) for name in vds.variables}
    assert {n for n, s in states.items() if s == {INLINED}} == {"time", "x", "y"}
    assert all(s == {VIRTUAL} for n, s in states.items() if n not in {"time", "x", "y"})
    with xr.open_dataset(path) as expected:
        check_dataset(xr.decode_cf(vds.vz.compute()), expected.load())


# --------------------------------------------------------------------------- #
# Remote
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("kind", ["scipy-v2", "nc4-cdf5"])
def test_s3_values_equal_local(files, kind, s3_bucket, s3_env):
    bucket, client = s3_bucket
    client.put_object(Bucket=bucket, Key="dir/file.nc", Body=file_bytes(files[kind]))
    url = f"s3://{bucket}/dir/file.nc"
    remote = open_virtual_dataset(url, parser=NetCDF3Parser(inline=InlinePolicy(max_chunk_bytes=4)))
    local = open_virtual_dataset(files[kind], parser=NetCDF3Parser(inline=InlinePolicy(max_chunk_bytes=4)))
    assert remote["temp"].data.manifest.urls == (url,)
    assert (remote["flag"].data.manifest.states == INLINED).all()
    xr.testing.assert_identical(remote.vz.compute(), local.vz.compute())
    detected = open_virtual_dataset(url)
    xr.testing.assert_identical(xr.decode_cf(detected.vz.compute()), xr.decode_cf(local.vz.compute()))


# --------------------------------------------------------------------------- #
# Bad input
# --------------------------------------------------------------------------- #


def _parse(path):
    return NetCDF3Parser()("file://" + str(path), ObjectStoreRegistry.default())


@pytest.mark.parametrize("cut", [2, 6, 20, 100, -1])
def test_truncated_header(tmp_path, files, cut):
    data = file_bytes(files["nc4-classic"])
    header_size = parse_header(ObstoreFile("file://" + files["nc4-classic"], ObjectStoreRegistry.default())).header_size
    n = header_size - 1 if cut == -1 else cut
    path = tmp_path / "cut.nc"
    path.write_bytes(data[:n])
    if n < 4:
        with pytest.raises(ParseError, match="not a netCDF3 file: starts with b'CD'") as info:
            _parse(path)
    else:
        with pytest.raises(ParseError, match=rf"truncated netCDF3 header at byte (\d+): .* the file has {n} bytes") as info:
            _parse(path)
        at = int(re.search(r"at byte (\d+)", str(info.value)).group(1))
        assert 4 <= at <= n
    assert str(path) in str(info.value)


def test_truncated_data(tmp_path, files):
    data = file_bytes(files["nc4-classic"])
    path = tmp_path / "short.nc"
    path.write_bytes(data[:-10])
    with pytest.raises(ParseError, match=r"truncated netCDF3 file: the data of variable 'pres' ends at byte") as info:
        _parse(path)
    assert str(path) in str(info.value)


def test_random_bytes_and_wrong_magic(tmp_path):
    path = tmp_path / "noise.nc"
    path.write_bytes(np.random.default_rng(1).bytes(4000))
    with pytest.raises(ParseError, match="not a netCDF3 file") as info:
        _parse(path)
    assert str(path) in str(info.value)
    with pytest.raises(ParseError, match="unrecognised file format") as info:
        open_virtual_dataset(str(path))
    assert str(path) in str(info.value)
    path.write_bytes(b"CDF\x03" + bytes(100))
    with pytest.raises(ParseError, match=r"not a netCDF3 file: starts with b'CDF\\x03'"):
        _parse(path)


def test_garbage_after_magic(tmp_path):
    path = tmp_path / "garbage.nc"
    # a huge dimension count must fail fast, not allocate or loop
    path.write_bytes(b"CDF\x01" + bytes(4) + (10).to_bytes(4, "big") + (2**31 - 1).to_bytes(4, "big") + bytes(40))
    with pytest.raises(ParseError, match=r"truncated netCDF3 header at byte 16: 2147483647 dimensions"):
        _parse(path)
    path.write_bytes(b"CDF\x01" + bytes(4) + (99).to_bytes(4, "big") + (1).to_bytes(4, "big") + bytes(40))
    with pytest.raises(ParseError, match=r"expected the dimensions tag 10, found 99"):
        _parse(path)


def test_scipy_scalar_bug_is_rejected(tmp_path):
    """scipy writes a scalar variable over record 1 when a file has record variables.

    netCDF-C refuses such a file; so do we, instead of virtualizing corrupt data.
    """
    path = str(tmp_path / "scipy_scalar.nc")
    with scipy.io.netcdf_file(path, "w") as ds:
        ds.createDimension("t", None)
        ds.createVariable("t", "f8", ("t",))[:] = [0.0, 1.0, 2.0]
        ds.createVariable("h", "f8", ())[...] = 99.0
    with scipy.io.netcdf_file(path, mmap=False) as ds:
        assert ds.variables["t"].data[1] == 99.0  # record 1 was overwritten
    with pytest.raises(OSError, match="Unknown file format"):
        netCDF4.Dataset(path)
    with pytest.raises(ParseError, match=r"corrupt netCDF3 file: .* variable 'h' .* overlaps the record variables|"
                       r"the record variables .* overlaps variable 'h'") as info:
        _parse(path)
    assert path in str(info.value)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.nc"
    path.write_bytes(b"")
    with pytest.raises(ParseError, match="empty file") as info:
        _parse(path)
    assert str(path) in str(info.value)
    with pytest.raises(ParseError, match="empty file"):
        open_virtual_dataset(str(path))
