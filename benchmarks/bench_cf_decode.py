"""Reading packed variables: CF unpacking inside the load tasks against xarray's lazy decoding on top.

Run by hand: ``.venv/bin/python benchmarks/bench_cf_decode.py [--files 40] [--repeats 5]``.
The collection: one int16 variable per file, 24x180x360, ``scale_factor``/``add_offset``/``_FillValue``
(as ERA5-style netCDF files are packed), zlib+shuffle, chunks 1x90x180. Each reader computes the
whole variable once per round; times are medians over the rounds, ratios medians of per-round ratios.

  vzdask                 open_mfdataset(...)["x"].values: unpacked in each block's load task
  vzdask, map_blocks     the same dask arrays without that (to_dask() + xr.decode_cf, as before):
                         xarray's decoding layer on top of the load tasks
  xarray                 xr.open_mfdataset(engine="h5netcdf"), native chunks
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

import netCDF4
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_parse import create_time_lat_lon  # noqa: E402

DATA = Path(__file__).resolve().parent / "_data" / "packed"


def make_collection(n_files: int) -> list[Path]:
    DATA.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    values = 250 + 50 * rng.random((24, 180, 360))
    mask = rng.random(values.shape) < 0.02
    paths = []
    for i in range(n_files):
        path = DATA / f"packed_{i:04d}.nc"
        paths.append(path)
        if path.exists():
            continue
        with netCDF4.Dataset(path, "w") as nc:
            create_time_lat_lon(nc, np.arange(24) + 24 * i, 180, 360, unlimited=True)
            x = nc.createVariable("x", "i2", ("time", "lat", "lon"), zlib=True, shuffle=True,
                                  chunksizes=(1, 90, 180), fill_value=np.int16(-32767))
            x.scale_factor, x.add_offset = np.float32(0.002), np.float32(275.0)
            x[:] = np.ma.masked_where(mask, values)
    return paths


def vzdask_in_tasks(paths):
    import vzdask

    return vzdask.open_mfdataset([str(p) for p in paths])["x"].values


def vzdask_map_blocks(paths):
    import xarray as xr

    import vzdask
    from vzdask.accessor import VirtualDatasetAccessor

    virtual = vzdask.open_virtual_mfdataset([str(p) for p in paths])
    return xr.decode_cf(VirtualDatasetAccessor(virtual).to_dask())["x"].values


def xarray_read(paths):
    import xarray as xr

    with xr.open_mfdataset(paths, engine="h5netcdf", combine="by_coords") as ds:
        return ds["x"].values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    paths = make_collection(args.files)
    readers = {"vzdask": vzdask_in_tasks, "vzdask, map_blocks": vzdask_map_blocks, "xarray h5netcdf": xarray_read}
    expected = {label: func(paths[:2]) for label, func in readers.items()}  # warm up; the same values and dtype
    for label, got in expected.items():
        assert got.dtype == expected["xarray h5netcdf"].dtype, (label, got.dtype)
        np.testing.assert_array_equal(got, expected["xarray h5netcdf"], err_msg=label)
    rounds: dict[str, list[float]] = {label: [] for label in readers}
    for _ in range(args.repeats):
        for label, func in readers.items():
            start = time.perf_counter()
            func(paths)
            rounds[label].append(time.perf_counter() - start)
    print(f"{args.files} files, int16 packed 24x180x360 each, {args.repeats} rounds")
    for label, times in rounds.items():
        print(f"  {label:20s} {statistics.median(times):7.2f} s")
    for peer in ("vzdask, map_blocks", "xarray h5netcdf"):
        ratio = statistics.median(a / b for a, b in zip(rounds[peer], rounds["vzdask"]))
        print(f"  vzdask is {ratio:.1f}x faster than {peer}")


if __name__ == "__main__":
    sys.exit(main())
