"""Collections that make no one virtual dataset (issue 17, items 2 and 3 for analysis; clear errors when virtual).

Monthly files of a leap year (31, 29, 31, 30 ... days) chunked along time by
1, 5, 10 or contiguous; files chunked differently from each other; three
years of daily files with a variable in one year only; a ``concat_dim`` no
file has. ``vzdask.open_mfdataset`` must give what ``xr.open_mfdataset``
gives, value by value; ``open_virtual_mfdataset`` either combines them or
raises a ``CombineError`` naming the variable (or dimension) and the files.
"""

from __future__ import annotations

import calendar
import datetime
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import dask
import dask.array as da
import netCDF4
import numpy as np
import pytest
import xarray as xr

import vzdask
from vzdask._compat import XARRAY_VERSION
from vzdask.errors import CombineError

NLAT, NLON = 6, 8
YEAR = 2024  # a leap year: February has 29 days


# --------------------------------------------------------------------------- #
# files
# --------------------------------------------------------------------------- #


def write_file(path: Path, *, start: int, n: int, chunk: int | None, seed: int, time_units: str,
               extra: bool = False, time_dim: str = "time", packing: float = 0.1) -> None:
    """One netCDF4 file: masked float ``tas`` and packed int16 ``pr`` over (time, lat, lon).

    ``chunk``: time chunk size (None: contiguous). ``extra``: also an ``evap`` variable.
    """
    rng = np.random.default_rng(seed)
    with netCDF4.Dataset(path, "w") as nc:
        nc.createDimension(time_dim, n if chunk is None else None)  # contiguous needs a fixed dimension
        nc.createDimension("lat", NLAT)
        nc.createDimension("lon", NLON)
        t = nc.createVariable(time_dim, "f8", (time_dim,))
        t.units, t.calendar, t.standard_name = time_units, "standard", "time"
        t[:] = np.arange(start, start + n, dtype="f8")
        lat = nc.createVariable("lat", "f4", ("lat",))
        lat.units = "degrees_north"
        lat[:] = np.linspace(-50, 50, NLAT)
        lon = nc.createVariable("lon", "f4", ("lon",))
        lon.units = "degrees_east"
        lon[:] = np.arange(NLON) * 45.0
        dims = (time_dim, "lat", "lon")
        layout = {"contiguous": True} if chunk is None else {"chunksizes": (chunk, NLAT, NLON), "zlib": True}
        tas = nc.createVariable("tas", "f4", dims, fill_value=np.float32(-999), **layout)
        tas.units = "K"
        values = (250 + 50 * rng.random((n, NLAT, NLON))).astype("f4")
        tas[:] = np.ma.masked_where(rng.random(values.shape) < 0.05, values)
        pr = nc.createVariable("pr", "i2", dims, fill_value=np.int16(-1), **layout)
        pr.setncatts({"units": "mm", "scale_factor": np.float32(packing), "add_offset": np.float32(0.0)})
        pr[:] = (20 * rng.random((n, NLAT, NLON))).astype("f4")
        if extra:
            evap = nc.createVariable("evap", "f4", dims, fill_value=np.float32(-999), **layout)
            evap.units = "mm"
            evap[:] = rng.random((n, NLAT, NLON)).astype("f4")
        nc.title = "vzdask uneven collection test"


def monthly(root: Path, chunks) -> list[str]:
    """12 monthly files of ``YEAR``; ``chunks(month)``: that file's time chunk size (None: contiguous)."""
    root.mkdir(parents=True, exist_ok=True)
    paths, start = [], 0
    for month in range(1, 13):
        n = calendar.monthrange(YEAR, month)[1]
        path = root / f"tas_{YEAR}{month:02d}.nc"
        write_file(path, start=start, n=n, chunk=chunks(month), seed=month, time_units=f"days since {YEAR}-01-01")
        paths.append(str(path))
        start += n
    return paths


