"""TIFF / COG parser: files written here with rasterio (GDAL) and tifffile, values compared with both readers."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

rasterio = pytest.importorskip("rasterio")
tifffile = pytest.importorskip("tifffile")
rioxarray = pytest.importorskip("rioxarray")

import xarray as xr
from rasterio.transform import Affine, from_origin
from rasterio.windows import Window

import vzdask
from vzdask.errors import CFEncodingMismatchError, CombineError, ParseError, UnsupportedVariableWarning
from vzdask.parsers import TIFFParser, detect_parser
from vzdask.policy import InlinePolicy
from vzdask.registry import ObjectStoreRegistry
from vzdask.xarray import open_virtual_dataset

pytestmark = [pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning"),
              pytest.mark.filterwarnings("ignore::PendingDeprecationWarning:rioxarray")]

UTM = "EPSG:32633"


def _write(path, data, **profile):
    """A GeoTIFF written by GDAL (rasterio); ``data`` is (band, y, x)."""
    count, height, width = data.shape
    profile = {"driver": "GTiff", "width": width, "height": height, "count": count, "dtype": data.dtype,
               "transform": from_origin(500000, 4000000, 30, 30), "crs": UTM, **profile}
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return str(path)


def _values(path, dims):
    """What GDAL reads, laid out as the parser's ``image``: (y, x[, band]) or (band, y, x)."""
    with rasterio.open(path) as src:
        data = src.read()
    if dims == ("y", "x"):
        return data[0]
    if dims == ("y", "x", "band"):
        return np.moveaxis(data, 0, -1)
    return data


def _ramp(count, height, width, dtype):
    values = np.arange(count * height * width, dtype=np.float64).reshape(count, height, width)
    values = (values * 7) % 251 if np.dtype(dtype).kind in "iu" else np.sin(values / 50) * 1000
    return values.astype(dtype)


def _assert_image(path, compare_tifffile=True, **kwargs):
    vds = open_virtual_dataset(path, **kwargs)
    got = vds.vzdask.compute()["image"]
    np.testing.assert_array_equal(got.values, _values(path, got.dims))
    if compare_tifffile:
        np.testing.assert_array_equal(got.values, tifffile.imread(path, key=0))
    return vds


# --------------------------------------------------------------------------- #
# Compressions, predictors, layouts (GDAL writes, GDAL and tifffile read)
# --------------------------------------------------------------------------- #

CASES = {
    "none": dict(dtype="uint16", count=1),
    "deflate-p2-int16": dict(dtype="int16", count=2, compress="deflate", predictor=2),
    "lzw-p2-uint8": dict(dtype="uint8", count=3, compress="lzw", predictor=2),
    "zstd-p3-float32": dict(dtype="float32", count=2, compress="zstd", predictor=3),
    "deflate-p3-float64": dict(dtype="float64", count=1, compress="deflate", predictor=3),
    "packbits": dict(dtype="uint8", count=1, compress="packbits"),
    "lzma": dict(dtype="int32", count=1, compress="lzma"),
    "jpeg-gray": dict(dtype="uint8", count=1, compress="jpeg"),
    "jpeg-ycbcr": dict(dtype="uint8", count=3, compress="jpeg", photometric="ycbcr"),
    "jpeg-rgb": dict(dtype="uint8", count=3, compress="jpeg", photometric="rgb"),
    "webp": dict(dtype="uint8", count=3, compress="webp"),
    "webp-lossless": dict(dtype="uint8", count=4, compress="webp", webp_lossless=True),
    "lerc": dict(dtype="float32", count=1, compress="lerc"),
    "lerc-deflate": dict(dtype="float32", count=2, compress="lerc_deflate"),
    "lerc-zstd-lossy": dict(dtype="uint16", count=1, compress="lerc_zstd", max_z_error=2),
}


#: Planar (band-interleaved) variants: the multi-band cases GDAL writes band-interleaved (not WebP, not YCbCr).
PLANAR = sorted(name for name, case in CASES.items()
                if case["count"] > 1 and case.get("compress") != "webp" and case.get("photometric") != "ycbcr")


@pytest.mark.parametrize(("case", "layout"), [(c, "tiled") for c in sorted(CASES)] + [(c, "planar") for c in PLANAR])
def test_compressions_equal_gdal_and_tifffile(tmp_path, case, layout):
    options = dict(CASES[case])
    dtype, count = options.pop("dtype"), options.pop("count")
    if layout == "planar":
        options["interleave"] = "band"
    path = _write(tmp_path / "f.tif", _ramp(count, 75, 90, dtype), tiled=True, blockxsize=32, blockysize=32,
                  **options)
    # tifffile 2026.11 cannot decode band-interleaved RGB JPEG ("Bogus JPEG colorspace": it asks for RGB
    # per plane); GDAL can, and is the reference there
    vds = _assert_image(path, compare_tifffile=not (layout == "planar" and options.get("compress") == "jpeg"))
    expected_dims = {1: ("y", "x")}.get(count, ("band", "y", "x") if layout == "planar" else ("y", "x", "band"))
    assert vds["image"].dims == expected_dims
    assert vds["image"].data.chunk_shape[-2 if expected_dims[-1] == "band" else -1] == 32


