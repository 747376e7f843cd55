"""HDFParser: netCDF4 and plain HDF5 files, compared with xarray/h5py reading the originals."""

from __future__ import annotations

import json
import os

import hdf5plugin  # noqa: F401  (registers the filters before h5py writes with them)
import h5py
import netCDF4
import numpy as np
import pytest
import xarray as xr

from vzdask.manifests.manifest import INLINED, MISSING, VIRTUAL
from vzdask.parsers import ParseError
from vzdask.parsers.hdf5 import HDFParser
from vzdask.policy import InlinePolicy
from vzdask.registry import ObjectStoreRegistry
from vzdask.xarray import open_virtual_dataset

RNG = np.random.default_rng(42)


@pytest.fixture(scope="module")
def netcdf4_file(tmp_path_factory):
    """A netCDF4 file with CF encodings, several layouts and a subgroup."""
    path = tmp_path_factory.mktemp("hdf") / "sample.nc"
    tas = (RNG.random((6, 30, 40)) * 1000).astype("i2")
    tas[0, 0, :5] = -999
    with netCDF4.Dataset(path, "w") as nc:
        nc.title = "sample"
        nc.createDimension("time", None)
        nc.createDimension("lat", 30)
        nc.createDimension("lon", 40)
        time = nc.createVariable("time", "f8", ("time",))
        time.units = "days since 2000-01-01"
        time.calendar = "standard"
        time[:] = np.arange(6)
        lat = nc.createVariable("lat", "f4", ("lat",))
        lat[:] = np.linspace(-10, 10, 30)
        lat.units = "degrees_north"
        v = nc.createVariable("tas", "i2", ("time", "lat", "lon"), zlib=True, shuffle=True,
                              chunksizes=(1, 16, 16), fill_value=-999)
        v.scale_factor = 0.01
        v.add_offset = 273.0
        v.units = "K"
        v[:] = tas
        big = nc.createVariable("big_endian", "f8", ("lat", "lon"), contiguous=True, endian="big")
        big[:] = RNG.random((30, 40))
        sparse = nc.createVariable("sparse", "f4", ("time", "lat", "lon"), chunksizes=(1, 30, 40), fill_value=-1.0)
        sparse[2] = 5.0  # only one chunk allocated: the rest are missing
        checked = nc.createVariable("checked", "f4", ("lat", "lon"), fletcher32=True, zlib=True, chunksizes=(10, 10))
        checked[:] = RNG.random((30, 40)).astype("f4")
        sub = nc.createGroup("sub")
        sub.createDimension("n", 7)
        sv = sub.createVariable("values", "u1", ("n",))
        sv[:] = np.arange(7, dtype="u1")
        sub.note = "in a group"
    return path


def test_netcdf4_values_and_cf_decoding_match_xarray(netcdf4_file):
    vds = open_virtual_dataset(netcdf4_file)
    assert set(vds.vz.virtual_variables) == {"tas", "big_endian", "sparse", "checked"}
    assert vds.attrs["title"] == "sample"
    assert vds.tas.attrs["scale_factor"] == 0.01 and vds.tas.attrs["units"] == "K"
    assert "_Netcdf4Dimid" not in vds.tas.attrs and "DIMENSION_LIST" not in vds.tas.attrs
    expected = xr.open_dataset(netcdf4_file)
    decoded = xr.decode_cf(vds.vz.compute())
    xr.testing.assert_allclose(decoded, expected)
    assert decoded.tas.attrs["units"] == "K"
    # undecoded values are the raw integers in the file
    raw = xr.open_dataset(netcdf4_file, mask_and_scale=False)
    np.testing.assert_array_equal(vds.tas.data.compute(), raw.tas.values)


