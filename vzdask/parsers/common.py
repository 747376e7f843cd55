"""What every parser shares: a file object over an object store, and finishing a store."""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence
from typing import Any

from vzdask.errors import ParseError
from vzdask.manifests.group import ManifestGroup, coordinate_names
from vzdask.manifests.manifest import normalize_url
from vzdask.manifests.store import ManifestStore
from vzdask.object_io import head_size, read_head, read_ranges, read_start
from vzdask.policy import InlinePolicy
from vzdask.registry import ObjectStoreRegistry


class Parser:
    """Base of the parsers: configured in the constructor, then ``parser(url, registry) -> ManifestStore``.

    ``open_virtual_dataset`` takes any callable ``(url, registry) -> ManifestStore``
    as its parser; subclasses of this class also take part in format
    detection (``guess_can_open``) and can go on from a file already open
    (``continue_from``).

    Parameters
    ----------
    inline : InlinePolicy, optional
        Which chunks to copy into the manifest while parsing (what the format
        itself stores inline is always inlined).
    group : str, optional
        Parse only this group.
    drop_variables : iterable of str, optional
        Variables of that group not to parse at all, so one the format cannot
        virtualize (an unsupported filter, say) does not stop the others.
        Parsers that read every variable's metadata anyway (netCDF3, Zarr)
        leave dropping to ``open_virtual_dataset``.
    """

    #: The file ``continue_from`` handed over, until a parse takes it.
    _opened: ObstoreFile | None = None

    def __init__(
        self,
        *,
        inline: InlinePolicy | None = None,
        group: str | None = None,
        drop_variables: Iterable[str] | None = None,
    ) -> None:
        self.inline = inline
        self.group = group
        self.drop_variables = frozenset(drop_variables or ())

    def __repr__(self) -> str:
        return f"{type(self).__name__}(inline={self.inline!r}, group={self.group!r})"

    @classmethod
    def guess_can_open(cls, head: bytes, url: str) -> bool:
        """True if ``url`` looks like this parser's format, judged from ``head`` and ``url`` alone (no request).

        ``head`` is the first bytes of the object at ``url`` (up to
        ``vzdask.parsers.HEAD_BYTES``), empty when there is no object there
        (a directory or prefix). ``detect_parser`` asks the
        parsers in turn; a False here is not final for formats that are
        directories (Zarr, kerchunk Parquet): detection probes their layout
        when no parser claimed the url.
        """
        return False

    def continue_from(self, opened: ObstoreFile) -> Parser:
        """Let the next parse of ``opened.url`` go on from this open file (its first blocks read) instead of opening it again.

        ``detect_parser`` and ``vzdask.parsers.read_ahead`` open a file
        before its parser runs; handing it over saves the parser the same
        request again. It is used once, by the next call for the same url
        and registry (``opened.taken`` then tells so), and is not pickled.
        Parsers that read their files another way (netCDF3, Zarr, kerchunk)
        leave it unused. Returns the parser.
        """
        self._opened = opened
        return self

    def __call__(self, url: str, registry: ObjectStoreRegistry) -> ManifestStore:
        raise NotImplementedError

    def parse_keeping_reads(self, url: str, registry: ObjectStoreRegistry) -> tuple[ManifestStore, Any]:
        """``(self(url, registry), read)``: ``read(url, offset, length)`` gives bytes the parse already read, or None.

        Loading a file's coordinates right after parsing it takes their bytes
        from there when they lie in blocks the parser fetched (netCDF4 files
        keep small variables near the header): one request less per file.
        Parsers that keep nothing return ``None`` for ``read``.
        """
        return self(url, registry), None

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.pop("_opened", None)  # an open file stays where it was opened
        return state

    def _open(self, url: str, registry: ObjectStoreRegistry, **options) -> ObstoreFile:
        """The file to parse: the one handed over by ``continue_from`` if it is this url's, else a new one."""
        opened, self._opened = self._opened, None
        if opened is not None and opened.url == url and opened.registry is registry:
            opened.taken = True
            return opened
        return ObstoreFile(url, registry, **options)


