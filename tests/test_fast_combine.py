"""The one-step combine of uniform files (vzdask.fast_combine) gives exactly xarray's result, or steps aside.

Every case opens the same files twice: with the fast path, and with it
switched off so xarray's ``combine_by_coords``/``combine_nested`` combines
per-file Datasets. The two results must match variable by variable
(order, dims, attrs, encodings, indexes, manifests, values), and for the
cases the fast path must not handle, it must answer None.
"""

from __future__ import annotations

import fsspec
import netCDF4
import numpy as np
import pytest
import xarray as xr

from vzdask import fast_combine, mfdataset
from vzdask.manifests.array import ManifestArray
from vzdask.mfdataset import open_virtual_mfdataset
from vzdask.writers.kerchunk import to_kerchunk
from vzdask.xarray import MANIFEST_ENCODING_KEY, DecodedCache, open_virtual_parts

NT, NLAT, NLON = 3, 4, 5
LAT = np.linspace(-60, 60, NLAT, dtype="f4")


def write_nc(path, times, *, lat=LAT, time_units="days since 2001-01-01", aux=False, bounds=False, precip=True):
    """A small netCDF4 file: temp (masked, _FillValue) and packed precip over (time, lat, lon)."""
    times = np.asarray(times, dtype="f8")
    rng = np.random.default_rng(int(abs(times[0])) + 7)
    with netCDF4.Dataset(path, "w") as nc:
        nc.createDimension("time", None)
        nc.createDimension("lat", len(lat))
        nc.createDimension("lon", NLON)
        t = nc.createVariable("time", "f8", ("time",))
        t.units, t.calendar = time_units, "standard"
        t[:] = times
        if bounds:
            nc.createDimension("nv", 2)
            t.bounds = "time_bnds"
            tb = nc.createVariable("time_bnds", "f8", ("time", "nv"))
            tb[:] = np.stack([times - 0.5, times + 0.5], axis=1)
        nc.createVariable("lat", "f4", ("lat",))[:] = lat
        nc["lat"].units = "degrees_north"
        nc.createVariable("lon", "f4", ("lon",))[:] = np.arange(NLON, dtype="f4") * 3
        shape = (len(times), len(lat), NLON)
        temp = nc.createVariable("temp", "f4", ("time", "lat", "lon"), zlib=True, chunksizes=(1, 2, NLON),
                                 fill_value=np.float32(-999))
        temp.units = "K"
        temp[:] = np.ma.masked_where(rng.random(shape) < 0.2, 250 + 50 * rng.random(shape))
        if aux:
            height = nc.createVariable("height", "f4", ("time",))
            height[:] = times * 2
            area = nc.createVariable("area", "f4", ("lat", "lon"))
            area[:] = np.arange(len(lat) * NLON, dtype="f4").reshape(len(lat), NLON)  # the same in every file
            temp.coordinates = "height area"
        if precip:
            p = nc.createVariable("precip", "i2", ("time", "lat", "lon"), chunksizes=(1, NLAT, NLON))
            p.scale_factor, p.add_offset = np.float32(0.5), np.float32(1.0)
            p[:] = rng.random(shape) * 10
        nc.title = "fast combine test"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("fast")

    def make(name, times, **kwargs):
        path = root / f"{name}.nc"
        write_nc(path, times, **kwargs)
        return str(path)

    return {
        "ascending": [make(f"up{i}", np.arange(i * NT, (i + 1) * NT)) for i in range(4)],
        "descending": [make(f"down{i}", np.arange(i * NT, (i + 1) * NT)[::-1] - 100) for i in range(3)],
        "aux": [make(f"aux{i}", np.arange(i * NT, (i + 1) * NT), aux=True) for i in range(3)],
        "bounds": [make(f"bnds{i}", np.arange(i * NT, (i + 1) * NT), bounds=True) for i in range(3)],
        "units": [make("hours", [0, 6, 12], time_units="hours since 2001-01-01"),
                  make("days", [1, 2, 3], time_units="days since 2001-01-01")],
        "other_lat": [make("lat_a", np.arange(NT)), make("lat_b", np.arange(NT, 2 * NT), lat=LAT + 1)],
        "overlap": [make("over_a", np.arange(NT)), make("over_b", np.arange(NT) + 1)],
        "no_precip": [make("vars_a", np.arange(NT)), make("vars_b", np.arange(NT, 2 * NT), precip=False)],
        # beyond datetime64[ns] (year 2262): that file alone decodes to another dtype than the first
        "far": [make("near", np.arange(NT)), make("far", np.arange(NT) + 200000.0),
                make("nearer", np.arange(NT) + NT)],
        "same_grid": [make(f"same{i}", np.arange(NT), aux=True) for i in range(3)],
        "fractional": [make(f"frac{i}", np.arange(i * NT, (i + 1) * NT) + 0.25, time_units="hours since 2001-01-01")
                       for i in range(3)],
    }


