"""ManifestArray: zarr v3 array metadata plus the manifest of its chunks."""

from __future__ import annotations

import bisect
import functools
import importlib.util
import math
import operator
import os
import warnings
from typing import Any

import numpy as np
import dask.threaded
from dask.base import DaskMethodsMixin

from vzdask._compat import ArrayV3Metadata, HighLevelGraph
from vzdask.errors import RawValuesWarning
from vzdask.chunk_tasks import BlockLayout, EncodedBlock, assemble, blocks_to_manifest
from vzdask.graph import MANIFEST_LAYER_PREFIX, FetchTasks, PersistedBlocks
from vzdask.manifests.manifest import ChunkManifest
from vzdask.registry import ObjectStoreRegistry
from vzdask.manifests.metadata import (
    AxisChunks,
    as_array_metadata,
    check_ndim_change_allowed,
    chunk_grid_shape,
    chunk_shape,
    chunk_sizes,
    is_regular,
    metadata_json,
    replace_metadata,
    show_chunk_sizes,
)


_threaded_get = dask.threaded.get


class _SharedArrayOptimizer:
    """``ManifestArray.__dask_optimize__``: the very optimiser dask arrays have (``array_optimize``).

    dask (2025.4 to 2026.8 at least) computes the collections of one ``dask.compute`` in groups
    by optimiser and hands the results back in group order: with an optimiser of its own, a
    ManifestArray computed beside dask arrays (``dask.compute(x, manifest_array, y)``) received
    another collection's values. Sharing dask arrays' optimiser keeps them in one group. Its
    blocks are independent fetch tasks, which that optimiser leaves as they are (it culls the
    keys not asked for).
    """

    def __get__(self, instance: object, owner: type | None = None):
        import dask.array as da

        return da.Array.__dask_optimize__

#: numpy functions ManifestArray implements itself (``numpy_function -> implementation``), without
#: reading values; ``vzdask.manifests.array_api`` fills it (``vzdask/__init__.py`` imports it, so
#: it is filled whichever vzdask module is imported first).
HANDLED_FUNCTIONS: dict[Any, Any] = {}
_RAW_VALUES_WARNED = False
#: Attributes that make a variable's stored values differ from its values (see ``RawValuesWarning``).
CF_ENCODING_ATTRIBUTES = frozenset({"_FillValue", "missing_value", "scale_factor", "add_offset"})


