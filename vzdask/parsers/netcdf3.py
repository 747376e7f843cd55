"""netCDF3 parser: classic (CDF-1), 64-bit offset (CDF-2) and 64-bit data (CDF-5) files.

Written from the netCDF classic format specification. Only the header is
read (through :class:`~vzdask.parsers.common.ObstoreFile`, in growing
windows); every variable's data is uncompressed and contiguous, so its
chunks are plain byte ranges:

* a non-record variable is one chunk, the whole variable, at ``begin``;
* a record variable (first dimension unlimited) has one chunk per record,
  ``(1, *rest)``, at ``begin + r * recsize``, where ``recsize`` is the sum of
  the record variables' per-record sizes, each padded to 4 bytes (no
  padding when there is exactly one record variable).

Values are big-endian: the zarr ``bytes`` codec says so, the data type is
the native one.
"""

from __future__ import annotations

import math
import struct
import unicodedata
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vzdask.manifests.array import ManifestArray
from vzdask.manifests.group import ManifestGroup
from vzdask.manifests.manifest import ChunkManifest
from vzdask.manifests.metadata import attribute_value, create_array_metadata
from vzdask.manifests.store import ManifestStore
from vzdask.parsers.common import ObstoreFile, ParseError, Parser, finish
from vzdask.policy import InlinePolicy
from vzdask.registry import ObjectStoreRegistry

MAGIC = b"CDF"
VERSIONS = {1: "CDF-1 (classic)", 2: "CDF-2 (64-bit offset)", 5: "CDF-5 (64-bit data)"}
#: The first four bytes of a netCDF3 file: the magic and the version byte.
NETCDF3_SIGNATURES = tuple(MAGIC + bytes([v]) for v in VERSIONS)

NC_DIMENSION = 10
NC_VARIABLE = 11
NC_ATTRIBUTE = 12

#: nc_type code -> (name, numpy type code without byte order)
NC_TYPES: dict[int, tuple[str, str]] = {
    1: ("byte", "i1"),
    2: ("char", "S1"),
    3: ("short", "i2"),
    4: ("int", "i4"),
    5: ("float", "f4"),
    6: ("double", "f8"),
    7: ("ubyte", "u1"),
    8: ("ushort", "u2"),
    9: ("uint", "u4"),
    10: ("int64", "i8"),
    11: ("uint64", "u8"),
}
#: Types that only CDF-5 may use.
CDF5_TYPES = frozenset({7, 8, 9, 10, 11})

#: netCDF default fill values (used when a variable has no ``_FillValue``).
DEFAULT_FILL: dict[str, Any] = {
    "i1": -127,
    "S1": b"\x00",
    "i2": -32767,
    "i4": -2147483647,
    "f4": float(np.float32(9.9692099683868690e36)),
    "f8": 9.9692099683868690e36,
    "u1": 255,
    "u2": 65535,
    "u4": 4294967295,
    "i8": -9223372036854775806,
    "u8": 18446744073709551614,
}

#: Initial header window; doubled until the whole header has been read.
FIRST_READ = 4096


@dataclass
class Dimension:
    name: str
    length: int  # numrecs for the record dimension
    is_record: bool = False


@dataclass
class Variable:
    name: str
    dimensions: tuple[str, ...]
    shape: tuple[int, ...]
    nc_type: int
    attributes: dict[str, Any]
    vsize: int
    begin: int
    is_record: bool

    @property
    def dtype(self) -> np.dtype:
        """The big-endian dtype of the values on disk."""
        return np.dtype(">" + NC_TYPES[self.nc_type][1]) if self.nc_type != 2 else np.dtype("S1")

    @property
    def slab_bytes(self) -> int:
        """Bytes of one record (record variables) or of the whole variable (others)."""
        shape = self.shape[1:] if self.is_record else self.shape
        return math.prod(shape) * self.dtype.itemsize


