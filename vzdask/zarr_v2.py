"""Zarr v2 ``.zarray``/``.zattrs`` metadata <-> zarr v3 ``ArrayV3Metadata``: both directions, one place.

The chunk bytes are untouched: each direction re-expresses a codec chain as
the other format's pieces that decode the same bytes.

================================  =========================================
zarr v2                           zarr v3
================================  =========================================
``dtype`` byte order ``>``        data type in native order; ``bytes`` codec
                                  ``endian: "big"``
``dtype: "|O"`` + ``vlen-utf8``   string data type; ``vlen-utf8`` serializer
``order: "F"``                    ``transpose`` reversing the axes, first
numcodecs array filters           zarr's ``numcodecs.*`` array codecs, their
(``delta``...)                    dtype keys in native byte order (v2: the
                                  stored byte order)
``gzip``, ``zstd``, ``blosc``     zarr's native ``gzip``, ``zstd``, ``blosc``
                                  (``crc32c`` too, v3 -> v2)
other numcodecs bytes codecs      zarr's ``numcodecs.*`` wrappers
``imagecodecs_*`` bytes codecs    the ``imagecodecs_*`` zarr codecs of the
(imagecodecs-numcodecs)           same name (imagecodecs-zarr), e.g. HDF5's
                                  ``lz4h5`` framing
``zfpy``/``pcodec``-like codecs   the array-to-bytes serializer
``filters`` + ``compressor``      codecs after the serializer, in order (v3
                                  -> v2: the last is the ``compressor``)
================================  =========================================

``sharding_indexed``, other ``transpose`` orders, codecs unknown to
numcodecs or without a counterpart: ``ValueError`` (``ParseError`` for
v2 -> v3) naming the variable and the codec.

CF attributes follow xarray's zarr v2 convention: xarray reads a v2
``fill_value`` as the CF ``_FillValue`` (and masks with it), so v2 -> v3 turns
a numeric, boolean or fixed-length string ``fill_value`` into a ``_FillValue``
attribute too (unless ``.zattrs`` has one), and v3 -> v2 writes a CF
``_FillValue`` as the ``fill_value`` and not in ``.zattrs``.
``_ARRAY_DIMENSIONS`` names the dimensions.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from vzdask._compat import ArrayV3Metadata
from vzdask.errors import ParseError, UnsupportedChunkGridError

#: The ``.zattrs`` key naming an array's dimensions (xarray's convention).
DIMENSION_KEY = "_ARRAY_DIMENSIONS"
#: numcodecs codecs that turn objects into bytes (the v3 serializer instead of ``bytes``).
OBJECT_CODECS = frozenset({"vlen-utf8", "vlen-bytes"})
#: numcodecs config keys that hold a numpy dtype: native byte order in v3, the stored one in v2.
DTYPE_KEYS = ("dtype", "astype", "decode_dtype", "encode_dtype")
#: Where a numcodecs array filter says what dtype it outputs (what the serializer then sees).
OUTPUT_DTYPE_KEYS = ("astype", "encode_dtype")
#: zarr v3 blosc ``shuffle`` names -> numcodecs ``shuffle`` numbers.
BLOSC_SHUFFLE = {"noshuffle": 0, "shuffle": 1, "bitshuffle": 2}
#: v2 ``fill_value`` of these numpy kinds is also the CF ``_FillValue`` (what xarray's v2 reader does).
FILL_VALUE_KINDS = "biufcU"

_BLOSC_SHUFFLE_NAMES = {number: name for name, number in BLOSC_SHUFFLE.items()}
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
_NUMCODECS_PREFIX = "numcodecs."
#: imagecodecs names its codecs alike in numcodecs (v2 ids) and zarr v3 (names).
_IMAGECODECS_PREFIX = "imagecodecs_"


# --------------------------------------------------------------------------- #
# zarr v2 -> v3
# --------------------------------------------------------------------------- #
def v2_to_v3(
    zarray: Mapping[str, Any], zattrs: Mapping[str, Any] | None = None, *, where: str = "array"
) -> ArrayV3Metadata:
    """The zarr v3 metadata of a zarr v2 array (``.zarray`` and ``.zattrs`` as parsed JSON).

    Parameters
    ----------
    zarray : dict
        The ``.zarray`` document. Missing ``zarr_format``, ``order``,
        ``fill_value``, ``filters``, ``compressor`` and
        ``dimension_separator`` take their usual defaults.
    zattrs : dict, optional
        The ``.zattrs`` document: ``_ARRAY_DIMENSIONS`` becomes the dimension
        names, the rest the attributes (see the module docstring for
        ``_FillValue``).
    where : str
        Prefix of error messages, e.g. ``"<url>: variable 'name'"``.

    Returns
    -------
    ArrayV3Metadata
        Default chunk key encoding (the v2 chunk keys are the caller's
        business), a regular chunk grid and codecs decoding the v2 chunks.

    Raises
    ------
    ParseError
        Naming ``where`` and the field or codec that has no v3 form.
    """
    from vzdask.manifests.metadata import create_array_metadata

    if not isinstance(zarray, Mapping):
        raise ParseError(f"{where}: .zarray is a {type(zarray).__name__}, not a JSON object")
    if zarray.get("zarr_format", 2) != 2:
        raise ParseError(f"{where}: .zarray has zarr_format {zarray.get('zarr_format')!r}, expected 2")
    shape, chunks = _v2_grid(zarray, where)
    order = zarray.get("order", "C")
    if order not in ("C", "F"):
        raise ParseError(f"{where}: .zarray order {order!r} is neither 'C' nor 'F'")
    separator = zarray.get("dimension_separator", ".")
    if separator not in (".", "/", None):
        raise ParseError(f"{where}: .zarray dimension_separator {separator!r} is neither '.' nor '/'")
    steps = [("filter", f) for f in zarray.get("filters") or []]
    if zarray.get("compressor") is not None:
        steps.append(("compressor", zarray["compressor"]))
    for _, config in steps:
        if not isinstance(config, Mapping) or not isinstance(config.get("id"), str):
            raise ParseError(f"{where}: codec {config!r} in .zarray is not a numcodecs config with an 'id'")

    zdtype = _v2_data_type(zarray.get("dtype"), [c["id"] for _, c in steps], where)
    dtype = zdtype.to_native_dtype()
    native = dtype.newbyteorder("<") if dtype.byteorder == ">" else dtype
    codecs = _v3_codecs(steps, dtype, order, len(shape), where)
    fill = _v2_scalar(zarray.get("fill_value"), zdtype, where, "fill_value")

    attributes = dict(zattrs or {})
    dims = attributes.pop(DIMENSION_KEY, None)
    if dims is not None and (
        not isinstance(dims, list) or len(dims) != len(shape) or not all(isinstance(d, str) for d in dims)
    ):
        raise ParseError(f"{where}: {DIMENSION_KEY} {dims!r} does not name the array's {len(shape)} dimension(s)")
    if "_FillValue" in attributes:
        if native.kind in "biufc":  # a number as JSON ("NaN" too), not yet xarray's v3 encoding
            attributes["_FillValue"] = _v2_scalar(attributes["_FillValue"], zdtype, where, "_FillValue attribute")
    elif fill is not None and native.kind in FILL_VALUE_KINDS:
        attributes["_FillValue"] = fill
    try:
        return create_array_metadata(
            shape=shape, chunk_shape=chunks, dtype=native, codecs=codecs, fill_value=fill,
            dimension_names=dims, attributes=attributes,  # create_array_metadata encodes _FillValue for xarray
        )
    except (ValueError, TypeError) as err:
        raise ParseError(f"{where}: cannot express the v2 array in zarr v3: {err}") from err


def _v2_grid(zarray: Mapping[str, Any], where: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``shape`` and ``chunks``; a chunk size 0 (what ``chunks=-1`` writes for an empty axis) reads as 1, as in zarr."""
    try:
        shape = tuple(_json_int(s) for s in zarray["shape"])
        chunks = tuple(_json_int(c) or 1 for c in zarray["chunks"])
    except (KeyError, TypeError, ValueError) as err:
        raise ParseError(f"{where}: .zarray has no valid 'shape' and 'chunks' ({err!r})") from None
    if len(shape) != len(chunks) or any(c < 1 for c in chunks) or any(s < 0 for s in shape):
        raise ParseError(f"{where}: .zarray shape {list(shape)} and chunks {list(chunks)} do not match")
    return shape, chunks


