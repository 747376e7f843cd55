"""HDF4Parser: every SDS's values equal pyhdf's, for the real files in tests/fixtures/hdf4 and files pyhdf writes here."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import zarr
from pyhdf.SD import SD, SDC  # the hdf4 extra (in the test extra)

from vzdask.errors import ParseError, UnsupportedVariableWarning
from vzdask.parsers import PARSERS, HDF4Parser, detect_parser
from vzdask.parsers.hdf4 import HDF4_SIGNATURE, parse_struct_metadata
from vzdask.registry import ObjectStoreRegistry
from vzdask.xarray import open_virtual_dataset

FIXTURES = Path(__file__).parent / "fixtures" / "hdf4"
FILES = sorted(p.name for p in FIXTURES.glob("*.hdf")) + sorted(p.name for p in FIXTURES.glob("*.HDF"))
#: SDSs of the real files that are refused, with what the error says: the test files' appendable data
#: was written in 4-byte linked blocks, smaller than a record, so no chunk is one byte range.
REFUSED = {
    ("SDS_unlimited.hdf", "AppendableData"): "110 linked blocks that do not end on record boundaries",
    ("SDS_unlimited_2.hdf", "AppendableData"): "120 linked blocks that do not end on record boundaries",
}

#: char (DFNT_CHAR8) SDSs are ``S1`` arrays, a zarr data type without a v3 specification yet (zarr warns)
pytestmark = pytest.mark.filterwarnings("ignore:.*does not have a Zarr V3 specification")


def _open(path: Path | str, **options) -> zarr.Group:
    store = HDF4Parser(**options)(Path(path).resolve().as_uri(), ObjectStoreRegistry())
    return zarr.open_group(store, mode="r")


def _expected(sd, name: str) -> np.ndarray:
    sds = sd.select(name)
    shape = sds.info()[2]
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    if 0 in shape:  # pyhdf cannot read an unlimited SDS with no records
        return np.zeros(shape, {4: "S1", 5: "f4", 6: "f8"}.get(sds.info()[3], "i4"))
    return sds.get()


def _assert_equal(got: np.ndarray, want: np.ndarray, where: str) -> None:
    assert got.shape == want.shape, where
    assert got.dtype == want.dtype, (where, got.dtype, want.dtype)
    assert np.array_equal(got, want, equal_nan=got.dtype.kind == "f"), where


# -- the real files ------------------------------------------------------------


@pytest.mark.parametrize("name", FILES)
def test_every_sds_of_the_real_files_equals_pyhdf(name):
    path = FIXTURES / name
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UnsupportedVariableWarning)
        group = _open(path, on_unsupported="warn")
    refused = {sds for (file, sds) in REFUSED if file == name}
    sd = SD(str(path))
    try:
        names = list(sd.datasets())
        assert names, name
        for sds in names:
            if sds in refused:
                assert sds not in group
                (warning,) = [w for w in caught if issubclass(w.category, UnsupportedVariableWarning)]
                assert path.resolve().as_uri() in str(warning.message) and repr(f"/{sds}") in str(warning.message)
                continue
            _assert_equal(group[sds][...], _expected(sd, sds), f"{name}:{sds}")
    finally:
        sd.end()
    if not refused:
        assert not [w for w in caught if issubclass(w.category, UnsupportedVariableWarning)]


@pytest.mark.parametrize(("name", "sds"), sorted(REFUSED))
def test_refused_sds_error_names_the_file_and_the_sds(name, sds):
    url = (FIXTURES / name).resolve().as_uri()
    with pytest.raises(ParseError) as info:
        HDF4Parser()(url, ObjectStoreRegistry())
    message = str(info.value)
    assert message.startswith(f"{url}: 1 variable(s) cannot be virtualized")
    assert f"SDS {sds!r}: its data lies in" in message and REFUSED[(name, sds)] in message
    assert f"drop_variables=[{sds!r}]" in message
    group = _open(FIXTURES / name, drop_variables=[sds])
    assert sds not in group


def test_chunked_and_compressed_files_are_stored_as_they_say():
    group = _open(FIXTURES / "SDS_simple_chunk_comp.hdf")
    array = group["SDS_simple_chunk_comp"]
    assert array.chunks == (2, 2) and array.metadata.codecs[-1].to_dict()["name"] == "numcodecs.zlib"
    group = _open(FIXTURES / "SDS_fill_middle_chunk.hdf")  # an unwritten middle chunk reads as the fill value
    sd = SD(str(FIXTURES / "SDS_fill_middle_chunk.hdf"))
    _assert_equal(group["SDS_fc"][...], sd.select("SDS_fc").get(), "SDS_fc")
    sd.end()


def test_unwritten_sds_reads_the_fill_value_or_the_default():
    group = _open(FIXTURES / "SDS_empty.hdf")
    assert (group["SDS_empty_fva"][...] == -99).all()
    assert group["SDS_empty_fva"].attrs["_FillValue"] == -99
    assert (group["SDS_empty_nfva"][...] == -32767).all()  # netCDF's default for int16
    group = _open(FIXTURES / "SDS_simple_unlimited_0.hdf")
    assert group["SDS_unlimited_0"].shape == (0,)


def test_dimension_names_scales_and_attributes():
    ds = open_virtual_dataset(str(FIXTURES / "testsds4.hdf"))
    assert ds["SDS_1"].dims == ("Y_Axis", "X_Axis")
    assert ds["SDS_1"].attrs["long_name"] == "label" and ds["SDS_1"].attrs["units"] == "unit"
    sd = SD(str(FIXTURES / "testsds4.hdf"))
    values = ds.vz.compute()
    np.testing.assert_array_equal(values["Y_Axis"].values, sd.select("Y_Axis").get())  # dimension scales
    np.testing.assert_array_equal(values["X_Axis"].values, sd.select("X_Axis").get())
    sd.end()
    trmm = open_virtual_dataset(str(FIXTURES / "3B42.001003.5.HDF"))
    assert trmm["percipitate"].dims == ("scan", "longitude", "latitude")
    assert "CoreMetadata.0" in trmm.attrs


# -- HDF-EOS2 --------------------------------------------------------------------


def test_hdf_eos_grid_dimension_names_and_geo_coordinates():
    ds = open_virtual_dataset(str(FIXTURES / "grid_1_2d.hdf"))
    assert ds["temperature"].dims == ("YDim", "XDim")  # not YDim:GeoGrid
    assert ds["temperature"].attrs["HDFEOS_GRID_NAME"] == "GeoGrid"
    assert ds["temperature"].attrs["HDFEOS_Projection"] == "GCTP_GEO"
    # UpperLeftPointMtrs=(0, 4000000) and LowerRightMtrs=(8000000, 0) are packed DMS: 0..8 E, 4..0 N, 8 x 4 cells;
    # GridOrigin=HDFE_GD_UR: the first column is the eastmost
    values = ds.vz.compute()
    np.testing.assert_allclose(values["lon"].values, 7.5 - np.arange(8))
    np.testing.assert_allclose(values["lat"].values, 3.5 - np.arange(4))
    assert ds["lat"].attrs["units"] == "degrees_north"
    assert set(ds.coords) == {"lat", "lon"}


@pytest.mark.parametrize(("name", "x", "y"), [
    # UpperLeftPointMtrs=(-20000000, 1000000), LowerRightMtrs=(-19000000, 0), 4 x 4 cells of 250 km
    ("sinusoid.hdf", -20000000 + 250000 * (np.arange(4) + 0.5), 1000000 - 250000 * (np.arange(4) + 0.5)),
    # UpperLeftPointMtrs=(-17000000, 7300000), LowerRightMtrs=(17000000, -7300000), 8 x 8 cells
    ("cea.hdf", -17000000 + 4250000 * (np.arange(8) + 0.5), 7300000 - 1825000 * (np.arange(8) + 0.5)),
])
def test_hdf_eos_projected_grid_gets_projection_coordinates(name, x, y):
    ds = open_virtual_dataset(str(FIXTURES / name))
    assert ds["temperature"].dims == ("YDim", "XDim")
    assert ds["temperature"].attrs["HDFEOS_Projection"] in ("GCTP_SNSOID", "GCTP_CEA")
    values = ds.vz.compute()
    np.testing.assert_allclose(values["x"].values, x)
    np.testing.assert_allclose(values["y"].values, y)
    assert values["x"].attrs["standard_name"] == "projection_x_coordinate" and values["x"].attrs["units"] == "m"
    assert set(ds.coords) == {"x", "y"}


def test_hdf_eos_grid_with_its_own_coordinate_fields_gets_none_computed():
    ds = open_virtual_dataset(str(FIXTURES / "grid_1_2d_xy.hdf"))
    assert "lat" not in ds and "lon" not in ds
    assert ds["Latitude"].dims == ("YDim",)
    sd = SD(str(FIXTURES / "grid_1_2d_xy.hdf"))
    np.testing.assert_array_equal(ds.vz.compute()["Latitude"].values, sd.select("Latitude").get())
    sd.end()


def test_struct_metadata_swath_and_grid():
    text = """GROUP=SwathStructure
	GROUP=SWATH_1
		SwathName="Swath1"
		GROUP=GeoField
			OBJECT=GeoField_1
				GeoFieldName="Latitude"
				DimList=("Track","Xtrack")
			END_OBJECT=GeoField_1
		END_GROUP=GeoField
		GROUP=DataField
			OBJECT=DataField_1
				DataFieldName="Radiance"
				DimList=("Track","Xtrack")
			END_OBJECT=DataField_1
		END_GROUP=DataField
	END_GROUP=SWATH_1
