"""vzdask.zarr_v2: zarr v2 ``.zarray``/``.zattrs`` <-> zarr v3 metadata, checked by zarr-python decoding both.

Every round trip starts from an array zarr-python wrote in format 2 (some
chunks never written, so the fill value is read too) and checks three
things: zarr's v3 pipeline decodes the v2 chunk files with ``v2_to_v3``'s
metadata, ``v3_to_v2`` gives back the same documents, and zarr's v2 pipeline
decodes the chunk files with those documents.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numcodecs
import numpy as np
import pytest
import zarr
import zarr.codecs as zc
from zarr.core.buffer import default_buffer_prototype
from zarr.storage import LocalStore

from vzdask.manifests.metadata import create_array_metadata, decode_cf_fill_value, replace_metadata
from vzdask.parsers.common import ParseError
from vzdask.zarr_v2 import DIMENSION_KEY, v2_to_v3, v3_to_v2

RNG = np.random.default_rng(11)


# --------------------------------------------------------------------------- #
# helpers
# --------------------------------------------------------------------------- #
def values_for(dtype: np.dtype | str, shape: tuple[int, ...]) -> np.ndarray:
    dtype = np.dtype(dtype)
    n = math.prod(shape)
    if dtype.kind == "b":
        values = RNG.random(n) > 0.5
    elif dtype.kind == "c":
        values = RNG.random(n) + 1j * RNG.random(n)
    elif dtype.kind in "iu":
        values = RNG.integers(1, 100, n)
    elif dtype.kind == "f":
        values = np.round(RNG.random(n) * 100, 2)
    elif dtype.kind in "UTO":
        values = np.array([f"s{i}" * (i % 3 + 1) for i in range(n)], dtype=object)
    elif dtype.kind == "S":
        values = np.array([f"b{i % 10}".encode() for i in range(n)])
    elif dtype.kind == "M":
        values = np.datetime64("2001-01-01", "s") + RNG.integers(0, 10**6, n).astype("m8[s]")
    else:
        raise AssertionError(dtype)
    return values.astype(dtype).reshape(shape)


def write_v2(root: Path, dtype, shape, chunks, *, dims=None, **kwargs) -> np.ndarray:
    """A zarr v2 array written by zarr-python, its first chunk row only (the rest missing); returns what zarr reads."""
    attributes = {DIMENSION_KEY: dims if dims is not None else [f"d{i}" for i in range(len(shape))], "units": "m"}
    array = zarr.create_array(LocalStore(root), shape=shape, chunks=chunks, dtype=dtype, zarr_format=2,
                              attributes=attributes, **kwargs)
    data = values_for(array.dtype if dtype is not str else object, shape)
    if shape:
        array[: chunks[0]] = data[: chunks[0]]
    else:
        array[()] = data[()]
    return zarr.open_array(LocalStore(root), zarr_format=2, mode="r")[...]


def documents(root: Path) -> tuple[dict, dict]:
    return json.loads((root / ".zarray").read_text()), json.loads((root / ".zattrs").read_text())


def read_v3(metadata, chunks_from: Path, separator: str, to: Path) -> np.ndarray:
    """Decode the chunk files of a v2 array with v3 ``metadata`` (v2 chunk keys), through zarr's v3 pipeline."""
    shutil.copytree(chunks_from, to, ignore=shutil.ignore_patterns(".z*"))
    document = json.loads(metadata.to_buffer_dict(default_buffer_prototype())["zarr.json"].to_bytes())
    document["chunk_key_encoding"] = {"name": "v2", "configuration": {"separator": separator}}
    (to / "zarr.json").write_text(json.dumps(document))
    return zarr.open_array(LocalStore(to), zarr_format=3, mode="r")[...]


def read_v2(zarray: dict, zattrs: dict, chunks_from: Path, to: Path) -> np.ndarray:
    """Decode the chunk files with these v2 documents, through zarr's v2 pipeline."""
    shutil.copytree(chunks_from, to, ignore=shutil.ignore_patterns(".z*"))
    (to / ".zarray").write_text(json.dumps(zarray))
    (to / ".zattrs").write_text(json.dumps(zattrs))
    return zarr.open_array(LocalStore(to), zarr_format=2, mode="r")[...]


