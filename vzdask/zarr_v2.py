"""Zarr v3 array metadata as zarr v2 ``.zarray``/``.zattrs`` documents (what kerchunk writes).

The chunk bytes are untouched: a v3 codec chain is re-expressed as the v2
pieces that decode the same bytes.

* ``bytes`` (the serializer): its ``endian`` becomes the dtype's byte order;
  ``vlen-utf8``/``vlen-bytes``: dtype ``|O`` with that object codec as the
  first byte-producing filter.
* ``transpose``: ``order: "F"`` when it fully reverses the axes (and comes
  before any other array filter); any other permutation has no v2 form.
* zarr's numcodecs wrappers (``numcodecs.zlib``...): their numcodecs id and
  configuration; zarr's native ``zstd``, ``gzip``, ``blosc`` and ``crc32c``:
  the numcodecs codecs with the same stream format.
* The last bytes-to-bytes codec is the ``compressor``; everything before it
  is a ``filter``, in order.
* ``sharding_indexed`` or any codec without a v2 equivalent: ``ValueError``
  naming the variable and the codec.

CF attributes follow xarray's zarr v2 convention: a CF ``_FillValue`` is the
array's ``fill_value`` (xarray reads it back as ``_FillValue`` and masks with
it) and is not repeated in ``.zattrs``; ``_ARRAY_DIMENSIONS`` names the
dimensions.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from zarr.core.metadata.v3 import ArrayV3Metadata

#: Which numcodecs ``shuffle`` number zarr v3's blosc ``shuffle`` names mean.
BLOSC_SHUFFLE = {"noshuffle": 0, "shuffle": 1, "bitshuffle": 2}
#: zarr v3 native bytes-to-bytes codecs -> functions giving the numcodecs config.
_NATIVE_BYTES_CODECS = {
    "zstd": lambda c: {"id": "zstd", "level": int(c.get("level", 0)), "checksum": bool(c.get("checksum", False))},
    "gzip": lambda c: {"id": "gzip", "level": int(c.get("level", 5))},
    "blosc": lambda c: {
        "id": "blosc",
        "cname": c.get("cname", "lz4"),
        "clevel": int(c.get("clevel", 5)),
        "shuffle": BLOSC_SHUFFLE[c.get("shuffle", "noshuffle")],
        "blocksize": int(c.get("blocksize", 0)),
    },
    "crc32c": lambda c: {"id": "crc32c"},
}
_OBJECT_CODECS = {"vlen-utf8": "vlen-utf8", "vlen-bytes": "vlen-bytes"}
_NUMCODECS_PREFIX = "numcodecs."


def v2_codecs(metadata: ArrayV3Metadata, name: str = "") -> tuple[np.dtype | str, str, list[dict], dict | None]:
    """The v2 ``dtype``, ``order``, ``filters`` and ``compressor`` equivalent to ``metadata``'s codecs.

    Raises ``ValueError`` naming ``name`` and the codec when there is none.
    """
    from zarr.abc.codec import ArrayArrayCodec, ArrayBytesCodec

    where = f"variable {name!r}" if name else "array"
    ndim = len(metadata.shape)
    dtype = metadata.data_type.to_native_dtype()
    order = "C"
    array_filters: list[dict] = []
    object_codec: dict | None = None
    byte_steps: list[dict] = []
    seen_serializer = False
    for codec in metadata.codecs:
        document = codec.to_dict()
        codec_name = document["name"]
        config = dict(document.get("configuration") or {})
        if codec_name == "sharding_indexed":
            raise ValueError(
                f"{where}: codec 'sharding_indexed' has no zarr v2 equivalent; sharded arrays cannot be "
                "written as kerchunk references (write them to Icechunk, or rewrite without sharding)"
            )
        if isinstance(codec, ArrayArrayCodec):
            if codec_name == "transpose":
                permutation = tuple(int(a) for a in config.get("order", ()))
                if permutation == tuple(range(ndim)):
                    continue
                if permutation != tuple(reversed(range(ndim))) or order == "F" or array_filters:
                    raise ValueError(
                        f"{where}: codec 'transpose' with order {list(permutation)} has no zarr v2 equivalent "
                        f"(only a full reversal {list(reversed(range(ndim)))} before any filter, i.e. order 'F')"
                    )
                order = "F"
            elif codec_name.startswith(_NUMCODECS_PREFIX):
                array_filters.append(_numcodecs_config(codec_name, config))
            else:
                raise ValueError(f"{where}: array codec {codec_name!r} has no zarr v2 equivalent")
        elif isinstance(codec, ArrayBytesCodec):
            seen_serializer = True
            if codec_name == "bytes":
                endian = config.get("endian")
                if dtype.itemsize > 1 and dtype.byteorder != "|" and endian is not None:
                    dtype = dtype.newbyteorder(">" if endian == "big" else "<")
            elif codec_name in _OBJECT_CODECS:
                object_codec = {"id": _OBJECT_CODECS[codec_name]}
                dtype = "|O"
            elif codec_name.startswith(_NUMCODECS_PREFIX):  # zfpy, pcodec: array in, bytes out
                byte_steps.append(_numcodecs_config(codec_name, config))
            else:
                raise ValueError(f"{where}: codec {codec_name!r} has no zarr v2 equivalent")
        else:
            if codec_name.startswith(_NUMCODECS_PREFIX):
                byte_steps.append(_numcodecs_config(codec_name, config))
            elif codec_name in _NATIVE_BYTES_CODECS:
                try:
                    byte_steps.append(_NATIVE_BYTES_CODECS[codec_name](config))
                except KeyError as err:
                    raise ValueError(f"{where}: codec {codec_name!r} option {err.args[0]!r} has no v2 form") from None
            else:
                raise ValueError(f"{where}: codec {codec_name!r} has no zarr v2 equivalent")
    if not seen_serializer:
        raise ValueError(f"{where}: the codec list has no array-to-bytes codec")
    if isinstance(dtype, np.dtype) and dtype.kind in "OT":
        dtype = "|O"
    filters = array_filters + ([object_codec] if object_codec else []) + byte_steps[:-1]
    compressor = byte_steps[-1] if byte_steps else None
    return dtype, order, filters, compressor


def _numcodecs_config(codec_name: str, config: Mapping[str, Any]) -> dict:
    codec_id = codec_name[len(_NUMCODECS_PREFIX):]
    return {"id": codec_id, **{k: v for k, v in config.items() if k != "id"}}


def v2_fill_value(attributes: Mapping[str, Any], metadata: ArrayV3Metadata, *, missing_chunks: bool) -> Any:
    """The v2 ``fill_value`` (a Python scalar or ``None``) for an array with these plain CF attributes.

    A CF ``_FillValue`` wins. Without one the v2 fill value is ``None`` (as
    kerchunk writes netCDF variables: xarray masks with a v2 ``fill_value``),
    unless chunks are missing and the v3 fill value is not zero: then missing
    chunks must read as that value, so it is written (and xarray masks it,
    the netCDF meaning of a fill value).
    """
    if attributes.get("_FillValue") is not None:
        return attributes["_FillValue"]
    fill = metadata.fill_value
    if fill is None or not missing_chunks:
        return None
    dtype = metadata.data_type.to_native_dtype()
    if dtype.kind not in "biufc":
        return None
    value = np.asarray(fill, dtype=dtype)
    if value.item() == 0 and not (dtype.kind in "fc" and np.signbit(np.real(value))):
        return None  # zero reads as zero with fill_value null too
    return value.item()


def v2_array_metadata(
    metadata: ArrayV3Metadata,
    *,
    name: str = "",
    attributes: Mapping[str, Any] | None = None,
    dimension_names: Sequence[str] | None | type[...] = ...,
    missing_chunks: bool = False,
    dimension_separator: str | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The ``.zarray`` and ``.zattrs`` documents (as dicts) of a zarr v3 array.

    Parameters
    ----------
    metadata : ArrayV3Metadata
        Regular chunk grid; codecs as described in the module docstring.
    name : str
        Variable name, used in error messages.
    attributes : dict, optional
        Plain attributes (``_FillValue`` a number); defaults to the
        metadata's attributes with the CF ``_FillValue`` decoded.
    dimension_names : sequence of str, optional
        Defaults to the metadata's; ``None`` writes no ``_ARRAY_DIMENSIONS``.
    missing_chunks : bool
        Whether some chunks are missing (see ``v2_fill_value``).
    dimension_separator : {".", "/"}, optional
        Defaults to the separator of a ``v2`` chunk key encoding, else ``"."``.
    """
    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.dtype import get_data_type_from_native_dtype
    from zarr.core.metadata.v2 import ArrayV2Metadata

    from vzdask.manifests.metadata import chunk_shape, decode_cf_fill_value

    if attributes is None:
        attributes = decode_cf_fill_value(dict(metadata.attributes), metadata.data_type.to_native_dtype())
    if dimension_names is ...:
        dimension_names = metadata.dimension_names
    if dimension_separator is None:
        encoding = metadata.chunk_key_encoding.to_dict()
        separator = (encoding.get("configuration") or {}).get("separator", ".")
        dimension_separator = separator if encoding.get("name") == "v2" else "."
    if dimension_separator not in (".", "/"):
        raise ValueError(f"dimension_separator must be '.' or '/', not {dimension_separator!r}")
    dtype, order, filters, compressor = v2_codecs(metadata, name)
    fill = v2_fill_value(attributes, metadata, missing_chunks=missing_chunks)
    if isinstance(dtype, str):  # |O: strings or bytes objects
        zdtype = metadata.data_type
    else:
        zdtype = get_data_type_from_native_dtype(dtype)
        if fill is not None:
            fill = _cast_fill(fill, dtype, name)
    document = ArrayV2Metadata(
        shape=tuple(int(s) for s in metadata.shape),
        dtype=zdtype,
        chunks=chunk_shape(metadata),
        fill_value=fill,
        order=order,
        dimension_separator=dimension_separator,
        compressor=compressor,
        filters=filters or None,
    ).to_buffer_dict(default_buffer_prototype())
    zarray = json.loads(document[".zarray"].to_bytes())
    zattrs: dict[str, Any] = {}
    if dimension_names is not None:
        if any(d is None for d in dimension_names) or len(dimension_names) != len(metadata.shape):
            raise ValueError(f"variable {name!r}: dimension names {dimension_names!r} do not name every axis")
        zattrs["_ARRAY_DIMENSIONS"] = [str(d) for d in dimension_names]
    for key, value in attributes.items():
        if key in ("_FillValue", "_ARRAY_DIMENSIONS"):
            continue
        zattrs[key] = json_attribute(value, f"variable {name!r} attribute {key!r}")
    return zarray, zattrs


