"""Kerchunk writer: dict, JSON and Parquet references, read back by fsspec, zarr, xarray and kerchunk.

Every output is read by independent readers (fsspec's ReferenceFileSystem
with zarr's v2 format through xarray, kerchunk's own tooling) and compared
with ``xr.open_dataset`` of the original netCDF4 file.

Two fsspec details shape the Parquet reader used here:

* ``fsspec.filesystem("reference", fo=<directory>)`` reads Parquet with
  fastparquet, which is not installed, so the tests hand fsspec its own
  ``LazyReferenceMapper(..., engine="pyarrow")``;
* with pandas 3 a null ``path`` comes back as NaN, which fsspec's
  ``LazyReferenceMapper._load_one_key`` takes for a url (it tests
  ``is None``), so a missing chunk fails to read instead of reading as the
  fill value. Reading with ``future.infer_string`` off restores ``None``;
  the files themselves hold nulls, as fsspec's layout specifies.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import os
import time
import tracemalloc
import warnings
from contextlib import contextmanager
from pathlib import Path

import fsspec
import netCDF4
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import xarray as xr
import zarr
import zarr.codecs as zc
from fsspec.implementations.reference import LazyReferenceMapper
from zarr.storage import LocalStore

import vzdask.writers.kerchunk as writer
from vzdask import ChunkManifest, ManifestArray, ManifestGroup, ManifestStore, create_array_metadata
from vzdask.parsers.hdf5 import HDFParser
from vzdask.policy import InlinePolicy
from vzdask.registry import ObjectStoreRegistry
from vzdask.writers.kerchunk import to_kerchunk
from vzdask.xarray import MANIFEST_ENCODING_KEY, open_virtual_dataset, to_virtual_dataset

FORMATS = ("dict", "json", "parquet")
METADATA_NAMES = (".zarray", ".zattrs", ".zgroup")
ZARR_V2 = {"consolidated": False, "zarr_format": 2}


# --------------------------------------------------------------------------- #
# The netCDF4 file every case starts from
# --------------------------------------------------------------------------- #
def write_nc(path: Path) -> None:
    """Virtual, inlinable, missing, big-endian, scalar and grouped variables (all with a CF _FillValue)."""
    rng = np.random.default_rng(0)
    with netCDF4.Dataset(path, "w") as nc:
        nc.title = "kerchunk writer test"
        nc.setncattr("version", 3)
        nc.createDimension("time", 6)
        nc.createDimension("x", 40)
        t = nc.createVariable("time", "f8", ("time",))
        t[:] = np.arange(6)
        t.units = "days since 2000-01-01"
        x = nc.createVariable("x", "i4", ("x",))
        x[:] = np.arange(40) * 10
        air = nc.createVariable("air", "f8", ("time", "x"), chunksizes=(3, 20), fill_value=-9999.0)
        air[:] = rng.normal(size=(6, 40))
        air.units = "K"
        # chunk 0 compresses to ~20 bytes (inlined under a 300-byte threshold), chunk 1 to ~440 (virtual)
        v = nc.createVariable("v", "f4", ("time", "x"), chunksizes=(3, 40), zlib=True, shuffle=True,
                              fill_value=np.float32(-999))
        v[0:3] = 1.5
        v[3:] = rng.random((3, 40))
        v.scale_factor = 2.0
        m = nc.createVariable("m", "f4", ("time", "x"), chunksizes=(2, 20), fill_value=np.float32(np.nan))
        m[0:2, :] = 3.0  # 4 of 6 chunks never written: missing
        i = nc.createVariable("i", "i2", ("time", "x"), chunksizes=(3, 20), fill_value=np.int16(-1))
        i[0:3, 0:20] = 7  # 3 of 4 chunks missing
        be = nc.createVariable("be", ">i4", ("x",), endian="big", chunksizes=(10,))
        be[:] = np.arange(40) * -3
        crs = nc.createVariable("crs", "i4")
        crs.grid_mapping_name = "latitude_longitude"
        crs.assignValue(0)
        sub = nc.createGroup("sub")
        sub.note = "in a group"
        sub.createDimension("y", 5)
        w = sub.createVariable("w", "u1", ("y",))
        w[:] = [1, 2, 3, 4, 5]
        h = sub.createVariable("h", "f4", ("y",), chunksizes=(2,), fill_value=np.float32(-1))
        h[0:2] = [0.5, 1.5]  # chunks 1 and 2 missing


@pytest.fixture(scope="module")
def nc_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("nc") / "sample.nc"
    write_nc(path)
    return path


@pytest.fixture(scope="module")
def original(nc_path):
    with xr.open_dataset(nc_path) as ds:
        root = ds.load()
    with xr.open_dataset(nc_path, group="sub") as ds:
        sub = ds.load()
    return {"": root, "sub": sub}


# --------------------------------------------------------------------------- #
# Readers
# --------------------------------------------------------------------------- #
@contextmanager
def pandas_nulls_as_none():
    """pandas 3 reads null strings as NaN, which fsspec's Parquet reader takes for a url (see module docstring)."""
    import pandas as pd

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pd.option_context("future.infer_string", False):
            yield