def assert_same_values(actual: np.ndarray, expected: np.ndarray) -> None:
    assert actual.shape == expected.shape
    if expected.dtype.kind in "OT":
        assert actual.astype(object).tolist() == expected.astype(object).tolist()
    else:
        np.testing.assert_array_equal(actual, expected)  # NaN == NaN here


# --------------------------------------------------------------------------- #
# round trips: dtype x codecs x fill value x layout
# --------------------------------------------------------------------------- #
ROUND_TRIPS = {
    "f8-zlib-nan": ("<f8", (7, 9), (3, 4), {"compressors": numcodecs.Zlib(level=2), "fill_value": np.nan}),
    "f4-zstd-inf": ("<f4", (7, 9), (3, 4), {"compressors": numcodecs.Zstd(level=3), "fill_value": np.inf}),
    "f4-minus-inf": ("<f4", (7,), (3,), {"compressors": None, "fill_value": -np.inf}),
    "f8-null": ("<f8", (5, 4), (2, 4), {"compressors": numcodecs.GZip(level=4), "fill_value": None}),
    "i2-blosc-shuffle": ("<i2", (7, 9), (3, 4), {
        "compressors": numcodecs.Blosc(cname="zstd", clevel=3, shuffle=numcodecs.Blosc.SHUFFLE), "fill_value": -999}),
    "u4-blosc-bitshuffle": ("<u4", (6,), (4,), {
        "compressors": numcodecs.Blosc(cname="lz4", clevel=1, shuffle=numcodecs.Blosc.BITSHUFFLE), "fill_value": 7}),
    "u1-blosc-noshuffle": ("|u1", (6,), (4,), {
        "compressors": numcodecs.Blosc(cname="lz4", shuffle=numcodecs.Blosc.NOSHUFFLE), "fill_value": 255}),
    "big-endian-f4": (">f4", (7, 9), (3, 4), {"compressors": numcodecs.Zlib(), "fill_value": 1.5}),
    "big-endian-delta-i4": (">i4", (7, 9), (3, 4), {
        "filters": [numcodecs.Delta(dtype=">i4")], "compressors": numcodecs.Zstd(level=1), "fill_value": -1}),
    "big-endian-scaleoffset-f8": (">f8", (8,), (3,), {
        "filters": [numcodecs.FixedScaleOffset(offset=1, scale=100, dtype=">f8", astype=">i4")],
        "compressors": None, "fill_value": 0.5}),
    "shuffle-filter-lz4-f8": ("<f8", (7, 9), (3, 4), {
        "filters": [numcodecs.Shuffle(elementsize=8)], "compressors": numcodecs.LZ4(), "fill_value": 0.0}),
    "order-F-3d": ("<i8", (5, 4, 3), (2, 3, 2), {"order": "F", "compressors": numcodecs.Zlib(), "fill_value": 3}),
    "order-F-delta": ("<i4", (5, 4), (2, 3), {
        "order": "F", "filters": [numcodecs.Delta(dtype="<i4")], "compressors": numcodecs.BZ2(), "fill_value": 0}),
    "slash-separator": ("<f8", (5, 4), (2, 3), {
        "chunk_key_encoding": {"name": "v2", "separator": "/"}, "compressors": None, "fill_value": -2.5}),
    "c8-lzma": ("<c8", (5,), (2,), {"compressors": numcodecs.LZMA(), "fill_value": 1 + 2j}),
    "bool-false": ("|b1", (5, 4), (2, 4), {"compressors": numcodecs.GZip(), "fill_value": False}),
    "fixed-unicode": ("<U4", (5,), (2,), {"compressors": numcodecs.Zlib(), "fill_value": ""}),
    "vlen-utf8": (str, (5,), (2,), {"compressors": numcodecs.Zlib(), "fill_value": None}),
    "scalar": ("<f4", (), (), {"compressors": None, "fill_value": 9.5}),
}
@pytest.mark.parametrize("case", sorted(ROUND_TRIPS))
def test_round_trip_decodes_the_same_chunks(case, tmp_path):
    dtype, shape, chunks, kwargs = ROUND_TRIPS[case]
    source = tmp_path / "v2"
    expected = write_v2(source, dtype, shape, chunks, **kwargs)
    assert len([p for p in source.rglob("*") if p.is_file() and not p.name.startswith(".z")]) >= 1
    zarray, zattrs = documents(source)

    metadata = v2_to_v3(zarray, zattrs, where=f"variable {case!r}")
    assert metadata.shape == shape and metadata.dimension_names == tuple(zattrs[DIMENSION_KEY])
    assert metadata.attributes["units"] == "m" and DIMENSION_KEY not in metadata.attributes
    assert metadata.data_type.to_native_dtype().byteorder in "=|<"  # v3: native order, the bytes codec has the endian
    separator = zarray["dimension_separator"]
    assert_same_values(read_v3(metadata, source, separator, tmp_path / "as_v3"), expected)

    missing = bool(shape) and shape[0] > chunks[0]  # only the first chunk row was written
    back, back_attrs = v3_to_v2(metadata, name=case, missing_chunks=missing, dimension_separator=separator)
    assert back == zarray
    assert back_attrs == zattrs
    assert_same_values(read_v2(back, back_attrs, source, tmp_path / "back_to_v2"), expected)