@pytest.fixture(scope="module")
def collections(tmp_path_factory):
    root = tmp_path_factory.mktemp("uneven")
    out = {f"chunk{c}": monthly(root / f"chunk{c}", lambda m, c=c: c) for c in (1, 5, 10)}
    out["contiguous"] = monthly(root / "contiguous", lambda m: None)
    out["mixed"] = monthly(root / "mixed", lambda m: 5 if m % 2 else 10)
    daily = root / "daily"
    daily.mkdir()
    out["daily"] = []
    for year in (2001, 2002, 2003):
        path = daily / f"day_{year}.nc"
        start = (datetime.date(year, 1, 1) - datetime.date(2000, 1, 1)).days
        write_file(path, start=start, n=365, chunk=73, seed=year, time_units="days since 2000-01-01",
                   extra=year == 2002)
        out["daily"].append(str(path))
    repacked = root / "repacked"  # the same variable packed with another scale factor in one file
    repacked.mkdir()
    out["repacked"] = []
    for i in range(3):
        path = repacked / f"r_{i}.nc"
        write_file(path, start=10 * i, n=10, chunk=5, seed=i, time_units="days since 2000-01-01",
                   packing=0.1 if i != 1 else 0.05)
        out["repacked"].append(str(path))
    renamed = root / "renamed"  # the second file names its time dimension "t"
    renamed.mkdir()
    out["renamed"] = []
    shifted = root / "shifted"  # the second file's latitudes are shifted by one degree
    shifted.mkdir()
    out["shifted"] = []
    for i in range(3):
        path = shifted / f"s_{i}.nc"
        write_file(path, start=10 * i, n=10, chunk=5, seed=i, time_units="days since 2000-01-01")
        if i == 1:
            with netCDF4.Dataset(path, "a") as nc:
                nc["lat"][:] = nc["lat"][:] + 1
        out["shifted"].append(str(path))
    for i in range(3):
        path = renamed / f"n_{i}.nc"
        write_file(path, start=10 * i, n=10, chunk=5, seed=i, time_units="days since 2000-01-01",
                   time_dim="t" if i == 1 else "time")
        out["renamed"].append(str(path))
    return out


@pytest.fixture(scope="module")
def process_pool():
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        yield pool


def reference(paths, **kwargs) -> xr.Dataset:
    with xr.open_mfdataset(paths, **kwargs) as ds:
        return ds.load()


def assert_like_xarray(paths, **kwargs) -> xr.Dataset:
    """``vzdask.open_mfdataset`` is dask-backed and, computed, identical to ``xr.open_mfdataset`` (dtypes too)."""
    ds = vzdask.open_mfdataset(paths, **kwargs)
    ref = reference(paths, **{k: v for k, v in kwargs.items() if k != "parallel"})
    for name in ref.data_vars:
        assert isinstance(ds[name].data, da.Array), name
    got = ds.compute()
    xr.testing.assert_identical(got, ref)
    for name, var in ref.variables.items():
        assert got[name].dtype == var.dtype, name
    return ds


# --------------------------------------------------------------------------- #
# files of different lengths and chunkings: analysis
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("case", ["chunk1", "chunk5", "chunk10", "contiguous", "mixed"])
def test_monthly_files_open_for_analysis_like_xarray(collections, case):
    paths = collections[case]
    ds = assert_like_xarray(paths)
    assert ds.sizes["time"] == 366
    assert int(ds["tas"].isnull().sum()) > 0  # the masked points are there (not vacuous)
    days = [calendar.monthrange(YEAR, m)[1] for m in range(1, 13)]
    if case == "contiguous":
        # one manifest with a rectilinear grid along time (one chunk per file): with a block per chunk,
        # the dask chunks are the months
        with dask.config.set({"vzdask.task-bytes": 1}):
            assert vzdask.open_mfdataset(paths)["tas"].data.chunks[0] == tuple(days)
    elif case != "chunk1":
        # joined file by file: no dask block crosses a file boundary
        bounds = set(np.cumsum(days).tolist())
        assert bounds <= set(np.cumsum(ds["tas"].data.chunks[0]).tolist())


