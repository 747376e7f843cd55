"""Kerchunk reference parsers: JSON (v0, v1 with templates/gen) and Parquet, from references kerchunk/fsspec made."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import fsspec
import netCDF4
import numcodecs
import numpy as np
import pytest
import xarray as xr
import zarr
from fsspec.implementations.reference import LazyReferenceMapper
from kerchunk.hdf import SingleHdf5ToZarr
from zarr.storage import LocalStore

from vzdask.manifests.manifest import INLINED, MISSING, VIRTUAL
from vzdask.parsers import ParseError, detect_parser
from vzdask.parsers.kerchunk import KerchunkJSONParser, KerchunkParquetParser
from vzdask.policy import InlinePolicy
from vzdask.registry import ObjectStoreRegistry
from vzdask.xarray import open_virtual_dataset

RNG = np.random.default_rng(7)
INLINE_THRESHOLD = 300


# --------------------------------------------------------------------------- #
# sample files and the references kerchunk makes for them
# --------------------------------------------------------------------------- #
@pytest.fixture(scope="module")
def nc_file(tmp_path_factory) -> Path:
    """A netCDF4 file whose chunks compress to sizes on both sides of INLINE_THRESHOLD."""
    path = tmp_path_factory.mktemp("kerchunk") / "sample.nc"
    tas = (RNG.random((6, 20, 30)) * 3000).astype("i2")
    tas[:2] = 7  # constant: compresses to a few bytes -> inlined by kerchunk
    tas[3, 0, :4] = -999  # the fill value: masked by CF decoding
    with netCDF4.Dataset(path, "w") as nc:
        nc.title = "kerchunk sample"
        nc.createDimension("time", None)
        nc.createDimension("lat", 20)
        nc.createDimension("lon", 30)
        time = nc.createVariable("time", "f8", ("time",))
        time.units = "days since 2000-01-01"
        time[:] = np.arange(6)
        lat = nc.createVariable("lat", "f4", ("lat",))
        lat[:] = np.linspace(-5, 5, 20)
        v = nc.createVariable("tas", "i2", ("time", "lat", "lon"), zlib=True, shuffle=True,
                              chunksizes=(1, 10, 30), fill_value=-999)
        v[:] = tas  # raw integers: the attributes below are set afterwards, so nothing is packed
        v.scale_factor = 0.01
        v.units = "K"
        big = nc.createVariable("big", ">f8", ("lat", "lon"), endian="big")
        big[:] = RNG.random((20, 30))
        flt = nc.createVariable("flt", "f4", ("lat", "lon"), fill_value=np.float32(np.nan), chunksizes=(10, 10))
        values = RNG.random((20, 30)).astype("f4")
        values[0, 0] = np.nan
        flt[:] = values
        name = nc.createVariable("name", str, ("lat",))
        name[:] = np.array([f"station-{i}" for i in range(20)], dtype=object)
        sub = nc.createGroup("sub")
        sub.createDimension("n", 5)
        x = sub.createVariable("x", "u1", ("n",))
        x[:] = np.arange(5, dtype="u1") * 3
        sub.note = "a subgroup"
    return path


@pytest.fixture(scope="module")
def kerchunk_refs(nc_file) -> dict:
    """kerchunk's version-1 reference dict (some chunks inlined, as base64 or raw text)."""
    return SingleHdf5ToZarr(str(nc_file), inline_threshold=INLINE_THRESHOLD).translate()


@pytest.fixture(scope="module")
def refs_json(kerchunk_refs, nc_file) -> Path:
    path = nc_file.parent / "refs.json"
    path.write_text(json.dumps(kerchunk_refs))
    return path


@pytest.fixture(scope="module")
def refs_parquet(kerchunk_refs, nc_file) -> Path:
    """The same references in fsspec's Parquet layout (3 records per file), written by fsspec itself."""
    root = nc_file.parent / "refs.parq"
    mapper = LazyReferenceMapper.create(str(root), fs=fsspec.filesystem("file"), record_size=3, engine="pyarrow")
    for key in sorted(kerchunk_refs["refs"]):
        mapper[key] = kerchunk_refs["refs"][key]
    mapper.flush()
    return root


