"""Decode one GRIB message into its field values with ecCodes: a zarr v3 codec and its numcodecs twin.

A GRIB message is a chunk of a virtual array (``vzdask.parsers.grib``): its
bytes, from ``GRIB`` to ``7777``, are what the manifest points at. Decoding
hands them to ecCodes (``codes_new_from_message`` + ``codes_get_values``);
nothing here reads GRIB sections itself. Points a bitmap marks absent come
back as NaN, exactly as ``cfgrib`` gives them: ecCodes is told to return
``float32``'s largest value for them (cfgrib's ``missingValue``) and those
become NaN after the cast to float32. Rows of grids scanned in alternating
directions (``alternativeRowScanning``) are put back in order, as cfgrib
does.

Two registrations, one stable name, so written metadata and references
decode wherever ``vzdask`` is imported (or installed, through the entry
points in ``pyproject.toml``):

* zarr v3: ``GribCodec``, an array-to-bytes codec named ``numcodecs.vzdask_grib``
  (the ``numcodecs.<id>`` form zarr uses for numcodecs codecs, so
  ``vzdask.zarr_v2`` writes it as that id in kerchunk references and reads
  it back);
* numcodecs (zarr v2, kerchunk references read by fsspec + zarr):
  ``GribNumcodec`` with ``codec_id = "vzdask_grib"``.

ecCodes is imported when a message is decoded (the ``grib`` extra), so
importing this module costs nothing without it. Messages are read-only:
encoding raises.
"""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numcodecs
import numpy as np
from numcodecs.abc import Codec as _NumcodecsCodec
from zarr.abc.codec import ArrayBytesCodec
from zarr.registry import register_codec

if TYPE_CHECKING:
    from typing import Self

    from zarr.core.array_spec import ArraySpec
    from zarr.core.buffer import Buffer, NDBuffer

#: The codec's name in zarr v3 metadata.
GRIB_CODEC_NAME = "numcodecs.vzdask_grib"
#: The codec's id in numcodecs (zarr v2 ``compressor``, kerchunk references).
GRIB_CODEC_ID = "vzdask_grib"
#: What ecCodes returns for points a bitmap marks absent (cfgrib's choice); they become NaN.
MISSING_VALUE = float(np.finfo(np.float32).max)


def decode_message(data: Any) -> np.ndarray:
    """The field values of one GRIB message (any buffer) as a flat float32 array, NaN where absent.

    Raises
    ------
    ValueError
        ecCodes cannot read the message (truncated, damaged, or a packing it
        cannot decode); the message says how many bytes were given and what
        ecCodes reported.
    """
    import eccodes

    try:  # ecCodes copies the message itself: hand it the buffer, not a copy
        message: Any = data if isinstance(data, bytes) else memoryview(data).cast("B")
    except (TypeError, ValueError):  # not a contiguous buffer
        message = bytes(data)
    check_complete(message)
    try:
        handle = eccodes.codes_new_from_message(message)
    except Exception as err:
        raise ValueError(f"ecCodes cannot read this GRIB message ({len(message)} bytes): {_text(err)}") from err
    try:
        eccodes.codes_set(handle, "missingValue", MISSING_VALUE)
        values = eccodes.codes_get_values(handle)
        if _get(handle, "alternativeRowScanning") == 1:
            nx = _get(handle, "Nx")
            if isinstance(nx, int) and nx > 0 and values.size % nx == 0:
                rows = values.reshape(-1, nx).copy()
                rows[1::2] = rows[1::2, ::-1]
                values = rows.ravel()
    except Exception as err:
        packing = _get(handle, "packingType")
        raise ValueError(
            f"ecCodes cannot decode the values of this GRIB message ({len(message)} bytes, packingType "
            f"{packing!r}): {_text(err)}"
        ) from err
    finally:
        eccodes.codes_release(handle)
    out = values.astype(np.float32)
    out[out == MISSING_VALUE] = np.nan
    return out


