"""ObstoreFile: the block-cached file object h5py and the header parsers read through."""

from __future__ import annotations

import io
import os

import numpy as np
import obstore
import pytest

from vzdask.parsers.common import ObstoreFile
from vzdask.registry import ObjectStoreRegistry

RNG = np.random.default_rng(7)


@pytest.fixture
def blob(tmp_path):
    data = RNG.integers(0, 256, 1000, dtype=np.uint8).tobytes()
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    return "file://" + str(path), data


def count_requests(monkeypatch) -> list:
    """Record every obstore request (a real LocalStore still answers them)."""
    calls: list = []
    for name in ("get", "get_range", "get_ranges", "head"):
        real = getattr(obstore, name)

        def counted(*args, _real=real, _name=name, **kwargs):
            calls.append(_name)
            return _real(*args, **kwargs)

        monkeypatch.setattr(obstore, name, counted)
    return calls


def test_reads_across_block_boundaries_and_at_the_end_match_the_bytes(blob):
    url, data = blob
    f = ObstoreFile(url, ObjectStoreRegistry.default(), block_size=64)
    assert f.size == len(data)
    cases = [(0, 8), (60, 10), (63, 1), (64, 64), (100, 300), (10, 990), (950, 100), (999, 5), (1000, 4), (1200, 3)]
    for start, length in cases:
        assert f.read_range(start, length) == data[start : start + length], (start, length)
    # the file-object protocol h5py uses: seek + readinto, and SEEK_CUR / SEEK_END
    order = RNG.permutation(len(cases))
    for i in order:
        start, length = cases[i]
        buffer = bytearray(length)
        f.seek(start)
        n = f.readinto(memoryview(buffer))
        expected = data[start : start + length]
        assert n == len(expected) and bytes(buffer[:n]) == expected
        assert f.tell() == start + n
    assert f.seek(-10, io.SEEK_END) == len(data) - 10
    assert f.read() == data[-10:]
    f.seek(5)
    assert f.seek(3, io.SEEK_CUR) == 8 and f.read(4) == data[8:12]


def test_first_block_and_size_come_in_one_request_and_blocks_are_fetched_once(blob, monkeypatch):
    url, data = blob
    calls = count_requests(monkeypatch)
    f = ObstoreFile(url, ObjectStoreRegistry.default(), block_size=256)
    assert calls == ["get"] and f.size == len(data)
    assert f.read_range(0, 256) == data[:256] and calls == ["get"]  # served from the first block
    assert f.read_range(200, 700) == data[200:900]  # blocks 1-3: one request for the run
    assert len(calls) == 2
    assert f.read_range(300, 600) == data[300:900] and len(calls) == 2  # all cached now
    assert f.read_range(0, 1000) == data and len(calls) == 2  # block 3 (768-999) came with the run
    assert sorted(f._blocks) == [0, 1, 2, 3]


def test_separate_missing_runs_are_fetched_together(blob, monkeypatch):
    url, data = blob
    f = ObstoreFile(url, ObjectStoreRegistry.default(), block_size=100)
    f.read_range(300, 100)  # block 3 cached: a read of 0-999 now misses the runs 1-2 and 4-9
    calls = count_requests(monkeypatch)
    assert f.read_range(0, 1000) == data
    assert calls == ["get_ranges"]


def test_small_empty_and_missing_objects(tmp_path):
    registry = ObjectStoreRegistry.default()
    small = tmp_path / "small.bin"
    small.write_bytes(b"tiny")
    f = ObstoreFile("file://" + str(small), registry)
    assert f.size == 4 and f.read_range(0, 100) == b"tiny" and f.read_range(4, 1) == b""
    empty = tmp_path / "empty.bin"
    empty.write_bytes(b"")
    f = ObstoreFile("file://" + str(empty), registry)
    assert f.size == 0 and f.read_range(0, 8) == b""
    with pytest.raises(FileNotFoundError, match="missing.bin"):
        ObstoreFile("file://" + str(tmp_path / "missing.bin"), registry)


def test_a_file_truncated_while_being_read_is_a_clear_error(blob):
    url, data = blob
    f = ObstoreFile(url, ObjectStoreRegistry.default(), block_size=256)
    path = url[len("file://") :]
    with open(path, "r+b") as handle:
        handle.truncate(600)  # block 2 (512-767) is now short, block 3 is gone
    assert f.read_range(0, 10) == data[:10]  # cached bytes stay right
    with pytest.raises(OSError, match=r"blob\.bin: short read at byte 512: got 88 of 256 bytes"):
        f.read_range(520, 10)
    with pytest.raises(OSError, match=r"blob\.bin"):
        f.read_range(800, 10)
    assert 2 not in f._blocks and 3 not in f._blocks  # nothing wrong was cached
    assert os.path.getsize(path) == 600


def test_a_file_signature_decides_before_the_directory_probes(tmp_path, monkeypatch):
    import h5py

    import vzdask.parsers.kerchunk as kerchunk_parser
    import vzdask.parsers.zarr as zarr_parser
    from vzdask.parsers import ParseError, detect_parser
    from vzdask.parsers.hdf5 import HDFParser

    path = tmp_path / "a.h5"
    with h5py.File(path, "w") as f:
        f["x"] = np.arange(3)

    def refuse(*args, **kwargs):
        raise AssertionError("probed a directory layout for a file with a signature")

    monkeypatch.setattr(zarr_parser, "is_zarr_store", refuse)
    monkeypatch.setattr(kerchunk_parser, "is_kerchunk_parquet", refuse)
    registry = ObjectStoreRegistry.default()
    parser = detect_parser(path.as_uri(), registry, group="g")
    assert isinstance(parser, HDFParser) and parser.group == "g"
    # no signature: the probes run (and here they refuse)
    other = tmp_path / "other.bin"
    other.write_bytes(b"neither")
    with pytest.raises(AssertionError, match="probed"):
        detect_parser(other.as_uri(), registry)
    monkeypatch.undo()
    with pytest.raises(ParseError, match=r"other\.bin: unrecognised file format"):
        detect_parser(other.as_uri(), registry)


