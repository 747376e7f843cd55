"""Helpers around zarr v3 ``ArrayV3Metadata``: building, reshaping, comparing."""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from vzdask._compat import (
    ArrayV3Metadata,
    FillValueCoder,
    RectilinearChunkGridMetadata,
    RegularChunkGridMetadata,
    array_metadata_like,
    array_metadata_with_grid,
    get_data_type_from_native_dtype,
)
from vzdask.errors import CombineError

#: Codecs whose configuration depends on the number of dimensions.
NDIM_DEPENDENT_CODECS = frozenset({"transpose", "sharding_indexed"})

#: Fields two arrays must share to be combined into one.
COMBINE_FIELDS = ("data_type", "chunk_shape", "codecs", "fill_value")

#: Chunk sizes along one axis: one size (a regular axis) or the stored size of every chunk along it
#: (a rectilinear axis of zarr's experimental ``rectilinear`` chunk grid, ``array.rectilinear_chunks``).
AxisChunks = int | tuple[int, ...]


def as_array_metadata(metadata: ArrayV3Metadata | dict[str, Any]) -> ArrayV3Metadata:
    """Accept zarr v3 array metadata as the object or its ``zarr.json`` dict."""
    if isinstance(metadata, ArrayV3Metadata):
        return metadata
    if isinstance(metadata, dict):
        return metadata_from_document({"zarr_format": 3, "node_type": "array", **metadata})
    raise TypeError(f"metadata must be zarr ArrayV3Metadata or its dict, not {type(metadata).__name__}")


def metadata_from_document(document: dict[str, Any]) -> ArrayV3Metadata:
    """``ArrayV3Metadata.from_dict``, also for a rectilinear chunk grid whatever zarr's flag says.

    zarr reads a rectilinear ``zarr.json`` only with ``array.rectilinear_chunks``
    enabled (a process-wide setting); vzdask's own documents (a store it
    appends to, a combined array's copy) are read without asking for it.
    """
    grid = document.get("chunk_grid")
    if not (isinstance(grid, dict) and grid.get("name") == "rectilinear"):
        return ArrayV3Metadata.from_dict(document)
    rectilinear = RectilinearChunkGridMetadata.from_dict(grid)  # type: ignore[arg-type]
    shape = tuple(int(s) for s in document["shape"])
    sizes = normalize_chunk_sizes(rectilinear.chunk_shapes, shape)
    placeholder = {**document, "chunk_grid": chunk_grid_document(largest_chunk(sizes), shape)}
    template = ArrayV3Metadata.from_dict(placeholder)
    if is_regular(sizes):
        return replace_metadata(template, chunk_shape=sizes)
    grid_metadata = RectilinearChunkGridMetadata(chunk_shapes=_explicit_edges(sizes, shape))
    return array_metadata_with_grid(template, shape, grid_metadata, template.dimension_names, template.attributes)


@functools.lru_cache(maxsize=256)
def _zarr_data_type(dtype: np.dtype):
    """zarr's data type for a numpy dtype (cached: zarr's lookup scans its whole registry)."""
    return get_data_type_from_native_dtype(dtype)


def create_array_metadata(
    *,
    shape: Sequence[int],
    chunk_shape: Sequence[int],
    dtype: Any,
    codecs: Iterable[Any] | None = None,
    fill_value: Any = None,
    dimension_names: Sequence[str | None] | None = None,
    attributes: dict[str, Any] | None = None,
    chunk_key_separator: str = "/",
) -> ArrayV3Metadata:
    """Build v3 metadata for a regularly chunked array (default codecs: ``bytes`` only).

    ``codecs`` are zarr codec objects or their dicts, in zarr v3 order
    (array->array filters, the array->bytes serializer, bytes->bytes compressors).
    A parser makes the same metadata but for shape, names and attributes once
    per variable of every file, so full construction (parsing and evolving
    every codec) runs once per distinct dtype/chunks/codecs/fill value and
    the rest reuse it (see ``_template``).
    """
    dtype = np.dtype(dtype)
    zdtype = _zarr_data_type(dtype)
    if codecs is None:
        codecs = [{"name": "bytes", "configuration": {"endian": "little"}}] if dtype.itemsize > 1 else [{"name": "bytes"}]
    codecs = list(codecs)
    if fill_value is None:
        fill_value = zdtype.default_scalar()
    attributes = encode_cf_fill_value(attributes or {}, dtype)
    chunks = tuple(int(c) for c in chunk_shape)
    dimension_names = tuple(dimension_names) if dimension_names is not None else None
    key = _template_key(dtype, chunks, codecs, fill_value, chunk_key_separator)
    if key is None:
        return _full_metadata(shape, zdtype, chunks, fill_value, codecs, attributes, dimension_names,
                              chunk_key_separator)
    template = _template(key, zdtype, chunks, fill_value, codecs, chunk_key_separator)
    return array_metadata_like(template, shape, dimension_names, attributes)


