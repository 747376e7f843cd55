"""Parsers: ``parser(url, registry) -> ManifestStore``, configured in the constructor.

Every parser takes ``inline=InlinePolicy(...)`` and applies it while parsing.
``detect_parser`` picks one from a file's first bytes (``Parser.guess_can_open``).

Modules: ``common`` (``Parser``, ``ObstoreFile``), ``hdf5``, ``hdf4``, ``netcdf3``, ``dmrpp``, ``fits``,
``grib``, ``tiff`` (TIFF/GeoTIFF, with tifffile), ``zarr``, ``zipped_zarr``, ``icechunk``, ``kerchunk`` (a package:
JSON, Parquet, templates) and ``read_ahead`` (opening the files of a serial walk ahead). Optional
dependencies (h5py, tifffile, pyarrow, jinja2, astropy, eccodes, icechunk) are imported when a parser needs them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from vzdask.parsers.common import IsolatingParser, ObstoreFile, ParseError, Parser
from vzdask.parsers.dmrpp import DMRPPParser
from vzdask.parsers.fits import FITSParser
from vzdask.parsers.grib import GRIB_SIGNATURE, GRIBParser
from vzdask.parsers.hdf4 import HDF4_SIGNATURE, HDF4Parser
from vzdask.parsers.hdf5 import HDF5_SIGNATURE, HDFParser
from vzdask.parsers.icechunk import IcechunkParser, is_icechunk_source
from vzdask.parsers.kerchunk import KerchunkJSONParser, KerchunkParquetParser
from vzdask.parsers.netcdf3 import NETCDF3_SIGNATURES, NetCDF3Parser
from vzdask.parsers.tiff import TIFF_SIGNATURES, TIFFParser
from vzdask.parsers.zarr import ZarrParser
from vzdask.parsers.zipped_zarr import ZippedZarrParser
from vzdask.policy import InlinePolicy
from vzdask.registry import ObjectStoreRegistry

#: The parsers ``detect_parser`` asks, in this order: the first whose ``guess_can_open`` is true is chosen.
PARSERS: tuple[type[Parser], ...] = (HDFParser, NetCDF3Parser, DMRPPParser, FITSParser, KerchunkJSONParser,
                                     KerchunkParquetParser, ZarrParser, HDF4Parser, ZippedZarrParser, IcechunkParser,
                                     GRIBParser, TIFFParser)
#: How many first bytes of an object ``guess_can_open`` sees (all within the first block ``ObstoreFile`` reads).
HEAD_BYTES = 4096


def detect_parser(
    url: str | Any, registry: ObjectStoreRegistry, *, inline: InlinePolicy | None = None, group: str | None = None,
    drop_variables: Iterable[str] | None = None, opened: ObstoreFile | None = None, on_unsupported: str = "raise",
) -> Parser:
    """Choose a parser from the first bytes of ``url``; error naming the url and what was found.

    The object is opened once (one request: its first block and its size)
    and each parser of ``PARSERS`` is asked in turn whether its first bytes
    (or, for directories, its url) look like its format. When none does,
    the directory layouts are probed: a kerchunk Parquet reference directory
    (``.zmetadata`` with ``record_size``), then a Zarr store (``zarr.json``,
    ``.zgroup`` or ``.zarray``). The chosen parser goes on from the open
    file (``Parser.continue_from``) if it reads through one.

    ``url`` may also be an icechunk ``Repository``, ``Session`` or ``IcechunkStore``: an
    ``IcechunkParser`` of it (a repository's branch ``main``; call it with
    ``vzdask.parsers.icechunk.icechunk_source_url(obj)`` as the url).

    ``opened``: ``url`` already open (read ahead); used instead of opening it again.
    ``on_unsupported``: for ``HDFParser``, ``HDF4Parser``, ``DMRPPParser`` and ``FITSParser`` (see there);
    the other parsers raise at the first variable they cannot represent.

    Raises
    ------
    ParseError
        The object is empty, or its format is none of the above (the
        message names the url and its first bytes).
    FileNotFoundError, ChunkReadError
        There is no object at ``url`` and no store or reference directory either.
    """
    if is_icechunk_source(url):  # the object is the repository: nothing to read to know what it is
        return IcechunkParser(url, inline=inline, group=group, drop_variables=drop_variables)
    handle: ObstoreFile | None = None
    open_error: Exception | None = None
    try:
        if opened is not None and opened.url == url and opened.registry is registry:
            handle = opened
        else:
            handle = ObstoreFile(url, registry)
        head = handle.read_range(0, HEAD_BYTES)  # within the first block, read when the file was opened
    except Exception as err:  # no readable object (a directory or prefix, or missing): the probes below decide
        head, open_error = b"", err

    if head or open_error is not None:  # an empty object is no directory, whatever its name
        for cls in PARSERS:
            if cls.guess_can_open(head, url):
                return _configured(cls, handle, inline, group, drop_variables, on_unsupported)

    # late imports: the probes are looked up at call time (tests replace them)
    from vzdask.parsers.icechunk import is_icechunk_repository
    from vzdask.parsers.kerchunk import is_kerchunk_parquet
    from vzdask.parsers.zarr import is_zarr_store

    if is_kerchunk_parquet(url, registry):  # before zarr: its .zmetadata holds "record_size"
        return _configured(KerchunkParquetParser, None, inline, group, drop_variables, on_unsupported)
    if is_icechunk_repository(url, registry):  # a directory/prefix with Icechunk's ``repo`` (or v1 refs)
        return _configured(IcechunkParser, None, inline, group, drop_variables, on_unsupported)
    if is_zarr_store(url, registry):  # a directory/prefix with zarr.json, .zgroup or .zarray
        return _configured(ZarrParser, None, inline, group, drop_variables, on_unsupported)
    if open_error is not None:
        raise open_error
    raise ParseError(
        f"{url}: unrecognised file format (first bytes {head[:8]!r}); expected HDF5/netCDF4, netCDF3, HDF4, "
        "GRIB2, TIFF, DMR++, FITS, Zarr or kerchunk references"
        if head
        else f"{url}: empty file; nothing to virtualize"
    )


def _configured(cls: type[Parser], handle: ObstoreFile | None, inline, group, drop_variables,
                on_unsupported: str) -> Parser:
    """A ``cls`` parser with the options its constructor takes, going on from ``handle`` if there is one."""
    if cls is NetCDF3Parser:  # no groups; variables are dropped after parsing
        parser: Parser = cls(inline=inline)
    elif cls in (ZarrParser, ZippedZarrParser):  # variables are dropped after parsing
        parser = cls(inline=inline, group=group)
    elif cls is FITSParser:  # no groups to choose
        parser = cls(inline=inline, drop_variables=drop_variables, on_unsupported=on_unsupported)
    elif issubclass(cls, IsolatingParser):  # parse on past a variable they cannot represent
        parser = cls(inline=inline, group=group, drop_variables=drop_variables, on_unsupported=on_unsupported)
    else:
        parser = cls(inline=inline, group=group, drop_variables=drop_variables)
    if handle is not None and handle.size:
        parser.continue_from(handle)
    return parser


__all__ = [
    "GRIB_SIGNATURE",
    "HDF4_SIGNATURE",
    "HDF5_SIGNATURE",
    "HEAD_BYTES",
    "NETCDF3_SIGNATURES",
    "PARSERS",
    "DMRPPParser",
    "FITSParser",
    "GRIBParser",
    "HDF4Parser",
    "HDFParser",
    "IcechunkParser",
    "InlinePolicy",
    "KerchunkJSONParser",
    "KerchunkParquetParser",
    "NetCDF3Parser",
    "ObstoreFile",
    "ParseError",
    "Parser",
    "TIFF_SIGNATURES",
    "TIFFParser",
    "ZarrParser",
    "ZippedZarrParser",
    "detect_parser",
]
