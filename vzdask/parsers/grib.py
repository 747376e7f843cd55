"""GRIB2 parser: every message one chunk, variables and hypercubes built as cfgrib builds them.

The file is scanned message by message: section 0 of each message gives its
edition and total length (so its byte range). ecCodes is the authority for
what a message means: its keys are read by ecCodes (``codes_new_from_message``)
once per kind of message. The kind is the message's section headers
(sections 1-4 and section 5's template number, fixed-layout structure read
here from the bytes, ``read_head``) with the reference time and forecast
time left out; a message of a kind ecCodes has read before in this process
takes ecCodes' keys of that kind with its own time and step (the messages of
a collection's files are a few kinds repeated). Layouts the byte reading
does not know (product templates other than 4.0-4.2, 4.8, 4.11, 4.12, time
units other than hours, several time ranges) go to ecCodes every time.
Bytes are read through ``vzdask.object_io`` in large windows (a file is read
once, front to back, never held whole).

Variables and dimensions follow cfgrib (``xr.open_dataset(engine="cfgrib")``,
``cfgrib.open_datasets``):

* messages are grouped into variables by ``paramId`` and the keys cfgrib
  requires to be unique in a variable (``dataType``, ``numberOfPoints``,
  ``typeOfLevel``, ``stepUnits``, ``stepType``, ``gridType``,
  ``uvRelativeToGrid``, and the file keys ``edition``, ``centre``,
  ``subCentre``); each is named by ``cfVarName`` (else ``shortName``);
* a variable's header dimensions are ``number``, ``time`` (``dataDate`` +
  ``dataTime``), ``step`` (``endStep``, in hours), its level (named by
  ``typeOfLevel``), ``directionNumber`` and ``frequencyNumber``, each
  holding the sorted distinct values of its messages (pressure levels
  decreasing); then the grid: ``(latitude, longitude)`` for regular grids,
  ``(y, x)`` with 2-D ``latitude``/``longitude`` for projected and rotated
  grids, else ``(values,)``;
* variables of one ``typeOfLevel`` share a hypercube when their
  coordinates are equal (cfgrib's exact-join merge); each hypercube is one
  group (the root when there is one), length-1 dimensions squeezed into
  scalar coordinates; ``valid_time`` = ``time`` + ``step``.

The chunk grid of a variable is 1 along each header dimension and the whole
grid along the others: chunk ``(i, j, ...)`` is the message at those header
values, decoded by ``vzdask.grib_codec`` (float32, NaN where a bitmap marks
points absent, as cfgrib). Header combinations no message has are missing
chunks (NaN); of duplicate messages the first is used, as cfgrib does.
Coordinates are built from the keys and inlined.

``idx=True`` reads the NOAA/wgrib2 index beside the file (``<url>.idx``)
instead of scanning; see ``GRIBParser`` for what it gives.
"""

from __future__ import annotations

import datetime
import functools
import os
import struct
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from vzdask.grib_codec import GribCodec, check_complete, decode_message
from vzdask.manifests.array import ManifestArray
from vzdask.manifests.group import ManifestGroup
from vzdask.manifests.manifest import ChunkManifest, FileChunks, FileTable
from vzdask.manifests.metadata import create_array_metadata
from vzdask.manifests.store import ManifestStore
from vzdask.object_io import get_range, is_in_process, read_ranges
from vzdask.parsers.common import ObstoreFile, ParseError, Parser, finish
from vzdask.policy import InlinePolicy
from vzdask.registry import ObjectStoreRegistry

#: The first bytes of a GRIB file (every message starts so).
GRIB_SIGNATURE = b"GRIB"
#: How much of the file is fetched per read while scanning (a message longer than this is fetched whole).
SCAN_WINDOW = 16 * 2**20
#: Threads reading messages' keys with ecCodes while scanning, and how many messages each round hands them.
SCAN_THREADS = 4
SCAN_BATCH = 64

#: Keys that must be unique within one variable (cfgrib splits a parameter into several variables on them).
VARIABLE_KEYS = ("paramId", "dataType", "numberOfPoints", "typeOfLevel", "stepUnits", "stepType", "gridType",
                 "uvRelativeToGrid")
#: Keys of the whole hypercube: its group's attributes (``GRIB_<key>``).
FILE_KEYS = ("edition", "centre", "centreDescription", "subCentre")
#: Header dimensions, in cfgrib's order (``level`` is named by ``typeOfLevel``).
HEADER_DIMS = ("number", "time", "step", "level", "directionNumber", "frequencyNumber")
#: Keys read from a variable's first message into its ``GRIB_<key>`` attributes.
EXTRA_KEYS = ("shortName", "units", "name", "cfName", "cfVarName", "missingValue", "totalNumber",
              "numberOfDirections", "numberOfFrequencies", "NV", "gridDefinitionDescription")
#: Grid keys cfgrib keeps as attributes, by ``gridType``.
_LL = ("iDirectionIncrementInDegrees", "iScansNegatively", "jDirectionIncrementInDegrees",
       "jPointsAreConsecutive", "jScansPositively", "latitudeOfFirstGridPointInDegrees",
       "latitudeOfLastGridPointInDegrees", "longitudeOfFirstGridPointInDegrees",
       "longitudeOfLastGridPointInDegrees")
_ROTATION = ("angleOfRotationInDegrees", "latitudeOfSouthernPoleInDegrees", "longitudeOfSouthernPoleInDegrees")
GRID_KEYS: dict[str, tuple[str, ...]] = {
    "regular_ll": ("Nx", "Ny", *_LL),
    "rotated_ll": ("Nx", "Ny", *_LL, *_ROTATION),
    "reduced_ll": ("Ny", "jDirectionIncrementInDegrees", "jPointsAreConsecutive", "jScansPositively",
                   "latitudeOfFirstGridPointInDegrees", "latitudeOfLastGridPointInDegrees"),
    "regular_gg": ("N", "Ni", "Nj", *(k for k in _LL if k != "jDirectionIncrementInDegrees")),
    "rotated_gg": ("Nx", "Ny", "N", *(k for k in _LL if k != "jDirectionIncrementInDegrees"), *_ROTATION),
    "lambert": ("LaDInDegrees", "LoVInDegrees", "iScansNegatively", "jPointsAreConsecutive", "jScansPositively",
                "latitudeOfFirstGridPointInDegrees", "latitudeOfSouthernPoleInDegrees",
                "longitudeOfFirstGridPointInDegrees", "longitudeOfSouthernPoleInDegrees", "DyInMetres",
                "DxInMetres", "Latin2InDegrees", "Latin1InDegrees", "Ny", "Nx"),
    "reduced_gg": ("N", "pl"),
    "sh": ("M", "K", "J"),
}
#: Grids whose latitude and longitude are dimension coordinates.
REGULAR_GRIDS = frozenset({"regular_ll", "regular_gg"})
#: Grids with 2-D latitude/longitude over ``(y, x)``.
PROJECTED_GRIDS = frozenset({"rotated_ll", "rotated_gg", "lambert", "lambert_azimuthal_equal_area", "albers",
                             "polar_stereographic"})
#: Seconds per unit of GRIB code table 4.4 (``stepUnits``); steps are given in hours.
STEP_UNIT_SECONDS = {0: 60, 1: 3600, 2: 86400, 10: 10800, 11: 21600, 12: 43200, 13: 1, 14: 900, 15: 1800}
_EPOCH = datetime.datetime(1970, 1, 1)
_TIME_UNITS = "seconds since 1970-01-01T00:00:00"