def _chunk_bytes(manifest, index) -> bytes:
    """The stored bytes of one chunk, read straight from the file (virtual) or the manifest (inlined)."""
    entry = manifest.entry(index)
    if entry[0] == "inlined":
        return entry[1]
    _, url, offset, length = entry
    assert url.startswith("file://")
    with open(url[len("file://"):], "rb") as f:
        f.seek(offset)
        return f.read(length)


def _decoded_reference(value) -> bytes:
    return base64.b64decode(value[7:]) if value.startswith("base64:") else value.encode()


# --------------------------------------------------------------------------- #
# JSON references from kerchunk
# --------------------------------------------------------------------------- #
def test_kerchunk_json_values_match_netcdf(refs_json, nc_file):
    vds = open_virtual_dataset(refs_json, parser=KerchunkJSONParser())
    assert set(vds.vz.virtual_variables) == {"tas", "big", "flt", "name"}
    assert vds.attrs["title"] == "kerchunk sample"
    assert vds.tas.dims == ("time", "lat", "lon") and vds.tas.attrs["units"] == "K"
    assert vds.tas.attrs["_FillValue"] == -999 and vds.tas.attrs["scale_factor"] == 0.01
    decoded = xr.decode_cf(vds.vz.compute())
    expected = xr.open_dataset(nc_file)
    xr.testing.assert_identical(decoded, expected)
    assert np.isnan(decoded.flt.values[0, 0]) and np.isnan(decoded.tas.values[3, 0, :4]).all()
    # undecoded values are the integers in the file
    raw = xr.open_dataset(nc_file, mask_and_scale=False)
    np.testing.assert_array_equal(vds.tas.data.compute(), raw.tas.values)


def test_inlined_and_virtual_chunks_carry_kerchunks_exact_references(refs_json, kerchunk_refs, nc_file):
    vds = open_virtual_dataset(refs_json, parser=KerchunkJSONParser())
    refs = kerchunk_refs["refs"]
    seen = {INLINED: 0, VIRTUAL: 0}
    for name in ("tas", "big", "flt", "name", "lat", "time"):
        manifest = vds[name].data.manifest if name in vds.vz.virtual_variables else None
        if manifest is None:
            continue
        for key, value in refs.items():
            if not key.startswith(name + "/") or "/." in key:
                continue
            index = tuple(int(i) for i in key.split("/")[1].split("."))
            if isinstance(value, str):
                assert manifest.states[index] == INLINED, key
                assert manifest.inlined_data(index) == _decoded_reference(value), key
            else:
                assert manifest.states[index] == VIRTUAL, key
                assert manifest.entry(index) == ("virtual", nc_file.as_uri(), value[1], value[2]), key
            seen[int(manifest.states[index])] += 1
    # the sample really mixes both kinds, including raw (non-base64) inline text
    assert seen[INLINED] >= 3 and seen[VIRTUAL] >= 3
    assert any(isinstance(v, str) and not v.startswith("base64:") and "/." not in k for k, v in refs.items())
    assert vds.tas.data.manifest.count() == {"virtual": 8, "inlined": 4, "missing": 0}


def test_detection_picks_the_kerchunk_parsers(refs_json, refs_parquet, nc_file):
    registry = ObjectStoreRegistry.default()
    assert isinstance(detect_parser(refs_json.as_uri(), registry), KerchunkJSONParser)
    parquet = detect_parser(refs_parquet.as_uri(), registry, group="sub")
    assert isinstance(parquet, KerchunkParquetParser) and parquet.group == "sub"
    expected = xr.open_dataset(nc_file)
    for path in (refs_json, refs_parquet):
        xr.testing.assert_identical(xr.decode_cf(open_virtual_dataset(path).vz.compute()), expected)


