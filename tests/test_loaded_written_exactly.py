"""Loaded variables are written exactly (issue 17 item 5).

A variable loaded because its packing differs between files (what
``CFEncodingMismatchError`` tells users to do) keeps the first file's
encoding in memory; written with it, the other files' values overflowed
int16 silently. Every output here is read back (fsspec's ReferenceFileSystem
+ zarr, Icechunk + zarr) and compared with ``xr.open_mfdataset`` of the
netCDF4 files, written by netCDF4 in the tests.
"""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import fsspec
import icechunk
import netCDF4
import numpy as np
import pytest
import xarray as xr

import vzdask
from vzdask.errors import CFEncodingMismatchError, VzdaskWarning
from tests.icechunk_repos import Repo

VZDASK = Path(sys.executable).parent / "vzdask"
LOADED = ["pr", "time", "lat"]


def write_packed(path: Path, k: int, scale_factor: float, values, *, time_units="days since 2000-01-01",
                 times=None, time_dtype="f8") -> str:
    """One time step of int16-packed ``pr`` on two latitudes."""
    with netCDF4.Dataset(path, "w") as nc:
        nc.createDimension("time", None)
        nc.createDimension("lat", 2)
        t = nc.createVariable("time", time_dtype, ("time",))
        t.units = time_units
        t[:] = [k] if times is None else times
        lat = nc.createVariable("lat", "f4", ("lat",))
        lat[:] = [10.0, 20.0]
        pr = nc.createVariable("pr", "i2", ("time", "lat"), fill_value=np.int16(-32767))
        pr.scale_factor = scale_factor
        pr.add_offset = 0.0
        pr.units = "kg m-2"
        pr[:] = np.asarray([values], dtype="f8")
    return str(path)


@pytest.fixture
def scaleov(tmp_path) -> list[str]:
    """The issue's collection: the second file's values do not fit the first file's packing (int16 overflows)."""
    directory = tmp_path / "scaleov"
    directory.mkdir()
    return [write_packed(directory / "f0.nc", 0, 0.01, [200.0, 250.0]),
            write_packed(directory / "f1.nc", 1, 1.0, [30000.0, 100.0])]


def originals(paths) -> xr.Dataset:
    with xr.open_mfdataset(paths, engine="netcdf4") as ds:
        return ds.load()


def read_kerchunk(path) -> xr.Dataset:
    with xr.open_dataset(fsspec.get_mapper("reference://", fo=path if isinstance(path, dict) else str(path)), engine="zarr",
                         consolidated=False) as ds:
        return ds.load()


def test_packing_that_differs_is_refused_virtual_and_written_exactly_loaded(scaleov, tmp_path):
    want = originals(scaleov)
    np.testing.assert_array_equal(want["pr"].values, [[200.0, 250.0], [30000.0, 100.0]])
    with pytest.raises(CFEncodingMismatchError, match="'pr'"):
        vzdask.open_virtual_mfdataset(scaleov)
    ds = vzdask.open_virtual_mfdataset(scaleov, loadable_variables=LOADED)
    assert ds["pr"].encoding["scale_factor"] == 0.01  # the first file's, as xarray's concat keeps it
    with pytest.warns(VzdaskWarning, match=r"variable 'pr': its values do not fit .*scale_factor=0.01.*"
                                           r"written unpacked as float64"):
        ds.vz.to_kerchunk(tmp_path / "out.json", format="json")
    back = read_kerchunk(tmp_path / "out.json")
    xr.testing.assert_identical(back, want)
    assert "scale_factor" not in back["pr"].encoding and back["pr"].encoding["dtype"] == np.float64
    with pytest.warns(VzdaskWarning, match="'pr'"):
        refs = ds.vz.to_kerchunk()
    xr.testing.assert_identical(read_kerchunk(refs), want)
    repo = Repo(tmp_path / "repo", tmp_path / "scaleov")
    with pytest.warns(VzdaskWarning, match="'pr'"):
        ds.vz.to_icechunk(repo.writable(), commit="loaded")
    xr.testing.assert_identical(repo.read().load(), want)
    # the analysis dataset reads the same values (each file decoded with its own packing)
    xr.testing.assert_identical(vzdask.open_mfdataset(scaleov).compute(), want)


