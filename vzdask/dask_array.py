"""The dask array of a ManifestArray: a whole-array ``compute`` decodes into one result array.

A plain ``dask.array.Array`` decodes each task's block into memory of its
own, then ``compute`` copies every block into the result: twice the memory
touched, and a serial copy at the end (about 0.5 s per 600 MB here). When the array
``to_dask_array`` returned is computed as it is (not a result derived from
it), its graph gets one more task, a ``SharedResult``: the load tasks decode
straight into their region of its array, and the final step hands that array
over when the blocks are exactly its tiles.

Everything else is dask's: the graph, the tasks' results (views of the
shared array), every operation (which returns plain dask arrays). Tasks run
in another process or on a distributed worker allocate their own blocks as
usual, and the final step concatenates as dask does.
"""

from __future__ import annotations

import functools
import math
import os
import sys
import threading
import uuid

import dask
import dask.array as da
import numpy as np

from vzdask._compat import HighLevelGraph, MaterializedLayer, Task, TaskRef, flatten, slices_from_chunks
from vzdask._compat import dask_array_finalize as dask_finalize
from vzdask._compat import dask_array_optimize as dask_optimize
from vzdask.chunk_tasks import (BlockLayout, ChunkGeometry, Geometry, decode_into, decode_region, fetch_part,
                                result_array)
from vzdask.chunk_tasks import load_converted, load_region
from vzdask.codecs import codec_key as make_codec_key
from vzdask.graph import MANIFEST_LAYER_PREFIX, FetchTasks, LoadTasks, axis_starts


class SharedResult:
    """The result array of one execution of a compute, which its load tasks decode into.

    A graph task makes one per execution (``optimize`` adds it), so every run
    of a graph, also of a graph that ``to_delayed`` or ``dask.optimize`` kept,
    writes into fresh memory that nothing else holds. The array is allocated
    on first use. A pickled copy (processes, a cluster) or one used on a
    distributed worker gives none (``array`` is None) and tasks allocate their
    own blocks, as dask's do: a shared array there would outlive spilled blocks.
    """

    def __init__(self, shape: tuple[int, ...], dtype: str) -> None:
        self.shape, self.dtype, self.pid = tuple(shape), np.dtype(dtype), os.getpid()
        self._array: np.ndarray | None = None
        self._lock = threading.Lock()

    def array(self) -> np.ndarray | None:
        if self.pid != os.getpid() or _in_distributed_worker():
            return None
        with self._lock:
            if self._array is None:
                self._array = result_array(self.shape, self.dtype)
            return self._array

    def __reduce__(self):
        return _copy_elsewhere, (self.shape, self.dtype.str)


def _copy_elsewhere(shape, dtype) -> SharedResult:
    """An unpickled SharedResult: a copy in another process (or sent there), which gives no array."""
    result = SharedResult(shape, dtype)
    result.pid = None
    return result


def _in_distributed_worker() -> bool:
    distributed = sys.modules.get("distributed")
    if distributed is None:
        return False
    try:
        distributed.get_worker()
    except ValueError:
        return False
    return True


def load_region_into(result: SharedResult, part, registry, codec_key: str, grid_origin, region,
                     geometry: Geometry = None) -> np.ndarray:
    """``load_region``, decoding into ``region`` of the execution's shared result; returns that view."""
    buffer = result.array()
    if buffer is None:
        return load_region(part, registry, codec_key, grid_origin, region, geometry)
    out = buffer[region] if region else buffer[...]  # buffer[()] of a 0-d array is a scalar, not a view
    decode_into(out, fetch_part(part, registry, len(region)), codec_key, grid_origin, tuple(r.start for r in region),
                geometry=geometry)
    return out


def load_converted_into(result: SharedResult, convert, part, registry, codec_key: str, grid_origin, region,
                        geometry: Geometry = None) -> np.ndarray:
    """``load_converted``, its output copied into ``region`` of the shared result; returns that view."""
    block = load_converted(convert, part, registry, codec_key, grid_origin, region, geometry)
    buffer = result.array()
    if buffer is None:
        return block
    out = buffer[region] if region else buffer[...]
    out[...] = block
    return out


