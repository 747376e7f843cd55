"""Read ahead: open the next files of a serial walk in the background while the current one parses.

Parsing a netCDF4 file waits on a few small reads (its first block, then the
blocks holding its chunk indexes). obstore releases the GIL while it reads,
so a background thread can fetch the next file's blocks while this thread
parses: the parser then finds them cached and waits on none. Which blocks
to fetch is guessed from the last file parsed, since the files of a
collection are laid out alike; a wrong guess only costs the bytes.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import dask

from vzdask.parsers.common import ObstoreFile
from vzdask.registry import ObjectStoreRegistry

dask.config.update_defaults({"vzdask": {"read-ahead": "auto"}})

#: The most blocks guessed for one file (64 KiB each): a guess is a few blocks of metadata.
MAX_GUESSED_BLOCKS = 32


def read_ahead_depth(urls: Sequence[str], registry: ObjectStoreRegistry) -> int:
    """How many files ahead a serial walk opens: dask config ``vzdask.read-ahead``, a number or ``"auto"``.

    ``"auto"`` (the default) reads one file ahead from remote stores and none
    from local files and memory: there a request costs tens of microseconds,
    less than handing the GIL to and from a second thread.
    """
    value = dask.config.get("vzdask.read-ahead", "auto")
    if value != "auto":
        return max(0, int(value))
    if not urls:
        return 0
    from obstore.store import LocalStore, MemoryStore

    try:
        store, _ = registry.resolve(urls[0])
    except Exception:  # the parser reports an unresolvable url
        return 0
    return 0 if isinstance(store, (LocalStore, MemoryStore)) else 1


def read_ahead(urls: Sequence[str], registry: ObjectStoreRegistry, depth: int | None = None
               ) -> Iterator[tuple[str, ObstoreFile | None]]:
    """``(url, opened)`` for each url in order; ``opened`` is that file already open, or None.

    ``opened`` has its first block and the blocks the previous file needed
    fetched. It is None when reading ahead is off, or opening failed: the
    parser then opens the file itself and reports any error in its place.
    Reading ahead stops after a failed open (not a plain file: a Zarr
    prefix, say) or a file its parser did not go on from (one that opens
    files its own way: netCDF3, kerchunk), so such collections pay no extra
    requests beyond the first files.
    """
    depth = read_ahead_depth(urls, registry) if depth is None else depth
    if depth <= 0:
        yield from ((url, None) for url in urls)
        return
    guess: tuple[int, ...] = ()
    pending: deque = deque()  # futures for urls[submitted - len(pending) : submitted], in order
    submitted, reading = 0, True
    with ThreadPoolExecutor(max_workers=depth, thread_name_prefix="vzdask-read-ahead") as pool:
        try:
            for url in urls:
                while reading and submitted < len(urls) and len(pending) <= depth:
                    pending.append(pool.submit(_open_quietly, urls[submitted], registry, guess))
                    submitted += 1
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
        return ObstoreFile(url, registry, prefetch=guess)
    except Exception:  # the parser opens it again and raises its error where it belongs
        return None
