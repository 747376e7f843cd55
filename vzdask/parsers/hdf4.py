"""HDF4 / HDF-EOS2 parser: every scientific dataset (SDS) of an HDF4 file as a virtual array.

Written from the HDF4 file format specification. An HDF4 file is a list of
*data descriptors* (DDs, in linked DD blocks after the 4-byte magic), each
naming one element by ``(tag, ref)`` and giving its byte range. An SDS's
data is the element ``DFTAG_SD`` whose ref its numeric data group
(``DFTAG_NDG``) names; a *special* element (tag | 0x4000) starts with a
header saying how the data is really stored:

* plain: the whole array, contiguous (big-endian unless the number type's
  class says little-endian) -- one chunk;
* compressed (``SPECIAL_COMP``): one ``DFTAG_COMPRESSED`` element holding
  the whole array, compressed -- one chunk through a zarr codec;
* chunked (``SPECIAL_CHUNKED``): a chunk table (a vdata of ``origin``,
  ``chk_tag``, ``chk_ref`` records) names each written chunk's element, plain
  or compressed; chunks are stored full size (edge chunks padded, like
  zarr's); unwritten chunks are missing and read as the fill value;
* linked blocks (``SPECIAL_LINKED``, what an unlimited dimension makes):
  the bytes in several blocks. A manifest chunk is one byte range, so the
  array is cut into chunks of whole records that each fall within a block;
  where the blocks do not end on record boundaries the SDS cannot be
  virtualized and is refused.

Compression: deflate is zlib-wrapped (zarr's ``zlib`` codec). RLE, NBIT,
skipping-Huffman, SZIP and JPEG have no zarr codec that reads HDF4's
encoding: such an SDS is refused (``on_unsupported``).

Names, shapes, number types, attributes, dimension names and fill values
come from the SD interface's structure in the same file: a ``CDF0.0``
vgroup lists a ``Var0.0`` vgroup per SDS (in the order the HDF4 library
numbers them), each listing its dimensions (``Dim0.0``/``UDim0.0``
vgroups), attributes (``Attr0.0`` vdatas), number type, dimension record
and data group. Everything is read through
:class:`~vzdask.parsers.common.ObstoreFile` (cached 64 KiB blocks, any
object store); the small metadata elements outside the first block (the SD
interface writes them after the data) are fetched in one request. No HDF4
library is needed (the tests check every value against pyhdf's). Text
attributes lose their trailing NUL padding. An unlimited SDS's length is
what its data holds (the dimension record keeps the length first written);
SDSs sharing an unlimited dimension read as the fill value past their own
records, so the dimension has one length (the longest).

Only SDSs are read: raster images (GR), palettes and vdata tables other
than attributes are not variables here.

HDF-EOS2 files (a ``StructMetadata.0`` attribute): dimension names lose the
``:GridName`` suffix HDF-EOS gives them (``YDim:GeoGrid`` -> ``YDim``) when
no two grids or swaths would then share a name with different lengths, each
field gets its grid's or swath's name and projection parameters as
attributes, and the fields of a grid get 1-D coordinates computed from its
corners (cell centres, inlined): ``lat``/``lon`` in degrees for
``GCTP_GEO`` (corners in packed DMS), ``y``/``x`` in projection metres for
the other projections (their latitude and longitude need GCTP: not done),
unless the grid has 1-D coordinate fields of its own or the file has
variables of those names. Swath data fields get a
``coordinates`` attribute naming the swath's geolocation fields.

Attribute values are as stored. HDF4's ``scale_factor``/``add_offset``
(``SDsetcal``, with ``calibrated_nt``) mean ``value = scale_factor *
(stored - add_offset)``, not CF's ``stored * scale_factor + add_offset``:
CF decoding (xarray's) reads such SDSs wrongly, as it does through netCDF-C.
"""

from __future__ import annotations

import bisect
import math
import re
import struct
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from vzdask.manifests.array import ManifestArray
from vzdask.manifests.group import ManifestGroup
from vzdask.manifests.manifest import ChunkManifest
from vzdask.manifests.metadata import attribute_value, create_array_metadata
from vzdask.manifests.store import ManifestStore
from vzdask.parsers.common import (
    IsolatingParser,
    ObstoreFile,
    ParseError,
    finish,
    report_unsupported,
)
from vzdask.object_io import read_ranges
from vzdask.registry import ObjectStoreRegistry

#: The first four bytes of every HDF4 file.
HDF4_SIGNATURE = b"\x0e\x03\x13\x01"

# tags (HDF4 specification, appendix: tag numbers)
DFTAG_NULL = 1
DFTAG_LINKED = 20
DFTAG_COMPRESSED = 40
DFTAG_CHUNK = 61
DFTAG_NT = 106
DFTAG_SD = 702
DFTAG_NDG = 720
DFTAG_VH = 1962
DFTAG_VS = 1963
DFTAG_VG = 1965
SPECIAL_TAG = 0x4000

# special element codes
SPECIAL_LINKED = 1
SPECIAL_EXT = 2
SPECIAL_COMP = 3
SPECIAL_VLINKED = 4
SPECIAL_CHUNKED = 5
SPECIAL_BUFFERED = 6
SPECIAL_COMPRAS = 7
SPECIAL_NAMES = {SPECIAL_LINKED: "linked blocks", SPECIAL_EXT: "external file", SPECIAL_COMP: "compressed",
                 SPECIAL_VLINKED: "variable-length linked blocks", SPECIAL_CHUNKED: "chunked",
                 SPECIAL_BUFFERED: "buffered", SPECIAL_COMPRAS: "compressed raster"}

# compression codes
COMP_NONE = 0
COMP_DEFLATE = 4
COMP_NAMES = {0: "none", 1: "RLE", 2: "NBIT", 3: "skipping Huffman", 4: "deflate", 5: "SZIP", 7: "JPEG",
              12: "IMCOMP"}

#: HDF4 number type code -> numpy type (without byte order) and its name.
NUMBER_TYPES: dict[int, tuple[str, str]] = {
    3: ("u1", "DFNT_UCHAR8"),
    4: ("S1", "DFNT_CHAR8"),
    5: ("f4", "DFNT_FLOAT32"),
    6: ("f8", "DFNT_FLOAT64"),
    20: ("i1", "DFNT_INT8"),
    21: ("u1", "DFNT_UINT8"),
    22: ("i2", "DFNT_INT16"),
    23: ("u2", "DFNT_UINT16"),
    24: ("i4", "DFNT_INT32"),
    25: ("u4", "DFNT_UINT32"),
    26: ("i8", "DFNT_INT64"),
    27: ("u8", "DFNT_UINT64"),
}
#: What the SD interface reads where nothing was written and no ``_FillValue`` is set, per number type:
#: netCDF's defaults, the signed ones cast for the unsigned types (as the HDF4 library does), 0 for UCHAR8.
DEFAULT_FILL: dict[int, Any] = {
    3: 0, 4: b"\x00", 5: float(np.float32(9.9692099683868690e36)), 6: 9.9692099683868690e36,
    20: -127, 21: 129, 22: -32767, 23: 32769, 24: -2147483647, 25: 2147483649,
    26: -9223372036854775806, 27: 9223372036854775810,
}

