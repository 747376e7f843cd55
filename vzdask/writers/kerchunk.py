"""Write virtual datasets as kerchunk references: a dict, a JSON file or fsspec's Parquet layout.

Reference spec version 1 with zarr v2 metadata (see ``vzdask.zarr_v2``):

* ``.zgroup``/``.zattrs`` per group, ``.zarray``/``.zattrs`` per array
  (``_ARRAY_DIMENSIONS`` names the dimensions); nested groups are key prefixes;
* a virtual chunk is ``[url, offset, length]``;
* an inlined chunk is ``"base64:..."`` of its exact encoded bytes;
* a missing chunk has no key.

Parquet output follows fsspec's ``LazyReferenceMapper`` layout: a directory
with ``.zmetadata`` (``{"metadata": {key: document}, "record_size": N}``)
and, per array, ``<array path>/refs.<i>.parq`` with columns ``path``
(string, null unless virtual), ``offset`` and ``size`` (int64) and ``raw``
(binary, null unless inlined). Row ``j`` of file ``i`` is the chunk whose
flat C-order index in the chunk grid is ``i * N + j``; a missing chunk is a
row with null ``path`` and null ``raw``. The files are written from the
manifests' numpy arrays, record by record, never through a dict of refs.

Arrays persisted on a dask.distributed cluster are written to Parquet by the
workers: one task per record, depending on the persisted blocks that hold
its chunks, writes that ``refs.<i>.parq`` into the temporary directory, so
the inlined bytes never pass through the client (which writes
``.zmetadata`` and moves the directory into place). The JSON and dict
formats gather such arrays into this process.
"""

from __future__ import annotations

import base64
import functools
import json
import math
import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator, Mapping, Sequence
from json.encoder import encode_basestring_ascii as _quote  # what json.dumps does with a str
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from vzdask.manifests.group import ManifestGroup
from vzdask.manifests.manifest import INLINED, MISSING, VIRTUAL, ChunkManifest, chunk_key
from vzdask.manifests.store import ManifestStore
from vzdask.writers.cluster import HeldBlocks, wait_all, wait_and_raise
from vzdask.writers.plan import PlannedArray, PlannedGroup, plan_write
from vzdask.zarr_v2 import v3_to_v2, v2_group_attributes

FORMATS = ("dict", "json", "parquet")


def to_kerchunk(
    obj: Any,
    path: str | os.PathLike | None = None,
    *,
    format: str = "dict",
    record_size: int = 100_000,
    categorical_threshold: int = 10,
) -> dict[str, Any] | None:
    """Write a virtual dataset, ManifestGroup or ManifestStore as kerchunk references.

    Parameters
    ----------
    obj : xarray.Dataset, xarray.DataTree, ManifestGroup or ManifestStore
        A DataTree is written group by group (every node, its own variables). In a Dataset, virtual variables are written as their references;
        loaded variables that still hold their ManifestArray (in
        ``encoding["vzdask_manifest_array"]``) and whose values came from it
        are written in that stored form; any other variable (numpy, dask) is
        CF-encoded as ``xarray.to_zarr`` would and written inline, one chunk
        per ``encoding["chunks"]`` block (or one chunk).
    path : str or path-like, optional
        Output file (``json``) or directory (``parquet``). Local paths only
        (``file://`` urls are accepted). Not used for ``dict``.
    format : {"dict", "json", "parquet"}
    record_size : int
        Parquet: references per ``refs.<i>.parq`` file.
    categorical_threshold : int
        Parquet: a record's ``path`` column is dictionary-encoded (read back
        as categorical) when it has more than this many references per
        distinct url, as fsspec does.

    Returns
    -------
    dict or None
        ``{"version": 1, "refs": {...}}`` for ``format="dict"`` (metadata
        documents as JSON strings, as kerchunk makes them); ``None`` otherwise.

    Notes
    -----
    Output is atomic: everything is written under a temporary name beside
    ``path`` (``.{name}.tmp-<uuid>``) and moved into place at the end, so an
    error leaves any previous output untouched and no temporary files.

    With ``format="parquet"``, arrays persisted on a distributed cluster
    (``not array.is_gathered``) are written by the workers that hold their
    chunks and stay ungathered. The workers write into the temporary
    directory beside ``path``, so ``path`` must be on a filesystem they share
    with this process (as on a ``LocalCluster``). A failed worker write (or a
    lost persisted block) raises ``RuntimeError`` naming the array and
    record, after every task has stopped; the output is left as it was.
    """
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, not {format!r}")
    if format != "dict" and path is None:
        raise ValueError(f"format={format!r} needs a path to write to")
    if format == "dict" and path is not None:
        raise ValueError("format='dict' returns the references; pass format='json' or 'parquet' to write a file")
    if not isinstance(record_size, int) or isinstance(record_size, bool) or record_size < 1:
        raise ValueError(f"record_size must be a positive int, got {record_size!r}")

    plan = _plan(obj)
    separator = "." if format == "parquet" else None
    metadata = _metadata_documents(plan, separator)
    if format == "dict":
        refs: dict[str, Any] = {key: _dumps(doc) for key, doc in metadata.items()}
        for node, zarray in _array_documents(plan, metadata):
            refs.update(_chunk_refs(node, zarray["dimension_separator"]))
        return {"version": 1, "refs": refs}

    target = _local_path(path)
    if format == "json":
        _atomic_file(target, lambda f: _write_json(f, plan, metadata))
    else:
        _atomic_directory(target, lambda d: _write_parquet(d, plan, metadata, record_size, categorical_threshold))
    return None


