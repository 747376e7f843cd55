"""ManifestStore read tests against chunks written by zarr-python itself.

Every test writes a real zarr v3 array with zarr-python, builds a manifest
that points at (or inlines, or leaves out) its encoded chunks, and checks that
xarray and zarr read through the ManifestStore exactly what numpy expects.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr
import zarr.codecs as zc
from obstore.store import S3Store
from zarr.abc.store import OffsetByteRequest, RangeByteRequest, SuffixByteRequest
from zarr.core.buffer import default_buffer_prototype
from zarr.storage import LocalStore

from vzdask import ChunkManifest, ManifestArray, ManifestGroup, ManifestStore, ObjectStoreRegistry
from vzdask.manifests.store import ReadOnlyStoreError

PROTO = default_buffer_prototype()

# --------------------------------------------------------------------------- #
# helpers
# --------------------------------------------------------------------------- #


def run(coro):
    """Run one store coroutine to completion."""
    return asyncio.run(coro)


async def _collect(agen) -> list[str]:
    return [k async for k in agen]


def collect(agen) -> set[str]:
    """The keys an async listing yields, as a set (duplicates would fail the length check)."""
    keys = run(_collect(agen))
    assert len(keys) == len(set(keys)), f"duplicate keys in listing: {keys}"
    return set(keys)


def get_bytes(store, key: str, byte_range=None) -> bytes | None:
    buf = run(store.get(key, PROTO, byte_range))
    return None if buf is None else buf.to_bytes()


def state_by_index_sum(index: tuple[int, ...]) -> str:
    """Mix the three states over the grid (edge chunks get every state in a 3x3 grid)."""
    return ("virtual", "inlined", "missing")[sum(index) % 3]


def write_zarr(root: Path, path: str, data: np.ndarray, chunks, **kwargs) -> zarr.Array:
    """Write ``data`` with zarr-python into a LocalStore rooted at ``root``; every chunk gets a file."""
    kwargs.setdefault("dimension_names", tuple(f"d{i}" for i in range(data.ndim)))
    array = zarr.create_array(
        LocalStore(root),
        name=path,
        shape=data.shape,
        chunks=chunks,
        dtype=data.dtype,
        config={"write_empty_chunks": True},
        **kwargs,
    )
    array[...] = data
    return array


def virtualize(
    root: Path,
    array: zarr.Array,
    data: np.ndarray,
    *,
    state_of=state_by_index_sum,
    url_of=None,
) -> tuple[ManifestArray, np.ndarray, dict]:
    """A ManifestArray over the chunk files zarr wrote, and the values it must read as.

    ``state_of(index)`` picks virtual (``file://`` url, offset 0, length = file
    size), inlined (the file's bytes copied into the manifest) or missing.
    Returns ``(manifest_array, expected_values, chunk_bytes_by_index)``.
    """
    metadata = array.metadata
    chunks = array.chunks
    grid = tuple(-(-s // c) for s, c in zip(array.shape, chunks))
    paths = np.full(grid, "", dtype=object)
    offsets = np.zeros(grid, dtype=np.uint64)
    lengths = np.zeros(grid, dtype=np.uint64)
    inlined: dict[tuple[int, ...], bytes] = {}
    expected = data.copy()
    raw: dict[tuple[int, ...], bytes] = {}
    for index in itertools.product(*(range(g) for g in grid)):
        file = root / array.path / metadata.encode_chunk_key(index)
        assert file.is_file(), f"zarr did not write chunk {index} at {file}"
        raw[index] = file.read_bytes()
        state = state_of(index)
        if state == "virtual":
            paths[index] = url_of(file) if url_of else file.as_uri()
            lengths[index] = file.stat().st_size
        elif state == "inlined":
            inlined[index] = raw[index]
        else:
            region = tuple(slice(i * c, (i + 1) * c) for i, c in zip(index, chunks))
            expected[region] = array.fill_value
    manifest = ChunkManifest.from_arrays(paths=paths, offsets=offsets, lengths=lengths, inlined=inlined or None)
    return ManifestArray(metadata, manifest), expected, raw


def assert_reads(store: ManifestStore, name: str, expected: np.ndarray, *, group: str | None = None) -> None:
    """Values read through zarr and through xarray both equal ``expected`` (NaN == NaN)."""
    zgroup = zarr.open_group(store, mode="r")
    zpath = f"{group}/{name}" if group else name
    got = zgroup[zpath][...]
    assert got.dtype == expected.dtype
    np.testing.assert_array_equal(got, expected, strict=True)
    ds = xr.open_zarr(store, consolidated=False, zarr_format=3, group=group)
    np.testing.assert_array_equal(ds[name].values, expected)


# --------------------------------------------------------------------------- #
# dtype x codec matrix
# --------------------------------------------------------------------------- #

CF_TIME_ATTRS = {"units": "days since 2000-01-01", "calendar": "proleptic_gregorian"}


def _data(kind: str) -> tuple[np.ndarray, object]:
    """(values of shape (5, 7), fill_value) for each dtype in the matrix."""
    n = np.arange(35).reshape(5, 7)
    if kind == "float32":
        return (n * 1.5 - 7).astype("float32"), np.float32(-9.5)
    if kind == "float64":
        return np.sin(n) * 1e6, np.nan
    if kind == "int16":
        return (n * 937 - 16000).astype("int16"), -1
    if kind == "uint8":
        return (n * 7 + 3).astype("uint8"), 255
    if kind == "bool":
        return n % 3 == 0, False
    if kind == "cftime":
        return (n * 40 - 300).astype("int64"), 0
    raise AssertionError(kind)


def _codecs(name: str, itemsize: int) -> dict:
    """create_array keyword arguments for each codec pipeline in the matrix."""
    if name == "bytes":
        return {"compressors": None}
    if name == "bytes-big-endian":
        return {"serializer": zc.BytesCodec(endian="big"), "compressors": None}
    if name == "zstd":
        return {"compressors": [zc.ZstdCodec(level=3)]}
    if name == "zlib":
        return {"compressors": [zc.Zlib(level=6)]}
    if name == "gzip":
        return {"compressors": [zc.GzipCodec(level=5)]}
    if name == "shuffle-zlib":
        return {"compressors": [zc.Shuffle(elementsize=itemsize), zc.Zlib(level=1)]}
    if name == "blosc":
        return {"compressors": [zc.BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")]}
    raise AssertionError(name)


DTYPES = ["float32", "int16", "uint8", "float64", "bool", "cftime"]
CODECS = ["bytes", "bytes-big-endian", "zstd", "zlib", "gzip", "shuffle-zlib", "blosc"]


@pytest.mark.filterwarnings("ignore::UserWarning")  # numcodecs.zarr3 codecs warn that their spec is unstable
@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("kind", DTYPES)
def test_dtype_codec_matrix(tmp_path, kind, codec):
    data, fill = _data(kind)
    attrs = dict(CF_TIME_ATTRS) if kind == "cftime" else {"long_name": f"{kind} values"}
    zarray = write_zarr(
        tmp_path, "v", data, (2, 3), fill_value=fill, attributes=attrs, **_codecs(codec, data.dtype.itemsize)
    )
    marray, expected, _ = virtualize(tmp_path, zarray, data)
    assert marray.manifest.count() == {"virtual": 3, "inlined": 3, "missing": 3}
    store = ManifestStore(ManifestGroup(arrays={"v": marray}))

    zarr_read = zarr.open_group(store, mode="r")["v"]
    np.testing.assert_array_equal(zarr_read[...], expected, strict=True)
    np.testing.assert_array_equal(zarr_read[1:4, 2:6], expected[1:4, 2:6], strict=True)  # partial chunk reads
    assert dict(zarr_read.attrs) == attrs

    ds = xr.open_zarr(store, consolidated=False, zarr_format=3)
    if kind == "cftime":
        want = np.datetime64("2000-01-01") + expected.astype("timedelta64[D]")
        assert ds["v"].dtype.kind == "M"
        np.testing.assert_array_equal(ds["v"].values, want.astype(ds["v"].dtype))
        assert ds["v"].values[0, 0] == np.datetime64("1999-03-07")  # -300 days
        assert ds["v"].encoding["units"] == CF_TIME_ATTRS["units"]
    else:
        assert ds["v"].dtype == expected.dtype
        np.testing.assert_array_equal(ds["v"].values, expected, strict=True)
        assert ds["v"].attrs["long_name"] == attrs["long_name"]
    assert ds["v"].dims == ("d0", "d1")


# --------------------------------------------------------------------------- #
# chunk key encodings, 0-d, packed files
# --------------------------------------------------------------------------- #

ENCODINGS = [
    pytest.param({"name": "default", "separator": "/"}, id="default-slash"),
    pytest.param({"name": "default", "separator": "."}, id="default-dot"),
    pytest.param({"name": "v2", "separator": "."}, id="v2-dot"),
    pytest.param({"name": "v2", "separator": "/"}, id="v2-slash"),
]


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("dtype", ["int16", "float64"])
def test_chunk_key_encodings(tmp_path, encoding, dtype):
    data = np.arange(7 * 5 * 4, dtype=dtype).reshape(7, 5, 4) - 50
    zarray = write_zarr(
        tmp_path, "grp/arr", data, (3, 2, 4), chunk_key_encoding=encoding, compressors=[zc.ZstdCodec()], fill_value=7
    )
    marray, expected, _ = virtualize(tmp_path, zarray, data)
    assert marray.manifest.count()["missing"] > 0 and marray.manifest.count()["inlined"] > 0
    store = ManifestStore(ManifestGroup(groups={"grp": ManifestGroup(arrays={"arr": marray})}))
    assert_reads(store, "arr", expected, group="grp")

    # The keys a ManifestStore lists are the keys zarr itself wrote (minus missing chunks).
    local = LocalStore(tmp_path)
    written = collect(local.list_prefix("grp/arr/"))
    missing = {
        "grp/arr/" + zarray.metadata.encode_chunk_key(ix)
        for ix in zip(*np.nonzero(marray.manifest.states == 0))
    }
    assert collect(store.list_prefix("grp/arr/")) == written - missing
    # ...and every present chunk key returns exactly the bytes zarr wrote.
    for key in written - missing - {"grp/arr/zarr.json"}:
        assert get_bytes(store, key) == get_bytes(local, key)


@pytest.mark.parametrize("encoding", ["default", "v2"])
@pytest.mark.parametrize("state", ["virtual", "inlined", "missing"])
def test_zero_dimensional(tmp_path, encoding, state):
    data = np.array(2.75, dtype="float32")
    zarray = write_zarr(
        tmp_path, "scalar", data, (), chunk_key_encoding={"name": encoding}, fill_value=-1.0, dimension_names=()
    )
    marray, expected, raw = virtualize(tmp_path, zarray, data, state_of=lambda ix: state)
    assert marray.shape == () and marray.manifest.shape == ()
    store = ManifestStore(ManifestGroup(arrays={"scalar": marray}, attributes={"title": "0-d"}))
    assert_reads(store, "scalar", expected)
    assert float(expected) == (-1.0 if state == "missing" else 2.75)
    key = "scalar/" + zarray.metadata.encode_chunk_key(())
    assert get_bytes(store, key) == (None if state == "missing" else raw[()])
    assert run(store.exists(key)) is (state != "missing")
    assert collect(store.list_prefix("scalar/")) == {"scalar/zarr.json"} | ({key} if state != "missing" else set())


def test_packed_file_with_offsets(tmp_path):
    """Chunks concatenated into one archive file at nonzero offsets, as parsers produce them."""
    data = np.arange(9 * 10, dtype="<i4").reshape(9, 10) * 3
    zarray = write_zarr(tmp_path / "src", "a", data, (4, 3), compressors=[zc.GzipCodec()], fill_value=-5)
    _, _, raw = virtualize(tmp_path / "src", zarray, data)
    archive = tmp_path / "archive.bin"
    grid = zarray.cdata_shape
    paths = np.full(grid, archive.as_uri(), dtype=object)
    offsets = np.zeros(grid, np.uint64)
    lengths = np.zeros(grid, np.uint64)
    blob = bytearray(b"HEADER" * 11)
    for index, chunk in sorted(raw.items(), reverse=True):  # file order differs from grid order
        offsets[index], lengths[index] = len(blob), len(chunk)
        blob += chunk + b"\xff" * (sum(index) + 1)  # junk between chunks
    archive.write_bytes(bytes(blob))
    manifest = ChunkManifest.from_arrays(paths=paths, offsets=offsets, lengths=lengths)
    assert manifest.count()["virtual"] == len(raw) and len(manifest.urls) == 1
    store = ManifestStore(ManifestGroup(arrays={"a": ManifestArray(zarray.metadata, manifest)}))
    assert_reads(store, "a", data)


# --------------------------------------------------------------------------- #
# groups and attributes
# --------------------------------------------------------------------------- #


def test_nested_groups_and_attributes(tmp_path):
    t = np.arange(6, dtype="int64")
    temp = (np.arange(6 * 4, dtype="float32").reshape(6, 4) / 4).astype("float32")
    flags = np.arange(12, dtype="uint8").reshape(3, 4) % 2 == 0
    zt = write_zarr(tmp_path, "t", t, (4,), attributes=CF_TIME_ATTRS, dimension_names=("time",))
    ztemp = write_zarr(
        tmp_path, "sub/temp", temp, (4, 3), attributes={"units": "K"}, dimension_names=("time", "x"),
        compressors=[zc.ZstdCodec()], fill_value=np.float32(-1),
    )
    zflags = write_zarr(tmp_path, "sub/deeper/flags", flags, (2, 2), dimension_names=("y", "x"))
    mt, et, _ = virtualize(tmp_path, zt, t, state_of=lambda ix: "inlined")
    mtemp, etemp, _ = virtualize(tmp_path, ztemp, temp)
    mflags, eflags, _ = virtualize(tmp_path, zflags, flags)
    tree = ManifestGroup(
        arrays={"t": mt},
        groups={
            "sub": ManifestGroup(
                arrays={"temp": mtemp},
                groups={"deeper": ManifestGroup(arrays={"flags": mflags}, attributes={"level": 2})},
                attributes={"level": 1, "nested": {"a": [1, 2]}},
            )
        },
        attributes={"title": "root", "history": "made by zarr-python"},
    )
    store = ManifestStore(tree)

    root = zarr.open_group(store, mode="r")
    assert dict(root.attrs) == {"title": "root", "history": "made by zarr-python"}
    assert dict(root["sub"].attrs) == {"level": 1, "nested": {"a": [1, 2]}}
    assert dict(root["sub/deeper"].attrs) == {"level": 2}
    assert dict(root["sub/temp"].attrs) == {"units": "K"}
    np.testing.assert_array_equal(root["sub/temp"][...], etemp, strict=True)
    np.testing.assert_array_equal(root["sub/deeper/flags"][...], eflags, strict=True)
    np.testing.assert_array_equal(root["t"][...], et, strict=True)
    assert sorted(root.group_keys()) == ["sub"] and sorted(root.array_keys()) == ["t"]
    assert sorted(root["sub"].group_keys()) == ["deeper"] and sorted(root["sub"].array_keys()) == ["temp"]

    ds = xr.open_zarr(store, consolidated=False, zarr_format=3)
    assert list(ds.variables) == ["t"] and ds.attrs["title"] == "root"
    np.testing.assert_array_equal(ds["t"].values, np.datetime64("2000-01-01") + t.astype("timedelta64[D]"))
    sub = xr.open_zarr(store, consolidated=False, zarr_format=3, group="sub")
    assert sub.attrs == {"level": 1, "nested": {"a": [1, 2]}}
    np.testing.assert_array_equal(sub["temp"].values, etemp, strict=True)
    assert sub["temp"].attrs == {"units": "K"}
    assert_reads(store, "flags", eflags, group="sub/deeper")

    assert collect(store.list_dir("")) == {"zarr.json", "t", "sub"}
    assert collect(store.list_dir("sub")) == {"zarr.json", "temp", "deeper"}
    assert collect(store.list_dir("sub/deeper/")) == {"zarr.json", "flags"}


# --------------------------------------------------------------------------- #
# the Store contract, directly
# --------------------------------------------------------------------------- #


@pytest.fixture(scope="module")
def contract(tmp_path_factory):
    """A 2-level tree of zarr-written arrays (all three chunk states), as both a LocalStore and a ManifestStore."""
    root = tmp_path_factory.mktemp("contract")
    data = np.arange(5 * 7, dtype="float64").reshape(5, 7) ** 1.5
    za = write_zarr(root, "x", data, (2, 3), compressors=[zc.ZstdCodec()], chunk_key_encoding={"name": "v2"})
    data_b = np.arange(10, dtype="int16")
    zb = write_zarr(root, "g/y", data_b, (4,), compressors=None)  # default "c/0" keys
    mx, ex, raw_x = virtualize(root, za, data)
    my, ey, raw_y = virtualize(root, zb, data_b)
    group = ManifestGroup(arrays={"x": mx}, groups={"g": ManifestGroup(arrays={"y": my})}, attributes={"k": "v"})
    return {
        "root": root,
        "store": ManifestStore(group),
        "group": group,
        "local": LocalStore(root),
        "x": (mx, ex, raw_x),
        "y": (my, ey, raw_y),
    }


def _keys(contract, name: str, state: str) -> list[tuple[str, tuple[int, ...]]]:
    marray = contract[name][0]
    prefix = {"x": "x/", "y": "g/y/"}[name]
    code = {"missing": 0, "virtual": 1, "inlined": 2}[state]
    return [
        (prefix + marray.metadata.encode_chunk_key(tuple(int(i) for i in ix)), tuple(int(i) for i in ix))
        for ix in zip(*np.nonzero(marray.manifest.states == code))
    ]


@pytest.mark.parametrize("state", ["virtual", "inlined"])
def test_get_byte_ranges(contract, state):
    store = contract["store"]
    for name in ("x", "y"):
        raw = contract[name][2]
        keys = _keys(contract, name, state)
        assert keys, f"no {state} chunk in {name}"
        for key, index in keys:
            data = raw[index]
            n = len(data)
            assert get_bytes(store, key) == data
            assert get_bytes(store, key) == get_bytes(contract["local"], key)
            for start, end in [(0, 1), (1, n - 1), (3, 7), (0, n), (n - 2, n), (5, 5)]:
                assert get_bytes(store, key, RangeByteRequest(start, end)) == data[start:end], (key, start, end)
            for offset in (0, 1, n // 2, n - 1):
                assert get_bytes(store, key, OffsetByteRequest(offset)) == data[offset:], (key, offset)
            for suffix in (1, 4, n - 1, n):
                assert get_bytes(store, key, SuffixByteRequest(suffix)) == data[-suffix:], (key, suffix)
            # Requests reaching past the end are clipped, like a file read.
            assert get_bytes(store, key, RangeByteRequest(n - 3, n + 100)) == data[n - 3 :]
            assert get_bytes(store, key, SuffixByteRequest(n + 100)) == data


def test_get_metadata_documents(contract):
    store, local = contract["store"], contract["local"]

    for key in ("x/zarr.json", "g/y/zarr.json"):
        ours = json.loads(get_bytes(store, key))
        theirs = json.loads(get_bytes(local, key))
        assert ours == theirs
    group_doc = {"zarr_format": 3, "node_type": "group"}
    assert json.loads(get_bytes(store, "zarr.json")) == {**group_doc, "attributes": {"k": "v"}}
    assert json.loads(get_bytes(store, "g/zarr.json")) == {**group_doc, "attributes": {}}
    full = get_bytes(store, "x/zarr.json")
    assert get_bytes(store, "x/zarr.json", RangeByteRequest(2, 10)) == full[2:10]
    assert get_bytes(store, "x/zarr.json", SuffixByteRequest(5)) == full[-5:]


def test_get_missing_and_unknown_keys(contract):
    store = contract["store"]
    missing = _keys(contract, "x", "missing") + _keys(contract, "y", "missing")
    assert len(missing) >= 3
    for key, _ in missing:
        assert get_bytes(store, key) is None
        assert get_bytes(store, key, RangeByteRequest(0, 4)) is None
        assert run(store.exists(key)) is False
    unknown = [
        "nope", "nope/zarr.json", "zarr.jsonx", "x", "x/", "x/zarr", "g", "g/y", "g/zarr.json/extra",
        "x/9.9", "x/0.9", "x/3.0", "x/0.0.0", "x/0", "x/c/0/0", "x/0/0", "x/-1.0", "x/a.b",
        "g/y/c/3", "g/y/c/0/0", "g/y/0", "g/y/c.0", "g/y/zzz/0", "g/y/c/01", "g/y/c/+1", "g/y/c/ 1",
        "x/00.0", "x/0.+1",
    ]
    for key in unknown:
        assert get_bytes(store, key) is None, key
        assert run(store.exists(key)) is False, key


def test_get_partial_values(contract):
    store = contract["store"]
    (vkey, vix), = _keys(contract, "x", "virtual")[:1]
    (ikey, iix), = _keys(contract, "y", "inlined")[:1]
    (mkey, _), = _keys(contract, "x", "missing")[:1]
    vraw, iraw = contract["x"][2][vix], contract["y"][2][iix]
    requests = [
        (vkey, RangeByteRequest(2, 9)),
        (ikey, None),
        (mkey, None),
        ("x/zarr.json", None),
        ("unknown/key", None),
        (vkey, SuffixByteRequest(3)),
        (ikey, OffsetByteRequest(5)),
    ]
    got = run(store.get_partial_values(PROTO, requests))
    got = [None if b is None else b.to_bytes() for b in got]
    assert got == [vraw[2:9], iraw, None, get_bytes(store, "x/zarr.json"), None, vraw[-3:], iraw[5:]]


def test_exists(contract):
    store = contract["store"]
    for key in ("zarr.json", "x/zarr.json", "g/zarr.json", "g/y/zarr.json"):
        assert run(store.exists(key)) is True
    for name in ("x", "y"):
        for state in ("virtual", "inlined"):
            for key, index in _keys(contract, name, state):
                assert run(store.exists(key)) is True, key
                assert run(store.getsize(key)) == len(contract[name][2][index]), key
    assert run(store.getsize("x/zarr.json")) == len(get_bytes(store, "x/zarr.json"))
    for key in [k for k, _ in _keys(contract, "x", "missing")] + ["nope", "x/9.9"]:
        with pytest.raises(FileNotFoundError):
            run(store.getsize(key))
    # Sizes of stored chunks come from the manifest, as zarr's own LocalStore reports them.
    stored = sum(len(contract["x"][2][ix]) for state in ("virtual", "inlined") for _, ix in _keys(contract, "x", state))
    assert run(store.getsize_prefix("x/")) == stored + run(store.getsize("x/zarr.json"))


def test_getsize_needs_no_read(tmp_path):
    """zarr's default getsize fetches the whole value; for a virtual chunk the manifest knows its size."""
    metadata = zarr.create_array(LocalStore(tmp_path), name="a", shape=(4,), chunks=(2,), dtype="i4").metadata
    gone = (tmp_path / "does-not-exist.bin").as_uri()
    manifest = ChunkManifest.from_arrays(paths=[gone, ""], offsets=[10, 0], lengths=[1234, 0])
    store = ManifestStore(ManifestGroup(arrays={"a": ManifestArray(metadata, manifest)}))
    assert run(store.getsize("a/c/0")) == 1234
    with pytest.raises(OSError, match="does-not-exist"):
        get_bytes(store, "a/c/0")


def test_default_open_mode_needs_r(contract):
    """zarr refuses its default mode 'a' on any read-only store; mode='r' is required."""
    with pytest.raises(ValueError, match="read-only"):
        zarr.open_group(contract["store"])
    assert zarr.open_group(contract["store"], mode="r")["g/y"].shape == (10,)


def test_listing(contract):
    store, local = contract["store"], contract["local"]
    missing = {k for k, _ in _keys(contract, "x", "missing") + _keys(contract, "y", "missing")}
    present_chunks = {
        k for name in ("x", "y") for state in ("virtual", "inlined") for k, _ in _keys(contract, name, state)
    }
    metadata = {"zarr.json", "x/zarr.json", "g/zarr.json", "g/y/zarr.json"}
    everything = collect(store.list())
    assert everything == metadata | present_chunks
    # zarr wrote the same tree (plus the chunks our manifest leaves out).
    assert collect(local.list()) == everything | missing
    assert collect(store.list_prefix("")) == everything
    assert collect(store.list_prefix("g/")) == {k for k in everything if k.startswith("g/")}
    assert collect(store.list_prefix("x/")) == {k for k in everything if k.startswith("x/")}
    assert collect(store.list_prefix("nothing/")) == set()
    assert collect(store.list_dir("")) == {"zarr.json", "x", "g"}
    assert collect(store.list_dir("g")) == {"zarr.json", "y"}
    assert collect(store.list_dir("g/y")) == {"zarr.json", "c"}
    assert collect(store.list_dir("g/y/c")) == {k.rsplit("/", 1)[1] for k in present_chunks if k.startswith("g/y/c/")}
    assert collect(store.list_dir("x")) == {"zarr.json"} | {k[2:] for k in present_chunks if k.startswith("x/")}
    assert collect(store.list_dir("nothing")) == set()
    # Every listed directory agrees with zarr's own LocalStore, minus the chunks left out.
    for prefix in ("", "g", "g/y", "x"):
        dropped = {k.rsplit("/", 1)[1] for k in missing if k.rsplit("/", 1)[0] == prefix}
        assert collect(store.list_dir(prefix)) == collect(local.list_dir(prefix)) - dropped, prefix
    assert run(store.is_empty("")) is False
    assert run(store.is_empty("nothing/")) is True


def test_equality_and_pickle(contract):
    store, group = contract["store"], contract["group"]
    mx, sub = contract["x"][0], group.groups["g"]
    assert store == ManifestStore(group)
    assert store == ManifestStore(ManifestGroup(arrays={"x": mx}, groups={"g": sub}, attributes={"k": "v"}))
    assert store != ManifestStore(ManifestGroup(arrays={"x": mx}, groups={"g": sub}, attributes={"k": "w"}))
    assert store != ManifestStore(ManifestGroup(arrays={"x": mx}, attributes={"k": "v"}))
    moved = ManifestArray(mx.metadata, mx.manifest.rename_paths(lambda u: u + ".moved"))
    assert store != ManifestStore(ManifestGroup(arrays={"x": moved}, groups={"g": sub}, attributes={"k": "v"}))
    assert store != ManifestStore(group, registry=ObjectStoreRegistry(create_missing=False))
    assert store != contract["local"]

    clone = pickle.loads(pickle.dumps(store))
    assert clone == store and clone is not store
    assert clone.read_only
    np.testing.assert_array_equal(zarr.open_group(clone, mode="r")["x"][...], contract["x"][1], strict=True)
    np.testing.assert_array_equal(zarr.open_group(clone, mode="r")["g/y"][...], contract["y"][1], strict=True)
    (vkey, vix), = _keys(contract, "x", "virtual")[:1]
    assert get_bytes(clone, vkey, RangeByteRequest(1, 6)) == contract["x"][2][vix][1:6]


def test_writes_and_deletes_are_refused(contract):
    store = contract["store"]
    assert store.read_only is True
    assert not store.supports_writes and not store.supports_deletes
    buf = PROTO.buffer.from_bytes(b"abc")
    (vkey, vix), = _keys(contract, "x", "virtual")[:1]
    before = get_bytes(store, vkey)
    with pytest.raises(ReadOnlyStoreError, match="read-only"):
        run(store.set(vkey, buf))
    with pytest.raises(ReadOnlyStoreError, match="read-only"):
        run(store.set("new/zarr.json", buf))
    with pytest.raises(ReadOnlyStoreError, match="read-only"):
        run(store.set_if_not_exists("new/key", buf))
    with pytest.raises(ReadOnlyStoreError, match="read-only"):
        run(store.delete(vkey))
    with pytest.raises(ReadOnlyStoreError, match="read-only"):
        run(store.clear())
    with pytest.raises(ReadOnlyStoreError):
        store.with_read_only(False)
    assert store.with_read_only(True) is store
    assert issubclass(ReadOnlyStoreError, PermissionError)
    # Through zarr: writing values or creating nodes fails, and nothing changed.
    arr = zarr.open_group(store, mode="r")["x"]
    with pytest.raises((ValueError, PermissionError)):
        arr[0, 0] = 1.0
    with pytest.raises((ValueError, PermissionError)):
        zarr.open_group(store, mode="r").create_array("new", shape=(2,), dtype="i1")
    assert get_bytes(store, vkey) == before == contract["x"][2][vix]
    assert (contract["root"] / "x" / "0.0").read_bytes() == contract["x"][2][(0, 0)]


def test_truncated_virtual_chunk_raises_oserror(tmp_path):
    data = np.arange(40, dtype="float32").reshape(5, 8)
    zarray = write_zarr(tmp_path, "grp/v", data, (3, 4), compressors=None)
    marray, _, raw = virtualize(tmp_path, zarray, data, state_of=lambda ix: "virtual")
    store = ManifestStore(ManifestGroup(groups={"grp": ManifestGroup(arrays={"v": marray})}))
    victim = tmp_path / "grp" / "v" / "c" / "1" / "0"
    victim.write_bytes(raw[(1, 0)][:10])
    url = victim.as_uri()
    # The message names the chunk, the array (not "grp/v/c/1") and the url.
    names_it = rf"chunk 1\.0 of 'grp/v' from {url} "
    with pytest.raises(OSError, match=names_it + r"\(bytes 0\.\.48\).*truncated"):
        get_bytes(store, "grp/v/c/1/0")
    with pytest.raises(OSError, match=names_it + r"\(bytes 4\.\.30\)"):
        get_bytes(store, "grp/v/c/1/0", RangeByteRequest(4, 30))
    # A range that the truncated file still holds reads fine; other chunks are unaffected.
    assert get_bytes(store, "grp/v/c/1/0", RangeByteRequest(0, 8)) == raw[(1, 0)][:8]
    assert get_bytes(store, "grp/v/c/0/1") == raw[(0, 1)]
    with pytest.raises(OSError) as info:
        zarr.open_group(store, mode="r")["grp/v"][...]
    assert url in str(info.value)
    # A deleted file is an OSError naming url, array and chunk too.
    victim.unlink()
    with pytest.raises(OSError, match=names_it + r".*not found") as info:
        get_bytes(store, "grp/v/c/1/0")
    assert "\n" not in str(info.value)  # one line; obstore's debug dump stays on __cause__
    assert info.value.__cause__ is not None


# --------------------------------------------------------------------------- #
# remote: the same chunks on S3 (moto)
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("configured", ["registry", "environment"])
def test_s3_reads_same_values_as_local(request, tmp_path, s3_server, s3_bucket, configured):
    bucket, client = s3_bucket
    data = (np.arange(5 * 7, dtype="int16").reshape(5, 7) - 20) * 11
    zarray = write_zarr(tmp_path, "v", data, (2, 3), compressors=[zc.ZstdCodec()], fill_value=-3)

    def s3_url(file: Path) -> str:
        key = "archive/" + file.relative_to(tmp_path).as_posix()
        client.put_object(Bucket=bucket, Key=key, Body=file.read_bytes())
        return f"s3://{bucket}/{key}"

    local_array, expected, raw = virtualize(tmp_path, zarray, data)
    remote_array, expected_remote, _ = virtualize(tmp_path, zarray, data, url_of=s3_url)
    assert all(u.startswith(f"s3://{bucket}/archive/v/c/") for u in remote_array.manifest.urls)
    assert len(remote_array.manifest.urls) == 3
    np.testing.assert_array_equal(expected, expected_remote)

    if configured == "registry":
        registry = ObjectStoreRegistry({f"s3://{bucket}": S3Store(bucket, **s3_server.store_kwargs())})
    else:
        request.getfixturevalue("s3_env")  # AWS_* variables point the default S3Store at moto
        registry = None
    remote = ManifestStore(ManifestGroup(arrays={"v": remote_array}), registry=registry)
    local = ManifestStore(ManifestGroup(arrays={"v": local_array}))

    np.testing.assert_array_equal(zarr.open_group(remote, mode="r")["v"][...], expected, strict=True)
    xr.testing.assert_identical(
        xr.open_zarr(remote, consolidated=False, zarr_format=3).load(),
        xr.open_zarr(local, consolidated=False, zarr_format=3).load(),
    )
    (key, index), = _virtual_keys(remote_array, "v/")[:1]
    assert get_bytes(remote, key, RangeByteRequest(2, 11)) == get_bytes(local, key, RangeByteRequest(2, 11))
    assert get_bytes(remote, key, SuffixByteRequest(4)) == raw[index][-4:]
    if configured == "registry":
        clone = pickle.loads(pickle.dumps(remote))  # the S3Store travels with its configuration
        np.testing.assert_array_equal(zarr.open_group(clone, mode="r")["v"][...], expected, strict=True)


def _virtual_keys(marray: ManifestArray, prefix: str) -> list[tuple[str, tuple[int, ...]]]:
    return [
        (prefix + marray.metadata.encode_chunk_key(tuple(int(i) for i in ix)), tuple(int(i) for i in ix))
        for ix in zip(*np.nonzero(marray.manifest.states == 1))
    ]
