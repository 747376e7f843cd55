"""ManifestStore: a read-only zarr v3 Store over a ManifestGroup.

Metadata documents are generated from the group; chunk keys are answered
from the manifests: virtual chunks by a range read through the
ObjectStoreRegistry, inlined chunks from memory, missing chunks as ``None``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from typing import Any

import numpy as np
from zarr.abc.buffer import Buffer, BufferPrototype
from zarr.abc.store import ByteRequest, OffsetByteRequest, RangeByteRequest, Store, SuffixByteRequest
from zarr.buffer import default_buffer_prototype

from vzdask._compat import GroupMetadata
from vzdask.errors import ReadOnlyStoreError
from vzdask.manifests.array import ManifestArray
from vzdask.manifests.group import ManifestGroup
from vzdask.manifests.manifest import INLINED, VIRTUAL, chunk_key
from vzdask.manifests.metadata import metadata_json
from vzdask.object_io import read_ranges_async
from vzdask.registry import ObjectStoreRegistry

METADATA_KEY = "zarr.json"


class _NoWritableCopyError(ReadOnlyStoreError, NotImplementedError):
    """``with_read_only(False)``: also a NotImplementedError, which zarr catches when a store has no writable copy."""


class ManifestStore(Store):
    """A read-only zarr v3 store whose contents are a ManifestGroup.

    Parameters
    ----------
    group : ManifestGroup
        The arrays, subgroups and attributes the store serves.
    registry : ObjectStoreRegistry, optional
        Maps the urls of virtual chunks to obstore stores. Defaults to
        ``ObjectStoreRegistry.default()``, which creates stores for
        ``file://``, ``s3://``, ``gs://`` and ``http(s)://`` urls on demand.
    read_only : bool, default True
        Accepted like every zarr store's ``read_only``; ``False`` raises
        ``ReadOnlyStoreError``.

    Examples
    --------
    >>> store = ManifestStore(group)                               # doctest: +SKIP
    >>> ds = xr.open_zarr(store, consolidated=False, zarr_format=3)  # doctest: +SKIP

    An array whose chunks differ in size along an axis (files of different
    lengths combined) has a rectilinear chunk grid, which zarr reads only
    with ``zarr.config.set({"array.rectilinear_chunks": True})``.
    """

    supports_writes = False
    supports_deletes = False
    supports_partial_writes = False
    supports_listing = True

    def __init__(
        self, group: ManifestGroup, *, registry: ObjectStoreRegistry | None = None, read_only: bool = True
    ) -> None:
        if not read_only:
            raise ReadOnlyStoreError("a ManifestStore is always read-only: it cannot be opened with read_only=False")
        if not isinstance(group, ManifestGroup):
            raise TypeError(f"group must be a ManifestGroup, not {type(group).__name__}")
        if registry is not None and not isinstance(registry, ObjectStoreRegistry):
            raise TypeError(f"registry must be an ObjectStoreRegistry, not {type(registry).__name__}")
        super().__init__(read_only=True)
        self._group = group
        self._registry = registry if registry is not None else ObjectStoreRegistry.default()
        self._metadata_cache: dict[str, bytes] = {}

    @property
    def group(self) -> ManifestGroup:
        return self._group

    @property
    def registry(self) -> ObjectStoreRegistry:
        return self._registry

    def __repr__(self) -> str:
        return f"ManifestStore<{len(list(self._group.walk_arrays()))} arrays, registry={self._registry!r}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ManifestStore) and self._group == other._group and self._registry == other._registry

    __hash__ = None

    def __getstate__(self) -> dict[str, Any]:
        return {"group": self._group, "registry": self._registry}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["group"], registry=state["registry"])

    def __dask_tokenize__(self):
        from dask.base import tokenize

        return ("vzdask.ManifestStore", tokenize(self._group), tokenize(self._registry))

    def with_read_only(self, read_only: bool = False) -> ManifestStore:
        if not read_only:
            # zarr (e.g. zarr.from_array) asks stores for a writable copy and
            # treats NotImplementedError as "this store type has none".
            raise _NoWritableCopyError("a ManifestStore is always read-only: it has no writable copy")
        return self

    # -- key resolution ------------------------------------------------------

    def _resolve(self, key: str) -> tuple[str, Any, Any] | None:
        """``("group", path, group)``, ``("array", path, array)`` or ``("chunk", array, index)``."""
        parts = key.split("/")
        node: ManifestGroup | ManifestArray = self._group
        consumed = 0
        while consumed < len(parts) and isinstance(node, ManifestGroup):
            part = parts[consumed]
            if part in node.arrays:
                node = node.arrays[part]
            elif part in node.groups:
                node = node.groups[part]
            else:
                break
            consumed += 1
        rest = parts[consumed:]
        path = "/".join(parts[:consumed])
        if rest == [METADATA_KEY]:
            return ("group" if isinstance(node, ManifestGroup) else "array", path, node)
        if not isinstance(node, ManifestArray) or not rest:
            return None
        chunk_part = "/".join(rest)
        encoding = node.metadata.chunk_key_encoding
        grid = node.manifest.shape
        try:
            index = () if len(grid) == 0 else tuple(int(i) for i in encoding.decode_chunk_key(chunk_part))
        except Exception:
            return None
        if len(index) != len(grid) or any(not 0 <= i < g for i, g in zip(index, grid)):
            return None
        # Only the canonical key names a chunk: zarr's decoders also accept
        # aliases such as "c/01", "zzz/1" or "+1", and a 0-d array's key is
        # "c" (default) or "0" (v2).
        if encoding.encode_chunk_key(index) != chunk_part:
            return None
        return ("chunk", node, index)

    def _metadata_document(self, kind: str, path: str, node: Any) -> bytes:
        cached = self._metadata_cache.get(path)
        if cached is None:
            if kind == "group":
                document = GroupMetadata(attributes=dict(node.attributes), zarr_format=3)
                cached = document.to_buffer_dict(default_buffer_prototype())[METADATA_KEY].to_bytes()
            else:  # a rectilinear grid too (zarr then asks the reader to enable array.rectilinear_chunks)
                cached = metadata_json(node.metadata)
            self._metadata_cache[path] = cached
        return cached

    # -- reading -------------------------------------------------------------

    async def get(
        self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None
    ) -> Buffer | None:
        resolved = self._resolve(key)
        if resolved is None:
            return None
        kind, a, b = resolved
        if kind != "chunk":
            data = self._metadata_document(kind, a, b)
            start, stop = _apply_byte_range(byte_range, len(data))
            return prototype.buffer.from_bytes(data[start:stop])
        return await self._get_chunk(key, a, b, prototype, byte_range)

    async def _get_chunk(
        self, key: str, array: ManifestArray, index: tuple[int, ...], prototype: BufferPrototype, byte_range
    ) -> Buffer | None:
        manifest = array.manifest
        state = manifest.states[index]
        if state == INLINED:
            data = manifest.inlined_data(index)
            start, stop = _apply_byte_range(byte_range, len(data))
            return prototype.buffer.from_bytes(data[start:stop])
        if state != VIRTUAL:
            return None
        _, url, offset, length = manifest.entry(index)
        start, stop = _apply_byte_range(byte_range, length)
        if stop <= start:
            return prototype.buffer.from_bytes(b"")
        store, path = self._registry.resolve(url)
        # _resolve only accepts canonical keys, so the key ends with the encoded chunk key.
        array_path = key[: len(key) - len(array.metadata.encode_chunk_key(index))].rstrip("/")
        (data,) = await read_ranges_async(
            store, path, [offset + start], [stop - start], url=url, what=f"chunk {chunk_key(index)} of {array_path!r}"
        )
        return prototype.buffer.from_array_like(np.frombuffer(data, dtype=np.uint8))

    async def get_partial_values(
        self, prototype: BufferPrototype, key_ranges: Iterable[tuple[str, ByteRequest | None]]
    ) -> list[Buffer | None]:
        return list(await asyncio.gather(*(self.get(k, prototype, r) for k, r in key_ranges)))

    async def exists(self, key: str) -> bool:
        resolved = self._resolve(key)
        if resolved is None:
            return False
        if resolved[0] == "chunk":
            return bool(resolved[1].manifest.states[resolved[2]] != 0)
        return True

    async def getsize(self, key: str) -> int:
        """Size of a value, from the manifest for chunks (no read: zarr's default fetches the whole chunk)."""
        resolved = self._resolve(key)
        if resolved is None:
            raise FileNotFoundError(key)
        kind, a, b = resolved
        if kind != "chunk":
            return len(self._metadata_document(kind, a, b))
        if a.manifest.states[b] == 0:
            raise FileNotFoundError(key)
        return int(a.manifest.lengths[b])

    # -- listing -------------------------------------------------------------

    def _all_keys(self) -> Iterable[str]:
        for path, _group in self._group.walk_groups():
            yield _join(path, METADATA_KEY)
        for path, array in self._group.walk_arrays():
            yield _join(path, METADATA_KEY)
            states = array.manifest.states
            encode = array.metadata.chunk_key_encoding.encode_chunk_key
            indices = zip(*np.nonzero(states)) if states.ndim else ([()] if states[()] else [])
            for index in indices:
                yield _join(path, encode(tuple(int(i) for i in index)))

    async def list(self) -> AsyncIterator[str]:
        for key in self._all_keys():
            yield key

    async def list_prefix(self, prefix: str) -> AsyncIterator[str]:
        for key in self._all_keys():
            if key.startswith(prefix):
                yield key

    async def list_dir(self, prefix: str) -> AsyncIterator[str]:
        prefix = prefix.rstrip("/")
        start = prefix + "/" if prefix else ""
        seen: set[str] = set()
        for key in self._all_keys():
            if key.startswith(start):
                child = key[len(start) :].split("/", 1)[0]
                if child not in seen:
                    seen.add(child)
                    yield child

    # -- writing is refused ---------------------------------------------------

    async def set(self, key: str, value: Buffer) -> None:
        raise ReadOnlyStoreError(f"cannot write {key!r}: a ManifestStore is read-only")

    async def set_if_not_exists(self, key: str, value: Buffer) -> None:
        raise ReadOnlyStoreError(f"cannot write {key!r}: a ManifestStore is read-only")

    async def delete(self, key: str) -> None:
        raise ReadOnlyStoreError(f"cannot delete {key!r}: a ManifestStore is read-only")

    async def delete_dir(self, prefix: str) -> None:
        raise ReadOnlyStoreError(f"cannot delete {prefix!r}: a ManifestStore is read-only")

    async def clear(self) -> None:
        raise ReadOnlyStoreError("cannot clear a ManifestStore: it is read-only")


def _join(path: str, key: str) -> str:
    return f"{path}/{key}" if path else key


def _apply_byte_range(byte_range: ByteRequest | None, size: int) -> tuple[int, int]:
    """Translate a zarr byte request into ``[start, stop)`` within an object of ``size`` bytes."""
    if byte_range is None:
        return 0, size
    if isinstance(byte_range, RangeByteRequest):
        return min(byte_range.start, size), min(byte_range.end, size)
    if isinstance(byte_range, OffsetByteRequest):
        return min(byte_range.offset, size), size
    if isinstance(byte_range, SuffixByteRequest):
        return max(size - byte_range.suffix, 0), size
    raise TypeError(f"Unexpected byte_range, got {byte_range!r}")  # zarr's own stores' message