def test_explicit_chunks_and_nested_combine(collections):
    paths = collections["chunk5"]
    ds = assert_like_xarray(paths, combine="nested", concat_dim="time")
    small = vzdask.open_mfdataset(paths, chunks={"time": 7})
    assert max(small["tas"].data.chunks[0]) <= 7
    xr.testing.assert_identical(small.compute(), reference(paths))
    assert ds.sizes["time"] == 366


def test_uniform_files_still_take_the_one_manifest_path(collections):
    """Files that combine into one manifest (time chunked by 1) stay one virtual dataset."""
    virtual = vzdask.open_virtual_mfdataset(collections["chunk1"])
    assert virtual["tas"].shape == (366, NLAT, NLON)
    assert "tas" in virtual.vz.virtual_variables
    xr.testing.assert_identical(xr.decode_cf(virtual.vz.compute()), reference(collections["chunk1"]))


@pytest.mark.parametrize("parallel", ["threads", "processes", "client"])
def test_analysis_fallback_in_every_parallel_mode(collections, parallel, process_pool, request):
    paths = collections["chunk5"]  # partial chunks inside: no one manifest (contiguous files now make one)
    if parallel == "client":
        parallel = request.getfixturevalue("dask_cluster")
        assert_like_xarray(paths, parallel=parallel)
    else:
        with dask.config.set(pool=process_pool):
            assert_like_xarray(paths, parallel=parallel)


def test_encodings_that_differ_between_files_open_for_analysis(collections):
    """Per-file decoding: each file unpacked with its own scale factor, as xarray does."""
    paths = collections["repacked"]
    with pytest.raises(vzdask.errors.CFEncodingMismatchError):
        vzdask.open_virtual_mfdataset(paths)
    assert_like_xarray(paths)


# --------------------------------------------------------------------------- #
# files of different lengths and chunkings: the virtual path's errors
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("parallel", [None, "processes", "client"])
@pytest.mark.parametrize("case", ["chunk5", "chunk10"])
def test_partial_chunk_inside_is_an_error_naming_variable_files_and_shapes(collections, case, parallel,
                                                                          process_pool, request):
    paths = collections[case]
    chunk = int(case[len("chunk"):])
    if parallel == "client":
        parallel = request.getfixturevalue("dask_cluster")
    with dask.config.set(pool=process_pool), pytest.raises(CombineError) as info:
        vzdask.open_virtual_mfdataset(paths, parallel=parallel)
    message = str(info.value)
    assert "variable 'tas'" in message or "variable 'pr'" in message
    assert paths[0] in message and paths[1] in message
    assert f"shape [31, {NLAT}, {NLON}], chunks [{chunk}, {NLAT}, {NLON}]" in message
    assert "vzdask.open_mfdataset" in message and "IndexError" not in message


def test_contiguous_files_combine_virtually_with_a_rectilinear_grid(collections):
    """One chunk per file, files of 31, 29, 31... days: one virtual dataset (tests/test_rectilinear.py: the rest)."""
    paths = collections["contiguous"]
    virtual = vzdask.open_virtual_mfdataset(paths)
    days = tuple(calendar.monthrange(YEAR, m)[1] for m in range(1, 13))
    assert virtual["tas"].data.chunk_sizes == (days, NLAT, NLON)
    xr.testing.assert_identical(xr.decode_cf(virtual.vz.compute()), reference(paths))


def test_files_chunked_differently_with_a_partial_chunk_inside_is_an_error_naming_both(collections):
    """Chunks of 5 and 10 days could share a rectilinear grid, but January (31 days by 5) ends in a partial chunk."""
    paths = collections["mixed"]
    with pytest.raises(CombineError) as info:
        vzdask.open_virtual_mfdataset(paths, combine="nested", concat_dim="time")
    message = str(info.value)
    assert "partial" in message and ("variable 'tas'" in message or "variable 'pr'" in message)
    assert f"{paths[0]} (shape [31, {NLAT}, {NLON}], chunks [5, {NLAT}, {NLON}])" in message
    assert f"{paths[1]} (shape [29, {NLAT}, {NLON}], chunks [10, {NLAT}, {NLON}])" in message


