"""Decode and encode single chunks with zarr's own codec pipeline.

A ``ChunkCodec`` is built from the part of an array's metadata that decoding
depends on (dtype, chunk shape, fill value, codecs), serialised as JSON; the
JSON *value* is the cache key, so equal metadata share one codec chain in each
process and nothing is keyed by ``id()``.
"""

from __future__ import annotations

import functools
import json
import math

import numpy as np
from zarr.core.array_spec import ArrayConfig, ArraySpec
from zarr.core.buffer import default_buffer_prototype
from zarr.core.chunk_utils import ChunkTransform, evolve_codecs
from zarr.core.codec_pipeline import BatchedCodecPipeline
from zarr.core.metadata.v3 import ArrayV3Metadata
from zarr.core.sync import sync

from vzdask.manifests.metadata import chunk_shape


def codec_key(metadata: ArrayV3Metadata) -> str:
    """JSON of a one-chunk array with this metadata's dtype, codecs and fill value."""
    document = metadata.to_dict()
    shape = chunk_shape(metadata)
    minimal = {
        "zarr_format": 3,
        "node_type": "array",
        "shape": list(shape),
        "data_type": document["data_type"],
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": list(shape)}},
        "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
        "fill_value": document["fill_value"],
        "codecs": list(document["codecs"]),
    }
    return json.dumps(minimal, sort_keys=True, default=_json_default)


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"cannot serialise {value!r} in codec metadata")


class ChunkCodec:
    """Decode/encode whole chunks of one array through zarr's codec chain."""

    def __init__(self, key: str) -> None:
        metadata = ArrayV3Metadata.from_dict(json.loads(key))
        self.chunk_shape: tuple[int, ...] = chunk_shape(metadata)
        self.dtype: np.dtype = metadata.data_type.to_native_dtype()
        self.fill_value = metadata.fill_value
        self._prototype = default_buffer_prototype()
        self._spec = ArraySpec(
            shape=self.chunk_shape,
            dtype=metadata.data_type,
            fill_value=metadata.fill_value,
            config=ArrayConfig(order="C", write_empty_chunks=True),
            prototype=self._prototype,
        )
        codecs = evolve_codecs(metadata.codecs, self._spec)
        try:
            self._transform: ChunkTransform | None = ChunkTransform(codecs=codecs)
        except TypeError:  # a codec without a synchronous path: use the async pipeline
            self._transform = None
            self._pipeline = BatchedCodecPipeline.from_codecs(codecs)
        self._direct = _DirectPlan.make(codecs, self.dtype, self.chunk_shape) if self._transform is not None else None

    def decode(self, data) -> np.ndarray:
        """Encoded bytes (any buffer) -> the chunk as a numpy array of the full chunk shape."""
        buffer = self._prototype.buffer.from_array_like(np.frombuffer(data, dtype=np.uint8))
        if self._transform is not None:
            decoded = self._transform.decode_chunk(buffer, self._spec)
        else:
            (decoded,) = sync(self._pipeline.decode([(buffer, self._spec)]))
        array = decoded.as_numpy_array()
        if array.shape != self.chunk_shape:
            array = array.reshape(self.chunk_shape)
        return array

    def decode_into(self, data, dest: np.ndarray, inner: tuple[slice, ...] | None = None) -> None:
        """Decode one chunk and write it (its part ``inner`` if given) into ``dest``.

        Same values and errors as ``dest[...] = self.decode(data)[inner]``. For
        the common chains (``bytes``, optionally ``shuffle``, then any
        bytes-to-bytes codecs) the bytes codecs still run through zarr, but the
        unshuffle, byte order and copy into ``dest`` are done in one numpy pass
        that releases the GIL, so several threads can decode at once.
        """
        plan = self._direct
        if plan is not None:
            target = plan.target(dest, inner)
            if target is not None:
                buffer = self._prototype.buffer.from_array_like(np.frombuffer(data, dtype=np.uint8))
                try:
                    for codec in plan.bytes_codecs:
                        buffer = codec._decode_sync(buffer, self._spec)
                    raw = buffer.as_numpy_array()
                except Exception:
                    raw = None  # decode again through the whole chain below, for its own error
                if raw is not None and raw.dtype == np.uint8 and raw.ndim == 1 and raw.size == plan.nbytes:
                    plan.write(raw, target, inner)
                    return
        chunk = self.decode(data)
        dest[...] = chunk if inner is None else chunk[inner]

    def encode(self, array: np.ndarray) -> bytes:
        """A full chunk as a numpy array -> its encoded bytes."""
        array = np.ascontiguousarray(array, dtype=self.dtype)
        if array.shape != self.chunk_shape:
            raise ValueError(f"chunk has shape {array.shape}, expected {self.chunk_shape}")
        nd = self._prototype.nd_buffer.from_numpy_array(array)
        if self._transform is not None:
            encoded = self._transform.encode_chunk(nd, self._spec)
        else:
            (encoded,) = sync(self._pipeline.encode([(nd, self._spec)]))
        return encoded.to_bytes()

    def fill_chunk(self) -> np.ndarray:
        return np.full(self.chunk_shape, self.fill_value, dtype=self.dtype)


