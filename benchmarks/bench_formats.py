"""All format benchmarks of issues 20 and 21 in one run: TIFF/COG, GRIB2, DMR++, HDF4, FITS.

Run by hand: ``.venv/bin/python benchmarks/bench_formats.py [--quick] [--only tiff,grib]``.
Peers (VirtualiZarr, kerchunk, virtual-tiff, gribberish) come from the ``bench`` extra
(``.venv/bin/pip install -e '.[bench]'``).

Each format has its own script (``bench_tiff.py``, ``bench_grib.py``, ``bench_dmrpp.py``,
``bench_hdf4.py``, ``bench_fits.py``) that makes its collection, times vzdask against the peers
in the same run and prints, as its last line, a one-line JSON summary
(``{"format": ..., <figure>: <value>, ...}``). This runner runs them one after another in
fresh processes (so one format's imports and caches do not favour another), passes ``--quick``
through for a small run, and prints every summary as one table. The targets are the issues':
virtualize >= 5x faster than the fastest peer (TIFF, GRIB2, HDF4, FITS; DMR++ against
VirtualiZarr's DMRPPParser) and read <= 0.75x the single-thread decode floor (TIFF, GRIB2).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS = {
    "tiff": "bench_tiff.py",
    "grib": "bench_grib.py",
    "dmrpp": "bench_dmrpp.py",
    "hdf4": "bench_hdf4.py",
    "fits": "bench_fits.py",
}


def last_json_line(text: str) -> dict | None:
    """The summary a format script prints last (None when it printed none)."""
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line.startswith("{") and line.endswith("}"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                return None
    return None


def run_one(name: str, quick: bool) -> dict:
    """Run one format's script; its summary, or the reason there is none."""
    command = [sys.executable, str(HERE / SCRIPTS[name])] + (["--quick"] if quick else [])
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    sys.stdout.write(done.stdout)
    summary = last_json_line(done.stdout)
    if done.returncode != 0 or summary is None:
        tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        return {"format": name, "error": f"exit {done.returncode}: " + " | ".join(tail), "seconds": round(seconds, 1)}
    summary.setdefault("format", name)
    summary["seconds"] = round(seconds, 1)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small collections (minutes, not tens of minutes)")
    parser.add_argument("--only", default=",".join(SCRIPTS), help="comma-separated formats (default: all)")
    args = parser.parse_args()
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = sorted(set(names) - set(SCRIPTS))
    if unknown:
        parser.error(f"unknown format(s) {unknown}; choose from {sorted(SCRIPTS)}")
    summaries = []
    for name in names:
        print(f"=== {name}: {SCRIPTS[name]}{' --quick' if args.quick else ''}", flush=True)
        summaries.append(run_one(name, args.quick))
    print("\n=== summary (one line per figure)")
    for summary in summaries:
        fmt = summary.pop("format")
        for key, value in summary.items():
            print(f"{fmt:6s} {key:40s} {value}")
    print(json.dumps({"formats": names, "quick": args.quick}))


if __name__ == "__main__":
    main()
