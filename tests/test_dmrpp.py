"""DMRPPParser: OPeNDAP's own DMR++ documents against HDFParser and h5py reading the files they describe.

The documents in tests/fixtures/dmrpp are real ``get_dmrpp`` output (see the
README there); the hand-written ones below cover what those do not
(``dmrpp:missingdata``, fixed-length string arrays, missing chunks, errors).
"""

from __future__ import annotations

import base64
import shutil
import warnings
import zlib
from pathlib import Path

import h5py
import numpy as np
import pytest

from vzdask.errors import UnsupportedVariableWarning
from vzdask.parsers import DMRPPParser, HDFParser, ParseError, detect_parser
from vzdask.parsers.dmrpp import resolve_href
from vzdask.registry import ObjectStoreRegistry
from vzdask.xarray import open_virtual_dataset

FIXTURES = Path(__file__).parent / "fixtures" / "dmrpp"
DOCUMENTS = sorted(p.name for p in FIXTURES.glob("*.dmrpp"))
REGISTRY = ObjectStoreRegistry()

#: Documents of variables zarr cannot hold, or whose values the document does not hold: the variable and the
#: words of the error.
UNSUPPORTED = {
    "chunked_scalar_string.h5.dmrpp": ("/scalar_big_string", "neither the values of this string variable"),
    "chunked_string_array.h5.dmrpp": ("/string_array", "neither the values of this string variable"),
    "comp_scalar_be.h5.dmrpp": ("/comp_scalar_be", "big-endian compound"),
    "compound_array_fix_vlen_str.h5.dmrpp": ("/DSC_array", "compound field 'year' is array of String"),
    "compound_high_comp_one_chunk.h5.dmrpp": ("/DSC_memb_array", "compound field 'Temperature' is array of Int64"),
    "compound_high_comp_two_chunks.h5.dmrpp": ("/DSC_memb_array", "compound field 'Temperature' is array of Int64"),
    "compound_high_comp_two_chunks_naligned.h5.dmrpp": ("/comp_array", "compound field 'c_name' is array of Float32"),
    "compound_low_comp_one_chunk_naligned_lc.h5.dmrpp": ("/comp_array", "'c_name' is array of Float32"),
    "compound_low_comp_two_chunks_lc.h5.dmrpp": ("/DSC_memb_array", "'Temperature' is array of Float32"),
    "compound_one_chunk.h5.dmrpp": ("/DSC_memb_array", "'Temperature' is array of Int64"),
    "compound_one_chunk_lc.h5.dmrpp": ("/comp_array", "'c_name' is array of Float32"),
    "compound_one_chunk_naligned_lc.h5.dmrpp": ("/comp_array", "'c_name' is array of Float32"),
    "compound_simple_array_fix_str.h5.dmrpp": ("/DSC", "compound field 'year' is String"),
    "compound_simple_array_fix_str_only.h5.dmrpp": ("/DSC", "compound field 'year' is String"),
    "compound_simple_scalar_memb_array.h5.dmrpp": ("/DSC_scalar_base_array", "'Temperature' is array of Float32"),
    "compound_simple_scalar_vlen_str.h5.dmrpp": ("/DSC_scalar", "compound field 'year' is String"),
    "compound_two_chunks.h5.dmrpp": ("/DSC_memb_array", "'Temperature' is array of Int64"),
    "compound_two_chunks_naligned.h5.dmrpp": ("/comp_array", "'c_name' is array of Float32"),
    "compound_two_chunks_naligned_lc.h5.dmrpp": ("/comp_array", "'c_name' is array of Float32"),
    "grid_1_2d.h5.dmrpp": ("/HDFEOS_INFORMATION/StructMetadata_0", "neither the values of this string variable"),
}
#: Published pairs whose document does not describe the file beside it (tested on their own below).
MISMATCHED = {"FletcherShuffle.nc4.dmrpp", "grid_1_2d.h5.dmrpp"}


def url(name: str) -> str:
    return (FIXTURES / name).as_uri()


def arrays(store) -> dict:
    return {"/" + path: array for path, array in store.group.walk_arrays()}


