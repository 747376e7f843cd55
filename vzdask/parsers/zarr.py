"""ZarrParser: Zarr v2 and v3 stores (consolidated or not) as virtual datasets.

Metadata documents are read through obstore; chunks are found by *listing*
each array's prefix (one paginated list per array, all arrays concurrently),
so every chunk object becomes a virtual reference ``(url, 0, size)`` and
chunks that were never written stay missing. A sharded v3 array is referenced
one shard object at a time: its chunk grid is the shard grid and the sharding
codec stays in the metadata, so whole shards decode through zarr.

Zarr v2 metadata (``.zarray``/``.zattrs``) is converted to v3 by
``vzdask.zarr_v2.v2_to_v3``: numcodecs filters and compressor become zarr v3
codecs, ``order='F'`` a transpose codec, ``_ARRAY_DIMENSIONS`` the dimension
names, and the v2 ``fill_value`` also a CF ``_FillValue`` attribute, because
that is how xarray reads v2 stores.
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass, field

import numpy as np

from vzdask.manifests.array import ManifestArray
from vzdask.manifests.group import ManifestGroup
from vzdask.manifests.manifest import ChunkManifest
from vzdask.manifests.metadata import chunk_grid_shape, metadata_from_document
from vzdask.manifests.store import ManifestStore
from vzdask.object_io import get_async, head_size_async, list_prefixes_async, list_sizes_async, run_sync
from vzdask.parsers.common import Parser, ParseError, finish
from vzdask.policy import InlinePolicy
from vzdask.registry import ObjectStoreRegistry
from vzdask.zarr_v2 import DIMENSION_KEY, v2_to_v3

V3_DOC = "zarr.json"
V2_ARRAY, V2_GROUP, V2_ATTRS, V2_CONSOLIDATED = ".zarray", ".zgroup", ".zattrs", ".zmetadata"


def is_zarr_store(url: str, registry: ObjectStoreRegistry) -> bool:
    """True if ``url`` holds a ``zarr.json``, ``.zgroup`` or ``.zarray`` (concurrent heads)."""
    try:
        store, path = registry.resolve(url.rstrip("/"))
    except (ValueError, TypeError):
        return False

    async def exists(name: str) -> bool:
        try:
            await head_size_async(store, _join(path, name), url=f"{url}/{name}")
            return True
        except OSError:
            return False

    async def any_exists() -> bool:
        return any(await asyncio.gather(*(exists(n) for n in (V3_DOC, V2_GROUP, V2_ARRAY))))

    return run_sync(any_exists())


class ZarrParser(Parser):
    """Parse Zarr v2/v3 stores (directories or object-store prefixes) into ManifestStores.

    Parameters
    ----------
    inline : InlinePolicy, optional
        Which chunks to copy into the manifest.
    group : str, optional
        Parse only this subgroup (``"a/b"``) of the store.
    consolidated : bool, optional
        Use consolidated metadata (``.zmetadata``, or ``consolidated_metadata``
        in the root ``zarr.json``) to find the arrays: ``None`` (default) uses
        it when present, ``False`` ignores it, ``True`` requires it.
    """

    def __init__(
        self, *, inline: InlinePolicy | None = None, group: str | None = None, consolidated: bool | None = None
    ) -> None:
        super().__init__(inline=inline, group=group.strip("/") if group else None)
        self.consolidated = consolidated

    def __repr__(self) -> str:
        return f"ZarrParser(inline={self.inline!r}, group={self.group!r}, consolidated={self.consolidated!r})"

    @classmethod
    def guess_can_open(cls, head: bytes, url: str) -> bool:
        """True for a url ending in ``.zarr`` with no object there (a store is a directory or prefix).

        Other stores are found by ``is_zarr_store`` (a few requests), which
        ``detect_parser`` runs when no parser's guess claimed the url.
        """
        return not head and url.rstrip("/").endswith(".zarr")

    def __call__(self, url: str, registry: ObjectStoreRegistry) -> ManifestStore:
        url = url.rstrip("/")
        store, root = registry.resolve(url)
        reader = ZarrTreeReader(url, store, root, registry, self.consolidated)
        group = run_sync(reader.parse(self.group or ""))
        return finish(group, registry, self.inline)


# --------------------------------------------------------------------------- #
# the hierarchy: which nodes exist and their metadata documents
# --------------------------------------------------------------------------- #
@dataclass
class ZarrNode:
    """One node's metadata, in either format; ``path`` is relative to the store root."""

    path: str
    kind: str  # "array" | "group"
    zarr_format: int
    document: dict  # zarr.json, or .zarray / .zgroup
    attributes: dict = field(default_factory=dict)  # v2 .zattrs (v3: inside ``document``)
    children: dict[str, ZarrNode] = field(default_factory=dict)


