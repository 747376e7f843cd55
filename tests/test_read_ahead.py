"""Read ahead: a serial walk over files opens the next one in the background, guessing its blocks."""

from __future__ import annotations

import threading

import dask
import netCDF4
import numpy as np
import obstore
import pytest
import xarray as xr
from netcdf_files import create_time_lat_lon

from vzdask.mfdataset import FileOpenError, open_virtual_mfdataset
from vzdask.parsers.common import ObstoreFile
from vzdask.parsers.hdf5 import HDFParser
from vzdask.parsers.read_ahead import read_ahead
from vzdask.registry import ObjectStoreRegistry

NT, NLAT, NLON = 6, 60, 120


def write_nc(path, first_time: int, seed: int) -> None:
    """A netCDF4 file whose chunk indexes lie past its first 64 KiB block (random data does not shrink)."""
    rng = np.random.default_rng(seed)
    with netCDF4.Dataset(path, "w") as nc:
        create_time_lat_lon(nc, np.arange(first_time, first_time + NT), np.linspace(-89, 89, NLAT),
                            np.arange(NLON) * 3.0)
        for name in ("tas", "pr"):
            v = nc.createVariable(name, "f4", ("time", "lat", "lon"), zlib=True, shuffle=True,
                                  chunksizes=(1, NLAT // 2, NLON // 2))
            v.units = "K"
            v[:] = rng.random((NT, NLAT, NLON)).astype("f4")


@pytest.fixture(autouse=True)
def read_one_ahead():
    """Local files are not read ahead by default ("auto"); these tests turn it on to test it."""
    with dask.config.set({"vzdask.read-ahead": 1}):
        yield


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    root = tmp_path_factory.mktemp("read_ahead")
    out = []
    for i in range(6):
        path = root / f"f{i}.nc"
        write_nc(path, i * NT, seed=i)
        out.append(str(path))
    return out


def urls(paths):
    return ["file://" + p for p in paths]


def blocks_parsed(url, registry) -> list[int]:
    """The blocks the HDF5 parser reads of this file, opened without any guess."""
    handle = ObstoreFile(url, registry)
    parser = HDFParser()
    parser.continue_from(handle)
    parser(url, registry)
    return handle.fetched_blocks


def requests_by_thread(monkeypatch) -> dict[str, int]:
    """Count obstore requests per thread kind (a real LocalStore answers them)."""
    counts: dict[str, int] = {}
    for name in ("get", "get_range", "get_ranges", "head"):
        real = getattr(obstore, name)

        def counted(*args, _real=real, **kwargs):
            kind = "ahead" if threading.current_thread().name.startswith("vzdask-read-ahead") else "main"
            counts[kind] = counts.get(kind, 0) + 1
            return _real(*args, **kwargs)

        monkeypatch.setattr(obstore, name, counted)
    return counts


def test_each_file_comes_open_with_the_blocks_its_predecessor_needed(paths):
    registry = ObjectStoreRegistry.default()
    needed = [blocks_parsed(u, registry) for u in urls(paths)]
    assert all(len(b) > 1 for b in needed), needed  # not vacuous: the chunk indexes lie past block 0
    walked = []
    ahead = read_ahead(urls(paths), registry)
    for i, (url, opened) in enumerate(ahead):
        assert url == urls(paths)[i] and opened.url == url and opened.registry is registry
        walked.append(opened.fetched_blocks)
        parser = HDFParser()
        parser.continue_from(opened)
        parser(url, registry)  # parse it, as a serial walk does, so its blocks guide the next file
    assert walked[0] == [0] and walked[1] == [0]  # nothing parsed yet when they were opened
    for i in range(2, len(paths)):
        assert set(needed[i - 2]) <= set(walked[i]), (i, needed[i - 2], walked[i])
    # the cached bytes are the file's
    with open(paths[-1], "rb") as f:
        data = f.read()
    handle = ObstoreFile(urls(paths)[-1], registry, prefetch=needed[-1])
    for b in needed[-1]:
        assert handle.cached_range(handle.url, b * 2**16, min(2**16, len(data) - b * 2**16)) == \
            data[b * 2**16 : (b + 1) * 2**16]


def test_prefetch_skips_blocks_past_the_end(tmp_path):
    path = tmp_path / "small.bin"
    data = bytes(range(256)) * 1000  # 256 kB: blocks 0..3
    path.write_bytes(data)
    handle = ObstoreFile("file://" + str(path), ObjectStoreRegistry.default(), prefetch=[0, 2, 3, 4, 99])
    assert handle.fetched_blocks == [0, 2, 3]
    handle.seek(2 * 2**16 + 5)
    assert handle.read(2**16) == data[2 * 2**16 + 5 : 3 * 2**16 + 5]


def test_serial_open_reads_ahead_and_gives_the_same_dataset(paths, monkeypatch):
    counts = requests_by_thread(monkeypatch)
    with dask.config.set({"vzdask.read-ahead": 0}):
        plain = open_virtual_mfdataset(paths)
    without = dict(counts)
    counts.clear()
    ahead = open_virtual_mfdataset(paths)
    monkeypatch.undo()
    assert "ahead" not in without
    assert counts["ahead"] >= len(paths)  # every file opened in the background
    assert counts.get("main", 0) < without["main"] / 2, (counts, without)
    for name in ("tas", "pr"):
        assert ahead[name].data.equals(plain[name].data), name
    np.testing.assert_array_equal(ahead["time"].values, plain["time"].values)
    reference = xr.open_mfdataset(paths, engine="netcdf4", combine="by_coords")
    xr.testing.assert_allclose(xr.decode_cf(ahead.vz.compute()), reference.compute(), rtol=0, atol=0)
    assert not [t for t in threading.enumerate() if t.name.startswith("vzdask-read-ahead")]


def test_a_bad_file_is_reported_by_its_own_parse(paths, tmp_path):
    truncated = tmp_path / "truncated.nc"
    data = open(paths[1], "rb").read()
    truncated.write_bytes(data[: len(data) // 3])
    missing = str(tmp_path / "missing.nc")
    for bad in (str(truncated), missing):
        with pytest.raises(FileOpenError) as info:
            open_virtual_mfdataset([paths[0], bad, paths[2], paths[3]], combine="nested", concat_dim="time")
        assert bad in str(info.value)
        assert not any(p in str(info.value) for p in (paths[0], paths[2], paths[3]))
    assert not [t for t in threading.enumerate() if t.name.startswith("vzdask-read-ahead")]


def test_read_ahead_stops_after_a_failed_open(paths, tmp_path, monkeypatch):
    registry = ObjectStoreRegistry.default()
    walk = urls([str(tmp_path / "not_a_file")] + paths[:3])
    counts = requests_by_thread(monkeypatch)
    got = list(read_ahead(walk, registry))
    assert [url for url, _ in got] == walk
    opened = [opened for _, opened in got]
    assert opened[0] is None and opened[1].url == walk[1]  # the next one was already in flight
    assert opened[2:] == [None, None]
    # the failed open (a get, then a head) and the one in flight (a get); none for the rest
    assert counts["ahead"] == 3, counts


def test_without_a_thread_files_open_in_turn_with_the_guess(paths):
    registry = ObjectStoreRegistry.default()
    needed = [blocks_parsed(u, registry) for u in urls(paths)]
    with dask.config.set({"vzdask.read-ahead": 0}):
        for i, (url, opened) in enumerate(read_ahead(urls(paths), registry)):
            assert not [t for t in threading.enumerate() if t.name.startswith("vzdask-read-ahead")]
            if i:
                assert set(needed[i - 1]) <= set(opened.fetched_blocks), (i, needed[i - 1], opened.fetched_blocks)
            parser = HDFParser()
            parser.continue_from(opened)
            parser(url, registry)


def test_early_exit_leaves_no_thread(paths):
    registry = ObjectStoreRegistry.default()
    ahead = read_ahead(urls(paths), registry, depth=2)
    url, opened = next(ahead)
    assert opened.url == url
    ahead.close()  # a consumer that stops early (an error) leaves no thread behind
    assert not [t for t in threading.enumerate() if t.name.startswith("vzdask-read-ahead")]


def test_files_their_parser_opens_itself_stop_the_read_ahead(tmp_path, monkeypatch):
    """netCDF3 files are parsed from their own reads: after the first files none are opened ahead."""
    paths = []
    for i in range(5):
        path = tmp_path / f"c{i}.nc"
        xr.Dataset({"v": (("time", "x"), np.arange(12.0).reshape(3, 4) + 100 * i)},
                   coords={"time": np.arange(3.0) + 3 * i, "x": np.arange(4.0)}).to_netcdf(
            path, format="NETCDF3_CLASSIC", engine="netcdf4")
        paths.append(str(path))
    counts = requests_by_thread(monkeypatch)
    ds = open_virtual_mfdataset(paths)
    monkeypatch.undo()
    assert counts["ahead"] == 2, counts  # the first file and the one in flight, one request each
    expected = xr.open_mfdataset(paths, engine="netcdf4", combine="by_coords").compute()
    xr.testing.assert_equal(ds.vz.compute(), expected)


def test_auto_reads_ahead_from_remote_stores_only(paths, s3_bucket, s3_env):
    from vzdask.parsers.read_ahead import read_ahead_depth

    bucket, client = s3_bucket
    remote = []
    for path in paths[:4]:
        key = path.rsplit("/", 1)[-1]
        client.upload_file(path, bucket, key)
        remote.append(f"s3://{bucket}/{key}")
    registry = ObjectStoreRegistry.default()
    with pytest.MonkeyPatch.context() as counting:  # (``monkeypatch`` holds the S3 settings)
        counts = requests_by_thread(counting)
        with dask.config.set({"vzdask.read-ahead": 0}):
            open_virtual_mfdataset(remote)
        without = dict(counts)
        counts.clear()
        with dask.config.set({"vzdask.read-ahead": "auto"}):
            assert read_ahead_depth(urls(paths), registry) == 0
            assert read_ahead_depth(remote, registry) == 1
            ds = open_virtual_mfdataset(remote)
    assert counts["ahead"] >= len(remote)
    assert counts["main"] <= without["main"] - len(remote), (counts, without)  # at least the first blocks
    local = open_virtual_mfdataset(paths[:4])
    for name in ("tas", "pr"):  # the same chunks, at the same offsets, in the uploaded copies
        np.testing.assert_array_equal(ds[name].data.manifest.offsets, local[name].data.manifest.offsets)
    xr.testing.assert_equal(ds.vz.compute(), local.vz.compute())


def test_dmrpp_sidecars_are_opened_whole_in_one_plain_ranged_read(monkeypatch):
    """A ``.dmrpp`` document is opened as DMRPPParser opens it (one get_range), and the parser goes on from it."""
    from pathlib import Path

    from vzdask.parsers.dmrpp import DMRPPParser

    fixtures = Path(__file__).resolve().parent / "fixtures" / "dmrpp"
    names = ["chunked_twoD.h5.dmrpp", "chunked_shufzip_threeD.h5.dmrpp"]
    registry = ObjectStoreRegistry()
    calls: list = []
    for name in ("get", "get_range", "get_ranges", "head"):
        real = getattr(obstore, name)
        monkeypatch.setattr(obstore, name, lambda *a, _real=real, _name=name, **k: calls.append(_name) or
                            _real(*a, **k))
    for (url, opened), name in zip(read_ahead([(fixtures / n).as_uri() for n in names], registry, depth=0), names):
        assert calls == ["get_range"] and opened is not None and opened.size == (fixtures / name).stat().st_size
        store = DMRPPParser().continue_from(opened)(url, registry)
        assert calls == ["get_range"] and opened.taken  # the document was not read again
        assert store.group.arrays.keys() == DMRPPParser()(url, registry).group.arrays.keys()
        calls.clear()
