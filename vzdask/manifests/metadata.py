"""Helpers around zarr v3 ``ArrayV3Metadata``: building, reshaping, comparing."""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from vzdask._compat import (
    ArrayV3Metadata,
    FillValueCoder,
    RegularChunkGridMetadata,
    array_metadata_like,
    get_data_type_from_native_dtype,
)
from vzdask.errors import CombineError

#: Codecs whose configuration depends on the number of dimensions.
NDIM_DEPENDENT_CODECS = frozenset({"transpose", "sharding_indexed"})

#: Fields two arrays must share to be combined into one.
COMBINE_FIELDS = ("data_type", "chunk_shape", "codecs", "fill_value")


def as_array_metadata(metadata: ArrayV3Metadata | dict[str, Any]) -> ArrayV3Metadata:
    """Accept zarr v3 array metadata as the object or its ``zarr.json`` dict."""
    if isinstance(metadata, ArrayV3Metadata):
        return metadata
    if isinstance(metadata, dict):
        document = {"zarr_format": 3, "node_type": "array", **metadata}
        return ArrayV3Metadata.from_dict(document)
    raise TypeError(f"metadata must be zarr ArrayV3Metadata or its dict, not {type(metadata).__name__}")


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


def chunk_shape(metadata: ArrayV3Metadata) -> tuple[int, ...]:
    """Shape of one stored chunk (the outer chunk: a whole shard when sharded)."""
    grid = metadata.chunk_grid
    if not isinstance(grid, RegularChunkGridMetadata):
        raise NotImplementedError(f"only regular chunk grids are supported, got {type(grid).__name__}")
    return tuple(int(c) for c in grid.chunk_shape)


def chunk_grid_shape(metadata: ArrayV3Metadata) -> tuple[int, ...]:
    """Number of chunks along each axis."""
    return tuple(math.ceil(s / c) for s, c in zip(metadata.shape, chunk_shape(metadata)))


def replace_metadata(
    metadata: ArrayV3Metadata,
    *,
    shape: Sequence[int] | None = None,
    chunk_shape: Sequence[int] | None = None,
    dimension_names: Sequence[str | None] | None | type[...] = ...,
    attributes: dict[str, Any] | None = None,
) -> ArrayV3Metadata:
    """A copy of ``metadata`` with some fields replaced."""
    document = metadata.to_dict()
    if shape is not None:
        document["shape"] = tuple(int(s) for s in shape)
    if chunk_shape is not None:
        document["chunk_grid"] = {"name": "regular", "configuration": {"chunk_shape": tuple(int(c) for c in chunk_shape)}}
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


def combine_fields(metadata: ArrayV3Metadata) -> dict[str, Any]:
    """The metadata fields that must agree for arrays to be combined, JSON-comparable."""
    document = metadata.to_dict()
    return {
        "data_type": document["data_type"],
        "chunk_shape": tuple(chunk_shape(metadata)),
        "codecs": tuple(_freeze(c) for c in document["codecs"]),
        "fill_value": _freeze(document["fill_value"]),
    }


def check_combinable(metadatas: Sequence[ArrayV3Metadata], operation: str, ignore_axis: int | None = None) -> None:
    """Raise ``ValueError`` naming the first field that differs between arrays."""
    head = metadatas[0]
    first = None
    for i, metadata in enumerate(metadatas[1:], start=1):
        if _shares_combine_fields(metadata, head):  # built from one template: nothing to compare
            continue
        first = combine_fields(head) if first is None else first
        other = combine_fields(metadata)
        for field in COMBINE_FIELDS:
            if first[field] != other[field]:
                raise CombineError(
                    f"cannot {operation}: {field} differs between array 0 ({_show(first[field])}) "
                    f"and array {i} ({_show(other[field])})"
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