@pytest.mark.parametrize("compress", [None, "deflate", "lzw", "zstd", "packbits"])
@pytest.mark.parametrize("interleave", ["pixel", "band"])
def test_strips_with_a_short_last_strip(tmp_path, compress, interleave):
    # 45 rows in strips of 8: the last strip holds 5 rows; padded and inlined, the values stay exact
    options = {"compress": compress} if compress else {}
    if compress in ("deflate", "lzw", "zstd"):
        options["predictor"] = 2
    path = _write(tmp_path / "s.tif", _ramp(2, 45, 37, "int16"), blockysize=8, interleave=interleave, **options)
    with tifffile.TiffFile(path) as tif:
        assert not tif.pages[0].is_tiled and tif.pages[0].rowsperstrip == 8
    vds = _assert_image(path)
    counts = vds["image"].data.manifest.count()
    assert counts["inlined"] == (2 if interleave == "band" else 1)


def test_lossy_short_last_strip_is_refused(tmp_path):
    path = _write(tmp_path / "j.tif", _ramp(1, 45, 40, "uint8"), compress="jpeg", blockysize=16)
    with pytest.raises(ParseError, match=r"j\.tif: IFD 0: the last strip holds 13 of 16 rows and its "
                                         r"compression JPEG \(7\) is lossy"):
        open_virtual_dataset(path)


# --------------------------------------------------------------------------- #
# Files tifffile writes: byte orders, BigTIFF, bits, pages, SubIFDs
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("byteorder", ["<", ">"])
@pytest.mark.parametrize("kind", ["float32-p3-tiles", "int16-p2-strips", "uint16-lzw-bigtiff", "float64-raw"])
def test_tifffile_layouts(tmp_path, byteorder, kind):
    height, width = 70, 45
    if kind == "float32-p3-tiles":
        data = _ramp(1, height, width, "float32")[0]
        options = dict(tile=(32, 32), compression="zlib", predictor=3)
    elif kind == "int16-p2-strips":
        data = _ramp(1, height, width, "int16")[0] - 100
        options = dict(rowsperstrip=16, compression="zlib", predictor=2)
    elif kind == "uint16-lzw-bigtiff":
        data = _ramp(1, height, width, "uint16")[0]
        options = dict(tile=(16, 16), compression="lzw", bigtiff=True)
    else:
        data = _ramp(1, height, width, "float64")[0]
        options = dict(rowsperstrip=9)
    path = str(tmp_path / "t.tif")
    tifffile.imwrite(path, data, byteorder=byteorder, metadata=None, **options)
    vds = open_virtual_dataset(path)
    np.testing.assert_array_equal(vds.vzdask.compute()["image"].values, data)
    assert vds["image"].dtype == data.dtype.newbyteorder("=")


def test_multipage_stack_and_mixed_pages(tmp_path):
    pages = _ramp(4, 40, 30, "uint16")
    path = str(tmp_path / "stack.tif")
    tifffile.imwrite(path, pages, photometric="minisblack", tile=(16, 16), compression="zlib", metadata=None)
    vds = open_virtual_dataset(path)
    assert vds["image"].dims == ("page", "y", "x") and vds.attrs["tiff_ifd"] == ["0", "1", "2", "3"]
    np.testing.assert_array_equal(vds.vzdask.compute()["image"].values, pages)

    mixed = str(tmp_path / "mixed.tif")
    other = _ramp(1, 20, 25, "float32")[0]
    with tifffile.TiffWriter(mixed) as tif:
        tif.write(pages[0], compression="zlib", metadata=None)
        tif.write(other, compression="zlib", predictor=3, metadata=None)
    np.testing.assert_array_equal(open_virtual_dataset(mixed).vzdask.compute()["image"].values, pages[0])
    np.testing.assert_array_equal(open_virtual_dataset(mixed, group="page_1").vzdask.compute()["image"].values, other)

    # a GeoTIFF's georeferencing (first IFD) is the image's and its overviews', not another page's
    geo = _write(tmp_path / "geo.tif", _ramp(1, 40, 30, "uint8"))
    with tifffile.TiffWriter(geo, append=True) as tif:
        tif.write(other, metadata=None)
    assert "x" in open_virtual_dataset(geo).variables
    page = open_virtual_dataset(geo, group="page_1")
    assert list(page.variables) == ["image"] and "transform" not in page.attrs


