"""Kerchunk reference sets (JSON versions 0 and 1, and fsspec's Parquet layout) as ManifestStores.

A reference set maps zarr v2 keys to values: metadata documents
(``.zgroup``/``.zarray``/``.zattrs``) and, for chunk keys, one of

* ``[url, offset, length]`` -- a byte range of a file (a virtual chunk);
* ``[url]`` -- a whole file (its size is looked up with one ``head`` per url);
* ``"base64:..."`` or any other string -- the chunk's bytes, inline (base64,
  or the string's UTF-8 bytes, which is what kerchunk writes for ASCII data).

Version 1 adds ``templates`` (jinja-style ``{{name}}`` substitutions in urls,
and template functions ``{{f(c='x')}}``) and ``gen`` entries that generate
keys over the cartesian product of ranges. Expressions made of names,
numbers, strings, arithmetic and ``%`` formatting are evaluated here,
vectorised; anything beyond that is rendered with jinja2 if it is installed.

Relative urls are relative to the reference set's location (the directory
holding the JSON file, or the Parquet reference directory).
"""

from __future__ import annotations

import ast
import asyncio
import base64
import binascii
import io
import json
import math
import operator
import posixpath
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from vzdask.manifests.array import ManifestArray
from vzdask.manifests.group import ManifestGroup
from vzdask.manifests.manifest import ChunkManifest, _factorize_paths
from vzdask.manifests.metadata import chunk_grid_shape, replace_metadata
from vzdask.manifests.store import ManifestStore
from vzdask.object_io import get, get_async, get_range, head_size_async, run_sync
from vzdask.parsers.common import Parser, ParseError, finish
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


class KerchunkJSONParser(Parser):
    """Parse a kerchunk JSON reference set (spec version 0 or 1) into a ManifestStore.

    Parameters
    ----------
    inline : InlinePolicy, optional
        Which further chunks to copy into the manifest (the reference set's
        own inline data always stays inlined).
    group : str, optional
        Parse only this group of the reference set.
    """

    def __call__(self, url: str, registry: ObjectStoreRegistry) -> ManifestStore:
        document = _load_json(url, _read_object(url, registry), "reference file")
        refs, templates = _reference_mapping(document, url)
        metadata, keys = _split_keys(refs)
        if not metadata:
            raise ParseError(
                f"{url}: not a kerchunk reference set: no zarr metadata keys (.zgroup, .zarray, .zattrs) found"
            )

        def load(arrays: dict[str, _ArrayInfo]) -> dict[str, _Chunks]:
            return _json_chunks(arrays, keys, url)

        group = _assemble(
            url, _without(metadata, self.group, self.drop_variables), registry, group=self.group, base=_parent(url),
            load=load,
            render_url=templates.render_url if templates is not None else None,
        )
        return finish(group, registry, self.inline)


class KerchunkParquetParser(Parser):
    """Parse a kerchunk/fsspec Parquet reference directory into a ManifestStore.

    The directory holds ``.zmetadata`` (``{"metadata": {...}, "record_size": N}``)
    and, per array, ``<array>/refs.<i>.parq`` files with columns ``path``,
    ``offset``, ``size`` and ``raw`` holding the references of chunks
    ``i * N ... (i + 1) * N - 1`` (C order over the chunk grid).

    Parameters
    ----------
    inline : InlinePolicy, optional
        Which further chunks to copy into the manifest.
    group : str, optional
        Parse only this group of the reference set.
    """

    def __call__(self, url: str, registry: ObjectStoreRegistry) -> ManifestStore:
        root = url.rstrip("/")
        zmetadata = _read_object(root + "/.zmetadata", registry, what=f"{url}: the reference directory's .zmetadata")
        document = _load_json(url, zmetadata, ".zmetadata")
        if not isinstance(document, dict) or "record_size" not in document or "metadata" not in document:
            raise ParseError(
                f"{url}: not a kerchunk Parquet reference set: .zmetadata has no 'record_size' and 'metadata'"
            )
        record_size = document["record_size"]
        if type(record_size) is not int or record_size < 1:
            raise ParseError(f"{url}: .zmetadata record_size {record_size!r} is not a positive integer")
        entries = document["metadata"]
        if not isinstance(entries, dict):
            raise ParseError(f"{url}: .zmetadata 'metadata' is not a JSON object")
        metadata = {k: v for k, v in entries.items() if k.rpartition("/")[2] in METADATA_NAMES}

        def load(arrays: dict[str, _ArrayInfo]) -> dict[str, _Chunks]:
            return _parquet_chunks(arrays, root, record_size, registry, url)

        metadata = _without(metadata, self.group, self.drop_variables)
        group = _assemble(url, metadata, registry, group=self.group, base=_parent(root), load=load)
        return finish(group, registry, self.inline)


