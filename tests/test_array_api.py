"""Tests for the numpy functions and indexing a ManifestArray supports.

Each operation is checked against numpy on a "chunk identity" array: an
ordinary integer array, shaped like the virtual array, whose every element
holds the id of the chunk it lives in. Applying the same operation to both,
every chunk of the result must cover elements of exactly one id, and the
result's manifest must hold that id's entry (virtual reference, inlined
bytes or missing) there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vzdask.manifests import ChunkManifest, ManifestArray
from vzdask.manifests.metadata import create_array_metadata

URLS = ("s3://bucket/a.nc", "file:///data/b.nc", "https://example.org/c.nc")
DIMS = ("time", "y", "x")

fast = settings(
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# =========================================================================== #
# chunk-identity arrays
# =========================================================================== #


@dataclass
class Case:
    """A ManifestArray, its chunk-identity numpy array, and each id's entry."""

    array: ManifestArray
    ids: np.ndarray
    table: dict[int, tuple | None]


def entry_for(chunk_id: int, kind: str) -> tuple | None:
    """The entry a chunk with this id gets: offset = id, so every reference is unique."""
    if kind == "virtual":
        return ("virtual", URLS[chunk_id % len(URLS)], chunk_id, 1 + chunk_id % 7)
    if kind == "inlined":
        return ("inlined", b"chunk-%d" % chunk_id + b"+" * (chunk_id % 4))  # lengths vary
    return None


