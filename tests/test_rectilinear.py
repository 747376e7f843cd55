"""Rectilinear chunk grids (issue 17, item 1): files of different lengths or chunkings joined into one manifest.

Monthly files of a leap year (31, 29, 31, 30 ... days, one chunk each) and
files chunked 5, 10, 7 and 10 days along time make one virtual dataset whose
chunk grid along time lists every chunk's size (zarr's experimental
``rectilinear`` grid). Values are compared with ``xr.open_mfdataset(engine=
"netcdf4")`` of the same files: virtual compute, ``persist``, ``to_dask_array``,
``vzdask.open_mfdataset``, the ManifestStore read by zarr, and Icechunk
repositories (new arrays, appends along time) read back by xarray and zarr.
"""

from __future__ import annotations

import calendar
from pathlib import Path

import dask
import netCDF4
import numpy as np
import pytest
import xarray as xr
import zarr

import vzdask
from tests.icechunk_repos import Repo
from vzdask._compat import XARRAY_VERSION
from vzdask.errors import CombineError, UnsupportedChunkGridError
from vzdask.manifests.metadata import create_array_metadata

NLAT, NLON = 3, 4
YEAR = 2024  # a leap year
DAYS = tuple(calendar.monthrange(YEAR, m)[1] for m in range(1, 13))


def write_file(path: Path, *, start: int, n: int, chunk: int | None, seed: int, latlon_chunks=(NLAT, NLON)) -> str:
    """One netCDF4 file: masked float ``tas`` and packed int16 ``pr`` over (time, lat, lon).

    ``chunk``: the time chunk size (zlib-compressed), None for contiguous storage.
    """
    rng = np.random.default_rng(seed)
    with netCDF4.Dataset(path, "w") as nc:
        nc.createDimension("time", n)
        nc.createDimension("lat", NLAT)
        nc.createDimension("lon", NLON)
        t = nc.createVariable("time", "f8", ("time",))
        t.units, t.calendar = f"days since {YEAR}-01-01", "standard"
        t[:] = np.arange(start, start + n, dtype="f8")
        lat = nc.createVariable("lat", "f4", ("lat",))
        lat[:] = np.linspace(-45, 45, NLAT)
        dims = ("time", "lat", "lon")
        layout = {"contiguous": True} if chunk is None else {"chunksizes": (chunk, *latlon_chunks), "zlib": True}
        tas = nc.createVariable("tas", "f4", dims, fill_value=np.float32(-999), **layout)
        tas.units = "K"
        values = (250 + 50 * rng.random((n, NLAT, NLON))).astype("f4")
        tas[:] = np.ma.masked_where(rng.random(values.shape) < 0.1, values)
        pr = nc.createVariable("pr", "i2", dims, fill_value=np.int16(-1), **layout)
        pr.setncatts({"units": "mm", "scale_factor": 0.1, "add_offset": 0.0})  # float64: zarr JSON keeps the type
        pr[:] = (20 * rng.random((n, NLAT, NLON))).astype("f4")
    return str(path)


def collection(root: Path, lengths, chunks, **kwargs) -> list[str]:
    root.mkdir(parents=True, exist_ok=True)
    paths, start = [], 0
    for i, (n, chunk) in enumerate(zip(lengths, chunks)):
        paths.append(write_file(root / f"f{i:02d}.nc", start=start, n=n, chunk=chunk, seed=i, **kwargs))
        start += n
    return paths


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("rectilinear")
    return {
        "monthly": collection(root / "monthly", DAYS, [None] * 12),  # one chunk per file, 29 days in February
        # chunked 5, 10, 7 and 10 days; the last file (31 days by 10) ends in a partial chunk, which a grid may
        "mixed": collection(root / "mixed", [30, 30, 28, 31], [5, 10, 7, 10]),
        "regular": collection(root / "regular", [30, 30], [10, 10]),
        "latlon": [write_file(root / "a.nc", start=0, n=10, chunk=5, seed=1),
                   write_file(root / "b.nc", start=10, n=10, chunk=5, seed=2, latlon_chunks=(1, NLON))],
        "partial": collection(root / "partial", [31, 29], [5, 5]),
        "root": root,
    }


