"""The xarray layer: virtual Datasets from ManifestStores and from files."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr

from vzdask._compat import decode_cf_variables, variable_data, variable_fastpath
from vzdask.manifests.array import ManifestArray
from vzdask.manifests.group import ManifestGroup, coordinate_names
from vzdask.manifests.manifest import VIRTUAL
from vzdask.manifests.metadata import numpy_attributes, xarray_attributes
from vzdask.manifests.store import ManifestStore
from vzdask.policy import InlinePolicy
from vzdask.registry import ObjectStoreRegistry

if TYPE_CHECKING:
    from vzdask.parsers.common import Parser

#: ``Variable.encoding`` key under which a loaded variable keeps the ManifestArray it was read from.
MANIFEST_ENCODING_KEY = "vzdask_manifest_array"


def dimension_names(name: str, array: ManifestArray) -> tuple[str, ...]:
    """The array's dimension names; arrays without them get xarray-style ``phony_dim_N`` names."""
    dims = array.dimension_names
    if dims is None and array.ndim == 0:
        return ()
    if dims is None or any(d is None for d in dims):
        raise ValueError(
            f"variable {name!r} has no dimension names; parsers must name every dimension "
            "(plain HDF5 datasets get phony_dim_N names)"
        )
    return tuple(dims)


@dataclass
class VirtualParts:
    """The pieces of one virtual Dataset before xarray assembles it.

    Assembling (default indexes, alignment) costs more than the rest of a
    file's conversion, so a multi-file open combines these pieces and builds
    one Dataset; ``to_dataset`` builds the Dataset of one file.
    """

    variables: dict[str, xr.Variable]  # in the file's order
    coord_names: frozenset[str]
    loaded: frozenset[str]  # read into numpy; the loaded dimension coordinates get indexes
    attrs: dict[str, Any]
    #: Loaded time coordinates still holding their stored numbers (see ``DecodedCache.defer_times``).
    raw_times: frozenset[str] = frozenset()
    decode_times: bool | None = None

    def decoded(self) -> VirtualParts:
        """These parts with every raw time coordinate decoded, as the file alone decodes it."""
        if not self.raw_times:
            return self
        variables = {name: decode_loaded(name, var, self.decode_times) if name in self.raw_times else var
                     for name, var in self.variables.items()}
        return VirtualParts(variables, self.coord_names, self.loaded, self.attrs, decode_times=self.decode_times)

    def to_dataset(self) -> xr.Dataset:
        """The virtual Dataset: loaded coordinates indexed, virtual ones unindexed (an index would load them)."""
        if self.raw_times:
            return self.decoded().to_dataset()
        coords, loaded = self.coord_names, self.loaded
        data_vars = {n: v for n, v in self.variables.items() if n not in coords}
        indexed = xr.Coordinates({n: v for n, v in self.variables.items() if n in coords and n in loaded})
        unindexed = xr.Coordinates(
            {n: v for n, v in self.variables.items() if n in coords and n not in loaded}, indexes={}
        )
        return xr.Dataset(data_vars, coords=indexed.merge(unindexed).coords, attrs=dict(self.attrs))


class DecodedCache:
    """CF-decoded loaded variables by their stored form, shared by the files of one multi-file open.

    Files often hold the same coordinates (lat, lon): each distinct one is
    decoded once. Only variables whose decoding depends on nothing but
    themselves are shared (no text, no time bounds); the key is the
    variable's name, dims, attributes, encoding and raw values, or (found
    before reading or decoding anything) its name, dims, metadata and
    encoded bytes.
    """

    def __init__(self, defer_times: bool = False) -> None:
        self._decoded: dict[tuple, xr.Variable] = {}
        #: Leave each file's time coordinate undecoded (``VirtualParts.raw_times``), for a combine that
        #: decodes the joined times once; ``VirtualParts.decoded`` decodes them file by file otherwise.
        self.defer_times = defer_times

    def get(self, key: tuple) -> xr.Variable | None:
        return self._decoded.get(key)

    def put(self, key: tuple, variable: xr.Variable) -> None:
        self._decoded[key] = variable