class SharedLoadTasks(LoadTasks):
    """``LoadTasks`` plus one ``SharedResult`` task (``result_key``) that every load task decodes into."""

    def __init__(self, tasks: LoadTasks, result_key: str) -> None:
        self.__dict__.update(tasks.__dict__)
        self.result_key = result_key
        self.shape = tuple(sum(c) for c in tasks.chunks)

    def __getitem__(self, key):
        if key == self.result_key:
            return Task(key, SharedResult, self.shape, self.dtype.str)
        part, origin, region, geometry = self.task_inputs(key)
        extra = () if geometry is None else (geometry,)
        if self.convert is not None:
            return Task(key, load_converted_into, TaskRef(self.result_key), self.convert, part, self.registry,
                        self.codec_key, origin, region, *extra)
        return Task(key, load_region_into, TaskRef(self.result_key), part, self.registry, self.codec_key, origin,
                    region, *extra)

    def __iter__(self):
        yield self.result_key
        yield from super().__iter__()

    def __len__(self) -> int:
        return super().__len__() + 1


def optimize(dsk, keys, **kwargs):
    """dask's array optimisation, after giving the load layers computed as they are a shared result each.

    It is dask's array optimiser for every array (``array_optimize`` in dask's config, see below): a layer
    of load tasks gets its ``SharedResult`` only when it is computed as it is (``_computed_as_is``), so an
    array derived from it (``x + 1``, ``x[:10]``, ``x.sum()``) keeps dask's own blocks, freed as used.
    """
    if isinstance(dsk, HighLevelGraph):
        wanted = _computed_as_is(dsk, keys)
        token = uuid.uuid4().hex
        layers = {}
        for name, layer in dsk.layers.items():
            tasks = getattr(layer, "mapping", None)
            if type(tasks) is LoadTasks and name in wanted:
                tasks = SharedLoadTasks(tasks, f"shared-result-{token}-{name}")
                layer = MaterializedLayer(tasks, annotations=layer.annotations)
            layers[name] = layer
        dsk = HighLevelGraph(layers, dsk.dependencies, dsk.key_dependencies)
        if any(_is_manifest_layer(name, layer) for name, layer in layers.items()):
            # a ManifestArray's blocks (it shares this optimiser, see ManifestArray.__dask_optimize__):
            # left as they are, as its own optimiser left them (dask's fusion breaks clone/bind of them)
            return dsk
    return dask_optimize(dsk, keys, **kwargs)


def _is_manifest_layer(name: str, layer) -> bool:
    """A ManifestArray's layer: its fetch tasks, or its persisted blocks."""
    return type(getattr(layer, "mapping", None)) is FetchTasks or str(name).startswith(MANIFEST_LAYER_PREFIX)


def _computed_as_is(dsk: HighLevelGraph, keys) -> set[str]:
    """The load layers whose own blocks are asked for: their keys requested, or handed to our ``finalize``.

    ``dask.compute`` asks for its final step's key (a task calling the collection's post-compute
    function on the blocks); ``persist`` and ``dask.optimize`` ask for the blocks' keys.
    """
    names: set[str] = set()
    for key in flatten(keys):
        name = key[0] if isinstance(key, tuple) else key
        layer = dsk.layers.get(name)
        if layer is None:
            continue
        mapping = getattr(layer, "mapping", None)
        if type(mapping) is LoadTasks:
            names.add(name)
        elif isinstance(layer, MaterializedLayer) and isinstance(mapping, dict):
            task = mapping.get(key)
            if getattr(task, "func", None) is finalize:  # looked up now: tests may wrap it
                names.update(dep[0] if isinstance(dep, tuple) else dep for dep in task.dependencies)
    return names


