"""Helpers for tests that write small netCDF4 files with netCDF-C."""

from __future__ import annotations

import numpy as np


def create_time_lat_lon(nc, times, lat, lon, time_units: str = "days since 2000-01-01") -> None:
    """An unlimited ``time`` and fixed ``lat``/``lon`` dimensions, each with its coordinate variable."""
    nc.createDimension("time", None)
    nc.createDimension("lat", len(lat))
    nc.createDimension("lon", len(lon))
    t = nc.createVariable("time", "f8", ("time",))
    t.units = time_units
    t[:] = np.asarray(times, dtype="f8")
    nc.createVariable("lat", "f4", ("lat",))[:] = np.asarray(lat, dtype="f4")
    nc.createVariable("lon", "f4", ("lon",))[:] = np.asarray(lon, dtype="f4")
