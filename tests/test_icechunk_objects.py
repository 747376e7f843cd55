"""Icechunk Repository / Session / IcechunkStore objects opened directly (issue 19 item 1).

``xr.open_dataset(obj, engine="vzdask")``, ``xr.open_datatree(obj, ...)``,
``vzdask.open_virtual_dataset(obj)``, and, alone or in lists of them (mixed with
paths), ``vzdask.open_virtual_mfdataset``, ``open_mfdataset``,
``open_virtual_datatree`` and ``open_datatree`` on real repositories made here
(virtual chunks into netCDF4 files, native chunks and chunks Icechunk keeps
inline), compared with icechunk + ``xr.open_zarr`` on the same snapshots.
"""

from __future__ import annotations

import icechunk
import numpy as np
import pytest
import xarray as xr
import zarr

from icechunk_repos import KINDS, Repo
from test_icechunk_input import add_native_group, write_nc

import vzdask
from vzdask.errors import CombineError, FileOpenError, ParseError
from vzdask.manifests.manifest import VIRTUAL
from vzdask.parsers import IcechunkParser, detect_parser
from vzdask.registry import ObjectStoreRegistry

@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """Virtual ``tas``/``p`` (CF-packed) and coordinates from a netCDF4 file, then a native group."""
    root = tmp_path_factory.mktemp("icechunk-objects")
    data = root / "data"
    data.mkdir()
    repo = Repo(root / "repo", data)
    vzdask.open_virtual_dataset(write_nc(data / "a.nc", 0)).vz.to_icechunk(repo.writable(), commit="virtual")
    session = repo.writable()
    add_native_group(session)
    session.commit("native group")
    return repo


def icechunk_read(repo: Repo, group=None, **kwargs) -> xr.Dataset:
    session = repo.open().readonly_session("main")
    return xr.open_zarr(session.store, consolidated=False, group=group, **kwargs).load()


@pytest.mark.parametrize("kind", KINDS)
def test_open_dataset_with_the_engine(repo, kind):
    obj = repo.as_object(kind)
    for group in (None, "native", "native/deeper"):
        got = xr.open_dataset(obj, engine="vzdask", group=group)
        xr.testing.assert_identical(got.load(), icechunk_read(repo, group))
    raw = xr.open_dataset(obj, engine="vzdask", decode_cf=False).load()
    xr.testing.assert_identical(raw, icechunk_read(repo, decode_cf=False))
    chunked = xr.open_dataset(obj, engine="vzdask", chunks={}, drop_variables=["p"])
    assert "p" not in chunked and chunked["tas"].chunks is not None
    xr.testing.assert_identical(chunked.load(), icechunk_read(repo).drop_vars("p"))


@pytest.mark.parametrize("kind", KINDS)
def test_guessed_without_engine_and_as_a_datatree(repo, kind):
    obj = repo.as_object(kind)
    xr.testing.assert_identical(xr.open_dataset(obj).load(), icechunk_read(repo))  # no other engine claims it
    tree = xr.open_datatree(obj, engine="vzdask")
    session = repo.open().readonly_session("main")
    want = xr.open_datatree(session.store, engine="zarr", consolidated=False, zarr_format=3)
    assert tree.groups == want.groups == ("/", "/native", "/native/deeper")
    xr.testing.assert_identical(tree.load(), want.load())


@pytest.mark.parametrize("kind", KINDS)
def test_open_virtual_dataset(repo, kind):
    obj = repo.as_object(kind)
    vds = vzdask.open_virtual_dataset(obj)
    assert set(vds.vz.virtual_variables) == {"tas", "p"}
    assert set(vds["tas"].data.manifest.urls) == {f"file://{repo.path.rsplit('/', 1)[0]}/data/a.nc"}
    xr.testing.assert_identical(xr.decode_cf(vds.vz.compute()), icechunk_read(repo))

    native = vzdask.open_virtual_dataset(obj, group="native", loadable_variables=[])
    n = native["n"].data.manifest
    if kind == "repository":  # its storage says where it is: native chunks are references into it
        assert all(url.startswith(f"file://{repo.path}/chunks/") for url in n.urls)
        assert n.count() == {"virtual": 3, "inlined": 0, "missing": 1}
    else:  # a session does not: native chunks are read through Icechunk and inlined
        assert n.count() == {"virtual": 0, "inlined": 3, "missing": 1}
    xr.testing.assert_identical(native.vz.compute(), icechunk_read(repo, "native"))


