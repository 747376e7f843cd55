"""Virtual xarray Datasets (ManifestArray variables) with dask: compute, load, persist, chunk, concat, ds.vz.

The datasets are built from zarr v3 arrays written by zarr-python: the
manifests point at zarr's chunk files, inline some chunks and leave some
missing, and ``vzdask.xarray.to_virtual_dataset`` turns the ManifestStore into
a Dataset whose data variables (and the ``lat`` coordinate) are ManifestArrays.
"""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pytest
import xarray as xr

from vzdask import ManifestArray, ManifestGroup, ManifestStore
from vzdask.manifests.manifest import INLINED, MISSING
from vzdask.xarray import to_virtual_dataset

NT, NX = 6, 9
CHUNKS = (2, 4)  # time is chunk-aligned (concat along it); x has a partial edge chunk
DIMS = ("time", "x")

# name -> (dtype, codec, fill value, packed)
VARIABLES = {
    "temp": ("float32", "zstd", np.nan, False),
    "count": ("int16", "zlib", -1, True),
    "flag": ("bool", "blosc", False, False),
    "pressure": ("float32", "bytes-big-endian", -9.5, True),
    "quality": ("uint8", "shuffle-zlib", 255, False),
    "lat": ("float64", "shuffle-zlib", np.nan, False),
}


def values(name: str, dtype: str, seed: int) -> np.ndarray:
    n = np.arange(NT * NX).reshape(NT, NX) + 100 * seed + 7 * len(name)
    if dtype == "bool":
        return n % 3 == 0
    if dtype == "uint8":
        return (n % 250).astype("uint8")
    if dtype == "int16":
        return (n * 31 - 500).astype("int16")
    return (np.cos(n) * 300).astype(dtype)


def build(make_virtual, prefix: str = "a", seed: int = 0):
    """A ManifestStore of the VARIABLES plus time/x coordinates, and the values each must read as."""
    arrays, expected, cases = {}, {}, {}
    for name, (dtype, codec, fill, packed) in VARIABLES.items():
        attributes = {"units": "K", "coordinates": "lat"} if name == "temp" else {"long_name": name}
        case = make_virtual(
            values(name, dtype, seed), CHUNKS, codec=codec, fill_value=fill, packed=packed,
            name=f"{prefix}_{name}", dimension_names=DIMS, attributes=attributes,
        )
        arrays[name], expected[name], cases[name] = case.array, case.expected, case
    time = make_virtual(np.arange(NT, dtype="float64") + NT * seed, (2,), codec="zlib",
                        state_of=lambda ix: ("virtual", "inlined")[ix[0] % 2], name=f"{prefix}_time",
                        dimension_names=("time",))
    x = make_virtual(np.arange(NX, dtype="int16") * 10, (4,), codec="bytes",
                     state_of=lambda ix: "virtual", name=f"{prefix}_x", dimension_names=("x",))
    arrays["time"], expected["time"] = time.array, time.expected
    arrays["x"], expected["x"] = x.array, x.expected
    store = ManifestStore(ManifestGroup(arrays=arrays, attributes={"title": f"dataset {prefix}"}))
    return store, expected, cases


@pytest.fixture
def virtual(make_virtual):
    """``(virtual Dataset, expected values by name, VirtualCase by name, ManifestStore)``."""
    store, expected, cases = build(make_virtual)
    ds = to_virtual_dataset(store)
    return ds, expected, cases, store


DATA_VARS = ["temp", "count", "flag", "pressure", "quality"]


def assert_dataset_values(ds: xr.Dataset, expected: dict) -> None:
    for name, want in expected.items():
        got = ds.variables[name].values
        np.testing.assert_array_equal(got, want, strict=True, err_msg=name)


def assert_fully_inlined(array, case) -> None:
    assert isinstance(array, ManifestArray)
    manifest = array.manifest
    for index, state in case.states.items():
        if state == "missing":
            assert manifest.states[index] == MISSING
        else:
            assert manifest.states[index] == INLINED
            assert manifest.inlined_data(index) == case.raw[index]


# --------------------------------------------------------------------------- #
# an all-virtual Dataset
# --------------------------------------------------------------------------- #


def test_virtual_dataset_is_lazy_and_computes_like_open_zarr(virtual):
    ds, expected, cases, store = virtual
    for name in DATA_VARS + ["lat"]:
        assert isinstance(ds.variables[name]._data, ManifestArray), name
    assert set(ds.vz.virtual_variables) == set(DATA_VARS) | {"lat"}
    assert "lat" in ds.coords and "lat" not in ds.indexes
    assert dask.is_dask_collection(ds)

    computed = ds.compute()
    assert all(isinstance(computed.variables[n]._data, np.ndarray) for n in DATA_VARS + ["lat"])
    assert isinstance(ds["temp"].variable._data, ManifestArray)  # compute() leaves ds alone
    assert_dataset_values(computed, expected)

    reference = xr.open_zarr(store, consolidated=False, zarr_format=3)
    for name in expected:
        np.testing.assert_array_equal(computed[name].values, reference[name].values, strict=True, err_msg=name)
    assert computed.attrs == {"title": "dataset a"} and computed["temp"].attrs["units"] == "K"

    with dask.config.set({"vzdask.task-bytes": 40}):
        assert_dataset_values(ds.compute(scheduler="threads"), expected)
        assert_dataset_values(dask.compute(ds)[0], expected)


