"""FITSParser: FITS files written by astropy in the tests, values compared with astropy.io.fits (raw and scaled)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import xarray as xr
from astropy.io import fits

from vzdask.errors import UnsupportedVariableWarning
from vzdask.parsers import FITSParser, ParseError, detect_parser
from vzdask.registry import ObjectStoreRegistry
from vzdask.xarray import open_virtual_dataset

REGISTRY = ObjectStoreRegistry()
RNG = np.random.default_rng(7)
BITPIX = {8: "u1", 16: ">i2", 32: ">i4", 64: ">i8", -32: ">f4", -64: ">f8"}


def parse(path, **options):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zarr's warning about fixed-size bytes (character columns)
        return FITSParser(**options)(path.as_uri(), REGISTRY).group


def compute(array):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return array.compute()


def decoded(array) -> np.ndarray:
    """CF-decoded values (xarray's masking and scaling of the raw values with the array's attributes)."""
    raw = compute(array)
    attrs = dict(array.metadata.attributes)
    attrs = {k: attrs[k] for k in ("scale_factor", "add_offset", "_FillValue") if k in attrs}
    return xr.decode_cf(xr.Dataset({"v": (array.metadata.dimension_names, raw, attrs)}))["v"].values


@pytest.mark.parametrize("bitpix", sorted(BITPIX))
def test_images_of_every_bitpix(tmp_path, bitpix):
    dtype = np.dtype(BITPIX[bitpix])
    values = (RNG.random((3, 4, 5)) * 100 if dtype.kind == "f" else RNG.integers(0, 120, (3, 4, 5))).astype(dtype)
    path = tmp_path / "image.fits"
    fits.HDUList([fits.PrimaryHDU(values), fits.ImageHDU(values[0], name="SCI")]).writeto(path)
    group = parse(path)
    primary = group["PRIMARY"]
    assert primary.shape == (3, 4, 5) and primary.metadata.dimension_names == (
        "PRIMARY_naxis3", "PRIMARY_naxis2", "PRIMARY_naxis1")
    assert primary.metadata.attributes["BITPIX"] == bitpix
    assert primary.manifest.count() == {"virtual": 1, "inlined": 0, "missing": 0}
    with fits.open(path) as f:
        np.testing.assert_array_equal(compute(primary), f[0].data)
        np.testing.assert_array_equal(compute(group["SCI"]), f["SCI"].data)
    assert group.attributes["SIMPLE"] is True and group.attributes["NAXIS"] == 3


def test_scaled_images_raw_and_scaled(tmp_path):
    """BSCALE/BZERO/BLANK as CF attributes: raw values are astropy's unscaled ones, decoded ones its scaled ones."""
    raw = RNG.integers(-50, 50, (6, 7)).astype(">i2")
    raw[0, :3] = -32768
    scaled = fits.ImageHDU(raw, name="SCALED", do_not_scale_image_data=True)
    scaled.header["BSCALE"], scaled.header["BZERO"], scaled.header["BLANK"] = 0.25, 100.0, -32768
    unsigned = fits.ImageHDU(RNG.integers(0, 65535, (5, 5)).astype(np.uint16), name="U16")  # BZERO = 32768
    float_scaled = fits.ImageHDU(RNG.random((4, 4)).astype(">f4"), name="FSCALED", do_not_scale_image_data=True)
    float_scaled.header["BSCALE"] = 2.0
    path = tmp_path / "scaled.fits"
    fits.HDUList([fits.PrimaryHDU(), scaled, unsigned, float_scaled]).writeto(path)
    group = parse(path)
    assert "PRIMARY" not in group.arrays  # no data
    attrs = group["SCALED"].metadata.attributes
    assert (attrs["scale_factor"], attrs["add_offset"], attrs["_FillValue"]) == (0.25, 100.0, -32768)
    assert group["U16"].metadata.attributes["add_offset"] == 32768.0
    with fits.open(path, do_not_scale_image_data=True) as f:
        for name in ("SCALED", "U16", "FSCALED"):
            np.testing.assert_array_equal(compute(group[name]), f[name].data)
    with fits.open(path) as f:
        for name in ("SCALED", "U16", "FSCALED"):
            np.testing.assert_array_equal(decoded(group[name]), f[name].data)
        assert np.isnan(f["SCALED"].data[0, :3]).all()


