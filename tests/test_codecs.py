"""Chunk codecs: zlib streams decode through imagecodecs' zlib-ng zarr codec, exactly as numcodecs' zlib.

``vzdask.zlib-ng`` (on by default) picks the inflater for decoding only; these
tests check it is really used, that it gives the same values and the same
failures as ``numcodecs.zlib`` on real HDF5 chunks and on broken streams, and
that metadata and encoding never change.
"""

from __future__ import annotations

import zlib

import dask
import h5py
import numpy as np
import pytest
from imagecodecs import ZlibngError
from imagecodecs.zarr import Zlibng
from zarr.codecs.numcodecs import Zlib

from vzdask import open_virtual_dataset
from vzdask.codecs import codec_for, codec_for_key, codec_key, cached_codec_for


@pytest.fixture
def hdf5_chunks(tmp_path):
    """A shuffle+zlib HDF5 dataset (as netCDF4 writes them): its virtual metadata and raw chunks."""
    rng = np.random.default_rng(7)
    data = rng.normal(280, 15, size=(6, 30, 40)).astype("float32")
    path = tmp_path / "t.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("t", data=data, chunks=(1, 15, 20), shuffle=True, compression="gzip", compression_opts=4)
    with h5py.File(path) as f:
        dsid = f["t"].id
        chunks = [dsid.read_direct_chunk(dsid.get_chunk_info(i).chunk_offset)[1] for i in range(dsid.get_num_chunks())]
    vds = open_virtual_dataset(str(path))
    return vds["t"].data, data, chunks


def test_zlib_ng_decodes_what_numcodecs_zlib_decodes(hdf5_chunks):
    array, data, chunks = hdf5_chunks
    metadata = array.metadata
    assert any(isinstance(c, Zlib) for c in metadata.codecs)
    with dask.config.set({"vzdask.zlib-ng": True}):
        fast = codec_for(metadata)
        assert cached_codec_for(metadata) is fast
        np.testing.assert_array_equal(array.compute(), data, strict=True)
    with dask.config.set({"vzdask.zlib-ng": False}):
        plain = codec_for(metadata)
        assert cached_codec_for(metadata) is plain
        np.testing.assert_array_equal(array.compute(), data, strict=True)
    assert plain is not fast
    assert any(isinstance(c, Zlibng) for c in fast.decoders) and not any(isinstance(c, Zlib) for c in fast.decoders)
    assert any(isinstance(c, Zlib) for c in plain.decoders) and not any(isinstance(c, Zlibng) for c in plain.decoders)
    for raw in chunks:
        np.testing.assert_array_equal(fast.decode(raw), plain.decode(raw), strict=True)
    # encoding and metadata keep numcodecs.zlib: what we write stays readable without imagecodecs
    assert "numcodecs.zlib" in codec_key(metadata) and "zlibng" not in codec_key(metadata)
    block = data[:1, :15, :20]
    assert fast.encode(block) == plain.encode(block)
    np.testing.assert_array_equal(plain.decode(fast.encode(block)), block)


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda c: c[:-9], id="truncated"),
        pytest.param(lambda c: c[:-1] + bytes([c[-1] ^ 1]), id="bad-checksum"),
        pytest.param(lambda c: c[:40] + bytes([c[40] ^ 0xFF]) + c[41:], id="flipped-byte"),
        pytest.param(lambda c: b"", id="empty"),
        pytest.param(lambda c: b"\x1f\x8b" + c[2:], id="not-a-zlib-header"),
    ],
)
def test_broken_streams_fail_with_both_inflaters(hdf5_chunks, damage):
    array, _, chunks = hdf5_chunks
    broken = damage(chunks[0])
    with pytest.raises(zlib.error):
        zlib.decompress(broken)  # the damage is real
    for zlib_ng, error in ((True, ZlibngError), (False, zlib.error)):
        with dask.config.set({"vzdask.zlib-ng": zlib_ng}):
            with pytest.raises(error):
                codec_for(array.metadata).decode(broken)
            with pytest.raises(error):  # decode_into's chain (scratch buffers) fails alike
                codec_for(array.metadata).decode_into(broken, np.empty((1, 15, 20), "float32"))