@pytest.fixture
def rectilinear_reads():
    """zarr reads rectilinear grids only when asked (an experimental, process-wide setting)."""
    with zarr.config.set({"array.rectilinear_chunks": True}):
        yield


def reference(paths) -> xr.Dataset:
    with xr.open_mfdataset(paths, engine="netcdf4") as ds:
        return ds.load()


MIXED_EDGES = (5,) * 6 + (10,) * 3 + (7,) * 4 + (10,) * 4  # the last 10 holds the 31st day only

#: xarray opens a rectilinear zarr array with dask chunks to match in 2026.9 (tested); 2025.8 (the floor)
#: asks zarr for ``Array.chunks``, which a rectilinear grid lacks. Written stores are checked with zarr in
#: any case (against netCDF4's raw values), and with xarray where it can read them.
XARRAY_READS_RECTILINEAR = XARRAY_VERSION >= (2026, 9)


def raw_values(paths, name: str) -> np.ndarray:
    """The stored numbers of ``name``, file after file, as netCDF4 reads them (no masking or unpacking)."""
    parts = []
    for path in paths:
        with netCDF4.Dataset(path) as nc:
            nc.set_auto_maskandscale(False)
            parts.append(nc[name][:])
    return np.concatenate(parts)


def assert_store_holds(store, paths, time_chunks) -> None:
    """zarr (and xarray, where it reads rectilinear grids) read back the files' values, chunked as the files."""
    for name in ("tas", "pr"):
        array = zarr.open_array(store, path=name, mode="r")
        assert array.read_chunk_sizes[0] == tuple(time_chunks), name
        np.testing.assert_array_equal(array[:], raw_values(paths, name))
    if XARRAY_READS_RECTILINEAR:
        got = xr.open_zarr(store, consolidated=False)
        assert got["tas"].chunks[0] == tuple(time_chunks)
        xr.testing.assert_identical(got.load(), reference(paths))


# --------------------------------------------------------------------------- #
# ManifestArray: concatenate, stack, indexing
# --------------------------------------------------------------------------- #