def _full_metadata(shape, zdtype, chunks, fill_value, codecs, attributes, dimension_names, separator) -> ArrayV3Metadata:
    return ArrayV3Metadata(
        shape=tuple(int(s) for s in shape),
        data_type=zdtype,
        chunk_grid={"name": "regular", "configuration": {"chunk_shape": chunks}},
        chunk_key_encoding={"name": "default", "configuration": {"separator": separator}},
        fill_value=fill_value,
        codecs=list(codecs),
        attributes=attributes or {},
        dimension_names=dimension_names,
    )


def _template_key(dtype: np.dtype, chunks: tuple[int, ...], codecs: list, fill_value: Any, separator: str):
    """What full construction depends on besides shape, names and attributes; ``None``: do not reuse.

    Codecs whose configuration depends on the number of dimensions (transpose,
    sharding) are never reused. The fill value enters by type and repr, so
    ``0.0``/``-0.0``/NaN and ``1``/``1.0`` stay apart.
    """
    documents = _codec_documents(codecs)
    if documents is None:
        return None
    try:
        key = (dtype, chunks, documents,
               type(fill_value).__name__, repr(fill_value), separator)
        hash(key)
    except (TypeError, ValueError):
        return None
    return key


def _codec_documents(codecs: list) -> str | None:
    """The codecs' documents as one string, or ``None`` if they depend on the number of dimensions.

    Remembered per list of zarr codec objects (frozen; by identity: a parser
    hands the same objects for every variable with the same pipeline), since
    turning codecs into documents costs more than the rest of the metadata.
    """
    ids = tuple(map(id, codecs))
    known = _CODEC_DOCUMENTS.get(ids)
    if known is not None and all(a is b for a, b in zip(known[0], codecs)):
        return known[1]
    documents = []
    for codec in codecs:
        document = codec.to_dict() if hasattr(codec, "to_dict") else codec
        if not isinstance(document, dict) or document.get("name") in NDIM_DEPENDENT_CODECS:
            documents = None
            break
        documents.append(document)
    text = None if documents is None else repr(documents)
    if not any(isinstance(c, dict) for c in codecs):  # only zarr's frozen codec objects: a dict may change
        if len(_CODEC_DOCUMENTS) >= _MAX_TEMPLATES:
            _CODEC_DOCUMENTS.clear()
        _CODEC_DOCUMENTS[ids] = (tuple(codecs), text)  # holding the objects keeps their ids from being reused
    return text


#: ``_codec_documents`` results per tuple of codec ids, with the codecs themselves.
_CODEC_DOCUMENTS: dict[tuple[int, ...], tuple[tuple, str | None]] = {}


#: Fully constructed metadata per ``_template_key`` (bounded: a few distinct kinds of variable per collection).
_TEMPLATES: dict[tuple, ArrayV3Metadata] = {}
_MAX_TEMPLATES = 256


def _template(key, zdtype, chunks, fill_value, codecs, separator) -> ArrayV3Metadata:
    """Full construction for one key (shape: one chunk); callers copy it and set shape, names, attributes."""
    template = _TEMPLATES.get(key)
    if template is None:
        template = _full_metadata(chunks, zdtype, chunks, fill_value, codecs, None, (None,) * len(chunks), separator)
        if len(_TEMPLATES) >= _MAX_TEMPLATES:
            _TEMPLATES.clear()
        _TEMPLATES[key] = template
    return template


