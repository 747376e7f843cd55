"""ZippedZarrParser: a Zarr v2/v3 store zipped with stored (uncompressed) members, as zarr's ``ZipStore`` writes it.

Every chunk member becomes a virtual reference ``(zip url, offset of the
member's data, member size)``: the zip itself is never unpacked. Metadata is
interpreted exactly as ``ZarrParser`` does (``ZarrTreeReader``), from the
members' bytes.

Requests, whatever the number of members:

1. **The end of the file**, one suffix-ranged request (``TAIL_BYTES``): the
   end-of-central-directory record (EOCD, with zip64 locator and record) and,
   for stores of up to a few hundred members, the whole central directory.
   A larger central directory (or a zip64 record outside the tail) costs one
   more request for exactly the missing bytes.
2. **The metadata members**, all in one ``get_ranges`` call, each read with
   its local header.

A member's data starts at ``local header offset + 30 + name length + extra
length``, and the name and extra lengths that count are the *local*
header's, which may differ from the central directory's (zip64 extras are
written differently in the two). Reading every chunk member's local header
would be one range per member. Instead, the lengths are deduced from the
layout the zip format prescribes: members lie one after another, each a local
header, its data and (flag bit 3 only) a data descriptor, and the central
directory follows the last one. So a member's local header is as long as the
distance to the next member's header (or to the central directory) minus its
compressed size. The deduction is checked against the local headers that are
read anyway (every metadata member's, spread through the file as zarr writes
metadata before chunks) plus the first and last member's, and it is taken
only where it equals the length the member's central directory entry implies
(same name and extra lengths: what zipfile and zarr's ``ZipStore`` write).
Where it does not (padding after the member, zip64 extras only in the local
header) or cannot be made (a data descriptor of 12 to 24 bytes follows the
data), the member's 30-byte local header is read in that same call. So an
ordinary ``ZipStore`` zip costs two calls; a zip written with zip64 local
extras or data descriptors throughout has every local header read, still in
one ``get_ranges`` call (obstore merges nearby ranges; far apart ones are
fetched concurrently). If a checked header disagrees with the deduction
anyway, every member's local header is read, in one more call. A zip small
enough to lie within the first block ``detect_parser`` read costs no request
at all.

Zips with bytes prepended (self-extracting archives) are handled as Python's
``zipfile`` handles them: offsets are shifted by the distance between where
the central directory says it starts and where it is. Bytes appended after
the end record are accepted too.

Compressed members (deflate, bzip2, lzma, ...) cannot be referenced as byte
ranges: one that the store uses (a chunk or a metadata document) raises a
``ParseError`` naming it. Encrypted members and multi-disk archives are
refused likewise.
"""

from __future__ import annotations

import bisect
import struct
from dataclasses import dataclass

from vzdask.manifests.manifest import ChunkManifest
from vzdask.manifests.store import ManifestStore
from vzdask.object_io import read_end, read_ranges, run_sync
from vzdask.parsers.common import ObstoreFile, Parser, ParseError, finish
from vzdask.parsers.zarr import V2_ARRAY, V2_ATTRS, V2_CONSOLIDATED, V2_GROUP, V3_DOC, ZarrTreeReader
from vzdask.policy import InlinePolicy
from vzdask.registry import ObjectStoreRegistry

#: How many bytes the first request reads from the end of the zip: the EOCD (22 bytes plus a comment of up to
#: 65535) and, for most stores, the whole central directory (46 bytes plus the name per member).
TAIL_BYTES = 2**17

LOCAL_SIGNATURE = b"PK\x03\x04"
CENTRAL_SIGNATURE = b"PK\x01\x02"
EOCD_SIGNATURE = b"PK\x05\x06"
ZIP64_LOCATOR_SIGNATURE = b"PK\x06\x07"
ZIP64_EOCD_SIGNATURE = b"PK\x06\x06"
METADATA_NAMES = frozenset({V3_DOC, V2_ARRAY, V2_GROUP, V2_ATTRS, V2_CONSOLIDATED})
METHODS = {0: "stored", 1: "shrunk", 6: "imploded", 8: "deflated", 9: "deflate64", 12: "bzip2", 14: "lzma",
           93: "zstandard", 95: "xz", 98: "ppmd"}