def test_subifd_pyramid_levels_are_overviews(tmp_path):
    base = _ramp(1, 64, 48, "uint8")[0]
    path = str(tmp_path / "pyramid.tif")
    with tifffile.TiffWriter(path) as tif:
        tif.write(base, subifds=2, tile=(16, 16), compression="zlib", metadata=None)
        tif.write(base[::2, ::2], subfiletype=1, tile=(16, 16), compression="zlib", metadata=None)
        tif.write(base[::4, ::4], subfiletype=1, tile=(16, 16), compression="zlib", metadata=None)
    store = TIFFParser()("file://" + path, ObjectStoreRegistry.default())
    assert sorted(store.group.groups) == ["overview_1", "overview_2"]
    assert store.group.groups["overview_2"].attributes["tiff_ifd"] == "0.1"
    for level, expected in ((1, base[::2, ::2]), (2, base[::4, ::4])):
        got = open_virtual_dataset(path, group=f"overview_{level}").vzdask.compute()["image"].values
        np.testing.assert_array_equal(got, expected)


def test_bilevel_and_12_bit_packed_samples(tmp_path):
    bits = (np.arange(50 * 37).reshape(50, 37) % 3) == 0
    path = str(tmp_path / "bits.tif")
    tifffile.imwrite(path, bits, compression="zlib", rowsperstrip=16)  # 1-bit, short last strip
    got = open_virtual_dataset(path).vzdask.compute()["image"]
    assert got.dtype == bool
    np.testing.assert_array_equal(got.values, tifffile.imread(path))
    np.testing.assert_array_equal(got.values, bits)

    twelve = str(tmp_path / "twelve.tif")
    values = (np.arange(30 * 21) % 4096).astype("uint16").reshape(30, 21)
    tifffile.imwrite(twelve, values, bitspersample=12, rowsperstrip=7)  # tifffile packs uncompressed only
    got = open_virtual_dataset(twelve).vzdask.compute()["image"].values
    np.testing.assert_array_equal(got, tifffile.imread(twelve))
    np.testing.assert_array_equal(got, values)


# --------------------------------------------------------------------------- #
# Cloud-Optimized GeoTIFF: overviews, masks, georeferencing
# --------------------------------------------------------------------------- #


@pytest.fixture(scope="module")
def cog(tmp_path_factory):
    """A COG with 3 uint16 bands, deflate + predictor 2, 2 overviews and an internal mask (GDAL's COG driver)."""
    path = str(tmp_path_factory.mktemp("cog") / "cog.tif")
    data = _ramp(3, 300, 500, "uint16")
    mask = np.zeros((300, 500), "uint8")
    mask[20:280, 30:460] = 255
    src = str(tmp_path_factory.getbasetemp() / "cog_src.tif")
    with rasterio.open(src, "w", driver="GTiff", width=500, height=300, count=3, dtype="uint16", crs=UTM,
                       transform=from_origin(500000, 4000000, 30, 30)) as dst:
        dst.write(data)
        dst.write_mask(mask)
    with rasterio.open(src) as source:
        profile = dict(source.profile, driver="COG", compress="deflate", predictor=2, blocksize=128,
                       overview_count=2)
        profile.pop("blockxsize", None), profile.pop("blockysize", None), profile.pop("tiled", None)
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(source.read())
            dst.write_mask(source.read_masks(1))
    return path


def test_cog_structure_values_and_masks(cog):
    with tifffile.TiffFile(cog) as tif:
        kinds = [(p.subfiletype, p.shape[:2]) for p in tif.pages]
    assert (4, (300, 500)) in kinds and (1, (150, 250)) in kinds  # GDAL wrote a mask and overviews
    store = TIFFParser()("file://" + cog, ObjectStoreRegistry.default())
    assert sorted(store.group.groups) == ["overview_1", "overview_2"]
    vds = _assert_image(cog)
    assert vds["image"].dims == ("y", "x", "band") and vds["image"].data.chunk_shape == (128, 128, 3)
    assert list(vds["band"].values) == [1, 2, 3]
    with rasterio.open(cog) as src:
        masks = src.read_masks(1)
    got = vds.vzdask.compute()
    np.testing.assert_array_equal(got["mask"].values.astype("uint8") * 255, masks)
    for level in (1, 2):
        ov = open_virtual_dataset(cog, group=f"overview_{level}").vzdask.compute()
        expected = rioxarray.open_rasterio(cog, overview_level=level - 1)
        np.testing.assert_array_equal(ov["image"].values, np.moveaxis(expected.values, 0, -1))
        np.testing.assert_array_equal(ov["x"].values, expected["x"].values)
        np.testing.assert_array_equal(ov["y"].values, expected["y"].values)
        with rasterio.open(cog, overview_level=level - 1) as src:
            np.testing.assert_array_equal(ov["mask"].values.astype("uint8") * 255, src.read_masks(1))


