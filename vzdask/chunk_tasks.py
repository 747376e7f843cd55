"""What a task does with a piece of a ChunkManifest: fetch its chunks, decode them, assemble the result.

One task covers a *block* of native chunks sized to decode to about
``vzdask.task-bytes`` (``BlockLayout``). Fetching a block reads the encoded
bytes of its virtual chunks with one ranged read per file (through
``vzdask.object_io``), takes inlined chunks from its slice of the manifest,
and returns an ``EncodedBlock``: every non-missing chunk's encoded bytes,
untouched. That is what ``persist`` keeps (it inlines them); ``compute``
decodes them through zarr's codec pipeline.

These functions know manifests, registries and codecs only: nothing of
ManifestArray or of dask graphs (``vzdask.graph`` builds those from them).
The readers at the end load a small array here, without a graph; they take
anything with ManifestArray's ``metadata``/``manifest``/``registry``/``layout``.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import mmap
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import dask.config
import numpy as np
from dask.utils import parse_bytes

from vzdask.codecs import codec_for_key
from vzdask.manifests.manifest import INLINED, MISSING, VIRTUAL, ChunkManifest, chunk_key
from vzdask.object_io import is_in_process, read_ranges, read_ranges_async, run_sync
from vzdask.registry import ObjectStoreRegistry

DEFAULT_TASK_BYTES = 64 * 2**20
DEFAULT_MIN_TASK_BYTES = 4 * 2**20
DEFAULT_TASKS_PER_THREAD = 2

dask.config.update_defaults({"vzdask": {"task-bytes": DEFAULT_TASK_BYTES, "min-task-bytes": DEFAULT_MIN_TASK_BYTES,
                                        "tasks-per-thread": DEFAULT_TASKS_PER_THREAD}})


def _config_bytes(name: str, default: int) -> int:
    value = dask.config.get(name, default)
    return int(parse_bytes(value) if isinstance(value, str) else value)


def task_bytes() -> int:
    """The most decoded bytes one task aims for (dask config ``vzdask.task-bytes``)."""
    return _config_bytes("vzdask.task-bytes", DEFAULT_TASK_BYTES)


def task_target(total: int) -> int:
    """Decoded bytes per task for an array of ``total`` decoded bytes.

    At most ``vzdask.task-bytes``; smaller when that would leave threads idle:
    about ``vzdask.tasks-per-thread`` (2) tasks for each thread that runs them
    (``scheduler_threads``), so a 50 MB variable's sum is not one task on one
    core, but never below ``vzdask.min-task-bytes`` (4 MiB: a task's overhead,
    0.1-2 ms, stays small next to decoding it).
    """
    most = task_bytes()
    least = min(most, _config_bytes("vzdask.min-task-bytes", DEFAULT_MIN_TASK_BYTES))
    per_thread = max(1, int(dask.config.get("vzdask.tasks-per-thread", DEFAULT_TASKS_PER_THREAD)))
    share = -(-int(total) // (per_thread * scheduler_threads()))
    return max(least, min(most, share))


_CLIENT_THREADS: dict[int, tuple[float, int]] = {}


def scheduler_threads() -> int:
    """The threads that will run tasks: the default distributed client's workers', else dask's local pool's."""
    distributed = sys.modules.get("distributed")
    if distributed is not None:
        try:
            client = distributed.default_client()
        except ValueError:  # no client
            client = None
        if client is not None:
            now = time.monotonic()
            cached = _CLIENT_THREADS.get(id(client))
            if cached is not None and now - cached[0] < 5.0:  # asking the scheduler is a round trip
                return cached[1]
            try:  # the totals only (an asynchronous client answers from its cache, without a round trip)
                threads = int(_scheduler_info(client).get("total_threads") or 0) or _local_threads()
            except Exception:  # noqa: BLE001 - a closed or unreachable client: size for this machine
                threads = _local_threads()
            _CLIENT_THREADS.clear()
            _CLIENT_THREADS[id(client)] = (now, threads)
            return threads
    return _local_threads()


def _scheduler_info(client) -> dict:
    try:
        return client.scheduler_info(n_workers=0)
    except TypeError:  # distributed before 2025.5 has no n_workers
        return client.scheduler_info()


def _local_threads() -> int:
    """The threads of dask's local pool: ``num_workers``, else the CPUs this process may use (dask's count)."""
    from dask.system import CPU_COUNT

    return int(dask.config.get("num_workers", None) or CPU_COUNT or 1)


# -- block layout ------------------------------------------------------------


@dataclass(frozen=True)
class BlockLayout:
    """How the chunk grid is cut into task blocks (all sizes in chunks)."""

    grid: tuple[int, ...]
    block: tuple[int, ...]

    @classmethod
    def for_array(cls, grid: Sequence[int], chunk_nbytes: int, target: int | None = None) -> BlockLayout:
        """Blocks of at most about ``target`` decoded bytes, filled along the last axes first (C order).

        ``target`` defaults to ``task_target`` of the whole array: enough tasks
        for every thread. Where an axis is cut, its blocks are made equal (2400
        chunks in blocks of at most 258 become 10 of 240, not 9 of 258 and one of
        78), so the last task is not a runt that leaves cores idle at the end.
        """
        if target is None:
            target = task_target(math.prod(grid) * chunk_nbytes)
        budget = max(1, target // max(1, chunk_nbytes))
        block = []
        for g in reversed(grid):
            take = max(1, min(g, budget))
            if take < g:
                take = -(-g // -(-g // take))
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

    def element_chunks(self, shape: Sequence[int], chunks: Sequence[int | tuple[int, ...]]) -> tuple[tuple[int, ...], ...]:
        """The dask ``chunks`` (in elements) of these blocks; ``chunks`` per axis a size or every chunk's size."""
        out = []
        for n, c, b, nb in zip(shape, chunks, self.block, self.nblocks):
            if not n:
                out.append((0,))
            elif isinstance(c, int):
                step = b * c
                out.append(tuple(min(step, n - i * step) for i in range(nb)))
            else:
                ends = [min(n, e) for e in itertools.accumulate(c)][b - 1 :: b]
                if len(ends) < nb:
                    ends.append(n)
                out.append(tuple(np.diff([0, *ends]).tolist()))
        return tuple(out)