def open_both(paths, monkeypatch, **kwargs):
    """``(fast, slow, handled)``: with the fast path, without it, and whether the fast path combined."""
    handled = []

    def spy(*args):
        result = fast_combine.combine_parts(*args)
        handled.append(result is not None)
        return result

    monkeypatch.setattr(mfdataset, "combine_parts", spy)
    fast = open_virtual_mfdataset(paths, **kwargs)
    monkeypatch.setattr(mfdataset, "combine_parts", lambda *args: None)
    slow = open_virtual_mfdataset(paths, **kwargs)
    return fast, slow, handled == [True]


def same_value(a, b) -> bool:
    if isinstance(a, ManifestArray) or isinstance(b, ManifestArray):
        return isinstance(a, ManifestArray) and isinstance(b, ManifestArray) and a.equals(b)
    return bool(np.array_equal(np.asarray(a), np.asarray(b))) and np.asarray(a).dtype == np.asarray(b).dtype


def assert_same_dataset(fast: xr.Dataset, slow: xr.Dataset) -> None:
    assert list(fast.variables) == list(slow.variables)
    assert list(fast.data_vars) == list(slow.data_vars) and list(fast.coords) == list(slow.coords)
    assert dict(fast.sizes) == dict(slow.sizes)
    assert fast.attrs == slow.attrs and fast.encoding == slow.encoding
    assert list(fast.xindexes) == list(slow.xindexes)
    for name, index in slow.xindexes.items():
        assert type(fast.xindexes[name]) is type(index)
        assert fast.xindexes[name].equals(index), name
        assert fast.indexes[name].dtype == slow.indexes[name].dtype, name
    for name, want in slow.variables.items():
        got = fast.variables[name]
        assert type(got) is type(want), name
        assert got.dims == want.dims and got.dtype == want.dtype, name
        xr.testing.assert_identical(xr.Dataset(attrs=got.attrs), xr.Dataset(attrs=want.attrs))
        assert got.encoding.keys() == want.encoding.keys(), name
        for key, value in want.encoding.items():
            assert same_value(got.encoding[key], value), (name, key)
        if isinstance(want._data, ManifestArray):
            assert isinstance(got._data, ManifestArray) and got._data.equals(want._data), name
        else:
            np.testing.assert_array_equal(got.values, want.values, err_msg=name)


HANDLED_CASES = {
    "by_coords, files out of order": ("ascending", [2, 0, 3, 1], {}),
    "descending coordinate": ("descending", [1, 2, 0], {}),
    "nested along time": ("ascending", [0, 1, 2, 3], {"combine": "nested", "concat_dim": "time"}),
    "nested in the given order": ("ascending", [3, 1, 2, 0], {"combine": "nested", "concat_dim": "time"}),
    "loaded data variable": ("ascending", [0, 1, 2], {"loadable_variables": ["time", "lat", "lon", "temp"]}),
    "virtual auxiliary coordinates": ("aux", [0, 1, 2], {}),
    "loaded auxiliary coordinates": ("aux", [1, 0, 2], {"loadable_variables": ["time", "lat", "lon", "height", "area"]}),
    "time bounds loaded": ("bounds", [0, 2, 1], {"loadable_variables": ["time", "lat", "lon", "time_bnds"]}),
    "undecoded times": ("ascending", [1, 0], {"decode_times": False}),
    "loaded times in different units": ("units", [1, 0], {}),
    "threads": ("ascending", [3, 2, 1, 0], {"parallel": "threads"}),
    "fractional hours": ("fractional", [2, 0, 1], {}),
}


@pytest.mark.parametrize("case", list(HANDLED_CASES))
def test_fast_path_gives_xarrays_result(files, monkeypatch, case):
    group, order, kwargs = HANDLED_CASES[case]
    paths = [files[group][i] for i in order]
    fast, slow, handled = open_both(paths, monkeypatch, **kwargs)
    assert handled
    assert_same_dataset(fast, slow)
    assert fast.sizes["time"] == NT * len(paths)
    if kwargs.get("combine") != "nested" and kwargs.get("decode_times") is not False:
        assert fast.indexes["time"].is_monotonic_increasing or fast.indexes["time"].is_monotonic_decreasing


