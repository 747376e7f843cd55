"""The kerchunk references vzdask writes, read the standard way: fsspec + zarr, and kerchunk's xarray engine.

The recipes users copy from kerchunk's documentation (README, "Reading
references without vzdask"):

* ``xr.open_dataset("reference://", engine="zarr", backend_kwargs={"storage_options": {"fo": refs}})``;
* ``xr.open_dataset(refs, engine="kerchunk")``.

For a Parquet directory fsspec's ``ReferenceFileSystem`` reads with
fastparquet (``LazyReferenceMapper``'s default engine, not configurable
through ``fo=``); a ``LazyReferenceMapper(..., engine="pyarrow")`` passed as
``fo`` reads with pyarrow. Both are tested. fastparquet reads an integer
column as float64 unless the row group's statistics say it holds no nulls, so
our ``offset``/``size`` columns carry that statistic (before, fsspec failed
with ``ReferenceNotReachable`` ... ``np.float64(30574.0)``).

Values are compared with ``engine="netcdf4"`` reading the original files.
"""

from __future__ import annotations

import base64
import json
import warnings
from contextlib import contextmanager
from pathlib import Path

import fsspec
import netCDF4
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from fsspec.implementations.reference import LazyReferenceMapper

import vzdask
from vzdask.parsers import HDFParser
from vzdask.registry import ObjectStoreRegistry
from vzdask.writers.kerchunk import to_kerchunk

pytestmark = pytest.mark.filterwarnings(
    "ignore:The 'fastparquet' engine is deprecated",  # pandas 3.1, called by fsspec
    "ignore:The 'future.infer_string' option is deprecated",
    "ignore:In a future version of xarray the default value",
)

ENGINES = ("fastparquet", "pyarrow")


def write_part(path: Path, part: int) -> Path:
    """One file of a collection: float, packed and integer variables, a partly written one, and a group."""
    with netCDF4.Dataset(path, "w") as nc:
        nc.title = "collection"
        nc.createDimension("time", None)
        nc.createDimension("y", 6)
        nc.createDimension("x", 8)
        t = nc.createVariable("time", "i4", ("time",))
        t.units = "days since 2000-01-01"
        t[:] = np.arange(4) + 4 * part
        nc.createVariable("y", "f8", ("y",))[:] = np.linspace(0, 50, 6)
        nc.createVariable("x", "f8", ("x",))[:] = np.linspace(-70, 0, 8)
        rng = np.random.default_rng(part)
        tas = nc.createVariable("tas", "f4", ("time", "y", "x"), zlib=True, shuffle=True, chunksizes=(1, 3, 4),
                                fill_value=np.float32(1e20))
        tas.units = "K"
        values = (280 + 10 * rng.random((4, 6, 8))).astype("f4")
        values[0, 0, 0] = 1e20
        tas[:] = values
        pr = nc.createVariable("pr", "i2", ("time", "y", "x"), chunksizes=(2, 6, 8), fill_value=np.int16(-1))
        pr.scale_factor = 0.5  # float64: netCDF4 and the references (JSON numbers) unpack to float64 alike
        pr.add_offset = 1.0
        pr.set_auto_maskandscale(False)
        pr[:] = rng.integers(0, 1000, (4, 6, 8)).astype("i2")
        sparse = nc.createVariable("sparse", "f4", ("time", "y"), chunksizes=(1, 3), fill_value=np.float32(-5))
        sparse[1, 0:3] = [1, 2, 3]  # the other seven chunks are never written: missing in the references
        group = nc.createGroup("meta")
        group.createDimension("k", 3)
        group.createVariable("k", "i4", ("k",))[:] = [10, 20, 30]
        group.createVariable("station", "f8", ("k",))[:] = [1.5, 2.5, 3.5 + part]
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> list[Path]:
    directory = tmp_path_factory.mktemp("originals")
    return [write_part(directory / f"part{i}.nc", i) for i in range(3)]


@pytest.fixture(scope="module")
def want(files) -> xr.Dataset:
    with xr.open_mfdataset(files, engine="netcdf4", combine="by_coords") as ds:
        return ds.load()


@pytest.fixture(scope="module")
def refs(files, tmp_path_factory) -> dict[str, Path]:
    """The collection combined along time, coordinates inlined; small records so Parquet has several."""
    directory = tmp_path_factory.mktemp("refs")
    ds = vzdask.open_virtual_mfdataset(files, inline=vzdask.InlinePolicy(coordinates=True))
    out = {"json": directory / "refs.json", "parquet": directory / "refs.parq"}
    ds.vz.to_kerchunk(out["json"], format="json")
    # record_size 5: records that mix virtual, inlined and missing rows, and records with no reference at all;
    # categorical_threshold 1: the path column dictionary-encoded, as fsspec writes it for many references
    ds.vz.to_kerchunk(out["parquet"], format="parquet", record_size=5, categorical_threshold=1)
    return out


@contextmanager
def nulls_as_none(engine: str):
    """pandas 3 reads a null string as NaN with pyarrow, which fsspec takes for a url (missing chunks fail).

    fsspec's ``LazyReferenceMapper`` tests ``path is None``; turning pandas' ``future.infer_string`` off
    gives ``None`` back. fastparquet gives ``None`` either way.
    """
    if engine != "pyarrow":
        yield
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pd.option_context("future.infer_string", False):
            yield