# --------------------------------------------------------------------------- #
# variables that come and go
# --------------------------------------------------------------------------- #


COMBINE_OPTIONS = [
    {},
    {"compat": "override", "coords": "minimal"},
    {"join": "inner"},
    {"data_vars": "minimal"},
    {"combine": "nested", "concat_dim": "time"},
    {"combine": "nested", "concat_dim": "time", "join": "outer", "compat": "no_conflicts"},
]


@pytest.mark.parametrize("options", COMBINE_OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "defaults")
def test_variable_in_one_year_only_opens_for_analysis_like_xarray(collections, options):
    paths = collections["daily"]
    ds = assert_like_xarray(paths, **options)
    if "evap" in ds and options.get("join") != "inner":
        # padded with NaN outside 2002, as xarray pads
        evap = ds["evap"].compute()
        assert bool(evap.sel(time="2001").isnull().all()) and not bool(evap.sel(time="2002").isnull().any())


def test_variable_in_one_year_only_is_padded_with_missing_chunks(collections, tmp_path):
    """``evap`` (float32, _FillValue -999) is in the middle year only: the other years get all-missing chunks,
    which read as the fill value and decode to the NaN xr.open_mfdataset pads with; written to Icechunk and
    read back by icechunk + xarray alike."""
    from tests.icechunk_repos import Repo

    paths = collections["daily"]
    expected = reference(paths)
    assert np.isnan(expected["evap"].values).any() and not np.isnan(expected["evap"].values).all()
    for options in ({}, {"combine": "nested", "concat_dim": "time"}):
        virtual = vzdask.open_virtual_mfdataset(paths, **options)
        manifest = virtual["evap"].data.manifest
        assert manifest.count()["missing"] > 0 and manifest.count()["virtual"] > 0
        xr.testing.assert_identical(xr.decode_cf(virtual.vz.compute()), expected)
    repo = Repo(tmp_path / "repo", str(Path(paths[0]).parent))
    session = repo.writable()
    virtual.vz.to_icechunk(session)
    session.commit("three years")
    back = repo.read().load()
    np.testing.assert_array_equal(back["evap"].values, expected["evap"].values)
    np.testing.assert_array_equal(back["tas"].values, expected["tas"].values)


@pytest.mark.parametrize("parallel", ["processes", "client"])
def test_a_variable_whole_parse_tasks_lack_is_padded_at_the_next_level(tmp_path, parallel, process_pool, request):
    """Ten files, ``evap`` in two of them: parsed in batches in other processes (or on a cluster) and combined
    there first, the batches that lack it entirely are padded where the batches are combined."""
    paths = []
    for i in range(10):
        path = tmp_path / f"d_{i}.nc"
        write_file(path, start=4 * i, n=4, chunk=2, seed=i, time_units="days since 2000-01-01", extra=i in (3, 4))
        paths.append(str(path))
    expected = reference(paths)
    if parallel == "client":
        parallel = request.getfixturevalue("dask_cluster")
    for options in ({}, {"combine": "nested", "concat_dim": "time"}):
        with dask.config.set(pool=process_pool):
            virtual = vzdask.open_virtual_mfdataset(paths, parallel=parallel, **options)
        counts = virtual["evap"].data.manifest.count()
        assert counts["virtual"] == 4 and counts["missing"] == 16
        xr.testing.assert_identical(xr.decode_cf(virtual.vz.compute()), expected)