def test_codec_cache_follows_the_setting(hdf5_chunks):
    array, _, _ = hdf5_chunks
    key = codec_key(array.metadata)
    with dask.config.set({"vzdask.zlib-ng": True}):
        assert codec_for_key(key) is codec_for_key(key)
        on = codec_for_key(key)
    with dask.config.set({"vzdask.zlib-ng": False}):
        assert codec_for_key(key) is not on


def test_libdeflate_inflates_into_the_known_size(hdf5_chunks):
    """With libdeflate, zlib streams inflate into the chunk's decoded size; other sizes fall back to zlib-ng."""
    import imagecodecs

    from vzdask.codecs import _sized_inflate

    if not imagecodecs.DEFLATE.available:
        pytest.fail("imagecodecs was built without libdeflate: the hdf extra's imagecodecs has it")
    array, data, chunks = hdf5_chunks
    with dask.config.set({"vzdask.zlib-ng": True}):
        codec = codec_for(array.metadata)
    (inflater,) = [c for c in codec.decoders if isinstance(c, Zlibng)]
    assert isinstance(inflater, _sized_inflate())
    np.testing.assert_array_equal(codec.decode(chunks[0]), data[:1, :15, :20], strict=True)
    spec = codec._spec  # a (1, 15, 20) float32 chunk: 1200 bytes decoded
    for payload in (bytes(range(256)) * 10, b"", bytes(1200)):  # larger than the chunk, empty, exact
        got = inflater._decode_sync(codec._prototype.buffer.from_bytes(zlib.compress(payload)), spec)
        assert got.to_bytes() == payload


def _zlib_only_chunks(tmp_path):
    """A zlib HDF5 dataset without shuffle: the inflated bytes are the values (the bytes codec views them)."""
    data = np.arange(6 * 30 * 40, dtype="<i4").reshape(6, 30, 40) * 7 - 3000
    path = tmp_path / "z.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("z", data=data, chunks=(1, 15, 20), compression="gzip", compression_opts=1)
    with h5py.File(path) as f:
        dsid = f["z"].id
        chunks = [dsid.read_direct_chunk(dsid.get_chunk_info(i).chunk_offset)[1] for i in range(dsid.get_num_chunks())]
    return open_virtual_dataset(str(path))["z"].data, data, chunks


@pytest.mark.parametrize("chain", ["shuffle+zlib", "zlib"])
@pytest.mark.parametrize("largest", [None, 100], ids=["scratch", "too-large-for-scratch"])
def test_decode_into_scratch_buffers_never_leak(hdf5_chunks, tmp_path, monkeypatch, chain, largest):
    """decode_into inflates/unshuffles into per-thread buffers: every chunk exact, on two threads at once,
    and what decode() returns is never one of those buffers."""
    from concurrent.futures import ThreadPoolExecutor

    from vzdask import codecs

    if largest is not None:
        monkeypatch.setattr(codecs, "SCRATCH_MAX_BYTES", largest)
    array, data, chunks = hdf5_chunks if chain == "shuffle+zlib" else _zlib_only_chunks(tmp_path)
    with dask.config.set({"vzdask.zlib-ng": True}):
        codec = codec_for(array.metadata)
    assert codecs._scratch_decoders(codec.decoders) is not None
    where = [(t, y, x) for t in range(6) for y in range(2) for x in range(2)]  # h5py's chunk order (C order)
    kept = [codec.decode(raw) for raw in chunks]  # decode() results stay as they were
    out = np.empty_like(data)

    def decode(k):
        t, y, x = where[k]
        for _ in range(20):  # many rounds, so both threads' buffers are reused while the other decodes
            codec.decode_into(chunks[k], out[t : t + 1, 15 * y : 15 * y + 15, 20 * x : 20 * x + 20])

    with ThreadPoolExecutor(2) as pool:
        list(pool.map(decode, range(len(chunks))))
    np.testing.assert_array_equal(out, data, strict=True)
    for (t, y, x), got in zip(where, kept):
        np.testing.assert_array_equal(got, data[t : t + 1, 15 * y : 15 * y + 15, 20 * x : 20 * x + 20], strict=True)
    inner = (slice(0, 1), slice(2, 9), slice(5, 20))  # part of a chunk (an edge block)
    part = np.empty((1, 7, 15), data.dtype)
    codec.decode_into(chunks[3], part, inner)
    np.testing.assert_array_equal(part, data[0:1, 15:30, 20:40][inner], strict=True)