#: CF attributes of the coordinates (cfgrib's conventions).
COORDINATE_ATTRIBUTES: dict[str, dict[str, str]] = {
    "latitude": {"units": "degrees_north", "standard_name": "latitude", "long_name": "latitude"},
    "longitude": {"units": "degrees_east", "standard_name": "longitude", "long_name": "longitude"},
    "number": {"units": "1", "standard_name": "realization", "long_name": "ensemble member numerical id"},
    "time": {"units": _TIME_UNITS, "calendar": "proleptic_gregorian", "standard_name": "forecast_reference_time",
             "long_name": "initial time of forecast"},
    "step": {"units": "hours", "standard_name": "forecast_period",
             "long_name": "time since forecast_reference_time", "dtype": "timedelta64[ns]"},
    "valid_time": {"units": _TIME_UNITS, "calendar": "proleptic_gregorian", "standard_name": "time",
                   "long_name": "time"},
    "depthBelowLand": {"units": "m", "positive": "down", "long_name": "soil depth", "standard_name": "depth"},
    "depthBelowLandLayer": {"units": "m", "positive": "down", "long_name": "soil depth", "standard_name": "depth"},
    "hybrid": {"units": "1", "positive": "down", "long_name": "hybrid level",
               "standard_name": "atmosphere_hybrid_sigma_pressure_coordinate"},
    "heightAboveGround": {"units": "m", "positive": "up", "long_name": "height above the surface",
                          "standard_name": "height"},
    "isobaricInhPa": {"units": "hPa", "positive": "down", "stored_direction": "decreasing",
                      "standard_name": "air_pressure", "long_name": "pressure"},
    "isobaricInPa": {"units": "Pa", "positive": "down", "stored_direction": "decreasing",
                     "standard_name": "air_pressure", "long_name": "pressure"},
    "isobaricLayer": {"units": "Pa", "positive": "down", "standard_name": "air_pressure", "long_name": "pressure"},
}
UNDEF = None


# --------------------------------------------------------------------------- #
# what a scan (or an index file) gives
# --------------------------------------------------------------------------- #
@dataclass(frozen=True, slots=True)
class Field:
    """One message: where it is and the values of its header dimensions (None where undefined)."""

    number: int  # 1-based message number in the file (as wgrib2 and .idx files count)
    offset: int
    length: int
    header: tuple  # values of HEADER_DIMS


@dataclass(frozen=True)
class Grid:
    """A grid's dimensions, shape and coordinates (name -> (dims, values, attributes))."""

    dims: tuple[str, ...]
    shape: tuple[int, ...]
    coords: dict[str, tuple[tuple[str, ...], np.ndarray, dict[str, Any]]]

    def same_as(self, other: Grid) -> bool:
        if self is other:
            return True
        if (self.dims, self.shape, sorted(self.coords)) != (other.dims, other.shape, sorted(other.coords)):
            return False
        return all(np.array_equal(self.coords[k][1], other.coords[k][1]) for k in self.coords)


@dataclass
class Variable:
    """Messages of one variable (unique ``VARIABLE_KEYS``), with its attributes from its first message."""

    name: str
    type_of_level: str
    file_attributes: dict[str, Any]
    attributes: dict[str, Any]
    grid: Grid
    fields: list[Field] = field(default_factory=list)
    sort_key: tuple = ()
    attributes_key: tuple | None = None  # what ecCodes' attributes were cached under (the same for the same variable)

    def coordinates(self) -> dict[str, np.ndarray]:
        """Header dimension -> its sorted distinct values (dimensions no message defines left out)."""
        out = {}
        for i, dim in enumerate(HEADER_DIMS):
            values = {f.header[i] for f in self.fields}
            if values == {UNDEF}:
                continue
            if UNDEF in values:
                raise ParseError(f"variable {self.name!r}: key {dim!r} is defined in some of its messages only")
            name = self.type_of_level if dim == "level" else dim
            decreasing = COORDINATE_ATTRIBUTES.get(name, {}).get("stored_direction") == "decreasing"
            out[name] = np.array(sorted(values, reverse=decreasing))
        return out


# --------------------------------------------------------------------------- #
# scanning messages with ecCodes
# --------------------------------------------------------------------------- #
def _get(handle: Any, key: str, ktype: type | None = None) -> Any:
    """A key's value as cfgrib reads it (arrays as tuples), None if the message does not define it."""
    import eccodes

    try:
        if eccodes.codes_get_size(handle, key) > 1:
            values = eccodes.codes_get_array(handle, key, ktype)
            return tuple(np.asarray(values).tolist())
        value = eccodes.codes_get(handle, key, ktype)
    except eccodes.KeyValueNotFoundError:
        return UNDEF
    if isinstance(value, np.generic):
        value = value.item()
    return value