def test_a_missing_variable_padding_cannot_give_exactly_is_a_virtual_error_naming_it(tmp_path):
    """An integer variable xarray would pad with NaN (promoting it to float) cannot be all-missing chunks."""
    paths = []
    for i in range(3):
        path = tmp_path / f"i_{i}.nc"
        with netCDF4.Dataset(path, "w") as nc:
            nc.createDimension("time", 4)
            nc.createVariable("time", "f8", ("time",))[:] = np.arange(4) + 4 * i
            nc["time"].units = "days since 2000-01-01"
            nc.createVariable("a", "f4", ("time",), chunksizes=(4,))[:] = np.arange(4) + i
            if i == 1:
                nc.createVariable("count", "i4", ("time",), chunksizes=(4,))[:] = np.arange(4)
        paths.append(str(path))
    with pytest.raises(CombineError) as info:
        vzdask.open_virtual_mfdataset(paths)
    message = str(info.value)
    assert "variable 'count'" in message and paths[0] in message and paths[2] in message
    assert "drop_variables=['count']" in message and "vzdask.open_mfdataset" in message
    virtual = vzdask.open_virtual_mfdataset(paths, drop_variables=["count"])  # the way out
    xr.testing.assert_identical(xr.decode_cf(virtual.vz.compute()), reference(paths, drop_variables=["count"]))
    assert_like_xarray(paths)  # for analysis: xarray's padding


def test_concat_dim_no_file_has(collections):
    paths = collections["chunk1"]
    assert_like_xarray(paths, combine="nested", concat_dim="nosuchdim")
    with pytest.raises(CombineError) as info:
        vzdask.open_virtual_mfdataset(paths, combine="nested", concat_dim="nosuchdim")
    message = str(info.value)
    assert "concat_dim 'nosuchdim'" in message and paths[0] in message
    assert "IndexError" not in message


def test_concat_dim_one_file_lacks(collections):
    paths = collections["renamed"]
    with pytest.raises(CombineError) as info:
        vzdask.open_virtual_mfdataset(paths, combine="nested", concat_dim="time")
    message = str(info.value)
    assert "concat_dim 'time'" in message and paths[1] in message and paths[0] not in message.split("(")[0]


def test_combine_options_not_given_are_xarrays_own(collections):
    """Under xarray's coming defaults (join="exact"...) both refuse the daily collection, the same way."""
    paths = collections["daily"]
    with xr.set_options(use_new_combine_kwarg_defaults=True):
        with pytest.raises(ValueError) as ours:
            vzdask.open_mfdataset(paths)
        with pytest.raises(ValueError) as theirs:
            xr.open_mfdataset(paths)
    assert type(ours.value) is type(theirs.value)
    assert str(ours.value) == str(theirs.value)


@pytest.mark.parametrize("options", [{}, {"combine": "nested", "concat_dim": "time"}], ids=["by_coords", "nested"])
def test_coordinate_that_differs_between_files(collections, options):
    """Aligning the files would reindex virtual arrays: an error naming the coordinate and two files."""
    paths = collections["shifted"]
    if options:
        assert_like_xarray(paths, **options)
    else:  # by coordinates, xarray itself refuses them (lat is not monotonic across files): so do we
        for open_ in (vzdask.open_mfdataset, xr.open_mfdataset):
            with pytest.raises(ValueError, match="monotonic global indexes along dimension lat"):
                open_(paths)
    with pytest.raises(CombineError) as info:
        vzdask.open_virtual_mfdataset(paths, **options)
    message = str(info.value)
    assert "coordinate 'lat'" in message and paths[0] in message and paths[1] in message
    assert "join='override'" in message
    if options:  # the way out it names works
        virtual = vzdask.open_virtual_mfdataset(paths, join="override", **options)
        xr.testing.assert_identical(xr.decode_cf(virtual.vz.compute()), reference(paths, join="override", **options))


def test_unexplained_indexing_failure_is_still_a_combine_error(collections, monkeypatch):
    """Last resort: a failure the signatures do not explain never leaves as an IndexError from the virtual arrays."""
    from vzdask import mfdataset

    paths = collections["daily"]
    monkeypatch.setattr(mfdataset, "explain_combine_failure", lambda *args: None)
    monkeypatch.setattr(mfdataset, "pad_missing_variables", lambda datasets, *args: datasets)  # evap stays absent
    with pytest.raises(CombineError) as info:
        vzdask.open_virtual_mfdataset(paths)
    message = str(info.value)
    assert paths[0] in message and "join='outer'" in message and "vzdask.open_mfdataset" in message
    assert isinstance(info.value.__cause__, IndexError)