def _json_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
        raise ValueError(f"{value!r} is not an integer")
    return int(value)


def _v2_data_type(spec: Any, codec_ids: list[str], where: str):
    """zarr's data type for a v2 ``dtype`` (structured dtypes included); object arrays need ``vlen-utf8``."""
    from vzdask._compat import get_data_type_from_json

    object_ids = [i for i in codec_ids if i in OBJECT_CODECS]
    if isinstance(spec, str) and spec.lstrip("|<>=") == "O":
        if object_ids[:1] != ["vlen-utf8"]:
            raise ParseError(
                f"{where}: object dtype with codecs {codec_ids!r}: only 'vlen-utf8' object data (strings) is supported"
            )
    elif object_ids:
        raise ParseError(f"{where}: object codec {object_ids[0]!r} on dtype {spec!r}, which is not an object dtype")
    try:
        return get_data_type_from_json({"name": spec, "object_codec_id": object_ids[0] if object_ids else None}, zarr_format=2)
    except Exception as err:
        raise ParseError(f"{where}: .zarray dtype {spec!r} is not a supported numpy dtype ({err})") from None


def _v2_scalar(value: Any, zdtype, where: str, what: str) -> Any:
    """A v2 JSON scalar (``"NaN"``, base64 bytes...) as a Python scalar of the data type; ``None`` stays ``None``."""
    if value is None:
        return None
    try:
        scalar = zdtype.from_json_scalar(value, zarr_format=2)
    except Exception as err:
        raise ParseError(f"{where}: {what} {value!r} is not valid for dtype {zdtype.to_native_dtype()} ({err})") from None
    if isinstance(scalar, (np.datetime64, np.timedelta64)):
        return int(np.asarray(scalar).view(np.int64))  # NaT included; .item() would give datetime objects
    return scalar.item() if isinstance(scalar, np.generic) else scalar