def _plan(obj: Any) -> PlannedGroup:
    """The shared writer plan, with in-memory variables inlined and names zarr v2 can hold."""
    import xarray as xr

    if not isinstance(obj, (xr.Dataset, xr.DataTree, ManifestGroup, ManifestStore)):
        raise TypeError(
            f"to_kerchunk takes an xarray.DataTree, Dataset, ManifestGroup or ManifestStore, not {type(obj).__name__}"
        )
    datasets = [obj] if isinstance(obj, xr.Dataset) else (
        [node.to_dataset(inherit=False) for node in obj.subtree] if isinstance(obj, xr.DataTree) else [])
    for ds in datasets:
        for name in ds.variables:
            name = str(name)
            if not name or "/" in name or name.startswith(".z") or name == "zarr.json":
                raise ValueError(f"variable name {name!r} cannot be a zarr v2 array name")
    return plan_write(obj, in_memory="inline")


# --------------------------------------------------------------------------- #
# Metadata documents and chunk references
# --------------------------------------------------------------------------- #
def _metadata_documents(plan: PlannedGroup, separator: str | None) -> dict[str, dict[str, Any]]:
    """Every ``.zgroup``/``.zattrs``/``.zarray`` document, by key; all errors surface here, before writing."""
    documents: dict[str, dict[str, Any]] = {}
    for group in plan.walk():
        path, attributes = group.path, group.attributes
        prefix = f"{path}/" if path else ""
        documents[f"{prefix}.zgroup"] = {"zarr_format": 2}
        attrs = v2_group_attributes(attributes, f"group {path or '/'!r}")
        if attrs:
            documents[f"{prefix}.zattrs"] = attrs
    for node in plan.all_arrays():
        missing = node.held.missing if node.held is not None else node.array.manifest.count()["missing"] > 0
        zarray, zattrs = v3_to_v2(
            node.array.metadata, name=node.path, attributes=node.attributes,
            dimension_names=node.dimension_names, missing_chunks=missing, dimension_separator=separator,
        )
        documents[f"{node.path}/.zarray"] = zarray
        if zattrs:
            documents[f"{node.path}/.zattrs"] = zattrs
    _check_json(documents)
    return documents


def _check_json(documents: Mapping[str, Any]) -> None:
    for key, document in documents.items():
        try:
            json.dumps(document)
        except (TypeError, ValueError) as err:
            raise TypeError(f"{key}: not JSON-serialisable: {err}") from None


def _dumps(document: Any) -> str:
    return json.dumps(document, separators=(",", ":"))