def test_load_is_in_place(virtual):
    ds, expected, _, _ = virtual
    with dask.config.set({"vzdask.task-bytes": 100}):
        same = ds.load()
    assert same is ds
    assert not ds.vz.virtual_variables
    assert all(isinstance(ds.variables[n]._data, np.ndarray) for n in DATA_VARS + ["lat"])
    assert_dataset_values(ds, expected)


def test_persist_inlines_every_virtual_variable(virtual):
    ds, expected, cases, _ = virtual
    with dask.config.set({"vzdask.task-bytes": 40}):
        persisted = ds.persist()
    for name in DATA_VARS + ["lat"]:
        array = persisted.variables[name]._data
        assert array.manifest.count()["virtual"] == 0, name
        assert_fully_inlined(array, cases[name])
        assert cases[name].array.manifest.count()["virtual"] == 3  # the source keeps its references
    assert_dataset_values(persisted.compute(), expected)
    assert persisted["temp"].attrs["units"] == "K"


def test_chunk_gives_dask_arrays(virtual):
    ds, expected, _, _ = virtual
    chunked = ds.chunk({"time": 4, "x": 5})
    for name in DATA_VARS + ["lat"]:
        data = chunked.variables[name]._data
        assert isinstance(data, da.Array), name
        assert data.chunks == ((4, 2), (5, 4)), name
    assert not chunked.vz.virtual_variables
    assert_dataset_values(chunked.compute(), expected)
    assert_dataset_values(ds.chunk({"time": 3}).compute(), expected)  # chunks that cut native chunks


def test_concat_two_virtual_datasets(make_virtual):
    store_a, expected_a, _ = build(make_virtual, "a", seed=0)
    store_b, expected_b, _ = build(make_virtual, "b", seed=1)
    a, b = to_virtual_dataset(store_a), to_virtual_dataset(store_b)
    assert not np.array_equal(expected_a["temp"], expected_b["temp"], equal_nan=True)
    combined = xr.concat([a, b], dim="time", data_vars="minimal", coords="minimal", compat="override", join="exact")
    assert combined.sizes == {"time": 2 * NT, "x": NX}
    for name in DATA_VARS + ["lat"]:
        array = combined.variables[name]._data
        assert isinstance(array, ManifestArray), name  # combined by references
        assert array.manifest.shape == (6, 3)
        assert array.manifest.count() == {"virtual": 6, "inlined": 6, "missing": 6}
    want = {
        name: np.concatenate([expected_a[name], expected_b[name]]) if name != "x" else expected_a["x"]
        for name in expected_a
    }
    with dask.config.set({"vzdask.task-bytes": 100}):
        assert_dataset_values(combined.compute(), want)
    np.testing.assert_array_equal(combined.indexes["time"].values, np.arange(2 * NT, dtype="float64"))


def test_apply_ufunc_on_the_dask_view(virtual):
    ds, expected, _, _ = virtual
    with dask.config.set({"vzdask.task-bytes": 40}):
        view = ds.vz.to_dask()
    assert isinstance(view["temp"].data, da.Array)
    assert view["temp"].data.numblocks == (3, 3)  # one native chunk per block
    sine = xr.apply_ufunc(np.sin, view["temp"], dask="parallelized", output_dtypes=[np.float32])
    assert isinstance(sine.data, da.Array)
    np.testing.assert_allclose(sine.compute().values, np.sin(expected["temp"]), rtol=1e-6)

    peak = xr.apply_ufunc(
        lambda a: np.nanmax(a, axis=-1),
        view["pressure"].chunk({"x": -1}),
        input_core_dims=[["x"]],
        dask="parallelized",
        output_dtypes=[np.float32],
    )
    np.testing.assert_array_equal(peak.compute().values, expected["pressure"].max(axis=1), strict=True)
    mean = view["temp"].mean("x", skipna=True)
    np.testing.assert_allclose(mean.compute().values, np.nanmean(expected["temp"], axis=1), rtol=1e-6)


# --------------------------------------------------------------------------- #
# a mixed Dataset: ManifestArray + numpy + dask.array variables
# --------------------------------------------------------------------------- #