#: Tags of elements whose bytes are metadata, with the largest one prefetched: vgroups, vdata headers,
#: vdata records (attributes, chunk tables), number types, dimension records, data groups, link tables
#: (data blocks share their tag: only small ones); special elements' bytes are their headers (4 KiB).
METADATA_TAGS = {1965: 2**16, 1962: 2**16, 1963: 2**16, 106: 64, 701: 2**12, 720: 2**12, 20: 2**10}
#: Prefetch up to this much in all, merging ranges this close.
MAX_PREFETCH = 2**22
PREFETCH_GAP = 2**14


class _Refused(Exception):
    """An SDS this parser cannot virtualize: the reason goes to ``report_unsupported``."""


@dataclass(frozen=True)
class Element:
    """One DD: where an element's bytes are, and whether they begin with a special-element header."""

    offset: int
    length: int
    special: bool


class HDF4Layout:
    """The DD list of an HDF4 file and readers of its elements (plain, linked) and vdatas."""

    def __init__(self, handle: ObstoreFile, url: str) -> None:
        self.handle = handle
        self.url = url
        self.elements: dict[tuple[int, int], Element] = {}
        self._starts: list[int] = []  # the prefetched metadata: sorted starts and their bytes
        self._pieces: list[bytes] = []
        self._read_dds()
        self._prefetch()

    def _prefetch(self) -> None:
        """Fetch every small metadata element outside the first block in one request.

        The SD interface writes its vgroups and vdatas when the file is
        closed, after the data, so in a large file they lie far from the DD
        blocks at its start; read one by one they would cost a request each.
        """
        wanted = sorted(
            (e.offset, e.length) for (tag, _), e in self.elements.items()
            if e.length and (e.special or tag in METADATA_TAGS) and e.length <= METADATA_TAGS.get(tag, 2**12)
            and self.handle.cached_range(self.handle.url, e.offset, e.length) is None
        )
        if not wanted:
            return
        merged: list[list[int]] = []
        total = 0
        for start, length in wanted:
            if total >= MAX_PREFETCH:
                break
            if merged and start <= merged[-1][1] + PREFETCH_GAP:
                total += max(0, start + length - merged[-1][1])
                merged[-1][1] = max(merged[-1][1], start + length)
            else:
                total += length
                merged.append([start, start + length])
        end = self.handle.size
        merged = [[a, min(b, end)] for a, b in merged if a < end]
        store, path = self.handle.registry.resolve(self.handle.url)
        pieces = read_ranges(store, path, [a for a, _ in merged], [b - a for a, b in merged], url=self.url,
                             what="HDF4 metadata", coalesce=0)
        self._starts = [a for a, _ in merged]
        self._pieces = [bytes(p) for p in pieces]

    def cached_range(self, url: str, start: int, length: int) -> bytes | None:
        """Bytes ``[start, start + length)`` of ``url`` if the parse read them, else None."""
        i = bisect.bisect_right(self._starts, start) - 1
        if url == self.url and i >= 0 and start + length <= self._starts[i] + len(self._pieces[i]):
            return self._pieces[i][start - self._starts[i] : start - self._starts[i] + length]
        return self.handle.cached_range(url, start, length)

    def _read(self, offset: int, length: int, what: str) -> bytes:
        i = bisect.bisect_right(self._starts, offset) - 1
        if i >= 0 and offset + length <= self._starts[i] + len(self._pieces[i]):
            at = offset - self._starts[i]
            return self._pieces[i][at : at + length]
        data = self.handle.read_range(offset, length)
        if len(data) != length:
            raise ParseError(f"{self.url}: truncated HDF4 file: {what} needs bytes {offset}-{offset + length} "
                             f"but the file has {self.handle.size} bytes")
        return data

    def _read_dds(self) -> None:
        head = self._read(0, 4, "the magic number")
        if head != HDF4_SIGNATURE:
            raise ParseError(f"{self.url}: not an HDF4 file: starts with {head!r}, expected {HDF4_SIGNATURE!r}")
        offset, seen = 4, set()
        while offset:
            if offset in seen:
                raise ParseError(f"{self.url}: corrupt HDF4 file: the DD blocks loop back to byte {offset}")
            seen.add(offset)
            count, following = struct.unpack(">hi", self._read(offset, 6, f"the DD block at byte {offset}"))
            if count < 0 or following < 0:
                raise ParseError(f"{self.url}: corrupt HDF4 file: DD block at byte {offset} says {count} DDs, "
                                 f"next block at {following}")
            raw = self._read(offset + 6, 12 * count, f"the DD block at byte {offset}")
            for tag, ref, start, length in struct.iter_unpack(">HHii", raw):
                if tag == DFTAG_NULL or start < 0 or length < 0:  # empty slots; -1: no data written
                    continue
                base = tag & ~SPECIAL_TAG if tag & SPECIAL_TAG else tag
                self.elements[(base, ref)] = Element(start, length, bool(tag & SPECIAL_TAG))
            offset = following

    def special_header(self, element: Element, what: str) -> tuple[int, bytes]:
        """``(special code, header bytes after the code)`` of a special element."""
        raw = self._read(element.offset, element.length, what)
        if len(raw) < 2:
            raise ParseError(f"{self.url}: corrupt HDF4 file: {what} has a {len(raw)}-byte special header")
        return struct.unpack(">H", raw[:2])[0], raw[2:]

    def ranges(self, tag: int, ref: int, what: str) -> list[tuple[int, int]] | None:
        """The byte ranges holding element ``(tag, ref)``'s data, in order (None: no such element)."""
        element = self.elements.get((tag, ref))
        if element is None:
            return None
        if not element.special:
            return [(element.offset, element.length)] if element.length else []
        code, header = self.special_header(element, what)
        if code != SPECIAL_LINKED:
            raise _Refused(f"{what} is a {SPECIAL_NAMES.get(code, f'special ({code})')} element, "
                           "which a byte range cannot reference")
        return self._linked(header, what)

    def _linked(self, header: bytes, what: str) -> list[tuple[int, int]]:
        """The blocks of a linked-block element as ``(offset, bytes used)``."""
        return [(offset, used) for offset, used, _stored in self.linked_blocks(header, what)]

    def linked_blocks(self, header: bytes, what: str) -> list[tuple[int, int, int]]:
        """The blocks of a linked-block element: ``(offset, bytes used, bytes stored)``, from its link tables."""
        total, _block_length, nblocks, link_ref = struct.unpack(">iiiH", header[:14])
        out: list[tuple[int, int, int]] = []
        have, seen = 0, set()
        while link_ref and have < total:
            if link_ref in seen:
                raise ParseError(f"{self.url}: corrupt HDF4 file: the link tables of {what} loop")
            seen.add(link_ref)
            table = self.elements.get((DFTAG_LINKED, link_ref))
            if table is None:
                raise ParseError(f"{self.url}: corrupt HDF4 file: link table {link_ref} of {what} is missing")
            raw = self._read(table.offset, 2 + 2 * nblocks, f"link table {link_ref} of {what}")
            link_ref, *refs = struct.unpack(f">{1 + nblocks}H", raw)
            for ref in refs:
                if not ref or have >= total:
                    break
                block = self.elements.get((DFTAG_LINKED, ref))
                if block is None:
                    raise ParseError(f"{self.url}: corrupt HDF4 file: block {ref} of {what} is missing")
                take = min(block.length, total - have)
                out.append((block.offset, take, block.length))
                have += take
        if have < total:
            raise ParseError(f"{self.url}: corrupt HDF4 file: the blocks of {what} hold {have} of its {total} bytes")
        return out

    def data(self, tag: int, ref: int, what: str) -> bytes:
        """All bytes of an element (metadata: small), its blocks joined."""
        ranges = self.ranges(tag, ref, what)
        if ranges is None:
            raise ParseError(f"{self.url}: corrupt HDF4 file: {what} (tag {tag}, ref {ref}) is missing")
        return b"".join(self._read(o, n, what) for o, n in ranges)

    def vdata_header(self, ref: int, what: str) -> VdataHeader:
        """The header (``DFTAG_VH``) of vdata ``ref``: records, fields, name and class."""
        raw = self.data(DFTAG_VH, ref, f"the header of {what}")
        try:
            _interlace, nrecords, record_size, nfields = struct.unpack(">hiHH", raw[:10])
            pos = 10
            types = struct.unpack(f">{nfields}H", raw[pos : pos + 2 * nfields])
            pos += 2 * nfields
            sizes = struct.unpack(f">{nfields}H", raw[pos : pos + 2 * nfields])
            pos += 4 * nfields  # the sizes and the (in-memory) offsets
            orders = struct.unpack(f">{nfields}H", raw[pos : pos + 2 * nfields])
            pos += 2 * nfields
            names = []
            for _ in range(nfields + 2):  # the field names, then the vdata's name and class
                (n,) = struct.unpack(">H", raw[pos : pos + 2])
                names.append(raw[pos + 2 : pos + 2 + n].decode("latin-1"))
                pos += 2 + n
        except struct.error as err:
            raise ParseError(f"{self.url}: corrupt HDF4 file: the header of {what} is cut short") from err
        fields = list(zip(names[:nfields], types, sizes, orders))
        return VdataHeader(ref, nrecords, record_size, fields, names[nfields], names[nfields + 1])

    def vdata_bytes(self, header: VdataHeader, what: str) -> bytes:
        """The records of a vdata, as stored."""
        if not header.nrecords:
            return b""
        body = self.data(DFTAG_VS, header.ref, f"the records of {what}")
        if len(body) < header.nrecords * header.record_size:
            raise ParseError(f"{self.url}: corrupt HDF4 file: {what} has {len(body)} bytes for "
                             f"{header.nrecords} records of {header.record_size} bytes")
        return body

    def vdata(self, ref: int, what: str) -> np.ndarray:
        """The records of vdata ``ref`` as a structured array (big-endian numeric fields)."""
        header = self.vdata_header(ref, what)
        formats, offsets, at = [], [], 0
        for name, code, size, order in header.fields:
            kind = NUMBER_TYPES.get(code & 0xFF)
            if kind is None or kind[0] == "S1":
                raise ParseError(f"{self.url}: {what}: field {name!r} has number type {code}, not a number")
            base = np.dtype(">" + kind[0])
            formats.append((base, (order,)) if order > 1 else base)
            offsets.append(at)
            at += size
        names = [name for name, *_ in header.fields]
        dtype = np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": header.record_size})
        return np.frombuffer(self.vdata_bytes(header, what), dtype, count=header.nrecords)

    def vgroup(self, ref: int, what: str) -> tuple[str, str, list[tuple[int, int]]]:
        """``(name, class, [(tag, ref), ...])`` of vgroup ``ref`` (``DFTAG_VG``)."""
        raw = self.data(DFTAG_VG, ref, what)
        try:
            (count,) = struct.unpack(">H", raw[:2])
            tags = struct.unpack(f">{count}H", raw[2 : 2 + 2 * count])
            refs = struct.unpack(f">{count}H", raw[2 + 2 * count : 2 + 4 * count])
            pos = 2 + 4 * count
            texts = []
            for _ in range(2):
                (n,) = struct.unpack(">H", raw[pos : pos + 2])
                texts.append(raw[pos + 2 : pos + 2 + n].decode("latin-1"))
                pos += 2 + n
        except struct.error as err:
            raise ParseError(f"{self.url}: corrupt HDF4 file: {what} is cut short") from err
        return texts[0], texts[1], list(zip(tags, refs))

    def of_tag(self, tag: int) -> list[int]:
        """The refs of every element with ``tag``, in file order."""
        found = [(e.offset, ref) for (t, ref), e in self.elements.items() if t == tag]
        return [ref for _, ref in sorted(found)]