_EOCD = struct.Struct("<4sHHHHIIH")  # signature, disk, cd disk, entries on disk, entries, cd size, cd offset, comment
_ZIP64_LOCATOR = struct.Struct("<4sIQI")  # signature, disk of the zip64 record, its offset, number of disks
_ZIP64_EOCD = struct.Struct("<4sQHHIIQQQQ")  # signature, size, versions, disk, cd disk, entries (2), cd size, offset
_CENTRAL = struct.Struct("<4sHHHHHHIIIHHHHHII")
_LOCAL = struct.Struct("<4sHHHHHIIIHH")
_DESCRIPTOR_BIT, _ENCRYPTED_BIT, _UTF8_BIT = 0x08, 0x01, 0x800


@dataclass
class Member:
    """One member of the zip, from its central directory entry; ``data_offset`` once the local header is known."""

    name: str
    method: int
    flags: int
    compressed_size: int
    header_offset: int
    name_length: int = 0  # the central directory's (the local header's is normally the same)
    extra_length: int = 0  # the central directory's (the local header's may differ: zip64 extras)
    data_offset: int = -1

    @property
    def stored(self) -> bool:
        return self.method == 0


class ZippedZarrParser(Parser):
    """Parse a zipped Zarr store (``.zarr.zip``, stored members) into a ManifestStore of byte ranges into the zip.

    Parameters
    ----------
    inline : InlinePolicy, optional
        Which chunks to copy into the manifest.
    group : str, optional
        Parse only this group of the store.
    consolidated : bool, optional
        As for ``ZarrParser``: use consolidated metadata when present
        (None), ignore it (False) or require it (True).
    """

    def __init__(
        self, *, inline: InlinePolicy | None = None, group: str | None = None, consolidated: bool | None = None
    ) -> None:
        super().__init__(inline=inline, group=group.strip("/") if group else None)
        self.consolidated = consolidated

    def __repr__(self) -> str:
        return f"ZippedZarrParser(inline={self.inline!r}, group={self.group!r}, consolidated={self.consolidated!r})"

    @classmethod
    def guess_can_open(cls, head: bytes, url: str) -> bool:
        """True for a zip whose first member is a Zarr metadata document, or any zip named ``*.zarr.zip``.

        zarr's ``ZipStore`` writes the root's metadata first, so the name in
        the first local header tells a zipped store from other zips.
        """
        if not head.startswith(LOCAL_SIGNATURE) or len(head) < _LOCAL.size:
            return False
        if url.rstrip("/").endswith(".zarr.zip"):
            return True
        name_length = _LOCAL.unpack_from(head)[9]
        name = head[_LOCAL.size : _LOCAL.size + name_length].decode("utf-8", "replace")
        return name.rsplit("/", 1)[-1] in METADATA_NAMES

    def __call__(self, url: str, registry: ObjectStoreRegistry) -> ManifestStore:
        url = url.rstrip("/")
        opened, self._opened = self._opened, None
        source = ZipReads(url, registry, opened if opened is not None and opened.registry is registry else None)
        members = read_directory(source)
        documents = _read_documents(source, members)
        reader = _ZipReader(url, registry, self.consolidated, members, documents)
        group = run_sync(reader.parse(self.group or ""))
        return finish(group, registry, self.inline)


# --------------------------------------------------------------------------- #
# the zip's structure
# --------------------------------------------------------------------------- #
class ZipReads:
    """The reads of one zip: through obstore, or from the blocks detection already read when they hold the bytes.

    ``detect_parser`` opens the file (its first 64 KiB) before the parser
    runs; a zip that small is then parsed without another request.
    """

    def __init__(self, url: str, registry: ObjectStoreRegistry, opened: ObstoreFile | None = None) -> None:
        self.url = url
        self.store, self.path = registry.resolve(url)
        self.opened = opened if opened is not None and opened.url == url and opened.size else None

    def end(self, length: int) -> tuple[bytes, int]:
        """``(last bytes, size)``: the last ``length`` bytes of the zip (all of it if shorter) and its size."""
        if self.opened is not None:
            size = self.opened.size
            start = max(0, size - length)
            cached = self.opened.cached_range(self.url, start, size - start)
            if cached is not None:
                return cached, size
        data, size = read_end(self.store, self.path, length, url=self.url)
        return bytes(data), size

    def ranges(self, starts: list[int], lengths: list[int], what: str) -> list[bytes]:
        """The bytes of each range, in one request (none if detection's blocks hold them all)."""
        if self.opened is not None:
            cached = [self.opened.cached_range(self.url, s, n) for s, n in zip(starts, lengths)]
            if all(c is not None for c in cached):
                return [c for c in cached if c is not None]
        return [bytes(b) for b in read_ranges(self.store, self.path, starts, lengths, url=self.url, what=what)]


