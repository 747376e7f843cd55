"""``xr.open_mfdataset(..., engine="vzdask")`` over Icechunk repositories, and objects that cannot travel.

Icechunk ``Repository``/``Session``/``IcechunkStore`` objects (not paths) and
repository paths, several at once through xarray's own ``open_mfdataset``,
compared with icechunk + ``xr.open_zarr`` of the same repositories (and the
netCDF4 files behind their virtual chunks with ``engine="netcdf4"``). Then the
refusal of an in-memory repository's session or store on the paths that parse
in other processes (``parallel="processes"``, a ``LocalCluster``): its copy
there finds none of its data.
"""

from __future__ import annotations

import icechunk
import pytest
import xarray as xr

from icechunk_repos import KINDS, Repo
from test_icechunk_input import add_native_group, write_nc

import vzdask
from vzdask.errors import FileOpenError

@pytest.fixture(scope="module")
def trio(tmp_path_factory):
    """Three repositories of consecutive netCDF4 files (time 0-2, 3-5, 6-8), and those files."""
    root = tmp_path_factory.mktemp("backend-icechunk")
    data = root / "data"
    data.mkdir()
    repos, files = [], []
    for name, t0 in (("a", 0), ("b", 3), ("c", 6)):
        repo = Repo(root / f"repo-{name}", data)
        files.append(write_nc(data / f"{name}.nc", t0))
        vzdask.open_virtual_dataset(files[-1]).vz.to_icechunk(repo.writable(), commit="virtual")
        repos.append(repo)
    return repos, files


def icechunk_read(repos) -> xr.Dataset:
    """icechunk + xr.open_zarr of each repository, combined by coordinates as xr.open_mfdataset combines."""
    parts = []
    for repo in repos:
        with xr.open_zarr(repo.open().readonly_session("main").store, consolidated=False) as ds:
            parts.append(ds.load())
    return xr.combine_by_coords(parts, combine_attrs="override")


@pytest.mark.parametrize("kind", KINDS)
def test_xr_open_mfdataset_of_icechunk_objects(trio, kind):
    repos, files = trio
    want = icechunk_read(repos)
    objects = [r.as_object(kind) for r in repos]
    with xr.open_mfdataset(objects[::-1], engine="vzdask") as ds:  # ordered by their times
        assert ds.sizes["time"] == 9
        layers = set(ds["tas"].data.dask.layers)
        assert any(name.startswith("load-") for name in layers) and not any("open_dataset" in n for n in layers)
        xr.testing.assert_identical(ds.load(), want)
    with xr.open_mfdataset(files, engine="netcdf4") as reference:  # the files behind the virtual chunks
        xr.testing.assert_identical(want, reference.load().drop_attrs(deep=False).assign_attrs(want.attrs))


def test_xr_open_mfdataset_of_repository_paths_and_mixed(trio):
    repos, files = trio
    want = icechunk_read(repos)
    # repository paths: the configured virtual chunk container of each is read from its config
    with xr.open_mfdataset([r.path for r in repos], engine="vzdask", chunks={"time": 3}) as ds:
        assert ds["tas"].chunks[0] == (3, 3, 3)
        xr.testing.assert_identical(ds.load(), want)
    mixed = [repos[0].path, repos[1].open().readonly_session("main"), files[2]]  # a path, a session, a file
    with xr.open_mfdataset(mixed, engine="vzdask", combine="nested", concat_dim="time",
                           combine_attrs="override") as ds:
        xr.testing.assert_identical(ds.load(), want)
    with xr.open_mfdataset(files, engine="vzdask") as ds, xr.open_mfdataset(files, engine="netcdf4") as reference:
        xr.testing.assert_identical(ds.load(), reference.load())


@pytest.fixture(scope="module")
def in_memory():
    """An in-memory repository with a native group committed: its data lives in this process only."""
    repository = icechunk.Repository.create(icechunk.in_memory_storage())
    session = repository.writable_session("main")
    add_native_group(session)
    session.commit("in memory")
    return repository


IN_MEMORY = (r"icechunk {kind} \(snapshot \w+\): parallel={parallel} parses files in other processes, and "
             r"this icechunk {kind} cannot be sent there \(its repository is in memory: a copy in another process "
             r"finds none of its data\)\. Use parallel=None or 'threads' \(this process reads it\), or write it to a "
             r"stored repository \(a local path, s3://\.\.\.\) and pass that repository's path or url\.")


@pytest.mark.parametrize("kind", ["Session", "IcechunkStore"])
def test_an_in_memory_session_is_refused_by_other_processes(in_memory, kind):
    session = in_memory.readonly_session("main")
    obj = session if kind == "Session" else session.store
    message = IN_MEMORY.format(kind=kind, parallel="'processes'")
    with pytest.raises(FileOpenError, match=message):
        vzdask.open_virtual_mfdataset([obj], group="native", parallel="processes")
    with pytest.raises(FileOpenError, match=message):
        vzdask.open_mfdataset([obj], group="native", parallel="processes")
    # in this process it reads as it is
    with xr.open_zarr(session.store, consolidated=False, group="native") as reference:
        want = reference.load()
    for parallel in (None, "threads"):
        xr.testing.assert_identical(vzdask.open_mfdataset([obj], group="native", parallel=parallel).compute(), want)


def test_an_in_memory_session_is_refused_by_a_cluster(in_memory, dask_cluster):
    session = in_memory.readonly_session("main")
    with pytest.raises(FileOpenError, match=IN_MEMORY.format(kind="Session", parallel="<Client.*>")):
        vzdask.open_mfdataset([session], group="native", parallel=dask_cluster)