def test_big_endian_filter_without_astype(tmp_path):
    """Without ``astype`` zarr's v3 pipeline hands the filter a native array: its dtype must be native too."""
    source = tmp_path / "v2"
    expected = write_v2(source, ">i4", (9,), (4,), filters=[numcodecs.Delta(dtype=">i4")], compressors=None)
    zarray, zattrs = documents(source)
    zarray["filters"] = [{"id": "delta", "dtype": ">i4"}]  # astype defaults to dtype
    (source / ".zarray").write_text(json.dumps(zarray))
    assert_same_values(zarr.open_array(LocalStore(source), zarr_format=2, mode="r")[...], expected)
    metadata = v2_to_v3(zarray, zattrs, where="d")
    assert metadata.codecs[0].to_dict() == {"name": "numcodecs.delta", "configuration": {"dtype": "<i4"}}
    assert_same_values(read_v3(metadata, source, ".", tmp_path / "as_v3"), expected)
    back, back_attrs = v3_to_v2(metadata, name="d", missing_chunks=True)
    assert back == {**zarray, "filters": [{"id": "delta", "dtype": ">i4", "astype": ">i4"}]} and back_attrs == zattrs


def test_fill_value_becomes_the_cf_fill_value_attribute():
    def convert(dtype, fill, **zattrs):
        zarray = {"zarr_format": 2, "shape": [4], "chunks": [2], "dtype": dtype, "fill_value": fill, "order": "C",
                  "filters": None, "compressor": None}
        return v2_to_v3(zarray, zattrs, where="v")

    def cf_fill(metadata):  # the attribute as xarray decodes it (v3 attributes hold floats as base64)
        return decode_cf_fill_value(dict(metadata.attributes), metadata.data_type.to_native_dtype()).get("_FillValue")

    nan = convert("<f4", "NaN")
    assert np.isnan(nan.fill_value) and isinstance(nan.attributes["_FillValue"], str) and np.isnan(cf_fill(nan))
    assert cf_fill(convert("<f8", "-Infinity")) == -np.inf
    assert convert("<i2", -999.0).attributes["_FillValue"] == -999  # an integral float is an integer fill value
    assert convert("|b1", False).attributes["_FillValue"] is False
    assert convert("<U2", "ab").attributes["_FillValue"] == "ab"
    assert "_FillValue" not in convert("|S2", "YWI=").attributes  # bytes: the fill value only
    assert convert("|S2", "YWI=").fill_value == b"ab"  # base64 in v2 JSON
    assert "_FillValue" not in convert("<f8", None).attributes
    assert cf_fill(convert("<c8", [1.0, 2.0])) == 1 + 2j
    # a _FillValue attribute wins over fill_value, and a JSON "NaN" in it is the number
    kept = convert("<f4", 0.0, _FillValue="NaN")
    assert kept.fill_value == 0.0 and np.isnan(cf_fill(kept))
    assert convert("<i2", 0, _FillValue=-1).attributes["_FillValue"] == -1
    assert convert("<U2", "", _FillValue="zz").attributes["_FillValue"] == "zz"
    big = convert(">f8", -9999.0)
    assert big.fill_value == -9999.0 and cf_fill(big) == -9999.0 and big.data_type.to_native_dtype() == np.dtype("<f8")