def make_case(shape, chunks, kinds, id_base=0, dimension_names=None, dtype="float32", codecs=None) -> Case:
    """A ManifestArray whose chunk at flat grid position i has id ``id_base + i``."""
    grid = tuple(math.ceil(s / c) for s, c in zip(shape, chunks))
    n = math.prod(grid)
    assert len(kinds) == n
    grid_ids = (id_base + np.arange(n, dtype=np.int64)).reshape(grid)
    paths = np.full(grid, "", dtype=object)
    offsets = np.zeros(grid, np.int64)
    lengths = np.zeros(grid, np.int64)
    inlined = np.full(grid, None, dtype=object)
    table = {}
    for index, kind in zip(np.ndindex(*grid), kinds):
        chunk_id = int(grid_ids[index])
        entry = table[chunk_id] = entry_for(chunk_id, kind)
        if kind == "virtual":
            paths[index], offsets[index], lengths[index] = entry[1:]
        elif kind == "inlined":
            inlined[index] = entry[1]
    manifest = ChunkManifest.from_arrays(paths=paths, offsets=offsets, lengths=lengths, inlined=inlined)
    metadata = create_array_metadata(
        shape=shape, chunk_shape=chunks, dtype=dtype, codecs=codecs, dimension_names=dimension_names
    )
    ids = grid_ids[np.ix_(*[np.arange(s) // c for s, c in zip(shape, chunks)])] if shape else grid_ids
    return Case(ManifestArray(metadata, manifest), ids, table)


def assert_same_chunks(result: ManifestArray, expected_ids: np.ndarray, table: dict) -> None:
    """``result`` holds, chunk by chunk, the entries numpy's ``expected_ids`` says it should."""
    assert result.shape == expected_ids.shape
    chunks = result.chunk_shape
    grid = tuple(math.ceil(s / c) for s, c in zip(result.shape, chunks))
    assert result.manifest.shape == grid
    expected_dict = {}
    for index in np.ndindex(*grid):
        region = expected_ids[tuple(slice(i * c, min((i + 1) * c, s)) for i, c, s in zip(index, chunks, result.shape))]
        chunk_id = int(region.flat[0])
        # the chunk must not straddle two source chunks
        assert (region == chunk_id).all(), (index, np.unique(region))
        # a whole source chunk, or its edge, maps onto the result's chunk
        assert result.manifest.entry(index) == table[chunk_id], index
        entry = table[chunk_id]
        if entry is not None:
            key = ".".join(map(str, index)) if index else "0"
            expected_dict[key] = (
                {"path": entry[1], "offset": entry[2], "length": entry[3]} if entry[0] == "virtual" else {"data": entry[1]}
            )
    assert result.manifest.dict() == expected_dict
    # the url table holds exactly the urls still used
    used = {e["path"] for e in expected_dict.values() if "path" in e}
    assert set(result.manifest.urls) == used and len(result.manifest.urls) == len(used)


KINDS = st.sampled_from(("virtual", "inlined", "missing"))


@st.composite
def axis_shapes(draw, partial: bool = True):
    """``(length, chunk size)`` of one axis; the last chunk may be partial."""
    chunk = draw(st.integers(1, 3))
    nchunks = draw(st.integers(1, 3))
    last = draw(st.integers(1, chunk)) if partial else chunk
    return (nchunks - 1) * chunk + last, chunk


@st.composite
def cases(draw, ndim=None, shape_chunks=None, id_base=0, dims=None):
    """A random ManifestArray with a random mix of chunk states."""
    if shape_chunks is None:
        ndim = draw(st.integers(1, 3)) if ndim is None else ndim
        shape_chunks = [draw(axis_shapes()) for _ in range(ndim)]
    shape = tuple(s for s, _ in shape_chunks)
    chunks = tuple(c for _, c in shape_chunks)
    n = math.prod(math.ceil(s / c) for s, c in shape_chunks)
    kinds = draw(st.lists(KINDS, min_size=n, max_size=n))
    return make_case(shape, chunks, kinds, id_base=id_base, dimension_names=dims)


dimension_names = st.sampled_from((None, "named"))


def names_for(choice, ndim):
    return DIMS[:ndim] if choice == "named" else None


def assert_same_metadata_except_layout(result: ManifestArray, source: ManifestArray) -> None:
    assert result.dtype == source.dtype
    assert result.metadata.to_dict()["codecs"] == source.metadata.to_dict()["codecs"]
    assert result.metadata.to_dict()["fill_value"] == source.metadata.to_dict()["fill_value"]


# =========================================================================== #
# concatenate
# =========================================================================== #


@st.composite
def concatenate_inputs(draw):
    ndim = draw(st.integers(1, 3))
    axis = draw(st.integers(-ndim, ndim - 1))
    shape_chunks = [draw(axis_shapes()) for _ in range(ndim)]
    chunk = shape_chunks[axis][1]
    count = draw(st.integers(1, 3))
    names = names_for(draw(dimension_names), ndim)
    parts = []
    for i in range(count):
        nchunks = draw(st.integers(1, 3))
        last = draw(st.integers(1, chunk)) if i == count - 1 else chunk  # only the last may end partially
        along = list(shape_chunks)
        along[axis] = ((nchunks - 1) * chunk + last, chunk)
        parts.append(draw(cases(shape_chunks=along, id_base=1000 * i, dims=names)))
    return parts, axis


@fast
@given(concatenate_inputs())
def test_concatenate_matches_numpy(inputs):
    parts, axis = inputs
    result = np.concatenate([p.array for p in parts], axis=axis)
    assert isinstance(result, ManifestArray)
    table = {k: v for p in parts for k, v in p.table.items()}
    assert_same_chunks(result, np.concatenate([p.ids for p in parts], axis=axis), table)
    first = parts[0].array
    assert result.chunk_shape == first.chunk_shape
    assert result.dimension_names == first.dimension_names
    assert_same_metadata_except_layout(result, first)
    counts = [p.array.manifest.count() for p in parts]
    assert result.manifest.count() == {k: sum(c[k] for c in counts) for k in ("virtual", "inlined", "missing")}


def test_concatenate_keeps_inlined_and_missing_chunks_and_the_partial_edge():
    a = make_case((4, 3), (2, 3), ["inlined", "virtual"], id_base=0, dimension_names=("t", "x"))
    b = make_case((3, 3), (2, 3), ["missing", "inlined"], id_base=100, dimension_names=("t", "x"))
    out = np.concatenate([a.array, b.array], axis=0)
    assert out.shape == (7, 3)
    assert out.chunk_shape == (2, 3)
    assert out.dimension_names == ("t", "x")
    assert [out.manifest.entry((i, 0)) for i in range(4)] == [
        ("inlined", b"chunk-0"),
        ("virtual", URLS[1], 1, 2),
        None,
        ("inlined", b"chunk-101+"),
    ]
    assert out.manifest.count() == {"virtual": 1, "inlined": 2, "missing": 1}


def test_concatenate_of_arrays_without_urls():
    """Arrays whose chunks are all inlined or missing have empty url tables."""
    a = make_case((4,), (2,), ["virtual", "virtual"], id_base=0)
    b = make_case((4,), (2,), ["inlined", "missing"], id_base=10)
    for order in ((a, b), (b, a), (b, b)):
        out = np.concatenate([c.array for c in order])
        table = {**a.table, **b.table}
        assert_same_chunks(out, np.concatenate([c.ids for c in order]), table)


# =========================================================================== #
# stack and expand_dims
# =========================================================================== #


@st.composite
def stack_inputs(draw):
    ndim = draw(st.integers(1, 3))
    shape_chunks = [draw(axis_shapes()) for _ in range(ndim)]
    names = names_for(draw(dimension_names), ndim)
    count = draw(st.integers(1, 3))
    parts = [draw(cases(shape_chunks=shape_chunks, id_base=1000 * i, dims=names)) for i in range(count)]
    axis = draw(st.integers(-(ndim + 1), ndim))
    return parts, axis


@fast
@given(stack_inputs())
def test_stack_matches_numpy(inputs):
    parts, axis = inputs
    result = np.stack([p.array for p in parts], axis=axis)
    table = {k: v for p in parts for k, v in p.table.items()}
    assert_same_chunks(result, np.stack([p.ids for p in parts], axis=axis), table)
    first = parts[0].array
    at = axis % (first.ndim + 1)
    assert result.chunk_shape == first.chunk_shape[:at] + (1,) + first.chunk_shape[at:]
    if first.dimension_names is None:
        assert result.dimension_names is None
    else:
        assert result.dimension_names == first.dimension_names[:at] + (None,) + first.dimension_names[at:]
    assert_same_metadata_except_layout(result, first)


@st.composite
def expand_dims_inputs(draw):
    ndim = draw(st.integers(0, 3)) if draw(st.booleans()) else draw(st.integers(1, 2))
    names = names_for(draw(dimension_names), ndim)
    if ndim == 0:
        case = make_case((), (), [draw(KINDS)], dimension_names=names)
    else:
        case = draw(cases(ndim=ndim, dims=names))
    new = draw(st.integers(1, 2))
    out_ndim = ndim + new
    positions = draw(st.lists(st.integers(0, out_ndim - 1), min_size=new, max_size=new, unique=True))
    axes = [p - out_ndim if draw(st.booleans()) else p for p in positions]
    axis = axes[0] if new == 1 and draw(st.booleans()) else tuple(axes)
    return case, axis, sorted(positions)


@fast
@given(expand_dims_inputs())
def test_expand_dims_matches_numpy(inputs):
    case, axis, positions = inputs
    result = np.expand_dims(case.array, axis)
    assert_same_chunks(result, np.expand_dims(case.ids, axis), case.table)
    chunks = list(case.array.chunk_shape)
    names = None if case.array.dimension_names is None else list(case.array.dimension_names)
    for p in positions:
        chunks.insert(p, 1)
        if names is not None:
            names.insert(p, None)
    assert result.chunk_shape == tuple(chunks)
    assert result.dimension_names == (None if names is None else tuple(names))
    assert_same_metadata_except_layout(result, case.array)


# =========================================================================== #
# broadcast_to
# =========================================================================== #


@st.composite
def broadcast_inputs(draw):
    ndim = draw(st.integers(1, 3))
    shape_chunks, target = [], []
    for _ in range(ndim):
        if draw(st.booleans()):
            shape_chunks.append((1, 1))  # broadcastable: length 1, chunk size 1
            target.append(draw(st.integers(1, 4)))
        else:
            length, chunk = draw(axis_shapes())
            shape_chunks.append((length, chunk))
            target.append(length)
    names = names_for(draw(dimension_names), ndim)
    case = draw(cases(shape_chunks=shape_chunks, dims=names))
    leading = draw(st.lists(st.integers(1, 3), max_size=2))
    return case, tuple(leading + target)


@fast
@given(broadcast_inputs())
def test_broadcast_to_matches_numpy(inputs):
    case, shape = inputs
    result = np.broadcast_to(case.array, shape)
    assert_same_chunks(result, np.broadcast_to(case.ids, shape), case.table)
    new = len(shape) - case.array.ndim
    assert result.chunk_shape == (1,) * new + case.array.chunk_shape
    if case.array.dimension_names is None:
        assert result.dimension_names is None
    else:
        assert result.dimension_names == (None,) * new + case.array.dimension_names
    assert_same_metadata_except_layout(result, case.array)


def test_broadcast_repeats_inlined_and_missing_chunks():
    case = make_case((1, 3), (1, 2), ["inlined", "missing"], dimension_names=("t", "x"))
    out = np.broadcast_to(case.array, (2, 4, 3))
    assert out.shape == (2, 4, 3)
    assert out.chunk_shape == (1, 1, 2)
    assert out.dimension_names == (None, "t", "x")
    assert out.manifest.count() == {"virtual": 0, "inlined": 8, "missing": 8}
    assert {out.manifest.entry((i, j, 0)) for i in range(2) for j in range(4)} == {("inlined", b"chunk-0")}


# =========================================================================== #
# chunk-aligned indexing
# =========================================================================== #


@st.composite
def index_inputs(draw):
    ndim = draw(st.integers(1, 3))
    shape_chunks = []
    for _ in range(ndim):
        # chunk size 1 axes allow integer indices
        shape_chunks.append(draw(st.one_of(axis_shapes(), st.integers(1, 4).map(lambda n: (n, 1)))))
    names = names_for(draw(dimension_names), ndim)
    case = draw(cases(shape_chunks=shape_chunks, dims=names))
    key = []
    for length, chunk in shape_chunks:
        nchunks = math.ceil(length / chunk)
        if chunk == 1 and draw(st.booleans()):
            i = draw(st.integers(0, length - 1))
            key.append(i - length if draw(st.booleans()) else i)
            continue
        first = draw(st.integers(0, nchunks - 1))
        last = draw(st.integers(first + 1, nchunks))
        start = draw(st.sampled_from((first * chunk, first * chunk - length) if first else (0, None)))
        stop_at = min(last * chunk, length)
        stop = draw(st.sampled_from((stop_at, None) if stop_at == length else (stop_at, stop_at - length)))
        if stop_at == length and draw(st.booleans()):
            stop = last * chunk + draw(st.integers(0, 3))  # beyond the end: clipped like numpy
        key.append(slice(start, stop))
    for _ in range(draw(st.integers(0, 2))):
        key.insert(draw(st.integers(0, len(key))), None)
    if draw(st.booleans()):
        # replace a run of trailing full slices by an ellipsis
        at = draw(st.integers(0, len(key)))
        if all(k == slice(None) or k == slice(0, None) for k in key[at:] if k is not None) and None not in key[at:]:
            key = key[:at] + [Ellipsis]
    return case, tuple(key)


@fast
@given(index_inputs())
def test_chunk_aligned_getitem_matches_numpy(inputs):
    case, key = inputs
    result = case.array[key]
    expected = case.ids[key]
    assert_same_chunks(result, expected, case.table)
    # chunk shape and names: kept on sliced axes, dropped on integer axes, 1/None on new axes
    chunks, names = [], []
    source_names = case.array.dimension_names or (None,) * case.array.ndim
    axis = 0
    for k in key:
        if k is None:
            chunks.append(1)
            names.append(None)
        elif k is Ellipsis:
            rest = case.array.ndim - axis
            chunks.extend(case.array.chunk_shape[axis:])
            names.extend(source_names[axis:])
            axis += rest
        elif isinstance(k, slice):
            chunks.append(case.array.chunk_shape[axis])
            names.append(source_names[axis])
            axis += 1
        else:
            axis += 1
    chunks.extend(case.array.chunk_shape[axis:])
    names.extend(source_names[axis:])
    assert result.chunk_shape == tuple(chunks)
    if case.array.dimension_names is None:
        assert result.dimension_names is None
    else:
        assert result.dimension_names == tuple(names)
    assert_same_metadata_except_layout(result, case.array)


def test_getitem_keeps_the_partial_edge_chunk_and_compacts():
    case = make_case((10,), (3,), ["virtual", "inlined", "inlined", "inlined"], dimension_names=("x",))
    tail = case.array[3:]
    assert tail.shape == (7,)
    assert [tail.manifest.entry((i,)) for i in range(3)] == [entry_for(i, "inlined") for i in (1, 2, 3)]
    assert tail.manifest.urls == ()
    edge = case.array[9:]
    assert edge.shape == (1,)
    assert edge.dimension_names == ("x",)
    assert edge.manifest.entry((0,)) == ("inlined", b"chunk-3+++")
    # bytes of dropped inlined chunks are not kept alive
    assert edge.manifest.inline_buffer == b"chunk-3+++"
    head = case.array[:3]
    assert head.manifest.dict() == {"0": {"path": URLS[0], "offset": 0, "length": 1}}


def test_round_trip_of_split_and_concatenate():
    case = make_case((5, 4), (2, 2), ["virtual", "inlined", "missing", "virtual", "inlined", "virtual"])
    a = case.array
    rejoined = np.concatenate([a[:2], a[2:4], a[4:]], axis=0)
    assert rejoined.equals(a)
    rejoined = np.concatenate([a[:, :2], a[:, 2:]], axis=1)
    assert rejoined.equals(a)


# =========================================================================== #
# errors
# =========================================================================== #


@pytest.fixture
def array2d() -> ManifestArray:
    """Shape (6, 5), chunks (2, 3): grid (3, 2), last column of chunks partial."""
    return make_case((6, 5), (2, 3), ["virtual", "inlined", "missing"] * 2, dimension_names=("y", "x")).array


@pytest.mark.parametrize(
    ("key", "error", "message"),
    [
        ((slice(1, None),), IndexError, r"axis 0: slice start 1 is not on a chunk boundary \(chunk size 2\)"),
        ((slice(None), slice(2, None)), IndexError, r"axis 1: slice start 2 is not on a chunk boundary \(chunk size 3\)"),
        ((slice(0, 3),), IndexError, r"axis 0: slice stop 3 is not on a chunk boundary \(chunk size 2\) nor the end"),
        ((slice(None), slice(0, 4)), IndexError, r"axis 1: slice stop 4 is not on a chunk boundary"),
        ((slice(None), slice(0, -3)), IndexError, r"axis 1: slice stop 2 is not on a chunk boundary"),
        ((slice(None, None, 2),), IndexError, r"axis 0: step 2 is not supported"),
        ((0,), IndexError, r"axis 0: an integer index needs chunk size 1 along that axis, but it is 2"),
        ((slice(None), 1), IndexError, r"axis 1: an integer index needs chunk size 1 along that axis, but it is 3"),
        (([0, 1],), IndexError, r"axis 0: index of type list is not supported"),
        ((slice(None), np.array([0, 3])), IndexError, r"axis 1: index of type ndarray is not supported"),
        ((np.ones(6, bool),), IndexError, r"axis 0: index of type ndarray is not supported"),
        ((slice(None), slice(None), slice(None)), IndexError, r"too many indices for a 2-d array"),
        ((Ellipsis, Ellipsis), IndexError, r"single ellipsis"),
    ],
)
def test_bad_indexing_names_the_axis(array2d, key, error, message):
    with pytest.raises(error, match=message):
        array2d[key]


def test_integer_index_out_of_bounds():
    a = make_case((3,), (1,), ["virtual"] * 3).array
    with pytest.raises(IndexError, match=r"axis 0: index 3 is out of bounds for size 3"):
        a[3]
    assert a[-1].manifest.entry(()) == ("virtual", URLS[2], 2, 3)


def test_concatenate_with_a_partial_chunk_in_the_middle():
    a = make_case((5,), (2,), ["virtual"] * 3).array
    b = make_case((4,), (2,), ["virtual"] * 2, id_base=10).array
    with pytest.raises(ValueError, match=r"along axis 0: array 0 has length 5, not a multiple of the chunk size 2"):
        np.concatenate([a, b])
    # at the end it is fine
    assert np.concatenate([b, a]).shape == (9,)


def _meta_variant(**overrides) -> ManifestArray:
    kwargs = dict(shape=(4, 4), chunks=(2, 2), kinds=["virtual"] * 4)
    meta = dict(dtype="float32", codecs=None)
    fill = overrides.pop("fill_value", None)
    kwargs.update({k: v for k, v in overrides.items() if k in kwargs})
    meta.update({k: v for k, v in overrides.items() if k in meta})
    case = make_case(kwargs["shape"], kwargs["chunks"], kwargs["kinds"], **meta)
    if fill is None:
        return case.array
    document = case.array.metadata.to_dict()
    document["fill_value"] = fill
    return ManifestArray(type(case.array.metadata).from_dict(document), case.array.manifest)


@pytest.mark.parametrize(
    ("other", "message"),
    [
        (dict(dtype="int32"), r"data_type differs between array 0 \('float32'\) and array 1 \('int32'\)"),
        (
            dict(chunks=(2, 4), kinds=["virtual"] * 2),
            # stack inserts a chunk size 1 first
            r"chunk_shape differs between array 0 \(\[(1, )?2, 2\]\) and array 1 \(\[(1, )?2, 4\]\)",
        ),
        (
            dict(codecs=[{"name": "bytes", "configuration": {"endian": "little"}}, {"name": "zstd", "configuration": {"level": 3}}]),
            r"codecs differs between array 0 \(\[\{[^\]]*'name': 'bytes'\}\]\) and array 1 \(.*'level': 3\}, 'name': 'zstd'",
        ),
        (dict(fill_value=-9999.0), r"fill_value differs between array 0 \(0\.0\) and array 1 \(-9999\.0\)"),
    ],
)
def test_concatenate_of_incompatible_arrays_names_the_field_and_both_values(other, message):
    a = _meta_variant()
    b = _meta_variant(**other)
    with pytest.raises(ValueError, match=message):
        np.concatenate([a, b], axis=0)
    with pytest.raises(ValueError, match=message):
        np.stack([a, b])


def test_concatenate_with_nan_fill_values_is_allowed():
    a = _meta_variant(fill_value="NaN")
    out = np.concatenate([a, a])
    assert out.shape == (8, 4)
    assert np.isnan(out.fill_value)


def test_mixing_manifest_arrays_and_numpy_arrays_is_refused():
    a = make_case((4,), (2,), ["virtual", "inlined"]).array
    with pytest.raises(TypeError, match=r"cannot concatenate a ManifestArray with a ndarray \(argument 1\)"):
        np.concatenate([a, np.zeros(4, np.float32)])
    with pytest.raises(TypeError, match=r"cannot concatenate a ManifestArray with a ndarray \(argument 0\)"):
        np.concatenate([np.zeros(4, np.float32), a])
    with pytest.raises(TypeError, match=r"cannot stack a ManifestArray with a ndarray \(argument 1\)"):
        np.stack([a, np.zeros(4, np.float32)])


def test_concatenate_and_stack_shape_errors():
    a = make_case((4, 2), (2, 2), ["virtual"] * 2).array
    b = make_case((4, 3), (2, 3), ["virtual"] * 2).array
    c = make_case((4,), (2,), ["virtual"] * 2).array
    with pytest.raises(ValueError, match=r"along axis 0: array 0 has length 2 on axis 1 but array 1 has 3"):
        np.concatenate([a, b])
    with pytest.raises(ValueError, match=r"array 0 has 2 dimensions but array 1 has 1"):
        np.concatenate([a, c])
    with pytest.raises(ValueError, match=r"cannot stack: array 0 has shape \(4, 2\) but array 1 has \(4, 3\)"):
        np.stack([a, b])
    with pytest.raises(np.exceptions.AxisError, match=r"concatenate: axis 2 is out of bounds"):
        np.concatenate([a, a], axis=2)
    with pytest.raises(ValueError, match=r"axis=None"):
        np.concatenate([a, a], axis=None)


def test_broadcast_of_an_axis_with_chunk_size_above_one(array2d):
    single = make_case((1, 4), (2, 2), ["virtual", "inlined"]).array
    with pytest.raises(ValueError, match=r"cannot broadcast axis 0 of length 1 to 3: its chunk size is 2"):
        np.broadcast_to(single, (3, 4))
    with pytest.raises(ValueError, match=r"cannot broadcast axis 1 of length 5 to 6"):
        np.broadcast_to(array2d, (6, 6))
    with pytest.raises(ValueError, match=r"fewer dimensions"):
        np.broadcast_to(array2d, (5,))


def test_ndim_changes_refused_when_a_codec_depends_on_ndim():
    codecs = [{"name": "transpose", "configuration": {"order": [1, 0]}}, {"name": "bytes", "configuration": {"endian": "little"}}]
    a = make_case((4, 4), (2, 2), ["virtual"] * 4, codecs=codecs).array
    for op in (lambda: np.expand_dims(a, 0), lambda: np.stack([a, a]), lambda: np.broadcast_to(a, (2, 4, 4))):
        with pytest.raises(NotImplementedError, match=r"codec 'transpose' is configured for 2 dimensions"):
            op()
    # slicing keeps the dimensions and is fine
    assert a[:2].shape == (2, 4)
    assert np.concatenate([a, a]).shape == (8, 4)


def test_asarray_explains_why_values_are_not_available(array2d):
    with pytest.raises(TypeError, match=r"holds references to chunks, not values.*\.compute\(\)"):
        np.asarray(array2d)


def test_unsupported_numpy_functions_raise_type_error(array2d):
    """Functions with no reference-only form and no dask equivalent say so, naming the function."""
    for func, name in ((np.sort, "sort"), (np.partition, "partition")):
        args = (array2d,) if func is np.sort else (array2d, 1)
        with pytest.raises(TypeError, match=rf"numpy\.{name} is not supported on a ManifestArray.*\.compute\(\)"):
            func(*args)


def test_value_functions_hand_off_lazily_to_dask(array2d):
    """np.sum needs values: it becomes a lazy dask computation, reading nothing yet."""
    import dask.array as da

    total = np.sum(array2d, axis=0)
    assert isinstance(total, da.Array)
    assert total.shape == (5,)
    assert total.dtype == np.float32


def test_result_type_uses_the_virtual_dtype(array2d):
    assert np.result_type(array2d, np.int8) == np.float32
    assert np.result_type(make_case((2,), (1,), ["missing"] * 2, dtype="int16").array, np.int8) == np.int16


def test_repr_summarises_counts(array2d):
    text = repr(array2d)
    assert text.startswith("ManifestArray<shape=(6, 5), dtype=float32, chunks=(2, 3), ")
    assert "virtual=2, inlined=2, missing=2, urls=1" in text
    assert array2d._repr_inline_(200) == "ManifestArray<2 virtual, 2 inlined, 2 missing chunks>"


def test_manifest_array_validates_its_manifest():
    metadata = create_array_metadata(shape=(6,), chunk_shape=(2,), dtype="f4")
    with pytest.raises(ValueError, match=r"manifest has chunk grid \(2,\) but an array of shape \(6,\) with chunks \(2,\)"):
        ManifestArray(metadata, ChunkManifest.empty((2,)))
    with pytest.raises(TypeError, match="must be a ChunkManifest, not dict"):
        ManifestArray(metadata, {})


def test_rename_paths_on_an_array(array2d):
    renamed = array2d.rename_paths(lambda u: u.replace("s3://bucket", "s3://mirror"))
    assert renamed.manifest.entry((0, 0)) == ("virtual", "s3://mirror/a.nc", 0, 1)
    assert renamed.manifest.entry((0, 1)) == ("inlined", b"chunk-1+")
    assert renamed.metadata.to_dict() == array2d.metadata.to_dict()
    assert not renamed.equals(array2d)
    assert renamed.rename_paths(lambda u: u.replace("s3://mirror", "s3://bucket")).equals(array2d)
