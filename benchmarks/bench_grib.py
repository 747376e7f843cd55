"""GRIB2: virtualizing and reading a GFS-like collection, vzdask against kerchunk, gribberish and cfgrib.

Run by hand: ``.venv/bin/python benchmarks/bench_grib.py [--files 100] [--repeats 5] [--peer-files 5]``;
``--quick`` is a small run (8 files, 2 for the peers). The last line printed
is a one-line JSON summary (``{"format": "grib", ...}``) for
``benchmarks/bench_formats.py``.

The collection (issue 20): ``--files`` GRIB2 files of 51 messages each on a
1-degree global grid (181 x 360), written with ecCodes, packed as GFS packs
(complex packing with spatial differencing, template 5.3): t, u, v, gh, r
on 9 pressure levels, 2 m temperature, 10 m winds, mean-sea-level pressure,
surface pressure and a 6-hour accumulated precipitation with a bitmap; one
reference time per file, 6 hours apart, each with its wgrib2-style
``.idx``.

Virtualize (parse every message's references; ms per file, median of the
rounds, every tool's rounds interleaved, each round of each tool in a new
Python process unless ``--same-process``): vzdask ``GRIBParser`` scanning the
messages and reading the ``.idx`` (warm: ecCodes' answers for the
collection's kinds of message known, as for every file after a collection's
first; cold: forgotten before each round, so every round pays ecCodes once
per kind), kerchunk ``scan_grib`` and gribberish's VirtualiZarr parser
(scan and ``.idx``; both on the first ``--peer-files`` files: they are
slow). Target: >= 5x faster than the fastest peer.

Read (all values of every hypercube, all files; seconds, median of the
rounds, and the median of the rounds' ratios to the floor): the
single-thread decode floor (every message's bytes already in memory,
decoded one after another with ecCodes, as the codec does), vzdask (every
group's combined virtual dataset in one ``dask.compute``; also group by
group, ``ds.vzdask.compute()`` each) on the local threaded scheduler and on
a ``distributed`` cluster of 2 one-thread worker processes, and ``xr.open_mfdataset(engine="cfgrib")`` per hypercube
(``filter_by_keys``). Target: vzdask <= 0.75x the floor.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

DATA = Path(__file__).resolve().parent / "_data" / "grib"
NI, NJ = 360, 181
LEVELS = (1000, 925, 850, 700, 500, 300, 250, 200, 100)
#: (shortName, typeOfLevel, level, stepType, wgrib2 name)
FIELDS = (
    [(name, "isobaricInhPa", level, "instant", idx) for name, idx in
     (("t", "TMP"), ("u", "UGRD"), ("v", "VGRD"), ("gh", "HGT"), ("r", "RH")) for level in LEVELS]
    + [("2t", "heightAboveGround", 2, "instant", "TMP"), ("10u", "heightAboveGround", 10, "instant", "UGRD"),
       ("10v", "heightAboveGround", 10, "instant", "VGRD"), ("prmsl", "meanSea", 0, "instant", "PRMSL"),
       ("sp", "surface", 0, "instant", "PRES"), ("tp", "surface", 0, "accum", "APCP")]
)
#: vzdask's group names for this collection, and cfgrib's filters for the same hypercubes
GROUPS = {
    "heightAboveGround_2": {"typeOfLevel": "heightAboveGround", "level": 2},
    "heightAboveGround_10": {"typeOfLevel": "heightAboveGround", "level": 10},
    "isobaricInhPa": {"typeOfLevel": "isobaricInhPa"},
    "meanSea": {"typeOfLevel": "meanSea"},
    "surface": {"typeOfLevel": "surface"},
}


def make_collection(n_files: int) -> list[Path]:
    import eccodes

    DATA.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    lat = np.linspace(90, -90, NJ)[:, None]
    lon = np.linspace(0, 359, NI)[None, :]
    base = (np.cos(np.radians(lat)) * np.sin(np.radians(lon) * 3)).ravel()
    paths = []
    for i in range(n_files):
        path = DATA / f"gfs.{i:04d}.grib2"
        paths.append(path)
        if path.exists() and path.with_name(path.name + ".idx").exists():
            continue
        date, hour = 20240101 + i // 4, (i % 4) * 6
        lines, offset = [], 0
        with open(path, "wb") as f:
            for number, (short, level_type, level, step_type, idx_name) in enumerate(FIELDS, 1):
                h = eccodes.codes_grib_new_from_samples("GRIB2")
                for key, value in (("Ni", NI), ("Nj", NJ), ("latitudeOfFirstGridPointInDegrees", 90.0),
                                   ("latitudeOfLastGridPointInDegrees", -90.0),
                                   ("longitudeOfFirstGridPointInDegrees", 0.0),
                                   ("longitudeOfLastGridPointInDegrees", 359.0),
                                   ("iDirectionIncrementInDegrees", 1.0), ("jDirectionIncrementInDegrees", 1.0),
                                   ("dataDate", date), ("dataTime", hour * 100), ("typeOfLevel", level_type),
                                   ("level", level), ("shortName", short), ("bitsPerValue", 16)):
                    eccodes.codes_set(h, key, value)
                if step_type == "accum":
                    eccodes.codes_set(h, "stepType", "accum")
                    eccodes.codes_set(h, "stepRange", "0-6")
                    forecast = "0-6 hour acc fcst"
                else:
                    eccodes.codes_set(h, "stepRange", "6")
                    forecast = "6 hour fcst"
                eccodes.codes_set(h, "packingType", "grid_complex_spatial_differencing")
                values = 280 + 20 * base + rng.normal(0, 1, NI * NJ)
                if step_type == "accum":
                    eccodes.codes_set(h, "bitmapPresent", 1)
                    values[values < 280] = 9999  # dry points: absent
                eccodes.codes_set_values(h, values)
                message = eccodes.codes_get_message(h)
                eccodes.codes_release(h)
                f.write(message)
                level_text = {"isobaricInhPa": f"{level} mb", "heightAboveGround": f"{level} m above ground",
                              "meanSea": "mean sea level", "surface": "surface"}[level_type]
                lines.append(f"{number}:{offset}:d={date}{hour:02d}:{idx_name}:{level_text}:{forecast}:")
                offset += len(message)
        path.with_name(path.name + ".idx").write_text("\n".join(lines) + "\n")
    return paths


# ---------------------------------------------------------------- virtualize
def vzdask_scan(paths):
    from vzdask import ObjectStoreRegistry
    from vzdask.parsers import GRIBParser

    registry, parser = ObjectStoreRegistry(), GRIBParser()
    return [parser(f"file://{p}", registry) for p in paths]


def vzdask_idx(paths):
    from vzdask import ObjectStoreRegistry
    from vzdask.parsers import GRIBParser

    registry, parser = ObjectStoreRegistry(), GRIBParser(idx=True)
    return [parser(f"file://{p}", registry) for p in paths]


def kerchunk_scan(paths):
    from kerchunk.grib2 import scan_grib

    return [scan_grib(str(p)) for p in paths]


def gribberish_parse(paths):
    from gribberish.virtualizarr import GribberishParser
    from obstore.store import LocalStore
    from virtualizarr.registry import ObjectStoreRegistry

    registry, parser = ObjectStoreRegistry({"file://": LocalStore()}), GribberishParser()
    return [parser(f"file://{p}", registry) for p in paths]


def gribberish_idx(paths):
    from gribberish.virtualizarr import GribberishParser
    from obstore.store import LocalStore
    from virtualizarr.registry import ObjectStoreRegistry

    registry, parser = ObjectStoreRegistry({"file://": LocalStore()}), GribberishParser(use_index=".idx")
    return [parser(f"file://{p}", registry) for p in paths]


# ---------------------------------------------------------------------- read
def decode_floor(messages):
    import eccodes

    total = 0
    for message in messages:
        h = eccodes.codes_new_from_message(message)
        eccodes.codes_set(h, "missingValue", float(np.finfo(np.float32).max))
        values = eccodes.codes_get_values(h).astype(np.float32)
        eccodes.codes_release(h)
        total += values.size
    return total


def vzdask_read(virtual):
    """Every group's variables in one ``dask.compute`` (their tasks share the workers)."""
    import dask

    arrays = [ds[name].data for ds in virtual.values() for name in ds.data_vars]
    return sum(int(a.size) for a in dask.compute(*arrays))