class ObstoreFile(io.RawIOBase):
    """A read-only, seekable file object over one object, read through obstore in cached blocks.

    h5py and our header parsers read metadata through it, so ``s3://`` and
    ``http(s)://`` files need no local copy. Metadata reads are small and
    scattered (h5py makes ~30 per netCDF4 file), and every request costs far
    more than its bytes, so reads are served from blocks of ``block_size``
    bytes: opening fetches the first block and learns the object's size in
    the same request, and a read that misses fetches the missing blocks it
    spans in one request.
    """

    def __init__(self, url: str, registry: ObjectStoreRegistry, block_size: int = 2**16,
                 prefetch: Sequence[int] = (), small: bool = False) -> None:
        """``prefetch``: block numbers to fetch now too, a guess (blocks past the end are skipped).

        ``small``: the object is likely shorter than a block (a document):
        read the first block with a plain ranged read (``read_head``), which
        gives the size of a shorter object, and ask a larger one's with a
        ``head``.
        """
        super().__init__()
        self.url = url
        self.registry = registry
        self._store, self._path = registry.resolve(url)
        self._position = 0
        self._block_size = block_size
        self._blocks: dict[int, memoryview] = {}
        self.taken = False  # set when a parser goes on from this file (``Parser.continue_from``)
        if small:
            first, size = read_head(self._store, self._path, block_size, url=url)
            self.size = size if size is not None else head_size(self._store, self._path, url=url)
        else:
            first, self.size = read_start(self._store, self._path, block_size, url=url)
        if not self.size:
            return
        self._blocks[0] = memoryview(first)
        wanted = sorted({b for b in prefetch if 0 < b and b * block_size < self.size})
        if wanted:
            try:
                self._fetch(wanted)
            except OSError:  # only a guess: a block that is needed is fetched again, and its error raised then
                pass

    @property
    def block_size(self) -> int:
        """The bytes a block holds; the first block is read when the file is opened."""
        return self._block_size

    @property
    def fetched_blocks(self) -> list[int]:
        """The numbers of the blocks read so far (what ``prefetch`` takes for a file laid out alike)."""
        return sorted(self._blocks)

    def prefetch(self, offsets: Iterable[int]) -> None:
        """Fetch the blocks holding these byte offsets that are not cached yet, all in one request.

        For parsers whose next reads can be guessed (FITS headers spaced
        alike): a right guess saves a request, a wrong one costs its bytes
        only. Errors are ignored (a needed block is fetched again when read).
        """
        size = self._block_size
        wanted = sorted({o // size for o in offsets if 0 <= o < self.size} - set(self._blocks))
        if wanted:
            try:
                self._fetch(wanted)
            except OSError:
                pass

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:  # h5py seeks before every read
            self._position = offset if offset > 0 else 0
            return self._position
        base = {io.SEEK_CUR: self._position, io.SEEK_END: self.size}[whence]
        self._position = max(0, base + offset)
        return self._position

    def cached_range(self, url: str, start: int, length: int) -> bytes | None:
        """Bytes ``[start, start + length)`` of ``url`` if this file is that url and holds all their blocks, else None."""
        stop = start + length
        if url != self.url and url != normalize_url(self.url) or start < 0 or length <= 0 or stop > self.size:
            return None
        size = self._block_size
        if any(b not in self._blocks for b in range(start // size, (stop - 1) // size + 1)):
            return None
        return bytes(self._view(start, length))

    def read_range(self, start: int, length: int) -> bytes:
        """Bytes ``[start, start + length)``, clipped at the end of the object."""
        return bytes(self._view(start, length))

    def view(self, start: int, length: int) -> Any:
        """As ``read_range``, but a buffer not copied when the bytes lie in one block (a scan's whole file)."""
        return self._view(start, length)

    def readinto(self, buffer) -> int:
        start, n = self._position, len(buffer)
        b, offset = divmod(start, self._block_size)
        block = self._blocks.get(b)
        if block is not None and offset + n <= len(block):  # within one cached block: the usual case
            buffer[:] = block[offset : offset + n]
            self._position = start + n
            return n
        data = self._view(start, n)
        n = len(data)
        buffer[:n] = data
        self._position += n
        return n

    def _view(self, start: int, length: int):
        """The bytes ``[start, start + length)`` (clipped) as a buffer, fetching missing blocks."""
        stop = min(start + length, self.size)
        if stop <= start:
            return b""
        size = self._block_size
        first, last = start // size, (stop - 1) // size
        blocks = self._blocks
        if first == last and first in blocks:  # the common case: one cached block
            offset = first * size
            return blocks[first][start - offset : stop - offset]
        self._fetch([b for b in range(first, last + 1) if b not in blocks])
        if first == last:
            offset = first * size
            return blocks[first][start - offset : stop - offset]
        data = b"".join(blocks[b] for b in range(first, last + 1))
        offset = start - first * size
        return data[offset : offset + (stop - start)]

    def _fetch(self, missing: list[int]) -> None:
        """Fetch these blocks, each run of consecutive blocks as one range, all in one request."""
        if not missing:
            return
        size = self._block_size
        runs = [[missing[0], missing[0]]]
        for b in missing[1:]:
            if b == runs[-1][1] + 1:
                runs[-1][1] = b
            else:
                runs.append([b, b])
        starts = [a * size for a, _ in runs]
        lengths = [min((z + 1) * size, self.size) - a * size for a, z in runs]
        # the runs as they are (coalesce=0): merging blocks far apart would fetch the bytes between;
        # a run shorter than the size said (the object shrank since it was opened) is an error, and nothing is cached
        got = read_ranges(self._store, self._path, starts, lengths, url=self.url, coalesce=0)
        for (a, z), start, data in zip(runs, starts, got):
            view = memoryview(data)
            for b in range(a, z + 1):
                self._blocks[b] = view[b * size - start : (b + 1) * size - start]


def finish(
    group: ManifestGroup, registry: ObjectStoreRegistry, inline: InlinePolicy | None
) -> ManifestStore:
    """Apply the inline policy and wrap the group in a ManifestStore."""
    if inline is not None:
        group = inline.apply(group, registry, coordinate_names(group))
    return ManifestStore(group, registry=registry)


#: What a parser does with variables it cannot represent: raise one ParseError listing them, or leave them out
#: with one warning per file.
ON_UNSUPPORTED = ("raise", "warn")


def check_on_unsupported(value: str) -> str:
    if value not in ON_UNSUPPORTED:
        raise ValueError(f"on_unsupported must be one of {ON_UNSUPPORTED}, not {value!r}")
    return value


class IsolatingParser(Parser):
    """A parser that parses on past a variable it cannot represent: ``on_unsupported`` ("raise" or "warn")
    says what happens to such variables once the rest is parsed (``report_unsupported``)."""

    def __init__(self, *, inline: InlinePolicy | None = None, group: str | None = None,
                 drop_variables: Iterable[str] | None = None, on_unsupported: str = "raise") -> None:
        super().__init__(inline=inline, group=group, drop_variables=drop_variables)
        self.on_unsupported = check_on_unsupported(on_unsupported)


def report_unsupported(url: str, problems: list[tuple[str, str]], on_unsupported: str, group_path: str = "/") -> None:
    """Raise one ParseError listing every variable a parse could not represent, with its reason (or warn).

    ``problems``: ``(variable path, reason)`` in file order; ``group_path``
    is the group that was opened. The error ends with how to open the rest:
    the exact ``drop_variables`` list for the opened group's own variables,
    or ``on_unsupported="warn"``, which leaves them out with one warning.
    """
    if not problems:
        return
    lines = "\n".join(f"  {path!r}: {reason}" for path, reason in problems)
    if on_unsupported == "warn":
        import warnings

        from vzdask.errors import UnsupportedVariableWarning

        warnings.warn(f"{url}: left out {len(problems)} variable(s) that cannot be virtualized:\n{lines}",
                      UnsupportedVariableWarning, stacklevel=4)
        return
    parent = group_path.rstrip("/")
    droppable = [path.rsplit("/", 1)[-1] for path, _ in problems if path.rsplit("/", 1)[0] == parent]
    hint = f"drop_variables={droppable!r} or " if len(droppable) == len(problems) else ""
    raise ParseError(f"{url}: {len(problems)} variable(s) cannot be virtualized:\n{lines}\n"
                     f"Open the others with {hint}on_unsupported='warn'")
