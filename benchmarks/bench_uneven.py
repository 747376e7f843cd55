"""Files of different lengths: monthly netCDF4 files (31, 29, 31, 30 ... days) virtualized and read.

Run by hand: ``.venv/bin/python benchmarks/bench_uneven.py [--years 1] [--nlat 90] [--nlon 180] [--repeats 5]``.
Each file holds one month of 2 float32 variables over (time, lat, lon), zlib-compressed, chunked
(days of the month, nlat/2, nlon/2): one chunk per file along time, so the combined grid is
rectilinear along time. The equal-length collection cuts the same number of days into files of
one length (what a regular grid needs), with the same chunking, for the virtualize target.

Virtualize (issue 17 target: within 1.2x of the equal-length collection):
  vzdask         open_virtual_mfdataset() + write_icechunk(commit=...) into a new local repository
  VirtualiZarr   open_virtual_mfdataset(...): the error it gives is recorded
  kerchunk       SingleHdf5ToZarr per file + MultiZarrToZarr: the error (or the wrong result) is recorded
Read everything, each reader's whole Dataset in one ``.compute()``/``.load()`` (target: <= 0.75x the
single-thread read+inflate floor):
  vzdask         open_mfdataset(...).compute()  (one manifest, rectilinear grid; and of the equal-length files)
  vzdask icechunk  xr.open_zarr(icechunk session) of what vzdask wrote, .load()
  xarray         open_mfdataset(engine="netcdf4"): one chunk per file (default) and native chunks (chunks={})
  floor          h5py read_direct_chunk + zlib.decompress of every chunk, one thread

Medians of ``--repeats`` runs; the machine may be shared and loaded: compare peers within one run.
"""

from __future__ import annotations

import argparse
import calendar
import shutil
import statistics
import tempfile
import time
import traceback
import warnings
import zlib
from pathlib import Path

import numpy as np

VARIABLES = ("tas", "pr")


