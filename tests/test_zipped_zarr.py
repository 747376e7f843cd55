"""Zipped Zarr stores (zarr's ZipStore, v2 and v3) as input: byte ranges into the zip, compared with zarr reading it."""

from __future__ import annotations

import io
import shutil
import warnings
import zipfile

import numpy as np
import pytest
import xarray as xr
import zarr

import vzdask.parsers.zipped_zarr as zipped_zarr
from vzdask.errors import ParseError
from vzdask.parsers import ZippedZarrParser, detect_parser
from vzdask.policy import InlinePolicy
from vzdask.registry import ObjectStoreRegistry
from vzdask.xarray import open_virtual_dataset


def write_store(path, zarr_format: int, *, rows: int = 10) -> str:
    """A zipped store: ``t`` (zstd, a never-written chunk), ``time``, a subgroup with ``b``; attributes everywhere."""
    store = zarr.storage.ZipStore(path, mode="w")
    root = zarr.group(store, zarr_format=zarr_format, attributes={"title": "zipped", "n": 3})
    time = root.create_array("time", shape=(rows,), chunks=(5,), dtype="f8", fill_value=0.0,
                             dimension_names=("time",) if zarr_format == 3 else None,
                             attributes={"units": "days since 2000-01-01"} | ({} if zarr_format == 3 else
                                                                              {"_ARRAY_DIMENSIONS": ["time"]}))
    time[:] = np.arange(rows)
    t = root.create_array("t", shape=(rows, 8), chunks=(5, 4), dtype="f4", fill_value=-1.0,
                          compressors=zarr.codecs.ZstdCodec() if zarr_format == 3 else {"id": "zstd", "level": 1},
                          dimension_names=("time", "x") if zarr_format == 3 else None,
                          attributes={"units": "K"} | ({} if zarr_format == 3 else
                                                       {"_ARRAY_DIMENSIONS": ["time", "x"]}))
    values = np.arange(rows * 8, dtype="f4").reshape(rows, 8) * 1.5
    t[:5] = values[:5]
    t[5:, :4] = values[5:, :4]  # chunk (1, 1) never written: reads as the fill value
    sub = root.create_group("sub", attributes={"about": "nested"})
    b = sub.create_array("b", shape=(4,), chunks=(2,), dtype="i2", fill_value=-7,
                         dimension_names=("k",) if zarr_format == 3 else None,
                         attributes={} if zarr_format == 3 else {"_ARRAY_DIMENSIONS": ["k"]})
    b[:2] = [3, 4]
    store.close()
    return str(path)


def zarr_read(path, group=None) -> xr.Dataset:
    return xr.open_zarr(zarr.storage.ZipStore(path, mode="r"), consolidated=False, group=group).load()


def vz_read(store, group=None) -> xr.Dataset:
    return xr.open_zarr(store, consolidated=False, zarr_format=3, group=group).load()


@pytest.mark.parametrize("zarr_format", [3, 2])
def test_values_and_metadata_match_zarr(tmp_path, zarr_format):
    path = write_store(tmp_path / "s.zarr.zip", zarr_format)
    store = ZippedZarrParser()(f"file://{path}", ObjectStoreRegistry.default())
    for group in (None, "sub"):
        xr.testing.assert_identical(vz_read(store, group), zarr_read(path, group))
    t = store.group.arrays["t"].manifest
    assert t.count() == {"virtual": 3, "inlined": 0, "missing": 1}
    assert set(t.urls) == {f"file://{path}"}  # byte ranges into the zip itself
    with zipfile.ZipFile(path) as archive:  # each reference is exactly a stored member's bytes
        key = "t/c/0/0" if zarr_format == 3 else "t/0.0"
        _, _, offset, length = t.entry((0, 0))
        assert open(path, "rb").read()[offset : offset + length] == archive.read(key)
    ours = zarr.open_group(store, mode="r", zarr_format=3)
    theirs = zarr.open_group(zarr.storage.ZipStore(path, mode="r"), mode="r")
    for name in ("t", "time", "sub/b"):
        np.testing.assert_array_equal(ours[name][...], theirs[name][...])
        assert ours[name].fill_value == theirs[name].fill_value
        assert ours[name].attrs.asdict().items() >= {k: v for k, v in theirs[name].attrs.asdict().items()
                                                     if k != "_ARRAY_DIMENSIONS"}.items()
    assert ours["sub"].attrs.asdict() == {"about": "nested"}