def assert_same_as_hdf(name: str, dmr, hdf, dropped=()) -> None:
    """The document's virtual dataset equals HDFParser's but where the document says less (module docstring)."""
    ours, theirs = arrays(dmr), arrays(hdf)
    assert set(ours) == set(theirs) - set(dropped)
    document = (FIXTURES / name).read_text("latin-1")
    for path, a in ours.items():
        b = theirs[path]
        ma, mb = a.metadata.to_dict(), b.metadata.to_dict()
        for key in ("shape", "data_type", "chunk_grid", "dimension_names", "chunk_key_encoding"):
            assert ma[key] == mb[key], (path, key)
        assert a.manifest == b.manifest, path  # the same byte ranges in the same file, or the same inlined bytes
        codecs_a, codecs_b = list(ma["codecs"]), list(mb["codecs"])
        if "deflateLevel" not in document and "deflate_level" not in document:  # zlib levels do not matter for decoding; older documents omit them
            codecs_b = [{**c, "configuration": {"level": 4}} if c["name"] == "numcodecs.zlib" else c for c in codecs_b]
        assert codecs_a == codecs_b, path
        if "fillValue" in document or ma["fill_value"] != mb["fill_value"] and "_FillValue" in ma["attributes"]:
            assert ma["fill_value"] == mb["fill_value"], path
        attrs_a, attrs_b = ma.get("attributes", {}), mb.get("attributes", {})
        assert attrs_a == {k: attrs_b[k] for k in attrs_a}, path  # the document's attributes are the file's
    assert dmr.group.attributes == {k: hdf.group.attributes[k] for k in dmr.group.attributes}


def assert_values_equal_h5py(name: str, store) -> None:
    with h5py.File(FIXTURES / name.removesuffix(".dmrpp")) as f:
        for path, array in arrays(store).items():
            got = array.compute()
            expected = np.asarray(f[path][()])
            if got.dtype.kind == "U":
                expected = np.asarray(expected, dtype=object).astype(bytes).astype(str)
            elif got.dtype.names is not None:
                expected = np.array(expected.tolist(), dtype=got.dtype).reshape(expected.shape)
            else:
                expected = expected.astype(got.dtype)
            np.testing.assert_array_equal(got, expected, err_msg=f"{name}: {path}")


@pytest.mark.parametrize("name", DOCUMENTS)
def test_every_published_document(name):
    """Each of OPeNDAP's documents: HDFParser's virtual dataset and h5py's values, or a clear error naming the variable."""
    document = url(name)
    if name in UNSUPPORTED:
        variable, words = UNSUPPORTED[name]
        with pytest.raises(ParseError, match=f"(?s)cannot be virtualized.*'{variable}': .*{words}"):
            DMRPPParser()(document, REGISTRY)
        with pytest.warns(UnsupportedVariableWarning, match=variable):
            store = DMRPPParser(on_unsupported="warn")(document, REGISTRY)
        assert variable not in arrays(store)
        if name in MISMATCHED:
            return
        try:
            hdf = HDFParser()(url(name.removesuffix(".dmrpp")), REGISTRY)
        except ParseError:  # HDFParser refuses the same variable
            hdf = HDFParser(on_unsupported="warn")
            with pytest.warns(UnsupportedVariableWarning, match=variable):
                hdf = hdf(url(name.removesuffix(".dmrpp")), REGISTRY)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert_same_as_hdf(name, store, hdf, dropped=[variable])
            assert_values_equal_h5py(name, store)
        return
    if name in MISMATCHED:
        assert_another_build(name)
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zarr's warning about fixed-size bytes (netCDF char)
        store = DMRPPParser()(document, REGISTRY)
        hdf = HDFParser()(url(name.removesuffix(".dmrpp")), REGISTRY)
        assert_same_as_hdf(name, store, hdf)
        assert_values_equal_h5py(name, store)


def assert_another_build(name: str) -> None:
    """FletcherShuffle.nc4.dmrpp describes another build of its file: every offset 40 bytes off, checksums fail."""
    assert name == "FletcherShuffle.nc4.dmrpp"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = arrays(DMRPPParser()(url(name), REGISTRY))
        theirs = arrays(HDFParser()(url("FletcherShuffle.nc4"), REGISTRY))
    assert set(ours) == set(theirs)
    for path in ours:
        (a,), (b,) = ours[path].manifest.dict().values(), theirs[path].manifest.dict().values()
        assert b["offset"] - a["offset"] == 40 and a["length"] == b["length"], path
    with pytest.raises(Exception, match="fletcher32 checksum"):
        ours["/Y"].compute()


