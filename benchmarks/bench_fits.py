"""FITS parsing speed: vzdask FITSParser vs kerchunk's ``fits.process_file`` (what VirtualiZarr's FITSParser wraps).

Run by hand: ``.venv/bin/python benchmarks/bench_fits.py [--files 100] [--repeats 5] [--sizes 256,1024] [--quick]``.

``--files`` FITS files written with astropy: a primary 512x512 int16 image
(BSCALE/BZERO) and three float32 ``size`` x ``size`` IMAGE extensions, as an exposure
of a multi-detector camera would be, for each of ``--sizes`` (a parse reads headers
only, so its time should not grow with the images). Each round times every method over all
files, taking turns 10 files at a time; figures are medians over rounds, ratios the
median of the per-round ratios. ``--quick``: 20 files, 3 rounds. The last line is a
JSON summary (for ``bench_formats.py``).
kerchunk reads one HDU per call (``extension=``), so it is called once per
HDU, as a user wanting every HDU must. Target (issue 21): >= 5x faster than
kerchunk.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import interleaved_rounds, ratio, working  # noqa: E402

DATA = Path(__file__).resolve().parent / "_data" / "fits"
BATCH = 10
HDUS = 4
OURS = "vzdask FITSParser"


def make_files(n: int, size: int) -> list[Path]:
    from astropy.io import fits

    DATA.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    primary = rng.integers(0, 1000, (512, 512)).astype(">i2")
    detectors = [rng.random((size, size)).astype(">f4") for _ in range(HDUS - 1)]
    paths = []
    for i in range(n):
        path = DATA / f"exposure_{size}_{i:04d}.fits"
        if not path.exists():
            hdu = fits.PrimaryHDU(primary, do_not_scale_image_data=True)
            hdu.header["BSCALE"], hdu.header["BZERO"], hdu.header["EXPOSURE"] = 0.5, 100.0, i
            extensions = [fits.ImageHDU(d, name=f"CCD{k}") for k, d in enumerate(detectors)]
            fits.HDUList([hdu, *extensions]).writeto(path)
        paths.append(path)
    return paths


def vzdask_fits(paths):
    from vzdask import ObjectStoreRegistry
    from vzdask.parsers import FITSParser

    registry = ObjectStoreRegistry()
    parser = FITSParser()
    return [parser(f"file://{p}", registry) for p in paths]


def kerchunk_fits(paths):
    from kerchunk.fits import process_file

    return [[process_file(str(p), extension=k) for k in range(HDUS)] for p in paths]


METHODS = {"vzdask FITSParser": vzdask_fits, "kerchunk fits.process_file (every HDU)": kerchunk_fits}


def run(paths: list[Path], size: int, repeats: int) -> dict[str, float]:
    """Time every method on ``paths``; print the table; our ms per file and the ratio to kerchunk."""
    methods = working(METHODS, paths[:2])
    times = interleaved_rounds(methods, paths, repeats, BATCH)
    print(f"\n{len(paths)} files of {HDUS} HDUs ({size}^2 detectors), median of {repeats} rounds")
    print(f"{'method':42s} {'seconds':>9s} {'ms/file':>8s}")
    for name, t in times.items():
        seconds = statistics.median(t)
        print(f"{name:42s} {seconds:9.3f} {1000 * seconds / len(paths):8.2f}")
    ours = times[OURS]
    figures = {f"ms_per_file_{size}": round(1000 * statistics.median(ours) / len(paths), 3)}
    for name in methods:
        if name != OURS:
            faster = ratio(ours, times[name])
            print(f"vzdask FITSParser is {faster:.1f}x faster than {name}")
            figures[f"vs_kerchunk_{size}"] = round(faster, 2)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--files", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sizes", default="256,1024", help="detector sizes, comma-separated")
    parser.add_argument("--quick", action="store_true", help="20 files, 3 rounds")
    args = parser.parse_args()
    if args.quick:
        args.files, args.repeats = 20, 3
    warnings.simplefilter("ignore")
    summary: dict[str, object] = {"format": "fits", "files": args.files, "rounds": args.repeats}
    ratios = []
    for size in (int(v) for v in args.sizes.split(",")):
        figures = run(make_files(args.files, size), size, args.repeats)
        summary.update(figures)
        ratios += [v for k, v in figures.items() if k.startswith("vs_kerchunk")]
    if ratios:
        summary["vs_kerchunk"] = min(ratios)  # the worst size
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