def reference_fs(output, fmt: str):
    """fsspec's ReferenceFileSystem over a dict, a JSON file or a Parquet directory."""
    if fmt == "parquet":
        # remote_protocol given: without it fsspec scans the references for one, and its lazy Parquet mapper
        # takes a group's ``sub/.zgroup`` for an array's records (a KeyError when a set puts it first)
        return fsspec.filesystem("reference", fo=LazyReferenceMapper(str(output), fs=fsspec.filesystem("file"),
                                                                     engine="pyarrow"), remote_protocol="file")
    return fsspec.filesystem("reference", fo=output if fmt == "dict" else str(output))


def open_with_fsspec(output, fmt: str, group: str | None = None) -> xr.Dataset:
    with pandas_nulls_as_none():
        fs = reference_fs(output, fmt)
        with xr.open_dataset(fs.get_mapper(group or ""), engine="zarr", backend_kwargs=ZARR_V2) as ds:
            return ds.load()


def write(obj, fmt: str, tmp_path: Path, **kwargs):
    """Write ``obj`` in ``fmt``; returns what readers open (the dict, or the path)."""
    if fmt == "dict":
        return to_kerchunk(obj, format="dict", **kwargs)
    path = tmp_path / ("refs.json" if fmt == "json" else "refs.parq")
    assert to_kerchunk(obj, path, format=fmt, **kwargs) is None
    return path


def decoded_refs(output, fmt: str) -> dict:
    """Any output as ``{key: parsed JSON | [url, offset, length] | bytes}``, read without vzdask.

    Parquet rows are mapped back to chunk keys by their flat C-order index
    (record * record_size + row), as fsspec's LazyReferenceMapper does.
    """
    if fmt == "parquet":
        root = Path(output)
        zmetadata = json.loads((root / ".zmetadata").read_text())
        size = zmetadata["record_size"]
        out = dict(zmetadata["metadata"])
        for key, zarray in zmetadata["metadata"].items():
            if not key.endswith("/.zarray"):
                continue
            field = key[: -len("/.zarray")]
            grid = [math.ceil(s / c) for s, c in zip(zarray["shape"], zarray["chunks"])] or [1]
            for record in range(math.ceil(math.prod(grid) / size)):
                table = pq.read_table(root / field / f"refs.{record}.parq")
                assert table.column_names == ["path", "offset", "size", "raw"]
                assert table.schema.field("offset").type == pa.int64() and table.schema.field("size").type == pa.int64()
                rows = table.to_pylist()
                for j, row in enumerate(rows):
                    index = np.unravel_index(record * size + j, grid)
                    name = f"{field}/{'.'.join(str(int(i)) for i in index)}"
                    if row["raw"] is not None:
                        assert row["path"] is None
                        out[name] = bytes(row["raw"])
                    elif row["path"] is not None:
                        out[name] = [row["path"], row["offset"], row["size"]]
                    else:
                        assert row["offset"] == 0 and row["size"] == 0
        return out
    refs = output if fmt == "dict" else json.loads(Path(output).read_text())
    assert refs["version"] == 1
    return {key: _decode_value(key, value) for key, value in refs["refs"].items()}


def _decode_value(key: str, value):
    if key.rsplit("/", 1)[-1] in METADATA_NAMES:
        return json.loads(value) if isinstance(value, str) else value
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, str):  # kerchunk writes ASCII-decodable chunks as plain strings
        return base64.b64decode(value[7:]) if value.startswith("base64:") else value.encode()
    return list(value)


def chunk_refs(refs: dict, prefix: str) -> dict:
    return {k: v for k, v in refs.items() if k.startswith(prefix + "/") and k.rsplit("/", 1)[-1] not in METADATA_NAMES}


