"""Icechunk repositories as input: virtual, native and inlined chunks and groups, compared with icechunk + xarray."""

from __future__ import annotations

import json

import fsspec
import icechunk
import netCDF4
import numpy as np
import pytest
import xarray as xr
import zarr

from icechunk_repos import Repo

from vzdask.errors import ParseError
from vzdask.manifests.manifest import MISSING, VIRTUAL
from vzdask.mfdataset import open_virtual_mfdataset
from vzdask.parsers import IcechunkParser, detect_parser
from vzdask.policy import InlinePolicy
from vzdask.registry import ObjectStoreRegistry
from vzdask.writers.icechunk import write_icechunk
from vzdask.writers.kerchunk import to_kerchunk
from vzdask.xarray import open_virtual_dataset


def write_nc(path, t0: int) -> str:
    """A netCDF4 file: zlib ``tas`` (3 time steps x 4 x 6, chunks 1 x 4 x 3), CF-packed ``p``, time and lat/lon."""
    with netCDF4.Dataset(path, "w") as nc:
        nc.title = "source"
        nc.createDimension("time", None)
        nc.createDimension("lat", 4)
        nc.createDimension("lon", 6)
        t = nc.createVariable("time", "f8", ("time",))
        t.units = "days since 2000-01-01"
        t[:] = np.arange(t0, t0 + 3)
        nc.createVariable("lat", "f4", ("lat",))[:] = np.linspace(-30, 30, 4)
        nc.createVariable("lon", "f4", ("lon",))[:] = np.arange(6) * 60.0
        tas = nc.createVariable("tas", "f4", ("time", "lat", "lon"), zlib=True, chunksizes=(1, 4, 3), fill_value=-1e30)
        tas.units = "K"
        tas[:] = 250 + np.arange(3 * 24, dtype="f4").reshape(3, 4, 6) + 100 * t0
        p = nc.createVariable("p", "i2", ("time", "lat", "lon"), zlib=True, chunksizes=(1, 4, 6), fill_value=-99)
        p.scale_factor = 0.5
        p.add_offset = 1000.0
        p.set_auto_maskandscale(False)
        p[:] = np.arange(3 * 24, dtype="i2").reshape(3, 4, 6) + t0
    return str(path)