def _seconds(date: Any, time: Any) -> int | None:
    if date is UNDEF or time is UNDEF:
        return None
    date, time = int(date), int(time)
    stamp = datetime.datetime(date // 10000, date // 100 % 100, date % 100, time // 100, time % 100)
    return int((stamp - _EPOCH).total_seconds())


def _grid(handle: Any) -> Grid:
    """The grid's dimensions and coordinates, as cfgrib builds them."""
    grid_type = _get(handle, "gridType")
    lat, lon = COORDINATE_ATTRIBUTES["latitude"], COORDINATE_ATTRIBUTES["longitude"]
    coords: dict[str, tuple[tuple[str, ...], np.ndarray, dict[str, Any]]] = {}
    latitudes: Any
    longitudes: Any
    if grid_type in REGULAR_GRIDS:
        distinct_lat = np.atleast_1d(np.asarray(_get(handle, "distinctLatitudes"), dtype="f8"))
        distinct_lon = np.atleast_1d(np.asarray(_get(handle, "distinctLongitudes"), dtype="f8"))
        lat_attrs = dict(lat)
        if distinct_lat[0] > distinct_lat[-1]:
            lat_attrs["stored_direction"] = "decreasing"
        coords["latitude"] = (("latitude",), distinct_lat, lat_attrs)
        coords["longitude"] = (("longitude",), distinct_lon, dict(lon))
        return Grid(("latitude", "longitude"), (int(_get(handle, "Ny")), int(_get(handle, "Nx"))), coords)
    if grid_type in PROJECTED_GRIDS:
        shape = (int(_get(handle, "Ny")), int(_get(handle, "Nx")))
        latitudes, longitudes = _get(handle, "latitudes"), _get(handle, "longitudes")
        if latitudes is not UNDEF and longitudes is not UNDEF:
            coords["latitude"] = (("y", "x"), np.asarray(latitudes, dtype="f8").reshape(shape), dict(lat))
            coords["longitude"] = (("y", "x"), np.asarray(longitudes, dtype="f8").reshape(shape), dict(lon))
        return Grid(("y", "x"), shape, coords)
    size = int(_get(handle, "numberOfPoints"))
    try:
        latitudes, longitudes = _get(handle, "latitudes"), _get(handle, "longitudes")
    except Exception:  # grids ecCodes gives no points for (spherical harmonics)
        latitudes = longitudes = UNDEF
    if latitudes is not UNDEF and longitudes is not UNDEF:
        coords["latitude"] = (("values",), np.atleast_1d(np.asarray(latitudes, dtype="f8")), dict(lat))
        coords["longitude"] = (("values",), np.atleast_1d(np.asarray(longitudes, dtype="f8")), dict(lon))
    return Grid(("values",), (size,), coords)


def _variable_name(attributes: dict[str, Any], param_id: Any) -> str:
    var_name = attributes.get("GRIB_cfVarName", "unknown")
    if var_name not in ("undef", "unknown"):
        return str(var_name)
    return str(attributes.get("GRIB_shortName", f"paramId_{param_id}"))


#: Shared by the files one process parses (a collection's files have the same grids and variables): grids by
#: ``md5GridSection``, variable attributes by their keys and grid, and the packings ecCodes was seen to decode.
_GRIDS: dict[Any, Grid] = {}
_ATTRIBUTES: dict[tuple, dict[str, Any]] = {}
_DECODABLE: set[tuple] = set()
#: Coordinates' (metadata, manifest) and variables' metadata, by what they are built from (both immutable).
_COORDINATES: dict[tuple, tuple[Any, ChunkManifest]] = {}
_METADATA: dict[tuple, Any] = {}
_CACHE_SIZE = 1024


def clear_caches() -> None:
    """Forget what ecCodes said about grids, variables, packings and section headers (they are kept per process)."""
    for cache in (_GRIDS, _ATTRIBUTES, _DECODABLE, _COORDINATES, _METADATA, _SIGNATURES, _LAYOUTS):
        cache.clear()


def _remember(cache: dict, key: Any, value: Any) -> Any:
    if len(cache) >= _CACHE_SIZE:
        cache.clear()
    cache[key] = value
    return value


@dataclass(frozen=True, slots=True)
class MessageKeys:
    """What one message's keys say: its variable, file keys, header values, grid and packing."""

    variable: tuple  # VARIABLE_KEYS values
    file: tuple  # FILE_KEYS values
    header: tuple  # HEADER_DIMS values
    grid: Any  # md5GridSection
    packing: tuple  # (packingType, dataRepresentationTemplateNumber)


def _scalar(handle: Any, key: str, ktype: type | None = None) -> Any:
    """A scalar key's value, None if the message does not define it (no size query: cheaper than ``_get``)."""
    import eccodes

    try:
        value = eccodes.codes_get(handle, key, ktype)
    except eccodes.KeyValueNotFoundError:
        return UNDEF
    return value.item() if isinstance(value, np.generic) else value


def read_keys(messages: Sequence[tuple[Any, str]]) -> list[MessageKeys]:
    """``message_keys`` of each ``(data, where)``; several on ``SCAN_THREADS`` threads (ecCodes lets the GIL go).

    The first error in the messages' order is raised, as one after another would.
    """
    threads = min(SCAN_THREADS, os.cpu_count() or 1, len(messages))
    if threads < 2:
        return [message_keys(data, where) for data, where in messages]
    with ThreadPoolExecutor(threads, thread_name_prefix="vzdask-grib") as pool:
        return list(pool.map(lambda message: message_keys(*message), messages))


#: The keys ``message_keys`` reads, with the type each is read as (None: its own).
_MESSAGE_KEYS: tuple[tuple[str, type | None], ...] = (
    ("stepUnits", int), ("endStep", int), ("number", None), ("dataDate", None), ("dataTime", None),
    ("level", float), ("directionNumber", None), ("frequencyNumber", None),
    *((key, None) for key in VARIABLE_KEYS), *((key, None) for key in FILE_KEYS),
    ("md5GridSection", None), ("packingType", None), ("dataRepresentationTemplateNumber", None),
)


def message_keys(data: Any, where: str) -> MessageKeys:
    """One message's keys, read by ecCodes from its bytes (ParseError naming ``where`` if it cannot).

    Most of the time goes to ecCodes itself (its handle, about 0.4 ms, and
    its concept keys such as ``paramId`` and ``typeOfLevel``, about 0.4 ms
    for the 23 keys): reading them through the C API instead of
    eccodes-python's functions saved 5 of 87 ms for the benchmark's first
    file of 51 messages, not worth the undocumented bindings.
    """
    import eccodes

    try:
        check_complete(data)
        handle = eccodes.codes_new_from_message(bytes(data))
    except Exception as err:
        raise ParseError(f"{where}: ecCodes cannot read it: {type(err).__name__}: {err}") from err
    try:
        got = {key: _scalar(handle, key, ktype) for key, ktype in _MESSAGE_KEYS}
        unit, end = got["stepUnits"], got["endStep"]
        seconds = STEP_UNIT_SECONDS.get(int(unit)) if unit is not UNDEF else None
        if unit is not UNDEF and seconds is None:
            raise ValueError(f"unsupported stepUnits {unit!r}")
        header = (
            got["number"],
            _seconds(got["dataDate"], got["dataTime"]),
            int(end) * seconds / 3600.0 if end is not UNDEF and seconds is not None else None,
            got["level"], got["directionNumber"], got["frequencyNumber"],
        )
    except Exception as err:
        raise ParseError(f"{where}: cannot read its keys: {type(err).__name__}: {err}") from err
    finally:
        eccodes.codes_release(handle)
    return MessageKeys(tuple(got[k] for k in VARIABLE_KEYS), tuple(got[k] for k in FILE_KEYS), header,
                       got["md5GridSection"], (got["packingType"], got["dataRepresentationTemplateNumber"]))


# --------------------------------------------------------------------------- #
# the fast path: a message's section headers read from its bytes, ecCodes asked once per kind of header
# --------------------------------------------------------------------------- #
#: Product definition templates whose forecast time is at octets 19-22 of section 4 (templates 4.0-4.15 share
#: that head), with where the end of the overall time interval starts in the statistical ones (0-based), else None.
FAST_TEMPLATES: dict[int, int | None] = {0: None, 1: None, 2: None, 8: 34, 11: 37, 12: 36}
#: How many bytes of each message the index path reads to find its section headers (more when they are longer).
HEAD_BYTES = 1024
#: Hopping through a local file, messages longer than this are skipped (their end and the next head read), shorter
#: ones read in windows of ``HOP_WINDOW`` bytes: a request costs 15-50 us (obstore hands it to a thread and back),
#: reading a MiB 150-250 us, so a 100 KiB message costs less read with its neighbours than on its own.
HOP_LENGTH = 256 * 2**10
HOP_WINDOW = 8 * 2**20


@dataclass(frozen=True, slots=True)
class Head:
    """What the section headers of one GRIB2 message say, read from its bytes.

    ``signature`` is sections 0-4 (and section 5's template number) with the
    reference time and forecast time left out (and, for statistical
    templates, the end of the time interval, which is checked to follow from
    them): every key vzdask reads but those three is a function of it, so
    ecCodes' answer for one message serves all messages of one signature.
    """

    signature: bytes
    time: int  # the reference time, seconds since 1970 (as cfgrib's ``time``: minutes, no seconds)
    forecast_time: int  # hours


#: signature -> (the keys ecCodes read from one message of it, its ``step`` minus its forecast time in hours)
_SIGNATURES: dict[bytes, tuple[MessageKeys, float]] = {}


def _u(data: Any, start: int, size: int) -> int:
    return int.from_bytes(data[start : start + size], "big")


_U32 = struct.Struct(">I").unpack_from
#: Seconds since 1970 of the date-times section headers hold (year as 2 bytes, then month, day, hour, minute
#: [, second]), by their bytes: a collection's messages hold a few (None for a date that is none).
_STAMPS: dict[bytes, int | None] = {}


def _stamp(raw: bytes) -> int | None:
    seconds = _STAMPS.get(raw, -1)
    if seconds == -1:
        try:
            stamp = datetime.datetime((raw[0] << 8) | raw[1], *raw[2:])
            seconds = int((stamp - _EPOCH).total_seconds())
        except (ValueError, OverflowError):
            seconds = None
        if len(_STAMPS) >= 4096:
            _STAMPS.clear()
        _STAMPS[raw] = seconds
    return seconds


def read_head(data: Any) -> Head | None:
    """The section headers of a GRIB2 message (its first bytes suffice), None if the fast path does not know them.

    None for: a head too short to hold sections 0-4, a product template not in
    ``FAST_TEMPLATES``, a time unit other than hours, several time ranges, an
    end of the time interval that does not follow from the reference and
    forecast times, anything malformed. ecCodes then reads the message.
    """
    try:
        data = memoryview(data)  # (obstore's Bytes index and slice slowly)
        size = len(data)
        if size < 16 or data[7] != 2:
            return None
        position, starts, last = 16, [0, 0, 0, 0, 0], 0  # where sections 1-4 start (0: absent)
        while True:  # walk the section lengths to section 5
            if position + 5 > size:
                return None
            number = data[position + 4]
            if number == 5:
                if position + 11 > size:
                    return None
                break
            length = _U32(data, position)[0]
            if not last < number <= 4 or length < 5 or position + length > size:  # (sections come in order)
                return None
            starts[number], last = position, number
            position += length
        raw = bytes(data[: position + 11])  # the headers, as bytes (slicing them is cheap)
        s1, s2, s3, s4 = starts[1:]
        if not s1 or not s3 or not s4:
            return None
        s1_end = s3 if not s2 else s2
        s4_end = position
        if s1_end - s1 < 21 or s4_end - s4 < 34:
            return None
        end_at = FAST_TEMPLATES.get((raw[s4 + 7] << 8) | raw[s4 + 8], -1)
        if end_at == -1 or raw[s4 + 17] != 1 or raw[s4 + 18] & 0x80:  # forecast time in hours, not negative
            return None
        reference = _stamp(raw[s1 + 12 : s1 + 18])
        if reference is None:
            return None
        forecast_time = _U32(raw, s4 + 18)[0]
        if end_at is None:
            statistics = raw[s4 : s4 + 18] + raw[s4 + 22 : s4_end]
        else:
            e = s4 + end_at
            if s4_end - s4 < end_at + 19 or raw[e + 7] != 1 or raw[e + 14] != 1:  # one time range, in hours
                return None
            end = _stamp(raw[e : e + 7])
            if end is None or end != reference + raw[s1 + 18] + 3600 * (forecast_time + _U32(raw, e + 15)[0]):
                return None
            statistics = raw[s4 : s4 + 18] + raw[s4 + 22 : e] + raw[e + 7 : s4_end]
        signature = b"".join((raw[6:7], raw[position + 9 : position + 11], raw[s1 : s1 + 12], raw[s1 + 19 : s1_end],
                              raw[s2:s3] if s2 else b"", raw[s3:s4], statistics))
        return Head(signature, reference, forecast_time)
    except (ValueError, IndexError, TypeError):  # a short field
        return None


def head_size(data: Any) -> int | None:
    """How many bytes of a message ``read_head`` needs, as far as ``data`` (its first bytes) tells; None if malformed."""
    if len(data) < 16:
        return 16
    data = memoryview(data)
    position = 16
    while position + 5 <= len(data):
        if data[position + 4] == 5:
            return position + 11
        length = _u(data, position, 4)
        if length < 5:
            return None
        position += length
    return position + 11  # enough to see the next section's header (and section 5's template)


def known_keys(head: Head | None) -> MessageKeys | None:
    """The keys of a message from its head, if ecCodes has read a message of the same signature before."""
    if head is None:
        return None
    known = _SIGNATURES.get(head.signature)
    if known is None:
        return None
    keys, step_offset = known
    number, _, _, level, direction, frequency = keys.header
    header = (number, head.time, head.forecast_time + step_offset, level, direction, frequency)
    return MessageKeys(keys.variable, keys.file, header, keys.grid, keys.packing)


def learn(head: Head | None, keys: MessageKeys) -> None:
    """Remember ecCodes' keys for the head's signature, if what the head says agrees with them."""
    if head is None or head.signature in _SIGNATURES:
        return
    step = keys.header[2]
    if keys.header[1] != head.time or step is None or keys.variable[VARIABLE_KEYS.index("stepUnits")] != 1:
        return
    _remember(_SIGNATURES, head.signature, (keys, step - head.forecast_time))


class Catalogue:
    """Variables met so far while reading a file's messages."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.variables: dict[tuple, Variable] = {}

    def where(self, number: int, offset: int) -> str:
        return f"{self.url}: GRIB message {number} at byte {offset}"

    def add_message(self, data: Any, number: int, offset: int, keys: MessageKeys | None = None,
                    length: int | None = None) -> None:
        """File one message under its variable.

        ``data``: the message's bytes, or a function that reads them (the
        index path, which needs them only when ecCodes must look: a packing
        or a variable not seen before); ``keys``: its keys if already read;
        ``length``: its length if ``data`` is a function.
        """
        where = self.where(number, offset)
        got: list[Any] = []

        def message() -> Any:
            if not got:
                got.append(data() if callable(data) else data)
            return got[0]

        if keys is None:
            keys = message_keys(message(), where)
        if keys.packing not in _DECODABLE:  # one message per packing is decoded: can ecCodes do it?
            try:
                decode_message(message())
            except ValueError as err:
                raise ParseError(f"{where} (packingType {keys.packing[0]!r}, data representation template "
                                 f"{keys.packing[1]!r}): {err}") from err
            _DECODABLE.add(keys.packing)
        key = keys.variable + keys.file
        variable = self.variables.get(key)
        if variable is None:
            variable = self.variables[key] = self._new_variable(message, keys, where)
        variable.fields.append(Field(number, offset, len(data) if length is None else length, keys.header))

    def _new_variable(self, message: Any, keys: MessageKeys, where: str) -> Variable:
        grid = _GRIDS.get(keys.grid) if keys.grid is not UNDEF else None
        attributes = _ATTRIBUTES.get((keys.variable, keys.grid)) if keys.grid is not UNDEF else None
        if grid is None or attributes is None:
            import eccodes

            handle = eccodes.codes_new_from_message(bytes(message()))
            try:
                if attributes is None:
                    attributes = _variable_attributes(handle, keys.variable)
                    if keys.grid is not UNDEF:
                        _remember(_ATTRIBUTES, (keys.variable, keys.grid), attributes)
                if grid is None:
                    try:
                        grid = _grid(handle)
                    except Exception as err:
                        raise ParseError(f"{where}: cannot read its grid ({attributes.get('GRIB_gridType')!r}): "
                                         f"{type(err).__name__}: {err}") from err
                    if keys.grid is not UNDEF:
                        _remember(_GRIDS, keys.grid, grid)
            finally:
                eccodes.codes_release(handle)
        type_of_level = keys.variable[VARIABLE_KEYS.index("typeOfLevel")]
        return Variable(
            name=_variable_name(attributes, keys.variable[0]),
            type_of_level=str(type_of_level) if type_of_level is not UNDEF else "level",
            file_attributes={f"GRIB_{k}": v for k, v in zip(FILE_KEYS, keys.file) if v is not UNDEF},
            attributes=dict(attributes),
            grid=grid,
            sort_key=tuple("" if v is UNDEF else str(v) for v in keys.variable + keys.file),
            attributes_key=(keys.variable, keys.grid) if keys.grid is not UNDEF else None,
        )


def _variable_attributes(handle: Any, variable_values: tuple) -> dict[str, Any]:
    """A variable's attributes from its first message, as cfgrib gives them."""
    import eccodes

    eccodes.codes_set(handle, "missingValue", float(np.finfo(np.float32).max))  # what the codec sets
    attributes = {f"GRIB_{k}": v for k, v in zip(VARIABLE_KEYS, variable_values)
                  if v is not UNDEF and v not in ("undef", "unknown")}
    grid_type = attributes.get("GRIB_gridType")
    for k in sorted(EXTRA_KEYS + GRID_KEYS.get(str(grid_type), ())):
        try:
            value = _get(handle, k)
        except Exception:
            continue
        if value is not UNDEF:
            attributes[f"GRIB_{k}"] = list(value) if isinstance(value, tuple) else value
    attributes["long_name"] = f"original GRIB paramId: {variable_values[0]}"
    attributes["units"] = "1"
    if "GRIB_cfName" in attributes:
        attributes["standard_name"] = attributes["GRIB_cfName"]
    if "GRIB_name" in attributes:
        attributes["long_name"] = attributes["GRIB_name"]
    if "GRIB_units" in attributes:
        attributes["units"] = attributes["GRIB_units"]
    return attributes


