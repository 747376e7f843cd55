"""TIFF, BigTIFF and (Cloud-Optimized) GeoTIFF parser.

tifffile reads the structure (every IFD, its tags, tile/strip offsets and
byte counts) through :class:`~vzdask.parsers.common.ObstoreFile`, so the
IFDs of a remote COG cost one or two ranged requests; no pixel is read. Each
tile or strip becomes one chunk, decoded by zarr codecs (imagecodecs' zarr
codecs for LZW, packbits, JPEG with its JPEGTables, WebP, LERC, the TIFF
predictors and packed bits; zarr's own zlib and zstd):

==========================  ==============================================
TIFF                        zarr v3
==========================  ==============================================
tiles (TileWidth/Length)    chunk ``(tile_length, tile_width[, samples])``;
                            edge tiles are whole tiles, as in the file
strips (RowsPerStrip)       chunk ``(rows_per_strip, width[, samples])``;
                            a shorter last strip is decoded, padded and
                            re-encoded with the same lossless codecs, and
                            inlined (JPEG/WebP/LERC strips: refused)
chunky samples (PlanarConfig 1)   dims ``(y, x, band)``
planar samples (PlanarConfig 2)   dims ``(band, y, x)``, chunk ``(1, ...)``
one sample                  dims ``(y, x)``
tile/strip byte count 0     a missing chunk (reads as the fill value)
Predictor 2 / 3             ``imagecodecs_delta`` / ``imagecodecs_floatpred``
                            along ``x``
BitsPerSample 1..7, 12...   ``imagecodecs_packints`` (unsigned integers;
                            1-bit masks as ``bool``)
==========================  ==============================================

Every IFD is parsed: the full-resolution image is ``image`` in the root
group (same-layout pages of a multi-page file are stacked along ``page``),
reduced-resolution IFDs (overviews, SubIFDs too) are groups
``overview_1``, ``overview_2``..., transparency masks are ``mask`` next to
the image they mask, other pages are groups ``page_<ifd>``. GeoTIFF tags
become attributes (``transform``, the raw ``ModelPixelScale``/
``ModelTiepoint``/``ModelTransformation`` and GeoKeys), a ``spatial_ref``
coordinate as rioxarray writes it (``crs_wkt`` through pyproj when it is
installed, else the EPSG code), and ``x``/``y`` pixel-centre coordinates
equal to ``rioxarray.open_rasterio``'s (inlined); GDAL's nodata is the fill
value and ``_FillValue``.
"""

from __future__ import annotations

import copy
import functools
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vzdask.errors import ParseError
from vzdask.manifests.array import ManifestArray
from vzdask.manifests.group import ManifestGroup
from vzdask.manifests.manifest import ChunkManifest
from vzdask.manifests.metadata import create_array_metadata
from vzdask.manifests.store import ManifestStore
from vzdask.parsers.common import IsolatingParser, ObstoreFile, finish, report_unsupported
from vzdask.registry import ObjectStoreRegistry

#: First four bytes: classic TIFF and BigTIFF, little- and big-endian.
TIFF_SIGNATURES = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")

#: TIFF Compression tag values -> names, for messages.
COMPRESSION_NAMES = {
    1: "none", 2: "CCITT RLE", 3: "CCITT Group 3", 4: "CCITT Group 4", 5: "LZW", 6: "old-style JPEG", 7: "JPEG",
    8: "deflate", 32773: "packbits", 32946: "deflate (PKZIP)", 34661: "JBIG", 34712: "JPEG 2000",
    34887: "LERC", 34925: "LZMA", 50000: "zstd", 50001: "WebP", 50002: "JPEG XL", 52546: "JPEG XL",
}
#: Compressions whose codecs re-encode a decoded chunk bit for bit (a short last strip can be padded).
_LOSSLESS = frozenset({1, 5, 8, 32773, 32946, 34925, 50000})
_JPEG, _LERC, _WEBP = 7, 34887, 50001
_LERC_PARAMETERS = 50674
_GDAL_NODATA = 42113
_SUBFILE_REDUCED, _SUBFILE_MASK = 1, 4
_PIXEL_IS_POINT = 2


@dataclass
class _Image:
    """One IFD as an array: its layout, codecs and chunk references."""

    ifd: str  # "3" or "0.1" (SubIFD 1 of IFD 0), for messages
    shape: tuple[int, ...]
    chunks: tuple[int, ...]
    dims: tuple[str, ...]
    dtype: np.dtype
    codecs: list[Any]
    fill: Any
    offsets: np.ndarray  # uint64, shaped like the chunk grid
    lengths: np.ndarray
    compression: int
    height: int
    width: int
    attributes: dict[str, Any] = field(default_factory=dict)

    def signature(self) -> tuple:
        """What pages must share to be stacked into one array."""
        return (self.shape, self.chunks, self.dims, self.dtype.str, repr(self.codecs), repr(self.fill))


@dataclass
class _Level:
    """An image and its mask (if any), as one group of the result."""

    images: list[_Image]
    masks: list[_Image] = field(default_factory=list)


def _tifffile():
    try:
        import tifffile
    except ImportError as err:  # pragma: no cover - the tiff extra installs it
        raise ImportError("reading TIFF needs tifffile and imagecodecs-zarr: pip install 'vzdask[tiff]'") from err
    return tifffile


def _where(url: str, ifd: str) -> str:
    return f"{url}: IFD {ifd}"


def _compression_name(code: int) -> str:
    return f"{COMPRESSION_NAMES.get(code, 'unknown')} ({code})"


def _image(page, url: str, ifd: str, byteorder: str) -> _Image:
    """The array layout and codecs of one IFD; ParseError naming the file, IFD and what cannot be expressed."""
    where = _where(url, ifd)
    compression = int(page.compression)
    if page.imagedepth > 1:
        raise ParseError(f"{where}: volumetric images (ImageDepth {page.imagedepth}) are not supported")
    samples = int(page.samplesperpixel)
    height, width = int(page.imagelength), int(page.imagewidth)
    planar = samples > 1 and int(page.planarconfig) == 2
    if page.is_tiled:
        rows, cols = int(page.tilelength), int(page.tilewidth)
    else:
        rows, cols = max(1, min(int(page.rowsperstrip or height), height)), width
    ny, nx = math.ceil(height / rows), math.ceil(width / cols)
    shape: tuple[int, ...]
    chunks: tuple[int, ...]
    grid: tuple[int, ...]
    dims: tuple[str, ...]
    if planar:
        shape, chunks, grid, dims = (samples, height, width), (1, rows, cols), (samples, ny, nx), ("band", "y", "x")
    elif samples > 1:
        shape, chunks, grid, dims = (height, width, samples), (rows, cols, samples), (ny, nx, 1), ("y", "x", "band")
    else:
        shape, chunks, grid, dims = (height, width), (rows, cols), (ny, nx), ("y", "x")
    offsets = np.asarray(page.dataoffsets, dtype=np.uint64)
    lengths = np.asarray(page.databytecounts, dtype=np.uint64)
    if offsets.size != math.prod(grid) or lengths.size != offsets.size:
        raise ParseError(f"{where}: {offsets.size} tile/strip offsets and {lengths.size} byte counts, expected "
                         f"{math.prod(grid)} for a {height}x{width} image in chunks of {rows}x{cols}")
    bits = page.bitspersample
    if isinstance(bits, tuple):
        raise ParseError(f"{where}: samples of different bit depths {bits} are not supported")
    dtype = page.dtype
    if dtype is None or dtype.kind not in "biuf":
        raise ParseError(f"{where}: sample format {int(page.sampleformat)} with {bits} bits has no numpy type")
    codecs = _codecs(page, where, compression, dtype, int(bits), chunks, planar or samples == 1, byteorder)
    nodata = _nodata(page, dtype)
    fill = nodata if nodata is not None else (False if dtype.kind == "b" else dtype.type(0).item())
    attributes = _gdal_metadata(page, samples)
    if nodata is not None:
        attributes["_FillValue"] = nodata
    return _Image(ifd, shape, chunks, dims, dtype, codecs, fill, offsets.reshape(grid), lengths.reshape(grid),
                  compression, height, width, attributes)