def is_kerchunk_parquet(url: str, registry: ObjectStoreRegistry) -> bool:
    """True if ``url`` is a directory with a kerchunk ``.zmetadata`` (one that holds ``record_size``)."""
    zmetadata = url.rstrip("/") + "/.zmetadata"
    try:
        store, path = registry.resolve(zmetadata)
        document = json.loads(get(store, path, url=zmetadata))
    except Exception:
        return False
    return isinstance(document, dict) and "record_size" in document and "metadata" in document


def looks_like_kerchunk_json(head: bytes) -> bool:
    """True if ``head`` (the first bytes of a file) starts a JSON object that may be a reference set."""
    text = head.lstrip()
    if not text.startswith(b"{"):
        return False
    # A zarr v3 zarr.json document is JSON too, but no reference set.
    return not (b'"node_type"' in head and b'"zarr_format"' in head and b'"refs"' not in head)


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


def _resolve_url(url: str, base: str) -> str:
    """An absolute url: local paths become ``file://``; relative ones join ``base`` (``..`` resolved)."""
    if "::" in url:
        raise ValueError(f"chained fsspec url {url!r} is not supported; give the target url itself")
    if "://" in url:
        return url
    if url.startswith("/"):
        return "file://" + posixpath.normpath(url)
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


# --------------------------------------------------------------------------- #
# JSON reference sets: versions, templates, gen
# --------------------------------------------------------------------------- #
def _reference_mapping(document: Any, url: str) -> tuple[dict[str, Any], _Templates | None]:
    """The flat ``key -> value`` mapping of a reference document, with ``gen`` expanded."""
    if not isinstance(document, dict):
        raise ParseError(f"{url}: not a kerchunk reference set: the JSON is a {type(document).__name__}, not an object")
    version = document.get("version")
    if version is None and isinstance(document.get("refs"), dict) and not any(
        k.rpartition("/")[2] in METADATA_NAMES for k in document
    ):
        version = 1  # {"refs": {...}} without a version: what kerchunk's own tools accept
    if version is None:
        return document, None
    if version == 0:
        return {k: v for k, v in document.items() if k != "version"}, None
    if version != 1:
        raise ParseError(f"{url}: unsupported kerchunk reference version {version!r} (expected 0 or 1)")
    refs = document.get("refs", {})
    if not isinstance(refs, dict):
        raise ParseError(f"{url}: 'refs' is a {type(refs).__name__}, not a JSON object")
    templates_doc = document.get("templates") or {}
    if not isinstance(templates_doc, dict):
        raise ParseError(f"{url}: 'templates' is not a JSON object")
    templates = _Templates(templates_doc, url)
    gen = document.get("gen") or []
    if not isinstance(gen, list):
        raise ParseError(f"{url}: 'gen' is not a list")
    if gen:
        refs = dict(refs)
        for i, entry in enumerate(gen):
            refs.update(templates.expand_gen(entry, f"{url}: gen[{i}]"))
    return refs, templates


_EXPRESSION = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)
_SINGLE_EXPRESSION = re.compile(r"^\{\{(.*?)\}\}$", re.DOTALL)
_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}


class _Unsupported(Exception):
    """An expression beyond the small language evaluated here."""