def _array_documents(plan: PlannedGroup, metadata: Mapping[str, dict]) -> Iterator[tuple[PlannedArray, dict]]:
    for node in plan.all_arrays():
        yield node, metadata[f"{node.path}/.zarray"]


class _PresentChunks(NamedTuple):
    """An array's chunks that are not missing, in C order, as plain lists (what both chunk writers walk)."""

    names: Sequence[str]  # chunk keys without the array path
    kinds: list[int]  # VIRTUAL or INLINED
    all_virtual: bool
    codes: list[int]  # url table index (virtual chunks)
    positions: list[int]  # file offset, or offset in the inline buffer
    sizes: list[int]
    buffer: memoryview  # the manifest's inlined bytes


def _present_chunks(node: PlannedArray, separator: str) -> _PresentChunks | None:
    manifest = node.array.manifest
    state = manifest.states.reshape(-1)
    present = np.flatnonzero(state)
    if not present.size:
        return None
    kinds = state[present]
    return _PresentChunks(
        _chunk_names(manifest.shape, present, separator),
        kinds.tolist(),
        bool((kinds == VIRTUAL).all()),
        manifest.path_index.reshape(-1)[present].tolist(),
        np.asarray(manifest.offsets).reshape(-1)[present].tolist(),
        manifest.lengths.reshape(-1)[present].tolist(),
        memoryview(manifest.inline_buffer),
    )


def _chunk_refs(node: PlannedArray, separator: str) -> Iterator[tuple[str, Any]]:
    """``(key, [url, offset, length] | "base64:...")`` for every chunk that is not missing."""
    chunks = _present_chunks(node, separator)
    if chunks is None:
        return
    urls, buffer = node.array.manifest.urls, chunks.buffer
    prefix = node.path + "/"
    for name, kind, code, position, size in zip(chunks.names, chunks.kinds, chunks.codes, chunks.positions,
                                                 chunks.sizes):
        if kind == VIRTUAL:
            yield prefix + name, [urls[code], position, size]
        else:
            yield prefix + name, "base64:" + base64.b64encode(buffer[position : position + size]).decode("ascii")


# --------------------------------------------------------------------------- #
# JSON
# --------------------------------------------------------------------------- #
def _write_json(f, plan: PlannedGroup, metadata: Mapping[str, dict]) -> None:
    f.write('{"version":1,"refs":{')
    first = True
    for key, document in metadata.items():
        f.write(("" if first else ",") + json.dumps(key) + ":" + json.dumps(_dumps(document)))
        first = False
    for node, zarray in _array_documents(plan, metadata):
        for batch in _json_chunk_members(node, zarray["dimension_separator"]):
            f.write(("" if first else ",") + batch)
            first = False
    f.write("}}")


def _json_chunk_members(node: PlannedArray, separator: str, batch: int = 10_000) -> Iterator[str]:
    """The ``"key":reference`` members of an array's chunks, comma-joined in batches.

    The very bytes ``json.dumps(..., separators=(",", ":"))`` writes for
    ``_chunk_refs``, made with one string format per chunk: a chunk key is
    the array path (quoted once) followed by digits and separators, which
    JSON never escapes.
    """
    chunks = _present_chunks(node, separator)
    if chunks is None:
        return
    names, kinds, all_virtual, codes, positions, sizes, buffer = chunks
    prefix = _quote(node.path + "/")[:-1]  # '"path/' without its closing quote
    urls = [_quote(url) for url in node.array.manifest.urls]
    for start in range(0, len(names), batch):
        stop = start + batch
        rows = zip(names[start:stop], codes[start:stop], positions[start:stop], sizes[start:stop])
        if all_virtual:
            yield ",".join([f'{prefix}{name}":[{urls[code]},{position},{size}]' for name, code, position, size in rows])
            continue
        members = []
        for kind, (name, code, position, size) in zip(kinds[start:stop], rows):
            if kind == VIRTUAL:
                members.append(f'{prefix}{name}":[{urls[code]},{position},{size}]')
            else:
                data = base64.b64encode(buffer[position : position + size]).decode("ascii")
                members.append(f'{prefix}{name}":"base64:{data}"')
        yield ",".join(members)


