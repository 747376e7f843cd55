"""Task blocks sized for the threads that run them (issue 19 item 6).

A variable of tens of MB used to be one task (blocks of up to
``vzdask.task-bytes``, 64 MiB), so a reduction over it decoded on one core.
``chunk_tasks.task_target`` now aims for about ``vzdask.tasks-per-thread``
tasks per thread of dask's pool or of the default distributed client, never
below ``vzdask.min-task-bytes``. Values are compared with netCDF4's reading of
the same files.
"""

from __future__ import annotations

import dask
import netCDF4
import numpy as np
import pytest
import xarray as xr

import vzdask
from vzdask.chunk_tasks import BlockLayout, scheduler_threads, task_target

MiB = 2**20


def test_target_is_two_tasks_per_thread_between_the_bounds():
    with dask.config.set(num_workers=2):
        assert scheduler_threads() == 2
        assert task_target(46 * MiB) == -(-46 * MiB // 4)  # 4 tasks on 2 threads
        assert task_target(6 * MiB) == 4 * MiB  # never below the minimum
        assert task_target(10 * 2**30) == 64 * MiB  # nor above vzdask.task-bytes
        with dask.config.set({"vzdask.tasks-per-thread": 4}):
            assert task_target(64 * MiB) == 8 * MiB
        with dask.config.set({"vzdask.task-bytes": 1000}):  # a maximum below the minimum wins
            assert task_target(46 * MiB) == 1000
        with dask.config.set({"vzdask.min-task-bytes": "1MiB"}):
            assert task_target(6 * MiB) == -(-6 * MiB // 4)
    with dask.config.set(num_workers=16):
        assert task_target(46 * MiB) == 4 * MiB


@pytest.mark.parametrize(("threads", "nblocks"), [(1, 2), (2, 5), (4, 10)])
def test_issue_19_variable_gets_blocks_for_every_thread(threads, nblocks):
    """30 files of 24x90x180 float32, one chunk each (46.7 MB): one block before, now >= 2 per thread."""
    with dask.config.set(num_workers=threads):
        layout = BlockLayout.for_array((30, 1, 1), 24 * 90 * 180 * 4)
    assert layout.nblocks == (nblocks, 1, 1)
    assert len({min(b, 30 - i * b) for i, b in zip(range(nblocks), [layout.block[0]] * nblocks)}) == 1  # equal


def test_explicit_target_is_kept():
    with dask.config.set(num_workers=2):
        assert BlockLayout.for_array((30, 1, 1), 24 * 90 * 180 * 4, target=64 * MiB).nblocks == (1, 1, 1)


def test_distributed_client_threads_count():
    distributed = pytest.importorskip("distributed")
    with distributed.Client(processes=False, n_workers=2, threads_per_worker=3, dashboard_address=":0"):
        assert scheduler_threads() == 6
    assert scheduler_threads() == scheduler_threads.__globals__["_local_threads"]()


def _write(path, values, chunks, start: int = 0) -> str:
    with netCDF4.Dataset(path, "w") as nc:
        for dim, n in zip(("time", "lat", "lon"), values.shape):
            nc.createDimension(dim, n)
        nc.createVariable("time", "f8", ("time",))[:] = np.arange(start, start + values.shape[0], dtype="f8")
        var = nc.createVariable("a", "f4", ("time", "lat", "lon"), zlib=True, shuffle=True, complevel=1,
                                chunksizes=chunks)
        var[:] = values
    return str(path)


@pytest.fixture
def files(tmp_path):
    rng = np.random.default_rng(19)
    paths = []
    for i in range(6):
        values = (rng.random((24, 45, 90), dtype="f4") + i).astype("f4")
        paths.append(_write(tmp_path / f"f{i}.nc", values, (24, 45, 90), start=24 * i))
    return paths


def test_small_variable_reduction_runs_as_several_tasks(files):
    """The reduction, ``.values`` and ``.compute()`` of a variable of 6 chunks: several tasks, netCDF4's values."""
    reference = xr.open_mfdataset(files, engine="netcdf4").load()
    with dask.config.set({"num_workers": 2, "vzdask.min-task-bytes": "100kB"}):
        ds = vzdask.open_mfdataset(files)
        assert ds["a"].data.npartitions >= 4
        assert ds["a"].sum().compute().item() == pytest.approx(reference["a"].sum().item(), rel=1e-6)
        np.testing.assert_array_equal(ds["a"].values, reference["a"].values)
        np.testing.assert_array_equal(ds.compute()["a"].values, reference["a"].values)
    with dask.config.set(num_workers=2):  # the default minimum (4 MiB) keeps 1.2 MB in one task
        assert vzdask.open_mfdataset(files)["a"].data.npartitions == 1


def test_engine_preferred_chunks_follow_the_threads(tmp_path):
    rng = np.random.default_rng(7)
    values = rng.random((144, 45, 90), dtype="f4")
    path = _write(tmp_path / "one.nc", values, (24, 45, 90))
    with dask.config.set({"num_workers": 2, "vzdask.min-task-bytes": "100kB"}):
        with xr.open_dataset(path, engine="vzdask", chunks={}) as ds:
            assert ds["a"].data.npartitions >= 4
            np.testing.assert_array_equal(ds["a"].values, values)
        with xr.open_dataset(path, engine="vzdask") as ds:  # chunks=None: numpy, read in several tasks
            assert ds["a"].chunks is None
            np.testing.assert_array_equal(ds["a"].values, values)
            np.testing.assert_array_equal(ds["a"][5:100, 3].values, values[5:100, 3])