def test_cf_renamed_document():
    """grid_1_2d.h5.dmrpp: names as the HDF5 handler's CF option made them; values the file's at the original path."""
    with pytest.warns(UnsupportedVariableWarning, match="StructMetadata_0"):
        store = DMRPPParser(on_unsupported="warn")(url("grid_1_2d.h5.dmrpp"), REGISTRY)
    found = arrays(store)
    temperature = found["/HDFEOS/GRIDS/GeoGrid/Data_Fields/temperature"]
    assert temperature.metadata.dimension_names == ("YDim", "XDim")
    with h5py.File(FIXTURES / "grid_1_2d.h5") as f:
        np.testing.assert_array_equal(temperature.compute(), f["HDFEOS/GRIDS/GeoGrid/Data Fields/temperature"][()])
    # two chunks name their own file (a chunk-level href), resolved beside the data file
    assert found["/HDFEOS/GRIDS/GeoGrid/YDim"].manifest.dict()["0"]["path"] == url("grid_1_2d.h5_mvs.h5")


def test_detection_and_open_virtual_dataset(tmp_path):
    """A ``.dmrpp`` url, or any url whose head names the DMR++ namespace, is parsed by DMRPPParser."""
    assert isinstance(detect_parser(url("chunked_twoD.h5.dmrpp"), REGISTRY), DMRPPParser)
    renamed = tmp_path / "sidecar.xml"
    shutil.copy(FIXTURES / "chunked_twoD.h5.dmrpp", renamed)
    assert DMRPPParser.guess_can_open(renamed.read_bytes()[:4096], renamed.as_uri())
    assert isinstance(detect_parser(renamed.as_uri(), REGISTRY), DMRPPParser)
    ds = open_virtual_dataset(str(FIXTURES / "nc4_group_atomic.h5.dmrpp"), group="g1")
    assert ds["d2"].dims == ("dim1", "dim2")
    with h5py.File(FIXTURES / "nc4_group_atomic.h5") as f:
        np.testing.assert_array_equal(ds["d2"].data.compute(), f["g1/d2"][()])
    ds = open_virtual_dataset(str(FIXTURES / "chunked_shufzip_threeD.h5.dmrpp"))
    with h5py.File(FIXTURES / "chunked_shufzip_threeD.h5") as f:
        np.testing.assert_array_equal(ds["d_8_shufzip_chunks"].data.compute(), f["d_8_shufzip_chunks"][()])


def test_open_virtual_mfdataset_over_sidecars(tmp_path):
    from vzdask.mfdataset import open_virtual_mfdataset

    paths = []
    for i in range(3):  # three granules of one "collection", each with its sidecar beside it
        shutil.copy(FIXTURES / "chunked_oneD.h5", tmp_path / f"g{i}.h5")
        shutil.copy(FIXTURES / "chunked_oneD.h5.dmrpp", tmp_path / f"g{i}.h5.dmrpp")
        paths.append(str(tmp_path / f"g{i}.h5.dmrpp"))
    ds = open_virtual_mfdataset(paths, combine="nested", concat_dim="phony_dim_0")
    assert ds["d_4_chunks"].shape == (120000,)
    refs = ds["d_4_chunks"].data.manifest.dict()
    assert refs["4"]["path"] == (tmp_path / "g1.h5").as_uri()
    with h5py.File(FIXTURES / "chunked_oneD.h5") as f:
        np.testing.assert_array_equal(ds["d_4_chunks"].data.compute(), np.tile(f["d_4_chunks"][()], 3))


