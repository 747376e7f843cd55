"""The xarray engine ``engine="vzdask"`` (vzdask/backend.py), checked against xarray's own engines.

Every input kind is opened with ``xr.open_dataset(..., engine="vzdask")`` and
compared with the reference reader of the same file: ``engine="netcdf4"`` for
netCDF4 and netCDF3 files, ``engine="zarr"`` for Zarr stores, kerchunk's
engine (fsspec + zarr) for kerchunk references, and ``engine="netcdf4"`` on
the original files for the references' values.

The engine is found through the ``xarray.backends`` entry point of the
installed distribution (pyproject.toml); ``test_the_engine_is_registered``
says so when the installed metadata is older than the entry point.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import dask
import dask.array as da
import h5netcdf
import netCDF4
import numpy as np
import pytest
import xarray as xr

import vzdask
from vzdask.backend import VzdaskBackendEntrypoint, covering_region
from vzdask.errors import ParseError
from vzdask.parsers import HDFParser
from vzdask.registry import ObjectStoreRegistry
from vzdask.writers.kerchunk import to_kerchunk

pytestmark = pytest.mark.filterwarnings(
    "ignore:The data type .* does not have a Zarr V3 specification",  # vlen strings in zarr v3 metadata
    "ignore::zarr.errors.UnstableSpecificationWarning",
)


# --------------------------------------------------------------------------- #
# Files, written with the formats' own libraries
# --------------------------------------------------------------------------- #
def write_rich(path: Path, offset: int = 0, *, groups: bool = True) -> Path:
    """A netCDF4 file with what CF decoding touches: packing, masks, times with bounds, text, groups."""
    with netCDF4.Dataset(path, "w") as nc:
        nc.title = "rich"
        nc.setncattr("version", np.int32(3))
        nc.createDimension("time", None)
        nc.createDimension("lat", 4)
        nc.createDimension("lon", 5)
        nc.createDimension("nv", 2)
        nc.createDimension("nchar", 3)
        t = nc.createVariable("time", "f8", ("time",))
        t.units = "hours since 2001-01-01"
        t.calendar = "noleap"
        t.bounds = "time_bnds"
        hours = (np.arange(6) + 6 * offset) * 6.0
        t[:] = hours
        nc.createVariable("time_bnds", "f8", ("time", "nv"))[:] = np.stack([hours, hours + 6], 1)
        nc.createVariable("lat", "f4", ("lat",))[:] = np.linspace(-30, 30, 4)
        nc.createVariable("lon", "f4", ("lon",))[:] = np.arange(5) * 10.0
        area = nc.createVariable("area", "f4", ("lat", "lon"))
        area.units = "m2"
        area[:] = np.arange(20).reshape(4, 5)
        packed = nc.createVariable("packed", "i2", ("time", "lat", "lon"), zlib=True, shuffle=True,
                                   chunksizes=(2, 2, 5), fill_value=np.int16(-32767))
        packed.scale_factor = np.float32(0.01)
        packed.add_offset = np.float32(10)
        packed.coordinates = "area"
        packed.grid_mapping = "crs"
        crs = nc.createVariable("crs", "i4", ())  # a scalar
        crs.grid_mapping_name = "latitude_longitude"
        crs[...] = 4326
        nc.createVariable("never_written", "f8", ("lat", "lon"), chunksizes=(2, 5), fill_value=-1.5)
        packed.set_auto_maskandscale(False)
        raw = (np.arange(120).reshape(6, 4, 5) + offset).astype(np.int16)
        raw[1, 2, 3] = -32767
        packed[:] = raw
        miss = nc.createVariable("miss", "f4", ("time", "lat"), chunksizes=(2, 4), fill_value=np.float32(-9))
        miss.missing_value = np.float32(-9)
        miss[0:2, :] = np.array([[1, 2, -9, 4], [5, 6, 7, 8]], "f4")  # the other chunks are never written
        nc.createVariable("names", str, ("lat",))[:] = np.array(["a", "bb", "ccc", "dddd"], dtype=object)
        codes = nc.createVariable("codes", "S1", ("lat", "nchar"))
        codes[:] = netCDF4.stringtochar(np.array([b"ab", b"cde", b"f", b""], dtype="S3"))
        unsigned = nc.createVariable("unsigned", "i1", ("lon",))
        unsigned._Unsigned = "true"
        unsigned[:] = np.array([-1, 0, 1, 2, -128], dtype="i1")
        duration = nc.createVariable("duration", "i4", ("lon",))
        duration.units = "days"
        duration[:] = np.arange(5)
        if groups:
            sub = nc.createGroup("sub")
            sub.note = "child"
            sub.createDimension("z", 3)
            sub.createVariable("z", "i4", ("z",))[:] = [1, 2, 3]
            sub.createVariable("q", "f8", ("z", "lat"))[:] = np.arange(12).reshape(3, 4)
            deeper = sub.createGroup("deeper")
            deeper.createVariable("w", "f4", ("z",))[:] = [9, 8, 7]
    return path


@pytest.fixture(scope="module")
def rich(tmp_path_factory) -> Path:
    return write_rich(tmp_path_factory.mktemp("backend") / "rich.nc")


@pytest.fixture(scope="module")
def collection(tmp_path_factory) -> list[Path]:
    """Three files that differ only along time (no groups: open_mfdataset reads the root)."""
    directory = tmp_path_factory.mktemp("collection")
    return [write_rich(directory / f"part{i}.nc", i, groups=False) for i in range(3)]


def netcdf4(path, **kwargs) -> xr.Dataset:
    with xr.open_dataset(path, engine="netcdf4", **kwargs) as ds:
        return ds.load()


def vz(path, **kwargs) -> xr.Dataset:
    return xr.open_dataset(path, engine="vzdask", **kwargs).load()


def assert_same_dtypes(got: xr.Dataset, want: xr.Dataset) -> None:
    assert {k: v.dtype for k, v in got.variables.items()} == {k: v.dtype for k, v in want.variables.items()}


# --------------------------------------------------------------------------- #
# Registration and format guessing
# --------------------------------------------------------------------------- #
def test_the_engine_is_registered():
    assert "vzdask" in xr.backends.list_engines(), (
        "the xarray.backends entry point is missing: reinstall vzdask (pip install -e .) so the installed "
        "metadata has pyproject.toml's [project.entry-points.\"xarray.backends\"]"
    )
    assert isinstance(xr.backends.list_engines()["vzdask"], VzdaskBackendEntrypoint)


def test_guessing_claims_references_and_leaves_netcdf_and_zarr_to_their_engines(rich, tmp_path):
    engine = VzdaskBackendEntrypoint()
    ds = vzdask.open_virtual_dataset(rich)
    ds.vz.to_kerchunk(tmp_path / "refs.json", format="json")
    ds.vz.to_kerchunk(tmp_path / "refs.parq", format="parquet")
    ds.vz.to_kerchunk(tmp_path / "unnamed", format="parquet")  # a Parquet directory not named so: probed
    assert engine.guess_can_open(str(tmp_path / "refs.json"))
    assert engine.guess_can_open(tmp_path / "refs.parq")
    assert engine.guess_can_open(str(tmp_path / "unnamed"))
    # netCDF4/HDF5, netCDF3 and Zarr belong to the netcdf4/h5netcdf/scipy and zarr engines
    assert not engine.guess_can_open(str(rich))
    xr.Dataset({"a": ("x", [1, 2])}).to_netcdf(tmp_path / "classic.nc", format="NETCDF3_CLASSIC")
    assert not engine.guess_can_open(str(tmp_path / "classic.nc"))
    xr.Dataset({"a": ("x", [1, 2])}).to_zarr(tmp_path / "store.zarr")
    assert not engine.guess_can_open(str(tmp_path / "store.zarr"))
    (tmp_path / "other.json").write_text('{"not": "references"}')
    assert not engine.guess_can_open(str(tmp_path / "other.json"))
    assert not engine.guess_can_open(str(tmp_path / "absent.json"))
    assert not engine.guess_can_open(42)
    # without engine=: xarray asks the engines in turn; kerchunk's claims .json first where it is installed,
    # nothing else claims .parq
    guessed = xr.open_dataset(tmp_path / "refs.parq").load()
    xr.testing.assert_identical(guessed, vz(tmp_path / "refs.parq"))


# --------------------------------------------------------------------------- #
# netCDF4: every decoder keyword against engine="netcdf4"
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("kwargs", [
    {},
    {"decode_cf": False},
    {"mask_and_scale": False},
    {"decode_times": False},
    {"decode_timedelta": False},
    {"decode_coords": "all"},
    {"decode_coords": False},
    {"concat_characters": False},
    {"drop_variables": ["packed", "names"]},
    {"drop_variables": "time_bnds"},
    {"group": "sub"},
    {"group": "/sub/deeper"},
], ids=repr)
def test_netcdf4_like_the_netcdf4_engine(rich, kwargs):
    got, want = vz(rich, **kwargs), netcdf4(rich, **kwargs)
    xr.testing.assert_identical(got, want)
    assert_same_dtypes(got, want)


def test_decode_cf_false_gives_the_stored_values(rich):
    raw = vz(rich, decode_cf=False)
    assert raw["packed"].dtype == np.int16 and raw["packed"].values[1, 2, 3] == -32767
    assert raw["packed"].attrs["scale_factor"] == np.float32(0.01)
    assert raw["time"].dtype == np.float64 and raw["time"].attrs["units"] == "hours since 2001-01-01"
    decoded = vz(rich)
    assert np.isnan(decoded["packed"].values[1, 2, 3]) and decoded["packed"].dtype == np.float32
    assert decoded["time"].dtype == object  # noleap calendar: cftime objects, as netcdf4 gives


@pytest.mark.parametrize("chunks", [{}, "auto", {"time": 1}, {"time": 4, "lat": 3}, 2, {"lon": -1}], ids=repr)
def test_chunks_are_honoured(rich, chunks):
    want = netcdf4(rich)
    try:
        with xr.open_dataset(rich, engine="netcdf4", chunks=chunks) as reference:
            expected = {name: var.chunks for name, var in reference.variables.items()}
    except NotImplementedError:  # dask 2025.4 cannot "auto"-chunk cftime objects: the same refusal from ours
        assert chunks == "auto"
        with dask.config.set({"vzdask.task-bytes": 64}), pytest.raises(NotImplementedError, match="object dtype"):
            xr.open_dataset(rich, engine="vzdask", chunks=chunks)
        return
    with dask.config.set({"vzdask.task-bytes": 64}):  # small task blocks: chunks={} is several of them
        ds = xr.open_dataset(rich, engine="vzdask", chunks=chunks)
    assert ds["packed"].chunks is not None
    if chunks not in ({}, "auto"):  # explicit chunks are the user's, whatever the engine prefers
        given = [d for d in ds.dims if isinstance(chunks, int) or d in chunks]
        for name, var in ds.variables.items():
            if var.chunks is not None:
                assert [c for d, c in zip(var.dims, var.chunks) if d in given] == \
                    [c for d, c in zip(var.dims, expected[name]) if d in given], name
    xr.testing.assert_identical(ds.compute(), want)


def test_preferred_chunks_are_task_blocks_of_whole_native_chunks(rich):
    with dask.config.set({"vzdask.task-bytes": 80}):  # two native (2, 2, 5) int16 chunks per block
        ds = xr.open_dataset(rich, engine="vzdask", chunks={})
    assert ds["packed"].encoding["chunks"] == (2, 2, 5)
    assert ds["packed"].encoding["preferred_chunks"] == {"time": 2, "lat": 4, "lon": 5}
    assert ds["packed"].chunks == ((2, 2, 2), (4,), (5,))
    with dask.config.set({"vzdask.task-bytes": 64 * 2**20}):
        ds = xr.open_dataset(rich, engine="vzdask", chunks={})
    assert ds["packed"].chunks == ((6,), (4,), (5,))  # the whole (small) variable is one task


#: The rich file's variables whose decoding is elementwise on the stored values: chunked, they are load tasks.
READ_IN_TASKS = ("area", "packed", "never_written", "miss", "unsigned")
#: CF encoding keys xarray's decoding leaves in ``encoding``: the same as engine="netcdf4" gives.
CF_ENCODING = ("dtype", "_FillValue", "missing_value", "scale_factor", "add_offset", "units", "calendar",
               "coordinates", "_Unsigned")


def _layer_kinds(var: xr.Variable) -> set[str]:
    return {name.split("-")[0] for name in var.data.dask.layers}


@pytest.mark.parametrize("kwargs", [{}, {"mask_and_scale": False}, {"decode_cf": False}, {"decode_times": False}],
                         ids=repr)
@pytest.mark.parametrize("chunks", [{}, {"time": 4}, {"time": 1, "lon": 2}], ids=repr)
def test_chunks_read_through_the_load_tasks(rich, chunks, kwargs):
    """Chunked variables are vzdask's load tasks (decoding in them), in xarray's chunks, with netcdf4's values."""
    with xr.open_dataset(rich, engine="netcdf4", chunks=chunks, **kwargs) as reference:
        want = reference.load()
        want_encoding = {name: var.encoding for name, var in reference.variables.items()}
    with dask.config.set({"vzdask.task-bytes": 64}):  # chunks={}: task blocks of a few native chunks
        lazy = xr.open_dataset(rich, engine="vzdask", chunks=chunks, **kwargs)
        unchunked = xr.open_dataset(rich, engine="vzdask", **kwargs)
    for name in READ_IN_TASKS:
        var = lazy.variables[name]
        assert type(var) is xr.Variable and _layer_kinds(var) == {"load"}, (name, list(var.data.dask.layers))
        # open_dataset's rule: the chunks given, the engine's preferred chunks (task blocks) elsewhere
        preferred = var.encoding["preferred_chunks"]
        expected = da.core.normalize_chunks(tuple(chunks.get(d, preferred[d]) for d in var.dims), var.shape)
        assert var.chunks == expected, name
    times_decoded = kwargs.get("decode_cf", True) and kwargs.get("decode_times", True)
    # text, and times when decoded: xarray's from_array over the lazily indexed array, decoded by xarray
    for name in ("names", "time_bnds", "duration") if times_decoded else ("names",):
        assert "load" not in _layer_kinds(lazy.variables[name]) and lazy[name].chunks is not None, name
    got = lazy.compute()
    xr.testing.assert_identical(got, want)
    assert_same_dtypes(got, want)
    for name, var in got.variables.items():  # chunking changes no encoding; the CF part is netcdf4's
        assert var.encoding == unchunked[name].encoding, name
        assert {k: v for k, v in var.encoding.items() if k in CF_ENCODING} == \
            {k: v for k, v in want_encoding[name].items() if k in CF_ENCODING}, name