def test_a_session_with_its_location_or_a_tag_through_the_parser(repo):
    repository = repo.open()
    session = repository.readonly_session("main")
    located = IcechunkParser(session, location=f"file://{repo.path}")
    vds = vzdask.open_virtual_dataset(session, parser=located, group="native", loadable_variables=[])
    assert (vds["n"].data.manifest.states[:3] == VIRTUAL).all()
    ds = xr.open_dataset(session.store, engine="vzdask", group="native", parser=located)
    xr.testing.assert_identical(ds.load(), icechunk_read(repo, "native"))

    first = list(repository.ancestry(branch="main"))[-2].id  # the commit before the native group
    repository.create_tag("first", first)
    old = xr.open_dataset(repository, engine="vzdask", parser=IcechunkParser(repository, tag="first"))
    assert "native" not in xr.open_datatree(repository, engine="vzdask",
                                            parser=IcechunkParser(repository, tag="first")).children
    xr.testing.assert_identical(old.load(), icechunk_read(repo))


def test_uncommitted_changes_and_in_memory_repositories(repo):
    writable = repo.open().writable_session("main")
    zarr.open_group(writable.store, mode="a").create_array(
        "extra", shape=(3,), chunks=(3,), dtype="i4", fill_value=0, dimension_names=("e",))[:] = [7, 8, 9]
    np.testing.assert_array_equal(xr.open_dataset(writable, engine="vzdask")["extra"].values, [7, 8, 9])
    assert "extra" not in xr.open_dataset(repo.open(), engine="vzdask")  # not committed

    memory = icechunk.Repository.create(icechunk.in_memory_storage())
    session = memory.writable_session("main")
    add_native_group(session)
    session.commit("in memory")
    want = xr.open_zarr(memory.readonly_session("main").store, consolidated=False, group="native").load()
    xr.testing.assert_identical(xr.open_dataset(memory, engine="vzdask", group="native").load(), want)
    vds = vzdask.open_virtual_dataset(memory, group="native", loadable_variables=[])
    assert (vds["n"].data.manifest.states != VIRTUAL).all()  # nowhere obstore reaches: inlined


def test_detection_and_errors_name_the_object(repo):
    session = repo.open().readonly_session("main")
    registry = ObjectStoreRegistry.default()
    parser = detect_parser(session, registry, group="native", drop_variables=["flag"])
    assert isinstance(parser, IcechunkParser) and parser.source is session and parser.group == "native"
    with pytest.raises(ParseError, match=rf"no group 'nope'.*icechunk Session \(snapshot {session.snapshot_id}\)"):
        xr.open_dataset(session, engine="vzdask", group="nope")
    with pytest.raises(ParseError, match=rf"icechunk IcechunkStore \(snapshot {session.snapshot_id}\)"):
        vzdask.open_virtual_dataset(session.store, group="nope")
    with pytest.raises(TypeError, match="an icechunk Repository, Session or IcechunkStore"):
        xr.open_dataset(object(), engine="vzdask")


# --------------------------------------------------------------------------- #
# many objects: open_virtual_mfdataset, open_mfdataset, the datatrees
# --------------------------------------------------------------------------- #


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """Two repositories of consecutive netCDF4 files (time 0-2 and 3-5), and the second file's path."""
    root = tmp_path_factory.mktemp("icechunk-pair")
    data = root / "data"
    data.mkdir()
    repos = []
    for name, t0 in (("a", 0), ("b", 3)):
        repo = Repo(root / f"repo-{name}", data)
        vzdask.open_virtual_dataset(write_nc(data / f"{name}.nc", t0)).vz.to_icechunk(repo.writable(), commit="v")
        repos.append(repo)
    return repos, str(data / "b.nc")