def test_href_resolution():
    """A url with a scheme is used as it is; placeholders and paths resolve to the file beside the document."""
    assert resolve_href("s3://bucket/granule.h5", "file:///x/granule.h5.dmrpp") == "s3://bucket/granule.h5"
    assert resolve_href("OPeNDAP_DMRpp_DATA_ACCESS_URL", "s3://b/k/g.h5.dmrpp") == "s3://b/k/g.h5"
    assert resolve_href("data/dmrpp/g.h5", "https://h/p/g.h5.dmrpp") == "https://h/p/g.h5"
    assert resolve_href("data/dmrpp/g.h5", "file:///p/doc.xml") == "file:///p/g.h5"
    with pytest.raises(ParseError, match="names no data file"):
        resolve_href(None, "file:///p/doc.xml")
    store = DMRPPParser(data_url="s3://bucket/elsewhere.h5")(url("chunked_twoD.h5.dmrpp"), REGISTRY)
    assert {r["path"] for r in store.group["d_4_chunks"].manifest.dict().values()} == {"s3://bucket/elsewhere.h5"}


HEAD = ('<?xml version="1.0" encoding="ISO-8859-1"?>\n<Dataset xmlns="http://xml.opendap.org/ns/DAP/4.0#" '
        'xmlns:dmrpp="http://xml.opendap.org/dap/dmrpp/1.0.0#" dapVersion="4.0" dmrVersion="1.0" name="made.h5" '
        'dmrpp:href="{href}">\n')


def write_document(tmp_path, body: str, href: str = "made.h5") -> str:
    path = tmp_path / "made.h5.dmrpp"
    path.write_text(HEAD.format(href=href) + body + "</Dataset>\n", encoding="latin-1")
    return path.as_uri()


def test_handmade_features(tmp_path):
    """Missing data, fixed-length strings, big-endian values, missing chunks, groups=, no data file read."""
    values = np.arange(6, dtype=">i4").reshape(2, 3)
    strings = np.array([b"ab", b"cdef", b""], dtype="S4")
    with h5py.File(tmp_path / "made.h5", "w") as f:
        f.create_dataset("be", data=values)
        f.create_dataset("fixed", data=strings)
        f.create_dataset("sparse", shape=(4,), chunks=(2,), dtype="<f8", fillvalue=-1.0)[2:] = [5.0, 6.0]
    with h5py.File(tmp_path / "made.h5") as f:
        be_offset = f["be"].id.get_offset()
        fixed_offset = f["fixed"].id.get_offset()
        info = f["sparse"].id.get_chunk_info(0)
    missing = base64.b64encode(zlib.compress(np.array([1.5, 2.5], "<f4").tobytes())).decode()
    body = f"""
    <Dimension name="x" size="3"/>
    <Int32 name="be"><Dim size="2"/><Dim name="/x"/>
        <Attribute name="scale" type="Float32"><Value>0.5</Value></Attribute>
        <Attribute name="flags" type="Int16"><Value>1</Value><Value>2</Value></Attribute>
        <dmrpp:chunks fillValue="-7" byteOrder="BE"><dmrpp:chunk offset="{be_offset}" nBytes="24"/></dmrpp:chunks>
    </Int32>
    <String name="fixed"><Dim name="/x"/>
        <dmrpp:FixedLengthStringArray string_length="4" pad="null_pad"/>
        <dmrpp:chunks><dmrpp:chunk offset="{fixed_offset}" nBytes="12"/></dmrpp:chunks>
    </String>
    <Float64 name="sparse"><Dim size="4"/>
        <dmrpp:chunks fillValue="-1" byteOrder="LE"><dmrpp:chunkDimensionSizes>2</dmrpp:chunkDimensionSizes>
        <dmrpp:chunk offset="{info.byte_offset}" nBytes="{info.size}" chunkPositionInArray="[2]"/></dmrpp:chunks>
    </Float64>
    <Group name="sub"><Float32 name="filled"><Dim size="2"/>
        <dmrpp:chunks fillValue="0" byteOrder="LE"/>
        <dmrpp:missingdata>{missing}</dmrpp:missingdata>
    </Float32></Group>
    <Attribute name="title" type="String"><Value>made</Value></Attribute>
    <Attribute name="build_dmrpp_metadata" type="Container">
        <Attribute name="bes" type="String"><Value>3.21</Value></Attribute></Attribute>
    <Attribute name="nested" type="Container">
        <Attribute name="n" type="UInt8"><Value>7</Value></Attribute></Attribute>
"""
    document = write_document(tmp_path, body)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zarr's warning about fixed-size bytes
        store = DMRPPParser()(document, REGISTRY)
        group = store.group
        assert group.attributes == {"title": "made", "nested": {"n": 7}}
        be = group["be"]
        # numbered after the document's one dimension, the subgroup's first (phony_dim_1), as netCDF-C does
        assert be.metadata.dimension_names == ("phony_dim_2", "x")
        assert group["sub"]["filled"].metadata.dimension_names == ("phony_dim_1",)
        assert be.metadata.fill_value == -7 and be.metadata.attributes == {"scale": 0.5, "flags": [1, 2]}
        np.testing.assert_array_equal(be.compute(), values)
        np.testing.assert_array_equal(group["fixed"].compute(), strings)
        assert group["sparse"].manifest.count() == {"virtual": 1, "inlined": 0, "missing": 1}
        np.testing.assert_array_equal(group["sparse"].compute(), [-1.0, -1.0, 5.0, 6.0])
        filled = group["sub"]["filled"]
        assert filled.manifest.count() == {"virtual": 0, "inlined": 1, "missing": 0}
        np.testing.assert_array_equal(filled.compute(), [1.5, 2.5])
        sub = DMRPPParser(group="sub")(document, REGISTRY).group
        assert list(sub.arrays) == ["filled"]
        (tmp_path / "made.h5").unlink()  # the data file is never read while parsing
        assert DMRPPParser(drop_variables=["fixed"])(document, REGISTRY).group.arrays.keys() == {"be", "sparse"}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('<Int32 name="v"><Dim name="/nowhere"/><dmrpp:chunks/></Int32>', "dimension '/nowhere' is declared nowhere"),
        ('<Int32 name="v"><Dim size="4"/><dmrpp:chunks compressionType="szip"><dmrpp:chunk offset="1" nBytes="2"/>'
         "</dmrpp:chunks></Int32>", "compression 'szip' has no zarr codec"),
        ('<Opaque name="v"/>', "DAP4 type Opaque"),
        ('<Int32 name="v"><Dim size="4"/><dmrpp:chunks><dmrpp:chunkDimensionSizes>2</dmrpp:chunkDimensionSizes>'
         '<dmrpp:chunk offset="1" nBytes="8" chunkPositionInArray="[6]"/></dmrpp:chunks></Int32>',
         "outside the chunk grid"),
        ('<Enum name="v" enum="/Nope"><dmrpp:chunks/></Enum>', "enumeration '/Nope' is declared nowhere"),
        ('<Int16 name="v"><Dim size="2"/><dmrpp:compact>AAA=</dmrpp:compact></Int16>', "holds 2 bytes of values"),
    ],
)
def test_bad_variables_are_named(tmp_path, body, message):
    document = write_document(tmp_path, body)
    with pytest.raises(ParseError, match=f"(?s)'/v': .*{message}"):
        DMRPPParser()(document, REGISTRY)