def test_cog_georeferencing_equals_rioxarray(cog):
    vds = open_virtual_dataset(cog)
    expected = rioxarray.open_rasterio(cog)
    np.testing.assert_array_equal(vds["x"].values, expected["x"].values)
    np.testing.assert_array_equal(vds["y"].values, expected["y"].values)
    ref = vds["spatial_ref"].attrs
    assert ref["GeoTransform"] == expected["spatial_ref"].attrs["GeoTransform"]
    from pyproj import CRS

    # pyproj's WKT2 (CF's choice) where GDAL writes WKT1: the same CRS
    assert CRS.from_wkt(ref["crs_wkt"]) == CRS.from_wkt(expected["spatial_ref"].attrs["crs_wkt"])
    assert ref["epsg"] == 32633 and ref["grid_mapping_name"] == "transverse_mercator"
    assert vds.attrs["transform"] == list(expected.rio.transform())[:6]
    assert vds.attrs["ModelPixelScale"] == [30.0, 30.0, 0.0]
    assert vds.attrs["GeoKeys"]["ProjectedCSTypeGeoKey"] == 32633
    computed = vds.vzdask.compute()
    assert computed.rio.crs == expected.rio.crs and computed.rio.transform() == expected.rio.transform()
    assert vds["x"].attrs["standard_name"] == "projection_x_coordinate"


def test_pixel_is_point_nodata_and_geographic(tmp_path):
    path = str(tmp_path / "point.tif")
    data = _ramp(1, 40, 50, "float32")
    data[0, :3, :4] = np.nan
    with rasterio.open(path, "w", driver="GTiff", width=50, height=40, count=1, dtype="float32", crs="EPSG:4326",
                       transform=from_origin(10, 50, 0.1, 0.1), nodata=float("nan")) as dst:
        dst.update_tags(AREA_OR_POINT="Point")
        dst.write(data)
    vds = open_virtual_dataset(path)
    assert vds.attrs["GeoKeys"]["GTRasterTypeGeoKey"] == 2
    expected = rioxarray.open_rasterio(path)
    np.testing.assert_array_equal(vds["x"].values, expected["x"].values)
    np.testing.assert_array_equal(vds["y"].values, expected["y"].values)
    assert np.isnan(vds["image"].attrs["_FillValue"]) and vds["x"].attrs["units"] == "degrees_east"
    np.testing.assert_array_equal(vds.vzdask.compute()["image"].values, data[0])


def test_integer_nodata_is_fill_value_and_sparse_tiles_read_as_it(tmp_path):
    path = str(tmp_path / "sparse.tif")
    with rasterio.open(path, "w", driver="GTiff", width=128, height=128, count=1, dtype="uint8", tiled=True,
                       blockxsize=64, blockysize=64, sparse_ok=True, nodata=7, compress="deflate",
                       transform=from_origin(0, 128, 1, 1), crs=UTM) as dst:
        dst.write(np.full((1, 64, 64), 3, "uint8"), window=Window(0, 0, 64, 64))
    vds = open_virtual_dataset(path)
    assert vds["image"].data.manifest.count() == {"virtual": 1, "inlined": 0, "missing": 3}
    assert vds["image"].attrs["_FillValue"] == 7 and vds["image"].data.metadata.fill_value == 7
    with rasterio.open(path) as src:
        np.testing.assert_array_equal(vds.vzdask.compute()["image"].values, src.read(1))


def test_gdal_band_metadata_as_rioxarray_gives_it(tmp_path):
    path = str(tmp_path / "scaled.tif")
    with rasterio.open(path, "w", driver="COG", width=600, height=600, count=2, dtype="int16", crs=UTM,
                       transform=from_origin(500000, 4000000, 30, 30), blocksize=256, overview_count=1) as dst:
        dst.scales, dst.offsets = (0.5, 0.5), (10, 10)
        dst.descriptions, dst.units = ("red", "nir"), ("K", "K")
        dst.write(_ramp(2, 600, 600, "int16"))
    expected = rioxarray.open_rasterio(path).attrs
    for vds in (open_virtual_dataset(path), open_virtual_dataset(path, group="overview_1")):
        attrs = vds["image"].attrs
        assert (attrs["scale_factor"], attrs["add_offset"]) == (expected["scale_factor"], expected["add_offset"])
        assert tuple(attrs["long_name"]) == expected["long_name"] and tuple(attrs["units"]) == expected["units"]
    unpacked = vzdask.open_mfdataset([path])["image"]  # CF-decoded with the scale and offset
    np.testing.assert_allclose(unpacked.values, _values(path, unpacked.dims) * 0.5 + 10)


def test_rotated_transform_gives_attributes_not_coordinates(tmp_path):
    transform = Affine(10, 2, 500000, 1, -10, 4000000)
    path = _write(tmp_path / "rot.tif", _ramp(1, 40, 50, "uint8"), transform=transform)
    vds = open_virtual_dataset(path)
    assert vds.attrs["transform"] == list(transform)[:6] and "ModelTransformation" in vds.attrs
    assert "x" not in vds.variables and "y" not in vds.variables
    assert vds.vzdask.compute().rio.transform() == transform


