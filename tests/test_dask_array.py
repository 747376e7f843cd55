"""``to_dask_array``'s one-result-array compute (``vzdask/dask_array.py``).

A whole-array compute of the array ``to_dask_array`` returns decodes every
block into one shared result and hands it over without dask's final copy.
These tests check the values on every path that uses it or steps aside from
it, and that no result ever shares memory with another result, a persisted
block or a later run of the same graph.
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor

import dask
import dask.array as da
import numpy as np
import pytest
import xarray as xr

from vzdask import dask_array
from vzdask.dask_array import SharedResult

SHAPE, CHUNKS = (7, 9), (2, 4)


def values(seed: int = 0) -> np.ndarray:
    return (np.arange(np.prod(SHAPE)).reshape(SHAPE) * 1.5 - 7 + seed).astype("float32")


@pytest.fixture
def case(make_virtual):
    """A 4 x 3 chunk grid (virtual, inlined and missing chunks), zlib, fill -9.5; small tasks."""
    with dask.config.set({"vzdask.task-bytes": 64}):  # 2 chunks a task: several blocks, partial edges
        yield make_virtual(values(), CHUNKS, codec="zlib", fill_value=np.float32(-9.5))


@pytest.fixture
def copies(monkeypatch):
    """Per compute of a ``to_dask_array`` array: False if it handed over its shared result, True if it copied.

    (A compute that never reached vzdask's final step records nothing, so an
    empty list means the hook was lost, not that nothing was copied.)
    """
    seen: list[bool] = []
    ours, fallback = dask_array.finalize, dask_array.dask_finalize
    copied: list[bool] = []

    def spy_fallback(results):
        copied.append(True)
        return fallback(results)

    def spy(results, chunks):
        copied.clear()
        out = ours(results, chunks)
        seen.append(bool(copied))
        return out

    monkeypatch.setattr(dask_array, "dask_finalize", spy_fallback)
    monkeypatch.setattr(dask_array, "finalize", spy)
    return seen


def test_whole_compute_hands_over_one_result(case, copies):
    view = case.array.to_dask_array()
    assert view.numblocks == (4, 2)
    got = view.compute()
    np.testing.assert_array_equal(got, case.expected, strict=True)
    assert got.base is None and got.flags.c_contiguous and got.flags.writeable
    assert copies == [False]
    # the same values as dask's own path (a copy of the array without the hook)
    plain = da.Array(view.dask, view.name, view.chunks, meta=view._meta)
    np.testing.assert_array_equal(plain.compute(), got, strict=True)


def test_xarray_compute_and_values_take_the_same_path(case, copies):
    view = case.array.to_dask_array()
    ds = xr.Dataset({"v": (("y", "x"), view), "w": (("y", "x"), view + 1)})
    computed = ds.compute()
    np.testing.assert_array_equal(computed.v.values, case.expected, strict=True)
    np.testing.assert_array_equal(computed.w.values, case.expected + 1)
    assert copies == [False]  # v handed over its result; w (derived) is plain dask's
    np.testing.assert_array_equal(ds.v.values, case.expected, strict=True)
    assert copies == [False, False]


def test_results_never_share_memory(case, copies):
    view = case.array.to_dask_array()
    first = view.compute()
    first[...] = 0  # a user writing into a result changes no later one
    second = view.compute()
    np.testing.assert_array_equal(second, case.expected, strict=True)
    assert not np.shares_memory(first, second)
    a, b = dask.compute(view, view)
    np.testing.assert_array_equal(a, case.expected, strict=True)
    assert a is b  # dask merges the same collection once, as it does for any dask array
    assert np.asarray(view).sum() == case.expected.sum()
    assert copies == [False] * 4  # two computes, one merged pair, np.asarray
    # a kept graph (to_delayed, dask.optimize) runs into fresh memory each time
    (kept,) = dask.optimize(view)
    one, two = kept.compute(), kept.compute()
    np.testing.assert_array_equal(one, case.expected, strict=True)
    assert not np.shares_memory(one, two)
    blocks = view.to_delayed().ravel()
    first = blocks[0].compute()
    first[...] = 0
    again = blocks[0].compute()
    np.testing.assert_array_equal(again, case.expected[:2, :8])
    assert not np.shares_memory(first, again)


def test_derived_arrays_and_mixed_computes(case, copies):
    view = case.array.to_dask_array()
    expected = case.expected
    np.testing.assert_array_equal((view + 1).compute(), expected + 1)
    np.testing.assert_array_equal(view[1:6, 2:].compute(), expected[1:6, 2:])
    np.testing.assert_array_equal(view.rechunk((3, 3)).compute(), expected)
    assert copies == []  # derived arrays are plain dask arrays
    whole, total, part = dask.compute(view, view.sum(), view[:3])
    # computed next to arrays derived from it, the load tasks may be dask's own (whichever graph
    # dask keeps for the shared keys): then the final step copies, as plain dask does
    assert len(copies) == 1
    np.testing.assert_array_equal(whole, expected, strict=True)
    np.testing.assert_allclose(total, expected.sum(), rtol=1e-6)
    np.testing.assert_array_equal(part, expected[:3])
    assert not np.shares_memory(whole, part)
    # xarray takes it for a plain dask array, also next to arrays derived from it
    v = xr.DataArray(view, dims=("y", "x"))
    got = xr.apply_ufunc(np.subtract, v, v.mean("y"), dask="parallelized", output_dtypes=[np.float32]).compute()
    np.testing.assert_allclose(got.values, expected - expected.mean(axis=0), rtol=1e-5, atol=1e-5)
    assert type(view) is da.Array


def test_computes_interleaving_load_arrays_with_others_keep_their_order(case, copies):
    """dask computes the arrays of one compute in groups by optimiser: each result must still be its array's."""
    view = case.array.to_dask_array()
    other = case.array.to_dask_array(chunks=(3, 3))
    expected = case.expected
    total, whole, part, again, shifted = dask.compute(view.sum(), view, view[:3], other, da.ones(2) + 1)
    np.testing.assert_allclose(total, expected.sum(), rtol=1e-6)
    np.testing.assert_array_equal(whole, expected, strict=True)
    np.testing.assert_array_equal(part, expected[:3])
    np.testing.assert_array_equal(again, expected, strict=True)
    np.testing.assert_array_equal(shifted, [2.0, 2.0])
    assert copies == [False, False]  # both load arrays computed as they are handed over their results