def read_directory(source: ZipReads) -> dict[str, Member]:
    """The zip's members by name (the last of duplicate names, as ``zipfile`` reads them), data offsets unset.

    One request for the end of the file; one more only if the central
    directory (or the zip64 record) starts before the bytes it returned.
    """
    url = source.url
    tail, size = source.end(TAIL_BYTES)
    base = size - len(tail)  # file offset of tail[0]
    if size < _EOCD.size:
        raise ParseError(f"{url}: not a zip file ({size} bytes, too short for an end of central directory record)")
    eocd_at = _find_eocd(tail)
    if eocd_at is None:
        raise ParseError(f"{url}: not a zip file (no end of central directory record in its last {len(tail)} bytes)")
    _, disk, cd_disk, _, entries, cd_size, cd_offset, _ = _EOCD.unpack_from(tail, eocd_at)
    directory_end = base + eocd_at  # where the central directory ends (before the zip64 records, if any)
    locator_at = eocd_at - _ZIP64_LOCATOR.size
    if locator_at >= 0 and tail[locator_at : locator_at + 4] == ZIP64_LOCATOR_SIGNATURE:
        _, _, record_offset, disks = _ZIP64_LOCATOR.unpack_from(tail, locator_at)
        if disks > 1:
            raise ParseError(f"{url}: a multi-disk (split) zip archive ({disks} disks) is not supported")
        record_at = base + locator_at - _ZIP64_EOCD.size  # where the record lies when nothing is prepended
        record = _bytes_at(source, tail, base, record_at, _ZIP64_EOCD.size)
        if record[:4] != ZIP64_EOCD_SIGNATURE:
            raise ParseError(f"{url}: zip64 end of central directory record not found (locator says offset {record_offset})")
        _, _, _, _, disk, cd_disk, _, entries, cd_size, cd_offset = _ZIP64_EOCD.unpack_from(record)
        directory_end = record_at
    if disk or cd_disk:
        raise ParseError(f"{url}: a multi-disk (split) zip archive is not supported")
    directory_start = directory_end - cd_size
    if directory_start < 0:
        raise ParseError(f"{url}: damaged zip: its central directory ({cd_size} bytes) would start before the file")
    shift = directory_start - cd_offset  # bytes prepended to the archive (0 for an ordinary zip)
    directory = _bytes_at(source, tail, base, directory_start, cd_size)
    members = _parse_central_directory(url, directory, entries, shift)
    _check_overlaps(url, members, directory_start)
    members["\0directory_start"] = Member("", 0, 0, 0, directory_start)  # the end of the last member's bytes
    return members


def _find_eocd(tail: bytes) -> int | None:
    """Position of the EOCD record in ``tail``: the last signature whose comment runs to the end of the file.

    Failing that (bytes appended after the archive), the last signature
    whose record fits, as Python's ``zipfile`` accepts such zips too.
    """
    fitting = None
    at = len(tail)
    while True:
        at = tail.rfind(EOCD_SIGNATURE, 0, at)
        if at < 0:
            return fitting
        if at + _EOCD.size > len(tail):
            continue
        comment = _EOCD.unpack_from(tail, at)[7]
        if at + _EOCD.size + comment == len(tail):
            return at
        if fitting is None:
            fitting = at


def _bytes_at(source: ZipReads, tail: bytes, base: int, start: int, length: int) -> bytes:
    """Bytes ``[start, start + length)`` of the file: from the tail when it holds them, else one request."""
    if start >= base:
        return tail[start - base : start - base + length]
    if length <= 0:
        return b""
    missing = min(length, base - start)
    head = source.ranges([start], [missing], "the zip's central directory")[0]
    return head + tail[: length - missing]