def test_chunk_layouts_become_the_right_states(netcdf4_file):
    vds = open_virtual_dataset(netcdf4_file)
    sparse = vds.sparse.data.manifest
    assert sparse.shape == (6, 1, 1)
    assert list(sparse.states.ravel()) == [MISSING, MISSING, VIRTUAL, MISSING, MISSING, MISSING]
    values = vds.sparse.data.compute()
    assert (values[2] == 5.0).all() and (values[[0, 1, 3, 4, 5]] == -1.0).all()
    big = vds.big_endian.data
    assert big.manifest.shape == (1, 1) and big.manifest.states[0, 0] == VIRTUAL
    assert big.metadata.to_dict()["codecs"][0]["configuration"]["endian"] == "big"
    with h5py.File(netcdf4_file) as f:
        np.testing.assert_array_equal(big.compute(), f["big_endian"][()])
        # chunk references are HDF5's own chunk index
        info = f["tas"].id.get_chunk_info_by_coord((1, 16, 0))
        assert vds.tas.data.manifest.entry((1, 1, 0))[2:] == (info.byte_offset, info.size)


def test_group_and_phony_dimensions(netcdf4_file, tmp_path):
    vds = open_virtual_dataset(netcdf4_file, group="sub")
    assert vds.attrs["note"] == "in a group"
    np.testing.assert_array_equal(vds["values"].data.compute(), np.arange(7))
    path = tmp_path / "plain.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("a", data=np.arange(12.0).reshape(3, 4), chunks=(1, 4), compression="gzip")
        f.create_dataset("b", data=np.arange(3), compression="gzip", shuffle=True)
        f.create_dataset("scalar", data=3.5)
    plain = open_virtual_dataset(path)
    assert plain.a.dims == ("phony_dim_0", "phony_dim_1") and plain.b.dims == ("phony_dim_0",)
    loaded = plain.vz.compute()
    np.testing.assert_array_equal(loaded.a.values, np.arange(12.0).reshape(3, 4))
    np.testing.assert_array_equal(loaded.b.values, np.arange(3))
    assert float(loaded.scalar.values) == 3.5


def test_compact_and_string_datasets_are_inlined(tmp_path):
    path = tmp_path / "compact.h5"
    with h5py.File(path, "w") as f:
        space = h5py.h5s.create_simple((4,))
        plist = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        plist.set_layout(h5py.h5d.COMPACT)
        dsid = h5py.h5d.create(f.id, b"compact", h5py.h5t.NATIVE_INT32, space, plist)
        h5py.Dataset(dsid)[...] = np.array([1, 2, 3, 4], "i4")
        f.create_dataset("names", data=np.array(["alpha", "beta"], dtype=h5py.string_dtype()))
    vds = open_virtual_dataset(path)
    assert vds["compact"].data.manifest.count()["inlined"] == 1
    # variable-length strings are loaded by default (their bytes are inlined at parse), the stored form kept
    from vzdask.xarray import MANIFEST_ENCODING_KEY

    assert isinstance(vds["names"].data, np.ndarray)
    assert vds["names"].encoding[MANIFEST_ENCODING_KEY].manifest.count()["inlined"] == 1
    loaded = vds.vz.compute()
    np.testing.assert_array_equal(loaded.compact.values, [1, 2, 3, 4])
    assert list(loaded.names.values) == ["alpha", "beta"]