@dataclass(frozen=True, slots=True)
class AxisRun:
    """Consecutive chunks of one rectilinear axis: chunk ``first + k`` starts at ``start + sum(sizes[:k])``."""

    first: int
    start: int
    sizes: tuple[int, ...]


#: A task's chunk geometry: None for a regular grid (the codec's chunk shape), else per axis the chunk size
#: or the ``AxisRun`` of the chunks the task covers.
Geometry = tuple[int | AxisRun, ...] | None


class ChunkGeometry:
    """Where the chunks of an array lie: per axis a chunk size, or the size of every chunk (rectilinear).

    ``part(where)`` gives what a task covering the grid slices ``where`` needs
    (``Geometry``), so a task carries only its own chunks' sizes.
    """

    def __init__(self, sizes: Sequence[int | tuple[int, ...]]) -> None:
        self.sizes = tuple(c if isinstance(c, int) else tuple(int(e) for e in c) for c in sizes)
        self.regular = all(isinstance(c, int) for c in self.sizes)
        self.bounds = tuple(None if isinstance(c, int) else np.cumsum((0, *c), dtype=np.int64) for c in self.sizes)

    def part(self, where: Sequence[slice] | None = None) -> Geometry:
        if self.regular:
            return None
        out: list[int | AxisRun] = []
        for axis, (c, bounds) in enumerate(zip(self.sizes, self.bounds)):
            if isinstance(c, int):
                out.append(c)
                continue
            lo, hi = (0, len(c)) if where is None else (where[axis].start, where[axis].stop)
            out.append(AxisRun(int(lo), int(bounds[lo]), c[lo:hi]))
        return tuple(out)

    def grid_span(self, axis: int, start: int, stop: int) -> slice:
        """The chunks along ``axis`` that elements ``start:stop`` touch."""
        c = self.sizes[axis]
        if isinstance(c, int):
            return slice(start // c, -(-stop // c)) if stop > start else slice(0, 0)
        if stop <= start:
            return slice(0, 0)
        bounds = self.bounds[axis]
        first = int(np.searchsorted(bounds, start, side="right")) - 1
        last = int(np.searchsorted(bounds, stop, side="left"))
        return slice(first, min(last, len(c)))


# -- fetching ----------------------------------------------------------------


class EncodedBlock:
    """The encoded bytes of every non-missing chunk of one block, in C order.

    ``states`` and ``lengths`` are shaped like the block's part of the chunk
    grid; chunk ``i`` (C order, missing ones skipped) occupies the next
    ``lengths[i]`` bytes of ``data``.

    A block made by ``fetch_block`` keeps each chunk in the buffer it was read
    into: decoding reads them there, and ``data`` joins them only when asked
    (``persist``); pickling sends the joined bytes.
    """

    __slots__ = ("states", "lengths", "_data", "_pieces", "_size")

    def __init__(self, states: np.ndarray, lengths: np.ndarray, data: bytes) -> None:
        self.states, self.lengths = states, lengths
        self._data, self._pieces, self._size = data, None, len(data)

    @classmethod
    def from_pieces(cls, states: np.ndarray, lengths: np.ndarray, pieces: Sequence) -> EncodedBlock:
        """A block whose chunks are ``pieces`` (one buffer per non-missing chunk, C order), not yet joined."""
        block = cls.__new__(cls)
        block.states, block.lengths = states, lengths
        block._data, block._pieces = None, tuple(pieces)
        block._size = sum(memoryview(p).nbytes for p in block._pieces)
        return block

    @property
    def data(self) -> bytes:
        """All chunks' encoded bytes, back to back."""
        data = self._data
        if data is None:
            data = self._data = b"".join(self._pieces)
        return data

    def _parts(self) -> Sequence:
        return (self._data,) if self._data is not None else self._pieces

    def _joined(self) -> bytes:
        return self._data if self._data is not None else b"".join(self._pieces)

    def __reduce__(self):
        return (EncodedBlock, (self.states, self.lengths, self._joined()))

    def __repr__(self) -> str:
        return f"EncodedBlock<grid={self.states.shape}, chunks={int(np.count_nonzero(self.states))}, {self._size} bytes>"

    @property
    def nbytes(self) -> int:
        return self._size + self.states.nbytes + self.lengths.nbytes

    def __sizeof__(self) -> int:  # lets distributed account for worker memory
        return self.nbytes

    def chunk_views(self) -> list:
        """The encoded bytes of each non-missing chunk in C order (views, no copies)."""
        pieces = self._pieces
        if pieces is not None and self._data is None:
            return [p if isinstance(p, memoryview) else memoryview(p) for p in pieces]
        view = memoryview(self.data)
        sizes = np.asarray(self.lengths, np.int64)[np.asarray(self.states) != MISSING].ravel()
        ends = np.cumsum(sizes).tolist()
        return [view[end - size : end] for end, size in zip(ends, sizes.tolist())]

    def chunks(self) -> Iterator[tuple[tuple[int, ...], memoryview]]:
        """``(index within block, encoded bytes)`` of every non-missing chunk."""
        nonmissing = self.states != MISSING
        indices = zip(*np.nonzero(nonmissing)) if self.states.ndim else ([()] if nonmissing[()] else [])
        for index, data in zip(indices, self.chunk_views()):
            yield tuple(int(i) for i in index), data


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
        starts = np.asarray(part.offsets).ravel()
        for position in inlined.tolist():
            start = int(starts[position])
            pieces[position] = buffer[start : start + int(lengths.flat[position])]
    present = [piece for piece, state in zip(pieces, flat_states.tolist()) if state != MISSING]
    return EncodedBlock.from_pieces(states.copy(), lengths.copy(), present)


@dataclass(frozen=True, slots=True)
class ChunkRef:
    """One chunk's reference: what a single-chunk task carries instead of a one-entry ChunkManifest.

    A graph at native chunking has a task per chunk; this needs about half the
    memory and build time of a manifest part (four numpy arrays and a url table).
    """

    state: int
    url: str
    offset: int
    length: int
    data: bytes = b""


def fetch_chunk(ref: ChunkRef, registry: ObjectStoreRegistry, ndim: int) -> EncodedBlock:
    """``fetch_block`` for a single chunk: the block has one chunk along each of the ``ndim`` axes."""
    grid = (1,) * ndim
    pieces: list = []
    if ref.state == VIRTUAL:
        request = (ref.url, np.zeros(1, np.int64), np.array([ref.offset], np.uint64), np.array([ref.length], np.uint64))
        (pieces,) = _read_ranges([request], registry, grid)
    elif ref.state == INLINED:
        pieces = [ref.data]
    return EncodedBlock.from_pieces(np.full(grid, ref.state, np.uint8), np.full(grid, ref.length, np.uint64), pieces)


def _read_ranges(requests, registry: ObjectStoreRegistry, grid_shape) -> list[list]:
    """One coalesced range read per file; files read concurrently."""

    def what(positions):
        def text() -> str:  # only when a read fails
            first = chunk_key(np.unravel_index(int(positions[0]), grid_shape)) if len(grid_shape) else "0"
            return f"{len(positions)} chunk(s) (first: block chunk {first})"

        return text

    resolved = [registry.resolve(r[0]) for r in requests]
    if len(requests) == 1 or all(is_in_process(store) for store, _ in resolved):
        # one file, or local disk / memory: nothing to wait for, so no event loop
        # (gathering coroutines costs three times the CPU of the reads themselves)
        return [
            read_ranges(store, path, offsets.tolist(), sizes.tolist(), url=url, what=what(positions))
            for (url, positions, offsets, sizes), (store, path) in zip(requests, resolved)
        ]

    async def read_all():
        return await asyncio.gather(*(
            read_ranges_async(store, path, offsets.tolist(), sizes.tolist(), url=url, what=what(positions))
            for (url, positions, offsets, sizes), (store, path) in zip(requests, resolved)
        ))

    return run_sync(read_all())


# -- decoding ----------------------------------------------------------------


def decode_into(
    out: np.ndarray,
    block: EncodedBlock,
    codec_key: str,
    grid_origin: Sequence[int],
    element_origin: Sequence[int],
    threads: int = 1,
    geometry: Geometry = None,
) -> None:
    """Decode a block's chunks into ``out``; missing chunks become the fill value.

    ``grid_origin`` is the block's first chunk in the array's grid;
    ``element_origin`` the array position that ``out[0, 0, ...]`` holds;
    ``geometry`` where the block's chunks lie if they differ in size (``ChunkGeometry.part``).
    """
    codec = codec_for_key(codec_key)
    jobs, fills = _chunk_jobs(block, codec.chunk_shape, grid_origin, element_origin, out.shape, geometry)
    for region in fills:
        out[region] = codec.fill_value
    _run_jobs(codec, out, jobs, threads)


def _chunk_jobs(
    block: EncodedBlock,
    chunks: Sequence[int],
    grid_origin: Sequence[int],
    element_origin: Sequence[int],
    out_shape: Sequence[int],
    geometry: Geometry = None,
) -> tuple[list, list]:
    """What decoding one block into ``out`` takes, worked out with numpy rather than per chunk.

    Returns ``(jobs, fills)``: a job ``(chunk index in the grid, encoded bytes,
    region of out, part of the chunk or None for all of it, the chunk's shape
    or None for ``chunks``)`` per non-missing chunk in C order, and the region
    of ``out`` of each missing chunk.
    """
    states = block.states
    ndim = states.ndim
    if ndim == 0:
        grid = np.zeros((1, 0), np.int64)
        present = np.asarray([states[()] != MISSING])
    else:
        grid = np.indices(states.shape, dtype=np.int64).reshape(ndim, -1).T + np.asarray(grid_origin, np.int64)
        present = (states != MISSING).ravel()
    if geometry is None:
        sizes = np.asarray(chunks, np.int64)
        start = grid * sizes - np.asarray(element_origin, np.int64)
    else:
        start, sizes = _rectilinear_bounds(grid, geometry)
        start -= np.asarray(element_origin, np.int64)
    stop = start + sizes
    limit = np.asarray(out_shape, np.int64)
    lo = np.clip(start, 0, limit)
    hi = np.clip(stop, 0, limit)
    whole = ((lo == start) & (hi == stop)).all(axis=1)
    lo_l, hi_l, start_l, grid_l = lo.tolist(), hi.tolist(), start.tolist(), grid.tolist()
    shapes = None if geometry is None else sizes.tolist()
    views = iter(block.chunk_views())  # one per present chunk, in the same C order
    jobs, fills = [], []
    for k, (is_present, is_whole) in enumerate(zip(present.tolist(), whole.tolist())):
        region = tuple(map(slice, lo_l[k], hi_l[k])) if ndim else (Ellipsis,)  # out[...]: a 0-d view, not a scalar
        if not is_present:
            fills.append(region)
            continue
        inner = None if is_whole else tuple(slice(a - s, b - s) for a, b, s in zip(lo_l[k], hi_l[k], start_l[k]))
        jobs.append((grid_l[k], next(views), region, inner, None if shapes is None else tuple(shapes[k])))
    return jobs, fills


def _rectilinear_bounds(grid: np.ndarray, geometry: tuple) -> tuple[np.ndarray, np.ndarray]:
    """Each chunk's first element and size per axis, for chunk indices ``grid`` (one row per chunk)."""
    start = np.empty(grid.shape, np.int64)
    sizes = np.empty(grid.shape, np.int64)
    for axis, c in enumerate(geometry):
        if isinstance(c, int):
            start[:, axis] = grid[:, axis] * c
            sizes[:, axis] = c
        else:
            local = grid[:, axis] - c.first
            edges = np.asarray(c.sizes, np.int64)
            start[:, axis] = c.start + (np.cumsum(edges) - edges)[local]
            sizes[:, axis] = edges[local]
    return start, sizes


def _decode_jobs(codec, out: np.ndarray, jobs: Sequence) -> None:
    for index, data, region, inner, shape in jobs:
        try:
            codec.decode_into(data, out[region], inner, shape)
        except Exception as err:
            raise ValueError(f"cannot decode chunk {chunk_key(index)} ({len(data)} bytes): {err}") from err


def _run_jobs(codec, out: np.ndarray, jobs: list, threads: int) -> None:
    """Decode ``jobs`` into ``out`` on ``threads`` threads (the codecs release the GIL)."""
    threads = max(1, min(threads, len(jobs)))
    if threads == 1:
        _decode_jobs(codec, out, jobs)
        return
    # contiguous runs of chunks (neighbouring regions of out), a few per thread for balance
    step = max(1, -(-len(jobs) // (threads * 8)))
    batches = [jobs[i : i + step] for i in range(0, len(jobs), step)]
    pool = ThreadPoolExecutor(threads, thread_name_prefix="vzdask-decode")
    try:
        futures = [pool.submit(_decode_jobs, codec, out, batch) for batch in batches]
        for future in futures:  # in order: the first bad chunk in C order is the one reported
            future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def load_region(
    part: ChunkManifest | ChunkRef,
    registry: ObjectStoreRegistry,
    codec_key: str,
    grid_origin: Sequence[int],
    region: tuple[slice, ...],
    geometry: Geometry = None,
) -> np.ndarray:
    """Fetch and decode the chunks covering ``region`` (array coordinates) of one output block."""
    return decode_region(fetch_part(part, registry, len(region)), codec_key, grid_origin, region, geometry)


def load_converted(convert, part, registry, codec_key: str, grid_origin, region, geometry: Geometry = None
                   ) -> np.ndarray:
    """``load_region``, then ``convert`` (an elementwise step such as CF decoding) on the block."""
    return convert(load_region(part, registry, codec_key, grid_origin, region, geometry))


def fetch_part(part: ChunkManifest | ChunkRef, registry: ObjectStoreRegistry, ndim: int) -> EncodedBlock:
    """Fetch what one task carries: a single chunk's ``ChunkRef`` or a manifest part of ``ndim`` axes."""
    return fetch_chunk(part, registry, ndim) if isinstance(part, ChunkRef) else fetch_block(part, registry)


#: Results of at least this many bytes are mapped without numpy's huge-page advice (``result_array``).
MAPPED_RESULT_BYTES = 4 * 2**20


def result_array(shape: Sequence[int], dtype: Any) -> np.ndarray:
    """An uninitialised array for decoded chunks: ``np.empty``, or for a large one an anonymous memory map.

    numpy advises the kernel to back every array of 4 MiB or more with
    transparent huge pages (``madvise(MADV_HUGEPAGE)``). Where the kernel's
    THP defrag setting is ``madvise`` (a common default), each first touch
    of such an array then waits while the kernel compacts memory into a
    2 MiB page, which on a machine whose memory is mostly page cache costs
    more than the decoding: one compute of 1.3 GB of GRIB values took 0.90x
    the single-thread decode floor, 0.69x without the advice; a netCDF
    compute of 593 MB whose results are kept 1.75 s, against 1.17 s. Huge
    pages win only where freed ones are reused at once (computes whose
    results are dropped: 1.08 s against 1.20 s). A large result is therefore
    a private anonymous mapping of 4 KiB pages, made present when mapped
    (``MAP_POPULATE``: one pass in the kernel instead of a fault per page)
    and freed with the array. On other systems, or for object arrays (which
    cannot live in a buffer), it is ``np.empty``.
    """
    dtype = np.dtype(dtype)
    shape = tuple(int(n) for n in shape)
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes < MAPPED_RESULT_BYTES or dtype.hasobject or sys.platform != "linux":  # (numpy advises on Linux only)
        return np.empty(shape, dtype)
    # private (Python's default is shared memory, which a forked child would write into), its pages made now
    try:
        mapped = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | mmap.MAP_POPULATE)
    except OSError as err:  # what np.empty raises, so callers that catch MemoryError still do
        raise MemoryError(f"Unable to allocate {nbytes / 2**30:.3g} GiB for an array with shape {shape} and "
                          f"data type {dtype} ({err.strerror})") from err
    return np.ndarray(shape, dtype, buffer=mapped)  # views of it have it as their base


def decode_region(
    block: EncodedBlock, codec_key: str, grid_origin: Sequence[int], region: tuple[slice, ...],
    geometry: Geometry = None,
) -> np.ndarray:
    """Decode an already fetched block into the array region ``region``."""
    codec = codec_for_key(codec_key)
    out = result_array([r.stop - r.start for r in region], codec.dtype)
    decode_into(out, block, codec_key, grid_origin, tuple(r.start for r in region), geometry=geometry)
    return out


def assemble(
    blocks: Sequence[EncodedBlock],
    codec_key: str,
    shape: Sequence[int],
    layout: BlockLayout,
    sizes: Sequence[int | tuple[int, ...]] | None = None,
) -> np.ndarray:
    """``compute``'s final step: decode every block into one numpy array, on all cores.

    ``sizes``: the array's chunk sizes (``chunk_sizes``) if its chunks differ in size along an axis.
    """
    codec = codec_for_key(codec_key)
    out = result_array(shape, codec.dtype)
    if out.size == 0:
        return out
    origin = (0,) * out.ndim
    geometry = None if sizes is None else ChunkGeometry(sizes).part()
    jobs: list = []
    for index, block in zip(layout.indices(), blocks):
        grid_origin = tuple(i * b for i, b in zip(index, layout.block))
        block_jobs, fills = _chunk_jobs(block, codec.chunk_shape, grid_origin, origin, out.shape, geometry)
        for region in fills:
            out[region] = codec.fill_value
        jobs.extend(block_jobs)
    _run_jobs(codec, out, jobs, _worker_threads())
    return out


def _worker_threads() -> int:
    return _local_threads()


def blocks_to_manifest(layout: BlockLayout, blocks: Sequence[EncodedBlock]) -> ChunkManifest:
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
        parts.extend(block._parts())  # the chunks' own buffers: joined once, here
        position += block._size
    path_index = np.full(layout.grid, -1, np.int32)
    return ChunkManifest._from_parts(state, path_index, offsets, lengths, (), b"".join(parts))


class TaskParts:
    """Cuts a manifest into the small manifests that single tasks carry.

    ``ChunkManifest.__getitem__`` is general (it remaps the whole url table and
    repacks inlined bytes only when it must); a task's part only needs its own
    urls and inlined bytes, found from its own chunks. A task of one chunk gets
    a ``ChunkRef`` instead (``chunk``): a graph at native chunking has a
    million of them.
    """

    def __init__(self, manifest: ChunkManifest) -> None:
        self.states, self.path_index = manifest.states, manifest.path_index
        self.offsets, self.lengths = manifest.offsets, manifest.lengths
        self.urls, self.inline = manifest.urls, manifest.inline_buffer
        self.any_inlined = bool(self.inline) and bool((self.states == INLINED).any())

    def __call__(self, where: tuple[slice, ...]) -> ChunkManifest:
        key = (*where, Ellipsis)  # keeps a 0-d grid an array
        states, lengths = self.states[key].copy(), self.lengths[key].copy()
        offsets, path_index = self.offsets[key].copy(), self.path_index[key]
        virtual = path_index >= 0
        used, renumbered = np.unique(path_index[virtual], return_inverse=True)
        if len(used) == len(self.urls):
            urls, path_index = self.urls, path_index.copy()
        else:
            urls = tuple(self.urls[i] for i in used.tolist())
            path_index = np.full(path_index.shape, -1, np.int32)
            path_index[virtual] = renumbered
        inline = b""
        if self.any_inlined:
            inlined = states == INLINED
            if inlined.any():
                view = memoryview(self.inline)
                starts, sizes = offsets[inlined].tolist(), lengths[inlined].tolist()
                inline = b"".join(view[s : s + n] for s, n in zip(starts, sizes))
                offsets[inlined] = np.cumsum([0, *sizes[:-1]], dtype=np.uint64)
        return ChunkManifest._from_parts(states, path_index, offsets, lengths, urls, inline)

    def chunk(self, index: tuple[int, ...]) -> ChunkRef:
        """The reference of the single chunk at ``index``."""
        state, length = int(self.states[index]), int(self.lengths[index])
        offset = int(self.offsets[index])
        if state == VIRTUAL:
            return ChunkRef(state, self.urls[self.path_index[index]], offset, length)
        if state == INLINED:
            return ChunkRef(state, "", 0, length, bytes(memoryview(self.inline)[offset : offset + length]))
        return ChunkRef(state, "", 0, 0)


# -- whole arrays, here (no graph) -------------------------------------------


def read_array(array) -> np.ndarray:
    """Fetch and decode a whole ManifestArray here, without a dask graph (small arrays: coordinates).

    An array that is one virtual chunk (a dimension coordinate, usually) is
    one ranged get: the general block reader costs several times the read.
    """
    return read_arrays([array])[0]


def _whole_chunk(array) -> tuple[str, int, int] | None:
    """``(url, offset, length)`` if the array is exactly one virtual chunk, else None."""
    manifest = array.manifest
    entry = manifest.entry((0,) * manifest.ndim) if manifest.nchunks == 1 else None
    if entry is not None and entry[0] == "virtual" and tuple(array.chunk_shape) == tuple(array.shape):
        return entry[1], entry[2], entry[3]
    return None


def whole_chunk_bytes(array, parsed_bytes=None) -> bytes | None:
    """The encoded bytes of an array that is one chunk, if they are at hand: inlined, or read by the parser."""
    manifest = array.manifest
    if manifest.nchunks != 1 or tuple(array.chunk_shape) != tuple(array.shape):
        return None
    entry = manifest.entry((0,) * manifest.ndim)
    if entry is None:
        return None
    if entry[0] == "inlined":
        return bytes(entry[1])
    return parsed_bytes(entry[1], entry[2], entry[3]) if parsed_bytes is not None else None


def read_arrays(arrays: Sequence, parsed_bytes=None) -> list[np.ndarray]:
    """``read_array`` for several arrays: the one-chunk arrays of each file are fetched in one request.

    A file's coordinates (time, lat, lon) are a few small ranges of it; one
    ``get_ranges`` costs about what one ``get`` does. ``parsed_bytes(url,
    offset, length)`` may give a chunk's bytes without a request (the parser
    read them already) or None.
    """
    from vzdask.codecs import cached_codec_for, codec_key as make_codec_key

    out: list = [None] * len(arrays)
    by_url: dict[tuple[str, int], list[tuple[int, int, int]]] = {}  # (url, id(registry)) -> chunks
    for i, array in enumerate(arrays):
        whole = _whole_chunk(array)
        if whole is None:
            layout = array.layout
            blocks = [fetch_block(array.manifest[layout.grid_slices(index)], array.registry)
                      for index in layout.indices()]
            sizes = array.chunk_sizes
            rectilinear = not all(isinstance(c, int) for c in sizes)
            out[i] = assemble(blocks, make_codec_key(array.metadata), array.shape, layout,
                              sizes if rectilinear else None)
        else:
            url, offset, length = whole
            data = parsed_bytes(url, offset, length) if parsed_bytes is not None else None
            if data is not None:
                out[i] = cached_codec_for(array.metadata).decode(data)
                continue
            by_url.setdefault((url, id(array.registry)), []).append((i, offset, length))
    for (url, _), wanted in by_url.items():
        store, path = arrays[wanted[0][0]].registry.resolve(url)
        pieces = read_ranges(store, path, [o for _, o, _ in wanted], [n for _, _, n in wanted], url=url,
                             what=f"{len(wanted)} one-chunk array(s)")
        for (i, _, _), data in zip(wanted, pieces):
            out[i] = cached_codec_for(arrays[i].metadata).decode(data)
    return out
