"""Issue 22: a parse leaves no HDF5 identifier of the file open, and the process exits 0 afterwards.

HDF5 keeps a file open while any identifier of its objects is; with h5py's
file-object driver that open file called back into an already finalized
Python object at interpreter shutdown (exit status 139). The files here are
written by PyTables and h5py with the features that leaked identifiers or
that take the parser's error paths.
"""

from __future__ import annotations

import gc
import subprocess
import sys
import textwrap

import h5py
import hdf5plugin  # noqa: F401  (registers blosc for PyTables' files and h5py)
import numpy as np
import pytest
import tables
import xarray as xr

from vzdask.parsers import ParseError
from vzdask.xarray import open_virtual_dataset

#: Identifier kinds that belong to a file (transient datatypes, which h5py and the parser cache, do not).
FILE_BOUND = h5py.h5f.OBJ_FILE | h5py.h5f.OBJ_DATASET | h5py.h5f.OBJ_GROUP | h5py.h5f.OBJ_ATTR


def open_identifiers() -> int:
    """HDF5 identifiers of files and their objects open in this process."""
    return h5py.h5f.get_obj_count(h5py.h5f.OBJ_ALL, FILE_BOUND)


def _pytables_arrays(path):
    """PyTables: ``CLASS="ARRAY"`` on every array, big-endian blosc chunks, a 0-d array with attributes."""
    with tables.open_file(path, "w") as f:
        f.create_array("/", "values", np.arange(10.0))
        group = f.create_group("/", "grp")
        # chunks large enough that blosc compresses them (it stores tiny ones unfiltered, a filter mask)
        f.create_carray(group, "big", obj=np.arange(10_000, dtype=">i4").reshape(100, 100) // 7,
                        filters=tables.Filters(complevel=5, complib="blosc"), chunkshape=(50, 50))
        scalar = f.create_array("/", "scalar", np.float64(3.5))
        scalar.attrs.units = "m"
        scalar.attrs.valid = np.array([1, 2, 3], "i2")


def _pytables_links(path):
    """PyTables: a soft link, a dangling soft link and an external link beside the arrays."""
    other = path.with_name(path.stem + "_target.h5")
    with tables.open_file(other, "w") as f:
        f.create_array("/", "far", np.arange(4))
    with tables.open_file(path, "w") as f:
        f.create_array("/", "values", np.arange(6, dtype="f4"))
        f.create_soft_link("/", "alias", "/values")
        f.create_soft_link("/", "dangling", "/nowhere")
        f.create_external_link("/", "outside", f"{other.name}:/far")


def _pytables_table(path):
    """PyTables: a table with a text column (a compound dataset the parser refuses) beside an ordinary array."""
    with tables.open_file(path, "w") as f:
        f.create_array("/", "values", np.arange(3))
        f.create_table("/", "tab", {"a": tables.Int32Col(), "b": tables.Float64Col(), "s": tables.StringCol(4)})


def _h5py_committed_and_odd_attributes(path):
    """h5py: a committed datatype used by a dataset, enum/vlen/compound/reference attributes, groups."""
    with h5py.File(path, "w") as f:
        f["named_float"] = np.dtype(">f8")
        f.create_dataset("typed", data=np.linspace(0, 1, 5), dtype=f["named_float"])
        d = f.create_dataset("data", data=np.arange(12, dtype="i2").reshape(3, 4), chunks=(1, 4))
        d.attrs["enum"] = np.array(1, dtype=h5py.enum_dtype({"a": 0, "b": 1}, basetype="i1"))
        d.attrs["vlen_str"] = "text"
        d.attrs["vlen_list"] = np.array(["x", "yy"], dtype=h5py.string_dtype())
        g = f.create_group("nested/deeper")
        g.attrs["note"] = "in a group"
        g.create_dataset("zero_d", data=7.0).attrs["units"] = "s"