def test_bad_documents(tmp_path):
    bad = tmp_path / "bad.dmrpp"
    bad.write_text("<Dataset")
    with pytest.raises(ParseError, match="not a DMR.. document .XML error"):
        DMRPPParser()(bad.as_uri(), REGISTRY)
    bad.write_text("<root/>")
    with pytest.raises(ParseError, match="root element 'root', expected DAP4 Dataset"):
        DMRPPParser()(bad.as_uri(), REGISTRY)
    bad.write_text("")
    with pytest.raises(ParseError, match="empty file"):
        DMRPPParser()(bad.as_uri(), REGISTRY)
    with pytest.raises(FileNotFoundError, match=r"cannot open .*/missing.h5.dmrpp: not found"):
        DMRPPParser()((tmp_path / "missing.h5.dmrpp").as_uri(), REGISTRY)
    with pytest.raises(ParseError, match="no group 'nope'"):
        DMRPPParser(group="nope")(url("chunked_twoD.h5.dmrpp"), REGISTRY)
    with pytest.raises(ValueError, match="on_unsupported must be one of"):
        DMRPPParser(on_unsupported="ignore")


def test_strings_the_document_holds_equal_hdf_parser(tmp_path):
    """``dmrpp:vlsa`` (repeats, a packed deflated value) and compact fixed-length strings: HDFParser's ``<U`` arrays."""
    long = "x" * 400
    words = ["Bannana", "bread", "is", "so", "so", "so", long]
    with h5py.File(tmp_path / "made.h5", "w") as f:
        f.create_dataset("vl", data=np.array(words, dtype=object), dtype=h5py.string_dtype())
    packed = base64.b64encode(zlib.compress(long.encode())).decode()
    fixed = base64.b64encode(b"ab\0\0cdef").decode()
    body = f"""<String name="vl"><Dim size="7"/><dmrpp:vlsa><v>Bannana</v><v>bread</v><v>is</v><v c="3">so</v>
        <v s="400">{packed}</v></dmrpp:vlsa></String>
    <String name="fixed"><Dim size="2"/><dmrpp:FixedLengthStringArray string_length="4" pad="null_pad"/>
        <dmrpp:compact>{fixed}</dmrpp:compact></String>
    """
    document = write_document(tmp_path, body)
    group = DMRPPParser()(document, REGISTRY).group
    hdf = HDFParser()((tmp_path / "made.h5").as_uri(), REGISTRY).group
    assert group["vl"].metadata == hdf["vl"].metadata and group["vl"].manifest == hdf["vl"].manifest
    assert list(group["vl"].compute()) == words
    assert list(group["fixed"].compute()) == ["ab", "cdef"] and group["fixed"].metadata.dtype.to_native_dtype() == "<U4"