def scan_messages(opened: ObstoreFile, catalogue: Catalogue) -> int:
    """Read every message of the file (front to back, in windows) into ``catalogue``; the number of messages.

    A message whose section headers (``read_head``) have a signature
    ecCodes has read before takes its keys from that (no ecCodes call); the
    others' keys are read by ecCodes, a window's messages on a few threads
    (its calls release the GIL). The messages are filed in file order.
    """
    url, size = opened.url, opened.size
    store, path = opened.registry.resolve(url)
    window_start, window = 0, memoryview(opened.view(0, min(size, opened.block_size)))  # read when it was opened

    def read(start: int, length: int) -> memoryview:
        nonlocal window_start, window
        if start < window_start or start + length > window_start + len(window):
            want = min(max(length, SCAN_WINDOW), size - start)
            (piece,) = read_ranges(store, path, [start], [want], url=url, what="GRIB messages", coalesce=0)
            window_start, window = start, memoryview(piece)  # type: ignore[assignment]
        return memoryview(window)[start - window_start : start - window_start + length]

    batch: list[tuple[Any, int, int, Head | None, MessageKeys | None]] = []

    def flush() -> None:
        unknown = [m for m in batch if m[4] is None]
        read = dict(zip((m[1] for m in unknown),
                        read_keys([(data, catalogue.where(n, o)) for data, n, o, _, _ in unknown])))
        for data, number, offset, head, keys in batch:
            if keys is None:
                keys = read[number]
                learn(head, keys)
            catalogue.add_message(data, number, offset, keys)
        batch.clear()

    position, number = 0, 0
    while position < size:
        head = bytes(read(position, min(16, size - position)))
        if not head.startswith(GRIB_SIGNATURE):
            if not head.strip(b"\x00"):  # zero padding between or after messages
                position += len(head)
                continue
            found = _find_next(read, position, size)
            if found is None:
                if number == 0:
                    raise ParseError(f"{url}: no GRIB message found (first bytes {head[:8]!r})")
                break  # trailing bytes that are no message
            position = found
            continue
        number += 1
        where = catalogue.where(number, position)
        if len(head) < 16:
            raise ParseError(f"{where}: truncated: the file ends {size - position} bytes into the message")
        edition = head[7]
        if edition != 2:
            raise ParseError(f"{where}: GRIB edition {edition} is not supported (only GRIB2)")
        length = int.from_bytes(head[8:16], "big")
        if position + length > size:
            flush()  # the messages before it first: their errors come first
            raise ParseError(f"{where}: truncated: the message says it is {length} bytes long, the file ends "
                             f"{size - position} bytes into it (file size {size})")
        data = read(position, length)
        if bytes(data[-4:]) != b"7777":
            flush()
            raise ParseError(f"{where}: damaged: its {length} bytes do not end with '7777'")
        message_head = read_head(data)
        batch.append((data, number, position, message_head, known_keys(message_head)))
        if len(batch) >= SCAN_BATCH:
            flush()
        position += length
    flush()
    if number == 0:
        raise ParseError(f"{url}: no GRIB message found")
    return number


