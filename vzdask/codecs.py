"""Decode and encode single chunks with zarr's own codec pipeline.

A ``ChunkCodec`` is built from the part of an array's metadata that decoding
depends on (dtype, chunk shape, fill value, codecs), serialised as JSON; the
JSON *value* is the cache key, so equal metadata share one codec chain in each
process and nothing is keyed by ``id()``.

Decoding takes zlib streams (``numcodecs.zlib``: HDF5's deflate filter, zarr
v2's zlib) through imagecodecs' zarr codec for zlib-ng when it is installed
(the ``hdf`` extra) and ``vzdask.zlib-ng`` is on (the default): the same
format and the same errors, about twice as fast to inflate. Metadata,
references and encoding keep ``numcodecs.zlib``.
"""

from __future__ import annotations

import functools
import json
import math
import threading

import dask.config
import numpy as np
from zarr.abc.codec import ArrayBytesCodec
from zarr.buffer import default_buffer_prototype

from vzdask._compat import ArrayConfig, ArraySpec, ArrayV3Metadata, BatchedCodecPipeline
from vzdask._compat import ChunkTransform, evolve_codecs
from vzdask._compat import sync  # zarr's loop: see object_io.run_sync
from vzdask.manifests.metadata import chunk_shape

dask.config.update_defaults({"vzdask": {"zlib-ng": True}})


def codec_key(metadata: ArrayV3Metadata, shape: tuple[int, ...] | None = None) -> str:
    """JSON of a one-chunk array with this metadata's dtype, codecs and fill value.

    The chunk is ``shape``, by default the array's chunk shape (the largest
    chunk of a rectilinear grid; ``ChunkCodec.for_shape`` decodes the others).
    """
    document = metadata.to_dict()
    shape = chunk_shape(metadata) if shape is None else tuple(shape)
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


def fixed_chunk_bytes(metadata: ArrayV3Metadata) -> int | None:
    """The stored size every chunk must have when the codecs only lay bytes out, else None.

    With no compression (codecs ``bytes``, maybe ``transpose``) and a
    fixed-size dtype, a stored chunk of any other size cannot decode: parsers
    check inlined chunks against it so the error names the variable and chunk.
    """
    if not all(codec.to_dict()["name"] in ("bytes", "transpose") for codec in metadata.codecs):
        return None
    dtype = np.dtype(metadata.data_type.to_native_dtype())
    if dtype.hasobject or dtype.kind in "OTV" or dtype.itemsize == 0:
        return None
    return int(np.prod(chunk_shape(metadata), dtype=np.int64)) * dtype.itemsize


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"cannot serialise {value!r} in codec metadata")


class ChunkCodec:
    """Decode/encode whole chunks of one array through zarr's codec chain."""

    def __init__(self, key: str, zlib_ng: bool = False) -> None:
        self._key, self._zlib_ng = key, zlib_ng
        self._shapes: dict[tuple[int, ...], ChunkCodec] = {}
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
        self.decoders = tuple(_zlib_ng_for_zlib(codecs)) if zlib_ng else tuple(codecs)
        self._transform, self._pipeline = _chain(codecs)
        if self.decoders == tuple(codecs):
            self._decode_transform, self._decode_pipeline = self._transform, self._pipeline
        else:
            self._decode_transform, self._decode_pipeline = _chain(self.decoders)
        # decode_into copies each chunk out before its thread decodes another, so its chain may inflate and
        # unshuffle into buffers the thread keeps (``_scratch``): a fresh 2 MB buffer costs ~500 page faults
        self._into_transform = self._decode_transform
        # an array-to-bytes codec that is the whole chain and writes a chunk into a given array (vzdask's GRIB
        # codec): decode_into hands it the destination, saving a decoded chunk and its copy
        only = self.decoders[0] if len(self.decoders) == 1 else None
        self._direct = getattr(only, "decode_chunk_into", None) if isinstance(only, ArrayBytesCodec) else None
        scratch = _scratch_decoders(self.decoders) if self._decode_transform is not None else None
        if scratch is not None:
            transform, _ = _chain(scratch)
            self._into_transform = transform if transform is not None else self._decode_transform

    def for_shape(self, shape: tuple[int, ...]) -> ChunkCodec:
        """The codec chain for chunks of another shape (a rectilinear grid's chunks differ in size)."""
        if shape == self.chunk_shape:
            return self
        codec = self._shapes.get(shape)
        if codec is None:
            document = json.loads(self._key)
            document["shape"] = list(shape)
            document["chunk_grid"] = {"name": "regular", "configuration": {"chunk_shape": list(shape)}}
            codec = _codec_for_key(json.dumps(document, sort_keys=True), self._zlib_ng)
            self._shapes[shape] = codec
        return codec

    def decode(self, data) -> np.ndarray:
        """Encoded bytes (any buffer) -> the chunk as a numpy array of the full chunk shape."""
        return self._decoded(data, self._decode_transform)

    def _decoded(self, data, transform: ChunkTransform | None) -> np.ndarray:
        buffer = self._prototype.buffer.from_array_like(np.frombuffer(data, dtype=np.uint8))
        if transform is not None:
            decoded = transform.decode_chunk(buffer, self._spec)
        else:
            (decoded,) = sync(self._decode_pipeline.decode([(buffer, self._spec)]))
        array = decoded.as_numpy_array()
        if array.shape != self.chunk_shape:
            array = array.reshape(self.chunk_shape)
        return array

    def decode_into(self, data, dest: np.ndarray, inner: tuple[slice, ...] | None = None,
                    shape: tuple[int, ...] | None = None) -> None:
        """Decode one chunk (through zarr's chain) and write it, or its part ``inner``, into ``dest``.

        ``shape``: the chunk's shape where it is not ``chunk_shape`` (rectilinear grids).
        """
        codec = self if shape is None else self.for_shape(shape)
        if codec._direct is not None and inner is None and dest.shape == codec.chunk_shape:
            codec._direct(data, dest)
            return
        chunk = codec._decoded(data, codec._into_transform)  # may be this thread's scratch: copied out now
        dest[...] = chunk if inner is None else chunk[inner]

    def encode(self, array: np.ndarray) -> bytes:
        """A full chunk as a numpy array -> its encoded bytes."""
        array = np.asarray(array, dtype=self.dtype, order="C")  # (ascontiguousarray makes a 0-d array 1-d)
        if array.shape != self.chunk_shape:
            raise ValueError(f"chunk has shape {array.shape}, expected {self.chunk_shape}")
        nd = self._prototype.nd_buffer.from_numpy_array(array)
        if self._transform is not None:
            encoded = self._transform.encode_chunk(nd, self._spec)
        else:
            (encoded,) = sync(self._pipeline.encode([(nd, self._spec)]))
        return encoded.to_bytes()