def decode_message_into(data: Any, out: np.ndarray) -> None:
    """``decode_message`` written straight into ``out`` (float32, C-contiguous, the message's size).

    The same values and errors as ``decode_message``, without its copies:
    ecCodes' C API (through eccodes-python's cffi bindings, which release
    the GIL in each call) decodes into a buffer this thread keeps, and the
    cast to float32 writes ``out``. Without those bindings (or for another
    ``out``), ``decode_message`` and a copy.
    """
    calls = _c_api()
    if calls is None or out.dtype != np.float32 or not out.flags.c_contiguous:
        values = decode_message(data)
        if values.size != out.size:
            raise ValueError(f"GRIB message holds {values.size} values, the chunk has shape {out.shape} "
                             f"({out.size} values)")
        out[...] = values.reshape(out.shape)
        return
    ffi, lib = calls
    handle, size = _new_handle(ffi, lib, data)
    try:
        scratch = _SCRATCH.__dict__
        count = scratch.get("count")
        if count is None:
            count = scratch["count"] = ffi.new("size_t*")
            scratch["long"] = ffi.new("long*")
        error = lib.grib_set_double(handle, b"missingValue", MISSING_VALUE)
        doubles = scratch.get("values")
        if doubles is None or doubles.size < out.size:
            doubles = scratch["values"] = np.empty(out.size, dtype=np.float64)
        if not error:  # (each call lets the GIL go and take it back: as few calls as can be)
            count[0] = out.size
            error = lib.grib_get_double_array(handle, b"values", ffi.cast("double *", doubles.ctypes.data), count)
            if error == _ARRAY_TOO_SMALL or (not error and count[0] != out.size):
                if error:
                    lib.grib_get_size(handle, b"values", count)
                raise ValueError(f"GRIB message holds {count[0]} values, the chunk has shape {out.shape} "
                                 f"({out.size} values)")
        if error:
            from gribapi.errors import ERROR_MAP, GribInternalError

            packing = _c_string(ffi, lib, handle, b"packingType")
            reported = ERROR_MAP.get(error, GribInternalError)(error)  # what eccodes-python would raise
            raise ValueError(f"ecCodes cannot decode the values of this GRIB message ({size} bytes, packingType "
                             f"{packing!r}): {_text(reported)}") from reported
        row_scanning = scratch["long"]
        alternating = not lib.grib_get_long(handle, b"alternativeRowScanning", row_scanning) and row_scanning[0] == 1
        nx = scratch["long"]
        alternating = alternating and not lib.grib_get_long(handle, b"Nx", nx) and nx[0] > 0 and out.size % nx[0] == 0
        columns = int(nx[0]) if alternating else 0
    finally:
        lib.grib_handle_delete(handle)
    flat = out.reshape(-1)
    np.copyto(flat, doubles[: out.size], casting="same_kind")  # the cast to float32, as decode_message's
    if columns:
        rows = flat.reshape(-1, columns)
        rows[1::2] = rows[1::2, ::-1].copy()
    flat[flat == MISSING_VALUE] = np.nan


def check_complete(message: Any) -> None:
    """ValueError unless ``message`` (bytes-like) holds all the bytes its indicator section says it has.

    ecCodes (2.x) reads past the end of a message cut inside a section's
    length field and crashes the process (a GRIB2 message cut at 8-15 bytes,
    or 4 bytes before its ``7777``: every cut length was tried), so a
    truncated message never reaches it. Bytes that do not start with
    ``GRIB`` are left to ecCodes, which refuses them.
    """
    head = bytes(message[:16])
    if len(head) < 8 or head[:4] != b"GRIB":
        return
    size, edition = len(message), head[7]
    if edition == 2:
        declared = int.from_bytes(head[8:16], "big") if len(head) == 16 else None
    elif edition == 1:
        declared = int.from_bytes(head[4:7], "big")
        if declared & 0x800000:  # (a large GRIB1 message's length is coded otherwise: ecCodes finds its end)
            return
    else:
        return
    if declared is None or declared > size:
        said = "less than its 16-byte indicator section" if declared is None else f"it says it is {declared} bytes"
        raise ValueError(f"ecCodes cannot read this GRIB message ({size} bytes): truncated: {said}")


def _new_handle(ffi: Any, lib: Any, data: Any) -> tuple[Any, int]:
    """An ecCodes handle on a copy of the message ``data`` (any buffer), and the message's size."""
    try:
        buffer = ffi.from_buffer(data)
    except TypeError:  # not a contiguous buffer
        buffer = ffi.from_buffer(bytes(data))
    try:  # ecCodes copies the message itself: hand it the buffer, not a copy
        size = len(buffer)
        check_complete(ffi.buffer(buffer))
        handle = lib.grib_handle_new_from_message_copy(ffi.NULL, buffer, size)
    finally:
        ffi.release(buffer)  # let go of the caller's buffer now, not when a traceback holding it is collected
    if handle == ffi.NULL:
        raise ValueError(f"ecCodes cannot read this GRIB message ({size} bytes): MessageInvalidError: "
                         "new_from_message failed")
    return handle, size


_SCRATCH = threading.local()
#: ecCodes' GRIB_ARRAY_TOO_SMALL: the message holds more values than were room for.
_ARRAY_TOO_SMALL = -6