def test_inline_policy_rules_inline_exactly_the_chosen_chunks(netcdf4_file):
    with open(netcdf4_file, "rb") as fh:
        raw = fh.read()
    reference = open_virtual_dataset(netcdf4_file).tas.data.manifest
    threshold = int(np.median(reference.lengths))
    vds = open_virtual_dataset(netcdf4_file, inline=InlinePolicy(max_chunk_bytes=threshold))
    manifest = vds.tas.data.manifest
    lengths = manifest.lengths
    assert ((manifest.states == INLINED) == (lengths <= threshold)).all()
    assert (manifest.states == INLINED).any() and (manifest.states == VIRTUAL).any()
    for index in zip(*np.nonzero(manifest.states == INLINED)):
        _, _, offset, length = reference.entry(index)
        assert manifest.inlined_data(index) == raw[offset : offset + length]
    np.testing.assert_array_equal(vds.tas.data.compute(), reference_values(netcdf4_file))

    by_name = open_virtual_dataset(netcdf4_file, inline=InlinePolicy(variables=["checked"]), loadable_variables=[])
    assert by_name.checked.data.manifest.count() == {"virtual": 0, "inlined": 12, "missing": 0}
    assert by_name.tas.data.manifest.count()["inlined"] == 0

    coords = open_virtual_dataset(netcdf4_file, inline=InlinePolicy(coordinates=True), loadable_variables=[])
    assert coords.lat.data.manifest.count()["inlined"] == 1 and coords.time.data.manifest.count()["inlined"] == 1
    assert coords.tas.data.manifest.count()["inlined"] == 0
    # inlined and loaded are independent: lat is inlined but still virtual here
    np.testing.assert_allclose(coords.lat.data.compute(), np.linspace(-10, 10, 30).astype("f4"))

    predicate = InlinePolicy(predicate=lambda name, array: name == "big_endian")
    assert open_virtual_dataset(netcdf4_file, inline=predicate).big_endian.data.manifest.count()["inlined"] == 1


def reference_values(path):
    with h5py.File(path) as f:
        return f["tas"][()]


def test_remote_hdf5_on_s3(netcdf4_file, s3_bucket, s3_env):
    bucket, client = s3_bucket
    client.upload_file(str(netcdf4_file), bucket, "data/sample.nc")
    remote = open_virtual_dataset(f"s3://{bucket}/data/sample.nc")
    local = open_virtual_dataset(netcdf4_file)
    assert remote.tas.data.manifest.urls == (f"s3://{bucket}/data/sample.nc",)
    np.testing.assert_array_equal(remote.tas.data.compute(), local.tas.data.compute())
    np.testing.assert_array_equal(remote.lat.values, local.lat.values)


def test_bad_inputs_name_the_file(tmp_path, netcdf4_file):
    truncated = tmp_path / "truncated.nc"
    truncated.write_bytes(netcdf4_file.read_bytes()[:3000])
    with pytest.raises(ParseError, match="truncated.nc"):
        open_virtual_dataset(truncated)
    random = tmp_path / "random.bin"
    random.write_bytes(RNG.bytes(4096))
    with pytest.raises(ParseError, match=r"random.bin: unrecognised file format"):
        open_virtual_dataset(random)
    empty = tmp_path / "empty.nc"
    empty.write_bytes(b"")
    with pytest.raises(ParseError, match=r"empty.nc: empty file"):
        open_virtual_dataset(empty)
    with pytest.raises(FileNotFoundError, match="missing.nc"):
        open_virtual_dataset(tmp_path / "missing.nc")


def test_unsupported_filter_names_variable_and_way_out(tmp_path):
    path = tmp_path / "lzf.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("squeezed", data=np.arange(100.0), chunks=(10,), compression="lzf")
    with pytest.raises(ParseError) as info:
        HDFParser()(f"file://{path}", __import__("vzdask").ObjectStoreRegistry())
    message = str(info.value)
    assert "lzf.h5: 1 variable(s) cannot be virtualized" in message
    assert "'/squeezed': HDF5 filter 'lzf' (id 32000) has no zarr codec" in message
    assert message.endswith("Open the others with drop_variables=['squeezed'] or on_unsupported='warn'")


@pytest.mark.parametrize("name", ["Blosc", "Zstd", "BZip2", "LZ4"])
def test_hdf5plugin_filters_decode_to_the_same_values(tmp_path, name):
    path = tmp_path / f"{name}.h5"
    data = np.round(RNG.random((40, 300)) * 100).astype("f4")  # compressible: every chunk gets filtered
    with h5py.File(path, "w") as f:
        f.create_dataset("v", data=data, chunks=(20, 100), **getattr(hdf5plugin, name)())
    vds = open_virtual_dataset(path)
    np.testing.assert_array_equal(vds.v.data.compute(), data)
    assert vds.v.data.manifest.count()["virtual"] == 6