class _Templates:
    """Render jinja-style strings: ``{{name}}``, ``{{f(c='x')}}``, ``{{(i + 1) * 1000}}``.

    Evaluation is vectorised over the ``gen`` dimensions (numpy arrays);
    template values are plain strings, templates containing ``{{`` are
    functions of their keyword arguments (as in fsspec).
    """

    def __init__(self, templates: dict[str, Any], source: str) -> None:
        self.source = source
        self.values: dict[str, str] = {}
        self.functions: dict[str, str] = {}
        for name, text in templates.items():
            if not isinstance(text, str):
                raise ParseError(f"{source}: template {name!r} is a {type(text).__name__}, not a string")
            (self.functions if "{{" in text else self.values)[name] = text
        self._cache: dict[str, str] = {}

    # -- urls of refs -------------------------------------------------------
    def render_url(self, url: str) -> str:
        if "{{" not in url:
            return url
        hit = self._cache.get(url)
        if hit is None:
            hit = self._cache[url] = str(self.render(url, {}, f"{self.source}: url {url!r}"))
        return hit

    # -- gen ---------------------------------------------------------------
    def expand_gen(self, entry: Any, where: str) -> dict[str, list]:
        if not isinstance(entry, dict) or not {"key", "url", "dimensions"} <= entry.keys():
            raise ParseError(f"{where}: a gen entry needs 'key', 'url' and 'dimensions'")
        dimensions = entry["dimensions"]
        if not isinstance(dimensions, dict) or not dimensions:
            raise ParseError(f"{where}: 'dimensions' must be a non-empty object")
        axes = {}
        for name, spec in dimensions.items():
            try:
                if isinstance(spec, list):
                    if not all(type(v) is int for v in spec):
                        raise TypeError("values must be integers")
                    axes[name] = np.asarray(spec, dtype=np.int64)
                elif isinstance(spec, dict):
                    axes[name] = np.arange(int(spec.get("start", 0)), int(spec["stop"]), int(spec.get("step", 1)))
                else:
                    raise TypeError("give {'start', 'stop', 'step'} or a list of integers")
            except (KeyError, TypeError, ValueError) as err:
                raise ParseError(f"{where}: dimension {name!r}: {err}") from None
        grids = np.meshgrid(*axes.values(), indexing="ij") if axes else []
        env = {name: grid.ravel() for name, grid in zip(axes, grids)}
        n = math.prod(len(a) for a in axes.values())
        if n == 0:
            return {}
        keys = self._strings(entry["key"], env, n, f"{where} key")
        urls = self._strings(entry["url"], env, n, f"{where} url")
        if ("offset" in entry) != ("length" in entry):
            raise ParseError(f"{where}: give both 'offset' and 'length', or neither (whole files)")
        if "offset" not in entry:
            return {k: [u] for k, u in zip(keys.tolist(), urls.tolist())}
        offsets = self._integers(entry["offset"], env, n, f"{where} offset").tolist()
        lengths = self._integers(entry["length"], env, n, f"{where} length").tolist()
        return {k: [u, o, ln] for k, u, o, ln in zip(keys.tolist(), urls.tolist(), offsets, lengths)}

    def _strings(self, text: Any, env, n: int, where: str) -> np.ndarray:
        if not isinstance(text, str):
            raise ParseError(f"{where}: {text!r} is not a string")
        return np.broadcast_to(np.asarray(self.render(text, env, where), dtype=STRING), (n,))

    def _integers(self, text: Any, env, n: int, where: str) -> np.ndarray:
        if type(text) is int:
            return np.full(n, text, dtype=np.int64)
        if not isinstance(text, str):
            raise ParseError(f"{where}: {text!r} is neither an integer nor a template string")
        single = _SINGLE_EXPRESSION.match(text.strip())
        value: Any = None
        if single and "{{" not in single.group(1):
            try:
                value = self._evaluate(single.group(1), env, where)
            except _Unsupported:
                value = None
        if value is None or (isinstance(value, np.ndarray) and value.dtype.kind not in "iu") or isinstance(value, str):
            value = self.render(text, env, where)
        try:
            if isinstance(value, np.ndarray):
                out = value.astype(np.int64) if value.dtype.kind in "iu" else np.asarray(value, dtype=STRING).astype(np.int64)
            elif isinstance(value, str):
                out = np.int64(int(value))
            elif type(value) is int:
                out = np.int64(value)
            else:
                raise ValueError(f"{value!r} is not an integer")
        except (ValueError, OverflowError) as err:
            raise ParseError(f"{where}: {text!r} does not render to integers ({err})") from None
        return np.broadcast_to(out, (n,))

    # -- rendering ---------------------------------------------------------
    def render(self, text: str, env: Mapping[str, Any], where: str) -> Any:
        """``text`` with every ``{{expression}}`` replaced: a str, or a string array over ``env``'s arrays."""
        pieces: list[Any] = []
        position = 0
        try:
            for match in _EXPRESSION.finditer(text):
                pieces.append(text[position:match.start()])
                pieces.append(self._evaluate(match.group(1), env, where))
                position = match.end()
        except _Unsupported:
            return self._render_jinja(text, env, where)
        pieces.append(text[position:])
        if not any(isinstance(p, np.ndarray) for p in pieces):
            return "".join(_as_text(p) for p in pieces)
        out = None
        for piece in pieces:
            if isinstance(piece, str) and not piece:
                continue
            strings = piece.astype(STRING) if isinstance(piece, np.ndarray) else np.asarray(_as_text(piece), dtype=STRING)
            out = strings if out is None else np.strings.add(out, strings)
        return out

    def _evaluate(self, expression: str, env: Mapping[str, Any], where: str) -> Any:
        try:
            tree = ast.parse(expression.strip(), mode="eval")
        except SyntaxError:
            raise _Unsupported from None
        try:
            return self._node(tree.body, env, where)
        except (TypeError, ZeroDivisionError, ValueError) as err:
            raise ParseError(f"{where}: cannot evaluate {{{{{expression}}}}}: {err}") from None

    def _node(self, node: ast.AST, env: Mapping[str, Any], where: str) -> Any:
        if isinstance(node, ast.Constant) and type(node.value) in (int, float, str):
            return node.value
        if isinstance(node, ast.Name):
            if node.id in env:
                return env[node.id]
            if node.id in self.values:
                return self.values[node.id]
            if node.id in self.functions:
                raise ParseError(f"{where}: template {node.id!r} takes arguments: call it as {node.id}(name=value)")
            raise ParseError(f"{where}: undefined template variable {node.id!r}")
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            left, right = self._node(node.left, env, where), self._node(node.right, env, where)
            if isinstance(node.op, ast.Pow) and np.any(np.abs(np.asarray(right, dtype=object)) > 64):
                raise ValueError("exponent beyond 64")
            return _binary(type(node.op), left, right)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            value = self._node(node.operand, env, where)
            if _is_text(value):
                raise TypeError("unary sign on a string")
            return -value if isinstance(node.op, ast.USub) else +value
        if (
            isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in self.functions
            and not node.args and all(k.arg for k in node.keywords)
        ):
            kwargs = {k.arg: self._node(k.value, env, where) for k in node.keywords}
            return self.render(self.functions[node.func.id], kwargs, where)
        raise _Unsupported

    def _render_jinja(self, text: str, env: Mapping[str, Any], where: str) -> Any:
        try:
            import jinja2
        except ImportError:
            raise ParseError(
                f"{where}: template {text!r} uses more than names, arithmetic and template calls; "
                "install jinja2 to render it"
            ) from None
        from jinja2.sandbox import SandboxedEnvironment

        environment = SandboxedEnvironment()  # reference sets come from anywhere: no code execution
        functions = {
            name: (lambda _body=body, **kw: environment.from_string(_body).render(**kw))
            for name, body in self.functions.items()
        }
        try:
            template = environment.from_string(text)
            arrays = {k: v for k, v in env.items() if isinstance(v, np.ndarray)}
            scalars = {k: v for k, v in env.items() if not isinstance(v, np.ndarray)}
            base = {**self.values, **functions, **scalars}
            if not arrays:
                return template.render(**base)
            n = len(next(iter(arrays.values())))
            columns = {k: v.tolist() for k, v in arrays.items()}
            out = [template.render(**base, **{k: c[i] for k, c in columns.items()}) for i in range(n)]
        except jinja2.TemplateError as err:
            raise ParseError(f"{where}: cannot render template {text!r}: {err}") from None
        return np.asarray(out, dtype=STRING)


