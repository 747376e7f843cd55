"""A corpus of awkward netCDF-4/HDF5/netCDF-3 files: each variable reads exactly, or is refused by name (issue 18).

Every case is one line of ``CASES``: a writer (netCDF4-python, h5py or
scipy, run inside the test) and the expected outcome:

* ``VALUES``: every variable of the file (of ``group``) equals what netCDF-C
  gives, through xarray's netCDF4 backend: the virtual variables computed
  raw equal ``xr.open_dataset(engine="netcdf4", decode_cf=False)`` (values,
  dtypes, dims), and CF-decoded (``xr.decode_cf`` of them, and the same
  variables loaded with ``loadable_variables``) equal
  ``xr.open_dataset(engine="netcdf4")``;
* ``refused(variable, words)``: a ``ParseError`` whose message names the
  file and the variable (and contains ``words``), and the other variables
  open with ``on_unsupported="warn"`` and read as above.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import shutil

import h5py
import netCDF4
import numpy as np
import pytest
import scipy.io
import xarray as xr

from vzdask import open_virtual_dataset
from vzdask.errors import ParseError, UnsupportedVariableWarning


@dataclass(frozen=True)
class Refused:
    variable: str
    words: str


VALUES = None


@dataclass(frozen=True)
class RawDims:
    """For files xarray's netCDF4 backend cannot read: these dims, and raw values equal to h5py's."""

    dims: tuple[tuple[str, tuple[str, ...]], ...]


def refused(variable: str, words: str = "") -> Refused:
    return Refused(variable, words)


# --------------------------------------------------------------------------- #
# writers
# --------------------------------------------------------------------------- #


def scalar_vlen_string(p):
    with netCDF4.Dataset(p, "w") as nc:
        nc.createVariable("s", str, ())[...] = "hello"
        nc.createVariable("x", "f4", ())[...] = 1.5


def scalar_char(p):
    with netCDF4.Dataset(p, "w") as nc:
        nc.createVariable("c", "S1", ())[...] = "h"


def scalar_fixed_string_h5py(p):
    with h5py.File(p, "w") as f:
        f["fs"] = np.bytes_(b"hello")
        f.create_dataset("vs", data="scalar", dtype=h5py.string_dtype())


def zero_records(p):
    with netCDF4.Dataset(p, "w") as nc:
        nc.createDimension("t", None)
        nc.createDimension("x", 3)
        nc.createVariable("v", "f4", ("t", "x"))
        nc.createVariable("x", "f4", ("x",))[:] = [1, 2, 3]


def zero_length_dimension(p):
    with netCDF4.Dataset(p, "w") as nc:
        nc.createDimension("z", 0)
        nc.createVariable("e", "f4", ("z",))
        nc.createVariable("es", str, ("z",))
        nc.createVariable("ec", "S1", ("z",))


def zero_length_h5py(p):
    with h5py.File(p, "w") as f:
        f.create_dataset("contiguous", shape=(0, 4), dtype="f8")
        f.create_dataset("chunked", shape=(0,), maxshape=(None,), dtype="i4", chunks=(10,))


def unlimited_uneven(p):
    """Two record variables of different lengths: the shorter one reads as fill past its end."""
    with netCDF4.Dataset(p, "w") as nc:
        nc.createDimension("t", None)
        nc.createVariable("a", "f4", ("t",))[:] = [1, 2, 3, 4]
        nc.createVariable("b", "i2", ("t",))[:2] = [5, 6]
        s = nc.createVariable("s", str, ("t",))
        s[0] = "one"


def string_variables(p):
    with netCDF4.Dataset(p, "w") as nc:
        nc.createDimension("n", 3)
        v = nc.createVariable("vs", str, ("n",))
        v[0], v[1], v[2] = "a", "", "ccc"
        u = nc.createVariable("unicode", str, ("n",))
        u[0], u[1], u[2] = "é", "日本", "x"


def strings_unwritten(p):
    """2-D strings with unwritten chunks (HDF5 cannot read their fill from a read-only file) and a string fill value."""
    with netCDF4.Dataset(p, "w") as nc:
        nc.createDimension("t", None)
        nc.createDimension("x", 2)
        s = nc.createVariable("s2", str, ("t", "x"), chunksizes=(2, 1))
        s[0, 0] = "a"
        s[2, 1] = "zz"
        u = nc.createVariable("sf", str, ("x",), fill_value="none")
        u[0] = "q"


def string_h5py(p):
    with h5py.File(p, "w") as f:
        f["fixed"] = np.array([b"ab", b"cde"], "S3")
        f.create_dataset("vlen", data=np.array(["x", "yy"], dtype=h5py.string_dtype()))
        f.create_dataset("chunked", data=np.array(["p", "qq", "rrr"] * 5, dtype=h5py.string_dtype()), chunks=(4,))


def char_arrays(p):
    with netCDF4.Dataset(p, "w") as nc:
        nc.createDimension("n", 3)
        nc.createDimension("nchar", 5)
        v = nc.createVariable("c", "S1", ("n", "nchar"))
        v[:] = netCDF4.stringtochar(np.array(["ab", "cde", ""], "S5"))
        z = nc.createVariable("zipped", "S1", ("n", "nchar"), zlib=True)
        z[:] = netCDF4.stringtochar(np.array(["fghij", "k", "lm"], "S5"))


def _chars(words: list[str], width: int) -> np.ndarray:
    """UTF-8 text as a (len(words), width) char array."""
    return np.array([w.encode("utf-8") for w in words], f"S{width}").view("S1").reshape(len(words), width)


def char_utf8(p):
    with netCDF4.Dataset(p, "w") as nc:
        nc.createDimension("n", 3)
        nc.createDimension("nchar", 6)
        v = nc.createVariable("u", "S1", ("n", "nchar"))
        v.set_auto_chartostring(False)
        v._Encoding = "utf-8"
        v[:] = _chars(["é", "日本", "ab"], 6)
        w = nc.createVariable("ascii", "S1", ("n", "nchar"))
        w.set_auto_chartostring(False)
        w._Encoding = "ascii"
        w[:] = _chars(["x", "yz", ""], 6)


def chars_with_fill(p):
    """Char arrays with a _FillValue and unwritten records; a scalar string in a group."""
    with netCDF4.Dataset(p, "w") as nc:
        nc.createDimension("t", None)
        nc.createDimension("n", 3)
        c = nc.createVariable("c", "S1", ("t", "n"), fill_value=b"x", chunksizes=(1, 3))
        c[0] = _chars(["ab"], 3)[0]
        c[2] = _chars(["q"], 3)[0]
        nc.createVariable("d", "S1", ("t",))[:3] = np.array([b"a", b"", b"c"])
        nc.createGroup("g").createVariable("s", str, ())[...] = "in group"


def netcdf3_chars_with_fill(p):
    with netCDF4.Dataset(p, "w", format="NETCDF3_CLASSIC") as nc:
        nc.createDimension("t", None)
        nc.createDimension("n", 3)
        c = nc.createVariable("c", "S1", ("t", "n"), fill_value=b"x")
        c.set_auto_chartostring(False)
        c._Encoding = "utf-8"
        c[0] = _chars(["é"], 3)[0]
        c[2] = _chars(["q"], 3)[0]


def netcdf3_chars(p):
    with scipy.io.netcdf_file(p, "w") as nc:
        nc.createDimension("n", 2)
        nc.createDimension("nchar", 4)
        v = nc.createVariable("c", "c", ("n", "nchar"))
        v[:] = np.array([list(b"ab\x00\x00"), list(b"wxyz")], "u1").view("S1")
        nc.createVariable("v", "f4", ("n",))[:] = [1, 2]


def phony_square(p):
    with h5py.File(p, "w") as f:
        f["d"] = np.arange(100.0).reshape(10, 10)


def phony_shared(p):
    """Axes of one length share a phony dimension across datasets, numbered as netCDF-C numbers them."""
    with h5py.File(p, "w") as f:
        f["d"] = np.zeros((10, 10))
        f["e"] = np.arange(300).reshape(10, 3, 10)
        f["a"] = np.arange(3.0)
        g = f.create_group("g")
        g["x"] = np.arange(10)
        g["y"] = np.ones((5, 5), "i2")
        f["z"] = np.arange(5.0)
        f.create_dataset("u", data=np.ones((2, 10)), maxshape=(None, 10))


def phony_creation_order(p):
    with h5py.File(p, "w", track_order=True) as f:
        f["z"] = np.arange(5.0)
        f["d"] = np.zeros((10, 5))
        f.create_group("g")["x"] = np.arange(10)


def phony_beside_netcdf_dimensions(p):
    """Real dimensions come first: a phony axis takes a real dimension of its length, numbers start after them."""
    with netCDF4.Dataset(p, "w") as nc:
        nc.createDimension("x", 10)
        nc.createVariable("x", "f4", ("x",))[:] = np.arange(10)
        nc.createVariable("v", "f4", ("x",))[:] = np.arange(10) * 2
    with h5py.File(p, "a") as f:
        f["q"] = np.arange(40.0).reshape(10, 4)
        f.create_group("h")["r"] = np.arange(40.0).reshape(4, 10)


def nul_padded_name(p):
    """A netCDF-3 name whose length counts a NUL byte of its padding: netCDF-C reads it up to the NUL."""
    with scipy.io.netcdf_file(p, "w") as nc:
        nc.createDimension("x", 3)
        v = nc.createVariable("yy", "f4", ("x",))
        v[:] = [1, 2, 3]
        v.units = "m"
    data = Path(p).read_bytes()
    name = b"\x00\x00\x00\x02yy\x00\x00"
    assert data.count(name) == 1
    Path(p).write_bytes(data.replace(name, b"\x00\x00\x00\x03yy\x00\x00"))


def named_like_its_dimension(p):
    """``float y(x, y)``: netCDF-C stores it as ``_nc4_non_coord_y`` and shows it as ``y``."""
    with netCDF4.Dataset(p, "w") as nc:
        nc.createDimension("x", 2)
        nc.createDimension("y", 3)
        nc.createVariable("y", "f4", ("x", "y"))[:] = np.arange(6.0).reshape(2, 3)
        nc.createVariable("x", "f4", ("x",))[:] = [5, 6]


INHERITED_CDL = """netcdf inherited {
dimensions:
  dim = 2 ;
variables:
  int v0(dim) ;
data:
  v0 = 1, 2 ;
group: g2 {
  dimensions:
    dim = 3 ;
  variables:
    short v1(/dim) ;
    short v2(dim) ;
  data:
    v1 = 7, 8 ;
    v2 = 4, 5, 6 ;
  group: g3 {
    dimensions:
      dim = 4 ;
    variables:
      float var2(/dim, /g2/dim, dim) ;
    data:
      var2 = 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23 ;
  }
}
}
"""


def inherited_dimensions(p):
    """``float var2(/dim, /g2/dim, dim)``: three dimensions named ``dim``, from three groups.

    Made once by netCDF-C's ncgen from ``INHERITED_CDL`` (tests/fixtures/README.md says how); netCDF4-python
    cannot write it. The fixture must stay what the CDL says.
    """
    fixture = Path(__file__).parent / "fixtures" / "inherited_dimensions.nc"
    assert (fixture.parent / "inherited_dimensions.cdl").read_text() == INHERITED_CDL.lstrip()
    shutil.copy(fixture, p)


def time_with_utc_offset(p):
    with netCDF4.Dataset(p, "w") as nc:
        nc.createDimension("t", 2)
        t = nc.createVariable("t", "f8", ("t",))
        t.units = "days since 1964-03-12 12:09:00 -9:00"
        t[:] = [0, 1]
        w = nc.createVariable("w", "f8", ("t",))
        w.units = "hours since 2000-01-01 00:00:00 +05:30"
        w[:] = [0, 1.5]


def enum_variable(p):
    with netCDF4.Dataset(p, "w") as nc:
        cloud = nc.createEnumType("u1", "cloud", {"clear": 0, "cloudy": 1, "missing": 255})
        nc.createDimension("n", 3)
        e = nc.createVariable("e", cloud, ("n",), fill_value=255)
        e[:] = [0, 1, 255]
        e.long_name = "cloud cover"
        nc.createVariable("ok", "f4", ("n",))[:] = [1, 2, 3]


def attributes(p):
    with netCDF4.Dataset(p, "w") as nc:
        nc.createDimension("x", 2)
        v = nc.createVariable("v", "f8", ("x",))
        v[:] = [1, 2]
        v.setncattr_string("strs", ["a", "bb"])
        v.setncattr_string("onestr", "z")
        v.bytes_attr = np.array([1, 2], "i1")
        v.nan = np.nan
        v.infs = np.array([np.inf, -np.inf, 1.0])
        v.u64 = np.uint64(2**64 - 1)
        v.f32s = np.array([1.5, 2.5], "f4")
        nc.setncattr_string("gstrs", ["p", "q"])
    with h5py.File(p, "a") as f:
        d = f["v"]
        d.attrs["h5bytes"] = b"raw\xffbytes"
        d.attrs["h5strs"] = np.array([b"a", b"b"])
        d.attrs["h5vlen"] = np.array(["x", "yy"], dtype=h5py.string_dtype())
        d.attrs["empty"] = np.array([], "f8")


def complex_values(p):
    """Complex datasets (h5py), one with a complex fill value and ``_FillValue``; complex attributes are left out."""
    with h5py.File(p, "w") as f:
        c = f.create_dataset("c", data=np.array([1j, 1 + 2j, 3]), fillvalue=1 + 2j)
        c.attrs["_FillValue"] = np.complex128(1 + 2j)
        c.attrs["units"] = "V"
        f.create_dataset("c8", data=np.array([1j, 2], "c8"), chunks=(1,), compression="gzip")


def complex_attribute(p):
    with h5py.File(p, "w") as f:
        f.create_dataset("v", data=np.arange(3.0)).attrs["z"] = np.complex64(3 + 4j)


def opaque_and_reference_attributes(p):
    """Attributes JSON cannot hold: left out with a warning (netCDF-C leaves them out), the variable reads."""
    with h5py.File(p, "w") as f:
        v = f.create_dataset("tagged", data=np.arange(3.0))
        v.attrs["blob"] = np.void(b"\x00\x01")
        v.attrs["ref"] = f.ref
        v.attrs["units"] = "m"


def packed_compound(p):
    with h5py.File(p, "w") as f:
        f.create_dataset("comp", data=np.array([(1, 2.0), (3, -4.5)], dtype=[("a", "<i4"), ("b", "<f8")]))
        f.create_dataset("chunked", data=np.array([(1, 2.0), (5, 6)], dtype=[("a", "<i2"), ("b", "<f4")]), chunks=(1,))


def big_endian_compound(p):
    with h5py.File(p, "w") as f:
        f.create_dataset("big", data=np.array([(1, 2.0)], dtype=[("a", ">i2"), ("b", "<f4")]))


def text_compound(p):
    with h5py.File(p, "w") as f:
        f.create_dataset("txt", data=np.array([(1, b"ab")], dtype=[("a", "<i4"), ("s", "S4")]))
        f["ok"] = np.arange(2)


def netcdf4_aligned_compound(p):
    """A padded (aligned) compound: its values, packed, inlined."""
    with netCDF4.Dataset(p, "w") as nc:
        pair = nc.createCompoundType(np.dtype([("a", "i1"), ("b", "f8")], align=True), "pair")
        nc.createDimension("n", 2)
        nc.createVariable("al", pair, ("n",))[:] = np.array([(1, 2.0), (3, 4.0)], dtype=pair.dtype)
        nc.createVariable("ok", "f4", ("n",))[:] = [1, 2]


def vlen_numbers(p):
    with netCDF4.Dataset(p, "w") as nc:
        vl = nc.createVLType("i4", "ragged")
        nc.createDimension("n", 2)
        v = nc.createVariable("vl", vl, ("n",))
        v[0], v[1] = np.array([1, 2], "i4"), np.array([3], "i4")
        nc.createVariable("ok", "f4", ("n",))[:] = [1, 2]


def object_references(p):
    with h5py.File(p, "w") as f:
        f["ok"] = np.arange(3)
        f.create_dataset("refs", data=[f["ok"].ref, f["ok"].ref], dtype=h5py.ref_dtype)


def float128(p):
    with h5py.File(p, "w") as f:
        f["ok"] = np.arange(3)
        f["f128"] = np.arange(3, dtype=np.longdouble)


def netcdf3_empty_records(p):
    with netCDF4.Dataset(p, "w", format="NETCDF3_64BIT_OFFSET") as nc:  # (netCDF-C cannot read scipy's)
        nc.createDimension("t", None)
        nc.createDimension("x", 2)
        nc.createVariable("v", "f4", ("t", "x"))
        nc.createVariable("c", "S1", ("t",))
        nc.createVariable("x", "f8", ("x",))[:] = [1, 2]


def netcdf3_scalars(p):
    with netCDF4.Dataset(p, "w", format="NETCDF3_CLASSIC") as nc:
        nc.createVariable("c", "S1", ())[...] = "h"
        nc.createVariable("d", "f8", ())[...] = 2.5
        nc.createDimension("z", 0)


def _compact(f, name, data):
    space = h5py.h5s.create_simple(data.shape)
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_layout(h5py.h5d.COMPACT)
    dsid = h5py.h5d.create(f.id, name.encode(), h5py.h5t.py_create(data.dtype), space, dcpl=dcpl)
    dsid.write(h5py.h5s.ALL, h5py.h5s.ALL, data)


def compact_h5py(p):
    """Compact datasets (bytes in the object header): inlined, chars as S1, big-endian numbers native."""
    with h5py.File(p, "w") as f:
        _compact(f, "comp", np.array([(1, 2.0), (3, 4.5)], dtype=[("a", "<i4"), ("b", "<f8")]))
        _compact(f, "opaque", np.array([np.void(b"\x01\x02"), np.void(b"\x03\x04")]))
        _compact(f, "bools", np.array([True, False, True]))
        _compact(f, "num", np.array([1, -5], "i2"))
        _compact(f, "big", np.array([1.5, 2.5], ">f8"))
        _compact(f, "chars", np.array([[b"a", b"b", b""], [b"x", b"y", b"z"]], "S1"))
        _compact(f, "scalar_char", np.array(b"q", "S1"))


CASES = {
    "scalar_vlen_string": (scalar_vlen_string, VALUES),
    "scalar_char": (scalar_char, VALUES),
    "scalar_fixed_string_h5py": (scalar_fixed_string_h5py, VALUES),
    "zero_records": (zero_records, VALUES),
    "zero_length_dimension": (zero_length_dimension, VALUES),
    "zero_length_h5py": (zero_length_h5py, VALUES),
    "unlimited_uneven": (unlimited_uneven, VALUES),
    "string_variables": (string_variables, VALUES),
    "string_h5py": (string_h5py, VALUES),
    "strings_unwritten": (strings_unwritten, VALUES),
    "char_arrays": (char_arrays, VALUES),
    "char_utf8": (char_utf8, VALUES),
    "netcdf3_chars": (netcdf3_chars, VALUES),
    "chars_with_fill": (chars_with_fill, VALUES),
    "chars_with_fill_group": (chars_with_fill, VALUES, {"group": "g"}),
    "netcdf3_chars_with_fill": (netcdf3_chars_with_fill, VALUES),
    "nul_padded_name": (nul_padded_name, VALUES),
    "named_like_its_dimension": (named_like_its_dimension, VALUES),
    # xarray's netCDF4 backend gives var2 three dims all named 'dim' (and fails on v1): checked against h5py
    "inherited_dimensions": (inherited_dimensions, RawDims((("v0", ("dim",)),))),
    "inherited_dimensions_g2": (inherited_dimensions, RawDims((("v1", ("/dim",)), ("v2", ("dim",)))),
                                {"group": "g2"}),
    "inherited_dimensions_g3": (inherited_dimensions, RawDims((("var2", ("/dim", "/g2/dim", "dim")),)),
                                {"group": "g2/g3"}),
    "time_with_utc_offset": (time_with_utc_offset, VALUES),
    "enum_variable": (enum_variable, VALUES),
    "attributes": (attributes, VALUES),
    # netCDF-C shows complex numbers as compounds (xarray: auto_complex=True): checked against h5py
    "complex_values": (complex_values, RawDims((("c", ("phony_dim_0",)), ("c8", ("phony_dim_1",))))),
    "complex_attribute": (complex_attribute, RawDims((("v", ("phony_dim_0",)),)), {"warns": "'z'"}),
    "opaque_and_reference_attributes": (opaque_and_reference_attributes, RawDims((("tagged", ("phony_dim_0",)),)),
                                        {"warns": "'blob'"}),
    "packed_compound": (packed_compound, RawDims((("comp", ("phony_dim_0",)), ("chunked", ("phony_dim_0",))))),
    "big_endian_compound": (big_endian_compound, RawDims((("big", ("phony_dim_0",)),))),
    "text_compound": (text_compound, refused("/txt", "field 's' of type |S4")),
    "netcdf4_aligned_compound": (netcdf4_aligned_compound, RawDims((("al", ("n",)), ("ok", ("n",))))),
    "vlen_numbers": (vlen_numbers, refused("/vl", "variable-length sequences of int32")),
    "object_references": (object_references, refused("/refs", "references")),
    "float128": (float128, refused("/f128", "128-bit float")),
    "netcdf3_empty_records": (netcdf3_empty_records, VALUES),
    "netcdf3_scalars": (netcdf3_scalars, VALUES),
    "compact_h5py": (compact_h5py, RawDims((("big", ("phony_dim_0",)), ("bools", ("phony_dim_1",)),
                                            ("chars", ("phony_dim_0", "phony_dim_1")), ("comp", ("phony_dim_0",)),
                                            ("num", ("phony_dim_0",)), ("opaque", ("phony_dim_0",)),
                                            ("scalar_char", ())))),
    "phony_square": (phony_square, VALUES),
    "phony_shared": (phony_shared, VALUES),
    "phony_shared_group": (phony_shared, VALUES, {"group": "g"}),
    "phony_creation_order": (phony_creation_order, VALUES),
    "phony_creation_order_group": (phony_creation_order, VALUES, {"group": "g"}),
    "phony_beside_netcdf_dimensions": (phony_beside_netcdf_dimensions, VALUES),
    "phony_beside_netcdf_dimensions_group": (phony_beside_netcdf_dimensions, VALUES, {"group": "h"}),
}


# --------------------------------------------------------------------------- #
# checks
# --------------------------------------------------------------------------- #


#: Attributes vzdask adds to what netCDF-C shows (the enum mapping, see HDFParser).
ADDED_ATTRIBUTES = frozenset({"enum_dict", "enum_name"})


def assert_same_attributes(got: dict, expected: dict, where: str) -> None:
    assert set(got) - ADDED_ATTRIBUTES == set(expected), (where, sorted(got), sorted(expected))
    for key, want in expected.items():
        have = got[key]
        if isinstance(want, (np.ndarray, np.generic, float)):
            # values, not types: zarr attributes are JSON (numbers and lists)
            np.testing.assert_array_equal(np.asarray(have), np.asarray(want), err_msg=f"{where}: {key}")
        else:
            assert have == want, (where, key, have, want)


_NAN = object()


def _nan_same(values: list) -> list:
    """``values`` with every float NaN replaced by one marker, so that NaN compares equal to NaN."""
    return [_NAN if isinstance(v, float) and v != v else v for v in values]


def assert_same_variables(got: xr.Dataset, expected: xr.Dataset, what: str, attrs: bool = False) -> None:
    assert set(got.variables) == set(expected.variables), (what, sorted(got.variables), sorted(expected.variables))
    for name, want in expected.variables.items():
        have = got.variables[name]
        where = f"{what}: {name}"
        assert have.dims == want.dims, (where, have.dims, want.dims)
        assert have.dtype == want.dtype, (where, have.dtype, want.dtype)
        a, b = np.asarray(have.values), np.asarray(want.values)
        if a.dtype.kind in "fcmM":
            np.testing.assert_array_equal(a, b, err_msg=where)  # NaN/NaT equal NaN/NaT
        else:  # NaN (a masked string in older xarray) equals NaN here too
            assert a.shape == b.shape and _nan_same(a.ravel().tolist()) == _nan_same(b.ravel().tolist()), (where, a, b)
        if attrs:
            assert_same_attributes(have.attrs, want.attrs, where)
    if attrs:
        assert_same_attributes(got.attrs, expected.attrs, what)


def check_values(path: str, group: str | None = None, **open_kwargs) -> None:
    """Virtual (raw, through dask, CF-decoded) and loaded variables equal netCDF-C's, through xarray."""
    vds = open_virtual_dataset(path, group=group, loadable_variables=[], **open_kwargs)
    names = list(vds.variables)
    raw = vds.vz.compute()
    with xr.open_dataset(path, engine="netcdf4", decode_cf=False, group=group) as expected:
        expected = expected[names].load() if names else expected.load()
        assert_same_variables(raw, expected.drop_indexes(list(expected.xindexes)), "raw")
        assert_same_variables(vds.vz.to_dask().compute(), expected.drop_indexes(list(expected.xindexes)), "dask")
    with xr.open_dataset(path, engine="netcdf4", group=group) as expected:
        expected = expected[[n for n in expected.variables if n in names]].load()
        assert_same_variables(xr.decode_cf(raw), expected, "decoded")
        loaded = open_virtual_dataset(path, group=group, loadable_variables=names, **open_kwargs)
        assert_same_variables(loaded, expected, "loaded", attrs=True)


