"""ManifestStore against zarr's own store test suite, ``zarr.testing.store.StoreTests``.

StoreTests writes the data each test reads through a ``set`` hook that goes
around the store's API. A ManifestStore's contents are a ManifestGroup, so
here the hook is a small *backend model*: it interprets the key it is given
in ManifestStore's key space, records the value, builds the ManifestGroup
that holds it and points the store at it:

* ``<array>/c/<i>/<j>`` (default chunk key encoding, ``/`` separator),
  ``<array>/c.<i>.<j>`` (default, ``.``) and ``<array>/<i>.<j>`` (v2, ``.``)
  are chunks of a uint8 array (one element per chunk) at ``<array>``; its
  ``zarr.json`` and those of its ancestor groups exist with it. ``c/0`` is
  chunk 0 of array ``c``, ``foo/c/0.0`` chunk (0, 0) of array ``foo/c``,
  ``foo/0/0`` chunk 0 of array ``foo/0``.
* ``<group>/zarr.json`` holds a group if the value is the group document zarr
  itself writes (any attributes); the store serves exactly those bytes back.

Each test class runs twice: with every chunk inlined in the manifest, and
with every non-empty chunk a virtual reference into a file (at a nonzero
offset, with other bytes after it, so a read that ignores the reference's
offset or length returns wrong bytes).

What cannot be expressed this way, and what the tests do about it:

* Empty values (``b""``): a manifest refuses zero-length chunks (no encoded
  zarr chunk is empty), so the ``b""`` cases of ``test_get`` and
  ``test_getsize`` are skipped by the hook; the listing tests, whose values
  do not matter, use one-byte values instead.
* Keys outside that key space (``"foo"``, ``"k"``, ``"0"`` .. ``"9"``,
  ``"foo/bar/foobar_first_child"``) and arbitrary bytes at ``zarr.json`` keys
  (``b"bar"``): a ManifestStore cannot hold them. The tests that use them are
  rewritten with the same checks over keys it can hold (docstrings say what
  was renamed); the hook skips, naming the key, if an upstream test this file
  does not know yet asks for one.
* A ManifestStore is never empty: its root group's ``zarr.json`` always
  exists. Tests that start from "the store lists nothing" start from
  "the store lists only ``zarr.json``".
* Writing: a ManifestStore is read-only. Every upstream test that writes
  through the store checks here that the write raises ``ReadOnlyStoreError``
  (a ``PermissionError``) and changes nothing. zarr's own read-only stores
  raise ``ValueError("store was opened in read-only mode ...")`` instead;
  vzdask's error family makes this one a PermissionError on purpose.
* The synchronous store surface (``get_sync``/``set_sync``/``delete_sync``):
  ManifestStore does not implement it (zarr reads it through the async
  methods), so StoreTests skips those tests itself ("store does not implement
  SupportsGetSync" / "SupportsSetSync" / "SupportsDeleteSync").
"""

from __future__ import annotations

import json
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from zarr.abc.store import OffsetByteRequest, RangeByteRequest, SuffixByteRequest
from zarr.core.buffer import Buffer, cpu, default_buffer_prototype
from zarr.core.group import GroupMetadata
from zarr.core.metadata.v3 import ArrayV3Metadata
from zarr.core.sync import _collect_aiterator, sync
from zarr.storage import MemoryStore
from zarr.storage._utils import _normalize_byte_range_index
from zarr.testing.store import StoreTests

from vzdask import ChunkManifest, ManifestArray, ManifestGroup, ManifestStore, ObjectStoreRegistry
from vzdask.errors import ReadOnlyStoreError

PROTO = default_buffer_prototype()


@pytest.fixture
def anyio_backend() -> str:
    """StoreTests is async; anyio's pytest plugin runs it on asyncio."""
    return "asyncio"


# --------------------------------------------------------------------------- #
# the backend model the ``set`` hook writes
# --------------------------------------------------------------------------- #


class Inexpressible(Exception):
    """A key/value a ManifestStore cannot hold."""


def group_document(attributes: dict[str, Any] | None = None) -> bytes:
    """The zarr.json zarr itself writes for a v3 group with these attributes."""
    return GroupMetadata(attributes=dict(attributes or {}), zarr_format=3).to_buffer_dict(PROTO)["zarr.json"].to_bytes()