def _v3_codecs(steps: list[tuple[str, Mapping]], dtype: np.dtype, order: str, ndim: int, where: str) -> list[Any]:
    """zarr v3 codecs for numcodecs ``filters`` + ``compressor`` of a v2 array of ``dtype``."""
    from zarr.abc.codec import ArrayArrayCodec, ArrayBytesCodec
    from zarr.codecs import BytesCodec, TransposeCodec, VLenUTF8Codec

    array_codecs: list[Any] = []
    if order == "F" and ndim > 1:
        array_codecs.append(TransposeCodec(order=tuple(reversed(range(ndim)))))
    serializer: Any = None
    bytes_codecs: list[Any] = []
    output = dtype  # the dtype of the array the serializer sees
    for role, config in steps:
        codec_id = config["id"]
        if codec_id in OBJECT_CODECS:  # checked by _v2_data_type: vlen-utf8 on an object dtype
            codec: Any = VLenUTF8Codec()
        else:
            codec = _v3_codec(role, config, output, where)
        if isinstance(codec, ArrayArrayCodec):
            if serializer is not None or bytes_codecs:
                raise ParseError(f"{where}: array filter {codec_id!r} after a bytes codec cannot be expressed in zarr v3")
            array_codecs.append(codec)
            for key in OUTPUT_DTYPE_KEYS:
                if config.get(key):
                    output = np.dtype(config[key])
        elif isinstance(codec, ArrayBytesCodec):
            if serializer is not None or bytes_codecs:
                raise ParseError(f"{where}: codec {codec_id!r} ({role}) needs array input but follows a bytes codec")
            serializer = codec
        else:
            bytes_codecs.append(codec)
    if serializer is None:
        multibyte = output.itemsize > 1 and output.byteorder != "|"
        big = output.byteorder == ">" or (output.byteorder == "=" and sys.byteorder == "big")
        serializer = BytesCodec(endian=("big" if big else "little") if multibyte else None)
    return [*array_codecs, serializer, *bytes_codecs]