#: Codec chains by what ``_codec_chain`` reads of an IFD: the files of a collection share a few (and zarr's
#: numcodecs wrappers warn on each construction).
_CODEC_CHAINS: dict[tuple, list[Any]] = {}


def _codecs(page, where: str, compression: int, dtype: np.dtype, bits: int, chunks: tuple[int, ...],
            one_sample_per_chunk: bool, byteorder: str) -> list[Any]:
    """zarr v3 codecs, in order, decoding one tile/strip of this IFD (the same objects for IFDs alike)."""
    lerc = page.tags.get(_LERC_PARAMETERS) if compression == _LERC else None
    try:
        key = (compression, int(page.predictor), int(page.fillorder), int(page.photometric),
               tuple(page.subsampling or ()), tuple(page.extrasamples),
               (page.jpegtables, bool(page.is_jfif)) if compression == _JPEG else None,
               int(page.planarconfig), None if lerc is None else tuple(lerc.value), dtype.str, bits, chunks,
               one_sample_per_chunk, byteorder)
        hash(key)
    except TypeError:  # a tag value that is not hashable: build the chain for this IFD alone
        return _codec_chain(page, where, compression, dtype, bits, chunks, one_sample_per_chunk, byteorder)
    chain = _CODEC_CHAINS.get(key)
    if chain is None:  # errors name the file and IFD: not cached, raised for each
        chain = _codec_chain(page, where, compression, dtype, bits, chunks, one_sample_per_chunk, byteorder)
        if len(_CODEC_CHAINS) >= 256:
            _CODEC_CHAINS.clear()
        _CODEC_CHAINS[key] = chain
    return list(chain)


def _codec_chain(page, where: str, compression: int, dtype: np.dtype, bits: int, chunks: tuple[int, ...],
                 one_sample_per_chunk: bool, byteorder: str) -> list[Any]:
    """zarr v3 codecs, in order, decoding one tile/strip of this IFD."""
    from imagecodecs import zarr as ic
    from zarr.codecs import BytesCodec, ZstdCodec
    from zarr.codecs.numcodecs import LZMA, Zlib

    predictor = int(page.predictor)
    x_axis = -1 if one_sample_per_chunk else -2  # negative: still the x axis after stacking adds leading axes
    name = _compression_name(compression)

    def refuse(what: str) -> ParseError:
        return ParseError(f"{where}: {what} (compression {name}) cannot be expressed as zarr codecs")

    if int(page.fillorder) != 1:
        raise refuse("FillOrder 2 (bits in reverse order)")
    if int(page.photometric) == 6 and compression != _JPEG and any(s != 1 for s in page.subsampling or (1, 1)):
        raise refuse("subsampled YCbCr")
    image_codecs = compression in (_JPEG, _WEBP, _LERC)
    if predictor not in (1, 2, 3) or predictor != 1 and (image_codecs or bits not in (8, 16, 32, 64)):
        raise refuse(f"predictor {predictor} on {bits}-bit samples")
    if predictor == 2 and dtype.kind not in "iu":
        raise refuse(f"horizontal predictor (2) on {dtype} samples")
    if predictor == 3 and dtype.kind != "f":
        raise refuse(f"floating-point predictor (3) on {dtype} samples")

    array_codecs: list[Any] = []
    bytes_codecs: list[Any] = []
    if compression == _JPEG:
        colorspace, outcolorspace = _jpeg_colorspaces(page, where)
        serializer: Any = ic.Jpeg(tables=page.jpegtables or None, colorspace_jpeg=colorspace,
                                  colorspace_data=outcolorspace, bitspersample=bits)
    elif compression == _WEBP:
        serializer = ic.Webp()
    elif compression == _LERC:
        serializer = ic.Lerc()
        tag = page.tags.get(_LERC_PARAMETERS)
        extra = int(tag.value[1]) if tag is not None and len(tag.value) > 1 else 0
        if extra == 1:
            bytes_codecs.append(Zlib())
        elif extra == 2:
            bytes_codecs.append(ZstdCodec())
        elif extra:
            raise refuse(f"LERC with additional compression {extra}")
    else:
        if compression in (8, 32946):
            bytes_codecs.append(Zlib())
        elif compression == 5:
            bytes_codecs.append(ic.Lzw())
        elif compression == 50000:
            bytes_codecs.append(ZstdCodec())
        elif compression == 32773:
            bytes_codecs.append(ic.Packbits())
        elif compression == 34925:
            bytes_codecs.append(LZMA())
        elif compression != 1:
            raise ParseError(f"{where}: compression {name} has no zarr codec; this TIFF cannot be virtualized")
        if bits not in (8, 16, 32, 64) or dtype.itemsize * 8 != bits:
            if dtype.kind not in "bu" or bits > 32:
                raise refuse(f"{bits}-bit {dtype} samples")
            row = chunks[-1] if one_sample_per_chunk else chunks[-1] * chunks[-2]
            serializer = ic.Packints(bitspersample=bits, runlen=row)
        elif predictor == 3:
            serializer = ic.Floatpred(axis=x_axis)
        else:
            serializer = BytesCodec(endian=("little" if byteorder == "<" else "big") if dtype.itemsize > 1 else None)
            if predictor == 2:
                array_codecs.append(ic.Delta(axis=x_axis))
    return [*array_codecs, serializer, *bytes_codecs]


#: GDAL_METADATA per-band roles -> the attribute rioxarray gives them as.
_GDAL_ROLES = {"scale": "scale_factor", "offset": "add_offset", "description": "long_name", "unittype": "units"}
_GDAL_METADATA = 42112


