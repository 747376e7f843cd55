"""Tests for vzdask.manifests.manifest.ChunkManifest."""

from __future__ import annotations

import math
import pickle
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vzdask.manifests.manifest import (
    INLINED,
    MAX_BYTE_POSITION,
    MISSING,
    VIRTUAL,
    ChunkManifest,
    FileChunks,
    FileTable,
    chunk_key,
    parse_chunk_key,
)

URLS = (
    "s3://bucket/a.nc",
    "file:///data/b.nc",
    "https://example.org/c.nc",
    "gs://g/d.nc",
    "memory:///e.bin",
)

fast = settings(
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# =========================================================================== #
# strategies and helpers
# =========================================================================== #


@st.composite
def manifest_specs(draw, max_ndim: int = 3, max_side: int = 4):
    """``(grid shape, {index: entry}, key separator)`` with a random mix of chunk states.

    An entry is ``("virtual", url, offset, length)``, ``("inlined", bytes)``
    or ``None`` (missing), the same form as ``ChunkManifest.entry``.
    """
    ndim = draw(st.integers(1, max_ndim))
    shape = tuple(draw(st.lists(st.integers(1, max_side), min_size=ndim, max_size=ndim)))
    entries: dict[tuple[int, ...], tuple | None] = {}
    for flat in range(math.prod(shape)):
        index = tuple(int(i) for i in np.unravel_index(flat, shape))
        kind = draw(st.sampled_from(("missing", "virtual", "inlined")))
        if kind == "virtual":
            length = draw(st.integers(1, 2**31))
            offset = draw(st.one_of(st.integers(0, 2**20), st.just(MAX_BYTE_POSITION - length)))
            entries[index] = ("virtual", draw(st.sampled_from(URLS)), offset, length)
        elif kind == "inlined":
            entries[index] = ("inlined", draw(st.binary(min_size=1, max_size=16)))
        else:
            entries[index] = None
    separator = draw(st.sampled_from((".", "/", "_")))
    return shape, entries, separator


def as_kerchunk(entry: tuple) -> dict:
    """One entry in the kerchunk-style dict form."""
    if entry[0] == "virtual":
        return {"path": entry[1], "offset": entry[2], "length": entry[3]}
    return {"data": entry[1]}


def to_dict(entries: dict, separator: str = ".") -> dict:
    """Kerchunk-style dict of the present chunks, keys joined with ``separator``."""
    return {separator.join(str(i) for i in ix): as_kerchunk(e) for ix, e in entries.items() if e is not None}


def to_arrays(shape, entries):
    """``paths, offsets, lengths, inlined`` arrays for ``ChunkManifest.from_arrays``."""
    paths = np.full(shape, "", dtype=object)
    offsets = np.zeros(shape, dtype=np.int64)
    lengths = np.zeros(shape, dtype=np.int64)
    inlined = np.full(shape, None, dtype=object)
    for index, entry in entries.items():
        if entry is None:
            continue
        if entry[0] == "virtual":
            paths[index], offsets[index], lengths[index] = entry[1:]
        else:
            inlined[index] = entry[1]
    return paths, offsets, lengths, inlined


def state_of(entry) -> int:
    return MISSING if entry is None else {"virtual": VIRTUAL, "inlined": INLINED}[entry[0]]


def assert_matches(manifest: ChunkManifest, shape, entries) -> None:
    """Every per-chunk view of ``manifest`` equals what ``entries`` says."""
    assert manifest.shape == shape
    assert manifest.ndim == len(shape)
    assert manifest.nchunks == math.prod(shape)
    for index in np.ndindex(*shape):
        assert manifest.entry(index) == entries[index], index
    states = np.zeros(shape, np.uint8)
    paths = np.full(shape, "", dtype=object)
    offsets = np.zeros(shape, np.uint64)
    lengths = np.zeros(shape, np.uint64)
    for index, entry in entries.items():
        states[index] = state_of(entry)
        if entry is not None and entry[0] == "virtual":
            paths[index], offsets[index], lengths[index] = entry[1:]
        elif entry is not None:
            lengths[index] = len(entry[1])
    np.testing.assert_array_equal(manifest.states, states)
    np.testing.assert_array_equal(manifest.paths().astype(object), paths)
    np.testing.assert_array_equal(np.where(states == VIRTUAL, manifest.offsets, 0), offsets)
    np.testing.assert_array_equal(manifest.lengths, lengths)
    for index, entry in entries.items():  # inlined chunks: offsets point into inline_buffer
        if entry is not None and entry[0] == "inlined":
            start = int(manifest.offsets[index])
            assert manifest.inline_buffer[start : start + len(entry[1])] == entry[1]
    kinds = [state_of(e) for e in entries.values()]
    assert manifest.count() == {
        "virtual": kinds.count(VIRTUAL),
        "inlined": kinds.count(INLINED),
        "missing": kinds.count(MISSING),
    }
    assert len(manifest) == kinds.count(VIRTUAL) + kinds.count(INLINED)
    used = {e[1] for e in entries.values() if e is not None and e[0] == "virtual"}
    assert set(manifest.urls) == used
    assert len(manifest.urls) == len(used)
    for index, entry in entries.items():
        if entry is not None and entry[0] == "inlined":
            assert manifest.inlined_data(index) == entry[1]


# =========================================================================== #
# construction, round trips, equality
# =========================================================================== #


@fast
@given(manifest_specs())
def test_dict_constructor_holds_every_entry(spec):
    shape, entries, separator = spec
    manifest = ChunkManifest(to_dict(entries, separator), shape=shape)
    assert_matches(manifest, shape, entries)


@fast
@given(manifest_specs())
def test_grid_shape_is_inferred_from_the_largest_key(spec):
    shape, entries, separator = spec
    present = [ix for ix, e in entries.items() if e is not None]
    manifest = ChunkManifest(to_dict(entries, separator))
    if not present:
        assert manifest.shape == (0,)
        return
    inferred = tuple(max(ix[d] for ix in present) + 1 for d in range(len(shape)))
    assert manifest.shape == inferred
    for index in np.ndindex(*inferred):
        assert manifest.entry(index) == entries[index]


@fast
@given(manifest_specs())
def test_dict_round_trip(spec):
    shape, entries, separator = spec
    manifest = ChunkManifest(to_dict(entries, separator), shape=shape)
    exported = manifest.dict()
    assert exported == to_dict(entries, ".")
    again = ChunkManifest(exported, shape=manifest.shape)
    assert again == manifest
    assert again.dict() == exported


@fast
@given(manifest_specs(), st.booleans())
def test_from_arrays_agrees_with_dict_constructor(spec, inlined_as_dict):
    shape, entries, separator = spec
    paths, offsets, lengths, inlined = to_arrays(shape, entries)
    if inlined_as_dict:
        inlined = {ix: e[1] for ix, e in entries.items() if e is not None and e[0] == "inlined"}
    fast_built = ChunkManifest.from_arrays(paths=paths, offsets=offsets, lengths=lengths, inlined=inlined)
    slow_built = ChunkManifest(to_dict(entries, separator), shape=shape)
    assert fast_built == slow_built
    assert fast_built.dict() == slow_built.dict()
    assert_matches(fast_built, shape, entries)


@fast
@given(
    st.lists(
        st.tuples(st.sampled_from(URLS + ("", None, "/data/b.nc")), st.integers(1, 120)), min_size=1, max_size=12
    )
)
def test_from_arrays_with_long_runs_of_one_url(runs):
    """Parsers emit a file's chunks together: runs of equal paths, with gaps of missing chunks."""
    paths = np.array([p for p, n in runs for _ in range(n)], dtype=object)
    n = paths.size
    offsets = np.arange(n, dtype=np.int64) * 10
    lengths = np.full(n, 10)
    m = ChunkManifest.from_arrays(paths=paths, offsets=offsets, lengths=lengths)
    expected = {}
    for i, p in enumerate(paths):
        if p:
            url = "file:///data/b.nc" if p == "/data/b.nc" else p
            expected[str(i)] = {"path": url, "offset": 10 * i, "length": 10}
    assert m.dict() == expected
    assert m == ChunkManifest(expected, shape=(n,))
    assert len(m.urls) == len({e["path"] for e in expected.values()})
    # the same paths as a numpy string array
    strings = np.array(["" if p is None else p for p in paths], dtype=str)
    assert ChunkManifest.from_arrays(paths=strings, offsets=offsets, lengths=lengths) == m


@fast
@given(manifest_specs())
def test_equality_ignores_key_order_and_url_table_order(spec):
    shape, entries, separator = spec
    forward = ChunkManifest(to_dict(entries, separator), shape=shape)
    backward = ChunkManifest(dict(reversed(list(to_dict(entries, ".").items()))), shape=shape)
    assert forward == backward
    assert not (forward != backward)
    assert sorted(forward.urls) == sorted(backward.urls)


@st.composite
def one_change(draw):
    """A spec plus the same spec with exactly one chunk altered."""
    shape, entries, separator = draw(manifest_specs())
    index = draw(st.sampled_from(sorted(entries)))
    old = entries[index]
    options = [None, ("inlined", b"\x00changed"), ("virtual", "s3://other/z.nc", 7, 9)]
    if old is not None and old[0] == "virtual":
        _, url, offset, length = old
        options += [
            ("virtual", url, offset + 1 if offset < 2**20 else offset - 1, length),
            ("virtual", URLS[(URLS.index(url) + 1) % len(URLS)], offset, length),
        ]
        if offset < 2**20 or length > 1:
            options.append(("virtual", url, offset, length + 1 if offset < 2**20 else length - 1))
    if old is not None and old[0] == "inlined":
        options += [("inlined", old[1] + b"!"), ("inlined", bytes([old[1][0] ^ 1]) + old[1][1:])]
    new = draw(st.sampled_from([o for o in options if o != old]))
    changed = dict(entries)
    changed[index] = new
    return shape, entries, changed, separator


@fast
@given(one_change())
def test_one_changed_chunk_makes_manifests_unequal(case):
    shape, entries, changed, separator = case
    a = ChunkManifest(to_dict(entries, separator), shape=shape)
    b = ChunkManifest(to_dict(changed, separator), shape=shape)
    assert a != b
    assert not (a == b)
    assert a.dict() != b.dict()


def test_equality_with_other_types_and_shapes():
    m = ChunkManifest({"0": {"path": URLS[0], "offset": 0, "length": 4}}, shape=(2,))
    assert m.__eq__(5) is NotImplemented
    assert m != 5
    assert m != ChunkManifest({"0": {"path": URLS[0], "offset": 0, "length": 4}}, shape=(3,))
    assert m != ChunkManifest({"0.0": {"path": URLS[0], "offset": 0, "length": 4}}, shape=(2, 1))
    with pytest.raises(TypeError):
        hash(m)


@fast
@given(manifest_specs())
def test_pickle_round_trip(spec):
    shape, entries, separator = spec
    manifest = ChunkManifest(to_dict(entries, separator), shape=shape)
    for m in (manifest, manifest[tuple(slice(0, max(1, s // 2)) for s in shape)]):
        restored = pickle.loads(pickle.dumps(m))
        assert restored == m
        assert restored.dict() == m.dict()
        assert restored.urls == m.urls
        assert restored.count() == m.count()
        np.testing.assert_array_equal(restored.states, m.states)


@st.composite
def grid_slices(draw, shape):
    """A basic index of a chunk grid: per axis a slice (possibly empty or negative) or an integer."""
    key = []
    for n in shape:
        if draw(st.integers(0, 4)) == 0:
            key.append(draw(st.integers(-n, n - 1)))
        else:
            start = draw(st.integers(-n, n))
            stop = draw(st.one_of(st.none(), st.integers(-n, n)))
            key.append(slice(start, stop))
    return tuple(key)


@fast
@given(st.data())
def test_getitem_matches_numpy_on_the_entries(data):
    shape, entries, separator = data.draw(manifest_specs())
    manifest = ChunkManifest(to_dict(entries, separator), shape=shape)
    key = data.draw(grid_slices(shape))
    table = np.empty(shape, dtype=object)
    for index, entry in entries.items():
        table[index] = entry
    expected = table[key + (...,)]  # an array even when every index is an integer
    sliced = manifest[key]
    assert sliced.shape == expected.shape
    assert_matches(sliced, expected.shape, {ix: expected[ix] for ix in np.ndindex(*expected.shape)})
    # what was sliced away is no longer held: urls, and most inlined bytes
    kept = [e for e in expected.ravel() if e is not None and e[0] == "inlined"]
    assert len(sliced.inline_buffer) <= 2 * sum(len(e[1]) for e in kept)
    assert pickle.loads(pickle.dumps(sliced)) == sliced


def test_concatenate_of_manifests_renumbers_urls_and_inlined_bytes():
    a = ChunkManifest({"0": _virtual(URLS[0]), "1": {"data": b"aa"}, "2": _virtual(URLS[1], offset=8)})
    b = ChunkManifest({"0": {"data": b"bbb"}, "1": _virtual(URLS[2]), "2": _virtual(URLS[0], offset=4)}, shape=(4,))
    c = ChunkManifest({"0": {"data": b"c"}}, shape=(2,))
    out = ChunkManifest.concatenate([a, b, c])
    assert out.dict() == {
        "0": _virtual(URLS[0]),
        "1": {"data": b"aa"},
        "2": _virtual(URLS[1], offset=8),
        "3": {"data": b"bbb"},
        "4": _virtual(URLS[2]),
        "5": _virtual(URLS[0], offset=4),
        "7": {"data": b"c"},
    }
    assert out.urls == URLS[:3]
    with pytest.raises(ValueError, match="at least one manifest"):
        ChunkManifest.concatenate([])


@fast
@given(manifest_specs())
def test_rename_paths_with_a_string(spec):
    shape, entries, separator = spec
    manifest = ChunkManifest(to_dict(entries, separator), shape=shape)
    renamed = manifest.rename_paths("s3://mirror/all.nc")
    expected = {
        ix: ("virtual", "s3://mirror/all.nc", *e[2:]) if e is not None and e[0] == "virtual" else e
        for ix, e in entries.items()
    }
    assert_matches(renamed, shape, expected)
    assert renamed.urls == (("s3://mirror/all.nc",) if manifest.urls else ())
    # the original is untouched
    assert_matches(manifest, shape, entries)


@fast
@given(manifest_specs(), st.sampled_from(("basename", "swap", "collapse")))
def test_rename_paths_with_a_function(spec, how):
    shape, entries, separator = spec
    functions = {
        "basename": lambda u: "s3://mirror/" + u.rsplit("/", 1)[-1],
        "swap": lambda u: u.replace("a.nc", "b.nc").replace("file:///data/b.nc", "file:///data/a.nc"),
        "collapse": lambda u: "gs://one/place.nc",
    }
    func = functions[how]
    calls: list[str] = []

    def counting(url: str) -> str:
        calls.append(url)
        return func(url)

    manifest = ChunkManifest(to_dict(entries, separator), shape=shape)
    renamed = manifest.rename_paths(counting)
    # the function sees each distinct url once, never once per chunk
    assert sorted(calls) == sorted(manifest.urls)
    expected = {
        ix: ("virtual", func(e[1]), *e[2:]) if e is not None and e[0] == "virtual" else e for ix, e in entries.items()
    }
    assert_matches(renamed, shape, expected)
    if how == "collapse":
        assert renamed == manifest.rename_paths("gs://one/place.nc")


def test_rename_paths_rejects_bad_results():
    m = ChunkManifest({"0": {"path": URLS[0], "offset": 0, "length": 4}})
    with pytest.raises(ValueError, match=r"s3://bucket/a\.nc.*relative path 'rel/x\.nc' has no base"):
        m.rename_paths("rel/x.nc")
    with pytest.raises(ValueError, match=r"returned 3 for 's3://bucket/a\.nc'"):
        m.rename_paths(lambda u: 3)
    with pytest.raises(TypeError, match="str or a callable, not int"):
        m.rename_paths(3)
    assert m.rename_paths("/abs/x.nc").entry((0,)) == ("virtual", "file:///abs/x.nc", 0, 4)


def test_per_chunk_arrays_are_read_only():
    m = ChunkManifest({"0.1": {"path": URLS[0], "offset": 3, "length": 4}}, shape=(2, 2))
    for arr in (m.states, m.offsets, m.lengths, m.path_index):
        with pytest.raises(ValueError, match="read-only"):
            arr[0, 1] = 0
    assert m.entry((0, 1)) == ("virtual", URLS[0], 3, 4)


def test_with_inlined_replaces_chunks_and_keeps_the_rest():
    m = ChunkManifest(
        {"0": {"path": URLS[0], "offset": 10, "length": 5}, "1": {"path": URLS[1], "offset": 0, "length": 3}},
        shape=(3,),
    )
    out = m.with_inlined({(0,): b"hello", (2,): b"xy"})
    assert out.entry((0,)) == ("inlined", b"hello")
    assert out.entry((1,)) == ("virtual", URLS[1], 0, 3)
    assert out.entry((2,)) == ("inlined", b"xy")
    assert out.urls == (URLS[1],)
    assert m.entry((0,)) == ("virtual", URLS[0], 10, 5)


def test_chunk_keys():
    assert chunk_key((0, 3, 12)) == "0.3.12"
    assert chunk_key(()) == "0"
    for key in ("0.3.12", "0/3/12", "0_3_12", "c/0/3/12"):
        assert parse_chunk_key(key) == (0, 3, 12)
    for bad in ("", "x", "-1.0", "0.-1"):
        with pytest.raises(ValueError, match="is not a chunk index"):
            parse_chunk_key(bad)


def test_zero_dimensional_manifest():
    m = ChunkManifest({"0": {"data": b"abc"}}, shape=())
    assert m.shape == ()
    assert m.entry(()) == ("inlined", b"abc")
    assert m.dict() == {"0": {"data": b"abc"}}
    assert pickle.loads(pickle.dumps(m)) == m


# =========================================================================== #
# urls
# =========================================================================== #


def test_relative_paths_resolve_against_base_url():
    entries = {
        "0": {"path": "sub/a.nc", "offset": 0, "length": 8},
        "1": {"path": "s3://other/b.nc", "offset": 8, "length": 8},
    }
    m = ChunkManifest(entries, base_url="s3://bucket/root/")
    assert m.entry((0,)) == ("virtual", "s3://bucket/root/sub/a.nc", 0, 8)
    assert m.entry((1,)) == ("virtual", "s3://other/b.nc", 8, 8)
    local = ChunkManifest(entries, base_url="/data/root")
    assert local.entry((0,)) == ("virtual", "file:///data/root/sub/a.nc", 0, 8)
    arrays = ChunkManifest.from_arrays(
        paths=["sub/a.nc", "s3://other/b.nc"], offsets=[0, 8], lengths=[8, 8], base_url="s3://bucket/root"
    )
    assert arrays == m


def test_absolute_local_paths_become_file_urls_and_merge():
    m = ChunkManifest(
        {
            "0": {"path": "/data/x.nc", "offset": 0, "length": 1},
            "1": {"path": "file:///data/x.nc", "offset": 1, "length": 1},
        }
    )
    assert m.urls == ("file:///data/x.nc",)
    assert m.entry((0,))[1] == m.entry((1,))[1] == "file:///data/x.nc"


# =========================================================================== #
# bad input: every message names the chunk and the problem
# =========================================================================== #


def _virtual(path=URLS[0], offset=0, length=4):
    return {"path": path, "offset": offset, "length": length}


BAD_DICTS = [
    pytest.param({"0.1": _virtual(offset=-5)}, r"chunk '0\.1'.*negative offset -5", id="negative-offset"),
    pytest.param({"1.0": _virtual(length=-2)}, r"chunk '1\.0'.*negative length -2", id="negative-length"),
    pytest.param({"1.1": _virtual(length=0)}, r"chunk 1\.1.*zero-length virtual reference", id="zero-length"),
    pytest.param(
        {"0.0": _virtual(offset=2**53 + 1)}, r"chunk '0\.0'.*offset 9007199254740993 is beyond", id="absurd-offset"
    ),
    pytest.param(
        {"1.0": _virtual(offset=2**53 - 2, length=10)}, r"chunk 1\.0.*offset\+length beyond", id="end-beyond-limit"
    ),
    pytest.param(
        {"0.1": _virtual(path="data/a.nc")}, r"chunk 0\.1.*relative path 'data/a\.nc' has no base", id="relative-path"
    ),
    pytest.param(
        {"1.1": _virtual(path="ftp2://host/a.nc")},
        r"chunk 1\.1.*unknown url scheme 'ftp2' in 'ftp2://host/a\.nc'",
        id="unknown-scheme",
    ),
    pytest.param({"0.1": _virtual(offset=1.5)}, r"chunk '0\.1'.*offset 1\.5 is not an integer", id="float-offset"),
    pytest.param({"0.1": _virtual(offset="10")}, r"chunk '0\.1'.*offset '10' is not an integer", id="str-offset"),
    pytest.param({"1.0": _virtual(length=True)}, r"chunk '1\.0'.*length True is not an integer", id="bool-length"),
    pytest.param(
        {"0.1": {**_virtual(), "data": b"abc"}}, r"chunk '0\.1'.*both a path and inlined data", id="path-and-data"
    ),
    pytest.param({"1.0": {"data": "aGVsbG8="}}, r"chunk '1\.0'.*must be bytes, not str", id="str-data"),
    pytest.param({"1.0": {"data": b""}}, r"chunk '1\.0'.*zero-length inlined chunk", id="empty-data"),
    pytest.param({"1.0": {"data": 12.5}}, r"chunk '1\.0'.*type float is not bytes", id="float-data"),
    pytest.param({"2.0": _virtual()}, r"chunk '2\.0' is outside the chunk grid of shape \(2, 2\)", id="key-outside"),
    pytest.param({"0.0.0": _virtual()}, r"chunk '0\.0\.0' is outside the chunk grid", id="key-too-many-dims"),
    pytest.param({"a.b": _virtual()}, r"chunk 'a\.b'.*not a chunk index", id="key-not-numeric"),
    pytest.param({"0.-1": _virtual()}, r"chunk '0\.-1'.*not a chunk index", id="key-negative"),
    pytest.param({"0.1": {"path": URLS[0], "offset": 0}}, r"chunk '0\.1'.*lacks 'length'", id="no-length"),
    pytest.param({"0.1": [URLS[0], 0, 4]}, r"chunk '0\.1'.*is not a dict", id="list-entry"),
]


@pytest.mark.parametrize(("entries", "message"), BAD_DICTS)
def test_bad_entries_are_rejected_naming_the_chunk(entries, message):
    good = {"0.0": _virtual(path=URLS[1], offset=100, length=4)}
    with pytest.raises(ValueError, match=message):
        ChunkManifest({**good, **entries}, shape=(2, 2))


def test_relative_path_with_base_url_succeeds():
    m = ChunkManifest({"0.1": _virtual(path="data/a.nc")}, shape=(2, 2), base_url="gs://bucket")
    assert m.entry((0, 1)) == ("virtual", "gs://bucket/data/a.nc", 0, 4)


BAD_ARRAYS = [
    pytest.param(dict(offsets=[[0, -5], [0, 0]]), r"chunk 0\.1: negative offset -5", id="negative-offset"),
    pytest.param(dict(lengths=[[4, 4], [0, 4]]), r"chunk 1\.0: zero-length virtual reference", id="zero-length"),
    pytest.param(dict(offsets=[[0, 0], [0, 2**53 + 1]]), r"chunk 1\.1: offset\+length beyond", id="absurd-offset"),
    pytest.param(
        dict(paths=[["s3://b/x", "s3://b/x"], ["rel/y", "s3://b/x"]]), r"chunk 1\.0: relative path 'rel/y'", id="rel"
    ),
    pytest.param(
        dict(paths=[["s3://b/x", "nope://y"], ["s3://b/x", "s3://b/x"]]),
        r"chunk 0\.1: unknown url scheme 'nope'",
        id="scheme",
    ),
    pytest.param(dict(offsets=[[0.0, 1.5], [0.0, 0.0]]), r"offsets must be integers, got dtype float64", id="float"),
    pytest.param(dict(lengths=[4, 4]), r"lengths has shape \(2,\) but paths has shape \(2, 2\)", id="shape"),
    pytest.param(
        dict(inlined={(1, 1): b"abc"}), r"chunk 1\.1: has both a path and inlined data", id="path-and-data"
    ),
    pytest.param(dict(inlined={(2, 0): b"abc"}), r"chunk 2\.0: inlined chunk is outside the chunk grid", id="outside"),
    pytest.param(
        dict(paths=[["s3://b/x", ""], ["s3://b/x", "s3://b/x"]], inlined={(0, 1): "abc"}),
        r"chunk '0\.1': inlined data must be bytes, not str",
        id="str-data",
    ),
]


@pytest.mark.parametrize(("override", "message"), BAD_ARRAYS)
def test_bad_arrays_are_rejected_naming_the_chunk(override, message):
    kwargs = dict(paths=[["s3://b/x"] * 2] * 2, offsets=[[0, 0], [0, 0]], lengths=[[4, 4], [4, 4]])
    kwargs.update(override)
    with pytest.raises(ValueError, match=message):
        ChunkManifest.from_arrays(**kwargs)


def test_missing_chunks_may_carry_any_offset_and_length():
    """Offsets/lengths of chunks with no path are ignored, not validated."""
    m = ChunkManifest.from_arrays(paths=["s3://b/x", ""], offsets=[0, -7], lengths=[4, 0])
    assert m.entry((1,)) is None
    assert m.offsets.tolist() == [0, 0]
    assert m.lengths.tolist() == [4, 0]


# =========================================================================== #
# repr and memory
# =========================================================================== #


def test_repr_summarises_counts():
    m = ChunkManifest(
        {
            "0.0": _virtual(URLS[0]),
            "0.1": _virtual(URLS[1]),
            "1.0": _virtual(URLS[0], offset=4),
            "1.1": {"data": b"abc"},
        },
        shape=(3, 2),
    )
    assert repr(m) == "ChunkManifest<grid=(3, 2), virtual=3, inlined=1, missing=2, urls=2>"


def test_nbytes_counts_url_strings_once_and_inlined_bytes():
    def build(url: str, n: int = 100) -> ChunkManifest:
        return ChunkManifest.from_arrays(paths=np.full(n, url, dtype=object), offsets=np.arange(n), lengths=np.ones(n, int))

    short, long = build("s3://b/x"), build("s3://b/" + "x" * 1000)
    grown = long.nbytes - short.nbytes
    # the url is stored once, not once per chunk
    assert 999 <= grown < 1100
    assert build("s3://b/x", 1000).nbytes - short.nbytes < 30 * 900
    inlined = ChunkManifest.from_arrays(
        paths=np.full(10, "", dtype=object),
        offsets=np.zeros(10, int),
        lengths=np.zeros(10, int),
        inlined={(i,): bytes([i]) * 1000 for i in range(10)},
    )
    assert inlined.nbytes >= 10_000
    assert inlined.stored_bytes == 10_000


def test_million_chunk_manifest_is_compact():
    side = 1000
    n = side * side
    ids = np.arange(n, dtype=np.int64).reshape(side, side)
    urls = np.array([f"s3://bucket/year-{i:04d}/file-{i:06d}.nc" for i in range(100)], dtype=object)
    paths = urls[ids % 100]
    paths[ids % 97 == 0] = ""
    m = ChunkManifest.from_arrays(
        paths=paths, offsets=ids * 4096, lengths=np.full(ids.shape, 4096), inlined={(0, 0): b"first", (0, 194): b"x"}
    )
    url_table = sum(sys.getsizeof(u) for u in m.urls) + sys.getsizeof(m.urls)
    assert m.nbytes < 40 * n + url_table
    assert len(m.urls) == 100
    n_empty = int(np.count_nonzero(ids % 97 == 0))
    assert m.count() == {"virtual": n - n_empty, "inlined": 2, "missing": n_empty - 2}
    assert m.entry((999, 999)) == ("virtual", urls[999_999 % 100], 999_999 * 4096, 4096)
    assert m.entry((0, 0)) == ("inlined", b"first")
    assert m.entry((0, 97)) is None


# --------------------------------------------------------------------------- #
# small grids factorize their paths without pandas: same codes and url table
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize(
    "paths",
    [
        ["file:///a.nc"] * 7,
        ["", "file:///b.nc", None, "file:///a.nc", "file:///b.nc", ""],
        [None, None],
        ["s3://x/1.nc", "s3://x/2.nc", "s3://x/1.nc"],
    ],
)
def test_small_grid_factorizing_matches_pandas(paths):
    import pandas as pd

    from vzdask.manifests.manifest import _factorize_paths, _factorize_small

    arr = np.array(paths, dtype=object)
    codes, urls = _factorize_paths(arr)
    assert _factorize_small(arr) is not None  # the pandas-free path is the one taken
    raw, uniques = pd.factorize(arr, use_na_sentinel=True)
    expected_urls = [u for u in uniques if u != ""]
    expected = np.array([-1 if (c < 0 or uniques[c] == "") else expected_urls.index(uniques[c]) for c in raw])
    assert urls == expected_urls
    np.testing.assert_array_equal(codes, expected)


def test_small_grid_with_non_string_paths_keeps_the_pandas_rules():
    from vzdask.manifests.manifest import _factorize_small

    arr = np.array(["file:///a.nc", float("nan"), ""], dtype=object)
    assert _factorize_small(arr) is None  # NaN: pandas decides (a missing value)
    manifest = ChunkManifest.from_arrays(paths=arr, offsets=[0, 0, 0], lengths=[5, 0, 0])
    assert manifest.count() == {"virtual": 1, "inlined": 0, "missing": 2}
    with pytest.raises(ValueError, match=r"chunk 1: path 3 is not a string"):
        ChunkManifest.from_arrays(paths=np.array(["file:///a.nc", 3], dtype=object), offsets=[0, 0], lengths=[5, 5])


# --------------------------------------------------------------------------- #
# create_array_metadata reuses a per-kind template: identical to full construction
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize(
    "kwargs",
    [
        dict(shape=(24, 180, 360), chunk_shape=(1, 90, 180), dtype="<f4", fill_value=np.float32(9.96921e36),
             codecs=[{"name": "bytes", "configuration": {"endian": "little"}}, "shuffle", "zlib"],
             dimension_names=("time", "lat", "lon"), attributes={"units": "K", "_FillValue": 1.5}),
        dict(shape=(5,), chunk_shape=(5,), dtype="f8", fill_value=-0.0, dimension_names=("x",)),
        dict(shape=(5,), chunk_shape=(5,), dtype="f8", fill_value=float("nan")),
        dict(shape=(3, 4), chunk_shape=(2, 2), dtype="i2", fill_value=-9, dimension_names=None),
        dict(shape=(0,), chunk_shape=(1,), dtype="u1"),
        dict(shape=(4, 6), chunk_shape=(2, 3), dtype="f4",
             codecs=[{"name": "transpose", "configuration": {"order": [1, 0]}},
                     {"name": "bytes", "configuration": {"endian": "little"}}]),
    ],
)
def test_templated_metadata_equals_full_construction(kwargs):
    import zarr.codecs as zc

    from vzdask.manifests.metadata import _full_metadata, _zarr_data_type, create_array_metadata, encode_cf_fill_value

    named = {"shuffle": zc.Shuffle(elementsize=4), "zlib": zc.Zlib(level=4)}
    kwargs = dict(kwargs)
    if "codecs" in kwargs:
        kwargs["codecs"] = [named.get(c, c) if isinstance(c, str) else c for c in kwargs["codecs"]]
    dtype = np.dtype(kwargs["dtype"])
    zdtype = _zarr_data_type(dtype)
    codecs = kwargs.get("codecs") or ([{"name": "bytes", "configuration": {"endian": "little"}}]
                                      if dtype.itemsize > 1 else [{"name": "bytes"}])
    fill = kwargs.get("fill_value")
    full = _full_metadata(kwargs["shape"], zdtype, tuple(kwargs["chunk_shape"]),
                          zdtype.default_scalar() if fill is None else fill, codecs,
                          encode_cf_fill_value(kwargs.get("attributes") or {}, dtype), kwargs.get("dimension_names"), "/")
    for _ in range(2):  # the second call comes from the template
        made = create_array_metadata(**kwargs)
        assert made.to_dict() == full.to_dict()
        assert str(made.fill_value) == str(full.fill_value) and np.signbit(made.fill_value) == np.signbit(full.fill_value)
    other = create_array_metadata(**{**kwargs, "shape": tuple(s * 2 for s in kwargs["shape"])})
    assert other.shape == tuple(s * 2 for s in kwargs["shape"]) and made.shape == tuple(kwargs["shape"])


def test_templated_metadata_still_validates_shape_and_names():
    from vzdask.manifests.metadata import create_array_metadata

    base = dict(shape=(4, 4), chunk_shape=(2, 2), dtype="f4", dimension_names=("y", "x"))
    create_array_metadata(**base)
    with pytest.raises(ValueError, match="dimension_names"):
        create_array_metadata(**{**base, "dimension_names": ("y",)})
    with pytest.raises(ValueError, match="same number of dimensions"):
        create_array_metadata(**{**base, "shape": (4,)})
    with pytest.raises(ValueError, match="non-negative"):
        create_array_metadata(**{**base, "shape": (4, -1)})
    with pytest.raises(TypeError):
        create_array_metadata(**{**base, "dimension_names": ("y", 3)})


def test_codec_documents_are_remembered_only_for_codec_objects():
    """The same codec objects reuse their documents; a dict codec may change between calls and is re-read."""
    import zarr.codecs as zc

    from vzdask.manifests.metadata import create_array_metadata

    objects = [zc.BytesCodec(endian="little"), zc.Shuffle(elementsize=4), zc.Zlib(level=4)]
    base = dict(shape=(8,), chunk_shape=(4,), dtype="<f4")
    first = create_array_metadata(**base, codecs=objects)
    again = create_array_metadata(**base, codecs=objects)
    assert first.to_dict() == again.to_dict()
    assert [c["name"] for c in first.to_dict()["codecs"]] == ["bytes", "numcodecs.shuffle", "numcodecs.zlib"]
    serializer = {"name": "bytes", "configuration": {"endian": "little"}}
    codecs = [serializer, zc.Zlib(level=4)]
    little = create_array_metadata(**base, codecs=codecs)
    serializer["configuration"]["endian"] = "big"  # the same list and dict objects, changed in place
    big = create_array_metadata(**base, codecs=codecs)
    assert little.to_dict()["codecs"][0]["configuration"]["endian"] == "little"
    assert big.to_dict()["codecs"][0]["configuration"]["endian"] == "big"


# --------------------------------------------------------------------------- #
# from_file_table: one file's chunk table, the same manifest as from_arrays
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("pattern", ["all", "some", "none", "scalar"])
def test_from_file_table_equals_from_arrays(pattern):
    rng = np.random.default_rng(3)
    shape = () if pattern == "scalar" else (3, 4)
    present = {"all": np.ones(shape, bool), "some": rng.random(shape) < 0.5, "none": np.zeros(shape, bool),
               "scalar": np.ones(shape, bool)}[pattern]
    offsets = rng.integers(0, 10**9, size=shape).astype(np.uint64)
    lengths = rng.integers(1, 10**6, size=shape).astype(np.uint64)
    table = ChunkManifest.from_file_table("/data/a.nc", present, offsets, lengths)
    expected = ChunkManifest.from_arrays(paths=np.where(present, "/data/a.nc", ""), offsets=offsets, lengths=lengths)
    assert table == expected
    assert table.shape == shape
    np.testing.assert_array_equal(table.offsets, np.where(present, offsets, 0))
    np.testing.assert_array_equal(table.lengths, np.where(present, lengths, 0))
    assert set(table.urls) == ({"file:///data/a.nc"} if present.any() else set())


@pytest.mark.parametrize(
    ("url", "lengths", "offsets", "message"),
    [
        ("nope://a.nc", [4, 4], [0, 8], r"chunk 0: unknown url scheme 'nope'"),
        ("rel/a.nc", [4, 4], [0, 8], r"chunk 0: relative path 'rel/a.nc'"),
        ("s3://b/a.nc", [4, 0], [0, 8], r"chunk 1: zero-length virtual reference"),
        ("s3://b/a.nc", [4, 4], [0, 2**53 - 2], r"chunk 1: offset\+length beyond"),
        ("s3://b/a.nc", [4, 4], [0, 2**60], r"chunk 1: offset\+length beyond"),
    ],
)
def test_from_file_table_rejects_bad_tables_naming_the_chunk(url, lengths, offsets, message):
    with pytest.raises(ValueError, match=message):
        ChunkManifest.from_file_table(url, np.ones(2, bool), np.array(offsets, np.uint64), np.array(lengths, np.uint64))


def test_from_file_table_ignores_ranges_of_missing_chunks():
    present = np.array([True, False])
    table = ChunkManifest.from_file_table("s3://b/a.nc", present, np.array([0, 2**60], np.uint64), np.array([4, 0], np.uint64))
    assert table.dict() == {"0": {"path": "s3://b/a.nc", "offset": 0, "length": 4}}
    with pytest.raises(ValueError, match="grid shape"):
        ChunkManifest.from_file_table("s3://b/a.nc", present, np.zeros(3, np.uint64), np.zeros(2, np.uint64))


# --------------------------------------------------------------------------- #
# FileTable + FileChunks: many files laid out alike, each file's manifests from its checked table
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("pattern", ["all", "some", "scalar"])
def test_file_chunks_manifest_equals_from_file_table(pattern):
    rng = np.random.default_rng(5)
    shape = () if pattern == "scalar" else (3, 4)
    present = np.ones(shape, bool) if pattern != "some" else rng.random(shape) < 0.5
    n = int(present.sum())
    table = FileTable("/data/a.grib2", rng.integers(0, 10**9, size=20), rng.integers(1, 10**6, size=20))
    rows = rng.permutation(20)[:n]
    chunks = FileChunks(present)
    manifest = chunks.manifest(table, rows)
    offsets = np.zeros(shape, np.uint64)
    lengths = np.zeros(shape, np.uint64)
    offsets[present], lengths[present] = table.offsets[rows], table.lengths[rows]  # C order, as documented
    assert manifest == ChunkManifest.from_file_table("/data/a.grib2", present, offsets, lengths)
    assert manifest.urls == ("file:///data/a.grib2",)
    # a second file of the same layout shares the chunk states, not the byte ranges
    other = chunks.manifest(FileTable("/data/b.grib2", table.offsets + 7, table.lengths), rows)
    np.testing.assert_array_equal(other.offsets[present], table.offsets[rows] + 7)
    assert other.urls == ("file:///data/b.grib2",) and manifest.urls == ("file:///data/a.grib2",)
    assert not other.states.flags.writeable


@pytest.mark.parametrize(("offsets", "lengths", "message"), [
    ([0, 8], [4, 0], r"a.grib2: range 1 \(offset 8, length 0\) is empty"),
    ([0, 2**53 - 2], [4, 4], r"range 1 \(offset 9007199254740990, length 4\) is empty or reaches beyond"),
])
def test_file_table_rejects_empty_and_too_far_ranges_naming_the_row(offsets, lengths, message):
    with pytest.raises(ValueError, match=message):
        FileTable("s3://b/a.grib2", np.array(offsets), np.array(lengths))


def test_file_table_and_chunks_reject_bad_shapes_and_urls():
    with pytest.raises(ValueError, match="unknown url scheme"):
        FileTable("nope://a.grib2", np.zeros(1), np.ones(1))
    with pytest.raises(ValueError, match="one row per range"):
        FileTable("s3://b/a.grib2", np.zeros(2), np.ones(3))
    with pytest.raises(ValueError, match="2 ranges for 3 present chunks"):
        FileChunks(np.ones(3, bool)).manifest(FileTable("s3://b/a", np.zeros(4), np.ones(4)), np.arange(2))


@pytest.mark.parametrize("ndim", [0, 1, 3])
def test_inlined_chunk_equals_from_arrays(ndim):
    grid = (1,) * ndim
    data = b"\x01\x02\x03"
    expected = ChunkManifest.from_arrays(paths=np.full(grid, "", dtype=object), offsets=np.zeros(grid, np.uint64),
                                         lengths=np.zeros(grid, np.uint64), inlined={(0,) * ndim: data})
    made = ChunkManifest.inlined_chunk(data, ndim)
    assert made == expected and made.shape == grid
    assert made.entry((0,) * ndim) == ("inlined", data)