# --------------------------------------------------------------------------- #
# The cases: virtual only, mixed, persisted, loaded, missing, groups
# --------------------------------------------------------------------------- #
def build_case(case: str, nc_path: Path, original: dict):
    """(object to write, {group: expected Dataset}, check(refs) of the case's defining property)."""
    url = "file://" + str(nc_path)
    expected = {"": original[""]}
    if case == "virtual":
        obj = open_virtual_dataset(nc_path, loadable_variables=[])

        def check(refs):
            chunks = chunk_refs(refs, "air")
            assert len(chunks) == 4 and all(isinstance(v, list) and v[0] == url for v in chunks.values())
            assert isinstance(refs["time/0"], list)  # the coordinate stays virtual too

    elif case == "mixed":
        obj = open_virtual_dataset(nc_path, inline=InlinePolicy(max_chunk_bytes=300))
        counts = obj.variables["v"]._data.manifest.count()
        assert counts["virtual"] == 1 and counts["inlined"] == 1

        def check(refs):
            assert isinstance(refs["v/1.0"], list) and refs["v/1.0"][0] == url
            assert isinstance(refs["v/0.0"], bytes) and refs["v/0.0"][:1] == b"\x78"  # a zlib stream, as stored

    elif case == "persisted":
        ds = open_virtual_dataset(nc_path)
        persisted = ds.variables["air"]._data.persist()
        assert persisted.manifest.count() == {"virtual": 0, "inlined": 4, "missing": 0}
        obj = ds.assign(air=ds["air"].copy(data=persisted))

        def check(refs):
            chunks = chunk_refs(refs, "air")
            assert len(chunks) == 4 and all(isinstance(v, bytes) and len(v) == 480 for v in chunks.values())
            assert isinstance(refs["v/1.0"], list)

    elif case == "loaded":
        obj = open_virtual_dataset(nc_path, loadable_variables=["time", "x", "v", "crs"])
        assert MANIFEST_ENCODING_KEY in obj["v"].encoding and not isinstance(obj.variables["v"]._data, ManifestArray)

        def check(refs):
            # stored form, not re-encoded: v keeps its zlib stream and its virtual chunk, time its float64 days
            assert isinstance(refs["v/1.0"], list) and refs["v/1.0"][0] == url
            zarray = refs["v/.zarray"]
            assert zarray["dtype"] == "<f4" and zarray["compressor"] == {"id": "zlib", "level": 4}
            assert refs["v/.zattrs"]["scale_factor"] == 2.0
            assert refs["time/.zarray"]["dtype"] == "<f8" and refs["time/.zattrs"]["units"] == "days since 2000-01-01"

    elif case == "missing":
        obj = open_virtual_dataset(nc_path)

        def check(refs):
            assert sorted(chunk_refs(refs, "m")) == ["m/0.0", "m/0.1"]
            assert sorted(chunk_refs(refs, "i")) == ["i/0.0"]
            assert refs["m/.zarray"]["fill_value"] == "NaN" and refs["i/.zarray"]["fill_value"] == -1
            assert "_FillValue" not in refs["m/.zattrs"]

    elif case == "groups":
        obj = HDFParser()(url, ObjectStoreRegistry.default())
        expected["sub"] = original["sub"]

        def check(refs):
            assert refs["sub/.zgroup"] == {"zarr_format": 2} and refs["sub/.zattrs"] == {"note": "in a group"}
            assert sorted(chunk_refs(refs, "sub/h")) == ["sub/h/0"]
            assert refs["sub/w/.zattrs"] == {"_ARRAY_DIMENSIONS": ["y"]}

    else:
        raise AssertionError(case)
    return obj, expected, check


CASES = ("virtual", "mixed", "persisted", "loaded", "missing", "groups")


@pytest.mark.parametrize("case", CASES)
def test_formats_read_back_as_the_original(case, nc_path, original, tmp_path):
    obj, expected, check = build_case(case, nc_path, original)
    reference = None
    for fmt in FORMATS:
        output = write(obj, fmt, tmp_path, record_size=3)
        refs = decoded_refs(output, fmt)
        check(refs)
        if reference is None:
            reference = refs
        else:  # the three formats hold the same references and documents
            assert refs == reference, fmt
        for group, want in expected.items():
            got = open_with_fsspec(output, fmt, group=group or None)
            xr.testing.assert_identical(got, want)


def test_parquet_layout(nc_path, tmp_path):
    ds = open_virtual_dataset(nc_path, inline=InlinePolicy(max_chunk_bytes=300))
    out = tmp_path / "refs.parq"
    ds.vz.to_kerchunk(out, format="parquet", record_size=4, categorical_threshold=1)
    zmetadata = json.loads((out / ".zmetadata").read_text())
    assert zmetadata["record_size"] == 4
    assert zmetadata["metadata"][".zgroup"] == {"zarr_format": 2}
    assert zmetadata["metadata"]["air/.zattrs"] == {"_ARRAY_DIMENSIONS": ["time", "x"], "units": "K"}
    assert sorted(p.name for p in (out / "m").iterdir()) == ["refs.0.parq", "refs.1.parq"]  # 6 chunks, 4 per record
    m1 = pq.read_table(out / "m" / "refs.1.parq")
    assert m1.num_rows == 2 and m1.column("path").null_count == 2 and m1.column("raw").null_count == 2  # missing
    air = pq.read_table(out / "air" / "refs.0.parq")
    # 4 refs to one url: 4/1 > categorical_threshold=1, so the paths are dictionary-encoded (pandas categorical)
    assert pa.types.is_dictionary(air.schema.field("path").type)
    assert air.column("path").to_pylist() == ["file://" + str(nc_path)] * 4
    v = pq.read_table(out / "v" / "refs.0.parq").to_pylist()
    assert v[0]["path"] is None and v[0]["raw"] == ds.variables["v"]._data.manifest.inlined_data((0, 0))
    assert v[1]["raw"] is None and v[1]["path"] == "file://" + str(nc_path) and v[1]["size"] > 300
    crs = pq.read_table(out / "crs" / "refs.0.parq").to_pylist()  # a 0-d array: one row, key "crs/0"
    assert len(crs) == 1 and np.frombuffer(crs[0]["raw"], "<i4").tolist() == [0]
    mapper = LazyReferenceMapper(str(out), fs=fsspec.filesystem("file"), engine="pyarrow")
    assert mapper["v/1.0"] == [v[1]["path"], v[1]["offset"], v[1]["size"]]


