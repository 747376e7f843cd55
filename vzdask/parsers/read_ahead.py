"""Read ahead: open the files of a serial walk with the blocks they will need, the next ones in the background.

Parsing a netCDF4 file waits on a few small reads: its first block, then
the blocks holding its chunk indexes, one request each. The files of a
collection are laid out alike, so the blocks the last file needed are a
good guess for the next: fetched together with one more request, the
parser finds them cached (a wrong guess only costs the bytes).

From remote stores the next files are also opened in a background thread
while this one parses (obstore releases the GIL while it waits), so the
parser waits on no request at all. Locally a request costs tens of
microseconds, less than handing the GIL between two threads: files are
opened in turn.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import dask

from vzdask.object_io import is_in_process
from vzdask.parsers.common import ObstoreFile
from vzdask.parsers.dmrpp import DOCUMENT_BLOCK
from vzdask.registry import ObjectStoreRegistry

dask.config.update_defaults({"vzdask": {"read-ahead": "auto"}})

#: The most blocks guessed for one file (64 KiB each): a guess is a few blocks of metadata.
MAX_GUESSED_BLOCKS = 32


def read_ahead_depth(urls: Sequence[str], registry: ObjectStoreRegistry) -> int:
    """How many files ahead a background thread opens: dask config ``vzdask.read-ahead``, a number or ``"auto"``.

    ``"auto"`` (the default) is one from remote stores, none (files opened
    in turn) from local files and memory.
    """
    value = dask.config.get("vzdask.read-ahead", "auto")
    if value != "auto":
        return max(0, int(value))
    if not urls:
        return 0
    try:
        store, _ = registry.resolve(urls[0])
    except Exception:  # the parser reports an unresolvable url
        return 0
    return 0 if is_in_process(store) else 1


def read_ahead(urls: Sequence[str], registry: ObjectStoreRegistry, depth: int | None = None
               ) -> Iterator[tuple[str, ObstoreFile | None]]:
    """``(url, opened)`` for each url in order; ``opened`` is that file already open, or None.

    ``opened`` has its first block and the blocks the previous file needed
    fetched; ``depth`` files are opened ahead in a background thread
    (``read_ahead_depth`` when None). It is None when opening failed: the
    parser then opens the file itself and reports any error in its place.
    Opening stops after a failed open (not a plain file: a Zarr prefix, say)
    or a file its parser did not go on from (one that opens files its own
    way: netCDF3, kerchunk), so such collections pay no extra requests
    beyond the first files.
    """
    depth = read_ahead_depth(urls, registry) if depth is None else max(0, depth)
    guess: tuple[int, ...] = ()
    pending: deque = deque()  # futures for urls[submitted - len(pending) : submitted], in order
    submitted, reading = 0, True
    pool = ThreadPoolExecutor(max_workers=depth, thread_name_prefix="vzdask-read-ahead") if depth else None
    with pool or contextlib.nullcontext():
        try:
            for url in urls:
                while pool is not None and reading and submitted < len(urls) and len(pending) <= depth:
                    pending.append(pool.submit(_open_quietly, urls[submitted], registry, guess))
                    submitted += 1
                if pool is None:
                    opened = _open_quietly(url, registry, guess) if reading else None
                else:
                    opened = pending.popleft().result() if pending else None
                reading = reading and opened is not None  # after a failure the parsers open the rest
                yield url, opened
                if opened is not None:
                    reading = reading and opened.taken
                    guess = tuple(opened.fetched_blocks[:MAX_GUESSED_BLOCKS])
        finally:
            for future in pending:
                future.cancel()


def _open_quietly(url: str, registry: ObjectStoreRegistry, guess: tuple[int, ...]) -> ObstoreFile | None:
    try:
        if url.endswith(".dmrpp"):  # a document, opened as DMRPPParser opens it: whole, in one plain ranged read
            return ObstoreFile(url, registry, block_size=DOCUMENT_BLOCK, prefetch=guess, small=True)
        return ObstoreFile(url, registry, prefetch=guess)
    except Exception:  # the parser opens it again and raises its error where it belongs
        return None
