"""IcechunkParser: one snapshot of an Icechunk repository (branch, tag, snapshot id, or a session) as a ManifestStore.

Icechunk keeps every chunk reference of a snapshot in its manifests, so
nothing is listed or read per chunk: ``IcechunkStore.array_chunk_iterator``
gives each array's references in columnar batches, and each becomes

* **virtual** chunks: the same ``(url, offset, length)`` (relative
  ``vcc://`` locations come resolved to absolute urls; Icechunk's per-chunk
  checksums, an etag or modification time, are not carried over);
* **native** chunks (written into the repository): a reference to the chunk
  object ``{repository}/chunks/{id}`` with Icechunk's offset and length, read
  through obstore like any file, when the repository's location is known
  (local filesystem, S3, GCS); otherwise (an in-memory repository), or with
  ``native_chunks="inline"``, their bytes are inlined, read through
  Icechunk;
* **inlined** chunks (held in Icechunk's manifest): inlined here too.

Metadata (``zarr.json`` of every group and array: codecs, fill values,
attributes, dimension names) is read from the snapshot as stored and
interpreted exactly as ``ZarrParser`` does, groups included.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from vzdask.manifests.manifest import ChunkManifest
from vzdask.manifests.metadata import chunk_grid_shape
from vzdask.manifests.store import ManifestStore
from vzdask.object_io import head_size_async, run_sync
from vzdask.parsers.common import Parser, ParseError, finish
from vzdask.parsers.zarr import V3_DOC, ZarrTreeReader
from vzdask.policy import InlinePolicy
from vzdask.registry import ObjectStoreRegistry

#: Objects only an Icechunk repository has at its root: ``repo`` (format 2) or the main branch's ref (format 1).
REPOSITORY_MARKERS = ("repo", "refs/branch.main/ref.json")
NATIVE_CHUNKS = ("auto", "reference", "inline")
_NATIVE, _VIRTUAL, _INLINE = 1, 2, 3  # icechunk.ChunkType values, as array_chunk_iterator gives them


def is_icechunk_repository(url: str, registry: ObjectStoreRegistry) -> bool:
    """True if ``url`` holds an Icechunk repository's root object (concurrent heads, one per marker)."""
    import asyncio

    try:
        store, path = registry.resolve(url.rstrip("/"))
    except (ValueError, TypeError):
        return False

    async def exists(name: str) -> bool:
        key = f"{path}/{name}" if path else name
        try:
            await head_size_async(store, key, url=f"{url.rstrip('/')}/{name}")
            return True
        except OSError:
            return False

    async def any_exists() -> bool:
        return any(await asyncio.gather(*(exists(n) for n in REPOSITORY_MARKERS)))

    return run_sync(any_exists())


def is_icechunk_source(obj: Any) -> bool:
    """Whether ``obj`` is an icechunk Repository, Session or IcechunkStore (icechunk is imported only for those)."""
    if type(obj).__module__.partition(".")[0] != "icechunk":
        return False
    import icechunk

    return isinstance(obj, (icechunk.Repository, icechunk.Session, icechunk.IcechunkStore))


def icechunk_source_url(obj: Any) -> str:
    """What names an Icechunk object in messages (the url its parser is called with).

    A repository's location where its storage tells it (``file:///...``,
    ``s3://bucket/prefix``); else the kind of object and its snapshot.
    """
    import icechunk

    if isinstance(obj, icechunk.Repository):
        return _location_of(obj.storage) or "icechunk Repository"
    session = obj if isinstance(obj, icechunk.Session) else obj.session
    return f"icechunk {type(obj).__name__} (snapshot {session.snapshot_id})"


def copy_finds_its_data(obj: Any) -> bool:
    """Whether a pickled copy of an icechunk Session or IcechunkStore reads the repository ``obj`` reads.

    A session pickles with its storage's configuration, not the storage's contents: one of an
    in-memory repository opens, in another process (or here), an empty repository of its own, where
    not even the root group it was made with is found. Asked of the copy and of ``obj``: one metadata
    request each for a stored repository. A copy that cannot be made is icechunk's own refusal (raised).
    """
    import pickle

    copy = pickle.loads(pickle.dumps(obj))

    def finds_root(source: Any) -> bool:
        store = getattr(source, "store", source)  # a Session's store; an IcechunkStore itself
        try:
            return bool(run_sync(store.exists("zarr.json")))
        except Exception:  # noqa: BLE001 - icechunk's StorageError for what its storage does not hold
            return False

    return finds_root(copy) or not finds_root(obj)