def _gdal_metadata(page, samples: int) -> dict[str, Any]:
    """GDAL's per-band scale, offset, description and units (tag 42112) as rioxarray's attributes.

    One value when every band has the same (``scale_factor``/``add_offset``
    a number, so CF decoding unpacks with it); bands that differ get a list
    of ``long_name``/``units``, and ``scales``/``offsets`` (not CF: packing
    that differs per band cannot be one ``scale_factor``). Dataset items of
    the default domain become attributes as they are.
    """
    import xml.etree.ElementTree as ET

    tag = page.tags.get(_GDAL_METADATA)
    if tag is None:
        return {}
    try:
        root = ET.fromstring(str(tag.value).strip().rstrip("\x00"))
    except ET.ParseError:
        return {}
    per_band: dict[str, dict[int, str]] = {}
    attributes: dict[str, Any] = {}
    for item in root.iter("Item"):
        text, role, sample = (item.text or "").strip(), item.get("role"), item.get("sample")
        if role in _GDAL_ROLES and sample is not None and sample.isdigit():
            per_band.setdefault(role, {})[int(sample)] = text
        elif sample is None and not item.get("domain") and item.get("name"):
            attributes[str(item.get("name"))] = text
    for role, values in per_band.items():
        texts = [values.get(b, "") for b in range(samples)]
        if role in ("scale", "offset"):
            try:
                numbers = [float(t) if t else (1.0 if role == "scale" else 0.0) for t in texts]
            except ValueError:
                continue
            if len(set(numbers)) == 1:
                attributes[_GDAL_ROLES[role]] = numbers[0]
            else:
                attributes[role + "s"] = numbers
        else:
            attributes[_GDAL_ROLES[role]] = texts[0] if samples == 1 else texts
    return attributes


def _jpeg_colorspaces(page, where: str) -> tuple[int | None, int | None]:
    """The JPEG stream's colour space and the one to decode into, from the TIFF Photometric tag (as libtiff does).

    YCbCr decodes to RGB (as GDAL and tifffile give it); RGB JPEG without a
    JFIF marker is RGB inside; separate planes decode as grey. Numbers are
    libjpeg's colour spaces (1 grey, 2 RGB, 3 YCbCr, 4 CMYK).
    """
    photometric = int(page.photometric)
    colorspace = outcolorspace = None
    if not tuple(page.extrasamples):
        if photometric == 6:  # YCbCr
            outcolorspace = 2
        elif photometric == 2:  # RGB
            if not page.is_jfif:
                colorspace = 2
            outcolorspace = 2
        elif photometric == 5:  # separated (CMYK)
            outcolorspace = 4
        elif photometric > 3:
            raise ParseError(f"{where}: JPEG with Photometric {photometric} is not supported")
    if int(page.planarconfig) != 1:  # each plane its own one-component JPEG, decoded as grey
        colorspace, outcolorspace = None, 1
    return colorspace, outcolorspace


def _nodata(page, dtype: np.dtype) -> Any:
    """GDAL's nodata (tag 42113) as a value of ``dtype``, or None (none, or not representable)."""
    tag = page.tags.get(_GDAL_NODATA)
    if tag is None:
        return None
    text = str(tag.value).strip().rstrip("\x00")
    try:
        value = float(text)
    except ValueError:
        return None
    if dtype.kind == "f":
        return dtype.type(value).item()
    if not value.is_integer() or dtype.kind == "b":
        return None
    info = np.iinfo(dtype)
    return int(value) if info.min <= value <= info.max else None


# --------------------------------------------------------------------------- #
# IFDs -> levels
# --------------------------------------------------------------------------- #


def _walk(tif, url: str, geo: bool = True, pages: list | None = None
          ) -> tuple[list[_Level | ParseError], list[_Level | ParseError], list, dict]:
    """The file's IFDs as (main levels, overview levels, other pages, first page's GeoTIFF tags if ``geo``).

    ``pages``: a list to append every IFD walked to, as ``(label, tifffile page)``.
    """
    tifffile = _tifffile()
    byteorder = tif.byteorder
    entries: list[tuple[str, Any, int]] = []  # (ifd label, page, role flags)
    for i, page in enumerate(tif.pages):
        subfile = int(page.subfiletype)
        entries.append((str(i), page, subfile))
        if page.subifds:
            for j, sub in enumerate(tifffile.TiffPages(page)):
                entries.append((f"{i}.{j}", sub, int(sub.subfiletype) | _SUBFILE_REDUCED))
    if pages is not None:
        pages.extend((label, page) for label, page, _ in entries)

    def image(label, page):
        try:
            return _image(page, url, label, byteorder)
        except ParseError as err:
            return err

    mains = [(label, page) for label, page, flags in entries if not flags & (_SUBFILE_REDUCED | _SUBFILE_MASK)]
    reduced = [(label, page) for label, page, flags in entries if flags & _SUBFILE_REDUCED and not flags & _SUBFILE_MASK]
    masks = [(label, page, flags) for label, page, flags in entries if flags & _SUBFILE_MASK]
    if not mains and reduced:  # a file of reduced images only: the first is the image
        mains, reduced = reduced[:1], reduced[1:]

    main_images = [image(label, page) for label, page in mains]
    stacked: list = []
    others: list = []
    if main_images:
        first = main_images[0]
        if isinstance(first, _Image) and all(isinstance(m, _Image) and m.signature() == first.signature()
                                             for m in main_images):
            stacked = [_Level(list(main_images))]  # type: ignore[arg-type]
        else:
            stacked = [_Level([first]) if isinstance(first, _Image) else first]
            others = [(label, img) for (label, _), img in zip(mains[1:], main_images[1:])]
    overviews: list = []
    for label, page in reduced:
        img = image(label, page)
        overviews.append(_Level([img]) if isinstance(img, _Image) else img)
    for label, page, flags in masks:
        img = image(label, page)
        targets = stacked if not flags & _SUBFILE_REDUCED else overviews
        home = next((lv for lv in targets if isinstance(lv, _Level) and isinstance(img, _Image)
                     and (lv.images[0].height, lv.images[0].width) == (img.height, img.width)
                     and len(lv.masks) < len(lv.images)), None)
        if home is None and isinstance(img, ParseError):
            home = next((lv for lv in targets if isinstance(lv, _Level)), None)
        if home is not None:
            home.masks.append(img)
        else:
            others.append((label, img))
    return stacked, overviews, others, _geotiff_tags(tif) if geo else {}


#: GeoTIFF's georeferencing tags, also read when a file has no GeoKeys (no CRS, as GDAL writes it).
_MODEL_TAGS = {33550: "ModelPixelScale", 33922: "ModelTiepoint", 34264: "ModelTransformation"}


def _geotiff_tags(tif) -> dict[str, Any]:
    """The first IFD's GeoKeys (tifffile's names) and model tags; empty for a file without georeferencing."""
    first = tif.pages.first
    geo = dict(tif.geotiff_metadata or {}) if first.is_geotiff else {}
    for code, name in _MODEL_TAGS.items():
        tag = first.tags.get(code)
        if name not in geo and tag is not None:
            geo[name] = list(tag.value)
    return geo


