"""open_virtual_mfdataset / open_mfdataset over many netCDF4 files.

Every parallel mode (here, threads, processes, a distributed cluster) must
give the same references and the same values as ``xr.open_mfdataset``;
CF encodings that differ between files, unreadable files and dying workers
must end in a clear error or a complete, correct result.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import signal
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from types import SimpleNamespace

import dask
import netCDF4
import numpy as np
import pytest
import xarray as xr

import vzdask  # noqa: F401  (registers ds.vz)
from vzdask import mfdataset
from vzdask.combine import CFEncodingMismatchError
from vzdask.manifests.array import ManifestArray
from vzdask.mfdataset import FileOpenError, open_mfdataset, open_virtual_mfdataset

distributed = pytest.importorskip("distributed")

NFILES, NT, NLAT, NLON = 20, 4, 18, 36
CHUNKS = (1, 9, 18)
TIME_UNITS = "hours since 2000-01-01"
LAT = np.linspace(-85, 85, NLAT, dtype="f4")
DATA_VARS = ("temp", "precip")
#: key prefixes of the tasks open_virtual_mfdataset submits to a cluster
TASK_PREFIXES = ("_open_batch", "_signatures_of", "_dataset_at", "_combine_parsed", "_combine_batch")


# --------------------------------------------------------------------------- #
# files
# --------------------------------------------------------------------------- #


def write_nc(path, *, times, lat=LAT, time_units=TIME_UNITS, seed=0, temp_attrs=None, precip_attrs=None,
             fill_value=-999.0):
    """One netCDF4 file: temp (with _FillValue and masked points) and packed precip over (time, lat, lon)."""
    times = np.asarray(times, dtype="f8")
    rng = np.random.default_rng(seed)
    with netCDF4.Dataset(path, "w") as nc:
        nc.createDimension("time", None)
        nc.createDimension("lat", len(lat))
        nc.createDimension("lon", NLON)
        t = nc.createVariable("time", "f8", ("time",))
        t.units, t.calendar, t.standard_name = time_units, "standard", "time"
        t[:] = times
        la = nc.createVariable("lat", "f4", ("lat",))
        la.units = "degrees_north"
        la[:] = lat
        lo = nc.createVariable("lon", "f4", ("lon",))
        lo.units = "degrees_east"
        lo[:] = np.arange(NLON, dtype="f4") * 10
        shape = (len(times), len(lat), NLON)
        temp = nc.createVariable("temp", "f4", ("time", "lat", "lon"), zlib=True, shuffle=True,
                                 chunksizes=CHUNKS, fill_value=np.float32(fill_value))
        temp.setncatts({"units": "K", "long_name": "air temperature", **(temp_attrs or {})})
        values = (250 + 50 * rng.random(shape)).astype("f4")
        temp[:] = np.ma.masked_where(rng.random(shape) < 0.05, values)
        precip = nc.createVariable("precip", "f4", ("time", "lat", "lon"), zlib=True, shuffle=True,
                                   chunksizes=CHUNKS)
        precip.setncatts({"units": "mm", "scale_factor": np.float32(0.5), "add_offset": np.float32(1.0),
                          **(precip_attrs or {})})
        precip[:] = (1 + 10 * rng.random(shape)).astype("f4")
        nc.title = "vzdask mfdataset test"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """All the files: 20 along time, a 2 x 4 (lat halves x times) grid, CF-mismatch pairs, a corrupt one."""
    root = tmp_path_factory.mktemp("mf")
    main = []
    for i in range(NFILES):
        path = root / f"main_{i:02d}.nc"
        write_nc(path, times=np.arange(i * NT, (i + 1) * NT), seed=i)
        main.append(str(path))

    grid = []
    for half, lat in enumerate((LAT[: NLAT // 2], LAT[NLAT // 2 :])):
        row = []
        for j in range(4):
            path = root / f"grid_lat{half}_t{j}.nc"
            write_nc(path, times=np.arange(j * NT, (j + 1) * NT), lat=lat, seed=100 + 10 * half + j)
            row.append(str(path))
        grid.append(row)

    mismatch = {}
    for case, (var, first, second) in MISMATCHES.items():
        pair = []
        for k, (attrs, seed) in enumerate(((first, 200), (second, 201))):
            path = root / f"mismatch_{case}_{k}.nc"
            kw = {"fill_value": attrs["_FillValue"]} if "_FillValue" in attrs else {}
            other = {key: v for key, v in attrs.items() if key != "_FillValue"}
            write_nc(path, times=np.arange(k * NT, (k + 1) * NT), seed=seed, **kw,
                     **({f"{var}_attrs": other} if other else {}))
            pair.append(str(path))
        mismatch[case] = pair

    hours = root / "units_hours.nc"
    write_nc(hours, times=[0, 6, 12, 18], time_units="hours since 2000-01-01", seed=300)
    days = root / "units_days.nc"
    write_nc(days, times=[1, 2, 3, 4], time_units="days since 2000-01-01", seed=301)

    corrupt = root / "corrupt_05.nc"  # a netCDF4 file cut in half: HDF5 signature, no end
    data = open(main[5], "rb").read()
    corrupt.write_bytes(data[: len(data) // 2])

    return SimpleNamespace(root=root, main=main, grid=grid, mismatch=mismatch, units=[str(hours), str(days)],
                           corrupt=str(corrupt))


#: case -> (variable, attributes of the first file, attributes of the second)
MISMATCHES = {
    "scale_factor": ("precip", {"scale_factor": np.float32(0.5)}, {"scale_factor": np.float32(0.25)}),
    "add_offset": ("precip", {"add_offset": np.float32(1.0)}, {"add_offset": np.float32(7.5)}),
    "_FillValue": ("temp", {"_FillValue": -999.0}, {"_FillValue": -12345.0}),
    "units": ("temp", {"units": "K"}, {"units": "degC"}),
}


# --------------------------------------------------------------------------- #
# schedulers
# --------------------------------------------------------------------------- #


@pytest.fixture(scope="module")
def process_pool():
    """One spawn pool for every ``parallel="processes"`` call (dask's ``pool`` config).

    Starting fresh interpreters that import xarray/zarr/h5py costs seconds each
    time; the pool still runs dask's multiprocessing scheduler with pickled tasks.
    """
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        yield pool


@pytest.fixture
def scheduler(request, process_pool):
    """``parallel=`` argument for the requested mode (the session cluster's Client for "client")."""
    mode = request.param
    if mode == "client":
        yield request.getfixturevalue("dask_cluster")
    elif mode == "processes":
        with dask.config.set(pool=process_pool):
            yield "processes"
    else:
        yield {"serial": None}.get(mode, mode)


PARALLEL = ["serial", "threads", "processes", "client"]


# --------------------------------------------------------------------------- #
# helpers
# --------------------------------------------------------------------------- #


def rename_and_drop(ds):
    """A preprocess: works on virtual and on decoded datasets alike."""
    return ds.drop_vars("precip").rename({"temp": "t2m"}).assign_attrs(preprocessed="yes")


def combine_args(files, mode):
    """``(paths, kwargs)`` for a combine mode; the same arguments go to ``xr.open_mfdataset``."""
    return {
        "by_coords": (files.main, {}),
        "nested": (files.main, {"combine": "nested", "concat_dim": "time"}),
        "grid": (files.grid, {"combine": "nested", "concat_dim": ["lat", "time"]}),
        "glob": (str(files.root / "main_*.nc"), {}),
        "preprocess": (files.main, {"preprocess": rename_and_drop}),
    }[mode]


MODES = ["by_coords", "nested", "grid", "glob", "preprocess"]


@pytest.fixture(scope="module")
def expected(files):
    """Per combine mode, computed once: the serial virtual dataset and xarray's own result."""
    cache = {}

    def get(mode):
        if mode not in cache:
            paths, kwargs = combine_args(files, mode)
            virtual = open_virtual_mfdataset(paths, **kwargs)
            with xr.open_mfdataset(paths, engine="h5netcdf", **kwargs) as ref:
                cache[mode] = (virtual, ref.load())
        return cache[mode]

    return get


def assert_same_virtual(actual, wanted):
    """Same variables, manifests (references), attrs and coordinate values."""
    assert list(actual.variables) == list(wanted.variables)
    assert actual.attrs == wanted.attrs
    assert set(actual.coords) == set(wanted.coords)
    for name, var in wanted.variables.items():
        got = actual.variables[name]
        assert got.dims == var.dims, name
        xr.testing.assert_identical(xr.Dataset(attrs=got.attrs), xr.Dataset(attrs=var.attrs))
        if isinstance(var._data, ManifestArray):
            assert isinstance(got._data, ManifestArray), name
            assert got._data.equals(var._data), name
        else:
            np.testing.assert_array_equal(got.values, var.values, err_msg=name)


def assert_values_like_xarray(virtual, ref):
    decoded = xr.decode_cf(virtual.vz.compute())
    xr.testing.assert_identical(decoded, ref)
    # not vacuous: masked points and packed values are there and decode to what xarray reads
    if "temp" in ref:
        assert int(ref["temp"].isnull().sum()) > 0
        assert float(ref["precip"].max()) > 5


def vz_keys(client):
    """Keys of open_virtual_mfdataset tasks still referenced by the client and known to the scheduler."""

    def on_scheduler(dask_scheduler, prefixes):
        return [str(k) for k in dask_scheduler.tasks if str(k).startswith(prefixes)]

    here = [str(k) for k in client.futures if str(k).startswith(TASK_PREFIXES)]
    return here, client.run_on_scheduler(on_scheduler, prefixes=TASK_PREFIXES)


def wait_released(client, timeout=10.0):
    """Futures are released asynchronously (on the client's event loop): poll until none of ours is left."""
    deadline = time.monotonic() + timeout
    while True:
        here, there = vz_keys(client)
        if (not here and not there) or time.monotonic() > deadline:
            return here, there
        time.sleep(0.05)


# --------------------------------------------------------------------------- #
# equivalence matrix
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("scheduler", PARALLEL, indirect=True)
def test_parallel_modes_give_identical_references_and_xarray_values(files, expected, scheduler, mode):
    paths, kwargs = combine_args(files, mode)
    virtual, ref = expected(mode)
    ds = open_virtual_mfdataset(paths, parallel=scheduler, **kwargs)
    assert_same_virtual(ds, virtual)
    assert_values_like_xarray(ds, ref)

    names = ("t2m",) if mode == "preprocess" else DATA_VARS
    assert ds.attrs.get("preprocessed") == ("yes" if mode == "preprocess" else None)
    nfiles = 8 if mode == "grid" else NFILES
    ntime = 4 * NT if mode == "grid" else NFILES * NT
    for name in names:
        array = ds[name].variable._data
        assert isinstance(array, ManifestArray)
        assert array.shape == (ntime, NLAT, NLON) and array.chunk_shape == CHUNKS
        assert array.manifest.count()["virtual"] == ntime * 2 * 2
        assert len({url for url in array.manifest.urls}) == nfiles
    np.testing.assert_array_equal(ds["lat"].values, LAT)


def test_grid_references_point_into_the_right_file(files, expected):
    """The 2-D nested grid: chunk (t, lat-half, lon) reads file grid_lat{half}_t{t // NT}."""
    ds, _ = expected("grid")
    manifest = ds["temp"].variable._data.manifest
    for t, half, lon in [(0, 0, 0), (5, 1, 1), (15, 0, 1), (12, 1, 0)]:
        path = manifest.entry((t, half, lon))[1]
        assert path.endswith(f"grid_lat{half}_t{t // NT}.nc"), (t, half, path)


def test_parallel_true_uses_the_current_client(files, expected, dask_client):
    virtual, ref = expected("by_coords")
    before = dask_client.run_on_scheduler(lambda dask_scheduler: dask_scheduler.transition_counter)
    ds = open_virtual_mfdataset(files.main, parallel=True)
    after = dask_client.run_on_scheduler(lambda dask_scheduler: dask_scheduler.transition_counter)
    assert after > before  # the files went through the cluster
    assert_same_virtual(ds, virtual)


def test_deep_tree_combine_on_the_cluster(files, expected, dask_cluster, monkeypatch):
    """Batches of 3: 20 files -> 7 -> 3 -> 1 combine tasks, same result as combining all at once."""
    monkeypatch.setattr(mfdataset, "COMBINE_BATCH", 3)
    for mode in ("by_coords", "nested", "grid"):
        paths, kwargs = combine_args(files, mode)
        virtual, ref = expected(mode)
        ds = open_virtual_mfdataset(paths, parallel=dask_cluster, **kwargs)
        assert_same_virtual(ds, virtual)
    assert_values_like_xarray(ds, ref)


def test_files_on_s3_are_parsed_and_combined_on_the_cluster(files, dask_cluster, s3_server, s3_bucket):
    """Remote urls through an explicit registry shipped to the workers: the same references as the local copies."""
    from obstore.store import S3Store

    from vzdask.registry import ObjectStoreRegistry

    bucket, s3 = s3_bucket
    remote = []
    for path in files.main[:9]:
        s3.upload_file(path, bucket, os.path.basename(path))
        remote.append(f"s3://{bucket}/{os.path.basename(path)}")
    registry = ObjectStoreRegistry({f"s3://{bucket}": S3Store(bucket, **s3_server.store_kwargs())},
                                   create_missing=False)
    ds = open_virtual_mfdataset(remote, registry=registry, parallel=dask_cluster)  # 3 parse tasks of 3 files
    serial = open_virtual_mfdataset(remote, registry=registry)
    local = open_virtual_mfdataset(files.main[:9])
    assert ds.sizes["time"] == 9 * NT
    for name in DATA_VARS:
        manifest, here = ds[name].variable._data.manifest, local[name].variable._data.manifest
        np.testing.assert_array_equal(manifest.offsets, here.offsets)
        np.testing.assert_array_equal(manifest.lengths, here.lengths)
        assert manifest.entry((4 * NT, 0, 0))[1] == remote[4], manifest.entry((4 * NT, 0, 0))
        # the combined arrays read through the registry given (moto's credentials are in no env var)
        assert ds[name].variable._data.registry == registry == serial[name].variable._data.registry
    xr.testing.assert_identical(ds.vz.compute(), local.vz.compute())
    xr.testing.assert_identical(serial.vz.compute(), local.vz.compute())


def test_client_only_receives_signatures_and_the_result_and_releases_every_task(files, expected, dask_cluster,
                                                                                 monkeypatch):
    """The per-file datasets stay on the workers; afterwards no task of ours is held anywhere."""
    client = dask_cluster
    monkeypatch.setattr(mfdataset, "COMBINE_BATCH", 4)
    gathered = []
    original = client._gather

    async def spy(futures, *args, **kwargs):  # records what reaches this process, changes nothing
        gathered.extend(str(f.key).split("-")[0] for f in distributed.client.futures_of(futures))
        return await original(futures, *args, **kwargs)

    monkeypatch.setattr(client, "_gather", spy)
    ds = open_virtual_mfdataset(files.main, parallel=client)
    monkeypatch.undo()

    # 2 workers: 7 parse tasks of 3 files (the last of 2), each task's files combined where they are,
    # then 7 -> 2 -> 1 combine tasks; here: each task's list of signatures and the root
    assert sorted(set(gathered)) == ["_combine_batch", "_signatures_of"]
    assert gathered.count("_signatures_of") == -(-NFILES // 3)
    assert gathered.count("_combine_batch") == 1  # only the root of the tree
    assert wait_released(client) == ([], [])
    assert_same_virtual(ds, expected("by_coords")[0])


@pytest.mark.parametrize("where", ["local", "client"])
def test_progress_bar(files, expected, dask_cluster, capsys, where):
    parallel = dask_cluster if where == "client" else "threads"
    ds = open_virtual_mfdataset(files.main, parallel=parallel, progress=True)
    assert_same_virtual(ds, expected("by_coords")[0])
    out = capsys.readouterr()
    assert "100%" in out.out + out.err


# --------------------------------------------------------------------------- #
# open_mfdataset: dask arrays for analysis
# --------------------------------------------------------------------------- #


def assert_native_multiples(array, native):
    """Every dask block boundary lies on a native chunk boundary."""
    for axis_chunks, c in zip(array.chunks, native):
        assert all(size % c == 0 for size in axis_chunks[:-1]), (array.chunks, native)


def test_open_mfdataset_is_dask_backed_and_equals_xarray(files, expected):
    _, ref = expected("by_coords")
    ds = open_mfdataset(files.main)
    for name in DATA_VARS:
        assert isinstance(ds[name].data, dask.array.Array)
        assert_native_multiples(ds[name].data, CHUNKS)
    xr.testing.assert_identical(ds.compute(), ref)

    # small task blocks: several blocks, still whole native chunks
    with dask.config.set({"vzdask.task-bytes": 3 * 9 * 18 * 4}):
        small = open_mfdataset(files.main)
    blocks = small["temp"].data.chunks
    assert blocks == ((1,) * (NFILES * NT), (9, 9), (36,))
    assert_native_multiples(small["temp"].data, CHUNKS)
    xr.testing.assert_identical(small.compute(scheduler="threads"), ref)

    # explicit chunks that cut native chunks still read the right values
    cut = open_mfdataset(files.main, chunks={"time": 7, "lat": 5, "lon": 36})
    assert cut["temp"].data.chunks[1] == (5, 5, 5, 3)
    xr.testing.assert_identical(cut.compute(), ref)


def test_open_mfdataset_on_the_cluster_reads_with_obstore_only(files, expected, dask_client):
    _, ref = expected("nested")
    ds = open_mfdataset(files.main, combine="nested", concat_dim="time", parallel=dask_client)
    graph = dict(ds["temp"].data.__dask_graph__())
    blob = pickle.dumps(graph)
    for module in (b"h5py", b"h5netcdf", b"netCDF4", b"xarray.backends"):
        assert module not in blob  # tasks hold byte-range references, never a file handle or backend
    assert b"vzdask.chunk_tasks" in blob
    transitions = dask_client.run_on_scheduler(lambda dask_scheduler: dask_scheduler.transition_counter)
    computed = ds.compute()
    assert dask_client.run_on_scheduler(lambda dask_scheduler: dask_scheduler.transition_counter) > transitions
    xr.testing.assert_identical(computed, ref)


# --------------------------------------------------------------------------- #
# CF encodings
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("case", list(MISMATCHES))
@pytest.mark.parametrize("scheduler", ["serial", "processes", "client"], indirect=True)
def test_cf_encoding_mismatch_names_variable_files_and_values(files, scheduler, case):
    var, first, second = MISMATCHES[case]
    a, b = files.mismatch[case]
    with pytest.raises(CFEncodingMismatchError) as info:
        open_virtual_mfdataset([a, b], parallel=scheduler)
    message = str(info.value)
    assert f"variable {var!r}" in message
    assert a in message and b in message
    assert f"{case} " in message
    for value in (first[case], second[case]):
        assert (repr(value) if isinstance(value, str) else str(float(value))) in message, (value, message)
    # the other variable is fine: dropping the mismatched one opens the pair
    ds = open_virtual_mfdataset([a, b], drop_variables=[var], parallel=scheduler)
    assert ds.sizes["time"] == 2 * NT and var not in ds


def test_packing_attributes_of_another_float_type_are_a_mismatch(tmp_path):
    """Equal scale factors of float32 and float64 unpack to different dtypes: not one variable either."""
    paths = []
    for k, factor in enumerate((np.float32(0.5), np.float64(0.5))):
        paths.append(str(tmp_path / f"f{k}.nc"))
        write_nc(paths[-1], times=np.arange(k * NT, (k + 1) * NT), seed=k, precip_attrs={"scale_factor": factor})
    with pytest.raises(CFEncodingMismatchError, match=r"'precip'.*scale_factor np.float32\(0.5\) in .*f0.nc vs 0.5 in"):
        open_virtual_mfdataset(paths)
    assert open_virtual_mfdataset(paths[:1])["precip"].attrs["scale_factor"].dtype == np.float32


def test_loaded_time_in_different_units_combines_and_decodes(files):
    ds = open_virtual_mfdataset(files.units)
    want = np.array(["2000-01-01T00", "2000-01-01T06", "2000-01-01T12", "2000-01-01T18",
                     "2000-01-02", "2000-01-03", "2000-01-04", "2000-01-05"], dtype="datetime64[ns]")
    np.testing.assert_array_equal(ds["time"].values, want)
    with xr.open_mfdataset(files.units, engine="h5netcdf") as ref:
        assert_values_like_xarray(ds, ref.load())


def test_virtual_time_in_different_units_is_refused(files):
    with pytest.raises(CFEncodingMismatchError) as info:
        open_virtual_mfdataset(files.units, loadable_variables=[], combine="nested", concat_dim="time")
    message = str(info.value)
    assert "variable 'time'" in message
    assert "'hours since 2000-01-01'" in message and "'days since 2000-01-01'" in message
    assert files.units[0] in message and files.units[1] in message


# --------------------------------------------------------------------------- #
# files that cannot be parsed
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("scheduler", ["serial", "threads", "processes", "client"], indirect=True)
def test_unparsable_file_raises_file_open_error_naming_it(files, scheduler):
    paths = files.main[:5] + [files.corrupt] + files.main[5:8]
    with pytest.raises(FileOpenError) as info:
        open_virtual_mfdataset(paths, parallel=scheduler, combine="nested", concat_dim="time")
    message = str(info.value)
    assert files.corrupt in message
    assert not any(p in message for p in paths if p != files.corrupt)
    if scheduler is not None and not isinstance(scheduler, str):
        assert wait_released(scheduler) == ([], [])


@pytest.mark.parametrize("analysis", [False, True])
def test_a_combine_failing_on_the_workers_leaves_no_task_while_its_error_is_held(tmp_path, dask_cluster, analysis):
    """The error (held here, as pytest or a notebook holds the last one) keeps no future of the combine tree
    alive: before, the cluster held it until a garbage collection, and the next open's release checks failed
    (only when tests/test_uneven_collections.py ran first)."""
    paths = [str(tmp_path / "a.nc"), str(tmp_path / "b.nc")]
    write_nc(paths[0], times=[0, 1])
    write_nc(tmp_path / "full.nc", times=[2, 3])
    with xr.open_dataset(tmp_path / "full.nc") as full:  # precip in one file only: no one virtual dataset
        full.drop_vars("precip").to_netcdf(paths[1])
    opener = open_mfdataset if analysis else open_virtual_mfdataset
    held = []
    try:
        ds = opener(paths, parallel=dask_cluster)  # analysis: joined here after the combine failed there
        assert ds.sizes["time"] == 4 and ds["precip"].isnull()[2:].all()
    except vzdask.errors.CombineError as err:
        held.append(err)
    assert len(held) == (0 if analysis else 1)
    assert wait_released(dask_cluster) == ([], [])


def test_missing_glob_and_nested_list_without_nested_combine(files):
    with pytest.raises(FileNotFoundError, match="nothing_"):
        open_virtual_mfdataset(str(files.root / "nothing_*.nc"))
    with pytest.raises(ValueError, match="nested"):
        open_virtual_mfdataset(files.grid)


# --------------------------------------------------------------------------- #
# faults: a worker dies mid-way
# --------------------------------------------------------------------------- #


@pytest.fixture
def fault_cluster():
    """A small cluster of its own: its workers get killed."""
    with (
        distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1, dashboard_address=":0") as cluster,
        distributed.Client(cluster, set_as_default=False) as client,
    ):
        yield client


def slow_preprocess(ds):
    """Makes parsing slow enough to kill a worker while files are still being parsed."""
    time.sleep(0.15)
    return ds


def kill_busy_worker(client, prefix):
    """SIGKILL a worker process that is running a ``prefix`` task (its nanny starts a new one); its address."""

    def busy(dask_scheduler, prefix):
        def name(key):
            return str(key[0] if isinstance(key, tuple) else key)

        return sorted(ws.address for ws in dask_scheduler.workers.values()
                      if any(name(ts.key).startswith(prefix) for ts in ws.processing))

    pids = client.run(os.getpid)
    address = (client.run_on_scheduler(busy, prefix=prefix) or sorted(pids))[0]
    os.kill(pids[address], signal.SIGKILL)
    return address


def open_in_background(client, files):
    """Start ``open_virtual_mfdataset`` (slow parsing) in a thread; wait until 2 of its 7 parse tasks are done.

    (20 files on 2 workers: parse tasks of 3 files.)
    """
    outcome = {}

    def run():
        try:
            outcome["result"] = open_virtual_mfdataset(files.main, parallel=client, combine="nested",
                                                       concat_dim="time", preprocess=slow_preprocess)
        except Exception as err:  # noqa: BLE001 - the test looks at it
            outcome["error"] = err

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        done = client.run_on_scheduler(
            lambda dask_scheduler: sum(ts.state == "memory" for k, ts in dask_scheduler.tasks.items()
                                       if str(k).startswith("_open_batch")))
        if done >= 2:
            break
        time.sleep(0.02)
    assert 2 <= done < -(-NFILES // 3)  # the kill that follows lands mid-way
    return thread, outcome


def test_worker_killed_while_parsing_gives_the_complete_result(files, expected, fault_cluster):
    client = fault_cluster
    virtual, ref = expected("nested")
    thread, outcome = open_in_background(client, files)
    killed = kill_busy_worker(client, "_open_batch")
    thread.join(60)
    assert not thread.is_alive()
    # one lost worker is within distributed.scheduler.allowed-failures (3): its files are parsed again
    assert "error" not in outcome, outcome
    ds = outcome["result"]
    assert_same_virtual(ds, virtual)
    assert ds["temp"].variable._data.manifest.count() == {"virtual": NFILES * NT * 4, "inlined": 0, "missing": 0}
    assert_values_like_xarray(ds, ref)
    assert killed not in client.scheduler_info()["workers"]
    assert wait_released(client) == ([], [])


def test_worker_killed_while_parsing_without_retries_is_a_clear_error(files, fault_cluster):
    client = fault_cluster
    client.run_on_scheduler(lambda dask_scheduler: setattr(dask_scheduler, "allowed_failures", 0))
    thread, outcome = open_in_background(client, files)
    kill_busy_worker(client, "_open_batch")
    thread.join(60)
    assert not thread.is_alive()
    assert "result" not in outcome  # never a partial dataset
    error = outcome["error"]
    assert isinstance(error, FileOpenError)
    message = str(error)
    assert "KilledWorker" in message
    named = [i for i, path in enumerate(files.main) if path in message]  # the files whose parse task was lost
    assert 1 <= len(named) <= 3 and named == list(range(named[0], named[0] + len(named))), message
    assert wait_released(client) == ([], [])


def test_worker_killed_during_persist_still_gathers_correct_values(files, expected, fault_cluster):
    client = fault_cluster
    virtual, ref = expected("nested")
    with dask.config.set({"vzdask.task-bytes": 9 * 18 * 4}), client.as_current():  # one chunk per task
        persisted = virtual.vz.persist()
        held = [persisted[name].variable._data for name in DATA_VARS]
        assert not any(a.is_gathered for a in held)
        futures = distributed.futures_of(held)
        assert len(futures) == 2 * NFILES * NT * 4
        deadline = time.monotonic() + 20
        while sum(f.done() for f in futures) < 50 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert 50 <= sum(f.done() for f in futures) < len(futures)  # mid-way
        kill_busy_worker(client, "manifestarray-")
        gathered = persisted.vz.gather()
    for name in DATA_VARS:
        array = gathered[name].variable._data
        assert array.is_gathered
        assert array.manifest.count() == {"virtual": 0, "inlined": NFILES * NT * 4, "missing": 0}
    xr.testing.assert_identical(xr.decode_cf(gathered.vz.compute(scheduler="sync")), ref)