class ZarrTreeReader:
    """Reads a Zarr hierarchy's metadata and chunk references, through obstore by default.

    Other containers of Zarr stores (a zip, an Icechunk repository) reuse the
    metadata handling by overriding the three ways it touches storage:
    ``read_document`` (one metadata object's bytes), ``list_children`` (the
    child paths of a group) and ``chunk_manifest`` (an array's chunks).
    """

    def __init__(self, url: str, store, root: str, registry: ObjectStoreRegistry, consolidated: bool | None):
        self.url = url
        self.store = store
        self.root = root
        self.registry = registry
        self.consolidated = consolidated

    def where(self, path: str) -> str:
        return f"{self.url}/{path}" if path else self.url

    async def parse(self, group: str) -> ManifestGroup:
        top = await self.read_node(group, None, required=True)
        if top.kind == "group":
            tree = None
            if self.consolidated is not False:
                tree = await self.consolidated_tree(group, top)
            if tree is None:
                if self.consolidated:
                    raise ParseError(f"{self.where(group)}: consolidated=True but the store has no consolidated metadata")
                await self.walk(top)
            else:
                top = tree
        else:  # the url (or group=) names an array: a group holding just it
            name = (group or self.url).rstrip("/").rsplit("/", 1)[-1]
            top = ZarrNode(group, "group", top.zarr_format, {}, children={name: top})
        return await self.build(top)

    # -- metadata documents ------------------------------------------------ #
    async def get_json(self, path: str, name: str, *, required_error=None) -> dict | None:
        """A JSON document, or None if it does not exist."""
        try:
            data = await self.read_document(path, name)
        except FileNotFoundError:
            return None
        except OSError as err:
            if required_error is not None:  # probing the top node: an unreadable path is "not a store"
                required_error.append(str(err))
                return None
            raise
        try:
            document = json.loads(data)
        except ValueError as err:
            raise ParseError(f"{self.where(_join(path, name))}: not valid JSON ({err})") from err
        if not isinstance(document, dict):
            raise ParseError(f"{self.where(_join(path, name))}: expected a JSON object, got {type(document).__name__}")
        return document

    async def read_document(self, path: str, name: str) -> bytes:
        """The bytes of metadata document ``name`` of the node at ``path``; FileNotFoundError if there is none."""
        return await get_async(self.store, _join(_join(self.root, path), name), url=self.where(_join(path, name)))

    async def list_children(self, path: str) -> list[str]:
        """The paths (from the store root) of the entries directly under the group at ``path``."""
        listing = await list_prefixes_async(self.store, _join(self.root, path) or None, url=self.where(path))
        start = len(self.root) + 1 if self.root else 0
        return [p[start:].strip("/") for p in listing]

    async def read_node(self, path: str, zarr_format: int | None, *, required: bool = False) -> ZarrNode | None:
        """The node at ``path``: v3 ``zarr.json`` or v2 ``.zarray``/``.zgroup`` (+ ``.zattrs``)."""
        errors: list[str] | None = [] if required else None
        names = {3: (V3_DOC,), 2: (V2_ARRAY, V2_GROUP, V2_ATTRS)}.get(zarr_format, (V3_DOC, V2_ARRAY, V2_GROUP, V2_ATTRS))
        docs = dict(zip(names, await asyncio.gather(*(self.get_json(path, n, required_error=errors) for n in names))))
        if docs.get(V3_DOC) is not None:
            document = docs[V3_DOC]
            kind = document.get("node_type")
            if document.get("zarr_format") != 3 or kind not in ("array", "group"):
                raise ParseError(
                    f"{self.where(_join(path, V3_DOC))}: not zarr v3 metadata "
                    f"(zarr_format={document.get('zarr_format')!r}, node_type={kind!r})"
                )
            return ZarrNode(path, kind, 3, document)
        attributes = docs.get(V2_ATTRS) or {}
        if docs.get(V2_ARRAY) is not None:
            return ZarrNode(path, "array", 2, docs[V2_ARRAY], attributes)
        if docs.get(V2_GROUP) is not None:
            return ZarrNode(path, "group", 2, docs[V2_GROUP], attributes)
        if required:
            what = f"no group {path!r} in the Zarr store {self.url}" if path else f"{self.url}: not a Zarr store"
            if path and await self.read_node("", None) is None:
                what = f"{self.url}: not a Zarr store"
            detail = f" ({errors[0]})" if errors else ""
            raise ParseError(f"{what}: no zarr.json, .zgroup or .zarray found at {self.where(path)}{detail}")
        return None

    async def consolidated_tree(self, path: str, top: ZarrNode) -> ZarrNode | None:
        """The tree from consolidated metadata (the store root's, else the group's), or None if there is none."""
        nodes = None
        for base in ("", path) if path else ("",):
            nodes = await self.consolidated_nodes(base, top if base == path else None, top.zarr_format)
            if nodes is not None:
                break
        if nodes is None:
            return None
        # rebuild the tree below ``path`` (the top node's own document comes from ``top``)
        prefix = path + "/" if path else ""
        tree = ZarrNode(top.path, "group", top.zarr_format, top.document, top.attributes)
        for key in sorted(k for k in nodes if k.startswith(prefix) and k != path):
            parent, _, name = key.rpartition("/")
            parent_node = tree if parent == path else _find(tree, parent[len(prefix):])
            if parent_node is None or parent_node.kind != "group":
                continue  # orphan entry (its parent is not a group): ignore like zarr does
            parent_node.children[name] = nodes[key]
        return tree

    async def consolidated_nodes(self, base: str, node: ZarrNode | None, zarr_format: int) -> dict[str, ZarrNode] | None:
        """Nodes (by path from the store root) in the consolidated metadata of the group at ``base``."""
        nodes = {}
        if zarr_format == 3:
            node = node or await self.read_node(base, 3)
            consolidated = node.document.get("consolidated_metadata") if node is not None else None
            if not isinstance(consolidated, dict) or not isinstance(consolidated.get("metadata"), dict):
                return None
            for key, document in consolidated["metadata"].items():
                kind = document.get("node_type") if isinstance(document, dict) else None
                if kind not in ("array", "group"):
                    raise ParseError(f"{self.where(base)}: consolidated metadata for {key!r} is not a zarr v3 node")
                full = _join(base, key.strip("/"))
                nodes[full] = ZarrNode(full, kind, 3, document)
            return nodes
        document = await self.get_json(base, V2_CONSOLIDATED)
        if document is None or not isinstance(document.get("metadata"), dict):
            return None
        docs = document["metadata"]
        for key, value in docs.items():
            node_path, _, name = key.rpartition("/")
            if name in (V2_ARRAY, V2_GROUP) and node_path:
                kind = "array" if name == V2_ARRAY else "group"
                full = _join(base, node_path)
                nodes[full] = ZarrNode(full, kind, 2, value, docs.get(_join(node_path, V2_ATTRS)) or {})
        return nodes

    async def walk(self, node: ZarrNode) -> None:
        """Fill ``node.children`` by listing the group's prefix (one level) and reading each child."""
        children = await self.list_children(node.path)
        found = await asyncio.gather(*(self.read_node(c, node.zarr_format) for c in children))
        groups = []
        for child in found:
            if child is None:
                continue  # a directory that is not a zarr node
            node.children[child.path.rsplit("/", 1)[-1]] = child
            if child.kind == "group":
                groups.append(child)
        await asyncio.gather(*(self.walk(g) for g in groups))

    # -- building manifests ---------------------------------------------- #
    async def build(self, node: ZarrNode) -> ManifestGroup:
        arrays = {name: child for name, child in node.children.items() if child.kind == "array"}
        groups = {name: child for name, child in node.children.items() if child.kind == "group"}
        metadatas = {name: self.array_metadata(child) for name, child in arrays.items()}
        manifests = await asyncio.gather(*(self.chunk_manifest(child, metadatas[name]) for name, child in arrays.items()))
        built = {
            name: ManifestArray(metadatas[name][0], manifest, registry=self.registry)
            for name, manifest in zip(arrays, manifests)
        }
        subgroups = dict(zip(groups, await asyncio.gather(*(self.build(g) for g in groups.values()))))
        if node.zarr_format == 3:
            attributes = dict(node.document.get("attributes") or {})
        else:
            attributes = dict(node.attributes)
        try:
            return ManifestGroup(arrays=built, groups=subgroups, attributes=attributes)
        except ValueError as err:
            raise ParseError(f"{self.where(node.path)}: {err}") from err

    async def chunk_manifest(self, node: ZarrNode, described) -> ChunkManifest:
        """The ChunkManifest of one array node: ``described`` is ``(metadata, (key encoding, separator))``."""
        prefix = _join(self.root, node.path)
        start = len(prefix) + 1 if prefix else 0
        listed = await list_sizes_async(self.store, prefix or None, url=self.where(node.path))
        base = self.where(node.path)
        return self.manifest_of(node, described, [(path[start:], f"{base}/{path[start:]}", 0, size)
                                                  for path, size in listed])

    def array_metadata(self, node: ZarrNode):
        where = f"{self.url}: variable {node.path!r}"
        if node.zarr_format == 2:  # v2 chunk keys in the source; the v3 metadata uses the default encoding
            metadata = v2_to_v3(node.document, node.attributes, where=where)
            return metadata, ("v2", node.document.get("dimension_separator") or ".")
        document = dict(node.document)
        attributes = dict(document.get("attributes") or {})
        if document.get("dimension_names") is None and isinstance(attributes.get(DIMENSION_KEY), list):
            document["dimension_names"] = attributes.pop(DIMENSION_KEY)
            document["attributes"] = attributes
        if document.get("dimension_names") is None and document.get("shape") == []:
            document["dimension_names"] = []  # a scalar: no dimensions to name
        if document.get("storage_transformers"):
            raise ParseError(f"{where}: storage transformers {document['storage_transformers']!r} are not supported")
        try:
            metadata = metadata_from_document(document)  # rectilinear grids too, whatever zarr's flag says
            chunk_grid_shape(metadata)
        except NotImplementedError as err:
            raise ParseError(f"{where}: {err}") from err
        except Exception as err:
            raise ParseError(f"{where}: invalid or unsupported zarr.json: {err}") from err
        encoding = metadata.chunk_key_encoding.to_dict()
        name = encoding["name"]
        if name not in ("default", "v2"):
            raise ParseError(f"{where}: unknown chunk key encoding {name!r}")
        separator = (encoding.get("configuration") or {}).get("separator", "/" if name == "default" else ".")
        return metadata, (name, separator)

    def manifest_of(self, node: ZarrNode, described, objects: list[tuple[str, str, int, int]]) -> ChunkManifest:
        """The ChunkManifest of an array from its objects ``(key relative to the array, url, offset, length)``.

        Keys that are not chunks of the grid (metadata documents, stray
        files, chunks beyond a shrunk shape) are skipped.
        """
        metadata, (name, separator) = described
        where = f"{self.url}: variable {node.path!r}"
        grid = chunk_grid_shape(metadata)
        paths = np.full(grid, "", dtype=object)
        offsets = np.zeros(grid, dtype=np.uint64)
        lengths = np.zeros(grid, dtype=np.uint64)
        empty = {}
        rows, index = _decode_keys([key for key, _, _, _ in objects], name, separator, grid)
        if len(rows):
            flat = np.ravel_multi_index(tuple(index.T), grid) if grid else np.zeros(len(rows), dtype=np.intp)
            sizes = np.array([objects[r][3] for r in rows], dtype=np.uint64)
            for i in index[sizes == 0]:  # not a valid encoded chunk: inline it so decoding fails loudly
                empty[tuple(int(x) for x in i)] = b""
            keep = sizes > 0
            rows, flat = rows[keep], flat[keep]
            paths.reshape(-1)[flat] = [objects[r][1] for r in rows]
            offsets.reshape(-1)[flat] = [objects[r][2] for r in rows]
            lengths.reshape(-1)[flat] = sizes[keep]
        try:
            return ChunkManifest.from_arrays(paths=paths, offsets=offsets, lengths=lengths, inlined=empty or None)
        except ValueError as err:
            raise ParseError(f"{where}: {err}") from err


