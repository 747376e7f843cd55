"""What a writer writes: one tree of groups and arrays, the same for the kerchunk and Icechunk writers.

A plan is made from a virtual ``xarray.Dataset`` or ``xarray.DataTree`` (every
group), a ``ManifestGroup`` or a ``ManifestStore``. Each array is in its stored form (a ManifestArray of
references and inlined encoded chunks) with its CF attributes as xarray
holds them in memory (a plain numeric ``_FillValue``) and non-index
coordinates named in ``coordinates`` attributes by xarray's own encoding
(``xarray.conventions.encode_dataset_coordinates``); each writer turns the
attributes into its format's documents. Arrays persisted on a distributed
cluster carry their held blocks, so the writers can write them where they are.

Variables of a Dataset held in memory (numpy or dask) are the one place the
writers differ: Icechunk writes them through xarray's zarr route
(``PlannedGroup.loaded``); kerchunk references hold them as inlined chunks,
CF-encoded here as ``to_zarr`` would (``in_memory="inline"``).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from xarray import SerializationWarning

from vzdask._compat import dataset_replace, decode_cf_variable, encode_cf_variable, encode_dataset_coordinates, variable_data
from vzdask.errors import VzdaskWarning
from vzdask.manifests.array import ManifestArray
from vzdask.manifests.group import ManifestGroup
from vzdask.manifests.manifest import ChunkManifest
from vzdask.manifests.metadata import create_array_metadata, decode_cf_fill_value
from vzdask.manifests.store import ManifestStore
from vzdask.writers.cluster import HeldBlocks


@dataclass(frozen=True)
class PlannedArray:
    """One array to write, in its stored form."""

    path: str  # from the output's root: "group/sub/name"
    array: ManifestArray  # references and inlined encoded chunks (``array.manifest`` gathers held ones)
    attributes: dict[str, Any]  # CF attributes as xarray holds them (a numeric _FillValue)
    dimension_names: tuple[str, ...] | None
    held: HeldBlocks | None  # the persisted blocks, if a distributed cluster holds them


@dataclass
class PlannedGroup:
    """One group to write: its attributes, arrays, in-memory variables (``loaded``) and subgroups."""

    path: str  # "" is the root
    attributes: dict[str, Any]
    arrays: dict[str, PlannedArray] = field(default_factory=dict)
    loaded: Any = None  # an xarray.Dataset of in-memory variables (in_memory="keep"), or None
    groups: list[PlannedGroup] = field(default_factory=list)

    def walk(self) -> Iterator[PlannedGroup]:
        """This group, then its subgroups depth-first."""
        yield self
        for child in self.groups:
            yield from child.walk()

    def all_arrays(self) -> Iterator[PlannedArray]:
        """Every array of this group and its subgroups, depth-first."""
        for group in self.walk():
            yield from group.arrays.values()


def plan_write(obj: Any, path: str = "", *, in_memory: Literal["keep", "inline"] = "keep") -> PlannedGroup:
    """The plan for writing ``obj`` (a virtual Dataset, ManifestGroup or ManifestStore) at group ``path``.

    Parameters
    ----------
    obj : xarray.Dataset, xarray.DataTree, ManifestGroup or ManifestStore
        A DataTree is written node by node, each group with its own variables.
    path : str
        Where the root of ``obj`` goes in the output ("" for the root).
    in_memory : {"keep", "inline"}
        A Dataset's in-memory variables: kept as ``loaded`` (a Dataset), or
        turned into arrays of inlined chunks. A loaded variable that still
        holds the ManifestArray it was read from (and whose values are
        exactly what that array decodes to) is written as that array.
    """
    if isinstance(obj, ManifestStore):
        obj = obj.group
    if isinstance(obj, ManifestGroup):
        return _plan_group(obj, path)
    import xarray as xr

    if isinstance(obj, xr.Dataset):
        return _plan_dataset(obj, path, in_memory)
    if isinstance(obj, xr.DataTree):
        return _plan_tree(obj, path, in_memory)
    raise TypeError(
        f"expected an xarray.DataTree, Dataset, ManifestGroup or ManifestStore, not {type(obj).__name__}"
    )


def _plan_tree(tree, path: str, in_memory: str) -> PlannedGroup:
    """Every node of a DataTree: each group with its own variables (children inherit coordinates on reading)."""
    planned = _plan_dataset(tree.to_dataset(inherit=False), path, in_memory)
    planned.groups = [_plan_tree(child, join_path(path, str(name)), in_memory) for name, child in tree.children.items()]
    return planned


def join_path(parent: str, name: str) -> str:
    """``parent/name`` for store paths, where ``""`` is the root."""
    return f"{parent}/{name}" if parent else name


def _planned(path: str, array: ManifestArray, attributes: dict[str, Any], dimension_names) -> PlannedArray:
    dims = tuple(str(d) for d in dimension_names) if dimension_names is not None else None
    return PlannedArray(path, array, attributes, dims, HeldBlocks.of(array))


def _plan_group(group: ManifestGroup, path: str) -> PlannedGroup:
    planned = PlannedGroup(path, dict(group.attributes))
    for name, array in group.arrays.items():
        attributes = decode_cf_fill_value(dict(array.metadata.attributes), array.dtype)
        planned.arrays[name] = _planned(join_path(path, name), array, attributes, array.dimension_names)
    planned.groups = [_plan_group(sub, join_path(path, name)) for name, sub in group.groups.items()]
    return planned


def _plan_dataset(ds, path: str, in_memory: str) -> PlannedGroup:
    variables, attributes = encode_dataset_coordinates(ds)
    planned = PlannedGroup(path, dict(attributes))
    in_memory_names = []
    for name, var in variables.items():
        name = str(name)
        data = variable_data(var)
        if isinstance(data, ManifestArray):
            if data.ndim != var.ndim:
                raise ValueError(f"variable {name!r}: {var.ndim} dimensions but its ManifestArray has {data.ndim}")
            planned.arrays[name] = _planned(join_path(path, name), data, dict(var.attrs), var.dims)
        elif in_memory == "inline":
            array, attrs = _stored_form(name, var)
            planned.arrays[name] = _planned(join_path(path, name), array, attrs, var.dims)
        else:
            in_memory_names.append(name)
    if in_memory_names:
        loaded = ds.drop_vars(list(planned.arrays))
        exact = {name: exact_encoding(name, _whole_strings(var)) for name, var in loaded.variables.items()}
        if any(var is not loaded.variables[name] for name, var in exact.items()):
            loaded = dataset_replace(loaded, exact, set(loaded.coords))
        planned.loaded = loaded
    return planned


def _stored_form(name: str, var) -> tuple[ManifestArray, dict[str, Any]]:
    """A loaded variable as a ManifestArray: the one it was read from if its values are unchanged, else inlined."""
    from vzdask.xarray import MANIFEST_ENCODING_KEY

    stored = var.encoding.get(MANIFEST_ENCODING_KEY)
    if isinstance(stored, ManifestArray) and _values_came_from(name, var, stored):
        attrs = decode_cf_fill_value(dict(stored.metadata.attributes), stored.dtype)
        return stored, {**attrs, **var.attrs}
    return _encode_inline(name, var)


def _values_came_from(name: str, var, stored: ManifestArray) -> bool:
    """True if decoding ``stored`` gives exactly the loaded variable's values (one read of ``stored``)."""
    import xarray as xr

    if tuple(var.shape) != stored.shape:
        return False
    try:
        from vzdask.chunk_tasks import read_array

        # a small loaded coordinate: read it here, not through a dask graph (persisted arrays compute)
        values = read_array(stored) if stored.is_gathered else stored.compute()
        raw = xr.Variable(var.dims, values,
                          attrs=decode_cf_fill_value(dict(stored.metadata.attributes), stored.dtype))
        kind = var.dtype.kind
        decoded = decode_cf_variable(
            name, raw, decode_times=kind in "MO", decode_timedelta=kind == "m"
        )
        ours, theirs = np.asarray(decoded.values), np.asarray(var.values)
        if ours.dtype != theirs.dtype:
            return False
        return bool(np.array_equal(ours, theirs, equal_nan=kind in "fcmM"))
    except Exception:  # anything undecodable: re-encode the values instead
        return False


