"""CF-safe combining: refuse to concatenate variables whose CF encoding differs.

Concatenating references of files packed with different ``scale_factor`` (or
``add_offset``, ``_FillValue``, ``units``...) would silently decode every file
with the first file's encoding: wrong numbers, no error. Loaded variables are
already CF-decoded, so they combine safely (times in different units included).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import xarray as xr

from vzdask._compat import variable_data
from vzdask.errors import CFEncodingMismatchError
from vzdask.manifests.array import ManifestArray

#: Attributes that change what the stored numbers mean.
CF_ENCODING_ATTRIBUTES = ("scale_factor", "add_offset", "_FillValue", "missing_value", "units", "calendar")


#: Attributes whose float type is the type packed integers unpack into (xarray's rule, as netCDF readers').
PACKING_ATTRIBUTES = ("scale_factor", "add_offset")


def cf_signature(ds: xr.Dataset) -> dict[str, dict[str, object]]:
    """Per virtual variable: its dtype and CF encoding attributes (small; cheap to ship from workers)."""
    signature = {}
    for name, var in ds.variables.items():
        if isinstance(variable_data(var), ManifestArray):
            entry = {"dtype": str(var.dtype)}
            entry.update({attr: var.attrs[attr] for attr in CF_ENCODING_ATTRIBUTES if attr in var.attrs})
            signature[name] = entry
    return signature


def _same(a, b) -> bool:
    if a is None or b is None:
        return a is b
    try:
        return bool(np.array_equal(np.asarray(a), np.asarray(b), equal_nan=True))
    except TypeError:
        return bool(np.array_equal(np.asarray(a), np.asarray(b)))


def _float_type(value) -> str | None:
    """float32 and float64 apart: ``np.float32(0.5)`` and ``0.5`` are equal but unpack to different dtypes."""
    return None if value is None else np.asarray(value).dtype.str


def check_cf_compatible(signatures: Sequence[tuple[str, dict[str, dict[str, object]]]]) -> None:
    """Raise ``CFEncodingMismatchError`` naming the variable, both files and the values that differ.

    ``signatures`` are ``(file, cf_signature(ds))`` pairs in combine order.
    Only virtual variables are checked: their stored numbers are combined as
    they are, so their encoding must agree. Loaded variables are decoded per file.
    """
    seen: dict[str, tuple[str, dict[str, object]]] = {}
    for path, signature in signatures:
        for name, entry in signature.items():
            if name not in seen:
                seen[name] = (path, entry)
                continue
            first_path, first = seen[name]
            keys = ("dtype",) + CF_ENCODING_ATTRIBUTES
            problems = [f"{k} {first.get(k)!r} in {first_path} vs {entry.get(k)!r} in {path}"
                        for k in keys if not _same(first.get(k), entry.get(k))
                        or k in PACKING_ATTRIBUTES and _float_type(first.get(k)) != _float_type(entry.get(k))]
            if problems:
                raise CFEncodingMismatchError(
                    f"variable {name!r} is encoded differently in {first_path} and {path}: "
                    f"{'; '.join(problems)}. Concatenating their references would decode one file's numbers "
                    f"with the other's encoding. Load it instead (loadable_variables=[..., {name!r}]) so each "
                    "file is decoded on its own, or drop it (drop_variables)."
                )