def _find_next(read, start: int, size: int) -> int | None:
    """Where the next ``GRIB`` signature starts at or after ``start``, None if there is none."""
    position = start
    while position < size:
        length = min(2**20, size - position)
        chunk = bytes(read(position, length))
        found = chunk.find(GRIB_SIGNATURE)
        if found >= 0:
            return position + found
        if position + length >= size:
            return None
        position += length - 3
    return None


# --------------------------------------------------------------------------- #
# index files (.idx)
# --------------------------------------------------------------------------- #
class IndexEntry(NamedTuple):
    """One line of an index file, as given: ``number:offset:d=YYYYMMDDHH:NAME:level:forecast:``."""

    number: int
    offset: int
    date: str
    name: str
    level: str
    forecast: str


def parse_index(text: str, where: str) -> list[IndexEntry]:
    """The lines of a NOAA/wgrib2 ``.idx`` file; ParseError naming the line that is not one."""
    entries = []
    for line_number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split(":")
        if len(parts) < 6 or not parts[2].startswith("d="):
            raise ParseError(f"{where}: line {line_number} is not a wgrib2 index line: {line!r}")
        try:
            number = int(parts[0].split(".")[0])  # submessages (``3.1``) share their message's offset
            offset = int(parts[1])
        except ValueError:
            raise ParseError(f"{where}: line {line_number}: message number or offset is not an integer: {line!r}") from None
        entries.append(IndexEntry(number, offset, parts[2][2:], parts[3], parts[4], parts[5]))
    if not entries:
        raise ParseError(f"{where}: the index file lists no message")
    return entries


def _one(read: Any, offset: int, length: int) -> Any:
    return read([offset], [length])[0]


def index_messages(opened: ObstoreFile, entries: Sequence[IndexEntry], catalogue: Catalogue, where: str) -> None:
    """File the messages an index lists into ``catalogue``, reading their heads, not their bodies.

    The first ``HEAD_BYTES`` of every message come in one request (ranges);
    a head whose signature ecCodes has read before gives the keys (as in the
    scan), and only the other messages are read whole, for ecCodes.
    """
    found, read = index_heads(opened, entries, where)
    file_heads(found, catalogue, read)


Found = list[tuple[int, int, int, Any]]  # (message number, offset, length, its first bytes), in file order
Reader = Callable[[list[int], list[int]], list]


def index_heads(opened: ObstoreFile, entries: Sequence[IndexEntry], where: str) -> tuple[Found, Reader]:
    """The messages an index lists (in file order) with their first ``HEAD_BYTES`` (one request), and a reader."""
    url, size = opened.url, opened.size
    offsets = sorted({e.offset for e in entries})
    ends = dict(zip(offsets, offsets[1:] + [size]))
    seen: set[int] = set()
    for entry in entries:
        if entry.offset in seen:  # submessages of one message: not expressible as one chunk each
            raise ParseError(f"{where}: message {entry.number} holds several fields (submessages); "
                             "open the file without idx=")
        seen.add(entry.offset)
        if entry.offset >= size:
            raise ParseError(f"{where}: message {entry.number} at byte {entry.offset} lies past the end of the "
                             f"file ({size} bytes)")
    store, path = opened.registry.resolve(url)

    def read(starts: list[int], lengths: list[int]) -> list:
        return read_ranges(store, path, starts, lengths, url=url, what="GRIB messages", coalesce=2**16)

    entries = sorted(entries, key=lambda e: e.offset)
    heads = read([e.offset for e in entries], [min(HEAD_BYTES, ends[e.offset] - e.offset) for e in entries])
    found = []
    for entry, head in zip(entries, heads):
        head = memoryview(head)  # (obstore's Bytes index and slice slowly)
        if bytes(head[:4]) != GRIB_SIGNATURE or len(head) < 16:
            raise ParseError(f"{_at(url, entry)} (from {where}): no GRIB message there (bytes {bytes(head[:8])!r})")
        if head[7] != 2:
            raise ParseError(f"{_at(url, entry)}: GRIB edition {head[7]} is not supported (only GRIB2)")
        length = int.from_bytes(head[8:16], "big")
        if length > ends[entry.offset] - entry.offset:
            raise ParseError(f"{_at(url, entry)}: truncated: the message says it is {length} bytes long, the next message "
                             f"or the end of the file comes {ends[entry.offset] - entry.offset} bytes after it "
                             f"(file size {size})")
        found.append((entry.number, entry.offset, length, head))
    return found, read


def _at(url: str, entry: IndexEntry) -> str:
    return f"{url}: GRIB message {entry.number} at byte {entry.offset}"


def file_heads(found: Sequence[tuple[int, int, int, Any]], catalogue: Catalogue, read: Reader) -> None:
    """File messages known by their heads (``(number, offset, length, head)``) into ``catalogue``.

    A head of a known signature gives the keys; the other messages are read
    whole (``read(starts, lengths)``, one request) for ecCodes. Messages are
    read later only where ecCodes must look at one (a packing or a variable
    not seen before in this process).
    """
    file_messages(found, message_heads(found, read), catalogue, read)


