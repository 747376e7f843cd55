"""The dask array of a ManifestArray: a whole-array ``compute`` decodes into one result array.

A plain ``dask.array.Array`` decodes each task's block into memory of its
own, then ``compute`` copies every block into the result: twice the memory
touched, and a serial copy at the end (about 0.2-0.6 s per 600 MB). When the array
``to_dask_array`` returned is computed as it is (not a result derived from
it) in this process, each compute's load tasks decode straight into their
region of one result array they share, and the final step hands that array
over when the blocks are exactly its tiles.

Everything else is dask's: the graph, the tasks' results (views of the
shared array), every operation (which returns plain dask arrays). Tasks run
in another process or on a distributed worker allocate their own blocks as
usual (a shared array there would outlive spilled blocks), and the final
step concatenates as dask does.
"""

from __future__ import annotations

import functools
import math
import os
import sys
import threading
import uuid
import weakref

import dask.array as da
import numpy as np
from dask.array.core import finalize as dask_finalize
from dask.array.core import slices_from_chunks
from dask.array.optimization import optimize as dask_optimize
from dask.core import flatten
from dask.highlevelgraph import HighLevelGraph, MaterializedLayer
from dask._task_spec import Task

from vzdask.codecs import codec_for_key
from vzdask.graph import LoadTasks, decode_into, fetch_part, load_region


class OutputBuffers:
    """This process's result arrays of running computes, by compute token.

    Held weakly: a result array lives as long as a block (a view) or the
    compute's final result does. ``claim`` hands one out at most once, so no
    later task of the same token can write into an array a user holds.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._live: dict[str, weakref.ref] = {}

    def get(self, token: str, shape: tuple[int, ...], dtype) -> np.ndarray:
        with self._lock:
            ref = self._live.get(token)
            buffer = ref() if ref is not None else None
            if buffer is None:
                self._live = {t: r for t, r in self._live.items() if r() is not None}
                buffer = np.empty(shape, dtype)
                self._live[token] = weakref.ref(buffer)
            return buffer

    def claim(self, buffer: np.ndarray) -> bool:
        """Take ``buffer`` out of the registry; False if it is not (or no longer) in it."""
        with self._lock:
            for token, ref in self._live.items():
                if ref() is buffer:
                    del self._live[token]
                    return True
        return False

    def __len__(self) -> int:
        with self._lock:
            return sum(ref() is not None for ref in self._live.values())


OUTPUT_BUFFERS = OutputBuffers()


def load_region_into(token: str, pid: int, shape, part, registry, codec_key: str, grid_origin, region) -> np.ndarray:
    """``load_region``, decoding into ``region`` of the compute's shared result array; returns that view.

    ``pid`` is the process that planned the compute: anywhere else, a plain ``load_region``.
    """
    if pid != os.getpid() or _in_distributed_worker():
        return load_region(part, registry, codec_key, grid_origin, region)
    codec = codec_for_key(codec_key)
    buffer = OUTPUT_BUFFERS.get(token, shape, codec.dtype)
    out = buffer[region] if region else buffer[...]  # buffer[()] of a 0-d array is a scalar, not a view
    decode_into(out, fetch_part(part, registry, len(region)), codec_key, grid_origin, tuple(r.start for r in region))
    return out


def _in_distributed_worker() -> bool:
    distributed = sys.modules.get("distributed")
    if distributed is None:
        return False
    try:
        distributed.get_worker()
    except ValueError:
        return False
    return True


class SharedLoadTasks(LoadTasks):
    """``LoadTasks`` whose tasks decode into one result array per process (``load_region_into``)."""

    def __init__(self, tasks: LoadTasks, token: str) -> None:
        self.__dict__.update(tasks.__dict__)
        self.token, self.pid = token, os.getpid()
        self.shape = tuple(sum(c) for c in tasks.chunks)

    def __getitem__(self, key):
        part, origin, region = self.task_inputs(key)
        return Task(key, load_region_into, self.token, self.pid, self.shape, part, self.registry, self.codec_key, origin, region)


def optimize(dsk, keys, **kwargs):
    """dask's array optimisation, after giving this compute's load layers a fresh shared result array."""
    if isinstance(dsk, HighLevelGraph):
        token = uuid.uuid4().hex
        layers = {}
        for name, layer in dsk.layers.items():
            tasks = getattr(layer, "mapping", None)
            if type(tasks) is LoadTasks:
                layer = MaterializedLayer(SharedLoadTasks(tasks, f"{token}-{name}"), annotations=layer.annotations)
            layers[name] = layer
        dsk = HighLevelGraph(layers, dsk.dependencies, dsk.key_dependencies)
    return dask_optimize(dsk, keys, **kwargs)


def finalize(results, chunks):
    """dask's final step, except that tiles of one fresh shared result array return that array, uncopied."""
    blocks = list(flatten(results)) if isinstance(results, (list, tuple)) else [results]
    base = getattr(blocks[0], "base", None) if blocks else None
    if isinstance(base, np.ndarray) and _is_tiled_by(base, blocks, chunks) and OUTPUT_BUFFERS.claim(base):
        return base
    return dask_finalize(results)


def _is_tiled_by(base: np.ndarray, blocks: list, chunks) -> bool:
    """Whether ``blocks`` are exactly ``base``'s blocks for ``chunks``, in dask's key order."""
    if base.shape != tuple(sum(c) for c in chunks) or len(blocks) != math.prod(len(c) for c in chunks):
        return False
    start = base.__array_interface__["data"][0]
    strides = base.strides
    for block, where in zip(blocks, slices_from_chunks(chunks)):
        if not isinstance(block, np.ndarray) or block.base is not base or block.strides != strides:
            return False
        if block.shape != tuple(s.stop - s.start for s in where):
            return False
        if block.size and block.__array_interface__["data"][0] != start + sum(
            s.start * n for s, n in zip(where, strides)
        ):
            return False
    return True


def with_direct_compute(array: da.Array) -> da.Array:
    """Give a fresh load-task array (``to_dask_array``'s) the one-result-array compute; returns it.

    Set on the instance, not by subclassing: xarray refuses to mix two chunked
    array types in one operation, so the array stays a plain ``dask.array.Array``.
    Arrays derived from it (``x + 1``, ``x[:10]``) and copies are ordinary dask arrays.
    """
    array.__dask_optimize__ = optimize
    array.__dask_postcompute__ = functools.partial(_postcompute, array.chunks)
    return array


def _postcompute(chunks):
    return finalize, (chunks,)
