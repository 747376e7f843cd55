"""Read speed of a virtual dataset: ManifestArray.compute against the usual ways.

Run by hand (not collected by pytest)::

    .venv/bin/python benchmarks/bench_compute.py [--files 100] [--runs 5]

It writes ``--files`` netCDF4-like HDF5 files (one float32 variable each,
gzip + shuffle, native chunks of 64 KiB decoded) under ``benchmarks/_data``,
builds manifests straight from h5py's chunk index and reads the same chunks
four ways, page cache warm, median of ``--runs``:

(a) ``ManifestArray.compute()``, dask's threaded scheduler on every core;
(b) ``xr.open_zarr(ManifestStore(group))[var].compute()``;
(c) kerchunk references (built here from the manifest) through fsspec's
    ReferenceFileSystem, ``xr.open_dataset(engine="zarr", chunks={})``;
(d) the single-thread floor: ``os.pread`` + ``zlib.decompress`` + numcodecs
    shuffle decode per chunk, in a plain loop, into a preallocated array.

It also times building the graph of a 1,000,000-chunk ManifestArray.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time
import zlib
from pathlib import Path

import numpy as np

DATA = Path(__file__).parent / "_data"
VAR = "tas"
PER_FILE = (24, 180, 360)
CHUNKS = (1, 90, 180)
LEVEL = 4  # netCDF's usual deflate level


# -- data --------------------------------------------------------------------


def make_files(n: int) -> list[Path]:
    """``n`` HDF5 files shaped like netCDF4 output (dimension scales + one variable)."""
    import h5py

    DATA.mkdir(parents=True, exist_ok=True)
    nt, ny, nx = PER_FILE
    lat = np.linspace(-89.5, 89.5, ny, dtype=np.float32)
    lon = np.linspace(0.5, 359.5, nx, dtype=np.float32)
    base = (288.0 - 30.0 * np.sin(np.deg2rad(lat))[:, None] ** 2 + 5.0 * np.cos(np.deg2rad(lon))[None, :]).astype(np.float32)
    paths = []
    for i in range(n):
        path = DATA / f"tas_{i:04d}.nc"
        paths.append(path)
        if path.exists():
            continue
        rng = np.random.default_rng(i)
        noise = rng.normal(0.0, 1.5, size=PER_FILE).astype(np.float32)
        values = np.round(base[None] + noise + np.float32(i % 12), 2).astype(np.float32)  # 0.01 K resolution
        tmp = path.with_suffix(".tmp")
        with h5py.File(tmp, "w") as f:
            f.attrs["Conventions"] = "CF-1.8"
            time_ = f.create_dataset("time", data=np.arange(i * nt, (i + 1) * nt, dtype=np.float64))
            time_.attrs["units"] = "hours since 2000-01-01"
            lat_ = f.create_dataset("lat", data=lat)
            lon_ = f.create_dataset("lon", data=lon)
            for scale, name in ((time_, "time"), (lat_, "lat"), (lon_, "lon")):
                scale.make_scale(name)
            var = f.create_dataset(
                VAR, data=values, chunks=CHUNKS, compression="gzip", compression_opts=LEVEL, shuffle=True
            )
            for axis, scale in enumerate((time_, lat_, lon_)):
                var.dims[axis].attach_scale(scale)
            var.attrs["units"] = "K"
        tmp.rename(path)
    return paths


def chunk_index(path: Path) -> tuple[tuple[int, ...], np.ndarray, np.ndarray, tuple[str, ...], int]:
    """``(grid, offsets, lengths)`` of the variable's chunks, from h5py's chunk index."""
    import h5py

    with h5py.File(path, "r") as f:
        ds = f[VAR]
        shape, chunks = ds.shape, ds.chunks
        itemsize = ds.dtype.itemsize
        plist = ds.id.get_create_plist()
        filters = tuple(plist.get_filter(i)[0] for i in range(plist.get_nfilters()))  # pipeline order
        grid = tuple(-(-s // c) for s, c in zip(shape, chunks))
        offsets = np.zeros(grid, np.uint64)
        lengths = np.zeros(grid, np.uint64)
        masks = []

        def visit(info):
            index = tuple(o // c for o, c in zip(info.chunk_offset, chunks))
            offsets[index] = info.byte_offset
            lengths[index] = info.size
            masks.append(info.filter_mask)

        ds.id.chunk_iter(visit)
    if any(masks):
        raise ValueError(f"{path}: some chunks skipped a filter (filter_mask != 0); not handled here")
    return grid, offsets, lengths, filters, itemsize


def build_manifest_array(paths: list[Path]):
    """One ManifestArray per file (zarr v3: bytes + numcodecs Shuffle + Zlib), concatenated along time."""
    import zarr.codecs
    from h5py import h5z

    from vzdask.manifests.array import ManifestArray
    from vzdask.manifests.manifest import ChunkManifest
    from vzdask.manifests.metadata import create_array_metadata

    arrays = []
    for path in paths:
        grid, offsets, lengths, filters, itemsize = chunk_index(path)
        if filters != (h5z.FILTER_SHUFFLE, h5z.FILTER_DEFLATE):
            raise ValueError(f"{path}: filter pipeline {filters}, expected shuffle then deflate")
        metadata = create_array_metadata(
            shape=PER_FILE,
            chunk_shape=CHUNKS,
            dtype="float32",
            codecs=[
                zarr.codecs.BytesCodec(endian="little"),
                zarr.codecs.Shuffle(elementsize=itemsize),
                zarr.codecs.Zlib(level=LEVEL),
            ],
            fill_value=np.float32("nan"),
            dimension_names=("time", "lat", "lon"),
            attributes={"units": "K"},
        )
        manifest = ChunkManifest.from_arrays(
            paths=np.full(grid, "file://" + str(path.resolve()), dtype=object), offsets=offsets, lengths=lengths
        )
        arrays.append(ManifestArray(metadata, manifest))
    return np.concatenate(arrays, axis=0)


def kerchunk_refs(array) -> dict:
    """A kerchunk (zarr v2) reference set for the same chunks: filters shuffle, compressor zlib."""
    import json

    manifest = array.manifest
    refs = {
        ".zgroup": json.dumps({"zarr_format": 2}),
        f"{VAR}/.zarray": json.dumps(
            {
                "zarr_format": 2,
                "shape": list(array.shape),
                "chunks": list(array.chunk_shape),
                "dtype": "<f4",
                "fill_value": "NaN",
                "order": "C",
                "filters": [{"id": "shuffle", "elementsize": 4}],
                "compressor": {"id": "zlib", "level": LEVEL},
                "dimension_separator": ".",
            }
        ),
        f"{VAR}/.zattrs": json.dumps({"_ARRAY_DIMENSIONS": ["time", "lat", "lon"], "units": "K"}),
    }
    urls = manifest.urls
    path_index = manifest.path_index
    offsets, lengths = manifest.offsets, manifest.lengths
    for index in np.ndindex(manifest.shape):
        url = urls[path_index[index]].removeprefix("file://")
        refs[f"{VAR}/" + ".".join(map(str, index))] = [url, int(offsets[index]), int(lengths[index])]
    return {"version": 1, "refs": refs}


def floor_plan(array) -> list[tuple[int, int, int, tuple[slice, ...]]]:
    """``(fd index, offset, length, region)`` per chunk, C order: what the floor loop reads."""
    manifest = array.manifest
    plan = []
    for index in np.ndindex(manifest.shape):
        region = tuple(slice(i * c, (i + 1) * c) for i, c in zip(index, array.chunk_shape))
        plan.append((int(manifest.path_index[index]), int(manifest.offsets[index]), int(manifest.lengths[index]), region))
    return plan


# -- the four readers --------------------------------------------------------


def read_floor(array, plan, fds) -> np.ndarray:
    """(d): one thread, pread + inflate + unshuffle per chunk into a preallocated array."""
    from numcodecs import Shuffle

    unshuffle = Shuffle(elementsize=4).decode
    out = np.empty(array.shape, np.float32)
    chunk = CHUNKS
    for fd_index, offset, length, region in plan:
        raw = os.pread(fds[fd_index], length, offset)
        out[region] = np.frombuffer(unshuffle(zlib.decompress(raw)), np.float32).reshape(chunk)
    return out


def read_manifest_compute(array) -> np.ndarray:
    """(a)."""
    return array.compute()


def read_xarray_store(array) -> np.ndarray:
    """(b)."""
    import xarray as xr

    from vzdask.manifests.group import ManifestGroup
    from vzdask.manifests.store import ManifestStore

    store = ManifestStore(ManifestGroup(arrays={VAR: array}))
    ds = xr.open_zarr(store, consolidated=False, zarr_format=3)
    return ds[VAR].compute().values


def read_kerchunk(refs) -> np.ndarray:
    """(c)."""
    import fsspec
    import xarray as xr

    fs = fsspec.filesystem("reference", fo=refs)
    ds = xr.open_dataset(fs.get_mapper(""), engine="zarr", chunks={}, consolidated=False, zarr_format=2)
    return ds[VAR].compute().values


def _busy_seconds() -> float:
    """CPU seconds the whole machine has been busy (all cores), from /proc/stat; 0 where unavailable."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except OSError:
        return 0.0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def interleaved(methods: dict, runs: int, expected: np.ndarray) -> dict[str, dict[str, float]]:
    """Run every method once (checked against ``expected``), then ``runs`` rounds, rotating the order.

    Interleaving spreads load from other processes over all methods alike.
    For each run we also record how many cores *other* processes kept busy
    (machine busy time from /proc/stat minus this process's CPU time, per
    second of wall time): a 2-thread reader only shows its speed when that is
    near 0. Returns median and minimum wall seconds, median CPU seconds (all
    threads) and the median other-process load.
    """
    for label, fn in methods.items():
        result = fn()
        if not np.array_equal(result, expected, equal_nan=True):
            raise AssertionError(f"{label}: values differ from h5py's")
        del result
    wall: dict[str, list[float]] = {k: [] for k in methods}
    cpu: dict[str, list[float]] = {k: [] for k in methods}
    others: dict[str, list[float]] = {k: [] for k in methods}
    labels = list(methods)
    for r in range(runs):
        for label in labels[r % len(labels) :] + labels[: r % len(labels)]:
            gc.collect()
            b0, c0, t0 = _busy_seconds(), time.process_time(), time.perf_counter()
            result = methods[label]()
            t1, c1, b1 = time.perf_counter(), time.process_time(), _busy_seconds()
            wall[label].append(t1 - t0)
            cpu[label].append(c1 - c0)
            others[label].append(max(0.0, (b1 - b0) - (c1 - c0)) / (t1 - t0))
            del result
    for label in labels:
        runs_text = ", ".join(f"{t:.2f} ({o:.1f})" for t, o in zip(wall[label], others[label]))
        print(f"  {label:<44} wall s (others' cores): {runs_text}", file=sys.stderr)
    return {
        k: {
            "median": statistics.median(wall[k]),
            "min": min(wall[k]),
            "cpu": statistics.median(cpu[k]),
            "others": statistics.median(others[k]),
        }
        for k in labels
    }