@pytest.fixture
def mixed(virtual):
    ds, expected, cases, _ = virtual
    numpy_values = np.linspace(0, 1, NT * NX).reshape(NT, NX)
    dask_values = np.arange(NT * NX, dtype="int32").reshape(NT, NX) * 3
    ds = ds.assign(
        plain=(DIMS, numpy_values),
        lazy=(DIMS, da.from_array(dask_values, chunks=(4, 4))),
    )
    return ds, {**expected, "plain": numpy_values, "lazy": dask_values}, cases


def test_plain_compute_refuses_a_mixed_dataset(mixed):
    """Why ``ds.vz`` exists: xarray will not mix chunked array types in one Dataset."""
    ds, expected, _ = mixed
    for method in ("compute", "load", "persist"):
        with pytest.raises(TypeError, match="Mixing chunked array types"):
            getattr(ds.copy(), method)()
    assert_dataset_values(ds.vz.compute(), expected)  # the accessor handles it


def test_vz_compute_persist_to_dask_on_a_mixed_dataset(mixed):
    ds, expected, cases = mixed
    with dask.config.set({"vzdask.task-bytes": 40}):
        computed = ds.vz.compute()
        persisted = ds.vz.persist()
        as_dask = ds.vz.to_dask()
    assert all(isinstance(computed.variables[n]._data, np.ndarray) for n in DATA_VARS + ["lat"])
    assert_dataset_values(computed, expected)
    assert isinstance(ds["temp"].variable._data, ManifestArray)  # the source is untouched

    for name in DATA_VARS + ["lat"]:
        assert_fully_inlined(persisted.variables[name]._data, cases[name])
    assert isinstance(persisted["lazy"].data, da.Array)
    np.testing.assert_array_equal(persisted["lazy"].data.compute(), expected["lazy"], strict=True)
    np.testing.assert_array_equal(persisted["plain"].values, expected["plain"], strict=True)
    assert_dataset_values(persisted.vz.compute(), expected)

    assert not as_dask.vz.virtual_variables
    assert all(isinstance(as_dask.variables[n]._data, da.Array) for n in DATA_VARS + ["lat", "lazy"])
    assert as_dask["temp"].data.chunks == ((2, 2, 2), (4, 4, 1))  # whole native chunks
    assert_dataset_values(as_dask.compute(), expected)  # plain compute works once everything is dask
    assert_dataset_values(ds.vz.to_dask(chunks=(4, 5)).compute(), expected)
    doubled = (as_dask["temp"] * 2 + as_dask["lazy"]).compute()
    np.testing.assert_allclose(doubled.values, expected["temp"] * 2 + expected["lazy"], rtol=1e-6)


# --------------------------------------------------------------------------- #
# errors surface through xarray
# --------------------------------------------------------------------------- #


def test_a_broken_reference_fails_the_dataset_compute_naming_the_url(virtual, tmp_path):
    from vzdask import ChunkManifest

    ds, _, cases, _ = virtual
    case = cases["count"]
    index = next(ix for ix, s in case.states.items() if s == "virtual")
    m = case.array.manifest
    offsets = m.offsets.copy()
    offsets[index] = 10**6
    inlined = {ix: m.inlined_data(ix) for ix, s in case.states.items() if s == "inlined"}
    broken = ManifestArray(
        case.array.metadata,
        ChunkManifest.from_arrays(paths=m.paths(), offsets=offsets, lengths=m.lengths, inlined=inlined),
    )
    ds = ds.assign(count=(DIMS, broken))
    with pytest.raises(OSError, match=case.urls[index]):
        ds.compute()
    with pytest.raises(OSError, match=case.urls[index]):
        ds.vz.to_dask().compute()
    np.testing.assert_array_equal(ds["temp"].compute().values, cases["temp"].expected, strict=True)


# --------------------------------------------------------------------------- #
# distributed
# --------------------------------------------------------------------------- #


def test_distributed_dataset_compute_persist_gather(virtual, dask_client):
    import distributed

    ds, expected, cases, _ = virtual
    with dask.config.set({"vzdask.task-bytes": 40}):
        assert_dataset_values(ds.compute(), expected)
        persisted = ds.vz.persist()
        by_xarray = ds.persist()
    assert not by_xarray["count"].variable._data.is_gathered
    assert_dataset_values(by_xarray.compute(), expected)
    held = [persisted.variables[name]._data for name in DATA_VARS + ["lat"]]
    assert all(not a.is_gathered for a in held)
    assert distributed.futures_of(persisted["temp"].variable._data)
    distributed.wait([a for a in held])
    assert_dataset_values(persisted.vz.compute(), expected)

    gathered = persisted.vz.gather()
    for name in DATA_VARS + ["lat"]:
        array = gathered.variables[name]._data
        assert array.is_gathered
        assert_fully_inlined(array, cases[name])
    assert_dataset_values(gathered.vz.compute(scheduler="sync"), expected)
