"""What the JSON and Parquet reference parsers share: reading, urls, and assembling the ManifestGroup.

Names with a leading underscore are private to ``vzdask.parsers.kerchunk``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import os
import posixpath
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from vzdask.codecs import fixed_chunk_bytes
from vzdask.manifests.array import ManifestArray
from vzdask.manifests.group import ManifestGroup
from vzdask.manifests.manifest import INLINED, ChunkManifest, _factorize_paths, chunk_key
from vzdask.manifests.metadata import chunk_grid_shape, chunk_shape, replace_metadata
from vzdask.object_io import get, get_range, head_size_async, run_sync
from vzdask.parsers.common import ParseError, Parser
from vzdask.policy import InlinePolicy
from vzdask.registry import ObjectStoreRegistry
from vzdask.zarr_v2 import v2_to_v3

#: Zarr v2 metadata documents in a reference set.
METADATA_NAMES = frozenset({".zarray", ".zattrs", ".zgroup"})
#: Keys that are neither metadata we read nor chunks (consolidated metadata repeats the others).
IGNORED_NAMES = frozenset({".zmetadata"})
#: ``lengths`` marker of a ``[url]`` (whole object) reference, until its size is known.
WHOLE = -1
#: Concurrent ``head``/``get`` requests while resolving whole-object refs and reading Parquet records.
CONCURRENCY = 32

STRING = np.dtypes.StringDType()
_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


# --------------------------------------------------------------------------- #
# reading
# --------------------------------------------------------------------------- #
def _read_object(url: str, registry: ObjectStoreRegistry, what: str | None = None) -> bytes:
    store, path = registry.resolve(url)
    try:
        return get(store, path, url=url)
    except OSError as err:  # missing or unreadable: both "cannot open"
        detail = "not found" if isinstance(err, FileNotFoundError) else str(err)
        raise FileNotFoundError(f"cannot open {what or url}: {detail}") from err


def _load_json(url: str, data: bytes, what: str) -> Any:
    if data.startswith(_GZIP_MAGIC):
        import gzip

        data = gzip.decompress(data)
    elif data.startswith(_ZSTD_MAGIC):
        from numcodecs import Zstd

        data = bytes(Zstd().decode(data))
    if not data.strip():
        raise ParseError(f"{url}: empty {what}; not a kerchunk reference set")
    try:
        import ujson  # optional, ~2x faster on large reference sets

        return ujson.loads(data)
    except ImportError:
        pass
    except (ValueError, OverflowError):
        pass  # let json name the problem (or accept what ujson refuses)
    try:
        return json.loads(data)
    except (UnicodeDecodeError, ValueError) as err:
        raise ParseError(f"{url}: {what} is not valid JSON ({err}); not a kerchunk reference set") from err


def _parent(url: str) -> str:
    """The 'directory' of a url, with a trailing slash."""
    return url.rstrip("/").rsplit("/", 1)[0] + "/"


#: How a parser takes urls without a scheme or leading ``/`` (see the ``relative_urls`` parameter).
RELATIVE_URLS = ("refuse", "references", "cwd")


class ReferenceParser(Parser):
    """What the JSON and Parquet reference parsers share: the ``relative_urls`` option (see their docstrings)."""

    def __init__(
        self, *, inline: InlinePolicy | None = None, group: str | None = None,
        drop_variables: Iterable[str] | None = None, relative_urls: str = "refuse",
    ) -> None:
        super().__init__(inline=inline, group=group, drop_variables=drop_variables)
        if relative_urls not in RELATIVE_URLS:
            raise ValueError(f"relative_urls must be one of {RELATIVE_URLS}, got {relative_urls!r}")
        self.relative_urls = relative_urls


def _resolve_url(url: str, base: str, relative_urls: str = "references") -> str:
    """An absolute url: local paths become ``file://``; relative ones as ``relative_urls`` says.

    ``"references"``: joined to ``base``, the reference set's directory (``..``
    resolved); ``"cwd"``: to the current directory, as fsspec's
    ReferenceFileSystem reads them; ``"refuse"``: an error, since the two
    readers would read different files.
    """
    if "::" in url:
        raise ValueError(f"chained fsspec url {url!r} is not supported; give the target url itself")
    if "://" in url:
        return url
    if url.startswith("/"):
        return "file://" + posixpath.normpath(url)
    if relative_urls == "cwd":
        return "file://" + posixpath.normpath(posixpath.join(os.getcwd(), url))
    if relative_urls == "refuse":
        raise ValueError(
            f"the reference url {url!r} is relative: fsspec reads it from the current directory ({os.getcwd()}), "
            f"while it sits beside the references in {base}; vzdask does not guess which is meant: pass "
            "relative_urls='references' or relative_urls='cwd' (as fsspec) to the parser, e.g. "
            "open_virtual_dataset(url, parser=KerchunkJSONParser(relative_urls='references')), or write absolute urls"
        )
    scheme, sep, rest = base.partition("://")
    authority, _, path = rest.partition("/")
    joined = posixpath.normpath(posixpath.join("/" + path, url))
    if joined.startswith("//"):
        joined = "/" + joined.lstrip("/")
    return f"{scheme}{sep}{authority}{joined}"


def _run(coroutine):
    return run_sync(coroutine)


def _object_sizes(urls: list[str], registry: ObjectStoreRegistry, source: str) -> dict[str, int]:
    """Sizes of whole objects, with concurrent ``head`` requests."""
    if not urls:
        return {}

    async def one(url, limit):
        async with limit:
            store, path = registry.resolve(url)
            try:
                return url, await head_size_async(store, path, url=url)
            except OSError as err:
                raise ParseError(f"{source}: whole-file reference to {url}: cannot get its size: {err}") from err

    async def everything():
        limit = asyncio.Semaphore(CONCURRENCY)
        return await asyncio.gather(*(one(u, limit) for u in urls))

    return dict(_run(everything()))



@dataclass
class _ArrayInfo:
    """One zarr v2 array of the reference set."""

    path: str
    grid: tuple[int, ...]
    where: str  # "<source>: variable 'path'", for errors


@dataclass
class _Chunks:
    """References of one array, flat over its chunk grid in C order."""

    paths: np.ndarray  # object: url, or None where not virtual
    offsets: np.ndarray  # int64
    lengths: np.ndarray  # int64; WHOLE for whole-object refs
    inlined: np.ndarray | None  # object: bytes or None



def _inline_bytes(value: str, key: str, source: str) -> bytes:
    if value.startswith("base64:"):
        try:
            return base64.b64decode(value[7:], validate=True)
        except (binascii.Error, ValueError) as err:
            raise ParseError(f"{source}: key {key!r}: inline data is not valid base64 ({err})") from None
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ParseError(f"{source}: key {key!r}: inline text cannot be encoded ({err})") from None



# --------------------------------------------------------------------------- #
# assembling groups, arrays and manifests
# --------------------------------------------------------------------------- #
def _without(metadata: dict[str, Any], group: str | None, drop: frozenset[str]) -> dict[str, Any]:
    """``metadata`` without the documents of the arrays named in ``drop`` (children of ``group``)."""
    if not drop:
        return metadata
    prefix = f"{group.strip('/')}/" if group and group.strip("/") else ""
    dropped = {f"{prefix}{name}/" for name in drop}
    return {key: value for key, value in metadata.items() if not any(key.startswith(d) for d in dropped)}


def _assemble(
    source: str,
    metadata: dict[str, Any],
    registry: ObjectStoreRegistry,
    *,
    group: str | None,
    base: str,
    load: Callable[[dict[str, _ArrayInfo]], dict[str, _Chunks]],
    render_url: Callable[[str], str] | None = None,
    relative_urls: str = "references",
) -> ManifestGroup:
    documents = {
        key: _metadata_document(key, value, source, registry, base, relative_urls) for key, value in metadata.items()
    }
    array_paths = {k[: -len("/.zarray")] if k != ".zarray" else "" for k in documents if k.endswith(".zarray")}
    if "" in array_paths:
        raise ParseError(f"{source}: the reference set's root is an array, not a group; open it with zarr instead")
    group_paths = {""}
    for key in documents:
        path = key.rpartition("/")[0]
        if path not in array_paths:
            group_paths.add(path)
    for path in list(array_paths) + list(group_paths):
        parts = path.split("/")
        group_paths.update("/".join(parts[:i]) for i in range(len(parts)))
    for path in array_paths & group_paths:
        raise ParseError(f"{source}: {path!r} is both an array (.zarray) and a group")

    prefix = (group or "").strip("/")
    if prefix:
        if prefix in array_paths:
            raise ParseError(f"{source}: {prefix!r} is an array, not a group")
        if prefix not in group_paths:
            raise ParseError(f"{source}: no group {prefix!r} (groups: {sorted(g for g in group_paths if g)})")
        within = prefix + "/"
        array_paths = {p for p in array_paths if p.startswith(within)}
        group_paths = {p for p in group_paths if p == prefix or p.startswith(within)}

    # zarr v2 metadata -> v3 (chunk manifests come later)
    metadatas = {
        path: v2_to_v3(
            documents[_join(path, ".zarray")], documents.get(_join(path, ".zattrs"), {}),
            where=f"{source}: variable {path!r}",
        )
        for path in sorted(array_paths)
    }
    infos = {p: _ArrayInfo(p, chunk_grid_shape(m), f"{source}: variable {p!r}") for p, m in metadatas.items()}
    chunks = load(infos)
    _resolve_references(chunks, infos, registry, source, base, render_url, relative_urls)

    arrays_in: dict[str, dict[str, ManifestArray]] = {g: {} for g in group_paths}
    phony: dict[str, dict[int, str]] = {g: {} for g in group_paths}
    for path, metadata in metadatas.items():
        parent, _, name = path.rpartition("/")
        dims = metadata.dimension_names
        if dims is None:
            names = phony[parent]
            dims = tuple(names.setdefault(size, f"phony_dim_{len(names)}") for size in metadata.shape)
        elif parent:
            dims = tuple(d.removeprefix(parent + "/") for d in dims)
        grid = infos[path].grid
        c = chunks[path]
        try:
            manifest = ChunkManifest.from_arrays(
                paths=c.paths.reshape(grid),
                offsets=c.offsets.reshape(grid),
                lengths=c.lengths.reshape(grid),
                inlined=c.inlined.reshape(grid) if c.inlined is not None else None,
            )
            if dims != metadata.dimension_names:
                metadata = replace_metadata(metadata, dimension_names=dims)
        except (ValueError, TypeError) as err:
            raise ParseError(f"{source}: variable {path!r}: {err}") from err
        _check_inlined_sizes(manifest, metadata, f"{source}: variable {path!r}")
        arrays_in[parent][name] = ManifestArray(metadata, manifest, registry=registry)

    built: dict[str, ManifestGroup] = {}
    for path in sorted(group_paths, key=lambda p: -(p.count("/") + bool(p))):
        subgroups = {
            child.rpartition("/")[2]: node for child, node in built.items()
            if child and child.rpartition("/")[0] == path and child != path
        }
        attributes = documents.get(_join(path, ".zattrs"), {})
        try:
            built[path] = ManifestGroup(arrays=arrays_in[path], groups=subgroups, attributes=dict(attributes))
        except (ValueError, TypeError) as err:
            raise ParseError(f"{source}: group {path or '/'!r}: {err}") from err
    return built[prefix]


def _check_inlined_sizes(manifest: ChunkManifest, metadata, where: str) -> None:
    """An inlined chunk of an uncompressed array must hold exactly one chunk's bytes (else it decodes to garbage)."""
    size = fixed_chunk_bytes(metadata)
    if size is None:
        return
    wrong = (manifest.states == INLINED) & (manifest.lengths != size)
    if wrong.any():
        first = tuple(int(i) for i in np.argwhere(wrong)[0])
        length = int(manifest.lengths[first])
        raise ParseError(
            f"{where}: inlined chunk {chunk_key(first)} holds {length} bytes, but an uncompressed chunk of shape "
            f"{tuple(chunk_shape(metadata))} and dtype {metadata.data_type.to_native_dtype()} takes {size} bytes"
            + (f" ({int(wrong.sum())} inlined chunks have the wrong size)" if wrong.sum() > 1 else "")
        )


