"""DMRPPParser: OPeNDAP DMR++ sidecar documents, virtualized without touching the data file.

A DMR++ document (``granule.h5.dmrpp``) is the DAP4 DMR of an HDF5/netCDF-4
file plus, per variable, where its chunks are (``dmrpp:chunks``: offset,
size and grid position of each chunk, the filters as ``compressionType``,
the byte order and fill value) or its values themselves (``dmrpp:compact``,
``dmrpp:missingdata``). One request reads the document (and a ``head`` its
size if it is larger than 1 MiB); the data file is not read: references
point at it.

The result is built to equal ``HDFParser`` on the data file (same arrays,
chunk grids, byte ranges, codecs, dimension names, attributes) except where
the document says less than the file:

* a variable without ``fillValue`` has fill value ``_FillValue`` or 0 (netCDF-4
  files keep netCDF's default fill values in the file, not in the document);
* zlib levels are ``deflateLevel`` when given, else 4 (levels do not matter
  for decoding); filters are applied in ``compressionType``'s order, which is
  the file's pipeline order in the documents tested (documents without
  ``dmrpp:version`` may list them otherwise, OPeNDAP's reader emulates that);
* dimensions of anonymous axes are named ``phony_dim_N`` as ``HDFParser``
  (netCDF-C) names them, none counted as unlimited (the document does not say);
* attributes: the HDF5 handler's bookkeeping (``origname``, ``fullnamepath``,
  netCDF-4's ``CLASS``/``NAME``/``_Netcdf4Dimid``...) and the document's own
  containers (``build_dmrpp_metadata``, ``DODS_EXTRA``) are left out, and so
  are attributes of unknown type (``type="null"``); other containers become
  nested dicts;
* strings: values in the document (``dmrpp:compact``, ``dmrpp:vlsa``) become
  ``<U{n}`` arrays, inlined, as in ``HDFParser``; netCDF ``char`` variables (one byte per
  element) are referenced virtually as ``S1``, as in ``HDFParser``; strings
  of a declared length (``dmrpp:FixedLengthStringArray``) are referenced
  virtually as ``S{n}`` bytes (``HDFParser`` inlines them as ``<U{n}``);
  other strings (variable-length ones, whose values live in the HDF5 heap,
  or of a length the document does not give) cannot be virtualized;
* compounds (``Structure``) of numeric scalar fields stored packed and
  little-endian are zarr ``struct`` arrays referenced virtually, as in
  ``HDFParser``; padded or big-endian ones (``HDFParser`` reads and inlines
  their values) and compounds of other fields cannot be virtualized;
* enums are their base integer type with ``enum_dict`` and, for a named type
  of the variable's own group, ``enum_name`` (h5py's boolean enum
  ``FALSE=0, TRUE=1`` of int8 is ``bool``, as in ``HDFParser``);
* chunks stored as linked blocks (``dmrpp:block``) or with a non-zero filter
  mask (``fm``) cannot be virtualized, as in ``HDFParser``;
* names are the document's: a document made with the HDF5 handler's CF
  option renames groups and variables (``Data Fields`` -> ``Data_Fields``).

Variables that cannot be virtualized follow ``on_unsupported`` as in
``HDFParser``.
"""

from __future__ import annotations

import base64
import re
import zlib
from collections.abc import Iterable
from typing import Any, Literal
from xml.etree import ElementTree

import numpy as np

from vzdask.manifests.array import ManifestArray
from vzdask.manifests.group import ManifestGroup
from vzdask.manifests.manifest import ChunkManifest, normalize_url
from vzdask.manifests.metadata import attribute_value, create_array_metadata
from vzdask.manifests.store import ManifestStore
from vzdask.parsers.common import IsolatingParser, ParseError, finish, report_unsupported
from vzdask.policy import InlinePolicy
from vzdask.registry import ObjectStoreRegistry

DAP_NS = "http://xml.opendap.org/ns/DAP/4.0#"
DMRPP_NS = "http://xml.opendap.org/dap/dmrpp/1.0.0#"
_D = "{" + DAP_NS + "}"
_P = "{" + DMRPP_NS + "}"

#: DAP4 atomic types -> numpy dtypes (little-endian; ``byteOrder="BE"`` flips them).
DAP_TYPES = {
    "Byte": "u1", "UInt8": "u1", "Int8": "i1", "Char": "S1", "Int16": "<i2", "UInt16": "<u2", "Int32": "<i4",
    "UInt32": "<u4", "Int64": "<i8", "UInt64": "<u8", "Float32": "<f4", "Float64": "<f8",
}
#: Attributes the HDF5 handler or netCDF-4 add that are not the file's user metadata.
SKIPPED_ATTRIBUTES = frozenset(
    {"DIMENSION_LIST", "REFERENCE_LIST", "CLASS", "NAME", "_Netcdf4Dimid", "_Netcdf4Coordinates", "_nc3_strict",
     "_NCProperties", "_SuperblockVersion", "_IsNetcdf4", "origname", "fullnamepath", "build_dmrpp_metadata",
     "DODS_EXTRA"}
)
_NO_NAME_ENUM = re.compile(r"NoNameE\w*\d+$")  # "NoNameEum0" in some documents
#: The first read of a document (``ObstoreFile(small=True)``): most are smaller, and read whole by it.
DOCUMENT_BLOCK = 2**20