END_GROUP=SwathStructure
GROUP=GridStructure
	GROUP=GRID_1
		GridName="G"
		XDim=2
	END_GROUP=GRID_1
END_GROUP=GridStructure
END
"""
    swath, grid = parse_struct_metadata(text)
    assert (swath.name, swath.kind, swath.geo_fields) == ("Swath1", "swath", ("Latitude",))
    assert swath.fields == {"Latitude": ("Track", "Xtrack"), "Radiance": ("Track", "Xtrack")}
    assert (grid.name, grid.kind, grid.params["XDim"]) == ("G", "grid", "2")


# -- files pyhdf writes -------------------------------------------------------------

TYPES = {
    SDC.INT8: "i1", SDC.UINT8: "u1", SDC.INT16: "i2", SDC.UINT16: "u2", SDC.INT32: "i4", SDC.UINT32: "u4",
    SDC.FLOAT32: "f4", SDC.FLOAT64: "f8", SDC.UCHAR8: "u1",
}


def _write(path: Path, build) -> Path:
    sd = SD(str(path), SDC.WRITE | SDC.CREATE | SDC.TRUNC)
    try:
        build(sd)
    finally:
        sd.end()
    return path


def _values(dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    n = int(np.prod(shape))
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "iu" else None
    if info is not None:
        return (np.arange(n) % 200 + max(info.min, -100)).astype(dtype).reshape(shape)
    return (np.arange(n) * 0.37 - 5).astype(dtype).reshape(shape)


def _compare_all(path: Path, **options) -> zarr.Group:
    """Every SDS's values, and the metadata, equal to pyhdf's reading of the same file."""
    store = HDF4Parser(**options)(path.as_uri(), ObjectStoreRegistry())
    group = zarr.open_group(store, mode="r")
    sd = SD(str(path))
    try:
        for name in sd.datasets():
            _assert_equal(group[name][...], _expected(sd, name), name)
    finally:
        sd.end()
    _check_metadata(path, store)
    return group


def test_written_types_contiguous_and_deflate(tmp_path):
    """pyhdf cannot write chunked SDSs (no SDsetchunk): those come from the real files above."""

    def build(sd):
        for code, dtype in TYPES.items():
            data = _values(dtype, (7, 5))
            plain = sd.create(f"plain_{code}", code, (7, 5))
            plain[:] = data
            plain.endaccess()
            compressed = sd.create(f"deflate_{code}", code, (7, 5))
            compressed.setcompress(SDC.COMP_DEFLATE, 9)
            compressed[:] = data
            compressed.endaccess()
        text = sd.create("text", SDC.CHAR8, (6,))
        text[:] = np.frombuffer(b"hdf4!\x00", "S1")
        text.units = "none"
        text.endaccess()
        described = sd.create("described", SDC.INT16, (2, 3))
        described[:] = np.arange(6, dtype="i2").reshape(2, 3)
        for attr, code, value in [("i8", SDC.INT8, [-3, 4]), ("u16", SDC.UINT16, 65535), ("f32", SDC.FLOAT32, 0.1),
                                  ("f64", SDC.FLOAT64, [1e300, -2.5]), ("i32", SDC.INT32, [1, 2, 3]),
                                  ("u8", SDC.UINT8, [7, 250]), ("long_name", SDC.CHAR8, "a described SDS")]:
            described.attr(attr).set(code, value)
        described.dim(0).setname("rows")
        described.dim(1).setname("columns")
        described.dim(1).setscale(SDC.FLOAT32, [0.5, 1.5, 2.5])  # a dimension scale: a coordinate SDS
        described.endaccess()
        sd.title = "written by pyhdf"
        sd.attr("version").set(SDC.INT32, 3)

    group = _compare_all(_write(tmp_path / "types.hdf", build))
    assert group[f"plain_{SDC.INT32}"].chunks == (7, 5)
    assert group["described"].metadata.dimension_names == ("rows", "columns")
    assert group.attrs["title"] == "written by pyhdf" and group.attrs["version"] == 3
    np.testing.assert_array_equal(group["columns"][...], np.array([0.5, 1.5, 2.5], "f4"))
    assert group[f"deflate_{SDC.FLOAT64}"].metadata.codecs[-1].to_dict()["name"] == "numcodecs.zlib"


def test_written_fill_values(tmp_path):
    def build(sd):
        part = sd.create("part", SDC.FLOAT32, (6, 6))  # contiguous: the unwritten part is written as fill
        part.setfillvalue(-1.5)
        part[0:2, 0:3] = np.ones((2, 3), "f4")
        part.endaccess()
        part_deflate = sd.create("part_deflate", SDC.INT16, (6, 6))
        part_deflate.setfillvalue(-7)
        part_deflate.setcompress(SDC.COMP_DEFLATE, 1)
        part_deflate[:] = np.full((6, 6), 5, "i2")
        part_deflate.endaccess()
        empty = sd.create("empty", SDC.UINT16, (4,))
        empty.setfillvalue(9)
        empty.endaccess()
        for code in (SDC.INT8, SDC.UINT8, SDC.INT32, SDC.UINT32, SDC.FLOAT64):  # defaults, no _FillValue
            sd.create(f"default_{code}", code, (3,)).endaccess()

    path = _write(tmp_path / "fill.hdf", build)
    group = _compare_all(path)
    store = HDF4Parser()(path.as_uri(), ObjectStoreRegistry())
    assert store.group.arrays["empty"].manifest.count() == {"virtual": 0, "inlined": 0, "missing": 1}
    assert group["part"].metadata.fill_value == -1.5
    assert group["empty"].metadata.fill_value == 9


def test_written_unlimited_dimension(tmp_path):
    def build(sd):
        one_block = sd.create("one_block", SDC.FLOAT32, (SDC.UNLIMITED, 3))
        one_block[0:2] = np.arange(6, dtype="f4").reshape(2, 3)
        one_block[2:5] = np.arange(9, dtype="f4").reshape(3, 3) + 10
        one_block.endaccess()
        aligned = sd.create("aligned", SDC.INT16, (SDC.UNLIMITED, 1024))  # 2048-byte records, 64 KiB blocks
        for i in range(40):
            aligned[i : i + 1] = np.full((1, 1024), i, "i2")
        aligned.endaccess()

    group = _compare_all(_write(tmp_path / "unlimited.hdf", build))
    assert group["aligned"].chunks == (32, 1024)  # chunks of whole records within the linked blocks


def test_sdss_sharing_an_unlimited_dimension_read_fill_past_their_records(tmp_path):
    def build(sd):
        longer = sd.create("longer", SDC.INT32, (SDC.UNLIMITED, 2))
        longer.dim(0).setname("time")
        longer[0:5] = np.arange(10, dtype="i4").reshape(5, 2)
        longer.endaccess()
        shorter = sd.create("shorter", SDC.FLOAT64, (SDC.UNLIMITED,))
        shorter.dim(0).setname("time")
        shorter.setfillvalue(-1.0)
        shorter[0:3] = np.arange(3.0)
        shorter.endaccess()
        never = sd.create("never", SDC.INT16, (SDC.UNLIMITED, 3))
        never.dim(0).setname("time")
        never.endaccess()

    path = _write(tmp_path / "shared.hdf", build)
    ds = open_virtual_dataset(path.as_uri()).vz.compute()
    assert ds.sizes["time"] == 5
    sd = SD(str(path))
    np.testing.assert_array_equal(ds["longer"].values, sd.select("longer").get())
    np.testing.assert_array_equal(ds["shorter"].values[:3], sd.select("shorter").get())  # pyhdf: its 3 records
    sd.end()
    np.testing.assert_array_equal(ds["shorter"].values[3:], [-1.0, -1.0])
    np.testing.assert_array_equal(ds["never"].values, np.full((5, 3), -32767, "i2"))


def test_written_unlimited_blocks_off_record_boundaries_are_refused(tmp_path):
    def build(sd):
        odd = sd.create("odd", SDC.INT16, (SDC.UNLIMITED, 1000))  # 2000-byte records in 64 KiB blocks
        for i in range(40):
            odd[i : i + 1] = np.full((1, 1000), i, "i2")
        odd.endaccess()
        fine = sd.create("fine", SDC.INT32, (3,))
        fine[:] = np.arange(3, dtype="i4")
        fine.endaccess()

    path = _write(tmp_path / "odd.hdf", build)
    with pytest.raises(ParseError, match=r"'/odd': SDS 'odd': its data lies in 2 linked blocks that do not end "
                                         r"on record boundaries .*records of 2000 bytes"):
        HDF4Parser()(path.as_uri(), ObjectStoreRegistry())
    with pytest.warns(UnsupportedVariableWarning, match="odd"):
        group = _open(path, on_unsupported="warn")
    assert list(group.array_keys()) == ["fine"]


@pytest.mark.parametrize(("comp", "args", "label"), [
    (SDC.COMP_RLE, (), "RLE"),
    (SDC.COMP_SKPHUFF, (2,), "skipping Huffman"),
])
def test_compressions_without_a_zarr_codec_are_refused(tmp_path, comp, args, label):
    def build(sd):
        contiguous = sd.create("contiguous", SDC.INT16, (10, 10))
        contiguous.setcompress(comp, *args)
        contiguous[:] = np.arange(100, dtype="i2").reshape(10, 10)
        contiguous.endaccess()
        fine = sd.create("fine", SDC.INT16, (3,))
        fine[:] = np.arange(3, dtype="i2")
        fine.endaccess()

    path = _write(tmp_path / "rle.hdf", build)
    with pytest.raises(ParseError) as info:
        HDF4Parser()(path.as_uri(), ObjectStoreRegistry())
    message = str(info.value)
    assert message.startswith(f"{path.as_uri()}: 1 variable(s) cannot be virtualized")
    assert f"SDS 'contiguous': compressed with HDF4 {label}, for which no zarr codec reads HDF4's encoding" in message
    assert list(_open(path, drop_variables=["contiguous"]).array_keys()) == ["fine"]


def test_remote_object_through_a_memory_store():
    from obstore.store import MemoryStore

    store = MemoryStore()
    data = (FIXTURES / "SDS_simple_chunk_comp.hdf").read_bytes()
    store.put("a/file.hdf", data)
    registry = ObjectStoreRegistry({"memory://bucket": store})
    group = zarr.open_group(HDF4Parser()("memory://bucket/a/file.hdf", registry), mode="r")
    sd = SD(str(FIXTURES / "SDS_simple_chunk_comp.hdf"))
    _assert_equal(group["SDS_simple_chunk_comp"][...], sd.select("SDS_simple_chunk_comp").get(), "remote")
    sd.end()


# -- detection and bad inputs ------------------------------------------------------


def test_detected_from_the_magic_number():
    assert HDF4Parser in PARSERS
    assert HDF4Parser.guess_can_open(HDF4_SIGNATURE + b"\x00" * 8, "s3://b/k") is True
    assert HDF4Parser.guess_can_open(b"\x89HDF\r\n\x1a\n", "s3://b/k.hdf") is False
    assert not any(cls.guess_can_open(HDF4_SIGNATURE, "s3://b/k") for cls in PARSERS if cls is not HDF4Parser)
    url = (FIXTURES / "SDS_simple.hdf").resolve().as_uri()
    parser = detect_parser(url, ObjectStoreRegistry(), on_unsupported="warn")
    assert isinstance(parser, HDF4Parser) and parser.on_unsupported == "warn"
    ds = open_virtual_dataset(url)
    assert list(ds.data_vars) == ["SDS_simple"]


def test_not_hdf4_truncated_empty_and_groups(tmp_path):
    registry = ObjectStoreRegistry()
    other = tmp_path / "other.hdf"
    other.write_bytes(b"CDF\x01" + b"\x00" * 60)
    with pytest.raises(ParseError, match=r"other.hdf: not an HDF4 file: starts with b'CDF\\x01'"):
        HDF4Parser()(other.as_uri(), registry)
    truncated = tmp_path / "truncated.hdf"
    truncated.write_bytes((FIXTURES / "SDS_simple.hdf").read_bytes()[:40])
    with pytest.raises(ParseError, match=r"truncated.hdf: truncated HDF4 file: the DD block at byte 4 needs"):
        HDF4Parser()(truncated.as_uri(), registry)
    data = bytearray((FIXTURES / "SDS_simple.hdf").read_bytes())
    dd = data.index(bytes.fromhex("02be0003"))  # the DD of the SDS's data (tag 702, ref 3): say it is longer
    data[dd + 8 : dd + 12] = (10**6).to_bytes(4, "big")
    data[dd + 4 : dd + 8] = (len(data) - 8).to_bytes(4, "big")
    corrupt = tmp_path / "corrupt.hdf"
    corrupt.write_bytes(bytes(data))
    with pytest.raises(ParseError, match=r"corrupt.hdf: truncated HDF4 file: the data of SDS 'SDS_simple' ends at "
                                         rf"byte {len(data) + 24}, but the file has {len(data)} bytes"):
        HDF4Parser()(corrupt.as_uri(), registry)
    nothing = _write(tmp_path / "nothing.hdf", lambda sd: None)  # an SD file without SDSs: an empty dataset
    assert list(_open(nothing).array_keys()) == []
    old_style = tmp_path / "dfsd.hdf"  # no SD interface vgroup: as files written only through DFSD
    old_style.write_bytes((FIXTURES / "SDS_simple.hdf").read_bytes().replace(b"CDF0.0", b"XYZ0.0"))
    with pytest.raises(ParseError, match=r"dfsd.hdf: the file has scientific data but no SD interface structure"):
        HDF4Parser()(old_style.as_uri(), registry)
    empty = tmp_path / "empty.hdf"
    empty.write_bytes(b"")
    with pytest.raises(ParseError, match="empty file"):
        HDF4Parser()(empty.as_uri(), registry)
    with pytest.raises(ParseError, match="HDF4 SDSs are not in groups; group='g'"):
        HDF4Parser(group="g")((FIXTURES / "SDS_simple.hdf").resolve().as_uri(), registry)
    with pytest.raises(ValueError, match="on_unsupported"):
        HDF4Parser(on_unsupported="skip")


def test_fixture_files_are_the_shared_ones():
    shared = Path("/work/shared/testdata/hdf4")
    if not shared.exists():  # CI: the copies are all there is
        assert len(FILES) == 27
        return
    for name in FILES:
        assert (FIXTURES / name).read_bytes() == (shared / name).read_bytes(), name


def _same_attribute(got, want) -> bool:
    if isinstance(want, str):  # text loses the NUL padding HDF-EOS writes (32000-byte StructMetadata.0)
        return got == want.rstrip("\x00")
    return np.allclose(np.asarray(got, dtype=float), np.asarray(want, dtype=float), rtol=1e-7, equal_nan=True)


@pytest.mark.parametrize("name", FILES)
def test_names_order_dimensions_and_attributes_equal_pyhdf(name):
    path = FIXTURES / name
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnsupportedVariableWarning)
        store = HDF4Parser(on_unsupported="warn")(path.resolve().as_uri(), ObjectStoreRegistry())
    _check_metadata(path, store, refused={n for (file, n) in REFUSED if file == name})


def _check_metadata(path: Path, store, refused=frozenset()) -> None:
    """Global attributes, SDS names in the library's order, dimension names, attributes and fill values."""
    arrays = store.group.arrays
    sd = SD(str(path))
    try:
        assert set(store.group.attributes) == set(sd.attributes())
        for key, want in sd.attributes().items():
            assert _same_attribute(store.group.attributes[key], want), key
        names = [sd.select(i).info()[0] for i in range(sd.info()[0])]
        kept = [n for n in names if n not in refused]
        assert [n for n in arrays if n in names] == kept  # the library's order
        eos = "StructMetadata.0" in sd.attributes()
        for sds_name in kept:
            sds = sd.select(sds_name)
            array = arrays[sds_name]
            dims = [sds.dim(i).info()[0] for i in range(sds.info()[1])]
            if eos:
                dims = [d.rsplit(":", 1)[0] for d in dims]
            assert list(array.metadata.dimension_names) == dims, sds_name
            attrs = array.metadata.attributes
            for key, want in sds.attributes().items():
                if key == "_FillValue":
                    assert _same_attribute(array.metadata.fill_value, want), sds_name
                    continue
                assert _same_attribute(attrs[key], want), (sds_name, key)
    finally:
        sd.end()