def test_multi_extension_names_and_cards(tmp_path):
    path = tmp_path / "mef.fits"
    primary = fits.PrimaryHDU(np.zeros((2, 2), ">f8"))
    primary.header["OBJECT"] = "M31"
    primary.header["EXPTIME"] = (30.5, "seconds")
    primary.header["HISTORY"] = "made in a test"
    hdus = [primary, fits.ImageHDU(np.ones((3,), ">i4"), name="SCI"), fits.ImageHDU(np.ones((3,), ">i4"), name="SCI"),
            fits.ImageHDU(np.ones((2,), ">i2"))]
    fits.HDUList(hdus).writeto(path)
    group = parse(path)
    assert set(group.arrays) == {"PRIMARY", "SCI", "HDU2", "HDU3"}  # a repeated or missing EXTNAME: by position
    attrs = group.attributes
    assert attrs["OBJECT"] == "M31" and attrs["EXPTIME"] == 30.5 and attrs["HISTORY"] == ["made in a test"]
    assert group["SCI"].metadata.attributes["EXTNAME"] == "SCI"
    assert group["HDU3"].metadata.dimension_names == ("HDU3_naxis1",)
    ds = open_virtual_dataset(str(path))  # detected from its first bytes
    assert set(ds.data_vars) == {"PRIMARY", "SCI", "HDU2", "HDU3"}
    assert isinstance(detect_parser(path.as_uri(), REGISTRY), FITSParser)


def test_binary_table_columns(tmp_path):
    rows = 6
    columns = [
        fits.Column("id", "K", array=np.arange(rows)),
        fits.Column("flux", "3E", array=RNG.random((rows, 3)).astype("f4")),
        fits.Column("mag", "D", array=RNG.random(rows)),
        fits.Column("count", "I", array=np.arange(rows) * 10),
        fits.Column("small", "B", array=np.arange(rows)),
        fits.Column("label", "6A", array=["a", "bb", "", "dddd", "eeeeee", "f"]),
        fits.Column("z", "C", array=np.arange(rows) * (1 + 2j)),
        fits.Column("ok", "L", array=[True, False] * 3),
        fits.Column("var", "PJ()", array=[np.arange(i) for i in range(rows)]),
    ]
    path = tmp_path / "table.fits"
    table_hdu = fits.BinTableHDU.from_columns(columns, name="CAT")
    table_hdu.header["TSCAL4"], table_hdu.header["TZERO4"] = 0.5, 3.0  # scaled on reading
    fits.HDUList([fits.PrimaryHDU(), table_hdu]).writeto(path)
    with pytest.raises(ParseError, match=r"(?s)'/CAT/ok': logical column.*'/CAT/var': variable-length column"):
        parse(path)
    with pytest.warns(UnsupportedVariableWarning, match="/CAT/ok"):
        group = FITSParser(on_unsupported="warn")(path.as_uri(), REGISTRY).group
    table = group["CAT"]
    assert set(table.arrays) == {"id", "flux", "mag", "count", "small", "label", "z"}
    assert table.attributes["TTYPE1"] == "id"
    assert table["flux"].metadata.dimension_names == ("row", "flux_repeat")
    assert table["id"].manifest.count()["virtual"] == rows  # one chunk per row
    with fits.open(path) as f:
        data = f["CAT"].data
        for name in ("id", "flux", "mag", "small", "z"):
            np.testing.assert_array_equal(compute(table[name]), data[name])
        np.testing.assert_array_equal(decoded(table["count"]), data["count"])  # TSCAL/TZERO, decoded
        assert [v.decode() for v in compute(table["label"])] == list(data["label"])
    with fits.open(path) as f:
        np.testing.assert_array_equal(compute(table["count"]), f["CAT"].data.base["count"])  # raw


@pytest.mark.parametrize("compression", ["RICE_1", "GZIP_1", "GZIP_2"])
@pytest.mark.parametrize("dtype", ["uint8", "int16", "int32"])
def test_tile_compressed_images(tmp_path, compression, dtype):
    values = RNG.integers(0, 200, (40, 24)).astype(dtype)
    path = tmp_path / "compressed.fits"
    hdu = fits.CompImageHDU(values, compression_type=compression, tile_shape=(8, 12), name="COMP")
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(path)
    array = parse(path)["COMP"]
    assert array.shape == (40, 24)
    assert array.manifest.count() == {"virtual": 10, "inlined": 0, "missing": 0}  # one chunk per tile
    with fits.open(path) as f:
        np.testing.assert_array_equal(compute(array), f["COMP"].data)