def array_metadata(grid: tuple[int, ...], encoding: tuple[str, str]) -> ArrayV3Metadata:
    """A uint8 array with one element per chunk, so its chunk grid is ``grid``."""
    name, separator = encoding
    return ArrayV3Metadata.from_dict(
        {
            "zarr_format": 3,
            "node_type": "array",
            "shape": list(grid),
            "data_type": "uint8",
            "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [1] * len(grid)}},
            "chunk_key_encoding": {"name": name, "configuration": {"separator": separator}},
            "fill_value": 0,
            "codecs": [{"name": "bytes"}],
            "attributes": {},
        }
    )


_INDEX = re.compile(r"0|[1-9][0-9]*")  # canonical chunk indices only: no "01", "+1"


def _indices(parts: list[str]) -> tuple[int, ...] | None:
    if all(_INDEX.fullmatch(p) for p in parts):
        return tuple(int(p) for p in parts)
    return None


def place(key: str) -> tuple[str, str, Any, Any]:
    """``("document", path, None, None)`` or ``("chunk", array_path, encoding, index)`` for ``key``."""
    parts = key.split("/")
    if "" in parts:
        raise Inexpressible(f"{key!r} has an empty path component")
    if parts[-1] == "zarr.json":
        return ("document", "/".join(parts[:-1]), None, None)
    # default encoding, "/" separator: <array>/c/<i>/<j>... (the array cannot be the root group)
    for k in range(len(parts) - 1, 0, -1):
        if parts[k] == "c":
            index = _indices(parts[k + 1 :])
            if index is not None:
                return ("chunk", "/".join(parts[:k]), ("default", "/"), index)
            break
    if len(parts) > 1:
        array_path, last = "/".join(parts[:-1]), parts[-1].split(".")
        if last[0] == "c" and len(last) > 1 and (index := _indices(last[1:])) is not None:
            return ("chunk", array_path, ("default", "."), index)
        if (index := _indices(last)) is not None:
            return ("chunk", array_path, ("v2", "."), index)
    raise Inexpressible(
        f"{key!r} is neither a zarr.json document nor a chunk key of an array below the root group"
    )


@dataclass
class _Chunk:
    data: bytes
    ref: tuple[str, int, int] | None  # (url, offset, length) when the bytes live in a file


@dataclass
class _Array:
    encoding: tuple[str, str]
    ndim: int
    chunks: dict[tuple[int, ...], _Chunk] = field(default_factory=dict)

    @property
    def grid(self) -> tuple[int, ...]:
        return tuple(max(ix[d] for ix in self.chunks) + 1 for d in range(self.ndim))


class Backend:
    """Group attributes and chunk bytes, from which the store's ManifestGroup is built."""

    def __init__(self, blob_dir: Path | None) -> None:
        self.blob_dir = blob_dir  # None: chunks are inlined; else each chunk's bytes go to a file there
        self.groups: dict[str, dict[str, Any]] = {"": {}}
        self.arrays: dict[str, _Array] = {}

    def put(self, key: str, data: bytes) -> None:
        kind, path, encoding, index = place(key)
        if kind == "document":
            try:
                document = json.loads(data)
            except ValueError:
                document = None
            if not (isinstance(document, dict) and document.get("node_type") == "group"):
                raise Inexpressible(f"{key!r}: a ManifestStore generates its zarr.json documents; {data[:20]!r} is none")
            if group_document(document.get("attributes")) != data:
                raise Inexpressible(f"{key!r}: not the group document zarr writes")
            self.groups[path] = dict(document.get("attributes") or {})
            return
        if not data:
            raise Inexpressible(f"{key!r}: a manifest holds no empty chunk (it refuses zero-length chunks)")
        array = self.arrays.setdefault(path, _Array(encoding, len(index)))
        if (array.encoding, array.ndim) != (encoding, len(index)):
            raise Inexpressible(f"{key!r} does not fit array {path!r} ({array.encoding}, {array.ndim}-d)")
        array.chunks[index] = _Chunk(data, self._write_blob(data))

    def _write_blob(self, data: bytes) -> tuple[str, int, int] | None:
        if self.blob_dir is None:
            return None
        n = len(list(self.blob_dir.iterdir()))
        head, tail = b"\xee" * (5 + n % 7), b"\xdd" * 9
        blob = self.blob_dir / f"chunk-{n}.bin"
        blob.write_bytes(head + data + tail)
        return blob.as_uri(), len(head), len(data)

    def _group_paths(self) -> set[str]:
        paths = set()
        for path in [*self.groups, *self.arrays]:
            parts = path.split("/") if path else []
            paths.update("/".join(parts[:i]) for i in range(len(parts)))
        paths.update(self.groups)
        clash = paths & set(self.arrays)
        if clash:
            raise Inexpressible(f"{sorted(clash)} would be both an array and a group")
        return paths

    def build(self) -> ManifestGroup:
        groups = self._group_paths()

        def parent(path: str) -> str:
            return path.rsplit("/", 1)[0] if "/" in path else ""

        def make(path: str) -> ManifestGroup:
            return ManifestGroup(
                arrays={p.rsplit("/", 1)[-1]: self._manifest_array(p) for p in self.arrays if parent(p) == path},
                groups={p.rsplit("/", 1)[-1]: make(p) for p in groups if p and parent(p) == path},
                attributes=self.groups.get(path, {}),
            )

        try:
            return make("")
        except ValueError as err:  # e.g. a reserved node name
            raise Inexpressible(str(err)) from None

    def _manifest_array(self, path: str) -> ManifestArray:
        array = self.arrays[path]
        grid = array.grid
        paths = np.full(grid, "", dtype=object)
        offsets = np.zeros(grid, np.uint64)
        lengths = np.zeros(grid, np.uint64)
        inlined = {}
        for index, chunk in array.chunks.items():
            if chunk.ref is None:
                inlined[index] = chunk.data
            else:
                paths[index], offsets[index], lengths[index] = chunk.ref
        manifest = ChunkManifest.from_arrays(paths=paths, offsets=offsets, lengths=lengths, inlined=inlined or None)
        return ManifestArray(array_metadata(grid, array.encoding), manifest)

    def read(self, key: str) -> bytes | None:
        """What the store must hold at ``key``, from the model (no store method)."""
        kind, path, encoding, index = place(key)
        if kind == "chunk":
            array = self.arrays.get(path)
            if array is None or (array.encoding, array.ndim) != (encoding, len(index)) or index not in array.chunks:
                return None
            return array.chunks[index].data
        if path in self.arrays:
            return array_metadata(self.arrays[path].grid, self.arrays[path].encoding).to_buffer_dict(PROTO)[
                "zarr.json"
            ].to_bytes()
        if path in self._group_paths():
            return group_document(self.groups.get(path))
        return None


