"""Kerchunk/fsspec Parquet reference directories: ``.zmetadata`` and per-array ``refs.<i>.parq`` records."""

from __future__ import annotations

import asyncio
import io
import json
import math

import numpy as np

from vzdask.manifests.store import ManifestStore
from vzdask.object_io import get, get_async
from vzdask.parsers.common import ParseError, finish
from vzdask.parsers.kerchunk.common import (
    CONCURRENCY,
    METADATA_NAMES,
    ReferenceParser,
    WHOLE,
    _ArrayInfo,
    _assemble,
    _Chunks,
    _load_json,
    _parent,
    _read_object,
    _run,
    _without,
)
from vzdask.registry import ObjectStoreRegistry


class KerchunkParquetParser(ReferenceParser):
    """Parse a kerchunk/fsspec Parquet reference directory into a ManifestStore.

    The directory holds ``.zmetadata`` (``{"metadata": {...}, "record_size": N}``)
    and, per array, ``<array>/refs.<i>.parq`` files with columns ``path``,
    ``offset``, ``size`` and ``raw`` holding the references of chunks
    ``i * N ... (i + 1) * N - 1`` (C order over the chunk grid).

    Parameters
    ----------
    inline : InlinePolicy, optional
        Which further chunks to copy into the manifest.
    group : str, optional
        Parse only this group of the reference set.
    relative_urls : {"refuse", "references", "cwd"}
        Reference urls with no scheme and no leading ``/``: refused (the
        default: fsspec reads them from the current directory, while they
        are often meant beside the references), joined to the reference
        set's own directory, or to the current directory as fsspec does.
    """

    @classmethod
    def guess_can_open(cls, head: bytes, url: str) -> bool:
        """True for a url ending in ``.parq`` or ``.parquet`` with no object there (the references are a directory).

        Other reference directories are found by ``is_kerchunk_parquet`` (one
        request), which ``detect_parser`` runs when no parser's guess claimed the url.
        """
        return not head and url.rstrip("/").endswith((".parq", ".parquet"))

    def __call__(self, url: str, registry: ObjectStoreRegistry) -> ManifestStore:
        root = url.rstrip("/")
        zmetadata = _read_object(root + "/.zmetadata", registry, what=f"{url}: the reference directory's .zmetadata")
        document = _load_json(url, zmetadata, ".zmetadata")
        if not isinstance(document, dict) or "record_size" not in document or "metadata" not in document:
            raise ParseError(
                f"{url}: not a kerchunk Parquet reference set: .zmetadata has no 'record_size' and 'metadata'"
            )
        record_size = document["record_size"]
        if type(record_size) is not int or record_size < 1:
            raise ParseError(f"{url}: .zmetadata record_size {record_size!r} is not a positive integer")
        entries = document["metadata"]
        if not isinstance(entries, dict):
            raise ParseError(f"{url}: .zmetadata 'metadata' is not a JSON object")
        metadata = {k: v for k, v in entries.items() if k.rpartition("/")[2] in METADATA_NAMES}

        def load(arrays: dict[str, _ArrayInfo]) -> dict[str, _Chunks]:
            return _parquet_chunks(arrays, root, record_size, registry, url)

        metadata = _without(metadata, self.group, self.drop_variables)
        group = _assemble(url, metadata, registry, group=self.group, base=_parent(root), load=load,
                          relative_urls=self.relative_urls)
        return finish(group, registry, self.inline)



def is_kerchunk_parquet(url: str, registry: ObjectStoreRegistry) -> bool:
    """True if ``url`` is a directory with a kerchunk ``.zmetadata`` (one that holds ``record_size``)."""
    zmetadata = url.rstrip("/") + "/.zmetadata"
    try:
        store, path = registry.resolve(zmetadata)
        document = json.loads(get(store, path, url=zmetadata))
    except Exception:
        return False
    return isinstance(document, dict) and "record_size" in document and "metadata" in document



# --------------------------------------------------------------------------- #
# Parquet references
# --------------------------------------------------------------------------- #
def _parquet_chunks(
    arrays: dict[str, _ArrayInfo], root: str, record_size: int, registry: ObjectStoreRegistry, source: str
) -> dict[str, _Chunks]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as err:  # pragma: no cover - optional dependency
        raise ParseError(f"{source}: reading Parquet references needs pyarrow (pip install vzdask[parquet])") from err

    wanted = []  # (array path, record number, url)
    for path, info in arrays.items():
        for record in range(math.ceil(math.prod(info.grid) / record_size)):
            wanted.append((path, record, f"{root}/{path}/refs.{record}.parq"))

    async def fetch(url, limit):
        async with limit:
            store, path = registry.resolve(url)
            try:
                return await get_async(store, path, url=url)
            except FileNotFoundError:
                return None  # a record without references: all missing (as fsspec reads it)

    async def everything():
        limit = asyncio.Semaphore(CONCURRENCY)
        return await asyncio.gather(*(fetch(url, limit) for _, _, url in wanted))

    blobs = _run(everything()) if wanted else []
    out = {}
    for path, info in arrays.items():
        n = math.prod(info.grid)
        out[path] = _Chunks(
            paths=np.full(n, None, dtype=object), offsets=np.zeros(n, np.int64),
            lengths=np.zeros(n, np.int64), inlined=None,
        )
    for (path, record, url), blob in zip(wanted, blobs):
        if blob is None:
            continue
        chunks = out[path]
        try:
            table = pq.read_table(io.BytesIO(blob))
        except Exception as err:
            raise ParseError(f"{source}: {url} is not a readable Parquet file: {err}") from err
        missing = {"path", "offset", "size", "raw"} - set(table.column_names)
        if missing:
            raise ParseError(f"{source}: {url} lacks the column(s) {sorted(missing)}")
        start = record * record_size
        rows = min(table.num_rows, record_size, len(chunks.paths) - start)
        if rows <= 0:
            continue
        table = table.slice(0, rows)
        where = slice(start, start + rows)

        path_col = table.column("path")
        raw_col = table.column("raw")
        has_raw = raw_col.is_valid().to_numpy(zero_copy_only=False) if raw_col.type != pa.null() else np.zeros(rows, bool)
        has_path = path_col.is_valid().to_numpy(zero_copy_only=False) if path_col.type != pa.null() else np.zeros(rows, bool)
        has_path &= ~has_raw  # raw data, when present, is the key's value (spec)
        sizes = table.column("size").fill_null(0).to_numpy().astype(np.int64)
        offsets = table.column("offset").fill_null(0).to_numpy().astype(np.int64)
        if has_path.any():
            if pa.types.is_dictionary(path_col.type):
                path_col = path_col.cast(pa.large_string())
            urls = path_col.to_numpy(zero_copy_only=False)
            chunks.paths[where] = np.where(has_path, urls, None)
            chunks.offsets[where] = np.where(has_path, offsets, 0)
            whole = (sizes == 0) & (offsets == 0)  # a path without a range: the whole object (spec)
            chunks.lengths[where] = np.where(has_path, np.where(whole, WHOLE, sizes), 0)
            if ((offsets < 0) | (sizes < 0))[has_path].any():
                row = int(np.nonzero(has_path & ((offsets < 0) | (sizes < 0)))[0][0])
                raise ParseError(f"{source}: {url} row {row}: negative offset or size")
        if has_raw.any():
            if chunks.inlined is None:
                chunks.inlined = np.full(len(chunks.paths), None, dtype=object)
            data = raw_col.to_numpy(zero_copy_only=False)
            chunks.inlined[where] = np.where(has_raw, data, None)
    return out
