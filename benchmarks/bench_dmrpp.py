"""DMR++ parsing speed: vzdask DMRPPParser vs HDFParser on the same granules vs VirtualiZarr's DMRPPParser.

Run by hand: ``.venv/bin/python benchmarks/bench_dmrpp.py [--files 1000] [--repeats 5]``.

Two collections, both from OPeNDAP's published ``get_dmrpp`` output (tests/fixtures/dmrpp):

* "collection": ``--files`` copies of one granule and its sidecar
  (``chunked_shufzip_threeD.h5``: 128 shuffle+deflate chunks of a 100^3 float32
  array), each copy in its own file, as a collection of granules of one
  product would be (we cannot run ``get_dmrpp`` here to make distinct ones);
* "published": the published pairs all three parse (compounds and heap
  strings left out), each once per round.

Each round times every method over all files (``parser(url, registry)`` into
a ManifestStore; no Dataset), taking turns 50 files at a time so a change in
the machine's load hits all alike; figures are medians over rounds.
Targets (issue 21): DMR++ >= 5x faster than VirtualiZarr's DMRPPParser and
faster than HDFParser on the same granules.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import time
import warnings
from pathlib import Path

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "dmrpp"
DATA = Path(__file__).resolve().parent / "_data" / "dmrpp"
BATCH = 50
GRANULE = "chunked_shufzip_threeD.h5"


def make_collection(n: int) -> list[Path]:
    DATA.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        granule = DATA / f"granule_{i:04d}.h5"
        if not granule.exists():
            shutil.copy(FIXTURES / GRANULE, granule)
            shutil.copy(FIXTURES / f"{GRANULE}.dmrpp", DATA / f"granule_{i:04d}.h5.dmrpp")
        paths.append(granule)
    return paths


def published() -> list[Path]:
    """The published granules every method parses (the others refuse compounds or heap strings)."""
    from vzdask import ObjectStoreRegistry
    from vzdask.parsers import DMRPPParser, HDFParser

    registry = ObjectStoreRegistry()
    found = []
    for document in sorted(FIXTURES.glob("*.dmrpp")):
        granule = document.with_suffix("")
        try:
            DMRPPParser()(document.as_uri(), registry)
            HDFParser()(granule.as_uri(), registry)
            virtualizarr_dmrpp([granule])
        except Exception:
            continue
        found.append(granule)
    return found


def vzdask_dmrpp(granules):
    from vzdask import ObjectStoreRegistry
    from vzdask.parsers import DMRPPParser

    registry = ObjectStoreRegistry()
    parser = DMRPPParser()
    return [parser(f"file://{g}.dmrpp", registry) for g in granules]


def vzdask_hdf(granules):
    from vzdask import ObjectStoreRegistry
    from vzdask.parsers import HDFParser

    registry = ObjectStoreRegistry()
    parser = HDFParser()
    return [parser(f"file://{g}", registry) for g in granules]


def virtualizarr_dmrpp(granules):
    from obstore.store import LocalStore
    from virtualizarr.parsers import DMRPPParser
    from virtualizarr.registry import ObjectStoreRegistry

    registry = ObjectStoreRegistry({"file://": LocalStore()})
    parser = DMRPPParser()
    return [parser(f"file://{g}.dmrpp", registry) for g in granules]


METHODS = {
    "vzdask DMRPPParser (sidecar)": vzdask_dmrpp,
    "vzdask HDFParser (granule)": vzdask_hdf,
    "VirtualiZarr DMRPPParser (sidecar)": virtualizarr_dmrpp,
}


def run(label: str, granules: list[Path], repeats: int) -> None:
    methods = dict(METHODS)
    for name, func in list(methods.items()):
        try:
            func(granules[:2])  # warm imports and caches
        except ImportError as err:
            print(f"{name}: skipped ({err})")
            del methods[name]
    times: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(repeats):
        totals = dict.fromkeys(methods, 0.0)
        for start in range(0, len(granules), BATCH):
            for name, func in methods.items():
                begin = time.perf_counter()
                func(granules[start : start + BATCH])
                totals[name] += time.perf_counter() - begin
        for name in methods:
            times[name].append(totals[name])
    print(f"\n{label}: {len(granules)} granules, median of {repeats} rounds")
    print(f"{'method':40s} {'seconds':>9s} {'ms/file':>8s}")
    medians = {name: statistics.median(t) for name, t in times.items()}
    for name, seconds in medians.items():
        print(f"{name:40s} {seconds:9.3f} {1000 * seconds / len(granules):8.2f}")
    ours = times["vzdask DMRPPParser (sidecar)"]
    for name in methods:
        if name != "vzdask DMRPPParser (sidecar)":
            ratio = statistics.median(b / a for a, b in zip(ours, times[name]))
            print(f"vzdask DMRPPParser is {ratio:.1f}x faster than {name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    run("collection", make_collection(args.files), args.repeats)
    run("published", published(), args.repeats)


if __name__ == "__main__":
    main()