def both_read(repos, **kwargs) -> xr.Dataset:
    """icechunk + xr.open_zarr of each repository, combined by coordinates as xr.open_mfdataset combines."""
    return xr.combine_by_coords([icechunk_read(r, **kwargs) for r in repos], combine_attrs="override")


@pytest.mark.parametrize("kind", KINDS)
def test_open_virtual_mfdataset_of_objects(pair, kind):
    repos, _ = pair
    objects = [r.as_object(kind) for r in repos]
    want = both_read(repos)
    for order, parallel in ((objects, None), (objects[::-1], "threads")):  # ordered by their times either way
        vds = vzdask.open_virtual_mfdataset(order, parallel=parallel)
        assert vds.sizes["time"] == 6 and set(vds.vz.virtual_variables) == {"tas", "p"}
        assert vds["tas"].data.manifest.count()["virtual"] == 12
        xr.testing.assert_identical(xr.decode_cf(vds.vz.compute()), want)
    one = vzdask.open_virtual_mfdataset(objects[0])  # one object, not in a list
    xr.testing.assert_identical(xr.decode_cf(one.vz.compute()), icechunk_read(repos[0]))


def test_objects_mixed_with_paths_and_nested(pair):
    repos, b_nc = pair
    want = both_read(repos)
    mixed = vzdask.open_virtual_mfdataset([b_nc, repos[0].open()])
    xr.testing.assert_identical(xr.decode_cf(mixed.vz.compute()), want)
    sessions = [r.open().readonly_session("main") for r in repos]
    nested = vzdask.open_virtual_mfdataset([[s] for s in sessions], combine="nested", concat_dim=["time", None])
    xr.testing.assert_identical(xr.decode_cf(nested.vz.compute()), want)


@pytest.mark.parametrize("kind", KINDS)
def test_open_mfdataset_of_objects(pair, kind):
    repos, _ = pair
    objects = [r.as_object(kind) for r in repos]
    want = both_read(repos)
    ds = vzdask.open_mfdataset(objects, chunks={})
    assert ds["tas"].chunks is not None and ds["time"].dtype.kind == "M"
    xr.testing.assert_identical(ds.compute(), want)
    raw = vzdask.open_mfdataset(objects, decode_times=False, parallel="threads")
    xr.testing.assert_identical(raw.compute(), both_read(repos, decode_times=False))


def test_file_by_file_when_no_one_manifest(pair):
    """A variable one object lacks makes no one virtual dataset: open_mfdataset joins the objects' values."""
    repos, _ = pair
    session = repos[0].open().writable_session("main")
    group = zarr.open_group(session.store, mode="a")
    group.create_array("extra", shape=(3,), chunks=(3,), dtype="i4", fill_value=0, dimension_names=("time",))[:] = [1, 2, 3]
    # uncommitted: a variable only this session has, so the two files make no one virtual dataset
    ds = vzdask.open_mfdataset([session, repos[1].open()], join="outer", compat="no_conflicts")
    assert ds["extra"].sizes["time"] == 6
    np.testing.assert_array_equal(ds["extra"].values[:3], [1, 2, 3])
    assert np.isnan(ds["extra"].values[3:]).all()
    xr.testing.assert_identical(ds.drop_vars("extra").compute(), both_read(repos))


@pytest.mark.parametrize("kind", KINDS)
def test_datatrees_of_an_object(repo, kind):
    obj = repo.as_object(kind)
    session = repo.open().readonly_session("main")
    want = xr.open_datatree(session.store, engine="zarr", consolidated=False, zarr_format=3).load()
    tree = vzdask.open_datatree(obj)
    assert tree.groups == ("/", "/native", "/native/deeper")
    xr.testing.assert_identical(tree.load(), want)
    virtual = vzdask.open_virtual_datatree(obj)
    assert set(virtual.to_dataset().vz.virtual_variables) == {"tas", "p"}
    assert virtual.groups == tree.groups
    xr.testing.assert_identical(xr.decode_cf(virtual["native/deeper"].to_dataset(inherit=False).vz.compute()),
                                icechunk_read(repo, "native/deeper"))
    below = vzdask.open_datatree(obj, group="native")
    want_below = xr.open_datatree(session.store, engine="zarr", consolidated=False, zarr_format=3, group="native")
    assert below.groups == ("/", "/deeper")
    xr.testing.assert_identical(below.load(), want_below.load())