def test_lz4_with_shuffle_reads_back_through_kerchunk_references(tmp_path):
    import fsspec

    from vzdask.writers.kerchunk import to_kerchunk

    path = tmp_path / "lz4.h5"
    data = np.round(RNG.random((40, 300)) * 100).astype("f4")
    with h5py.File(path, "w") as f:  # small lz4 blocks: each chunk holds several HDF5 lz4 blocks
        f.create_dataset("v", data=data, chunks=(20, 100), shuffle=True, **hdf5plugin.LZ4(nbytes=1024))
    vds = open_virtual_dataset(path)
    assert [c.to_dict()["name"] for c in vds.v.data.metadata.codecs][-1] == "imagecodecs_lz4h5"
    np.testing.assert_array_equal(vds.v.data.compute(), data)
    refs = to_kerchunk(vds)
    assert json.loads(refs["refs"]["v/.zarray"])["compressor"]["id"] == "imagecodecs_lz4h5"
    fs = fsspec.filesystem("reference", fo=refs)
    back = xr.open_dataset(fs.get_mapper(""), engine="zarr", consolidated=False, zarr_format=2)
    np.testing.assert_array_equal(back.v.values, data)
    refs_file = tmp_path / "refs.json"
    refs_file.write_text(json.dumps(refs))
    np.testing.assert_array_equal(open_virtual_dataset(refs_file, loadable_variables=[]).v.data.compute(), data)


def test_plain_hdf5_with_shuffle_fletcher_and_fill(tmp_path):
    path = tmp_path / "filters.h5"
    data = np.arange(200, dtype=">i4").reshape(10, 20)
    with h5py.File(path, "w") as f:
        f.create_dataset("v", data=data, chunks=(4, 8), compression="gzip", shuffle=True, fletcher32=True)
        f.create_dataset("empty", shape=(8,), dtype="f8", chunks=(4,), fillvalue=7.5)
    vds = open_virtual_dataset(path)
    np.testing.assert_array_equal(vds.v.data.compute(), data)
    assert vds.empty.data.manifest.count() == {"virtual": 0, "inlined": 0, "missing": 2}
    np.testing.assert_array_equal(vds.empty.data.compute(), np.full(8, 7.5))


def test_chunk_stored_without_its_filters_is_a_clear_error(tmp_path):
    path = tmp_path / "skipped.h5"
    with h5py.File(path, "w") as f:  # blosc leaves tiny incompressible chunks unfiltered (HDF5 filter mask)
        f.create_dataset("noise", data=RNG.random((4, 4)).astype("f4"), chunks=(2, 2), **hdf5plugin.Blosc())
    with pytest.raises(ParseError, match=r"skipped.h5: 1 variable\(s\) cannot be virtualized:\n  '/noise': chunk \(0, 0\) skipped some filters"):
        open_virtual_dataset(path)


def _dims_by_h5py_api(dset):
    """The dimension names as h5py's ``dims`` API gives them (the parser reads DIMENSION_LIST itself); None: no scale."""
    if dset.ndim == 1 and h5py.h5ds.is_scale(dset.id):
        return [dset.name.rsplit("/", 1)[-1]]
    names = []
    for dim in dset.dims:
        if len(dim):
            names.append(dim[0].name.rsplit("/", 1)[-1])
        else:
            names.append(None)
    return names