def _is_text(value: Any) -> bool:
    return isinstance(value, str) or (isinstance(value, np.ndarray) and value.dtype.kind in "UTSO")


def _as_text(value: Any) -> str:
    return value if isinstance(value, str) else str(value)


def _binary(op: type, left: Any, right: Any) -> Any:
    if op is ast.Add and (_is_text(left) or _is_text(right)):
        if not (_is_text(left) and _is_text(right)):
            raise TypeError("cannot add a string and a number")
        if isinstance(left, np.ndarray) or isinstance(right, np.ndarray):
            return np.strings.add(np.asarray(left, dtype=STRING), np.asarray(right, dtype=STRING))
        return left + right
    if op is ast.Mod and _is_text(left):
        if isinstance(left, str) and isinstance(right, np.ndarray):
            return np.char.mod(left, right).astype(STRING)
        if isinstance(left, np.ndarray):
            raise TypeError("'%' formatting with a string array on the left")
        return left % right
    if _is_text(left) or _is_text(right):
        raise TypeError(f"unsupported operation on a string ({op.__name__})")
    return _BINARY[op](left, right)


# --------------------------------------------------------------------------- #
# keys -> metadata and per-array chunk buckets
# --------------------------------------------------------------------------- #
def _split_keys(refs: Mapping[str, Any]) -> tuple[dict[str, Any], _Keys | None]:
    """Metadata entries, and the chunk keys grouped by their parent path (vectorised)."""
    n = len(refs)
    if n == 0:
        return {}, None
    keys = np.asarray(list(refs), dtype=STRING)
    values = np.fromiter(refs.values(), dtype=object, count=n)
    heads, _, names = np.strings.rpartition(keys, np.asarray("/", dtype=STRING))
    is_metadata = np.zeros(n, dtype=bool)
    for name in METADATA_NAMES:
        is_metadata |= names == name
    metadata = {str(keys[i]): values[i] for i in np.nonzero(is_metadata)[0]}
    is_chunk = ~is_metadata
    for name in IGNORED_NAMES:
        is_chunk &= names != name
    positions = np.nonzero(is_chunk)[0]
    buckets: dict[str, np.ndarray] = {}
    if positions.size:
        import pandas as pd

        codes, uniques = pd.factorize(heads[positions])
        order = np.argsort(codes, kind="stable")
        bounds = np.concatenate([[0], np.cumsum(np.bincount(codes, minlength=len(uniques)))])
        for c, head in enumerate(uniques):
            buckets[str(head)] = positions[order[bounds[c]:bounds[c + 1]]]
    return metadata, _Keys(names=names, values=values, buckets=buckets)