def test_defaults_for_missing_keys_and_empty_axes():
    minimal = v2_to_v3({"shape": [0, 5], "chunks": [0, 2], "dtype": "<i4"}, where="v")
    assert minimal.shape == (0, 5) and minimal.chunk_grid.chunk_shape == (1, 2)  # chunks=-1 on an empty axis wrote 0
    assert [c.to_dict()["name"] for c in minimal.codecs] == ["bytes"] and minimal.fill_value == 0
    assert minimal.dimension_names is None and dict(minimal.attributes) == {}


def test_native_zarr_v3_codecs_where_they_exist():
    def codecs(compressor, dtype="<f8"):
        zarray = {"zarr_format": 2, "shape": [4], "chunks": [2], "dtype": dtype, "fill_value": None, "order": "C",
                  "filters": None, "compressor": compressor}
        return [c.to_dict() for c in v2_to_v3(zarray, where="v").codecs][1:]

    assert codecs({"id": "gzip", "level": 3}) == [{"name": "gzip", "configuration": {"level": 3}}]
    assert codecs({"id": "zstd", "level": 2, "checksum": True}) == [
        {"name": "zstd", "configuration": {"level": 2, "checksum": True}}]
    blosc = {"id": "blosc", "cname": "lz4", "clevel": 5, "shuffle": -1, "blocksize": 0}  # AUTOSHUFFLE
    assert codecs(blosc)[0]["configuration"]["shuffle"] == "shuffle"
    assert codecs(blosc, dtype="|u1")[0]["configuration"] == {
        "typesize": 1, "cname": "lz4", "clevel": 5, "shuffle": "bitshuffle", "blocksize": 0}
    assert codecs({"id": "zlib", "level": 1}) == [{"name": "numcodecs.zlib", "configuration": {"level": 1}}]


# --------------------------------------------------------------------------- #
# v2 -> v3 errors: ParseError naming the variable and the problem
# --------------------------------------------------------------------------- #
def _zarray(**changes) -> dict:
    return {"zarr_format": 2, "shape": [4, 6], "chunks": [2, 3], "dtype": "<f8", "fill_value": None, "order": "C",
            "filters": None, "compressor": None, "dimension_separator": ".", **changes}


@pytest.mark.parametrize(
    ("changes", "zattrs", "message"),
    [
        ({"compressor": {"id": "no-such-codec", "level": 1}}, {}, r"codec 'no-such-codec' \(compressor\) is unknown"),
        ({"filters": [{"id": "mystery-filter"}]}, {}, r"codec 'mystery-filter' \(filter\) is unknown"),
        ({"filters": [{"level": 1}]}, {}, r"codec \{'level': 1\} in \.zarray is not a numcodecs config"),
        ({"compressor": {"id": "blosc", "cname": "nope"}}, {}, r"codec 'blosc' \(compressor\) configuration .* invalid"),
        ({"filters": [{"id": "zlib"}, {"id": "delta", "dtype": "<f8"}]}, {},
         r"array filter 'delta' after a bytes codec cannot be expressed"),
        ({"dtype": "|O"}, {}, r"object dtype with codecs \[\]: only 'vlen-utf8'"),
        ({"dtype": "|O", "filters": [{"id": "vlen-bytes"}]}, {}, r"object dtype with codecs \['vlen-bytes'\]"),
        ({"filters": [{"id": "vlen-utf8"}]}, {}, r"object codec 'vlen-utf8' on dtype '<f8'"),
        ({"dtype": "<x9"}, {}, r"\.zarray dtype '<x9' is not a supported numpy dtype"),
        ({"dtype": "<i2", "fill_value": 40000}, {}, r"fill_value 40000 is not valid for dtype int16"),
        ({"dtype": "<i2", "fill_value": 1.5}, {}, r"fill_value 1\.5 is not valid for dtype int16"),
        ({}, {"_FillValue": [1, 2]}, r"_FillValue attribute \[1, 2\] is not valid for dtype float64"),
        ({}, {DIMENSION_KEY: ["y"]}, r"_ARRAY_DIMENSIONS \['y'\] does not name the array's 2 dimension"),
        ({}, {DIMENSION_KEY: ["y", 1]}, r"_ARRAY_DIMENSIONS \['y', 1\] does not name"),
        ({"zarr_format": 3}, {}, r"\.zarray has zarr_format 3, expected 2"),
        ({"order": "K"}, {}, r"\.zarray order 'K' is neither 'C' nor 'F'"),
        ({"dimension_separator": "-"}, {}, r"\.zarray dimension_separator '-' is neither"),
        ({"chunks": [2]}, {}, r"\.zarray shape \[4, 6\] and chunks \[2\] do not match"),
        ({"shape": "big"}, {}, r"\.zarray has no valid 'shape' and 'chunks'"),
    ],
)
def test_v2_to_v3_errors_name_the_variable(changes, zattrs, message):
    with pytest.raises(ParseError, match=rf"^refs\.json: variable 'temp': {message}"):
        v2_to_v3(_zarray(**changes), zattrs, where="refs.json: variable 'temp'")


