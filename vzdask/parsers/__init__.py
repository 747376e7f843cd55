"""Parsers: ``parser(url, registry) -> ManifestStore``, configured in the constructor.

Every parser takes ``inline=InlinePolicy(...)`` and applies it while parsing.
``detect_parser`` picks one from a file's first bytes.
"""

from __future__ import annotations

from vzdask.parsers.common import ObstoreFile, ParseError, Parser
from vzdask.policy import InlinePolicy
from vzdask.registry import ObjectStoreRegistry

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
NETCDF3_SIGNATURES = (b"CDF\x01", b"CDF\x02", b"CDF\x05")


def detect_parser(
    url: str, registry: ObjectStoreRegistry, *, inline: InlinePolicy | None = None, group=None, drop_variables=None,
    opened: ObstoreFile | None = None,
):
    """Choose a parser from the first bytes of ``url``; error naming the url and what was found.

    ``opened``: ``url`` already open (read ahead); the parser goes on from it.
    """
    from vzdask.parsers.kerchunk import is_kerchunk_parquet
    from vzdask.parsers.zarr import ZarrParser, is_zarr_store

    # An object with an HDF5 or netCDF3 signature is neither a directory of Parquet references nor a
    # Zarr prefix: one small read settles it, before the zarr/Parquet probes (several requests each).
    try:
        if opened is not None and opened.url == url and opened.registry is registry:
            handle = opened
        else:
            handle = ObstoreFile(url, registry)  # its first block: the HDF5 parser goes on from it
        probe = handle.read_range(0, 8)
    except Exception:  # not a readable object (a prefix, or missing): the probes below decide and explain
        probe = b""
    if probe.startswith(HDF5_SIGNATURE):
        from vzdask.parsers.hdf5 import HDFParser

        parser = HDFParser(inline=inline, group=group, drop_variables=drop_variables)
        parser._probed = handle
        return parser
    if probe[:4] in NETCDF3_SIGNATURES:
        return _netcdf3_parser(url, inline)

    if is_kerchunk_parquet(url, registry):  # before zarr: its .zmetadata holds "record_size"
        from vzdask.parsers.kerchunk import KerchunkParquetParser

        return KerchunkParquetParser(inline=inline, group=group, drop_variables=drop_variables)
    if is_zarr_store(url, registry):  # a directory/prefix with zarr.json, .zgroup or .zarray
        return ZarrParser(inline=inline, group=group)
    head = ObstoreFile(url, registry).read_range(0, 8)
    if head.startswith(HDF5_SIGNATURE):
        from vzdask.parsers.hdf5 import HDFParser

        return HDFParser(inline=inline, group=group, drop_variables=drop_variables)
    if head[:4] in NETCDF3_SIGNATURES:
        return _netcdf3_parser(url, inline)
    if head.lstrip()[:1] in (b"{", b""):
        from vzdask.parsers.kerchunk import KerchunkJSONParser, looks_like_kerchunk_json

        if head and looks_like_kerchunk_json(ObstoreFile(url, registry).read_range(0, 4096)):
            return KerchunkJSONParser(inline=inline, group=group, drop_variables=drop_variables)
    shown = head[:8]
    raise ParseError(
        f"{url}: unrecognised file format (first bytes {shown!r}); expected HDF5/netCDF4, netCDF3, Zarr or kerchunk references"
        if head
        else f"{url}: empty file; nothing to virtualize"
    )


def _netcdf3_parser(url: str, inline: InlinePolicy | None):
    try:
        from vzdask.parsers.netcdf3 import NetCDF3Parser
    except ImportError as err:  # pragma: no cover - parser not built yet
        raise ParseError(f"{url}: netCDF3 file, but the netCDF3 parser is not available ({err})") from err
    return NetCDF3Parser(inline=inline)


__all__ = ["InlinePolicy", "ObstoreFile", "ParseError", "Parser", "detect_parser"]