FALLBACK_CASES = {
    "other latitudes": ("other_lat", {}),
    "overlapping times": ("overlap", {}),
    "different variables": ("no_precip", {}),
    "one file": ("ascending", {"_first": 1}),
    "options xarray must apply": ("ascending", {"combine_attrs": "drop_conflicts"}),
    "virtual time coordinate": ("ascending", {"loadable_variables": ["lat", "lon"]}),
    "a file beyond datetime64[ns]": ("far", {}),
}


NEW_DIMENSION_CASES = {
    "virtual variables": {},
    "loaded data variable": {"loadable_variables": ["time", "lat", "lon", "temp"]},
    "loaded auxiliary coordinates": {"loadable_variables": ["time", "lat", "lon", "height", "area"]},
    "undecoded times": {"decode_times": False},
    "threads": {"parallel": "threads"},
}


@pytest.mark.parametrize("case", list(NEW_DIMENSION_CASES))
def test_fast_path_stacks_along_a_new_dimension_as_xarray(files, monkeypatch, case):
    fast, slow, handled = open_both(files["same_grid"], monkeypatch, combine="nested", concat_dim="run",
                                    **NEW_DIMENSION_CASES[case])
    assert handled
    assert_same_dataset(fast, slow)
    assert fast["temp"].dims == ("run", "time", "lat", "lon") and fast.sizes["run"] == 3


@pytest.mark.parametrize("group", ["ascending", "other_lat", "no_precip"])
def test_fast_path_leaves_a_new_dimension_over_differing_files_to_xarray(files, monkeypatch, group):
    """Coordinates that differ (xarray aligns them) or variables that come and go: not stacked here."""
    kwargs = {"combine": "nested", "concat_dim": "run"}
    try:
        fast, slow, handled = open_both(files[group], monkeypatch, **kwargs)
    except Exception as err:  # refused: with the fast path off, the very same error
        monkeypatch.setattr(mfdataset, "combine_parts", lambda *args: None)
        with pytest.raises(type(err)) as slow_err:
            open_virtual_mfdataset(files[group], **kwargs)
        assert str(slow_err.value) == str(err)
        return
    assert not handled
    assert_same_dataset(fast, slow)


@pytest.mark.parametrize("case", list(FALLBACK_CASES))
def test_fast_path_steps_aside_and_xarray_decides(files, monkeypatch, case):
    group, kwargs = FALLBACK_CASES[case]
    kwargs = dict(kwargs)
    paths = files[group][: kwargs.pop("_first", None)]
    try:
        fast, slow, handled = open_both(paths, monkeypatch, **kwargs)
    except Exception as err:  # xarray refuses these files: the fast path must not have hidden that
        monkeypatch.setattr(mfdataset, "combine_parts", lambda *args: None)
        with pytest.raises(type(err)) as slow_err:
            open_virtual_mfdataset(paths, **kwargs)
        assert str(slow_err.value) == str(err)
        return
    assert not handled
    assert_same_dataset(fast, slow)


def test_fast_path_references_read_back_like_xarray(files, tmp_path):
    """The JSON references of a fast-combined dataset, read by fsspec + zarr, equal xr.open_mfdataset."""
    paths = [files["aux"][i] for i in (2, 0, 1)]
    out = tmp_path / "refs.json"
    to_kerchunk(open_virtual_mfdataset(paths), out, format="json")
    fs = fsspec.filesystem("reference", fo=str(out), remote_protocol="file")
    with xr.open_dataset(fs.get_mapper(""), engine="zarr", backend_kwargs={"consolidated": False, "zarr_format": 2}) as got, \
            xr.open_mfdataset(paths, engine="h5netcdf", combine="by_coords") as want:
        xr.testing.assert_allclose(got.load(), want.load(), rtol=0, atol=0)
        assert int(want["temp"].isnull().sum()) > 0 and float(want["precip"].max()) > 2


def test_decoded_cache_shares_equal_coordinates_only(files):
    cache = DecodedCache()
    a, b = (open_virtual_parts(p, cache=cache) for p in files["ascending"][:2])
    c = open_virtual_parts(files["other_lat"][1], cache=cache)
    assert a.variables["lat"]._data is b.variables["lat"]._data  # decoded once
    assert a.variables["lat"].attrs is not b.variables["lat"].attrs
    assert a.variables["lat"].encoding[MANIFEST_ENCODING_KEY] is not b.variables["lat"].encoding[MANIFEST_ENCODING_KEY]
    np.testing.assert_array_equal(c.variables["lat"].values, LAT + 1)
    np.testing.assert_array_equal(b.variables["lat"].values, LAT)
    assert not np.array_equal(a.variables["time"].values, b.variables["time"].values)


