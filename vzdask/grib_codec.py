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
