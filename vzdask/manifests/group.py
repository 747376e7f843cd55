"""ManifestGroup: a tree of named ManifestArrays with attributes, like a zarr group."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from types import MappingProxyType
from typing import Any

from vzdask.manifests.array import ManifestArray
from vzdask.manifests.metadata import show_chunk_sizes

RESERVED_NAMES = frozenset({"zarr.json", ".zgroup", ".zarray", ".zattrs", ".zmetadata"})


def _check_name(name: Any, kind: str) -> str:
    if not isinstance(name, str) or not name or "/" in name or name in RESERVED_NAMES or name.startswith("__"):
        raise ValueError(f"{kind} name {name!r} is not a valid zarr node name (non-empty, no '/', not reserved)")
    return name


class ManifestGroup:
    """Named ManifestArrays and subgroups plus group attributes.

    Parameters
    ----------
    arrays : dict of str to ManifestArray, optional
    groups : dict of str to ManifestGroup, optional
    attributes : dict, optional
        JSON-serialisable group attributes.
    """

    __slots__ = ("_arrays", "_groups", "_attributes")

    def __init__(
        self,
        arrays: Mapping[str, ManifestArray] | None = None,
        groups: Mapping[str, ManifestGroup] | None = None,
        attributes: Mapping[str, Any] | None = None,
    ) -> None:
        arrays = dict(arrays or {})
        groups = dict(groups or {})
        for name, array in arrays.items():
            _check_name(name, "array")
            if not isinstance(array, ManifestArray):
                raise TypeError(f"array {name!r} is a {type(array).__name__}, not a ManifestArray")
        for name, group in groups.items():
            _check_name(name, "group")
            if not isinstance(group, ManifestGroup):
                raise TypeError(f"group {name!r} is a {type(group).__name__}, not a ManifestGroup")
        clash = set(arrays) & set(groups)
        if clash:
            raise ValueError(f"names used by both an array and a group: {sorted(clash)}")
        self._arrays = arrays
        self._groups = groups
        self._attributes = dict(attributes or {})

    @property
    def arrays(self) -> Mapping[str, ManifestArray]:
        return MappingProxyType(self._arrays)

    @property
    def groups(self) -> Mapping[str, ManifestGroup]:
        return MappingProxyType(self._groups)

    @property
    def attributes(self) -> Mapping[str, Any]:
        return MappingProxyType(self._attributes)

    def __getitem__(self, path: str) -> ManifestArray | ManifestGroup:
        """Member by name or by ``"sub/group/array"`` path."""
        node: ManifestArray | ManifestGroup = self
        for part in [p for p in path.split("/") if p]:
            if not isinstance(node, ManifestGroup) or (part not in node._arrays and part not in node._groups):
                raise KeyError(f"no array or group {path!r}")
            node = node._arrays.get(part) or node._groups[part]
        return node

    def __contains__(self, path: object) -> bool:
        try:
            self[path]  # type: ignore[index]
        except (KeyError, TypeError):
            return False
        return True

    def __iter__(self) -> Iterator[str]:
        yield from self._arrays
        yield from self._groups

    def __len__(self) -> int:
        return len(self._arrays) + len(self._groups)

    def walk_arrays(self, prefix: str = "") -> Iterator[tuple[str, ManifestArray]]:
        """Every array in the tree, with its path."""
        for name, array in self._arrays.items():
            yield prefix + name, array
        for name, group in self._groups.items():
            yield from group.walk_arrays(prefix + name + "/")

    def walk_groups(self, prefix: str = "") -> Iterator[tuple[str, ManifestGroup]]:
        """This group (path ``""``) and every subgroup, with their paths."""
        yield prefix.rstrip("/"), self
        for name, group in self._groups.items():
            yield from group.walk_groups(prefix + name + "/")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ManifestGroup):
            return NotImplemented
        return (
            self._attributes == other._attributes
            and self._arrays.keys() == other._arrays.keys()
            and all(a.equals(other._arrays[n]) for n, a in self._arrays.items())
            and self._groups == other._groups
        )

    __hash__ = None

    def __dask_tokenize__(self):
        from dask.base import tokenize

        return ("vzdask.ManifestGroup", tokenize(self._attributes), tokenize(sorted(self._arrays.items())),
                tokenize(sorted(self._groups.items())))

    def __repr__(self) -> str:
        lines = [f"ManifestGroup<{len(self._arrays)} arrays, {len(self._groups)} groups>"]
        for path, array in self.walk_arrays():
            counts = array.manifest.count()
            lines.append(
                f"  {path}: {array.dtype} {array.shape} chunks={_chunks(array)} "
                f"virtual={counts['virtual']} inlined={counts['inlined']} missing={counts['missing']}"
            )
        return "\n".join(lines)


def _chunks(array: ManifestArray) -> str:
    """``(10, 4)``, or every chunk's size along a rectilinear axis: ``[[31, 29, 31], 4]``."""
    return show_chunk_sizes(array.chunk_sizes) if array.is_rectilinear else str(array.chunk_shape)


def coordinate_names(group: ManifestGroup) -> set[str]:
    """Dimension coordinates plus variables named in a CF ``coordinates`` attribute."""
    names = set()
    for name, array in group.arrays.items():
        dims = array.dimension_names or ()
        if tuple(dims) == (name,):
            names.add(name)
        coords = array.metadata.attributes.get("coordinates")
        if isinstance(coords, str):
            names.update(c for c in coords.split() if c in group.arrays)
    return names