def test_dimension_names_and_attribute_order_match_h5py(tmp_path):
    from vzdask.parsers.hdf5 import _attribute_names, _dimension_names

    path = tmp_path / "scales.h5"
    with h5py.File(path, "w", track_order=True) as f:
        x = f.create_dataset("x", data=np.arange(4.0))
        x.make_scale("x")
        x2 = f.create_dataset("x_alt", data=np.arange(4.0) * 2)
        x2.make_scale("x_alt")
        g = f.create_group("grp")
        y = g.create_dataset("y", data=np.arange(3.0))
        y.make_scale("y")
        data = f.create_dataset("data", data=np.zeros((3, 4, 5)), track_order=True)
        data.dims[1].attach_scale(x2)  # two scales on one axis: the first attached names it
        data.dims[1].attach_scale(x)
        data.dims[0].attach_scale(y)  # a scale in another group
        data.attrs["zeta"], data.attrs["alpha"] = 1, 2  # creation order differs from name order
        f.create_dataset("grid", data=np.zeros((3, 4))).make_scale("grid")  # a 2-D dimension scale
        f.create_dataset("plain", data=np.zeros((5, 5)))
    with h5py.File(path, "r") as f:
        for name in ("x", "x_alt", "grp/y", "data", "grid", "plain"):
            dset = f[name]
            plist = dset.id.get_create_plist()
            keys = _attribute_names(dset.id, plist)
            assert keys == list(dset.attrs), name
            is_scale = "CLASS" in keys and h5py.h5ds.is_scale(dset.id)
            got = _dimension_names(dset.id, name.rsplit("/", 1)[-1], dset.shape, keys, is_scale)
            assert got == _dims_by_h5py_api(dset), name
        data = f["data"]
        assert _dimension_names(data.id, "data", data.shape, list(data.attrs), False) == ["y", "x_alt", None]
        assert _attribute_names(f["data"].id, f["data"].id.get_create_plist())[-2:] == ["zeta", "alpha"]
    store = HDFParser()(f"file://{path}", ObjectStoreRegistry.default())
    # phony names count on after the file's 4 dimension scales, as netCDF-C numbers them (test_corpus_netcdf.py)
    assert store.group["data"].dimension_names == ("y", "x_alt", "phony_dim_4")
    assert list(store.group["data"].metadata.attributes) == ["zeta", "alpha"]


def test_loaded_coordinate_of_a_file_truncated_after_parsing_is_a_clear_error(tmp_path):
    from vzdask.xarray import to_virtual_dataset

    path = tmp_path / "coords.nc"
    with netCDF4.Dataset(path, "w") as nc:
        nc.createDimension("x", 50_000)
        nc.createVariable("x", "f8", ("x",))[:] = np.arange(50_000.0)
    store = HDFParser()(f"file://{path}", ObjectStoreRegistry.default())
    np.testing.assert_array_equal(to_virtual_dataset(store)["x"].values, np.arange(50_000.0))
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) - 1000)
    with pytest.raises(OSError, match=r"coords\.nc"):
        to_virtual_dataset(store)


def test_drop_variables_skips_a_variable_the_parser_cannot_virtualize(tmp_path):
    path = tmp_path / "mixed.nc"
    good = np.arange(100.0)
    with netCDF4.Dataset(path, "w") as nc:
        nc.createDimension("x", 100)
        x = nc.createVariable("x", "f8", ("x",))
        x[:] = np.arange(100) * 0.5
        nc.createVariable("good", "f8", ("x",), zlib=True)[:] = good
    with h5py.File(path, "a") as f:  # a dataset with a filter no zarr codec reads, on the same dimension
        f.create_dataset("squeezed", data=np.arange(100.0), chunks=(10,), compression="lzf")
    with pytest.raises(ParseError, match=r"(?s)'/squeezed'.*lzf.*drop_variables=\['squeezed'\]"):
        open_virtual_dataset(path)
    vds = open_virtual_dataset(path, drop_variables=["squeezed"])
    assert "squeezed" not in vds.variables
    np.testing.assert_array_equal(vds.good.data.compute(), good)
    np.testing.assert_array_equal(vds.x.values, np.arange(100) * 0.5)
    # dropping a dimension coordinate keeps the dimension's name on the others
    no_x = open_virtual_dataset(path, drop_variables=["squeezed", "x"])
    assert "x" not in no_x.variables and no_x.good.dims == ("x",)
    store = HDFParser(drop_variables=["squeezed"])(f"file://{path}", __import__("vzdask").ObjectStoreRegistry())
    assert sorted(store.group.arrays) == ["good", "x"]


def _same_value(mine, theirs) -> bool:
    if isinstance(theirs, h5py.Empty):
        return isinstance(mine, h5py.Empty) and mine.dtype == theirs.dtype
    if type(mine) is not type(theirs) or np.asarray(mine).dtype != np.asarray(theirs).dtype:
        return False
    return np.array_equal(np.asarray(mine), np.asarray(theirs), equal_nan=np.asarray(mine).dtype.kind == "f")