@dataclass
class VdataHeader:
    """What a vdata header says: its records and fields (name, number type, bytes, order)."""

    ref: int
    nrecords: int
    record_size: int
    fields: list[tuple[str, int, int, int]]
    name: str
    cls: str


# --------------------------------------------------------------------------- #
# One SDS: where its chunks are
# --------------------------------------------------------------------------- #


@dataclass
class Storage:
    """How an SDS is stored: its chunk grid and codec, and each chunk's byte range (present or not)."""

    chunk_shape: tuple[int, ...]
    present: np.ndarray
    offsets: np.ndarray
    lengths: np.ndarray
    compression: int = COMP_NONE
    fill: bytes | None = None  # the fill value a chunked SDS's header holds


def _comp_header(header: bytes, what: str) -> tuple[int, int, int]:
    """``(uncompressed length, compressed data ref, compression code)`` of a ``SPECIAL_COMP`` header."""
    try:
        _version, length, ref, _model, code = struct.unpack(">HiHHH", header[:12])
    except struct.error as err:
        raise ParseError(f"{what}: corrupt compressed-element header") from err
    return length, ref, code


def _check_compression(code: int) -> int:
    """``code`` if a zarr codec decodes it (none, deflate), else refuse the SDS.

    SZIP is refused although a codec exists: imagecodecs-zarr's ``Szip``
    (``imagecodecs_szip``: ``options_mask``, ``pixels_per_block``,
    ``bits_per_pixel``, ``pixels_per_scanline``, ``header``; libaec) decodes
    a raw SZIP stream, and HDF4's own sources say where the parameters are
    (the compression header after the coder type: pixels, pixels per
    scanline, options mask, bits per pixel, pixels per block) and that each
    element written since HDF4 4.2r1 (options mask bit 0x10000) starts with a
    5-byte preamble (a stored-uncompressed flag, then the stream's length)
    before the stream. But no HDF4 library at hand writes or reads SZIP to
    check such a mapping's values against: pyhdf's wheels are built without
    libsz (``setcompress(SDC.COMP_SZIP, ...)``: "Encoder not available";
    reading an SZIP SDS fails), Debian's hdf4-tools likewise (``hrepack``:
    "SZIP compression is not available"), and none of the shared test files
    is SZIP-compressed. An unchecked mapping could give wrong values without
    an error, so such an SDS is refused.
    """
    if code == 5:
        raise _Refused("compressed with HDF4 SZIP, which this parser does not map to a zarr codec (no HDF4 "
                       "library at hand reads SZIP to check a mapping's values against)")
    if code not in (COMP_NONE, COMP_DEFLATE):
        raise _Refused(f"compressed with HDF4 {COMP_NAMES.get(code, f'code {code}')}, "
                       "for which no zarr codec reads HDF4's encoding")
    return code