class DMRPPParser(IsolatingParser):
    """Parse DMR++ documents into ManifestStores whose references point at the data file.

    Parameters
    ----------
    data_url : str, optional
        The data file the references point at. By default the document's
        ``dmrpp:href`` when it is a url with a scheme (``s3://``,
        ``https://``, ``file://``), else (a placeholder such as
        ``OPeNDAP_DMRpp_DATA_ACCESS_URL``, a relative or scheme-less path,
        which is what ``get_dmrpp`` writes outside an archive) the file beside
        the document: its url without ``.dmrpp``. No request checks it.
    inline, group, drop_variables
        As for every parser (``Parser``).
    on_unsupported : {"raise", "warn"}
        As for ``HDFParser``: variables that cannot be virtualized are listed
        in one ``ParseError``, or left out with one warning.
    """

    def __init__(self, data_url: str | None = None, *, inline: InlinePolicy | None = None, group: str | None = None,
                 drop_variables: Iterable[str] | None = None, on_unsupported: str = "raise") -> None:
        super().__init__(inline=inline, group=group, drop_variables=drop_variables, on_unsupported=on_unsupported)
        self.data_url = data_url

    @classmethod
    def guess_can_open(cls, head: bytes, url: str) -> bool:
        """True for a url ending in ``.dmrpp`` or a document naming the DMR++ namespace in its head."""
        return url.rstrip("/").endswith(".dmrpp") or DMRPP_NS.encode() in head

    def __call__(self, url: str, registry: ObjectStoreRegistry) -> ManifestStore:
        handle = self._open(url, registry, block_size=DOCUMENT_BLOCK, small=True)
        if handle.size == 0:
            raise ParseError(f"{url}: empty file; nothing to virtualize")
        text = handle.read_range(0, handle.size)
        root, pieces = _parse(text, url)
        if root.tag != _D + "Dataset":
            raise ParseError(f"{url}: not a DMR++ document (root element {root.tag!r}, expected DAP4 Dataset)")
        data_url = self.data_url or resolve_href(root.get(_P + "href"), url)
        walk = _Walk(url, normalize_url(data_url), registry, root, pieces)
        node, path = root, "/"
        if self.group:
            for part in self.group.strip("/").split("/"):
                found = next((g for g in node.findall(_D + "Group") if g.get("name") == part), None)
                if found is None:
                    raise ParseError(f"{url}: no group {self.group!r}")
                node, path = found, _join(path, part)
        group = walk.group(node, path, self.drop_variables)
        report_unsupported(url, walk.problems, self.on_unsupported, path)
        return finish(group, registry, self.inline)


def resolve_href(href: str | None, document_url: str) -> str:
    """The data file of a document: ``href`` if it is a url with a scheme, else the file beside the document."""
    if href and re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", href):
        return href
    if document_url.endswith(".dmrpp"):
        return document_url[: -len(".dmrpp")]
    if not href:
        raise ParseError(f"{document_url}: the document names no data file (no dmrpp:href); pass data_url=")
    return document_url.rsplit("/", 1)[0] + "/" + href.rsplit("/", 1)[-1]


def _join(parent: str, name: str) -> str:
    return f"{parent.rstrip('/')}/{name}"


