"""The numpy functions a ManifestArray supports: the ones combining needs.

Each works on references alone (no bytes are read) and keeps inlined and
missing chunks as they are.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from vzdask.errors import CombineError
from vzdask.manifests.array import HANDLED_FUNCTIONS, ManifestArray
from vzdask.manifests.manifest import ChunkManifest
from vzdask.manifests.metadata import (
    axis_edges,
    check_combinable,
    check_ndim_change_allowed,
    replace_metadata,
    show_chunk_sizes,
)
from vzdask.registry import ObjectStoreRegistry


def implements(numpy_function: Callable) -> Callable:
    def register(func: Callable) -> Callable:
        HANDLED_FUNCTIONS[numpy_function] = func
        return func

    return register


def _only_manifest_arrays(arrays: Sequence, operation: str) -> list[ManifestArray]:
    arrays = list(arrays)
    if not arrays:
        raise ValueError(f"{operation} needs at least one array")
    for i, a in enumerate(arrays):
        if not isinstance(a, ManifestArray):
            raise TypeError(
                f"cannot {operation} a ManifestArray with a {type(a).__name__} (argument {i}); "
                "virtual and loaded data cannot share one set of references: load both or neither"
            )
    return arrays


def _normalize_axis(axis: int, ndim: int, operation: str) -> int:
    if not -ndim <= axis < ndim:
        raise np.exceptions.AxisError(f"{operation}: axis {axis} is out of bounds for {ndim}-d arrays")
    return axis % ndim


@implements(np.concatenate)
def concatenate(arrays: Sequence[ManifestArray], /, axis: int | None = 0, **kwargs) -> ManifestArray:
    """Join virtual arrays along an existing axis; every array but the last must end on a chunk boundary."""
    if kwargs.get("out") is not None or kwargs.get("dtype") is not None:
        raise TypeError("concatenate of ManifestArrays does not support out= or dtype=")
    arrays = _only_manifest_arrays(arrays, "concatenate")
    if axis is None:
        raise ValueError("concatenate with axis=None would flatten the arrays, which virtual arrays cannot do")
    first = arrays[0]
    if first.ndim == 0:
        raise ValueError("zero-dimensional arrays cannot be concatenated")
    axis = _normalize_axis(axis, first.ndim, "concatenate")
    for i, a in enumerate(arrays[1:], start=1):
        if a.ndim != first.ndim:
            raise CombineError(f"cannot concatenate: array 0 has {first.ndim} dimensions but array {i} has {a.ndim}")
        for d in range(first.ndim):
            if d != axis and a.shape[d] != first.shape[d]:
                raise CombineError(
                    f"cannot concatenate along axis {axis}: array 0 has length {first.shape[d]} on axis {d} "
                    f"but array {i} has {a.shape[d]}"
                )
    check_combinable([a.metadata for a in arrays], "concatenate", ignore_axis=axis)
    sizes = list(first.chunk_sizes)
    sizes[axis] = _joined_edges(arrays, axis)
    shape = list(first.shape)
    shape[axis] = sum(a.shape[axis] for a in arrays)
    manifest = ChunkManifest.concatenate([a.manifest for a in arrays], axis=axis)
    registry = ObjectStoreRegistry.union(a.registry for a in arrays)
    return ManifestArray(replace_metadata(first.metadata, shape=shape, chunk_shape=sizes), manifest, registry=registry)


def _joined_edges(arrays: Sequence[ManifestArray], axis: int) -> int | tuple[int, ...]:
    """The chunk sizes along ``axis`` of the arrays joined: one size if they share it, else every chunk's.

    Arrays whose lengths or chunkings along the axis differ make a rectilinear
    grid there. A chunk is stored whole, so one that is partial (a file's
    length not a multiple of its chunk size) can only end the result.
    """
    sizes = [a.chunk_sizes[axis] for a in arrays]
    for i, (a, size) in enumerate(zip(arrays[:-1], sizes)):
        n = a.shape[axis]
        if isinstance(size, int):
            if n % size:
                raise CombineError(
                    f"cannot concatenate along axis {axis}: array {i} has length {n}, not a multiple of "
                    f"the chunk size {size}, so its last chunk is partial and would end up inside the result"
                )
            continue
        edges = axis_edges(size, n)
        if sum(edges) != n:
            raise CombineError(
                f"cannot concatenate along axis {axis}: array {i} has length {n}, but its chunks along that "
                f"axis ({show_chunk_sizes([size])}) are stored {sum(edges)} long: the last chunk is partial "
                "(holds only part of a whole chunk's values) and would end up inside the result"
            )
    if all(isinstance(s, int) for s in sizes) and len(set(sizes)) == 1:
        return sizes[0]  # one chunk size, every array but the last filled: a regular axis
    return tuple(edge for a, size in zip(arrays, sizes) for edge in axis_edges(size, a.shape[axis]))


@implements(np.expand_dims)
def expand_dims(a: ManifestArray, /, axis: int | Sequence[int]) -> ManifestArray:
    """Insert new axes of length 1 (chunk size 1)."""
    axes = (axis,) if np.ndim(axis) == 0 else tuple(axis)
    out_ndim = a.ndim + len(axes)
    axes = sorted(_normalize_axis(ax, out_ndim, "expand_dims") for ax in axes)
    if len(set(axes)) != len(axes):
        raise ValueError("expand_dims: repeated axis")
    key: list = [slice(None)] * a.ndim
    for ax in axes:
        key.insert(ax, None)
    return a[tuple(key)]


@implements(np.stack)
def stack(arrays: Sequence[ManifestArray], /, axis: int = 0, **kwargs) -> ManifestArray:
    """Join equally shaped virtual arrays along a new axis (chunk size 1)."""
    if kwargs.get("out") is not None or kwargs.get("dtype") is not None:
        raise TypeError("stack of ManifestArrays does not support out= or dtype=")
    arrays = _only_manifest_arrays(arrays, "stack")
    first = arrays[0]
    for i, a in enumerate(arrays[1:], start=1):
        if a.shape != first.shape:
            raise CombineError(f"cannot stack: array 0 has shape {first.shape} but array {i} has {a.shape}")
    axis = _normalize_axis(axis, first.ndim + 1, "stack")
    # what expand_dims of each and concatenate give, with one metadata and one manifest join (many files' scenes)
    check_ndim_change_allowed(first.metadata, "this indexing")
    check_combinable([a.metadata for a in arrays], "concatenate")
    shape, sizes = list(first.shape), list(first.chunk_sizes)
    shape.insert(axis, len(arrays))
    sizes.insert(axis, 1)
    names = first.metadata.dimension_names
    metadata = replace_metadata(first.metadata, shape=shape, chunk_shape=sizes,
                                dimension_names=None if names is None else (*names[:axis], None, *names[axis:]))
    manifest = ChunkManifest.stack([a.manifest for a in arrays], axis=axis)
    return ManifestArray(metadata, manifest, registry=ObjectStoreRegistry.union(a.registry for a in arrays))


@implements(np.broadcast_to)
def broadcast_to(a: ManifestArray, /, shape: Sequence[int], subok: bool = False) -> ManifestArray:
    """Repeat references: new leading axes, or axes of length 1 with chunk size 1."""
    shape = (int(shape),) if np.ndim(shape) == 0 else tuple(int(s) for s in shape)
    if len(shape) < a.ndim:
        raise ValueError(f"cannot broadcast an array of shape {a.shape} to fewer dimensions {shape}")
    new_axes = len(shape) - a.ndim
    for d, (have, want) in enumerate(zip(a.shape, shape[new_axes:])):
        if have == want:
            continue
        if have != 1:
            raise ValueError(f"cannot broadcast axis {d} of length {have} to {want}")
        if a.chunk_sizes[d] != 1:
            raise ValueError(
                f"cannot broadcast axis {d} of length 1 to {want}: its chunk size is {a.chunk_sizes[d]}, "
                "so repeated chunks would overlap; only chunk size 1 can be repeated"
            )
    if new_axes:
        check_ndim_change_allowed(a.metadata, "broadcast_to")
    chunks = (1,) * new_axes + a.chunk_sizes
    grid = tuple(s if c == 1 else g for s, c, g in zip(shape, chunks, (1,) * new_axes + a.manifest.shape))
    dims = a.dimension_names
    if dims is not None:
        dims = (None,) * new_axes + tuple(dims)
    metadata = replace_metadata(a.metadata, shape=shape, chunk_shape=chunks, dimension_names=dims)
    manifest = a.manifest.map_grid(lambda arr: np.broadcast_to(arr, grid))
    return ManifestArray(metadata, manifest, registry=a.registry)


@implements(np.result_type)
def result_type(*arrays_and_dtypes) -> np.dtype:
    return np.result_type(*(x.dtype if isinstance(x, ManifestArray) else x for x in arrays_and_dtypes))
