"""Icechunk writer: virtual Datasets from netCDF4 files, written, reopened and compared with xarray."""

from __future__ import annotations

import shutil

import dask
import icechunk
import netCDF4
import numpy as np
import pytest
import xarray as xr
import zarr
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from icechunk_repos import Repo

from vzdask.manifests.manifest import INLINED, MISSING, VIRTUAL
from vzdask.parsers.hdf5 import HDFParser
from vzdask.policy import InlinePolicy
from vzdask.registry import ObjectStoreRegistry
from vzdask.writers.icechunk import write_icechunk, write_manifest_group
from vzdask.xarray import open_virtual_dataset

ChunkType = icechunk.ChunkType
NATIVE = (ChunkType.native, ChunkType.inline)  # Icechunk keeps small native chunks inline in its manifest


def write_nc(path, *, t0=0, ntime=4, v_chunks=(2, 4), scale=0.5, group=True):
    """A netCDF4 file: zlib-chunked CF-packed ``v``, ``w``, a sparse ``s``, a non-dimension coordinate, a group."""
    rng = np.random.default_rng(t0)
    with netCDF4.Dataset(path, "w") as nc:
        nc.title = "sample"
        nc.source_file = str(path.name)
        nc.createDimension("time", None)
        nc.createDimension("x", 8)
        time = nc.createVariable("time", "f8", ("time",))
        time.units = "days since 2000-01-01"
        time.calendar = "standard"
        time[:] = np.arange(t0, t0 + ntime)
        x = nc.createVariable("x", "f4", ("x",))
        x.units = "m"
        x[:] = np.arange(8) * 10.0
        lon = nc.createVariable("lon2d", "f4", ("x",), zlib=True)
        lon[:] = np.linspace(-5, 5, 8)
        v = nc.createVariable("v", "i2", ("time", "x"), zlib=True, shuffle=True, chunksizes=v_chunks, fill_value=-9)
        v.scale_factor = scale
        v.add_offset = 1.0
        v.units = "K"
        v.coordinates = "lon2d"
        values = (np.arange(ntime * 8).reshape(ntime, 8) + 10 * t0).astype("i2")
        values[0, 0] = -9  # the fill value: masked when decoded
        v.set_auto_maskandscale(False)  # write the packed integers as they are
        v[:] = values
        w = nc.createVariable("w", "f4", ("time", "x"), zlib=True, chunksizes=(2, 8))
        w.long_name = "random"
        w[:] = rng.random((ntime, 8)).astype("f4")
        s = nc.createVariable("s", "f4", ("time", "x"), chunksizes=(1, 8), fill_value=-1.0)
        s[1] = np.arange(8, dtype="f4") + t0  # only chunk 1 is allocated: 0, 2, 3 are missing
        if group:
            sub = nc.createGroup("sub")
            sub.note = "in a group"
            sub.createDimension("n", 5)
            values = sub.createVariable("values", "u1", ("n",), zlib=True, chunksizes=(2,))
            values.units = "1"
            values[:] = np.arange(5, dtype="u1") * 3
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("icechunk-data")
    return {
        "dir": root,
        "a": write_nc(root / "a.nc", t0=0),
        "b": write_nc(root / "b.nc", t0=4),
        "bad_chunks": write_nc(root / "bad_chunks.nc", t0=4, v_chunks=(2, 3)),  # x chunked by 3, not 4
        "bad_scale": write_nc(root / "bad_scale.nc", t0=4, scale=0.25),
        "odd": write_nc(root / "odd.nc", t0=0, ntime=5),
    }


def assert_same(got: xr.Dataset, expected: xr.Dataset) -> None:
    """Same values after CF decoding, same dtypes, coordinates and attributes."""
    got, expected = got.load(), expected.load()
    xr.testing.assert_identical(got, expected)
    for name in expected.variables:
        assert got[name].dtype == expected[name].dtype, name