def _chunk_names(shape: tuple[int, ...], present: np.ndarray, separator: str) -> Sequence[str]:
    """The chunk keys (``"0.1.2"``) of the flat C-order chunk indices ``present`` in a grid of ``shape``."""
    if not shape:
        return [chunk_key(())]
    if 2 * present.size < math.prod(shape):  # sparse: name only the present chunks
        columns = np.unravel_index(present, shape)
        return [separator.join(map(str, ix)) for ix in zip(*(c.tolist() for c in columns))]
    count = math.prod(shape)
    names = _remembered_grid_names(shape, separator) if count <= 1 << 17 else _grid_names(shape, separator)
    if present.size == len(names):
        return names
    return [names[i] for i in present.tolist()]


def _grid_names(shape: tuple[int, ...], separator: str) -> list[str]:
    """Every chunk key of a grid in C order.

    Built from the last axis outwards, so the long first axis is joined to
    the short tails once: one format per chunk.
    """
    names = [str(i) for i in range(shape[-1])]
    for n in reversed(shape[:-1]):
        names = [f"{head}{separator}{tail}" for head in map(str, range(n)) for tail in names]
    return names


@functools.lru_cache(maxsize=4)
def _remembered_grid_names(shape: tuple[int, ...], separator: str) -> tuple[str, ...]:
    """``_grid_names`` of a small grid, remembered: the variables of a dataset share grids."""
    return tuple(_grid_names(shape, separator))


# --------------------------------------------------------------------------- #
# Parquet (fsspec LazyReferenceMapper layout)
# --------------------------------------------------------------------------- #
def _write_parquet(
    directory: Path, plan: PlannedGroup, metadata: Mapping[str, dict], record_size: int, categorical_threshold: int
) -> None:
    tasks, names = [], []
    try:
        for node in plan.all_arrays():  # the workers' records first, so they run while this process writes
            if node.held is not None:
                for record, task in _submit_held_records(directory / node.path, node.held, record_size):
                    tasks.append(task)
                    names.append(f"writing record {record} of {node.path!r} to Parquet")
        for node in plan.all_arrays():
            if node.held is None:
                _write_parquet_array(directory / node.path, node.array.manifest, record_size, categorical_threshold)
    except BaseException:
        wait_all(tasks)  # no worker still writes when the temporary directory is removed
        raise
    wait_and_raise(tasks, lambda i: names[i])
    document = {"metadata": dict(metadata), "record_size": record_size}
    (directory / ".zmetadata").write_text(json.dumps(document, separators=(",", ":")), encoding="utf-8")


def _write_parquet_array(directory: Path, manifest: ChunkManifest, record_size: int, categorical_threshold: int) -> None:
    import pyarrow as pa

    n = manifest.nchunks
    if n == 0:
        return
    directory.mkdir(parents=True, exist_ok=True)
    state = manifest.states.reshape(-1)
    codes = manifest.path_index.reshape(-1)
    positions = np.asarray(manifest.offsets).reshape(-1)
    sizes = manifest.lengths.reshape(-1)
    urls = pa.array(manifest.urls, type=pa.string())
    buffer = manifest.inline_buffer
    for record, start in enumerate(range(0, n, record_size)):
        stop = min(start + record_size, n)
        table = _record_table(
            state[start:stop], codes[start:stop], positions[start:stop], sizes[start:stop], urls, buffer,
            categorical_threshold,
        )
        _write_record(directory / f"refs.{record}.parq", table)