@dataclass
class Header:
    """Everything a netCDF3 header says, plus where it ends and the record layout."""

    version: int
    numrecs: int
    streaming: bool
    dimensions: list[Dimension]
    attributes: dict[str, Any]
    variables: list[Variable]
    header_size: int
    recsize: int = 0
    file_size: int = 0
    record_variables: list[str] = field(default_factory=list)


class _HeaderReader:
    """A cursor over the start of a file that fetches more bytes only when the parse needs them."""

    def __init__(self, file: ObstoreFile, url: str) -> None:
        self.file = file
        self.url = url
        self.size = file.size
        self.data = b""
        self.pos = 0
        self.version = 1

    def _fail(self, problem: str) -> ParseError:
        return ParseError(f"{self.url}: {problem}")

    def need(self, n: int, what: str) -> None:
        stop = self.pos + n
        if stop > self.size:
            raise self._fail(
                f"truncated netCDF3 header at byte {self.pos}: {what} needs {n} bytes "
                f"but the file has {self.size} bytes"
            )
        if stop > len(self.data):
            want = min(self.size, max(stop, 2 * len(self.data), FIRST_READ))
            self.data += self.file.read_range(len(self.data), want - len(self.data))
            if stop > len(self.data):  # the object shrank under us
                raise self._fail(f"truncated netCDF3 header at byte {self.pos}: short read")

    def take(self, n: int, what: str) -> bytes:
        self.need(n, what)
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def int32(self, what: str) -> int:
        return struct.unpack(">i", self.take(4, what))[0]

    def non_neg(self, what: str) -> int:
        """NON_NEG: 4 bytes (CDF-1/2), 8 bytes (CDF-5)."""
        if self.version == 5:
            value = struct.unpack(">q", self.take(8, what))[0]
        else:
            value = struct.unpack(">i", self.take(4, what))[0]
        if value < 0:
            raise self._fail(f"corrupt netCDF3 header at byte {self.pos}: negative {what} ({value})")
        return value

    def offset(self, what: str) -> int:
        """OFFSET: 4 bytes (CDF-1), 8 bytes (CDF-2, CDF-5)."""
        fmt = ">i" if self.version == 1 else ">q"
        value = struct.unpack(fmt, self.take(struct.calcsize(fmt), what))[0]
        if value < 0:
            raise self._fail(f"corrupt netCDF3 header at byte {self.pos}: negative {what} ({value})")
        return value

    def padded(self, n: int, what: str) -> bytes:
        """``n`` bytes followed by zero padding to a 4-byte boundary."""
        out = self.take(n, what)
        self.take(-n % 4, what + " padding")
        return out

    def name(self, what: str) -> str:
        length = self.non_neg(f"length of {what}")
        # netCDF-C reads names as C strings: a name padded with NUL bytes inside its length ends at the first
        raw = self.padded(length, what).split(b"\x00", 1)[0]
        try:
            return unicodedata.normalize("NFC", raw.decode("utf-8"))
        except UnicodeDecodeError:
            raise self._fail(f"corrupt netCDF3 header at byte {self.pos}: {what} {raw!r} is not UTF-8") from None

    def nc_type(self, what: str) -> int:
        code = self.int32(what)
        if code not in NC_TYPES or (code in CDF5_TYPES and self.version != 5):
            raise self._fail(f"corrupt netCDF3 header at byte {self.pos - 4}: unknown nc_type {code} for {what}")
        return code

    @property
    def word(self) -> int:
        """Size of a NON_NEG."""
        return 8 if self.version == 5 else 4

    def check_count(self, count: int, min_bytes: int, what: str) -> None:
        """Fail early when ``count`` items of at least ``min_bytes`` each cannot fit in the file."""
        if count and self.pos + count * min_bytes > self.size:
            raise self._fail(
                f"truncated netCDF3 header at byte {self.pos}: {count} {what} need at least "
                f"{count * min_bytes} bytes but the file has {self.size} bytes"
            )

    def list_header(self, tag: int, what: str, min_item_bytes: int) -> int:
        """Number of elements of a dim/att/var list (ABSENT -> 0)."""
        start = self.pos
        found = self.int32(f"{what} tag")
        count = self.non_neg(f"number of {what}")
        if found == 0 and count == 0:
            return 0
        if found != tag:
            raise self._fail(f"corrupt netCDF3 header at byte {start}: expected the {what} tag {tag}, found {found}")
        self.check_count(count, min_item_bytes, what)
        return count

    def attributes(self, owner: str) -> dict[str, Any]:
        attrs: dict[str, Any] = {}
        for _ in range(self.list_header(NC_ATTRIBUTE, f"attributes of {owner}", 2 * self.word + 4)):
            name = self.name(f"attribute name of {owner}")
            code = self.nc_type(f"attribute {owner}:{name}")
            count = self.non_neg(f"length of attribute {owner}:{name}")
            dtype = np.dtype(">" + NC_TYPES[code][1]) if code != 2 else np.dtype("S1")
            raw = self.padded(count * dtype.itemsize, f"values of attribute {owner}:{name}")
            if code == 2:
                attrs[name] = raw.rstrip(b"\x00").decode("utf-8", errors="replace")
            else:
                attrs[name] = np.frombuffer(raw, dtype=dtype)
        return attrs


