"""The dask graphs over manifests: lazy task mappings, and what a persisted array holds.

``FetchTasks`` are a ManifestArray's own graph (one task per block, returning
encoded bytes: what ``persist`` inlines); ``LoadTasks`` are the fetch+decode
tasks behind ``to_dask_array`` (``vzdask.dask_array``). Both are mappings
that make each task on demand, so an array of millions of chunks costs
nothing until its graph is used. The task functions live in
``vzdask.chunk_tasks``; this module knows nothing of ManifestArray.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from vzdask._compat import Task
from vzdask.chunk_tasks import BlockLayout, ChunkGeometry, TaskParts, fetch_block, load_converted, load_region
from vzdask.codecs import codec_for_key
from vzdask.manifests.manifest import ChunkManifest
from vzdask.registry import ObjectStoreRegistry

#: How a ManifestArray's dask name (its layer's) starts, fetch tasks or persisted blocks alike.
MANIFEST_LAYER_PREFIX = "manifestarray-"


@dataclass(frozen=True)
class PersistedBlocks:
    """What a persisted ManifestArray holds until it is gathered: its blocks, as dask keys and values.

    ``tasks[(name, *index)]`` is the block at ``index`` of ``layout``: a
    ``distributed.Future`` while a cluster holds it, or a task computing it.
    Writers write such blocks where they are (``vzdask.writers.cluster``).
    """

    name: str
    tasks: Mapping[tuple, Any]
    layout: BlockLayout

    def keys(self) -> list[tuple]:
        """The blocks' dask keys, in ``layout.indices()`` order (C order of the block grid)."""
        return [(self.name, *index) for index in self.layout.indices()]

    def blocks(self) -> list[Any]:
        """The blocks' values (futures, or tasks), in ``keys()`` order."""
        return [self.tasks[key] for key in self.keys()]


class FetchTasks(Mapping):
    """The fetch tasks of one ManifestArray, made on demand.

    ``dask.is_dask_collection`` (which xarray calls on every variable) asks for
    the graph; a lazy mapping keeps that cheap for arrays of millions of chunks.
    """

    def __init__(self, name: str, manifest: ChunkManifest, registry: ObjectStoreRegistry, layout: BlockLayout):
        self.name, self.registry, self.layout = name, registry, layout
        self.part = TaskParts(manifest)

    def __getitem__(self, key):
        if not (isinstance(key, tuple) and key and key[0] == self.name and len(key) == len(self.layout.grid) + 1):
            raise KeyError(key)
        index = key[1:]
        if any(not 0 <= i < n for i, n in zip(index, self.layout.nblocks)):
            raise KeyError(key)
        return Task(key, fetch_block, self.part(self.layout.grid_slices(index)), self.registry)

    def __iter__(self):
        return ((self.name, *index) for index in self.layout.indices())

    def __len__(self) -> int:
        return math.prod(self.layout.nblocks)


class LoadTasks(Mapping):
    """The fetch+decode tasks of ``to_dask_array``, one per output block, made on demand.

    Like ``FetchTasks``: building a dask array over millions of chunks costs
    nothing until its graph is materialised, and culling (``x[:10]``) only
    ever makes the tasks it keeps.
    """

    def __init__(self, name: str, manifest: ChunkManifest, registry: ObjectStoreRegistry, codec_key: str,
                 native: Sequence[int | tuple[int, ...]], chunks: tuple[tuple[int, ...], ...], convert=None,
                 dtype=None):
        """``native``: per axis the chunk size, or every chunk's size (a rectilinear axis).

        ``convert(block) -> block`` (picklable, elementwise) runs on each decoded block; ``dtype`` is its output's.
        """
        self.name, self.registry, self.codec_key = name, registry, codec_key
        self.part = TaskParts(manifest)
        self.native = tuple(native)
        self.geometry = ChunkGeometry(self.native)
        self.chunks = chunks
        self.starts = tuple(axis_starts(c) for c in chunks)
        self.convert = convert
        self.dtype = np.dtype(dtype) if dtype is not None else codec_for_key(codec_key).dtype

    def __getitem__(self, key):
        part, origin, region, geometry = self.task_inputs(key)
        extra = () if geometry is None else (geometry,)  # regular grids: the tasks they always had
        if self.convert is not None:
            return Task(key, load_converted, self.convert, part, self.registry, self.codec_key, origin, region,
                        *extra)
        return Task(key, load_region, part, self.registry, self.codec_key, origin, region, *extra)

    def task_inputs(self, key) -> tuple:
        """``(part, grid origin, region, geometry)`` of the task ``key``: what it fetches and where its block lies.

        ``geometry`` is None for a regular grid, else where the part's chunks lie (``ChunkGeometry.part``).
        """
        if not (isinstance(key, tuple) and key and key[0] == self.name and len(key) == len(self.chunks) + 1):
            raise KeyError(key)
        region, grid = [], []
        for axis, (i, starts, chunks) in enumerate(zip(key[1:], self.starts, self.chunks)):
            if not (isinstance(i, int) and 0 <= i < len(chunks)):
                raise KeyError(key)
            start = starts[i]
            stop = start + chunks[i]
            region.append(slice(start, stop))
            grid.append(self.geometry.grid_span(axis, start, stop))
        grid = tuple(grid)
        origin = tuple(g.start for g in grid)
        one_chunk = all(g.stop - g.start == 1 for g in grid)
        part = self.part.chunk(origin) if one_chunk else self.part(grid)
        return part, origin, tuple(region), self.geometry.part(grid)

    def __iter__(self):
        return ((self.name, *index) for index in itertools.product(*(range(len(c)) for c in self.chunks)))

    def __len__(self) -> int:
        return math.prod(len(c) for c in self.chunks)


def axis_starts(chunks: Sequence[int]) -> list[int]:
    """Where each block of one axis starts."""
    return [0, *itertools.accumulate(chunks)][: len(chunks)]