def test_lossless_float_tiles(tmp_path):
    values = RNG.random((16, 16)).astype("f4")
    path = tmp_path / "float.fits"
    hdu = fits.CompImageHDU(values, compression_type="GZIP_2", quantize_level=0, name="F")
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(path)
    with fits.open(path) as f:
        np.testing.assert_array_equal(compute(parse(path)["F"]), f["F"].data)


@pytest.mark.parametrize(
    ("hdu", "message"),
    [
        (fits.CompImageHDU(np.zeros((8, 8), "i2"), compression_type="HCOMPRESS_1", name="H"),
         "'/H': tile compression 'HCOMPRESS_1' has no zarr codec"),
        (fits.CompImageHDU(np.zeros((8, 8), "i2"), compression_type="PLIO_1", name="P"),
         "'/P': tile compression 'PLIO_1' has no zarr codec"),
        (fits.CompImageHDU(np.ones((8, 8), "f4"), compression_type="RICE_1", name="Q"),
         "'/Q': quantized floating-point tiles"),
        (fits.CompImageHDU(np.zeros((10, 10), "i2"), compression_type="GZIP_1", tile_shape=(4, 4), name="E"),
         "'/E': tiles .4, 4. do not divide the image"),
        (fits.TableHDU.from_columns([fits.Column("a", "I5", array=[1, 2])], name="ASCII"),
         "'/ASCII': extension 'TABLE' .e.g. an ASCII table. cannot be virtualized"),
    ],
)
def test_unsupported_hdus_are_named(tmp_path, hdu, message):
    path = tmp_path / "bad.fits"
    fits.HDUList([fits.PrimaryHDU(np.arange(3, dtype=">i2")), hdu]).writeto(path)
    with pytest.raises(ParseError, match=message):
        parse(path)
    with pytest.warns(UnsupportedVariableWarning):
        group = FITSParser(on_unsupported="warn")(path.as_uri(), REGISTRY).group
    assert list(group.arrays) == ["PRIMARY"]
    assert list(parse(path, drop_variables=[hdu.name]).arrays) == ["PRIMARY"]


def test_bad_files(tmp_path):
    path = tmp_path / "bad.fits"
    path.write_bytes(b"NOT FITS" + b" " * 3000)
    with pytest.raises(ParseError, match="not a FITS file"):
        parse(path)
    good = tmp_path / "good.fits"
    fits.PrimaryHDU(np.zeros((4,), ">i2")).writeto(good)
    path.write_bytes(good.read_bytes()[:800])  # the header cut before its END card
    with pytest.raises(ParseError, match="header truncated at byte 0"):
        parse(path)
    path.write_bytes(b"")
    with pytest.raises(ParseError, match="empty file"):
        parse(path)
    assert FITSParser.guess_can_open(good.read_bytes()[:4096], "x") and not FITSParser.guess_can_open(b"\x89HDF", "x")


def test_headers_of_alike_extensions_are_fetched_ahead(tmp_path, monkeypatch):
    """20 detectors of one camera: their headers, 160 KB apart, come in a few requests, not one each."""
    import obstore

    values = RNG.random((200, 200)).astype(">f4")
    path = tmp_path / "camera.fits"
    fits.HDUList([fits.PrimaryHDU(), *[fits.ImageHDU(values, name=f"CCD{i}") for i in range(20)]]).writeto(path)
    calls: list = []
    for name in ("get", "get_range", "get_ranges"):
        real = getattr(obstore, name)
        monkeypatch.setattr(obstore, name, lambda *a, _real=real, _name=name, **k: calls.append(_name) or _real(*a, **k))
    group = parse(path)
    assert len(calls) <= 4, calls
    assert set(group.arrays) == {f"CCD{i}" for i in range(20)}
    monkeypatch.undo()
    np.testing.assert_array_equal(compute(group["CCD19"]), values)