@functools.cache
def _c_api() -> tuple[Any, Any] | None:
    """eccodes-python's cffi ``(ffi, lib)`` for ecCodes' C API, None without them."""
    try:
        from gribapi.bindings import ffi, lib
    except ImportError:
        return None
    names = ("grib_handle_new_from_message_copy", "grib_set_double", "grib_get_size", "grib_get_double_array",
             "grib_get_long", "grib_get_string", "grib_handle_delete", "grib_get_error_message")
    return (ffi, lib) if all(hasattr(lib, name) for name in names) else None


def _c_string(ffi: Any, lib: Any, handle: Any, key: bytes) -> str | None:
    text, length = ffi.new("char[]", 256), ffi.new("size_t*", 256)
    return None if lib.grib_get_string(handle, key, text, length) else ffi.string(text).decode(errors="replace")


def _get(handle: Any, key: str) -> Any:
    import eccodes

    try:
        return eccodes.codes_get(handle, key)
    except Exception:
        return None


def _text(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}".rstrip(": ")


@dataclass(frozen=True)
class GribCodec(ArrayBytesCodec):
    """zarr v3 array-to-bytes codec whose encoded chunk is one GRIB message (decoded by ecCodes).

    The chunk's shape is the message's grid (``(Ny, Nx)`` or ``(numberOfPoints,)``),
    behind any length-1 axes; the values are cast to the array's data type
    (vzdask's GRIB arrays are float32, as cfgrib's).
    """

    is_fixed_size = False

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        name = data.get("name")
        if name != GRIB_CODEC_NAME:
            raise ValueError(f"expected codec name {GRIB_CODEC_NAME!r}, got {name!r}")
        configuration = data.get("configuration") or {}
        if configuration:
            raise ValueError(f"codec {GRIB_CODEC_NAME!r} takes no configuration, got {configuration!r}")
        return cls()

    def to_dict(self) -> dict[str, Any]:
        return {"name": GRIB_CODEC_NAME}

    def _decode_sync(self, chunk_bytes: Buffer, chunk_spec: ArraySpec) -> NDBuffer:
        values = decode_message(chunk_bytes.as_array_like())
        size = int(np.prod(chunk_spec.shape))
        if values.size != size:
            raise ValueError(
                f"GRIB message holds {values.size} values, the chunk has shape {chunk_spec.shape} ({size} values)"
            )
        array = values.reshape(chunk_spec.shape).astype(chunk_spec.dtype.to_native_dtype(), copy=False)
        return chunk_spec.prototype.nd_buffer.from_ndarray_like(array)

    async def _decode_single(self, chunk_bytes: Buffer, chunk_spec: ArraySpec) -> NDBuffer:
        return self._decode_sync(chunk_bytes, chunk_spec)

    def decode_chunk_into(self, data: Any, out: np.ndarray) -> None:
        """Decode one message (any buffer) straight into ``out``, an array of the chunk's shape (``decode_message_into``).

        ``vzdask.codecs.ChunkCodec.decode_into`` calls this where this codec
        is the array's only one: the values land where the array holds them,
        not in a chunk then copied.
        """
        decode_message_into(data, out)

    def _encode_sync(self, chunk_array: NDBuffer, chunk_spec: ArraySpec) -> Buffer | None:
        raise NotImplementedError(f"codec {GRIB_CODEC_NAME!r} only decodes: GRIB messages cannot be written")

    async def _encode_single(self, chunk_array: NDBuffer, chunk_spec: ArraySpec) -> Buffer | None:
        return self._encode_sync(chunk_array, chunk_spec)

    def compute_encoded_size(self, input_byte_length: int, chunk_spec: ArraySpec) -> int:
        raise NotImplementedError(f"codec {GRIB_CODEC_NAME!r}: a GRIB message's size depends on its values")


class GribNumcodec(_NumcodecsCodec):
    """numcodecs codec ``vzdask_grib``: one GRIB message -> its values (float32, NaN where absent).

    zarr reads a v2 array (a kerchunk reference set) whose ``compressor`` is
    this codec and whose ``dtype`` is ``<f4``.
    """

    codec_id = GRIB_CODEC_ID

    def decode(self, buf, out=None):
        values = decode_message(buf)
        if out is not None:
            target = np.frombuffer(out, dtype=np.float32) if not isinstance(out, np.ndarray) else out
            target.reshape(-1)[...] = values
            return out
        return values

    def encode(self, buf):
        raise NotImplementedError(f"codec {GRIB_CODEC_ID!r} only decodes: GRIB messages cannot be written")


register_codec(GRIB_CODEC_NAME, GribCodec)
numcodecs.register_codec(GribNumcodec)
