"""Persisted arrays written from the dask workers that hold them (Icechunk native chunks, kerchunk Parquet).

Everything runs on the session's ``LocalCluster(n_workers=2, processes=True)``.
Small ``vzdask.task-bytes`` cut each variable into several persisted blocks,
spread over both workers. Each test checks the values with an independent
reader and that the bytes stayed on the workers: the arrays are still not
gathered, and the writing tasks ran on the workers (task stream), next to
their blocks.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import dask
import distributed
import fsspec
import icechunk
import netCDF4
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import xarray as xr
from fsspec.implementations.reference import LazyReferenceMapper

import icechunk_repos

import vzdask  # noqa: F401  (registers ds.vz)
from vzdask.manifests.manifest import INLINED, MISSING
from vzdask.xarray import open_virtual_dataset

TASK_BYTES = 32  # decoded bytes per persisted block: 2 chunks of `v`, 1 of `w` or `s`
NATIVE = (icechunk.ChunkType.native, icechunk.ChunkType.inline)


def write_nc(path: Path, t0: int) -> Path:
    """8 time steps: zlib-chunked CF-packed ``v`` (chunks 2 x 4), ``w`` (2 x 8) and a sparse ``s`` (1 x 8)."""
    rng = np.random.default_rng(t0)
    with netCDF4.Dataset(path, "w") as nc:
        nc.createDimension("time", None)
        nc.createDimension("x", 8)
        time = nc.createVariable("time", "f8", ("time",))
        time.units = "days since 2000-01-01"
        time[:] = np.arange(t0, t0 + 8)
        nc.createVariable("x", "f4", ("x",))[:] = np.arange(8) * 10.0
        v = nc.createVariable("v", "i2", ("time", "x"), zlib=True, chunksizes=(2, 4), fill_value=-9)
        v.scale_factor = 0.5
        v.units = "K"
        v.set_auto_maskandscale(False)
        v[:] = (np.arange(64).reshape(8, 8) + 10 * t0).astype("i2")
        nc.createVariable("w", "f4", ("time", "x"), zlib=True, chunksizes=(2, 8))[:] = rng.random((8, 8))
        s = nc.createVariable("s", "f4", ("time", "x"), chunksizes=(1, 8), fill_value=-1.0)
        s[3] = np.arange(8, dtype="f4") + t0  # chunk 3 only: the other 7 are missing
        s[6] = -np.arange(8, dtype="f4")
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("distributed-write")
    return {"dir": root, "a": write_nc(root / "a.nc", 0), "b": write_nc(root / "b.nc", 8)}


def persist_on_cluster(ds: xr.Dataset, names: list[str]) -> xr.Dataset:
    """Persist ``names`` in blocks of one or two chunks, on the cluster; they stay there."""
    with dask.config.set({"vzdask.task-bytes": TASK_BYTES}):
        persisted = ds[names].vz.persist()
    for name in names:
        array = persisted[name].data
        assert not array.is_gathered and len(array.__dask_keys__()) > 1, name
    return ds.assign({name: persisted[name] for name in names})


def block_futures(ds: xr.Dataset, names: list[str]) -> list:
    futures = []
    for name in names:
        graph = ds[name].data.__dask_graph__()
        futures += [graph[key] for key in ds[name].data.__dask_keys__()]
    return futures


def writing_tasks(stream, function_name: str) -> list[dict]:
    """The task stream's records of the tasks that ran ``function_name`` (keys are ``<name>-<token>``)."""
    return [t for t in stream.data if str(t["key"]).startswith(function_name + "-")]


def assert_ran_on_workers(tasks: list[dict], client, count: int) -> None:
    """``count`` writing tasks, each on a worker of the cluster, and all of them finished there."""
    workers = set(client.scheduler_info()["workers"])
    assert len(tasks) == count
    assert {t["worker"] for t in tasks} <= workers
    assert all(t["status"] == "OK" for t in tasks)


class Repo(icechunk_repos.Repo):
    def read(self, group=None) -> xr.Dataset:
        with dask.config.set(scheduler="sync"):  # read here: no need to ship the session to the workers
            return super().read(group).load()


# --------------------------------------------------------------------------- #
# counting held chunks
# --------------------------------------------------------------------------- #
def test_count_of_held_array_does_not_gather(files, dask_client):
    ds = open_virtual_dataset(files["a"])
    assert ds.s.data.count() == {"virtual": 2, "inlined": 0, "missing": 6}
    held = persist_on_cluster(ds, ["v", "s"])
    assert held.s.data.count() == {"virtual": 0, "inlined": 2, "missing": 6}
    assert held.v.data.count() == {"virtual": 0, "inlined": 8, "missing": 0}
    assert "6 missing" in repr(held.s.data)
    # counted from the client's manifest: the blocks stayed on the workers (reading .manifest would gather)
    assert not held.s.data.is_gathered and not held.v.data.is_gathered
    assert held.s.data.gather().manifest.count() == {"virtual": 0, "inlined": 2, "missing": 6}


