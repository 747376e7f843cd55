"""InlinePolicy: which chunks a parser copies into the manifest (inline for storage).

This is separate from ``loadable_variables`` (load for indexing): an inlined
chunk keeps its encoded bytes in the manifest and is written inline by every
writer; a loaded variable is decoded into numpy so xarray can index it. A
variable may be either, both or neither.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

import numpy as np

from vzdask.manifests.array import ManifestArray
from vzdask.manifests.group import ManifestGroup
from vzdask.manifests.manifest import VIRTUAL, chunk_key
from vzdask.object_io import read_ranges_async, run_sync
from vzdask.registry import ObjectStoreRegistry

#: ``predicate(variable_name, array) -> bool mask over the chunk grid`` (or a single bool).
InlinePredicate = Callable[[str, ManifestArray], "np.ndarray | bool"]


@dataclass(frozen=True)
class InlinePolicy:
    """Decide, per chunk, whether a parser copies its encoded bytes into the manifest.

    Parameters
    ----------
    max_chunk_bytes : int, optional
        Inline every chunk whose stored (encoded) size is at most this many
        bytes (kerchunk's ``inline_threshold``).
    variables : collection of str
        Inline every chunk of these variables.
    coordinates : bool
        Inline every chunk of coordinate variables (dimension coordinates and
        those named in a CF ``coordinates`` attribute).
    predicate : callable, optional
        ``predicate(name, array)`` returning a boolean mask over the chunk grid
        (or one bool for the whole variable): the escape hatch.

    The default inlines nothing beyond what the format itself stores inline
    (HDF5 compact datasets, kerchunk inline references).
    """

    max_chunk_bytes: int | None = None
    variables: Collection[str] = field(default_factory=frozenset)
    coordinates: bool = False
    predicate: InlinePredicate | None = None

    def __post_init__(self) -> None:
        if self.max_chunk_bytes is not None and (not isinstance(self.max_chunk_bytes, int) or self.max_chunk_bytes < 0):
            raise ValueError(f"max_chunk_bytes must be a non-negative int, got {self.max_chunk_bytes!r}")
        if isinstance(self.variables, str):
            object.__setattr__(self, "variables", frozenset({self.variables}))
        else:
            object.__setattr__(self, "variables", frozenset(self.variables))

    def check_variables(self, found: Collection[str], absent: str) -> None:
        """Raise if ``variables`` names one that is not in ``found``; ``absent`` says where it is not.

        A misspelt name would otherwise inline nothing, silently.
        """
        unknown = sorted(set(self.variables) - set(found))
        if unknown:
            raise ValueError(
                f"InlinePolicy(variables=...) names {', '.join(map(repr, unknown))}, which {absent}; "
                f"the variables opened are {', '.join(map(repr, sorted(found)))}"
            )

    @property
    def inlines_anything(self) -> bool:
        return bool(self.max_chunk_bytes is not None or self.variables or self.coordinates or self.predicate)

    def select(self, name: str, array: ManifestArray, *, is_coordinate: bool = False) -> np.ndarray:
        """Boolean mask over the chunk grid: the virtual chunks of ``array`` to inline."""
        manifest = array.manifest
        virtual = manifest.states == VIRTUAL
        if name in self.variables or (self.coordinates and is_coordinate):
            return virtual
        chosen = np.zeros(manifest.shape, dtype=bool)
        if self.max_chunk_bytes is not None:
            chosen |= manifest.lengths <= self.max_chunk_bytes
        if self.predicate is not None:
            verdict = np.asarray(self.predicate(name, array), dtype=bool)
            chosen |= np.broadcast_to(verdict, manifest.shape)
        return chosen & virtual

    def apply(
        self, group: ManifestGroup, registry: ObjectStoreRegistry, coordinate_names: Collection[str] = ()
    ) -> ManifestGroup:
        """A copy of ``group`` with the selected chunks inlined (batched, coalesced reads)."""
        if not self.inlines_anything:
            return group
        arrays = {}
        for name, array in group.arrays.items():
            mask = self.select(name, array, is_coordinate=name in coordinate_names)
            arrays[name] = inline_chunks(array, mask, registry, name=name) if mask.any() else array
        groups = {name: self.apply(sub, registry, coordinate_names) for name, sub in group.groups.items()}
        return ManifestGroup(arrays=arrays, groups=groups, attributes=dict(group.attributes))


def inline_chunks(
    array: ManifestArray, mask: np.ndarray, registry: ObjectStoreRegistry, *, name: str | None = None
) -> ManifestArray:
    """Copy the encoded bytes of the masked virtual chunks into the manifest: one ``get_ranges`` per file.

    ``name``, the variable's, is only for error messages.
    """
    manifest = array.manifest
    indices = list(zip(*np.nonzero(mask))) if mask.ndim else ([()] if mask[()] else [])
    by_url: dict[str, list] = {}
    for index in indices:
        _, url, offset, length = manifest.entry(index)
        by_url.setdefault(url, []).append((tuple(int(i) for i in index), offset, length))

    variable = f" of {name!r}" if name is not None else ""

    async def read(url, items):
        store, path = registry.resolve(url)
        what = f"{len(items)} chunk(s){variable} to inline (first: chunk {chunk_key(items[0][0])})"
        got = await read_ranges_async(
            store, path, [o for _, o, _ in items], [n for _, _, n in items], url=url, what=what
        )
        return [(index, bytes(data)) for (index, _, _), data in zip(items, got)]

    async def read_all():
        return await asyncio.gather(*(read(url, items) for url, items in by_url.items()))

    chunks = dict(pair for result in run_sync(read_all()) for pair in result)
    return ManifestArray(array.metadata, manifest.with_inlined(chunks), registry=array.registry)