@pytest.mark.parametrize(
    ("chunk", "message"),
    [
        ('<dmrpp:chunk offset="1" nBytes="16" fm="2"/>', "skipped some filters .filter mask fm=2."),
        ('<dmrpp:block offset="1" nBytes="8"/><dmrpp:block offset="20" nBytes="8"/>', "linked blocks"),
    ],
)
def test_chunks_zarr_cannot_read(tmp_path, chunk, message):
    document = write_document(tmp_path, f'<Int32 name="v"><Dim size="4"/><dmrpp:chunks>{chunk}</dmrpp:chunks></Int32>')
    with pytest.raises(ParseError, match=f"(?s)'/v': .*{message}"):
        DMRPPParser()(document, REGISTRY)


def test_deflate_level_spellings(tmp_path):
    for spelling in ("deflateLevel", "deflate_level"):
        body = (f'<Int32 name="v"><Dim size="4"/><dmrpp:chunks compressionType="deflate" {spelling}="7">'
                '<dmrpp:chunk offset="1" nBytes="8"/></dmrpp:chunks></Int32>')
        codecs = DMRPPParser()(write_document(tmp_path, body), REGISTRY).group["v"].metadata.to_dict()["codecs"]
        assert codecs[-1] == {"name": "numcodecs.zlib", "configuration": {"level": 7}}


def test_relative_and_hidden_dimension_names(tmp_path):
    """Dims named relative to their group resolve upwards; an ancestor's dimension hidden by a nearer one is named by path."""
    body = """<Dimension name="x" size="2"/><Dimension name="t" size="3"/>
    <Group name="g"><Dimension name="x" size="4"/>
        <Int32 name="v"><Dim name="t"/><Dim name="/x"/><Dim name="x"/><dmrpp:chunks/></Int32></Group>
    """
    v = DMRPPParser()(write_document(tmp_path, body), REGISTRY).group["g"]["v"]
    assert v.shape == (3, 2, 4) and v.metadata.dimension_names == ("t", "/x", "x")


def test_one_request_for_the_document(tmp_path, monkeypatch):
    """A document is read in one plain ranged request (past 1 MiB: a head and the rest), its data file not at all."""
    import obstore

    big = tmp_path / "big.h5.dmrpp"  # the 3-D document with a comment making it larger than its first read
    text = (FIXTURES / "chunked_shufzip_threeD.h5.dmrpp").read_text("latin-1")
    big.write_text(text.replace("</Dataset>", "<!--" + "x" * 2**20 + "--></Dataset>"), encoding="latin-1")
    calls: list = []
    for name in ("get", "get_range", "get_ranges", "head"):
        real = getattr(obstore, name)
        monkeypatch.setattr(obstore, name, lambda *a, _real=real, _name=name, **k: calls.append((_name, a[1])) or
                            _real(*a, **k))
    DMRPPParser()(url("chunked_shufzip_threeD.h5.dmrpp"), REGISTRY)
    assert [(name, path.rsplit("/", 1)[-1]) for name, path in calls] == [("get_range",
                                                                        "chunked_shufzip_threeD.h5.dmrpp")]
    calls.clear()
    store = DMRPPParser(data_url=url("chunked_shufzip_threeD.h5"))(big.as_uri(), REGISTRY)
    assert [(name, path.rsplit("/", 1)[-1]) for name, path in calls] == [
        ("get_range", "big.h5.dmrpp"), ("head", "big.h5.dmrpp"), ("get_range", "big.h5.dmrpp")]
    assert store.group["d_8_shufzip_chunks"].manifest.count()["virtual"] == 128