def _chain(codecs) -> tuple[ChunkTransform | None, BatchedCodecPipeline | None]:
    """zarr's synchronous chunk transform for ``codecs``, or its async pipeline if a codec has no sync path."""
    try:
        return ChunkTransform(codecs=codecs), None
    except TypeError:
        return None, BatchedCodecPipeline.from_codecs(codecs)


def _zlib_ng_for_zlib(codecs):
    """``codecs`` with each ``numcodecs.zlib`` replaced by imagecodecs' zlib-ng codec, if that is installed.

    With libdeflate in imagecodecs too, the codec is ``_sized_inflate()``'s: zlib-ng's codec
    that inflates with libdeflate into the size the chunk decodes to.
    """
    try:
        from imagecodecs import ZLIBNG
        from imagecodecs.zarr import Zlibng
        from zarr.codecs.numcodecs import Zlib
    except ImportError:
        return codecs
    if not ZLIBNG.available:
        return codecs
    inflater = _sized_inflate() or Zlibng
    return [inflater() if isinstance(codec, Zlib) else codec for codec in codecs]


@functools.cache
def _sized_inflate():
    """imagecodecs' zlib-ng zarr codec, decoding with libdeflate when the decoded size is known; None without it.

    libdeflate inflates a whole buffer of known size, 1.1-1.9x as fast as
    zlib-ng's streaming inflate here (poorly compressible float chunks gain
    most). A zlib stream in an HDF5 or zarr chain decodes to the chunk's size
    (shuffle, the bytes codec and fletcher32's stripped checksum keep it);
    where it does not, or the stream is damaged, libdeflate stops and zlib-ng
    decodes it as before (same values, same errors). Encoding and metadata are
    zlib-ng's codec's, which says ``imagecodecs_zlibng``: only decoders use it.
    """
    import imagecodecs
    from imagecodecs.zarr import Zlibng

    if not imagecodecs.DEFLATE.available:
        return None

    class SizedInflate(Zlibng):
        def _decode_sync(self, chunk_bytes, chunk_spec):
            size = _decoded_size(chunk_spec)
            return self._inflate(chunk_bytes, chunk_spec, size or None)

        def _inflate(self, chunk_bytes, chunk_spec, out):
            """Inflate into ``out`` (a size, or a buffer: the result is a view of it) if it is given and fits."""
            data = chunk_bytes.as_numpy_array()
            decoded = None
            if out is not None:
                try:
                    decoded = imagecodecs.deflate_decode(data, out=out)
                except imagecodecs.DeflateError:  # larger than the chunk, or damaged: zlib-ng says which
                    decoded = None
            if decoded is None:
                decoded = imagecodecs.zlibng_decode(data)
            if isinstance(decoded, np.ndarray):
                return chunk_spec.prototype.buffer.from_array_like(decoded)
            return chunk_spec.prototype.buffer.from_bytes(decoded)

    SizedInflate.__qualname__ = SizedInflate.__name__
    return SizedInflate