def _parse_central_directory(url: str, directory: bytes, entries: int, shift: int) -> dict[str, Member]:
    members: dict[str, Member] = {}
    at = 0
    for _ in range(entries):
        if directory[at : at + 4] != CENTRAL_SIGNATURE:
            raise ParseError(f"{url}: damaged zip: central directory entry expected at byte {at} of the directory")
        fields = _CENTRAL.unpack_from(directory, at)
        flags, method, csize, usize = fields[3], fields[4], fields[8], fields[9]
        name_length, extra_length, comment_length, disk, header_offset = (
            fields[10], fields[11], fields[12], fields[13], fields[16])
        start = at + _CENTRAL.size
        raw_name = directory[start : start + name_length]
        name = raw_name.decode("utf-8" if flags & _UTF8_BIT else "cp437")
        extra = directory[start + name_length : start + name_length + extra_length]
        csize, header_offset = _zip64_values(extra, usize, csize, header_offset, disk)
        at = start + name_length + extra_length + comment_length
        if name.endswith("/"):
            continue  # a directory entry
        if flags & _ENCRYPTED_BIT:
            raise ParseError(f"{url}: member {name!r} is encrypted; encrypted zips are not supported")
        members[name] = Member(name, method, flags, csize, header_offset + shift, name_length, extra_length)
    return members


def _zip64_values(extra: bytes, usize: int, csize: int, offset: int, disk: int) -> tuple[int, int]:
    """``(compressed size, local header offset)``, taking the zip64 extra field's values where the entry says 0xFFFFFFFF."""
    at = 0
    while at + 4 <= len(extra):
        tag, length = struct.unpack_from("<HH", extra, at)
        if tag == 0x0001:
            values = list(struct.unpack_from(f"<{length // 8}Q", extra, at + 4))
            if usize == 0xFFFFFFFF and values:
                values.pop(0)
            if csize == 0xFFFFFFFF and values:
                csize = values.pop(0)
            if offset == 0xFFFFFFFF and values:
                offset = values.pop(0)
            break
        at += 4 + length
    return csize, offset


def _check_overlaps(url: str, members: dict[str, Member], directory_start: int) -> None:
    ordered = sorted(members.values(), key=lambda m: m.header_offset)
    for member in ordered:
        if member.header_offset < 0 or member.header_offset + _LOCAL.size + member.compressed_size > directory_start:
            raise ParseError(f"{url}: damaged zip: member {member.name!r} (local header at byte "
                             f"{member.header_offset}, {member.compressed_size} bytes) runs into the central directory")


def _deduced_header_lengths(members: list[Member], directory_start: int) -> dict[str, int]:
    """The local header length of members whose layout gives it: ``{name: length}``.

    The distance from a member's local header to the next one's (or to the
    central directory) minus its compressed size is its local header's
    length if nothing lies between the members. That is taken only where it
    equals the length the central directory's entry implies (same name and
    extra lengths, as zipfile writes them unless zip64 extras differ): a gap
    after a member makes the two disagree, so it is never taken for header.
    Members with a data descriptor (12 to 24 bytes, not known without
    reading) and every disagreement are left out: their local headers are read.
    """
    out = {}
    for member, following in zip(members, [*members[1:], None]):
        end = following.header_offset if following is not None else directory_start
        if member.flags & _DESCRIPTOR_BIT:
            continue
        length = end - member.header_offset - member.compressed_size
        if length == _LOCAL.size + member.name_length + member.extra_length:
            out[member.name] = length
    return out


def _local_header_length(url: str, member: Member, header: bytes) -> int:
    if len(header) < _LOCAL.size or header[:4] != LOCAL_SIGNATURE:
        raise ParseError(f"{url}: damaged zip: no local header for member {member.name!r} at byte {member.header_offset}")
    fields = _LOCAL.unpack_from(header)
    return _LOCAL.size + fields[9] + fields[10]