def test_virtual_only_roundtrip_and_commit(files, tmp_path):
    repo = Repo(tmp_path / "repo", files["dir"])
    vds = open_virtual_dataset(files["a"])
    assert set(vds.vz.virtual_variables) == {"v", "w", "s", "lon2d"}
    session = repo.writable()
    snapshot = vds.vz.to_icechunk(session, commit="virtual a.nc")
    assert snapshot == repo.open().lookup_branch("main") and len(repo.snapshots()) == 2

    expected = xr.open_dataset(files["a"])
    got = repo.read()
    assert_same(got, expected)
    assert "lon2d" in got.coords and "lon2d" not in got.data_vars
    assert got.v.attrs["units"] == "K" and got.v.encoding["scale_factor"] == 0.5
    assert np.isnan(got.v.values[0, 0])  # _FillValue -9 masked, as xr.open_dataset does
    ro = repo.open().readonly_session("main")
    assert [ro.chunk_type("/v", [i, j]) for i in range(2) for j in range(2)] == [ChunkType.virtual] * 4
    assert ro.chunk_type("/time", [0]) in NATIVE
    # the stored zarr.json is the parser's: same codecs and chunking
    meta = zarr.open_array(ro.store, path="v", mode="r").metadata.to_dict()
    assert meta["codecs"] == vds.v.data.metadata.to_dict()["codecs"]
    assert tuple(meta["chunk_grid"]["configuration"]["chunk_shape"]) == (2, 4)


def test_without_commit_the_changes_wait_in_the_session(files, tmp_path):
    repo = Repo(tmp_path / "repo", files["dir"])
    session = repo.writable()
    assert write_icechunk(open_virtual_dataset(files["a"]), session.store) is None  # a store works too
    assert session.has_uncommitted_changes and len(repo.snapshots()) == 1
    assert_same(xr.open_zarr(session.store, consolidated=False), xr.open_dataset(files["a"]))
    session.commit("by the user")
    assert_same(repo.read(), xr.open_dataset(files["a"]))