def test_persisted_blocks_stay_apart_from_results(case, copies):
    persisted = case.array.to_dask_array().persist()
    assert type(persisted) is da.Array and "__dask_postcompute__" not in vars(persisted)  # a plain dask array
    got = persisted.compute()
    np.testing.assert_array_equal(got, case.expected, strict=True)
    got[...] = 0
    np.testing.assert_array_equal(persisted.compute(), case.expected, strict=True)


def test_chunks_given_and_zero_dimensional(make_virtual, copies):
    data = values()
    many = make_virtual(data, CHUNKS, codec="zstd", fill_value=np.float32(0), name="many")
    for chunks in [(3, 5), (1, 9), (7, 9), -1]:
        np.testing.assert_array_equal(many.array.to_dask_array(chunks=chunks).compute(), many.expected, strict=True)
    scalar = make_virtual(np.array(2.5, dtype="float32"), (), codec="zstd", state_of=lambda ix: "virtual", name="s")
    got = scalar.array.to_dask_array().compute()
    assert got.shape == () and got == np.float32(2.5)
    empty = make_virtual(np.zeros((0, 4), "int16"), (2, 2), codec="zstd", name="e")
    assert empty.array.to_dask_array().compute().shape == (0, 4)
    assert copies == [False] * 6  # every one, the 0-d and the empty array too, handed over uncopied


def test_processes_scheduler_steps_aside(case):
    """Load tasks in other processes get a pickled SharedResult (no array: see below) and decode as dask's do."""
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=2, mp_context=context) as pool:
        got = case.array.to_dask_array().compute(scheduler="processes", pool=pool)
    np.testing.assert_array_equal(got, case.expected, strict=True)


def _shared_result_here() -> bool:
    """Whether a SharedResult made in this process gives an array here, and a pickled copy does not."""
    import pickle

    result = SharedResult((3, 4), "<f4")
    return result.array() is not None and pickle.loads(pickle.dumps(result)).array() is None


def test_distributed_workers_step_aside(case, dask_client):
    got = case.array.to_dask_array().compute()
    np.testing.assert_array_equal(got, case.expected, strict=True)
    assert _shared_result_here()
    # on a worker, even a SharedResult made in that worker's own process gives no array
    assert dask_client.submit(_shared_result_here, pure=False).result() is False


def test_bad_chunk_raises(make_virtual, tmp_path):
    bad = make_virtual(values(), CHUNKS, codec="zlib", fill_value=np.float32(-9.5), state_of=lambda ix: "virtual")
    chunk = tmp_path / "v" / "c" / "1" / "1"
    chunk.write_bytes(b"x" * chunk.stat().st_size)  # same length, not zlib
    with pytest.raises(ValueError, match=r"cannot decode chunk 1\.1"):
        bad.array.to_dask_array().compute(scheduler="threads")


def test_tiles_check_refuses_anything_but_the_exact_tiles():
    base = np.arange(12.0).reshape(3, 4).copy()  # owns its memory, like a shared result
    chunks = ((2, 1), (4,))
    assert dask_array._is_tiled_by(base, [base[0:2], base[2:3]], chunks)
    assert not dask_array._is_tiled_by(base, [base[0:2], base[1:2]], chunks)  # wrong place
    assert not dask_array._is_tiled_by(base, [base[0:2]], chunks)  # a tile short
    assert not dask_array._is_tiled_by(base, [base[0:2], base[2:3].copy()], chunks)  # a copy
    assert not dask_array._is_tiled_by(base, [base[0:2, :], base[2:3, ::-1]], chunks)  # reversed strides
    assert not dask_array._is_tiled_by(base, [base[0:2], base[2:3]], ((1, 2), (4,)))  # other chunks
