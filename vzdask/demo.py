"""The end-to-end demo: ``python -m vzdask.demo`` (what ``make demo`` and ``vzdask demo`` run).

On a fresh machine, without network access, the demo

1. writes a sample collection of netCDF4 files (12 files, each 8 days of a
   compressed ``tas`` and a CF-packed ``pr`` on a small lat/lon grid);
2. starts a ``distributed.LocalCluster`` (2 worker processes, 1 thread each);
3. virtualizes the files in parallel on the cluster
   (``open_virtual_mfdataset(..., parallel=client)``) with the coordinates
   inlined (``InlinePolicy(coordinates=True)``);
4. persists ``pr`` on the cluster (``ds[["pr"]].vz.persist()``): its chunks
   become inlined bytes, written inline by every writer;
5. writes kerchunk Parquet references and an Icechunk repository;
6. reads both back with independent readers (fsspec's ReferenceFileSystem
   with zarr through xarray; Icechunk with ``xr.open_zarr``) and compares
   every value with ``xr.open_mfdataset`` of the original files.

It prints a short report with timings and output locations and ``demo OK``
(exit status 0), or the mismatches (exit status 1).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from vzdask.accessor import VirtualDatasetAccessor

#: The sample collection: files, time steps per file, grid.
N_FILES = 12
DAYS_PER_FILE = 8
NLAT, NLON = 24, 48

#: Names of what the demo writes under its output directory.
DATA_DIR = "data"
PARQUET_NAME = "refs.parq"
ICECHUNK_NAME = "demo.icechunk"

PR_FILL = -1  # the packed fill value of pr (int16)


class MissingDependency(RuntimeError):
    """An optional dependency the demo needs is not installed."""


# --------------------------------------------------------------------------- #
# 1. the sample collection
# --------------------------------------------------------------------------- #
def write_collection(directory: Path, n_files: int = N_FILES) -> list[Path]:
    """Write ``n_files`` netCDF4 files of consecutive 8-day periods into ``directory``.

    Each file holds ``time``, ``lat``, ``lon`` coordinates and two variables:
    ``tas`` (float32, zlib + shuffle, chunks of 4 x 12 x 24) and ``pr``
    (int16 packed with ``scale_factor``, a ``_FillValue`` and a few masked
    values, zlib, one chunk per file).
    """
    netCDF4 = _require("netCDF4", "writing the sample netCDF4 files")
    directory.mkdir(parents=True, exist_ok=True)
    lat = np.linspace(-57.5, 57.5, NLAT, dtype=np.float32)
    lon = np.linspace(0.0, 352.5, NLON, dtype=np.float32)
    paths = []
    for k in range(n_files):
        rng = np.random.default_rng(k)
        days = np.arange(k * DAYS_PER_FILE, (k + 1) * DAYS_PER_FILE, dtype=np.float64)
        season = np.cos(2 * np.pi * days / 96.0)[:, None, None]
        tas = 288.0 - 30.0 * np.abs(lat)[None, :, None] / 60.0 + 5.0 * season
        tas = (tas + rng.normal(0.0, 1.5, (DAYS_PER_FILE, NLAT, NLON))).astype(np.float32)
        pr = np.round(rng.gamma(0.8, 3.0, (DAYS_PER_FILE, NLAT, NLON)) * 100).astype(np.int16)
        pr[rng.random(pr.shape) < 0.02] = PR_FILL  # masked: NaN once decoded
        path = directory / f"sample_{k:02d}.nc"
        with netCDF4.Dataset(path, "w") as nc:
            nc.title = "vzdask demo sample"
            nc.source = "synthetic, written by vzdask.demo"
            nc.createDimension("time", None)
            nc.createDimension("lat", NLAT)
            nc.createDimension("lon", NLON)
            t = nc.createVariable("time", "f8", ("time",))
            t.units = "days since 2000-01-01"
            t.calendar = "standard"
            t[:] = days
            y = nc.createVariable("lat", "f4", ("lat",))
            y.units = "degrees_north"
            y[:] = lat
            x = nc.createVariable("lon", "f4", ("lon",))
            x.units = "degrees_east"
            x[:] = lon
            v = nc.createVariable("tas", "f4", ("time", "lat", "lon"), zlib=True, shuffle=True,
                                  chunksizes=(4, NLAT // 2, NLON // 2))
            v.units = "K"
            v.long_name = "near-surface air temperature"
            v[:] = tas
            p = nc.createVariable("pr", "i2", ("time", "lat", "lon"), zlib=True,
                                  chunksizes=(DAYS_PER_FILE, NLAT, NLON), fill_value=np.int16(PR_FILL))
            p.units = "mm day-1"
            p.long_name = "precipitation"
            # float64: zarr/kerchunk attributes are JSON numbers, so a float32 scale_factor
            # would decode to float64 there but float32 from netCDF (xarray's to_zarr does the same)
            p.scale_factor = np.float64(0.01)
            p.set_auto_maskandscale(False)  # write the packed integers as they are
            p[:] = pr
        paths.append(path)
    return paths


# --------------------------------------------------------------------------- #
# 5. the writers' targets
# --------------------------------------------------------------------------- #
def container_prefix(data_dir: Path) -> str:
    """The Icechunk virtual chunk container prefix covering the files in ``data_dir``."""
    from vzdask.writers.icechunk import _suggested_prefix, icechunk_location

    return _suggested_prefix(icechunk_location((data_dir.resolve() / "x.nc").as_uri()))


def _credentials(prefix: str):
    import icechunk

    return icechunk.containers_credentials({prefix: icechunk.credentials.LocalFileSystemAccess})


def create_repository(path: Path, prefix: str):
    """A new local Icechunk repository with a virtual chunk container for ``prefix`` (file://)."""
    import icechunk
    from urllib.parse import unquote, urlsplit

    config = icechunk.RepositoryConfig.default()
    store = icechunk.local_filesystem_store(unquote(urlsplit(prefix).path))
    config.set_virtual_chunk_container(icechunk.VirtualChunkContainer(prefix, store))
    return icechunk.Repository.create(
        icechunk.local_filesystem_storage(str(path)), config, authorize_virtual_chunk_access=_credentials(prefix)
    )


# --------------------------------------------------------------------------- #
# 6. independent readers
# --------------------------------------------------------------------------- #
@contextmanager
def _pandas_nulls_as_none() -> Iterator[None]:
    """Read with pandas' old string inference: fsspec's Parquet reader takes pandas 3's NaN (a null url) for a url."""
    import pandas as pd

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the option is deprecated (pandas 3) and still needed (fsspec 2026.9)
        try:
            pd.get_option("future.infer_string")
        except (KeyError, pd.errors.OptionError):  # a pandas without the option: nothing to do
            yield
            return
        with pd.option_context("future.infer_string", False):
            yield


def read_parquet_references(path: Path):
    """Open kerchunk Parquet references with fsspec's ReferenceFileSystem and zarr (v2) through xarray."""
    import fsspec
    import xarray as xr
    from fsspec.implementations.reference import LazyReferenceMapper

    with _pandas_nulls_as_none():
        refs = LazyReferenceMapper(str(path), fs=fsspec.filesystem("file"), engine="pyarrow")
        fs = fsspec.filesystem("reference", fo=refs)
        with xr.open_dataset(fs.get_mapper(""), engine="zarr",
                             backend_kwargs={"consolidated": False, "zarr_format": 2}) as ds:
            return ds.load()


def read_icechunk(path: Path, prefix: str):
    """Open the Icechunk repository's ``main`` branch with ``xr.open_zarr``."""
    import icechunk
    import xarray as xr

    repo = icechunk.Repository.open(
        icechunk.local_filesystem_storage(str(path)), authorize_virtual_chunk_access=_credentials(prefix)
    )
    session = repo.readonly_session("main")
    with xr.open_zarr(session.store, consolidated=False) as ds:
        return ds.load()


def read_originals(paths: list[Path]):
    """``xr.open_mfdataset`` of the original files (netCDF4 engine), loaded."""
    import xarray as xr

    with xr.open_mfdataset([str(p) for p in paths], combine="by_coords", engine="netcdf4") as ds:
        return ds.load(scheduler="threads")


# --------------------------------------------------------------------------- #
# checking
# --------------------------------------------------------------------------- #
def compare(got, expected, label: str) -> list[str]:
    """Compare every variable of ``expected`` with ``got``; one message per problem, prefixed by ``label``."""
    problems = []
    for name in expected.variables:
        if name not in got.variables:
            problems.append(f"{label}: {name}: missing")
            continue
        want, have = expected[name], got[name]
        if have.dims != want.dims or have.shape != want.shape or have.dtype != want.dtype:
            problems.append(f"{label}: {name}: expected {want.dtype} {want.dims} {want.shape}, "
                            f"got {have.dtype} {have.dims} {have.shape}")
            continue
        a, b = np.asarray(have.values), np.asarray(want.values)
        nan_ok = a.dtype.kind in "fcmM"
        equal = (a == b) | ((a != a) & (b != b)) if nan_ok else a == b
        if not equal.all():
            where = tuple(int(i) for i in np.argwhere(~equal)[0])
            problems.append(f"{label}: {name}: {int((~equal).sum())} of {b.size} values differ; first at {where}: "
                            f"expected {b[where]!r}, got {a[where]!r}")
    for key in ("title", "source"):
        if got.attrs.get(key) != expected.attrs.get(key):
            problems.append(f"{label}: attribute {key!r}: expected {expected.attrs.get(key)!r}, "
                            f"got {got.attrs.get(key)!r}")
    return problems


# --------------------------------------------------------------------------- #
# the run
# --------------------------------------------------------------------------- #
class _Report:
    """Timed steps, printed as they finish."""

    def __init__(self) -> None:
        self.started = time.perf_counter()

    @contextmanager
    def step(self, text: str) -> Iterator[dict[str, str]]:
        note: dict[str, str] = {}
        t0 = time.perf_counter()
        yield note
        seconds = time.perf_counter() - t0
        detail = f"  {note['detail']}" if note.get("detail") else ""
        print(f"  {text:<52} {seconds:6.2f} s{detail}", flush=True)

    def total(self) -> float:
        return time.perf_counter() - self.started


def _chunk_counts(ds) -> str:
    parts = []
    for name in VirtualDatasetAccessor(ds).virtual_variables:
        c = ds.variables[name].data.manifest.count()
        parts.append(f"{name}: {c['virtual']} virtual/{c['inlined']} inlined")
    return "; ".join(parts)


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def run(directory: Path, *, n_files: int = N_FILES, keep: bool = True) -> int:
    """Run the demo with its outputs in ``directory``; 0 when everything read back matches, 1 otherwise.

    ``keep=False`` only changes the report (the caller removes ``directory``).
    """
    from vzdask.process import quiet_icechunk_logs

    quiet_icechunk_logs()
    _require("icechunk", "writing the Icechunk repository")
    _require("pyarrow", "writing kerchunk Parquet references")
    _require("fsspec", "reading the references back")
    _require("h5py", "parsing netCDF4 files")
    import dask
    from distributed import Client, LocalCluster

    from vzdask.mfdataset import open_virtual_mfdataset
    from vzdask.policy import InlinePolicy

    directory = directory.resolve()
    data_dir = directory / DATA_DIR
    parquet = directory / PARQUET_NAME
    repository = directory / ICECHUNK_NAME
    report = _Report()
    print(f"vzdask demo: {n_files} netCDF4 files -> virtual dataset -> kerchunk Parquet + Icechunk -> checked")

    with report.step(f"wrote {n_files} netCDF4 files") as note:
        files = write_collection(data_dir, n_files)
        note["detail"] = f"{_human(sum(_size(f) for f in files))} in {data_dir}"

    prefix = container_prefix(data_dir)
    if repository.exists():  # an earlier demo run with the same --output
        shutil.rmtree(repository)
    with report.step("started a LocalCluster (2 worker processes)"), warnings.catch_warnings():
        # without a dashboard the scheduler still serves health checks, on 8787 when free
        warnings.filterwarnings("ignore", message="Port .* is already in use", category=UserWarning)
        cluster = LocalCluster(n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None)
        client = Client(cluster)
    try:
        with report.step("virtualized the files in parallel on the cluster") as note:
            vds = open_virtual_mfdataset(files, parallel=client, inline=InlinePolicy(coordinates=True))
            note["detail"] = _chunk_counts(vds)
        with report.step("persisted pr on the cluster (inlined)") as note:
            persisted = VirtualDatasetAccessor(vds[["pr"]]).persist()
            vds = vds.copy()
            vds["pr"] = persisted["pr"]
            note["detail"] = _chunk_counts(vds[["pr"]])
        with report.step("wrote kerchunk Parquet references") as note:
            VirtualDatasetAccessor(vds).to_kerchunk(parquet, format="parquet")
            note["detail"] = f"{_human(_size(parquet))} in {parquet}"
        with report.step("wrote an Icechunk repository (committed)") as note:
            session = create_repository(repository, prefix).writable_session("main")
            snapshot = VirtualDatasetAccessor(vds).to_icechunk(session, commit=f"vzdask demo: {n_files} files")
            note["detail"] = f"{_human(_size(repository))} in {repository} (snapshot {snapshot})"
    finally:
        client.close()
        cluster.close()

    with dask.config.set(scheduler="threads"):
        with report.step("opened the originals with xr.open_mfdataset"):
            expected = read_originals(files)
        with report.step("read the Parquet references (fsspec + zarr v2)"):
            from_parquet = read_parquet_references(parquet)
        with report.step("read the Icechunk repository (icechunk + zarr v3)"):
            from_icechunk = read_icechunk(repository, prefix)
        with report.step("compared every value") as note:
            problems = compare(from_parquet, expected, "kerchunk Parquet")
            problems += compare(from_icechunk, expected, "Icechunk")
            n_values = sum(v.size for v in expected.variables.values())
            note["detail"] = f"{n_values} values of {len(expected.variables)} variables, twice"

    print(f"  {'total':<52} {report.total():6.2f} s")
    sizes = ", ".join(f"{k}={v}" for k, v in from_icechunk.sizes.items())
    print(f"dataset: {sizes}; data variables {', '.join(map(str, from_icechunk.data_vars))}")
    where = "" if keep else " (a temporary directory, removed now: keep the outputs with --output DIR)"
    print(f"outputs: {directory}{where}")
    if problems:
        print("demo FAILED:", file=sys.stderr)
        for problem in problems:
            print(f"  {problem}", file=sys.stderr)
        return 1
    print("demo OK")
    return 0


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def _require(module: str, purpose: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise MissingDependency(
            f"the demo needs {module} for {purpose}; install the demo extra: pip install -e '.[demo]'"
        ) from err


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (0 ok, 1 mismatch or failure)."""
    parser = argparse.ArgumentParser(prog="python -m vzdask.demo", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--output", type=Path, default=None,
        help="keep the files and outputs in this directory, replacing an earlier demo's "
             "(default: a temporary directory, removed afterwards)",
    )
    args = parser.parse_args(argv)
    try:
        if args.output is not None:
            return run(args.output)
        with tempfile.TemporaryDirectory(prefix="vzdask-demo-") as tmp:
            return run(Path(tmp), keep=False)
    except MissingDependency as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    from vzdask.process import exit_process

    exit_process(main())
