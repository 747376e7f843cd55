"""One variable the parser cannot represent never blocks the others (issue 18, item 1).

Each case is a file written by h5py/netCDF4 with ordinary variables beside
ones zarr cannot hold. The default is one ParseError naming the file, every
such variable and why, and the exact ``drop_variables`` that opens the rest;
``on_unsupported="warn"`` opens the rest (values compared with h5py) and
warns once.
"""

from __future__ import annotations

import subprocess
import sys
import warnings

import h5py
import netCDF4
import numpy as np
import pytest

from vzdask import open_virtual_dataset, open_virtual_mfdataset
from vzdask.errors import ParseError, UnsupportedVariableWarning


def _compound(f):
    # a text field: zarr's struct data type holds numbers only
    f.create_dataset("comp", data=np.array([(1, b"ab")], dtype=[("a", "<i4"), ("s", "S4")]))


def _vlen_ints(f):
    d = f.create_dataset("ragged", (2,), dtype=h5py.vlen_dtype("i4"))
    d[0], d[1] = [1, 2], [3]


def _lzf(f):
    f.create_dataset("squeezed", data=np.arange(100.0), chunks=(10,), compression="lzf")


#: (writer, variable it adds, words the reason contains)
CASES = [
    (_compound, "comp", "HDF5 compound type"),
    (_vlen_ints, "ragged", "variable-length sequences of int32"),
    (_lzf, "squeezed", "HDF5 filter 'lzf'"),
]


def _write(path, writers, sub_writers=()):
    """A netCDF4 file with good variables ``x`` and ``good`` (and ``g/inner``), then the bad ones."""
    with netCDF4.Dataset(path, "w") as nc:
        nc.createDimension("x", 4)
        nc.createVariable("x", "f8", ("x",))[:] = [0.5, 1.5, 2.5, 3.5]
        nc.createVariable("good", "f4", ("x",), zlib=True)[:] = [1, 2, 3, 4]
        g = nc.createGroup("g")
        g.createVariable("inner", "i2", ("x",))[:] = [7, 8, 9, 10]
    with h5py.File(path, "a") as f:
        for write in writers:
            write(f)
        for write in sub_writers:
            write(f["g"])


@pytest.mark.parametrize("write, name, reason", CASES, ids=[c[1] for c in CASES])
def test_one_bad_variable_is_named_and_the_rest_open(tmp_path, write, name, reason):
    path = tmp_path / f"{name}.nc"
    _write(path, [write])
    with pytest.raises(ParseError) as info:
        open_virtual_dataset(str(path))
    message = str(info.value)
    assert f"{name}.nc: 1 variable(s) cannot be virtualized" in message
    assert f"'/{name}': " in message and reason in message
    assert message.endswith(f"Open the others with drop_variables=['{name}'] or on_unsupported='warn'")

    dropped = open_virtual_dataset(str(path), drop_variables=[name])
    with pytest.warns(UnsupportedVariableWarning, match=rf"'/{name}': .*{reason}"):
        warned = open_virtual_dataset(str(path), on_unsupported="warn")
    with h5py.File(path) as f:
        for ds in (dropped, warned):
            assert set(ds.variables) == {"x", "good"}
            np.testing.assert_array_equal(ds["good"].data.compute(), f["good"][()])
            np.testing.assert_array_equal(ds["x"].values, f["x"][()])


def test_every_bad_variable_is_listed_at_once(tmp_path):
    path = tmp_path / "many.nc"
    _write(path, [_compound, _vlen_ints, _lzf])
    with pytest.raises(ParseError) as info:
        open_virtual_dataset(str(path))
    message = str(info.value)
    assert "3 variable(s) cannot be virtualized" in message
    assert all(f"'/{name}'" in message for name in ("comp", "ragged", "squeezed"))
    assert "drop_variables=['comp', 'ragged', 'squeezed']" in message
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = open_virtual_dataset(str(path), on_unsupported="warn")
    assert len([w for w in caught if issubclass(w.category, UnsupportedVariableWarning)]) == 1  # once per file
    assert set(ds.variables) == {"x", "good"}