def test_chunking_later_and_selections(rich):
    """``Dataset.chunk`` of an opened dataset takes the load tasks too; a selection or a write is xarray's."""
    want = netcdf4(rich)
    ds = xr.open_dataset(rich, engine="vzdask")
    chunked = ds.chunk({"time": 3})
    assert _layer_kinds(chunked["packed"].variable) == {"load"} and chunked["packed"].chunks == ((3, 3), (4,), (5,))
    xr.testing.assert_identical(chunked.compute(), want)
    part = ds.isel(time=slice(1, 5)).chunk({"time": 2})  # a selection reads through xarray's from_array
    assert "load" not in _layer_kinds(part["packed"].variable)
    xr.testing.assert_identical(part.compute(), want.isel(time=slice(1, 5)))
    renamed = ds.rename({"lat": "y"}).chunk()
    xr.testing.assert_identical(renamed.compute(), want.rename({"lat": "y"}))
    loaded = xr.open_dataset(rich, engine="vzdask")
    loaded["packed"].load()  # cached values: chunking them reads nothing again
    assert "load" not in _layer_kinds(loaded.chunk()["packed"].variable)
    written = xr.open_dataset(rich, engine="vzdask", cache=False)
    written["area"][0, 0] = -1.0  # copy on write: the chunked values are the written ones
    assert float(written.chunk()["area"][0, 0].compute()) == -1.0