def _whole_strings(var):
    """``var`` without an encoding ``dtype`` that would cut its strings (the first file's ``<U2`` for ``<U4``)."""
    if var.dtype.kind not in "UO" or "dtype" not in var.encoding:
        return var
    var = var.copy(deep=False)
    var.encoding = {k: v for k, v in var.encoding.items() if k != "dtype"}
    return var


def _encode_inline(name: str, var) -> tuple[ManifestArray, dict[str, Any]]:
    """CF-encode a loaded variable as ``to_zarr`` would and hold its chunks inlined (zarr-encoded)."""
    from vzdask.codecs import codec_for
    from vzdask.xarray import MANIFEST_ENCODING_KEY

    var = var.copy(deep=False)
    var.encoding = {k: v for k, v in var.encoding.items() if k != MANIFEST_ENCODING_KEY}
    var = exact_encoding(name, _whole_strings(var))
    with warnings.catch_warnings():  # exact_encoding warned already where the encoding changes anything
        warnings.simplefilter("ignore", SerializationWarning)
        encoded = encode_cf_variable(var, name=name)
    values = np.asarray(encoded.values)
    attrs = dict(encoded.attrs)
    codecs = None
    fill = attrs.get("_FillValue")
    if values.dtype.kind in "OUT":
        values = values.astype(np.dtypes.StringDType())
        codecs = [{"name": "vlen-utf8"}]
        fill = ""
    elif values.dtype.kind not in "biufcSMm":
        raise ValueError(f"variable {name!r}: dtype {values.dtype} cannot be written to kerchunk references")
    if values.dtype.byteorder == ">":
        values = values.astype(values.dtype.newbyteorder("<"))
    shape = values.shape
    chunks = _encoding_chunks(var.encoding.get("chunks"), shape)
    metadata = create_array_metadata(
        shape=shape, chunk_shape=chunks, dtype=values.dtype, codecs=codecs,
        fill_value=fill if values.dtype.kind in "biufc" else None,
        dimension_names=tuple(str(d) for d in var.dims),
    )
    codec = codec_for(metadata)
    grid = tuple(-(-s // c) for s, c in zip(shape, chunks))
    inlined = {}
    for index in np.ndindex(*grid):
        block = values[tuple(slice(i * c, (i + 1) * c) for i, c in zip(index, chunks))]
        if block.shape != chunks:
            padded = np.full(chunks, codec.fill_value, dtype=values.dtype)
            padded[tuple(slice(0, s) for s in block.shape)] = block
            block = padded
        inlined[index] = codec.encode(block)
    manifest = ChunkManifest.from_arrays(
        paths=np.full(grid, "", dtype=object), offsets=np.zeros(grid, np.uint64),
        lengths=np.zeros(grid, np.uint64), inlined=inlined or None,
    )
    return ManifestArray(metadata, manifest), attrs


#: Encoding keys that pack or mask values: dropped when the values do not fit them.
_PACKING = ("scale_factor", "add_offset", "dtype", "_FillValue", "missing_value", "_Unsigned")


def exact_encoding(name: str, var):
    """The in-memory variable with an encoding that writes its values exactly (``var`` itself if it has one).

    A variable loaded from many files keeps the first file's encoding: when
    the files pack it differently (``scale_factor``, ``add_offset``, an
    integer dtype), the other files' values do not fit it and writing them
    with it would silently change them (int16 overflows). Such a variable is
    written unpacked in its in-memory dtype instead (the packing attributes
    dropped), with a ``VzdaskWarning``. Values that fit are written as
    encoded. Only numeric numpy values are checked (dask values would be
    computed).
    """
    data = variable_data(var)
    if not isinstance(data, np.ndarray) or data.dtype.kind not in "biufcmM" or _round_trips(name, var):
        return var
    drop = set(_PACKING)
    if data.dtype.kind in "mM":  # times in other units than the first file's
        drop |= {"units", "calendar"}
    unpacked = var.copy(deep=False)
    unpacked.encoding = {k: v for k, v in var.encoding.items() if k not in drop}
    unpacked.attrs = {k: v for k, v in var.attrs.items() if k not in drop}
    if not _round_trips(name, unpacked):
        raise ValueError(f"variable {name!r}: its {data.dtype} values cannot be written exactly, neither with "
                         f"their encoding {_packing_text(var)} nor unpacked")
    warnings.warn(
        f"variable {name!r}: its values do not fit the encoding it carries, {_packing_text(var)} (a variable loaded "
        f"from files that pack it differently keeps the first file's): written unpacked as {data.dtype}, "
        "without packing attributes, so that they read back exactly",
        VzdaskWarning, stacklevel=2,
    )
    return unpacked


def _packing_text(var) -> str:
    found = {k: var.encoding.get(k, var.attrs.get(k)) for k in (*_PACKING, "units")}
    return ", ".join(f"{k}={v!r}" for k, v in found.items() if v is not None) or "(none)"


def _round_trips(name: str, var) -> bool:
    """Whether CF-encoding ``var`` as ``to_zarr`` would and decoding it back gives exactly its values and dtype."""
    from vzdask.xarray import MANIFEST_ENCODING_KEY

    probe = var.copy(deep=False)
    probe.encoding = {k: v for k, v in var.encoding.items() if k != MANIFEST_ENCODING_KEY}
    kind = var.dtype.kind
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # overflow, "no _FillValue for NaNs": what is being checked
            encoded = encode_cf_variable(probe, name=name)
            decoded = decode_cf_variable(name, encoded, decode_times=kind == "M", decode_timedelta=kind == "m")
            ours, theirs = np.asarray(decoded.values), np.asarray(var.values)
    except (ValueError, TypeError, OverflowError):
        return False
    return ours.dtype == theirs.dtype and bool(np.array_equal(ours, theirs, equal_nan=kind in "fcmM"))


def _encoding_chunks(chunks: Any, shape: tuple[int, ...]) -> tuple[int, ...]:
    whole = tuple(max(int(s), 1) for s in shape)
    if chunks is None:
        return whole
    try:
        chunks = tuple(int(c) for c in chunks)
    except (TypeError, ValueError):
        return whole
    if len(chunks) != len(shape) or any(c < 1 for c in chunks):
        return whole
    return tuple(min(c, w) for c, w in zip(chunks, whole))