def test_metadata_after_the_data_costs_one_more_request(tmp_path, monkeypatch):
    """The SD interface writes its vgroups and vdatas after the data: fetched together, not one by one."""
    import obstore

    def build(sd):
        for k in range(3):  # 720 kB of data between the DD block (at the start) and the metadata
            sds = sd.create(f"v{k}", SDC.FLOAT32, (200, 300))
            sds[:] = np.full((200, 300), k, "f4")
            sds.units = "K"
            sds.endaccess()
        sd.attr("history").set(SDC.CHAR8, "x" * 5000)

    path = _write(tmp_path / "big.hdf", build)
    made = []
    for name in ("get", "get_range", "get_ranges", "head"):
        real = getattr(obstore, name)

        def counted(*args, _real=real, _name=name, **kwargs):
            made.append(_name)
            return _real(*args, **kwargs)

        monkeypatch.setattr(obstore, name, counted)
    store = HDF4Parser()(path.as_uri(), ObjectStoreRegistry())
    # the first block and the object's size; then all the metadata (one range here: get_range)
    assert made[0] == "get" and len(made) == 2 and made[1] in ("get_range", "get_ranges")
    monkeypatch.undo()
    _check_metadata(path, store)


def test_hdf_eos_swath_fields_name_their_geolocation(tmp_path):
    """An HDF-EOS2 swath as the HDF-EOS library lays it out for the SD interface: fields whose dimensions
    are ``Dim:SwathName``, described by ``StructMetadata.0`` (written here with pyhdf)."""
    struct_metadata = """GROUP=SwathStructure
	GROUP=SWATH_1
		SwathName="Swath1"
		GROUP=Dimension
		END_GROUP=Dimension
		GROUP=GeoField
			OBJECT=GeoField_1
				GeoFieldName="Latitude"
				DataType=DFNT_FLOAT32
				DimList=("Track","Xtrack")
			END_OBJECT=GeoField_1
			OBJECT=GeoField_2
				GeoFieldName="Longitude"
				DataType=DFNT_FLOAT32
				DimList=("Track","Xtrack")
			END_OBJECT=GeoField_2
		END_GROUP=GeoField
		GROUP=DataField
			OBJECT=DataField_1
				DataFieldName="Radiance"
				DataType=DFNT_UINT16
				DimList=("Track","Xtrack")
			END_OBJECT=DataField_1
		END_GROUP=DataField
	END_GROUP=SWATH_1
END_GROUP=SwathStructure
GROUP=GridStructure
END_GROUP=GridStructure
END
"""

    def build(sd):
        for name, code, dtype in (("Latitude", SDC.FLOAT32, "f4"), ("Longitude", SDC.FLOAT32, "f4"),
                                  ("Radiance", SDC.UINT16, "u2")):
            sds = sd.create(name, code, (3, 4))
            sds.dim(0).setname("Track:Swath1")
            sds.dim(1).setname("Xtrack:Swath1")
            sds[:] = np.arange(12, dtype=dtype).reshape(3, 4)
            sds.endaccess()
        sd.attr("StructMetadata.0").set(SDC.CHAR8, struct_metadata + "\x00" * 100)

    path = _write(tmp_path / "swath.hdf", build)
    ds = open_virtual_dataset(path.as_uri())
    assert ds["Radiance"].dims == ("Track", "Xtrack")
    assert ds["Radiance"].attrs["HDFEOS_SWATH_NAME"] == "Swath1"
    assert set(ds.coords) == {"Latitude", "Longitude"}  # from the coordinates attribute
    _compare_all(path)