def _record_table(state, codes, positions, sizes, urls, buffer, categorical_threshold: int):
    """One record's references as the Parquet table fsspec reads: ``path``, ``offset``, ``size``, ``raw``."""
    import pyarrow as pa

    virtual = state == VIRTUAL
    inlined = state == INLINED
    path = _path_column(codes, virtual, urls, categorical_threshold)
    raw = _raw_column(inlined, positions, sizes, buffer)
    # offset and size are never null, so they are REQUIRED columns (see _write_record for their statistics).
    schema = pa.schema([
        pa.field("path", path.type),
        pa.field("offset", pa.int64(), nullable=False),
        pa.field("size", pa.int64(), nullable=False),
        pa.field("raw", raw.type),
    ])
    return pa.Table.from_arrays(
        [
            path,
            pa.array(np.where(virtual, positions, 0).astype(np.int64), type=pa.int64()),
            pa.array(np.where(virtual, sizes, 0).astype(np.int64), type=pa.int64()),
            raw,
        ],
        schema=schema,
    )


def _write_record(file: Path, table) -> None:
    import pyarrow.parquet as pq

    # fastparquet (fsspec's default Parquet engine) reads an integer column as float64 unless the row group's
    # statistics say it has no nulls; fsspec would then seek to np.float64(offset) and fail (ReferenceNotReachable
    # ... TypeError: 'numpy.float64' object cannot be interpreted as an integer). So offset and size carry
    # statistics (their null count, 0), the other columns none (min/max of urls and raw bytes are of no use).
    pq.write_table(table, file, compression="zstd", write_statistics=["offset", "size"])


def _submit_held_records(directory: Path, held: HeldBlocks, record_size: int) -> Iterator[tuple[int, Any]]:
    """Submit one task per record of a held array: ``(record, future)``.

    Each task depends on the blocks holding the record's chunks (flat C order
    of the chunk grid), so it runs where (most of) its bytes are.
    """
    import math

    n = math.prod(held.layout.grid)
    if n == 0:
        return
    directory.mkdir(parents=True, exist_ok=True)  # once, here, before any worker writes into it
    indices = list(held.layout.indices())
    for record, start in enumerate(range(0, n, record_size)):
        stop = min(start + record_size, n)
        mine = held.blocks_for_flat_range(start, stop)
        blocks = [(indices[k], held.futures[k]) for k in mine]
        file = directory / f"refs.{record}.parq"
        yield record, held.client.submit(_write_held_record, file, start, stop, held.layout, blocks, pure=False)


def _write_held_record(file: Path, start: int, stop: int, layout, blocks) -> None:
    """On a worker: the record of chunks ``start:stop`` (flat C order) from persisted blocks, as Parquet.

    ``blocks`` is ``[(block index, EncodedBlock)]`` for every block holding
    one of those chunks; each of their present chunks becomes an inlined row.
    """
    import pyarrow as pa

    chunk = np.unravel_index(np.arange(start, stop), layout.grid or (1,))  # a 0-d array has one chunk
    pieces: list = [b""] * (stop - start)
    present = np.zeros(stop - start, bool)
    for index, block in blocks:
        origin = [s.start for s in layout.grid_slices(index)] or [0]
        states = block.states.reshape(-1) if block.states.ndim == 0 else block.states
        rows = np.flatnonzero(np.all([(c >= o) & (c < o + n) for c, o, n in zip(chunk, origin, states.shape)], axis=0))
        local = np.ravel_multi_index(tuple(c[rows] - o for c, o in zip(chunk, origin)), states.shape)
        stored = states.reshape(-1) != MISSING
        rank = np.cumsum(stored) - 1  # position among the block's present chunks, which chunk_views lists
        views = block.chunk_views()
        for row, at in zip(rows.tolist(), local.tolist()):
            if stored[at]:
                pieces[row], present[row] = views[rank[at]], True
    sizes = np.array([memoryview(p).nbytes for p in pieces], np.int64)
    positions = np.cumsum(sizes) - sizes
    state = np.where(present, INLINED, MISSING).astype(np.uint8)
    codes = np.full(stop - start, -1, np.int32)
    table = _record_table(state, codes, positions, sizes, pa.array([], pa.string()), b"".join(pieces), 0)
    _write_record(file, table)