def vzdask_read_per_group(virtual):
    return sum(int(v.size) for ds in virtual.values() for v in ds.vzdask.compute().data_vars.values())


def cfgrib_read(paths):
    import xarray as xr

    total = 0
    for filters in GROUPS.values():
        ds = xr.open_mfdataset([str(p) for p in paths], engine="cfgrib", combine="nested", concat_dim="time",
                               backend_kwargs={"indexpath": "", "filter_by_keys": filters}).load()
        total += sum(int(v.size) for v in ds.data_vars.values())
    return total


def vzdask_scan_cold(paths):
    from vzdask.parsers.grib import clear_caches

    clear_caches()
    return vzdask_scan(paths)


def vzdask_idx_cold(paths):
    from vzdask.parsers.grib import clear_caches

    clear_caches()
    return vzdask_idx(paths)


def timed(func, *args) -> float:
    start = time.perf_counter()
    func(*args)
    return time.perf_counter() - start


VIRTUALIZERS = {
    "vzdask GRIBParser (scan)": (vzdask_scan, False),
    "vzdask GRIBParser(idx=True)": (vzdask_idx, False),
    "vzdask GRIBParser (scan, cold)": (vzdask_scan_cold, False),
    "vzdask GRIBParser(idx=True, cold)": (vzdask_idx_cold, False),
    "kerchunk scan_grib": (kerchunk_scan, True),
    "gribberish VirtualiZarr parser (scan)": (gribberish_parse, True),
    "gribberish VirtualiZarr parser (.idx)": (gribberish_idx, True),
}  # label: (function, a peer: runs on the first --peer-files files only)