def test_plain_tiff_has_no_georeferencing(tmp_path):
    path = str(tmp_path / "plain.tif")
    tifffile.imwrite(path, _ramp(1, 20, 30, "uint8")[0], metadata=None)
    vds = open_virtual_dataset(path)
    assert list(vds.variables) == ["image"] and vds.attrs == {"tiff_ifd": "0"}


# --------------------------------------------------------------------------- #
# Detection, options, remote stores
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("options", [dict(byteorder="<"), dict(byteorder=">"), dict(bigtiff=True),
                                     dict(bigtiff=True, byteorder=">")])
def test_detected_from_the_head(tmp_path, options):
    path = str(tmp_path / "x.data")  # no .tif suffix: the first bytes decide
    tifffile.imwrite(path, np.zeros((4, 4), "uint8"), **options)
    parser = detect_parser("file://" + path, ObjectStoreRegistry.default())
    assert isinstance(parser, TIFFParser)
    assert not TIFFParser.guess_can_open(b"II*\x01", path) and not TIFFParser.guess_can_open(b"\x89HDF", path)


def test_inline_policy_drop_variables_and_parser_options(cog):
    vds = open_virtual_dataset(cog, inline=InlinePolicy(variables=["mask"]), drop_variables=["band"])
    assert "band" not in vds.variables
    assert vds["mask"].data.manifest.count()["virtual"] == 0 and vds["image"].data.manifest.count()["inlined"] == 0
    np.testing.assert_array_equal(vds.vzdask.compute()["image"].values, _values(cog, ("y", "x", "band")))
    with pytest.raises(ParseError, match=r"cog\.tif: no group 'overview_9'; the groups are \['overview_1', "):
        open_virtual_dataset(cog, group="overview_9")
    assert "TIFFParser" in repr(TIFFParser(group="overview_1"))


def test_unsupported_compression_names_file_ifd_and_compression(tmp_path):
    path = str(tmp_path / "j2k.tif")
    tifffile.imwrite(path, _ramp(1, 40, 40, "uint16")[0], compression="jpeg2000", tile=(32, 32))
    with pytest.raises(ParseError, match=r"j2k\.tif: IFD 0: compression JPEG 2000 \(34712\) has no zarr codec"):
        open_virtual_dataset(path)
    with pytest.warns(UnsupportedVariableWarning, match="JPEG 2000"):
        vds = open_virtual_dataset(path, on_unsupported="warn")
    assert "image" not in vds.variables

    # an overview page that cannot be read does not stop the image
    mixed = str(tmp_path / "mixed.tif")
    with tifffile.TiffWriter(mixed) as tif:
        tif.write(_ramp(1, 40, 40, "uint16")[0], compression="zlib", metadata=None)
        tif.write(_ramp(1, 20, 20, "uint16")[0], subfiletype=1, compression="jpeg2000", metadata=None)
    with pytest.raises(ParseError, match=r"'/overview_1/image': .*IFD 1: compression JPEG 2000"):
        open_virtual_dataset(mixed)
    with pytest.warns(UnsupportedVariableWarning):
        open_virtual_dataset(mixed, on_unsupported="warn")


def test_not_a_tiff_and_truncated(tmp_path):
    path = tmp_path / "bad.tif"
    path.write_bytes(b"II*\x00" + b"\xff" * 12)
    with pytest.raises(ParseError, match=r"bad\.tif: the TIFF file has no image"):
        open_virtual_dataset(str(path))
    path.write_bytes(b"MM\x00*\x00")
    with pytest.raises(ParseError, match=r"bad\.tif: not a readable TIFF file"):
        open_virtual_dataset(str(path))


def test_s3_equals_local(cog, s3_bucket, s3_env):
    bucket, client = s3_bucket
    with open(cog, "rb") as f:
        client.put_object(Bucket=bucket, Key="cogs/scene.tif", Body=f.read())
    url = f"s3://{bucket}/cogs/scene.tif"
    remote = open_virtual_dataset(url)
    assert remote["image"].data.manifest.urls == (url,)
    xr.testing.assert_identical(remote.vzdask.compute(), open_virtual_dataset(cog).vzdask.compute())
    client.put_object(Bucket=bucket, Key="cogs/again.tif", Body=open(cog, "rb").read())
    stack = vzdask.open_virtual_mfdataset([url, f"s3://{bucket}/cogs/again.tif"], concat_dim="time", combine="nested")
    assert stack["image"].data.manifest.urls == (url, f"s3://{bucket}/cogs/again.tif")  # the scene path, remotely
    local = vzdask.open_virtual_mfdataset([cog, cog], concat_dim="time", combine="nested")
    xr.testing.assert_identical(stack.vzdask.compute(), local.vzdask.compute())


