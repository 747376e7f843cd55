"""vzdask.object_io: ranged reads, whole objects, sizes and run_sync against real obstore stores.

Every test runs on a LocalStore over ``tmp_path``, a MemoryStore and an
S3Store talking to the moto server of ``conftest.py``: the errors must be
the same whichever store answers.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import obstore
import pytest
from obstore.store import LocalStore, MemoryStore, S3Store

from vzdask.errors import ChunkReadError, VzdaskError
from vzdask.object_io import (
    get,
    get_async,
    get_range,
    head_size,
    head_size_async,
    is_in_process,
    is_panic,
    list_prefixes_async,
    list_sizes_async,
    read_ranges,
    read_head,
    read_ranges_async,
    read_start,
    run_sync,
)

DATA = np.random.default_rng(16).integers(0, 256, 1000, dtype=np.uint8).tobytes()


@dataclass
class Objects:
    """One store, with a way to (re)write an object and the url vzdask would name it by."""

    kind: str
    store: Any
    root: str  # url of the store's root, with a trailing slash
    tmp_path: Path
    client: Any = None
    bucket: str = ""

    def put(self, path: str, data: bytes) -> str:
        """Write (or replace: a truncated object is a shorter one) ``path``; return its url."""
        if self.kind == "local":
            file = self.tmp_path / path
            file.parent.mkdir(parents=True, exist_ok=True)
            file.write_bytes(data)
        elif self.kind == "memory":
            obstore.put(self.store, path, data)
        else:
            self.client.put_object(Bucket=self.bucket, Key=path, Body=data)
        return self.url(path)

    def url(self, path: str) -> str:
        return self.root + path


@pytest.fixture(params=["local", "memory", "s3"])
def objects(request, tmp_path) -> Objects:
    if request.param == "local":
        return Objects("local", LocalStore(tmp_path), tmp_path.as_uri() + "/", tmp_path)
    if request.param == "memory":
        return Objects("memory", MemoryStore(), "memory://test/", tmp_path)
    server = request.getfixturevalue("s3_server")
    bucket, client = request.getfixturevalue("s3_bucket")
    store = S3Store(bucket, **server.store_kwargs())
    return Objects("s3", store, f"s3://{bucket}/", tmp_path, client=client, bucket=bucket)


# --------------------------------------------------------------------------- #
# correct bytes
# --------------------------------------------------------------------------- #


def test_ranges_read_the_right_bytes(objects):
    url = objects.put("dir/blob.bin", DATA)
    store = objects.store
    starts, lengths = [0, 10, 500, 990], [10, 1, 300, 10]  # adjacent, tiny, large, up to the last byte
    want = [DATA[s : s + n] for s, n in zip(starts, lengths)]
    assert [bytes(p) for p in read_ranges(store, "dir/blob.bin", starts, lengths, url=url)] == want
    assert [bytes(p) for p in read_ranges(store, "dir/blob.bin", starts, lengths, url=url, coalesce=0)] == want
    got = run_sync(read_ranges_async(store, "dir/blob.bin", starts, lengths, url=url))
    assert [bytes(p) for p in got] == want
    # one range (a plain ranged get), and none (no request at all)
    assert bytes(read_ranges(store, "dir/blob.bin", [123], [45], url=url)[0]) == DATA[123:168]
    assert bytes(get_range(store, "dir/blob.bin", 999, 1, url=url)) == DATA[999:]
    assert read_ranges(store, "dir/blob.bin", [], [], url=url) == []
    # whole objects and sizes
    assert get(store, "dir/blob.bin", url=url) == DATA
    assert run_sync(get_async(store, "dir/blob.bin", url=url)) == DATA
    assert head_size(store, "dir/blob.bin", url=url) == len(DATA)
    assert run_sync(head_size_async(store, "dir/blob.bin", url=url)) == len(DATA)


def test_read_start_gives_the_first_bytes_and_the_size_in_one_request(objects):
    url = objects.put("blob.bin", DATA)
    data, size = read_start(objects.store, "blob.bin", 256, url=url)
    assert (bytes(data), size) == (DATA[:256], len(DATA))
    data, size = read_start(objects.store, "blob.bin", 4096, url=url)  # longer than the object: all of it
    assert (bytes(data), size) == (DATA, len(DATA))
    empty = objects.put("empty.bin", b"")  # stores refuse any range of an empty object
    assert read_start(objects.store, "empty.bin", 256, url=empty) == (b"", 0)


def test_read_head_gives_a_shorter_object_whole_with_its_size(objects):
    """One plain ranged read: the size is known when the object is shorter than asked for, else None."""
    url = objects.put("blob.bin", DATA)
    data, size = read_head(objects.store, "blob.bin", 256, url=url)
    assert (bytes(data), size) == (DATA[:256], None)
    data, size = read_head(objects.store, "blob.bin", 4096, url=url)  # stores clip a range past the end
    assert (bytes(data), size) == (DATA, len(DATA))
    data, size = read_head(objects.store, "blob.bin", len(DATA), url=url)  # exactly its length: not known
    assert (bytes(data), size) == (DATA, None)
    empty = objects.put("empty.bin", b"")
    assert read_head(objects.store, "empty.bin", 256, url=empty) == (b"", 0)


def test_listings(objects):
    for path in ("a/x/0", "a/x/1", "a/y/0", "a/zarr.json"):
        objects.put(path, path.encode())
    prefixes = run_sync(list_prefixes_async(objects.store, "a", url=objects.url("a")))
    assert sorted(p.rstrip("/") for p in prefixes) == ["a/x", "a/y"]
    sizes = run_sync(list_sizes_async(objects.store, "a/x", url=objects.url("a/x")))
    assert sorted(sizes) == [("a/x/0", 5), ("a/x/1", 5)]


# --------------------------------------------------------------------------- #
# failures: one error type, messages naming url and bytes
# --------------------------------------------------------------------------- #


def test_a_truncated_object_is_a_short_read_naming_url_and_offset(objects):
    url = objects.put("blob.bin", DATA)
    store = objects.store
    objects.put("blob.bin", DATA[:600])  # truncated (or replaced) after the references were made
    # several ranges: the ones still there are fine, the one cut short is named
    with pytest.raises(ChunkReadError) as info:
        read_ranges(store, "blob.bin", [0, 500], [10, 200], url=url)
    message = str(info.value)
    assert message.startswith(f"reading {url}: short read at byte 500: got 100 of 200 bytes")
    assert "truncated" in message and "\n" not in message
    # one range, with what was being read named
    with pytest.raises(ChunkReadError) as info:
        read_ranges(store, "blob.bin", [550], [100], url=url, what="chunk 3.1 of 'tas'")
    assert str(info.value).startswith(
        f"reading chunk 3.1 of 'tas' from {url} (bytes 550..650): short read at byte 550: got 50 of 100 bytes"
    )
    with pytest.raises(ChunkReadError, match=re.escape(f"{url} (bytes 500..700)")):
        run_sync(read_ranges_async(store, "blob.bin", [500], [200], url=url, what="chunk 0"))
    assert bytes(read_ranges(store, "blob.bin", [0, 590], [10, 10], url=url)[1]) == DATA[590:600]


def test_ranges_past_the_end(objects):
    url = objects.put("small.bin", DATA[:10])
    store = objects.store
    # a range starting past the end: for several ranges obstore panics (a BaseException) on some stores
    for starts, lengths in (([20], [5]), ([0, 20], [2, 5]), ([0, 2_000_000], [2, 5])):
        for read in (read_ranges, lambda *a, **k: run_sync(read_ranges_async(*a, **k))):
            with pytest.raises(ChunkReadError) as info:
                read(store, "small.bin", starts, lengths, url=url, what="2 chunk(s) of 'x'")
            message = str(info.value)
            ranges = ", ".join(f"{s}..{s + n}" for s, n in zip(starts, lengths))
            assert message.startswith(f"reading 2 chunk(s) of 'x' from {url} (bytes {ranges}): "), message
            assert "\n" not in message and info.value.__cause__ is not None
    # ranges ending past the end come back short
    with pytest.raises(ChunkReadError, match=re.escape(f"{url}: short read at byte 8: got 2 of 5 bytes")):
        read_ranges(store, "small.bin", [0, 8], [2, 5], url=url)


def test_the_panic_is_translated():
    store = MemoryStore()
    obstore.put(store, "small.bin", DATA[:10])
    with pytest.raises(BaseException) as raw:  # what obstore itself does: not an Exception
        obstore.get_ranges(store, "small.bin", starts=[0, 20], lengths=[2, 5])
    assert is_panic(raw.value) and not isinstance(raw.value, Exception)
    with pytest.raises(ChunkReadError) as info:
        read_ranges(store, "small.bin", [0, 20], [2, 5], url="memory://test/small.bin")
    assert is_panic(info.value.__cause__)
    assert str(info.value).startswith("reading memory://test/small.bin (bytes 0..2, 20..25): ")
    assert not is_panic(info.value)


def test_a_missing_object(objects):
    url = objects.url("gone/missing.bin")
    store = objects.store
    with pytest.raises(ChunkReadError) as info:  # a reference to a missing object: a chunk that cannot be read
        read_ranges(store, "gone/missing.bin", [0, 100, 200, 300, 400], [10] * 5, url=url, what="5 chunk(s)")
    message = str(info.value)
    assert message.startswith(f"reading 5 chunk(s) from {url} (bytes 0..10, 100..110, 200..210 and 2 more): ")
    assert "not found" in message and "\n" not in message
    assert isinstance(info.value, OSError) and isinstance(info.value, VzdaskError)
    assert isinstance(info.value.__cause__, FileNotFoundError)
    # whole objects, sizes and opening a file: FileNotFoundError, as for a missing local file
    for call in (
        lambda: get(store, "gone/missing.bin", url=url),
        lambda: run_sync(get_async(store, "gone/missing.bin", url=url)),
        lambda: head_size(store, "gone/missing.bin", url=url),
        lambda: run_sync(head_size_async(store, "gone/missing.bin", url=url)),
        lambda: read_start(store, "gone/missing.bin", 256, url=url),
        lambda: read_head(store, "gone/missing.bin", 256, url=url),
    ):
        with pytest.raises(FileNotFoundError) as info:
            call()
        assert str(info.value) == f"cannot open {url}: not found"


def test_what_is_worked_out_only_when_a_read_fails(objects):
    url = objects.put("blob.bin", DATA)
    calls = []

    def what():
        calls.append(1)
        return "chunk 7 of 'v'"

    read_ranges(objects.store, "blob.bin", [0, 5], [5, 5], url=url, what=what)
    assert calls == []
    with pytest.raises(ChunkReadError, match=re.escape(f"reading chunk 7 of 'v' from {url} (bytes 990..1010)")):
        read_ranges(objects.store, "blob.bin", [990], [20], url=url, what=what)
    assert calls == [1]


# --------------------------------------------------------------------------- #
# event loops and stores
# --------------------------------------------------------------------------- #


def test_run_sync_inside_a_running_event_loop(objects):
    url = objects.put("blob.bin", DATA)

    async def both():
        return await asyncio.gather(
            read_ranges_async(objects.store, "blob.bin", [0], [4], url=url),
            get_async(objects.store, "blob.bin", url=url),
        )

    async def caller():  # e.g. Jupyter, or a zarr store method, calling synchronous vzdask code
        asyncio.get_running_loop()
        return run_sync(both())

    (piece,), whole = asyncio.run(caller())
    assert bytes(piece) == DATA[:4] and whole == DATA
    (piece,), whole = run_sync(both())  # and from plain code
    assert bytes(piece) == DATA[:4] and whole == DATA

    async def failing():
        return await read_ranges_async(objects.store, "nope.bin", [0], [4], url=objects.url("nope.bin"))

    async def caller_failing():
        return run_sync(failing())

    with pytest.raises(ChunkReadError, match=re.escape(objects.url("nope.bin"))):
        asyncio.run(caller_failing())


def test_is_in_process(objects):
    assert is_in_process(objects.store) == (objects.kind != "s3")