# -- graph construction ------------------------------------------------------


def graph_benchmark(runs: int) -> dict[str, float]:
    """Graph building for a 1,000,000-chunk ManifestArray (references only, nothing is read)."""
    import zarr.codecs

    from vzdask.manifests.array import ManifestArray
    from vzdask.manifests.manifest import ChunkManifest
    from vzdask.manifests.metadata import create_array_metadata

    nfiles = 1000
    grid = (250_000, 2, 2)
    per_file = grid[0] // nfiles
    urls = np.array([f"s3://bucket/run/tas_{i:05d}.nc" for i in range(nfiles)], dtype=object)
    paths = np.broadcast_to(np.repeat(urls, per_file)[:, None, None], grid)
    lengths = np.full(grid, 30_000, np.uint64)
    offsets = (np.arange(np.prod(grid), dtype=np.uint64).reshape(grid) % np.uint64(per_file * 4)) * np.uint64(30_000)
    manifest = ChunkManifest.from_arrays(paths=paths, offsets=offsets, lengths=lengths)
    metadata = create_array_metadata(
        shape=tuple(g * c for g, c in zip(grid, CHUNKS)),
        chunk_shape=CHUNKS,
        dtype="float32",
        codecs=[zarr.codecs.BytesCodec(endian="little"), zarr.codecs.Shuffle(elementsize=4), zarr.codecs.Zlib(level=LEVEL)],
        fill_value=np.float32("nan"),
        dimension_names=("time", "lat", "lon"),
    )
    import dask.array  # noqa: F401  (imported up front: its first import alone takes ~0.5 s)

    out: dict[str, float] = {}

    def median_time(label, fn, n=runs):
        times, value = [], None
        for _ in range(n):
            array = ManifestArray(metadata, manifest)  # fresh: no cached name
            gc.collect()
            start = time.perf_counter()
            value = fn(array)
            times.append(time.perf_counter() - start)
        out[label] = statistics.median(times)
        return value

    median_time("__dask_graph__()", lambda a: a.__dask_graph__())
    out["#tasks"] = median_time("__dask_graph__() + materialise (dict)", lambda a: len(dict(a.__dask_graph__())))
    median_time("to_dask_array() (task blocks)", lambda a: a.to_dask_array())
    darr = median_time("to_dask_array(chunks=native)", lambda a: a.to_dask_array(chunks=CHUNKS))
    out["#native_tasks"] = darr.npartitions
    median_time(
        "to_dask_array(chunks=native) + materialise", lambda a: len(dict(a.to_dask_array(chunks=CHUNKS).dask)), n=1
    )
    return out