#: Chunks decoding to more than this allocate as usual rather than keep a buffer that size in every thread.
SCRATCH_MAX_BYTES = 16 * 2**20

_SCRATCH = threading.local()


def _scratch(slot: str, size: int) -> np.ndarray:
    """This thread's reusable buffer ``slot`` of ``size`` bytes (one per slot: a chain's steps never share one)."""
    buffers = getattr(_SCRATCH, "buffers", None)
    if buffers is None:
        buffers = _SCRATCH.buffers = {}
    buffer = buffers.get(slot)
    if buffer is None or buffer.size < size:
        buffer = buffers[slot] = np.empty(size, np.uint8)
    return buffer[:size]


def _scratch_decoders(decoders) -> list | None:
    """``decoders`` with the inflater and the unshuffle writing into this thread's scratch buffers, or None.

    Only for ``ChunkCodec.decode_into``'s synchronous chain, which copies the
    decoded chunk out before the thread decodes the next one; and only where
    each of the two steps appears once, so no step reads a buffer another
    step of the same chunk writes.
    """
    inflater = _sized_inflate()
    if inflater is None:
        return None
    from zarr.codecs.numcodecs import Shuffle

    kinds = [type(codec) for codec in decoders]
    if kinds.count(inflater) != 1 or kinds.count(Shuffle) > 1:
        return None
    scratch_inflate, scratch_unshuffle = _scratch_codecs()
    return [scratch_inflate() if type(codec) is inflater
            else scratch_unshuffle(**codec.codec_config) if type(codec) is Shuffle
            else codec for codec in decoders]


@functools.cache
def _scratch_codecs():
    """The inflater and zarr's numcodecs shuffle codec, decoding into this thread's scratch buffers."""
    import numcodecs
    from zarr.codecs.numcodecs import Shuffle

    inflater = _sized_inflate()

    class ScratchInflate(inflater):  # type: ignore[misc, valid-type]
        def _decode_sync(self, chunk_bytes, chunk_spec):
            size = _decoded_size(chunk_spec)
            out = _scratch("inflate", size) if 0 < size <= SCRATCH_MAX_BYTES else (size or None)
            return self._inflate(chunk_bytes, chunk_spec, out)

    class ScratchUnshuffle(Shuffle):
        def _decode_sync(self, chunk_data, chunk_spec):
            data = chunk_data.as_numpy_array()
            out = _scratch("unshuffle", data.nbytes) if data.nbytes <= SCRATCH_MAX_BYTES else None
            out = numcodecs.Shuffle(int(self.codec_config.get("elementsize", 4))).decode(data, out=out)
            return chunk_spec.prototype.buffer.from_array_like(out)

    ScratchInflate.__qualname__ = ScratchInflate.__name__
    ScratchUnshuffle.__qualname__ = ScratchUnshuffle.__name__
    return ScratchInflate, ScratchUnshuffle


def _decoded_size(chunk_spec) -> int:
    """The bytes a chunk of ``chunk_spec`` holds decoded (0 for variable-size elements)."""
    dtype = np.dtype(chunk_spec.dtype.to_native_dtype())
    if dtype.hasobject or dtype.itemsize == 0:
        return 0
    return math.prod(chunk_spec.shape) * dtype.itemsize


def codec_for_key(key: str) -> ChunkCodec:
    """The codec chain for a ``codec_key``, shared in this process (``vzdask.zlib-ng`` chooses the inflater)."""
    return _codec_for_key(key, _zlib_ng_on())


def _zlib_ng_on() -> bool:
    return bool(dask.config.get("vzdask.zlib-ng", True))


@functools.lru_cache(maxsize=512)
def _codec_for_key(key: str, zlib_ng: bool) -> ChunkCodec:
    return ChunkCodec(key, zlib_ng)


#: Codec chains by the metadata fields decoding depends on (see ``cached_codec_for``).
_CODECS: dict[tuple, ChunkCodec] = {}


def cached_codec_for(metadata: ArrayV3Metadata) -> ChunkCodec:
    """``codec_for(metadata)`` without serialising the metadata to JSON each call (many small arrays alike)."""
    fill = metadata.fill_value
    key = (metadata.data_type, metadata.chunk_grid, metadata.codecs, type(fill), repr(fill), _zlib_ng_on())
    try:
        codec = _CODECS.get(key)
    except TypeError:  # an unhashable codec configuration
        return codec_for(metadata)
    if codec is None:
        if len(_CODECS) >= 256:
            _CODECS.clear()
        codec = _CODECS[key] = codec_for(metadata)
    return codec


def codec_for(metadata: ArrayV3Metadata) -> ChunkCodec:
    """The (cached) codec chain for an array's metadata."""
    return codec_for_key(codec_key(metadata))
