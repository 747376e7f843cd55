"""The tasks behind a ManifestArray's dask graph.

One task covers a *block* of native chunks sized to decode to about
``vzdask.task-bytes``. A task fetches the encoded bytes of its block's
virtual chunks with one coalesced ``get_ranges`` call per file, takes
inlined chunks from its slice of the manifest, and returns an
``EncodedBlock``: every non-missing chunk's encoded bytes, untouched. That is
what ``persist`` keeps (it inlines them); ``compute`` decodes them through
zarr's codec pipeline.
"""

from __future__ import annotations

import asyncio
import itertools
import math
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import dask.config
import numpy as np
import obstore
from dask._task_spec import Task, TaskRef
from dask.utils import parse_bytes

from vzdask.codecs import codec_for_key
from vzdask.manifests.manifest import INLINED, MISSING, VIRTUAL, ChunkManifest, chunk_key
from vzdask.registry import ObjectStoreRegistry

DEFAULT_TASK_BYTES = 64 * 2**20

dask.config.update_defaults({"vzdask": {"task-bytes": DEFAULT_TASK_BYTES}})


def task_bytes() -> int:
    """Decoded bytes one task aims for (dask config ``vzdask.task-bytes``)."""
    value = dask.config.get("vzdask.task-bytes", DEFAULT_TASK_BYTES)
    return int(parse_bytes(value) if isinstance(value, str) else value)


# -- block layout ------------------------------------------------------------


