"""ChunkManifest: where every chunk of one array lives, held in numpy arrays.

Each entry of the chunk grid is exactly one of

* **virtual** -- ``(url, offset, length)``: the encoded bytes live in a file;
* **inlined** -- the encoded bytes are held here, in memory;
* **missing** -- no bytes at all; the chunk reads as the array's fill value.

Nothing is stored as a Python object per chunk: a manifest of a million
chunks is five flat numpy arrays, a table of distinct urls and one buffer of
inlined bytes (21 bytes per chunk plus the url table and the inlined bytes).
"""

from __future__ import annotations

import functools
import re
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import numpy as np

MISSING: int = 0
VIRTUAL: int = 1
INLINED: int = 2

#: url schemes a reference may use (an obstore store exists for each).
KNOWN_SCHEMES = frozenset(
    {"file", "s3", "s3a", "gs", "gcs", "az", "azure", "abfs", "abfss", "adl", "http", "https", "memory"}
)

#: Offsets and lengths beyond this (8 PiB) cannot describe a real object.
MAX_BYTE_POSITION = 2**53

#: Chunk grids up to this many entries factorize their paths without pandas.
SMALL_GRID = 256

_KEY_SPLIT = re.compile(r"[^0-9]+")


def chunk_key(index: Sequence[int]) -> str:
    """The kerchunk-style key of a chunk index, e.g. ``(0, 3) -> "0.3"``."""
    return ".".join(str(int(i)) for i in index) if len(index) else "0"


def parse_chunk_key(key: str) -> tuple[int, ...]:
    """Parse ``"0.3"``, ``"0/3"``, ``"c/0/3"`` or ``"0_3"`` into ``(0, 3)``."""
    parts = [p for p in _KEY_SPLIT.split(key) if p != ""]
    if not parts or "-" in key:
        raise ValueError(f"chunk key {key!r} is not a chunk index such as '0.1'")
    return tuple(int(p) for p in parts)


def normalize_url(url: str, base_url: str | None = None) -> str:
    """Return ``url`` as an absolute url with a known scheme.

    Absolute local paths become ``file://`` urls; relative paths are joined to
    ``base_url``. Raises ``ValueError`` (without naming a chunk: callers add it).
    """
    if not isinstance(url, str):
        raise ValueError(f"path {url!r} is not a string")
    if url.startswith("/"):
        return "file://" + url
    scheme = urlsplit(url).scheme
    if not scheme:
        if base_url is None:
            raise ValueError(
                f"relative path {url!r} has no base; give absolute urls "
                "(file:///..., s3://...) or pass base_url="
            )
        return normalize_url(base_url.rstrip("/") + "/" + url)
    if scheme.lower() not in KNOWN_SCHEMES:
        raise ValueError(
            f"unknown url scheme {scheme!r} in {url!r}; known schemes: {', '.join(sorted(KNOWN_SCHEMES))}"
        )
    return url


@functools.lru_cache(maxsize=1024)
def _normalized_url(url: str) -> str:
    """``normalize_url(url)``, remembered: a file's parser asks it once per variable."""
    return normalize_url(url)


