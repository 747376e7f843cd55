"""Reading objects: the one module that reads bytes (and sizes, and listings) through obstore.

Ranged reads, whole-object reads and size lookups all come here, so the
request strategy (a plain ``get_range`` for one range, several times cheaper
than ``get_ranges``; one coalesced ``get_ranges`` for several), the length
checks and the wording of errors are the same everywhere. Failures become

- ``FileNotFoundError`` when a whole object or its size is asked for and the
  object does not exist (what parsers and the CLI report as "cannot open");
- :class:`vzdask.errors.ChunkReadError` (an ``OSError``) for every other
  failure: obstore's exceptions, its Rust ``PanicException`` (a
  ``BaseException``, raised by ``get_ranges`` for a range that starts past
  the end of the object), and pieces shorter than asked for (the object was
  truncated or replaced).

Messages are one line naming the url, the byte range(s) and, where the
caller passes ``what=``, what was read (variable and chunk); obstore's own
error, often a multi-line debug dump, stays on ``__cause__``.

Stores are built and written elsewhere (``vzdask.registry``, the writers);
this module only reads.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import obstore
from obstore.store import LocalStore, MemoryStore

from vzdask.errors import ChunkReadError

# -- errors ------------------------------------------------------------------


def is_panic(err: BaseException) -> bool:
    """True for the ``PanicException`` obstore's Rust code raises.

    It is a ``BaseException``, so ``except Exception`` lets it through;
    pyo3 creates its class at run time, so it is recognised by name. The
    panic unwound inside one call, so catching it leaves nothing half done.
    """
    return type(err).__name__ == "PanicException"


def is_read_error(err: BaseException) -> bool:
    """An error a failed request raises: any ``Exception``, or obstore's panic (not KeyboardInterrupt etc.)."""
    return isinstance(err, Exception) or is_panic(err)


def first_line(err: BaseException) -> str:
    """The first line of an error's message (obstore appends multi-line debug output), or its type's name."""
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


_CONNECTION_SIGNS = ("error sending request", "connection refused", "dns error", "tcp connect", "timed out",
                     "connection reset", "failed to lookup address", "network is unreachable")
_CREDENTIAL_SIGNS = ("169.254.169.254", "credential", "invalidaccesskeyid", "signaturedoesnotmatch",
                     "accessdenied", "403 forbidden", "expiredtoken")


def likely_fix(err: BaseException, url: str) -> str:
    """What to try, from a failed request's message (``""`` when nothing is likely): appended to our errors."""
    text = str(err).lower()
    scheme = url.partition("://")[0].lower()
    if "builder error" in text and scheme == "http":
        return (" (obstore refuses plain http unless allowed: register a store made with "
                "client_options={'allow_http': True}, or let the registry create it)")
    if scheme in ("s3", "s3a") and any(sign in text for sign in _CREDENTIAL_SIGNS):
        return (" (no usable AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY or AWS_PROFILE; "
                "for a public bucket read anonymously with ObjectStoreRegistry(store_options={'skip_signature': "
                "True}), on the command line --anon)")
    if any(sign in text for sign in _CONNECTION_SIGNS):
        return (" (could not connect: no network, a wrong endpoint or host, or the server is down; retries and "
                "timeouts are set by dask config vzdask.remote.* or ObjectStoreRegistry(retry_config=, "
                "client_options=))")
    return ""


def _is_not_found(err: BaseException) -> bool:
    # obstore raises the builtin FileNotFoundError; older releases raised their own NotFoundError
    return isinstance(err, FileNotFoundError) or type(err).__name__ == "NotFoundError"


def _what(what) -> str | None:
    return what() if callable(what) else what


def _ranges_text(starts: Sequence[int], lengths: Sequence[int], limit: int = 3) -> str:
    shown = ", ".join(f"{int(s)}..{int(s) + int(n)}" for s, n in zip(starts[:limit], lengths[:limit]))
    more = f" and {len(starts) - limit} more" if len(starts) > limit else ""
    return f"bytes {shown}{more}"


def _request_error(err: BaseException, url: str, what, starts, lengths) -> ChunkReadError:
    """A failed range request: ``reading [<what> from ]<url> (bytes a..b, ...): <obstore's first line>``."""
    what = _what(what)
    where = f"{what} from {url}" if what else url
    return ChunkReadError(f"reading {where} ({_ranges_text(starts, lengths)}): {first_line(err)}"
                          f"{likely_fix(err, url)}")


def _short_read(url: str, what, start: int, length: int, got: int) -> ChunkReadError:
    """A piece shorter than asked for: the object ends (now) before the range does."""
    what = _what(what)
    where = f"{what} from {url} (bytes {start}..{start + length})" if what else url
    return ChunkReadError(
        f"reading {where}: short read at byte {start}: got {got} of {length} bytes "
        "(is the file truncated, or was it replaced while being read?)"
    )


def _object_error(err: BaseException, url: str) -> OSError:
    """A failed whole-object request: FileNotFoundError if the object is missing, else ChunkReadError."""
    if _is_not_found(err):
        return FileNotFoundError(f"cannot open {url}: not found")
    return ChunkReadError(f"reading {url}: {first_line(err)}{likely_fix(err, url)}")


