"""Every core busy on small and medium variables (issue 19 item 6): task blocks sized for the threads.

Run by hand: ``.venv/bin/python benchmarks/bench_task_sizing.py [--files 20,30,200] [--repeats 3]``.
Each size is a collection of netCDF4 files of one float32 variable ``a`` (24x90x180 per file, zlib
level 1 + shuffle, one chunk of 1.55 MB per file): 20 files are 31 MB decoded, 30 files the issue's
46.7 MB, 200 files 311 MB, 700 files 1.09 GB. The variable is opened once with
``vzdask.open_mfdataset`` (opening is timed apart), then each reader runs in turn, rounds of every
reader, medians of ``--repeats`` rounds:

  floor          one thread: read each chunk's bytes, inflate (Python's zlib), unshuffle into a
                 preallocated array (what any reader must at least do)
  before         task blocks of up to ``vzdask.task-bytes`` (64 MiB) whatever the thread count: the layout
                 before issue 19 item 6 (``vzdask.min-task-bytes`` set to 64 MiB gives it back)
  after          the default: about 2 tasks per thread, no task under ``vzdask.min-task-bytes`` (4 MiB)
  xarray         ``xr.open_mfdataset(engine="netcdf4")`` (a chunk per file), the same three operations, opened
                 and closed in each (left open, HDF5's chunk cache serves the next round decoded chunks)

Operations: ``ds["a"].sum().compute()``, ``ds["a"].values``, ``ds.compute()``. Target: each <= 0.75x
the floor. The machine is shared (2 cores here): the load average is printed with the figures,
per-round ratios to the floor (same round) beside the medians, and the CPU seconds each reader's
threads used (a loaded machine changes them least; wall / CPU shows how many cores a reader kept busy).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings
import zlib
from pathlib import Path

import numpy as np

SHAPE = (24, 90, 180)
DATA = Path(__file__).resolve().parent / "_data" / "task_sizing"


def make_files(n: int) -> list[str]:
    import netCDF4

    root = DATA / f"{n}"
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    base = np.round(rng.random(SHAPE) * 100, 1).astype("f4")
    paths = []
    for i in range(n):
        path = root / f"f{i:04d}.nc"
        paths.append(str(path))
        if path.exists():
            continue
        with netCDF4.Dataset(path, "w") as nc:
            for dim, size in zip(("time", "lat", "lon"), SHAPE):
                nc.createDimension(dim, size)
            nc.createVariable("time", "f8", ("time",))[:] = np.arange(24 * i, 24 * i + 24, dtype="f8")
            var = nc.createVariable("a", "f4", ("time", "lat", "lon"), zlib=True, shuffle=True, complevel=1,
                                    chunksizes=SHAPE)
            var[:] = base + i
    return paths


def floor_read(paths) -> np.ndarray:
    """One thread: each chunk's bytes read, inflated and unshuffled into a preallocated array."""
    import h5py
    from numcodecs import Shuffle

    unshuffle = Shuffle(elementsize=4).decode
    out = np.empty((SHAPE[0] * len(paths), *SHAPE[1:]), "f4")
    for f, path in enumerate(paths):
        with h5py.File(path) as h5, open(path, "rb", buffering=0) as raw:
            chunks: list = []
            h5["a"].id.chunk_iter(lambda info: chunks.append((info.chunk_offset, info.byte_offset, info.size)))
            for (t, y, x), offset, size in chunks:
                raw.seek(offset)
                data = np.frombuffer(unshuffle(zlib.decompress(raw.read(size))), "f4").reshape(SHAPE)
                out[SHAPE[0] * f + t : SHAPE[0] * (f + 1) + t, y : y + SHAPE[1], x : x + SHAPE[2]] = data
    return out


def measure(func):
    """``(wall seconds, CPU seconds of this process's threads, result)``: CPU time is what a loaded machine
    changes least."""
    c0, t0 = time.process_time(), time.perf_counter()
    result = func()
    return time.perf_counter() - t0, time.process_time() - c0, result


def run(n: int, repeats: int) -> None:
    import dask
    import xarray as xr

    import vzdask

    paths = make_files(n)
    nbytes = n * int(np.prod(SHAPE)) * 4
    opened = {}
    for label, config in (("before", {"vzdask.min-task-bytes": "64MiB"}), ("after", {})):
        with dask.config.set(config):
            t, _, opened[label] = measure(lambda: vzdask.open_mfdataset(paths))
        print(f"  open {label}: {t:.2f} s, {opened[label]['a'].data.npartitions} task(s) for 'a'")

    def xarray(op):
        with xr.open_mfdataset(paths, engine="netcdf4") as ds:  # closed: HDF5's chunk cache would keep decoded
            return op(ds)                                        # chunks for the next round

    readers = {"floor": lambda: floor_read(paths)}
    ops = {"sum": lambda ds: ds["a"].sum().compute(), ".values": lambda ds: ds["a"].values,
           ".compute()": lambda ds: ds.compute()["a"].values}
    for label, ds in opened.items():
        for op_name, op in ops.items():
            readers[f"{label} {op_name}"] = lambda ds=ds, op=op: op(ds)
    for op_name, op in ops.items():
        readers[f"xarray {op_name}"] = lambda op=op: xarray(op)
    expected = floor_read(paths)
    for label, func in readers.items():  # once before timing, and the values checked
        got = func()
        if "sum" in label:
            assert np.isclose(float(got), float(expected.sum(dtype="f8")), rtol=1e-4), label
        else:
            assert np.array_equal(np.asarray(got), expected), label
    del expected, got
    times: dict[str, list[float]] = {label: [] for label in readers}
    cpu: dict[str, list[float]] = {label: [] for label in readers}
    for _ in range(repeats):
        for label, func in readers.items():
            wall, used, _ = measure(func)
            times[label].append(wall)
            cpu[label].append(used)
    floor, floor_cpu = statistics.median(times["floor"]), statistics.median(cpu["floor"])
    load = os.getloadavg()[0]
    print(f"{n} files, {nbytes / 1e6:.0f} MB decoded, median of {repeats} rounds, load average {load:.1f}")
    print(f"  {'reader':22s} {'wall':>8s} {'x floor':>8s} {'per round':>10s} {'CPU s':>8s} {'x floor CPU':>12s}")
    for label, ts in times.items():
        ratio = statistics.median(t / f for t, f in zip(ts, times["floor"]))
        used = statistics.median(cpu[label])
        print(f"  {label:22s} {statistics.median(ts):8.3f} {statistics.median(ts) / floor:8.2f} {ratio:10.2f} "
              f"{used:8.3f} {used / floor_cpu:12.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", default="20,30,200", help="collection sizes in files (1.55 MB decoded each)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    for n in (int(s) for s in args.files.split(",")):
        run(n, args.repeats)


if __name__ == "__main__":
    main()