def to_virtual_dataset(
    store: ManifestStore,
    *,
    group: str | None = None,
    drop_variables: Iterable[str] | None = None,
    loadable_variables: Iterable[str] | None = None,
    decode_times: bool | None = None,
) -> xr.Dataset:
    """A Dataset whose variables wrap ManifestArrays, except ``loadable_variables`` (loaded, indexed).

    ``loadable_variables`` defaults to the dimension coordinates, so xarray can
    build indexes and combine by coordinates; loaded variables are CF-decoded
    as ``xr.open_dataset`` would. Virtual variables keep their CF attributes
    (``scale_factor``, ``_FillValue``, ``units``...) undecoded, so writers
    pass them on.
    """
    return to_virtual_parts(
        store, group=group, drop_variables=drop_variables, loadable_variables=loadable_variables,
        decode_times=decode_times,
    ).to_dataset()


def to_virtual_parts(
    store: ManifestStore,
    *,
    group: str | None = None,
    drop_variables: Iterable[str] | None = None,
    loadable_variables: Iterable[str] | None = None,
    decode_times: bool | None = None,
    cache: DecodedCache | None = None,
    parsed_bytes=None,
    inherit: bool = False,
) -> VirtualParts:
    """``to_virtual_dataset`` without assembling the Dataset; ``cache`` shares decoded coordinates between files.

    ``parsed_bytes(url, offset, length)``, from ``Parser.parse_keeping_reads``, gives bytes the parser
    already read (or None): loaded variables found there are not fetched again. With ``inherit``, the
    dimension coordinates ``group`` inherits from its ancestor groups (see ``inherited_coordinates``) are
    loaded into it too, as a DataTree node sees them.
    """
    node = store.group[group] if group else store.group
    if not isinstance(node, ManifestGroup):
        raise ValueError(f"{group!r} is an array, not a group")
    drop = set(drop_variables or ())
    names = [n for n in node.arrays if n not in drop]
    coords = coordinate_names(node)
    if loadable_variables is None:
        # dimension coordinates, and strings held as inlined <U chunks (variable-length strings): their bytes
        # are here already, and loaded they combine across files whose widest string differs (<U2 + <U4)
        loadable = {n for n in names if tuple(node.arrays[n].dimension_names or ()) == (n,)
                    or _inlined_text(node.arrays[n])}
    else:
        loadable = set(loadable_variables)
        unknown = loadable - set(names)
        if unknown:
            raise ValueError(f"loadable_variables not in the file: {sorted(unknown)}")
    arrays = dict(node.arrays)
    if inherit and group:
        inherited = inherited_coordinates(store.group, group, [node.arrays[n] for n in names])
        arrays.update(inherited)
        names += list(inherited)
        coords = coords | set(inherited)
        loadable |= set(inherited)

    loaded, raw_times = _load_variables({n: arrays[n] for n in names if n in loadable}, decode_times, cache,
                                        parsed_bytes)

    variables = {}
    for name in names:
        if name in loaded:
            variables[name] = loaded[name]
            continue
        array = arrays[name]
        variables[name] = _variable(name, array, array)
    return VirtualParts(variables, frozenset(coords & set(names)), frozenset(loaded), numpy_attributes(node.attributes),
                        raw_times=raw_times, decode_times=decode_times)


def _inlined_text(array: ManifestArray) -> bool:
    """A unicode (``<U``) array none of whose chunks is a reference: variable-length strings, decoded at parse."""
    return array.dtype.kind == "U" and not bool((array.manifest.states == VIRTUAL).any())


def inherited_coordinates(root: ManifestGroup, group: str, arrays: Iterable[ManifestArray]
                          ) -> dict[str, ManifestArray]:
    """The dimension coordinates of ``group``'s ancestors for dimensions its ``arrays`` use and it lacks.

    The nearest ancestor's wins, as netCDF-4 and DataTree resolve inherited dimensions; they give a
    group of a multi-file open the coordinates to order and align its files by.
    """
    parts = [p for p in group.split("/") if p]
    node = root[group]
    assert isinstance(node, ManifestGroup)
    wanted = {d for array in arrays for d in (array.dimension_names or ()) if d is not None} - set(node.arrays)
    found: dict[str, ManifestArray] = {}
    for depth in range(len(parts) - 1, -1, -1):  # the parent first, the root last
        ancestor = root["/".join(parts[:depth])] if depth else root
        assert isinstance(ancestor, ManifestGroup)
        for dim in sorted(wanted - set(found)):
            array = ancestor.arrays.get(dim)
            if array is not None and tuple(array.dimension_names or ()) == (dim,):
                found[dim] = array
    return found