def test_attributes_read_exactly_as_h5py_reads_them(tmp_path):
    """The parser reads attributes with h5py's low-level API: every kind must come out as ``obj.attrs[name]``."""
    from vzdask.parsers.hdf5 import _read_attribute

    path = tmp_path / "attrs.h5"
    with h5py.File(path, "w") as f:
        d = f.create_dataset("d", data=np.arange(3))
        a = d.attrs
        a["fixed"] = np.bytes_(b"hours since 2000-01-01")
        a["vlen"] = "variable length é"
        a["vlen_list"] = ["a", "bb", "ccc"]
        a.create("fixed_list", data=np.array([b"ab", b"cde"], dtype="S3"))
        a["f8"], a["i2"], a["u1_array"] = 1.5, np.int16(-3), np.arange(4, dtype="u1")
        a["f4_array"] = np.array([1.5, np.nan], dtype=">f4")
        a["empty"] = h5py.Empty("f4")
        a.create("array_type", data=np.zeros((2,), dtype=np.dtype("(3,)i4")) + 7)
        for pad, name in ((h5py.h5t.STR_NULLPAD, "nullpad"), (h5py.h5t.STR_SPACEPAD, "spacepad"),
                          (h5py.h5t.STR_NULLTERM, "nullterm")):
            string_type = h5py.h5t.C_S1.copy()
            string_type.set_size(8)
            string_type.set_strpad(pad)
            space = h5py.h5s.create(h5py.h5s.SCALAR)
            attr = h5py.h5a.create(d.id, name.encode(), string_type, space)
            attr.write(np.array(b"abc", dtype="S8"), mtype=string_type)
        utf8 = h5py.h5t.C_S1.copy()
        utf8.set_size(8)
        utf8.set_cset(h5py.h5t.CSET_UTF8)
        attr = h5py.h5a.create(d.id, b"fixed_utf8", utf8, h5py.h5s.create(h5py.h5s.SCALAR))
        attr.write(np.array("é".encode(), dtype="S8"), mtype=utf8)
    with h5py.File(path, "r") as f:
        d = f["d"]
        names = list(d.attrs)
        assert len(names) == 14
        for name in names:
            mine, theirs = _read_attribute(d.id, name), d.attrs[name]
            assert _same_value(mine, theirs), (name, mine, theirs)


def test_members_come_in_the_order_h5py_lists_them(tmp_path):
    """Creation order when the group tracks it, else by name; nested groups too."""
    path = tmp_path / "order.h5"
    with h5py.File(path, "w", track_order=True) as f:
        for name in ("zeta", "alpha", "mid"):
            f.create_dataset(name, data=np.arange(2.0))
        g = f.create_group("untracked", track_order=False)
        for name in ("zeta", "alpha", "mid"):
            g.create_dataset(name, data=np.arange(2.0))
        f["soft"] = h5py.SoftLink("/zeta")
        f["dangling"] = h5py.SoftLink("/nowhere")
    store = HDFParser()(f"file://{path}", ObjectStoreRegistry.default())
    with h5py.File(path, "r") as f:
        assert list(store.group.arrays) == [n for n in f if isinstance(f.get(n), h5py.Dataset)]
        assert list(store.group.arrays) == ["zeta", "alpha", "mid", "soft"]
        assert list(store.group["untracked"].arrays) == ["alpha", "mid", "zeta"]
    np.testing.assert_array_equal(xr.open_zarr(store, consolidated=False)["soft"].values, [0.0, 1.0])


