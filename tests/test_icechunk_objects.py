"""Icechunk Repository / Session / IcechunkStore objects opened directly (issue 19 item 1).

``xr.open_dataset(obj, engine="vzdask")``, ``xr.open_datatree(obj, ...)`` and
``vzdask.open_virtual_dataset(obj)`` on real repositories made here (virtual
chunks into a netCDF4 file, native chunks and chunks Icechunk keeps inline),
compared with icechunk + ``xr.open_zarr`` on the same snapshot.
"""

from __future__ import annotations

import icechunk
import numpy as np
import pytest
import xarray as xr
import zarr

from icechunk_repos import Repo
from test_icechunk_input import add_native_group, write_nc

import vzdask
from vzdask.errors import ParseError
from vzdask.manifests.manifest import VIRTUAL
from vzdask.parsers import IcechunkParser, detect_parser
from vzdask.registry import ObjectStoreRegistry

KINDS = ["repository", "session", "store"]


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


def as_object(repo: Repo, kind: str):
    repository = repo.open()
    if kind == "repository":
        return repository
    session = repository.readonly_session("main")
    return session if kind == "session" else session.store


def icechunk_read(repo: Repo, group=None, **kwargs) -> xr.Dataset:
    session = repo.open().readonly_session("main")
    return xr.open_zarr(session.store, consolidated=False, group=group, **kwargs).load()


@pytest.mark.parametrize("kind", KINDS)
def test_open_dataset_with_the_engine(repo, kind):
    obj = as_object(repo, kind)
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
    obj = as_object(repo, kind)
    xr.testing.assert_identical(xr.open_dataset(obj).load(), icechunk_read(repo))  # no other engine claims it
    tree = xr.open_datatree(obj, engine="vzdask")
    session = repo.open().readonly_session("main")
    want = xr.open_datatree(session.store, engine="zarr", consolidated=False, zarr_format=3)
    assert tree.groups == want.groups == ("/", "/native", "/native/deeper")
    xr.testing.assert_identical(tree.load(), want.load())


@pytest.mark.parametrize("kind", KINDS)
def test_open_virtual_dataset(repo, kind):
    obj = as_object(repo, kind)
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