def test_datatrees_of_several_objects(repo, pair):
    repos, b_nc = pair
    want = both_read(repos)
    for paths in ([r.open() for r in repos], [b_nc, repos[0].open().readonly_session("main")]):
        tree = vzdask.open_datatree(paths, parallel="threads")
        assert tree.groups == ("/",)
        xr.testing.assert_identical(tree.to_dataset().compute(), want)
        virtual = vzdask.open_virtual_datatree(paths)
        xr.testing.assert_identical(xr.decode_cf(virtual.to_dataset().vz.compute()), want)
    # a group in one object only: refused for a virtual tree, naming the objects; padded for analysis
    with_group = repo.open()
    with pytest.raises(CombineError, match=rf"group 'native' is missing from 1 of 2 files \(file://{repos[1].path};"):
        vzdask.open_virtual_datatree([with_group, repos[1].open()], combine="nested", concat_dim="time")


def test_a_failed_object_is_named(pair):
    repos, _ = pair
    session = repos[0].open().readonly_session("main")
    with pytest.raises(FileOpenError, match=rf"failed to open icechunk Session \(snapshot {session.snapshot_id}\)"
                                            ".*no group 'nope'"):
        vzdask.open_virtual_mfdataset([session, repos[1].open()], group="nope")
    with pytest.raises(FileOpenError, match=rf"failed to open file://{repos[1].path}.*no group 'nope'"):
        vzdask.open_datatree([repos[1].open()], group="nope")


def test_other_processes_take_what_pickles(pair):
    """Readonly objects of a stored repository go to processes; a writable session or an in-memory one is refused."""
    repos, _ = pair
    want = both_read(repos)
    sessions = [r.open().readonly_session("main") for r in repos]
    xr.testing.assert_identical(vzdask.open_mfdataset(sessions, parallel="processes").compute(), want)
    writable = repos[0].open().writable_session("main")
    memory = icechunk.Repository.create(icechunk.in_memory_storage())
    for obj, why in ((writable, "it cannot be pickled: You must opt-in to pickle writable sessions"),
                     (writable.store, "it cannot be pickled"),
                     (memory, "an in-memory repository's data stays in this process")):
        name = "icechunk Repository" if obj is memory else rf"icechunk {type(obj).__name__} \(snapshot"
        message = rf"{name}.*parallel='processes' parses files in other processes.*\({why}.*repository's path or url"
        with pytest.raises(FileOpenError, match=message):
            vzdask.open_virtual_mfdataset([obj, sessions[1]], parallel="processes")
        with pytest.raises(FileOpenError, match=message):
            vzdask.open_datatree([obj, sessions[1]], parallel="processes")
    # here and in threads the writable session is read as it is
    for parallel in (None, "threads"):
        ds = vzdask.open_mfdataset([writable, sessions[1]], parallel=parallel)
        xr.testing.assert_identical(ds.compute(), want)


def test_a_cluster_takes_readonly_objects_and_refuses_a_writable_session(pair, dask_cluster):
    repos, _ = pair
    sessions = [r.open().readonly_session("main") for r in repos]
    ds = vzdask.open_virtual_mfdataset(sessions, parallel=dask_cluster)
    xr.testing.assert_identical(xr.decode_cf(ds.vz.compute()), both_read(repos))
    writable = repos[0].open().writable_session("main")
    with pytest.raises(FileOpenError, match=r"parallel=<Client.*cannot be sent there \(it cannot be pickled"):
        vzdask.open_virtual_mfdataset([writable, sessions[1]], parallel=dask_cluster)
    with pytest.raises(FileOpenError, match=r"cannot be sent there \(it cannot be pickled"):
        vzdask.open_virtual_datatree([writable, sessions[1]], parallel=dask_cluster)