def write_file(path: Path, start: int, n: int, nlat: int, nlon: int, seed: int) -> str:
    import netCDF4

    rng = np.random.default_rng(seed)
    with netCDF4.Dataset(path, "w") as nc:
        nc.createDimension("time", n)
        nc.createDimension("lat", nlat)
        nc.createDimension("lon", nlon)
        t = nc.createVariable("time", "f8", ("time",))
        t.units, t.calendar = "days since 2000-01-01", "standard"
        t[:] = np.arange(start, start + n, dtype="f8")
        nc.createVariable("lat", "f4", ("lat",))[:] = np.linspace(-90, 90, nlat)
        nc.createVariable("lon", "f4", ("lon",))[:] = np.linspace(0, 360, nlon, endpoint=False)
        for k, name in enumerate(VARIABLES):
            v = nc.createVariable(name, "f4", ("time", "lat", "lon"), zlib=True, complevel=1,
                                  chunksizes=(n, max(1, nlat // 2), max(1, nlon // 2)))
            base = np.sin(np.linspace(0, 6, nlat * nlon, dtype="f4")).reshape(nlat, nlon)
            v[:] = (base[None] * (k + 1) + rng.random((n, nlat, nlon), dtype="f4")).astype("f4")
    return str(path)


def collection(root: Path, lengths: list[int], nlat: int, nlon: int) -> list[str]:
    root.mkdir(parents=True, exist_ok=True)
    paths, start = [], 0
    for i, n in enumerate(lengths):
        paths.append(write_file(root / f"f{i:03d}.nc", start, n, nlat, nlon, seed=i))
        start += n
    return paths


def timed(function, repeats: int) -> tuple[float, object]:
    """Median of ``repeats`` timed calls after one untimed call (imports, codec chains, page cache warmed alike)."""
    times, result = [], function()
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def new_repo(path: Path, data: Path):
    import icechunk

    shutil.rmtree(path, ignore_errors=True)
    prefix = f"file://{data}/"
    config = icechunk.RepositoryConfig.default()
    config.set_virtual_chunk_container(icechunk.VirtualChunkContainer(prefix, icechunk.local_filesystem_store(str(data))))
    credentials = icechunk.containers_credentials({prefix: icechunk.credentials.LocalFileSystemAccess})
    return icechunk.Repository.create(icechunk.local_filesystem_storage(str(path)), config,
                                      authorize_virtual_chunk_access=credentials)


def vzdask_virtualize(paths, repo_path: Path, data: Path):
    import vzdask
    from vzdask.writers.icechunk import write_icechunk

    ds = vzdask.open_virtual_mfdataset(paths)
    repo = new_repo(repo_path, data)
    write_icechunk(ds, repo.writable_session("main"), commit="virtualized")
    return repo


def floor_read(paths) -> int:
    """Every chunk's bytes read and inflated, one thread: what any reader must at least do."""
    import h5py

    total = 0
    for path in paths:
        with h5py.File(path, "r") as f:
            for name in VARIABLES:
                ds = f[name]
                for i in range(ds.id.get_num_chunks()):
                    offset = ds.id.get_chunk_info(i).chunk_offset
                    _, data = ds.id.read_direct_chunk(offset)
                    total += len(zlib.decompress(data))
    return total


def peer_errors(paths) -> dict[str, str]:
    """What VirtualiZarr and kerchunk do with this collection (an error, or a result of the wrong length)."""
    out = {}
    try:
        from obstore.store import LocalStore
        from virtualizarr import open_virtual_mfdataset
        from virtualizarr.parsers import HDFParser
        from virtualizarr.registry import ObjectStoreRegistry

        registry = ObjectStoreRegistry({"file://": LocalStore()})
        ds = open_virtual_mfdataset([f"file://{p}" for p in paths], registry=registry, parser=HDFParser(),
                                    combine="nested", concat_dim="time", coords="minimal", compat="override")
        out["VirtualiZarr"] = f"no error: {dict(ds.sizes)}"
    except Exception as err:  # noqa: BLE001 - recording whatever the peer raises
        out["VirtualiZarr"] = _error_text(err)
    try:
        from kerchunk.combine import MultiZarrToZarr
        from kerchunk.hdf import SingleHdf5ToZarr

        singles = [SingleHdf5ToZarr(p, inline_threshold=0).translate() for p in paths]
        refs = MultiZarrToZarr(singles, concat_dims=["time"], identical_dims=["lat", "lon"]).translate()
        import json

        zarray = json.loads(refs["refs"]["tas/.zarray"])
        out["kerchunk"] = (f"no error, but .zarray says shape {zarray['shape']} chunks {zarray['chunks']}: "
                           "one regular chunk size for files of different lengths (wrong values)")
    except Exception as err:  # noqa: BLE001
        out["kerchunk"] = _error_text(err)
    return out


def _error_text(err: Exception) -> str:
    """The peer's error on one line (kerchunk's message goes on over several lines)."""
    return f"{type(err).__name__}: {' '.join(str(err).split())[:300]}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--years", type=int, default=1)
    parser.add_argument("--nlat", type=int, default=90)
    parser.add_argument("--nlon", type=int, default=180)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parent / "_data" / "uneven")
    args = parser.parse_args()

    import xarray as xr

    import vzdask

    years = list(range(2024, 2024 + args.years))  # 2024: a leap year
    days = [calendar.monthrange(y, m)[1] for y in years for m in range(1, 13)]
    equal = [sum(days) // len(days)] * len(days)
    tag = f"{args.years}y-{args.nlat}x{args.nlon}"
    monthly = collection(args.data / f"monthly-{tag}", days, args.nlat, args.nlon)
    regular = collection(args.data / f"equal-{tag}", equal, args.nlat, args.nlon)
    decoded = sum(days) * args.nlat * args.nlon * 4 * len(VARIABLES)
    print(f"{len(monthly)} monthly files ({sum(days)} days), {decoded / 2**20:.0f} MiB decoded; "
          f"equal-length collection: {len(regular)} files of {equal[0]} days; medians of {args.repeats}")

    work = Path(tempfile.mkdtemp(prefix="bench-uneven-"))
    try:
        t_monthly, repo = timed(lambda: vzdask_virtualize(monthly, work / "monthly", args.data), args.repeats)
        t_equal, _ = timed(lambda: vzdask_virtualize(regular, work / "equal", args.data), args.repeats)
        print(f"virtualize to Icechunk  monthly {t_monthly:.3f} s   equal-length {t_equal:.3f} s   "
              f"ratio {t_monthly / t_equal:.2f} (target <= 1.2)")
        for name, outcome in peer_errors(monthly).items():
            print(f"  {name:12s} {outcome}")

        reference = xr.open_mfdataset(monthly, engine="netcdf4").load()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            readers = {
                "floor (1 thread)": lambda: floor_read(monthly),
                "vzdask open_mfdataset": lambda: vzdask.open_mfdataset(monthly).compute(),
                "vzdask, equal-length files": lambda: vzdask.open_mfdataset(regular).compute(),
                "vzdask -> icechunk, xarray": lambda: _read_icechunk(repo),
                "xarray netcdf4, chunk/file": lambda: xr.open_mfdataset(monthly, engine="netcdf4").load(),
                "xarray netcdf4, native": lambda: xr.open_mfdataset(monthly, engine="netcdf4", chunks={}).load(),
            }
            times = {}
            for label, read in readers.items():
                times[label], result = timed(read, args.repeats)
                if isinstance(result, xr.Dataset) and "equal" not in label:  # every reader gives the same values
                    for name in VARIABLES:
                        np.testing.assert_array_equal(result[name].values, reference[name].values)
        floor = times["floor (1 thread)"]
        for label, t in times.items():
            print(f"read {label:28s} {t:7.3f} s   {t / floor:5.2f}x floor   {decoded / t / 2**20:7.0f} MiB/s")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _read_icechunk(repo):
    import xarray as xr
    import zarr

    with zarr.config.set({"array.rectilinear_chunks": True}):
        return xr.open_zarr(repo.readonly_session("main").store, consolidated=False).load()


if __name__ == "__main__":
    import os
    import sys

    status = 0
    try:
        main()
    except Exception:
        traceback.print_exc()
        status = 1
    sys.stdout.flush()
    os._exit(status)  # Icechunk's runtime may crash at interpreter exit (repro/icechunk_exit_crash.py)