def _check(pieces: list, starts: Sequence[int], lengths: Sequence[int], url: str, what) -> list:
    for piece, start, length in zip(pieces, starts, lengths):
        if len(piece) != length:
            raise _short_read(url, what, int(start), int(length), len(piece))
    return pieces


# -- ranged reads ------------------------------------------------------------


def read_ranges(
    store: Any,
    path: str,
    starts: Sequence[int],
    lengths: Sequence[int],
    *,
    url: str,
    what: str | Callable[[], str] | None = None,
    coalesce: int | None = None,
) -> list:
    """The bytes ``[start, start + length)`` of one object for each start and length, in one request.

    Parameters
    ----------
    store, path
        The object, as ``ObjectStoreRegistry.resolve(url)`` gives it.
    starts, lengths : sequence of int
        Plain ints (``ndarray.tolist()``): obstore converts numpy scalars slowly.
    url : str
        Named in errors.
    what : str or callable, optional
        What the ranges are, named in errors (``"chunk 1.0 of 'tas'"``). A
        callable is called only when a read fails, so callers on the hot
        path do not build the text for every read.
    coalesce : int, optional
        ``get_ranges``' merge gap: ranges closer than this are fetched as
        one (obstore's default, 1 MiB, when None); 0 fetches them as given.

    Returns
    -------
    list
        One buffer (obstore ``Bytes``, not copied) per range, each exactly
        ``length`` bytes.

    Raises
    ------
    ChunkReadError
        The request failed, or a piece came back short.
    """
    if not len(starts):
        return []
    try:
        if len(starts) == 1:
            pieces = [obstore.get_range(store, path, start=starts[0], length=lengths[0])]
        elif coalesce is None:
            pieces = obstore.get_ranges(store, path, starts=starts, lengths=lengths)
        else:
            pieces = obstore.get_ranges(store, path, starts=starts, lengths=lengths, coalesce=coalesce)
    except BaseException as err:
        if not is_read_error(err):
            raise
        raise _request_error(err, url, what, starts, lengths) from err
    return _check(pieces, starts, lengths, url, what)


async def read_ranges_async(
    store: Any,
    path: str,
    starts: Sequence[int],
    lengths: Sequence[int],
    *,
    url: str,
    what: str | Callable[[], str] | None = None,
    coalesce: int | None = None,
) -> list:
    """``read_ranges`` as a coroutine, for reading several objects concurrently (``asyncio.gather``)."""
    if not len(starts):
        return []
    try:
        if len(starts) == 1:
            pieces = [await obstore.get_range_async(store, path, start=starts[0], length=lengths[0])]
        elif coalesce is None:
            pieces = await obstore.get_ranges_async(store, path, starts=starts, lengths=lengths)
        else:
            pieces = await obstore.get_ranges_async(store, path, starts=starts, lengths=lengths, coalesce=coalesce)
    except BaseException as err:
        if not is_read_error(err):
            raise
        raise _request_error(err, url, what, starts, lengths) from err
    return _check(pieces, starts, lengths, url, what)


def get_range(store: Any, path: str, start: int, length: int, *, url: str,
              what: str | Callable[[], str] | None = None):
    """The bytes ``[start, start + length)`` of one object (``read_ranges`` with one range)."""
    return read_ranges(store, path, [start], [length], url=url, what=what)[0]


def read_start(store: Any, path: str, length: int, *, url: str) -> tuple[Any, int]:
    """``(first bytes, size)``: the first ``length`` bytes of an object (all of it if shorter) and its size.

    One ranged ``get`` answers both, so opening a file to parse costs one
    request. Stores refuse any range of an empty object; then a ``head``
    tells an empty object (``(b"", 0)``) from a missing one.

    Raises
    ------
    FileNotFoundError
        The object does not exist.
    ChunkReadError
        Any other failure, or fewer bytes than the size promises.
    """
    return _read_sized(store, path, (0, length), length, lambda size: 0, url=url)


def read_head(store: Any, path: str, length: int, *, url: str) -> tuple[Any, int | None]:
    """``(first bytes, size or None)``: the first ``length`` bytes of an object in one plain ``get_range``.

    Stores clip a range that runs past the end, so an object shorter than
    ``length`` comes back whole and its size is known (a full ``length``
    leaves it unknown: None). Locally this is one hand-off to obstore's I/O
    thread where ``read_start``'s ``get`` is two (the request, then its body):
    what a parser of small documents waits on most when the cores are busy.
    An empty object is refused any range; a ``head`` then tells it
    (``(b"", 0)``) from a missing one. Raises as ``read_start``.
    """
    try:
        data = obstore.get_range(store, path, start=0, length=length)
    except BaseException as err:
        if not is_read_error(err):
            raise
        if _is_not_found(err):
            raise _object_error(err, url) from err
        if head_size(store, path, url=url):
            raise _request_error(err, url, None, [0], [length]) from err
        return b"", 0
    return data, (len(data) if len(data) < length else None)