@dataclass
class _Keys:
    """The chunk keys of a JSON reference set, grouped by parent path."""

    names: np.ndarray  # StringDType: the last path component of every key
    values: np.ndarray  # object: every key's value
    buckets: dict[str, np.ndarray]  # parent path -> positions of its keys


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


def _json_chunks(arrays: dict[str, _ArrayInfo], keys: _Keys | None, source: str) -> dict[str, _Chunks]:
    """Assign chunk keys to arrays and parse their values."""
    found: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {p: [] for p in arrays}
    for head, positions in (keys.buckets.items() if keys is not None else ()):
        if head in arrays:
            found[head].append((positions, keys.names[positions]))
            continue
        # "/"-separated keys of an N-d array: the head is "array/i/j"
        parts = head.split("/")
        for k in range(1, len(parts)):
            candidate = "/".join(parts[:-k])
            if candidate in arrays and len(arrays[candidate].grid) == k + 1:
                prefix = np.asarray("/".join(parts[-k:]) + "/", dtype=STRING)
                found[candidate].append((positions, np.strings.add(prefix, keys.names[positions])))
                break
        # keys under no array (stray files, other tools' keys) are ignored, as zarr does
    out = {}
    for path, info in arrays.items():
        if found[path]:
            positions = np.concatenate([p for p, _ in found[path]])
            names = np.concatenate([n for _, n in found[path]])
            out[path] = _parse_values(info, names, keys.values[positions], source)
        else:
            out[path] = _parse_values(info, np.asarray([], dtype=STRING), np.empty(0, dtype=object), source)
    return out