def test_a_dataset_mixing_load_tasks_and_other_dask_arrays_computes_each_its_own(rich):
    """dask computes arrays of different optimisers in groups: each variable must still get its own values."""
    def mix(ds):
        return xr.Dataset({"a": ds["packed"] * 2, "b": ds["area"], "c": ds["miss"] + 1, "d": ds["packed"],
                           "e": ds["names"], "f": ds["unsigned"]})

    lazy = mix(xr.open_dataset(rich, engine="vzdask", chunks={}))
    assert [_layer_kinds(lazy[v].variable) >= {"load"} for v in "bdf"] == [True] * 3
    xr.testing.assert_identical(lazy.compute(), mix(netcdf4(rich)))


def test_opening_is_lazy_and_reads_name_the_file(rich, tmp_path):
    """Only the dimension coordinates are read when opening; a chunk that cannot be read names its file."""
    copy = tmp_path / "copy.nc"
    copy.write_bytes(rich.read_bytes())
    refs = tmp_path / "refs.json"
    vzdask.open_virtual_dataset(copy, inline=vzdask.InlinePolicy(coordinates=True)).vz.to_kerchunk(refs, format="json")
    ds = xr.open_dataset(refs, engine="vzdask")  # the coordinates are inlined: opening reads no chunk
    lazy = xr.open_dataset(refs, engine="vzdask", chunks={})
    copy.unlink()
    assert ds.sizes == {"time": 6, "lat": 4, "lon": 5, "nv": 2}  # nchar: the characters are joined
    with pytest.raises(OSError, match="copy.nc"):
        ds["packed"].load()
    with pytest.raises(OSError, match="copy.nc"):
        lazy["packed"].compute()