# --------------------------------------------------------------------------- #
# Many COGs -> one dataset
# --------------------------------------------------------------------------- #


def _scene(path, seed, origin=(500000, 4000000), crs=UTM, size=(200, 300)):
    data = np.random.default_rng(seed).integers(0, 1000, (1, *size)).astype("int16")
    profile = dict(driver="COG", compress="deflate", predictor=2, blocksize=64, nodata=-1, crs=crs,
                   transform=from_origin(*origin, 30, 30))
    return _write(path, data, **profile), data[0]


def test_many_cogs_stack_along_a_new_dimension(tmp_path):
    scenes = [_scene(tmp_path / f"s{i}.tif", i) for i in range(3)]
    files = [p for p, _ in scenes]
    ds = vzdask.open_virtual_mfdataset(files, concat_dim="time", combine="nested")
    assert ds["image"].dims == ("time", "y", "x")
    np.testing.assert_array_equal(ds.vzdask.compute()["image"].values, np.stack([d for _, d in scenes]))
    expected = xr.concat([rioxarray.open_rasterio(f).squeeze("band", drop=True) for f in files], dim="time")
    np.testing.assert_array_equal(ds["x"].values, expected["x"].values)
    threads = vzdask.open_virtual_mfdataset(files, concat_dim="time", combine="nested", parallel="threads")
    xr.testing.assert_identical(threads.vzdask.compute(), ds.vzdask.compute())
    analysis = vzdask.open_mfdataset(files, concat_dim="band", combine="nested")
    np.testing.assert_array_equal(analysis["image"].values, np.stack([d for _, d in scenes]))


def test_many_cogs_on_a_cluster(tmp_path, dask_client):
    scenes = [_scene(tmp_path / f"c{i}.tif", i) for i in range(4)]
    ds = vzdask.open_virtual_mfdataset([p for p, _ in scenes], concat_dim="time", combine="nested",
                                       parallel=dask_client)
    np.testing.assert_array_equal(ds.vzdask.compute()["image"].values, np.stack([d for _, d in scenes]))
    assert ds["spatial_ref"].attrs["epsg"] == 32633


def test_cogs_on_different_grids_are_refused_naming_both_files(tmp_path):
    first, _ = _scene(tmp_path / "a.tif", 0)
    shifted, _ = _scene(tmp_path / "shifted.tif", 1, origin=(500030, 4000000))
    other_crs, _ = _scene(tmp_path / "utm34.tif", 2, crs="EPSG:32634")
    with pytest.raises(CFEncodingMismatchError, match=r"grid mapping 'spatial_ref' differs between .*a\.tif and "
                                                      r".*shifted\.tif: GeoTransform .*different grids or in "):
        vzdask.open_virtual_mfdataset([first, shifted], concat_dim="time", combine="nested")
    with pytest.raises(CFEncodingMismatchError, match=r"a\.tif and .*utm34\.tif: crs_wkt"):
        vzdask.open_virtual_mfdataset([first, other_crs], concat_dim="time", combine="nested")
    # without a CRS the transform still tells the grids apart; without spatial_ref, the x coordinates do
    plain_a = _write(tmp_path / "pa.tif", _ramp(1, 20, 20, "uint8"), crs=None)
    plain_b = _write(tmp_path / "pb.tif", _ramp(1, 20, 20, "uint8"), crs=None,
                     transform=from_origin(500030, 4000000, 30, 30))
    assert "crs_wkt" not in open_virtual_dataset(plain_a)["spatial_ref"].attrs
    with pytest.raises(CFEncodingMismatchError, match=r"pa\.tif and .*pb\.tif: GeoTransform"):
        vzdask.open_virtual_mfdataset([plain_a, plain_b], concat_dim="time", combine="nested")
    with pytest.raises(CombineError, match=r"coordinate 'x' differs between .*pa\.tif .* and .*pb\.tif"):
        vzdask.open_virtual_mfdataset([plain_a, plain_b], concat_dim="time", combine="nested",
                                      drop_variables=["spatial_ref"])


def _open_both(files, monkeypatch, **kwargs):
    """``(scenes, file by file, stacked)``: with the TIFF scene path, without it, and whether it stacked."""
    from vzdask import fast_combine, mfdataset

    used = []

    def spy(*args):
        result = fast_combine.stack_tiff_scenes(*args)
        used.append(result is not None)
        return result

    kwargs = {"combine": "nested", "concat_dim": "time", **kwargs}
    monkeypatch.setattr(mfdataset, "stack_tiff_scenes", spy)
    fast = vzdask.open_virtual_mfdataset(files, **kwargs)
    monkeypatch.setattr(mfdataset, "stack_tiff_scenes", lambda *args: None)
    slow = vzdask.open_virtual_mfdataset(files, **kwargs)
    return fast, slow, used == [True]