def parse_header(file: ObstoreFile, url: str | None = None) -> Header:
    """Parse the header of the netCDF3 file behind ``file`` (reads only the header bytes)."""
    url = url or file.url
    if file.size == 0:
        raise ParseError(f"{url}: empty file (0 bytes); not a netCDF3 file")
    r = _HeaderReader(file, url)
    r.need(min(4, file.size), "magic")
    magic = r.data[:4]
    if len(magic) < 4 or magic[:3] != MAGIC or magic[3] not in VERSIONS:
        raise ParseError(
            f"{url}: not a netCDF3 file: starts with {magic!r}, expected b'CDF\\x01', b'CDF\\x02' or b'CDF\\x05'"
        )
    r.pos = 4
    r.version = magic[3]

    streaming_marker = 0xFFFFFFFFFFFFFFFF if r.version == 5 else 0xFFFFFFFF
    raw = r.take(8 if r.version == 5 else 4, "numrecs")
    numrecs = int.from_bytes(raw, "big")
    streaming = numrecs == streaming_marker
    if not streaming and numrecs >= 2 ** (8 * len(raw) - 1):
        raise ParseError(f"{url}: corrupt netCDF3 header at byte 4: numrecs {numrecs} is negative")

    dimensions: list[Dimension] = []
    for i in range(r.list_header(NC_DIMENSION, "dimensions", 2 * r.word)):
        name = r.name(f"name of dimension {i}")
        length = r.non_neg(f"length of dimension {name!r}")
        dimensions.append(Dimension(name, length, is_record=length == 0))
    if sum(d.is_record for d in dimensions) > 1:
        raise ParseError(f"{url}: corrupt netCDF3 header: more than one unlimited dimension")

    attributes = r.attributes("global")

    variables: list[Variable] = []
    for i in range(r.list_header(NC_VARIABLE, "variables", 4 * r.word + 12)):
        name = r.name(f"name of variable {i}")
        ndims = r.non_neg(f"number of dimensions of {name!r}")
        r.check_count(ndims, r.word, f"dimension ids of {name!r}")
        dimids = [r.non_neg(f"dimension id of {name!r}") for _ in range(ndims)]
        for dimid in dimids:
            if dimid >= len(dimensions):
                raise ParseError(
                    f"{url}: corrupt netCDF3 header: variable {name!r} uses dimension id {dimid}, "
                    f"but the file has {len(dimensions)} dimensions"
                )
        dims = [dimensions[d] for d in dimids]
        if any(d.is_record for d in dims[1:]):
            raise ParseError(
                f"{url}: corrupt netCDF3 header: variable {name!r} has the unlimited dimension after the first"
            )
        var_attrs = r.attributes(repr(name))
        code = r.nc_type(f"variable {name!r}")
        vsize = r.non_neg(f"vsize of {name!r}")
        begin = r.offset(f"begin of {name!r}")
        is_record = bool(dims) and dims[0].is_record
        variables.append(
            Variable(
                name=name,
                dimensions=tuple(d.name for d in dims),
                shape=tuple(d.length for d in dims),  # record length filled in below
                nc_type=code,
                attributes=var_attrs,
                vsize=vsize,
                begin=begin,
                is_record=is_record,
            )
        )

    header = Header(
        version=r.version,
        numrecs=0 if streaming else numrecs,
        streaming=streaming,
        dimensions=dimensions,
        attributes=attributes,
        variables=variables,
        header_size=r.pos,
        file_size=file.size,
    )
    _layout(header, url)
    return header


