"""Many TIFF scenes stacked from their chunk tables: the first file's SceneTemplate, files alike matched by bytes.

Files written here with GDAL (rasterio) and tifffile; every matched file's tables compared with tifffile's
offsets and byte counts of the same file, every stack with the file-by-file open and the pixel values.
"""

from __future__ import annotations

import shutil
import warnings

import numpy as np
import pytest

rasterio = pytest.importorskip("rasterio")
tifffile = pytest.importorskip("tifffile")

import xarray as xr
from rasterio.transform import from_origin

import vzdask
from vzdask import fast_combine, mfdataset
from vzdask.errors import CFEncodingMismatchError, CombineError, FileOpenError
from vzdask.parsers import TIFFParser
from vzdask.registry import ObjectStoreRegistry

pytestmark = [pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")]

UTM = "EPSG:32633"


def _gdal(path, data, **profile):
    """A GeoTIFF written by GDAL; ``data`` is (band, y, x)."""
    count, height, width = data.shape
    profile = {"driver": "COG", "width": width, "height": height, "count": count, "dtype": data.dtype, "crs": UTM,
               "transform": from_origin(500000, 4000000, 30, 30), **profile}
    mask = profile.pop("mask", None)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        if mask is not None:
            dst.write_mask(mask)
    return str(path)


def _noise(seed, shape, dtype):
    values = np.random.default_rng(seed).normal(500, 200, shape)
    return values.clip(0, 250 if np.dtype(dtype) == np.uint8 else None).astype(dtype)


def _masked_cog(path, seed):
    """A COG with a mask and overviews (the mask written into the source GTiff, as GDAL's COG driver needs)."""
    data = _noise(seed, (3, 300, 400), "uint16")
    mask = np.zeros((300, 400), "uint8")
    mask[10 + seed : 280, 20:390 - seed] = 255
    source = _gdal(str(path) + ".src.tif", data, driver="GTiff", mask=mask)
    with rasterio.open(source) as src:
        profile = dict(src.profile, driver="COG", compress="deflate", predictor=2, blocksize=128, overview_count=2)
        for key in ("blockxsize", "blockysize", "tiled"):
            profile.pop(key, None)
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(src.read())
            dst.write_mask(src.read_masks(1))
    return str(path)


#: Collections of one layout: ``make(path, seed)`` writes scene ``seed`` (its own values, so its own byte counts).
LAYOUTS = {
    "gdal-cog-mask-overviews": _masked_cog,
    "gdal-strips-lzw": lambda path, seed: _gdal(path, _noise(seed, (1, 64, 50), "int16"), driver="GTiff",
                                                compress="lzw", blockysize=16),
    "gdal-planar-zstd-float": lambda path, seed: _gdal(path, _noise(seed, (2, 100, 130), "float32"), driver="GTiff",
                                                       compress="zstd", predictor=3, interleave="band", tiled=True,
                                                       blockxsize=64, blockysize=64),
    "gdal-webp": lambda path, seed: _gdal(path, _noise(seed, (3, 200, 300), "uint8"), compress="webp", blocksize=128,
                                          quality=100),
    "tifffile-bigtiff-big-endian": lambda path, seed: tifffile.imwrite(
        path, _noise(seed, (96, 80), "uint16"), bigtiff=True, byteorder=">", tile=(32, 32), compression="zlib")
    or str(path),
    "tifffile-one-tile": lambda path, seed: tifffile.imwrite(  # one offset and byte count: inside the IFD entry
        path, _noise(seed, (32, 48), "float32"), tile=(32, 48), compression="zlib", predictor=True) or str(path),
}


def _pieces(path, template):
    """The template's byte ranges of a file, read with plain Python."""
    with open(path, "rb") as f:
        out = []
        for start, length in template.ranges:
            f.seek(start)
            out.append(f.read(length))
    return out


def _tifffile_tables(path):
    """tifffile's offsets and byte counts of the first IFD and of its mask (if any)."""
    with tifffile.TiffFile(path) as tif:
        image = tif.pages[0]
        masks = [p for p in tif.pages if p.subfiletype == 4 and p.shape[:2] == image.shape[:2]]
        pages = {"image": image, **({"mask": masks[0]} if masks else {})}
        return {name: (np.asarray(p.dataoffsets, np.uint64), np.asarray(p.databytecounts, np.uint64))
                for name, p in pages.items()}


def _open_both(files, **kwargs):
    """``(stacked from the tables, file by file, how many files tifffile parsed for the stack)``."""
    parsed = []
    scene_table = TIFFParser.scene_table

    def counting(self, url, registry, **options):
        parsed.append(url)
        return scene_table(self, url, registry, **options)

    kwargs = {"combine": "nested", "concat_dim": "time", **kwargs}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(TIFFParser, "scene_table", counting)
        fast = vzdask.open_virtual_mfdataset(files, **kwargs)
        patch.setattr(mfdataset, "stack_tiff_scenes", lambda *args: None)
        slow = vzdask.open_virtual_mfdataset(files, **kwargs)
    return fast, slow, len(parsed)


def _assert_same(fast, slow):
    assert list(fast.variables) == list(slow.variables) and fast.attrs == slow.attrs
    assert dict(fast.sizes) == dict(slow.sizes)
    for name, want in slow.variables.items():
        got = fast.variables[name]
        assert got.dims == want.dims and got.dtype == want.dtype and got.attrs == want.attrs, name
        if isinstance(want.data, vzdask.ManifestArray):
            assert isinstance(got.data, vzdask.ManifestArray) and got.data.equals(want.data), name
        else:
            np.testing.assert_array_equal(got.values, want.values, err_msg=name)


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_files_alike_match_the_template_with_tifffiles_tables(tmp_path, layout):
    files = [LAYOUTS[layout](tmp_path / f"scene{i}.tif", i) for i in range(4)]
    registry = ObjectStoreRegistry.default()
    first = TIFFParser().scene_table(f"file://{files[0]}", registry, template=True)
    template = first.template
    assert template is not None
    for path in files:
        table = template.match(_pieces(path, template), path)
        assert table is not None and table.key == first.key
        expected = _tifffile_tables(path)
        assert sorted(table.tables) == sorted(expected)
        for name, (offsets, lengths) in table.tables.items():
            np.testing.assert_array_equal(offsets.ravel(), expected[name][0])
            np.testing.assert_array_equal(lengths.ravel(), expected[name][1])
        parsed = TIFFParser().scene_table(f"file://{path}", registry)
        assert parsed.key == table.key
        for name in table.tables:
            for got, want in zip(table.tables[name], parsed.tables[name]):
                np.testing.assert_array_equal(got, want)
    assert len({tuple(TIFFParser().scene_table(f"file://{p}", registry).tables["image"][1].ravel())
                for p in files}) > 1  # the scenes differ in their byte counts

    fast, slow, parsed = _open_both(files)
    assert parsed == 1  # only the first file went through tifffile
    _assert_same(fast, slow)
    got = fast.vzdask.compute()["image"]
    for i, path in enumerate(files):
        want = tifffile.imread(path, key=0)
        if got.dims[1:] == ("band", "y", "x") and want.ndim == 3 and want.shape[-1] == got.shape[1]:
            want = np.moveaxis(want, -1, 0)  # tifffile gives a planar file's samples last
        np.testing.assert_array_equal(got.values[i], want)


def test_a_tile_read_by_tifffile_makes_no_template_and_the_stack_parses(tmp_path):
    """JPEG: tifffile reads the first tile's bytes (JFIF or not), whose place the offsets give: every file parsed."""
    files = [_gdal(tmp_path / f"j{i}.tif", _noise(i, (3, 64, 64), "uint8"), driver="GTiff", compress="jpeg",
                   tiled=True, blockxsize=32, blockysize=32)
             for i in range(3)]
    table = TIFFParser().scene_table(f"file://{files[0]}", ObjectStoreRegistry.default(), template=True)
    assert table is not None and table.template is None
    fast, slow, parsed = _open_both(files)
    assert parsed == 3
    _assert_same(fast, slow)
    assert fast["image"].dims == ("time", "y", "x", "band")


def test_files_laid_out_otherwise_are_parsed_and_stacked_alike(tmp_path):
    """A scene whose bytes differ outside the grid and layout (a longer ImageDescription): parsed, same stack."""
    files = [tmp_path / f"t{i}.tif" for i in range(4)]
    for i, path in enumerate(files):
        tifffile.imwrite(path, _noise(i, (64, 64), "uint16"), tile=(32, 32), compression="zlib",
                         description="scene" + "!" * (i == 2), metadata=None)
    files = [str(p) for p in files]
    fast, slow, parsed = _open_both(files)
    assert parsed == 2  # the first, and the one laid out otherwise
    _assert_same(fast, slow)
    np.testing.assert_array_equal(fast.vzdask.compute()["image"].values, np.stack([tifffile.imread(f) for f in files]))


def _scene(path, seed, **profile):
    data = np.random.default_rng(seed).integers(0, 1000, (1, 100, 120)).astype(profile.pop("dtype", "int16"))
    return _gdal(path, data, **{"driver": "GTiff", "compress": "deflate", "predictor": 2, "tiled": True,
                                "blockxsize": 64, "blockysize": 64, "nodata": -1, **profile})


@pytest.mark.parametrize(("name", "profile", "error", "message"), [
    ("shifted", {"transform": from_origin(500030, 4000000, 30, 30)}, CFEncodingMismatchError,
     r"spatial_ref' differs between .*a\.tif and .*shifted\.tif: GeoTransform"),
    ("utm34", {"crs": "EPSG:32634"}, CFEncodingMismatchError, r"between .*a\.tif and .*utm34\.tif: crs_wkt"),
    ("lzw", {"compress": "lzw", "predictor": 1}, CombineError,
     r"cannot stack .*a\.tif and .*lzw\.tif along a new dimension 'time': the codecs of their 'image' differs "
     r"\(\[Delta.*Zlib.* in .*a\.tif vs \[BytesCodec.*Lzw\(\)\] in .*lzw\.tif\)"),
    ("int32", {"dtype": "int32"}, CombineError, r"a\.tif and .*int32\.tif .*: the dtype of their 'image' differs"),
    ("tiles32", {"blockxsize": 32, "blockysize": 32}, CombineError,
     r"a\.tif and .*tiles32\.tif .*the chunk shape of their 'image' differs \(\(64, 64\) in .*a\.tif vs \(32, 32\)"),
])
def test_a_scene_on_another_grid_or_codec_is_refused_naming_both_files(tmp_path, name, profile, error, message):
    files = [_scene(tmp_path / "a.tif", 0), _scene(tmp_path / "b.tif", 1), _scene(tmp_path / f"{name}.tif", 2, **profile)]
    registry = ObjectStoreRegistry.default()
    template = TIFFParser().scene_table(f"file://{files[0]}", registry, template=True).template
    assert template.match(_pieces(files[1], template), files[1]) is not None
    assert template.match(_pieces(files[2], template), files[2]) is None  # its bytes differ where tifffile read
    with pytest.raises(error, match=message):
        vzdask.open_virtual_mfdataset(files, concat_dim="time", combine="nested")
    if error is CombineError:  # for analysis each file is decoded with its own codecs
        ds = vzdask.open_mfdataset(files, concat_dim="time", combine="nested")
        np.testing.assert_array_equal(ds["image"].values[2], tifffile.imread(files[2]))  # (no -1: no NaN)
        loaded = vzdask.open_virtual_mfdataset(files, concat_dim="time", combine="nested",
                                               loadable_variables=["x", "y", "image"])
        np.testing.assert_array_equal(loaded["image"].values[2], tifffile.imread(files[2]))


def test_a_truncated_scene_is_parsed_as_file_by_file(tmp_path):
    """Cut inside its IFD: the parse names it; cut in its tag values: tifffile drops a tag, the stack is file by file's."""
    files = [_scene(tmp_path / "a.tif", 0), _scene(tmp_path / "b.tif", 1)]
    whole = open(files[1], "rb").read()
    registry = ObjectStoreRegistry.default()
    template = TIFFParser().scene_table(f"file://{files[0]}", registry, template=True).template
    for size in (100, 400):
        cut = tmp_path / f"cut{size}.tif"
        cut.write_bytes(whole[:size])
        assert template.match(_pieces(cut, template), str(cut)) is None  # short pieces
        assert template.match([b"\0" * n for _, n in template.ranges], str(cut)) is None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if size == 100:
                with pytest.raises(FileOpenError, match=r"cut100\.tif: ParseError: .*not a readable TIFF"):
                    vzdask.open_virtual_mfdataset([*files, str(cut)], concat_dim="time", combine="nested")
                continue
            fast, slow, parsed = _open_both([*files, str(cut)])
        assert parsed == 2
        _assert_same(fast, slow)


def test_remote_scenes_match_the_template(tmp_path, s3_bucket, s3_env):
    bucket, client = s3_bucket
    files = [_masked_cog(tmp_path / f"r{i}.tif", i) for i in range(5)]
    urls = []
    for i, path in enumerate(files):
        client.put_object(Bucket=bucket, Key=f"scenes/r{i}.tif", Body=open(path, "rb").read())
        urls.append(f"s3://{bucket}/scenes/r{i}.tif")
    remote, slow, parsed = _open_both(urls)
    assert parsed == 1
    _assert_same(remote, slow)
    assert remote["image"].data.manifest.urls == tuple(urls)
    local = vzdask.open_virtual_mfdataset(files, concat_dim="time", combine="nested")
    for name in ("image", "mask"):
        np.testing.assert_array_equal(remote[name].data.manifest.offsets, local[name].data.manifest.offsets)
        np.testing.assert_array_equal(remote[name].data.manifest.lengths, local[name].data.manifest.lengths)
    xr.testing.assert_identical(remote.vzdask.compute(), local.vzdask.compute())
    # one scene missing remotely: its read fails, its parse names it
    with pytest.raises(Exception, match=r"scenes/gone\.tif"):
        vzdask.open_virtual_mfdataset([*urls[:2], f"s3://{bucket}/scenes/gone.tif"], concat_dim="time",
                                      combine="nested")


def test_copies_of_one_file_and_a_single_reference_layout(cog_copies):
    """The same file given twice, and copies: one url per file in the manifest, as file by file."""
    files = cog_copies
    stack = vzdask.open_virtual_mfdataset([files[0], files[0], files[1]], concat_dim="time", combine="nested")
    assert stack["image"].data.manifest.urls == (f"file://{files[0]}", f"file://{files[1]}")
    values = stack.vzdask.compute()["image"].values
    np.testing.assert_array_equal(values[0], values[1])
    np.testing.assert_array_equal(values[1], values[2])
    assert fast_combine.SCENE_READ_AHEAD >= 1


@pytest.fixture
def cog_copies(tmp_path):
    first = _masked_cog(tmp_path / "orig.tif", 0)
    return [first, shutil.copy(first, tmp_path / "copy.tif")]


def test_no_template_where_tifffile_warns_or_the_name_says_ndpi(tmp_path, caplog):
    """A tag whose value lies past the end (tifffile drops it, warning): the size would matter, so every file parses."""
    import logging
    import struct

    files = []
    for i in range(3):
        path = tmp_path / f"w{i}.tif"
        tifffile.imwrite(path, _noise(i, (64, 64), "uint16"), tile=(32, 32), compression="zlib",
                         extratags=[(65000, "s", 0, "x" * 40, True)])
        with tifffile.TiffFile(path) as tif:
            entry = tif.pages[0].tags[65000].offset
        with open(path, "r+b") as f:  # the value's offset field, pointed past the end of the file
            f.seek(entry + 8)
            f.write(struct.pack("<I", 10**8))
        files.append(str(path))
    registry = ObjectStoreRegistry.default()
    with caplog.at_level(logging.WARNING, logger="tifffile"):
        table = TIFFParser().scene_table(f"file://{files[0]}", registry, template=True)
    assert "invalid value offset" in caplog.text
    assert table is not None and table.template is None
    fast, slow, parsed = _open_both(files)
    assert parsed == 3
    _assert_same(fast, slow)

    plain = [_scene(tmp_path / "p.tif", 0), _scene(tmp_path / "q.tif", 1)]
    template = TIFFParser().scene_table(f"file://{plain[0]}", registry, template=True).template
    assert template.match(_pieces(plain[1], template), "s3://bucket/q.tif") is not None
    assert template.match(_pieces(plain[1], template), "s3://bucket/q.NDPI") is None
    logging.getLogger("tifffile").setLevel(logging.ERROR)
    try:  # tifffile's warnings unheard: no template
        assert TIFFParser().scene_table(f"file://{plain[0]}", registry, template=True).template is None
    finally:
        logging.getLogger("tifffile").setLevel(logging.NOTSET)


def test_byte_range_helpers_against_brute_force():
    """The template's range arithmetic (tile overlap test, ranges minus holes) against sets of byte positions."""
    from vzdask.parsers.tiff import _merged, _overlaps, _without

    rng = np.random.default_rng(0)
    for _ in range(500):
        begin = rng.integers(0, 100, rng.integers(0, 8)).astype(np.uint64)
        end = begin + rng.integers(1, 20, begin.size).astype(np.uint64)
        ranges = [(int(s), int(s + rng.integers(1, 15))) for s in rng.integers(0, 110, rng.integers(1, 6))]
        brute = any(b < stop and e > start for b, e in zip(begin, end) for start, stop in ranges)
        assert _overlaps(ranges, begin, end) == brute
        holes = _merged([(int(b), int(e)) for b, e in zip(begin, end)])
        kept = {i for a, b in _without(_merged(ranges), holes) for i in range(a, b)}
        assert kept == {i for a, b in ranges for i in range(a, b)} - {i for a, b in holes for i in range(a, b)}


def test_a_batch_without_a_match_ends_the_template(tmp_path, monkeypatch):
    """Scenes all laid out otherwise than the first: one batch of small reads, then each file parsed."""
    files = []
    for i in range(fast_combine.SCENE_READ_AHEAD + 4):
        path = tmp_path / f"d{i}.tif"
        tifffile.imwrite(path, _noise(i, (32, 32), "uint8"), tile=(16, 16), compression="zlib",
                         description="scene " + "x" * i, metadata=None)
        files.append(str(path))
    heads = []
    scene_heads = fast_combine._scene_heads

    def counting(urls, registry, ranges):
        heads.append(len(urls))
        return scene_heads(urls, registry, ranges)

    monkeypatch.setattr(fast_combine, "_scene_heads", counting)
    fast, slow, parsed = _open_both(files)
    assert heads == [fast_combine.SCENE_READ_AHEAD] and parsed == len(files)
    _assert_same(fast, slow)