class IcechunkParser(Parser):
    """Parse one snapshot of an Icechunk repository into a ManifestStore.

    Parameters
    ----------
    source : icechunk.Repository, icechunk.Session or icechunk.IcechunkStore, optional
        What to parse. Without it the repository at the parsed url is opened
        (``file://`` and local paths, ``s3://bucket/prefix`` and
        ``gs://bucket/prefix`` with credentials from the environment), or
        with ``storage=``.
    branch, tag, snapshot_id : str, optional
        Which snapshot of a repository (at most one; default: branch
        ``"main"``). Not allowed with a session or store, which has its own.
    storage : icechunk.Storage, optional
        How to open the repository at the url (custom endpoint, credentials).
    config : icechunk.RepositoryConfig, optional
        Passed to ``icechunk.Repository.open``.
    location : str, optional
        The repository's url as obstore reaches it (``file:///...``,
        ``s3://bucket/prefix``), for native chunks' references. Default: the
        parsed url, or for a ``source`` its storage's location.
    native_chunks : {"auto", "reference", "inline"}
        ``"reference"``: native chunks become references into the
        repository's ``chunks/`` (an error if its location is unknown);
        ``"inline"``: their bytes are copied into the manifest; ``"auto"``
        (default): references when the location is known, else inlined.
    inline : InlinePolicy, optional
        Which (virtual or native) chunks to copy into the manifest besides.
    group : str, optional
        Parse only this group.
    drop_variables : iterable of str, optional
        Arrays of that group to leave out.
    """

    def __init__(
        self,
        source: Any = None,
        *,
        branch: str | None = None,
        tag: str | None = None,
        snapshot_id: str | None = None,
        storage: Any = None,
        config: Any = None,
        location: str | None = None,
        native_chunks: str = "auto",
        inline: InlinePolicy | None = None,
        group: str | None = None,
        drop_variables: Iterable[str] | None = None,
    ) -> None:
        super().__init__(inline=inline, group=group.strip("/") if group else None, drop_variables=drop_variables)
        if sum(x is not None for x in (branch, tag, snapshot_id)) > 1:
            raise ValueError("give at most one of branch=, tag= and snapshot_id=")
        if native_chunks not in NATIVE_CHUNKS:
            raise ValueError(f"native_chunks must be one of {NATIVE_CHUNKS}, not {native_chunks!r}")
        self.source = source
        self.branch, self.tag, self.snapshot_id = branch, tag, snapshot_id
        self.storage = storage
        self.config = config
        self.location = location.rstrip("/") if location else None
        self.native_chunks = native_chunks

    def __repr__(self) -> str:
        which = next((f"{k}={v!r}" for k, v in (("branch", self.branch), ("tag", self.tag),
                                                ("snapshot_id", self.snapshot_id)) if v is not None), "")
        source = f"{type(self.source).__name__}, " if self.source is not None else ""
        return f"IcechunkParser({source}{which + ', ' if which else ''}native_chunks={self.native_chunks!r}, " \
               f"inline={self.inline!r}, group={self.group!r})"

    @classmethod
    def guess_can_open(cls, head: bytes, url: str) -> bool:
        """False: a repository is a directory or prefix, found by ``is_icechunk_repository`` (``detect_parser``)."""
        return False

    def __call__(self, url: str, registry: ObjectStoreRegistry) -> ManifestStore:
        session, location = self.session(url)
        if location is None and self.native_chunks == "reference":
            raise ParseError(f"{url}: the Icechunk repository's location is unknown (a session or store, or a "
                             "storage obstore cannot reach); pass location= to reference its native chunks, "
                             "or native_chunks='inline'")
        chunks_url = f"{location}/chunks/" if location is not None and self.native_chunks != "inline" else None
        where = location or url
        reader = _SnapshotReader(where, session.store, registry, chunks_url)
        try:
            group = run_sync(reader.parse(self.group or ""))
        except ParseError:
            raise
        except Exception as err:  # Icechunk's own errors (a missing node, a damaged manifest)
            raise ParseError(f"{where}: reading Icechunk snapshot {session.snapshot_id}: {err}") from err
        if self.drop_variables:
            from vzdask.manifests.group import ManifestGroup

            group = ManifestGroup(arrays={k: v for k, v in group.arrays.items() if k not in self.drop_variables},
                                  groups=group.groups, attributes=dict(group.attributes))
        return finish(group, registry, self.inline)

    def session(self, url: str) -> tuple[Any, str | None]:
        """``(read-only icechunk session, repository url for obstore or None)`` for this parse."""
        import icechunk

        source = self.source
        which = {"branch": self.branch, "tag": self.tag, "snapshot_id": self.snapshot_id}
        asked: dict[str, Any] = {k: v for k, v in which.items() if v is not None}
        if isinstance(source, (icechunk.Session, icechunk.IcechunkStore)):
            if asked:
                raise ValueError(f"{', '.join(asked)}= cannot be given with an icechunk "
                                 f"{type(source).__name__}: it has its own snapshot")
            session = source if isinstance(source, icechunk.Session) else source.session
            return session, self.location  # a session does not say where its repository is
        if isinstance(source, icechunk.Repository):
            repository = source
            location = self.location or _location_of(repository.storage)
        elif source is None:
            storage = self.storage if self.storage is not None else _storage_for(url)
            try:
                repository = icechunk.Repository.open(storage, config=self.config)
            except Exception as err:
                raise ParseError(f"{url}: cannot open an Icechunk repository there: {err}") from err
            location = self.location or url.rstrip("/")
        else:
            raise TypeError(f"source must be an icechunk Repository, Session or IcechunkStore, "
                            f"not {type(source).__name__}")
        if not asked:
            asked = {"branch": "main"}
        try:
            return repository.readonly_session(**asked), location
        except Exception as err:
            (kind, value), = asked.items()
            raise ParseError(f"{location or url}: no {kind.replace('_', ' ')} {value!r} in the Icechunk "
                             f"repository: {err}") from err