def _compressed_range(layout: HDF4Layout, header: bytes, what: str) -> tuple[int, int, int]:
    """``(offset, length, compression)`` of a compressed element's data (one byte range or refused)."""
    _length, ref, code = _comp_header(header, f"{layout.url}: {what}")
    _check_compression(code)
    ranges = layout.ranges(DFTAG_COMPRESSED, ref, f"the compressed data of {what}")
    if ranges is None:
        raise ParseError(f"{layout.url}: corrupt HDF4 file: the compressed data (ref {ref}) of {what} is missing")
    if len(ranges) != 1:
        raise _Refused(f"its compressed data lies in {len(ranges)} linked blocks; a chunk reference is one byte range")
    return ranges[0][0], ranges[0][1], code


def sds_storage(layout: HDF4Layout, data_ref: int | None, shape: tuple[int, ...], itemsize: int,
                what: str) -> Storage:
    """Find the chunks of the SDS whose data element (``DFTAG_SD``) is ``data_ref`` (None: nothing written)."""
    whole = tuple(shape)
    nbytes = math.prod(shape) * itemsize

    def single(offset: int | None, length: int, compression: int = COMP_NONE) -> Storage:
        grid = tuple(1 if s else 0 for s in shape)
        present = np.full(grid, offset is not None and length > 0 and nbytes > 0)
        return Storage(tuple(max(s, 1) for s in whole), present, np.full(grid, offset or 0, np.uint64),
                       np.full(grid, length, np.uint64), compression)

    element = layout.elements.get((DFTAG_SD, data_ref)) if data_ref is not None else None
    if element is None:  # nothing written: every value is the fill value
        return single(None, 0)
    if not element.special:
        if element.length < nbytes:
            raise ParseError(f"{layout.url}: corrupt HDF4 file: the data of {what} has {element.length} bytes, "
                             f"its shape {whole} needs {nbytes}")
        return single(element.offset, nbytes)
    code, header = layout.special_header(element, f"the data of {what}")
    if code == SPECIAL_COMP:
        offset, length, compression = _compressed_range(layout, header, what)
        return single(offset, length, compression)
    if code == SPECIAL_CHUNKED:
        return _chunked(layout, header, shape, itemsize, what)
    if code == SPECIAL_LINKED:
        return _linked_storage(layout.linked_blocks(header, f"the data of {what}"), shape, itemsize)
    raise _Refused(f"its data is a {SPECIAL_NAMES.get(code, f'special ({code})')} element, "
                   "which a byte range cannot reference")