def test_detected_by_name_and_by_first_member(tmp_path):
    named = write_store(tmp_path / "s.zarr.zip", 3)
    plain = shutil.copy(named, tmp_path / "archive.zip")
    registry = ObjectStoreRegistry.default()
    for path in (named, plain):
        assert isinstance(detect_parser(f"file://{path}", registry), ZippedZarrParser)
        vds = open_virtual_dataset(path, loadable_variables=["time"])
        xr.testing.assert_identical(vds.load(), zarr_read(named))
    other = tmp_path / "other.zip"
    with zipfile.ZipFile(other, "w") as archive:
        archive.writestr("readme.txt", "not zarr")
    with pytest.raises(ParseError, match="unrecognised file format"):
        detect_parser(f"file://{other}", registry)


def test_group_and_inline_policy(tmp_path):
    path = write_store(tmp_path / "s.zarr.zip", 3)
    registry = ObjectStoreRegistry.default()
    sub = ZippedZarrParser(group="sub")(f"file://{path}", registry)
    assert set(sub.group.arrays) == {"b"}
    xr.testing.assert_identical(vz_read(sub), zarr_read(path, "sub"))
    inlined = ZippedZarrParser(inline=InlinePolicy(variables=["t"]))(f"file://{path}", registry)
    assert inlined.group.arrays["t"].manifest.count() == {"virtual": 0, "inlined": 3, "missing": 1}
    xr.testing.assert_identical(vz_read(inlined), zarr_read(path))


def count_reads(monkeypatch) -> list:
    """Record every read the parser makes (the real functions still do the reading)."""
    calls: list = []
    real_end, real_ranges = zipped_zarr.read_end, zipped_zarr.read_ranges

    def read_end(*args, **kwargs):
        calls.append(("end", 1))
        return real_end(*args, **kwargs)

    def read_ranges(store, path, starts, lengths, **kwargs):
        calls.append(("ranges", len(starts)))
        return real_ranges(store, path, starts, lengths, **kwargs)

    monkeypatch.setattr(zipped_zarr, "read_end", read_end)
    monkeypatch.setattr(zipped_zarr, "read_ranges", read_ranges)
    return calls


def test_two_reads_whatever_the_number_of_members(tmp_path, monkeypatch):
    """The end of the file (EOCD + central directory) in one read, the metadata members in one more."""
    path = write_store(tmp_path / "s.zarr.zip", 3, rows=400)  # 80 chunks of t, 80 of time
    calls = count_reads(monkeypatch)
    store = ZippedZarrParser()(f"file://{path}", ObjectStoreRegistry.default())
    assert calls == [("end", 1), ("ranges", 6)]  # 5 metadata documents (the first member one) + the last's header
    xr.testing.assert_identical(vz_read(store), zarr_read(path))

    # a central directory larger than the first read: exactly one more read for the rest of it
    monkeypatch.setattr(zipped_zarr, "TAIL_BYTES", 1024)
    calls.clear()
    store = ZippedZarrParser()(f"file://{path}", ObjectStoreRegistry.default())
    assert calls == [("end", 1), ("ranges", 1), ("ranges", 6)]
    xr.testing.assert_identical(vz_read(store), zarr_read(path))


def rezip(source: str, target, *, compress=lambda name: zipfile.ZIP_STORED, prefix: bytes = b"",
          force_zip64: bool = False, streamed: bool = False, gap_after: str | None = None) -> str:
    """Copy a zip's members with Python's zipfile, choosing each member's compression (and zip64, streaming).

    ``gap_after``: leave 37 bytes of padding after that member (the next one starts after them).
    """
    buffer = io.BytesIO()
    out: io.RawIOBase | io.BytesIO = buffer
    if streamed:  # an unseekable output: zipfile writes data descriptors (flag bit 3)
        class Unseekable(io.RawIOBase):
            def writable(self):
                return True

            def write(self, data):
                return buffer.write(data)

        out = Unseekable()
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            member = zipfile.ZipInfo(info.filename, date_time=info.date_time)
            member.compress_type = compress(info.filename)
            with dst.open(member, "w", force_zip64=force_zip64) as f:
                f.write(src.read(info))
            if info.filename == gap_after:
                dst.fp.write(b"\0" * 37)
                dst.start_dir = dst.fp.tell()  # zipfile writes the next member (or its directory) from here
    with open(target, "wb") as f:
        f.write(prefix + buffer.getvalue())
    return str(target)