def _h5py_reference_attribute(path):
    """h5py: an object-reference attribute (the parser cannot read it and raises, mid-parse)."""
    with h5py.File(path, "w") as f:
        target = f.create_dataset("target", data=np.arange(3))
        other = f.create_dataset("other", data=np.arange(4.0))
        other.attrs["points_to"] = target.ref
        other.attrs["compound"] = np.array((1, 2.5), dtype=[("i", "i4"), ("f", "f8")])


def _netcdf4(path):
    """netCDF-4 (via xarray's netCDF4 writer): dimension scales, coordinates, attributes."""
    ds = xr.Dataset(
        {"t": (("time", "x"), np.arange(12.0).reshape(3, 4), {"units": "K"})},
        coords={"time": [0, 1, 2], "x": [10, 20, 30, 40]},
        attrs={"title": "nc4"},
    )
    ds.to_netcdf(path, engine="netcdf4")


WRITERS = [_pytables_arrays, _pytables_links, _pytables_table, _h5py_committed_and_odd_attributes,
           _h5py_reference_attribute, _netcdf4]


@pytest.fixture(params=WRITERS, ids=lambda w: w.__name__.lstrip("_"))
def hdf5_file(request, tmp_path):
    path = tmp_path / "file.h5"
    request.param(path)
    return path


def _parse(path):
    """open_virtual_dataset, returning the dataset or the ParseError (both are legitimate outcomes here)."""
    try:
        return open_virtual_dataset(str(path))
    except ParseError as err:
        return err


def test_no_identifier_left_open(hdf5_file):
    before = open_identifiers()
    result = _parse(hdf5_file)
    del result
    gc.collect()
    assert open_identifiers() == before


def test_process_exits_0(hdf5_file):
    """A fresh interpreter opens the file, prints what it got, and ends with status 0."""
    script = textwrap.dedent(
        """
        import sys
        import vzdask
        from vzdask.parsers import ParseError
        try:
            ds = vzdask.open_virtual_dataset(sys.argv[1])
            print("variables:", sorted(ds.variables))
        except ParseError as err:
            print("refused:", err)
        """
    )
    done = subprocess.run([sys.executable, "-c", script, str(hdf5_file)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, (done.returncode, done.stdout, done.stderr)
    assert done.stdout.startswith(("variables:", "refused:"))


def test_pytables_values_are_read_exactly(tmp_path):
    """The file that crashed at exit also reads right: big-endian blosc chunks and the 0-d array."""
    path = tmp_path / "pt.h5"
    _pytables_arrays(path)
    ds = open_virtual_dataset(str(path), group="grp")
    with h5py.File(path) as f:
        np.testing.assert_array_equal(ds["big"].data.compute(), f["grp/big"][()])
    root = open_virtual_dataset(str(path), loadable_variables=["scalar"])
    assert root["scalar"].values == 3.5
    assert root["scalar"].attrs["units"] == "m"


def test_error_path_leaves_nothing_open(tmp_path):
    """A file the parser refuses (a compound dataset with text) is closed all the same, with everything it opened."""
    path = tmp_path / "table.h5"
    _pytables_table(path)
    before = open_identifiers()
    with pytest.raises(ParseError, match="tab"):
        open_virtual_dataset(str(path))
    gc.collect()
    assert open_identifiers() == before


def test_thousand_parses_leave_nothing_open(tmp_path):
    """Parsing 1,000 files in one process: no identifier of any of them stays open, none accumulates."""
    paths = []
    for i in range(4):  # four kinds, parsed 250 times each
        path = tmp_path / f"kind{i}.h5"
        [_pytables_arrays, _pytables_links, _h5py_committed_and_odd_attributes, _netcdf4][i](path)
        paths.append(path)
    before = open_identifiers()
    all_before = h5py.h5f.get_obj_count(h5py.h5f.OBJ_ALL, h5py.h5f.OBJ_ALL)
    for _ in range(250):
        for path in paths:
            _parse(path)
    gc.collect()
    assert open_identifiers() == before
    # transient datatypes are cached by h5py and the parser, a bounded number, not one more per file
    assert h5py.h5f.get_obj_count(h5py.h5f.OBJ_ALL, h5py.h5f.OBJ_ALL) - all_before < 50
