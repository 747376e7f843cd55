"""FITSParser: FITS files (images, binary tables, tile-compressed images) as virtual arrays.

The 2880-byte header blocks are read through ``ObstoreFile`` and parsed with
``astropy.io.fits.Header``; each HDU's data follows its header, so the data
offsets come from the header sizes alone (no data is read, except the small
tile tables of compressed images).

What each HDU becomes:

* the primary header's cards: the root group's attributes;
* image HDUs (the primary one if it has data, ``IMAGE`` extensions): one
  big-endian array each, one virtual chunk (bands of whole rows, each a
  byte range, when larger than ``IMAGE_CHUNK_BYTES``), named by ``EXTNAME``
  (``PRIMARY`` for the primary HDU, ``HDU{i}`` without a name or when a name
  repeats), its cards as attributes; ``BSCALE``/``BZERO``/``BLANK`` are also
  given as CF ``scale_factor``/``add_offset``/``_FillValue``, so CF decoding
  gives astropy's scaled values (``BZERO=32768`` 16-bit images decode to
  astropy's unsigned values); dimensions ``{name}_naxis{n}`` (``NAXISn``),
  in numpy order (last FITS axis first);
* binary tables: a group named like an image HDU, its cards as attributes,
  each fixed-width column an array of ``row`` (and ``{column}_repeat`` for
  repeated fields) with one chunk per row (a column's bytes are strided
  through the rows); a column with ``TDIMn`` has that shape after ``row``,
  in C order (``TDIM = '(4,3,2)'``: ``(row, 2, 3, 4)``, dimensions
  ``{column}_tdim3, _tdim2, _tdim1``; for character columns the first axis
  is the string length), as astropy gives it (also when ``TDIMn`` asks for
  fewer elements than ``TFORMn`` holds: the first ones; one asking for more
  is ignored, as by astropy); ``TSCALn``/``TZEROn``/``TNULLn`` as CF attributes;
  character columns are ``S{n}`` bytes (astropy gives them as ``str``, with
  trailing spaces removed); logical, bit and variable-length columns cannot
  be virtualized;
* tile-compressed images (``ZIMAGE = T``): an array of the image's shape with
  one chunk per tile, read from the heap: ``RICE_1`` through imagecodecs'
  ``rcomp`` zarr codec, ``GZIP_1``/``GZIP_2`` through zarr's gzip and shuffle
  codecs (integer images, or floats stored losslessly, without per-tile ``ZSCALE``);
  ``HCOMPRESS_1``, ``PLIO_1``, quantized floats and tiles that do not divide
  the image cannot be virtualized;
* ASCII tables and random groups cannot be virtualized.

HDUs that cannot be virtualized follow ``on_unsupported`` (as in ``HDFParser``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

import numpy as np

from vzdask.manifests.array import ManifestArray
from vzdask.manifests.group import ManifestGroup
from vzdask.manifests.manifest import ChunkManifest, normalize_url
from vzdask.manifests.metadata import create_array_metadata
from vzdask.manifests.store import ManifestStore
from vzdask.parsers.common import IsolatingParser, ObstoreFile, ParseError, finish, report_unsupported
from vzdask.policy import InlinePolicy
from vzdask.registry import ObjectStoreRegistry

BLOCK = 2880
CARD = 80
#: What every FITS file starts with.
FITS_SIGNATURE = b"SIMPLE  =                    T"
#: Uncompressed images larger than this are cut into bands of whole rows (contiguous byte ranges), so dask tasks
#: and reads stay this size.
IMAGE_CHUNK_BYTES = 16 * 2**20
#: Bytes read per cached block: headers are whole 2880-byte blocks at multiples of 2880, so blocks of four
#: hold a header of up to 144 cards at once, and a header fetched ahead costs 11.5 KB, not 64 KiB (what a
#: wrong guess of where the next header is wastes).
HEADER_BYTES = 4 * BLOCK
#: Headers fetched ahead in one request, guessing that HDUs are spaced alike (the detectors of one camera).
PREFETCH = 8
BITPIX_DTYPES = {8: "u1", 16: ">i2", 32: ">i4", 64: ">i8", -32: ">f4", -64: ">f8"}
#: Binary table TFORM codes with a fixed width that zarr holds: numpy dtype (big-endian).
TFORM_DTYPES = {"B": "u1", "I": ">i2", "J": ">i4", "K": ">i8", "E": ">f4", "D": ">f8", "C": ">c8", "M": ">c16"}
#: Width in bytes of every TFORM code (for the offsets of the columns after it).
TFORM_WIDTHS = {"L": 1, "X": 0, "B": 1, "I": 2, "J": 4, "K": 8, "A": 1, "E": 4, "D": 8, "C": 8, "M": 16, "P": 8, "Q": 16}


class FITSParser(IsolatingParser):
    """Parse FITS files into ManifestStores (see the module docstring for what each HDU becomes).

    Parameters
    ----------
    inline : InlinePolicy, optional
        Which chunks to copy into the manifest.
    drop_variables : iterable of str, optional
        Image HDUs or tables (by their array or group name) not to parse.
    on_unsupported : {"raise", "warn"}
        As for ``HDFParser``: HDUs and columns that cannot be virtualized are
        listed in one ``ParseError``, or left out with one warning.
    """

    def __init__(self, *, inline: InlinePolicy | None = None, drop_variables: Iterable[str] | None = None,
                 on_unsupported: str = "raise") -> None:
        super().__init__(inline=inline, drop_variables=drop_variables, on_unsupported=on_unsupported)

    @classmethod
    def guess_can_open(cls, head: bytes, url: str) -> bool:
        """True if ``head`` starts with the FITS primary header's ``SIMPLE = T`` card."""
        return head.startswith(FITS_SIGNATURE)

    def __call__(self, url: str, registry: ObjectStoreRegistry) -> ManifestStore:
        handle = self._open(url, registry, block_size=HEADER_BYTES)
        if handle.size == 0:
            raise ParseError(f"{url}: empty file; nothing to virtualize")
        if not handle.read_range(0, len(FITS_SIGNATURE)) == FITS_SIGNATURE:
            raise ParseError(f"{url}: not a FITS file (it does not start with 'SIMPLE  =  T')")
        file_url = normalize_url(url)
        arrays: dict[str, ManifestArray] = {}
        groups: dict[str, ManifestGroup] = {}
        attributes: dict[str, Any] = {}
        problems: list[tuple[str, str]] = []
        used: set[str] = set()
        for index, header, data_offset in _hdus(handle, url):
            if index == 0:
                attributes = _cards(header)
            name = _name(header, index, used)
            where = f"{url}: HDU {index} ({name!r})"
            if name in self.drop_variables:
                continue
            try:
                kind = _kind(header, index)
                if kind == "image":
                    if int(header.get("NAXIS", 0)) > 0:
                        arrays[name] = _image(header, data_offset, name, file_url, registry, where)
                elif kind == "compressed":
                    arrays[name] = _compressed(header, data_offset, name, handle, file_url, registry, where)
                elif kind == "table":
                    groups[name] = _table(header, data_offset, name, file_url, registry, where, problems)
                else:
                    raise ParseError(f"{where}: {kind} cannot be virtualized")
            except ParseError as err:
                problems.append((f"/{name}", str(err).removeprefix(f"{where}: ")))
        report_unsupported(url, problems, self.on_unsupported)
        return finish(ManifestGroup(arrays=arrays, groups=groups, attributes=attributes), registry, self.inline)