# --------------------------------------------------------------------------- #
# GeoTIFF
# --------------------------------------------------------------------------- #


def geotransform(geo: dict[str, Any]) -> tuple[float, float, float, float, float, float] | None:
    """The affine transform ``(a, b, c, d, e, f)`` (rasterio's order) of the GeoTIFF tags, as GDAL reads it.

    ``x = a * col + b * row + c``, ``y = d * col + e * row + f`` for pixel
    corners; a PixelIsPoint raster is shifted by half a pixel, as GDAL does.
    """
    matrix = geo.get("ModelTransformation")
    if matrix is not None:
        m = np.asarray(matrix, dtype=float).ravel()
        a, b, c, d, e, f = m[0], m[1], m[3], m[4], m[5], m[7]
    else:
        scale, tiepoint = geo.get("ModelPixelScale"), geo.get("ModelTiepoint")
        if scale is None or tiepoint is None or len(tiepoint) < 6:
            return None
        sx, sy = float(scale[0]), float(scale[1])
        i, j, x, y = (float(v) for v in (tiepoint[0], tiepoint[1], tiepoint[3], tiepoint[4]))
        a, b, c, d, e, f = sx, 0.0, x - i * sx, 0.0, -sy, y + j * sy
    if int(geo.get("GTRasterTypeGeoKey", 1)) == _PIXEL_IS_POINT:
        c, f = c - 0.5 * a - 0.5 * b, f - 0.5 * d - 0.5 * e
    return float(a), float(b), float(c), float(d), float(e), float(f)


def _epsg(geo: dict[str, Any]) -> int | None:
    model = int(geo.get("GTModelTypeGeoKey", 0) or 0)
    keys = ("ProjectedCSTypeGeoKey", "GeographicTypeGeoKey") if model != 2 else ("GeographicTypeGeoKey",)
    for key in keys:
        value = geo.get(key)
        if value is not None and 1024 <= int(value) < 32767:
            return int(value)
    return None


def _json(value: Any) -> Any:
    """A GeoKey or tag value as JSON (enums as their numbers)."""
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_json(v) for v in value]
    if isinstance(value, (bool, str)) or value is None:
        return value
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value)
    return str(value)


@functools.lru_cache(maxsize=64)
def _crs_attributes(epsg: int) -> tuple[tuple[tuple[str, Any], ...], str | None]:
    """pyproj's CF attributes and the kind (projected/geographic) of an EPSG code; empty without pyproj.

    Cached: a collection of scenes shares a few CRSs, and pyproj takes
    milliseconds per ``to_cf``.
    """
    try:
        from pyproj import CRS
    except ImportError:  # optional: the EPSG code alone then
        return (), None
    try:
        crs = CRS.from_epsg(epsg)
    except Exception:  # a code this pyproj does not know
        return (), None
    attrs = {k: _json(v) for k, v in crs.to_cf().items()}
    attrs["crs_wkt"] = attrs.get("crs_wkt") or crs.to_wkt()
    attrs["spatial_ref"] = attrs["crs_wkt"]
    return tuple(attrs.items()), "geographic" if crs.is_geographic else "projected"


def _spatial_ref_attributes(geo: dict[str, Any], transform) -> tuple[dict[str, Any], str | None]:
    """rioxarray's ``spatial_ref`` attributes (pyproj's CF form when installed), and the CRS kind."""
    attrs: dict[str, Any] = {}
    kind = None
    epsg = _epsg(geo)
    if epsg is not None:
        attrs["epsg"] = epsg
        items, kind = _crs_attributes(epsg)
        attrs.update(copy.deepcopy(dict(items)))
    if kind is None:
        model = int(geo.get("GTModelTypeGeoKey", 0) or 0)
        kind = {1: "projected", 2: "geographic"}.get(model)
    if transform is not None:
        a, b, c, d, e, f = transform
        attrs["GeoTransform"] = " ".join(repr(v) for v in (c, a, b, f, d, e))
    return attrs, kind


_AXIS_ATTRIBUTES = {
    "projected": ({"axis": "X", "long_name": "x coordinate of projection", "standard_name": "projection_x_coordinate",
                   "units": "metre"},
                  {"axis": "Y", "long_name": "y coordinate of projection", "standard_name": "projection_y_coordinate",
                   "units": "metre"}),
    "geographic": ({"axis": "X", "long_name": "longitude", "standard_name": "longitude", "units": "degrees_east"},
                   {"axis": "Y", "long_name": "latitude", "standard_name": "latitude", "units": "degrees_north"}),
}


# --------------------------------------------------------------------------- #
# levels -> groups
# --------------------------------------------------------------------------- #


def _inlined(values: np.ndarray, dims: tuple[str, ...], attributes: dict[str, Any],
             registry: ObjectStoreRegistry) -> ManifestArray:
    """A small array held in the manifest (coordinates, ``spatial_ref``): one chunk, its bytes inlined."""
    metadata, manifest = _inlined_array(values, dims, attributes)
    return ManifestArray(metadata, manifest, registry=registry)


def _inlined_array(values: np.ndarray, dims: tuple[str, ...], attributes: dict[str, Any]):
    """The metadata and manifest of ``_inlined``."""
    values = np.asarray(values, order="C")  # (ascontiguousarray makes a 0-d array 1-d)
    data = values.astype(values.dtype.newbyteorder("<")).tobytes()
    return _inlined_parts(data, values.dtype.str, values.shape, dims, json.dumps(attributes, sort_keys=True))


@functools.lru_cache(maxsize=256)
def _inlined_parts(data: bytes, dtype: str, shape: tuple[int, ...], dims: tuple[str, ...], attributes: str):
    """Metadata and manifest of an inlined array, shared by the files of a collection on one grid (both immutable)."""
    manifest = ChunkManifest.inlined_chunk(data, len(shape))
    metadata = create_array_metadata(shape=shape, chunk_shape=shape or (), dtype=np.dtype(dtype),
                                     dimension_names=dims or None, attributes=json.loads(attributes))
    return metadata, manifest


@dataclass(frozen=True)
class _Grid:
    """A level's georeferenced arrays (``spatial_ref``, ``x``, ``y``: metadata and manifest) and attributes."""

    arrays: dict[str, tuple[Any, ChunkManifest]]
    attributes: dict[str, Any]
    image_attributes: dict[str, Any]


#: ``_Grid``s by their inputs: the scenes of a collection share a few grids (a dict, as GeoKeys are not hashable).
_GRIDS: dict[tuple, _Grid] = {}