def test_netcdf4_dimension_ids_name_the_same_dimensions_as_xarray(tmp_path, monkeypatch):
    """``_Netcdf4Coordinates`` + ``_Netcdf4Dimid`` (the fast way) against netCDF-C's own reading, via xarray."""
    path = tmp_path / "dims.nc"
    with netCDF4.Dataset(path, "w") as nc:
        nc.createDimension("time", None)
        nc.createDimension("lat", 3)
        nc.createDimension("lon", 4)
        nc.createDimension("nv", 2)  # a dimension without a variable
        nc.createDimension("station", 5)
        nc.createVariable("time", "f8", ("time",))[:] = [0.0, 1.0]
        nc.createVariable("lon", "f4", ("lon",))[:] = np.arange(4)
        nc.createVariable("lat", "f4", ("lat",))[:] = np.arange(3)
        nc.createVariable("bounds", "f4", ("lon", "nv"))[:] = np.ones((4, 2))
        nc.createVariable("station", "f4", ("station", "nv"))[:] = np.zeros((5, 2))  # a 2-D coordinate variable
        nc.createVariable("t", "f4", ("time", "lon", "lat"))[:] = np.zeros((2, 4, 3))  # axes not in dimid order
        g = nc.createGroup("g")
        g.createDimension("depth", 2)
        g.createVariable("depth", "f4", ("depth",))[:] = [1.0, 2.0]
        g.createVariable("v", "f4", ("depth", "lat"))[:] = np.ones((2, 3))  # a dimension of the parent group
    named = []  # scales named through DIMENSION_LIST references: only g/v, whose lat is the parent group's
    real_get_name = h5py.h5r.get_name
    monkeypatch.setattr(h5py.h5r, "get_name", lambda ref, loc: named.append(ref) or real_get_name(ref, loc))
    store = HDFParser()(f"file://{path}", ObjectStoreRegistry.default())
    assert len(named) == 2
    for group, node in ((None, store.group), ("g", store.group["g"])):
        with xr.open_dataset(path, engine="netcdf4", group=group) as expected:
            for name, array in node.arrays.items():
                assert array.dimension_names == expected[name].dims, (group, name)
            assert set(node.arrays) == set(expected.variables)


def test_read_arrays_fetches_a_files_coordinates_together_and_names_a_truncated_file(tmp_path):
    from vzdask.chunk_tasks import read_array, read_arrays

    path = tmp_path / "several.nc"
    with netCDF4.Dataset(path, "w") as nc:
        nc.createDimension("x", 3000)
        nc.createDimension("y", 7)
        nc.createVariable("x", "f8", ("x",))[:] = np.arange(3000.0) / 4
        nc.createVariable("y", "i4", ("y",))[:] = np.arange(7) * -3
        nc.createVariable("z", "f4", ("x",), zlib=True, chunksizes=(500,))[:] = np.arange(3000.0) ** 0.5
    store = HDFParser()(f"file://{path}", ObjectStoreRegistry.default())
    arrays = [store.group[name] for name in ("x", "z", "y")]  # z has six chunks: read block-wise
    got = read_arrays(arrays)
    for array, values, want in zip(arrays, got, (np.arange(3000.0) / 4, np.arange(3000.0) ** 0.5, np.arange(7) * -3)):
        np.testing.assert_array_equal(values, want.astype(array.dtype))
        np.testing.assert_array_equal(read_array(array), values)
        assert values.dtype == array.dtype
    with open(path, "r+b") as f:  # cut into the last coordinate read by the one request
        f.truncate(max(a.manifest.entry((0,))[2] + 8 for a in (arrays[0], arrays[2])))
    with pytest.raises(OSError, match=r"several\.nc"):
        read_arrays([arrays[0], arrays[2]])