def test_dimension_scales_load_from_the_bytes_the_parse_read(tmp_path, monkeypatch):
    import obstore

    def build(sd):
        sds = sd.create("t", SDC.FLOAT32, (4, 3))
        sds[:] = np.arange(12, dtype="f4").reshape(4, 3)
        sds.dim(0).setname("y")
        sds.dim(0).setscale(SDC.FLOAT64, [10.0, 20.0, 30.0, 40.0])
        sds.endaccess()

    path = _write(tmp_path / "scales.hdf", build)
    made = []
    real = obstore.get_ranges

    def counted(*args, **kwargs):
        made.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(obstore, "get_ranges", counted)
    monkeypatch.setattr(obstore, "get_range", counted)
    ds = open_virtual_dataset(path.as_uri())  # loads the dimension coordinate y
    np.testing.assert_array_equal(ds["y"].values, [10.0, 20.0, 30.0, 40.0])
    assert made == []  # the whole small file was in the first block the parse read


@pytest.mark.parametrize("name", ["SDS_simple_chunk_comp.hdf", "SDS_fill_middle_chunk.hdf", "3B42.001003.5.HDF"])
def test_kerchunk_references_read_back_with_fsspec_equal_pyhdf(name):
    import fsspec
    import xarray as xr

    path = FIXTURES / name
    refs = open_virtual_dataset(path.resolve().as_uri()).vz.to_kerchunk()
    mapper = fsspec.filesystem("reference", fo=refs).get_mapper("")
    ds = xr.open_dataset(mapper, engine="zarr", consolidated=False, zarr_format=2, mask_and_scale=False)
    sd = SD(str(path))
    try:
        for sds in sd.datasets():
            np.testing.assert_array_equal(ds[sds].values, sd.select(sds).get())
    finally:
        sd.end()