def _data_ref(layout: HDF4Layout, ndg_ref: int, what: str) -> int | None:
    """The ref of the ``DFTAG_SD`` data element listed in the SDS's numeric data group."""
    ndg = layout.elements.get((DFTAG_NDG, ndg_ref))
    if ndg is None:
        return None
    raw = layout.data(DFTAG_NDG, ndg_ref, f"the data group of {what}")
    pairs = struct.unpack(f">{len(raw) // 2}H", raw[: len(raw) // 4 * 4])
    for tag, ref in zip(pairs[::2], pairs[1::2]):
        if tag == DFTAG_SD:
            return ref
    return None


def _linked_storage(blocks: list[tuple[int, int, int]], shape: tuple[int, ...], itemsize: int) -> Storage:
    """Chunks of whole records, each within one block (an appendable SDS's data is in linked blocks)."""
    total = math.prod(shape) * itemsize
    if not total:
        grid = tuple(1 if s else 0 for s in shape)
        return Storage(tuple(max(s, 1) for s in shape), np.zeros(grid, bool), np.zeros(grid, np.uint64),
                       np.zeros(grid, np.uint64))
    if len(blocks) == 1:
        grid = (1,) * len(shape)
        return Storage(tuple(shape), np.ones(grid, bool), np.full(grid, blocks[0][0], np.uint64),
                       np.full(grid, total, np.uint64))
    record = total // shape[0] if shape else total
    if not shape or any(n % record for _, n, _stored in blocks[:-1]):
        raise _Refused(f"its data lies in {len(blocks)} linked blocks that do not end on record boundaries "
                       f"(blocks of {sorted({n for _, n, _stored in blocks})} bytes, records of {record} bytes); "
                       "a chunk reference is one byte range")
    rows = math.gcd(*(n // record for _, n, _stored in blocks[:-1]))
    size = rows * record
    starts: list[int] = []
    for offset, used, stored in blocks:
        for k in range(math.ceil(used / size)):
            if k * size + size > stored:  # the last chunk must be stored whole (zarr reads full chunks)
                raise _Refused(f"its last linked block holds {used} bytes, less than a chunk of {rows} records "
                               f"({size} bytes); a chunk reference cannot be shorter than its chunk")
            starts.append(offset + k * size)
    grid = (len(starts),) + (1,) * (len(shape) - 1)
    offsets = np.array(starts, np.uint64).reshape(grid)
    lengths = np.full(grid, size, np.uint64)
    return Storage((rows, *shape[1:]), np.ones(grid, bool), offsets, lengths)


def _chunked(layout: HDF4Layout, header: bytes, shape: tuple[int, ...], itemsize: int, what: str) -> Storage:
    """The chunk grid of a ``SPECIAL_CHUNKED`` SDS from its header and chunk table."""
    url = layout.url
    try:
        (_head_len, _version, _flag, _total, chunk_elems, nt_size, table_tag, table_ref, _sp_tag, _sp_ref,
         ndims) = struct.unpack(">iBiiiiHHHHi", header[:33])
        pos = 33
        dims = [struct.unpack(">iii", header[pos + 12 * i : pos + 12 * i + 12]) for i in range(ndims)]
        pos += 12 * ndims
        (fill_len,) = struct.unpack(">i", header[pos : pos + 4])
        fill = header[pos + 4 : pos + 4 + fill_len]
        pos += 4 + fill_len
        compression = COMP_NONE
        if len(header) >= pos + 6:
            sp_code, sp_len = struct.unpack(">Hi", header[pos : pos + 6])
            if sp_code == SPECIAL_COMP and sp_len >= 4:
                # the compression header of the chunks: model type, then compression code
                compression = struct.unpack(">HH", header[pos + 6 : pos + 10])[1]
    except struct.error as err:
        raise ParseError(f"{url}: corrupt HDF4 file: the chunked-element header of {what} is cut short") from err
    if ndims != len(shape):
        raise ParseError(f"{url}: corrupt HDF4 file: {what} has {len(shape)} dimensions, its chunk header {ndims}")
    if nt_size != itemsize:
        raise ParseError(f"{url}: corrupt HDF4 file: {what}: chunk header says {nt_size}-byte values, "
                         f"its number type {itemsize}")
    chunk_shape = tuple(int(c) for _flag, _length, c in dims)
    if any(c <= 0 for c in chunk_shape) or math.prod(chunk_shape) != chunk_elems:
        raise ParseError(f"{url}: corrupt HDF4 file: {what}: chunk shape {chunk_shape} "
                         f"does not hold {chunk_elems} values")
    _check_compression(compression)
    grid = tuple(math.ceil(s / c) for s, c in zip(shape, chunk_shape))
    present = np.zeros(grid, bool)
    offsets = np.zeros(grid, np.uint64)
    lengths = np.zeros(grid, np.uint64)
    if table_tag != DFTAG_VH:
        raise ParseError(f"{url}: corrupt HDF4 file: the chunk table of {what} has tag {table_tag}, not a vdata")
    table = layout.vdata(table_ref, f"the chunk table of {what}")
    chunk_bytes = math.prod(chunk_shape) * itemsize
    found: set[int] = set()
    for origin, tag, ref in zip(table["origin"].reshape(len(table), -1), table["chk_tag"], table["chk_ref"]):
        index = tuple(int(i) for i in origin)
        if len(index) != len(grid) or any(not 0 <= i < g for i, g in zip(index, grid)):
            continue  # a chunk beyond the current extent (an unlimited dimension written past, then not)
        chunk_what = f"chunk {index} of {what}"
        element = layout.elements.get((int(tag) & ~SPECIAL_TAG, int(ref)))
        if element is None:
            continue
        if not element.special:
            if compression != COMP_NONE or element.length < chunk_bytes:
                raise _Refused(f"{chunk_what} is stored uncompressed ({element.length} bytes) unlike the others")
            present[index], offsets[index], lengths[index] = True, element.offset, chunk_bytes
            found.add(COMP_NONE)
            continue
        code, chunk_header = layout.special_header(element, chunk_what)
        if code == SPECIAL_COMP:
            offset, length, chunk_comp = _compressed_range(layout, chunk_header, chunk_what)
            found.add(chunk_comp)
        elif code == SPECIAL_LINKED:
            blocks = layout._linked(chunk_header, chunk_what)
            if len(blocks) != 1:
                raise _Refused(f"{chunk_what} lies in {len(blocks)} linked blocks; a chunk reference is one byte range")
            (offset, length), chunk_comp = blocks[0], COMP_NONE
            found.add(chunk_comp)
        else:
            raise _Refused(f"{chunk_what} is a {SPECIAL_NAMES.get(code, f'special ({code})')} element")
        present[index], offsets[index], lengths[index] = True, offset, length
    if len(found) > 1:
        raise _Refused(f"its chunks are stored with different compressions ({sorted(found)})")
    if found:
        compression = found.pop()
    return Storage(chunk_shape, present, offsets, lengths, compression, fill or None)


# --------------------------------------------------------------------------- #
# HDF-EOS2: StructMetadata.0
# --------------------------------------------------------------------------- #


@dataclass
class EOSObject:
    """One HDF-EOS2 grid or swath: its name, kind, parameters and fields' dimension lists."""

    name: str
    kind: str  # "grid" or "swath"
    params: dict[str, str]
    fields: dict[str, tuple[str, ...]]
    geo_fields: tuple[str, ...] = ()


_ODL_LINE = re.compile(r"^\s*(\w+)\s*=\s*(.*?)\s*$")


def parse_struct_metadata(text: str) -> list[EOSObject]:
    """The grids and swaths of an HDF-EOS2 ``StructMetadata.0`` (ODL) text."""
    objects: list[EOSObject] = []
    stack: list[str] = []
    current: EOSObject | None = None
    field_name: str | None = None
    field_dims: tuple[str, ...] = ()
    for line in text.splitlines():
        match = _ODL_LINE.match(line)
        if not match:
            continue
        key, value = match.groups()
        if key in ("GROUP", "OBJECT"):
            stack.append(value)
            if len(stack) == 2 and stack[0] in ("GridStructure", "SwathStructure"):
                kind = "grid" if stack[0] == "GridStructure" else "swath"
                current = EOSObject(value, kind, {}, {})
                objects.append(current)
            field_name, field_dims = None, ()
        elif key in ("END_GROUP", "END_OBJECT"):
            if current is not None and field_name is not None and len(stack) == 4:
                current.fields[field_name] = field_dims
                if stack[2] == "GeoField":
                    current.geo_fields += (field_name,)
                field_name = None
            if stack:
                stack.pop()
            if len(stack) < 2:
                current = None
        elif current is not None:
            if len(stack) == 2:
                current.params[key] = value.strip('"')
                if key in ("GridName", "SwathName"):
                    current.name = value.strip('"')
            elif len(stack) == 4 and key in ("DataFieldName", "GeoFieldName"):
                field_name = value.strip('"')
            elif len(stack) == 4 and key == "DimList":
                field_dims = tuple(d.strip().strip('"') for d in value.strip("()").split(",") if d.strip())
    return objects


def _dms_to_degrees(value: float) -> float:
    """HDF-EOS packs GEO corner angles as DDDMMMSSS.SS: to decimal degrees."""
    sign = -1.0 if value < 0 else 1.0
    value = abs(value)
    degrees = math.floor(value / 1e6)
    minutes = math.floor((value - degrees * 1e6) / 1e3)
    seconds = value - degrees * 1e6 - minutes * 1e3
    return sign * (degrees + minutes / 60 + seconds / 3600)


def _pair(text: str) -> tuple[float, float]:
    x, y = (float(v) for v in text.strip("()").split(","))
    return x, y


def geo_coordinates(grid: EOSObject) -> dict[str, tuple[str, np.ndarray]] | None:
    """The 1-D coordinates of a grid's cells (centres, or corners with ``HDFE_CORNER``), from its corners.

    ``GridOrigin`` names the corner the first row and column are at
    (``HDFE_GD_UL`` by default): from the right or the bottom, the
    coordinates run backwards.

    ``{"lat": ("YDim", degrees), "lon": ("XDim", degrees)}`` for a
    ``GCTP_GEO`` grid (corners in packed DMS); ``{"y": ("YDim", metres),
    "x": ("XDim", metres)}`` in the projection's plane for the others
    (latitude and longitude of those need the GCTP projection: not done).
    None when the grid does not say its size and corners.
    """
    params = grid.params
    try:
        nx, ny = int(params["XDim"]), int(params["YDim"])
        left, top = _pair(params["UpperLeftPointMtrs"])
        right, bottom = _pair(params["LowerRightMtrs"])
    except (KeyError, ValueError):
        return None
    offset = 0.0 if params.get("PixelRegistration") == "HDFE_CORNER" else 0.5
    geographic = params.get("Projection") == "GCTP_GEO"
    if geographic:
        left, right = _dms_to_degrees(left), _dms_to_degrees(right)
        top, bottom = _dms_to_degrees(top), _dms_to_degrees(bottom)
    columns, rows = np.arange(nx) + offset, np.arange(ny) + offset
    origin = params.get("GridOrigin", "HDFE_GD_UL")  # the corner of the first value: flip from it
    if origin in ("HDFE_GD_UR", "HDFE_GD_LR"):
        columns = nx - columns
    if origin in ("HDFE_GD_LL", "HDFE_GD_LR"):
        rows = ny - rows
    xs = left + columns * ((right - left) / nx)
    ys = top + rows * ((bottom - top) / ny)
    if geographic:
        return {"lat": ("YDim", ys), "lon": ("XDim", xs)}
    return {"y": ("YDim", ys), "x": ("XDim", xs)}


# --------------------------------------------------------------------------- #
# The parser
# --------------------------------------------------------------------------- #


# --------------------------------------------------------------------------- #
# The SD interface's structure: vgroups of variables, dimensions and attributes
# --------------------------------------------------------------------------- #

DFTAG_SDD = 701
DFNT_LITEND = 0x4000


@dataclass
class SDSInfo:
    """One SDS as the SD interface's vgroups describe it."""

    name: str
    ref: int  # its numeric data group's ref (what pyhdf's ``SDS.ref()`` gives)
    nt: int
    byteorder: str
    dims: list[str]
    shape: tuple[int, ...]
    unlimited: bool  # the first dimension is unlimited: its length is what the data holds
    data_ref: int | None
    attributes: dict[str, Any]


@dataclass
class SDFile:
    """The global attributes and the SDSs (in the SD interface's order) of an HDF4 file."""

    attributes: dict[str, Any]
    datasets: list[SDSInfo]


def read_sd(layout: HDF4Layout) -> SDFile:
    """The SD interface's view of the file: its ``CDF0.0`` vgroup's ``Var0.0`` vgroups and ``Attr0.0`` vdatas."""
    url = layout.url
    roots = []
    for ref in layout.of_tag(DFTAG_VG):
        name, cls, entries = layout.vgroup(ref, f"vgroup {ref}")
        if cls == "CDF0.0":
            roots.append(entries)
    if not roots:
        if layout.of_tag(DFTAG_NDG) or layout.of_tag(DFTAG_SD):
            raise ParseError(f"{url}: the file has scientific data but no SD interface structure (no 'CDF0.0' "
                             "vgroup): files written only with the old DFSD interface are not supported")
        return SDFile({}, [])
    attributes: dict[str, Any] = {}
    datasets: list[SDSInfo] = []
    for entries in roots:
        for tag, ref in entries:
            if tag == DFTAG_VH:
                _add_attribute(layout, ref, attributes, "a global attribute")
            elif tag == DFTAG_VG:
                name, cls, members = layout.vgroup(ref, f"vgroup {ref}")
                if cls == "Var0.0":
                    datasets.append(_read_variable(layout, name, members))
    return SDFile(attributes, datasets)


def _add_attribute(layout: HDF4Layout, ref: int, into: dict[str, Any], what: str) -> None:
    """Read an ``Attr0.0`` vdata (one field, ``VALUES``) into ``into``; other vdatas are skipped."""
    header = layout.vdata_header(ref, what)
    if header.cls != "Attr0.0" or len(header.fields) != 1:
        return
    _field, code, size, order = header.fields[0]
    what = f"attribute {header.name!r}"
    raw = layout.vdata_bytes(header, what)
    count = order * header.nrecords
    kind = NUMBER_TYPES.get(code & 0xFF)
    if kind is None:
        return
    if kind[0] == "S1":
        into[header.name] = raw[:count].decode("latin-1").rstrip("\x00")
        return
    values = np.frombuffer(raw, ("<" if code & DFNT_LITEND else ">") + kind[0], count=count)
    into[header.name] = values[0] if count == 1 else values


def _read_variable(layout: HDF4Layout, name: str, members: list[tuple[int, int]]) -> SDSInfo:
    """An SDS from its ``Var0.0`` vgroup: dimensions, attributes, number type, data group."""
    what = f"SDS {name!r}"
    dims: list[str] = []
    unlimited: list[bool] = []
    attributes: dict[str, Any] = {}
    nt_ref = sdd_ref = ndg_ref = data_ref = None
    for tag, ref in members:
        if tag == DFTAG_VG:
            dim, cls, _ = layout.vgroup(ref, f"a dimension of {what}")
            if cls in ("Dim0.0", "UDim0.0"):
                dims.append(dim)
                unlimited.append(cls == "UDim0.0")
        elif tag == DFTAG_VH:
            _add_attribute(layout, ref, attributes, f"an attribute of {what}")
        elif tag == DFTAG_NT:
            nt_ref = ref
        elif tag == DFTAG_SDD:
            sdd_ref = ref
        elif tag == DFTAG_NDG:
            ndg_ref = ref
        elif tag == DFTAG_SD:
            data_ref = ref
    if sdd_ref is None or ndg_ref is None:
        raise ParseError(f"{layout.url}: corrupt HDF4 file: {what} has no dimension record or data group")
    sdd = layout.data(DFTAG_SDD, sdd_ref, f"the dimension record of {what}")
    try:
        (rank,) = struct.unpack(">H", sdd[:2])
        shape = struct.unpack(f">{rank}i", sdd[2 : 2 + 4 * rank])
        nt_tag, sdd_nt_ref = struct.unpack(">HH", sdd[2 + 4 * rank : 6 + 4 * rank])
    except struct.error as err:
        raise ParseError(f"{layout.url}: corrupt HDF4 file: the dimension record of {what} is cut short") from err
    nt_ref = nt_ref if nt_ref is not None else sdd_nt_ref
    nt = layout.data(DFTAG_NT, nt_ref, f"the number type of {what}")
    if len(nt) < 4:
        raise ParseError(f"{layout.url}: corrupt HDF4 file: the number type of {what} is cut short")
    # class: 1 big-endian (IEEE floats, MBO integers), 4 little-endian (PC, IBO); bytes have none
    byteorder = "<" if nt[3] == 4 else ">"
    if len(dims) != rank:  # dimensions without vgroups: the SD interface names them fakeDim<n>
        dims = dims + [f"fakeDim{i}" for i in range(len(dims), rank)]
        unlimited = unlimited + [False] * (rank - len(unlimited))
    if data_ref is None:
        data_ref = _data_ref(layout, ndg_ref, what)
    return SDSInfo(name, ndg_ref, nt[1], byteorder, dims, tuple(int(n) for n in shape),
                   bool(unlimited and unlimited[0]), data_ref, attributes)


def _records(layout: HDF4Layout, data_ref: int | None, record_bytes: int, what: str) -> int:
    """How many records an unlimited SDS's data holds (the dimension record keeps the first length written)."""
    element = layout.elements.get((DFTAG_SD, data_ref)) if data_ref is not None else None
    if element is None or not record_bytes:
        return 0
    if not element.special:
        return element.length // record_bytes
    code, header = layout.special_header(element, f"the data of {what}")
    if code in (SPECIAL_LINKED, SPECIAL_COMP):  # the logical length comes first (after the version for COMP)
        length = struct.unpack(">i", header[:4] if code == SPECIAL_LINKED else header[2:6])[0]
        return length // record_bytes
    if code == SPECIAL_CHUNKED:
        return struct.unpack(">i", header[37:41])[0]  # the first dimension's length (after its flag)
    raise _Refused(f"its data is a {SPECIAL_NAMES.get(code, f'special ({code})')} element")


def _json_value(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return attribute_value(value)
    return value


class HDF4Parser(IsolatingParser):
    """Parse HDF4 (and HDF-EOS2) files: every SDS as a virtual array.

    Parameters
    ----------
    inline : InlinePolicy, optional
        Which chunks to copy into the manifest.
    group : str, optional
        Only ``None`` or ``"/"``: the SD interface is flat.
    drop_variables : iterable of str, optional
        SDSs not to parse.
    on_unsupported : {"raise", "warn"}
        An SDS that cannot be virtualized (RLE/NBIT/SZIP/JPEG compression,
        data in linked blocks that a byte range cannot reference, an
        external file) does not stop the others: ``"raise"`` raises one
        ``ParseError`` listing them, ``"warn"`` leaves them out with one
        warning.

    Examples
    --------
    >>> store = HDF4Parser()("s3://bucket/MOD021KM.hdf", registry)  # doctest: +SKIP
    """

    @classmethod
    def guess_can_open(cls, head: bytes, url: str) -> bool:
        """True if ``head`` starts with the HDF4 magic number 0x0e031301."""
        return head.startswith(HDF4_SIGNATURE)

    def __call__(self, url: str, registry: ObjectStoreRegistry) -> ManifestStore:
        return self.parse_keeping_reads(url, registry)[0]

    def parse_keeping_reads(self, url: str, registry: ObjectStoreRegistry):
        """The store, and the bytes read while parsing (dimension scales in the first block load without a request)."""
        if self.group not in (None, "", "/"):
            raise ParseError(f"{url}: HDF4 SDSs are not in groups; group={self.group!r} cannot be opened")
        handle = self._open(url, registry)
        if handle.size == 0:
            raise ParseError(f"{url}: empty file; nothing to virtualize")
        layout = HDF4Layout(handle, url)
        sd = read_sd(layout)
        group, problems = self._group(sd, layout, url, registry)
        report_unsupported(url, problems, self.on_unsupported)
        return finish(group, registry, self.inline), layout.cached_range

    def _group(self, sd: SDFile, layout: HDF4Layout, url: str,
               registry: ObjectStoreRegistry) -> tuple[ManifestGroup, list[tuple[str, str]]]:
        attributes = {k: _json_value(v) for k, v in sd.attributes.items()}
        metadata = attributes.get("StructMetadata.0")
        eos = parse_struct_metadata(metadata) if isinstance(metadata, str) else []
        rename = _dimension_renames(sd.datasets, eos)
        field_object = {f: obj for obj in eos for f in obj.fields}
        arrays: dict[str, ManifestArray] = {}
        problems: list[tuple[str, str]] = []
        wanted = [info for info in sd.datasets if info.name not in self.drop_variables]
        refused: dict[int, str] = {}
        longest: dict[str, int] = {}  # unlimited dimension -> the most records any SDS over it holds
        for info in wanted:
            if info.unlimited:
                try:
                    record = math.prod(info.shape[1:]) * _dtype(info).itemsize
                    info.shape = (_records(layout, info.data_ref, record, f"SDS {info.name!r}"), *info.shape[1:])
                except _Refused as err:
                    refused[id(info)] = str(err)
                    continue
                longest[info.dims[0]] = max(longest.get(info.dims[0], 0), info.shape[0])
        for info in wanted:
            if info.name in arrays:
                problems.append((f"/{info.name}", f"SDS {info.name!r}: a second SDS of the same name"))
                continue
            try:
                if id(info) in refused:
                    raise _Refused(refused[id(info)])
                length = longest.get(info.dims[0]) if info.unlimited else None
                arrays[info.name] = _array(info, layout, url, registry, rename, field_object.get(info.name), length)
            except _Refused as err:
                problems.append((f"/{info.name}", f"SDS {info.name!r}: {err}"))
        _add_geo_coordinates(arrays, eos, rename, self.drop_variables, registry)
        try:
            return ManifestGroup(arrays=arrays, attributes=attributes), problems
        except ValueError as err:
            raise ParseError(f"{url}: {err}") from err


def _dtype(info: SDSInfo) -> np.dtype:
    """The stored data type of an SDS (byte order from its number type's class)."""
    kind = NUMBER_TYPES.get(info.nt)
    if kind is None:
        raise _Refused(f"number type {info.nt} has no zarr data type")
    return np.dtype(kind[0]) if kind[0] in ("S1", "u1", "i1") else np.dtype(info.byteorder + kind[0])


def _array(info: SDSInfo, layout: HDF4Layout, url: str, registry: ObjectStoreRegistry,
           rename: dict[str, str], eos: EOSObject | None, length: int | None = None) -> ManifestArray:
    """The ManifestArray of one SDS; ``length``: the unlimited dimension's length in the file.

    An SDS holding fewer records than another over the same unlimited
    dimension reads as the fill value past its own records (netCDF's
    reading), so the dataset has one length for the dimension.
    """
    what = f"SDS {info.name!r}"
    dtype = _dtype(info)
    shape = info.shape
    storage = sds_storage(layout, info.data_ref, shape, dtype.itemsize, what)
    if length is not None and length > shape[0]:
        storage = _padded(storage, length)
        shape = (length, *shape[1:])
    attrs = {k: _json_value(v) for k, v in info.attributes.items()}
    fill = _fill_value(info, dtype, storage)
    if eos is not None:
        attrs.setdefault(f"HDFEOS_{eos.kind.upper()}_NAME", eos.name)
        for key in ("Projection", "UpperLeftPointMtrs", "LowerRightMtrs", "ProjParams", "SphereCode",
                    "GridOrigin", "PixelRegistration", "ZoneCode"):
            if key in eos.params:
                attrs.setdefault(f"HDFEOS_{key}", eos.params[key])
        if eos.kind == "swath" and eos.geo_fields and info.name not in eos.geo_fields:
            attrs.setdefault("coordinates", " ".join(eos.geo_fields))
    if "_FillValue" in attrs and dtype.kind != "S":
        attrs["_FillValue"] = np.asarray(fill).item()
    elif dtype.kind == "S":
        attrs.pop("_FillValue", None)
    codecs: list[Any] = [{"name": "bytes", "configuration": {"endian": "big" if dtype.byteorder == ">" else "little"}}
                         if dtype.itemsize > 1 else {"name": "bytes"}]
    if storage.compression == COMP_DEFLATE:
        codecs.append({"name": "numcodecs.zlib", "configuration": {"level": 1}})
    if storage.present.any():
        end = int((storage.offsets + storage.lengths)[storage.present].max())
        if end > layout.handle.size:
            raise ParseError(f"{url}: truncated HDF4 file: the data of {what} ends at byte {end}, "
                             f"but the file has {layout.handle.size} bytes")
    if storage.present.size:
        manifest = ChunkManifest.from_file_table(url, storage.present, storage.offsets, storage.lengths)
    else:  # a dimension of length 0 (an unlimited one never written)
        manifest = ChunkManifest.empty(storage.present.shape)
    native = dtype.newbyteorder("=") if dtype.itemsize > 1 else dtype
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have a Zarr V3 specification")
        metadata = create_array_metadata(shape=shape, chunk_shape=storage.chunk_shape, dtype=native,
                                         codecs=codecs, fill_value=fill,
                                         dimension_names=[rename.get(d, d) for d in info.dims],
                                         attributes=attrs)
    return ManifestArray(metadata, manifest, registry=registry)


def _padded(storage: Storage, length: int) -> Storage:
    """``storage`` with missing chunks appended along the first axis to cover ``length`` records."""
    rows = storage.chunk_shape[0]
    extra = math.ceil(length / rows) - storage.present.shape[0]
    if extra <= 0:
        return storage
    pad = [(0, extra)] + [(0, 0)] * (storage.present.ndim - 1)
    if storage.present.size == 0:  # no records of its own: a one-chunk-wide grid, all missing
        grid = (math.ceil(length / rows), *storage.present.shape[1:])
        return Storage(storage.chunk_shape, np.zeros(grid, bool), np.zeros(grid, np.uint64),
                       np.zeros(grid, np.uint64), storage.compression, storage.fill)
    return Storage(storage.chunk_shape, np.pad(storage.present, pad), np.pad(storage.offsets, pad),
                   np.pad(storage.lengths, pad), storage.compression, storage.fill)


def _fill_value(info: SDSInfo, dtype: np.dtype, storage: Storage) -> Any:
    """The value unwritten data reads as: ``_FillValue``, else the chunk header's, else the library's default."""
    native = dtype.newbyteorder("=") if dtype.itemsize > 1 else dtype
    value = info.attributes.get("_FillValue")
    if dtype.kind == "S":
        if isinstance(value, str) and len(value.encode("latin-1")) == 1:
            return value.encode("latin-1")
        return storage.fill[:1] if storage.fill else DEFAULT_FILL[4]
    if value is not None and not isinstance(value, str) and np.size(value) >= 1:
        return np.asarray(value).ravel()[0].astype(native)
    if storage.fill is not None and len(storage.fill) == dtype.itemsize:
        return np.frombuffer(storage.fill, dtype)[0].astype(native)
    return np.array(DEFAULT_FILL[info.nt], dtype=native)[()]


def _dimension_renames(datasets: list[SDSInfo], eos: list[EOSObject]) -> dict[str, str]:
    """HDF-EOS ``Dim:Object`` names -> ``Dim`` where that stays unambiguous (same length everywhere)."""
    if not eos:
        return {}
    lengths: dict[str, set[int]] = {}
    full: dict[str, set[str]] = {}
    for info in datasets:
        for dname, length in zip(info.dims, info.shape):
            if ":" in dname:
                short = dname.rsplit(":", 1)[0]
                lengths.setdefault(short, set()).add(int(length))
                full.setdefault(short, set()).add(dname)
    return {name: short for short, names in full.items() if len(lengths[short]) == 1 for name in names}


def _add_geo_coordinates(arrays: dict[str, ManifestArray], eos: list[EOSObject], rename: dict[str, str],
                         drop: frozenset[str], registry: ObjectStoreRegistry) -> None:
    """The computed coordinates of each grid without coordinate fields of its own, named by its fields."""
    grids = [obj for obj in eos if obj.kind == "grid"]
    for obj in grids:
        coords = geo_coordinates(obj)
        if coords is None:
            continue
        for cname, (dim, values) in coords.items():
            if any(fdims == (dim,) for fdims in obj.fields.values()):
                continue  # the grid has its own coordinate field over that dimension
            dim_name = rename.get(f"{dim}:{obj.name}", f"{dim}:{obj.name}")
            key = cname if len(grids) == 1 else f"{cname}:{obj.name}"
            if key in arrays or key in drop:
                continue
            arrays[key] = _inlined_coordinate(values, dim_name, cname, registry)
            for fname, fdims in obj.fields.items():
                if fname in arrays and dim in fdims:
                    have = str(arrays[fname].metadata.attributes.get("coordinates", "")).split()
                    if key not in have:
                        arrays[fname] = _with_attributes(arrays[fname], {"coordinates": " ".join([*have, key])})


def _inlined_coordinate(values: np.ndarray, dim: str, name: str, registry: ObjectStoreRegistry) -> ManifestArray:
    """A small computed coordinate held in the manifest (little-endian float64 bytes)."""
    data = np.ascontiguousarray(values, dtype="<f8")
    units, standard_name = {"lat": ("degrees_north", "latitude"), "lon": ("degrees_east", "longitude"),
                            "y": ("m", "projection_y_coordinate"), "x": ("m", "projection_x_coordinate")}[name]
    attrs = {"units": units, "standard_name": standard_name,
             "comment": "computed from the HDF-EOS2 grid's corners (UpperLeftPointMtrs, LowerRightMtrs)"}
    metadata = create_array_metadata(shape=data.shape, chunk_shape=data.shape, dtype=np.float64,
                                     codecs=[{"name": "bytes", "configuration": {"endian": "little"}}],
                                     fill_value=np.nan, dimension_names=(dim,), attributes=attrs)
    return ManifestArray(metadata, ChunkManifest.inlined_chunk(data.tobytes(), 1), registry=registry)


def _with_attributes(array: ManifestArray, extra: dict[str, Any]) -> ManifestArray:
    metadata = array.metadata
    attrs = {**metadata.attributes, **extra}
    return ManifestArray(metadata.update_attributes(attrs), array.manifest, registry=array.registry)


__all__ = ["HDF4_SIGNATURE", "HDF4Layout", "HDF4Parser", "parse_struct_metadata", "sds_storage"]