def _assert_same(fast, slow):
    assert list(fast.variables) == list(slow.variables) and list(fast.coords) == list(slow.coords)
    assert fast.attrs == slow.attrs and dict(fast.sizes) == dict(slow.sizes) and list(fast.xindexes) == list(slow.xindexes)
    for name, want in slow.variables.items():
        got = fast.variables[name]
        assert got.dims == want.dims and got.dtype == want.dtype and got.attrs == want.attrs, name
        assert got.encoding.keys() == want.encoding.keys(), name
        if isinstance(want.data, vzdask.ManifestArray):
            assert isinstance(got.data, vzdask.ManifestArray) and got.data.equals(want.data), name
        else:
            np.testing.assert_array_equal(got.values, want.values, err_msg=name)


@pytest.mark.parametrize("options", [{}, {"drop_variables": ["spatial_ref"]}, {"loadable_variables": ["x", "y"]},
                                     {"parser": TIFFParser()}, {"decode_times": False}])
def test_scenes_of_one_grid_stack_from_their_chunk_tables_as_file_by_file(cog, tmp_path, monkeypatch, options):
    """COGs of one layout and grid (mask, overviews): the first parsed, the others' chunk tables read; the same Dataset."""
    import shutil

    files = [shutil.copy(cog, tmp_path / f"copy{i}.tif") for i in range(3)]
    fast, slow, stacked = _open_both(files, monkeypatch, **options)
    assert stacked
    _assert_same(fast, slow)
    assert fast["image"].dims == ("time", "y", "x", "band") and fast["mask"].dims == ("time", "y", "x")
    assert fast["image"].data.manifest.urls == tuple(f"file://{f}" for f in files)
    with rasterio.open(cog) as src:
        expected = np.moveaxis(src.read(), 0, -1)
        masks = src.read_masks(1)
    got = fast.vzdask.compute()
    np.testing.assert_array_equal(got["image"].values, np.stack([expected] * 3))
    np.testing.assert_array_equal(got["mask"].values.astype("uint8") * 255, np.stack([masks] * 3))


def test_scenes_with_their_own_values_and_a_missing_tile(tmp_path, monkeypatch):
    scenes = [_scene(tmp_path / f"s{i}.tif", i) for i in range(4)]
    sparse = _write(tmp_path / "sparse.tif", np.full((1, 200, 300), -1, "int16"), driver="COG", compress="deflate",
                    predictor=2, blocksize=64, nodata=-1, crs=UTM, transform=from_origin(500000, 4000000, 30, 30),
                    sparse_ok=True)
    files = [p for p, _ in scenes] + [sparse]
    fast, slow, stacked = _open_both(files, monkeypatch)
    assert stacked and fast["image"].data.manifest.count()["missing"] > 0
    _assert_same(fast, slow)
    expected = np.stack([d for _, d in scenes] + [np.full((200, 300), -1, "int16")])
    np.testing.assert_array_equal(fast.vzdask.compute()["image"].values, expected)
    analysis = vzdask.open_mfdataset(files, concat_dim="time", combine="nested")  # reads through the same stack
    np.testing.assert_array_equal(analysis["image"].values, np.where(expected == -1, np.nan, expected))


def test_scenes_that_differ_are_opened_file_by_file(cog, tmp_path, monkeypatch):
    """Another grid, size or layout, a short last strip, another format: the scene path steps aside."""
    first, _ = _scene(tmp_path / "a.tif", 0)
    bigger, _ = _scene(tmp_path / "big.tif", 1, size=(256, 300))
    deflate = _write(tmp_path / "strips_a.tif", _ramp(1, 50, 40, "uint16"), compress="deflate", blockysize=16)
    deflate_b = _write(tmp_path / "strips_b.tif", _ramp(1, 50, 40, "uint16")[:, ::-1].copy(), compress="deflate",
                       blockysize=16)
    from vzdask import fast_combine

    registry = ObjectStoreRegistry.default()
    key = TIFFParser().scene_table(f"file://{first}", registry).key
    assert TIFFParser().scene_table(f"file://{bigger}", registry).key != key
    assert TIFFParser().scene_table(f"file://{deflate}", registry) is None  # 50 rows in strips of 16: padded
    for files in ([first, bigger], [deflate, deflate_b]):
        try:
            fast, slow, stacked = _open_both(files, monkeypatch)
        except (CombineError, ValueError) as err:  # refused: the file-by-file path's own error
            assert "big.tif" in str(err)
            continue
        assert not stacked
        _assert_same(fast, slow)
    loaded_mask = _open_both([cog, cog], monkeypatch, loadable_variables=["x", "y", "mask"])
    assert not loaded_mask[2]  # a loaded data variable is xarray's to stack
    _assert_same(*loaded_mask[:2])
    options = {"inline": None, "parser": None, "registry": registry}
    assert fast_combine.stack_tiff_scenes([first, first], {**options, "group": "overview_1"}, "time",
                                          dict(fast_combine.HANDLED)) is None
    assert fast_combine.stack_tiff_scenes([first, first], options, "y", dict(fast_combine.HANDLED)) is None