def read_end(store: Any, path: str, length: int, *, url: str) -> tuple[Any, int]:
    """``(last bytes, size)``: the last ``length`` bytes of an object (all of it if shorter) and its size.

    One suffix-ranged ``get`` answers both, so a format whose directory is
    at the end (a zip's central directory) costs one request to open.
    Raises as ``read_start``.
    """
    return _read_sized(store, path, {"suffix": length}, length, lambda size: max(0, size - length), url=url)


def _read_sized(store: Any, path: str, byte_range: Any, length: int, start_of: Callable[[int], int], *,
                url: str) -> tuple[Any, int]:
    """One ranged ``get`` of up to ``length`` bytes and the object's size; ``start_of(size)``: where they begin."""
    try:
        got = obstore.get(store, path, options={"range": byte_range})
        data = got.bytes()
        size = int(got.meta["size"])
    except BaseException as err:
        if not is_read_error(err):
            raise
        size = head_size(store, path, url=url)
        if size:
            raise _request_error(err, url, None, [start_of(size)], [min(length, size)]) from err
        return b"", 0
    if len(data) != min(length, size):
        raise _short_read(url, None, start_of(size), min(length, size), len(data))
    return data, size


# -- whole objects and sizes -------------------------------------------------


def get(store: Any, path: str, *, url: str) -> bytes:
    """A whole object's bytes (reference files, metadata documents).

    Raises
    ------
    FileNotFoundError
        The object does not exist.
    ChunkReadError
        Any other failure.
    """
    try:
        return obstore.get(store, path).bytes().to_bytes()
    except BaseException as err:
        if not is_read_error(err):
            raise
        raise _object_error(err, url) from err


async def get_async(store: Any, path: str, *, url: str) -> bytes:
    """``get`` as a coroutine."""
    try:
        result = await obstore.get_async(store, path)
        return (await result.bytes_async()).to_bytes()
    except BaseException as err:
        if not is_read_error(err):
            raise
        raise _object_error(err, url) from err


def head_size(store: Any, path: str, *, url: str) -> int:
    """An object's size in bytes, from a ``head`` request (FileNotFoundError if it does not exist)."""
    try:
        return int(obstore.head(store, path)["size"])
    except BaseException as err:
        if not is_read_error(err):
            raise
        raise _object_error(err, url) from err


async def head_size_async(store: Any, path: str, *, url: str) -> int:
    """``head_size`` as a coroutine."""
    try:
        return int((await obstore.head_async(store, path))["size"])
    except BaseException as err:
        if not is_read_error(err):
            raise
        raise _object_error(err, url) from err


# -- listings ----------------------------------------------------------------


async def list_prefixes_async(store: Any, prefix: str | None, *, url: str) -> list[str]:
    """The "directories" directly under ``prefix`` (a delimited listing's common prefixes)."""
    try:
        return list((await obstore.list_with_delimiter_async(store, prefix))["common_prefixes"])
    except BaseException as err:
        if not is_read_error(err):
            raise
        raise ChunkReadError(f"listing {url}: {first_line(err)}{likely_fix(err, url)}") from err


async def list_sizes_async(store: Any, prefix: str | None, *, url: str) -> list[tuple[str, int]]:
    """``(path, size)`` of every object under ``prefix``, at any depth (pages of 1000)."""
    out = []
    try:
        async for page in obstore.list(store, prefix, chunk_size=1000):
            out.extend((meta["path"], int(meta["size"])) for meta in page)
    except BaseException as err:
        if not is_read_error(err):
            raise
        raise ChunkReadError(f"listing {url}: {first_line(err)}{likely_fix(err, url)}") from err
    return out


# -- stores and event loops --------------------------------------------------


def is_in_process(store: Any) -> bool:
    """True for stores answered inside this process (local disk, memory).

    A request there costs tens of microseconds and waits on nothing, so
    callers read such objects one after another, without an event loop or
    threads: both cost more than the reads.
    """
    return isinstance(store, (LocalStore, MemoryStore))


def run_sync(coroutine):
    """Run one of vzdask's own coroutines (gathered obstore requests) to completion; return its result.

    From ordinary code this is ``asyncio.run``. Called inside a running
    event loop (Jupyter, an async caller, a zarr store method) it runs the
    coroutine on a fresh loop in a helper thread rather than failing.

    Use it for coroutines that await only obstore (this module's ``*_async``
    functions). Code awaiting zarr or Icechunk objects (stores, codec
    pipelines) uses ``zarr.core.sync.sync`` instead: that runs them on
    zarr's long-lived loop thread, where zarr expects them to run, and,
    called once per chunk as the codecs are, does not start a loop each time.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    with ThreadPoolExecutor(1) as pool:  # inside an event loop: asyncio.run needs a thread without one
        return pool.submit(asyncio.run, coroutine).result()


__all__ = [
    "first_line",
    "get",
    "get_async",
    "get_range",
    "head_size",
    "head_size_async",
    "is_in_process",
    "is_panic",
    "is_read_error",
    "list_prefixes_async",
    "list_sizes_async",
    "read_ranges",
    "read_end",
    "read_ranges_async",
    "read_head",
    "read_start",
    "run_sync",
]
