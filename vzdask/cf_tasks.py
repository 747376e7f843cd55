"""CF masking and unpacking inside a virtual variable's load tasks (analysis Datasets).

xarray decodes a dask-backed variable lazily: a ``map_blocks`` layer on top
of the load tasks, so twice the tasks, and a whole-array compute that copies
every block at the end. Decoding each block in the task that loads it gives
the same values from one task per block, and a compute of the array as it is
still decodes straight into one result (``vzdask.dask_array``).

The decoding is xarray's own (``decode_cf_variable`` on each block), and only
for what is elementwise and depends on the attributes alone: masking
(``_FillValue``, ``missing_value``), unpacking (``scale_factor``,
``add_offset``), ``_Unsigned`` and netCDF's boolean ``dtype``. Times,
timedeltas and text are left to xarray's ``decode_cf``.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import xarray as xr

from vzdask._compat import TIME_UNITS, decode_cf_variable, variable_data
from vzdask.manifests.array import ManifestArray


def decoded_in_tasks(name: str, var: xr.Variable, chunks: Any = None, *,
                     mask_and_scale: bool = True) -> xr.Variable | None:
    """``var`` (virtual) as a dask-backed Variable whose load tasks CF-decode their blocks.

    None when there is nothing to decode, or when the decoding is not one this
    module does (the caller then leaves it to ``xr.decode_cf``). Attributes
    and encoding come out as ``decode_cf`` leaves them. ``mask_and_scale``
    is ``decode_cf``'s (False: only what else is elementwise, e.g. byte order).
    """
    plan = _plan(name, var, mask_and_scale)
    if plan is None or plan[1] is None:
        return None
    return _decoding_tasks(name, var, chunks, plan[0], plan[1], mask_and_scale)


def read_in_tasks(name: str, var: xr.Variable, chunks: Any = None, *,
                  mask_and_scale: bool = True) -> xr.Variable | None:
    """``var`` (virtual) as ``decode_cf`` (times aside) leaves it, dask-backed: the load tasks alone, or decoding too.

    Unlike ``decoded_in_tasks``, a variable with nothing to decode gives its plain load tasks; None only
    when the decoding is not one this module does (times, text, anything that is not elementwise).
    """
    plan = _plan(name, var, mask_and_scale)
    if plan is None:
        return None
    array, decoded = plan
    if decoded is None:
        return xr.Variable(var.dims, array.to_dask_array(chunks), attrs=dict(var.attrs), encoding=dict(var.encoding))
    return _decoding_tasks(name, var, chunks, array, decoded, mask_and_scale)


def _decoding_tasks(name: str, var: xr.Variable, chunks: Any, array: ManifestArray, decoded: xr.Variable,
                    mask_and_scale: bool) -> xr.Variable:
    convert = functools.partial(_decode_block, name, var.dims, dict(var.attrs), dict(var.encoding),
                                decoded.dtype.str, mask_and_scale=mask_and_scale)
    data = array.to_dask_array(chunks, convert=convert, dtype=decoded.dtype)
    return xr.Variable(var.dims, data, attrs=dict(decoded.attrs), encoding=dict(decoded.encoding))


def _plan(name: str, var: xr.Variable, mask_and_scale: bool) -> tuple[ManifestArray, xr.Variable | None] | None:
    """``(array, decoded probe)``; the probe is None when decoding changes nothing; None when not done here."""
    array = variable_data(var)
    if not isinstance(array, ManifestArray) or array.dtype.kind not in "biuf" or _is_time_like(var.attrs):
        return None
    attrs, encoding = dict(var.attrs), dict(var.encoding)
    probe = np.zeros((1,) * var.ndim, array.dtype)  # what decoding does depends on dtype and attributes only
    decoded = _decode_variable(name, var.dims, attrs, encoding, probe, mask_and_scale)
    if decoded.dtype == array.dtype and decoded.attrs == attrs:
        return array, None
    if decoded.dims != var.dims or decoded.shape != probe.shape or decoded.dtype.kind not in "biuf":
        return None
    return array, decoded


def _is_time_like(attrs: dict[str, Any]) -> bool:
    """CF time or timedelta units (or a calendar): ``decode_cf`` decides those from the data."""
    units = attrs.get("units")
    if "calendar" in attrs:
        return True
    return isinstance(units, str) and (" since " in units or units.strip().lower() in TIME_UNITS)


def _decode_variable(name: str, dims: tuple, attrs: dict, encoding: dict, values: np.ndarray,
                     mask_and_scale: bool = True) -> xr.Variable:
    var = xr.Variable(dims, values, attrs=dict(attrs), encoding=dict(encoding))
    return decode_cf_variable(name, var, mask_and_scale=mask_and_scale, decode_times=False, decode_timedelta=False)


def _decode_block(name: str, dims: tuple, attrs: dict, encoding: dict, dtype: str, block: np.ndarray,
                  mask_and_scale: bool = True) -> np.ndarray:
    """One loaded block CF-decoded by xarray (runs in the block's load task)."""
    out = np.asarray(_decode_variable(name, dims, attrs, encoding, block, mask_and_scale).values)
    if out.dtype != np.dtype(dtype):  # decoding is meant to depend on the attributes alone
        raise TypeError(f"variable {name!r}: a block decoded to {out.dtype}, expected {np.dtype(dtype)}")
    return out