def _no_warnings(function, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # zarr: fixed-width types without a v3 spec
        warnings.simplefilter("ignore", RuntimeWarning)
        return function(*args, **kwargs)


@pytest.mark.parametrize("case", list(CASES))
def test_corpus(tmp_path: Path, case: str) -> None:
    write, expected = CASES[case][:2]
    options = dict(CASES[case][2]) if len(CASES[case]) > 2 else {}
    path = str(tmp_path / f"{case}.nc")
    write(path)
    if isinstance(expected, Refused):
        with pytest.raises(ParseError) as info:
            _no_warnings(open_virtual_dataset, path, **options)
        message = str(info.value)
        assert f"{case}.nc" in message and repr(expected.variable) in message, message
        assert expected.words in message, message
        with pytest.warns(UnsupportedVariableWarning):
            vds = open_virtual_dataset(path, on_unsupported="warn", **options)
        assert expected.variable.rsplit("/", 1)[-1] not in vds.variables
        return
    if isinstance(expected, RawDims):
        warns = options.pop("warns", None)
        if warns is not None:
            with pytest.warns(UserWarning, match=warns):
                check_raw_dims(path, dict(expected.dims), **options)
        else:
            _no_warnings(check_raw_dims, path, dict(expected.dims), **options)
        return
    _no_warnings(check_values, path, **options)


def check_raw_dims(path: str, dims: dict, group: str | None = None) -> None:
    vds = open_virtual_dataset(path, group=group, loadable_variables=[])
    assert {name: var.dims for name, var in vds.variables.items()} == dims
    raw = vds.vz.compute()
    with h5py.File(path) as f:
        node = f[group] if group else f
        for name in dims:
            want = node[name][()]
            assert raw[name].dtype == want.dtype.newbyteorder("=") or raw[name].dtype.names, (name, raw[name].dtype)
            assert raw[name].values.tolist() == want.tolist(), name


WRITTEN = ["scalar_vlen_string", "string_variables", "string_h5py", "char_arrays", "char_utf8", "zero_length_dimension",
           "enum_variable", "named_like_its_dimension", "netcdf3_chars"]


@pytest.mark.parametrize("case", WRITTEN)
def test_kerchunk_references_read_like_the_file(tmp_path: Path, case: str) -> None:
    """What the references say (strings inlined, char arrays as S1 chunks) reads back as netCDF-C reads the file."""
    import fsspec

    path = str(tmp_path / f"{case}.nc")
    CASES[case][0](path)
    vds = _no_warnings(open_virtual_dataset, path, loadable_variables=[])
    refs = vds.vz.to_kerchunk()
    mapper = fsspec.filesystem("reference", fo=refs).get_mapper()
    got = _no_warnings(lambda: xr.open_zarr(mapper, consolidated=False, zarr_format=2).load())
    with xr.open_dataset(path, engine="netcdf4") as expected:
        expected = expected.load()
        assert_same_variables(got.drop_indexes(list(got.xindexes)), expected.drop_indexes(list(expected.xindexes)),
                              "kerchunk")