def _variable(name: str, array: ManifestArray, data) -> xr.Variable:
    attrs = xarray_attributes(array.metadata.attributes, array.dtype)
    encoding = {"dtype": array.dtype, "chunks": array.chunk_shape}
    if "coordinates" in attrs:  # as xr.open_dataset does: CF coordinates become encoding
        encoding["coordinates"] = attrs.pop("coordinates")
    return xr.Variable(dimension_names(name, array), data, attrs=attrs, encoding=encoding)


def _load_variables(
    arrays: dict[str, ManifestArray], decode_times: bool | None, cache: DecodedCache | None = None,
    parsed_bytes=None,
) -> tuple[dict[str, xr.Variable], frozenset[str]]:
    """Read these arrays here (no dask graph: they are small) and CF-decode them as ``xr.open_dataset`` would.

    Also returns the names left undecoded (time coordinates, with a cache that defers them).
    """
    if not arrays:
        return {}, frozenset()
    from vzdask.chunk_tasks import read_arrays

    # Decoded before, from the very same stored bytes and metadata (another file's lat/lon): no read, no decode.
    stored = _stored_keys(arrays, decode_times, cache, parsed_bytes) if cache is not None else {}
    known = {name: cache.get(key) for name, key in stored.items()}
    known = {name: shared for name, shared in known.items() if shared is not None}
    todo = {name: array for name, array in arrays.items() if name not in known}
    values = read_arrays(list(todo.values()), parsed_bytes) if todo else []
    raw = {name: _variable(name, array, data) for (name, array), data in zip(todo.items(), values)}
    kwargs = {} if decode_times is None else {"decode_times": decode_times}
    keys = _cache_keys(raw, decode_times) if cache is not None else None
    deferred: set[str] = set()
    if keys is None:
        decoded, _, _ = decode_cf_variables(raw, {}, **kwargs)
        decoded = {name: _index_ready(name, decoded[name]) if name in decoded else _own(known[name])
                   for name in arrays}
    else:
        decoded = {}
        for name in arrays:
            shared = known.get(name)
            if shared is None:
                var = raw[name]
                if cache.defer_times and _is_plain_time_coordinate(name, var, decode_times):
                    deferred.add(name)
                    decoded[name] = var
                    continue
                key = keys[name]
                shared = cache.get(key) if key is not None else None
                if shared is None:
                    (shared,) = decode_cf_variables({name: var}, {}, **kwargs)[0].values()
                    shared = _index_ready(name, shared)
                    if key is not None:
                        cache.put(key, shared)
                if name in stored:
                    cache.put(stored[name], shared)
            decoded[name] = _own(shared)
    for name, array in arrays.items():
        # Loading is for indexing only: writers still write the stored form (references or inlined bytes).
        decoded[name].encoding[MANIFEST_ENCODING_KEY] = array
    return decoded, frozenset(deferred)


def _own(shared: xr.Variable) -> xr.Variable:
    """A Variable of its own (attrs, encoding) sharing a cached variable's decoded values."""
    return variable_fastpath(shared.dims, variable_data(shared), dict(shared.attrs), dict(shared.encoding))


def decode_loaded(name: str, raw: xr.Variable, decode_times: bool | None) -> xr.Variable:
    """CF-decode one loaded variable as ``_load_variables`` does (its stored array stays in its encoding)."""
    kwargs = {} if decode_times is None else {"decode_times": decode_times}
    (decoded,) = decode_cf_variables({name: raw}, {}, **kwargs)[0].values()
    decoded = _index_ready(name, decoded)
    if MANIFEST_ENCODING_KEY in raw.encoding:
        decoded.encoding[MANIFEST_ENCODING_KEY] = raw.encoding[MANIFEST_ENCODING_KEY]
    return decoded


#: Attributes that make decoding more than "number times unit since date" (masking, packing, typing).
_NOT_PLAIN_TIME = frozenset({"_FillValue", "missing_value", "scale_factor", "add_offset", "_Unsigned", "dtype",
                             "bounds", "climatology"})


def _is_plain_time_coordinate(name: str, var: xr.Variable, decode_times: bool | None) -> bool:
    """A dimension coordinate of plain numbers with CF time units: decoding it is elementwise."""
    return _is_plain_time(name, var.dims, var.dtype, var.attrs, decode_times)