def _layout(header: Header, url: str) -> None:
    """Compute recsize, numrecs (streaming files) and the record variables' shapes; check extents."""
    records = [v for v in header.variables if v.is_record]
    header.record_variables = [v.name for v in records]
    if len(records) == 1:
        header.recsize = records[0].slab_bytes
    else:
        header.recsize = sum(v.slab_bytes + (-v.slab_bytes % 4) for v in records)
    if header.streaming:
        first = min((v.begin for v in records), default=header.file_size)
        header.numrecs = (header.file_size - first) // header.recsize if header.recsize else 0
    for d in header.dimensions:
        if d.is_record:
            d.length = header.numrecs
    for v in header.variables:
        if v.is_record:
            v.shape = (header.numrecs, *v.shape[1:])
        if v.begin < header.header_size and (v.slab_bytes and (not v.is_record or header.numrecs)):
            raise ParseError(
                f"{url}: corrupt netCDF3 header: variable {v.name!r} begins at byte {v.begin}, "
                f"inside the header ({header.header_size} bytes)"
            )
        if v.is_record:
            end = v.begin + (header.numrecs - 1) * header.recsize + v.slab_bytes if header.numrecs else 0
        else:
            end = v.begin + v.slab_bytes
        if end > header.file_size:
            raise ParseError(
                f"{url}: truncated netCDF3 file: the data of variable {v.name!r} ends at byte {end}, "
                f"but the file has {header.file_size} bytes"
            )
    _check_overlaps(header, url)


def _check_overlaps(header: Header, url: str) -> None:
    """Fixed-size variables must not overlap each other or the record section (netCDF-C rejects such files)."""
    extents = sorted(
        (v.begin, v.begin + v.slab_bytes, v.name) for v in header.variables if not v.is_record and v.slab_bytes
    )
    if header.numrecs and header.recsize:
        start = min(v.begin for v in header.variables if v.is_record)
        extents.append((start, start + header.numrecs * header.recsize, "record data"))
        extents.sort()
    for (_, end, first), (begin, _, second) in zip(extents, extents[1:]):
        if begin < end:
            raise ParseError(
                f"{url}: corrupt netCDF3 file: the data of {_describe(first)} (ending at byte {end}) overlaps "
                f"{_describe(second)} (starting at byte {begin})"
            )


def _describe(name: str) -> str:
    return "the record variables" if name == "record data" else f"variable {name!r}"


# --------------------------------------------------------------------------- #
# Header -> ManifestGroup
# --------------------------------------------------------------------------- #


def _json_value(value: Any) -> Any:
    """An attribute value as JSON: str, a scalar for one element, a list otherwise."""
    if isinstance(value, str):
        return value
    array = np.asarray(value)
    if array.size == 1:
        return attribute_value(array.reshape(())[()])
    return array.tolist()


def _fill_value(var: Variable) -> Any:
    """The variable's ``_FillValue`` (as a native scalar) or the netCDF default fill value."""
    fill = var.attributes.get("_FillValue")
    if var.nc_type == 2:
        if isinstance(fill, str) and len(fill.encode()) == 1:
            return fill.encode()
        return DEFAULT_FILL["S1"]
    if fill is not None and np.size(fill) >= 1:
        return np.asarray(fill).ravel()[0].astype(var.dtype.newbyteorder("="))
    return np.array(DEFAULT_FILL[NC_TYPES[var.nc_type][1]], dtype=var.dtype.newbyteorder("="))[()]