def test_strings_of_different_widths_combine_and_are_written_whole(tmp_path):
    """Variable-length strings are loaded (their bytes are in the manifest): '<U2' and '<U4' files combine,
    and the writers keep the longest strings (the first file's width used to cut them: 'cccc' -> 'cc')."""
    import fsspec
    import icechunk

    paths = []
    for i, words in enumerate([["a", "bb"], ["cccc", "d"]]):
        path = tmp_path / f"s{i}.nc"
        with netCDF4.Dataset(path, "w") as nc:
            nc.createDimension("t", None)
            nc.createVariable("t", "f8", ("t",))[:] = [2 * i, 2 * i + 1]
            nc.createVariable("name", str, ("t",))[:] = np.array(words, dtype=object)
        paths.append(str(path))
    with xr.open_mfdataset(paths, engine="netcdf4") as expected:
        words = [str(w) for w in expected["name"].values.tolist()]
    ds = vzdask.open_virtual_mfdataset(paths)
    assert ds["name"].values.tolist() == words == ["a", "bb", "cccc", "d"]
    refs = tmp_path / "refs.json"
    ds.vz.to_kerchunk(refs, format="json")
    fs = fsspec.filesystem("reference", fo=str(refs))
    with xr.open_dataset(fs.get_mapper(""), engine="zarr", backend_kwargs={"consolidated": False}) as back:
        assert [str(w) for w in back["name"].values.tolist()] == words
    repo = icechunk.Repository.create(icechunk.in_memory_storage())
    session = repo.writable_session("main")
    ds.vz.to_icechunk(session, commit="strings")
    with xr.open_zarr(repo.readonly_session("main").store, consolidated=False) as back:
        assert [str(w) for w in back["name"].values.tolist()] == words


def _timed_file(path, times, values=None) -> str:
    with netCDF4.Dataset(path, "w") as nc:
        nc.createDimension("time", None)
        nc.createDimension("x", 3)
        t = nc.createVariable("time", "f8", ("time",))
        t.units = "days since 2000-01-01"
        t[:] = times
        nc.createVariable("v", "f4", ("time", "x"))[:] = np.ones((len(times), 3)) if values is None else values
    return str(path)


@pytest.mark.parametrize("parallel", [None, "processes", "client"])
def test_overlapping_files_are_refused_naming_them(tmp_path, parallel, request):
    """[0, 1] and [1, 2]: xr.open_mfdataset keeps day 1 twice; a virtual dataset refuses (issue 17, bad input),
    naming both files also when they were parsed in other processes (by the range each file's signature gives)."""
    if parallel == "client":
        parallel = request.getfixturevalue("dask_cluster")
    a = _timed_file(tmp_path / "a.nc", [0, 1])
    b = _timed_file(tmp_path / "b.nc", [1, 2])
    c = _timed_file(tmp_path / "c.nc", [2, 3])
    with pytest.raises(CombineError) as info:
        vzdask.open_virtual_mfdataset([b, a], parallel=parallel)
    message = str(info.value)
    assert "the files overlap along 'time': 2000-01-02 00:00:00 is in " in message
    assert f"in {a} and {b}," in message or f"in {b} and {a}," in message
    with xr.open_mfdataset([a, b], engine="netcdf4") as expected:  # the analysis path opens what xarray opens
        xr.testing.assert_identical(vzdask.open_mfdataset([b, a], parallel=parallel).load(), expected.load())
    ds = vzdask.open_virtual_mfdataset([c, a], parallel=parallel)  # no overlap: fine
    assert ds.sizes["time"] == 4