def time_one(label: str, paths: list[Path]) -> float:
    """Seconds per file of one virtualizer, warmed (imports; for vzdask, ecCodes' answers for the collection known)."""
    func, _ = VIRTUALIZERS[label]
    func(paths[:1])
    if "cold" not in label:
        vzdask_scan(paths[:1])  # the warm rounds: as for every file after a collection's first
    return timed(func, paths) / len(paths)


def isolated_round(label: str, n_files: int) -> float | None:
    """``time_one`` in a new Python process (no tool's threads, caches or allocations slow another's); None if skipped."""
    out = subprocess.run([sys.executable, __file__, "--time-one", label, "--files", str(n_files)],
                         capture_output=True, text=True)
    last = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else ""
    if out.returncode or not last.startswith("{"):
        print(f"{label}: skipped ({(out.stderr.strip().splitlines() or ['no output'])[-1]})")
        return None
    return json.loads(last)["seconds_per_file"]


def main() -> None:
    import vzdask

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--files", type=int, default=100)
    parser.add_argument("--peer-files", type=int, default=5, help="files the slow peers virtualize per round")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="a small run: 8 files, 2 for the peers")
    parser.add_argument("--no-cfgrib-read", action="store_true", help="skip reading everything with cfgrib")
    parser.add_argument("--no-distributed", action="store_true", help="skip reading on a distributed cluster")
    parser.add_argument("--same-process", action="store_true",
                        help="virtualize with every tool in this process (by default each round of each tool runs in "
                             "a new process: gribberish's VirtualiZarr parser leaves 36 threads behind, after which "
                             "every obstore read here took 0.2-0.3 ms longer)")
    parser.add_argument("--time-one", metavar="LABEL", help=argparse.SUPPRESS)  # one isolated round (internal)
    args = parser.parse_args()
    if args.time_one:
        warnings.simplefilter("ignore")
        print(json.dumps({"seconds_per_file": time_one(args.time_one, make_collection(args.files))}))
        return
    if args.quick:
        args.files, args.peer_files = 8, 2
    args.repeats = max(args.repeats, 3)  # medians of at least 3
    warnings.simplefilter("ignore")
    load_before = os.getloadavg()[0]
    paths = make_collection(args.files)
    peer_paths = paths[: args.peer_files]
    size = sum(p.stat().st_size for p in paths)
    print(f"{len(paths)} files, {len(FIELDS)} messages each, {size / 2**20:.1f} MiB; grid {NJ}x{NI}; "
          f"load average {load_before:.1f} on {os.cpu_count()} cores")

    scan, idx = "vzdask GRIBParser (scan)", "vzdask GRIBParser(idx=True)"
    order = list(VIRTUALIZERS)
    per_file: dict[str, list[float]] = {label: [] for label in order}
    if args.same_process:
        for label, (func, _) in VIRTUALIZERS.items():
            try:
                func(paths[:1])  # imports
            except ImportError as err:
                print(f"{label}: skipped ({err})")
                order.remove(label)
    for round_number in range(args.repeats):  # each round starts with another tool
        shift = round_number % len(order)
        for label in order[shift:] + order[:shift]:
            files = peer_paths if VIRTUALIZERS[label][1] else paths
            if args.same_process:
                seconds: float | None = time_one(label, files)
            else:
                seconds = isolated_round(label, len(files))
                if seconds is None:
                    order.remove(label)
                    continue
            per_file[label].append(seconds)
    per_file = {label: times for label, times in per_file.items() if label in order}
    where = "all in this process" if args.same_process else "each tool's round in a new process"
    print(f"\nvirtualize, ms per file (median of {args.repeats} rounds, {where}; the rounds)")
    medians = {label: statistics.median(t) * 1e3 for label, t in per_file.items()}
    for label, ms in medians.items():
        print(f"  {label:42s} {ms:9.2f}   ({' '.join(f'{t * 1e3:.1f}' for t in per_file[label])})")
    summary: dict[str, object] = {"format": "grib", "files": len(paths), "peer_files": len(peer_paths),
                                  "repeats": args.repeats, "virtualize_isolated": not args.same_process}
    peers = {k: v for k, v in medians.items() if not k.startswith("vzdask")}
    if peers:
        fastest = min(peers, key=peers.__getitem__)
        summary["fastest_peer"] = fastest
        summary["fastest_peer_ms_per_file"] = round(peers[fastest], 3)
        for label, key in ((scan, "scan"), (idx, "idx"), ("vzdask GRIBParser (scan, cold)", "scan_cold"),
                           ("vzdask GRIBParser(idx=True, cold)", "idx_cold")):
            ratio = peers[fastest] / medians[label]
            best = min(min(per_file[p]) for p in peers) / min(per_file[label])  # the load-sensitive round left out
            summary[f"virtualize_{key}_ms_per_file"] = round(medians[label], 3)
            summary[f"virtualize_{key}_speedup_vs_fastest_peer"] = round(ratio, 2)
            summary[f"virtualize_{key}_speedup_best_rounds"] = round(best, 2)
            print(f"  {label} is {ratio:.1f}x faster than the fastest peer ({fastest}); best rounds: {best:.1f}x")

    messages = []
    for p in paths:
        data = p.read_bytes()
        position = 0
        while position < len(data):
            length = int.from_bytes(data[position + 8 : position + 16], "big")
            messages.append(data[position : position + length])
            position += length
    from vzdask.parsers import GRIBParser

    virtual = {group: vzdask.open_virtual_mfdataset([str(p) for p in paths], parser=GRIBParser(group=group),
                                                    combine="nested", concat_dim="time") for group in GROUPS}
    floor = "single-thread ecCodes decode (floor)"
    threads = "vzdask compute, threads"
    readers = {
        floor: lambda: decode_floor(messages),
        threads: lambda: vzdask_read(virtual),
        "vzdask compute, threads, group by group": lambda: vzdask_read_per_group(virtual),
    }
    cluster = client = None
    if not args.no_distributed:
        try:
            from distributed import Client, LocalCluster

            cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
            client = Client(cluster, set_as_default=False)
        except ImportError as err:
            print(f"distributed: skipped ({err})")

        def on_cluster():
            with client.as_current():  # type: ignore[union-attr]
                return vzdask_read(virtual)

        if client is not None:
            on_cluster()  # the workers' imports
            readers["vzdask compute, distributed 2 processes"] = on_cluster
    if not args.no_cfgrib_read:
        readers["cfgrib + xr.open_mfdataset per group"] = lambda: cfgrib_read(paths)
    read_times: dict[str, list[float]] = {label: [] for label in readers}
    try:
        for _ in range(args.repeats):
            for label, func in readers.items():
                read_times[label].append(timed(func))
    finally:
        if client is not None:
            client.close()
            cluster.close()  # type: ignore[union-attr]
    print(f"\nread all values ({len(messages)} messages), seconds (median of {args.repeats} rounds)")
    keys = {threads: "read_threads_vs_floor", "vzdask compute, distributed 2 processes": "read_distributed_vs_floor",
            "vzdask compute, threads, group by group": "read_threads_group_by_group_vs_floor",
            "cfgrib + xr.open_mfdataset per group": "read_cfgrib_vs_floor"}
    summary["read_floor_s"] = round(statistics.median(read_times[floor]), 3)
    for label, t in read_times.items():
        ratio = statistics.median(a / b for a, b in zip(t, read_times[floor]))
        print(f"  {label:42s} {statistics.median(t):9.3f}  {ratio:5.2f}x floor")
        if label in keys:
            summary[keys[label]] = round(ratio, 3)
    summary["load_average"] = [round(load_before, 1), round(os.getloadavg()[0], 1)]
    summary["cores"] = os.cpu_count()
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