def _array(length: int, chunk, ncols: int = 2, col_chunk: int = 2) -> vzdask.ManifestArray:
    metadata = create_array_metadata(shape=(length, ncols), chunk_shape=(chunk, col_chunk), dtype="f4")
    return vzdask.ManifestArray(metadata, vzdask.ChunkManifest.empty((-(-length // chunk), -(-ncols // col_chunk))))


def test_concatenate_makes_a_rectilinear_axis_only_where_needed():
    a, b, c = _array(31, 31), _array(29, 29), _array(30, 10)
    joined = np.concatenate([a, b, c])
    assert joined.chunk_sizes == ((31, 29, 10, 10, 10), 2) and joined.is_rectilinear
    assert joined.manifest.shape == (5, 1)
    assert "chunks=[[31, 29, 10, 10, 10], 2]" in repr(joined)
    # a regular grid stays regular: same chunk size, only the last array ends partially
    regular = np.concatenate([_array(30, 10), _array(25, 10)])
    assert regular.chunk_sizes == (10, 2) and not regular.is_rectilinear
    assert regular.metadata.chunk_grid.to_dict()["name"] == "regular"
    # equal chunk sizes from different arrays collapse to one size again
    assert np.concatenate([_array(10, 5), _array(10, 10)[:, :], _array(5, 5)]).chunk_sizes == ((5, 5, 10, 5), 2)
    assert np.concatenate([_array(10, 5), np.concatenate([_array(5, 5), _array(5, 5)])]).chunk_sizes == (5, 2)
    # joining rectilinear arrays, and the partial chunk at the very end kept (stored 10 long, 3 used)
    tail = np.concatenate([joined, _array(23, 10)])
    assert tail.chunk_sizes == ((31, 29, 10, 10, 10, 10, 10, 10), 2) and tail.shape == (113, 2)
    assert tail.metadata.to_dict()["chunk_grid"]["name"] == "rectilinear"


def test_stack_and_indexing_along_a_rectilinear_axis():
    joined = np.concatenate([_array(3, 3), _array(1, 1), _array(4, 2)])  # chunks 3, 1, 2, 2
    stacked = np.stack([joined, joined])
    assert stacked.chunk_sizes == (1, (3, 1, 2, 2), 2) and stacked.shape == (2, 8, 2)
    assert joined[3:6].chunk_sizes == ((1, 2), 2) and joined[3:6].shape == (3, 2)
    assert joined[4:].chunk_sizes == (2, 2)  # one size again: a regular grid
    assert joined[3].shape == (2,)  # the chunk of size 1
    assert joined[8:].shape == (0, 2)
    with pytest.raises(IndexError, match=r"slice start 2 is not on a chunk boundary \(chunks start at 0, 3, 4, 6\)"):
        joined[2:]
    with pytest.raises(IndexError, match=r"slice stop 5 is not on a chunk boundary"):
        joined[:5]
    with pytest.raises(IndexError, match=r"index 5 is in a chunk of size 2; use a slice such as \[4:6\]"):
        joined[5]


def test_concatenate_errors_name_the_arrays_and_sizes():
    with pytest.raises(CombineError, match="array 0 has length 31, not a multiple of the chunk size 5"):
        np.concatenate([_array(31, 5), _array(10, 5)])
    inner = np.concatenate([_array(10, 10), _array(5, 10)])  # rectilinear? no: regular 10, last partial
    with pytest.raises(CombineError, match="array 0 has length 15, not a multiple of the chunk size 10"):
        np.concatenate([inner, _array(10, 10)])
    ragged = np.concatenate([_array(10, 10), _array(5, 5), _array(3, 5)])  # chunks 10, 5, 5 (3 used)
    with pytest.raises(CombineError, match=r"array 0 has length 18, but its chunks along that axis \(\[\[10, 5, 5\]\]\) "
                                           r"are stored 20 long: the last chunk is partial"):
        np.concatenate([ragged, _array(10, 10)])
    with pytest.raises(CombineError, match=r"chunk_shape differs between array 0 \(\[10, 2\]\) and array 1 \(\[10, 1\]\)"):
        np.concatenate([_array(10, 10), _array(10, 10, col_chunk=1)])


# --------------------------------------------------------------------------- #
# Files: virtual datasets, analysis, persist, the ManifestStore
# --------------------------------------------------------------------------- #


def test_monthly_files_of_a_leap_year_make_one_virtual_dataset(files):
    paths = files["monthly"]
    virtual = vzdask.open_virtual_mfdataset(paths)
    tas = virtual["tas"].data
    assert tas.chunk_sizes == (DAYS, NLAT, NLON) and tas.shape == (366, NLAT, NLON)
    assert tas.manifest.count() == {"virtual": 12, "inlined": 0, "missing": 0}
    ref = reference(paths)
    xr.testing.assert_identical(xr.decode_cf(virtual.vz.compute()), ref)
    assert int(ref["tas"].isnull().sum()) > 0  # masked points are there
    # a whole month as a virtual slice, and a dask array cut across the files
    np.testing.assert_array_equal(tas[31:60].compute(), virtual["tas"].data.compute()[31:60])
    cut = tas.to_dask_array(chunks=(50, 2, NLON))
    assert cut.chunks[0] == (50,) * 7 + (16,)
    np.testing.assert_array_equal(cut.compute(), tas.compute())
    np.testing.assert_array_equal(cut[55:70].compute(), tas.compute()[55:70])


def test_files_chunked_differently_along_time(files):
    paths = files["mixed"]
    virtual = vzdask.open_virtual_mfdataset(paths, combine="nested", concat_dim="time")
    assert virtual["pr"].data.chunk_sizes == (MIXED_EDGES, NLAT, NLON)
    assert virtual.sizes["time"] == 119  # the last chunk is stored 10 long and holds 1 day
    xr.testing.assert_identical(xr.decode_cf(virtual.vz.compute()), reference(paths))
    with dask.config.set({"vzdask.task-bytes": 1}):  # a task per chunk: the dask chunks are the stored ones
        assert virtual["pr"].data.to_dask_array().chunks[0] == MIXED_EDGES[:-1] + (1,)


def test_open_mfdataset_takes_the_one_manifest_path(files):
    paths = files["monthly"]
    ref = reference(paths)
    with dask.config.set({"vzdask.task-bytes": 1}):
        ds = vzdask.open_mfdataset(paths)
    assert ds["tas"].data.chunks[0] == DAYS  # irregular dask chunks, one per file
    loads = [name for name in ds["tas"].data.dask.layers if name.startswith("load-")]
    assert len(loads) == 1  # one manifest's load tasks, not one dataset per file combined by xarray
    xr.testing.assert_identical(ds.compute(), ref)
    xr.testing.assert_identical(vzdask.open_mfdataset(files["mixed"]).compute(), reference(files["mixed"]))


def test_persist_inlines_every_chunk_of_the_rectilinear_grid(files):
    paths = files["mixed"]
    virtual = vzdask.open_virtual_mfdataset(paths)
    persisted = virtual.vz.persist()
    pr = persisted["pr"].data
    assert pr.chunk_sizes == (MIXED_EDGES, NLAT, NLON)
    assert pr.manifest.count() == {"virtual": 0, "inlined": len(MIXED_EDGES), "missing": 0}
    xr.testing.assert_identical(xr.decode_cf(persisted.vz.compute()), reference(paths))


def test_manifest_store_is_read_by_zarr_and_xarray(files, rectilinear_reads):
    paths = files["mixed"]
    virtual = vzdask.open_virtual_mfdataset(paths)
    store = vzdask.ManifestStore(vzdask.ManifestGroup(
        {name: virtual[name].data for name in ("tas", "pr")}, attributes={}))
    array = zarr.open_array(store, path="tas", mode="r")
    assert array.read_chunk_sizes == (MIXED_EDGES[:-1] + (1,), (NLAT,), (NLON,))
    np.testing.assert_array_equal(array[:], virtual["tas"].data.compute())
    np.testing.assert_array_equal(array[:], raw_values(paths, "tas"))
    if XARRAY_READS_RECTILINEAR:
        opened = xr.open_zarr(store, consolidated=False, zarr_format=3, decode_cf=False)
        assert opened["pr"].chunks[0] == MIXED_EDGES[:-1] + (1,)
        np.testing.assert_array_equal(opened["pr"].values, virtual["pr"].data.compute())


def test_zarr_asks_for_its_flag_before_reading_a_rectilinear_store(files):
    virtual = vzdask.open_virtual_mfdataset(files["monthly"])
    store = vzdask.ManifestStore(vzdask.ManifestGroup({"tas": virtual["tas"].data}, attributes={}))
    with zarr.config.set({"array.rectilinear_chunks": False}), pytest.raises(ValueError, match="rectilinear_chunks"):
        zarr.open_array(store, path="tas", mode="r")


# --------------------------------------------------------------------------- #
# Errors that stay
# --------------------------------------------------------------------------- #


def test_chunks_that_differ_along_another_dimension_name_variable_files_and_shapes(files):
    a, b = files["latlon"]
    with pytest.raises(CombineError) as info:
        vzdask.open_virtual_mfdataset([a, b])
    message = str(info.value)
    assert "variable 'tas'" in message or "variable 'pr'" in message
    assert "chunked differently along 'lat'" in message
    assert f"{a} (shape [10, {NLAT}, {NLON}], chunks [5, {NLAT}, {NLON}])" in message
    assert f"{b} (shape [10, {NLAT}, {NLON}], chunks [5, 1, {NLON}])" in message
    xr.testing.assert_identical(vzdask.open_mfdataset([a, b]).compute(), reference([a, b]))  # analysis still opens


def test_a_partial_chunk_inside_stays_an_error(files):
    paths = files["partial"]
    with pytest.raises(CombineError) as info:
        vzdask.open_virtual_mfdataset(paths)
    message = str(info.value)
    assert f"{paths[0]} (shape [31, {NLAT}, {NLON}], chunks [5, {NLAT}, {NLON}]) has length 31 along 'time'" in message
    assert "partial" in message and "rectilinear" in message and "vzdask.open_mfdataset" in message


def test_kerchunk_refuses_a_rectilinear_grid_and_points_to_icechunk(files, tmp_path):
    virtual = vzdask.open_virtual_mfdataset(files["monthly"])
    for call in (lambda: virtual.vz.to_kerchunk(),
                 lambda: virtual.vz.to_kerchunk(tmp_path / "refs.json", format="json")):
        with pytest.raises(UnsupportedChunkGridError) as info:
            call()
        message = str(info.value)
        assert "variable 'pr'" in message or "variable 'tas'" in message
        assert "along 'time' ([31, 29, 31, 30, 31, 30, ...]" in message and "Icechunk" in message
    assert not (tmp_path / "refs.json").exists()
    # the regular collection still writes kerchunk
    assert "tas/.zarray" in vzdask.open_virtual_mfdataset(files["regular"]).vz.to_kerchunk()["refs"]


# --------------------------------------------------------------------------- #
# Icechunk
# --------------------------------------------------------------------------- #


def _store(repo: Repo):
    return repo.open().readonly_session("main").store


def test_icechunk_round_trip_and_append_along_time(files, tmp_path, rectilinear_reads):
    paths = files["monthly"]
    repo = Repo(tmp_path / "repo", files["root"])
    session = repo.writable()
    vzdask.open_virtual_mfdataset(paths[:6]).vz.to_icechunk(session)
    session.commit("January to June")
    session = repo.writable()
    vzdask.open_virtual_mfdataset(paths[6:]).vz.to_icechunk(session, mode="a", append_dim="time")
    session.commit("July to December")
    assert_store_holds(_store(repo), paths, DAYS)  # xarray's dask chunks are the files


def test_icechunk_append_turns_a_regular_grid_rectilinear(files, tmp_path, rectilinear_reads):
    """January alone is one regular chunk; appending February (29 days) makes the grid rectilinear."""
    paths = files["monthly"][:3]
    repo = Repo(tmp_path / "repo", files["root"])
    session = repo.writable()
    vzdask.open_virtual_dataset(paths[0]).vz.to_icechunk(session)
    session.commit("January")
    for path in paths[1:]:
        session = repo.writable()
        vzdask.open_virtual_dataset(path).vz.to_icechunk(session, mode="a", append_dim="time")
        session.commit(path)
    assert_store_holds(_store(repo), paths, DAYS[:3])


def test_icechunk_mixed_chunking_with_the_partial_last_chunk(files, tmp_path, rectilinear_reads):
    paths = files["mixed"]
    repo = Repo(tmp_path / "repo", files["root"])
    session = repo.writable()
    vzdask.open_virtual_mfdataset(paths).vz.to_icechunk(session, commit="mixed")
    assert_store_holds(_store(repo), paths, MIXED_EDGES[:-1] + (1,))
    # appending after the partial chunk is refused before anything is written
    session = repo.writable()
    more = vzdask.open_virtual_dataset(files["regular"][0])
    with pytest.raises(ValueError, match=r"the stored length 119 is not a multiple of the chunk size|partial"):
        more.vz.to_icechunk(session, mode="a", append_dim="time")


def test_icechunk_from_persisted_chunks(files, tmp_path, rectilinear_reads):
    """Persisted (inlined) chunks of a rectilinear grid are written as native Icechunk chunks."""
    paths = files["monthly"][:4]
    repo = Repo(tmp_path / "repo", files["root"])
    persisted = vzdask.open_virtual_mfdataset(paths).vz.persist()
    session = repo.writable()
    persisted.vz.to_icechunk(session, commit="persisted")
    assert_store_holds(_store(repo), paths, DAYS[:4])


def test_parsed_and_persisted_on_a_cluster_then_written_from_the_workers(files, tmp_path, dask_client,
                                                                         rectilinear_reads):
    """On a LocalCluster (processes): parsed there, persisted there (blocks held by the workers), then
    written to Icechunk by the workers that hold them; the held blocks' chunks land at their grid positions."""
    paths = files["monthly"]
    virtual = vzdask.open_virtual_mfdataset(paths, parallel=dask_client)
    with dask.config.set({"vzdask.task-bytes": 2000}):  # several blocks of several months each
        persisted = virtual.vz.persist()
    held = persisted["tas"].data
    assert not held.is_gathered and held.persisted.layout.nblocks[0] > 1
    repo = Repo(tmp_path / "repo", files["root"])
    persisted.vz.to_icechunk(repo.writable(), commit="from the workers")
    assert not held.is_gathered  # written where the blocks are
    assert_store_holds(_store(repo), paths, DAYS)


def test_a_rectilinear_zarr_store_is_virtualized_without_zarrs_flag(tmp_path):
    """A zarr v3 store written with a rectilinear grid (zarr's own writer) parses whatever the flag says."""
    values = np.arange(15 * 4, dtype="f4").reshape(15, 4)
    with zarr.config.set({"array.rectilinear_chunks": True}):
        group = zarr.open_group(tmp_path / "store.zarr", mode="w", zarr_format=3)
        array = group.create_array("v", shape=(15, 4), chunks=[[3, 7, 5], [2, 2]], dtype="f4",
                                   dimension_names=["t", "x"])
        array[:] = values
    with zarr.config.set({"array.rectilinear_chunks": False}):
        ds = vzdask.open_virtual_dataset(str(tmp_path / "store.zarr"))
        assert ds["v"].data.chunk_sizes == ((3, 7, 5), 2)
        np.testing.assert_array_equal(ds["v"].data.compute(), values)
        np.testing.assert_array_equal(ds["v"].data.to_dask_array(chunks=(4, 3)).compute(), values)


def test_rectilinear_along_an_inner_axis(tmp_path):
    """Files over (lat, time): the grid is rectilinear along axis 1, read at any dask chunking."""
    paths, start = [], 0
    for i, n in enumerate([3, 5, 4]):
        path = tmp_path / f"inner{i}.nc"
        with netCDF4.Dataset(path, "w") as nc:
            nc.createDimension("lat", 2)
            nc.createDimension("time", n)
            nc.createVariable("time", "i4", ("time",))[:] = np.arange(start, start + n)
            nc.createVariable("v", "f8", ("lat", "time"), zlib=True, chunksizes=(1, n))[:] = (
                np.arange(2 * n).reshape(2, n) + 100 * i)
        paths.append(str(path))
        start += n
    ref = reference(paths)
    virtual = vzdask.open_virtual_mfdataset(paths)
    assert virtual["v"].data.chunk_sizes == (1, (3, 5, 4))
    xr.testing.assert_identical(virtual.vz.compute(), ref)
    xr.testing.assert_identical(virtual.vz.persist().vz.compute(), ref)
    np.testing.assert_array_equal(virtual["v"].data[:, 3:8].compute(), ref["v"].values[:, 3:8])
    for chunks in ((1, 2), "auto", (2, 7)):
        np.testing.assert_array_equal(virtual["v"].data.to_dask_array(chunks=chunks).compute(), ref["v"].values)
    with dask.config.set({"vzdask.task-bytes": 1}):
        analysis = vzdask.open_mfdataset(paths)
    assert analysis["v"].data.chunks == ((1, 1), (3, 5, 4))
    xr.testing.assert_identical(analysis.compute(), ref)


def test_the_xarray_engine_reads_a_rectilinear_store(files):
    """engine="vzdask" on a ManifestStore whose time axis is rectilinear: values, and task blocks as dask chunks."""
    paths = files["mixed"]
    virtual = vzdask.open_virtual_mfdataset(paths)
    store = vzdask.ManifestStore(vzdask.ManifestGroup(
        {name: virtual[name].data for name in ("tas", "pr")}, attributes={}))
    expected = reference(paths)
    import dask

    for chunks, task_bytes in ((None, "64MiB"), ({}, "64MiB"), (None, "1kB")):  # 1 kB: several blocks per read
        with dask.config.set({"vzdask.task-bytes": task_bytes}), \
                xr.open_dataset(store, engine="vzdask", chunks=chunks) as opened:
            for name in ("tas", "pr"):
                np.testing.assert_array_equal(opened[name].values, expected[name].values)
                # a window across the files' chunk edges, read through the load tasks
                np.testing.assert_array_equal(opened[name][27:64].values, expected[name][27:64].values)