class ManifestArray(DaskMethodsMixin):
    """An immutable virtual array: what it is (metadata) and where its chunks are (manifest).

    Parameters
    ----------
    metadata : zarr.core.metadata.v3.ArrayV3Metadata or dict
        Zarr v3 array metadata with a regular chunk grid, or a rectilinear one
        (chunks of different sizes along an axis: files of different lengths joined).
    chunkmanifest : ChunkManifest
        One entry per chunk; its shape must equal the chunk grid's shape.
    registry : ObjectStoreRegistry, optional
        Where virtual chunks are read from when the array is computed or
        persisted; defaults to ``ObjectStoreRegistry.default()``.

    Notes
    -----
    Combining (``np.concatenate``, ``np.stack``, ``np.expand_dims``,
    ``np.broadcast_to``) and chunk-aligned indexing work on the references
    alone and keep inlined and missing chunks as they are.

    A ManifestArray is a dask collection: ``compute()`` reads and decodes it
    into numpy, ``persist()`` returns a ManifestArray whose every chunk is
    inlined (the source's encoded bytes, untouched), ``to_dask_array()`` gives
    a ``dask.array.Array`` for analysis. Each task covers a block of chunks of
    about ``vzdask.task-bytes`` decoded bytes (dask config, default 64 MiB).
    """

    __slots__ = ("_metadata", "_manifest", "_registry", "_persisted", "_name")
    __array_priority__ = 100

    def __init__(
        self,
        metadata: ArrayV3Metadata | dict[str, Any],
        chunkmanifest: ChunkManifest,
        *,
        registry: ObjectStoreRegistry | None = None,
    ) -> None:
        metadata = as_array_metadata(metadata)
        if not isinstance(chunkmanifest, ChunkManifest):
            raise TypeError(f"chunkmanifest must be a ChunkManifest, not {type(chunkmanifest).__name__}")
        grid = chunk_grid_shape(metadata)
        if chunkmanifest.shape != grid:
            if grid == () and chunkmanifest.shape == (1,):
                chunkmanifest = chunkmanifest.map_grid(lambda a: a.reshape(()))
            else:
                raise ValueError(
                    f"manifest has chunk grid {chunkmanifest.shape} but an array of shape {tuple(metadata.shape)} "
                    f"with chunks {_show_chunks(chunk_sizes(metadata))} has chunk grid {grid}"
                )
        if registry is not None and not isinstance(registry, ObjectStoreRegistry):
            raise TypeError(f"registry must be an ObjectStoreRegistry, not {type(registry).__name__}")
        self._metadata = metadata
        self._manifest = chunkmanifest
        self._registry = registry if registry is not None else ObjectStoreRegistry.default()
        self._persisted: PersistedBlocks | None = None  # persisted blocks not yet gathered
        self._name: tuple[tuple[int, ...], str] | None = None  # (layout.block, name)

    # -- description --------------------------------------------------------

    @property
    def metadata(self) -> ArrayV3Metadata:
        return self._metadata

    @property
    def manifest(self) -> ChunkManifest:
        """The chunk references; gathers persisted chunks from the cluster first if needed."""
        if self._persisted is not None:
            self._gather_in_place()
        return self._manifest

    @property
    def registry(self) -> ObjectStoreRegistry:
        return self._registry

    @property
    def persisted(self) -> PersistedBlocks | None:
        """The blocks ``persist`` left on a cluster (or pending) until they are gathered, else None."""
        return self._persisted

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self._metadata.shape)

    @property
    def dtype(self) -> np.dtype:
        return self._metadata.data_type.to_native_dtype()

    @property
    def ndim(self) -> int:
        return len(self._metadata.shape)

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        """Decoded size in bytes, as for a numpy array (``manifest.nbytes`` is the references' cost)."""
        return self.size * self.dtype.itemsize

    @property
    def chunk_shape(self) -> tuple[int, ...]:
        """Shape of one stored chunk; for a rectilinear grid the largest chunk along each axis."""
        return chunk_shape(self._metadata)

    @property
    def chunk_sizes(self) -> tuple[AxisChunks, ...]:
        """Per axis the chunk size, or (a rectilinear axis) the tuple of every chunk's size along it."""
        return chunk_sizes(self._metadata)

    @property
    def is_rectilinear(self) -> bool:
        """Whether chunks differ in size along some axis (zarr's rectilinear chunk grid)."""
        return not is_regular(self.chunk_sizes)

    @property
    def fill_value(self) -> Any:
        return self._metadata.fill_value

    @property
    def dimension_names(self) -> tuple[str | None, ...] | None:
        return self._metadata.dimension_names

    def __len__(self) -> int:
        if not self.shape:
            raise TypeError("len() of a 0-d virtual array")
        return self.shape[0]

    def __repr__(self) -> str:
        if self._persisted is not None:
            c = self.count()
            where = f"persisted, not gathered: {c['inlined']} inlined, {c['missing']} missing chunks"
        else:
            where = repr(self._manifest)
        chunks = _show_chunks(self.chunk_sizes)
        return f"ManifestArray<shape={self.shape}, dtype={self.dtype}, chunks={chunks}, {where}>"

    def count(self) -> dict[str, int]:
        """The number of chunks in each state: ``{"virtual": n, "inlined": n, "missing": n}``.

        Unlike ``manifest.count()`` this never gathers: persisted blocks still
        held by a cluster are counted from the manifest they were fetched
        from, since persisting inlines every chunk that is not missing and
        keeps the missing ones missing.
        """
        counts = self._manifest.count()
        if self._persisted is not None:
            return {"virtual": 0, "inlined": counts["virtual"] + counts["inlined"], "missing": counts["missing"]}
        return counts

    def _repr_inline_(self, max_width: int) -> str:
        counts = self.count()
        text = f"ManifestArray<{counts['virtual']} virtual, {counts['inlined']} inlined, {counts['missing']} missing chunks>"
        return text[:max_width]

    def equals(self, other: object) -> bool:
        """Same metadata and same references (``==`` is kept for elementwise use)."""
        return (
            isinstance(other, ManifestArray)
            and self._metadata.to_dict() == other._metadata.to_dict()
            and self.manifest == other.manifest
        )

    def __array__(self, dtype=None, copy=None):
        raise TypeError(
            "a ManifestArray holds references to chunks, not values: use .compute() to load it into numpy "
            "(or .to_dask_array() for a lazy dask array)"
        )

    def _math_view(self):
        """The dask array math works on, with a ``RawValuesWarning`` if the values are CF-encoded."""
        global _RAW_VALUES_WARNED
        encoded = sorted(CF_ENCODING_ATTRIBUTES & set(self._metadata.attributes or {}))
        if encoded and not _RAW_VALUES_WARNED:  # once per process: the first time says it all
            _RAW_VALUES_WARNED = True
            warnings.warn(
                "math on a virtual variable works on its stored values, which are CF-encoded "
                f"({', '.join(encoded)}): fill values are not masked and packing is not undone. For decoded "
                "values open the files with vzdask.open_mfdataset (or xr.open_dataset(..., engine='netcdf4')), "
                "or use ds.vz.to_dask(mask_and_scale=True)",
                RawValuesWarning, skip_file_prefixes=_library_directories(),  # points at the user's line
            )
        return self.to_dask_array()

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        """Elementwise math hands off to the dask array view (lazy; ``.compute()`` it)."""
        inputs = tuple(x._math_view() if isinstance(x, ManifestArray) else x for x in inputs)
        return getattr(ufunc, method)(*inputs, **kwargs)

    def _elementwise(op):  # noqa: N805 - builds the arithmetic operators below
        def method(self, *others):
            others = tuple(x._math_view() if isinstance(x, ManifestArray) else x for x in others)
            return op(self._math_view(), *others)

        method.__name__ = f"__{op.__name__.strip('_')}__"
        method.__doc__ = "Elementwise, through the dask array view (lazy)."
        return method

    __add__ = _elementwise(operator.add)
    __radd__ = _elementwise(lambda a, b: b + a)
    __sub__ = _elementwise(operator.sub)
    __rsub__ = _elementwise(lambda a, b: b - a)
    __mul__ = _elementwise(operator.mul)
    __rmul__ = _elementwise(lambda a, b: b * a)
    __truediv__ = _elementwise(operator.truediv)
    __rtruediv__ = _elementwise(lambda a, b: b / a)
    __floordiv__ = _elementwise(operator.floordiv)
    __pow__ = _elementwise(operator.pow)
    __mod__ = _elementwise(operator.mod)
    __neg__ = _elementwise(operator.neg)
    __abs__ = _elementwise(operator.abs)
    __lt__ = _elementwise(operator.lt)
    __le__ = _elementwise(operator.le)
    __gt__ = _elementwise(operator.gt)
    __ge__ = _elementwise(operator.ge)
    del _elementwise

    def __array_function__(self, func, types, args, kwargs):
        handler = HANDLED_FUNCTIONS.get(func)
        if handler is None:
            # Anything that needs values: hand off to the dask array view.
            import dask.array as da

            def to_dask(x):
                if isinstance(x, ManifestArray):
                    return x._math_view()
                if isinstance(x, (list, tuple)):
                    return type(x)(to_dask(v) for v in x)
                return x

            # numpy.fft.fft -> dask.array.fft.fft, numpy.linalg.norm -> dask.array.linalg.norm
            submodule = func.__module__.split(".")[1] if func.__module__.startswith("numpy.") else ""
            namespace = getattr(da, submodule, da) if submodule in ("fft", "linalg") else da
            dask_func = getattr(namespace, func.__name__, None)
            if not callable(dask_func):
                raise TypeError(
                    f"{func.__module__}.{func.__name__} is not supported on a ManifestArray nor on its dask "
                    "view; use .compute() first"
                )
            return dask_func(*to_dask(args), **{k: to_dask(v) for k, v in kwargs.items()})
        return handler(*args, **kwargs)

    # -- reference-only transformations -------------------------------------

    def rename_paths(self, new) -> ManifestArray:
        """A copy whose virtual chunk urls are renamed (see ``ChunkManifest.rename_paths``)."""
        return self._with(self._metadata, self.manifest.rename_paths(new))

    def _with(self, metadata: ArrayV3Metadata, manifest: ChunkManifest) -> ManifestArray:
        return ManifestArray(metadata, manifest, registry=self._registry)

    def __getitem__(self, key) -> ManifestArray:
        """Chunk-aligned indexing: slices on chunk boundaries, integers where the chunk size is 1, ``None``, ``...``."""
        grid_key, shape, chunks, dims, ndim_changed = _chunk_aligned_key(self, key)
        if ndim_changed:
            check_ndim_change_allowed(self._metadata, "this indexing")
        metadata = replace_metadata(
            self._metadata,
            shape=shape,
            chunk_shape=chunks,
            dimension_names=dims if self._metadata.dimension_names is not None else None,
        )
        return self._with(metadata, self.manifest[grid_key])

    # -- dask collection -----------------------------------------------------

    @property
    def name(self) -> str:
        """Deterministic dask name: a token of metadata, manifest contents, registry and block layout.

        The layout is part of the name because a key ``(name, i, j)`` means a
        different block under a different ``vzdask.task-bytes``.
        """
        if self._persisted is not None:
            return self._persisted.name
        block = self.layout.block
        if self._name is None or self._name[0] != block:
            from dask.base import tokenize

            token = tokenize(metadata_json(self._metadata), self._manifest, self._registry, block)
            self._name = (block, f"{MANIFEST_LAYER_PREFIX}{token}")
        return self._name[1]

    @property
    def layout(self) -> BlockLayout:
        """How the chunk grid is cut into task blocks (see ``vzdask.chunk_tasks.BlockLayout``)."""
        if self._persisted is not None:  # persisted, not gathered: the blocks already made
            return self._persisted.layout
        return BlockLayout.for_array(self._manifest.shape, math.prod(self.chunk_shape) * self.dtype.itemsize)

    def _keys(self, name: str | None = None) -> list[tuple]:
        name = name or self.name
        return [(name, *index) for index in self.layout.indices()]

    def __dask_graph__(self):
        if self._persisted is not None:
            name, tasks = self._persisted.name, self._persisted.tasks
            return HighLevelGraph({name: dict(tasks)}, {name: set()})
        return HighLevelGraph({self.name: FetchTasks(self.name, self._manifest, self._registry, self.layout)},
                              {self.name: set()})

    def __dask_keys__(self) -> list[tuple]:
        return self._keys()

    def __dask_layers__(self) -> tuple[str]:
        return (self.name,)

    def __dask_tokenize__(self) -> str:
        return self.name

    __dask_optimize__ = _SharedArrayOptimizer()

    __dask_scheduler__ = staticmethod(_threaded_get)

    def __dask_postcompute__(self):
        from vzdask.codecs import codec_key

        sizes = self.chunk_sizes
        return _assemble_results, (assemble, codec_key(self._metadata), self.shape, self.layout,
                                   None if is_regular(sizes) else sizes)

    def __dask_postpersist__(self):
        return self._rebuild, ()

    def _rebuild(self, dsk, *, rename=None) -> ManifestArray:
        """After ``persist``: a ManifestArray whose chunks are all inlined (or pending on a cluster)."""
        name = self.name
        if rename:
            name = rename.get(name, name)
        keys = self._keys(name)
        values = [dsk[k] for k in keys]
        base = self._with(self._metadata, self._manifest)
        if all(isinstance(v, EncodedBlock) for v in values):
            return self._with(self._metadata, blocks_to_manifest(self.layout, values))
        base._persisted = PersistedBlocks(name, dict(zip(keys, values)), self.layout)
        return base

    def _gather_in_place(self) -> None:
        persisted = self._persisted
        keys = persisted.keys()
        futures = persisted.blocks()
        client = getattr(futures[0], "client", None) if futures else None
        if client is not None and all(hasattr(f, "key") and hasattr(f, "result") for f in futures):
            blocks = client.gather(futures)
        else:
            blocks = _threaded_get(dict(persisted.tasks), keys)
        self._manifest = blocks_to_manifest(persisted.layout, blocks)
        self._persisted = None
        self._name = None

    def gather(self) -> ManifestArray:
        """Bring persisted chunks from the cluster into this process; returns a plain inlined ManifestArray."""
        return self._with(self._metadata, self.manifest)

    @property
    def is_gathered(self) -> bool:
        """False while persisted chunks are still held by the cluster (futures)."""
        return self._persisted is None

    def astype(self, dtype, copy: bool = True):
        """A lazy dask array of the stored (raw) values cast to ``dtype``, as ``dask.array.Array.astype``.

        (xarray's writers do not need it: ``vzdask.xarray_writers`` hands them
        the dask array of the stored values.)
        """
        return self.to_dask_array().astype(dtype, copy=copy)

    def rechunk(self, chunks, **kwargs):
        """A dask array with these chunks (what ``Dataset.chunk`` calls); reads at that chunking directly."""
        return self.to_dask_array(chunks=chunks)

    def to_dask_array(self, chunks=None, *, convert=None, dtype=None):
        """A ``dask.array.Array`` whose tasks fetch and decode the chunks directly.

        Parameters
        ----------
        chunks : optional
            Dask chunks; by default the task blocks (whole native chunks, about
            ``vzdask.task-bytes`` each). Anything ``dask.array`` accepts works;
            blocks that cut native chunks read the covering chunks and slice.
        convert : callable, optional
            ``convert(block) -> block`` of the same shape, run on each decoded
            block inside its task (CF mask and scale, say); must be picklable
            to run on processes or a cluster. Give its output ``dtype`` too.
            Computing the array as it is still decodes straight into one result.
        """
        from vzdask.dask_array import manifest_dask_array  # imports dask.array: only when asked

        return manifest_dask_array(self, chunks, convert=convert, dtype=dtype)


