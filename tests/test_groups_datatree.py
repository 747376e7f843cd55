"""Groups: ``group=`` on the multi-file opens, the DataTree API, the ``.vz`` writers on a DataTree, the CLI.

Files with groups are written here by netCDF4 (netCDF-4 groups, packed and
inherited dimensions) and by h5py (plain HDF5 groups, phony dimensions).
Every result is compared with xarray reading the same files with the netCDF4
engine (``xr.open_datatree``, ``xr.open_dataset(group=)``,
``xr.open_mfdataset(group=)``); written kerchunk references are read back by
fsspec's ReferenceFileSystem + zarr, Icechunk repositories by icechunk + zarr.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import fsspec
import h5py
import netCDF4
import numpy as np
import pytest
import xarray as xr
import zarr

import vzdask
from vzdask.errors import FileOpenError, ParseError
from tests.icechunk_repos import Repo

NT, NX, NS = 4, 3, 2
VZDASK = Path(sys.executable).parent / "vzdask"


def write_grouped(path: Path, k: int = 0, *, own_time: bool = False, obs: bool = True, extra: bool = False
                  ) -> Path:
    """A netCDF-4 file: root (time, x, zlib ``tas``); ``obs`` (station, packed ``temp`` on the root's time);
    ``obs/deep`` (``z`` on the root's x); ``empty`` (attributes only).

    ``own_time``: ``obs`` has its own ``time`` dimension and coordinate (same values), so that it can be
    combined by coordinates on its own. ``obs=False``: no ``obs`` (nor ``obs/deep``); ``extra``: a group
    ``extra`` with ``e`` on the root's time.
    """
    rng = np.random.default_rng(k)
    with netCDF4.Dataset(path, "w") as nc:
        nc.title = "grouped"
        nc.createDimension("time", None)
        nc.createDimension("x", NX)
        t = nc.createVariable("time", "f8", ("time",))
        t.units = "days since 2000-01-01"
        t[:] = np.arange(k * NT, (k + 1) * NT)
        x = nc.createVariable("x", "f4", ("x",))
        x[:] = np.arange(NX) * 1.5
        tas = nc.createVariable("tas", "f4", ("time", "x"), zlib=True, chunksizes=(2, NX), fill_value=-999.0)
        values = rng.normal(280, 5, (NT, NX)).astype("f4")
        values[0, 0] = -999.0  # masked
        tas[:] = values
        if extra:
            group = nc.createGroup("extra")
            group.source = "extra"
            e = group.createVariable("e", "f4", ("time",), zlib=True, fill_value=np.float32(-1))
            e[:] = np.arange(NT, dtype="f4") + 100 * k
        empty = nc.createGroup("empty")
        empty.a = 1
        if not obs:
            return path
        obs = nc.createGroup("obs")
        obs.note = "stations"
        if own_time:
            obs.createDimension("time", None)
            ot = obs.createVariable("time", "f8", ("time",))
            ot.units = "days since 2000-01-01"
            ot[:] = np.arange(k * NT, (k + 1) * NT)
        obs.createDimension("station", NS)
        s = obs.createVariable("station", "i4", ("station",))
        s[:] = [10, 20]
        temp = obs.createVariable("temp", "i2", ("time", "station"), fill_value=np.int16(-32767))
        temp.scale_factor = 0.5
        temp.add_offset = 100.0
        temp.units = "K"
        temp[:] = rng.integers(-100, 100, (NT, NS)) * 0.5 + 100.0
        deep = obs.createGroup("deep")
        deep.level = 2
        z = deep.createVariable("z", "f8", ("x",))
        z[:] = [5.0, 6.0, 7.0]
    return path


def write_h5py_groups(path: Path) -> Path:
    """A plain HDF5 file (no dimension scales: phony dimensions) with nested groups, chunked and gzip."""
    with h5py.File(path, "w") as f:
        f.create_dataset("a", data=np.arange(12, dtype="f8").reshape(3, 4))
        g1 = f.create_group("g1")
        g1.attrs["title"] = "first"
        g1.create_dataset("b", data=np.arange(10, dtype="i4"), chunks=(4,), compression="gzip")
        g2 = g1.create_group("g2")
        g2.create_dataset("c", data=np.array([[1.5, 2.5], [3.5, 4.5]], dtype="f4"))
    return path


@pytest.fixture
def grouped(tmp_path) -> Path:
    return write_grouped(tmp_path / "grouped.nc")


@pytest.fixture
def collection(tmp_path) -> list[str]:
    """Three files, each with groups; ``obs`` has its own time coordinate (combinable by coordinates)."""
    directory = tmp_path / "coll"
    directory.mkdir()
    return [str(write_grouped(directory / f"part_{k}.nc", k, own_time=True)) for k in range(3)]


def reference(path) -> xr.DataTree:
    with xr.open_datatree(path, engine="netcdf4") as tree:
        return tree.load()


def assert_tree_identical(actual: xr.DataTree, expected: xr.DataTree) -> None:
    """Node by node (each group's own variables, values, dtypes, attributes), and the same groups."""
    assert sorted(n.path for n in actual.subtree) == sorted(n.path for n in expected.subtree)
    for node in expected.subtree:
        xr.testing.assert_identical(actual[node.path].to_dataset(inherit=False).compute(),
                                    node.to_dataset(inherit=False))


def kerchunk_tree(path) -> xr.DataTree:
    """fsspec's ReferenceFileSystem + zarr (v2) through xarray's DataTree reader."""
    mapper = fsspec.get_mapper("reference://", fo=str(path))
    store = zarr.storage.FsspecStore.from_mapper(mapper, read_only=True)
    with xr.open_datatree(store, engine="zarr", consolidated=False, zarr_format=2) as tree:
        return tree.load()


def kerchunk_tree_of(refs: dict) -> xr.DataTree:
    store = zarr.storage.FsspecStore.from_mapper(fsspec.get_mapper("reference://", fo=refs), read_only=True)
    with xr.open_datatree(store, engine="zarr", consolidated=False, zarr_format=2) as tree:
        return tree.load()


def icechunk_tree(repo: Repo) -> xr.DataTree:
    session = repo.open().readonly_session("main")
    with xr.open_datatree(session.store, engine="zarr", consolidated=False) as tree:
        return tree.load()


# --------------------------------------------------------------------------- #
# one file
# --------------------------------------------------------------------------- #
def test_virtual_datatree_of_one_file(grouped):
    tree = vzdask.open_virtual_datatree(grouped)
    assert isinstance(tree, xr.DataTree)
    assert sorted(n.path for n in tree.subtree) == ["/", "/empty", "/obs", "/obs/deep"]
    assert tree.vz.virtual_variables == ["tas", "obs/temp", "obs/deep/z"]
    # virtual variables stay in their stored form (packing attributes kept), coordinates are loaded
    temp = tree["obs"].to_dataset(inherit=False)["temp"]
    assert temp.dtype == np.int16 and temp.attrs["scale_factor"] == 0.5
    assert tree["obs"].attrs == {"note": "stations"} and tree["empty"].attrs == {"a": 1}
    # the child inherits the root's time coordinate, as xr.open_datatree gives it
    assert "time" in tree["obs"].coords
    assert_tree_identical(tree.vz.to_dask(mask_and_scale=True).map_over_datasets(xr.decode_cf), reference(grouped))


def test_analysis_datatree_of_one_file(grouped):
    tree = vzdask.open_datatree(grouped)
    assert isinstance(tree["obs/temp"].data, type(tree["tas"].data))  # dask arrays
    assert tree["obs/temp"].dtype == np.float64
    assert_tree_identical(tree, reference(grouped))


def test_h5py_groups(tmp_path):
    path = write_h5py_groups(tmp_path / "plain.h5")
    expected = reference(path)
    assert_tree_identical(vzdask.open_datatree(path), expected)
    virtual = vzdask.open_virtual_datatree(path)
    virtual.vz.to_kerchunk(tmp_path / "plain.json", format="json")
    assert_tree_identical(kerchunk_tree(tmp_path / "plain.json"), expected)


def test_subtree_and_group_argument(grouped):
    tree = vzdask.open_datatree(grouped, group="obs")
    assert sorted(n.path for n in tree.subtree) == ["/", "/deep"]
    with xr.open_dataset(grouped, group="obs", engine="netcdf4") as ref:
        xr.testing.assert_identical(tree.to_dataset().compute(), ref.load())
    with xr.open_dataset(grouped, group="obs/deep", engine="netcdf4") as ref:
        xr.testing.assert_identical(tree["deep"].to_dataset(inherit=False).compute(), ref.load())
        # group= of the one-file and the multi-file opens
        xr.testing.assert_identical(vzdask.open_mfdataset([grouped], group="obs/deep").compute(), ref.load())
        virtual = vzdask.open_virtual_dataset(str(grouped), group="/obs/deep")
        assert virtual.vz.virtual_variables == ["z"]


def test_datatree_writers_one_file(grouped, tmp_path):
    tree = vzdask.open_virtual_datatree(grouped)
    expected = reference(grouped)
    for fmt, out in (("json", tmp_path / "refs.json"), ("parquet", tmp_path / "refs.parq")):
        tree.vz.to_kerchunk(out, format=fmt)
    refs = json.loads((tmp_path / "refs.json").read_text())["refs"]
    assert isinstance(refs["obs/temp/0.0"], list) and refs["obs/temp/0.0"][0].endswith("grouped.nc")
    assert json.loads(refs["empty/.zattrs"]) == {"a": 1}
    assert "time/.zarray" not in {k.split("obs/", 1)[-1] for k in refs if k.startswith("obs/")}  # inherited
    assert_tree_identical(kerchunk_tree(tmp_path / "refs.json"), expected)
    # the dict form holds the same groups
    assert set(tree.vz.to_kerchunk()["refs"]) == set(refs)
    repo = Repo(tmp_path / "repo", tmp_path)
    session = repo.writable()
    tree.vz.to_icechunk(session, commit="groups")
    assert_tree_identical(icechunk_tree(repo), expected)
    with xr.open_zarr(repo.open().readonly_session("main").store, group="obs", consolidated=False) as obs:
        assert obs["temp"].encoding["dtype"] == np.int16  # written as references to the packed bytes
    # into a group of the repository
    session = repo.writable()
    tree["obs"].vz.to_icechunk(session, group="copy/of/obs", mode="w", commit="subtree")
    with xr.open_dataset(grouped, group="obs/deep", engine="netcdf4") as ref:
        xr.testing.assert_identical(repo.read(group="copy/of/obs/deep").load(), ref.load())


def test_persist_and_compute_a_datatree(grouped, tmp_path):
    tree = vzdask.open_virtual_datatree(grouped)
    persisted = tree.vz.persist()
    temp = persisted["obs"].to_dataset(inherit=False)["temp"].data
    assert temp.manifest.count()["virtual"] == 0 and temp.manifest.count()["inlined"] > 0  # every chunk inlined
    refs = persisted.vz.to_kerchunk()["refs"]
    assert refs["obs/temp/0.0"].startswith("base64:")
    computed = tree.vz.compute()
    assert computed["obs/temp"].dtype == np.int16  # raw stored values, as ds.vz.compute gives them
    with netCDF4.Dataset(grouped) as nc:
        nc.set_auto_maskandscale(False)
        np.testing.assert_array_equal(computed["obs/temp"].values, nc["obs/temp"][:])


# --------------------------------------------------------------------------- #
# many files
# --------------------------------------------------------------------------- #
def test_group_argument_on_multi_file_opens(collection):
    with xr.open_mfdataset(collection, group="obs", engine="netcdf4") as ref:
        ref = ref.load()
    virtual = vzdask.open_virtual_mfdataset(collection, group="obs")
    assert virtual.sizes == {"time": 3 * NT, "station": NS}
    assert virtual.vz.virtual_variables == ["temp"]
    xr.testing.assert_identical(vzdask.open_mfdataset(collection, group="obs").compute(), ref)
    xr.testing.assert_identical(vzdask.open_mfdataset(collection, group="obs", parallel="processes").compute(), ref)
    refs = virtual.vz.to_kerchunk()
    with xr.open_dataset(fsspec.get_mapper("reference://", fo=refs), engine="zarr", consolidated=False) as back:
        xr.testing.assert_identical(back.load(), ref)


def test_datatree_of_many_files(collection, tmp_path):
    tree = vzdask.open_virtual_datatree(collection)
    assert tree.sizes["time"] == 3 * NT
    analysis = vzdask.open_datatree(collection)
    kerchunk = tmp_path / "coll.json"
    tree.vz.to_kerchunk(kerchunk, format="json")
    repo = Repo(tmp_path / "repo", Path(collection[0]).parent)
    tree.vz.to_icechunk(repo.writable(), commit="collection")
    back_k, back_i = kerchunk_tree(kerchunk), icechunk_tree(repo)
    # xarray's reading of each group, assembled as a DataTree (which drops a child's coordinates that equal
    # its parent's); obs/deep is the same in every file and is taken from the first
    groups = {}
    for group in ("", "obs"):
        with xr.open_mfdataset(collection, engine="netcdf4", **({"group": group} if group else {})) as ref:
            groups["/" + group] = ref.load()
    with xr.open_dataset(collection[0], group="obs/deep", engine="netcdf4") as ref:
        groups["/obs/deep"] = ref.load()
    groups["/empty"] = xr.Dataset(attrs={"a": 1})
    expected = xr.DataTree.from_dict(groups)
    assert "time" in groups["/obs"].coords and "time" not in expected["obs"].to_dataset(inherit=False).coords
    for got in (analysis, back_k, back_i):
        assert_tree_identical(got, expected)
        xr.testing.assert_identical(got["obs"].to_dataset().compute().drop_vars("x"), groups["/obs"])
    # the inline policy reaches every group (each file is parsed once for all of them)
    inlined = vzdask.open_virtual_datatree(collection, inline=vzdask.InlinePolicy(variables=["temp", "z"]))
    refs = inlined.vz.to_kerchunk()["refs"]
    assert all(v.startswith("base64:") for k, v in refs.items() if k.startswith(("obs/temp/", "obs/deep/z/"))
               and not k.rsplit("/", 1)[1].startswith("."))
    assert isinstance(refs["tas/0.0"], list)
    assert_tree_identical(kerchunk_tree_of(refs), expected)


def test_datatree_of_many_files_nested_with_inherited_dimension(tmp_path):
    """``obs`` uses the root's time (no coordinate of its own): combined in the given order along it."""
    paths = [str(write_grouped(tmp_path / f"n{k}.nc", k)) for k in range(2)]
    tree = vzdask.open_datatree(paths, combine="nested", concat_dim="time", data_vars="minimal")
    virtual = vzdask.open_virtual_datatree(paths, combine="nested", concat_dim="time", data_vars="minimal")
    virtual.vz.to_kerchunk(tmp_path / "n.json", format="json")
    back = kerchunk_tree(tmp_path / "n.json")
    for group in ("", "obs"):
        with xr.open_mfdataset(paths, engine="netcdf4", combine="nested", concat_dim="time", data_vars="minimal",
                               **({"group": group} if group else {})) as ref:
            ref = ref.load()
        for got in (tree, back):
            xr.testing.assert_identical(got["/" + group].to_dataset(inherit=False).compute(), ref)


# --------------------------------------------------------------------------- #
# bad input
# --------------------------------------------------------------------------- #
def test_group_that_does_not_exist(grouped, collection, tmp_path):
    with pytest.raises(ParseError, match=rf"{grouped}: no group 'nope'"):
        vzdask.open_virtual_dataset(str(grouped), group="nope")
    with pytest.raises(FileOpenError, match=rf"failed to open {grouped}: .*no group 'nope'"):
        vzdask.open_virtual_datatree(grouped, group="nope")
    with pytest.raises(FileOpenError, match=r"failed to open .*part_\d.nc: .*no group 'nope'"):
        vzdask.open_virtual_mfdataset(collection, group="nope")
    with pytest.raises(FileOpenError, match=r"no group 'nope'"):
        vzdask.open_mfdataset(collection, group="nope")
    with pytest.raises(FileOpenError, match=r"no group 'nope'"):
        vzdask.open_datatree(collection, group="nope")
    # a group present in the first file only: the file that lacks it and the group are named
    plain = tmp_path / "coll" / "part_9.nc"
    write_grouped(plain, 9)
    with netCDF4.Dataset(plain, "a") as nc:
        nc.renameGroup("obs", "other")
    with pytest.raises(vzdask.errors.CombineError,
                       match=rf"group 'obs' is missing from 1 of 4 files \({plain}; it is in {collection[0]}, "):
        vzdask.open_virtual_datatree([*collection, str(plain)])
    with pytest.raises(FileOpenError, match=rf"failed to open {plain}: .*no group 'obs'"):  # the tree's root
        vzdask.open_datatree([*collection, str(plain)], group="obs")


def test_group_of_a_file_without_groups_and_an_array_path(grouped, tmp_path):
    nc3 = tmp_path / "flat.nc"
    xr.Dataset({"v": ("x", np.arange(3.0))}).to_netcdf(nc3, format="NETCDF3_64BIT", engine="scipy")
    with pytest.raises(ParseError, match=rf"{nc3}: no group 'obs' \(its groups: none, only the root\)"):
        vzdask.open_virtual_dataset(str(nc3), group="obs")
    with pytest.raises(FileOpenError, match=rf"{nc3}: no group 'obs'"):
        vzdask.open_virtual_mfdataset([str(nc3)], group="obs")
    with pytest.raises(ParseError, match="no group 'tas'"):
        vzdask.open_virtual_dataset(str(grouped), group="tas")


def test_bad_arguments(grouped):
    with pytest.raises(ValueError, match=r"loadable_variables in no group of the file: \['nosuch'\]"):
        vzdask.open_virtual_datatree(grouped, loadable_variables=["time", "nosuch"])
    with pytest.raises(TypeError):
        vzdask.open_virtual_datatree(grouped, no_such_option=1)
    with pytest.raises(TypeError, match="to_kerchunk takes an xarray.DataTree, Dataset, ManifestGroup or Manifest"):
        vzdask.writers.kerchunk.to_kerchunk([1, 2])


def test_loadable_variables_across_groups(grouped):
    tree = vzdask.open_virtual_datatree(grouped, loadable_variables=["time", "x", "station", "temp"])
    assert tree.vz.virtual_variables == ["tas", "obs/deep/z"]
    assert tree["obs/temp"].dtype == np.float64  # loaded and decoded
    refs = tree.vz.to_kerchunk()["refs"]
    assert isinstance(refs["obs/temp/0.0"], list)  # loaded for indexing, still written as its reference


# --------------------------------------------------------------------------- #
# the command line
# --------------------------------------------------------------------------- #
def run(*args) -> subprocess.CompletedProcess:
    return subprocess.run([str(VZDASK), *map(str, args)], capture_output=True, text=True, timeout=120)


def test_cli_writes_every_group_and_picks_one(grouped, collection, tmp_path):
    expected = reference(grouped)
    out = tmp_path / "all.json"
    result = run("virtualize", grouped, "-o", out)
    assert result.returncode == 0, result.stderr
    assert "groups      4" in result.stdout
    assert_tree_identical(kerchunk_tree(out), expected)
    out = tmp_path / "repo"
    result = run("virtualize", *collection, "-o", out)
    assert result.returncode == 0, result.stderr
    session = Repo.__new__(Repo)  # the CLI made the repository: open it with its container's credentials
    session.path, session.credentials = str(out), None
    import icechunk

    repo = icechunk.Repository.open(icechunk.local_filesystem_storage(str(out)), authorize_virtual_chunk_access=(
        icechunk.containers_credentials({f"file://{Path(collection[0]).parent}/":
                                         icechunk.credentials.LocalFileSystemAccess})))
    with xr.open_datatree(repo.readonly_session("main").store, engine="zarr", consolidated=False) as back:
        with xr.open_mfdataset(collection, group="obs", engine="netcdf4") as ref:
            xr.testing.assert_identical(back["obs"].to_dataset().drop_vars("x").load(), ref.load())
    # --group: that group alone, as the output's root
    out = tmp_path / "obs.json"
    result = run("virtualize", *collection, "-o", out, "--group", "obs")
    assert result.returncode == 0, result.stderr
    assert "groups" not in result.stdout
    with xr.open_dataset(fsspec.get_mapper("reference://", fo=str(out)), engine="zarr", consolidated=False) as back:
        with xr.open_mfdataset(collection, group="obs", engine="netcdf4") as ref:
            xr.testing.assert_identical(back.load(), ref.load())
    result = run("virtualize", grouped, "-o", tmp_path / "bad.json", "--group", "nope")
    assert result.returncode == 1
    assert f"failed to open {grouped}" in result.stderr and "no group 'nope'" in result.stderr
    assert not (tmp_path / "bad.json").exists()


def test_group_without_coordinates_across_files_is_refused_by_coords(tmp_path):
    """Plain HDF5 groups (phony dimensions): nothing orders the files, so by_coords refuses; nested combines."""
    paths = [str(write_h5py_groups(tmp_path / f"p{k}.h5")) for k in range(2)]
    with pytest.raises(vzdask.errors.CombineError,
                       match=r"group '/' of .*p0.h5, .*p1.h5: its dimensions \['phony_dim_\d', 'phony_dim_\d'\] "
                             r"have no coordinate"):
        vzdask.open_virtual_datatree(paths)
    # g1's dataset is phony_dim_2 (netCDF-C numbers the subgroups' phony dimensions first); the groups
    # without it are merged (the same in both files), as xr.concat of DataTrees leaves them
    tree = vzdask.open_datatree(paths, combine="nested", concat_dim="phony_dim_2")
    with xr.open_mfdataset(paths, engine="netcdf4", combine="nested", concat_dim="phony_dim_2", group="g1") as ref:
        xr.testing.assert_identical(tree["g1"].to_dataset(inherit=False).compute(), ref.load())
    assert tree["g1/b"].shape == (20,)
    for group in ("/", "/g1/g2"):
        with xr.open_dataset(paths[0], engine="netcdf4", group=group) as ref:
            xr.testing.assert_identical(tree[group].to_dataset(inherit=False).compute(), ref.load())


# --------------------------------------------------------------------------- #
# many files: the union of their groups, each file parsed once
# --------------------------------------------------------------------------- #


def counting_parser(log: Path):
    """The HDF5 parser, noting each parse in ``log`` (a class made here: cloudpickle ships it by value)."""
    from vzdask.parsers import HDFParser

    class Counting:
        def __init__(self) -> None:
            self.inner = HDFParser()

        def parse_keeping_reads(self, url, registry):
            with open(log, "a") as out:
                out.write(url + "\n")
            return self.inner.parse_keeping_reads(url, registry)

        def __call__(self, url, registry):
            return self.parse_keeping_reads(url, registry)[0]

    return Counting()


def padded(path: str, like: xr.Dataset) -> xr.Dataset:
    """A file that lacks a group, as xarray would pad it: the root's time, the group's attributes."""
    with xr.open_dataset(path, engine="netcdf4") as root:
        return xr.Dataset(coords={"time": root["time"].load()}, attrs=like.attrs)


@pytest.mark.parametrize("parallel", [None, "threads", "processes", "client"])
def test_datatree_has_the_groups_of_every_file_each_file_parsed_once(collection, tmp_path, parallel, request):
    """``obs`` is missing from the last file, ``extra`` is only there: analysis pads each as xarray pads a
    variable missing from some files; a virtual tree refuses, naming the group and the files."""
    if parallel == "client":
        parallel = request.getfixturevalue("dask_cluster")
    last = str(write_grouped(tmp_path / "coll" / "part_3.nc", 3, obs=False, extra=True))
    paths = [*collection, last]
    log = tmp_path / f"parses_{request.node.callspec.id}.log"
    tree = vzdask.open_datatree(paths, parallel=parallel, parser=counting_parser(log))
    parses = log.read_text().split()
    assert sorted(parses) == sorted(f"file://{p}" for p in paths)  # each file once, for all its groups
    assert sorted(n.path for n in tree.subtree) == ["/", "/empty", "/extra", "/obs", "/obs/deep"]
    with xr.open_mfdataset(paths, engine="netcdf4") as ref:
        xr.testing.assert_identical(tree.to_dataset(inherit=False).compute(), ref.load())
    obs = [xr.open_dataset(p, group="obs", engine="netcdf4").load() for p in collection]
    ref = xr.combine_by_coords([*obs, padded(last, obs[0])], combine_attrs="override", join="outer")
    got = tree["obs"].to_dataset().compute().drop_vars("x")  # its own time equals the root's: inherited
    xr.testing.assert_identical(got, ref)
    assert np.isnan(got["temp"].values[3 * NT:]).all() and not np.isnan(got["temp"].values[: 3 * NT]).all()
    with xr.open_datatree(last, engine="netcdf4") as one:
        extra = one["extra"].to_dataset().load()
    ref = xr.combine_by_coords([*(padded(p, extra) for p in collection), extra], combine_attrs="override",
                               join="outer")
    xr.testing.assert_identical(tree["extra"].to_dataset().compute(), ref)
    assert tree["extra"].attrs == {"source": "extra"}
    with xr.open_dataset(collection[0], group="obs/deep", engine="netcdf4") as ref:
        xr.testing.assert_identical(tree["obs/deep"].to_dataset(inherit=False).compute(), ref.load())
    # virtual: references cannot pad a group; the groups every file has still combine
    log.unlink()
    with pytest.raises(vzdask.errors.CombineError,
                       match=rf"group 'obs' is missing from 1 of 4 files \({last}; it is in {collection[0]}, "
                             r".*vzdask.open_datatree"):
        vzdask.open_virtual_datatree(paths, parallel=parallel, parser=counting_parser(log))
    assert sorted(log.read_text().split()) == sorted(f"file://{p}" for p in paths)
    log.unlink()
    virtual = vzdask.open_virtual_datatree(collection, parallel=parallel, parser=counting_parser(log))
    assert sorted(log.read_text().split()) == sorted(f"file://{p}" for p in collection)
    assert virtual["obs"].sizes["time"] == 3 * NT and virtual.vz.virtual_variables == ["tas", "obs/temp",
                                                                                        "obs/deep/z"]


@pytest.mark.parametrize("parallel", [None, "processes"])
def test_datatree_of_many_files_inline_reaches_the_detected_parser_in_each_path(collection, parallel):
    """No parser given: each task's one parse of a file is the detected parser's, with the inline policy."""
    tree = vzdask.open_virtual_datatree(collection, parallel=parallel, inline=vzdask.InlinePolicy(variables=["z"]))
    refs = tree.vz.to_kerchunk()["refs"]
    assert refs["obs/deep/z/0"].startswith("base64:") and isinstance(refs["obs/temp/0.0"], list)
    expected = {}
    for group in ("", "obs"):
        with xr.open_mfdataset(collection, engine="netcdf4", **({"group": group} if group else {})) as ref:
            expected["/" + group] = ref.load()
    back = kerchunk_tree_of(refs)
    xr.testing.assert_identical(back.to_dataset(inherit=False), expected["/"])
    xr.testing.assert_identical(back["obs"].to_dataset().drop_vars("x"), expected["/obs"])
