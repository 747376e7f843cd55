"""FITS parsing speed: vzdask FITSParser vs kerchunk's ``fits.process_file`` (what VirtualiZarr's FITSParser wraps).

Run by hand: ``.venv/bin/python benchmarks/bench_fits.py [--files 100] [--repeats 5]``.

``--files`` FITS files written with astropy: a primary 512x512 int16 image
(BSCALE/BZERO) and three float32 ``--size`` x ``--size`` (256) IMAGE extensions, as an exposure
of a multi-detector camera would be. Each round times every method over all
files, taking turns 10 files at a time; figures are medians over rounds.
kerchunk reads one HDU per call (``extension=``), so it is called once per
HDU, as a user wanting every HDU must. Target (issue 21): >= 5x faster than
kerchunk.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parent / "_data" / "fits"
BATCH = 10
HDUS = 4


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--files", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--size", type=int, default=256)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    paths = make_files(args.files, args.size)
    methods = dict(METHODS)
    for name, func in list(methods.items()):
        try:
            func(paths[:2])
        except ImportError as err:
            print(f"{name}: skipped ({err})")
            del methods[name]
    times: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(args.repeats):
        totals = dict.fromkeys(methods, 0.0)
        for start in range(0, len(paths), BATCH):
            for name, func in methods.items():
                begin = time.perf_counter()
                func(paths[start : start + BATCH])
                totals[name] += time.perf_counter() - begin
        for name in methods:
            times[name].append(totals[name])
    print(f"\n{len(paths)} files of {HDUS} HDUs ({args.size}^2 detectors), median of {args.repeats} rounds")
    print(f"{'method':42s} {'seconds':>9s} {'ms/file':>8s}")
    for name, t in times.items():
        seconds = statistics.median(t)
        print(f"{name:42s} {seconds:9.3f} {1000 * seconds / len(paths):8.2f}")
    ours = times["vzdask FITSParser"]
    for name in methods:
        if name != "vzdask FITSParser":
            ratio = statistics.median(b / a for a, b in zip(ours, times[name]))
            print(f"vzdask FITSParser is {ratio:.1f}x faster than {name}")


if __name__ == "__main__":
    main()