def test_indexing_reads_only_what_it_needs_and_matches_numpy(rich):
    want = netcdf4(rich)
    ds = xr.open_dataset(rich, engine="vzdask")
    for key in [{"time": 3}, {"time": slice(1, 5, 2), "lon": slice(None, None, -2)}, {"lat": [3, 0, 2]},
                {"time": -1, "lat": slice(-1, 0, -1)}, {"time": slice(4, 2)}]:
        xr.testing.assert_identical(ds["packed"].isel(key).load(), want["packed"].isel(key))
    xr.testing.assert_identical(ds["packed"][[0, 5], 1:3, [4, 0]].load(), want["packed"][[0, 5], 1:3, [4, 0]])


def test_covering_region():
    assert covering_region((slice(1, 8, 3), 2, slice(None, None, -1)), (10, 4, 3)) == (
        (slice(1, 8), slice(2, 3), slice(0, 3)), (slice(0, 7, 3), 0, slice(2, None, -1)))
    assert covering_region((slice(5, 5),), (10,)) == ((slice(0, 0),), (slice(None),))
    values = np.arange(60).reshape(10, 6)
    for key in [(slice(9, 0, -4), slice(1, 6, 2)), (-1, slice(None)), (slice(2, 3), -6)]:
        region, within = covering_region(key, values.shape)
        np.testing.assert_array_equal(values[region][within], values[key])