def install(store: ManifestStore, group: ManifestGroup) -> None:
    """Point ``store`` at ``group``: the way round the (read-only) store API the ``set`` hook takes."""
    assert isinstance(store.__dict__.get("_metadata_cache"), dict) and "_group" in store.__dict__
    store._group = group
    store._metadata_cache.clear()


async def listed(agen) -> list[str]:
    return sorted(await _collect_aiterator(agen))


async def contents(store: ManifestStore) -> dict[str, bytes]:
    """Every listed key and its bytes, through the store."""
    return {k: (await store.get(k, PROTO)).to_bytes() for k in await listed(store.list())}


# --------------------------------------------------------------------------- #
# the test classes
# --------------------------------------------------------------------------- #


@pytest.mark.anyio
@pytest.mark.usefixtures("anyio_backend")
class _ManifestStoreTests(StoreTests[ManifestStore, cpu.Buffer]):
    store_cls = ManifestStore
    buffer_cls = cpu.Buffer
    virtual: bool

    @pytest.fixture(autouse=True)
    def _backend_dir(self, tmp_path: Path) -> None:
        self._blob_dir = tmp_path / "blobs"
        self._blob_dir.mkdir()
        self._backends: dict[int, Backend] = {}

    def backend(self, store: ManifestStore) -> Backend:
        return self._backends.setdefault(id(store), Backend(self._blob_dir if self.virtual else None))

    @pytest.fixture
    def store_kwargs(self) -> dict[str, Any]:
        return {"group": ManifestGroup(), "registry": ObjectStoreRegistry()}

    async def set(self, store: ManifestStore, key: str, value: Buffer) -> None:
        backend = self.backend(store)
        try:
            backend.put(key, value.to_bytes())
            group = backend.build()
        except Inexpressible as err:
            pytest.skip(f"a ManifestStore cannot hold this test's data: {err}")
        install(store, group)

    async def get(self, store: ManifestStore, key: str) -> Buffer:
        data = self.backend(store).read(key)
        assert data is not None, f"{key!r} is not in the backend"
        return self.buffer_cls.from_bytes(data)

    # -- the abstract tests ---------------------------------------------------

    def test_store_repr(self, store: ManifestStore) -> None:
        assert repr(store) == f"ManifestStore<0 arrays, registry={store.registry!r}>"
        sync(self.set(store, "a/c/0", self.buffer_cls.from_bytes(b"x")))
        sync(self.set(store, "g/b/0", self.buffer_cls.from_bytes(b"y")))
        assert repr(store) == f"ManifestStore<2 arrays, registry={store.registry!r}>"

    def test_store_supports_writes(self, store: ManifestStore) -> None:
        assert not store.supports_writes

    def test_store_supports_listing(self, store: ManifestStore) -> None:
        assert store.supports_listing

    def test_store_supports_deletes(self, store: ManifestStore) -> None:
        assert not store.supports_deletes

    def test_no_sync_io_surface(self, store: ManifestStore) -> None:
        """Why StoreTests skips its *_sync tests: zarr reads a ManifestStore through the async methods."""
        from zarr.abc.store import SupportsDeleteSync, SupportsGetSync, SupportsSetSync, _store_supports_sync_io

        assert not isinstance(store, (SupportsGetSync, SupportsSetSync, SupportsDeleteSync))
        assert not _store_supports_sync_io(store)

    # -- read-only counterparts of StoreTests' writable-store tests ----------

    def test_store_read_only(self, store: ManifestStore) -> None:
        """StoreTests: a store opened with defaults is writable. A ManifestStore is read-only, and stays so."""
        assert store.read_only is True
        with pytest.raises(AttributeError):
            store.read_only = False  # type: ignore[misc]
        assert store.read_only is True

    @pytest.mark.parametrize("read_only", [True, False])
    async def test_store_open_read_only(self, open_kwargs: dict[str, Any], read_only: bool) -> None:
        open_kwargs["read_only"] = read_only
        if not read_only:
            with pytest.raises(ReadOnlyStoreError, match="read-only"):
                await self.store_cls.open(**open_kwargs)
            return
        store = await self.store_cls.open(**open_kwargs)
        assert store._is_open
        assert store.read_only is True

    async def test_read_only_store_raises(self, open_kwargs: dict[str, Any]) -> None:
        """StoreTests expects zarr's ValueError("store was opened in read-only mode ..."); vzdask raises ReadOnlyStoreError."""
        store = await self.store_cls.open(**{**open_kwargs, "read_only": True})
        assert store.read_only
        with pytest.raises(ReadOnlyStoreError, match="cannot write 'foo': a ManifestStore is read-only"):
            await store.set("foo", self.buffer_cls.from_bytes(b"bar"))
        with pytest.raises(ReadOnlyStoreError, match="cannot delete 'foo': a ManifestStore is read-only"):
            await store.delete("foo")
        assert issubclass(ReadOnlyStoreError, PermissionError)

    async def test_with_read_only_store(self, open_kwargs: dict[str, Any]) -> None:
        store = await self.store_cls.open(**{**open_kwargs, "read_only": True})
        await self.set(store, "a/c/1", self.buffer_cls.from_bytes(b"\x01\x02\x03"))
        with pytest.raises(ReadOnlyStoreError):
            await store.set("a/c/1", self.buffer_cls.from_bytes(b"bar"))

        # No writable copy: NotImplementedError is how a zarr store says so (zarr.from_array relies on it).
        with pytest.raises(NotImplementedError) as info:
            store.with_read_only(read_only=False)
        assert isinstance(info.value, ReadOnlyStoreError)

        reader = store.with_read_only(read_only=True)
        assert reader.read_only and reader == store
        assert (await reader.get("a/c/1", PROTO, RangeByteRequest(1, 3))).to_bytes() == b"\x02\x03"
        for write in (reader.set("a/c/1", self.buffer_cls.from_bytes(b"bar")), reader.delete("a/c/1")):
            with pytest.raises(ReadOnlyStoreError, match="read-only"):
                await write
        assert (await store.get("a/c/1", PROTO)).to_bytes() == b"\x01\x02\x03"

    async def test_serializable_store(self, store: ManifestStore) -> None:
        """StoreTests round-trips a write through the unpickled store; here its reads, and its refusal to write."""
        await self.set(store, "x/c/0", self.buffer_cls.from_bytes(b"\x01\x02\x03\x04"))
        await self.set(store, "g/zarr.json", self.buffer_cls.from_bytes(group_document({"k": [1, 2]})))
        new_store: ManifestStore = pickle.loads(pickle.dumps(store))
        assert new_store == store and new_store is not store
        assert new_store.read_only == store.read_only
        assert await contents(new_store) == await contents(store)
        assert sorted(await contents(new_store)) == ["g/zarr.json", "x/c/0", "x/zarr.json", "zarr.json"]
        assert (await new_store.get("x/c/0", PROTO, SuffixByteRequest(3))).to_bytes() == b"\x02\x03\x04"
        assert (await new_store.get("g/zarr.json", PROTO)).to_bytes() == group_document({"k": [1, 2]})
        with pytest.raises(ReadOnlyStoreError):
            await new_store.set("x/c/0", self.buffer_cls.from_bytes(b"\x00"))

    @pytest.mark.parametrize("key", ["zarr.json", "c/0", "foo/c/0.0", "foo/0/0"])
    @pytest.mark.parametrize("data", [b"\x01\x02\x03\x04", b""])
    async def test_set(self, store: ManifestStore, key: str, data: bytes) -> None:
        """The write StoreTests.test_set makes is refused, and the value there stays what it was."""
        if key != "zarr.json":
            await self.set(store, key, self.buffer_cls.from_bytes(b"old value"))
        before = await contents(store)
        assert key in before
        with pytest.raises(ReadOnlyStoreError, match="read-only"):
            await store.set(key, self.buffer_cls.from_bytes(data))
        assert await contents(store) == before
        assert (await store.get(key, PROTO)).to_bytes() == (await self.get(store, key)).to_bytes()

    async def test_set_not_open(self, store_not_open: ManifestStore) -> None:
        assert not store_not_open._is_open
        with pytest.raises(ReadOnlyStoreError, match="read-only"):
            await store_not_open.set("c/0", self.buffer_cls.from_bytes(b"\x01\x02\x03\x04"))
        assert await store_not_open.get("c/0", PROTO) is None
        assert await listed(store_not_open.list()) == ["zarr.json"]

    async def test_set_many(self, store: ManifestStore) -> None:
        keys = ["zarr.json", "c/0", "foo/c/0.0", "foo/0/0"]
        with pytest.raises(ReadOnlyStoreError, match="read-only"):
            await store._set_many([(k, self.buffer_cls.from_bytes(k.encode())) for k in keys])
        assert await contents(store) == {"zarr.json": group_document()}

    async def test_set_if_not_exists(self, store: ManifestStore) -> None:
        """Key ``a/0`` for ``k``. Refused whether or not the key exists, as zarr's read-only stores refuse it."""
        await self.set(store, "a/0", self.buffer_cls.from_bytes(b"0000"))
        new = self.buffer_cls.from_bytes(b"1111")
        for key in ("a/0", "a/1"):
            with pytest.raises(ReadOnlyStoreError, match="read-only"):
                await store.set_if_not_exists(key, new)
        assert (await store.get("a/0", PROTO)).to_bytes() == b"0000"
        assert await store.get("a/1", PROTO) is None

    async def test_clear(self, store: ManifestStore) -> None:
        """Key ``a/0`` for ``key``."""
        await self.set(store, "a/0", self.buffer_cls.from_bytes(b"something"))
        with pytest.raises(ReadOnlyStoreError, match="read-only"):
            await store.clear()
        assert not await store.is_empty("")
        assert (await store.get("a/0", PROTO)).to_bytes() == b"something"

    async def test_delete(self, store: ManifestStore) -> None:
        await self.set(store, "foo/zarr.json", self.buffer_cls.from_bytes(group_document({"x": 1})))
        await self.set(store, "foo/a/c/0", self.buffer_cls.from_bytes(b"chunk"))
        for key in ("foo/zarr.json", "foo/a/c/0"):
            assert await store.exists(key)
            with pytest.raises(ReadOnlyStoreError, match="read-only"):
                await store.delete(key)
            assert await store.exists(key)
        assert (await store.get("foo/a/c/0", PROTO)).to_bytes() == b"chunk"

    async def test_delete_dir(self, store: ManifestStore) -> None:
        await self.set(store, "zarr.json", self.buffer_cls.from_bytes(group_document({"root": True})))
        await self.set(store, "foo-bar/zarr.json", self.buffer_cls.from_bytes(group_document()))
        await self.set(store, "foo/c/0", self.buffer_cls.from_bytes(b"chunk"))
        before = await contents(store)
        assert sorted(before) == ["foo-bar/zarr.json", "foo/c/0", "foo/zarr.json", "zarr.json"]
        for prefix in ("foo", ""):
            with pytest.raises(ReadOnlyStoreError, match="read-only"):
                await store.delete_dir(prefix)
        assert await contents(store) == before

    async def test_delete_nonexistent_key_does_not_raise(self, store: ManifestStore) -> None:
        """A read-only store refuses every delete before looking (zarr's read-only stores too)."""
        with pytest.raises(ReadOnlyStoreError, match="read-only"):
            await store.delete("nonexistent_key")

    # -- StoreTests' read tests, over keys a ManifestStore can hold ----------

    async def test_get_many(self, store: ManifestStore) -> None:
        """Keys ``a/0`` .. ``a/9`` (chunks of array ``a``) for ``0`` .. ``9``: only zarr.json lives at the root."""
        keys = tuple(f"a/{i}" for i in range(10))
        values = tuple(k.encode() for k in keys)
        for k, v in zip(keys, values, strict=True):
            await self.set(store, k, self.buffer_cls.from_bytes(v))
        observed_buffers = await _collect_aiterator(
            store._get_many(zip(keys, (PROTO,) * len(keys), (None,) * len(keys), strict=True))
        )
        observed_kvs = sorted((k, b.to_bytes()) for k, b in observed_buffers)
        assert observed_kvs == sorted(zip(keys, values, strict=True))

    async def test_getsize_prefix(self, store: ManifestStore) -> None:
        """The same keys, set through the backend; the sizes of the zarr.json documents under ``c/`` count too."""
        data_buf = self.buffer_cls.from_bytes(b"\x01\x02\x03\x04")
        keys = ["c/0/0", "c/0/1", "c/1/0", "c/1/1"]  # chunks 0 and 1 of arrays c/0 and c/1 (group c)
        sibling_keys = ["cc/0"]
        with pytest.raises(ReadOnlyStoreError):
            await store._set_many([(k, data_buf) for k in keys + sibling_keys])
        for k in keys + sibling_keys:
            await self.set(store, k, data_buf)
        documents = ["c/zarr.json", "c/0/zarr.json", "c/1/zarr.json"]
        expected = len(data_buf) * len(keys) + sum([len(await self.get(store, d)) for d in documents])
        assert await store.getsize_prefix("c") == expected
        assert await store.getsize_prefix("cc") == len(data_buf) + len(await self.get(store, "cc/zarr.json"))

    @pytest.mark.parametrize(
        "key_ranges",
        [
            [],
            [("zarr.json", RangeByteRequest(0, 2))],
            [("c/0", RangeByteRequest(0, 2)), ("zarr.json", None)],
            [
                ("c/0/0", RangeByteRequest(0, 2)),
                ("c/0/1", SuffixByteRequest(2)),
                ("c/0/2", OffsetByteRequest(2)),
            ],
        ],
    )
    async def test_get_partial_values(self, store: ManifestStore, key_ranges: list) -> None:
        """The root zarr.json is the group document the store generates, not ``b"zarr.json"``; results are
        compared with the bytes expected, not only with ``get``."""
        for key, _ in key_ranges:
            if key != "zarr.json":
                await self.set(store, key, self.buffer_cls.from_bytes(key.encode()))
        observed = await store.get_partial_values(prototype=PROTO, key_ranges=(kr for kr in key_ranges))
        assert len(observed) == len(key_ranges)
        for (key, byte_range), obs in zip(key_ranges, observed, strict=True):
            full = await self.get(store, key)
            if key == "zarr.json":
                assert full.to_bytes() == group_document()
            start, stop = _normalize_byte_range_index(full, byte_range)
            assert obs is not None
            assert obs.to_bytes() == full.to_bytes()[start:stop]
            assert obs.to_bytes() == (await store.get(key, PROTO, byte_range)).to_bytes()

    async def test_exists(self, store: ManifestStore) -> None:
        """A group document for ``b"bar"``; then chunk keys: present, missing inside the grid, outside it."""
        assert not await store.exists("foo")
        assert not await store.exists("foo/zarr.json")
        with pytest.raises(ReadOnlyStoreError):
            await store.set("foo/zarr.json", self.buffer_cls.from_bytes(b"bar"))
        assert not await store.exists("foo/zarr.json")
        await self.set(store, "foo/zarr.json", self.buffer_cls.from_bytes(group_document({"a": "b"})))
        assert await store.exists("foo/zarr.json")
        assert not await store.exists("foo")  # a directory is not a key
        await self.set(store, "foo/arr/c/2", self.buffer_cls.from_bytes(b"x"))
        assert await store.exists("foo/arr/c/2")
        assert await store.exists("foo/arr/zarr.json")
        assert not await store.exists("foo/arr/c/1")  # in the grid (shape 3), but no bytes
        assert not await store.exists("foo/arr/c/3")  # outside the grid
        assert not await store.exists("foo/arr")

    async def test_is_empty(self, store: ManifestStore) -> None:
        """``foo/c/0`` (chunk 0 of array foo) for ``foo/bar``; the root group's document is always there."""
        assert not await store.is_empty("")
        assert await listed(store.list()) == ["zarr.json"]
        assert await store.is_empty("foo")
        await self.set(store, "foo/c/0", self.buffer_cls.from_bytes(b"something"))
        assert not await store.is_empty("")
        assert await store.is_empty("fo")
        assert not await store.is_empty("foo/")
        assert not await store.is_empty("foo")
        assert await store.is_empty("spam/")

    async def test_list(self, store: ManifestStore) -> None:
        """The same keys (``foo/zarr.json`` is the document of the array ``foo/c/<i>`` belong to), plus the root's;
        ``b"\\x00"`` for ``b""``."""
        assert await _collect_aiterator(store.list()) == ("zarr.json",)
        data = self.buffer_cls.from_bytes(b"\x00")
        store_dict = {"foo/zarr.json": data, **{f"foo/c/{idx}": data for idx in range(10)}}
        with pytest.raises(ReadOnlyStoreError):
            await store._set_many(store_dict.items())
        for key in store_dict:
            if key != "foo/zarr.json":
                await self.set(store, key, data)
        assert await listed(store.list()) == sorted([*store_dict, "zarr.json"])
        for idx in range(10):
            assert (await store.get(f"foo/c/{idx}", PROTO)).to_bytes() == b"\x00"

    async def test_list_prefix(self, store: ManifestStore) -> None:
        """The same keys, holding group documents instead of ``b""``."""
        prefixes = ("", "a/", "a/b/", "a/b/c/")
        store_dict = {p + "zarr.json": self.buffer_cls.from_bytes(group_document({"at": p})) for p in prefixes}
        with pytest.raises(ReadOnlyStoreError):
            await store._set_many(store_dict.items())
        for key, value in store_dict.items():
            await self.set(store, key, value)
        for prefix in prefixes:
            observed = tuple(await listed(store.list_prefix(prefix)))
            expected = tuple(sorted(k for k in store_dict if k.startswith(prefix)))
            assert observed == expected
        for key, value in store_dict.items():
            assert (await store.get(key, PROTO)).to_bytes() == value.to_bytes()

    async def test_list_empty_path(self, store: ManifestStore) -> None:
        """The same keys, plus the documents of the groups they imply (the root and ``foo``) and of array ``foo/baz``;
        ``b"\\x00"`` for ``b""``."""
        data = self.buffer_cls.from_bytes(b"\x00")
        store_dict = {"foo/bar/zarr.json": data, "foo/bar/c/1": data, "foo/baz/c/0": data}
        for key in ("foo/bar/c/1", "foo/baz/c/0"):
            await self.set(store, key, data)
        everything = sorted([*store_dict, "zarr.json", "foo/zarr.json", "foo/baz/zarr.json"])
        assert await listed(store.list()) == everything
        assert await listed(store.list_prefix("")) == everything
        assert await listed(store.list_prefix("foo/bar/")) == ["foo/bar/c/1", "foo/bar/zarr.json"]

    async def test_list_dir(self, store: ManifestStore) -> None:
        """Roots ``foo`` (an array: it cannot also hold ``foo/bar``) and ``bar`` (a group: a child array instead of
        the file ``foobar_first_child``, a child group as in StoreTests, and its own document)."""
        roots_and_keys: list[tuple[str, dict[str, bytes | None]]] = [
            # value None: a document that exists with the node the other keys create
            ("foo", {"foo/zarr.json": None, "foo/c/1": b"\x01"}),
            (
                "bar",
                {
                    "bar/zarr.json": None,
                    "bar/first_child/c/0": b"1",
                    "bar/second_child/zarr.json": group_document({"n": 2}),
                },
            ),
        ]
        assert await _collect_aiterator(store.list_dir("")) == ("zarr.json",)
        for root, store_dict in roots_and_keys:
            assert await _collect_aiterator(store.list_dir(root)) == ()
            for key, value in store_dict.items():
                if value is not None:
                    await self.set(store, key, self.buffer_cls.from_bytes(value))
            keys_expected = {k.removeprefix(f"{root}/").split("/")[0] for k in store_dict}
            assert sorted(await _collect_aiterator(store.list_dir(root))) == sorted(keys_expected)
            assert sorted(await _collect_aiterator(store.list_dir(f"{root}/"))) == sorted(keys_expected)
        assert sorted(await _collect_aiterator(store.list_dir(""))) == ["bar", "foo", "zarr.json"]
        assert await _collect_aiterator(store.list_dir("bar/first_child/c")) == ("0",)

    # -- beyond StoreTests ----------------------------------------------------

    async def test_matches_memory_store(self, store: ManifestStore) -> None:
        """Every read method answers what zarr's own MemoryStore answers when it holds the same keys and bytes."""
        chunks = {
            "g/a/c/0/0": b"\x00\x01\x02\x03\x04\x05",
            "g/a/c/1/2": b"\x10",
            "g/a/c/0/2": b"\x01\x02",
            "b/3": b"\x07\x08\x09",
            "b/0": b"\xff" * 40,
            "g/h/s/c": b"scalar",  # a 0-d array
            "g/dot/c.1.0": b"dotted",
        }
        for key, value in chunks.items():
            await self.set(store, key, self.buffer_cls.from_bytes(value))
        await self.set(store, "g/zarr.json", self.buffer_cls.from_bytes(group_document({"title": "g"})))
        for _, array in store.group.walk_arrays():  # the backend built what this class is about
            count = array.manifest.count()
            present = int(np.count_nonzero(array.manifest.states))
            assert count["virtual" if self.virtual else "inlined"] == present > 0
            assert count["inlined" if self.virtual else "virtual"] == 0
        keys = await listed(store.list())
        reference = MemoryStore({k: self.buffer_cls.from_bytes((await self.get(store, k)).to_bytes()) for k in keys})
        assert keys == await listed(reference.list())
        assert set(chunks) < set(keys)
        requests = [
            None,
            RangeByteRequest(0, 1),
            RangeByteRequest(1, 4),
            RangeByteRequest(2, 2),
            RangeByteRequest(10, 20),
            OffsetByteRequest(0),
            OffsetByteRequest(3),
            OffsetByteRequest(100),
            SuffixByteRequest(1),
            SuffixByteRequest(5),
            SuffixByteRequest(1000),
        ]
        absent = ["g/a/c/1/0", "g/a/c/2/0", "g/a", "g", "nope", "b/4", "b/03", "g/zarr.jso", "g/h/s/c/0", ""]
        for key in keys + absent:
            for byte_range in requests:
                ours = await store.get(key, PROTO, byte_range)
                theirs = await reference.get(key, PROTO, byte_range)
                assert (ours and ours.to_bytes()) == (theirs and theirs.to_bytes()), (key, byte_range)
            assert await store.exists(key) == await reference.exists(key), key
            if key in keys:
                assert await store.getsize(key) == await reference.getsize(key), key
            else:
                with pytest.raises(FileNotFoundError):
                    await store.getsize(key)
        for prefix in ["", "g", "g/", "g/a", "g/a/", "g/a/c", "g/a/c/0", "g/h/s", "b", "nope", "g/dot"]:
            assert await listed(store.list_dir(prefix)) == await listed(reference.list_dir(prefix)), prefix
            assert await listed(store.list_prefix(prefix)) == await listed(reference.list_prefix(prefix)), prefix
            assert await store.is_empty(prefix) == await reference.is_empty(prefix), prefix
            assert await store.getsize_prefix(prefix) == await reference.getsize_prefix(prefix), prefix
        pairs = [(k, r) for k in keys[:5] + absent[:3] for r in requests[:4]]
        ours = await store.get_partial_values(PROTO, pairs)
        theirs = await reference.get_partial_values(PROTO, pairs)
        assert [b and b.to_bytes() for b in ours] == [b and b.to_bytes() for b in theirs]

    def test_zarr_reads_and_copies(self, store: ManifestStore) -> None:
        """zarr reads the arrays the backend builds, and zarr.from_array copies one out of a ManifestStore
        (it asks the source store for a writable copy and needs NotImplementedError when there is none)."""
        for i, value in enumerate([7, 8, 9]):
            sync(self.set(store, f"a/{i}", self.buffer_cls.from_bytes(bytes([value]))))
        source = zarr.open_group(store, mode="r")["a"]
        np.testing.assert_array_equal(source[...], np.array([7, 8, 9], dtype="uint8"), strict=True)
        copy = zarr.from_array(MemoryStore(), data=source, overwrite=True)
        np.testing.assert_array_equal(copy[...], source[...], strict=True)


class TestManifestStoreInlined(_ManifestStoreTests):
    """Every chunk inlined in the manifest."""

    virtual = False


class TestManifestStoreVirtual(_ManifestStoreTests):
    """Every non-empty chunk a virtual reference into a file (read through the registry)."""

    virtual = True