class _DirectPlan:
    """How ``ChunkCodec.decode_into`` writes a chain ending in ``[shuffle] + bytes`` straight into place.

    ``bytes_codecs`` are the chain's bytes-to-bytes codecs in decode order,
    without a shuffle whose element size is the item size: that one is
    undone while copying into the destination, one byte plane at a time.
    """

    __slots__ = ("bytes_codecs", "nbytes", "planes", "stored", "shape", "itemsize")

    @classmethod
    def make(cls, codecs, dtype: np.dtype, shape: tuple[int, ...]) -> _DirectPlan | None:
        from zarr.codecs.bytes import BytesCodec
        from zarr.codecs.numcodecs import Shuffle
        from zarr.core.codec_pipeline import codecs_from_list_unchecked

        try:
            aa, ab, bb = codecs_from_list_unchecked(list(codecs))
        except Exception:
            return None
        if aa or type(ab) is not BytesCodec or dtype.kind not in "biuf" or dtype.fields is not None:
            return None
        if not shape or not all(s > 0 for s in shape):
            return None
        if dtype.itemsize > 1 and ab.endian is None:
            return None
        endian = getattr(ab.endian, "value", ab.endian)  # a str in newer zarr, an Enum in older
        if dtype.itemsize > 1 and endian not in ("little", "big"):
            return None
        stored = dtype if dtype.itemsize == 1 else dtype.newbyteorder("<" if endian == "little" else ">")
        plan = cls.__new__(cls)
        decode_order = list(reversed(bb))
        planes = None
        if decode_order and isinstance(decode_order[-1], Shuffle) and dtype.itemsize > 1:
            if getattr(decode_order[-1]._codec, "elementsize", None) == dtype.itemsize:
                decode_order.pop()
                # plane k holds byte k of each stored value: byte k of the native value, or
                # byte itemsize-1-k when the stored byte order is not the machine's
                order = range(dtype.itemsize) if stored.isnative else range(dtype.itemsize - 1, -1, -1)
                planes = tuple(order)
        if any(not hasattr(c, "_decode_sync") for c in decode_order):
            return None
        plan.bytes_codecs = tuple(decode_order)
        plan.shape = tuple(shape)
        plan.itemsize = dtype.itemsize
        plan.nbytes = math.prod(shape) * dtype.itemsize
        plan.planes = planes
        plan.stored = stored
        return plan

    def target(self, dest: np.ndarray, inner) -> np.ndarray | None:
        """The array to write into (a uint8 view with a trailing byte axis when unshuffling), or None."""
        if self.planes is None:
            return dest
        try:
            return dest.view(np.uint8).reshape((*dest.shape, self.itemsize), copy=False)
        except (ValueError, TypeError, AttributeError):
            return None

    def write(self, raw: np.ndarray, target: np.ndarray, inner) -> None:
        if self.planes is None:
            chunk = raw.view(self.stored).reshape(self.shape)
            target[...] = chunk if inner is None else chunk[inner]
            return
        planes = raw.reshape((self.itemsize, *self.shape))
        for byte, plane in zip(self.planes, planes):
            target[..., byte] = plane if inner is None else plane[inner]


@functools.lru_cache(maxsize=512)
def codec_for_key(key: str) -> ChunkCodec:
    return ChunkCodec(key)


def codec_for(metadata: ArrayV3Metadata) -> ChunkCodec:
    """The (cached) codec chain for an array's metadata."""
    return codec_for_key(codec_key(metadata))