def test_tile_compressed_scaled_images(tmp_path):
    """Unsigned (BZERO = 32768) and scaled, blanked compressed images: raw and decoded values are astropy's."""
    unsigned = RNG.integers(0, 65535, (32, 32)).astype("uint16")
    scaled = RNG.integers(-100, 100, (32, 32)).astype("int16")
    scaled[0, :4] = -32768
    blanked = fits.CompImageHDU(scaled, compression_type="GZIP_1", name="B", do_not_scale_image_data=True)
    blanked.header["BLANK"], blanked.header["BSCALE"] = -32768, 2.0
    path = tmp_path / "scaled.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(unsigned, compression_type="RICE_1", name="U"), blanked]
                 ).writeto(path)
    group = parse(path)
    assert group["B"].metadata.attributes["_FillValue"] == -32768
    with fits.open(path) as f:
        np.testing.assert_array_equal(decoded(group["U"]), f["U"].data)
        np.testing.assert_array_equal(decoded(group["B"]), f["B"].data)
        assert np.isnan(f["B"].data[0, :4]).all()
    with fits.open(path, do_not_scale_image_data=True) as f:
        np.testing.assert_array_equal(compute(group["B"]), f["B"].data)


def test_large_images_are_cut_into_row_bands(tmp_path, monkeypatch):
    import vzdask.parsers.fits as fits_parser

    monkeypatch.setattr(fits_parser, "IMAGE_CHUNK_BYTES", 4096)
    values = RNG.random((3, 30, 20)).astype(">f8")  # a plane is 4800 bytes, more than a band may hold
    square = RNG.integers(0, 9, (60, 100)).astype(">i2")  # 200-byte rows: bands of 20 rows, the most that fit
    path = tmp_path / "large.fits"
    fits.HDUList([fits.PrimaryHDU(values), fits.ImageHDU(square, name="SQ")]).writeto(path)
    group = parse(path)
    assert group["PRIMARY"].chunk_shape == (1, 30, 20)  # a plane per chunk: the smallest band
    assert group["SQ"].chunk_shape == (20, 100) and group["SQ"].manifest.count()["virtual"] == 3
    with fits.open(path) as f:
        np.testing.assert_array_equal(compute(group["PRIMARY"]), f[0].data)
        np.testing.assert_array_equal(compute(group["SQ"]), f["SQ"].data)


@pytest.mark.filterwarnings("ignore:.*TDIM:astropy.io.fits.verify.VerifyWarning")
def test_binary_table_columns_with_tdim(tmp_path):
    """TDIMn shapes columns as astropy does: C order, character columns' first axis the string length."""
    rows = 4
    columns = [
        fits.Column("cube", "24J", dim="(4,3,2)", array=np.arange(rows * 24).reshape(rows, 2, 3, 4)),
        fits.Column("names", "15A", dim="(5,3)", array=np.array([["ab", "cde", "f"], ["g", "", "hijkl"]] * 2)),
        fits.Column("one", "E", array=np.arange(rows, dtype="f4")),
        fits.Column("part", "10E", array=RNG.random((rows, 10)).astype("f4")),
        fits.Column("over", "2I", array=np.arange(rows * 2).reshape(rows, 2)),
        fits.Column("plain", "3D", array=RNG.random((rows, 3))),
    ]
    hdu = fits.BinTableHDU.from_columns(columns, name="T")
    hdu.header["TDIM3"] = "(1)"
    hdu.header["TDIM4"] = "(2,3)"  # fewer elements than the field holds: the first six
    hdu.header["TDIM5"] = "(3)"  # more than it holds: ignored, as by astropy
    path = tmp_path / "tdim.fits"
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(path)
    table = parse(path)["T"]
    assert table["cube"].shape == (rows, 2, 3, 4)
    assert table["cube"].metadata.dimension_names == ("row", "cube_tdim3", "cube_tdim2", "cube_tdim1")
    assert table["names"].shape == (rows, 3) and table["names"].metadata.dimension_names == ("row", "names_tdim2")
    assert table["plain"].metadata.dimension_names == ("row", "plain_repeat")
    assert table["over"].shape == (rows, 2)
    with fits.open(path) as f:
        data = f["T"].data
        for name in ("cube", "one", "part", "over", "plain"):
            assert compute(table[name]).shape == data[name].shape, name
            np.testing.assert_array_equal(compute(table[name]), data[name], err_msg=name)
        assert compute(table["names"]).astype(str).tolist() == data["names"].tolist()
    bad = tmp_path / "bad.fits"
    bad.write_bytes(path.read_bytes().replace(b"'(4,3,2) '", b"'(4;3,2) '"))
    with pytest.raises(ParseError, match=r"'/T': column 1 \('cube'\): TDIM1 '\(4;3,2\)' is not a list of axis"):
        parse(bad)