def mapper(path: Path, engine: str) -> LazyReferenceMapper:
    return LazyReferenceMapper(str(path), fs=fsspec.filesystem("file"), engine=engine)


# --------------------------------------------------------------------------- #
# Parquet
# --------------------------------------------------------------------------- #
def test_the_readme_recipe_reads_parquet_with_fsspecs_default_engine(refs, want):
    """Exactly the recipe of the issue: fsspec picks its default engine (fastparquet)."""
    with xr.open_dataset("reference://", engine="zarr",
                         backend_kwargs={"storage_options": {"fo": str(refs["parquet"])}}) as ds:
        xr.testing.assert_identical(ds.load(), want)
    with xr.open_dataset("reference://", engine="zarr", backend_kwargs={
            "storage_options": {"fo": str(refs["parquet"])}, "consolidated": False}) as ds:
        xr.testing.assert_identical(ds.load(), want)


@pytest.mark.parametrize("engine", ENGINES)
def test_parquet_with_fsspec_and_zarr(refs, want, engine):
    with nulls_as_none(engine), xr.open_dataset("reference://", engine="zarr", backend_kwargs={
            "storage_options": {"fo": mapper(refs["parquet"], engine)}, "consolidated": False}) as ds:
        xr.testing.assert_identical(ds.load(), want)


@pytest.mark.parametrize("engine", ENGINES)
def test_parquet_with_kerchunks_engine(refs, want, engine):
    with nulls_as_none(engine):
        with xr.open_dataset(str(refs["parquet"]), engine="kerchunk") if engine == "fastparquet" else \
                xr.open_dataset(mapper(refs["parquet"], engine), engine="kerchunk") as ds:
            xr.testing.assert_identical(ds.load(), want)


@pytest.mark.parametrize("engine", ENGINES)
def test_parquet_columns_read_as_fsspec_expects(refs, engine):
    """The reason fastparquet failed: offset and size came back float64; now int64 with either engine."""
    record = next((refs["parquet"] / "tas").glob("refs.*.parq"))
    frame = pd.read_parquet(record, engine=engine)
    assert frame["offset"].dtype == np.int64 and frame["size"].dtype == np.int64
    assert all(isinstance(p, str) and p.startswith("file://") for p in frame["path"].to_numpy())


@pytest.mark.parametrize("engine", ENGINES)
def test_parquet_missing_inlined_and_virtual_rows(refs, engine):
    """Row by row, what fsspec's mapper gives equals what the JSON references say."""
    document = json.loads(refs["json"].read_text())["refs"]
    lazy = mapper(refs["parquet"], engine)
    with nulls_as_none(engine):
        for key in ("tas/0.0.0", "tas/11.1.1", "time/0", "y/0", "pr/5.0.0", "sparse/4.0", "sparse/0.1"):
            expected = document.get(key)
            if expected is None:  # missing: no reference
                with pytest.raises(KeyError):
                    lazy[key]
            elif isinstance(expected, str):  # inlined: base64 in JSON, raw bytes in Parquet
                assert bytes(lazy[key]) == base64.b64decode(expected[len("base64:"):])
            else:
                url, offset, size = lazy[key]
                assert [url, int(offset), int(size)] == expected
                assert isinstance(offset, (int, np.integer)) and isinstance(size, (int, np.integer))


def test_parquet_groups_with_fsspec(files, tmp_path):
    """A file's whole tree: each group opened with zarr (remote_protocol given, see the README)."""
    store = HDFParser()("file://" + str(files[0]), ObjectStoreRegistry.default())
    out = tmp_path / "tree.parq"
    to_kerchunk(store, out, format="parquet")
    for group in (None, "meta"):
        with xr.open_dataset(files[0], engine="netcdf4", group=group) as original:
            expected = original.load()
        with xr.open_dataset("reference://", engine="zarr", group=group, backend_kwargs={
                "storage_options": {"fo": str(out), "remote_protocol": "file"}, "consolidated": False}) as ds:
            xr.testing.assert_identical(ds.load(), expected)
        with xr.open_dataset(str(out), engine="kerchunk", group=group,
                             storage_options={"remote_protocol": "file"}) as ds:
            xr.testing.assert_identical(ds.load(), expected)


# --------------------------------------------------------------------------- #
# JSON
# --------------------------------------------------------------------------- #
def test_json_with_fsspec_and_zarr(refs, want):
    with xr.open_dataset("reference://", engine="zarr",
                         backend_kwargs={"storage_options": {"fo": str(refs["json"])}, "consolidated": False}) as ds:
        xr.testing.assert_identical(ds.load(), want)


def test_json_with_kerchunks_engine(refs, want):
    with xr.open_dataset(str(refs["json"]), engine="kerchunk") as ds:
        xr.testing.assert_identical(ds.load(), want)


# --------------------------------------------------------------------------- #
# The same references through vzdask (batched reads): the same values
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("fmt", ["json", "parquet"])
def test_vzdask_reads_them_alike(refs, want, fmt):
    xr.testing.assert_identical(xr.open_dataset(refs[fmt], engine="vzdask").load(), want)
    xr.testing.assert_identical(xr.open_dataset(refs[fmt], engine="vzdask", chunks={}).compute(), want)
    xr.testing.assert_identical(vzdask.open_mfdataset(refs[fmt]).compute(), want)