def add_native_group(session) -> None:
    """A ``native`` group written through zarr: a zstd array (native chunks, one never written), a tiny one (inlined)."""
    root = zarr.open_group(session.store, mode="a")
    group = root.create_group("native", attributes={"about": "written by zarr"})
    big = group.create_array(
        "n", shape=(40, 60), chunks=(10, 60), dtype="f8", fill_value=np.nan, dimension_names=("row", "col"),
        attributes={"units": "m", "scale": [1, 2]}, compressors=zarr.codecs.ZstdCodec(level=3),
    )
    # random values: 4800-byte chunks that stay native (Icechunk inlines chunks under 512 bytes)
    big[:30] = np.random.default_rng(0).random((30, 60))  # rows 30-39 (chunk 3) never written
    small = group.create_array("flag", shape=(4,), chunks=(2,), dtype="u1", fill_value=7, dimension_names=("k",))
    small[:] = [1, 2, 3, 4]  # 2-byte chunks: Icechunk keeps them inline in its manifest
    nested = group.create_group("deeper")
    nested.create_array("z", shape=(3,), chunks=(3,), dtype="<i4", fill_value=0, dimension_names=("m",))[:] = [5, 6, 7]
    nested.create_array("scalar", shape=(), dtype="f8", fill_value=0.0, dimension_names=())[()] = 2.5


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A repository: virtual ``tas``/``p`` from a netCDF4 file (vzdask's to_icechunk), then a native group, tagged."""
    root = tmp_path_factory.mktemp("icechunk-input")
    data = root / "data"
    data.mkdir()
    nc1 = write_nc(data / "a.nc", 0)
    nc2 = write_nc(data / "b.nc", 3)
    repo = Repo(root / "repo", data)
    first = open_virtual_dataset(nc1).vz.to_icechunk(repo.writable(), commit="virtual a.nc")
    session = repo.writable()
    add_native_group(session)
    second = session.commit("native group")
    repo.open().create_tag("v1", second)
    return {"root": root, "data": data, "nc1": nc1, "nc2": nc2, "repo": repo, "url": f"file://{repo.path}",
            "first": first, "second": second}


def icechunk_read(source, group=None, **which):
    session = source["repo"].open().readonly_session(**(which or {"branch": "main"}))
    return xr.open_zarr(session.store, consolidated=False, group=group).load()


def vz_read(store, group=None):
    return xr.open_zarr(store, consolidated=False, zarr_format=3, group=group).load()


def test_values_metadata_and_chunk_kinds_match_icechunk(source):
    store = IcechunkParser()(source["url"], ObjectStoreRegistry.default())
    for group in (None, "native", "native/deeper"):
        xr.testing.assert_identical(vz_read(store, group), icechunk_read(source, group))
    root = store.group
    tas = root.arrays["tas"].manifest
    assert tas.count() == {"virtual": 6, "inlined": 0, "missing": 0}
    assert set(tas.urls) == {f"file://{source['data']}/a.nc"}  # virtual chunks stay references to the file
    n = root.groups["native"].arrays["n"].manifest
    assert n.count() == {"virtual": 3, "inlined": 0, "missing": 1}
    assert all(u.startswith(f"file://{source['repo'].path}/chunks/") for u in n.urls)  # native: into the repo
    assert (n.states[:, 0] == [VIRTUAL, VIRTUAL, VIRTUAL, MISSING]).all()
    flag = root.groups["native"].arrays["flag"].manifest
    assert flag.count() == {"virtual": 0, "inlined": 2, "missing": 0}  # Icechunk's inline chunks stay inlined
    # metadata exactly as stored: codecs, fill value, attributes, dimension names, group attributes
    ice = zarr.open_group(source["repo"].open().readonly_session("main").store, mode="r")
    ours = zarr.open_group(store, mode="r", zarr_format=3)
    for path in ("tas", "p", "time", "native/n", "native/flag", "native/deeper/z"):
        assert ours[path].metadata.to_dict() == ice[path].metadata.to_dict(), path
    # a scalar gets its (empty) dimension names, as ZarrParser gives it, so xarray opens it
    scalar = ice["native/deeper/scalar"].metadata.to_dict()
    assert "dimension_names" not in scalar
    assert ours["native/deeper/scalar"].metadata.to_dict() == scalar | {"dimension_names": ()}
    assert ours["native"].attrs.asdict() == {"about": "written by zarr"}
    assert ours.attrs.asdict() == ice.attrs.asdict()


def test_detected_from_the_repository_layout(source):
    registry = ObjectStoreRegistry.default()
    assert isinstance(detect_parser(source["url"], registry), IcechunkParser)
    vds = open_virtual_dataset(source["repo"].path, group="native", loadable_variables=[])
    assert set(vds.data_vars) == {"n", "flag"}
    assert "tas" not in open_virtual_dataset(source["repo"].path, drop_variables=["tas"]).variables
    assert set(IcechunkParser(drop_variables=["p"])(source["url"], registry).group.arrays) == {"tas", "time", "lat",
                                                                                              "lon"}
    xr.testing.assert_identical(vds.load(), icechunk_read(source, "native"))


def test_branch_tag_and_snapshot_select_the_snapshot(source):
    registry = ObjectStoreRegistry.default()
    old = IcechunkParser(snapshot_id=source["first"])(source["url"], registry)
    assert "native" not in old.group.groups
    xr.testing.assert_identical(vz_read(old), icechunk_read(source, snapshot_id=source["first"]))
    tagged = IcechunkParser(tag="v1")(source["url"], registry)
    assert "native" in tagged.group.groups
    with pytest.raises(ValueError, match="at most one of branch=, tag= and snapshot_id="):
        IcechunkParser(branch="main", tag="v1")
    with pytest.raises(ParseError, match="no branch 'nope'"):
        IcechunkParser(branch="nope")(source["url"], registry)
    with pytest.raises(ParseError, match="no tag 'v9'"):
        IcechunkParser(tag="v9")(source["url"], registry)


def test_repository_session_and_store_as_sources(source):
    registry = ObjectStoreRegistry.default()
    repo = source["repo"].open()
    expected = icechunk_read(source, "native")
    from_repo = IcechunkParser(repo, tag="v1")("ignored", registry)  # its storage says where it is
    assert from_repo.group.groups["native"].arrays["n"].manifest.count()["virtual"] == 3
    session = repo.readonly_session("main")
    # a session does not say where its repository is: native chunks are read through Icechunk and inlined
    from_session = IcechunkParser(session)("ignored", registry)
    assert from_session.group.groups["native"].arrays["n"].manifest.count() == {"virtual": 0, "inlined": 3,
                                                                                "missing": 1}
    xr.testing.assert_identical(vz_read(from_session, "native"), expected)
    located = IcechunkParser(session.store, location=source["url"])("ignored", registry)
    assert located.group.groups["native"].arrays["n"].manifest.count()["virtual"] == 3
    xr.testing.assert_identical(vz_read(located, "native"), expected)
    with pytest.raises(ParseError, match="location is unknown"):
        IcechunkParser(session, native_chunks="reference")("ignored", registry)
    with pytest.raises(ValueError, match="cannot be given with an icechunk Session"):
        IcechunkParser(session, branch="main")("ignored", registry)
    with pytest.raises(TypeError, match="not str"):
        IcechunkParser("a string")("ignored", registry)


def test_inline_on_request_and_in_memory_repositories(source):
    registry = ObjectStoreRegistry.default()
    store = IcechunkParser(native_chunks="inline", inline=InlinePolicy(variables=["tas"]))(source["url"], registry)
    assert store.group.arrays["tas"].manifest.count()["inlined"] == 6
    assert store.group.groups["native"].arrays["n"].manifest.count() == {"virtual": 0, "inlined": 3, "missing": 1}
    xr.testing.assert_identical(vz_read(store), icechunk_read(source))
    xr.testing.assert_identical(vz_read(store, "native"), icechunk_read(source, "native"))

    memory = icechunk.Repository.create(icechunk.in_memory_storage())
    session = memory.writable_session("main")
    add_native_group(session)
    session.commit("in memory")
    got = IcechunkParser(memory)("memory-repo", registry)  # no location obstore reaches: inlined
    assert (got.group.groups["native"].arrays["n"].manifest.states != VIRTUAL).all()
    expected = xr.open_zarr(memory.readonly_session("main").store, consolidated=False, group="native").load()
    xr.testing.assert_identical(vz_read(got, "native"), expected)


def test_not_a_repository(tmp_path):
    with pytest.raises(ParseError, match="cannot open an Icechunk repository there"):
        IcechunkParser()(f"file://{tmp_path}", ObjectStoreRegistry.default())
    with pytest.raises(ParseError, match="from a ftp:// url"):
        IcechunkParser()("ftp://host/repo", ObjectStoreRegistry.default())


def test_combined_with_a_new_file_written_to_icechunk_and_kerchunk(source, tmp_path):
    """Icechunk input + a new netCDF4 file -> a new repository and kerchunk JSON, each read back independently."""
    combined = open_virtual_mfdataset([source["repo"].path, source["nc2"]], combine="by_coords")
    assert combined.tas.data.manifest.count()["virtual"] == 12
    expected = xr.open_mfdataset([source["nc1"], source["nc2"]], engine="netcdf4", combine="by_coords").load()

    # a new repository, with containers for the netCDF files and the old repository's native chunks
    out = Repo(tmp_path / "out", source["data"], f"{source['repo'].path}/chunks")
    snapshot = write_icechunk(combined, out.writable(), commit="combined")
    assert snapshot
    xr.testing.assert_identical(out.read().load(), expected)

    native = open_virtual_dataset(source["url"], group="native", loadable_variables=[])
    write_icechunk(native, out.writable(), group="native", mode="w", commit="native")
    ro = out.open().readonly_session("main")
    assert ro.chunk_type("/native/n", [0, 0]) == icechunk.ChunkType.virtual  # a reference into the old repo
    xr.testing.assert_identical(out.read(group="native").load(), icechunk_read(source, "native"))

    refs = tmp_path / "refs.json"
    to_kerchunk(combined, str(refs), format="json")
    fs = fsspec.filesystem("reference", fo=str(refs), remote_protocol="file")
    got = xr.open_zarr(fs.get_mapper(""), consolidated=False, zarr_format=2).load()
    xr.testing.assert_allclose(got.drop_attrs(), expected.drop_attrs())
    np.testing.assert_array_equal(got.tas.values, expected.tas.values)
    np.testing.assert_array_equal(got.p.values, expected.p.values)
    native_refs = tmp_path / "native.json"
    to_kerchunk(native, str(native_refs), format="json")
    assert any("/chunks/" in json.dumps(v) for v in json.loads(native_refs.read_text())["refs"].values())
    fs = fsspec.filesystem("reference", fo=str(native_refs), remote_protocol="file")
    got = xr.open_zarr(fs.get_mapper(""), consolidated=False, zarr_format=2).load()
    expected_native = icechunk_read(source, "native")
    np.testing.assert_array_equal(got.n.values, expected_native.n.values)
    np.testing.assert_array_equal(got.flag.values, expected_native.flag.values)


def test_repository_on_s3(s3_server, s3_bucket, s3_env):
    """A repository in a (moto) S3 bucket: opened from its url, native chunks referenced and read through obstore."""
    bucket, _ = s3_bucket
    storage = icechunk.s3_storage(
        bucket=bucket, prefix="repos/one", endpoint_url=s3_server.endpoint, allow_http=True, region="us-east-1",
        access_key_id="testing", secret_access_key="testing", force_path_style=True,
    )
    repo = icechunk.Repository.create(storage)
    session = repo.writable_session("main")
    add_native_group(session)
    session.commit("native on S3")
    expected = xr.open_zarr(repo.readonly_session("main").store, consolidated=False, group="native").load()

    url = f"s3://{bucket}/repos/one"
    registry = ObjectStoreRegistry.default()
    assert isinstance(detect_parser(url, registry), IcechunkParser)
    store = IcechunkParser()(url, registry)
    n = store.group.groups["native"].arrays["n"].manifest
    assert n.count()["virtual"] == 3 and all(u.startswith(f"{url}/chunks/") for u in n.urls)
    xr.testing.assert_identical(vz_read(store, "native"), expected)
    from_repo = IcechunkParser(repo)("ignored", registry)  # the location from the repository's storage
    assert set(from_repo.group.groups["native"].arrays["n"].manifest.urls) == set(n.urls)


def test_format_1_repository_detected_and_parsed(tmp_path):
    """Icechunk's format 1 layout (refs/branch.main/ref.json, no ``repo`` object) is recognised too."""
    repo = icechunk.Repository.create(icechunk.local_filesystem_storage(str(tmp_path / "v1")), spec_version=1)
    session = repo.writable_session("main")
    add_native_group(session)
    session.commit("format 1")
    assert not (tmp_path / "v1" / "repo").exists() and (tmp_path / "v1" / "refs" / "branch.main").is_dir()
    url = f"file://{tmp_path / 'v1'}"
    assert isinstance(detect_parser(url, ObjectStoreRegistry.default()), IcechunkParser)
    expected = xr.open_zarr(repo.readonly_session("main").store, consolidated=False, group="native").load()
    xr.testing.assert_identical(vz_read(IcechunkParser()(url, ObjectStoreRegistry.default()), "native"), expected)