def test_packing_that_holds_the_values_is_kept(tmp_path):
    paths = [write_packed(tmp_path / f"s{k}.nc", k, 0.01, [200.0 + k, 250.5]) for k in range(2)]
    want = originals(paths)
    ds = vzdask.open_virtual_mfdataset(paths, loadable_variables=LOADED)
    with warnings.catch_warnings():
        warnings.simplefilter("error", VzdaskWarning)
        refs = ds.vz.to_kerchunk()
        repo = Repo(tmp_path / "repo", tmp_path)
        ds.vz.to_icechunk(repo.writable(), commit="kept")
    back = read_kerchunk(refs)
    xr.testing.assert_identical(back, want)
    assert back["pr"].encoding["dtype"] == np.int16 and back["pr"].encoding["scale_factor"] == 0.01
    stored = repo.read()
    xr.testing.assert_identical(stored.load(), want)
    assert stored["pr"].encoding["dtype"] == np.int16


def test_values_changed_after_loading_out_of_range(tmp_path):
    paths = [write_packed(tmp_path / f"s{k}.nc", k, 0.01, [200.0, 250.0]) for k in range(2)]
    ds = vzdask.open_virtual_mfdataset(paths, loadable_variables=LOADED)
    ds["pr"] = ds["pr"] * 1000  # xarray keeps the encoding; 200000 does not fit int16 * 0.01
    ds["pr"].encoding = dict(vzdask.open_virtual_mfdataset(paths, loadable_variables=LOADED)["pr"].encoding)
    with pytest.warns(VzdaskWarning, match="'pr'"):
        back = read_kerchunk(ds.vz.to_kerchunk())
    np.testing.assert_array_equal(back["pr"].values, originals(paths)["pr"].values * 1000)


def test_loaded_times_in_other_units_are_written_exactly(tmp_path):
    """Integer days in the first file, hours in the second: the first file's encoding cannot hold 06:00."""
    paths = [write_packed(tmp_path / "t0.nc", 0, 0.01, [1.0, 2.0], times=[0], time_dtype="i4"),
             write_packed(tmp_path / "t1.nc", 0, 0.01, [3.0, 4.0], time_units="hours since 2000-01-02",
                          times=[6.0])]
    want = originals(paths)
    np.testing.assert_array_equal(want["time"].values, np.array(["2000-01-01", "2000-01-02T06"], "datetime64[ns]"))
    ds = vzdask.open_virtual_mfdataset(paths, loadable_variables=LOADED)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # whichever way the times are made exact, they must read back so
        back = read_kerchunk(ds.vz.to_kerchunk())
    xr.testing.assert_identical(back, want)


def test_cli_repro_of_the_issue(scaleov, tmp_path):
    want = originals(scaleov)
    pattern = str(Path(scaleov[0]).parent / "*.nc")
    for out in (tmp_path / "out.json", tmp_path / "out-repo"):
        result = subprocess.run([str(VZDASK), "virtualize", pattern, "-o", str(out), "--load-var", "pr",
                                 "--load-var", "time", "--load-var", "lat"], capture_output=True, text=True,
                                timeout=120)
        assert result.returncode == 0, result.stderr
        assert "variable 'pr': its values do not fit" in result.stderr
        if out.suffix == ".json":
            back = read_kerchunk(out)
        else:
            repo = icechunk.Repository.open(icechunk.local_filesystem_storage(str(out)))
            with xr.open_zarr(repo.readonly_session("main").store, consolidated=False) as stored:
                back = stored.load()
        np.testing.assert_array_equal(back["pr"].values, [[200.0, 250.0], [30000.0, 100.0]])
        xr.testing.assert_identical(back, want)


def test_finer_packing_in_a_later_file_is_not_rounded(tmp_path):
    """In range for the first file's int16 packing, but finer: re-encoding would round 1.234 to 1.23."""
    paths = [write_packed(tmp_path / "a.nc", 0, 0.01, [1.5, 2.25]),
             write_packed(tmp_path / "b.nc", 1, 0.001, [1.234, 2.0])]
    want = originals(paths)
    ds = vzdask.open_virtual_mfdataset(paths, loadable_variables=LOADED)
    with pytest.warns(VzdaskWarning, match="'pr'"):
        back = read_kerchunk(ds.vz.to_kerchunk())
    xr.testing.assert_identical(back, want)
    assert back["pr"].values[1, 0] == want["pr"].values[1, 0] != 1.23