def _join(path: str, name: str) -> str:
    return f"{path}/{name}" if path else name


def _metadata_document(key: str, value: Any, source: str, registry: ObjectStoreRegistry, base: str,
                       relative_urls: str = "references") -> dict:
    if isinstance(value, dict):
        document = value
    else:
        if isinstance(value, str):
            text: str | bytes = _inline_bytes(value, key, source) if value.startswith("base64:") else value
        elif isinstance(value, list) and value and isinstance(value[0], str) and len(value) in (1, 3):
            url = value[0]
            try:
                url = _resolve_url(url, base, relative_urls)
                store, path = registry.resolve(url)
                if len(value) == 3:
                    text = bytes(get_range(store, path, int(value[1]), int(value[2]), url=url))
                else:
                    text = get(store, path, url=url)
            except Exception as err:
                raise ParseError(f"{source}: key {key!r}: cannot read {url}: {err}") from err
        else:
            raise ParseError(f"{source}: key {key!r}: metadata value of type {type(value).__name__} is not JSON text")
        try:
            document = json.loads(text)
        except ValueError as err:
            raise ParseError(f"{source}: key {key!r}: metadata is not valid JSON ({err})") from None
    if not isinstance(document, dict):
        raise ParseError(f"{source}: key {key!r}: metadata is a {type(document).__name__}, not a JSON object")
    return document