def _parse_values(info: _ArrayInfo, names: np.ndarray, values: np.ndarray, source: str) -> _Chunks:
    nchunks = math.prod(info.grid)
    chunks = _Chunks(
        paths=np.full(nchunks, None, dtype=object),
        offsets=np.zeros(nchunks, np.int64),
        lengths=np.zeros(nchunks, np.int64),
        inlined=None,
    )
    if not len(names):
        return chunks
    flat = _flat_indices(info, names, source)
    fast = _fast_references(values)
    if fast is not None:
        chunks.paths[flat], chunks.offsets[flat], chunks.lengths[flat] = fast
        return chunks

    def key(i: int) -> str:
        return f"{info.path}/{names[i]}"

    m = len(values)
    paths: list[Any] = [None] * m
    offsets = [0] * m
    lengths = [0] * m
    inlined: list[Any] | None = None
    for i, value in enumerate(values.tolist()):
        kind = type(value)
        if kind is list:
            if len(value) == 3:
                url, offset, length = value
                if type(url) is not str or type(offset) is not int or type(length) is not int:
                    raise ParseError(f"{source}: key {key(i)!r}: reference {value!r} is not [url, offset, length]")
                if offset < 0 or length < 0:
                    raise ParseError(f"{source}: key {key(i)!r}: negative offset or length in {value!r}")
                paths[i], offsets[i], lengths[i] = url, offset, length
            elif len(value) == 1 and type(value[0]) is str:
                paths[i], lengths[i] = value[0], WHOLE
            else:
                raise ParseError(f"{source}: key {key(i)!r}: reference {value!r} is neither [url] nor [url, offset, length]")
        elif kind is str:
            if inlined is None:
                inlined = [None] * m
            inlined[i] = _inline_bytes(value, key(i), source)
        elif kind is dict:  # a JSON document given as an object
            if inlined is None:
                inlined = [None] * m
            inlined[i] = json.dumps(value).encode()
        elif value is None:
            continue  # a deleted key: missing
        else:
            raise ParseError(f"{source}: key {key(i)!r}: value of type {kind.__name__} is not a reference")
    chunks.paths[flat] = _object_array(paths)
    try:
        chunks.offsets[flat] = offsets
        chunks.lengths[flat] = lengths
    except OverflowError:
        bad = next(i for i in range(m) if max(offsets[i], lengths[i]) >= 2**63)
        raise ParseError(f"{source}: key {key(bad)!r}: offset or length beyond 2**63") from None
    if inlined is not None:
        chunks.inlined = np.full(nchunks, None, dtype=object)
        chunks.inlined[flat] = _object_array(inlined)
    return chunks


def _object_array(items: list[Any]) -> np.ndarray:
    out = np.empty(len(items), dtype=object)
    out[:] = items
    return out