# --------------------------------------------------------------------------- #
# Icechunk
# --------------------------------------------------------------------------- #
def test_icechunk_blocks_are_written_by_the_workers_that_hold_them(files, dask_client, tmp_path):
    repo = Repo(tmp_path / "repo", files["dir"])
    names = ["v", "w", "s"]
    ds = persist_on_cluster(open_virtual_dataset(files["a"]), names)
    futures = block_futures(ds, names)
    distributed.wait(futures)
    holders = {f.key: set(w) for f, w in zip(futures, dask_client.who_has(futures).values())}
    assert {w for ws in holders.values() for w in ws} == set(dask_client.scheduler_info()["workers"])  # both

    before = repo.snapshots()
    with distributed.get_task_stream(dask_client) as stream:
        snapshot = ds.vz.to_icechunk(repo.open().writable_session("main"), commit="from the workers")
    assert repo.snapshots() == [snapshot, *before]  # one commit, by the client

    # the bytes never came here: still not gathered, and one write task per block ran on the workers,
    # each on a worker holding its block (no transfer of a block between workers)
    assert all(not ds[name].data.is_gathered for name in names)
    tasks = writing_tasks(stream, "_write_block")
    assert_ran_on_workers(tasks, dask_client, len(futures))
    assert not [s for t in tasks for s in t["startstops"] if s["action"] == "transfer"]

    got = repo.read()
    with xr.open_dataset(files["a"]) as expected:
        xr.testing.assert_identical(got, expected.load())
    ro = repo.open().readonly_session("main")
    assert all(ro.chunk_type("/v", [i, j]) in NATIVE for i in range(4) for j in range(2))
    states = ds.s.data.gather().manifest.states.ravel()
    assert [ro.chunk_type("/s", [i, 0]) in NATIVE for i in range(8)] == (states == INLINED).tolist()
    assert (states == MISSING).sum() == 6  # missing chunks stay missing: read as the fill value


def test_icechunk_append_from_the_workers_shifts_the_chunk_grid(files, dask_client, tmp_path):
    repo = Repo(tmp_path / "repo", files["dir"])
    open_virtual_dataset(files["a"]).vz.to_icechunk(repo.open().writable_session("main"), commit="a")
    ds = persist_on_cluster(open_virtual_dataset(files["b"]), ["v", "w", "s"])
    session = repo.open().writable_session("main")
    # through the session's store, no commit: the merged changes wait in the session
    ds.vz.to_icechunk(session.store, mode="a", append_dim="time")
    assert session.has_uncommitted_changes and len(repo.snapshots()) == 2
    session.commit("append b")
    expected = xr.concat([xr.open_dataset(files["a"]), xr.open_dataset(files["b"])], dim="time").load()
    xr.testing.assert_identical(repo.read(), expected)
    ro = repo.open().readonly_session("main")
    assert ro.chunk_type("/w", [0, 0]) == icechunk.ChunkType.virtual  # a's chunks: references
    assert ro.chunk_type("/w", [4, 0]) in NATIVE  # b's: written by the workers, after a's


def test_icechunk_failed_block_commits_nothing(files, dask_client, tmp_path):
    repo = Repo(tmp_path / "repo", files["dir"], tmp_path)
    ds = open_virtual_dataset(files["a"])
    ds.vz.to_icechunk(repo.open().writable_session("main"), commit="good")
    before = repo.snapshots()

    doomed = shutil.copy(files["b"], tmp_path / "gone.nc")
    bad = open_virtual_dataset(doomed)
    Path(doomed).unlink()
    bad = persist_on_cluster(bad, ["w"])  # fetching `w` fails on the workers: its file is gone
    with pytest.raises(RuntimeError, match=r"block \(\d+, 0\) of 'w' .*nothing was committed.*gone\.nc"):
        bad.vz.to_icechunk(repo.open().writable_session("main"), commit="bad")
    assert repo.snapshots() == before
    with xr.open_dataset(files["a"]) as expected:
        xr.testing.assert_identical(repo.read(), expected.load())


def test_icechunk_failure_here_waits_for_the_workers_and_commits_nothing(files, dask_client, tmp_path, monkeypatch):
    from vzdask.writers import icechunk as writer

    repo = Repo(tmp_path / "repo", files["dir"])
    open_virtual_dataset(files["a"]).vz.to_icechunk(repo.open().writable_session("main"), commit="a")
    before = repo.snapshots()
    ds = persist_on_cluster(open_virtual_dataset(files["b"]), ["v", "w"])  # `s` stays virtual: written here

    def failing(store, path, array, grid_offset):
        raise OSError(f"writing {path} failed (injected)")

    monkeypatch.setattr(writer, "_write_chunks", failing)
    with distributed.get_task_stream(dask_client) as stream:
        with pytest.raises(OSError, match="injected"):
            ds.vz.to_icechunk(repo.open().writable_session("main"), commit="b")
    # the workers had started (they overlap with this process) and all finished before the error came out
    assert_ran_on_workers(writing_tasks(stream, "_write_block"), dask_client, len(block_futures(ds, ["v", "w"])))
    assert repo.snapshots() == before
    with xr.open_dataset(files["a"]) as expected:
        xr.testing.assert_identical(repo.read(), expected.load())