# --------------------------------------------------------------------------- #
# v3 -> v2 errors: ValueError naming the variable and the codec
# --------------------------------------------------------------------------- #
def _v3(codecs, shape=(4, 6, 2), chunks=(2, 3, 2), dtype="<i4", **kwargs):
    return create_array_metadata(shape=shape, chunk_shape=chunks, dtype=dtype, codecs=codecs,
                                 dimension_names=[f"d{i}" for i in range(len(shape))], **kwargs)


@pytest.mark.parametrize(
    ("codecs", "message"),
    [
        ([zc.ShardingCodec(chunk_shape=(1, 3, 2))], r"codec 'sharding_indexed' has no zarr v2 equivalent"),
        ([zc.TransposeCodec(order=(1, 0, 2)), zc.BytesCodec()], r"codec 'transpose' with order \[1, 0, 2\]"),
        ([zc.Delta(dtype="<i4"), zc.TransposeCodec(order=(2, 1, 0)), zc.BytesCodec()],
         r"codec 'transpose' with order \[2, 1, 0\] has no zarr v2 equivalent \(only a full reversal"),
    ],
)
def test_v3_to_v2_refuses_codecs_without_v2_form(codecs, message):
    with pytest.raises(ValueError, match=rf"variable 'grid/temp': {message}"):
        v3_to_v2(_v3(codecs), name="grid/temp")


def test_v3_to_v2_other_errors():
    metadata = _v3([zc.BytesCodec()])
    with pytest.raises(ValueError, match=r"dimension_separator must be '\.' or '/', not '-'"):
        v3_to_v2(metadata, name="t", dimension_separator="-")
    with pytest.raises(ValueError, match=r"variable 't': dimension names \('a', None, 'c'\) do not name every axis"):
        v3_to_v2(replace_metadata(metadata, dimension_names=("a", None, "c")), name="t")
    with pytest.raises(ValueError, match=r"variable 't': _FillValue 1e\+20 does not fit dtype int32"):
        v3_to_v2(metadata, name="t", attributes={"_FillValue": 1e20})
    with pytest.raises(TypeError, match=r"variable 't' attribute 'bad': complex value"):
        v3_to_v2(metadata, name="t", attributes={"bad": 1 + 2j})


def test_v3_to_v2_big_endian_filters_use_the_stored_byte_order():
    """A v3 filter's dtype is native; in v2 filters see the stored (here big-endian) bytes."""
    metadata = _v3([zc.Delta(dtype="<i4"), zc.BytesCodec(endian="big"), zc.ZstdCodec(level=1)], shape=(6,), chunks=(3,))
    zarray, _ = v3_to_v2(metadata, name="d")
    assert zarray["dtype"] == ">i4" and zarray["filters"] == [{"id": "delta", "dtype": ">i4", "astype": ">i4"}]
    assert zarray["compressor"] == {"id": "zstd", "level": 1}
    # and back: the v3 filter is native again (numcodecs spelled out its astype)
    again = [c.to_dict() for c in v2_to_v3(zarray, where="d").codecs]
    assert again[0] == {"name": "numcodecs.delta", "configuration": {"dtype": "<i4", "astype": "<i4"}}
    assert again[1:] == [c.to_dict() for c in metadata.codecs[1:]]