class ChunkManifest:
    """The location of every chunk of one array, one entry per grid position.

    Parameters
    ----------
    entries : dict
        Kerchunk-style mapping from chunk key (``"0.1"``, ``"0/1"``, any
        separator) to ``{"path": url, "offset": int, "length": int}`` for a
        virtual chunk or ``{"data": bytes}`` for an inlined one. Chunks with
        no key are missing.
    shape : tuple of int, optional
        Shape of the chunk grid; inferred from the largest key if omitted.
    base_url : str, optional
        Base that relative paths are resolved against.

    See Also
    --------
    ChunkManifest.from_arrays : the fast, vectorised constructor.
    """

    __slots__ = ("_state", "_path_index", "_offsets", "_lengths", "_urls", "_inline")

    def __init__(
        self,
        entries: Mapping[str, Mapping[str, Any]],
        shape: Sequence[int] | None = None,
        *,
        base_url: str | None = None,
    ) -> None:
        indices: list[tuple[int, ...]] = []
        for key in entries:
            try:
                indices.append(parse_chunk_key(str(key)))
            except ValueError as err:
                raise ValueError(f"chunk {key!r}: {err}") from None
        if shape is None:
            ndim = len(indices[0]) if indices else 1
            shape = tuple(max(ix[d] for ix in indices) + 1 for d in range(ndim)) if indices else (0,)
        shape = tuple(int(s) for s in shape)
        paths = np.full(shape, "", dtype=object)
        offsets = np.zeros(shape, dtype=np.uint64)
        lengths = np.zeros(shape, dtype=np.uint64)
        inlined: dict[tuple[int, ...], bytes] = {}
        for (key, entry), index in zip(entries.items(), indices):
            if len(shape) == 0 and index == (0,):
                index = ()
            if len(index) != len(shape) or any(i >= s for i, s in zip(index, shape)):
                raise ValueError(f"chunk {key!r} is outside the chunk grid of shape {shape}")
            if not isinstance(entry, Mapping):
                raise ValueError(f"chunk {key!r}: entry {entry!r} is not a dict with 'path'/'offset'/'length' or 'data'")
            if "data" in entry:
                if "path" in entry:
                    raise ValueError(
                        f"chunk {key!r}: has both a path and inlined data; a chunk is either virtual or inlined"
                    )
                inlined[index] = _as_bytes(entry["data"], key)
                continue
            try:
                path, offset, length = entry["path"], entry["offset"], entry["length"]
            except KeyError as err:
                raise ValueError(f"chunk {key!r}: entry {dict(entry)!r} lacks {err.args[0]!r}") from None
            for name, value in (("offset", offset), ("length", length)):
                if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
                    raise ValueError(f"chunk {key!r}: {name} {value!r} is not an integer")
                if value < 0:
                    raise ValueError(f"chunk {key!r}: negative {name} {value}")
                if value > MAX_BYTE_POSITION:
                    raise ValueError(f"chunk {key!r}: {name} {value} is beyond {MAX_BYTE_POSITION} bytes")
            paths[index] = path
            offsets[index] = offset
            lengths[index] = length
        built = ChunkManifest.from_arrays(
            paths=paths, offsets=offsets, lengths=lengths, inlined=inlined or None, base_url=base_url
        )
        self._set(built._state, built._path_index, built._offsets, built._lengths, built._urls, built._inline)

    # -- construction -------------------------------------------------------

    def _set(self, state, path_index, offsets, lengths, urls, inline) -> None:
        self._state = state
        self._path_index = path_index
        self._offsets = offsets
        self._lengths = lengths
        self._urls = tuple(urls)
        self._inline = inline

    @classmethod
    def _from_parts(cls, state, path_index, offsets, lengths, urls, inline) -> ChunkManifest:
        manifest = cls.__new__(cls)
        manifest._set(state, path_index, offsets, lengths, urls, inline)
        return manifest

    @classmethod
    def from_arrays(
        cls,
        *,
        paths: np.ndarray | Sequence,
        offsets: np.ndarray | Sequence,
        lengths: np.ndarray | Sequence,
        inlined: np.ndarray | Mapping[tuple[int, ...], bytes] | None = None,
        base_url: str | None = None,
    ) -> ChunkManifest:
        """Build a manifest from arrays shaped like the chunk grid (fast path).

        Parameters
        ----------
        paths : array of str
            Url of each chunk; ``""`` (or ``None``) marks a chunk that is not
            virtual (missing, or inlined if ``inlined`` has it).
        offsets, lengths : array of int
            Byte range of each virtual chunk in its file.
        inlined : object array of bytes/None, or dict of index -> bytes, optional
            Encoded bytes of chunks held in memory.
        base_url : str, optional
            Base that relative paths are resolved against.

        Validation is vectorised; any error names the first offending chunk.
        """
        paths = np.asarray(paths)
        shape = paths.shape
        offsets_in = np.asarray(offsets)
        lengths_in = np.asarray(lengths)
        for name, arr in (("offsets", offsets_in), ("lengths", lengths_in)):
            if arr.shape != shape:
                raise ValueError(f"{name} has shape {arr.shape} but paths has shape {shape}")
            if arr.size and arr.dtype.kind not in "iu":
                raise ValueError(f"{name} must be integers, got dtype {arr.dtype}")

        codes, urls = _factorize_paths(paths)
        virtual = codes >= 0

        # Validate the distinct urls once each, naming a chunk that uses a bad one.
        normalized = []
        for i, url in enumerate(urls):
            try:
                normalized.append(normalize_url(url, base_url))
            except ValueError as err:
                where = np.unravel_index(int(np.argmax(codes == i)), shape)
                raise ValueError(f"chunk {chunk_key(where)}: {err}") from None
        urls, codes = _dedupe_urls(normalized, codes)

        for name, arr in (("offset", offsets_in), ("length", lengths_in)):
            if arr.dtype.kind == "i":
                _raise_first(virtual & (arr < 0), arr, f"negative {name}")
        offsets_u = offsets_in.astype(np.uint64, copy=False)
        lengths_u = lengths_in.astype(np.uint64, copy=False)
        _raise_first(virtual & (lengths_u == 0), lengths_u, "zero-length virtual reference, length")
        too_far = virtual & (
            (offsets_u > MAX_BYTE_POSITION) | (lengths_u > MAX_BYTE_POSITION - np.minimum(offsets_u, MAX_BYTE_POSITION))
        )
        _raise_first(too_far, offsets_u, f"offset+length beyond {MAX_BYTE_POSITION} bytes, offset")

        state = np.where(virtual, np.uint8(VIRTUAL), np.uint8(MISSING)).astype(np.uint8)
        path_index = codes.astype(np.int32)
        offsets_out = np.where(virtual, offsets_u, np.uint64(0))
        lengths_out = np.where(virtual, lengths_u, np.uint64(0))
        inline = b""
        if inlined is not None:
            inline = _fill_inlined(inlined, shape, state, offsets_out, lengths_out)
        return cls._from_parts(state, path_index, offsets_out, lengths_out, urls, inline)

    @classmethod
    def from_file_table(cls, url: str, present: np.ndarray, offsets: np.ndarray, lengths: np.ndarray) -> ChunkManifest:
        """Chunks of one file: ``present`` marks the virtual ones, the rest are missing.

        What a parser has after reading one file's chunk index. The same
        checks as ``from_arrays``, minus finding the distinct urls (there is
        one): the url once, every present chunk's byte range.
        """
        present = np.asarray(present, dtype=bool)
        shape = present.shape
        offsets_u = np.asarray(offsets).astype(np.uint64, copy=False)
        lengths_u = np.asarray(lengths).astype(np.uint64, copy=False)
        if offsets_u.shape != shape or lengths_u.shape != shape:
            raise ValueError(f"offsets {offsets_u.shape} and lengths {lengths_u.shape} must have the grid shape {shape}")
        everywhere = bool(present.all())
        if not everywhere:
            if not present.any():
                return cls.empty(shape)
            offsets_u = np.where(present, offsets_u, np.uint64(0))
            lengths_u = np.where(present, lengths_u, np.uint64(0))
        try:
            urls = (_normalized_url(url) if isinstance(url, str) else normalize_url(url),)
        except ValueError as err:
            where = np.unravel_index(int(np.argmax(present)), shape)
            raise ValueError(f"chunk {chunk_key(where)}: {err}") from None
        _raise_first(present & (lengths_u == 0), lengths_u, "zero-length virtual reference, length")
        if int(offsets_u.max()) + int(lengths_u.max()) > MAX_BYTE_POSITION:  # then find the first culprit
            too_far = (offsets_u > MAX_BYTE_POSITION) | (
                lengths_u > MAX_BYTE_POSITION - np.minimum(offsets_u, MAX_BYTE_POSITION))
            _raise_first(too_far, offsets_u, f"offset+length beyond {MAX_BYTE_POSITION} bytes, offset")
        if everywhere:
            state = np.full(shape, VIRTUAL, np.uint8)
            path_index = np.zeros(shape, np.int32)
        else:
            state = np.where(present, np.uint8(VIRTUAL), np.uint8(MISSING))
            path_index = np.where(present, np.int32(0), np.int32(-1))
        return cls._from_parts(state, path_index, offsets_u, lengths_u, urls, b"")

    @classmethod
    def inlined_chunk(cls, data: bytes, ndim: int) -> ChunkManifest:
        """A grid of one chunk (``ndim`` axes), held inline: ``data``, its encoded bytes (as ``from_arrays`` checks them)."""
        grid = (1,) * ndim
        data = _as_bytes(data, chunk_key(grid))
        return cls._from_parts(np.full(grid, INLINED, np.uint8), np.full(grid, -1, np.int32),
                               np.zeros(grid, np.uint64), np.full(grid, len(data), np.uint64), (), data)

    @classmethod
    def empty(cls, shape: Sequence[int]) -> ChunkManifest:
        """A manifest in which every chunk is missing."""
        shape = tuple(int(s) for s in shape)
        return cls._from_parts(
            np.zeros(shape, np.uint8),
            np.full(shape, -1, np.int32),
            np.zeros(shape, np.uint64),
            np.zeros(shape, np.uint64),
            (),
            b"",
        )

    # -- inspection ---------------------------------------------------------

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of the chunk grid."""
        return self._state.shape

    @property
    def ndim(self) -> int:
        return self._state.ndim

    @property
    def states(self) -> np.ndarray:
        """Per-chunk state codes: ``MISSING`` (0), ``VIRTUAL`` (1), ``INLINED`` (2). Read-only view."""
        return _readonly(self._state)

    @property
    def urls(self) -> tuple[str, ...]:
        """The distinct urls that ``path_index`` points into."""
        return self._urls

    @property
    def path_index(self) -> np.ndarray:
        """Per-chunk index into ``urls`` (-1 where not virtual). Read-only view."""
        return _readonly(self._path_index)

    @property
    def offsets(self) -> np.ndarray:
        """Where each chunk starts: in its file (virtual), in ``inline_buffer`` (inlined); 0 if missing."""
        return _readonly(self._offsets)

    @property
    def lengths(self) -> np.ndarray:
        """Stored (encoded) size of each chunk, virtual or inlined (0 if missing)."""
        return _readonly(self._lengths)

    @property
    def inline_buffer(self) -> bytes:
        """All inlined bytes; inlined chunk ``i`` is ``inline_buffer[offsets[i] : offsets[i] + lengths[i]]``."""
        return self._inline

    def paths(self) -> np.ndarray:
        """Per-chunk url as a numpy string array (``""`` where not virtual)."""
        table = np.asarray(("",) + self._urls, dtype=np.dtypes.StringDType())
        return table[self._path_index.ravel() + 1].reshape(self.shape)  # an array even for a 0-d grid

    @property
    def nchunks(self) -> int:
        return int(self._state.size)

    def count(self) -> dict[str, int]:
        """Number of chunks in each state."""
        counts = np.bincount(self._state.ravel(), minlength=3)
        return {"virtual": int(counts[VIRTUAL]), "inlined": int(counts[INLINED]), "missing": int(counts[MISSING])}

    @property
    def nbytes(self) -> int:
        """Memory this manifest really uses: arrays, url strings and inlined bytes."""
        arrays = sum(a.nbytes for a in (self._state, self._path_index, self._offsets, self._lengths))
        strings = sum(sys.getsizeof(u) for u in self._urls) + sys.getsizeof(self._urls)
        return arrays + strings + sys.getsizeof(self._inline)

    @property
    def stored_bytes(self) -> int:
        """Total encoded size of the chunks this manifest refers to or holds."""
        return int(self._lengths.sum(dtype=np.uint64))

    def entry(self, index: Sequence[int]) -> tuple[str, str, int, int] | tuple[str, bytes] | None:
        """One chunk: ``("virtual", url, offset, length)``, ``("inlined", data)`` or ``None``."""
        index = tuple(index)
        state = self._state[index]
        if state == VIRTUAL:
            return ("virtual", self._urls[self._path_index[index]], int(self._offsets[index]), int(self._lengths[index]))
        if state == INLINED:
            start = int(self._offsets[index])
            return ("inlined", self._inline[start : start + int(self._lengths[index])])
        return None

    def inlined_data(self, index: Sequence[int]) -> bytes:
        """The encoded bytes of an inlined chunk."""
        found = self.entry(index)
        if found is None or found[0] != "inlined":
            raise KeyError(f"chunk {chunk_key(index)} is not inlined")
        return found[1]

    def dict(self) -> dict[str, dict[str, Any]]:
        """Kerchunk-style dict: ``{"0.1": {"path", "offset", "length"} | {"data"}}``; missing chunks omitted."""
        present = np.nonzero(self._state.ravel())[0]
        indices = np.unravel_index(present, self.shape) if self.ndim else ()
        keys = [".".join(map(str, ix)) for ix in zip(*(i.tolist() for i in indices))] if self.ndim else ["0"] * len(present)
        states = self._state.ravel()[present].tolist()
        paths = self._path_index.ravel()[present].tolist()
        offsets = self._offsets.ravel()[present].tolist()
        lengths = self._lengths.ravel()[present].tolist()
        view = memoryview(self._inline)
        out: dict[str, dict[str, Any]] = {}
        for key, state, path, offset, length in zip(keys, states, paths, offsets, lengths):
            if state == VIRTUAL:
                out[key] = {"path": self._urls[path], "offset": offset, "length": length}
            else:
                out[key] = {"data": bytes(view[offset : offset + length])}
        return out

    def __len__(self) -> int:
        """Number of chunks that are not missing."""
        return int(np.count_nonzero(self._state))

    def __repr__(self) -> str:
        c = self.count()
        return (
            f"ChunkManifest<grid={self.shape}, virtual={c['virtual']}, inlined={c['inlined']}, "
            f"missing={c['missing']}, urls={len(self._urls)}>"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ChunkManifest):
            return NotImplemented
        if self.shape != other.shape or not np.array_equal(self._state, other._state):
            return False
        virtual = self._state == VIRTUAL
        if not (
            np.array_equal(self._offsets[virtual], other._offsets[virtual])
            and np.array_equal(self._lengths, other._lengths)
        ):
            return False
        if self._urls != other._urls or not np.array_equal(self._path_index[virtual], other._path_index[virtual]):
            if not np.array_equal(self.paths()[virtual], other.paths()[virtual]):
                return False
        return self._inlined_in_order() == other._inlined_in_order()

    __hash__ = None  # mutable-looking containers of numpy arrays are not hashable

    def __dask_tokenize__(self):
        from dask.base import tokenize

        return (
            "vzdask.ChunkManifest",
            tokenize(self._state, self._path_index, self._offsets, self._lengths),
            self._urls,
            tokenize(self._inlined_in_order()),
        )

    def __reduce__(self):
        return (
            ChunkManifest._from_parts,
            (self._state, self._path_index, self._offsets, self._lengths, self._urls, self._inline),
        )

    # -- transformations (all return new manifests) -----------------------

    def rename_paths(self, new: str | Callable[[str], str]) -> ChunkManifest:
        """Replace urls: one string for every virtual chunk, or a function applied to each distinct url."""
        if callable(new):
            renamed = [new(u) for u in self._urls]
            for old, url in zip(self._urls, renamed):
                if not isinstance(url, str):
                    raise ValueError(f"rename_paths function returned {url!r} for {old!r}, not a str")
        elif isinstance(new, str):
            renamed = [new] * len(self._urls)
        else:
            raise TypeError(f"rename_paths takes a str or a callable, not {type(new).__name__}")
        normalized = []
        for old, url in zip(self._urls, renamed):
            try:
                normalized.append(normalize_url(url))
            except ValueError as err:
                raise ValueError(f"rename_paths: {old!r} -> {err}") from None
        urls, path_index = _dedupe_urls(normalized, self._path_index)
        return ChunkManifest._from_parts(self._state, path_index, self._offsets, self._lengths, urls, self._inline)

    def with_inlined(self, chunks: Mapping[tuple[int, ...], bytes]) -> ChunkManifest:
        """A copy in which the given chunks hold these encoded bytes (inlined)."""
        state, offsets, lengths = self._state.copy(), self._offsets.copy(), self._lengths.copy()
        path_index = self._path_index.copy()
        parts = [self._inline]
        position = len(self._inline)
        for index, data in chunks.items():
            data = _as_bytes(data, chunk_key(index))
            state[index], offsets[index], lengths[index], path_index[index] = INLINED, position, len(data), -1
            parts.append(data)
            position += len(data)
        return ChunkManifest._from_parts(state, path_index, offsets, lengths, self._urls, b"".join(parts))._compacted()

    def map_grid(self, func: Callable[[np.ndarray], np.ndarray]) -> ChunkManifest:
        """Apply one numpy reshaping/indexing function to every per-chunk array.

        ``func`` must only move, drop or repeat entries (slice, transpose,
        expand_dims, broadcast_to, ...), never compute new values.
        """
        # np.asarray(order="C") rather than np.ascontiguousarray, which turns a 0-d grid into shape (1,)
        parts = [np.asarray(func(a), order="C") for a in (self._state, self._path_index, self._offsets, self._lengths)]
        return ChunkManifest._from_parts(*parts, self._urls, self._inline)._compacted()

    def __getitem__(self, key) -> ChunkManifest:
        """Index the chunk grid with numpy basic indexing."""
        return self.map_grid(lambda a: a[key])

    @staticmethod
    def concatenate(manifests: Sequence[ChunkManifest], axis: int = 0) -> ChunkManifest:
        """Join manifests along an existing axis of the chunk grid."""
        return ChunkManifest._join(manifests, axis, np.concatenate)

    @staticmethod
    def stack(manifests: Sequence[ChunkManifest], axis: int = 0) -> ChunkManifest:
        """Join equally shaped manifests along a new axis of the chunk grid (one step, not one expand per manifest)."""
        return ChunkManifest._join(manifests, axis, np.stack)

    @staticmethod
    def _join(manifests: Sequence[ChunkManifest], axis: int, join: Callable) -> ChunkManifest:
        if not manifests:
            raise ValueError("need at least one manifest to concatenate")
        urls, url_maps = _merge_url_tables([m._urls for m in manifests])
        inline_parts, shifts, position = [], [], 0
        for m in manifests:
            inline_parts.append(m._inline)
            shifts.append(position)
            position += len(m._inline)
        state = join([m._state for m in manifests], axis=axis)
        path_index = join(
            # remap gets a trailing -1 so that -1 (not virtual) maps to -1, even when a url table is empty
            [np.append(remap, -1).astype(np.int32)[m._path_index] for m, remap in zip(manifests, url_maps)],
            axis=axis,
        )
        offsets = join(
            [np.where(m._state == INLINED, m._offsets + np.uint64(shift), m._offsets) for m, shift in zip(manifests, shifts)],
            axis=axis,
        )
        lengths = join([m._lengths for m in manifests], axis=axis)
        return ChunkManifest._from_parts(state, path_index, offsets, lengths, urls, b"".join(inline_parts))

    # -- helpers ------------------------------------------------------------

    def _inlined_in_order(self) -> bytes:
        """All inlined chunks' bytes in C order of the grid, each prefixed by its length."""
        mask = self._state == INLINED
        if not mask.any():
            return b""
        view = memoryview(self._inline)
        starts = self._offsets[mask].tolist()
        sizes = self._lengths[mask].tolist()
        return np.asarray(sizes, np.uint64).tobytes() + b"".join(view[s : s + n] for s, n in zip(starts, sizes))

    def _compacted(self) -> ChunkManifest:
        """Drop unused urls and unused inlined bytes (after slicing away chunks)."""
        used_urls = np.unique(self._path_index[self._path_index >= 0])
        urls, path_index = self._urls, self._path_index
        if len(used_urls) < len(self._urls):
            remap = np.full(len(self._urls), -1, np.int32)
            remap[used_urls] = np.arange(len(used_urls), dtype=np.int32)
            path_index = np.where(self._path_index >= 0, remap[self._path_index], -1).astype(np.int32)
            urls = tuple(self._urls[i] for i in used_urls)
        inline, offsets = self._inline, self._offsets
        mask = self._state == INLINED
        used_inline = int(self._lengths[mask].sum())
        if used_inline * 2 < len(self._inline) or (not mask.any() and self._inline):
            view = memoryview(self._inline)
            starts = self._offsets[mask].tolist()
            sizes = self._lengths[mask].tolist()
            inline = b"".join(view[s : s + n] for s, n in zip(starts, sizes))
            offsets = self._offsets.copy()
            offsets[mask] = np.cumsum([0] + sizes[:-1], dtype=np.uint64) if sizes else []
        return ChunkManifest._from_parts(self._state, path_index, offsets, self._lengths, urls, inline)