def _resolve_references(
    chunks: dict[str, _Chunks], infos: dict[str, _ArrayInfo], registry: ObjectStoreRegistry, source: str,
    base: str, render_url: Callable[[str], str] | None, relative_urls: str = "references",
) -> None:
    """Render templates, resolve relative urls and look up the size of whole-object refs, in place."""
    resolved: dict[str, str] = {}
    whole_codes: dict[str, tuple[np.ndarray, list[str]]] = {}
    for path, c in chunks.items():
        codes, uniques = _factorize_paths(c.paths)
        targets = []
        for url in uniques:
            hit = resolved.get(url)
            if hit is None:
                try:
                    rendered = render_url(url) if render_url is not None else url
                    if not isinstance(rendered, str):
                        raise ValueError(f"url {url!r} is not a string")
                    hit = resolved[url] = _resolve_url(rendered, base, relative_urls)
                except ValueError as err:
                    raise ParseError(f"{infos[path].where}: {err}") from None
            targets.append(hit)
        table = np.empty(len(targets) + 1, dtype=object)
        table[:-1] = targets
        table[-1] = ""
        c.paths = table[codes]
        if (c.lengths == WHOLE).any():
            whole_codes[path] = (codes, targets)
    if not whole_codes:
        return
    needed = sorted(
        {targets[int(i)] for p, (codes, targets) in whole_codes.items() for i in np.unique(codes[chunks[p].lengths == WHOLE])}
    )
    sizes = _object_sizes(needed, registry, source)
    for path, (codes, targets) in whole_codes.items():
        c = chunks[path]
        whole = c.lengths == WHOLE
        lookup = np.asarray([sizes.get(t, 0) for t in targets], dtype=np.int64)
        c.lengths[whole] = lookup[codes[whole]]
        c.offsets[whole] = 0
        empty = np.nonzero(whole & (c.lengths == 0))[0]
        if empty.size:
            url = targets[int(codes[empty[0]])]
            raise ParseError(f"{infos[path].where}: whole-file reference to {url}, which is empty")