def test_large_reads_are_cut_into_task_blocks(rich):
    """A read larger than ``vzdask.task-bytes`` runs as several load tasks, with the same values."""
    want = netcdf4(rich)
    with dask.config.set({"vzdask.task-bytes": 100}):
        got = vz(rich)  # whole variables: one compute of their load tasks
        part = xr.open_dataset(rich, engine="vzdask")["packed"][1:6, 1:].load()  # several blocks of a part
    xr.testing.assert_identical(got, want)
    xr.testing.assert_identical(part, want["packed"][1:6, 1:])


def test_computes_on_a_distributed_cluster(rich, dask_client):
    """The workers read the byte ranges themselves (obstore): nothing but the arrays' references is shipped."""
    ds = xr.open_dataset(rich, engine="vzdask", chunks={"time": 2})
    xr.testing.assert_identical(ds.compute(), netcdf4(rich))


# --------------------------------------------------------------------------- #
# open_mfdataset, open_datatree
# --------------------------------------------------------------------------- #
def test_open_mfdataset(collection):
    with xr.open_mfdataset(collection, engine="netcdf4") as reference:
        want = reference.load()
    with xr.open_mfdataset(collection, engine="vzdask") as ds:
        assert ds["packed"].chunks is not None
        xr.testing.assert_identical(ds.load(), want)