def variable_array(var: Variable, header: Header, url: str, registry: ObjectStoreRegistry) -> ManifestArray:
    """The ManifestArray of one netCDF3 variable."""
    native = var.dtype.newbyteorder("=") if var.dtype.itemsize > 1 else var.dtype
    codecs = (
        [{"name": "bytes", "configuration": {"endian": "big"}}] if var.dtype.itemsize > 1 else [{"name": "bytes"}]
    )
    attributes = {}
    for key, value in var.attributes.items():
        if key == "_FillValue":
            # xarray's zarr backend cannot decode a bytes _FillValue (char variables): the
            # zarr fill_value holds it. Numbers go in plain; create_array_metadata encodes them.
            if var.nc_type != 2 and not isinstance(value, str) and np.size(value):
                attributes[key] = _fill_value(var).item()
        else:
            attributes[key] = _json_value(value)

    if var.is_record:
        chunk_shape = (1, *var.shape[1:])
        grid = (var.shape[0],) + (1,) * (len(var.shape) - 1)
        offsets = (var.begin + np.arange(var.shape[0], dtype=np.uint64) * np.uint64(header.recsize)).reshape(grid)
    else:
        chunk_shape = var.shape
        grid = (1,) * len(var.shape)
        offsets = np.full(grid, var.begin, dtype=np.uint64)
    lengths = np.full(grid, var.slab_bytes, dtype=np.uint64)
    paths = np.full(grid, url, dtype=object)
    manifest = ChunkManifest.from_arrays(paths=paths, offsets=offsets, lengths=lengths)
    with warnings.catch_warnings():
        # char variables: zarr-python's fixed-size bytes type has no zarr v3 spec yet (it warns)
        warnings.filterwarnings("ignore", message=".*does not have a Zarr V3 specification")
        metadata = create_array_metadata(
            shape=var.shape,
            chunk_shape=chunk_shape,
            dtype=native,
            codecs=codecs,
            fill_value=_fill_value(var),
            dimension_names=var.dimensions,
            attributes=attributes,
        )
    return ManifestArray(metadata, manifest, registry=registry)


def header_to_group(header: Header, url: str, registry: ObjectStoreRegistry) -> ManifestGroup:
    """A ManifestGroup of every variable in ``header``; group attributes are the global attributes."""
    arrays = {v.name: variable_array(v, header, url, registry) for v in header.variables}
    attributes = {k: _json_value(v) for k, v in header.attributes.items()}
    try:
        return ManifestGroup(arrays=arrays, attributes=attributes)
    except ValueError as err:
        raise ParseError(f"{url}: {err}") from err


class NetCDF3Parser(Parser):
    """Parse a netCDF3 file (CDF-1, CDF-2, CDF-5) into a ManifestStore.

    Parameters
    ----------
    inline : InlinePolicy, optional
        Which chunks to copy into the manifest (default: none).

    Examples
    --------
    >>> store = NetCDF3Parser()("s3://bucket/file.nc", registry)  # doctest: +SKIP
    """

    def __init__(self, *, inline: InlinePolicy | None = None) -> None:
        super().__init__(inline=inline)

    def __repr__(self) -> str:
        return f"NetCDF3Parser(inline={self.inline!r})"

    @classmethod
    def guess_can_open(cls, head: bytes, url: str) -> bool:
        """True if ``head`` starts with a netCDF3 signature (``CDF`` and version 1, 2 or 5)."""
        return head[:4] in NETCDF3_SIGNATURES

    def __call__(self, url: str, registry: ObjectStoreRegistry) -> ManifestStore:
        file = ObstoreFile(url, registry, block_size=FIRST_READ)
        header = parse_header(file, url)
        group = header_to_group(header, url, registry)
        return finish(group, registry, self.inline)


__all__ = ["NetCDF3Parser", "parse_header", "Header", "Variable", "Dimension"]
