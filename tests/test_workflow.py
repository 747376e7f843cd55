"""The whole workflow vzdask exists for, on a process-based LocalCluster.

22 files -> open_virtual_mfdataset(parallel=client) -> persist a subset (inline)
-> Icechunk and kerchunk Parquet, the persisted chunks written by the workers
that hold them -> read back with independent readers -> values equal
``xr.open_mfdataset`` of the originals.
"""

from __future__ import annotations

import dask
import distributed
import icechunk
import netCDF4
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from fsspec.implementations.reference import LazyReferenceMapper

import vzdask  # noqa: F401  (registers ds.vz)
from vzdask.manifests.manifest import INLINED, VIRTUAL
from vzdask.mfdataset import open_virtual_mfdataset
from vzdask.policy import InlinePolicy

NFILES = 22


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    data = tmp_path_factory.mktemp("collection")
    rng = np.random.default_rng(7)
    paths = []
    for i in range(NFILES):
        path = data / f"part_{i:02d}.nc"
        with netCDF4.Dataset(path, "w") as nc:
            nc.createDimension("time", None)
            nc.createDimension("y", 12)
            nc.createDimension("x", 20)
            t = nc.createVariable("time", "f8", ("time",))
            t.units = "days since 2001-01-01"
            t[:] = np.arange(3) + 3 * i
            nc.createVariable("y", "f4", ("y",))[:] = np.arange(12)
            nc.createVariable("x", "f4", ("x",))[:] = np.arange(20) * 0.5
            temp = nc.createVariable("temp", "f4", ("time", "y", "x"), zlib=True, shuffle=True,
                                     chunksizes=(1, 6, 10), fill_value=-99.0)
            temp.units = "K"
            temp[:] = rng.random((3, 12, 20)).astype("f4") * 30 + 250
            flag = nc.createVariable("flag", "i2", ("time", "y", "x"), zlib=True, chunksizes=(1, 12, 20))
            flag[:] = rng.integers(0, 5, (3, 12, 20))
        paths.append(str(path))
    return data, paths


def test_parse_persist_write_and_read_back(collection, dask_client, tmp_path):
    data, paths = collection
    expected = xr.open_mfdataset(paths, engine="h5netcdf", combine="by_coords").compute()

    ds = open_virtual_mfdataset(paths, parallel=dask_client, inline=InlinePolicy(coordinates=True))
    assert ds.temp.data.manifest.count()["virtual"] == NFILES * 3 * 4
    # inline by persist: only `flag`, on the workers, one block per file (22 blocks: more than one
    # merge level of Icechunk forks)
    with dask.config.set({"vzdask.task-bytes": 3 * 12 * 20 * 2}):
        persisted = ds[["flag"]].vz.persist()
    flag = persisted.flag.data
    assert not flag.is_gathered  # the bytes are still on the workers
    assert len(flag.__dask_keys__()) == NFILES
    ds = ds.assign(flag=persisted.flag)

    # kerchunk Parquet, read with fsspec's reference filesystem + zarr; records of 10 chunks
    # straddle the persisted blocks (3 chunks each)
    parquet = tmp_path / "refs.parq"
    with distributed.get_task_stream(dask_client) as stream:
        ds.vz.to_kerchunk(str(parquet), format="parquet", record_size=10)
    records = [t for t in stream.data if str(t["key"]).startswith("_write_held_record-")]
    assert len(records) == len(list((parquet / "flag").iterdir())) == 7  # 66 chunks
    with pd.option_context("future.infer_string", False):
        mapper = LazyReferenceMapper(str(parquet), engine="pyarrow")
        import fsspec

        fs = fsspec.filesystem("reference", fo=mapper, remote_protocol="file")
        from_parquet = xr.open_dataset(fs.get_mapper(""), engine="zarr",
                                       backend_kwargs={"consolidated": False, "zarr_format": 2}).compute()
    xr.testing.assert_allclose(from_parquet[["temp", "flag"]], expected[["temp", "flag"]])

    # Icechunk, read with icechunk + zarr
    prefix = f"file://{data}/"
    config = icechunk.RepositoryConfig.default()
    config.set_virtual_chunk_container(icechunk.VirtualChunkContainer(prefix, icechunk.local_filesystem_store(str(data))))
    credentials = icechunk.containers_credentials({prefix: icechunk.credentials.LocalFileSystemAccess})
    storage = icechunk.local_filesystem_storage(str(tmp_path / "repo"))
    repo = icechunk.Repository.create(storage, config, authorize_virtual_chunk_access=credentials)
    with distributed.get_task_stream(dask_client) as stream:
        ds.vz.to_icechunk(repo.writable_session("main"), commit="workflow")
    writes = [t for t in stream.data if str(t["key"]).startswith("_write_block-")]
    assert len(writes) == NFILES and {t["worker"] for t in writes} <= set(dask_client.scheduler_info()["workers"])
    merges = [t for t in stream.data if str(t["key"]).startswith("merge_sessions-")]
    assert len(merges) == 3 + 1  # the 22 forks merged 8 at a time on the cluster, then the 3 results
    assert not flag.is_gathered  # neither write brought the bytes here
    reopened = icechunk.Repository.open(storage, authorize_virtual_chunk_access=credentials)
    from_icechunk = xr.open_zarr(reopened.readonly_session("main").store, consolidated=False).compute()
    xr.testing.assert_allclose(from_icechunk[["temp", "flag"]], expected[["temp", "flag"]])
    np.testing.assert_array_equal(from_icechunk.time.values, expected.time.values)

    # what was inlined stays inlined, what was virtual stays virtual
    gathered = flag.gather().manifest
    assert (gathered.states == INLINED).all()
    assert (ds.temp.data.manifest.states == VIRTUAL).all()