def _find(tree: ZarrNode, path: str) -> ZarrNode | None:
    node = tree
    for part in path.split("/"):
        node = node.children.get(part)
        if node is None:
            return None
    return node


def _join(prefix: str, name: str) -> str:
    return f"{prefix}/{name}" if prefix and name else prefix or name


def _decode_keys(keys: list[str], encoding: str, separator: str,
                 grid: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """``(rows, indices)``: which ``keys`` are chunks of this grid, and their grid indices (an ``(n, ndim)`` array).

    Keys that are not chunks (metadata documents, stray files) or lie beyond
    the grid (a shrunk shape) are left out. One compiled pattern matches
    every key: a store of a million chunks decodes in about a second.
    """
    ndim = len(grid)
    digits, sep = "([0-9]+)", re.escape(separator)
    if encoding == "default":
        pattern = re.compile("c" + (sep + digits) * ndim)
    else:
        pattern = re.compile(sep.join([digits] * ndim) if ndim else "0")
    matched = [(row, m.groups()) for row, m in enumerate(map(pattern.fullmatch, keys)) if m is not None]
    try:
        index = np.array([groups for _, groups in matched], dtype=np.int64).reshape(len(matched), ndim)
    except OverflowError:  # a number beyond int64 is beyond any grid too
        matched = [(row, groups) for row, groups in matched if all(len(g) <= 18 for g in groups)]
        index = np.array([groups for _, groups in matched], dtype=np.int64).reshape(len(matched), ndim)
    rows = np.array([row for row, _ in matched], dtype=np.intp)
    inside = (index < np.array(grid, dtype=np.int64)).all(axis=1) if ndim else np.ones(len(rows), dtype=bool)
    return rows[inside], index[inside]