# One optimiser for all dask arrays, set where dask looks it up (``dask.config.set(array_optimize=...)``,
# dask's documented way to customise array optimisation; a value the user sets wins). An optimiser set
# on single arrays would be wrong: dask (2025.4 to 2026.8 at least) computes the arrays of one
# ``dask.compute`` in groups by optimiser and hands the results back in group order, so the arrays of an
# xarray Dataset that mixes them would receive each other's values.
dask.config.update_defaults({"array_optimize": optimize})


def finalize(results, chunks):
    """dask's final step, except that the exact tiles of one shared result return that array, uncopied."""
    blocks = list(flatten(results)) if isinstance(results, (list, tuple)) else [results]
    base = getattr(blocks[0], "base", None) if blocks else None
    if isinstance(base, np.ndarray) and _is_tiled_by(base, blocks, chunks):
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

    Its final step (``finalize``) is set on the instance, not by subclassing: xarray refuses to mix two
    chunked array types in one operation, so the array stays a plain ``dask.array.Array``; the shared
    result comes from ``optimize``. Arrays derived from it (``x + 1``, ``x[:10]``) and copies are
    ordinary dask arrays.
    """
    array.__dask_postcompute__ = functools.partial(_postcompute, array.chunks)
    return array


def _postcompute(chunks):
    return finalize, (chunks,)


def manifest_dask_array(array, chunks=None, convert=None, dtype=None):
    """What ``ManifestArray.to_dask_array`` returns: fetch+decode tasks (or decode tasks over persisted blocks).

    ``convert(block) -> block`` (picklable, elementwise, output ``dtype``) runs on every decoded block
    inside its task.
    """
    if (convert is None) != (dtype is None):
        raise ValueError("convert and dtype go together")
    key = make_codec_key(array.metadata)
    layout = array.layout
    native = array.chunk_sizes  # per axis a size, or every chunk's size (rectilinear)
    largest = array.chunk_shape
    geometry = ChunkGeometry(native)
    persisted = array.persisted
    if dtype is not None and persisted is None:  # blocks of about vzdask.task-bytes of converted values
        itemsize = max(np.dtype(dtype).itemsize, array.dtype.itemsize)
        layout = BlockLayout.for_array(array.manifest.shape, math.prod(largest) * itemsize)
    block_chunks = layout.element_chunks(array.shape, native)
    meta = np.empty((0,) * array.ndim, dtype=array.dtype if dtype is None else dtype)
    if persisted is not None:  # persisted on a cluster: decode the held blocks
        source_name, tasks = persisted.name, persisted.tasks
        name = "decode-" + source_name
        dsk = {}
        starts = tuple(axis_starts(c) for c in block_chunks)
        for index in layout.indices():
            region = tuple(slice(s[i], s[i] + c[i]) for i, s, c in zip(index, starts, block_chunks))
            origin = tuple(i * b for i, b in zip(index, layout.block))
            part = geometry.part(layout.grid_slices(index))
            dsk[(name, *index)] = Task((name, *index), decode_region, TaskRef((source_name, *index)), key, origin, region,
                                       *(() if part is None else (part,)))
        graph = HighLevelGraph({name: dsk, source_name: dict(tasks)}, {name: {source_name}, source_name: set()})
        result = da.Array(graph, name, block_chunks, meta=np.empty((0,) * array.ndim, dtype=array.dtype))
        if convert is not None:
            result = result.map_blocks(convert, dtype=dtype, meta=meta)
        return result if chunks is None else result.rechunk(chunks)

    if chunks is None:
        out_chunks = block_chunks
    else:
        out_chunks = da.core.normalize_chunks(chunks, array.shape, dtype=array.dtype, previous_chunks=largest)
    from dask.base import tokenize

    name = "load-" + tokenize(array.name, out_chunks, convert)
    tasks = LoadTasks(name, array.manifest, array.registry, key, native, out_chunks, convert, dtype)
    return with_direct_compute(da.Array(HighLevelGraph({name: tasks}, {name: set()}), name, out_chunks, meta=meta))