def _read_documents(source: ZipReads, members: dict[str, Member]) -> dict[str, bytes]:
    """Set every member's data offset and return the metadata documents' bytes (by member name).

    One ``get_ranges`` call reads the metadata members with their local
    headers and the local headers needed to check the layout (see the
    module's docstring); a second one reads every local header only if a
    check failed.
    """
    url = source.url
    directory_start = members.pop("\0directory_start").header_offset
    ordered = sorted(members.values(), key=lambda m: m.header_offset)
    deduced = _deduced_header_lengths(ordered, directory_start)
    documents = [m for m in ordered if m.name.rsplit("/", 1)[-1] in METADATA_NAMES]
    checked = {m.name: m for m in ordered if m.name not in deduced}
    if ordered:
        checked.setdefault(ordered[0].name, ordered[0])
        checked.setdefault(ordered[-1].name, ordered[-1])
    for member in documents:
        checked.pop(member.name, None)
    # a document is read with its local header: the deduced length (or the most a header can be) plus its data,
    # and no further than the next member
    slack = {m.name: deduced.get(m.name, _LOCAL.size + 2 * 0xFFFF) for m in documents}
    span_end = {m.name: n.header_offset for m, n in zip(ordered, ordered[1:])}
    starts = [m.header_offset for m in documents] + [m.header_offset for m in checked.values()]
    lengths = [min(slack[m.name] + m.compressed_size, span_end.get(m.name, directory_start) - m.header_offset)
               for m in documents]
    lengths += [_LOCAL.size] * len(checked)
    got = source.ranges(starts, lengths, "the zip's metadata members")
    consistent = True
    texts = {}
    document_names = {m.name for m in documents}
    for member, data in zip([*documents, *checked.values()], got):
        header_length = _local_header_length(url, member, data)
        member.data_offset = member.header_offset + header_length
        if member.name in deduced and deduced[member.name] != header_length:
            consistent = False
        if member.name in document_names:
            texts[member.name] = data[header_length : header_length + member.compressed_size]
    if not consistent:  # gaps between members: the layout says nothing; read every local header
        rest = [m for m in ordered if m.name not in texts and m.name not in checked]
        headers = source.ranges([m.header_offset for m in rest], [_LOCAL.size] * len(rest), "the zip's local headers")
        for member, header in zip(rest, headers):
            member.data_offset = member.header_offset + _local_header_length(url, member, bytes(header))
    else:
        for member in ordered:
            if member.data_offset < 0:
                member.data_offset = member.header_offset + deduced[member.name]
    for name, text in list(texts.items()):
        if len(text) < members[name].compressed_size:  # a longer local header than guessed: read the data alone
            member = members[name]
            texts[name] = source.ranges([member.data_offset], [member.compressed_size], f"zip member {name!r}")[0]
    return texts


def _compression_error(url: str, members: list[Member]) -> ParseError:
    names = ", ".join(f"{m.name!r} ({METHODS.get(m.method, f'method {m.method}')})" for m in members[:5])
    more = f" and {len(members) - 5} more" if len(members) > 5 else ""
    return ParseError(
        f"{url}: zip member {names}{more} is compressed; only stored (uncompressed) members can be referenced "
        "as byte ranges. Rewrite the zip with zipfile.ZIP_STORED (what zarr's ZipStore writes by default)."
    )


# --------------------------------------------------------------------------- #
# the Zarr hierarchy inside
# --------------------------------------------------------------------------- #
class _ZipReader(ZarrTreeReader):
    """``ZarrTreeReader`` over the zip's members: documents from memory, chunks as ranges into the zip."""

    def __init__(self, url: str, registry: ObjectStoreRegistry, consolidated: bool | None,
                 members: dict[str, Member], documents: dict[str, bytes]) -> None:
        super().__init__(url, None, "", registry, consolidated)
        self.members = members
        self.documents = documents
        self.names = sorted(members)

    def where(self, path: str) -> str:
        return f"{self.url} (member {path!r})" if path else self.url

    def under(self, prefix: str) -> list[str]:
        """Member names starting with ``prefix`` (all of them for ``""``)."""
        lo = bisect.bisect_left(self.names, prefix)
        hi = bisect.bisect_left(self.names, prefix + "\U0010ffff") if prefix else len(self.names)
        return self.names[lo:hi]

    async def read_document(self, path: str, name: str) -> bytes:
        key = f"{path}/{name}" if path else name
        member = self.members.get(key)
        if member is None:
            raise FileNotFoundError(f"{self.url}: no member {key!r}")
        if not member.stored:
            raise _compression_error(self.url, [member])
        return self.documents[key]

    async def list_children(self, path: str) -> list[str]:
        prefix = f"{path}/" if path else ""
        children = {name[len(prefix):].split("/", 1)[0] for name in self.under(prefix) if "/" in name[len(prefix):]}
        return [f"{prefix}{child}" for child in sorted(children)]

    async def chunk_manifest(self, node, described) -> ChunkManifest:
        prefix = f"{node.path}/" if node.path else ""
        names = [n for n in self.under(prefix) if n.rsplit("/", 1)[-1] not in METADATA_NAMES]
        compressed = [self.members[n] for n in names if not self.members[n].stored]
        if compressed:
            raise _compression_error(self.url, compressed)
        objects = [(n[len(prefix):], self.url, self.members[n].data_offset, self.members[n].compressed_size)
                   for n in names]
        return self.manifest_of(node, described, objects)


__all__ = ["TAIL_BYTES", "Member", "ZipReads", "ZippedZarrParser", "read_directory"]