@dataclass(frozen=True)
class BlockLayout:
    """How the chunk grid is cut into task blocks (all sizes in chunks)."""

    grid: tuple[int, ...]
    block: tuple[int, ...]

    @classmethod
    def for_array(cls, grid: Sequence[int], chunk_nbytes: int, target: int | None = None) -> BlockLayout:
        """Blocks of about ``target`` decoded bytes, filled along the last axes first (C order)."""
        target = task_bytes() if target is None else target
        budget = max(1, target // max(1, chunk_nbytes))
        block = []
        for g in reversed(grid):
            take = max(1, min(g, budget))
            block.append(take)
            budget = max(1, budget // take) if take == g else 1
        return cls(tuple(int(g) for g in grid), tuple(reversed(block)))

    @property
    def nblocks(self) -> tuple[int, ...]:
        return tuple(math.ceil(g / b) if g else 0 for g, b in zip(self.grid, self.block))

    def indices(self) -> Iterator[tuple[int, ...]]:
        return itertools.product(*(range(n) for n in self.nblocks))

    def grid_slices(self, index: Sequence[int]) -> tuple[slice, ...]:
        return tuple(slice(i * b, min((i + 1) * b, g)) for i, b, g in zip(index, self.block, self.grid))

    def element_chunks(self, shape: Sequence[int], chunks: Sequence[int]) -> tuple[tuple[int, ...], ...]:
        """The dask ``chunks`` (in elements) of these blocks."""
        out = []
        for n, c, b, nb in zip(shape, chunks, self.block, self.nblocks):
            step = b * c
            out.append(tuple(min(step, n - i * step) for i in range(nb)) if n else (0,))
        return tuple(out)


# -- fetching ----------------------------------------------------------------


@dataclass(frozen=True)
class EncodedBlock:
    """The encoded bytes of every non-missing chunk of one block, in C order.

    ``states`` and ``lengths`` are shaped like the block's part of the chunk
    grid; chunk ``i`` (C order, missing ones skipped) occupies the next
    ``lengths[i]`` bytes of ``data``.
    """

    states: np.ndarray
    lengths: np.ndarray
    data: bytes

    @property
    def nbytes(self) -> int:
        return len(self.data) + self.states.nbytes + self.lengths.nbytes

    def __sizeof__(self) -> int:  # lets distributed account for worker memory
        return self.nbytes

    def chunks(self) -> Iterator[tuple[tuple[int, ...], memoryview]]:
        """``(index within block, encoded bytes)`` of every non-missing chunk."""
        view = memoryview(self.data)
        position = 0
        nonmissing = self.states != MISSING
        for index in zip(*np.nonzero(nonmissing)) if self.states.ndim else ([()] if nonmissing[()] else []):
            size = int(self.lengths[index])
            yield tuple(int(i) for i in index), view[position : position + size]
            position += size


def fetch_block(part: ChunkManifest, registry: ObjectStoreRegistry) -> EncodedBlock:
    """Read one block's virtual chunks (one ``get_ranges`` per file) and copy its inlined ones."""
    states = np.asarray(part.states)
    lengths = np.asarray(part.lengths)
    flat_states = states.ravel()
    pieces: list = [b""] * flat_states.size
    virtual = np.nonzero(flat_states == VIRTUAL)[0]
    if virtual.size:
        flat_paths = np.asarray(part.path_index).ravel()[virtual]
        offsets = np.asarray(part.offsets).ravel()[virtual]
        sizes = lengths.ravel()[virtual]
        requests = []
        for url_index in np.unique(flat_paths):
            mine = flat_paths == url_index
            requests.append((part.urls[url_index], virtual[mine], offsets[mine], sizes[mine]))
        results = _read_ranges(requests, registry, states.shape)
        for (_, positions, _, _), got in zip(requests, results):
            for position, data in zip(positions.tolist(), got):
                pieces[position] = data
    inlined = np.nonzero(flat_states == INLINED)[0]
    if inlined.size:
        buffer = memoryview(part.inline_buffer)
        starts = np.asarray(part._offsets).ravel()
        for position in inlined.tolist():
            start = int(starts[position])
            pieces[position] = buffer[start : start + int(lengths.flat[position])]
    return EncodedBlock(states.copy(), lengths.copy(), b"".join(pieces))


def _read_ranges(requests, registry: ObjectStoreRegistry, grid_shape) -> list[list]:
    """One coalesced range read per file; files read concurrently."""

    def describe(url, positions, offsets, sizes, err) -> OSError:
        first = chunk_key(np.unravel_index(int(positions[0]), grid_shape)) if len(grid_shape) else "0"
        return OSError(
            f"reading {len(positions)} chunk(s) from {url} (first: block chunk {first}, "
            f"bytes {int(offsets[0])}..{int(offsets[0] + sizes[0])}): {err}"
        )

    def check(url, positions, offsets, sizes, got):
        for data, size, offset in zip(got, sizes.tolist(), offsets.tolist()):
            if len(data) != size:
                raise OSError(
                    f"reading {url}: expected {size} bytes at offset {offset}, got {len(data)} (is the file truncated?)"
                )
        return got

    if len(requests) == 1:
        url, positions, offsets, sizes = requests[0]
        store, path = registry.resolve(url)
        try:
            got = obstore.get_ranges(store, path, starts=offsets.tolist(), lengths=sizes.tolist())
        except BaseException as err:
            if not _is_read_error(err):
                raise
            raise describe(url, positions, offsets, sizes, err) from err
        return [check(url, positions, offsets, sizes, got)]

    async def read_all():
        async def one(url, positions, offsets, sizes):
            store, path = registry.resolve(url)
            try:
                got = await obstore.get_ranges_async(store, path, starts=offsets.tolist(), lengths=sizes.tolist())
            except BaseException as err:
                if not _is_read_error(err):
                    raise
                raise describe(url, positions, offsets, sizes, err) from err
            return check(url, positions, offsets, sizes, got)

        return await asyncio.gather(*(one(*r) for r in requests))

    return _run_async(read_all())


def _is_read_error(err: BaseException) -> bool:
    """An ordinary exception, or the Rust panic obstore raises (a BaseException) when one
    of several ranges in a file starts past its end."""
    return isinstance(err, Exception) or type(err).__name__ == "PanicException"


def _run_async(coroutine):
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    with ThreadPoolExecutor(1) as pool:  # called from inside an event loop: use a fresh thread
        return pool.submit(asyncio.run, coroutine).result()


# -- decoding ----------------------------------------------------------------


def decode_into(
    out: np.ndarray,
    block: EncodedBlock,
    codec_key: str,
    grid_origin: Sequence[int],
    element_origin: Sequence[int],
    threads: int = 1,
) -> None:
    """Decode a block's chunks into ``out``; missing chunks become the fill value.

    ``grid_origin`` is the block's first chunk in the array's grid;
    ``element_origin`` the array position that ``out[0, 0, ...]`` holds.
    """
    codec = codec_for_key(codec_key)
    chunks = codec.chunk_shape

    def target(index):
        start = [(g + i) * c - e for g, i, c, e in zip(grid_origin, index, chunks, element_origin)]
        region = tuple(slice(max(s, 0), min(s + c, n)) for s, c, n in zip(start, chunks, out.shape))
        inner = tuple(slice(r.start - s, r.stop - s) for r, s in zip(region, start))
        return region, inner

    missing = block.states == MISSING
    if missing.any():
        for index in zip(*np.nonzero(missing)) if missing.ndim else [()]:
            region, _ = target(index)
            out[region] = codec.fill_value

    def one(item):
        index, data = item
        region, inner = target(index)
        try:
            out[region] = codec.decode(data)[inner]
        except Exception as err:
            chunk = tuple(g + i for g, i in zip(grid_origin, index))
            raise ValueError(f"cannot decode chunk {chunk_key(chunk)} ({len(data)} bytes): {err}") from err

    items = block.chunks()
    if threads > 1:
        with ThreadPoolExecutor(threads) as pool:
            for _ in pool.map(one, items):
                pass
    else:
        for item in items:
            one(item)


def load_region(
    part: ChunkManifest,
    registry: ObjectStoreRegistry,
    codec_key: str,
    grid_origin: Sequence[int],
    region: tuple[slice, ...],
) -> np.ndarray:
    """Fetch and decode the chunks covering ``region`` (array coordinates) of one output block."""
    return decode_region(fetch_block(part, registry), codec_key, grid_origin, region)


def decode_region(
    block: EncodedBlock, codec_key: str, grid_origin: Sequence[int], region: tuple[slice, ...]
) -> np.ndarray:
    """Decode an already fetched block into the array region ``region``."""
    codec = codec_for_key(codec_key)
    out = np.empty(tuple(r.stop - r.start for r in region), dtype=codec.dtype)
    decode_into(out, block, codec_key, grid_origin, tuple(r.start for r in region))
    return out


def assemble(
    blocks: Sequence[EncodedBlock],
    codec_key: str,
    shape: Sequence[int],
    layout: BlockLayout,
) -> np.ndarray:
    """``compute``'s final step: decode every block into one numpy array, on all cores."""
    codec = codec_for_key(codec_key)
    out = np.empty(tuple(shape), dtype=codec.dtype)
    if out.size == 0:
        return out
    indices = list(layout.indices())
    threads = max(1, min(len(indices) * 4, _worker_threads()))

    def one(args):
        index, block = args
        origin = tuple(i * b for i, b in zip(index, layout.block))
        decode_into(out, block, codec_key, origin, (0,) * out.ndim, threads=1)

    if threads > 1 and len(indices) > 1:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(one, zip(indices, blocks)))
    elif len(indices) == 1:
        origin = (0,) * out.ndim
        decode_into(out, blocks[0], codec_key, origin, origin, threads=threads)
    else:
        for args in zip(indices, blocks):
            one(args)
    return out


def _worker_threads() -> int:
    import os

    return dask.config.get("num_workers", None) or os.cpu_count() or 1


def blocks_to_manifest(original: ChunkManifest, layout: BlockLayout, blocks: Sequence[EncodedBlock]) -> ChunkManifest:
    """The fully inlined manifest that ``persist`` produces from fetched blocks."""
    state = np.zeros(layout.grid, np.uint8)
    offsets = np.zeros(layout.grid, np.uint64)
    lengths = np.zeros(layout.grid, np.uint64)
    parts, position = [], 0
    for index, block in zip(layout.indices(), blocks):
        where = layout.grid_slices(index)
        present = block.states != MISSING
        sizes = np.where(present, block.lengths, 0).astype(np.uint64)
        starts = (np.cumsum(sizes, dtype=np.uint64).reshape(sizes.shape) - sizes) + np.uint64(position)
        state[where] = np.where(present, INLINED, MISSING)
        lengths[where] = sizes
        offsets[where] = np.where(present, starts, 0)
        parts.append(block.data)
        position += len(block.data)
    path_index = np.full(layout.grid, -1, np.int32)
    return ChunkManifest._from_parts(state, path_index, offsets, lengths, (), b"".join(parts))


# -- graphs ------------------------------------------------------------------


class FetchTasks(Mapping):
    """The fetch tasks of one ManifestArray, made on demand.

    ``dask.is_dask_collection`` (which xarray calls on every variable) asks for
    the graph; a lazy mapping keeps that cheap for arrays of millions of chunks.
    """

    def __init__(self, name: str, manifest: ChunkManifest, registry: ObjectStoreRegistry, layout: BlockLayout):
        self.name, self.manifest, self.registry, self.layout = name, manifest, registry, layout

    def __getitem__(self, key):
        if not (isinstance(key, tuple) and key and key[0] == self.name and len(key) == len(self.layout.grid) + 1):
            raise KeyError(key)
        index = key[1:]
        if any(not 0 <= i < n for i, n in zip(index, self.layout.nblocks)):
            raise KeyError(key)
        return Task(key, fetch_block, self.manifest[self.layout.grid_slices(index)], self.registry)

    def __iter__(self):
        return ((self.name, *index) for index in self.layout.indices())

    def __len__(self) -> int:
        return math.prod(self.layout.nblocks)


def dask_array_from_manifest_array(array, chunks=None):
    """``ManifestArray.to_dask_array``: fetch+decode tasks (or decode tasks over persisted blocks)."""
    import dask.array as da
    from dask.highlevelgraph import HighLevelGraph

    from vzdask.codecs import codec_key as make_codec_key

    key = make_codec_key(array.metadata)
    layout = array.layout
    native = array.chunk_shape
    block_chunks = layout.element_chunks(array.shape, native)
    meta = np.empty((0,) * array.ndim, dtype=array.dtype)
    if array._source is not None:  # persisted on a cluster: decode the held blocks
        source_name, tasks = array._source
        name = "decode-" + source_name
        dsk = {}
        for index in layout.indices():
            region = _block_region(index, block_chunks)
            origin = tuple(i * b for i, b in zip(index, layout.block))
            dsk[(name, *index)] = Task((name, *index), decode_region, TaskRef((source_name, *index)), key, origin, region)
        graph = HighLevelGraph({name: dsk, source_name: dict(tasks)}, {name: {source_name}, source_name: set()})
        result = da.Array(graph, name, block_chunks, meta=meta)
        return result if chunks is None else result.rechunk(chunks)

    if chunks is None:
        out_chunks = block_chunks
    else:
        out_chunks = da.core.normalize_chunks(chunks, array.shape, dtype=array.dtype, previous_chunks=native)
    from dask.base import tokenize

    name = "load-" + tokenize(array.name, out_chunks)
    dsk = {}
    manifest = array.manifest
    for index in itertools.product(*(range(len(c)) for c in out_chunks)):
        region = _block_region(index, out_chunks)
        grid = tuple(slice(r.start // c, -(-r.stop // c)) if r.stop > r.start else slice(0, 0) for r, c in zip(region, native))
        origin = tuple(g.start for g in grid)
        dsk[(name, *index)] = Task(
            (name, *index), load_region, manifest[grid], array.registry, key, origin, region
        )
    return da.Array(HighLevelGraph({name: dsk}, {name: set()}), name, out_chunks, meta=meta)


def _block_region(index, chunks) -> tuple[slice, ...]:
    region = []
    for i, c in zip(index, chunks):
        start = sum(c[:i])
        region.append(slice(start, start + c[i]))
    return tuple(region)