def test_open_datatree_nested_groups(rich):
    with xr.open_datatree(rich, engine="netcdf4") as reference:
        want = reference.load()
    got = xr.open_datatree(rich, engine="vzdask").load()
    assert got.groups == ("/", "/sub", "/sub/deeper")
    xr.testing.assert_identical(got, want)
    lazy = xr.open_datatree(rich, engine="vzdask", chunks={})
    assert lazy["/sub/q"].chunks is not None
    xr.testing.assert_identical(lazy.compute(), want)
    subtree = xr.open_datatree(rich, engine="vzdask", group="sub").load()
    with xr.open_datatree(rich, engine="netcdf4", group="sub") as reference:
        xr.testing.assert_identical(subtree, reference.load())


# --------------------------------------------------------------------------- #
# Other inputs: netCDF3, Zarr, kerchunk references, ManifestStore
# --------------------------------------------------------------------------- #
def test_netcdf3(rich, tmp_path):
    path = tmp_path / "classic.nc"
    netcdf4(rich).drop_vars("names").to_netcdf(path, format="NETCDF3_64BIT")  # no strings in netCDF3
    for kwargs in ({}, {"decode_cf": False}):
        got, want = vz(path, **kwargs), netcdf4(path, **kwargs)
        xr.testing.assert_identical(got, want)
        assert_same_dtypes(got, want)


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_zarr(rich, tmp_path, zarr_format):
    path = tmp_path / "store.zarr"
    netcdf4(rich).drop_vars("names").chunk({"time": 4}).to_zarr(path, zarr_format=zarr_format, consolidated=False)
    with xr.open_dataset(path, engine="zarr", consolidated=False) as reference:
        want = reference.load()
    xr.testing.assert_identical(vz(path), want)
    assert_same_dtypes(vz(path), want)
    xr.testing.assert_identical(xr.open_dataset(path, engine="vzdask", chunks={}).compute(), want)


@pytest.mark.parametrize("fmt", ["json", "parquet"])
def test_kerchunk_references_we_wrote(rich, tmp_path, fmt):
    """Against kerchunk's engine on the same references; values against netCDF4 on the original file."""
    store = HDFParser()("file://" + str(rich), ObjectStoreRegistry.default())
    refs = tmp_path / ("refs.json" if fmt == "json" else "refs.parq")
    to_kerchunk(store, refs, format=fmt)  # the whole tree
    for group in (None, "sub", "sub/deeper"):
        got = vz(refs, group=group)
        with xr.open_dataset(str(refs), engine="kerchunk", group=group,
                             storage_options={"remote_protocol": "file"}) as reference:
            xr.testing.assert_identical(got, reference.load())
        # references hold zarr v2 metadata: packed values unpack to float64 (JSON numbers)
        xr.testing.assert_allclose(got, netcdf4(rich, group=group), rtol=1e-6)
    lazy = xr.open_dataset(refs, engine="vzdask", chunks={"time": 2})
    assert lazy["packed"].chunks == ((2, 2, 2), (4,), (5,))
    xr.testing.assert_identical(lazy.compute(), vz(refs))


def test_kerchunk_references_written_by_kerchunk(rich, tmp_path):
    from kerchunk.hdf import SingleHdf5ToZarr

    refs = SingleHdf5ToZarr(str(rich), inline_threshold=0).translate()
    path = tmp_path / "kerchunk.json"
    path.write_text(__import__("json").dumps(refs))
    # text variables have kerchunk's own encodings; "miss" it gives the 2 rows HDF5 holds, not netCDF's 6
    dropped = ["names", "codes", "miss"]
    got = xr.open_dataset(path, engine="vzdask", drop_variables=dropped).load()
    xr.testing.assert_allclose(got, netcdf4(rich, drop_variables=dropped), rtol=1e-6)