def _storage_for(url: str) -> Any:
    """The icechunk Storage of the repository at ``url`` (credentials and endpoints from the environment)."""
    import icechunk

    parts = urlsplit(url)
    if parts.scheme == "file":
        return icechunk.local_filesystem_storage(parts.path)
    prefix = parts.path.strip("/") or None
    if parts.scheme in ("s3", "s3a"):
        import os

        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        return icechunk.s3_storage(bucket=parts.netloc, prefix=prefix, from_env=True, endpoint_url=endpoint,
                                   allow_http=bool(endpoint and endpoint.startswith("http://")),
                                   region=os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION"))
    if parts.scheme in ("gs", "gcs"):
        return icechunk.gcs_storage(bucket=parts.netloc, prefix=prefix, from_env=True)
    raise ParseError(f"{url}: cannot open an Icechunk repository from a {parts.scheme}:// url; "
                     "pass storage=icechunk.<kind>_storage(...) or the repository itself")


def _location_of(storage: Any) -> str | None:
    """The url obstore reaches a repository's storage at, from the storage's description; None if unknown.

    Icechunk's ``Storage`` has no accessor for where it points; its
    description lists the kind and the path or bucket and prefix.
    """
    if storage is None:
        return None
    fields = dict(re.findall(r"^\s*([a-z_ ]+):\s*(.*?)\s*$", repr(storage), flags=re.MULTILINE))
    kind = fields.get("type", "")
    if kind == "local filesystem" and fields.get("path"):
        import os

        return "file://" + os.path.abspath(fields["path"])
    scheme = "s3" if kind.startswith("S3") else "gs" if kind.startswith("GCS") else None
    if scheme and fields.get("bucket"):
        prefix = fields.get("prefix", "").strip("/")
        return f"{scheme}://{fields['bucket']}" + (f"/{prefix}" if prefix and prefix != "None" else "")
    return None


class _SnapshotReader(ZarrTreeReader):
    """``ZarrTreeReader`` over an Icechunk snapshot: documents and chunk references through the IcechunkStore."""

    def __init__(self, url: str, store: Any, registry: ObjectStoreRegistry, chunks_url: str | None) -> None:
        super().__init__(url, store, "", registry, False)  # Icechunk keeps no consolidated metadata
        self.chunks_url = chunks_url

    async def read_document(self, path: str, name: str) -> bytes:
        if name != V3_DOC:  # Icechunk holds zarr v3 only
            raise FileNotFoundError(name)
        from zarr.buffer import default_buffer_prototype

        key = f"{path}/{name}" if path else name
        buffer = await self.store.get(key, prototype=default_buffer_prototype())
        if buffer is None:
            raise FileNotFoundError(key)
        return buffer.to_bytes()

    async def list_children(self, path: str) -> list[str]:
        prefix = f"{path}/" if path else ""
        return [f"{prefix}{name}" async for name in self.store.list_dir(prefix) if name != V3_DOC]

    async def chunk_manifest(self, node, described) -> ChunkManifest:
        metadata = described[0]
        grid = chunk_grid_shape(metadata)
        paths = np.full(grid, "", dtype=object)
        offsets = np.zeros(grid, dtype=np.uint64)
        lengths = np.zeros(grid, dtype=np.uint64)
        inlined: dict[tuple[int, ...], bytes] = {}
        native_keys: list[tuple[int, ...]] = []
        flat_paths, flat_offsets, flat_lengths = paths.reshape(-1), offsets.reshape(-1), lengths.reshape(-1)
        async for coords, kinds, locations, starts, sizes, held in self.store.array_chunk_iterator("/" + node.path):
            coords = np.asarray(coords, dtype=np.intp).reshape(len(kinds), len(grid))
            flat = np.ravel_multi_index(tuple(coords.T), grid) if grid else np.zeros(len(kinds), dtype=np.intp)
            kinds = np.asarray(kinds)
            locations = np.asarray(locations, dtype=object)
            virtual = kinds == _VIRTUAL
            native = kinds == _NATIVE
            if self.chunks_url is not None and native.any():
                locations[native] = [self.chunks_url + chunk_id for chunk_id in locations[native]]
                virtual = virtual | native
            elif native.any():
                native_keys.extend(tuple(int(i) for i in row) for row in coords[native])
            flat_paths[flat[virtual]] = locations[virtual]
            flat_offsets[flat[virtual]] = np.asarray(starts)[virtual]
            flat_lengths[flat[virtual]] = np.asarray(sizes)[virtual]
            for row, data in held.items():
                inlined[tuple(int(i) for i in coords[row])] = bytes(data)
        if native_keys:
            inlined.update(await self.native_bytes(node.path, metadata, native_keys))
        try:
            return ChunkManifest.from_arrays(paths=paths, offsets=offsets, lengths=lengths, inlined=inlined or None)
        except ValueError as err:
            raise ParseError(f"{self.url}: variable {node.path!r}: {err}") from err

    async def native_bytes(self, path: str, metadata, keys: list[tuple[int, ...]]) -> dict[tuple[int, ...], bytes]:
        """The encoded bytes of native chunks, read through Icechunk (a repository obstore cannot reach)."""
        import asyncio

        from zarr.buffer import default_buffer_prototype

        encoding = metadata.chunk_key_encoding

        async def one(index: tuple[int, ...]) -> bytes:
            key = f"{path}/{encoding.encode_chunk_key(index)}" if path else encoding.encode_chunk_key(index)
            buffer = await self.store.get(key, prototype=default_buffer_prototype())
            if buffer is None:
                raise ParseError(f"{self.url}: native chunk {key!r} listed but not readable")
            return buffer.to_bytes()

        got = await asyncio.gather(*(one(k) for k in keys))
        return dict(zip(keys, got))


__all__ = ["REPOSITORY_MARKERS", "IcechunkParser", "icechunk_source_url", "is_icechunk_repository",
           "is_icechunk_source"]