def message_heads(found: Sequence[tuple[int, int, int, Any]], read: Reader) -> list[Head | None]:
    """``read_head`` of every message of ``found``; heads shorter than their section headers are read again."""
    heads = [head for _, _, _, head in found]
    fast = [read_head(head) for head in heads]
    for _ in range(4):  # heads longer than was read (a reduced grid's list of points): read up to section 5
        short = {}
        for i, (head, message) in enumerate(zip(heads, found)):
            if fast[i] is None:
                need = head_size(head)
                if need is not None and len(head) < need <= message[2]:
                    short[i] = need
        if not short:
            break
        for i, head in zip(short, read([found[i][1] for i in short], list(short.values()))):
            heads[i], fast[i] = head, read_head(head)
    return fast


def file_messages(found: Sequence[tuple[int, int, int, Any]], fast: Sequence[Head | None], catalogue: Catalogue,
                  read: Reader) -> None:
    """``file_heads`` once the heads are read (``message_heads``)."""
    messages = [(number, offset, length, head, known_keys(head))
                for (number, offset, length, _), head in zip(found, fast)]
    unknown = [(number, o, n) for number, o, n, _, keys in messages if keys is None]
    whole = dict(zip((o for _, o, _ in unknown), read([o for _, o, _ in unknown], [n for _, _, n in unknown])))
    asked = dict(zip((o for _, o, _ in unknown), read_keys([(whole[o], catalogue.where(number, o))
                                                             for number, o, _ in unknown])))
    for number, offset, length, head, keys in messages:
        if keys is None:
            keys = asked[offset]
            learn(head, keys)
        data = whole.get(offset)
        catalogue.add_message(data if data is not None else functools.partial(_one, read, offset, length),
                              number, offset, keys, length)


def hop_messages(opened: ObstoreFile) -> list[tuple[int, int, int, Any]] | None:
    """Messages found by reading only their heads and ends, hopping from one to the next by their lengths.

    For files in this process (local disk, memory): a message longer than
    ``HOP_LENGTH`` costs one read (its ``7777`` and the next message's
    head), its body is never read; shorter ones are read in windows of
    ``HOP_WINDOW`` bytes, several messages a read. None when anything is
    not plainly message after message (padding, damage, truncation): the
    window scan then reads the file and says what is wrong.
    """
    url, size = opened.url, opened.size
    store, path = opened.registry.resolve(url)
    found: list[tuple[int, int, int, Any]] = []
    window_start, window = 0, memoryview(opened.view(0, min(size, opened.block_size)))  # read when it was opened
    position, head = 0, window[:HEAD_BYTES]
    while True:
        if len(head) < 16 or bytes(head[:4]) != GRIB_SIGNATURE or head[7] != 2:
            return None
        length = int.from_bytes(head[8:16], "big")
        end = position + length
        if length < 16 or end > size:
            return None
        start, stop = end - 4, min(size, end + HEAD_BYTES)
        if window_start <= start and stop <= window_start + len(window):
            piece = window[start - window_start : stop - window_start]
        else:  # small messages: a window of several; large ones: only the end and the next head
            want = min(size - start, stop - start if length > HOP_LENGTH else max(stop - start, HOP_WINDOW))
            window_start = start
            window = memoryview(get_range(store, path, start, want, url=url, what="GRIB message heads"))
            piece = window[: stop - start]
        if bytes(piece[:4]) != b"7777":
            return None
        found.append((len(found) + 1, position, length, head))
        if end >= size:
            return found
        position, head = end, piece[4:]


# --------------------------------------------------------------------------- #
# hypercubes -> groups
# --------------------------------------------------------------------------- #
@dataclass
class Hypercube:
    """Variables of one ``typeOfLevel`` sharing their coordinates: one group."""

    type_of_level: str
    file_attributes: dict[str, Any]
    grid: Grid
    coords: dict[str, np.ndarray]  # header dimension -> values (unsqueezed)
    variables: list[Variable]

    def accepts(self, variable: Variable, coords: dict[str, np.ndarray]) -> bool:
        """Whether cfgrib's merge (exact join, identical attributes, no clashing names) takes ``variable`` in."""
        if variable.file_attributes != self.file_attributes or not variable.grid.same_as(self.grid):
            return False
        if any(v.name == variable.name for v in self.variables):
            return False
        return all(np.array_equal(values, self.coords[name]) for name, values in coords.items() if name in self.coords)


def hypercubes(variables: Iterable[Variable]) -> list[Hypercube]:
    """Merge variables into hypercubes as ``cfgrib.open_datasets`` does, in its order."""
    ordered = sorted(variables, key=lambda v: (v.type_of_level, v.sort_key))
    cubes: list[Hypercube] = []
    for variable in ordered:
        coords = variable.coordinates()
        for cube in cubes:
            if cube.type_of_level == variable.type_of_level and cube.accepts(variable, coords):
                cube.variables.append(variable)
                cube.coords.update(coords)
                break
        else:
            cubes.append(Hypercube(variable.type_of_level, variable.file_attributes, variable.grid, dict(coords),
                                   [variable]))
    return cubes


def cube_names(cubes: Sequence[Hypercube]) -> list[str]:
    """Group names: the ``typeOfLevel``, then what tells hypercubes of one ``typeOfLevel`` apart."""
    names = [c.type_of_level for c in cubes]
    for type_of_level in set(names):
        clash = [i for i, c in enumerate(cubes) if c.type_of_level == type_of_level]
        if len(clash) < 2:
            continue
        parts = {i: _descriptors(cubes[i]) for i in clash}
        for chosen in ((0,), (1,), (2,), (0, 1), (0, 1, 2)):  # the fewest descriptors that tell them apart
            if len({tuple(parts[i][k] for k in chosen) for i in clash}) == len(clash):
                break
        for i in clash:
            names[i] = "_".join([type_of_level, *(parts[i][k] for k in chosen)])
    names = [name.replace("/", "_") for name in names]  # a level phrase of an index file may hold one
    counts: dict[str, int] = {}
    for i, name in enumerate(names):
        if names.count(name) > 1:
            counts[name] = counts.get(name, 0) + 1
            names[i] = f"{name}_{counts[name]}"
    return names


def _descriptors(cube: Hypercube) -> tuple[str, ...]:
    step_types = "+".join(sorted({str(v.attributes.get("GRIB_stepType", "")) for v in cube.variables}))
    level = cube.coords.get(cube.type_of_level)
    level_text = _number_text(level[0]) if level is not None and level.size == 1 else "levels"
    return step_types, level_text, "+".join(sorted(v.name for v in cube.variables))


def _number_text(value: Any) -> str:
    value = float(value)
    return str(int(value)) if value.is_integer() else str(value)


def _inlined_parts(values: np.ndarray, dims: tuple[str, ...], attributes: dict[str, Any]) -> tuple[Any, ChunkManifest]:
    """The metadata and manifest of a coordinate held in the manifest (little-endian bytes, one chunk)."""
    values = np.asarray(values, order="C")  # (ascontiguousarray makes a 0-d array 1-d)
    dtype = values.dtype.newbyteorder("<") if values.dtype.itemsize > 1 else values.dtype
    data = values.astype(dtype).tobytes()
    key = (dtype.str, values.shape, data, dims, repr(sorted(attributes.items())))
    made = _COORDINATES.get(key)  # a collection's files mostly share their coordinates: built once
    if made is None:
        metadata = create_array_metadata(shape=values.shape, chunk_shape=values.shape,
                                         dtype=values.dtype.newbyteorder("="), dimension_names=dims,
                                         attributes=attributes)
        made = _remember(_COORDINATES, key, (metadata, ChunkManifest.inlined_chunk(data, values.ndim)))
    return made


def _seconds_array(values: np.ndarray) -> np.ndarray:
    return values.astype("i8") if np.all(np.mod(values, 1) == 0) else values.astype("f8")