def _fast_references(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Urls, offsets and lengths when every value is a well-formed ``[url, offset, length]`` or
    every value is ``[url]`` (no per-key Python loop); ``None`` sends the caller to the checking loop."""
    try:
        block = np.array(values.tolist(), dtype=object)
    except (ValueError, TypeError):
        return None
    if block.ndim != 2 or block.shape[1] not in (1, 3):
        return None
    urls = block[:, 0]
    try:
        if not all(type(u) is str for u in set(urls.tolist())):
            return None
    except TypeError:  # unhashable: not a url
        return None
    if block.shape[1] == 1:
        return urls, np.zeros(len(urls), np.int64), np.full(len(urls), WHOLE, np.int64)
    offsets = np.array(block[:, 1].tolist())
    lengths = np.array(block[:, 2].tolist())
    if offsets.dtype.kind != "i" or lengths.dtype.kind != "i" or (offsets < 0).any() or (lengths < 0).any():
        return None
    return urls, offsets.astype(np.int64), lengths.astype(np.int64)


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


def _flat_indices(info: _ArrayInfo, names: np.ndarray, source: str) -> np.ndarray:
    """C-order positions in the chunk grid of chunk keys ``"0.1"``/``"0/1"`` (vectorised)."""
    grid = info.grid
    ndim = len(grid)

    def fail(i, problem: str):
        raise ParseError(f"{source}: key {info.path + '/' + str(names[int(i)])!r} {problem}")

    if ndim == 0:
        bad = np.nonzero(names != "0")[0]
        if bad.size:
            fail(bad[0], "is not a chunk of a 0-d array (only '0')")
        return np.zeros(len(names), dtype=np.int64)
    keys = names
    if (np.strings.find(keys, "/") >= 0).any():
        keys = np.strings.replace(keys, "/", ".")
    wrong = np.nonzero(np.strings.count(keys, ".") != ndim - 1)[0]
    if wrong.size:
        fail(wrong[0], f"is not a chunk key of a {ndim}-d array")
    index = np.empty((len(keys), ndim), dtype=np.int64)
    rest = keys
    dot = np.asarray(".", dtype=STRING)
    for axis in range(ndim):
        piece, _, rest = np.strings.partition(rest, dot) if axis < ndim - 1 else (rest, None, None)
        bad = np.nonzero(~np.strings.isdecimal(piece))[0]
        if bad.size:
            fail(bad[0], "is not a chunk key such as '0.1'")
        index[:, axis] = piece.astype(np.int64)
    outside = np.nonzero((index >= np.asarray(grid)).any(axis=1))[0]
    if outside.size:
        fail(outside[0], f"is outside the chunk grid {grid}")
    return np.ravel_multi_index(tuple(index.T), grid).astype(np.int64)


# --------------------------------------------------------------------------- #
# Parquet references
# --------------------------------------------------------------------------- #
def _parquet_chunks(
    arrays: dict[str, _ArrayInfo], root: str, record_size: int, registry: ObjectStoreRegistry, source: str
) -> dict[str, _Chunks]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as err:  # pragma: no cover - optional dependency
        raise ParseError(f"{source}: reading Parquet references needs pyarrow (pip install vzdask[parquet])") from err

    wanted = []  # (array path, record number, url)
    for path, info in arrays.items():
        for record in range(math.ceil(math.prod(info.grid) / record_size)):
            wanted.append((path, record, f"{root}/{path}/refs.{record}.parq"))

    async def fetch(url, limit):
        async with limit:
            store, path = registry.resolve(url)
            try:
                return await get_async(store, path, url=url)
            except FileNotFoundError:
                return None  # a record without references: all missing (as fsspec reads it)

    async def everything():
        limit = asyncio.Semaphore(CONCURRENCY)
        return await asyncio.gather(*(fetch(url, limit) for _, _, url in wanted))

    blobs = _run(everything()) if wanted else []
    out = {}
    for path, info in arrays.items():
        n = math.prod(info.grid)
        out[path] = _Chunks(
            paths=np.full(n, None, dtype=object), offsets=np.zeros(n, np.int64),
            lengths=np.zeros(n, np.int64), inlined=None,
        )
    for (path, record, url), blob in zip(wanted, blobs):
        if blob is None:
            continue
        chunks = out[path]
        try:
            table = pq.read_table(io.BytesIO(blob))
        except Exception as err:
            raise ParseError(f"{source}: {url} is not a readable Parquet file: {err}") from err
        missing = {"path", "offset", "size", "raw"} - set(table.column_names)
        if missing:
            raise ParseError(f"{source}: {url} lacks the column(s) {sorted(missing)}")
        start = record * record_size
        rows = min(table.num_rows, record_size, len(chunks.paths) - start)
        if rows <= 0:
            continue
        table = table.slice(0, rows)
        where = slice(start, start + rows)

        path_col = table.column("path")
        raw_col = table.column("raw")
        has_raw = raw_col.is_valid().to_numpy(zero_copy_only=False) if raw_col.type != pa.null() else np.zeros(rows, bool)
        has_path = path_col.is_valid().to_numpy(zero_copy_only=False) if path_col.type != pa.null() else np.zeros(rows, bool)
        has_path &= ~has_raw  # raw data, when present, is the key's value (spec)
        sizes = table.column("size").fill_null(0).to_numpy().astype(np.int64)
        offsets = table.column("offset").fill_null(0).to_numpy().astype(np.int64)
        if has_path.any():
            if pa.types.is_dictionary(path_col.type):
                path_col = path_col.cast(pa.large_string())
            urls = path_col.to_numpy(zero_copy_only=False)
            chunks.paths[where] = np.where(has_path, urls, None)
            chunks.offsets[where] = np.where(has_path, offsets, 0)
            whole = (sizes == 0) & (offsets == 0)  # a path without a range: the whole object (spec)
            chunks.lengths[where] = np.where(has_path, np.where(whole, WHOLE, sizes), 0)
            if ((offsets < 0) | (sizes < 0))[has_path].any():
                row = int(np.nonzero(has_path & ((offsets < 0) | (sizes < 0)))[0][0])
                raise ParseError(f"{source}: {url} row {row}: negative offset or size")
        if has_raw.any():
            if chunks.inlined is None:
                chunks.inlined = np.full(len(chunks.paths), None, dtype=object)
            data = raw_col.to_numpy(zero_copy_only=False)
            chunks.inlined[where] = np.where(has_raw, data, None)
    return out


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
) -> ManifestGroup:
    documents = {key: _metadata_document(key, value, source, registry, base) for key, value in metadata.items()}
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
    _resolve_references(chunks, infos, registry, source, base, render_url)

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


def _join(path: str, name: str) -> str:
    return f"{path}/{name}" if path else name


def _metadata_document(key: str, value: Any, source: str, registry: ObjectStoreRegistry, base: str) -> dict:
    if isinstance(value, dict):
        document = value
    else:
        if isinstance(value, str):
            text: str | bytes = _inline_bytes(value, key, source) if value.startswith("base64:") else value
        elif isinstance(value, list) and value and isinstance(value[0], str) and len(value) in (1, 3):
            url = value[0]
            try:
                url = _resolve_url(url, base)
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
    base: str, render_url: Callable[[str], str] | None,
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
                    hit = resolved[url] = _resolve_url(rendered, base)
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