def _cast_fill(value: Any, dtype: np.dtype, name: str) -> Any:
    try:
        if dtype.kind in "Mm":
            return int(np.asarray(value).astype(dtype).view(np.int64))
        return np.asarray(value).astype(dtype).item()
    except (TypeError, ValueError, OverflowError) as err:
        raise ValueError(f"variable {name!r}: _FillValue {value!r} does not fit dtype {dtype}: {err}") from None


def json_attribute(value: Any, where: str) -> Any:
    """An attribute value as plain JSON types (numpy scalars and arrays included); ``TypeError`` naming ``where``."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, np.generic):
        if isinstance(value, (np.bytes_, np.str_)):
            return json_attribute(value.item(), where)
        if np.issubdtype(value.dtype, np.number) or value.dtype.kind == "b":
            return value.item()
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise TypeError(f"{where}: bytes {value[:20]!r}... are not UTF-8 text; cannot store them in JSON") from None
    if isinstance(value, np.ndarray) and value.dtype.kind in "biufcSUO":
        return [json_attribute(v, where) for v in value.ravel().tolist()] if value.ndim else json_attribute(value[()], where)
    if isinstance(value, (list, tuple)):
        return [json_attribute(v, where) for v in value]
    if isinstance(value, Mapping) and all(isinstance(k, str) for k in value):
        return {k: json_attribute(v, where) for k, v in value.items()}
    if isinstance(value, complex):
        raise TypeError(f"{where}: complex value {value!r} cannot be stored in JSON")
    raise TypeError(f"{where}: value {value!r} of type {type(value).__name__} cannot be stored in JSON")


def v2_group_attributes(attributes: Mapping[str, Any], where: str = "group") -> dict[str, Any]:
    """Group attributes as plain JSON types."""
    return {key: json_attribute(value, f"{where} attribute {key!r}") for key, value in attributes.items()}