def _time_coordinates(time: np.ndarray | None, step: np.ndarray | None) -> list[tuple[str, np.ndarray, tuple]]:
    """``time`` (seconds) and ``valid_time`` (``time`` + ``step``) as stored: ``(name, values, dims)``."""
    out = []
    if time is not None:
        out.append(("time", _seconds_array(time if time.size > 1 else time.reshape(())), ("time",) * (time.size > 1)))
    if time is not None and step is not None:
        time = time if time.size > 1 else time.reshape(())
        step = step if step.size > 1 else step.reshape(())
        valid = np.add.outer(time, step * 3600) if time.ndim and step.ndim else time + step * 3600
        valid_dims = tuple(d for d, a in (("time", time), ("step", step)) if a.ndim)
        out.append(("valid_time", _seconds_array(np.asarray(valid)), valid_dims))
    return out


@dataclass
class CubeLayout:
    """One hypercube as every file of its layout has it: all but where its messages are and the reference time.

    ``arrays`` in the group's order: ``("fixed", name, (metadata, manifest))``
    for coordinates that are the same in every such file, ``("time", name,
    metadata)`` for ``time`` and ``valid_time`` (built from ``time`` and
    ``step`` below, shifted by the file's reference time), ``("variable",
    name, (metadata, chunks, messages))``: the variable's ``k``-th present
    chunk (C order, ``FileChunks``) is message ``messages[k]`` of the file
    (in file order).
    """

    arrays: list[tuple[str, str, Any]]
    attributes: dict[str, Any]
    time: np.ndarray | None  # the reference times, minus the layout's
    step: np.ndarray | None

    def __post_init__(self) -> None:
        self.timed = any(kind == "time" for kind, _, _ in self.arrays)

    def group(self, registry: ObjectStoreRegistry, table: FileTable, t0: int, drop_variables: frozenset[str],
              shared: dict) -> ManifestGroup:
        """The hypercube's group for one file: its message table (in file order) and reference time."""
        times: dict[str, tuple[np.ndarray, tuple]] = {}
        if self.timed:
            key = ("times", *((None,) if a is None else (a.dtype.str, a.shape, a.tobytes()) for a in (self.time, self.step)))
            known = shared.get(key)  # the file's hypercubes mostly share their times and steps
            if known is None:
                shifted = None if self.time is None else self.time + t0
                known = shared[key] = {name: (values, dims) for name, values, dims in
                                       _time_coordinates(shifted, self.step)}
            times = known
        arrays: dict[str, ManifestArray] = {}
        for kind, name, made in self.arrays:
            if name in drop_variables:
                continue
            if kind == "fixed":
                array = shared.get(id(made))  # hypercubes of one grid share its coordinates' arrays
                if array is None:
                    array = shared[id(made)] = ManifestArray(made[0], made[1], registry=registry)
                arrays[name] = array
            elif kind == "time":
                values, dims = times[name]
                data = values.astype(values.dtype.newbyteorder("<")).tobytes()
                array = shared.get((id(made), data))  # the file's hypercubes mostly share their times
                if array is None:
                    if values.dtype == made.data_type.to_native_dtype():
                        array = ManifestArray(made, ChunkManifest.inlined_chunk(data, values.ndim), registry=registry)
                    else:  # (not met: whole seconds stay whole when shifted)
                        array = ManifestArray(*_inlined_parts(values, dims, dict(made.attributes)), registry=registry)
                    shared[(id(made), data)] = array
                arrays[name] = array
            else:
                metadata, chunks, messages = made
                arrays[name] = ManifestArray(metadata, chunks.manifest(table, messages), registry=registry)
        return ManifestGroup(arrays=arrays, attributes=dict(self.attributes))


@dataclass
class Layout:
    """What a file's messages make, as groups to be filled with each file's message table and reference time.

    Files of one collection have one layout: the same kinds of message
    (``Head.signature``) in the same order, at the same reference times and
    forecast times relative to the file's first message. Their datasets
    differ only in where the messages are and in ``time``/``valid_time``
    (shifted): a layout met before is not worked out again.
    """

    names: list[str]
    cubes: list[CubeLayout]

    def root(self, url: str, registry: ObjectStoreRegistry, offsets: Sequence[int], lengths: Sequence[int], t0: int,
             group: str | None, drop_variables: frozenset[str]) -> ManifestGroup:
        shared: dict = {}
        table = FileTable(url, np.array(offsets, dtype=np.uint64), np.array(lengths, dtype=np.uint64))
        if group not in (None, "", "/"):
            wanted = str(group).strip("/")
            if wanted not in self.names:
                raise ParseError(f"{url}: no group {wanted!r}; the file's hypercubes are {self.names}")
            cube = self.cubes[self.names.index(wanted)]
            return cube.group(registry, table, t0, drop_variables, shared)
        if len(self.cubes) == 1:
            return self.cubes[0].group(registry, table, t0, drop_variables, shared)
        groups = {name: cube.group(registry, table, t0, drop_variables, shared)
                  for name, cube in zip(self.names, self.cubes)}
        return ManifestGroup(groups=groups, attributes={"GRIB_groups": list(self.names)})


#: Layouts worked out in this process, by ``layout_key``.
_LAYOUTS: dict[tuple, Layout] = {}


def layout_key(heads: Sequence[Head | None]) -> tuple | None:
    """What proves two files have one layout: each message's signature, time (relative) and forecast time in order.

    None if a head is not known to the fast path (``read_head`` gave None) or
    ecCodes has not (yet) vouched for its signature (``learn``).
    """
    if not heads or any(head is None or head.signature not in _SIGNATURES for head in heads):
        return None
    t0 = heads[0].time  # type: ignore[union-attr]
    return tuple((head.signature, head.time - t0, head.forecast_time) for head in heads)  # type: ignore[union-attr]


def make_layout(variables: Sequence[Variable], messages: Sequence[int], t0: int, url: str) -> Layout:
    """The layout of a file whose messages (their offsets, in file order: ``messages``) file into ``variables``."""
    try:
        cubes = hypercubes(variables)
    except ParseError as err:
        raise ParseError(f"{url}: {err}") from None
    position = {offset: i for i, offset in enumerate(messages)}
    return Layout(cube_names(cubes), [cube_layout(cube, position, t0) for cube in cubes])


def cube_layout(cube: Hypercube, position: dict[int, int], t0: int) -> CubeLayout:
    """One hypercube's ``CubeLayout``: its coordinates, then its variables (one message per chunk)."""
    dims = [name for name, values in cube.coords.items() if values.size > 1]  # length 1: squeezed
    time = cube.coords.get("time")
    time = None if time is None else time - t0
    step = cube.coords.get("step")
    timed = {name: (values, dims) for name, values, dims in _time_coordinates(cube.coords.get("time"), step)}
    arrays: list[tuple[str, str, Any]] = []
    for name, values in cube.coords.items():
        attributes = {"long_name": f"original GRIB coordinate for key: {_key_of(name, cube)}({name})", "units": "1"}
        attributes.update(COORDINATE_ATTRIBUTES.get(name, {}))
        if name == "time":
            values, coord_dims = timed["time"]
            arrays.append(("time", name, _inlined_parts(values, coord_dims, attributes)[0]))
            continue
        if name in ("number", "directionNumber", "frequencyNumber"):
            values = values.astype("i8")
        else:
            values = values.astype("f8")
        arrays.append(("fixed", name, _inlined_parts(values if values.size > 1 else values.reshape(()),
                                                     (name,) if values.size > 1 else (), attributes)))
    if "valid_time" in timed:
        values, coord_dims = timed["valid_time"]
        arrays.append(("time", "valid_time", _inlined_parts(values, coord_dims,
                                                            dict(COORDINATE_ATTRIBUTES["valid_time"]))[0]))
    for name, (coord_dims, values, attributes) in cube.grid.coords.items():
        arrays.append(("fixed", name, _inlined_parts(values, coord_dims, dict(attributes))))
    coordinates = [name for _, name, _ in arrays]
    for variable in cube.variables:
        arrays.append(("variable", variable.name, _variable_layout(variable, cube, dims, coordinates, position)))
    attributes = dict(cube.file_attributes)
    attributes["Conventions"] = "CF-1.7"
    if "GRIB_centreDescription" in attributes:
        attributes["institution"] = attributes["GRIB_centreDescription"]
    return CubeLayout(arrays, attributes, time, step)