def _is_plain_time(name: str, dims: tuple, dtype: np.dtype, attrs: dict, decode_times: bool | None) -> bool:
    units = attrs.get("units")
    return (decode_times is None or decode_times is True) and tuple(dims) == (name,) and dtype.kind in "iuf" \
        and isinstance(units, str) and " since " in units and not _NOT_PLAIN_TIME.intersection(attrs)


def _index_ready(name: str, var: xr.Variable) -> xr.Variable:
    """A dimension coordinate with its decoded values in numpy: decoded once, not again at each use."""
    if var.dims != (name,):
        return var
    return variable_fastpath(var.dims, np.asarray(variable_data(var)), var.attrs, var.encoding)


#: Loaded variables larger than this are decoded for their file alone (the cache key copies the raw bytes).
CACHE_MAX_BYTES = 1 << 20


def _cache_keys(raw: dict[str, xr.Variable], decode_times: bool | None) -> dict[str, tuple | None] | None:
    """Per variable, the key its decoding depends on (None: too big to share); None if one depends on another.

    ``decode_cf_variables`` looks across variables only for character
    arrays (stacking a char dimension) and time bounds (which inherit the
    time's units): such files are decoded as a whole, without the cache.
    """
    bounds = {v.attrs.get("bounds") for v in raw.values()}
    keys: dict[str, tuple | None] = {}
    for name, var in raw.items():
        if var.dtype.kind not in "biufcmM" or "bounds" in var.attrs or name in bounds:
            return None
        attrs = _freeze(var.attrs)
        encoding = _freeze(var.encoding)
        if attrs is None or encoding is None:
            return None
        values = var.values
        keys[name] = None if values.nbytes > CACHE_MAX_BYTES else (
            name, var.dims, values.dtype.str, values.shape, values.tobytes(), attrs, encoding, decode_times
        )
    return keys


def _stored_keys(arrays: dict[str, ManifestArray], decode_times: bool | None, cache: DecodedCache,
                 parsed_bytes) -> dict[str, tuple]:
    """Per loaded array whose decoding can be shared, the key of its stored form: metadata and encoded bytes.

    Only one-chunk arrays whose bytes are at hand (inlined, or read by the
    parser) have one, and none when the file's loaded variables depend on
    each other (``_cache_keys``' rule) or a time coordinate is left raw.
    """
    from vzdask.chunk_tasks import whole_chunk_bytes

    attrs = {name: xarray_attributes(array.metadata.attributes, array.dtype)
             for name, array in arrays.items()}
    bounds = {a.get("bounds") for a in attrs.values()}
    if any(array.dtype.kind not in "biufcmM" or "bounds" in attrs[name] or name in bounds
           for name, array in arrays.items()):
        return {}
    keys = {}
    for name, array in arrays.items():
        dims = dimension_names(name, array)
        if cache.defer_times and _is_plain_time(name, dims, array.dtype, attrs[name], decode_times):
            continue
        frozen = _freeze(attrs[name])
        data = whole_chunk_bytes(array, parsed_bytes)
        if frozen is None or data is None or len(data) > CACHE_MAX_BYTES:
            continue
        metadata = array.metadata
        key = ("stored", name, dims, metadata.shape, metadata.data_type, metadata.chunk_grid, metadata.codecs,
               type(metadata.fill_value), repr(metadata.fill_value), frozen, decode_times, data)
        try:
            hash(key)
        except TypeError:  # an unhashable codec configuration
            continue
        keys[name] = key
    return keys


def _freeze(mapping: dict[str, Any]) -> tuple | None:
    """A hashable, exact form of an attribute dict (None if a value has no exact form)."""
    out = []
    for key, value in mapping.items():
        if isinstance(value, np.ndarray):
            value = ("ndarray", value.dtype.str, value.shape, value.tobytes())
        elif isinstance(value, np.dtype):
            value = ("dtype", value.str)
        elif isinstance(value, np.generic):
            value = ("scalar", value.dtype.str, value.tobytes())
        elif isinstance(value, (list, tuple)):
            if not all(isinstance(v, (str, int, float, bool)) for v in value):
                return None
            value = (type(value).__name__, *((type(v).__name__, v) for v in value))
        elif isinstance(value, (str, int, float, bool, type(None))):
            value = (type(value).__name__, value)
        else:
            return None
        out.append((key, value))
    return tuple(out)