# -- main --------------------------------------------------------------------

FLOOR = "(d) floor: pread+zlib+shuffle, 1 thread"
OURS = "(a) ManifestArray.compute()"


def print_table(results: dict, nbytes: int, runs: int, load: tuple[float, float]) -> None:
    floor = results.get(FLOOR, {}).get("median")
    ours = results.get(OURS, {}).get("median")
    print()
    print(f"median of {runs} interleaved runs, page cache warm; load average {load[0]:.1f} before, {load[1]:.1f} after")
    print(
        f"{'method':<44} {'seconds':>8} {'min':>7} {'cpu s':>7} {'/ floor':>8} {'(a) faster':>11} {'MB/s':>6} "
        f"{'others':>7}"
    )
    for label, r in results.items():
        seconds = r["median"]
        ratio = f"{seconds / floor:8.2f}" if floor else f"{'-':>8}"
        speedup = f"{seconds / ours:10.1f}x" if ours and label not in (OURS, FLOOR) else f"{'':>11}"
        print(
            f"{label:<44} {seconds:8.3f} {r['min']:7.3f} {r['cpu']:7.2f} {ratio} {speedup} "
            f"{nbytes / 1e6 / seconds:6.0f} {r['others']:7.1f}"
        )
    print("(min: fastest run; cpu s: CPU time of all threads; others: cores other processes kept busy meanwhile)")
    print()
    print("targets: (a) <= 0.75 x floor; (a) >= 5x faster than (b) and (c)")
    if floor and ours:
        print(f"  (a) / floor = {ours / floor:.2f}  [{'met' if ours <= 0.75 * floor else 'MISSED'}]")
    for label, r in results.items():
        if ours and label.startswith(("(b)", "(c)")):
            print(f"  {label[:3]} / (a) = {r['median'] / ours:.1f}x  [{'met' if r['median'] >= 5 * ours else 'MISSED'}]")