def _key_of(name: str, cube: Hypercube) -> str:
    return "level" if name == cube.type_of_level else name


def _variable_layout(variable: Variable, cube: Hypercube, dims: list[str], coordinates: list[str],
                     position: dict[int, int]) -> tuple[Any, FileChunks, np.ndarray]:
    """A variable's metadata, its chunk grid's present chunks, and which message each present chunk is (C order)."""
    positions = []  # per header dimension of the cube: (index into Field.header, value -> position)
    for name in dims:
        key = HEADER_DIMS.index(_key_of(name, cube))
        positions.append((key, {v: i for i, v in enumerate(cube.coords[name].tolist())}))
    grid = tuple(len(cube.coords[name]) for name in dims)
    chunk_grid = grid + (1,) * len(cube.grid.dims)
    present = np.zeros(chunk_grid, dtype=bool)
    chunks, messages = [], []
    tail = (0,) * len(cube.grid.dims)
    for f in variable.fields:
        index = tuple(lookup[f.header[key]] for key, lookup in positions) + tail
        if not present[index]:  # the first of duplicate messages, as cfgrib
            present[index] = True
            chunks.append(int(np.ravel_multi_index(index, chunk_grid)) if index else 0)
            messages.append(position[f.offset])
    attributes = dict(variable.attributes)
    attributes["coordinates"] = " ".join(c for c in coordinates if c not in dims and c not in cube.grid.dims)
    described = variable.attributes_key if variable.attributes_key is not None else repr(attributes)
    metadata_key = (grid, cube.grid.shape, tuple(dims), cube.grid.dims, described, attributes["coordinates"])
    metadata = _METADATA.get(metadata_key)  # the same variable in the next file: the same metadata
    if metadata is None:
        metadata = _remember(_METADATA, metadata_key, create_array_metadata(
            shape=grid + cube.grid.shape, chunk_shape=(1,) * len(grid) + cube.grid.shape, dtype="float32",
            codecs=[GribCodec()], fill_value=float("nan"), dimension_names=(*dims, *cube.grid.dims),
            attributes=attributes,
        ))
    in_c_order = np.argsort(np.array(chunks, dtype=np.intp), kind="stable")
    return metadata, FileChunks(present), np.array(messages, dtype=np.intp)[in_c_order]


# --------------------------------------------------------------------------- #
# the parser
# --------------------------------------------------------------------------- #
class GRIBParser(Parser):
    """Parse a GRIB2 file into a ManifestStore: one chunk per message, cfgrib's variables and hypercubes.

    Needs ``eccodes`` (the ``grib`` extra). When the file holds several
    hypercubes (as ``cfgrib.open_datasets`` splits them), each is a group
    named by its ``typeOfLevel`` (then by what tells hypercubes of one
    ``typeOfLevel`` apart: ``stepType``, the level, the variable names, e.g.
    ``heightAboveGround_2``); the root then holds no variables and lists the
    groups in its ``GRIB_groups`` attribute. One hypercube is the root.

    Parameters
    ----------
    inline, group, drop_variables
        As for every parser (``group``: one hypercube's name).
    idx : bool or str
        ``True`` reads the wgrib2/NOAA index file ``<url>.idx`` (a string:
        that index's url) instead of scanning the messages: one request for
        the index, one (ranges) for the first ``HEAD_BYTES`` of every
        message it lists, none for message bodies. The index gives each
        message's offset; its head gives its length and section headers,
        read as the scan reads them, so the dataset is the scan's (cfgrib's
        names: ``t``, ``t2m``, not wgrib2's ``TMP``, which the index alone
        cannot map: one wgrib2 name is several ecCodes parameters by level,
        and the names depend on the centre's tables). A head of a kind
        ecCodes has not read before in this process costs one more request
        for that whole message (the first file of a collection).
    """

    def __init__(self, *, inline: InlinePolicy | None = None, group: str | None = None,
                 drop_variables: Iterable[str] | None = None, idx: bool | str = False) -> None:
        super().__init__(inline=inline, group=group, drop_variables=drop_variables)
        self.idx = idx

    def __repr__(self) -> str:
        return f"GRIBParser(inline={self.inline!r}, group={self.group!r}, idx={self.idx!r})"

    @classmethod
    def guess_can_open(cls, head: bytes, url: str) -> bool:
        return head[:4] == GRIB_SIGNATURE and len(head) >= 8 and head[7] in (1, 2)

    def __call__(self, url: str, registry: ObjectStoreRegistry) -> ManifestStore:
        try:
            import eccodes  # noqa: F401
        except ImportError as err:
            raise ImportError("reading GRIB files needs eccodes: pip install 'vzdask[grib]'") from err
        in_process = not self.idx and is_in_process(registry.resolve(url)[0])
        # a scan of a local file reads it in windows: the first one comes with opening it (one request less)
        opened = self._open(url, registry, **({"block_size": HOP_WINDOW} if in_process else {}))
        if not opened.size:
            raise ParseError(f"{url}: empty file; nothing to virtualize")
        found: Found | None = None
        if self.idx:
            index_url = self.idx if isinstance(self.idx, str) else url + ".idx"
            found, read = self._index(opened, index_url, registry)
        elif in_process:
            found = hop_messages(opened)
            store, path = registry.resolve(url)

            def read(starts: list[int], lengths: list[int]) -> list:
                return read_ranges(store, path, starts, lengths, url=url, what="GRIB messages", coalesce=0)
        catalogue = Catalogue(url)
        if found is None:  # other stores (or anything but message after message): read in windows
            scan_messages(opened, catalogue)
            table = {f.offset: f.length for v in catalogue.variables.values() for f in v.fields}
            offsets = sorted(table)
            lengths = [table[offset] for offset in offsets]
            layout: Layout | None = make_layout(list(catalogue.variables.values()), offsets, 0, url)
            t0 = 0
        else:
            offsets = [offset for _, offset, _, _ in found]
            lengths = [length for _, _, length, _ in found]
            heads = message_heads(found, read)
            t0 = heads[0].time if heads and heads[0] is not None else 0
            key = layout_key(heads)
            layout = _LAYOUTS.get(key) if key is not None else None
            if layout is None:
                file_messages(found, heads, catalogue, read)
                layout = make_layout(list(catalogue.variables.values()), offsets, t0, url)
                key = layout_key(heads)  # ecCodes has vouched for the signatures it read since
                if key is not None:
                    _remember(_LAYOUTS, key, layout)
        assert layout is not None
        root = layout.root(url, registry, offsets, lengths, t0, self.group, self.drop_variables)
        return finish(root, registry, self.inline)

    def _index(self, opened: ObstoreFile, index_url: str, registry: ObjectStoreRegistry) -> tuple[Found, Reader]:
        from vzdask.object_io import get

        store, path = registry.resolve(index_url)
        text = bytes(get(store, path, url=index_url)).decode("ascii", errors="replace")
        return index_heads(opened, parse_index(text, index_url), index_url)


__all__ = ["GRIB_SIGNATURE", "GRIBParser", "Layout", "clear_caches", "file_heads", "file_messages", "head_size",
           "hop_messages", "index_heads", "index_messages", "known_keys", "layout_key", "learn", "make_layout",
           "message_heads", "message_keys", "parse_index", "read_head", "scan_messages"]