def test_decoded_cache_knows_a_coordinate_by_its_stored_bytes(files, tmp_path, monkeypatch):
    """A coordinate stored alike (metadata, attributes, bytes) in an earlier file is neither read nor decoded."""
    import shutil

    from vzdask import chunk_tasks

    renamed = tmp_path / "lat_units.nc"  # lat's bytes as in every file, but other units
    shutil.copy(files["ascending"][2], renamed)
    with netCDF4.Dataset(renamed, "a") as nc:
        nc["lat"].units = "degrees"
    read: list[list[str]] = []
    real = chunk_tasks.read_arrays

    def spy(arrays, parsed_bytes=None):  # records which loaded arrays are read; the real reader reads them
        read.append(sorted(a.dimension_names[0] for a in arrays))
        return real(arrays, parsed_bytes)

    monkeypatch.setattr(chunk_tasks, "read_arrays", spy)
    cache = DecodedCache()
    paths = files["ascending"][:2] + [str(renamed), files["other_lat"][1]]
    parts = [open_virtual_parts(p, cache=cache) for p in paths]
    monkeypatch.undo()
    assert read == [["lat", "lon", "time"], ["time"], ["lat", "time"], ["lat", "time"]]
    assert parts[1].variables["lat"]._data is parts[0].variables["lat"]._data
    for path, got in zip(paths, parts):
        with xr.open_dataset(path, engine="h5netcdf") as ref:
            for name in ("time", "lat", "lon"):
                xr.testing.assert_identical(plain(got.variables[name]), plain(ref[name].variable))
                assert got.variables[name].encoding[MANIFEST_ENCODING_KEY].manifest.urls[0].endswith(
                    path.rsplit("/", 1)[-1])
    assert parts[2].variables["lat"].attrs["units"] == "degrees"


def plain(var: xr.Variable) -> xr.Variable:
    """Dims, values and attrs only (an index coordinate is an IndexVariable in a Dataset)."""
    return xr.Variable(var.dims, np.asarray(var.values), dict(var.attrs))


@pytest.mark.parametrize("group", ["ascending", "bounds", "aux"])
def test_decoded_cache_decodes_like_xarray(files, group):
    """With or without the cache, loaded variables decode as xr.open_dataset decodes them."""
    loadable = ["time", "lat", "lon", "time_bnds"] if group == "bounds" else ["time", "lat", "lon", "height", "area"] \
        if group == "aux" else None
    cache = DecodedCache()
    for path in files[group]:
        with_cache = open_virtual_parts(path, loadable_variables=loadable, cache=cache)
        without = open_virtual_parts(path, loadable_variables=loadable)
        with xr.open_dataset(path, engine="h5netcdf") as ref:
            for name in with_cache.loaded:
                want = plain(ref[name].variable)
                xr.testing.assert_identical(plain(with_cache.variables[name]), want)
                xr.testing.assert_identical(plain(without.variables[name]), want)
    if group == "bounds":
        assert with_cache.variables["time_bnds"].dtype.kind == "M"  # decoded with the time's units


@pytest.mark.parametrize("group", ["ascending", "bounds", "fractional"])
def test_deferred_times_decode_as_each_file_alone(files, group):
    """A cache that defers times leaves plain time coordinates raw; decoding them later gives the same parts."""
    for path in files[group]:
        deferred = open_virtual_parts(path, cache=DecodedCache(defer_times=True))
        now = open_virtual_parts(path, cache=DecodedCache())
        assert deferred.raw_times == (frozenset() if group == "bounds" else {"time"})  # bounds: decoded together
        assert deferred.variables["time"].dtype.kind == ("M" if group == "bounds" else "f")
        decoded = deferred.decoded()
        assert not decoded.raw_times and list(decoded.variables) == list(now.variables)
        for name, want in now.variables.items():
            got = decoded.variables[name]
            if name in now.loaded:
                xr.testing.assert_identical(plain(got), plain(want))
            else:
                assert same_value(got._data, want._data), name
            assert got.encoding.keys() == want.encoding.keys()
            assert all(same_value(got.encoding[k], v) for k, v in want.encoding.items()), name
        assert_same_dataset(deferred.to_dataset(), now.to_dataset())