def read_benchmarks(args) -> None:
    import h5py

    start = time.perf_counter()
    paths = make_files(args.files)
    print(f"data: {len(paths)} files in {DATA} ({time.perf_counter() - start:.1f} s to make/check)")

    start = time.perf_counter()
    array = build_manifest_array(paths)
    print(
        f"manifest: {array!r} built in {time.perf_counter() - start:.2f} s; "
        f"{array.nbytes / 2**20:.0f} MiB decoded, {array.manifest.stored_bytes / 2**20:.0f} MiB stored "
        f"(ratio {array.nbytes / array.manifest.stored_bytes:.2f}); layout blocks {array.layout.block} "
        f"-> {len(array.__dask_keys__())} tasks"
    )

    # Expected values straight from h5py (and warms the page cache).
    expected = np.empty(array.shape, np.float32)
    for i, path in enumerate(paths):
        with h5py.File(path, "r") as f:
            expected[i * PER_FILE[0] : (i + 1) * PER_FILE[0]] = f[VAR][...]

    fds = [os.open(u.removeprefix("file://"), os.O_RDONLY) for u in array.manifest.urls]
    methods = {}
    if "d" in args.only:
        plan = floor_plan(array)
        methods[FLOOR] = lambda: read_floor(array, plan, fds)
    if "a" in args.only:
        methods[OURS] = lambda: read_manifest_compute(array)
    if "b" in args.only:
        methods["(b) xr.open_zarr(ManifestStore)"] = lambda: read_xarray_store(array)
    if "c" in args.only:
        refs = kerchunk_refs(array)
        methods["(c) kerchunk + fsspec + xarray"] = lambda: read_kerchunk(refs)
    try:
        load = os.getloadavg()[0]
        results = interleaved(methods, args.runs, expected) if methods else {}
    finally:
        for fd in fds:
            os.close(fd)
    if results:
        print_table(results, array.nbytes, args.runs, (load, os.getloadavg()[0]))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=100)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--only", default="abcdg", help="which parts to run: a, b, c, d, g (graph)")
    args = parser.parse_args(argv)

    import dask
    import h5py
    import numcodecs
    import xarray
    import zarr

    print(
        f"python {sys.version.split()[0]}, numpy {np.__version__}, dask {dask.__version__}, zarr {zarr.__version__}, "
        f"numcodecs {numcodecs.__version__}, xarray {xarray.__version__}, h5py {h5py.__version__}; "
        f"{os.cpu_count()} cores"
    )
    if set(args.only) & set("abcd"):
        read_benchmarks(args)

    if "g" in args.only:
        print()
        g = graph_benchmark(args.runs)
        print(
            f"graph of a 1,000,000-chunk ManifestArray ({g['#tasks']} fetch tasks at the default task-bytes; "
            f"{g['#native_tasks']} tasks at native chunking); median of {args.runs} (materialising native: 1 run):"
        )
        for label, seconds in g.items():
            if not label.startswith("#"):
                print(f"  {label:<44} {seconds:8.3f} s")
        built = g["__dask_graph__() + materialise (dict)"]
        print(f"target: graph construction (materialised) <= 2 s  [{'met' if built <= 2 else 'MISSED'}]")


if __name__ == "__main__":
    main()
