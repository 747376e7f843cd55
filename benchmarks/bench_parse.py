"""Parsing speed: HDFParser over a 100-file netCDF4 collection vs a bare h5py chunk-index walk.

Run by hand: ``.venv/bin/python benchmarks/bench_parse.py [--files 100] [--repeats 5]``.
Each round runs every method over all files, the floor and the vzdask parser taking
turns 10 files at a time; ratios to the floor are medians of the per-round ratios.
Target (parser issue): vzdask <= 3x the bare h5py loop. Peers in the same run:
kerchunk ``SingleHdf5ToZarr`` and VirtualiZarr 2.x ``open_virtual_dataset``
(each only if installed).
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from pathlib import Path

import netCDF4
import numpy as np

DATA = Path(__file__).resolve().parent / "_data" / "parse"
BATCH = 10  # files per interleaved batch


def create_time_lat_lon(nc, times, nlat: int, nlon: int, *, units: str = "hours since 2000-01-01",
                        unlimited: bool = False) -> None:
    """A benchmark file's time (fixed or unlimited), lat and lon dimensions, each with its coordinate variable."""
    nc.createDimension("time", None if unlimited else len(times))
    nc.createDimension("lat", nlat)
    nc.createDimension("lon", nlon)
    time_ = nc.createVariable("time", "f8", ("time",))
    time_.units = units
    time_[:] = times
    nc.createVariable("lat", "f4", ("lat",))[:] = np.linspace(-89.5, 89.5, nlat)
    nc.createVariable("lon", "f4", ("lon",))[:] = np.linspace(0.5, 359.5, nlon)


def make_collection(n_files: int) -> list[Path]:
    """n files: 2 variables of 24x180x360 float32, zlib+shuffle, chunks 1x90x180 (64 KiB)."""
    DATA.mkdir(parents=True, exist_ok=True)
    paths = []
    rng = np.random.default_rng(0)
    base = np.round(rng.random((24, 180, 360)) * 100, 1).astype("f4")
    for i in range(n_files):
        path = DATA / f"file_{i:04d}.nc"
        paths.append(path)
        if path.exists():
            continue
        with netCDF4.Dataset(path, "w") as nc:
            create_time_lat_lon(nc, np.arange(24) + 24 * i, 180, 360)
            for name in ("tas", "pr"):
                v = nc.createVariable(name, "f4", ("time", "lat", "lon"), zlib=True, shuffle=True,
                                      chunksizes=(1, 90, 180))
                v[:] = base + i
    return paths


def bare_h5py(paths):
    import h5py

    count = 0
    for path in paths:
        with h5py.File(path, "r") as f:
            for dset in f.values():
                if dset.chunks:
                    dset.id.chunk_iter(lambda info: None)
                    count += 1
    return count


def vzdask_parse(paths):
    from vzdask import ObjectStoreRegistry
    from vzdask.parsers.hdf5 import HDFParser

    registry = ObjectStoreRegistry()
    parser = HDFParser()
    return [parser(f"file://{p}", registry) for p in paths]


def vzdask_open(paths):
    from vzdask import ObjectStoreRegistry
    from vzdask.xarray import open_virtual_dataset

    registry = ObjectStoreRegistry()
    return [open_virtual_dataset(p, registry=registry) for p in paths]


def kerchunk_parse(paths):
    from kerchunk.hdf import SingleHdf5ToZarr

    return [SingleHdf5ToZarr(str(p), inline_threshold=0).translate() for p in paths]


def virtualizarr_open(paths):
    from obstore.store import LocalStore
    from virtualizarr import open_virtual_dataset
    from virtualizarr.parsers import HDFParser
    from virtualizarr.registry import ObjectStoreRegistry

    registry = ObjectStoreRegistry({"file://": LocalStore()})
    return [open_virtual_dataset(f"file://{p}", registry=registry, parser=HDFParser()) for p in paths]


def timed(func, paths) -> float:
    start = time.perf_counter()
    func(paths)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--files", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    paths = make_collection(args.files)
    candidates = {
        "bare h5py chunk-index walk (floor)": bare_h5py,
        "vzdask HDFParser -> ManifestStore": vzdask_parse,
        "vzdask open_virtual_dataset": vzdask_open,
        "kerchunk SingleHdf5ToZarr": kerchunk_parse,
        "VirtualiZarr 2.x open_virtual_dataset": virtualizarr_open,
    }
    for label, func in list(candidates.items()):
        try:
            func(paths[:2])  # warm imports and caches
        except ImportError as err:
            print(f"{label}: skipped ({err})")
            del candidates[label]
    # A round runs every method over all files. The floor and the vzdask parser (the target's pair) take
    # turns 10 files at a time, so a change in the machine's load hits both alike; the other methods follow
    # on their own. A method's ratio to the floor is the median over rounds of its per-round ratio.
    floor_label = "bare h5py chunk-index walk (floor)"
    pair = [floor_label, "vzdask HDFParser -> ManifestStore"]
    times: dict[str, list[float]] = {label: [] for label in candidates}
    for _ in range(args.repeats):
        totals = dict.fromkeys(pair, 0.0)
        for start in range(0, len(paths), BATCH):
            for label in pair:
                totals[label] += timed(candidates[label], paths[start : start + BATCH])
        for label, func in candidates.items():
            times[label].append(totals[label] if label in pair else timed(func, paths))
    results = {label: statistics.median(t) for label, t in times.items()}
    ratios = {label: statistics.median(a / b for a, b in zip(t, times[floor_label])) for label, t in times.items()}
    print(f"\n{args.files} files, median of {args.repeats} rounds")
    print(f"{'method':45s} {'seconds':>9s} {'x floor':>8s}")
    for label, seconds in results.items():
        print(f"{label:45s} {seconds:9.3f} {ratios[label]:8.2f}")
    ours = results["vzdask HDFParser -> ManifestStore"]
    for label in ("kerchunk SingleHdf5ToZarr", "VirtualiZarr 2.x open_virtual_dataset"):
        if label in results:
            print(f"vzdask parser is {results[label] / ours:.1f}x faster than {label}")


if __name__ == "__main__":
    main()