def test_inlined_chunks_become_native_with_the_same_bytes(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    path = write_nc(data / "a.nc")
    expected = xr.open_dataset(path).load()
    repo = Repo(tmp_path / "repo", data)
    v_lengths = open_virtual_dataset(path).v.data.manifest.lengths
    threshold = int(v_lengths.min())
    assert v_lengths.max() > threshold
    vds = open_virtual_dataset(path, inline=InlinePolicy(variables={"w"}, max_chunk_bytes=threshold))
    w_manifest = vds.w.data.manifest
    assert w_manifest.count()["inlined"] == 2 and w_manifest.count()["virtual"] == 0
    v_states = vds.v.data.manifest.states
    assert (v_states == INLINED).any() and (v_states == VIRTUAL).any()  # the smallest chunks inlined, others not
    np.testing.assert_array_equal(v_states == INLINED, v_lengths <= threshold)
    vds.vz.to_icechunk(repo.writable(), commit="mixed")

    ro = repo.open().readonly_session("main")
    assert all(ro.chunk_type("/w", [i, 0]) in NATIVE for i in range(2))
    for index in zip(*np.nonzero(v_states)):
        kind = ro.chunk_type("/v", list(index))
        assert (kind == ChunkType.virtual) == (v_states[index] == VIRTUAL), index
    # the native chunk holds the manifest's encoded bytes, not a re-encoding
    stored = sync(ro.store.get("w/c/1/0", prototype=default_buffer_prototype())).to_bytes()
    assert stored == w_manifest.inlined_data((1, 0))

    shutil.move(path, tmp_path / "moved.nc")  # the source is gone: only native chunks remain readable
    got = repo.read()
    np.testing.assert_array_equal(got.w.values, expected.w.values)
    np.testing.assert_array_equal(got.time.values, expected.time.values)  # loaded: written natively
    with pytest.raises(Exception, match="a.nc|No such file|not found|NotFound"):
        got.s.values  # noqa: B018 - virtual: its file is gone


def test_persisted_variable_is_written_as_native_chunks(files, tmp_path):
    repo = Repo(tmp_path / "repo", files["dir"])
    vds = open_virtual_dataset(files["a"])
    persisted = vds[["w"]].vz.persist()
    vds = vds.assign(w=persisted.w)
    assert vds.w.data.manifest.count() == {"virtual": 0, "inlined": 2, "missing": 0}
    vds.vz.to_icechunk(repo.writable(), commit="persisted w")
    ro = repo.open().readonly_session("main")
    assert ro.chunk_type("/w", [0, 0]) in NATIVE
    assert ro.chunk_type("/v", [0, 0]) == ChunkType.virtual
    assert_same(repo.read(), xr.open_dataset(files["a"]))


def test_persisted_on_a_cluster_is_written_from_the_workers(files, tmp_path, dask_client):
    repo = Repo(tmp_path / "repo", files["dir"])
    vds = open_virtual_dataset(files["a"])
    persisted = vds[["v"]].vz.persist()
    assert persisted.v.data.is_gathered is False
    vds = vds.assign(v=persisted.v)
    vds.vz.to_icechunk(repo.writable(), commit="from the cluster")
    assert persisted.v.data.is_gathered is False  # the workers wrote it (tests/test_distributed_write.py)
    ro = repo.open().readonly_session("main")
    assert all(ro.chunk_type("/v", [i, j]) in NATIVE for i in range(2) for j in range(2))
    with dask.config.set(scheduler="sync"):  # read here: no need to ship the session to the workers
        assert_same(repo.read(), xr.open_dataset(files["a"]))


def test_loaded_variables_are_written_natively(files, tmp_path):
    repo = Repo(tmp_path / "repo", files["dir"])
    vds = open_virtual_dataset(files["a"], loadable_variables=["time", "x", "lon2d", "w"])
    assert set(vds.vz.virtual_variables) == {"v", "s"}
    vds.vz.to_icechunk(repo.writable(), commit="loaded")
    ro = repo.open().readonly_session("main")
    assert ro.chunk_type("/w", [0, 0]) in NATIVE
    assert ro.chunk_type("/lon2d", [0]) in NATIVE
    assert ro.chunk_type("/v", [1, 1]) == ChunkType.virtual
    got = repo.read()
    assert_same(got, xr.open_dataset(files["a"]))
    assert "lon2d" in got.coords


def test_missing_chunks_stay_missing(files, tmp_path):
    repo = Repo(tmp_path / "repo", files["dir"])
    vds = open_virtual_dataset(files["a"])
    states = vds.s.data.manifest.states.ravel().tolist()
    assert states == [MISSING, VIRTUAL, MISSING, MISSING]
    vds.vz.to_icechunk(repo.writable(), commit="sparse")
    ro = repo.open().readonly_session("main")
    assert [ro.chunk_type("/s", [i, 0]) for i in range(4)] == [
        ChunkType.uninitialized, ChunkType.virtual, ChunkType.uninitialized, ChunkType.uninitialized
    ]
    got = repo.read().s.values
    assert np.isnan(got[[0, 2, 3]]).all() and (got[1] == np.arange(8)).all()


def test_groups_and_manifest_group_writer(files, tmp_path):
    repo = Repo(tmp_path / "repo", files["dir"])
    session = repo.writable()
    open_virtual_dataset(files["a"]).vz.to_icechunk(session)
    sub = open_virtual_dataset(files["a"], group="sub", loadable_variables=[])
    write_icechunk(sub, session, group="/sub/", mode="a")
    session.commit("root and sub")
    assert_same(repo.read(), xr.open_dataset(files["a"]))
    assert_same(repo.read(group="sub"), xr.open_dataset(files["a"], group="sub"))

    # xarray-free: a parser's ManifestStore, subgroups included, under another group
    store = HDFParser()(files["a"].as_uri(), ObjectStoreRegistry.default())
    session = repo.writable()
    write_manifest_group(store, session, group="copy")
    session.commit("manifest store")
    assert_same(repo.read(group="copy"), xr.open_dataset(files["a"]))
    assert_same(repo.read(group="copy/sub"), xr.open_dataset(files["a"], group="sub"))
    assert_same(repo.read(group="sub"), xr.open_dataset(files["a"], group="sub"))  # untouched


def test_mode_w_replaces_and_w_minus_refuses(files, tmp_path):
    repo = Repo(tmp_path / "repo", files["dir"])
    open_virtual_dataset(files["a"]).vz.to_icechunk(repo.writable(), commit="a")
    only_w = open_virtual_dataset(files["b"])[["w"]]
    only_w.vz.to_icechunk(repo.writable(), mode="w", commit="replace")
    got = repo.read()
    assert set(got.data_vars) == {"w"} and got.attrs["source_file"] == "b.nc"
    np.testing.assert_array_equal(got.w.values, xr.open_dataset(files["b"]).w.values)

    # mode "a" without append_dim: add v, replace w (b's by a's), keep s2
    open_virtual_dataset(files["b"])[["s"]].rename(s="s2").vz.to_icechunk(repo.writable(), mode="a", commit="s2")
    open_virtual_dataset(files["a"])[["w", "v"]].vz.to_icechunk(repo.writable(), mode="a", commit="add")
    got, expected_a = repo.read(), xr.open_dataset(files["a"])
    assert set(got.data_vars) == {"v", "w", "s2"}
    np.testing.assert_array_equal(got.w.values, expected_a.w.values)
    np.testing.assert_array_equal(got.v.values, expected_a.v.values)
    np.testing.assert_array_equal(got.s2.values, xr.open_dataset(files["b"]).s.values)
    assert got.attrs["source_file"] == "a.nc"

    session = repo.writable()
    with pytest.raises(ValueError, match="already exists"):
        open_virtual_dataset(files["a"]).vz.to_icechunk(session, mode="w-")
    assert not session.has_uncommitted_changes
    open_virtual_dataset(files["a"]).vz.to_icechunk(session, group="new", mode="w-")  # a new group is fine
    assert session.has_uncommitted_changes


def test_append_along_time(files, tmp_path):
    repo = Repo(tmp_path / "repo", files["dir"])
    open_virtual_dataset(files["a"]).vz.to_icechunk(repo.writable(), commit="a")
    snapshot = open_virtual_dataset(files["b"]).vz.to_icechunk(
        repo.writable(), mode="a", append_dim="time", commit="append b"
    )
    assert snapshot == repo.open().lookup_branch("main")
    originals = [xr.open_dataset(files[k]) for k in "ab"]
    expected = xr.concat(originals, dim="time", data_vars="minimal", coords="minimal", compat="override")
    got = repo.read()
    assert got.sizes == {"time": 8, "x": 8}
    assert_same(got.drop_attrs(), expected.drop_attrs())
    assert got.attrs["source_file"] == "b.nc"  # group attributes: the last write's, as xarray does
    ro = repo.open().readonly_session("main")
    assert ro.chunk_type("/v", [3, 1]) == ChunkType.virtual  # b's chunk (1, 1) at grid (2 + 1, 1)
    assert [ro.chunk_type("/s", [i, 0]) == ChunkType.virtual for i in range(8)] == [0, 1, 0, 0, 0, 1, 0, 0]


def test_missing_virtual_chunk_container_writes_nothing(files, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    repo = Repo(tmp_path / "repo", elsewhere)
    session = repo.writable()
    with pytest.raises(ValueError) as info:
        open_virtual_dataset(files["a"]).vz.to_icechunk(session, commit="never")
    message = str(info.value)
    assert f"file://{files['dir']}/" in message
    assert "set_virtual_chunk_container(icechunk.VirtualChunkContainer(" in message
    assert "icechunk.local_filesystem_store(" in message and "LocalFileSystemAccess" in message
    assert f"file://{files['dir']}/  (used by lon2d, s, v, w)" in message
    assert f"Containers configured now: file://{elsewhere}/" in message
    assert not session.has_uncommitted_changes
    assert len(repo.snapshots()) == 1
    with pytest.raises(zarr.errors.GroupNotFoundError):
        zarr.open_group(session.store, mode="r")

    # the advice in the message, followed to the letter, works
    prefix = f"file://{files['dir']}/"
    opened = repo.open()
    config = opened.config
    store = icechunk.local_filesystem_store(prefix[len("file://"):])
    config.set_virtual_chunk_container(icechunk.VirtualChunkContainer(prefix, store))
    opened = opened.reopen(config=config, authorize_virtual_chunk_access=icechunk.containers_credentials(
        {prefix: icechunk.credentials.LocalFileSystemAccess}))
    opened.save_config()
    open_virtual_dataset(files["a"]).vz.to_icechunk(opened.writable_session("main"), commit="now")
    reopened = icechunk.Repository.open(repo.storage(), authorize_virtual_chunk_access=icechunk.containers_credentials(
        {prefix: icechunk.credentials.LocalFileSystemAccess}))
    got = xr.open_zarr(reopened.readonly_session("main").store, consolidated=False)
    assert_same(got, xr.open_dataset(files["a"]))


def test_icechunk_checks_each_url_by_its_own_rule(tmp_path):
    """Icechunk parses urls before matching containers: ``FILE://`` is lower-cased, so a ``FILE:///`` container
    covers none of them although the strings share the prefix. Its own check (once per url) must refuse them."""
    from vzdask import ChunkManifest, ManifestArray, ManifestGroup, create_array_metadata

    data = tmp_path / "data"
    data.mkdir()
    (data / "x.bin").write_bytes(np.arange(8, dtype="<f4").tobytes())
    metadata = create_array_metadata(shape=(8,), chunk_shape=(2,), dtype="float32", fill_value=0.0)

    def group(url: str) -> ManifestGroup:
        manifest = ChunkManifest.from_arrays(paths=[url] * 4, offsets=[0, 8, 16, 24], lengths=[8] * 4)
        return ManifestGroup(arrays={"a": ManifestArray(metadata, manifest)})

    upper = f"FILE://{data}/"
    config = icechunk.RepositoryConfig.default()
    config.set_virtual_chunk_container(icechunk.VirtualChunkContainer(upper, icechunk.local_filesystem_store(str(data))))
    repo = icechunk.Repository.create(icechunk.local_filesystem_storage(str(tmp_path / "upper")), config)
    with pytest.raises(ValueError, match=r"no virtual chunk container for .*'a'"):
        write_manifest_group(group(upper + "x.bin"), repo.writable_session("main"), commit="never")
    assert len(list(repo.ancestry(branch="main"))) == 1

    # the same references under a lower-case container: all four written, values read back
    lower = Repo(tmp_path / "lower", data)
    write_manifest_group(group(f"file://{data}/x.bin"), lower.writable(), commit="refs")
    ro = lower.open().readonly_session("main")
    assert [ro.chunk_type("/a", [i]) for i in range(4)] == [ChunkType.virtual] * 4
    np.testing.assert_array_equal(zarr.open_array(ro.store, path="a", mode="r")[:], np.arange(8, dtype="f4"))


def test_append_with_other_chunking_or_packing_is_refused(files, tmp_path):
    repo = Repo(tmp_path / "repo", files["dir"])
    open_virtual_dataset(files["a"]).vz.to_icechunk(repo.writable(), commit="a")
    session = repo.writable()
    # (other chunk sizes along time are appended as a rectilinear grid: tests/test_rectilinear.py)
    with pytest.raises(ValueError, match=r"'v'.*chunk shape differs along another dimension than 'time': "
                                         r"stored \[2, 4\], new \[2, 3\]"):
        open_virtual_dataset(files["bad_chunks"]).vz.to_icechunk(session, mode="a", append_dim="time")
    with pytest.raises(ValueError, match=r"attribute 'scale_factor' differs: stored 0.5, new 0.25"):
        open_virtual_dataset(files["bad_scale"]).vz.to_icechunk(session, mode="a", append_dim="time")
    with pytest.raises(ValueError, match="append_dim 'times' is not a dimension"):
        open_virtual_dataset(files["b"]).vz.to_icechunk(session, mode="a", append_dim="times")
    assert not session.has_uncommitted_changes
    assert repo.read().sizes["time"] == 4


def test_append_after_a_partial_chunk_is_refused(files, tmp_path):
    repo = Repo(tmp_path / "repo", files["dir"])
    open_virtual_dataset(files["odd"]).vz.to_icechunk(repo.writable(), commit="5 steps, chunks of 2")
    session = repo.writable()
    with pytest.raises(ValueError, match="stored length 5 is not a multiple of the chunk size 2"):
        open_virtual_dataset(files["b"]).vz.to_icechunk(session, mode="a", append_dim="time")
    assert not session.has_uncommitted_changes


def test_bad_arguments(files, tmp_path):
    repo = Repo(tmp_path / "repo", files["dir"])
    vds = open_virtual_dataset(files["a"])
    with pytest.raises(ValueError, match="needs mode='a'"):
        vds.vz.to_icechunk(repo.writable(), append_dim="time")
    with pytest.raises(ValueError, match="mode must be one of"):
        vds.vz.to_icechunk(repo.writable(), mode="r+")
    with pytest.raises(ValueError, match="read-only"):
        vds.vz.to_icechunk(repo.open().readonly_session("main"))
    with pytest.raises(TypeError, match="Session or IcechunkStore"):
        vds.vz.to_icechunk(zarr.storage.MemoryStore())
