"""Many small files on a cluster: open_virtual_mfdataset serial and on a 2-worker LocalCluster, vs VirtualiZarr.

Run by hand: ``.venv/bin/python benchmarks/bench_many_files.py [--files 1000] [--repeats 3] [--no-peers]``.
Each file: time (4 steps), lat, lon and 2 variables of 4x90x180 float32, zlib+shuffle,
chunks 1x45x90. The cluster is ``LocalCluster(n_workers=2, threads_per_worker=1,
processes=True)``; VirtualiZarr 2.x runs serial and with ``parallel="dask"`` on the
same cluster (its per-file datasets come back to the client and are combined there;
vzdask parses batches of files on the workers and combines them there). Times are
medians of the rounds; each round runs every method once, in turn.
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

DATA = Path(__file__).resolve().parent / "_data" / "many"


def make_collection(n_files: int) -> list[str]:
    DATA.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n_files):
        path = DATA / f"small_{i:05d}.nc"
        paths.append(str(path))
        if path.exists():
            continue
        with netCDF4.Dataset(path, "w") as nc:
            create_time_lat_lon(nc, np.arange(4) + 4 * i, 90, 180, units="days since 2000-01-01")
            for name in ("tas", "pr"):
                v = nc.createVariable(name, "f4", ("time", "lat", "lon"), zlib=True, shuffle=True,
                                      chunksizes=(1, 45, 90))
                v.units = "K"
                v[:] = np.full((4, 90, 180), i, "f4")
    return paths


def vzdask_open(paths, parallel=None):
    import vzdask

    return vzdask.open_virtual_mfdataset(paths, parallel=parallel)


def virtualizarr_open(paths, parallel=False):
    from obstore.store import LocalStore
    from virtualizarr import open_virtual_mfdataset
    from virtualizarr.parsers import HDFParser
    from virtualizarr.registry import ObjectStoreRegistry

    registry = ObjectStoreRegistry({"file://": LocalStore()})
    return open_virtual_mfdataset([f"file://{p}" for p in paths], registry=registry, parser=HDFParser(),
                                  combine="by_coords", coords="minimal", compat="override", parallel=parallel)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-peers", action="store_true", help="vzdask only")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    import dask
    import xarray as xr
    from distributed import Client, LocalCluster

    paths = make_collection(args.files)
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster,
        Client(cluster, set_as_default=False) as client,
    ):
        methods = {
            "vzdask serial": lambda: vzdask_open(paths),
            "vzdask cluster": lambda: vzdask_open(paths, parallel=client),
        }
        if not args.no_peers:
            def virtualizarr_on_cluster():
                with dask.config.set(scheduler=client):
                    return virtualizarr_open(paths, parallel="dask")

            methods["VirtualiZarr 2.x serial"] = lambda: virtualizarr_open(paths)
            methods["VirtualiZarr 2.x dask cluster"] = virtualizarr_on_cluster
        vzdask_open(paths[:20], parallel=client)  # warm up (the workers' imports)
        serial = vzdask_open(paths)
        on_cluster = vzdask_open(paths, parallel=client)
        xr.testing.assert_identical(serial, on_cluster)  # the same dataset, and the same references:
        for name in ("tas", "pr"):
            assert serial[name].data.manifest == on_cluster[name].data.manifest, name
        rounds: dict[str, list[float]] = {label: [] for label in methods}
        for _ in range(args.repeats):
            for label, func in methods.items():
                start = time.perf_counter()
                ds = func()
                rounds[label].append(time.perf_counter() - start)
                assert ds.sizes["time"] == 4 * args.files, (label, dict(ds.sizes))
    print(f"{args.files} files, {args.repeats} rounds (median), 2 worker processes")
    medians = {label: statistics.median(times) for label, times in rounds.items()}
    for label, median in medians.items():
        print(f"  {label:32s} {median:7.2f} s  ({median / args.files * 1e3:.2f} ms a file)")
    base = medians["vzdask cluster"]
    for label, median in medians.items():
        if label != "vzdask cluster":
            print(f"  vzdask cluster is {median / base:.1f}x faster than {label}")


if __name__ == "__main__":
    main()