class FileTable:
    """One file's byte ranges (``offsets``, ``lengths``, uint64), checked once for every array the file fills.

    Parsers of formats whose files are laid out alike (GRIB: one collection's
    files hold the same messages in the same order) build each file's
    manifests from its table with ``FileChunks.manifest``, without checking
    the url and ranges again per array.
    """

    __slots__ = ("urls", "offsets", "lengths")

    def __init__(self, url: str, offsets: np.ndarray, lengths: np.ndarray) -> None:
        offsets = np.asarray(offsets).astype(np.uint64, copy=False)
        lengths = np.asarray(lengths).astype(np.uint64, copy=False)
        if offsets.shape != lengths.shape or offsets.ndim != 1:
            raise ValueError(f"offsets {offsets.shape} and lengths {lengths.shape} must be one row per range")
        self.urls = (_normalized_url(url),)
        if offsets.size:
            bad = lengths == 0
            if int(offsets.max()) + int(lengths.max()) > MAX_BYTE_POSITION:
                bad |= (offsets > MAX_BYTE_POSITION) | (lengths > MAX_BYTE_POSITION - np.minimum(offsets, MAX_BYTE_POSITION))
            if bad.any():
                row = int(np.argmax(bad))
                raise ValueError(f"{url}: range {row} (offset {int(offsets[row])}, length {int(lengths[row])}) is "
                                 f"empty or reaches beyond {MAX_BYTE_POSITION} bytes")
        self.offsets, self.lengths = offsets, lengths