def _grid_arrays(geo: dict[str, Any], transform, width: int, height: int, full: bool,
                 wanted: tuple[str, ...]) -> _Grid:
    """The georeferenced arrays and attributes of a level, built once per grid (metadata and manifests are immutable).

    ``full``: the full-resolution level (which also carries the raw GeoTIFF tags); ``wanted``: which of
    ``spatial_ref``, ``x``, ``y`` to build (the others are dropped).
    """
    key = (repr(sorted(geo.items())), transform, width, height, full, wanted)
    grid = _GRIDS.get(key)
    if grid is not None:
        return _Grid(grid.arrays, _copied(grid.attributes), dict(grid.image_attributes))
    arrays: dict[str, tuple[Any, ChunkManifest]] = {}
    attributes: dict[str, Any] = {}
    image_attrs: dict[str, Any] = {}
    ref_attrs, kind = _spatial_ref_attributes(geo, transform)
    if "spatial_ref" in wanted:
        arrays["spatial_ref"] = _inlined_array(np.array(0, dtype=np.int64), (), ref_attrs)
        image_attrs.update({"grid_mapping": "spatial_ref", "coordinates": "spatial_ref"})
    if transform is not None:
        attributes["transform"] = list(transform)
        a, b, c, d, e, f = transform
        if b == 0 and d == 0:
            x_attrs, y_attrs = _AXIS_ATTRIBUTES.get(kind or "", ({}, {}))
            cols, rows = np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64)
            # pixel centres computed as rioxarray does (the transform shifted by half a pixel, then applied),
            # so the numbers are equal to the last bit
            c_centre, f_centre = a * 0.5 + b * 0.5 + c, d * 0.5 + e * 0.5 + f
            if "x" in wanted:
                arrays["x"] = _inlined_array(cols * a + c_centre, ("x",), dict(x_attrs))
            if "y" in wanted:
                arrays["y"] = _inlined_array(rows * e + f_centre, ("y",), dict(y_attrs))
    if full:
        for key_name in ("ModelPixelScale", "ModelTiepoint", "ModelTransformation"):
            if key_name in geo:
                attributes[key_name] = _json(geo[key_name])
        attributes["GeoKeys"] = {k: _json(v) for k, v in geo.items()
                                 if k not in ("ModelPixelScale", "ModelTiepoint", "ModelTransformation")}
    if len(_GRIDS) >= 256:
        _GRIDS.clear()
    _GRIDS[key] = _Grid(arrays, attributes, image_attrs)
    return _Grid(arrays, _copied(attributes), dict(image_attrs))


