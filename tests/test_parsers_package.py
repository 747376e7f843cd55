"""The parsers package: what it exports, ``guess_can_open`` on real files, and detection reading a file once.

Files are written by the libraries that own the formats (netCDF4-python,
scipy, h5py, zarr) and by vzdask's own kerchunk writer; requests are those
a real obstore ``LocalStore`` answers, counted on their way through.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import obstore
import pytest
import xarray as xr

import vzdask.parsers
from vzdask.parsers import (
    HEAD_BYTES,
    PARSERS,
    DMRPPParser,
    FITSParser,
    HDFParser,
    InlinePolicy,
    KerchunkJSONParser,
    KerchunkParquetParser,
    NetCDF3Parser,
    ObstoreFile,
    ParseError,
    Parser,
    TIFFParser,
    ZarrParser,
    detect_parser,
)
from vzdask.registry import ObjectStoreRegistry

#: obstore's request functions, counted (and called unchanged) while a test watches.
REQUESTS = ("get", "get_async", "get_range", "get_range_async", "get_ranges", "get_ranges_async", "head",
            "head_async", "list", "list_with_delimiter", "list_with_delimiter_async")


class CountingRegistry(ObjectStoreRegistry):
    """The default registry (real obstore stores), counting how often each url is resolved.

    ``ObstoreFile`` resolves its url once, when it opens the object, so this
    counts how often a file is opened.
    """

    def __init__(self) -> None:
        super().__init__(create_missing=True)
        self.resolved: dict[str, int] = {}

    def resolve(self, url: str):
        self.resolved[url] = self.resolved.get(url, 0) + 1
        return super().resolve(url)


@pytest.fixture
def requests(monkeypatch):
    """``[(function, path), ...]``: every obstore request made while the test runs (passed on unchanged)."""
    made = []
    for name in REQUESTS:
        real = getattr(obstore, name)

        def counted(*args, _real=real, _name=name, **kwargs):
            made.append((_name, args[1] if len(args) > 1 else kwargs.get("path", kwargs.get("prefix"))))
            return _real(*args, **kwargs)

        monkeypatch.setattr(obstore, name, counted)
    return made


def _dataset() -> xr.Dataset:
    return xr.Dataset(
        {"t": (("time", "x"), np.arange(12.0).reshape(3, 4), {"units": "K"})},
        coords={"time": np.arange(3.0), "x": np.arange(4.0)},
    )


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    """``{kind: url}`` of one real file (or directory) of every format, and of a few that are none."""
    import h5py
    import netCDF4
    import scipy.io
    import zarr

    root = tmp_path_factory.mktemp("formats")
    out = {}

    def netcdf4(name, fmt):
        path = root / name
        with netCDF4.Dataset(path, "w", format=fmt) as nc:
            nc.createDimension("time", 3)
            nc.createDimension("x", 4)
            nc.createVariable("time", "f8", ("time",))[:] = np.arange(3.0)
            var = nc.createVariable("t", "f4", ("time", "x"))
            var[:] = np.arange(12.0).reshape(3, 4)
            var.units = "K"
        return path.as_uri()

    out["netCDF4"] = netcdf4("a.nc", "NETCDF4")
    out["netCDF4 classic model"] = netcdf4("a_classic.nc", "NETCDF4_CLASSIC")
    out["CDF-1"] = netcdf4("b1.nc", "NETCDF3_CLASSIC")
    out["CDF-2"] = netcdf4("b2.nc", "NETCDF3_64BIT_OFFSET")
    out["CDF-5"] = netcdf4("b5.nc", "NETCDF3_64BIT_DATA")
    path = root / "b_scipy.nc"
    with scipy.io.netcdf_file(path, "w") as nc:
        nc.createDimension("x", 4)
        nc.createVariable("v", "f8", ("x",))[:] = np.arange(4.0)
    out["CDF-1 (scipy)"] = path.as_uri()
    path = root / "plain.h5"
    with h5py.File(path, "w") as f:
        f["x"] = np.arange(3)
    out["HDF5"] = path.as_uri()

    for zarr_format in (2, 3):
        path = root / f"store_v{zarr_format}.zarr"
        group = zarr.open_group(path, mode="w", zarr_format=zarr_format)
        group.create_array("v", shape=(4,), chunks=(2,), dtype="f8")[:] = np.arange(4.0)
        out[f"Zarr v{zarr_format}"] = path.as_uri()
    path = root / "store_without_suffix"
    zarr.open_group(path, mode="w", zarr_format=3).create_array("v", shape=(2,), dtype="i4")[:] = [1, 2]
    out["Zarr (no .zarr suffix)"] = path.as_uri()

    from vzdask.xarray import open_virtual_dataset

    vds = open_virtual_dataset(out["netCDF4"])
    vds.vz.to_kerchunk(str(root / "refs.json"), format="json")
    out["kerchunk JSON"] = (root / "refs.json").as_uri()
    vds.vz.to_kerchunk(str(root / "refs.parq"), format="parquet")
    out["kerchunk Parquet"] = (root / "refs.parq").as_uri()
    vds.vz.to_kerchunk(str(root / "refs_dir"), format="parquet")
    out["kerchunk Parquet (no suffix)"] = (root / "refs_dir").as_uri()

    (root / "notes.txt").write_bytes(b"just some text, not a format vzdask reads\n")
    out["text"] = (root / "notes.txt").as_uri()
    (root / "empty.nc").write_bytes(b"")
    out["empty"] = (root / "empty.nc").as_uri()
    (root / "zarr.json").write_bytes((root / "store_v3.zarr" / "zarr.json").read_bytes())
    out["a zarr.json document"] = (root / "zarr.json").as_uri()
    (root / "fake.zarr").write_bytes((root / "a.nc").read_bytes())
    out["netCDF4 named .zarr"] = (root / "fake.zarr").as_uri()
    return out


EXPECTED = {
    "netCDF4": HDFParser,
    "netCDF4 classic model": HDFParser,
    "HDF5": HDFParser,
    "netCDF4 named .zarr": HDFParser,
    "CDF-1": NetCDF3Parser,
    "CDF-2": NetCDF3Parser,
    "CDF-5": NetCDF3Parser,
    "CDF-1 (scipy)": NetCDF3Parser,
    "kerchunk JSON": KerchunkJSONParser,
    "kerchunk Parquet": KerchunkParquetParser,
    "kerchunk Parquet (no suffix)": KerchunkParquetParser,
    "Zarr v2": ZarrParser,
    "Zarr v3": ZarrParser,
    "Zarr (no .zarr suffix)": ZarrParser,
}
#: Formats whose guess is decided by the probes, not by ``guess_can_open`` (a directory with no telling url).
PROBED = {"kerchunk Parquet (no suffix)", "Zarr (no .zarr suffix)"}


def _head(url: str) -> bytes:
    """The first bytes of the object at ``url`` as detection sees them; empty for a directory."""
    path = url.removeprefix("file://")
    if os.path.isdir(path):
        return b""
    with open(path, "rb") as f:
        return f.read(HEAD_BYTES)


# -- the package's exports ---------------------------------------------------


def test_every_parser_is_exported_and_is_a_parser():
    for name in ("HDFParser", "NetCDF3Parser", "ZarrParser", "KerchunkJSONParser", "KerchunkParquetParser",
                 "Parser", "ParseError", "detect_parser", "ObstoreFile", "InlinePolicy"):
        assert name in vzdask.parsers.__all__, name
        assert getattr(vzdask.parsers, name) is not None
    for cls in (HDFParser, NetCDF3Parser, ZarrParser, KerchunkJSONParser, KerchunkParquetParser):
        assert issubclass(cls, Parser), cls
        assert isinstance(cls(), Parser)
    assert set(PARSERS) >= {HDFParser, NetCDF3Parser, ZarrParser, KerchunkJSONParser, KerchunkParquetParser,
                            DMRPPParser, FITSParser, TIFFParser}
    assert all(issubclass(cls, Parser) and cls.__name__ in vzdask.parsers.__all__ for cls in PARSERS)
    from vzdask.errors import ParseError as error
    from vzdask.policy import InlinePolicy as policy

    assert ParseError is error and InlinePolicy is policy
    assert ObstoreFile.__module__ == "vzdask.parsers.common"


def test_parser_is_one_thing_the_base_class():
    import vzdask.xarray

    assert isinstance(Parser, type)
    # no second meaning (a Callable alias) elsewhere in the package
    assert getattr(vzdask.xarray, "Parser", Parser) is Parser


def test_the_kerchunk_package_keeps_its_public_names():
    from vzdask.parsers.kerchunk import (
        KerchunkJSONParser as json_parser,
        KerchunkParquetParser as parquet_parser,
        is_kerchunk_parquet,
        looks_like_kerchunk_json,
    )
    from vzdask.parsers.kerchunk.references_json import KerchunkJSONParser as defined_json
    from vzdask.parsers.kerchunk.references_parquet import KerchunkParquetParser as defined_parquet

    assert json_parser is KerchunkJSONParser is defined_json
    assert parquet_parser is KerchunkParquetParser is defined_parquet
    assert callable(is_kerchunk_parquet) and looks_like_kerchunk_json(b' {"version": 1, "refs": {}}')


def test_importing_the_parsers_leaves_the_optional_readers_unimported():
    code = ("import sys, vzdask.parsers; print(' '.join(m for m in ('h5py', 'pyarrow.parquet', 'scipy.io', "
            "'netCDF4', 'h5netcdf', 'kerchunk') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


# -- guess_can_open ----------------------------------------------------------


def test_guess_can_open_on_real_heads(files):
    for kind, url in files.items():
        head = _head(url)
        claimed = [cls for cls in PARSERS if cls.guess_can_open(head, url)]
        expected = [] if kind in PROBED or kind not in EXPECTED else [EXPECTED[kind]]
        assert claimed == expected, (kind, head[:16], claimed)


def test_guess_can_open_needs_no_request(files, requests):
    for url in files.values():
        head = _head(url)
        for cls in PARSERS:
            cls.guess_can_open(head, url)
    assert requests == []


def test_guess_can_open_edge_cases():
    assert HDFParser.guess_can_open(b"\x89HDF\r\n\x1a\n", "s3://b/k") is True
    assert HDFParser.guess_can_open(b"\x89HDF\r\n", "s3://b/k") is False  # truncated signature
    assert not any(cls.guess_can_open(b"", "s3://b/k.nc") for cls in PARSERS)
    for version in (1, 2, 5):
        assert NetCDF3Parser.guess_can_open(b"CDF" + bytes([version]) + b"\0\0\0\0", "x")
    assert not NetCDF3Parser.guess_can_open(b"CDF\x03\0\0\0\0", "x")
    assert KerchunkJSONParser.guess_can_open(b'\n  {"refs": {}}', "x") is True
    assert KerchunkJSONParser.guess_can_open(b'{"zarr_format": 3, "node_type": "group"}', "x") is False
    assert KerchunkJSONParser.guess_can_open(b"[1, 2]", "x") is False
    # directories: only an empty head (no object at the url) and a telling url
    assert ZarrParser.guess_can_open(b"", "s3://bucket/data.zarr/") is True
    assert ZarrParser.guess_can_open(b"\x89HDF\r\n\x1a\n", "file:///x.zarr") is False
    assert KerchunkParquetParser.guess_can_open(b"", "s3://bucket/refs.parquet") is True
    assert KerchunkParquetParser.guess_can_open(b"PAR1", "file:///table.parquet") is False  # a Parquet file


# -- detect_parser -----------------------------------------------------------


def test_detect_parser_picks_the_right_parser(files):
    registry = ObjectStoreRegistry.default()
    for kind, cls in EXPECTED.items():
        parser = detect_parser(files[kind], registry, inline=InlinePolicy(max_chunk_bytes=1))
        assert type(parser) is cls, (kind, parser)
        assert parser.inline == InlinePolicy(max_chunk_bytes=1)


@pytest.mark.parametrize(
    "kind", ["netCDF4", "HDF5", "CDF-1", "CDF-5", "kerchunk JSON", "netCDF4 named .zarr", "text", "empty"]
)
def test_detect_parser_opens_a_file_once_with_one_request(files, requests, kind):
    registry = CountingRegistry()
    url = files[kind]
    path = registry.resolve(url)[1]  # creates the store first: only detection's own calls are counted
    registry.resolved.clear()
    try:
        detect_parser(url, registry)
    except ParseError:
        assert kind in ("text", "empty")
    # read once: a ranged get gives the first block and the size (an empty object refuses any range: a head)
    expected = ["get", "head"] if kind == "empty" else ["get"]
    assert [name for name, where in requests if where == path] == expected, (kind, requests)
    if kind in ("text", "empty"):  # no signature: the directory layouts were probed too
        assert len(requests) > 1
    else:  # a signature decides: one ranged get (the first block and the size), nothing else
        assert registry.resolved == {url: 1}, registry.resolved
        assert len(requests) == 1, requests


def test_directories_named_for_their_format_skip_the_probes(files, requests):
    registry = CountingRegistry()
    for kind in ("Zarr v2", "Zarr v3", "kerchunk Parquet"):
        url = files[kind]
        registry.resolve(url)
        registry.resolved.clear()
        requests.clear()
        assert type(detect_parser(url, registry)) is EXPECTED[kind]
        assert registry.resolved == {url: 1}, (kind, registry.resolved)  # the object read attempted, no probe
        # no object there: the ranged get fails and a head tells "missing" from "empty"
        assert [name for name, _ in requests] == ["get", "head"], (kind, requests)


def test_other_directories_are_found_by_the_probes(files):
    registry = CountingRegistry()
    for kind in PROBED:
        url = files[kind]
        assert type(detect_parser(url, registry)) is EXPECTED[kind], kind
        assert any(u != url for u in registry.resolved), kind  # looked into the directory


def test_a_detected_hdf5_parser_goes_on_from_the_open_file(files, requests):
    """Detection and the parse together open (and read the first block of) a netCDF4 file once."""
    registry = CountingRegistry()
    url = files["netCDF4"]
    registry.resolve(url)
    registry.resolved.clear()
    parser = detect_parser(url, registry)
    store = parser(url, registry)
    assert registry.resolved == {url: 1}
    assert sorted(store.group.arrays) == ["t", "time"]
    first_blocks = [r for r in requests if r[0] == "get"]
    assert len(first_blocks) == 1, requests


def test_continue_from_is_public_and_used_once(files, requests):
    registry = CountingRegistry()
    url = files["netCDF4"]
    opened = ObstoreFile(url, registry)
    parser = HDFParser()
    assert parser.continue_from(opened) is parser
    requests.clear()
    parser(url, registry)
    assert opened.taken
    parser(url, registry)  # a second parse opens the file itself
    assert registry.resolved[url] == 2
    # handed a file of another url, the parser opens its own
    other = HDFParser().continue_from(ObstoreFile(files["HDF5"], registry))
    assert sorted(other(url, registry).group.arrays) == ["t", "time"]


def test_detect_parser_goes_on_from_a_file_opened_ahead(files, requests):
    registry = CountingRegistry()
    url = files["netCDF4"]
    opened = ObstoreFile(url, registry)
    requests.clear()
    parser = detect_parser(url, registry, opened=opened)
    assert requests == []  # the first block was read when the file was opened
    parser(url, registry)
    assert opened.taken and registry.resolved[url] == 1


def test_an_unrecognised_file_names_its_url_and_first_bytes(files):
    registry = ObjectStoreRegistry.default()
    with pytest.raises(ParseError) as info:
        detect_parser(files["text"], registry)
    message = str(info.value)
    assert message.startswith(files["text"] + ": unrecognised file format")
    assert repr(b"just som") in message
    with pytest.raises(ParseError, match=r"empty\.nc: empty file"):
        detect_parser(files["empty"], registry)
    empty_store_name = files["empty"].replace("empty.nc", "empty.zarr")
    with open(empty_store_name.removeprefix("file://"), "wb"):
        pass
    with pytest.raises(ParseError, match=r"empty\.zarr: empty file"):  # an object, so no directory
        detect_parser(empty_store_name, registry)
    with pytest.raises(ParseError, match=r"zarr\.json: unrecognised file format"):
        detect_parser(files["a zarr.json document"], registry)


def test_a_missing_url_is_reported_as_missing(tmp_path):
    url = (tmp_path / "missing.nc").as_uri()
    with pytest.raises(FileNotFoundError, match="missing.nc"):
        detect_parser(url, ObjectStoreRegistry.default())
    # a missing "directory" named like a store goes to its parser, which names what it did not find
    url = (tmp_path / "missing.zarr").as_uri()
    parser = detect_parser(url, ObjectStoreRegistry.default())
    assert type(parser) is ZarrParser
    with pytest.raises((OSError, ParseError), match=r"missing\.zarr"):
        parser(url, ObjectStoreRegistry.default())