# --------------------------------------------------------------------------- #
# kerchunk Parquet
# --------------------------------------------------------------------------- #
def read_parquet_refs(path: Path) -> xr.Dataset:
    """fsspec's reference filesystem over the Parquet references, opened by xarray's zarr backend.

    fsspec's LazyReferenceMapper needs pandas' old string inference for null ``path`` values (as in test_workflow).
    """
    with pd.option_context("future.infer_string", False), dask.config.set(scheduler="sync"):
        mapper = LazyReferenceMapper(str(path), fs=fsspec.filesystem("file"), engine="pyarrow")
        fs = fsspec.filesystem("reference", fo=mapper, remote_protocol="file")
        return xr.open_dataset(fs.get_mapper(""), engine="zarr",
                               backend_kwargs={"consolidated": False, "zarr_format": 2}).load()


def snapshot(directory: Path) -> dict[str, str]:
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(directory.rglob("*"))}


@pytest.mark.parametrize("record_size", [1, 3, 100])
def test_parquet_records_are_written_by_the_workers(files, dask_client, tmp_path, record_size):
    names = ["v", "w", "s"]
    ds = persist_on_cluster(open_virtual_dataset(files["a"]), names)
    out = tmp_path / "refs.parq"
    with distributed.get_task_stream(dask_client) as stream:
        ds.vz.to_kerchunk(str(out), format="parquet", record_size=record_size)

    assert all(not ds[name].data.is_gathered for name in names)
    records = {name: -(-int(np.prod(ds[name].data.layout.grid)) // record_size) for name in names}
    assert_ran_on_workers(writing_tasks(stream, "_write_held_record"), dask_client, sum(records.values()))
    for name, count in records.items():
        assert sorted(p.name for p in (out / name).iterdir()) == sorted(f"refs.{i}.parq" for i in range(count))

    with xr.open_dataset(files["a"]) as expected:
        xr.testing.assert_identical(read_parquet_refs(out), expected.load())

    # row for row what this process writes from the gathered arrays
    local = tmp_path / "local.parq"
    ds.vz.gather().vz.to_kerchunk(str(local), format="parquet", record_size=record_size)
    for name, count in records.items():
        for i in range(count):
            ours, theirs = pq.read_table(out / name / f"refs.{i}.parq"), pq.read_table(local / name / f"refs.{i}.parq")
            assert ours.equals(theirs), (name, i)
    assert (out / ".zmetadata").read_bytes() == (local / ".zmetadata").read_bytes()


def test_parquet_failed_worker_write_leaves_previous_output(files, dask_client, tmp_path):
    out = tmp_path / "out" / "refs.parq"
    good = open_virtual_dataset(files["a"])
    good.vz.to_kerchunk(str(out), format="parquet", record_size=2)
    before = snapshot(tmp_path / "out")

    doomed = shutil.copy(files["b"], tmp_path / "gone.nc")
    bad = open_virtual_dataset(doomed)
    Path(doomed).unlink()  # the persisted blocks of `w` fail on the workers
    with dask.config.set({"vzdask.task-bytes": TASK_BYTES}):
        bad = bad.vz.persist()  # v, w and s all fail; x and time are loaded
    with pytest.raises(RuntimeError, match=r"record \d+ of '(v|w|s)' to Parquet failed on the cluster.*gone\.nc"):
        bad.vz.to_kerchunk(str(out), format="parquet", record_size=2)
    assert snapshot(tmp_path / "out") == before  # byte for byte, no temporary or partial files
    with xr.open_dataset(files["a"]) as expected:
        xr.testing.assert_identical(read_parquet_refs(out), expected.load())


def test_parquet_failure_here_waits_for_the_workers_then_leaves_nothing(files, dask_client, tmp_path, monkeypatch):
    from vzdask.writers import kerchunk as writer

    out = tmp_path / "out" / "refs.parq"
    open_virtual_dataset(files["a"]).vz.to_kerchunk(str(out), format="parquet")
    before = snapshot(tmp_path / "out")
    ds = persist_on_cluster(open_virtual_dataset(files["b"]), ["v", "w"])  # `s` stays virtual: written here

    def failing(directory, *args):
        raise OSError("disk full (injected)")

    monkeypatch.setattr(writer, "_write_parquet_array", failing)
    with distributed.get_task_stream(dask_client) as stream:
        with pytest.raises(OSError, match="injected"):
            ds.vz.to_kerchunk(str(out), format="parquet", record_size=1)
    records = writing_tasks(stream, "_write_held_record")
    assert len(records) == 8 + 4  # all of them had finished before the temporary directory was removed
    assert snapshot(tmp_path / "out") == before
