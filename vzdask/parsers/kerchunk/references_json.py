"""Kerchunk JSON reference sets (spec versions 0 and 1): the parser, versions and ``gen``, chunk keys."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from vzdask.manifests.store import ManifestStore
from vzdask.parsers.common import ParseError, finish
from vzdask.parsers.kerchunk.common import (
    IGNORED_NAMES,
    METADATA_NAMES,
    ReferenceParser,
    STRING,
    WHOLE,
    _ArrayInfo,
    _assemble,
    _Chunks,
    _inline_bytes,
    _load_json,
    _parent,
    _read_object,
    _without,
)
from vzdask.parsers.kerchunk.templates import _Templates
from vzdask.registry import ObjectStoreRegistry


class KerchunkJSONParser(ReferenceParser):
    """Parse a kerchunk JSON reference set (spec version 0 or 1) into a ManifestStore.

    Parameters
    ----------
    inline : InlinePolicy, optional
        Which further chunks to copy into the manifest (the reference set's
        own inline data always stays inlined).
    group : str, optional
        Parse only this group of the reference set.
    relative_urls : {"refuse", "references", "cwd"}
        Reference urls with no scheme and no leading ``/``: refused (the
        default: fsspec reads them from the current directory, while they
        are often meant beside the references), joined to the reference
        set's own directory, or to the current directory as fsspec does.
    """

    @classmethod
    def guess_can_open(cls, head: bytes, url: str) -> bool:
        """True if ``head`` starts a JSON object that may be a reference set (``looks_like_kerchunk_json``)."""
        return looks_like_kerchunk_json(head)

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
            render_url=templates.render_url if templates is not None else None, relative_urls=self.relative_urls,
        )
        return finish(group, registry, self.inline)



def looks_like_kerchunk_json(head: bytes) -> bool:
    """True if ``head`` (the first bytes of a file) starts a JSON object that may be a reference set."""
    text = head.lstrip()
    if not text.startswith(b"{"):
        return False
    # A zarr v3 zarr.json document is JSON too, but no reference set.
    return not (b'"node_type"' in head and b'"zarr_format"' in head and b'"refs"' not in head)



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