# --------------------------------------------------------------------------- #
# The seed problem (#489): kerchunk's references -> vzdask -> the same references
# --------------------------------------------------------------------------- #
def kerchunk_refs(nc_path: Path) -> dict:
    import kerchunk.hdf

    return kerchunk.hdf.SingleHdf5ToZarr("file://" + str(nc_path), inline_threshold=300).translate()


def assert_same_references(ours: dict, theirs: dict, *, hdf5_fill_values: tuple[str, ...] = ()) -> None:
    """Equal keys, inline bytes and ``[url, offset, length]``; metadata equal as parsed JSON, modulo:

    1. kerchunk lists every codec under ``filters`` with ``compressor: null``;
       we put the last bytes codec in ``compressor``: the codec chains
       ``filters + [compressor]`` must be equal;
    2. kerchunk prefixes dimension names in subgroups with the group path
       (``"sub/y"``); vzdask's parsers name them as netCDF does (``"y"``);
    3. only for the arrays named in ``hdf5_fill_values``: kerchunk writes the
       HDF5 fill value of a dataset it does not take for a netCDF variable
       (a scalar without dimension scales, such as ``crs``) while we write
       ``null`` for a variable without CF ``_FillValue`` and no missing chunk.
    """
    assert sorted(ours) == sorted(theirs)
    for key, want in theirs.items():
        got = ours[key]
        name = key.rsplit("/", 1)[-1]
        if name == ".zarray":
            chain = lambda z: [c for c in (z.get("filters") or []) + [z.get("compressor")] if c is not None]  # noqa: E731
            assert chain(got) == chain(want), key
            ignored = ("filters", "compressor") + (("fill_value",) if key.rsplit("/", 1)[0] in hdf5_fill_values else ())
            if key.rsplit("/", 1)[0] in hdf5_fill_values:
                assert got["fill_value"] is None and want["fill_value"] is not None
            got = {k: v for k, v in got.items() if k not in ignored}
            want = {k: v for k, v in want.items() if k not in ignored}
        elif name == ".zattrs" and "_ARRAY_DIMENSIONS" in want and "/" in key[: -len("/.zattrs")]:
            group = key.rsplit("/", 2)[0]
            want = {**want, "_ARRAY_DIMENSIONS": [d.removeprefix(group + "/") for d in want["_ARRAY_DIMENSIONS"]]}
        assert got == want, key


def test_round_trip_kerchunk_references_through_the_parser(nc_path, tmp_path):
    kerchunk_parser = pytest.importorskip("vzdask.parsers.kerchunk")
    theirs = kerchunk_refs(nc_path)
    path = tmp_path / "kerchunk.json"
    path.write_text(json.dumps(theirs))
    store = kerchunk_parser.KerchunkJSONParser()("file://" + str(path), ObjectStoreRegistry.default())
    want = decoded_refs(theirs, "dict")
    assert any(isinstance(v, list) for v in want.values()) and any(isinstance(v, bytes) for v in want.values())

    assert_same_references(decoded_refs(to_kerchunk(store), "dict"), want)
    # through a virtual Dataset (root group only); loaded time/x are written in their stored form
    ds = to_virtual_dataset(store)
    assert not isinstance(ds.variables["time"]._data, ManifestArray)
    root = {k: v for k, v in want.items() if not k.startswith("sub/")}
    assert_same_references(decoded_refs(ds.vz.to_kerchunk(), "dict"), root)


def test_round_trip_kerchunk_references_from_the_netcdf_file(nc_path):
    """The same comparison with vzdask's own HDF5 parser (InlinePolicy mirroring kerchunk's ``size < 300``).

    Difference 3 applies to the scalar ``crs`` (see ``assert_same_references``;
    also ``test_no_fill_value_and_missing_chunks``).
    """
    want = decoded_refs(kerchunk_refs(nc_path), "dict")
    store = HDFParser(inline=InlinePolicy(max_chunk_bytes=299))("file://" + str(nc_path), ObjectStoreRegistry.default())
    assert_same_references(decoded_refs(to_kerchunk(store), "dict"), want, hdf5_fill_values=("crs",))


# --------------------------------------------------------------------------- #
# kerchunk's own tooling reads our output
# --------------------------------------------------------------------------- #
def test_kerchunk_tooling_reads_our_output(nc_path, original, tmp_path):
    from kerchunk.combine import MultiZarrToZarr
    from kerchunk.utils import refs_as_store

    ds = open_virtual_dataset(nc_path, inline=InlinePolicy(max_chunk_bytes=300))
    path = tmp_path / "refs.json"
    ds.vz.to_kerchunk(path, format="json")
    combined = MultiZarrToZarr([str(path)], concat_dims=["time"], identical_dims=["x", "be", "crs"]).translate()
    fs = fsspec.filesystem("reference", fo=combined)
    with xr.open_dataset(fs.get_mapper(""), engine="zarr", backend_kwargs=ZARR_V2) as got:
        xr.testing.assert_equal(got.load(), original[""])
    refs = ds.vz.to_kerchunk()
    with xr.open_dataset(refs_as_store(refs), engine="zarr", backend_kwargs=ZARR_V2) as got:
        xr.testing.assert_identical(got.load(), original[""])


