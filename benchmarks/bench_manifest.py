"""Benchmark ChunkManifest against VirtualiZarr's on a 1,000,000-chunk manifest.

Run by hand (not collected by pytest)::

    python benchmarks/bench_manifest.py            # full comparison, medians of 5 runs
    python benchmarks/bench_manifest.py --profile  # plus a cProfile of each from_arrays build

Measures, for a manifest of ``--chunks`` chunks over ``--urls`` distinct urls
(each url owns one contiguous row of the chunk grid, as a parser emits them):

* ``ChunkManifest.from_arrays`` with paths as a numpy object array, a
  ``StringDType`` array and a fixed-width ``'U'`` array (plus a worst case in
  which every chunk's url is drawn at random, so there are no runs);
* memory per chunk, excluding the url table (and the real memory held,
  measured with tracemalloc, since VirtualiZarr's ``nbytes`` does not count
  the string heap of its ``StringDType`` paths);
* ``.dict()``, pickling (size and time) and concatenating 10 x 100k manifests.

VirtualiZarr (``pip install virtualizarr``) is optional: without it only the
vzdask column is printed. Issue targets: <= 40 bytes/chunk plus the url
table, build < 0.5 s.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import pickle
import pstats
import statistics
import sys
import time
import tracemalloc
import warnings
from collections.abc import Callable

import numpy as np

from vzdask import ChunkManifest

TARGET_BYTES_PER_CHUNK = 40
TARGET_BUILD_SECONDS = 0.5


# --------------------------------------------------------------------------- #
# inputs
# --------------------------------------------------------------------------- #


def make_inputs(nchunks: int, nurls: int, *, shuffled: bool = False, seed: int = 0) -> dict[str, np.ndarray]:
    """Paths (object array), offsets and lengths for a grid of ``(nurls, nchunks // nurls)`` chunks."""
    per_url = nchunks // nurls
    shape = (nurls, per_url)
    urls = np.array([f"s3://example-bucket/model-run/2024/output_{i:05d}.nc" for i in range(nurls)], dtype=object)
    rng = np.random.default_rng(seed)
    if shuffled:
        paths = urls[rng.integers(0, nurls, size=nurls * per_url)].reshape(shape)
    else:
        paths = np.repeat(urls, per_url).reshape(shape)
    lengths = rng.integers(1_000, 2_000_000, size=shape, dtype=np.uint64)
    offsets = (np.cumsum(lengths, axis=1, dtype=np.uint64) - lengths) + np.uint64(4096)
    return {"paths": paths, "offsets": offsets, "lengths": lengths}


# --------------------------------------------------------------------------- #
# measuring
# --------------------------------------------------------------------------- #


def median_seconds(fn: Callable[[], object], runs: int) -> tuple[float, object]:
    """Median wall time of ``runs`` calls, and the last result."""
    times = []
    result = None
    for _ in range(runs):
        result = None
        gc.collect()
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def traced_bytes(fn: Callable[[], object]) -> tuple[int, object]:
    """Bytes newly allocated (and still held) by ``fn()``'s result, per tracemalloc."""
    gc.collect()
    tracemalloc.start()
    try:
        result = fn()
        gc.collect()
        current, _peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return current, result


def url_table_bytes(urls) -> int:
    return sum(sys.getsizeof(u) for u in urls) + sys.getsizeof(tuple(urls))


def profile(label: str, fn: Callable[[], object], top: int = 8) -> str:
    prof = cProfile.Profile()
    prof.enable()
    fn()
    prof.disable()
    out = io.StringIO()
    stats = pstats.Stats(prof, stream=out).strip_dirs().sort_stats("tottime")
    stats.print_stats(top)
    lines = [ln for ln in out.getvalue().splitlines() if ln.strip()]
    return f"--- cProfile: {label}\n" + "\n".join(lines[-(top + 1):])


# --------------------------------------------------------------------------- #
# the benchmark
# --------------------------------------------------------------------------- #


def run(nchunks: int, nurls: int, runs: int, do_profile: bool, skip_dict: bool) -> None:
    try:
        with warnings.catch_warnings():  # VirtualiZarr registers its own ``ds.vz`` accessor over ours
            warnings.simplefilter("ignore")
            import virtualizarr
            from virtualizarr.manifests import ChunkManifest as VZManifest
    except ImportError:  # optional peer
        virtualizarr, VZManifest = None, None

    rows: list[tuple[str, str, str, str]] = []

    def row(name: str, ours: float | None, theirs: float | None, fmt: str, better: str = "lower") -> None:
        show = lambda v: "n/a" if v is None else format(v, fmt)  # noqa: E731
        ratio = "" if ours in (None, 0) or theirs is None else f"{theirs / ours:.2f}x"
        rows.append((name, show(ours), show(theirs), ratio))

    data = make_inputs(nchunks, nurls)
    shape = data["paths"].shape
    paths_obj = data["paths"]
    paths_sdt = paths_obj.astype(np.dtypes.StringDType())
    paths_u = paths_obj.astype("U")
    offsets, lengths = data["offsets"], data["lengths"]
    worst = make_inputs(nchunks, nurls, shuffled=True)
    worst_sdt = worst["paths"].astype(np.dtypes.StringDType())

    print(f"manifest: {nchunks:,} chunks, grid {shape}, {nurls:,} distinct urls "
          f"({len(paths_obj.flat[0])}-char urls); medians of {runs} runs")
    print(f"numpy {np.__version__}, python {sys.version.split()[0]}"
          + (f", VirtualiZarr {virtualizarr.__version__}" if virtualizarr else ", VirtualiZarr not installed"))

    def ours_build(paths, offs=offsets, lens=lengths):
        return lambda: ChunkManifest.from_arrays(paths=paths, offsets=offs, lengths=lens)

    def theirs_build(paths, validate=True, offs=offsets, lens=lengths):
        return lambda: VZManifest.from_arrays(paths=paths, offsets=offs, lengths=lens, validate_paths=validate)

    # -- build ---------------------------------------------------------------
    t_obj, ours = median_seconds(ours_build(paths_obj), runs)
    t_sdt, _ = median_seconds(ours_build(paths_sdt), runs)
    t_u, _ = median_seconds(ours_build(paths_u), runs)
    t_worst, _ = median_seconds(ours_build(worst["paths"]), runs)
    t_worst_sdt, _ = median_seconds(ours_build(worst_sdt), runs)
    vz_sdt = vz_sdt_novalid = theirs = None
    if VZManifest:
        vz_sdt, theirs = median_seconds(theirs_build(paths_sdt), runs)
        vz_sdt_novalid, _ = median_seconds(theirs_build(paths_sdt, validate=False), runs)
    row("build, paths object array [s]", t_obj, None, ".4f")
    row("build, paths StringDType [s]", t_sdt, vz_sdt, ".4f")
    row("  VirtualiZarr validate_paths=False [s]", t_sdt, vz_sdt_novalid, ".4f")
    row("build, paths 'U' array [s]", t_u, None, ".4f")
    row("build, object, urls shuffled (no runs) [s]", t_worst, None, ".4f")
    row("build, StringDType, urls shuffled [s]", t_worst_sdt, None, ".4f")

    # -- memory --------------------------------------------------------------
    assert ours.count()["virtual"] == nchunks
    table = url_table_bytes(ours.urls)
    per_chunk = (ours.nbytes - table - sys.getsizeof(ours.inline_buffer)) / nchunks
    real_ours, _ = traced_bytes(ours_build(paths_sdt))
    vz_reported = vz_real = None
    if VZManifest:
        vz_reported = theirs.nbytes / nchunks
        # validate_paths=True builds a fresh paths array (struct + string heap); offsets/lengths are the inputs.
        held, _ = traced_bytes(theirs_build(paths_sdt))
        vz_real = (held + offsets.nbytes + lengths.nbytes) / nchunks
    row("nbytes per chunk, excl. url table [B]", per_chunk, vz_reported, ".1f")
    row("memory really held per chunk [B] (tracemalloc)", real_ours / nchunks, vz_real, ".1f")
    row("url table [kB]", table / 1e3, None, ".1f")

    # -- dict ----------------------------------------------------------------
    if not skip_dict:
        t_dict, as_dict = median_seconds(ours.dict, runs)
        assert len(as_dict) == nchunks
        del as_dict
        t_vz_dict = None
        if VZManifest:
            t_vz_dict, vz_dict = median_seconds(theirs.dict, runs)
            assert len(vz_dict) == nchunks
            del vz_dict
        row(".dict() [s]", t_dict, t_vz_dict, ".3f")

    # -- pickle ----------------------------------------------------------------
    t_dump, blob = median_seconds(lambda: pickle.dumps(ours, protocol=5), runs)
    t_load, back = median_seconds(lambda: pickle.loads(blob), runs)
    assert back == ours
    vz_size = t_vz_dump = t_vz_load = None
    if VZManifest:
        t_vz_dump, vz_blob = median_seconds(lambda: pickle.dumps(theirs, protocol=5), runs)
        t_vz_load, _ = median_seconds(lambda: pickle.loads(vz_blob), runs)
        vz_size = len(vz_blob) / 1e6
    row("pickle size [MB]", len(blob) / 1e6, vz_size, ".2f")
    row("pickle.dumps [s]", t_dump, t_vz_dump, ".4f")
    row("pickle.loads [s]", t_load, t_vz_load, ".4f")

    # -- concatenate 10 x 100k ------------------------------------------------
    parts = 10
    rows_per = shape[0] // parts
    pieces = [(slice(i * rows_per, (i + 1) * rows_per), ...) for i in range(parts)]
    ours_parts = [
        ChunkManifest.from_arrays(paths=paths_obj[p], offsets=offsets[p], lengths=lengths[p]) for p in pieces
    ]
    t_cat, cat = median_seconds(lambda: ChunkManifest.concatenate(ours_parts, axis=0), runs)
    assert cat == ours
    t_vz_cat = None
    if VZManifest:
        vz_parts = [
            VZManifest.from_arrays(paths=paths_sdt[p], offsets=offsets[p].copy(), lengths=lengths[p].copy())
            for p in pieces
        ]

        def vz_concat():  # what VirtualiZarr's np.concatenate on ManifestArrays does with the manifests
            return VZManifest.from_arrays(
                paths=np.concatenate([m._paths for m in vz_parts], axis=0),
                offsets=np.concatenate([m._offsets for m in vz_parts], axis=0),
                lengths=np.concatenate([m._lengths for m in vz_parts], axis=0),
                validate_paths=False,
            )

        t_vz_cat, _ = median_seconds(vz_concat, runs)
    row(f"concatenate {parts} x {nchunks // parts:,} [s]", t_cat, t_vz_cat, ".4f")

    # -- report ----------------------------------------------------------------
    widths = [max(len(r[i]) for r in rows + [("measurement", "vzdask", "VirtualiZarr", "VZ/vzdask")]) for i in range(4)]
    header = ("measurement", "vzdask", "VirtualiZarr", "VZ/vzdask")
    print()
    print("  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(header, widths))))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
    print()
    slowest = max(t_obj, t_sdt, t_u, t_worst, t_worst_sdt)
    print(f"target: <= {TARGET_BYTES_PER_CHUNK} B/chunk + url table: {per_chunk:.1f} B/chunk + {table / 1e3:.1f} kB "
          f"-> {'OK' if per_chunk <= TARGET_BYTES_PER_CHUNK else 'MISSED'}")
    print(f"target: build < {TARGET_BUILD_SECONDS} s: slowest input (incl. shuffled urls) {slowest:.3f} s "
          f"-> {'OK' if slowest < TARGET_BUILD_SECONDS else 'MISSED'}")

    if do_profile or slowest >= TARGET_BUILD_SECONDS:
        print()
        for label, paths in (("object", paths_obj), ("StringDType", paths_sdt), ("U", paths_u),
                             ("object, shuffled", worst["paths"])):
            print(profile(f"ChunkManifest.from_arrays, paths {label}", ours_build(paths)))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chunks", type=int, default=1_000_000)
    parser.add_argument("--urls", type=int, default=1_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--profile", action="store_true", help="print a cProfile of each build")
    parser.add_argument("--skip-dict", action="store_true", help="skip the (slow) .dict() comparison")
    args = parser.parse_args(argv)
    if args.chunks % args.urls or (args.chunks // args.urls) % 1:
        parser.error("--chunks must be a multiple of --urls")
    if args.urls % 10:
        parser.error("--urls must be a multiple of 10 (the concatenate test splits the grid in 10)")
    run(args.chunks, args.urls, args.runs, args.profile, args.skip_dict)


if __name__ == "__main__":
    main()