@pytest.mark.filterwarnings("ignore:.*does not have a Zarr V3 specification")
@pytest.mark.parametrize("name", ["chunked_shufzip_threeD.h5.dmrpp", "test32v3.nc4.dmrpp", "nc4_unlimited_0.h5.dmrpp"])
def test_chunk_lists_read_ahead_equal_elementtree(name, monkeypatch):
    """Long plain chunk lists are read ahead of ElementTree (``_parse``); the store is the same as ElementTree's."""
    from vzdask.parsers import dmrpp

    fast = DMRPPParser()(url(name), REGISTRY)
    monkeypatch.setattr(dmrpp, "_MANY", 10**9)  # every list to ElementTree
    slow = DMRPPParser()(url(name), REGISTRY)
    assert arrays(fast).keys() == arrays(slow).keys()
    for path, array in arrays(fast).items():
        assert array.metadata == arrays(slow)[path].metadata and array.manifest == arrays(slow)[path].manifest, path


def _ten_chunks(tmp_path, chunk=lambda i: f'<dmrpp:chunk offset="{100 + 8 * i}" nBytes="8" '
                f'chunkPositionInArray="[{2 * i}]"/>', between=""):
    pieces = between.join(chunk(i) for i in range(10))
    body = (f'<Int32 name="v"><Dim size="20"/><dmrpp:chunks><dmrpp:chunkDimensionSizes>2</dmrpp:chunkDimensionSizes>'
            f'{pieces}</dmrpp:chunks></Int32>')
    return DMRPPParser()(write_document(tmp_path, body), REGISTRY).group["v"]


def test_chunk_lists_not_plain_go_to_elementtree(tmp_path):
    """Lists the read-ahead does not take (other spellings, attributes, comments) give the same manifest."""
    plain = _ten_chunks(tmp_path)
    assert plain.manifest.count()["virtual"] == 10
    assert plain.manifest.dict()["9"] == {"path": plain.manifest.dict()["0"]["path"], "offset": 172, "length": 8}
    variants = [
        {"chunk": lambda i: f'<dmrpp:chunk chunkPositionInArray="[{2 * i}]" offset="{100 + 8 * i}" nBytes="8"/>'},
        {"chunk": lambda i: f"<dmrpp:chunk offset='{100 + 8 * i}' nBytes='8' chunkPositionInArray='[{2 * i}]'/>"},
        {"chunk": lambda i: f'<dmrpp:chunk offset="{100 + 8 * i}" nBytes="8" chunkPositionInArray="[ {2 * i} ]" '
                            f'fm="0"/>'},
        {"between": "<!-- a comment -->\n"},
        {"chunk": lambda i: f'<dmrpp:chunk offset="{100 + 8 * i}" nBytes="8" chunkPositionInArray="[{2 * i}]">'
                            "</dmrpp:chunk>"},
    ]
    for variant in variants:
        assert _ten_chunks(tmp_path, **variant).manifest == plain.manifest, variant
    with pytest.raises(ParseError, match=r"'/v': chunk position \[20\] lies outside the chunk grid \(10,\)"):
        _ten_chunks(tmp_path, chunk=lambda i: f'<dmrpp:chunk offset="{100 + 8 * i}" nBytes="8" '
                    f'chunkPositionInArray="[{4 * i + 4}]"/>')