def test_our_parser_reads_our_parquet(nc_path, original, tmp_path):
    kerchunk_parser = pytest.importorskip("vzdask.parsers.kerchunk")
    out = write(open_virtual_dataset(nc_path), "parquet", tmp_path, record_size=2)
    store = kerchunk_parser.KerchunkParquetParser()("file://" + str(out), ObjectStoreRegistry.default())
    got = xr.decode_cf(to_virtual_dataset(store).vz.compute())  # virtual variables keep CF attributes undecoded
    xr.testing.assert_identical(got, original[""])


# --------------------------------------------------------------------------- #
# Loaded variables: stored form when unchanged, CF-encoded inline otherwise
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("fmt", FORMATS)
def test_loaded_variables_without_stored_form(fmt, nc_path, original, tmp_path):
    ds = open_virtual_dataset(nc_path, loadable_variables=["time", "x", "air"])
    changed = ds["air"].values.copy()
    changed[0, 0] = 123.25  # changed after loading (encoding kept): the stored form no longer holds these values
    ds["air"] = ds["air"].copy(data=changed)
    assert MANIFEST_ENCODING_KEY in ds["air"].encoding
    labels = np.array([f"step {i}" for i in range(6)], dtype=object)
    ds["label"] = ("time", labels)
    ds["counts"] = xr.Variable(("time", "x"), np.arange(240, dtype="int64").reshape(6, 40), encoding={"chunks": (4, 16)})
    ds["when"] = ("time", original[""]["time"].values + np.timedelta64(1, "h"))
    output = write(ds, fmt, tmp_path)
    refs = decoded_refs(output, fmt)
    assert len(chunk_refs(refs, "counts")) == 2 * 3  # by the encoding's chunks, each inlined
    assert all(isinstance(v, bytes) for v in chunk_refs(refs, "air").values())  # re-encoded, inline
    assert refs["air/.zattrs"]["units"] == "K" and refs["air/.zarray"]["fill_value"] == -9999.0
    assert " since " in refs["when/.zattrs"]["units"] and refs["when/.zarray"]["dtype"] == "<i8"
    assert refs["x/0"][0] == "file://" + str(nc_path)  # x unchanged: its stored form, a reference into the file
    got = open_with_fsspec(output, fmt)
    want = original[""].copy(deep=True)
    want["air"].values[0, 0] = 123.25
    xr.testing.assert_equal(got["air"], want["air"])
    assert got["label"].values.tolist() == labels.tolist()
    np.testing.assert_array_equal(got["counts"].values, ds["counts"].values)
    np.testing.assert_array_equal(got["when"].values, ds["when"].values)
    xr.testing.assert_identical(got["time"], original[""]["time"])


@pytest.mark.parametrize("fmt", FORMATS)
def test_non_dimension_coordinates_stay_coordinates(fmt, nc_path, tmp_path):
    ds = open_virtual_dataset(nc_path).set_coords(["be", "crs"])
    output = write(ds, fmt, tmp_path)
    refs = decoded_refs(output, fmt)
    assert refs["air/.zattrs"]["coordinates"] == "be crs" and refs["m/.zattrs"]["coordinates"] == "be crs"
    got = open_with_fsspec(output, fmt)
    assert set(got.coords) == {"time", "x", "be", "crs"} and set(got.data_vars) == {"air", "v", "m", "i"}


def test_unchanged_loaded_variable_keeps_its_references(nc_path):
    ds = open_virtual_dataset(nc_path, loadable_variables=["air"])
    refs = decoded_refs(ds.vz.to_kerchunk(), "dict")
    manifest = ds["air"].encoding[MANIFEST_ENCODING_KEY].manifest
    for key, value in chunk_refs(refs, "air").items():
        index = tuple(int(i) for i in key.rsplit("/", 1)[1].split("."))
        assert value == list(manifest.entry(index)[1:])