def _copied(value: Any) -> Any:
    """A copy of JSON-like attributes (dicts and lists of numbers and strings), each file its own."""
    if isinstance(value, dict):
        return {k: _copied(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copied(v) for v in value]
    return value


def _stack(images: list[_Image], url: str, registry: ObjectStoreRegistry, attributes: dict[str, Any],
           dims_prefix: tuple[str, ...]) -> ManifestArray:
    """One ManifestArray of these same-layout images (stacked along ``page`` when there are several)."""
    first = images[0]
    offsets = np.stack([img.offsets for img in images]) if dims_prefix else first.offsets
    lengths = np.stack([img.lengths for img in images]) if dims_prefix else first.lengths
    shape = ((len(images),) if dims_prefix else ()) + first.shape
    chunks = ((1,) if dims_prefix else ()) + first.chunks
    padded = _padded_last_strips(images, url, registry)
    if dims_prefix:
        inlined = {(p, *index): data for (p, index), data in padded.items()}
    else:
        inlined = {index: data for (_, index), data in padded.items()}
    if inlined:
        paths = np.where(lengths > 0, url, "").astype(object)
        for index in inlined:
            paths[index] = ""
        manifest = ChunkManifest.from_arrays(paths=paths, offsets=offsets, lengths=lengths, inlined=inlined)
    else:  # tiles: every chunk in this file, or missing (byte count 0)
        manifest = ChunkManifest.from_file_table(url, lengths > 0, offsets, lengths)
    metadata = create_array_metadata(shape=shape, chunk_shape=chunks, dtype=first.dtype, codecs=first.codecs,
                                     fill_value=first.fill, dimension_names=dims_prefix + first.dims,
                                     attributes={**first.attributes, **attributes})
    return ManifestArray(metadata, manifest, registry=registry)


def _padded_last_strips(images: list[_Image], url: str, registry: ObjectStoreRegistry) -> dict[tuple[int, tuple[int, ...]], bytes]:
    """A last strip shorter than RowsPerStrip, decoded, padded to a whole chunk and re-encoded: ``{(page, chunk index): bytes}``.

    TIFF writes the last strip with only the rows left; a zarr chunk is
    always whole. The codecs are lossless, so the re-encoded chunk decodes to
    the very values of the strip (padding reads as the fill value's rows,
    outside the array). Lossy codecs cannot do this: refused.
    """
    from vzdask.codecs import codec_for
    from vzdask.object_io import read_ranges

    first = images[0]
    y_axis = first.dims.index("y")
    rows = first.chunks[y_axis]
    left = first.height % rows
    if not left or first.chunks[first.dims.index("x")] != first.width:  # tiles are always whole
        return {}
    if first.compression not in _LOSSLESS:
        raise ParseError(
            f"{_where(url, first.ifd)}: the last strip holds {left} of {rows} rows and its compression "
            f"{_compression_name(first.compression)} is lossy, so it cannot be "
            "padded to a whole zarr chunk (variable-length chunk grids are not supported yet)"
        )
    partial_chunks = tuple(left if axis == y_axis else c for axis, c in enumerate(first.chunks))
    partial = codec_for(create_array_metadata(shape=partial_chunks, chunk_shape=partial_chunks, dtype=first.dtype,
                                              codecs=first.codecs, fill_value=first.fill))
    whole = codec_for(create_array_metadata(shape=first.chunks, chunk_shape=first.chunks, dtype=first.dtype,
                                            codecs=first.codecs, fill_value=first.fill))
    wanted: list[tuple[int, tuple[int, ...]]] = []
    grid = first.offsets.shape
    for p, img in enumerate(images):
        for rest in np.ndindex(*(n for axis, n in enumerate(grid) if axis != y_axis)):
            index = (*rest[:y_axis], grid[y_axis] - 1, *rest[y_axis:])
            if img.lengths[index]:
                wanted.append((p, index))
    if not wanted:
        return {}
    store, path = registry.resolve(url)
    got = read_ranges(store, path, [int(images[p].offsets[i]) for p, i in wanted],
                      [int(images[p].lengths[i]) for p, i in wanted], url=url)
    out = {}
    for (p, index), data in zip(wanted, got):
        try:
            values = partial.decode(bytes(data))
        except Exception as err:
            raise ParseError(f"{_where(url, images[p].ifd)}: the last strip does not decode: {err}") from err
        padded = np.full(first.chunks, first.fill, dtype=first.dtype)
        padded[tuple(slice(0, n) for n in values.shape)] = values
        out[(p, index)] = whole.encode(padded)
    return out


def _level_group(level: _Level, url: str, registry: ObjectStoreRegistry, geo: dict[str, Any],
                 base: _Image | None, drop: frozenset[str], problems: list[tuple[str, str]],
                 path: str) -> ManifestGroup:
    """The group of one level: ``image``, ``mask``, ``x``/``y``, ``band``, ``spatial_ref``."""
    arrays: dict[str, ManifestArray] = {}
    attributes: dict[str, Any] = {}
    image = level.images[0]
    stacked = len(level.images) > 1
    prefix = ("page",) if stacked else ()
    transform = geotransform(geo) if geo else None
    if transform is not None and base is not None and (base.width, base.height) != (image.width, image.height):
        sx, sy = base.width / image.width, base.height / image.height
        a, b, c, d, e, f = transform
        transform = (a * sx, b * sy, c, d * sx, e * sy, f)
    image_attrs: dict[str, Any] = {}
    if base is not None:  # GDAL writes band metadata on the full-resolution IFD only; overviews mean the same
        image_attrs.update({k: v for k, v in base.attributes.items() if k != "_FillValue"})
    if geo:
        grid = _grid_arrays(geo, transform, image.width, image.height, base is None,
                            tuple(n for n in ("spatial_ref", "x", "y") if n not in drop))
        for name, (metadata, manifest) in grid.arrays.items():
            arrays[name] = ManifestArray(metadata, manifest, registry=registry)
        attributes.update(grid.attributes)
        image_attrs.update(grid.image_attributes)
    if "band" in image.dims and "band" not in drop:
        n = image.shape[image.dims.index("band")]
        arrays["band"] = _inlined(np.arange(1, n + 1, dtype=np.int64), ("band",), {}, registry)
    attributes["tiff_ifd"] = [img.ifd for img in level.images] if stacked else image.ifd
    if "image" not in drop:
        try:
            arrays["image"] = _stack(level.images, url, registry, image_attrs, prefix)
        except ParseError as err:
            problems.append((f"{path}image", str(err)))
    if level.masks and "mask" not in drop:
        masks = level.masks
        bad = next((m for m in masks if isinstance(m, ParseError)), None)
        if bad is not None:
            problems.append((f"{path}mask", str(bad)))
        elif len(masks) == len(level.images) and all(m.signature() == masks[0].signature() for m in masks):  # type: ignore[union-attr]
            arrays["mask"] = _stack(masks, url, registry, {"coordinates": "spatial_ref"} if geo and "spatial_ref" in arrays else {}, prefix)  # type: ignore[arg-type]
        else:
            problems.append((f"{path}mask", f"{url}: {len(masks)} masks for {len(level.images)} pages"))
    return ManifestGroup(arrays=arrays, attributes=attributes)


class TIFFParser(IsolatingParser):
    """Parse a TIFF, BigTIFF or (Cloud-Optimized) GeoTIFF file into a ManifestStore.

    The root group holds the full-resolution ``image`` (``y``, ``x``
    and, with several samples per pixel, ``band``; ``page`` first when the
    pages of a multi-page file share one layout), its ``mask`` and, for a
    GeoTIFF, ``x``/``y`` pixel-centre coordinates and ``spatial_ref``.
    Overviews are groups ``overview_1``, ``overview_2``... (each with its
    own ``x``/``y``), other pages groups ``page_<ifd>``.

    Parameters
    ----------
    inline : InlinePolicy, optional
        Which chunks to copy into the manifest.
    group : str, optional
        Open this group (``"overview_1"``...) as the root.
    drop_variables : iterable of str, optional
        Variables (of every group) not to build, e.g. ``["mask"]`` when the
        mask's compression has no zarr codec.
    on_unsupported : {"raise", "warn"}
        An IFD whose compression or layout zarr codecs cannot express:
        raise one ``ParseError`` naming the file, IFD and compression, or
        leave it out with a warning.

    Examples
    --------
    >>> vds = vzdask.open_virtual_dataset("s3://bucket/scene_B4.tif")  # doctest: +SKIP
    >>> vds.image  # (y, x), with x/y and spatial_ref as rioxarray gives them  # doctest: +SKIP
    """

    @classmethod
    def guess_can_open(cls, head: bytes, url: str) -> bool:
        """True if ``head`` starts with a TIFF or BigTIFF header (either byte order)."""
        return head[:4] in TIFF_SIGNATURES

    def __call__(self, url: str, registry: ObjectStoreRegistry) -> ManifestStore:
        tifffile = _tifffile()
        file = self._open(url, registry)
        try:
            tif = tifffile.TiffFile(_Unclosable(file), name=url.rsplit("/", 1)[-1])
        except ParseError:
            raise
        except Exception as err:
            raise ParseError(f"{url}: not a readable TIFF file: {err}") from err
        with tif:
            if not len(tif.pages):
                raise ParseError(f"{url}: the TIFF file has no image (no readable IFD)")
            try:
                stacked, overviews, others, geo = _walk(tif, url)
            except ParseError:
                raise
            except Exception as err:
                raise ParseError(f"{url}: cannot read the TIFF structure: {err}") from err
        group = self._group(url, registry, stacked, overviews, others, geo)
        return finish(group, registry, self.inline)

    def _group(self, url, registry, stacked, overviews, others, geo) -> ManifestGroup:
        problems: list[tuple[str, str]] = []
        wanted = (self.group or "").strip("/")
        base = stacked[0].images[0] if stacked and isinstance(stacked[0], _Level) else None
        # (level, the full-resolution image it reduces, its georeferencing): overviews share the image's
        # (scaled); other pages are other images, whose georeferencing the first IFD's tags do not give
        children: dict[str, tuple[Any, _Image | None, dict[str, Any]]] = {}
        for n, level in enumerate(overviews, start=1):
            children[f"overview_{n}"] = (level, base, geo)
        for label, img in others:
            children[f"page_{label}"] = (_Level([img]) if isinstance(img, _Image) else img, None, {})

        def build(level, base_image, level_geo, path: str) -> ManifestGroup:
            if isinstance(level, ParseError):
                if "image" not in self.drop_variables:
                    problems.append((f"{path}image", str(level)))
                return ManifestGroup(arrays={}, attributes={})
            return _level_group(level, url, registry, level_geo, base_image, self.drop_variables, problems, path)

        if wanted:
            if wanted not in children:
                raise ParseError(f"{url}: no group {wanted!r}; the groups are {sorted(children)}")
            group = build(*children[wanted], f"/{wanted}/")
        else:
            root = build(stacked[0], None, geo, "/") if stacked else ManifestGroup(arrays={}, attributes={})
            groups = {name: build(*child, f"/{name}/") for name, child in children.items()}
            group = ManifestGroup(arrays=root.arrays, groups=groups, attributes=root.attributes)
        report_unsupported(url, problems, self.on_unsupported, "/" + wanted)
        return group

    def scene_table(self, url: str, registry: ObjectStoreRegistry, *, template: bool = False) -> SceneTable | None:
        """The chunk tables of this file's root ``image`` (and ``mask``), and the key of everything else it is made of.

        For stacking many scenes of one layout and grid (``vzdask.fast_combine.stack_tiff_scenes``):
        files with equal keys parse to root groups that differ in their chunk references only, so
        one file's parse and every file's tables make the stack. The key holds each array's layout,
        codecs, fill value and attributes, the IFDs' labels and the raw GeoTIFF tags (the grid).
        None when this file needs the whole parse: not readable, an IFD that does not parse
        (``on_unsupported``), a multi-page stack, a short last strip (inlined when padded).
        ``template``: also record what tifffile read, so files laid out byte for byte alike are
        recognised without parsing them (``SceneTable.template``, None where that cannot be exact).
        """
        tifffile_log = logging.getLogger("tifffile")
        if not template or not tifffile_log.isEnabledFor(logging.WARNING):  # (its warnings unheard: no template)
            return self._scene_table(url, registry, None)
        warned = _Warned(logging.WARNING)
        tifffile_log.addHandler(warned)
        try:
            return self._scene_table(url, registry, warned)
        finally:
            tifffile_log.removeHandler(warned)

    def _scene_table(self, url: str, registry: ObjectStoreRegistry, warned: _Warned | None) -> SceneTable | None:
        """``scene_table``; with a template if ``warned`` (what tifffile logs meanwhile) is given."""
        tifffile = _tifffile()
        try:
            file = self._open(url, registry)
            handle = _Recording(file) if warned is not None else _Unclosable(file)
            tif = tifffile.TiffFile(handle, name=url.rsplit("/", 1)[-1])
        except Exception:  # the whole parse reports it
            return None
        pages: list[tuple[str, Any]] = []
        with tif:
            try:
                stacked, overviews, others, _ = _walk(tif, url, geo=False, pages=pages)
                first = tif.pages.first
                geo = tuple((code, first.tags[code].value) for code in _GEO_TAGS if code in first.tags)
            except Exception:
                return None
            levels = [*stacked, *overviews, *(img for _, img in others)]
            if not stacked or any(isinstance(lv, ParseError) for lv in levels):
                return None
            if any(isinstance(m, ParseError) for lv in levels if isinstance(lv, _Level) for m in lv.masks):
                return None
            root = stacked[0]
            if not isinstance(root, _Level) or len(root.images) != 1 or len(root.masks) > 1:
                return None
            parts = {"image": root.images[0], **({"mask": root.masks[0]} if root.masks else {})}
            key: list[Any] = [geo]
            for name, img in parts.items():
                if not isinstance(img, _Image):
                    return None
                rows, cols = img.chunks[img.dims.index("y")], img.chunks[img.dims.index("x")]
                if img.height % rows and cols == img.width:  # a short last strip: padded and inlined by the parse
                    return None
                key.append((name, img.ifd, img.height, img.width, img.signature(), repr(img.attributes)))
            try:
                hash(tuple(key))
            except TypeError:
                return None
            table = SceneTable(tuple(key), {name: (img.offsets, img.lengths) for name, img in parts.items()})
            if isinstance(handle, _Recording) and warned is not None:
                try:  # tifffile warns of what it repaired or skipped, which may depend on more than the bytes read
                    found = None if warned.count else SceneTemplate.of(tif, pages, handle, parts, table)
                except Exception:  # anything unexpected: no template, each file is parsed
                    found = None
                table = SceneTable(table.key, table.tables, found)
        return table

    def __repr__(self) -> str:
        return f"TIFFParser(inline={self.inline!r}, group={self.group!r})"


#: The first IFD's GeoTIFF tags (model tags, GeoKey directory, double and ASCII params): equal raw tags, one grid.
_GEO_TAGS = (33550, 33922, 34264, 34735, 34736, 34737)


@dataclass(frozen=True)
class SceneTable:
    """What ``TIFFParser.scene_table`` reads of one file: a key and its root arrays' ``(offsets, lengths)``.

    ``template``: asked for with ``scene_table(..., template=True)``, what recognises files laid out like this one.
    """

    key: tuple
    tables: dict[str, tuple[np.ndarray, np.ndarray]]
    template: SceneTemplate | None = field(default=None, compare=False)

    def layout_difference(self, other: SceneTable) -> tuple[str, str, Any, Any] | None:
        """``(array, what, this file's, other's)`` for the first root array both have whose layout differs, else None.

        Layout: shape, chunk shape, dimensions, dtype and codecs, what one
        virtual array of both files' chunks needs to be the same (fill values,
        attributes and grids are the CF checks' to compare).
        """
        mine = {entry[0]: entry[4] for entry in self.key[1:]}
        for name, *_, signature, _ in other.key[1:]:
            if name not in mine:
                continue
            for what, a, b in zip(("shape", "chunk shape", "dimensions", "dtype", "codecs"), mine[name], signature):
                if a != b:
                    return name, what, a, b
        return None


#: Tags whose values are tile/strip offsets and byte counts (the values that differ between scenes alike).
_DATA_TAGS = frozenset({273, 279, 324, 325})
#: Compressions whose IFDs tifffile parses by reading tile bytes too (JPEG: whether the first tile is JFIF).
_READS_TILES = frozenset({6, 7, 33007, 34892})


@dataclass(frozen=True)
class SceneTemplate:
    """Every byte tifffile read of one file, but the tile/strip offsets and byte counts: files alike match it.

    tifffile's parse of a file is a function of the bytes it reads (and of
    the file's size, where it checks a tag value's extent against it). A
    file whose bytes are equal at every position tifffile read of this one,
    except the values of the offset and byte count tags, makes tifffile read
    the very same positions and find the same tags; only those values
    differ. So its ``scene_table`` is this one's key with its own tables,
    which are read here where tifffile found them (the decoding checked equal
    to tifffile's on this file). A file that differs in any such byte, or is
    shorter than this file's tag values reach, does not match (and is parsed).
    Not made (``of`` returns None) where tifffile's parse depends on more:
    anything it warned of (a tag it dropped, an IFD offset past the end...),
    a read inside tile data, JPEG (a tile read), LSM, ScanImage and NDPI
    files (and no ``.ndpi`` name matches).

    Use: fetch ``ranges`` of a file (one request), hand the pieces to ``match``.
    """

    key: tuple
    ranges: tuple[tuple[int, int], ...]  # (start, length) of the pieces to fetch of each file
    compare: tuple[tuple[int, int, bytes], ...]  # (piece, start in it, bytes) to be equal
    specs: dict[str, tuple]  # name: (grid, (piece, start, dtype, count) of the offsets, of the byte counts)

    #: Gaps between the byte ranges needed up to which they are fetched as one piece.
    GAP = 2**16

    @classmethod
    def of(cls, tif, pages: list[tuple[str, Any]], handle: _Recording, parts: dict[str, _Image],
           table: SceneTable) -> SceneTemplate | None:
        """The template of a file tifffile parsed through ``handle`` (its ``pages`` walked), or None."""
        import struct

        file = handle._file
        if tif.tiff.is_ndpi or tif.is_lsm or tif.is_scanimage:
            return None
        fmt, size = tif.tiff.tagnoformat, tif.tiff.tagnosize
        holes, starts, stops, reach = [], [], [], 0
        for _, page in pages:
            if int(page.compression) in _READS_TILES:
                return None
            if len(page.tags) != struct.unpack(fmt, file.read_range(page.offset, size))[0]:
                return None  # tifffile dropped a tag (e.g. a value past the end): the file size would matter
            for tag in page.tags.values():
                end = tag.valueoffset + tag.valuebytecount
                reach = max(reach, end)
                if tag.code in _DATA_TAGS:
                    holes.append((tag.valueoffset, end))
            offsets = np.asarray(page.dataoffsets, dtype=np.uint64).ravel()
            lengths = np.asarray(page.databytecounts, dtype=np.uint64).ravel()
            if offsets.size != lengths.size:
                return None
            starts.append(offsets[lengths > 0])
            stops.append((offsets + lengths)[lengths > 0])
        reads = _merged(handle.reads)
        if not reads or reach > file.size:
            return None
        if _overlaps(reads, np.concatenate(starts), np.concatenate(stops)):
            return None  # tifffile read tile bytes: where depends on the offsets
        by_label = dict(pages)
        arrays: dict[str, list] = {}
        for name, img in parts.items():
            page = by_label[img.ifd]
            arrays[name] = []
            for codes, want in (((324, 273), img.offsets), ((325, 279), img.lengths)):
                tag = next((page.tags[c] for c in codes if c in page.tags), None)
                if tag is None:
                    return None
                dtype = np.dtype(tif.byteorder + tag.dataformat[-1])
                if dtype.kind != "u" or tag.count != want.size:
                    return None
                got = np.frombuffer(file.read_range(tag.valueoffset, tag.valuebytecount), dtype=dtype)
                if not np.array_equal(got.astype(np.uint64).reshape(want.shape), want):
                    return None  # tifffile made these values otherwise: not read here
                arrays[name].append((tag.valueoffset, tag.valuebytecount, dtype, want.size))
        compared = _without(reads, _merged(holes))
        needed = compared + [(start, start + n) for specs in arrays.values() for start, n, _, _ in specs]
        pieces = _merged([*needed, (reach - 1, reach)] if reach else needed, gap=cls.GAP)

        def locate(start: int) -> tuple[int, int]:
            i = next(i for i, (a, b) in enumerate(pieces) if a <= start < b)
            return i, start - pieces[i][0]

        compare = tuple((*locate(a), file.read_range(a, b - a)) for a, b in compared)
        specs = {name: (parts[name].offsets.shape, *((*locate(a), dtype, count) for a, _, dtype, count in spec))
                 for name, spec in arrays.items()}
        return cls(table.key, tuple((a, b - a) for a, b in pieces), compare, specs)

    def match(self, pieces: Sequence[Any], url: str) -> SceneTable | None:
        """The ``SceneTable`` of the file at ``url`` whose ``ranges`` are ``pieces``, if laid out as the template's file, else None."""
        if url.lower().endswith(".ndpi"):
            return None  # tifffile reads a classic TIFF named so as NDPI
        views = [memoryview(p) for p in pieces]
        if [len(v) for v in views] != [n for _, n in self.ranges]:
            return None
        for i, start, data in self.compare:
            if views[i][start : start + len(data)] != data:
                return None
        tables = {}
        for name, (grid, *columns) in self.specs.items():
            tables[name] = tuple(np.frombuffer(views[i], dtype=dtype, count=count, offset=start)
                                 .astype(np.uint64).reshape(grid) for i, start, dtype, count in columns)
        return SceneTable(self.key, tables)  # type: ignore[arg-type]


def _overlaps(ranges: list[tuple[int, int]], begin: np.ndarray, end: np.ndarray) -> bool:
    """Whether any byte range ``[start, stop)`` overlaps any segment ``[begin, end)`` (many tiles, few ranges)."""
    if not begin.size:
        return False
    order = np.argsort(begin, kind="stable")
    furthest = np.maximum.accumulate(end[order])  # the furthest end of the segments beginning up to here
    starts, stops = (np.array(column, dtype=np.uint64) for column in zip(*ranges))
    before = np.searchsorted(begin[order], stops, side="left")  # the segments beginning before each range ends
    return bool(np.any((before > 0) & (furthest[np.maximum(before, 1) - 1] > starts)))


def _merged(ranges: list[tuple[int, int]], gap: int = 0) -> list[tuple[int, int]]:
    """Byte ranges ``[start, stop)`` sorted, overlapping ones and those at most ``gap`` apart joined, empty ones left out."""
    out: list[list[int]] = []
    for start, stop in sorted(r for r in ranges if r[1] > r[0]):
        if out and start <= out[-1][1] + gap:
            out[-1][1] = max(out[-1][1], stop)
        else:
            out.append([start, stop])
    return [(a, b) for a, b in out]


def _without(ranges: list[tuple[int, int]], holes: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Merged ``ranges`` minus merged ``holes``."""
    out = []
    for start, stop in ranges:
        for h_start, h_stop in holes:
            if h_stop <= start or h_start >= stop:
                continue
            if h_start > start:
                out.append((start, h_start))
            start = max(start, h_stop)
        if start < stop:
            out.append((start, stop))
    return out


class _Unclosable:
    """The parser's ObstoreFile as tifffile sees it: closing tifffile's handle leaves the file (and its cache) open."""

    def __init__(self, file: ObstoreFile) -> None:
        self._file = file
        self.seek, self.tell, self.readinto = file.seek, file.tell, file.readinto  # tifffile's calls, unwrapped

    def __getattr__(self, name: str) -> Any:
        return getattr(self._file, name)

    def read(self, size: int | None = -1) -> bytes:
        """Bytes from the position on, sliced from the cached blocks (no ``readinto`` buffer per tag)."""
        file = self._file
        start = file.tell()
        data = file.read_range(start, file.size - start if size is None or size < 0 else size)
        file.seek(start + len(data))
        return data

    def close(self) -> None:
        pass


class _Warned(logging.Handler):
    """A logging handler counting the records it is handed (tifffile's warnings and errors while it parses)."""

    def __init__(self, level: int) -> None:
        super().__init__(level)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1


class _Recording(_Unclosable):
    """``_Unclosable`` keeping the byte range of every read tifffile makes (for ``SceneTemplate``)."""

    def __init__(self, file: ObstoreFile) -> None:
        super().__init__(file)
        self.reads: list[tuple[int, int]] = []
        self.readinto = self._readinto  # type: ignore[method-assign]

    def _readinto(self, buffer) -> int:
        start = self._file.tell()
        n = self._file.readinto(buffer)
        self.reads.append((start, start + n))
        return n

    def read(self, size: int | None = -1) -> bytes:
        start = self._file.tell()
        data = super().read(size)
        self.reads.append((start, start + len(data)))
        return data


__all__ = ["TIFF_SIGNATURES", "SceneTable", "SceneTemplate", "TIFFParser", "geotransform"]