def test_a_detected_hdf5_parser_goes_on_from_the_probed_first_block(tmp_path, monkeypatch):
    """Detection reads the first block once; the parser it made does not read it again (one call only)."""
    import pickle

    import h5py

    from vzdask.parsers import detect_parser
    from vzdask.xarray import open_virtual_dataset

    path = tmp_path / "a.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("x", data=np.arange(12.0).reshape(3, 4), chunks=(1, 4))
    registry = ObjectStoreRegistry.default()
    first_block_reads = []
    real_get = obstore.get

    def get(store, location, *args, options=None, **kwargs):
        if (options or {}).get("range", (None,))[0] == 0:
            first_block_reads.append(location)
        return real_get(store, location, *args, options=options, **kwargs)

    monkeypatch.setattr(obstore, "get", get)
    ds = open_virtual_dataset(path, registry=registry)
    assert len(first_block_reads) == 1
    np.testing.assert_array_equal(ds["x"].data.compute(), np.arange(12.0).reshape(3, 4))
    parser = detect_parser(path.as_uri(), registry)
    assert len(first_block_reads) == 2
    assert parser.__dict__.get("_opened") is not None  # handed over (continue_from) ...
    assert pickle.loads(pickle.dumps(parser)).__dict__.get("_opened") is None  # ... but the open file is not shipped
    parser(path.as_uri(), registry)
    parser(path.as_uri(), registry)  # a second call opens the file itself
    assert len(first_block_reads) == 3
    other = tmp_path / "b.h5"
    with h5py.File(other, "w") as f:
        f["y"] = np.arange(2)
    assert list(detect_parser(path.as_uri(), registry)(other.as_uri(), registry).group.arrays) == ["y"]


def test_cached_range_gives_only_bytes_already_fetched(blob):
    url, data = blob
    f = ObstoreFile(url, ObjectStoreRegistry.default(), block_size=256)  # the first block is fetched
    assert f.cached_range(url, 10, 50) == data[10:60]
    assert f.cached_range(url, 200, 100) is None  # runs into block 1, not fetched yet
    f.seek(300)
    f.read(10)  # fetches block 1
    assert f.cached_range(url, 200, 100) == data[200:300]
    assert f.cached_range(url, 0, 512) == data[:512]
    assert f.cached_range(url.replace("blob", "other"), 10, 50) is None  # another file
    assert f.cached_range(url, 990, 20) is None  # past the end
    assert f.cached_range(url, 5, 0) is None


class _ForgetfulHDFParser:
    """HDFParser that keeps none of its reads: what loading costs without parsed bytes."""

    def __init__(self):
        from vzdask.parsers.hdf5 import HDFParser

        self.parser = HDFParser()

    def __call__(self, url, registry):
        return self.parser(url, registry)


def test_coordinates_read_while_parsing_are_not_fetched_again(tmp_path, monkeypatch):
    import h5py
    import pandas as pd
    import xarray as xr

    from vzdask.xarray import open_virtual_dataset

    near = tmp_path / "near.nc"  # netCDF4 puts small coordinates next to the header
    xr.Dataset(
        {"t": (("time", "lat"), RNG.random((4, 6)).astype("f4"))},
        coords={"time": pd.date_range("2001-01-01", periods=4), "lat": np.linspace(-50, 50, 6)},
    ).to_netcdf(near, engine="h5netcdf", encoding={"t": {"zlib": True, "chunksizes": (1, 6)}})
    far = tmp_path / "far.h5"  # a coordinate whose bytes lie past the blocks the parser reads
    with h5py.File(far, "w") as f:  # headers first; data written later lands after big's 800 kB
        x = f.create_dataset("x", shape=(7,), dtype="f8")
        v = f.create_dataset("v", shape=(7,), dtype="f8")
        big = f.create_dataset("big", shape=(100_000,), dtype="f8")
        x.make_scale("x")
        v.dims[0].attach_scale(x)
        big[...] = np.arange(100_000.0)
        v[...] = np.arange(7.0)
        x[...] = np.arange(7.0) * 3
    for path, coords in [(near, ["time", "lat"]), (far, ["x"])]:
        calls = count_requests(monkeypatch)
        kept = open_virtual_dataset(path)
        with_reads = len(calls)
        calls.clear()
        plain = open_virtual_dataset(path, parser=_ForgetfulHDFParser())
        without_reads = len(calls)
        monkeypatch.undo()
        for name in coords:
            np.testing.assert_array_equal(kept[name].values, plain[name].values, strict=True)
        expected = xr.open_dataset(path, engine="h5netcdf", phony_dims="sort")
        for name in coords:
            np.testing.assert_array_equal(kept[name].values, expected[name].values)
        if path == near:
            assert with_reads == without_reads - 1, (with_reads, without_reads)
        else:
            assert with_reads == without_reads, (with_reads, without_reads)  # fetched as before