@pytest.mark.parametrize(("code", "reason"), [
    (2, "compressed with HDF4 NBIT, for which no zarr codec reads HDF4's encoding"),
    (5, "compressed with HDF4 SZIP, which this parser does not map to a zarr codec"),
    (99, "compressed with HDF4 code 99, for which no zarr codec reads HDF4's encoding"),
])
def test_other_compression_codes_are_refused(tmp_path, code, reason):
    """pyhdf's wheels write neither NBIT nor SZIP: the deflate file's compression header is edited instead."""
    data = bytearray((FIXTURES / "SDS_simple_comp.hdf").read_bytes())
    header = data.index(bytes.fromhex("0003" "0000" "00000020" "0001" "0000" "0004"))  # SPECIAL_COMP, deflate
    data[header + 12 : header + 14] = code.to_bytes(2, "big")
    path = tmp_path / "edited.hdf"
    path.write_bytes(bytes(data))
    with pytest.raises(ParseError, match=f"'/SDS_simple_comp': SDS 'SDS_simple_comp': {reason}"):
        HDF4Parser()(path.as_uri(), ObjectStoreRegistry())


def test_inline_policy_copies_the_chosen_chunks():
    from vzdask.policy import InlinePolicy

    path = FIXTURES / "testsds4.hdf"
    store = HDF4Parser(inline=InlinePolicy(coordinates=True))(path.resolve().as_uri(), ObjectStoreRegistry())
    arrays = store.group.arrays
    assert arrays["Y_Axis"].manifest.count()["inlined"] == 1 and arrays["X_Axis"].manifest.count()["inlined"] == 1
    assert arrays["SDS_1"].manifest.count()["inlined"] == 0
    group = zarr.open_group(store, mode="r")
    sd = SD(str(path))
    np.testing.assert_array_equal(group["Y_Axis"][...], sd.select("Y_Axis").get())
    sd.end()