def test_no_fill_value_and_missing_chunks(tmp_path):
    """A netCDF variable without _FillValue whose chunks are missing.

    kerchunk writes ``fill_value: null`` (missing chunks read as 0, while
    netCDF reads the HDF5 fill value, here netCDF's default -32767). We write
    the fill value so missing chunks read as it; xarray's v2 reader then
    masks it (NaN), the netCDF meaning of a fill value. Without missing
    chunks ``null`` is written, as kerchunk does.
    """
    path = tmp_path / "nofill.nc"
    with netCDF4.Dataset(path, "w") as nc:
        nc.createDimension("x", 8)
        a = nc.createVariable("a", "i2", ("x",), chunksizes=(4,), fill_value=False)
        a[:] = np.arange(8)
        b = nc.createVariable("b", "i2", ("x",), chunksizes=(4,))
        b[0:4] = 5
    refs = to_kerchunk(open_virtual_dataset(path))
    assert json.loads(refs["refs"]["a/.zarray"])["fill_value"] is None
    assert json.loads(refs["refs"]["b/.zarray"])["fill_value"] == -32767
    got = open_with_fsspec(refs, "dict")
    np.testing.assert_array_equal(got["a"].values, np.arange(8))
    np.testing.assert_array_equal(got["b"].values, [5, 5, 5, 5] + [np.nan] * 4)


# --------------------------------------------------------------------------- #
# Codecs: v3 chains as v2 filters/compressor, read back by zarr's v2 pipeline
# --------------------------------------------------------------------------- #
def virtual_zarr_array(tmp_path: Path, name: str, data: np.ndarray, chunks, **codecs) -> ManifestArray:
    """A ManifestArray whose every chunk (shard, when sharded) points at the file zarr-python wrote."""
    array = zarr.create_array(LocalStore(tmp_path / name), shape=data.shape, chunks=chunks, dtype=data.dtype,
                              dimension_names=[f"d{i}" for i in range(data.ndim)], fill_value=0,
                              config={"write_empty_chunks": True}, **codecs)
    array[...] = data
    stored = array.metadata.chunk_grid.chunk_shape  # the outer chunks
    grid = tuple(math.ceil(s / c) for s, c in zip(data.shape, stored))
    paths = np.empty(grid, dtype=object)
    offsets = np.zeros(grid, np.uint64)
    lengths = np.zeros(grid, np.uint64)
    for index in np.ndindex(*grid):
        file = tmp_path / name / array.metadata.encode_chunk_key(index)
        paths[index], lengths[index] = file.as_uri(), file.stat().st_size
    return ManifestArray(array.metadata, ChunkManifest.from_arrays(paths=paths, offsets=offsets, lengths=lengths))