@pytest.mark.parametrize("parallel", [None, "processes", "client"])
def test_nested_combine_keeps_xarrays_order_and_refuses_only_repeated_values(tmp_path, parallel, request):
    """combine="nested" concatenates as given, as xarray does: out of order is kept (for analysis and
    virtual); a value held twice is what xr.open_mfdataset keeps and a virtual dataset refuses, naming both."""
    if parallel == "client":
        parallel = request.getfixturevalue("dask_cluster")
    a = _timed_file(tmp_path / "a.nc", [0, 1], np.arange(6.0).reshape(2, 3))
    b = _timed_file(tmp_path / "b.nc", [1, 2], np.arange(6.0, 12).reshape(2, 3))
    c = _timed_file(tmp_path / "c.nc", [2, 3], np.arange(12.0, 18).reshape(2, 3))
    nested = {"combine": "nested", "concat_dim": "time"}
    for order in ([c, a], [a, b]):
        with xr.open_mfdataset(order, engine="netcdf4", **nested) as expected:
            expected = expected.load()
        xr.testing.assert_identical(vzdask.open_mfdataset(order, parallel=parallel, **nested).load(), expected)
    virtual = vzdask.open_virtual_mfdataset([c, a], parallel=parallel, **nested)  # out of order: as given
    with xr.open_mfdataset([c, a], engine="netcdf4", **nested) as expected:
        xr.testing.assert_identical(xr.decode_cf(virtual.vz.compute()), expected.load())
    with pytest.raises(CombineError, match=rf"overlap along 'time': 2000-01-02 00:00:00 is in {a} and {b}, so the "
                                           r"combined 'time' would hold it twice"):
        vzdask.open_virtual_mfdataset([a, b], parallel=parallel, **nested)


@pytest.mark.parametrize("parallel", [None, "processes", "client"])
def test_interleaving_files_name_both(tmp_path, parallel, request):
    """[0, 1, 2] and [1.5, 3]: xarray cannot order them ("not monotonic"); the error names the two files."""
    if parallel == "client":
        parallel = request.getfixturevalue("dask_cluster")
    a = _timed_file(tmp_path / "a.nc", [0, 1, 2])
    d = _timed_file(tmp_path / "d.nc", [1.5, 3])
    with pytest.raises(CombineError, match=rf"cannot order the files by 'time': the ranges of {a} and {d} "
                                           r"interleave\..*combine='nested', concat_dim='time'"):
        vzdask.open_virtual_mfdataset([d, a], parallel=parallel)


def test_files_that_cannot_be_ordered_name_the_coordinate_and_files(tmp_path):
    a = _timed_file(tmp_path / "a.nc", [0, 1])
    down = _timed_file(tmp_path / "down.nc", [5, 4])  # decreasing where the other increases
    with pytest.raises(CombineError, match=rf"cannot order the files by 'time': .*\({a}, {down}\).*"
                                           r"combine='nested', concat_dim='time'"):
        vzdask.open_virtual_mfdataset([a, down])