def test_open_mfdataset_over_references(collection, tmp_path):
    """Per-file references combined by xarray, read through the engine."""
    paths = []
    for i, path in enumerate(collection):
        out = tmp_path / f"part{i}.parq"
        vzdask.open_virtual_dataset(path).vz.to_kerchunk(out, format="parquet")
        paths.append(out)
    with xr.open_mfdataset(paths, engine="vzdask") as ds, xr.open_mfdataset(paths, engine="kerchunk") as ref:
        xr.testing.assert_identical(ds.load(), ref.load())


def test_a_manifest_store(rich):
    store = HDFParser()("file://" + str(rich), ObjectStoreRegistry.default())
    xr.testing.assert_identical(xr.open_dataset(store, engine="vzdask").load(), netcdf4(rich))
    xr.testing.assert_identical(xr.open_dataset(store.group, engine="vzdask", group="sub").load(),
                                netcdf4(rich, group="sub"))


def test_remote_file_on_s3(rich, s3_bucket, s3_env):
    bucket, client = s3_bucket
    client.upload_file(str(rich), bucket, "data/rich.nc")
    got = xr.open_dataset(f"s3://{bucket}/data/rich.nc", engine="vzdask", chunks={}).compute()
    xr.testing.assert_identical(got, netcdf4(rich))


# --------------------------------------------------------------------------- #
# Bad inputs
# --------------------------------------------------------------------------- #
def test_a_variable_that_cannot_be_virtualized_is_named_and_can_be_dropped(tmp_path):
    path = tmp_path / "lzf.nc"
    with h5netcdf.File(path, "w") as f:
        f.dimensions = {"x": 4}
        f.create_variable("x", ("x",), "i4", data=np.arange(4))
        f.create_variable("ok", ("x",), "f4", data=np.ones(4, "f4"))
        f.create_variable("squeezed", ("x",), "f4", data=np.arange(4, dtype="f4"), compression="lzf", chunks=(2,))
    with pytest.raises(ParseError, match=r"(?s)lzf.nc.*'/squeezed': HDF5 filter 'lzf'.*drop_variables=\['squeezed'\]"):
        xr.open_dataset(path, engine="vzdask")
    got = xr.open_dataset(path, engine="vzdask", drop_variables=["squeezed"]).load()
    with xr.open_dataset(path, engine="h5netcdf", drop_variables=["squeezed"]) as reference:
        xr.testing.assert_identical(got, reference.load())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warned = xr.open_dataset(path, engine="vzdask", on_unsupported="warn").load()
    assert any("squeezed" in str(w.message) for w in caught)
    xr.testing.assert_identical(warned, got)


def test_bad_inputs(rich, tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.nc"):
        xr.open_dataset(tmp_path / "absent.nc", engine="vzdask")
    with pytest.raises(ParseError, match="rich.nc: no group 'nowhere'"):
        xr.open_dataset(rich, engine="vzdask", group="nowhere")
    with pytest.raises(OSError, match="no group 'nowhere'"):  # a store's group, looked up by the engine
        xr.open_dataset(vzdask.parsers.HDFParser()("file://" + str(rich), ObjectStoreRegistry.default()),
                        engine="vzdask", group="nowhere")
    with pytest.raises(ValueError, match="'lat' is an array, not a group"):
        xr.open_dataset(vzdask.parsers.HDFParser()("file://" + str(rich), ObjectStoreRegistry.default()),
                        engine="vzdask", group="lat")
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(b"\x00\x01not a format" * 100)
    with pytest.raises(ParseError, match="garbage.bin: unrecognised file format"):
        xr.open_dataset(garbage, engine="vzdask")
    with pytest.raises(TypeError, match="engine='vzdask' opens a path or url, an icechunk Repository, Session or IcechunkStore, a ManifestStore"):
        xr.open_dataset(b"\x89HDF", engine="vzdask")