def test_bad_variable_in_a_subgroup(tmp_path):
    """drop_variables cannot reach a subgroup's variable: the hint is on_unsupported='warn' (or group=)."""
    path = tmp_path / "sub.nc"
    _write(path, [], sub_writers=[_compound])
    with pytest.raises(ParseError) as info:
        open_virtual_dataset(str(path))
    assert "'/g/comp': HDF5 compound type" in str(info.value)
    assert str(info.value).endswith("Open the others with on_unsupported='warn'")
    root = open_virtual_dataset(str(path), on_unsupported="warn")
    assert set(root.variables) == {"x", "good"}
    with pytest.raises(ParseError, match="drop_variables=\\['comp'\\]"):
        open_virtual_dataset(str(path), group="g")
    inner = open_virtual_dataset(str(path), group="g", drop_variables=["comp"])
    np.testing.assert_array_equal(inner["inner"].data.compute(), [7, 8, 9, 10])


def test_bad_option_value_is_refused(tmp_path):
    path = tmp_path / "ok.nc"
    _write(path, [])
    with pytest.raises(ValueError, match="on_unsupported must be one of"):
        open_virtual_dataset(str(path), on_unsupported="ignore")


def test_many_files_warn_and_combine_the_rest(tmp_path):
    paths = []
    for i in range(2):
        path = tmp_path / f"f{i}.nc"
        _write(path, [_compound])
        with netCDF4.Dataset(path, "a") as nc:
            nc["x"][:] = np.arange(4) + 4 * i + 0.5
        paths.append(str(path))
    with pytest.raises(Exception, match="comp"):
        open_virtual_mfdataset(paths, concat_dim="x", combine="nested")
    with pytest.warns(UnsupportedVariableWarning):
        ds = open_virtual_mfdataset(paths, concat_dim="x", combine="nested", on_unsupported="warn")
    assert set(ds.variables) == {"x", "good"}
    np.testing.assert_array_equal(ds["good"].data.compute(), [1, 2, 3, 4, 1, 2, 3, 4])


def test_cli_skip_unsupported(tmp_path):
    import fsspec
    import xarray as xr

    path = tmp_path / "f.nc"
    _write(path, [_vlen_ints])
    out = tmp_path / "refs.json"
    refused = subprocess.run([sys.executable, "-m", "vzdask.cli", "virtualize", str(path), "-o", str(out)],
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode == 1 and "ragged" in refused.stderr and not out.exists()
    done = subprocess.run([sys.executable, "-m", "vzdask.cli", "virtualize", str(path), "-o", str(out),
                           "--skip-unsupported"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "UnsupportedVariableWarning" in done.stderr and "ragged" in done.stderr
    mapper = fsspec.filesystem("reference", fo=str(out)).get_mapper("")
    got = xr.open_dataset(mapper, engine="zarr", zarr_format=2, consolidated=False)
    with netCDF4.Dataset(path) as nc:
        np.testing.assert_array_equal(got["good"].values, nc["good"][:])
    assert "ragged" not in got.variables


@pytest.mark.parametrize("parallel", ["processes", "client"])
def test_warnings_from_worker_processes_reach_the_caller(tmp_path, parallel, request):
    """Files parsed in a process pool or on a cluster's worker processes: the warning is given here, once per file."""
    paths = []
    for i in range(2):
        path = tmp_path / f"w{i}.nc"
        _write(path, [_vlen_ints])
        with netCDF4.Dataset(path, "a") as nc:
            nc["x"][:] = np.arange(4) + 4 * i + 0.5
        paths.append(str(path))
    where = request.getfixturevalue("dask_client") if parallel == "client" else "processes"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = open_virtual_mfdataset(paths, concat_dim="x", combine="nested", on_unsupported="warn", parallel=where)
    messages = [str(w.message) for w in caught if issubclass(w.category, UnsupportedVariableWarning)]
    assert len(messages) == 2, messages
    for path, message in zip(paths, messages):
        assert path in message and "ragged" in message
    assert [w.filename for w in caught if issubclass(w.category, UnsupportedVariableWarning)] == [__file__] * 2
    assert set(ds.variables) == {"x", "good"}
    np.testing.assert_array_equal(ds["good"].data.compute(), [1, 2, 3, 4, 1, 2, 3, 4])