# --------------------------------------------------------------------------- #
# encoding["chunks"] of the combined result (not the first file's)
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("parallel", [None, "processes"])
def test_chunk_encoding_is_the_combined_grid_as_xr_open_zarr_shows_it(collections, tmp_path, parallel, process_pool):
    """Monthly files one chunk each: the virtual ``chunks`` list every month (not January's 31) and
    ``xr.open_zarr`` of the written Icechunk repository shows the same; time (loaded) is written whole."""
    import zarr

    from tests.icechunk_repos import Repo

    paths = collections["contiguous"]
    days = tuple(calendar.monthrange(YEAR, m)[1] for m in range(1, 13))
    with dask.config.set(pool=process_pool) if parallel else dask.config.set({}):
        virtual = vzdask.open_virtual_mfdataset(paths, parallel=parallel)
    for name in ("tas", "pr"):
        assert virtual[name].encoding["chunks"] == (days, NLAT, NLON)
        assert virtual[name].encoding["preferred_chunks"] == {"time": days, "lat": NLAT, "lon": NLON}
    assert virtual["time"].encoding["chunks"] == (366,)  # each file held its times in one chunk
    assert virtual["lat"].encoding["chunks"] == (NLAT,)
    repo = Repo(tmp_path / "repo", str(Path(paths[0]).parent))
    session = repo.writable()
    virtual.vz.to_icechunk(session)
    session.commit("a year")
    with zarr.config.set({"array.rectilinear_chunks": True}):
        stored = zarr.open_group(repo.open().readonly_session("main").store, mode="r")
        assert stored["tas"].read_chunk_sizes[0] == days
        with xr.open_mfdataset(paths, engine="netcdf4", decode_cf=False) as raw:  # the files' stored numbers
            np.testing.assert_array_equal(stored["tas"][:], raw["tas"].values)
        assert stored["time"].read_chunk_sizes[0] == (366,)
        if XARRAY_VERSION >= (2026, 9):  # 2025.8 (the floor) asks zarr for Array.chunks, which a rectilinear grid lacks
            back = repo.read()
            for name in ("tas", "pr", "time", "lat"):
                assert back[name].encoding["chunks"] == virtual[name].encoding["chunks"], name
            assert_like_from_zarr(back, reference(paths))
    # for analysis: the stored grid in preferred_chunks; no rectilinear "chunks", which to_zarr would refuse
    analysis = vzdask.open_mfdataset(paths)
    assert analysis["tas"].encoding["preferred_chunks"] == {"time": days, "lat": NLAT, "lon": NLON}
    assert "chunks" not in analysis["tas"].encoding
    analysis.to_zarr(tmp_path / "copy.zarr", consolidated=False)
    assert_like_from_zarr(xr.open_zarr(tmp_path / "copy.zarr", consolidated=False), reference(paths))


def assert_like_from_zarr(back: xr.Dataset, expected: xr.Dataset) -> None:
    """Identical but for ``pr``'s float64: zarr's JSON attributes hold its float32 scale_factor as a float64."""
    back = back.load()
    xr.testing.assert_identical(back.assign(pr=back["pr"].astype("f4")), expected)


def test_chunk_encoding_of_regular_and_mixed_combines(collections, tmp_path):
    """A regular combine keeps one size per axis (a partial last chunk too); files chunked 5 and 10 list them."""
    regular = [str(tmp_path / f"r{i}.nc") for i in range(3)]
    for i, n in enumerate((4, 4, 2)):  # each file one chunk of 4 days, the last one 2
        write_file(Path(regular[i]), start=4 * i, n=n, chunk=None, seed=i, time_units="days since 2000-01-01")
    virtual = vzdask.open_virtual_mfdataset(regular)
    assert virtual["tas"].encoding["chunks"] == (4, NLAT, NLON)
    assert virtual["tas"].encoding["preferred_chunks"] == {"time": 4, "lat": NLAT, "lon": NLON}
    assert virtual["time"].encoding["chunks"] == (10,)
    analysis = vzdask.open_mfdataset(regular)
    assert analysis["tas"].encoding["chunks"] == (4, NLAT, NLON)
    mixed = [str(tmp_path / f"m{i}.nc") for i in range(3)]
    for i, (n, chunk) in enumerate([(10, 5), (10, 10), (10, 2)]):
        write_file(Path(mixed[i]), start=10 * i, n=n, chunk=chunk, seed=i, time_units="days since 2000-01-01")
    virtual = vzdask.open_virtual_mfdataset(mixed)
    assert virtual["tas"].encoding["chunks"] == ((5, 5, 10, 2, 2, 2, 2, 2), NLAT, NLON)
    assert virtual["time"].encoding["chunks"] == (30,)  # netCDF4's 512 per file: one chunk of 30
    xr.testing.assert_identical(xr.decode_cf(virtual.vz.compute()), reference(mixed))


def test_chunk_encoding_where_files_are_joined_file_by_file(collections):
    """Monthly files chunked 5 make no one grid: for analysis no ``chunks`` claims January's."""
    paths = collections["chunk5"]
    analysis = vzdask.open_mfdataset(paths)
    assert "chunks" not in analysis["tas"].encoding and "preferred_chunks" not in analysis["tas"].encoding
    assert analysis["lat"].encoding.get("chunks") in (None, (NLAT,))