def test_subgroup_selection(refs_json, refs_parquet, nc_file):
    expected = xr.open_dataset(nc_file, group="sub")
    for path, parser in ((refs_json, KerchunkJSONParser), (refs_parquet, KerchunkParquetParser)):
        vds = open_virtual_dataset(path, parser=parser(group="sub"))
        assert vds.x.dims == ("n",)  # kerchunk writes "sub/n"; the group's own prefix is dropped
        xr.testing.assert_identical(vds.vz.compute(), expected)
        xr.testing.assert_identical(open_virtual_dataset(path, group="sub").vz.compute(), expected)
    with pytest.raises(ParseError, match=r"refs\.json: no group 'nope'"):
        KerchunkJSONParser(group="nope")(refs_json.as_uri(), ObjectStoreRegistry.default())


def test_version0_with_relative_urls(kerchunk_refs, nc_file, tmp_path):
    """A plain dict (version 0) whose urls are relative to the reference file, including ``..``."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "sample.nc").write_bytes(nc_file.read_bytes())
    (tmp_path / "refs").mkdir()
    refs = {k: (["../data/sample.nc", *v[1:]] if isinstance(v, list) else v) for k, v in kerchunk_refs["refs"].items()}
    path = tmp_path / "refs" / "v0.json"
    path.write_text(json.dumps(refs))
    vds = open_virtual_dataset(path, parser=KerchunkJSONParser(relative_urls="references"))
    assert vds.tas.data.manifest.urls == ((data / "sample.nc").as_uri(),)
    xr.testing.assert_identical(xr.decode_cf(vds.vz.compute()), xr.open_dataset(nc_file))


def test_relative_urls_are_refused_unless_told_how_to_read_them(kerchunk_refs, nc_file, tmp_path, monkeypatch):
    """fsspec reads a relative url from the current directory; by default vzdask refuses to guess."""
    beside, elsewhere = tmp_path / "beside", tmp_path / "elsewhere"
    for directory in (beside, elsewhere):
        directory.mkdir()
    (beside / "sample.nc").write_bytes(nc_file.read_bytes())
    # the same layout, other values in the uncompressed variable: tells the two files apart
    _, offset, length = kerchunk_refs["refs"]["big/0.0"]
    changed = bytearray(nc_file.read_bytes())
    changed[offset : offset + length] = (np.arange(length // 8, dtype=">f8") + 0.5).tobytes()
    (elsewhere / "sample.nc").write_bytes(bytes(changed))
    refs = json.loads(json.dumps(kerchunk_refs))
    refs["refs"] = {k: (["sample.nc", *v[1:]] if isinstance(v, list) else v) for k, v in refs["refs"].items()}
    path = beside / "refs.json"
    path.write_text(json.dumps(refs))
    monkeypatch.chdir(elsewhere)
    with pytest.raises(ParseError, match=r"the reference url 'sample.nc' is relative: fsspec reads it from the "
                       rf"current directory \({elsewhere}\).*relative_urls='references' or relative_urls='cwd'"):
        open_virtual_dataset(path)
    # "cwd" reads what fsspec reads; "references" the file beside the references
    fs = fsspec.filesystem("reference", fo=str(path))
    with xr.open_dataset(fs.get_mapper(""), engine="zarr", backend_kwargs={"consolidated": False}) as by_fsspec:
        as_fsspec = open_virtual_dataset(path, parser=KerchunkJSONParser(relative_urls="cwd"))
        assert as_fsspec.big.data.manifest.urls == ((elsewhere / "sample.nc").as_uri(),)
        np.testing.assert_array_equal(as_fsspec["big"].data.compute(), by_fsspec["big"].values)
        with netCDF4.Dataset(beside / "sample.nc") as original:
            assert not np.array_equal(by_fsspec["big"].values, original["big"][:])  # fsspec read the other file
    beside_refs = open_virtual_dataset(path, parser=KerchunkJSONParser(relative_urls="references"))
    with netCDF4.Dataset(beside / "sample.nc") as expected:
        np.testing.assert_array_equal(beside_refs["big"].data.compute(), expected["big"][:])
    with pytest.raises(ValueError, match="relative_urls must be one of"):
        KerchunkParquetParser(relative_urls="here")


def test_compressed_json_and_refs_without_version(kerchunk_refs, nc_file, tmp_path):
    import gzip

    unversioned = {"refs": kerchunk_refs["refs"]}  # {"refs": ...} without "version"
    path = tmp_path / "refs.json.gz"
    path.write_bytes(gzip.compress(json.dumps(unversioned).encode()))
    vds = open_virtual_dataset(path, parser=KerchunkJSONParser())
    xr.testing.assert_identical(xr.decode_cf(vds.vz.compute()), xr.open_dataset(nc_file))


def test_inline_policy_copies_chunk_bytes(refs_json, nc_file):
    vds = open_virtual_dataset(refs_json, parser=KerchunkJSONParser(inline=InlinePolicy(variables={"big"})))
    manifest = vds.big.data.manifest
    assert manifest.count() == {"virtual": 0, "inlined": 1, "missing": 0}
    plain = open_virtual_dataset(refs_json, parser=KerchunkJSONParser()).big.data.manifest
    assert manifest.inlined_data((0, 0)) == _chunk_bytes(plain, (0, 0))
    np.testing.assert_array_equal(vds.big.data.compute(), xr.open_dataset(nc_file).big.values)


# --------------------------------------------------------------------------- #
# Parquet references
# --------------------------------------------------------------------------- #
def test_parquet_refs_match_json_refs(refs_parquet, refs_json, nc_file):
    from_parquet = open_virtual_dataset(refs_parquet, parser=KerchunkParquetParser())
    from_json = open_virtual_dataset(refs_json, parser=KerchunkJSONParser())
    for name in from_json.vz.virtual_variables:
        a, b = from_parquet[name].data.manifest, from_json[name].data.manifest
        assert a == b, name  # same states, urls, offsets and inlined bytes
    xr.testing.assert_identical(xr.decode_cf(from_parquet.vz.compute()), xr.open_dataset(nc_file))


# --------------------------------------------------------------------------- #
# zarr v2 stores as references: [url] whole objects, "/" keys, order F, filters
# --------------------------------------------------------------------------- #
@pytest.fixture(scope="module")
def zarr_v2(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("zarr2") / "store.zarr"
    group = zarr.open_group(LocalStore(root), mode="w", zarr_format=2)
    group.attrs["title"] = "zarr v2"
    fort = group.create_array(
        "fort", shape=(7, 9), chunks=(3, 4), dtype=">i4", order="F", fill_value=-1,
        compressors=numcodecs.Blosc(cname="lz4", clevel=5, shuffle=1), filters=[numcodecs.Delta(dtype=">i4")],
        chunk_key_encoding={"name": "v2", "separator": "/"},
    )
    fort[:] = (np.arange(63) * 7).reshape(7, 9)
    fort.attrs["_ARRAY_DIMENSIONS"] = ["y", "x"]
    gaps = group.create_array("gaps", shape=(10,), chunks=(4,), dtype="f8", fill_value=np.nan,
                              compressors=numcodecs.Zstd(level=3))
    gaps[:4] = 1.5
    gaps[8:] = 2.5  # the middle chunk is never written: missing
    gaps.attrs["_ARRAY_DIMENSIONS"] = ["t"]
    scalar = group.create_array("scalar", shape=(), dtype="<f4", compressors=None, fill_value=0)
    scalar[()] = 3.25
    scalar.attrs["_ARRAY_DIMENSIONS"] = []
    return root


def _refs_from_store(root: Path) -> dict:
    """Version-0 references to every file of a zarr v2 store: alternately [url] and [path, 0, size]."""
    refs = {}
    for i, f in enumerate(sorted(p for p in root.rglob("*") if p.is_file())):
        key = f.relative_to(root).as_posix()
        if f.name.startswith(".z"):
            refs[key] = f.read_text()
        elif i % 2:
            refs[key] = [f.as_uri()]
        else:
            refs[key] = [str(f), 0, f.stat().st_size]
    return refs


def test_zarr_v2_store_through_whole_file_refs(zarr_v2, tmp_path):
    refs = _refs_from_store(zarr_v2)
    assert any(len(v) == 1 for v in refs.values() if isinstance(v, list))
    path = tmp_path / "store.json"
    path.write_text(json.dumps(refs))
    vds = open_virtual_dataset(path, loadable_variables=[])
    expected = xr.open_zarr(zarr_v2, consolidated=False, zarr_format=2).load()
    xr.testing.assert_identical(xr.decode_cf(vds.vz.compute()), expected)
    gaps = vds.gaps.data.manifest
    assert list(gaps.states) == [VIRTUAL, MISSING, VIRTUAL]
    assert gaps.lengths[0] == (zarr_v2 / "gaps" / "0").stat().st_size  # size from a head request
    fort = vds.fort.data
    assert fort.manifest.shape == (3, 3) and (fort.manifest.states == VIRTUAL).all()
    np.testing.assert_array_equal(fort.compute(), (np.arange(63) * 7).reshape(7, 9))
    assert vds.scalar.shape == () and float(vds.scalar.data.compute()) == 3.25
    # the same references through Parquet ([url] rows have size 0); fsspec's mapper wants "0.1" keys
    root = tmp_path / "store.parq"
    mapper = LazyReferenceMapper.create(str(root), fs=fsspec.filesystem("file"), record_size=4, engine="pyarrow")
    for key in sorted(refs):
        mapper[key.replace("fort/0/", "fort/0.").replace("fort/1/", "fort/1.").replace("fort/2/", "fort/2.")] = refs[key]
    mapper.flush()
    from_parquet = open_virtual_dataset(root, loadable_variables=[])
    for name in ("fort", "gaps", "scalar"):
        assert from_parquet[name].data.manifest == vds[name].data.manifest, name


# --------------------------------------------------------------------------- #
# version 1: templates and gen, checked against fsspec's ReferenceFileSystem
# --------------------------------------------------------------------------- #
def _zarray(shape, chunks, dtype="<f8"):
    return json.dumps({"zarr_format": 2, "shape": shape, "chunks": chunks, "dtype": dtype, "compressor": None,
                       "filters": None, "fill_value": None, "order": "C"})


def test_version1_templates_and_gen(tmp_path):
    blocks = RNG.random((5, 10))  # x: five chunks of 10 float64 after a 100-byte header
    (tmp_path / "blocks.bin").write_bytes(b"H" * 100 + blocks.tobytes())
    grid = RNG.random((2, 3, 4))  # y: (2, 3) chunks of 4 values, in C order, after a 16-byte header
    (tmp_path / "grid.bin").write_bytes(b"G" * 16 + grid.tobytes())
    parts = RNG.random((3, 6))  # z: one whole file per chunk
    for k in range(3):
        (tmp_path / f"part{k}.bin").write_bytes(parts[k].tobytes())
    refs = {
        "version": 1,
        "templates": {"d": tmp_path.as_uri(), "f": "{{root}}/{{name}}.bin"},
        "gen": [
            {"key": "x/{{i}}", "url": "{{d}}/blocks.bin", "offset": "{{100 + i * 80}}", "length": "80",
             "dimensions": {"i": {"stop": 4}}},
            {"key": "y/{{i}}.{{j}}", "url": "{{f(root=d, name='grid')}}", "offset": "{{16 + (i * 3 + j) * 32}}",
             "length": "32", "dimensions": {"i": [0, 1], "j": {"start": 0, "stop": 3}}},
            {"key": "z/{{k}}", "url": "{{d}}/part{{'%d' % k}}.bin", "dimensions": {"k": {"stop": 3}}},
        ],
        "refs": {
            ".zgroup": '{"zarr_format": 2}',
            ".zattrs": {"made": "by hand"},
            "x/.zarray": _zarray([50], [10]),
            "x/.zattrs": '{"_ARRAY_DIMENSIONS": ["i"]}',
            "x/4": ["{{ d ~ '/blocks.bin' }}", 420, 80],  # jinja-only syntax: rendered by jinja2
            "y/.zarray": _zarray([2, 12], [1, 4]),
            "y/.zattrs": '{"_ARRAY_DIMENSIONS": ["a", "b"]}',
            "z/.zarray": _zarray([18], [6]),
            "z/.zattrs": '{"_ARRAY_DIMENSIONS": ["c"]}',
            "w/.zarray": _zarray([2, 12], [2, 12], dtype="|u1"),  # no _ARRAY_DIMENSIONS: phony names
            "w/0.0": "base64:" + base64.b64encode(bytes(range(24))).decode(),
        },
    }
    path = tmp_path / "v1.json"
    path.write_text(json.dumps(refs))
    vds = open_virtual_dataset(path, loadable_variables=[])
    assert vds.attrs == {"made": "by hand"}
    np.testing.assert_array_equal(vds.x.data.compute(), blocks.ravel())
    np.testing.assert_array_equal(vds.y.data.compute(), grid.reshape(2, 12))
    np.testing.assert_array_equal(vds.z.data.compute(), parts.ravel())
    assert vds.x.data.manifest.entry((2,)) == ("virtual", (tmp_path / "blocks.bin").as_uri(), 260, 80)
    assert vds.z.data.manifest.entry((1,)) == ("virtual", (tmp_path / "part1.bin").as_uri(), 0, 48)
    assert vds.w.dims == ("phony_dim_0", "phony_dim_1")
    np.testing.assert_array_equal(vds.w.data.compute(), np.arange(24, dtype="u1").reshape(2, 12))
    # every key resolves to the bytes fsspec's own ReferenceFileSystem reads for it
    fs = fsspec.filesystem("reference", fo=str(path), simple_templates=False)
    for name, grid_shape in (("x", (5,)), ("y", (2, 3)), ("z", (3,))):
        manifest = vds[name].data.manifest
        for index in np.ndindex(*grid_shape):
            assert _chunk_bytes(manifest, index) == fs.cat(f"{name}/{'.'.join(map(str, index))}"), (name, index)


# --------------------------------------------------------------------------- #
# bad input
# --------------------------------------------------------------------------- #
def _write(tmp_path, name, document) -> Path:
    path = tmp_path / name
    path.write_text(document if isinstance(document, str) else json.dumps(document))
    return path


def test_json_that_is_not_a_reference_set(tmp_path):
    registry = ObjectStoreRegistry.default()
    cases = {
        "plain.json": {"hello": "world", "n": [1, 2]},
        "list.json": [1, 2, 3],
        "broken.json": '{"refs": {"a": ',
        "future.json": {"version": 2, "refs": {}},
    }
    messages = {"plain.json": "no zarr metadata keys", "list.json": "not an object",
                "broken.json": "not valid JSON", "future.json": "unsupported kerchunk reference version 2"}
    for name, document in cases.items():
        path = _write(tmp_path, name, document)
        with pytest.raises(ParseError, match=rf"{name}: .*{messages[name]}"):
            KerchunkJSONParser()(path.as_uri(), registry)
    # detection routes a JSON object to the kerchunk parser, which then names the problem
    with pytest.raises(ParseError, match=r"plain\.json: not a kerchunk reference set"):
        open_virtual_dataset(tmp_path / "plain.json")
    with pytest.raises(ParseError, match=r"list\.json: unrecognised file format"):
        open_virtual_dataset(tmp_path / "list.json")


def test_bad_base64_names_the_key(kerchunk_refs, tmp_path):
    refs = json.loads(json.dumps(kerchunk_refs))
    inlined = next(k for k, v in refs["refs"].items() if k.startswith("tas/") and isinstance(v, str) and "/." not in k)
    refs["refs"][inlined] = "base64:***not base64***"
    path = _write(tmp_path, "bad64.json", refs)
    with pytest.raises(ParseError, match=rf"bad64\.json: key '{inlined}': inline data is not valid base64"):
        open_virtual_dataset(path)


def test_unknown_codec_names_variable_and_codec(kerchunk_refs, tmp_path):
    refs = json.loads(json.dumps(kerchunk_refs))
    zarray = json.loads(refs["refs"]["big/.zarray"])
    zarray["compressor"] = {"id": "no-such-codec", "level": 3}
    refs["refs"]["big/.zarray"] = json.dumps(zarray)
    path = _write(tmp_path, "codec.json", refs)
    with pytest.raises(ParseError, match=r"codec\.json: variable 'big': codec 'no-such-codec'"):
        open_virtual_dataset(path)
    # dropping that variable opens the others (the parser never reads its metadata)
    rest = open_virtual_dataset(path, drop_variables=["big"])
    assert "big" not in rest.variables and len(rest.variables) > 0
    whole = open_virtual_dataset(_write(tmp_path, "fine.json", kerchunk_refs))
    for name in rest.variables:
        np.testing.assert_array_equal(rest[name].values if name in rest.coords else rest[name].data.compute(),
                                      whole[name].values if name in whole.coords else whole[name].data.compute())


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("tas/0.0.0", ["x.nc", "12", 4], r"key 'tas/0\.0\.0': reference .* is not \[url, offset, length\]"),
        ("tas/0.0.0", ["x.nc", 1], r"key 'tas/0\.0\.0': reference .* is neither"),
        ("tas/9.0.0", ["x.nc", 0, 4], r"key 'tas/9\.0\.0' is outside the chunk grid \(6, 2, 1\)"),
        ("tas/0.0", ["x.nc", 0, 4], r"key 'tas/0\.0' is not a chunk key of a 3-d array"),
        ("tas/0.a.0", ["x.nc", 0, 4], r"key 'tas/0\.a\.0' is not a chunk key"),
        ("tas/0.0.0", 12, r"key 'tas/0\.0\.0': value of type int is not a reference"),
        ("tas/.zarray", "{not json", r"key 'tas/\.zarray': metadata is not valid JSON"),
    ],
)
def test_bad_references_name_the_key(kerchunk_refs, tmp_path, key, value, message):
    refs = json.loads(json.dumps(kerchunk_refs))
    refs["refs"][key] = value
    path = _write(tmp_path, "bad.json", refs)
    with pytest.raises(ParseError, match=rf"bad\.json: {message}"):
        KerchunkJSONParser()(path.as_uri(), ObjectStoreRegistry.default())


def test_parquet_directory_without_record_size(tmp_path):
    root = tmp_path / "notrefs.parq"
    root.mkdir()
    (root / ".zmetadata").write_text(json.dumps({"metadata": {".zgroup": {"zarr_format": 2}}}))
    with pytest.raises(ParseError, match=r"notrefs\.parq: not a kerchunk Parquet reference set"):
        KerchunkParquetParser()(root.as_uri(), ObjectStoreRegistry.default())


# --------------------------------------------------------------------------- #
# through obstore on S3 (moto): the reference file and the data both on S3
# --------------------------------------------------------------------------- #
def test_references_on_s3_with_relative_urls(s3_env, s3_bucket, kerchunk_refs, nc_file):
    bucket, client = s3_bucket
    client.put_object(Bucket=bucket, Key="archive/sample.nc", Body=nc_file.read_bytes())
    refs = json.loads(json.dumps(kerchunk_refs))
    refs["refs"] = {k: (["sample.nc", *v[1:]] if isinstance(v, list) else v) for k, v in refs["refs"].items()}
    client.put_object(Bucket=bucket, Key="archive/refs.json", Body=json.dumps(refs).encode())
    vds = open_virtual_dataset(f"s3://{bucket}/archive/refs.json",
                               parser=KerchunkJSONParser(relative_urls="references"))
    assert vds.tas.data.manifest.urls == (f"s3://{bucket}/archive/sample.nc",)
    xr.testing.assert_identical(xr.decode_cf(vds.vz.compute()), xr.open_dataset(nc_file))