class FileChunks:
    """Which chunks of a grid a file fills (``present``), worked out once for all the files laid out alike.

    ``manifest(table, rows)`` is one file's manifest: its present chunks, in
    C order, are the ranges ``rows`` of its ``FileTable``; the rest are
    missing. The chunk states are shared (read-only) by every such manifest.
    """

    __slots__ = ("shape", "_flat", "_everywhere", "_state", "_path_index")

    def __init__(self, present: np.ndarray) -> None:
        present = np.asarray(present, dtype=bool)
        self.shape = present.shape
        self._flat = np.flatnonzero(present)
        self._everywhere = bool(present.all())
        self._state = _readonly(np.where(present, np.uint8(VIRTUAL), np.uint8(MISSING)))
        self._path_index = _readonly(np.where(present, np.int32(0), np.int32(-1)))

    def manifest(self, table: FileTable, rows: np.ndarray) -> ChunkManifest:
        if len(rows) != len(self._flat):
            raise ValueError(f"{len(rows)} ranges for {len(self._flat)} present chunks")
        if self._everywhere:
            offsets = table.offsets[rows].reshape(self.shape)
            lengths = table.lengths[rows].reshape(self.shape)
        else:
            offsets = np.zeros(self.shape, np.uint64)
            lengths = np.zeros(self.shape, np.uint64)
            offsets.reshape(-1)[self._flat] = table.offsets[rows]
            lengths.reshape(-1)[self._flat] = table.lengths[rows]
        return ChunkManifest._from_parts(self._state, self._path_index, offsets, lengths, table.urls, b"")