def test_netcdf4_bookkeeping_integers_read_as_h5py_reads_them(tmp_path):
    """The int32 fast read takes exactly-fitting 4-byte integers; anything else goes to the general reader."""
    from vzdask.parsers.hdf5 import _read_int32

    path = tmp_path / "ints.h5"
    with h5py.File(path, "w") as f:
        d = f.create_dataset("d", data=np.arange(3))
        d.attrs["scalar"] = np.int32(7)
        d.attrs["big"] = np.array([1, 2, 3], dtype=">i4")
        d.attrs["short"] = np.array([1, 2, 3, 4, 5, 6], dtype="i2")  # 12 bytes, but not three int32
        d.attrs["wide"] = np.array([1, 2, 3], dtype="i8")
        d.attrs["float"] = np.float32(2.5)
        d.attrs["text"] = "abcd"
    with h5py.File(path, "r") as f:
        d = f["d"]
        assert _read_int32(d.id, "scalar", ()) == 7
        for name, shape in (("big", (3,)), ("short", (3,)), ("wide", (3,)), ("float", ()), ("text", ()), ("big", (2,))):
            got = _read_int32(d.id, name, shape)
            assert _same_value(np.asarray(got), np.asarray(d.attrs[name])) or np.array_equal(got, d.attrs[name]), name
        np.testing.assert_array_equal(_read_int32(d.id, "big", (3,)), [1, 2, 3])
        assert list(_read_int32(d.id, "short", (3,))) == [1, 2, 3, 4, 5, 6]  # read whole, not reinterpreted


def test_float32_attributes_keep_their_type_so_packed_data_unpack_as_netcdf_readers_do(tmp_path):
    """float32 attributes come to xarray as np.float32, float64 ones as float64, even when the value fits float32.

    xarray picks the float type packed integers unpack into from the type of
    ``scale_factor``/``add_offset``; zarr attributes are JSON numbers, written
    as such, and the type travels in ``Float32Attribute`` (a float) meanwhile.
    """
    import pickle

    import vzdask
    from vzdask.manifests.metadata import Float32Attribute

    paths = []
    for i in range(2):
        path = str(tmp_path / f"packed{i}.nc")
        with netCDF4.Dataset(path, "w") as nc:
            nc.createDimension("time", 2)
            nc.createDimension("x", 3)
            t = nc.createVariable("time", "i4", ("time",))
            t[:] = [2 * i, 2 * i + 1]
            for name, factor in (("p32", np.float32(0.01)), ("p64", np.float64(0.5))):  # 0.5: exact in float32 too
                v = nc.createVariable(name, "i2", ("time", "x"), zlib=True, fill_value=np.int16(-99))
                v.scale_factor, v.resolution = factor, np.float32(-1.5)
                v.set_auto_maskandscale(False)
                v[:] = np.array([[1, 2, -99], [300, -4, 5]], "i2") + i
            nc.title_number = np.float32(2.5)
        paths.append(path)

    virtual = vzdask.open_virtual_dataset(paths[0])
    stored = virtual["p32"].data.metadata.attributes
    assert type(stored["scale_factor"]) is Float32Attribute and stored["scale_factor"] == float(np.float32(0.01))
    assert type(pickle.loads(pickle.dumps(stored["scale_factor"]))) is Float32Attribute
    assert type(virtual["p32"].attrs["scale_factor"]) is np.float32
    assert type(virtual["p32"].attrs["resolution"]) is np.float32
    assert type(virtual["p64"].attrs["scale_factor"]) is float
    assert type(virtual.attrs["title_number"]) is np.float32

    with xr.open_mfdataset(paths, engine="netcdf4", combine="by_coords") as expected:
        assert expected["p32"].dtype == np.float32 and expected["p64"].dtype == np.float64
        for parallel in (None, "processes"):
            got = vzdask.open_mfdataset(paths, parallel=parallel).compute()
            for name in ("p32", "p64"):
                assert got[name].dtype == expected[name].dtype, (parallel, name)
                np.testing.assert_array_equal(got[name].values, expected[name].values)
            assert type(got["p32"].encoding["scale_factor"]) is np.float32
            virtual = vzdask.open_virtual_mfdataset(paths, parallel=parallel)
            assert type(virtual["p32"].attrs["scale_factor"]) is np.float32, parallel

    # written out, it is the JSON number (what any zarr reader gets)
    refs = virtual.vz.to_kerchunk(format="dict")
    attrs = json.loads(refs["refs"]["p32/.zattrs"])
    assert attrs["scale_factor"] == float(np.float32(0.01)) and attrs["resolution"] == -1.5