CODECS = {
    "big-endian": ({"serializer": zc.BytesCodec(endian="big"), "compressors": None},
                   {"dtype": ">f8", "compressor": None, "filters": None}),
    "zstd-crc32c": ({"compressors": [zc.ZstdCodec(level=3, checksum=True), zc.Crc32cCodec()]},
                    {"filters": [{"id": "zstd", "level": 3, "checksum": True}], "compressor": {"id": "crc32c"}}),
    "gzip": ({"compressors": [zc.GzipCodec(level=2)]}, {"compressor": {"id": "gzip", "level": 2}}),
    "blosc": ({"compressors": [zc.BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle", typesize=8)]},
              {"compressor": {"id": "blosc", "cname": "zstd", "clevel": 3, "shuffle": 2, "blocksize": 0}}),
    "numcodecs": ({"filters": [zc.FixedScaleOffset(offset=0, scale=4, dtype="<f8", astype="<f8")],
                   "compressors": [zc.Shuffle(elementsize=8), zc.Zlib(level=1)]},
                  {"filters": [{"id": "fixedscaleoffset", "offset": 0, "scale": 4, "dtype": "<f8", "astype": "<f8"},
                               {"id": "shuffle", "elementsize": 8}], "compressor": {"id": "zlib", "level": 1}}),
    "v2-slash-keys": ({"chunk_key_encoding": {"name": "v2", "separator": "/"}, "compressors": None},
                      {"dimension_separator": "/", "compressor": None}),
    "transpose-F": ({"filters": [zc.TransposeCodec(order=(1, 0))], "compressors": [zc.ZstdCodec(level=1)]},
                    {"order": "F", "compressor": {"id": "zstd", "level": 1}}),
}


@pytest.mark.parametrize("codec", CODECS)
def test_codec_chains_decode_the_same_bytes(codec, tmp_path):
    kwargs, expected = CODECS[codec]
    data = np.round(np.linspace(-5, 5, 7 * 9).reshape(7, 9) ** 3, 2)
    array = virtual_zarr_array(tmp_path, "a", data, (3, 4), **kwargs)
    group = ManifestGroup(arrays={"a": array})
    refs = to_kerchunk(group)
    zarray = json.loads(refs["refs"]["a/.zarray"])
    for key, value in expected.items():
        assert zarray[key] == value, key
    assert f"a/2{zarray['dimension_separator']}1" in refs["refs"]
    want = np.round(data * 4) / 4 if codec == "numcodecs" else data
    np.testing.assert_array_equal(open_with_fsspec(refs, "dict")["a"].values, want)
    parquet = write(group, "parquet", tmp_path, record_size=5)  # Parquet keys always use "."
    assert json.loads((parquet / ".zmetadata").read_text())["metadata"]["a/.zarray"]["dimension_separator"] == "."
    np.testing.assert_array_equal(open_with_fsspec(parquet, "parquet")["a"].values, want)


@pytest.mark.parametrize(
    "shape, chunks, kwargs, codec",
    [
        ((4, 8), (2, 4), {"shards": (4, 8), "compressors": None}, "sharding_indexed"),
        ((4, 8, 2), (2, 4, 2), {"filters": [zc.TransposeCodec(order=(1, 0, 2))], "compressors": None}, "transpose"),
    ],
)
def test_codecs_without_v2_equivalent_are_refused(shape, chunks, kwargs, codec, tmp_path):
    data = np.arange(math.prod(shape), dtype="int32").reshape(shape)
    array = virtual_zarr_array(tmp_path, "bad_var", data, chunks, **kwargs)
    assert [c.to_dict()["name"] for c in array.metadata.codecs][0] == codec
    store = ManifestStore(ManifestGroup(arrays={"bad_var": array}))
    for fmt in FORMATS:
        with pytest.raises(ValueError, match=rf"variable 'bad_var'.*'{codec}'"):
            write(store, fmt, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad_var"]  # nothing written, nothing left behind


# --------------------------------------------------------------------------- #
# Atomic output
# --------------------------------------------------------------------------- #
def snapshot(directory: Path) -> dict[str, str]:
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(directory.rglob("*"))}


@pytest.mark.parametrize("fmt", ["json", "parquet"])
def test_failures_leave_previous_output_untouched(fmt, nc_path, tmp_path, monkeypatch):
    ds = open_virtual_dataset(nc_path)
    out = write(ds, fmt, tmp_path, record_size=2)
    before = snapshot(tmp_path)
    assert any(name.endswith(".parq") for name in before) == (fmt == "parquet")

    bad = ds.assign_attrs(history=object())  # not JSON: refused before anything is written
    with pytest.raises(TypeError, match="history"):
        write(bad, fmt, tmp_path)
    assert snapshot(tmp_path) == before

    if fmt == "parquet":  # fail midway through the Parquet files
        calls = []
        real = pq.write_table

        def failing(*args, **kwargs):
            calls.append(1)
            if len(calls) == 5:
                raise OSError("disk full (injected)")
            return real(*args, **kwargs)

        monkeypatch.setattr(pq, "write_table", failing)
        with pytest.raises(OSError, match="injected"):
            write(ds.assign(air=ds["air"] * 1), fmt, tmp_path, record_size=1)
        assert len(calls) == 5
        monkeypatch.undo()
        assert snapshot(tmp_path) == before

        renames = []
        real_rename = os.rename

        def failing_rename(src, dst):  # the swap: old -> backup works, new -> target fails
            renames.append((src, dst))
            if len(renames) == 2:
                raise OSError("rename failed (injected)")
            return real_rename(src, dst)

        monkeypatch.setattr(writer.os, "rename", failing_rename)
        with pytest.raises(OSError, match="injected"):
            write(ds.drop_vars("air"), fmt, tmp_path)
        monkeypatch.undo()
    else:  # fail at the very end, when the finished temporary file replaces the target
        def failing_replace(src, dst):
            assert Path(src).exists() and Path(src).name.startswith(".refs.json.tmp-")
            raise OSError("replace failed (injected)")

        monkeypatch.setattr(writer.os, "replace", failing_replace)
        with pytest.raises(OSError, match="injected"):
            write(ds.drop_vars("air"), fmt, tmp_path)
        monkeypatch.undo()
    assert snapshot(tmp_path) == before  # byte-for-byte, and no temporary or backup files
    assert "air" in open_with_fsspec(out, fmt)

    write(ds.drop_vars("air"), fmt, tmp_path)  # and a successful overwrite replaces it whole
    assert "air" not in open_with_fsspec(out, fmt)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    if fmt == "parquet":
        assert not (out / "air").exists()


def test_bad_arguments(nc_path, tmp_path):
    ds = open_virtual_dataset(nc_path)
    with pytest.raises(ValueError, match="format"):
        to_kerchunk(ds, tmp_path / "x", format="yaml")
    with pytest.raises(ValueError, match="needs a path"):
        to_kerchunk(ds, format="json")
    with pytest.raises(ValueError, match="local paths only"):
        to_kerchunk(ds, "s3://bucket/refs.json", format="json")
    with pytest.raises(ValueError, match="record_size"):
        to_kerchunk(ds, tmp_path / "p", format="parquet", record_size=0)
    with pytest.raises(TypeError, match="Dataset, ManifestGroup or ManifestStore"):
        to_kerchunk({"a": 1})


# --------------------------------------------------------------------------- #
# Scale: a million references to Parquet without a dict
# --------------------------------------------------------------------------- #
def test_million_chunk_parquet_without_a_dict(tmp_path, monkeypatch):
    grid = (1000, 1000)
    url = "s3://bucket/a/rather/long/prefix/for/the/data/file.nc"
    offsets = np.arange(math.prod(grid), dtype=np.uint64).reshape(grid) * 1000 + 64
    manifest = ChunkManifest.from_arrays(paths=np.full(grid, url, dtype=object), offsets=offsets,
                                         lengths=np.full(grid, 1000, np.uint64))
    metadata = create_array_metadata(shape=(10_000, 10_000), chunk_shape=(10, 10), dtype="f8",
                                     dimension_names=("y", "x"))
    group = ManifestGroup(arrays={"big": ManifestArray(metadata, manifest)})

    def no_dict(self):
        raise AssertionError("the Parquet writer must not build a dict of references")

    monkeypatch.setattr(ChunkManifest, "dict", no_dict)
    out = tmp_path / "big.parq"
    tracemalloc.start()
    start = time.perf_counter()
    to_kerchunk(group, out, format="parquet")
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    # a dict of 1e6 refs costs ~300 MB of Python objects; the writer's numpy temporaries stay near one record's
    assert peak < 40e6, f"peak {peak / 1e6:.1f} MB"
    assert seconds < 5, f"{seconds:.2f} s"
    files = sorted((out / "big").iterdir(), key=lambda p: int(p.name.split(".")[1]))
    assert [p.name for p in files] == [f"refs.{i}.parq" for i in range(10)]
    last = pq.read_table(files[-1])
    assert pa.types.is_dictionary(last.schema.field("path").type)
    assert last.num_rows == 100_000
    assert last.column("offset")[-1].as_py() == int(offsets[-1, -1])
    assert last.column("offset")[12_345].as_py() == int(offsets.reshape(-1)[900_000 + 12_345])
    mapper = LazyReferenceMapper(str(out), fs=fsspec.filesystem("file"), engine="pyarrow")
    assert mapper["big/987.654"] == [url, int(offsets[987, 654]), 1000]


# --------------------------------------------------------------------------- #
# Persisted on a distributed cluster: Parquet written by the workers (more in test_distributed_write.py)
# --------------------------------------------------------------------------- #
def test_persisted_on_cluster_then_written(nc_path, original, dask_client, tmp_path):
    ds = open_virtual_dataset(nc_path).vz.persist()
    assert not ds.variables["air"]._data.is_gathered
    out = write(ds, "parquet", tmp_path)
    assert not ds.variables["air"]._data.is_gathered
    refs = decoded_refs(out, "parquet")
    assert all(isinstance(v, bytes) for v in chunk_refs(refs, "air").values())
    xr.testing.assert_identical(open_with_fsspec(out, "parquet"), original[""])


def _sparse_states(index: tuple[int, ...]) -> str:
    """Mostly missing: the writer names only the present chunks."""
    return {0: "virtual", 1: "inlined"}.get(sum(index) % 5, "missing")


@pytest.mark.parametrize("states", ["mixed", "sparse", "all virtual"])
def test_json_file_is_json_dumps_of_the_dict_references(make_virtual, tmp_path, nc_path, states):
    """Byte for byte what ``json.dumps(refs, separators=(",", ":"))`` writes, whatever the chunk states,
    key separators, escaped names or scalar arrays; and fsspec reads it back."""
    state_of = {"mixed": lambda ix: ("virtual", "inlined", "missing")[sum(ix) % 3], "sparse": _sparse_states,
                "all virtual": lambda ix: "virtual"}[states]
    data = np.arange(7 * 9 * 4, dtype="f4").reshape(7, 9, 4)
    case = make_virtual(data, (2, 4, 3), state_of=state_of)
    slash = virtual_zarr_array(tmp_path, "s", data[0], (3, 4),
                               chunk_key_encoding={"name": "v2", "separator": "/"}, compressors=None)
    scalar = virtual_zarr_array(tmp_path, "z", np.array(2.5), ())
    group = ManifestGroup(arrays={"s": slash, "z": scalar},
                          groups={"sub": ManifestGroup(arrays={"tëmp \"q\"": case.array})}, attributes={"a": 1})
    for obj in (group, open_virtual_dataset(nc_path, inline=InlinePolicy(max_chunk_bytes=300))):
        path = write(obj, "json", tmp_path)
        assert path.read_text(encoding="utf-8") == json.dumps(to_kerchunk(obj), separators=(",", ":"))
    refs = json.loads(write(group, "json", tmp_path).read_text())["refs"]
    assert "s/2/0" in refs and "z/0" in refs
    got = open_with_fsspec(write(group, "json", tmp_path), "json", group="sub")
    np.testing.assert_array_equal(got["tëmp \"q\""].values, case.expected)


@pytest.mark.parametrize("shape", [(5,), (3, 1, 4), (2, 3, 4, 2), (1 << 18,)])  # the last: too big to remember
def test_chunk_names_are_the_c_order_keys(shape):
    from vzdask.writers.kerchunk import _chunk_names

    count = int(np.prod(shape))
    for present in (np.arange(count), np.arange(0, count, 2), np.array([count - 1])):
        expected = [".".join(map(str, ix)) for ix in zip(*(c.tolist() for c in np.unravel_index(present, shape)))]
        assert list(_chunk_names(shape, present, ".")) == expected
    assert list(_chunk_names(shape, np.arange(count), "/"))[-1] == "/".join(str(s - 1) for s in shape)