class _Walk:
    """One document's walk: dimensions and enumerations by path, the problems found."""

    def __init__(self, url: str, data_url: str, registry: ObjectStoreRegistry, root,
                 pieces: dict[Any, _Pieces]) -> None:
        from vzdask.parsers.hdf5 import PhonyDimensions

        self.url, self.data_url, self.registry = url, data_url, registry
        self.pieces = pieces
        self.problems: list[tuple[str, str]] = []
        self.dims: dict[str, int] = {}
        self.enums: dict[str, tuple[np.dtype, dict[str, int]]] = {}
        self._collect(root, "/")
        self.phony = PhonyDimensions(None)
        self.phony.next = len(self.dims)  # netCDF-C numbers phony dimensions after the file's real ones

    def _collect(self, node, path: str) -> None:
        for child in node:
            if child.tag == _D + "Dimension":
                self.dims[_join(path, child.get("name", ""))] = int(child.get("size", "0"))
            elif child.tag == _D + "Enumeration":
                base = np.dtype(DAP_TYPES.get(child.get("basetype", ""), "<i4"))
                consts = {c.get("name", ""): int(c.get("value", "0")) for c in child.findall(_D + "EnumConst")}
                self.enums[_join(path, child.get("name", ""))] = (base, consts)
            elif child.tag == _D + "Group":
                self._collect(child, _join(path, child.get("name", "")))

    def group(self, node, path: str, drop=frozenset()) -> ManifestGroup:
        groups = {}
        for child in node.findall(_D + "Group"):  # subgroups first: netCDF-C numbers their phony dimensions first
            name = child.get("name", "")
            groups[name] = self.group(child, _join(path, name))
        own = {p.rsplit("/", 1)[1]: size for p, size in self.dims.items() if p.rsplit("/", 1)[0] == path.rstrip("/")}
        candidates: list[tuple[str, int, bool]] = [(name, size, False) for name, size in own.items()]
        arrays = {}
        for child in node:
            tag = child.tag.rsplit("}", 1)[-1]
            if tag in ("Group", "Dimension", "Enumeration", "Attribute") or not child.tag.startswith(_D):
                continue
            name = child.get("name", "")
            if name in drop:
                continue
            full = _join(path, name)
            try:
                shape, dims = self._shape(child, path, candidates)
                arrays[name] = self._variable(child, tag, full, path, shape, dims)
            except ParseError as err:
                self.problems.append((full, str(err).removeprefix(f"{self.url}: variable {full!r}: ")))
        return ManifestGroup(arrays=arrays, groups=groups, attributes=_attributes(node, self.url, f"group {path!r}"))

    def _shape(self, var, path: str, candidates) -> tuple[tuple[int, ...], list[str]]:
        shape: list[int] = []
        found: list[str | None] = []
        for dim in var.findall(_D + "Dim"):
            name = dim.get("name")
            if name is not None:
                full = name if name.startswith("/") else self._relative(name, path)
                if full not in self.dims:
                    raise ParseError(f"{self.url}: variable {_join(path, var.get('name', ''))!r}: dimension {name!r} "
                                     "is declared nowhere in the document")
                shape.append(self.dims[full])
                found.append(self._dim_name(full, path))
            else:
                shape.append(int(dim.get("size", "0")))
                found.append(None)
        if None in found:
            dims = self.phony.name_axes(found, tuple(shape), (False,) * len(shape), candidates)
        else:
            dims = [d for d in found if d is not None]
        return tuple(shape), dims

    def _relative(self, name: str, path: str) -> str:
        """A relative dimension name: declared in this group or the nearest ancestor that declares it."""
        parts = path.strip("/").split("/") if path.strip("/") else []
        for depth in range(len(parts), -1, -1):
            full = "/" + "/".join([*parts[:depth], name])
            if full in self.dims:
                return full
        return _join(path, name)

    def _dim_name(self, full: str, path: str) -> str:
        """Its bare name, or its path when a nearer group's dimension of that name hides it (as ``HDFParser``)."""
        parent, _, base = full.rpartition("/")
        here = path.rstrip("/")
        if parent == here or not (here + "/").startswith(parent + "/"):
            return base
        below = here[len(parent):].strip("/").split("/")
        for depth in range(len(below)):
            if "/".join([parent, *below[: depth + 1]]) + "/" + base in self.dims:
                return full
        return base

    def _variable(self, var, tag: str, full: str, path: str, shape, dims) -> ManifestArray:
        where = f"{self.url}: variable {full!r}"
        attrs = _attributes(var, self.url, f"variable {full!r}")
        chunks = var.find(_P + "chunks")
        byte_order: Literal[">", "<"] = ">" if chunks is not None and chunks.get("byteOrder") == "BE" else "<"
        if tag in DAP_TYPES and tag != "Char":
            dtype = np.dtype(DAP_TYPES[tag]).newbyteorder(byte_order)
        elif tag == "Enum":
            enum_path = var.get("enum", "")
            enum_path = enum_path if enum_path.startswith("/") else _join(path, enum_path)
            if enum_path not in self.enums:
                raise ParseError(f"{where}: enumeration {var.get('enum')!r} is declared nowhere in the document")
            base, consts = self.enums[enum_path]
            dtype = base.newbyteorder(byte_order)
            if base == np.dtype("i1") and consts == {"FALSE": 0, "TRUE": 1}:
                dtype = np.dtype(bool)  # h5py's (and so HDFParser's) boolean enum
            else:
                extra: dict[str, Any] = {"enum_dict": dict(consts)}
                enum_parent, _, enum_name = enum_path.rpartition("/")
                if (enum_parent or "/") == path and not _NO_NAME_ENUM.match(enum_name):
                    extra["enum_name"] = enum_name
                attrs = {**extra, **attrs}
        elif tag in ("String", "Char"):
            return self._string(var, chunks, where, shape, dims, attrs)
        elif tag == "Structure":
            dtype = self._struct(var, chunks, where)
        else:
            raise ParseError(f"{where}: DAP4 type {tag} (an HDF5 vlen, opaque or reference type) cannot be held by "
                             "a zarr array")
        return self._array(var, chunks, where, dtype, shape, dims, attrs)

    def _struct(self, var, chunks, where: str) -> np.dtype:
        fields = []
        for member in var:
            mtag = member.tag.rsplit("}", 1)[-1]
            if not member.tag.startswith(_D) or mtag in ("Dim", "Attribute", "Map"):
                continue
            if mtag not in DAP_TYPES or mtag == "Char" or member.find(_D + "Dim") is not None:
                kind = f"array of {mtag}" if member.find(_D + "Dim") is not None else mtag
                raise ParseError(f"{where}: compound field {member.get('name')!r} is {kind}; zarr's struct data type "
                                 "holds numbers only")
            fields.append((member.get("name", ""), np.dtype(DAP_TYPES[mtag])))
        dtype = np.dtype(fields)
        if chunks is not None and chunks.get("byteOrder") == "BE":
            raise ParseError(f"{where}: a big-endian compound's values would have to be read and repacked, and the "
                             "document does not hold them")
        stated = chunks.get("structOffset") if chunks is not None else None
        if stated:
            offsets = [int(v) for v in stated.split()]
            packed = np.cumsum([f.itemsize for _, f in fields]).tolist()
            if offsets != packed:
                raise ParseError(f"{where}: a padded compound (field offsets and size {offsets}) has other bytes than "
                                 "zarr's packed struct, and the document does not hold its values")
        return dtype

    def _string(self, var, chunks, where, shape, dims, attrs) -> ManifestArray:
        count = int(np.prod(shape, dtype=np.int64))
        compact = var.find(_P + "compact")
        fixed = var.find(_P + "FixedLengthStringArray")
        vlsa = var.find(_P + "vlsa")
        if vlsa is not None:
            return _inline_text(_vlsa_values(vlsa, where), shape, dims, attrs, self.registry, where)
        if compact is not None:
            raw = base64.b64decode(compact.text or "")
            if fixed is not None:
                length = int(fixed.get("string_length", "0"))
                texts = [raw[i * length : (i + 1) * length] for i in range(count)]
            else:  # a scalar's bytes, or an array's strings one after another, each ended by a NUL
                texts = raw.split(b"\0")[:count] if count > 1 else [raw]
            return _inline_text([t.rstrip(b"\0").decode("utf-8", "replace") for t in texts], shape, dims, attrs,
                                self.registry, where)
        if fixed is not None and chunks is not None:
            length = int(fixed.get("string_length", "0"))
            return self._array(var, chunks, where, np.dtype(f"S{length}"), shape, dims, attrs, fill=b"")
        if chunks is not None and not chunks.get("compressionType"):
            pieces = self._pieces(chunks)
            stored = sum(int(v or 0) for v in pieces.columns.get("nBytes", ()))
            if pieces.count and stored == count:
                return self._array(var, chunks, where, np.dtype("S1"), shape, dims, attrs, fill=b"")
        raise ParseError(f"{where}: the document holds neither the values of this string variable nor their length "
                         "(variable-length strings live in the HDF5 heap)")

    def _array(self, var, chunks, where, dtype: np.dtype, shape, dims, attrs, fill: Any = None) -> ManifestArray:
        native = dtype if dtype.names is not None or dtype.byteorder in "=|" else dtype.newbyteorder("=")
        if fill is None:
            fill = _fill_value(chunks, dtype, attrs, where)
        compact = var.find(_P + "compact")
        missing = var.find(_P + "missingdata")
        if compact is not None or missing is not None:
            raw = base64.b64decode((compact if compact is not None else missing).text or "")
            expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            if compact is None and len(raw) != expected:  # missing data is deflated when that is shorter
                try:
                    raw = zlib.decompress(raw)
                except zlib.error as err:
                    raise ParseError(f"{where}: dmrpp:missingdata cannot be inflated: {err}") from err
            return _inline_values(raw, dtype, native, shape, dims, attrs, fill, self.registry, where)
        if chunks is None:
            raise ParseError(f"{where}: the document gives neither its chunks nor its values")
        sizes = chunks.find(_P + "chunkDimensionSizes")
        pieces = self._pieces(chunks)
        columns, count = pieces.columns, pieces.count
        if "LinkedBlockIndex" in columns or chunks.find(_P + "block") is not None:
            raise ParseError(f"{where}: chunks stored as linked blocks (dmrpp:block) are not one byte range each; "
                             "zarr cannot read them")
        if "fm" in columns:
            masked = next((i for i, v in enumerate(columns["fm"]) if int(v or 0)), None)
            if masked is not None:
                position = (columns.get("chunkPositionInArray") or [""] * count)[masked] or ""
                raise ParseError(f"{where}: chunk {position} skipped some filters "
                                 f"(filter mask fm={columns['fm'][masked]}); cannot virtualize it")
        if sizes is not None:
            chunk_shape = tuple(int(v) for v in (sizes.text or "").split())
            if len(chunk_shape) != len(shape):
                raise ParseError(f"{where}: chunk shape {chunk_shape} does not match the shape {shape}")
        else:
            if count > 1:
                raise ParseError(f"{where}: a contiguous variable given as {count} pieces is not supported")
            chunk_shape = tuple(max(int(s), 1) for s in shape)
        grid = tuple(-(-s // c) for s, c in zip(shape, chunk_shape))
        metadata = _metadata(shape, chunk_shape, native, _codecs(chunks, dtype, where), fill, dims, attrs)
        return ManifestArray(metadata, self._manifest(columns, count, chunk_shape, grid, shape, where),
                             registry=self.registry)

    def _manifest(self, columns: dict[str, Any], count: int, chunk_shape, grid, shape, where: str) -> ChunkManifest:
        """The chunk references of one ``dmrpp:chunks``."""
        if not count:
            return ChunkManifest.empty(grid)
        positions = columns.get("chunkPositionInArray")
        every = "href" not in columns and count == _size(grid)
        if every and _in_grid_order(positions, chunk_shape, grid):
            flat = None
        else:
            flat = self._chunk_indices(positions, count, chunk_shape, grid, shape, where)
            if every and flat.tolist() == list(range(count)):
                flat = None
        try:  # every chunk's numbers at once: documents list thousands of chunks
            offsets, lengths = _integers(columns["offset"], count), _integers(columns["nBytes"], count)
        except (KeyError, ValueError, TypeError, OverflowError) as err:
            raise ParseError(f"{where}: a dmrpp:chunk without a readable offset and nBytes ({err})") from err
        if flat is None:  # every chunk, in the grid's order (what get_dmrpp writes): the columns are the grid
            return ChunkManifest.from_file_table(self.data_url, np.ones(grid, bool), offsets.reshape(grid),
                                                 lengths.reshape(grid))
        present = np.zeros(grid, bool)
        present.flat[flat] = True
        offsets, lengths = _scatter(offsets, flat, grid), _scatter(lengths, flat, grid)
        if "href" not in columns:
            return ChunkManifest.from_file_table(self.data_url, present, offsets, lengths)
        paths = np.full(grid, self.data_url, dtype=object)
        for index, href in zip(flat.tolist(), columns["href"]):
            if href:
                paths.flat[index] = normalize_url(_chunk_href(href, self.data_url))
        paths[~present] = ""
        return ChunkManifest.from_arrays(paths=paths, offsets=offsets, lengths=lengths)

    def _pieces(self, chunks) -> _Pieces:
        """The ``dmrpp:chunk`` elements of ``chunks``: read ahead of ElementTree (``_parse``), else from its elements."""
        found = self.pieces.get(chunks)
        if found is not None:
            return found
        attribs = [piece.attrib for piece in chunks.findall(_P + "chunk")]
        if len(attribs) == 1:  # the usual small variable
            return _Pieces(1, {key: [value] for key, value in attribs[0].items()})
        keys: set[str] = set().union(*attribs) if attribs else set()
        return _Pieces(len(attribs), {key: [a.get(key) for a in attribs] for key in keys})

    @staticmethod
    def _chunk_indices(positions, count: int, chunk_shape, grid, shape, where: str) -> np.ndarray:
        """The flat grid index of each chunk, from ``chunkPositionInArray`` (element indices of its first element)."""
        ndim = len(grid)
        if positions is None:  # one chunk, unpositioned: the whole (contiguous or scalar) variable
            if count > 1 or not int(np.prod(grid)):
                raise ParseError(f"{where}: {count} dmrpp:chunk elements without chunkPositionInArray for a "
                                 f"chunk grid {grid}")
            return np.zeros(1, np.int64)
        if not isinstance(positions, np.ndarray) and count <= _MANY:  # a few: numpy's per-call costs would dominate
            return np.array([_flat_index(p, chunk_shape, grid, shape, where) for p in positions], np.int64)
        try:
            if isinstance(positions, np.ndarray):  # read by _parse
                starts = positions.reshape(count, ndim)
            else:
                text = ",".join(positions).replace("[", "").replace("]", "").split(",")
                starts = np.fromiter(map(int, text), np.int64, len(text)).reshape(count, ndim)
        except (TypeError, ValueError) as err:
            raise ParseError(f"{where}: chunk positions do not match the shape {shape} ({err})") from err
        index = starts // np.asarray(chunk_shape, np.int64)
        outside = (index < 0) | (index >= np.asarray(grid, np.int64))
        if outside.any():
            bad = positions[int(np.flatnonzero(outside.any(axis=1))[0])]
            raise ParseError(f"{where}: chunk position {_text(bad)} lies outside the chunk grid {grid}")
        return np.ravel_multi_index(tuple(index.T), grid)


class _Pieces:
    """The ``dmrpp:chunk`` elements of one ``dmrpp:chunks`` as columns: attribute name -> each chunk's value.

    Values are ``str`` (or None where a chunk lacks the attribute) from
    ElementTree; numbers (a column of ints, positions as rows) when
    ``_parse`` read them ahead of it.
    """

    __slots__ = ("columns", "count")

    def __init__(self, count: int, columns: dict[str, list]) -> None:
        self.count, self.columns = count, columns


def _text(position) -> str:
    """A chunk position as the document writes it."""
    return position if isinstance(position, str) else "[" + ",".join(str(v) for v in position) + "]"


def _starts(position) -> list[int]:
    """A chunk position's element indices."""
    if not isinstance(position, str):
        return [int(v) for v in position]
    return [int(v) for v in position.strip("[] ").split(",") if v.strip()]


def _flat_index(position: str | None, chunk_shape, grid, shape, where: str) -> int:
    """One chunk's flat grid index from its ``chunkPositionInArray``."""
    try:
        starts = _starts(position) if position is not None else None
    except ValueError as err:
        raise ParseError(f"{where}: chunk positions do not match the shape {shape} ({err})") from err
    if starts is None or len(starts) != len(grid):
        raise ParseError(f"{where}: chunk positions do not match the shape {shape} ({position!r})")
    flat = 0
    for start, size, extent in zip(starts, chunk_shape, grid):
        index = start // size
        if not 0 <= index < extent:
            raise ParseError(f"{where}: chunk position {position} lies outside the chunk grid {grid}")
        flat = flat * extent + index
    return flat


def _integers(column, count: int) -> np.ndarray:
    """A column of byte offsets or sizes as uint64 (a ``_parse`` column already holds numbers)."""
    if isinstance(column, np.ndarray):
        return column.astype(np.uint64)
    return np.fromiter(map(int, column), np.uint64, count)


def _scatter(values: np.ndarray, flat: np.ndarray, grid) -> np.ndarray:
    """``values`` placed at the flat grid indices ``flat`` of a grid of zeros."""
    out = np.zeros(grid, np.uint64)
    out.flat[flat] = values
    return out


def _size(grid) -> int:
    size = 1
    for n in grid:
        size *= n
    return size


def _in_grid_order(positions, chunk_shape, grid) -> bool:
    """True if a list of every chunk of the grid gives their positions in the grid's (C) order.

    ``positions``: the ``chunkPositionInArray`` column (None when not given:
    then only a single chunk is in order).
    """
    if positions is None:
        return _size(grid) == 1
    if isinstance(positions, np.ndarray):  # read by _parse
        key = (tuple(chunk_shape), tuple(grid))
        expected = _GRID_ORDER.get(key)
        if expected is None:
            starts = np.indices(grid, np.int64).reshape(len(grid), -1).T * np.asarray(chunk_shape, np.int64)
            expected = np.ascontiguousarray(starts).tobytes()
            if len(expected) <= 2**20:  # kept for the next file unless large (then making it is cheap beside reading)
                if len(_GRID_ORDER) >= 64:
                    _GRID_ORDER.clear()
                _GRID_ORDER[key] = expected
        return positions.dtype == np.int64 and positions.tobytes() == expected
    return False  # text: _chunk_indices reads it


#: Per chunk shape and grid, every chunk's first element in the grid's order, as ``_parse`` reads positions.
_GRID_ORDER: dict[tuple, bytes] = {}


_PREFIX = re.compile(rb"xmlns:([A-Za-z_][\w.-]*)\s*=\s*[\"']" + re.escape(DMRPP_NS.encode()) + rb"[\"']")
#: Deleting digits leaves the form of a chunk element; all digits, the rest spaces: its numbers.
_DIGITS = b"0123456789"
_NUMBERS = bytes(c if chr(c).isdigit() else 32 for c in range(256))
#: The attributes read ahead of ElementTree, digits deleted: a list with any other (``href``, ``fm``...) or
#: numbers of another form (signs, spaces) is left to it.
_FIELD = re.compile(rb'\s+(offset|nBytes|chunkPositionInArray)="(\[,*\]|)"')
#: Lists of fewer chunks are left to ElementTree.
_MANY = 8
#: Per namespace prefix: a plain (empty) chunk element, and the start of any chunk element.
_PATTERNS: dict[bytes, tuple[re.Pattern, re.Pattern]] = {}


def _parse(text: bytes, url: str) -> tuple[Any, dict[Any, _Pieces]]:
    """The document's element tree, and the chunk lists read ahead of it by element.

    Most of a document is its ``dmrpp:chunk`` elements, alike and plain
    (``offset``, ``nBytes``, ``chunkPositionInArray``): ElementTree would
    spend ~90% of its time making an element of each. Lists of only such
    elements (``_MANY`` or more) are read here as columns of numbers and cut out of
    the text ElementTree parses; anything else (other attributes, comments,
    children, quotes other than ``"``, entities) is left to ElementTree, and
    so is the whole document when the chunk lists found here do not match
    its ``dmrpp:chunks`` elements one to one.
    """
    tables: list[_Pieces | None] = []
    kept: list[bytes] = []
    found = _PREFIX.search(text, 0, 4096)
    if found is not None and _at_least(text, b":chunk ", _MANY):  # else no list is long enough to read here
        prefix = found.group(1)
        patterns = _PATTERNS.get(prefix)
        if patterns is None:
            name = re.escape(prefix)
            patterns = _PATTERNS[prefix] = (re.compile(b"<" + name + rb":chunk(\s[^>]*)/>"),
                                            re.compile(b"<" + name + rb":chunk[\s/>]"))
        opening, closing = b"<" + prefix + b":chunks", b"</" + prefix + b":chunks>"
        end = 0
        start = text.find(opening)
        while start >= 0:
            tag_end = text.find(b">", start)
            if tag_end < 0 or text[start + len(opening)] not in b" \t\r\n/>":
                break  # not a chunks element after all: leave the document to ElementTree
            if text[tag_end - 1] == 47:  # "/>": an empty list
                tables.append(None)
                start = text.find(opening, tag_end)
                continue
            stop = text.find(closing, tag_end)
            if stop < 0:
                break
            # a few chunks cost ElementTree little, and reading them here more
            many = _at_least(text, b":chunk ", _MANY, tag_end, stop)
            read = _plain_chunks(text[tag_end + 1 : stop], *patterns) if many else None
            tables.append(read and read[0])
            if read is not None:
                kept += [text[end : tag_end + 1], read[1]]
                end = stop
            start = text.find(opening, stop + len(closing))
        if start >= 0:  # stopped short: ElementTree reads it all
            kept = []
        else:
            kept.append(text[end:])
    try:
        if len(kept) > 1:  # some chunk lists were read here
            root = ElementTree.fromstring(b"".join(kept))
            elements = list(root.iter(_P + "chunks"))
            if len(elements) != len(tables):
                root, elements = ElementTree.fromstring(text), []
        else:
            root, elements = ElementTree.fromstring(text), []
    except ElementTree.ParseError as err:
        raise ParseError(f"{url}: not a DMR++ document (XML error: {err})") from err
    return root, {e: t for e, t in zip(elements, tables) if t is not None}


def _at_least(text: bytes, part: bytes, count: int, start: int = 0, end: int | None = None) -> bool:
    """True if ``part`` occurs ``count`` times in ``text[start:end]`` (a search that stops there, not a count)."""
    for _ in range(count):
        start = text.find(part, start, end)
        if start < 0:
            return False
        start += len(part)
    return True


def _plain_chunks(body: bytes, chunk: re.Pattern, other: re.Pattern) -> tuple[_Pieces, bytes] | None:
    """The plain ``dmrpp:chunk`` elements of one list as columns and the list without them; None if it has others.

    Plain elements differ in their digits only: with the digits deleted,
    every one reads alike (``nBytes="" chunkPositionInArray="[,,]"
    offset=""``), and that form says where each number belongs.
    """
    if b"<!--" in body or b"<![CDATA[" in body:
        return None
    first = chunk.search(body)
    if first is None:
        return None
    form = first.group(1).translate(None, _DIGITS)
    fields = _FIELD.findall(form)
    names = [name.decode() for name, _ in fields]
    if _FIELD.sub(b"", form).strip() or len(set(names)) != len(names) or not {"offset", "nBytes"} <= set(names):
        return None
    widths = [1 if value == b"" else 0 if value == b"[]" else value.count(b",") + 1 for _, value in fields]
    found = _uniform_chunks(body, first, other, form) or _split_chunks(body, chunk, other, form)
    if found is None:
        return None
    count, numbers, rest = found
    if numbers.size != count * sum(widths):
        return None
    table = numbers.reshape(count, sum(widths))
    columns: dict[str, Any] = {}
    start = 0
    for name, width in zip(names, widths):
        columns[name] = table[:, start] if name != "chunkPositionInArray" else table[:, start : start + width]
        start += width
    return _Pieces(count, columns), rest


def _uniform_chunks(body: bytes, first: re.Match, other: re.Pattern, form: bytes) -> tuple[int, np.ndarray, bytes] | None:
    """``_plain_chunks``' usual case: the list ends in plain elements of one form, one separator apart.

    Then the list from its first chunk on, digits deleted, is that element
    repeated, and all its digits are the chunks' numbers: two passes over the
    text instead of a regular expression's split. None for any other layout.
    """
    start, end = first.span()
    tag = body[start : first.start(1)]  # "<dmrpp:chunk"
    following = body.find(tag, end)
    if following < 0 or tag.translate(None, _DIGITS) != tag or other.search(body, 0, start):
        return None
    separator = body[end:following]
    if separator.strip():
        return None
    region = body[start:].rstrip()
    count = region.count(tag)
    if region.translate(None, _DIGITS) != separator.join([tag + form + b"/>"] * count):
        return None
    return count, np.fromstring(region.translate(_NUMBERS), dtype=np.int64, sep=" "), body[:start]


def _split_chunks(body: bytes, chunk: re.Pattern, other: re.Pattern,
                  form: bytes) -> tuple[int, np.ndarray, bytes] | None:
    """``_plain_chunks`` for any layout: the plain elements cut out one by one; None if any other is left."""
    split = chunk.split(body)  # the rest, a chunk's attributes, the rest, ...
    tags, rest = split[1::2], b"".join(split[0::2])
    if not tags or other.search(rest):
        return None
    count = len(tags)
    if b"\n".join(tags).translate(None, _DIGITS) != b"\n".join([form] * count):
        return None
    return count, np.fromstring(b" ".join(tags).translate(_NUMBERS), dtype=np.int64, sep=" "), rest


def _chunk_href(href: str, data_url: str) -> str:
    """A chunk's own file: a url with a scheme as it is, else by name beside the data file."""
    if re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", href):
        return href
    return data_url.rsplit("/", 1)[0] + "/" + href.rsplit("/", 1)[-1]


def _fill_value(chunks, dtype: np.dtype, attrs: dict, where: str) -> Any:
    """``fillValue`` of ``dmrpp:chunks``, else the ``_FillValue`` attribute, else 0 (HDF5's default)."""
    text = chunks.get("fillValue") if chunks is not None else None
    if dtype.names is not None:
        return tuple(0 for _ in dtype.names) if text in (None, "0") else _bad_fill(where, text)
    if text is None:
        value = attrs.get("_FillValue", 0)
        return value if not isinstance(value, list) else 0
    try:
        if dtype.kind == "b":
            return text.strip().lower() not in ("0", "false")
        if dtype.kind in "iu":
            return int(float(text)) if not re.fullmatch(r"[+-]?\d+", text.strip()) else int(text)
        return np.array(float(text), dtype=dtype).item()
    except ValueError:
        return _bad_fill(where, text)


def _bad_fill(where: str, text: str):
    raise ParseError(f"{where}: fill value {text!r} cannot be read")


def _codecs(chunks, dtype: np.dtype, where: str) -> tuple[Any, ...]:
    """The zarr codecs of ``compressionType`` (in the document's order, which is HDF5's filter order)."""
    key = (chunks.get("compressionType"), chunks.get("deflateLevel") or chunks.get("deflate_level"), dtype.str)
    codecs = _CODECS.get(key)
    if codecs is None:
        codecs = _build_codecs(chunks, dtype, where)
        if len(_CODECS) >= 256:
            _CODECS.clear()
        _CODECS[key] = codecs
    return codecs


def _metadata(shape, chunk_shape, dtype: np.dtype, codecs: tuple[Any, ...] | None, fill, dims, attrs) -> Any:
    """The zarr metadata of a chunked variable: one per distinct spec, shared (it is frozen).

    The granules of a collection repeat their variables' specs (shape,
    chunks, dtype, codecs, fill value, dimensions, attributes): the second
    file on takes the first one's metadata instead of building it again.
    The key holds the fill value and attributes by type and ``repr``, so
    ``1``/``1.0``/``True`` and ``0.0``/``-0.0`` stay apart. ``codecs`` None:
    the plain bytes codec (values the document holds, inlined).
    """
    import warnings

    try:
        key = (tuple(shape), tuple(chunk_shape), dtype, id(codecs), type(fill).__name__, repr(fill), tuple(dims),
               repr(attrs))
        found = _METADATA.get(key)
    except TypeError:  # unhashable: build it
        key, found = None, None
    if found is not None:
        return found[0]
    with warnings.catch_warnings():  # zarr-python's fixed-size bytes, text and struct types have no zarr v3 spec yet
        warnings.filterwarnings("ignore", message=".*does not have a Zarr V3 specification")
        metadata = create_array_metadata(shape=shape, chunk_shape=chunk_shape, dtype=dtype,
                                         codecs=None if codecs is None else list(codecs), fill_value=fill,
                                         dimension_names=dims, attributes=attrs)
    if key is not None:
        if len(_METADATA) >= 1024:
            _METADATA.clear()
        _METADATA[key] = (metadata, codecs)  # the codecs kept alive: their id is in the key
    return metadata


#: Metadata per spec (see ``_metadata``).
_METADATA: dict[tuple, tuple[Any, tuple[Any, ...] | None]] = {}


#: Codecs per (filters, levels, dtype): a document's variables share a few pipelines, and shared (immutable)
#: codec objects let ``create_array_metadata`` reuse its templates.
_CODECS: dict[tuple, tuple] = {}


def _build_codecs(chunks, dtype: np.dtype, where: str) -> tuple[Any, ...]:
    import zarr.codecs as zc

    endian: Literal["big", "little"] = "big" if dtype.byteorder == ">" else "little"
    codecs: list[Any] = [zc.BytesCodec(endian=endian if dtype.itemsize > 1 else None)]
    levels = [int(v) for v in (chunks.get("deflateLevel") or chunks.get("deflate_level") or "").split()]
    for name in (chunks.get("compressionType") or "").split():
        if name == "deflate":
            codecs.append(zc.Zlib(level=levels.pop(0) if levels else 4))
        elif name == "shuffle":
            codecs.append(zc.Shuffle(elementsize=dtype.itemsize))
        elif name == "fletcher32":
            codecs.append(zc.Fletcher32())
        else:
            raise ParseError(f"{where}: compression {name!r} has no zarr codec that can read its stored chunks")
    return tuple(codecs)


def _inline_values(raw: bytes, dtype: np.dtype, native: np.dtype, shape, dims, attrs, fill, registry,
                   where: str) -> ManifestArray:
    """Values the document holds, inlined as one chunk encoded with the plain bytes codec (as ``HDFParser``)."""
    import warnings

    from vzdask.codecs import cached_codec_for

    count = int(np.prod(shape, dtype=np.int64))
    if len(raw) != count * dtype.itemsize:
        raise ParseError(f"{where}: the document holds {len(raw)} bytes of values, expected {count * dtype.itemsize}")
    values = np.frombuffer(raw, dtype=dtype).reshape(shape).astype(native)
    chunk = tuple(max(int(s), 1) for s in shape)
    grid = tuple(1 if s else 0 for s in shape)
    metadata = _metadata(shape, chunk, native, None, fill, dims, attrs)
    if not count:
        return ManifestArray(metadata, ChunkManifest.empty(grid), registry=registry)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have a Zarr V3 specification")
        data = cached_codec_for(metadata).encode(values)
    return _one_inlined(metadata, data, grid, registry)


def _vlsa_values(vlsa, where: str) -> list[str]:
    """The strings of a ``dmrpp:vlsa`` element: ``<v>`` values, ``c`` repeats, ``s`` the size of a packed value.

    A value with ``s`` (its length in bytes) is base64 text, of zlib-deflated
    bytes when that is shorter; ``c`` repeats a value that many times.
    """
    out: list[str] = []
    for v in vlsa:
        if v.tag.rsplit("}", 1)[-1] != "v":
            continue
        text = v.text or ""
        size = v.get("s")
        if size is not None:
            raw = base64.b64decode(text)
            if len(raw) != int(size):
                try:
                    raw = zlib.decompress(raw)
                except zlib.error as err:
                    raise ParseError(f"{where}: a dmrpp:vlsa value cannot be inflated: {err}") from err
            text = raw.decode("utf-8", "replace")
        out.extend([text] * int(v.get("c", "1")))
    return out


def _inline_text(texts: list[str], shape, dims, attrs, registry, where: str) -> ManifestArray:
    """Strings the document holds, as ``<U{n}`` (``n`` the longest), inlined: what ``HDFParser`` makes of text."""
    import warnings

    from vzdask.codecs import cached_codec_for

    count = int(np.prod(shape, dtype=np.int64))
    if len(texts) != count:
        raise ParseError(f"{where}: the document holds {len(texts)} strings, expected {count}")
    width = max((len(t) for t in texts), default=0)
    dtype = np.dtype(f"<U{max(width, 1)}")
    values = np.array(texts, dtype=dtype).reshape(shape)
    chunk = tuple(max(int(s), 1) for s in shape)
    grid = tuple(1 if s else 0 for s in shape)
    metadata = _metadata(shape, chunk, dtype, None, "", dims, attrs)
    if not count:
        return ManifestArray(metadata, ChunkManifest.empty(grid), registry=registry)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have a Zarr V3 specification")
        data = cached_codec_for(metadata).encode(values)
    return _one_inlined(metadata, data, grid, registry)


def _one_inlined(metadata, data: bytes, grid, registry) -> ManifestArray:
    return ManifestArray(metadata, ChunkManifest.inlined_chunk(data, len(grid)), registry=registry)


def _attributes(node, url: str, where: str) -> dict[str, Any]:
    """The ``Attribute`` children of a group or variable, typed as their ``type`` says (see the module docstring)."""
    out: dict[str, Any] = {}
    for attr in node.findall(_D + "Attribute"):
        name = attr.get("name", "")
        if name in SKIPPED_ATTRIBUTES:
            continue
        value = _attribute(attr)
        if value is not None:
            out[name] = value
    return out


def _attribute(attr) -> Any:
    kind = attr.get("type", "")
    if kind == "Container":
        return {a.get("name", ""): v for a in attr.findall(_D + "Attribute") if (v := _attribute(a)) is not None}
    texts = [v.text or "" for v in attr.findall(_D + "Value")]
    if kind in ("String", "URL"):
        return texts[0] if len(texts) == 1 else texts
    if kind not in DAP_TYPES or kind == "Char" or not texts:
        return None  # unknown types (type="null"): the document says less than the file
    dtype = np.dtype(DAP_TYPES[kind])
    try:
        if dtype.kind in "iu":
            values = np.array([int(t) for t in texts], dtype=dtype)
        else:
            values = np.array([float(t) for t in texts], dtype=dtype)
    except ValueError:
        return None
    return attribute_value(values[0]) if len(values) == 1 else values.tolist()