def test_chunk_list_layouts_read_ahead_equal_elementtree(tmp_path, monkeypatch):
    """Each way a long plain list is read ahead (one form and separator: two passes; any other layout: split) and
    placed (every chunk in grid order: as the grid; out of order or some missing: by position) equals ElementTree's."""
    from vzdask.parsers import dmrpp

    def chunk(i, position=None):
        return (f'<dmrpp:chunk offset="{100 + 8 * i}" nBytes="8" '
                f'chunkPositionInArray="[{2 * i if position is None else position}]"/>')

    readers: list[str] = []
    for name in ("_uniform_chunks", "_split_chunks"):
        real = getattr(dmrpp, name)
        monkeypatch.setattr(dmrpp, name, lambda *a, _real=real, _name=name: readers.append(_name) or _real(*a))
    layouts = {  # name: (the chunk elements, the reader whose result is used)
        "one separator": ("\n      ".join(chunk(i) for i in range(10)), "_uniform_chunks"),
        "uneven separators": ("".join(chunk(i) + " " * (i % 3) for i in range(10)), "_split_chunks"),
        "out of order": ("\n".join(chunk(i, 2 * (9 - i)) for i in range(10)), "_uniform_chunks"),
        "some missing": ("\n".join(chunk(i) for i in range(0, 10, 2)) + "\n" + "\n".join(
            chunk(i) for i in range(10, 14)), "_uniform_chunks"),
    }
    for label, (pieces, reader) in layouts.items():
        body = (f'<Int32 name="v"><Dim size="{20 if label != "some missing" else 28}"/><dmrpp:chunks>'
                f'<dmrpp:chunkDimensionSizes>2</dmrpp:chunkDimensionSizes>\n{pieces}\n</dmrpp:chunks></Int32>')
        document = write_document(tmp_path, body)
        readers.clear()
        fast = DMRPPParser()(document, REGISTRY).group["v"]
        assert readers[-1] == reader, label
        monkeypatch.setattr(dmrpp, "_MANY", 10**9)  # every list to ElementTree
        slow = DMRPPParser()(document, REGISTRY).group["v"]
        monkeypatch.setattr(dmrpp, "_MANY", 8)
        assert fast.manifest == slow.manifest and fast.metadata == slow.metadata, label
    assert fast.manifest.count() == {"virtual": 9, "inlined": 0, "missing": 5}
    assert fast.manifest.dict()["12"] == {"path": fast.manifest.dict()["0"]["path"], "offset": 196, "length": 8}


def test_metadata_shared_by_files_of_one_spec(tmp_path):
    """Files whose variable has the same spec share its (frozen) metadata; any difference gives its own."""
    def variable(tmp, attribute: str, fill: str = "0"):
        tmp.mkdir()
        body = (f'<Float32 name="v"><Dim size="4"/><Attribute name="a" type="Float32"><Value>{attribute}</Value>'
                f'</Attribute><dmrpp:chunks fillValue="{fill}"><dmrpp:chunk offset="10" nBytes="16"/></dmrpp:chunks>'
                "</Float32>")
        return DMRPPParser()(write_document(tmp, body), REGISTRY).group["v"]

    first, second = variable(tmp_path / "1", "1.5"), variable(tmp_path / "2", "1.5")
    assert first.metadata is second.metadata and first.manifest != second.manifest  # each file's own data url
    other = variable(tmp_path / "3", "2.5")
    assert other.metadata is not first.metadata and other.metadata.attributes == {"a": 2.5}
    negative = variable(tmp_path / "4", "1.5", fill="-0.0")  # equal to 0.0 in Python, but not the same fill value
    assert negative.metadata is not first.metadata and np.signbit(negative.metadata.fill_value)
    assert not np.signbit(first.metadata.fill_value)


def test_chunk_lists_read_ahead_under_another_prefix(tmp_path):
    """The read-ahead finds the DMR++ namespace by its prefix, whatever the document calls it."""
    name = "chunked_shufzip_threeD.h5.dmrpp"
    text = (FIXTURES / name).read_text("latin-1").replace("dmrpp:", "pp:").replace("xmlns:dmrpp=", "xmlns:pp=")
    renamed = tmp_path / name
    renamed.write_text(text, encoding="latin-1")
    ours = DMRPPParser(data_url=url(name.removesuffix(".dmrpp")))(renamed.as_uri(), REGISTRY)
    published = DMRPPParser()(url(name), REGISTRY)
    for path, array in arrays(published).items():
        assert arrays(ours)[path].manifest == array.manifest and arrays(ours)[path].metadata == array.metadata