def open_virtual_dataset(
    url: str | Any,
    *,
    parser: Parser | Callable[[str, ObjectStoreRegistry], ManifestStore] | None = None,
    registry: ObjectStoreRegistry | None = None,
    group: str | None = None,
    drop_variables: Iterable[str] | None = None,
    loadable_variables: Iterable[str] | None = None,
    decode_times: bool | None = None,
    inline: InlinePolicy | None = None,
    on_unsupported: str = "raise",
) -> xr.Dataset:
    """Open one file (or reference set) as a virtual Dataset.

    Parameters
    ----------
    url : str or icechunk object
        Local path or ``file://``, ``s3://``, ``http(s)://``, ``memory://`` url; or an
        icechunk ``Repository`` (its branch ``main``), ``Session`` or ``IcechunkStore``
        (for a tag, snapshot or location: ``parser=IcechunkParser(obj, tag=...)``).
    parser : Parser or callable, optional
        A ``vzdask.parsers`` parser (``HDFParser(...)``, ...) or any callable
        ``parser(url, registry) -> ManifestStore``; detected from the file's
        first bytes when omitted (``vzdask.parsers.detect_parser``).
    registry : ObjectStoreRegistry, optional
        Defaults to one that creates stores for common url schemes on demand.
    group : str, optional
        Open this group of the file.
    drop_variables : iterable of str, optional
        Variables to leave out. The detected parser does not parse them, so
        a variable it cannot virtualize (e.g. an unsupported HDF5 filter) can
        be dropped to open the rest; with ``parser=``, give them to its
        constructor for that.
    loadable_variables : iterable of str, optional
        Variables to load into numpy (for indexing); default: dimension coordinates.
    decode_times : bool, optional
        Passed to xarray when decoding loaded variables.
    inline : InlinePolicy, optional
        Which chunks the (detected) parser inlines into the manifest.
    on_unsupported : {"raise", "warn"}
        Variables the detected parser cannot represent (a type zarr cannot
        hold, a filter without a zarr codec; an attribute JSON cannot hold is
        left out with an ``UnsupportedAttributeWarning`` instead):
        ``"raise"`` raises one ``ParseError`` listing them all, with the
        ``drop_variables`` that opens the rest; ``"warn"`` opens the rest and
        warns once (``vzdask.errors.UnsupportedVariableWarning``). netCDF4/HDF5
        files are parsed past such variables; the other formats raise at the
        first one.
    """
    ds = open_virtual_parts(
        url, parser=parser, registry=registry, group=group, drop_variables=drop_variables,
        loadable_variables=loadable_variables, decode_times=decode_times, inline=inline,
        on_unsupported=on_unsupported,
    ).to_dataset()
    if inline is not None:
        inline.check_variables([str(name) for name in ds.variables], f"is not in {url}")
    return ds


def open_virtual_parts(
    url: str | Any,
    *,
    parser: Parser | Callable[[str, ObjectStoreRegistry], ManifestStore] | None = None,
    registry: ObjectStoreRegistry | None = None,
    group: str | None = None,
    drop_variables: Iterable[str] | None = None,
    loadable_variables: Iterable[str] | None = None,
    decode_times: bool | None = None,
    inline: InlinePolicy | None = None,
    on_unsupported: str = "raise",
    cache: DecodedCache | None = None,
    opened=None,
    inherit_coords: bool = False,
) -> VirtualParts:
    """``open_virtual_dataset`` without assembling the Dataset (see ``VirtualParts``).

    ``opened``: the file already open (``vzdask.parsers.read_ahead``), for the parser to go on from.
    ``inherit_coords``: ``group`` with the dimension coordinates it inherits from its ancestors
    (``inherited_coordinates``); the detected parser then parses the whole file.
    """
    from vzdask.parsers import Parser, detect_parser

    source, url = source_url(url)
    registry = registry if registry is not None else ObjectStoreRegistry.default()
    inherit = bool(inherit_coords and group and group.strip("/"))
    if parser is None:
        parser = detect_parser(source, registry, inline=inline, group=None if inherit else group,
                               drop_variables=drop_variables, on_unsupported=on_unsupported,
                               opened=opened)
    elif inline is not None:
        raise ValueError("pass inline= to the parser's constructor when giving parser=")
    elif on_unsupported != "raise":
        raise ValueError("pass on_unsupported= to the parser's constructor when giving parser=")
    elif opened is not None and isinstance(parser, Parser):
        parser.continue_from(opened)  # used by the next parse of this url only
    if hasattr(parser, "parse_keeping_reads"):
        store, parsed_bytes = parser.parse_keeping_reads(url, registry)
    else:  # any callable (url, registry) -> ManifestStore
        store, parsed_bytes = parser(url, registry), None
    # a parser configured with a group already made that group the store's root
    group = group if not getattr(parser, "group", None) else None
    _check_group(store, group, url)
    return to_virtual_parts(
        store,
        group=group,
        drop_variables=drop_variables,
        loadable_variables=loadable_variables,
        decode_times=decode_times,
        cache=cache,
        parsed_bytes=parsed_bytes,
        inherit=inherit and group is not None,
    )