def _hdus(handle: ObstoreFile, url: str):
    """``(index, header, data offset)`` of every HDU, reading only header blocks."""
    from astropy.io import fits

    offset, index = 0, 0
    while offset < handle.size:
        cards: list[bytes] = []
        start = offset
        while True:
            block = handle.read_range(offset, BLOCK)
            if len(block) < BLOCK:
                if index > 0 and offset == start and not block.strip(b"\0 "):
                    return  # padding after the last HDU
                raise ParseError(f"{url}: HDU {index}: header truncated at byte {offset} (no END card)")
            offset += BLOCK
            found = [block[i : i + CARD] for i in range(0, BLOCK, CARD)]
            ends = [i for i, card in enumerate(found) if card[:8] == b"END     "]
            if ends:
                cards.extend(found[: ends[0] + 1])
                break
            cards.extend(found)
        try:
            header = _Values(fits.Header.fromstring(b"".join(cards).decode("ascii", "replace")))
        except Exception as err:
            raise ParseError(f"{url}: HDU {index}: unreadable header: {err}") from err
        yield index, header, offset
        offset += -(-_data_size(header) // BLOCK) * BLOCK
        index += 1
        stride = offset - start
        if offset + BLOCK <= handle.size and handle.cached_range(handle.url, offset, BLOCK) is None:
            # the next header, and a guess that those after it are spaced alike (a right guess saves requests)
            guesses = [offset + k * stride for k in range(PREFETCH)]
            handle.prefetch([*guesses, *(g + BLOCK - 1 for g in guesses)])  # a header block may span two blocks


def _data_size(header) -> int:
    naxis = int(header.get("NAXIS", 0))
    if naxis == 0:
        return 0
    axes = [int(header.get(f"NAXIS{i}", 0)) for i in range(1, naxis + 1)]
    if header.get("GROUPS") is True and axes[0] == 0:  # random groups: NAXIS1 = 0
        axes = axes[1:]
    count = int(np.prod(axes, dtype=np.int64))
    return abs(int(header["BITPIX"])) // 8 * int(header.get("GCOUNT", 1)) * (int(header.get("PCOUNT", 0)) + count)


def _kind(header, index: int) -> str:
    xtension = str(header.get("XTENSION", "")).strip() if index else ""
    if index == 0:
        return "random groups" if header.get("GROUPS") is True else "image"
    if xtension == "IMAGE":
        return "image"
    if xtension == "BINTABLE":
        return "compressed" if header.get("ZIMAGE") is True else "table"
    return f"extension {xtension or '?'!r} (e.g. an ASCII table)"


def _name(header, index: int, used: set[str]) -> str:
    name = "PRIMARY" if index == 0 else str(header.get("EXTNAME", "") or "").strip()
    if header.get("ZIMAGE") is True and header.get("ZEXTNAME"):
        name = str(header["ZEXTNAME"]).strip()
    if not name or name in used or "/" in name:
        name = f"HDU{index}"
    used.add(name)
    return name


class _Values(dict):
    """A header's values by keyword (a keyword's first card), and its cards as attributes (``_cards``).

    astropy's ``Header`` parses a card's value again at every lookup (with
    its configuration looked up each time): read once here, the lookups of
    a parse cost dict lookups.
    """

    def __init__(self, header) -> None:
        pairs = [(card.keyword, card.value) for card in header.cards]
        values: dict[str, Any] = {}
        for key, value in pairs:
            values.setdefault(key, value)
        super().__init__(values)
        self.attributes = _cards(pairs)


def _cards(cards) -> dict[str, Any]:
    """Header cards (``_Values``, or ``(keyword, value)`` pairs) as attributes: their values (COMMENT/HISTORY/blank
    cards as lists of text)."""
    if isinstance(cards, _Values):
        return dict(cards.attributes)
    out: dict[str, Any] = {}
    for key, value in cards:
        if key == "END":
            continue
        if key in ("COMMENT", "HISTORY", ""):
            out.setdefault(key or "BLANK_CARDS", []).append(str(value))
            continue
        if isinstance(value, complex):
            value = str(value)
        elif isinstance(value, np.generic):
            value = value.item()
        elif not isinstance(value, (bool, int, float, str)):
            value = str(value)  # undefined values
        out[key] = value
    return out


def _cf(scale: Any, zero: Any, blank: Any, integer: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if blank is not None and integer:
        out["_FillValue"] = int(blank)
    if scale is not None and float(scale) != 1.0:
        out["scale_factor"] = float(scale)
    if zero is not None and float(zero) != 0.0:
        out["add_offset"] = float(zero)
    return out


def _image(header, data_offset: int, name: str, url: str, registry, where: str) -> ManifestArray:
    bitpix = int(header["BITPIX"])
    if bitpix not in BITPIX_DTYPES:
        raise ParseError(f"{where}: BITPIX {bitpix} is not a FITS data type")
    dtype = np.dtype(BITPIX_DTYPES[bitpix])
    naxis = int(header["NAXIS"])
    shape = tuple(int(header[f"NAXIS{i}"]) for i in range(naxis, 0, -1))
    dims = tuple(f"{name}_naxis{i}" for i in range(naxis, 0, -1))
    attrs = {**_cards(header), **_cf(header.get("BSCALE"), header.get("BZERO"), header.get("BLANK"), bitpix > 0)}
    size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    chunks = _image_chunks(shape, dtype.itemsize)
    if not size:
        return _array(dtype, shape, chunks, dims, attrs, url, registry, [], [])
    step = int(np.prod(chunks, dtype=np.int64)) * dtype.itemsize
    count = -(-shape[0] // chunks[0])
    return _array(dtype, shape, chunks, dims, attrs, url, registry, [data_offset + i * step for i in range(count)],
                  [step] * count)


def _image_chunks(shape: tuple[int, ...], itemsize: int) -> tuple[int, ...]:
    """One chunk, or bands of whole rows (the data is contiguous) of at most ``IMAGE_CHUNK_BYTES`` that divide the image."""
    full = tuple(max(s, 1) for s in shape)
    row = int(np.prod(full[1:], dtype=np.int64)) * itemsize
    if full[0] * row <= IMAGE_CHUNK_BYTES:
        return full
    rows = max((d for d in range(1, full[0] + 1) if full[0] % d == 0 and d * row <= IMAGE_CHUNK_BYTES), default=1)
    return (rows, *full[1:])


def _endian(dtype: np.dtype) -> Literal["big"] | None:
    return "big" if dtype.itemsize > 1 else None


def _array(dtype: np.dtype, shape, chunks, dims, attrs, url: str, registry, offsets, lengths,
           codecs: list[Any] | None = None, fill: Any = 0) -> ManifestArray:
    """An array whose chunks, in C order over the chunk grid, are ``offsets``/``lengths`` of ``url``."""
    import warnings

    import zarr.codecs as zc

    if codecs is None:
        codecs = [zc.BytesCodec(endian=_endian(dtype))]
    grid = tuple(-(-s // c) for s, c in zip(shape, chunks))
    native = dtype.newbyteorder("=") if dtype.byteorder not in "=|" else dtype
    with warnings.catch_warnings():  # fixed-size bytes (character columns): no zarr v3 spec yet
        warnings.filterwarnings("ignore", message=".*does not have a Zarr V3 specification")
        metadata = create_array_metadata(shape=shape, chunk_shape=chunks, dtype=native, codecs=codecs,
                                         fill_value=fill, dimension_names=dims, attributes=attrs)
    if not offsets:
        return ManifestArray(metadata, ChunkManifest.empty(grid), registry=registry)
    present = np.ones(grid, bool)
    manifest = ChunkManifest.from_file_table(url, present, np.asarray(offsets, np.uint64).reshape(grid),
                                             np.asarray(lengths, np.uint64).reshape(grid))
    return ManifestArray(metadata, manifest, registry=registry)


def _columns(header, where: str) -> list[tuple[int, str, str, int, int]]:
    """``(number, name, code, repeat, byte offset in the row)`` of each column."""
    import re

    out, offset = [], 0
    for n in range(1, int(header.get("TFIELDS", 0)) + 1):
        form = str(header.get(f"TFORM{n}", "")).strip()
        match = re.fullmatch(r"(\d*)([LXBIJKAEDCMPQ])(.*)", form)
        if not match:
            raise ParseError(f"{where}: column {n} has TFORM {form!r}, which is not a FITS binary table format")
        repeat = int(match.group(1) or 1)
        code = match.group(2)
        name = str(header.get(f"TTYPE{n}", f"col{n}")).strip() or f"col{n}"
        out.append((n, name, code, repeat, offset))
        offset += -(-repeat // 8) if code == "X" else repeat * TFORM_WIDTHS[code]
    if offset != int(header["NAXIS1"]):
        raise ParseError(f"{where}: the columns take {offset} bytes per row but NAXIS1 is {header['NAXIS1']}")
    return out


def _table(header, data_offset: int, name: str, url: str, registry, where: str,
           problems: list[tuple[str, str]]) -> ManifestGroup:
    row_bytes, rows = int(header["NAXIS1"]), int(header["NAXIS2"])
    arrays = {}
    shape: tuple[int, ...]
    chunks: tuple[int, ...]
    dims: tuple[str, ...]
    for n, column, code, repeat, offset in _columns(header, where):
        if code in ("L", "X", "P", "Q"):
            kind = {"L": "logical", "X": "bit", "P": "variable-length", "Q": "variable-length"}[code]
            problems.append((f"/{name}/{column}", f"{kind} column (TFORM {code}) cannot be virtualized"))
            continue
        if repeat == 0:
            continue
        tdim = _tdim(header, n, repeat, f"{where}: column {n} ({column!r})")
        if code == "A":  # TDIM's first axis is the length of the strings
            dtype = np.dtype(f"S{tdim[0] if tdim else repeat}")
            axes = tdim[1:] if tdim else ()
        else:
            dtype = np.dtype(TFORM_DTYPES[code])
            axes = tdim if tdim else (repeat,) if repeat != 1 else ()
        inner = tuple(reversed(axes))  # C order: the last FITS axis first
        if tdim:
            names = tuple(f"{column}_tdim{i}" for i in range(len(tdim), len(tdim) - len(axes), -1))
        else:
            names = (f"{column}_repeat",) if axes else ()
        shape, chunks, dims = (rows, *inner), (1, *inner), ("row", *names)
        width = int(np.prod(inner, dtype=np.int64)) * dtype.itemsize  # the first elements of the field if TDIM
        # asks for fewer than TFORM holds
        attrs: dict[str, Any] = {}
        for key in ("TUNIT", "TDISP", "TDIM"):
            if f"{key}{n}" in header:
                attrs[key] = str(header[f"{key}{n}"])
        attrs.update(_cf(header.get(f"TSCAL{n}"), header.get(f"TZERO{n}"), header.get(f"TNULL{n}"),
                         dtype.kind in "iu"))
        offsets = [data_offset + r * row_bytes + offset for r in range(rows)]
        arrays[column] = _array(dtype, shape, chunks, dims, attrs, url, registry, offsets, [width] * rows,
                                fill=b"" if code == "A" else 0)
    return ManifestGroup(arrays=arrays, attributes=_cards(header))


def _tdim(header, n: int, repeat: int, where: str) -> tuple[int, ...] | None:
    """``TDIMn`` as its axes in FITS order (``(4,3,2)``), or None without one or, as astropy, when it asks for more
    elements than ``TFORMn`` holds."""
    text = header.get(f"TDIM{n}")
    if text is None:
        return None
    import re

    if not re.fullmatch(r"\s*\(\s*\d+(\s*,\s*\d+)*\s*\)\s*", str(text)):
        raise ParseError(f"{where}: TDIM{n} {text!r} is not a list of axis lengths such as '(4,3,2)'")
    axes = tuple(int(v) for v in str(text).strip().strip("()").split(","))
    if int(np.prod(axes, dtype=np.int64)) > repeat:
        return None
    return axes


def _compressed(header, data_offset: int, name: str, handle: ObstoreFile, url: str, registry,
                where: str) -> ManifestArray:
    import zarr.codecs as zc

    kind = str(header.get("ZCMPTYPE", "")).strip()
    bitpix = int(header["ZBITPIX"])
    dtype = np.dtype(BITPIX_DTYPES[bitpix])
    columns = {column: (code, offset) for _, column, code, _, offset in _columns(header, where)}
    if "ZBLANK" in columns:
        raise ParseError(f"{where}: blank values given per tile (a ZBLANK column); a zarr array has one fill value")
    if bitpix < 0 and ("ZSCALE" in columns or "ZSCALE" in header):
        raise ParseError(f"{where}: quantized floating-point tiles ({kind}, ZQUANTIZ "
                         f"{str(header.get('ZQUANTIZ', 'NO_DITHER')).strip()!r}) are scaled per tile; no zarr codec "
                         "undoes that")
    naxis = int(header["ZNAXIS"])
    size = [int(header[f"ZNAXIS{i}"]) for i in range(1, naxis + 1)]
    tile = [int(header.get(f"ZTILE{i}", size[0] if i == 1 else 1)) for i in range(1, naxis + 1)]
    if any(s % t for s, t in zip(size, tile)):
        raise ParseError(f"{where}: tiles {tile} do not divide the image {size}: the edge tiles are smaller, which "
                         "zarr chunks cannot be")
    values = {str(header.get(f"ZNAME{i}", "")).strip(): header.get(f"ZVAL{i}") for i in range(1, 10)}
    if kind == "RICE_1":
        if bitpix < 0:
            raise ParseError(f"{where}: RICE_1 tiles of floating-point values cannot be virtualized")
        codecs: list[Any] = [{"name": "imagecodecs_rcomp", "configuration": {"nblock": int(values.get("BLOCKSIZE")
                                                                                          or 32)}}]
        bytepix = int(values.get("BYTEPIX") or dtype.itemsize)
        if bytepix != dtype.itemsize:
            raise ParseError(f"{where}: RICE_1 with BYTEPIX {bytepix} for BITPIX {bitpix} cannot be virtualized")
    elif kind in ("GZIP_1", "GZIP_2"):
        codecs = [zc.BytesCodec(endian=_endian(dtype))]
        if kind == "GZIP_2" and dtype.itemsize > 1:
            codecs.append(zc.Shuffle(elementsize=dtype.itemsize))
        codecs.append(zc.GzipCodec(level=6))
    else:
        raise ParseError(f"{where}: tile compression {kind!r} has no zarr codec")
    if "COMPRESSED_DATA" not in columns or columns["COMPRESSED_DATA"][0] not in ("P", "Q"):
        raise ParseError(f"{where}: no COMPRESSED_DATA column of variable-length arrays")
    code, offset = columns["COMPRESSED_DATA"]
    row_bytes, rows = int(header["NAXIS1"]), int(header["NAXIS2"])
    table = np.frombuffer(handle.read_range(data_offset, row_bytes * rows), np.uint8).reshape(rows, row_bytes)
    descriptor = np.dtype(">i4" if code == "P" else ">i8")
    pairs = table[:, offset : offset + 2 * descriptor.itemsize].copy().view(descriptor).reshape(rows, 2)
    if (pairs[:, 0] == 0).any():
        raise ParseError(f"{where}: some tiles are stored uncompressed in another column; cannot virtualize them")
    heap = data_offset + int(header.get("THEAP", row_bytes * rows))
    shape = tuple(reversed(size))
    chunks = tuple(reversed(tile))
    if rows != int(np.prod([s // t for s, t in zip(size, tile)])):
        raise ParseError(f"{where}: {rows} tiles for a tile grid of {[s // t for s, t in zip(size, tile)]}")
    blank = header.get("BLANK", header.get("ZBLANK"))
    attrs = {**_cards(header), **_cf(header.get("BSCALE"), header.get("BZERO"), blank, bitpix > 0)}
    dims = tuple(f"{name}_naxis{i}" for i in range(naxis, 0, -1))
    return _array(dtype, shape, chunks, dims, attrs, url, registry, (heap + pairs[:, 1]).tolist(),
                  pairs[:, 0].tolist(), codecs=codecs)