# -- module helpers ----------------------------------------------------------


def _readonly(arr: np.ndarray) -> np.ndarray:
    view = arr.view()
    view.flags.writeable = False
    return view


def _as_bytes(data: Any, key: str) -> bytes:
    if isinstance(data, str):
        raise ValueError(f"chunk {key!r}: inlined data must be bytes, not str (decode base64 first)")
    try:
        out = bytes(data)
    except TypeError:
        raise ValueError(f"chunk {key!r}: inlined data of type {type(data).__name__} is not bytes") from None
    if not out:
        raise ValueError(f"chunk {key!r}: zero-length inlined chunk")
    return out


def _factorize_paths(paths: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Codes (-1 for empty/None) and distinct urls in first-seen order, hash-based.

    Parsers emit a file's chunks next to each other, so paths come in long
    runs of one url: only the first path of each run is hashed (and, for
    string dtypes, converted to a Python object), which is 3-10x faster than
    factorizing every chunk. Without runs every path is hashed, as before.
    """
    flat = paths.ravel()
    if flat.size <= SMALL_GRID:
        small = _factorize_small(flat)
        if small is not None:
            return small[0].reshape(paths.shape), small[1]
    import pandas as pd

    heads = _run_starts(flat)
    values = flat if heads is None else flat[heads]
    if values.dtype.kind != "O":
        values = values.astype(object)
    codes, uniques = pd.factorize(values, use_na_sentinel=True)
    if heads is not None:
        codes = np.repeat(codes, np.diff(np.append(heads, flat.size)))
    uniques = list(uniques)
    if "" in uniques:
        empty = uniques.index("")
        codes = np.where(codes == empty, -1, np.where(codes > empty, codes - 1, codes))
        del uniques[empty]
    return codes.reshape(paths.shape), uniques


def _factorize_small(flat: np.ndarray) -> tuple[np.ndarray, list[str]] | None:
    """``_factorize_paths`` for a few paths, in plain Python (pandas costs ~50 us a call).

    Only for ``str``/``None`` paths; ``None`` (anything else: NaN, numbers...)
    means "use pandas", so its missing-value rules stay the only ones.
    """
    values = flat.tolist()
    distinct = dict.fromkeys(values)  # first-seen order
    if not all(type(p) is str or p is None for p in distinct):
        return None
    urls = [p for p in distinct if p]
    code = {p: i for i, p in enumerate(urls)}
    code[""] = code[None] = -1
    return np.array([code[p] for p in values], dtype=np.intp), urls


def _run_starts(flat: np.ndarray) -> np.ndarray | None:
    """Start of each run of equal paths, or ``None`` when runs are too short to pay off."""
    n = flat.size
    if n < 64:
        return None
    try:
        # A cheap look at 1024 neighbouring pairs first: skip the full pass when runs are short.
        probe = np.linspace(0, n - 2, num=min(n - 1, 1024)).astype(np.intp)
        if np.count_nonzero(np.asarray(flat[probe] != flat[probe + 1], dtype=bool)) * 4 > len(probe):
            return None
        change = np.asarray(flat[1:] != flat[:-1], dtype=bool)
    except (TypeError, ValueError):  # objects that do not compare elementwise: hash them all
        return None
    if change.shape != (n - 1,):
        return None
    return np.concatenate(([0], np.flatnonzero(change) + 1))


def _dedupe_urls(urls: list[str], codes: np.ndarray) -> tuple[tuple[str, ...], np.ndarray]:
    """Merge table entries that became equal (after normalisation or renaming)."""
    distinct = list(dict.fromkeys(urls))
    if len(distinct) == len(urls):
        return tuple(urls), codes
    position = {u: i for i, u in enumerate(distinct)}
    remap = np.array([position[u] for u in urls], dtype=np.int32)
    return tuple(distinct), np.where(codes >= 0, remap[codes], -1).astype(np.int32)


def _merge_url_tables(tables: Iterable[tuple[str, ...]]) -> tuple[tuple[str, ...], list[np.ndarray]]:
    position: dict[str, int] = {}
    maps = []
    for table in tables:
        maps.append(np.array([position.setdefault(u, len(position)) for u in table], dtype=np.int32))
    return tuple(position), maps


def _raise_first(bad: np.ndarray, values: np.ndarray, what: str) -> None:
    if bad.any():
        where = np.unravel_index(int(np.argmax(bad)), bad.shape)
        raise ValueError(f"chunk {chunk_key(where)}: {what} {values[where]}")


def _fill_inlined(inlined, shape, state, offsets, lengths) -> bytes:
    if isinstance(inlined, Mapping):
        items = [(tuple(int(i) for i in k), v) for k, v in inlined.items()]
    else:
        arr = np.asarray(inlined, dtype=object)
        if arr.shape != shape:
            raise ValueError(f"inlined has shape {arr.shape} but paths has shape {shape}")
        if not shape:
            items = [((), arr[()])] if arr[()] is not None else []
        else:
            items = [(tuple(int(i) for i in ix), arr[ix]) for ix in zip(*np.nonzero(np.not_equal(arr, None)))]
    parts, position = [], 0
    for index, data in items:
        key = chunk_key(index)
        if len(index) != len(shape) or any(not 0 <= i < s for i, s in zip(index, shape)):
            raise ValueError(f"chunk {key}: inlined chunk is outside the chunk grid of shape {shape}")
        if state[index] == VIRTUAL:
            raise ValueError(f"chunk {key}: has both a path and inlined data; a chunk is either virtual or inlined")
        data = _as_bytes(data, key)
        state[index], offsets[index], lengths[index] = INLINED, position, len(data)
        parts.append(data)
        position += len(data)
    return b"".join(parts)