class Float32Attribute(float):
    """A float attribute that was float32 in its file: a JSON number in zarr metadata, ``np.float32`` in xarray.

    xarray unpacks ``scale_factor``/``add_offset`` into the float type of
    those attributes, as netCDF readers hand them over. Zarr attributes are
    JSON, so a plain float would turn an int16 variable packed with a float32
    scale factor into float64 where netCDF readers give float32. The parsers
    keep the type with this subclass: it is written, compared and hashed as
    the float it equals, and ``xarray_attributes`` gives it back as
    ``np.float32`` (readers of what we write see JSON numbers, as from any
    zarr store).
    """

    __slots__ = ()

    def __reduce__(self):
        return (Float32Attribute, (float(self),))


def attribute_value(value: np.generic) -> Any:
    """A numpy scalar attribute as a JSON-compatible Python value, keeping float32 as ``Float32Attribute``."""
    if value.dtype == np.float32:
        return Float32Attribute(value)
    return value.item()


def xarray_attributes(attributes: dict[str, Any], dtype: np.dtype) -> dict[str, Any]:
    """A variable's attributes as ``xr.open_dataset`` shows them: plain ``_FillValue``, float32 ones as numpy."""
    return numpy_attributes(decode_cf_fill_value(attributes, dtype))


def numpy_attributes(attributes: dict[str, Any]) -> dict[str, Any]:
    """``attributes`` with every ``Float32Attribute`` turned back into ``np.float32`` (the rest as they are)."""
    if not any(type(v) is Float32Attribute for v in attributes.values()):
        return dict(attributes)  # a copy either way
    return {k: np.float32(v) if type(v) is Float32Attribute else v for k, v in attributes.items()}


def encode_cf_fill_value(attributes: dict[str, Any], dtype: np.dtype) -> dict[str, Any]:
    """Store a CF ``_FillValue`` attribute the way xarray's zarr backend expects (base64 for floats)."""
    value = attributes.get("_FillValue")
    if value is None or isinstance(value, (str, bytes, list)) or dtype.kind not in "biufc":
        return dict(attributes)
    return {**attributes, "_FillValue": FillValueCoder.encode(value, dtype)}


def decode_cf_fill_value(attributes: dict[str, Any], dtype: np.dtype) -> dict[str, Any]:
    """The inverse of ``encode_cf_fill_value``: the plain number, as ``xr.open_dataset`` shows it."""
    value = attributes.get("_FillValue")
    if value is None or dtype.kind not in "biufc":
        return dict(attributes)
    return {**attributes, "_FillValue": dtype.type(FillValueCoder.decode(value, dtype)).item()}


def chunk_sizes(metadata: ArrayV3Metadata) -> tuple[AxisChunks, ...]:
    """Per axis: the chunk size (regular), or the stored size of each chunk along it (rectilinear).

    A rectilinear axis lists the chunks that hold data (edges past the end are
    dropped); its sizes sum to the length, or beyond it only by the last
    chunk, which may be stored partial as a regular grid's last chunk is. An
    axis whose chunks are all one size is given as that size: a regular grid
    describes it exactly, so chunk geometry compares equal however it was made.
    """
    grid = metadata.chunk_grid
    if isinstance(grid, RegularChunkGridMetadata):
        return tuple(int(c) for c in grid.chunk_shape)
    if isinstance(grid, RectilinearChunkGridMetadata):
        return normalize_chunk_sizes(grid.chunk_shapes, metadata.shape)
    raise NotImplementedError(f"unknown chunk grid {type(grid).__name__}")


def normalize_chunk_sizes(sizes: Sequence[int | Sequence[int]], shape: Sequence[int]) -> tuple[AxisChunks, ...]:
    """``sizes`` with each axis's edges trimmed to the chunks that start inside it, and one size where they agree."""
    out: list[AxisChunks] = []
    for spec, n in zip(sizes, shape):
        if isinstance(spec, (int, np.integer)):
            out.append(int(spec))
            continue
        edges, start = [], 0
        for edge in spec:
            if start >= n and edges:
                break
            edges.append(int(edge))
            start += int(edge)
        if len(set(edges)) <= 1:
            out.append(edges[0] if edges else 1)
        else:
            out.append(tuple(edges))
    return tuple(out)


def is_regular(sizes: Sequence[AxisChunks]) -> bool:
    """Whether chunk sizes (``chunk_sizes``) make a regular grid."""
    return all(isinstance(c, int) for c in sizes)