def _v3_codec(role: str, config: Mapping[str, Any], dtype: np.dtype, where: str) -> Any:
    """One numcodecs config as a zarr v3 codec: native where zarr has one, else zarr's numcodecs wrapper."""
    import numcodecs

    codec_id = config["id"]
    try:
        numcodecs.get_codec(dict(config))  # known here, with a valid configuration
    except Exception as err:
        raise ParseError(
            f"{where}: codec {codec_id!r} ({role}) is unknown or unavailable: "
            f"{err.__class__.__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        ) from err
    try:
        codec = _v3_codec_of(codec_id, {k: v for k, v in config.items() if k != "id"}, dtype)
    except (TypeError, ValueError) as err:
        raise ParseError(f"{where}: codec {codec_id!r} ({role}) configuration {dict(config)!r} is invalid: {err}") from None
    if codec is None:
        raise ParseError(f"{where}: codec {codec_id!r} ({role}) has no zarr v3 equivalent")
    return codec


def _v3_codec_of(codec_id: str, options: dict[str, Any], dtype: np.dtype) -> Any:
    """The zarr v3 codec (``None`` if zarr has none) for numcodecs ``codec_id`` with ``options``."""
    from zarr.codecs import BloscCodec, GzipCodec, ZstdCodec
    from zarr.registry import get_codec_class

    if codec_id == "gzip":
        return GzipCodec(level=int(options.get("level", 1)))
    if codec_id == "zstd":
        return ZstdCodec(level=int(options.get("level", 0)), checksum=bool(options.get("checksum", False)))
    if codec_id == "blosc":
        shuffle = int(options.get("shuffle", 1))
        if shuffle == -1:  # numcodecs AUTOSHUFFLE
            shuffle = 2 if dtype.itemsize == 1 else 1
        if shuffle not in _BLOSC_SHUFFLE_NAMES:
            raise ValueError(f"blosc shuffle {shuffle!r} is not one of -1, 0, 1, 2")
        return BloscCodec(
            cname=options.get("cname", "lz4"),
            clevel=int(options.get("clevel", 5)),
            shuffle=_BLOSC_SHUFFLE_NAMES[shuffle],
            typesize=max(dtype.itemsize, 1),
            blocksize=int(options.get("blocksize", 0)),
        )
    if codec_id.startswith(_IMAGECODECS_PREFIX):
        import inspect

        try:
            cls = get_codec_class(codec_id)
        except KeyError:
            return None
        # numcodecs-only options (the chunk shape and dtype of delta/floatpred/packints, squeeze) are the
        # array's own in zarr v3; unset (None) options are the defaults
        accepted = inspect.signature(cls.__init__).parameters
        options = {k: v for k, v in options.items() if k in accepted and v is not None}
        return cls.from_dict({"name": codec_id, "configuration": options})
    try:
        cls = get_codec_class(_NUMCODECS_PREFIX + codec_id)
    except KeyError:
        return None
    # v3 runs numcodecs filters on arrays in native byte order (after ``bytes`` decoded them)
    return cls(**_with_byte_order(options, "<"))


def _with_byte_order(options: Mapping[str, Any], order: str) -> dict[str, Any]:
    """``options`` with the multi-byte dtypes under ``DTYPE_KEYS`` in byte ``order``."""
    out = dict(options)
    for key in DTYPE_KEYS:
        value = out.get(key)
        if isinstance(value, str):
            dtype = np.dtype(value)
            big = dtype.byteorder == ">" or (dtype.byteorder == "=" and sys.byteorder == "big")
            if dtype.itemsize > 1 and dtype.byteorder != "|" and big != (order == ">"):
                out[key] = dtype.newbyteorder(order).str
    return out


# --------------------------------------------------------------------------- #
# zarr v3 -> v2
# --------------------------------------------------------------------------- #
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
    endian = None
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
            elif codec_name.startswith(_IMAGECODECS_PREFIX):  # e.g. TIFF's predictor 2 (imagecodecs_delta)
                array_filters.append(_imagecodecs_array_config(codec_name, config, metadata, where))
            else:
                raise ValueError(f"{where}: array codec {codec_name!r} has no zarr v2 equivalent")
        elif isinstance(codec, ArrayBytesCodec):
            seen_serializer = True
            if codec_name == "bytes":
                endian = config.get("endian")
                if dtype.itemsize > 1 and dtype.byteorder != "|" and endian is not None:
                    dtype = dtype.newbyteorder(">" if endian == "big" else "<")
            elif codec_name in OBJECT_CODECS:
                object_codec = {"id": codec_name}
                dtype = "|O"
            elif codec_name.startswith(_NUMCODECS_PREFIX):  # zfpy, pcodec: array in, bytes out
                byte_steps.append(_numcodecs_config(codec_name, config))
            elif codec_name.startswith(_IMAGECODECS_PREFIX):  # jpeg, lerc, floatpred...: array in, bytes out
                byte_steps.append(_imagecodecs_array_config(codec_name, config, metadata, where))
            else:
                raise ValueError(f"{where}: codec {codec_name!r} has no zarr v2 equivalent")
        else:
            if codec_name.startswith(_NUMCODECS_PREFIX):
                byte_steps.append(_numcodecs_config(codec_name, config))
            elif codec_name.startswith(_IMAGECODECS_PREFIX):
                byte_steps.append({"id": codec_name, **config})
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
    if endian is not None:  # v2 filters see arrays in the stored byte order, v3 ones native arrays
        array_filters = [_with_byte_order(f, ">" if endian == "big" else "<") for f in array_filters]
    filters = array_filters + ([object_codec] if object_codec else []) + byte_steps[:-1]
    compressor = byte_steps[-1] if byte_steps else None
    return dtype, order, filters, compressor


def _imagecodecs_array_config(codec_name: str, config: Mapping[str, Any], metadata: ArrayV3Metadata,
                              where: str) -> dict:
    """An imagecodecs zarr array codec as its imagecodecs-numcodecs config (same name and options).

    numcodecs codecs see a flat buffer: where the numcodecs class takes a
    ``shape`` or ``dtype`` (delta, floatpred, packints), the chunk's are added
    (the dtype in native order; filters get the stored one later).
    """
    import inspect

    import numcodecs

    from vzdask.manifests.metadata import chunk_shape

    from numcodecs.registry import codec_registry, entries

    cls = codec_registry.get(codec_name)
    if cls is None and codec_name in entries:  # registered through an entry point, not loaded yet
        cls = entries[codec_name].load()
    if cls is None:
        raise ValueError(f"{where}: codec {codec_name!r} has no numcodecs equivalent installed "
                         "(pip install imagecodecs-numcodecs)")
    accepted = inspect.signature(cls.__init__).parameters
    step = {"id": codec_name, **config}
    if "shape" in accepted:
        step["shape"] = list(chunk_shape(metadata))
    if "dtype" in accepted:
        step["dtype"] = metadata.data_type.to_native_dtype().str
    try:
        numcodecs.get_codec(dict(step))
    except Exception as err:
        raise ValueError(f"{where}: codec {codec_name!r} has no numcodecs equivalent: {err}") from None
    return step


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


def v3_to_v2(
    metadata: ArrayV3Metadata,
    *,
    name: str = "",
    attributes: Mapping[str, Any] | None = None,
    dimension_names: Sequence[str] | None | type[...] = ...,
    missing_chunks: bool = False,
    dimension_separator: str | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The ``.zarray`` and ``.zattrs`` documents (as dicts) of a zarr v3 array; the inverse of ``v2_to_v3``.

    Parameters
    ----------
    metadata : ArrayV3Metadata
        Regular chunk grid (a rectilinear one raises ``UnsupportedChunkGridError``); codecs as
        described in the module docstring.
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
    from zarr.buffer import default_buffer_prototype

    from vzdask._compat import ArrayV2Metadata, get_data_type_from_native_dtype
    from vzdask.manifests.metadata import chunk_shape, chunk_sizes, decode_cf_fill_value, is_regular

    sizes = chunk_sizes(metadata)
    if not is_regular(sizes):
        names = metadata.dimension_names if dimension_names is ... else dimension_names
        axis = next(i for i, c in enumerate(sizes) if not isinstance(c, int))
        dim = repr(names[axis]) if names and names[axis] is not None else f"axis {axis}"
        edges = list(sizes[axis])
        shown = ", ".join(map(str, edges[:6])) + (", ..." if len(edges) > 6 else "")
        raise UnsupportedChunkGridError(
            f"variable {name!r} has chunks of different sizes along {dim} ([{shown}]: files of different lengths "
            "or chunkings joined), a rectilinear chunk grid; kerchunk references carry zarr v2 metadata, whose "
            "chunk grid is regular, so they cannot describe it. Write it to Icechunk instead "
            "(ds.vz.to_icechunk(...)), which stores rectilinear grids, or leave the variable out "
            f"(drop_variables=[{name.rsplit('/', 1)[-1]!r}])."
        )

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
        zattrs[DIMENSION_KEY] = [str(d) for d in dimension_names]
    for key, value in attributes.items():
        if key in ("_FillValue", DIMENSION_KEY):
            continue
        zattrs[key] = json_attribute(value, f"variable {name!r} attribute {key!r}")
    return zarray, zattrs


def _cast_fill(value: Any, dtype: np.dtype, name: str) -> Any:
    try:
        if dtype.kind in "Mm":
            return int(np.asarray(value).astype(dtype).view(np.int64))
        with np.errstate(over="raise", invalid="raise"):
            cast = np.asarray(value).astype(dtype).item()
        if dtype.kind in "iu" and cast != value:  # integers wrap around silently
            raise ValueError(f"{value!r} is not an integer within the dtype's range")
        return cast
    except (TypeError, ValueError, OverflowError, FloatingPointError) as err:
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