@functools.cache
def _library_directories() -> tuple[str, ...]:
    """Where vzdask, xarray, dask and numpy live: a warning names the first line outside them."""
    found = []
    for name in ("vzdask", "xarray", "dask", "numpy"):
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.origin:
            found.append(os.path.dirname(spec.origin) + os.sep)
    return tuple(found)


def _assemble_results(results, assemble, codec_key, shape, layout, sizes=None):
    return assemble(list(results), codec_key, shape, layout, sizes)


def _chunk_aligned_key(array: ManifestArray, key):
    """Translate an index into a chunk-grid index plus the new shape, chunks and dimension names."""
    if not isinstance(key, tuple):
        key = (key,)
    if sum(k is Ellipsis for k in key) > 1:
        raise IndexError("an index can only have a single ellipsis ('...')")
    consumed = sum(1 for k in key if k is not None and k is not Ellipsis)
    if consumed > array.ndim:
        raise IndexError(f"too many indices for a {array.ndim}-d array")
    at = next((i for i, k in enumerate(key) if k is Ellipsis), None)
    if at is not None:
        key = key[:at] + (slice(None),) * (array.ndim - consumed) + key[at + 1 :]
    else:
        key = key + (slice(None),) * (array.ndim - consumed)

    dims_in = array.dimension_names or (None,) * array.ndim
    grid_key: list = []
    shape: list[int] = []
    chunks: list[AxisChunks] = []
    dims: list = []
    axis = 0
    ndim_changed = False
    for k in key:
        if k is None:
            grid_key.append(None)
            shape.append(1)
            chunks.append(1)
            dims.append(None)
            ndim_changed = True
            continue
        n, c = array.shape[axis], array.chunk_sizes[axis]
        if not isinstance(c, int):
            grid_key.append(_rectilinear_axis_key(k, axis, n, c, shape, chunks, dims, dims_in[axis]))
            ndim_changed |= not isinstance(k, slice)
            axis += 1
            continue
        if isinstance(k, slice):
            start, stop, step = k.indices(n)
            if step != 1:
                raise IndexError(f"axis {axis}: step {step} is not supported on a virtual array, only contiguous slices")
            stop = max(stop, start)
            if start % c:
                raise IndexError(
                    f"axis {axis}: slice start {start} is not on a chunk boundary (chunk size {c}); "
                    "a virtual array can only be sliced along whole chunks"
                )
            if stop % c and stop != n:
                raise IndexError(
                    f"axis {axis}: slice stop {stop} is not on a chunk boundary (chunk size {c}) nor the end ({n}); "
                    "a virtual array can only be sliced along whole chunks"
                )
            grid_key.append(slice(start // c, -(-stop // c)))
            shape.append(stop - start)
            chunks.append(c)
            dims.append(dims_in[axis])
        else:
            i = _integer_index(k, axis, n)
            if c != 1:
                raise IndexError(
                    f"axis {axis}: an integer index needs chunk size 1 along that axis, but it is {c}; "
                    f"use a slice such as [{(i % n) - (i % n) % c}:{(i % n) - (i % n) % c + c}] instead"
                )
            grid_key.append(i % n)
            ndim_changed = True
        axis += 1
    return tuple(grid_key), tuple(shape), tuple(chunks), tuple(dims), ndim_changed


def _integer_index(k, axis: int, n: int) -> int:
    try:
        i = operator.index(k)
    except TypeError:
        raise IndexError(
            f"axis {axis}: index of type {type(k).__name__} is not supported on a virtual array; "
            "use slices on chunk boundaries"
        ) from None
    if not -n <= i < n:
        raise IndexError(f"axis {axis}: index {i} is out of bounds for size {n}")
    return i


def _rectilinear_axis_key(k, axis: int, n: int, edges: tuple[int, ...], shape: list, chunks: list, dims: list,
                          dim) -> slice | int:
    """``_chunk_aligned_key`` along an axis of chunks of different sizes: cuts only where chunks meet."""
    bounds = np.cumsum((0, *edges)).tolist()  # where each chunk starts, then where the last one ends
    if isinstance(k, slice):
        start, stop, step = k.indices(n)
        if step != 1:
            raise IndexError(f"axis {axis}: step {step} is not supported on a virtual array, only contiguous slices")
        stop = max(stop, start)
        first = bisect.bisect_left(bounds, start)
        if bounds[first] != start and start != n:
            raise IndexError(
                f"axis {axis}: slice start {start} is not on a chunk boundary (chunks start at "
                f"{_some(bounds[:-1])}); a virtual array can only be sliced along whole chunks"
            )
        last = len(edges) if stop == n else bisect.bisect_left(bounds, stop)
        if stop != n and bounds[last] != stop:
            raise IndexError(
                f"axis {axis}: slice stop {stop} is not on a chunk boundary (chunks start at {_some(bounds[:-1])}) "
                f"nor the end ({n}); a virtual array can only be sliced along whole chunks"
            )
        first = min(first, last)
        shape.append(stop - start)
        chunks.append(tuple(edges[first:last]) or (edges[-1],))
        dims.append(dim)
        return slice(first, last)
    i = _integer_index(k, axis, n) % n
    position = bisect.bisect_right(bounds, i) - 1
    if edges[position] != 1:
        raise IndexError(
            f"axis {axis}: an integer index needs a chunk of size 1 there, but index {i} is in a chunk of size "
            f"{edges[position]}; use a slice such as [{bounds[position]}:{bounds[position + 1]}] instead"
        )
    return position


def _some(values: list[int]) -> str:
    return ", ".join(map(str, values)) if len(values) <= 8 else ", ".join(map(str, values[:8])) + ", ..."


def _show_chunks(sizes) -> str:
    """``(2, 3)`` for a regular grid (as before rectilinear grids), ``[[31, 29], 6]`` for a rectilinear one."""
    return str(tuple(sizes)) if is_regular(sizes) else show_chunk_sizes(sizes)
