"""What every parser shares: reading bytes through obstore and finishing a store."""

from __future__ import annotations

import io

import obstore

from vzdask.manifests.group import ManifestGroup
from vzdask.manifests.store import ManifestStore
from vzdask.policy import InlinePolicy
from vzdask.registry import ObjectStoreRegistry


class ParseError(ValueError):
    """A file that cannot be virtualized; the message names the file and the problem."""


class Parser:
    """Base of the parsers: configured in the constructor, then ``parser(url, registry) -> ManifestStore``.

    Parameters
    ----------
    inline : InlinePolicy, optional
        Which chunks to copy into the manifest while parsing (what the format
        itself stores inline is always inlined).
    group : str, optional
        Parse only this group.
    """

    def __init__(self, *, inline: InlinePolicy | None = None, group: str | None = None) -> None:
        self.inline = inline
        self.group = group

    def __repr__(self) -> str:
        return f"{type(self).__name__}(inline={self.inline!r}, group={self.group!r})"

    def __call__(self, url: str, registry: ObjectStoreRegistry) -> ManifestStore:
        raise NotImplementedError


class ObstoreFile(io.RawIOBase):
    """A read-only, seekable file object over one object, read through obstore in blocks.

    h5py and our header parsers read metadata through it, so ``s3://`` and
    ``http(s)://`` files need no local copy. Blocks are cached: metadata reads
    are small and scattered.
    """

    def __init__(self, url: str, registry: ObjectStoreRegistry, block_size: int = 2**16) -> None:
        super().__init__()
        self.url = url
        self._store, self._path = registry.resolve(url)
        try:
            self.size = int(obstore.head(self._store, self._path)["size"])
        except Exception as err:
            raise FileNotFoundError(f"cannot open {url}: {str(err).splitlines()[0]}") from err
        self._position = 0
        self._block_size = block_size
        self._blocks: dict[int, bytes] = {}

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self.size}[whence]
        self._position = max(0, base + offset)
        return self._position

    def read_range(self, start: int, length: int) -> bytes:
        """Bytes ``[start, start + length)``, clipped at the end of the object."""
        stop = min(start + length, self.size)
        if stop <= start:
            return b""
        first, last = start // self._block_size, (stop - 1) // self._block_size
        missing = [b for b in range(first, last + 1) if b not in self._blocks]
        if missing:
            starts = [b * self._block_size for b in missing]
            lengths = [min(self._block_size, self.size - s) for s in starts]
            got = obstore.get_ranges(self._store, self._path, starts=starts, lengths=lengths)
            for b, data in zip(missing, got):
                self._blocks[b] = bytes(data)
        data = b"".join(self._blocks[b] for b in range(first, last + 1))
        offset = start - first * self._block_size
        return data[offset : offset + (stop - start)]

    def readinto(self, buffer) -> int:
        data = self.read_range(self._position, len(buffer))
        buffer[: len(data)] = data
        self._position += len(data)
        return len(data)


def finish(
    group: ManifestGroup, registry: ObjectStoreRegistry, inline: InlinePolicy | None
) -> ManifestStore:
    """Apply the inline policy and wrap the group in a ManifestStore."""
    if inline is not None:
        from vzdask.xarray import coordinate_names

        group = inline.apply(group, registry, coordinate_names(group))
    return ManifestStore(group, registry=registry)