def axis_edges(size: AxisChunks, n: int) -> tuple[int, ...]:
    """The stored size of every chunk along an axis of length ``n`` (a regular axis repeats its size)."""
    if isinstance(size, int):
        return (size,) * (-(-n // size) if size else 0)
    return tuple(size)


def largest_chunk(sizes: Sequence[AxisChunks]) -> tuple[int, ...]:
    """The largest chunk along each axis (a regular grid's chunk shape)."""
    return tuple(c if isinstance(c, int) else max(c) for c in sizes)


def chunk_shape(metadata: ArrayV3Metadata) -> tuple[int, ...]:
    """Shape of one stored chunk (the outer chunk: a whole shard when sharded).

    For a rectilinear grid: the largest chunk along each axis (what memory
    estimates need); ``chunk_sizes`` gives every chunk's size.
    """
    return largest_chunk(chunk_sizes(metadata))


#: ``chunk_grid_shape`` of recently seen metadata, by identity (metadata is immutable; each entry holds its object,
#: so its id is not reused while cached). Parsers of files laid out alike make many arrays of one metadata.
_GRID_SHAPES: dict[int, tuple[ArrayV3Metadata, tuple[int, ...]]] = {}


def chunk_grid_shape(metadata: ArrayV3Metadata) -> tuple[int, ...]:
    """Number of chunks along each axis."""
    known = _GRID_SHAPES.get(id(metadata))
    if known is not None and known[0] is metadata:
        return known[1]
    shape = tuple(len(axis_edges(c, n)) for c, n in zip(chunk_sizes(metadata), metadata.shape))
    if len(_GRID_SHAPES) >= 1024:
        _GRID_SHAPES.clear()
    _GRID_SHAPES[id(metadata)] = (metadata, shape)
    return shape


def show_chunk_sizes(sizes: Sequence[AxisChunks]) -> str:
    """Chunk sizes for messages: ``[31, 6, 8]``, or ``[[31, 29, 31], 6, 8]`` with a rectilinear axis."""
    return "[" + ", ".join(str(c) if isinstance(c, int) else "[" + ", ".join(map(str, c)) + "]" for c in sizes) + "]"


def chunk_grid_document(sizes: Sequence[AxisChunks], shape: Sequence[int]) -> dict[str, Any]:
    """The ``chunk_grid`` of ``zarr.json``: regular, or rectilinear with every axis's edges written out.

    Icechunk 2.3 refuses the rectilinear spec's bare-integer shorthand for an
    axis, so regular axes of a rectilinear grid are written as run-length
    edges too (``[[10, 3]]``), which zarr reads as the same grid.
    """
    if is_regular(sizes):
        return {"name": "regular", "configuration": {"chunk_shape": [int(c) for c in sizes]}}
    return RectilinearChunkGridMetadata(chunk_shapes=_explicit_edges(sizes, shape)).to_dict()  # type: ignore[return-value]


def _explicit_edges(sizes: Sequence[AxisChunks], shape: Sequence[int]) -> tuple[tuple[int, ...], ...]:
    return tuple(axis_edges(c, n) or ((c,) if isinstance(c, int) else ()) for c, n in zip(sizes, shape))


def metadata_document(metadata: ArrayV3Metadata) -> dict[str, Any]:
    """``metadata.to_dict()`` with the chunk grid as ``chunk_grid_document`` writes it (JSON-ready)."""
    document = metadata.to_dict()
    if isinstance(metadata.chunk_grid, RectilinearChunkGridMetadata):
        document["chunk_grid"] = chunk_grid_document(chunk_sizes(metadata), metadata.shape)
    return document


def metadata_json(metadata: ArrayV3Metadata) -> bytes:
    """The array's ``zarr.json``, also for a rectilinear grid.

    zarr refuses to serialise a rectilinear grid unless the process enabled
    ``array.rectilinear_chunks``; writing one is vzdask's own decision here,
    while reading it back stays the reader's (zarr asks for the flag then).
    """
    if isinstance(metadata.chunk_grid, RegularChunkGridMetadata):
        from zarr.buffer import default_buffer_prototype

        return metadata.to_buffer_dict(default_buffer_prototype())["zarr.json"].to_bytes()
    return json.dumps(metadata_document(metadata), allow_nan=True).encode()


def replace_metadata(
    metadata: ArrayV3Metadata,
    *,
    shape: Sequence[int] | None = None,
    chunk_shape: Sequence[AxisChunks] | None = None,
    dimension_names: Sequence[str | None] | None | type[...] = ...,
    attributes: dict[str, Any] | None = None,
) -> ArrayV3Metadata:
    """A copy of ``metadata`` with some fields replaced.

    ``chunk_shape`` takes per axis a size or a tuple of chunk sizes (see
    ``chunk_sizes``); the grid is regular whenever the sizes allow it.
    """
    new_shape = tuple(int(s) for s in (metadata.shape if shape is None else shape))
    sizes = normalize_chunk_sizes(chunk_sizes(metadata) if chunk_shape is None else chunk_shape, new_shape)
    if not is_regular(sizes):
        names = metadata.dimension_names if dimension_names is ... else dimension_names
        grid = RectilinearChunkGridMetadata(chunk_shapes=_explicit_edges(sizes, new_shape))
        return array_metadata_with_grid(metadata, new_shape, grid, names,
                                        metadata.attributes if attributes is None else attributes)
    document = metadata.to_dict()
    document["shape"] = new_shape
    document["chunk_grid"] = chunk_grid_document(sizes, new_shape)
    if dimension_names is not ...:
        document["dimension_names"] = tuple(dimension_names) if dimension_names is not None else None
    if attributes is not None:
        document["attributes"] = attributes
    return ArrayV3Metadata.from_dict(document)


def check_ndim_change_allowed(metadata: ArrayV3Metadata, operation: str) -> None:
    """Changing the number of dimensions is only safe when no codec depends on it."""
    bad = NDIM_DEPENDENT_CODECS.intersection(c.get("name") for c in (codec.to_dict() for codec in metadata.codecs))
    if bad:
        raise NotImplementedError(
            f"{operation} changes the number of dimensions, but codec {sorted(bad)[0]!r} is configured for "
            f"{len(metadata.shape)} dimensions; load the variable or use .to_dask_array() instead"
        )


def combine_fields(metadata: ArrayV3Metadata, ignore_axis: int | None = None) -> dict[str, Any]:
    """The metadata fields that must agree for arrays to be combined, JSON-comparable.

    The chunk sizes along ``ignore_axis`` (the one arrays are joined along) may differ.
    """
    document = metadata.to_dict()
    sizes = chunk_sizes(metadata)
    return {
        "data_type": document["data_type"],
        "chunk_shape": tuple("any" if axis == ignore_axis else c for axis, c in enumerate(sizes)),
        "codecs": tuple(_freeze(c) for c in document["codecs"]),
        "fill_value": _freeze(document["fill_value"]),
    }


def check_combinable(metadatas: Sequence[ArrayV3Metadata], operation: str, ignore_axis: int | None = None) -> None:
    """Raise ``CombineError`` naming the first field that differs between arrays (chunks along ``ignore_axis`` may)."""
    head = metadatas[0]
    first = None
    for i, metadata in enumerate(metadatas[1:], start=1):
        if _shares_combine_fields(metadata, head):  # built from one template: nothing to compare
            continue
        first = combine_fields(head, ignore_axis) if first is None else first
        other = combine_fields(metadata, ignore_axis)
        for field in COMBINE_FIELDS:
            if first[field] != other[field]:
                shown = ((show_chunk_sizes(chunk_sizes(head)), show_chunk_sizes(chunk_sizes(metadata)))
                         if field == "chunk_shape" else (_show(first[field]), _show(other[field])))
                raise CombineError(
                    f"cannot {operation}: {field} differs between array 0 ({shown[0]}) and array {i} ({shown[1]})"
                )


def _shares_combine_fields(a: ArrayV3Metadata, b: ArrayV3Metadata) -> bool:
    """The very same objects for every combine field (``create_array_metadata`` shares a template's)."""
    return (a.data_type is b.data_type and a.chunk_grid is b.chunk_grid and a.codecs is b.codecs
            and a.fill_value is b.fill_value and a.chunk_key_encoding is b.chunk_key_encoding)


def _freeze(value: Any) -> Any:
    if isinstance(value, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    return value


def _show(value: Any) -> str:
    def thaw(v):
        if isinstance(v, tuple) and v and all(isinstance(x, tuple) and len(x) == 2 and isinstance(x[0], str) for x in v):
            return {k: thaw(x) for k, x in v}
        if isinstance(v, tuple):
            return [thaw(x) for x in v]
        return v

    return repr(thaw(value))