def _path_column(codes: np.ndarray, virtual: np.ndarray, urls, categorical_threshold: int):
    import pyarrow as pa

    m = codes.size
    count = int(np.count_nonzero(virtual))
    if not count:
        return pa.nulls(m, type=pa.string())
    used_codes = codes[virtual]
    counts = np.bincount(used_codes, minlength=len(urls))
    used = np.flatnonzero(counts)
    remap = np.zeros(len(urls), dtype=np.int32)
    remap[used] = np.arange(used.size, dtype=np.int32)
    indices = pa.array(np.where(virtual, remap[np.maximum(codes, 0)], 0).astype(np.int32), mask=~virtual)
    dictionary = urls.take(pa.array(used, type=pa.int64()))
    if count / used.size > categorical_threshold:
        return pa.DictionaryArray.from_arrays(indices, dictionary)
    return dictionary.take(indices)


def _raw_column(inlined: np.ndarray, positions: np.ndarray, sizes: np.ndarray, buffer: bytes):
    import pyarrow as pa

    m = inlined.size
    rows = np.flatnonzero(inlined)
    if not rows.size:
        return pa.nulls(m, type=pa.binary())
    starts = positions[rows].astype(np.int64)
    lengths = sizes[rows].astype(np.int64)
    total = int(lengths.sum())
    large = total >= 2**31
    ends = np.zeros(m + 1, dtype=np.int64)
    ends[1:] = np.cumsum(np.where(inlined, sizes, 0).astype(np.int64))
    view = memoryview(buffer)
    if rows.size == 1 or np.array_equal(starts[1:], starts[:-1] + lengths[:-1]):
        data = view[int(starts[0]) : int(starts[0]) + total]  # already in row order: no copy
    else:
        data = b"".join(view[a : a + b] for a, b in zip(starts.tolist(), lengths.tolist()))
    validity = np.packbits(inlined, bitorder="little")
    return pa.Array.from_buffers(
        pa.large_binary() if large else pa.binary(),
        m,
        [pa.py_buffer(validity), pa.py_buffer(ends if large else ends.astype(np.int32)), pa.py_buffer(data)],
        null_count=m - rows.size,
    )


# --------------------------------------------------------------------------- #
# Atomic local output
# --------------------------------------------------------------------------- #
def _local_path(path: str | os.PathLike) -> Path:
    text = os.fspath(path)
    if isinstance(text, bytes):
        text = text.decode()
    if text.startswith("file://"):
        text = text[len("file://"):]
    elif "://" in text:
        raise ValueError(f"to_kerchunk writes local paths only, not {text!r}")
    return Path(text).expanduser().absolute()


def _sibling(target: Path, kind: str) -> Path:
    return target.parent / f".{target.name}.{kind}-{uuid.uuid4().hex}"


def _atomic_file(target: Path, write) -> None:
    """Write through ``write(file)`` into a temporary sibling, then ``os.replace`` it onto ``target``."""
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = _sibling(target, "tmp")
    try:
        with _naming(target, temporary):
            with open(temporary, "w", encoding="utf-8") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _atomic_directory(target: Path, write) -> None:
    """Write through ``write(directory)`` into a temporary sibling directory, then swap it in.

    An existing ``target`` is renamed to a backup, the new directory renamed
    into place and the backup removed; if the swap fails the backup is put back.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = _sibling(target, "tmp")
    with _naming(target, temporary):
        temporary.mkdir()
    try:
        write(temporary)
        if not os.path.lexists(target):
            os.rename(temporary, target)
            return
        backup = _sibling(target, "bak")
        os.rename(target, backup)
        try:
            os.rename(temporary, target)
        except BaseException:
            os.rename(backup, target)
            raise
        _remove(backup)
    except BaseException:
        _remove(temporary)
        raise


@contextlib.contextmanager
def _naming(target: Path, temporary: Path):
    """An OSError about the temporary sibling is re-raised naming the output the user asked for."""
    try:
        yield
    except OSError as err:
        if err.filename is None or os.fspath(err.filename) != os.fspath(temporary):
            raise
        raise type(err)(err.errno, f"cannot write {target}: {err.strerror} "
                        f"(writing the temporary {temporary.name} beside it)") from err


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        path.unlink(missing_ok=True)


__all__ = ["to_kerchunk"]
