"""CF-safe combining: refuse to concatenate variables whose CF encoding differs.

Concatenating references of files packed with different ``scale_factor`` (or
``add_offset``, ``_FillValue``, ``units``...) would silently decode every file
with the first file's encoding: wrong numbers, no error. Loaded variables are
already CF-decoded, so they combine safely (times in different units included).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

from vzdask._compat import dataset_replace, variable_data, variable_fastpath
from vzdask.errors import CFEncodingMismatchError, CombineError
from vzdask.manifests.array import ManifestArray
from vzdask.manifests.manifest import ChunkManifest
from vzdask.manifests.metadata import replace_metadata

#: Attributes that change what the stored numbers mean.
CF_ENCODING_ATTRIBUTES = ("scale_factor", "add_offset", "_FillValue", "missing_value", "units", "calendar")


#: Attributes of a grid mapping (CF ``crs_wkt``, GDAL's/rioxarray's ``spatial_ref`` and ``GeoTransform``): files
#: whose rasters sit on different grids or in different CRSs must not share one grid mapping.
GRID_MAPPING_ATTRIBUTES = ("crs_wkt", "spatial_ref", "GeoTransform")


#: Attributes whose float type is the type packed integers unpack into (xarray's rule, as netCDF readers').
PACKING_ATTRIBUTES = ("scale_factor", "add_offset")


#: Dimension coordinates up to this many values carry a digest of them in the signature.
_DIGEST_MAX_SIZE = 1 << 20

#: The attributes that decode a loaded coordinate left raw (a time whose decoding is deferred).
_ENDS_ATTRIBUTES = ("units", "calendar", "scale_factor", "add_offset")


def coordinate_range(name: str, entry: dict[str, object]):
    """A dimension coordinate's first and last value in one file, decoded as the combined one, from its signature.

    None when the signature has none (a virtual coordinate, an empty one) or they do not decode.
    """
    import pandas as pd
    import xarray as xr

    ends = entry.get("ends")
    if ends is None:
        return None
    try:
        raw = xr.Variable((name,), np.asarray(ends), attrs=dict(entry.get("ends_attrs") or {}))  # type: ignore[call-overload]
        return pd.Index(np.asarray(xr.decode_cf(xr.Dataset({name: raw}))[name].values))
    except Exception:  # undecodable: this file cannot be placed
        return None


def cf_signature(ds) -> dict[str, dict[str, object]]:
    """Per variable: dims and shape; per virtual variable also its dtype, chunk shape and CF encoding attributes.

    Small, cheap to ship from workers. ``check_cf_compatible`` compares the
    virtual entries; ``explain_combine_failure`` uses all of them to name the
    variable and files a failed combine trips on. Loaded variables have
    ``"loaded": True``. ``ds`` is a Dataset or ``VirtualParts``.
    """
    signature: dict[str, dict[str, object]] = {}
    for name, var in ds.variables.items():
        data = variable_data(var)
        entry: dict[str, object] = {"dims": tuple(var.dims), "shape": tuple(var.shape)}
        if isinstance(data, ManifestArray):
            entry.update({"dtype": str(var.dtype), "chunks": tuple(data.chunk_sizes)})
            entry.update({attr: var.attrs[attr] for attr in CF_ENCODING_ATTRIBUTES + GRID_MAPPING_ATTRIBUTES
                          if attr in var.attrs})
        else:
            entry["loaded"] = True
            if tuple(var.dims) == (name,) and var.size <= _DIGEST_MAX_SIZE:  # a dimension coordinate
                values = np.ascontiguousarray(np.asarray(data))
                if values.dtype.kind in "biufcmM":
                    entry["digest"] = (values.dtype.str, hashlib.sha1(values.tobytes()).hexdigest())
                    if values.size:  # where the file's range lies (check_no_overlap names files by it)
                        entry["ends"] = (values[0], values[-1])
                        entry["ends_attrs"] = {k: var.attrs[k] for k in _ENDS_ATTRIBUTES if k in var.attrs}
        signature[str(name)] = entry
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
            if entry.get("loaded"):
                continue
            if name not in seen:
                seen[name] = (path, entry)
                continue
            first_path, first = seen[name]
            keys = ("dtype",) + CF_ENCODING_ATTRIBUTES + GRID_MAPPING_ATTRIBUTES
            problems = [f"{k} {first.get(k)!r} in {first_path} vs {entry.get(k)!r} in {path}"
                        for k in keys if not _same(first.get(k), entry.get(k))
                        or k in PACKING_ATTRIBUTES and _float_type(first.get(k)) != _float_type(entry.get(k))]
            if problems and all(k in GRID_MAPPING_ATTRIBUTES for k in keys
                                if not _same(first.get(k), entry.get(k))):
                raise CFEncodingMismatchError(
                    f"grid mapping {name!r} differs between {first_path} and {path}: {'; '.join(problems)}. "
                    "Their rasters lie on different grids or in different CRSs, so one set of coordinates "
                    "cannot describe both; combine files of one grid (reproject the others first)."
                )
            if problems:
                raise CFEncodingMismatchError(
                    f"variable {name!r} is encoded differently in {first_path} and {path}: "
                    f"{'; '.join(problems)}. Concatenating their references would decode one file's numbers "
                    f"with the other's encoding. Load it instead (loadable_variables=[..., {name!r}]) so each "
                    "file is decoded on its own, or drop it (drop_variables)."
                )


#: How many files one message names (the rest are counted).
_NAMED_FILES = 4


def _name_files(paths: Sequence[str]) -> str:
    if len(paths) <= _NAMED_FILES:
        return ", ".join(paths)
    return f"{', '.join(paths[:_NAMED_FILES])} and {len(paths) - _NAMED_FILES} more"


def _list(values) -> str:
    return "[" + ", ".join(str(v) for v in values) + "]"


_ANALYSIS_WAY_OUT = ("vzdask.open_mfdataset(...), which opens this collection for analysis (dask arrays combined "
                     "by xarray, no single manifest needed) with the values xr.open_mfdataset gives")


def explain_combine_failure(
    signatures: Sequence[tuple[str, dict[str, dict[str, object]]]], combine: str, concat_dim, join: str = "outer"
) -> CombineError | None:
    """Why these files make no one virtual dataset, naming the variable, the files and the way out; None if unknown.

    Called after a combine failed (never on the fast path). ``signatures`` are
    ``(file, cf_signature(...))`` pairs in the order the files were given. Checked
    in turn: a ``concat_dim`` some files lack, a variable some files lack, a
    virtual variable whose shapes or chunk shapes cannot share one chunk grid,
    and a dimension coordinate (other than the concatenation one) that differs
    between files, so that aligning them would reindex virtual arrays.
    """
    if not signatures:
        return None
    missing = _missing_concat_dim(signatures, combine, concat_dim)
    if missing is not None and isinstance(concat_dim, str) and not any(
            concat_dim in _file_dims(signature) for _, signature in signatures):
        # stacking along a new dimension (or a misspelt one): a coordinate that differs (rasters on
        # different grids) is what the alignment tripped on; say which, and between which files
        misaligned = _misaligned(signatures, combine, concat_dim, join)
        if misaligned is not None:
            return CombineError(f"{missing} Here: {misaligned}")
    return (missing or _missing_variable(signatures)
            or _uneven_chunks(signatures, combine, concat_dim) or _misaligned(signatures, combine, concat_dim, join))


def _file_dims(signature: dict[str, dict[str, object]]) -> list[str]:
    dims: dict[str, None] = {}
    for entry in signature.values():
        dims.update(dict.fromkeys(entry.get("dims", ())))  # type: ignore[arg-type]
    return list(dims)


def _missing_concat_dim(signatures, combine: str, concat_dim) -> CombineError | None:
    if combine != "nested" or concat_dim is None:
        return None
    wanted = [concat_dim] if isinstance(concat_dim, str) else [d for d in concat_dim if d is not None]
    for dim in wanted:
        lacking = [path for path, signature in signatures if dim not in _file_dims(signature)]
        if not lacking:
            continue
        path, signature = next((p, s) for p, s in signatures if p == lacking[0])
        dims = ", ".join(_file_dims(signature)) or "none"
        if len(lacking) == len(signatures):
            where = (f"concat_dim {dim!r} is not a dimension of {path} (its dimensions: {dims}), nor of any other "
                     f"file: combine='nested' stacks the files along a new dimension {dim!r} and aligns their "
                     "other coordinates, which these virtual arrays cannot do")
        else:
            where = (f"concat_dim {dim!r} is not a dimension of {_name_files(lacking)} (dimensions of {path}: "
                     f"{dims}), while {len(signatures) - len(lacking)} other files have it")
        return CombineError(f"{where}. Give concat_dim a dimension every file has, or use {_ANALYSIS_WAY_OUT}.")
    return None


def _missing_variable(signatures) -> CombineError | None:
    names: dict[str, None] = {}
    for _, signature in signatures:
        names.update(dict.fromkeys(signature))
    for name in names:
        lacking = [path for path, signature in signatures if name not in signature]
        if not lacking:
            continue
        having = [path for path, signature in signatures if name in signature]
        return CombineError(
            f"variable {name!r} is missing from {len(lacking)} of {len(signatures)} files "
            f"({_name_files(lacking)}; it is in {_name_files(having)}): a virtual dataset pads it as xarray does "
            f"(all-missing chunks) only where that is exact (a floating-point variable whose fill value decodes to "
            f"NaN, on a grid the files fit). Leave it out (drop_variables=[{name!r}]) to combine the "
            f"rest virtually, or use {_ANALYSIS_WAY_OUT}."
        )
    return None


def _uneven_chunks(signatures, combine: str, concat_dim) -> CombineError | None:
    names: dict[str, None] = {}
    for _, signature in signatures:
        names.update({n: None for n, e in signature.items() if not e.get("loaded")})
    joined = _joined_dims(signatures, combine, concat_dim)
    for name in names:
        entries = [(path, signature[name]) for path, signature in signatures
                   if name in signature and not signature[name].get("loaded")]
        if len(entries) < 2:
            continue
        problem = _chunk_problem(name, entries, joined)
        if problem:
            return CombineError(
                f"{problem}. A virtual dataset keeps one chunk grid per variable: chunks may differ in size "
                "along the dimension the files are joined along (a rectilinear grid), but every other dimension "
                "must be chunked alike, and a chunk is stored whole, so only the last file may end in a partial "
                f"chunk. Use {_ANALYSIS_WAY_OUT}; or leave the variable out (drop_variables=[{name!r}])."
            )
    return None


def _joined_dims(signatures, combine: str, concat_dim) -> set[str]:
    """The dimensions files are joined along: given (nested), or whose coordinate or length differs between files."""
    joined: set[str] = set()
    if combine == "nested":
        joined |= {concat_dim} if isinstance(concat_dim, str) else {d for d in concat_dim or () if d is not None}
    seen: dict[str, set] = {}
    for _, signature in signatures:
        for name, entry in signature.items():
            for dim, n in zip(entry.get("dims", ()), entry.get("shape", ())):  # type: ignore[call-overload]
                seen.setdefault(f"len:{dim}", set()).add(n)
            if "digest" in entry:
                seen.setdefault(f"coord:{name}", set()).add(entry["digest"])
    for key, values in seen.items():
        if len(values) > 1:
            joined.add(key.split(":", 1)[1])
    return joined


def _show_chunks(chunks) -> str:
    return _list(_list(c) if isinstance(c, (tuple, list)) else c for c in chunks)


def _describe(path: str, entry: dict) -> str:
    return f"{path} (shape {_list(entry['shape'])}, chunks {_show_chunks(entry['chunks'])})"


def _chunk_problem(name: str, entries: list, joined: set[str]) -> str | None:
    first_path, first = entries[0]
    for path, entry in entries[1:]:
        if entry["dims"] != first["dims"]:
            return (f"variable {name!r} has dimensions {tuple(first['dims'])} in {first_path} but "
                    f"{tuple(entry['dims'])} in {path}")
    dims = list(first["dims"])
    for path, entry in entries[1:]:
        for axis, dim in enumerate(dims):
            if dim not in joined and entry["chunks"][axis] != first["chunks"][axis]:
                return (f"variable {name!r} is chunked differently along {dim!r} in {_describe(first_path, first)} "
                        f"and {_describe(path, entry)}")
    for axis, dim in enumerate(dims):
        if dim not in joined:
            continue
        for (path, entry), (next_path, next_entry) in zip(entries, entries[1:]):
            length, chunk = entry["shape"][axis], entry["chunks"][axis]
            stored = sum(chunk) if isinstance(chunk, (tuple, list)) else -(-length // chunk) * chunk if chunk else 0
            if stored != length:
                size = f"its chunk size {chunk}" if isinstance(chunk, int) else f"its chunks' total {stored}"
                return (f"variable {name!r}: {_describe(path, entry)} has length {length} along {dim!r}, "
                        f"not a multiple of {size}, so its last chunk is partial and would sit "
                        f"inside the combined array, before {_describe(next_path, next_entry)}")
    return None


def _misaligned(signatures, combine: str, concat_dim, join: str) -> CombineError | None:
    concat_dims = set()
    if combine == "nested":
        concat_dims = {concat_dim} if isinstance(concat_dim, str) else {d for d in concat_dim if d is not None}
    names: dict[str, None] = {}
    for _, signature in signatures:
        names.update({n: None for n, e in signature.items() if "digest" in e})
    for name in names:
        if name in concat_dims:
            continue
        entries = [(path, signature[name]) for path, signature in signatures if "digest" in signature.get(name, {})]
        digests = [entry["digest"] for _, entry in entries]
        if len(set(digests)) == 1 or combine == "by_coords" and len(set(digests)) == len(digests):
            continue  # the same everywhere, or (by coordinates) the dimension the files are concatenated along
        first_path, first = entries[0]
        path, entry = next((p, e) for p, e in entries if e["digest"] != first["digest"])
        return CombineError(
            f"coordinate {name!r} differs between {first_path} (shape {_list(first['shape'])}) and {path} "
            f"(shape {_list(entry['shape'])}): combining aligns the files along {name!r} (join={join!r}), which "
            "would reindex or pad their virtual arrays, and references cannot express that. Give files with "
            f"the same {name!r}, or join='override' to take the first file's {name!r}, or use {_ANALYSIS_WAY_OUT}."
        )
    return None


# -- variables that come and go ----------------------------------------------


def pad_missing_variables(datasets: list, combine: str, concat_dim, kwargs: dict) -> list:
    """Each file's dataset with the virtual variables it lacks added as all-missing chunks, where that is exact.

    xarray pads a variable absent from some files with NaN (``join="outer"``,
    ``data_vars="all"``). A virtual variable can hold the same thing without
    referring to any file: an empty manifest, whose chunks read as the array's
    ``fill_value``. That is exactly xarray's padding when the variable is
    floating point and its fill value is NaN or is its ``_FillValue`` /
    ``missing_value`` (CF decoding masks it to NaN). Variables that do not
    qualify are left absent, and the combine's failure is explained as before
    (``explain_combine_failure``).
    """
    if len(datasets) < 2 or kwargs.get("join", "outer") != "outer" or kwargs.get("data_vars", "all") != "all":
        return datasets
    dim = _padding_dim(datasets, combine, concat_dim)
    if dim is None:
        return datasets
    names: dict[str, None] = {}
    for ds in datasets:
        names.update(dict.fromkeys(ds.data_vars))
    padded = list(datasets)
    for name in names:
        having = [ds for ds in datasets if name in ds.variables]
        if len(having) == len(datasets):
            continue
        template = having[0].variables[name]
        if not _paddable(template, dim):
            continue
        for i, ds in enumerate(padded):
            if name in ds.variables:
                continue
            variable = _missing_variable_of(template, dim, ds)
            if variable is None:
                return datasets  # one file cannot take it: leave every file as it was
            padded[i] = dataset_replace(ds, {**ds.variables, name: variable}, set(ds.coords))
    return padded


def _padding_dim(datasets: list, combine: str, concat_dim) -> str | None:
    """The one dimension the files are joined along: ``concat_dim``, or (by_coords) the index that differs."""
    if combine == "nested":
        return concat_dim if isinstance(concat_dim, str) else None
    differing = []
    for dim in datasets[0].dims:
        if not all(dim in ds.indexes for ds in datasets):
            continue
        first = datasets[0].indexes[dim]
        if any(not first.equals(ds.indexes[dim]) for ds in datasets[1:]):
            differing.append(dim)
    return differing[0] if len(differing) == 1 else None


def _paddable(var, dim: str) -> bool:
    """A virtual floating-point variable along ``dim`` whose missing chunks decode to NaN."""
    data = variable_data(var)
    if not isinstance(data, ManifestArray) or dim not in var.dims or data.dtype.kind != "f":
        return False
    if data.is_rectilinear:
        return False
    fill = data.metadata.fill_value
    if fill is not None and np.isnan(fill):
        return True
    declared = [var.attrs.get("_FillValue"), var.attrs.get("missing_value"), var.encoding.get("_FillValue")]
    return any(value is not None and np.any(np.asarray(value) == fill) for value in declared)


def _missing_variable_of(template, dim: str, ds):
    """``template`` (a virtual variable of another file) sized as ``ds`` along ``dim``, every chunk missing."""
    if dim not in ds.sizes:
        return None
    data = variable_data(template)
    shape = []
    for name, size in zip(template.dims, data.shape):
        if name == dim:
            shape.append(int(ds.sizes[dim]))
        elif name in ds.sizes and ds.sizes[name] == size:
            shape.append(int(size))
        else:
            return None  # another grid along a dimension the files share: xarray would align, not pad
    chunks = [min(c, s) if s else c for c, s in zip(data.chunk_shape, shape)]
    metadata = replace_metadata(data.metadata, shape=shape, chunk_shape=chunks)
    grid = [-(-s // c) if c else 0 for s, c in zip(shape, chunks)]
    array = ManifestArray(metadata, ChunkManifest.empty(grid))
    return variable_fastpath(template.dims, array, dict(template.attrs), dict(template.encoding))