def test_deflated_members_are_refused_by_name(tmp_path):
    path = write_store(tmp_path / "s.zarr.zip", 3)
    registry = ObjectStoreRegistry.default()
    chunks = rezip(path, tmp_path / "chunks.zarr.zip",
                   compress=lambda n: zipfile.ZIP_DEFLATED if n == "t/c/0/1" else zipfile.ZIP_STORED)
    with pytest.raises(ParseError, match=r"zip member 't/c/0/1' \(deflated\) is compressed; only stored"):
        ZippedZarrParser()(f"file://{chunks}", registry)
    everything = rezip(path, tmp_path / "all.zarr.zip", compress=lambda n: zipfile.ZIP_DEFLATED)
    with pytest.raises(ParseError, match=r"zip member 'zarr.json' \(deflated\) is compressed"):
        open_virtual_dataset(everything)
    # a compressed member the store does not use is no obstacle
    extra = tmp_path / "extra.zarr.zip"
    shutil.copy(path, extra)
    with zipfile.ZipFile(extra, "a", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("README.txt", "about this store " * 20)
    xr.testing.assert_identical(vz_read(ZippedZarrParser()(f"file://{extra}", registry)), zarr_read(path))


def test_zip64_prefixed_and_streamed_zips(tmp_path, monkeypatch):
    """Local headers longer than the central ones (zip64 extras), bytes before the archive, data descriptors."""
    path = write_store(tmp_path / "s.zarr.zip", 2)
    expected = zarr_read(path)
    registry = ObjectStoreRegistry.default()
    zip64 = rezip(path, tmp_path / "zip64.zarr.zip", force_zip64=True)
    with zipfile.ZipFile(zip64) as archive:
        info = archive.getinfo("t/0.0")
        assert len(info.extra) == 0  # central entry: no zip64 extra; the local header has one (20 bytes)
    xr.testing.assert_identical(vz_read(ZippedZarrParser()(f"file://{zip64}", registry)), expected)

    prefixed = rezip(path, tmp_path / "prefixed.zarr.zip", prefix=b"#!/bin/sh\nexit 0\n" * 10)
    with zipfile.ZipFile(prefixed) as archive:  # zipfile reads it too
        assert archive.read("t/0.0")
    xr.testing.assert_identical(vz_read(ZippedZarrParser()(f"file://{prefixed}", registry)), expected)

    streamed = rezip(path, tmp_path / "streamed.zarr.zip", streamed=True)
    with zipfile.ZipFile(streamed) as archive:
        assert all(i.flag_bits & 0x08 for i in archive.infolist())
    calls = count_reads(monkeypatch)
    xr.testing.assert_identical(vz_read(ZippedZarrParser()(f"file://{streamed}", registry)), expected)
    assert calls[0] == ("end", 1) and len(calls) == 2  # every local header read, in the one batched call

    # padding between members: the layout no longer gives the local header lengths; every one is read
    gap = rezip(path, tmp_path / "gap.zarr.zip", gap_after="t/0.1")
    with zipfile.ZipFile(gap) as archive:
        assert archive.read("t/1.0") and archive.getinfo("t/1.0").header_offset > archive.getinfo("t/0.1").header_offset
    calls.clear()
    ZippedZarrParser()(f"file://{path}", registry)
    ordinary = calls[1][1]
    calls.clear()
    xr.testing.assert_identical(vz_read(ZippedZarrParser()(f"file://{gap}", registry)), expected)
    assert calls == [("end", 1), ("ranges", ordinary + 1)]  # the header of the member before the gap, read too

    # zip64 end records (what zipfile writes past 65535 members), here with the threshold lowered
    monkeypatch.setattr(zipfile, "ZIP_FILECOUNT_LIMIT", 4)
    many = rezip(path, tmp_path / "eocd64.zarr.zip")
    assert b"PK\x06\x06" in open(many, "rb").read()[-200:]
    xr.testing.assert_identical(vz_read(ZippedZarrParser()(f"file://{many}", registry)), expected)


def test_duplicate_members_last_wins(tmp_path):
    path = tmp_path / "dup.zarr.zip"
    write_store(path, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # zipfile: "Duplicate name"
        store = zarr.storage.ZipStore(path, mode="a")
        zarr.open_array(store, path="sub/b", mode="r+")[:2] = [8, 9]
        store.close()
    got = vz_read(ZippedZarrParser()(f"file://{path}", ObjectStoreRegistry.default()), "sub")
    np.testing.assert_array_equal(got.b.values, zarr_read(path, "sub").b.values)
    np.testing.assert_array_equal(got.b.values, [8, 9, -7, -7])


def test_not_a_zip_or_damaged(tmp_path):
    registry = ObjectStoreRegistry.default()
    junk = tmp_path / "junk.zarr.zip"
    junk.write_bytes(b"PK\x03\x04" + b"\0" * 100)
    with pytest.raises(ParseError, match="no end of central directory record"):
        ZippedZarrParser()(f"file://{junk}", registry)
    path = write_store(tmp_path / "s.zarr.zip", 3)
    data = open(path, "rb").read()
    cut = tmp_path / "cut.zarr.zip"
    cut.write_bytes(data[:200] + data[-22:])  # members gone, the end record still pointing at them
    with pytest.raises(ParseError, match="damaged zip"):
        ZippedZarrParser()(f"file://{cut}", registry)


def test_zip_on_s3(tmp_path, s3_bucket, s3_env):
    path = write_store(tmp_path / "s.zarr.zip", 3)
    bucket, client = s3_bucket
    client.upload_file(path, bucket, "stores/s.zarr.zip")
    url = f"s3://{bucket}/stores/s.zarr.zip"
    vds = open_virtual_dataset(url, loadable_variables=["time"])
    assert set(vds.t.data.manifest.urls) == {url}
    xr.testing.assert_identical(vds.load(), zarr_read(path))


def test_registered_with_the_parsers():
    from vzdask.parsers import PARSERS, IcechunkParser

    assert ZippedZarrParser in PARSERS and IcechunkParser in PARSERS


def test_a_small_zip_costs_no_request_after_detection(tmp_path, monkeypatch):
    """Detection reads the first 64 KiB; a zip that small is parsed from those bytes."""
    path = write_store(tmp_path / "s.zarr.zip", 3)
    calls = count_reads(monkeypatch)
    vds = open_virtual_dataset(path, loadable_variables=["time"])
    assert calls == []
    xr.testing.assert_identical(vds.load(), zarr_read(path))
    ZippedZarrParser()(f"file://{path}", ObjectStoreRegistry.default())  # not opened before: its own reads
    assert calls == [("end", 1), ("ranges", 6)]


def test_bytes_after_the_archive(tmp_path):
    """Trailing bytes after the end record (zipfile reads such zips too)."""
    path = write_store(tmp_path / "s.zarr.zip", 3)
    padded = tmp_path / "padded.zarr.zip"
    padded.write_bytes(open(path, "rb").read() + b"\0" * 100)
    with zipfile.ZipFile(padded) as archive:
        assert archive.read("t/c/0/0")
    xr.testing.assert_identical(vz_read(ZippedZarrParser()(f"file://{padded}", ObjectStoreRegistry.default())),
                                zarr_read(path))


def test_empty_and_missing_files(tmp_path):
    from vzdask.object_io import read_end

    registry = ObjectStoreRegistry.default()
    empty = tmp_path / "empty.zarr.zip"
    empty.write_bytes(b"")
    with pytest.raises(ParseError, match=r"not a zip file \(0 bytes"):
        ZippedZarrParser()(f"file://{empty}", registry)
    store, path = registry.resolve(f"file://{empty}")
    assert read_end(store, path, 100, url=f"file://{empty}") == (b"", 0)
    with pytest.raises(FileNotFoundError):
        ZippedZarrParser()(f"file://{tmp_path}/missing.zarr.zip", registry)