def _check_group(store: ManifestStore, group: str | None, url: str) -> None:
    """A clear error when ``group`` is not a group of the parsed file (for parsers without ``group=``, netCDF3)."""
    from vzdask.errors import ParseError

    if not group or not group.strip("/"):
        return
    node = store.group[group] if group in store.group else None
    if node is None:
        groups = [path for path, _ in store.group.walk_groups() if path]
        raise ParseError(f"{url}: no group {group!r} (its groups: {', '.join(groups) or 'none, only the root'})")
    if not isinstance(node, ManifestGroup):
        raise ParseError(f"{url}: {group!r} is an array, not a group")


def open_virtual_groups(
    url: str | Any,
    *,
    parser: Parser | Callable[[str, ObjectStoreRegistry], ManifestStore] | None = None,
    registry: ObjectStoreRegistry | None = None,
    group: str | None = None,
    drop_variables: Iterable[str] | None = None,
    loadable_variables: Iterable[str] | None = None,
    decode_times: bool | None = None,
    inline: InlinePolicy | None = None,
    on_unsupported: str = "raise",
) -> dict[str, VirtualParts]:
    """Every group of one file (below ``group``) as ``VirtualParts``, by path from there ("" first), parsed once.

    ``drop_variables`` and ``loadable_variables`` name variables of any group: each group drops and loads
    the ones it has (``loadable_variables`` naming a variable of no group is an error).
    """
    from vzdask.parsers import detect_parser

    source, url = source_url(url)
    registry = registry if registry is not None else ObjectStoreRegistry.default()
    if parser is None:
        parser = detect_parser(source, registry, inline=inline, group=group, drop_variables=drop_variables,
                               on_unsupported=on_unsupported)
    elif inline is not None or on_unsupported != "raise":
        raise ValueError("pass inline= and on_unsupported= to the parser's constructor when giving parser=")
    if hasattr(parser, "parse_keeping_reads"):
        store, parsed_bytes = parser.parse_keeping_reads(url, registry)
    else:
        store, parsed_bytes = parser(url, registry), None
    group = group if not getattr(parser, "group", None) else None
    _check_group(store, group, url)
    top = store.group[group] if group and group.strip("/") else store.group
    assert isinstance(top, ManifestGroup)  # _check_group
    loadable = None if loadable_variables is None else set(loadable_variables)
    if loadable:
        found = {name for _, node in top.walk_groups() for name in node.arrays}
        unknown = loadable - found
        if unknown:
            raise ValueError(f"{url}: loadable_variables in no group of the file: {sorted(unknown)}")
    base = group.strip("/") if group else ""
    out = {}
    for path, node in top.walk_groups():
        out[path] = to_virtual_parts(
            store, group="/".join(p for p in (base, path) if p) or None, drop_variables=drop_variables,
            loadable_variables=None if loadable is None else loadable & set(node.arrays),
            decode_times=decode_times, parsed_bytes=parsed_bytes,
        )
    return out


def source_url(source: Any) -> tuple[Any, str]:
    """``(what detect_parser is given, the url the parser is called with)`` for what the user opens.

    A path or url gives its url twice; an icechunk ``Repository``, ``Session`` or ``IcechunkStore`` is
    itself what the parser reads, named by its location (or kind and snapshot) in messages.
    """
    from vzdask.parsers.icechunk import icechunk_source_url, is_icechunk_source

    if is_icechunk_source(source):
        return source, icechunk_source_url(source)
    url = as_url(source)
    return url, url


def as_url(url: str) -> str:
    import os

    url = os.fspath(url)
    if "://" not in url:
        return "file://" + os.path.abspath(url)
    return url