# --------------------------------------------------------------------------- #
# Writing references and reading them back with other readers
# --------------------------------------------------------------------------- #

WRITER_CASES = {
    "deflate-p2": dict(dtype="int16", count=2, compress="deflate", predictor=2),
    "zstd-p3": dict(dtype="float32", count=1, compress="zstd", predictor=3),
    "lzw": dict(dtype="uint8", count=1, compress="lzw"),
    "jpeg": dict(dtype="uint8", count=3, compress="jpeg", photometric="ycbcr"),
    "lerc-zstd": dict(dtype="float32", count=1, compress="lerc_zstd"),
    "webp": dict(dtype="uint8", count=3, compress="webp"),
}


@pytest.mark.parametrize("case", sorted(WRITER_CASES))
def test_kerchunk_json_read_by_fsspec_and_zarr(tmp_path, case):
    import fsspec

    options = dict(WRITER_CASES[case])
    dtype, count = options.pop("dtype"), options.pop("count")
    path = _write(tmp_path / "w.tif", _ramp(count, 50, 70, dtype), tiled=True, blockxsize=32, blockysize=32,
                  **options)
    vds = open_virtual_dataset(path)
    out = str(tmp_path / "refs.json")
    vds.vzdask.to_kerchunk(out, format="json")
    refs = json.loads(open(out).read())
    assert json.loads(refs["refs"]["image/.zarray"])["compressor"]["id"]
    mapper = fsspec.filesystem("reference", fo=out).get_mapper("")
    back = xr.open_dataset(mapper, engine="zarr", consolidated=False, zarr_format=2, mask_and_scale=False)
    expected = _values(path, vds["image"].dims)
    np.testing.assert_array_equal(back["image"].values, expected)
    np.testing.assert_array_equal(back["x"].values, vds["x"].values)
    np.testing.assert_array_equal(open_virtual_dataset(out).vzdask.compute()["image"].values, expected)


def test_kerchunk_json_and_parquet_of_a_stack_with_a_padded_strip_and_masks(cog, tmp_path):
    import fsspec

    files = [_write(tmp_path / f"p{i}.tif", _ramp(1, 45, 30, "uint16") + i, blockysize=8, compress="deflate",
                    predictor=2) for i in range(2)]
    ds = vzdask.open_virtual_mfdataset(files, concat_dim="time", combine="nested")
    out = str(tmp_path / "stack.json")
    ds.vzdask.to_kerchunk(out, format="json")
    back = xr.open_dataset(fsspec.filesystem("reference", fo=out).get_mapper(""), engine="zarr",
                           consolidated=False, zarr_format=2, mask_and_scale=False)
    np.testing.assert_array_equal(back["image"].values, np.stack([_values(f, ("y", "x")) for f in files]))

    import pandas as pd
    from fsspec.implementations.reference import LazyReferenceMapper

    masked = open_virtual_dataset(cog)
    for fmt in ("json", "parquet"):
        out = str(tmp_path / f"cog.{fmt}")
        masked.vzdask.to_kerchunk(out, format=fmt)
        # Parquet as the other tests read it: fsspec's lazy mapper with pyarrow and pandas' old string inference
        with pd.option_context("future.infer_string", False):
            fo = LazyReferenceMapper(out, fs=fsspec.filesystem("file"), engine="pyarrow") if fmt == "parquet" else out
            mapper = fsspec.filesystem("reference", fo=fo, remote_protocol="file").get_mapper("")
            back = xr.open_dataset(mapper, engine="zarr", consolidated=False, zarr_format=2,
                                   mask_and_scale=False).load()
        with rasterio.open(cog) as src:
            np.testing.assert_array_equal(back["mask"].values.astype("uint8") * 255, src.read_masks(1))
        np.testing.assert_array_equal(back["image"].values, _values(cog, ("y", "x", "band")))


def test_icechunk_read_back_by_icechunk_and_xarray(cog, tmp_path):
    import shutil

    from icechunk_repos import Repo

    data_dir = tmp_path / "data"
    data_dir.mkdir()
    path = str(data_dir / "cog.tif")
    shutil.copy(cog, path)
    vds = open_virtual_dataset(path)
    repo = Repo(tmp_path / "repo", data_dir)
    vds.vzdask.to_icechunk(repo.writable(), commit="cog")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        back = repo.read()
    np.testing.assert_array_equal(back["image"].values, _values(path, ("y", "x", "band")))
    np.testing.assert_array_equal(back["x"].values, rioxarray.open_rasterio(path)["x"].values)
    assert back["spatial_ref"].attrs["GeoTransform"] == vds["spatial_ref"].attrs["GeoTransform"]
