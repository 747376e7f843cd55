"""HDFParser: netCDF4 and HDF5 files, metadata through h5py over obstore.

Chunked datasets are referenced chunk by chunk from HDF5's chunk index,
contiguous datasets as one chunk, compact datasets are inlined (their bytes
live in the object header), unallocated chunks are missing. HDF5 filters map
to zarr codecs; netCDF4's dimension scales become dimension names.

What each kind of dataset becomes (raw values as netCDF-C/h5py give them;
CF-decoded as ``xr.open_dataset(engine="netcdf4")`` gives them):

* text (variable- or fixed-length strings, 0-d included): ``<U{n}``, ``n``
  the longest value, inlined (netCDF-C and xarray give ``<U{n}``);
* netCDF ``char`` arrays (one-byte strings, ``char v(x, nchar)``): ``S1``
  arrays with their char dimension, referenced virtually, as xarray's
  netCDF4 backend gives them with ``decode_cf=False``; CF decoding
  (``xr.decode_cf``, ``loadable_variables``, ``vzdask.open_mfdataset``)
  joins the last dimension into ``|S{n}`` strings and decodes them per
  ``_Encoding`` (UTF-8 -> ``str``), as xarray does for the file;
* enums: their base integer type, with ``enum_dict`` (name -> value) and
  ``enum_name`` attributes (netCDF4-python's ``Variable.datatype``);
* compounds of numbers: zarr ``struct`` arrays (packed, little-endian),
  referenced when stored so, else (padded, big-endian) inlined if small;
  compounds with other fields, vlen sequences, references and floats wider
  than 64 bits are refused with a ``ParseError`` naming the variable and
  its type;
* zero-length dimensions: empty arrays; axes without dimension scales:
  netCDF-C's ``phony_dim_N`` names (see ``PhonyDimensions``); dimensions of
  ancestor groups hidden by a nearer one of the same name: named by path
  (``/g2/dim``).
"""

from __future__ import annotations

import functools
import itertools
import json
from typing import Any

import numpy as np

from vzdask.manifests.array import ManifestArray
from vzdask.manifests.group import ManifestGroup
from vzdask.manifests.manifest import ChunkManifest
from vzdask.manifests.metadata import attribute_value, create_array_metadata
from vzdask.manifests.store import ManifestStore
from vzdask.parsers.common import (
    IsolatingParser,
    ObstoreFile,
    ParseError,
    finish,
    report_unsupported,
)
from vzdask.registry import ObjectStoreRegistry

#: netCDF4/HDF5 bookkeeping attributes that are not user metadata.
INTERNAL_ATTRIBUTES = frozenset(
    {"DIMENSION_LIST", "REFERENCE_LIST", "CLASS", "NAME", "_Netcdf4Dimid", "_Netcdf4Coordinates",
     "_nc3_strict", "_NCProperties", "_SuperblockVersion", "_IsNetcdf4"}
)
NETCDF_DIMENSION_ONLY = b"This is a netCDF dimension but not a netCDF variable"
#: netCDF-C stores a variable named like one of its dimensions but not its coordinate variable (``y(x, y)``)
#: under this prefix (the dimension's scale has the name); netCDF-C shows it without the prefix.
NON_COORD_PREFIX = "_nc4_non_coord_"

# HDF5 filter ids (H5Zpublic.h and the registered-filter list used by hdf5plugin)
DEFLATE, SHUFFLE, FLETCHER32, SZIP, LZF, BZIP2, BLOSC, LZ4, ZSTD = 1, 2, 3, 4, 32000, 307, 32001, 32004, 32015
FILTER_NAMES = {DEFLATE: "deflate", SHUFFLE: "shuffle", FLETCHER32: "fletcher32", SZIP: "szip", LZF: "lzf",
                BZIP2: "bzip2", BLOSC: "blosc", LZ4: "lz4", ZSTD: "zstd"}

#: Non-virtualizable variables up to this decoded size are encoded and inlined.
SMALL_VARIABLE_BYTES = 2**20

#: The HDF5 format signature at the start of a file (netCDF4 files are HDF5 files).
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


class HDFParser(IsolatingParser):
    """Parse netCDF4/HDF5 files into ManifestStores.

    Parameters
    ----------
    inline : InlinePolicy, optional
        Which chunks to copy into the manifest (compact datasets always are).
    group : str, optional
        Parse only this group of the file.
    drop_variables : iterable of str, optional
        Datasets of that group not to parse (they still name dimensions).
    on_unsupported : {"raise", "warn"}
        A dataset that cannot be represented (a type zarr cannot hold, a
        filter without a zarr codec) does not stop the others: the whole
        file is parsed, then ``"raise"`` raises one ``ParseError`` listing
        every such dataset with its reason and the ``drop_variables`` that
        opens the rest; ``"warn"`` leaves them out with one
        ``UnsupportedVariableWarning``. (An attribute JSON cannot hold is
        left out with an ``UnsupportedAttributeWarning``, its variable kept.)
    """

    @classmethod
    def guess_can_open(cls, head: bytes, url: str) -> bool:
        """True if ``head`` starts with the HDF5 signature (netCDF4 files included)."""
        return head.startswith(HDF5_SIGNATURE)

    def __call__(self, url: str, registry: ObjectStoreRegistry) -> ManifestStore:
        return self.parse_keeping_reads(url, registry)[0]

    def parse_keeping_reads(self, url: str, registry: ObjectStoreRegistry):
        handle = self._open(url, registry)
        if handle.size == 0:
            raise ParseError(f"{url}: empty file; nothing to virtualize")
        fid = _open_file(handle, url)
        problems: list[tuple[str, str]] = []
        try:
            root, path = _open_root(fid, self.group, url)
            group = _parse_group(root, path, url, registry, problems, drop=self.drop_variables,
                                 phony=PhonyDimensions(fid))
        finally:
            _close_file(fid)
        report_unsupported(url, problems, self.on_unsupported, path)
        return finish(group, registry, self.inline), handle.cached_range


# The parser walks the file with h5py's low-level API (h5f/h5g/h5o/h5d/h5a
# identifiers). Its high-level objects cost several times more per object
# (every ``Group[name]`` builds a File to learn the mode), and a netCDF4 file
# is a handful of objects parsed once: that overhead was most of the time.


def _open_file(handle: ObstoreFile, url: str):
    """The HDF5 file over ``handle`` (h5py's file-object driver); close it with ``_close_file``."""
    import h5py

    fapl = h5py.h5p.create(h5py.h5p.FILE_ACCESS)
    fapl.set_fileobj_driver(h5py.h5fd.fileobj_driver, handle)
    try:
        return h5py.h5f.open(b"vzdask", h5py.h5f.ACC_RDONLY, fapl=fapl)
    except OSError as err:
        raise ParseError(f"{url}: not a readable HDF5 file (truncated or corrupt?): {err}") from err


def _close_file(fid) -> None:
    """Close the file and every identifier of its objects that is still open.

    HDF5 keeps a file open while any identifier of its objects is, and with
    h5py's file-object driver an open file calls back into our Python file
    object, even at interpreter shutdown, after that object is gone: the
    process crashed at exit (issue 22). The parser's own identifiers are
    released as its functions return, so the usual file has none left and
    the count alone (a few microseconds) decides; what is left (an exception
    traceback holding a frame, a leak in a C routine) is closed here, as
    h5py's ``File.close`` does.
    """
    import h5py

    objects = h5py.h5f.OBJ_LOCAL | h5py.h5f.OBJ_DATASET | h5py.h5f.OBJ_GROUP | h5py.h5f.OBJ_DATATYPE | h5py.h5f.OBJ_ATTR
    try:
        if h5py.h5f.get_obj_count(fid, objects):
            for leftover in h5py.h5f.get_obj_ids(fid, objects):
                while leftover.valid:
                    h5py.h5i.dec_ref(leftover)
    finally:
        fid.close()


def _open_root(fid, group: str | None, url: str):
    """The group to parse (the file's root, or ``group``) and its path."""
    import h5py

    root = h5py.h5g.open(fid, b"/")
    if not group:
        return root, "/"
    try:
        node = h5py.h5o.open(root, group.encode("utf-8"))
    except (KeyError, ValueError):
        node = None
    if not isinstance(node, h5py.h5g.GroupID):
        raise ParseError(f"{url}: no group {group!r}")
    return node, _decode_name(h5py.h5i.get_name(node))


def _child_path(parent: str, name) -> str:
    return f"{parent.rstrip('/')}/{name if isinstance(name, str) else name.decode('utf-8', 'replace')}"


def _parse_group(gid, path: str, url: str, registry: ObjectStoreRegistry, problems: list[tuple[str, str]],
                 drop=frozenset(), phony: PhonyDimensions | None = None) -> ManifestGroup:
    """One group (its path is for messages): datasets become arrays, subgroups recurse.

    A dataset that cannot be represented is left out and ``(its path, why)``
    appended to ``problems``; the caller decides what to do with them.
    """
    import h5py

    arrays, groups = {}, {}
    members = []
    types: list[tuple[str, Any]] = []  # named (committed) datatypes: netCDF-4's user-defined types
    dimids: dict[int, str] = {}  # netCDF4 dimension ids of this group's dimension scales
    gcpl = gid.get_create_plist()
    for raw in _member_names(gid, gcpl):
        try:
            obj = h5py.h5o.open(gid, raw)
        except KeyError:  # a dangling soft or external link: h5py's items() gives None, skipped
            continue
        name = _decode_name(raw)
        if isinstance(obj, h5py.h5g.GroupID):
            groups[name] = _parse_group(obj, _child_path(path, name), url, registry, problems, phony=phony)
        elif isinstance(obj, h5py.h5d.DatasetID):
            plist = obj.get_create_plist()
            keys = _attribute_names(obj, plist)
            is_scale = "CLASS" in keys and _is_dimension_scale(obj)
            if is_scale and "_Netcdf4Dimid" in keys:
                dimids[int(_read_int32(obj, "_Netcdf4Dimid", ()))] = name
            members.append((name, obj, plist, keys, is_scale))
        elif isinstance(obj, h5py.h5t.TypeID):
            types.append((name, obj))
    phony = phony if phony is not None else PhonyDimensions(None)
    scope = _Scope(gid, path, {name for name, _, _, _, is_scale in members if is_scale})
    candidates: list[tuple[str, int, bool]] | None = None  # the group's dimensions, once a phony one is needed
    datasets = {}
    sizes: dict[str, int] = {}  # netCDF dimension lengths: an unlimited one is its longest variable
    for name, obj, plist, keys, is_scale in members:
        shape = obj.shape
        found = _dimension_names(obj, name, shape, keys, is_scale, dimids, scope)
        if None in found:
            if candidates is None:
                candidates = _group_dimensions(members, dimids)
            dims = phony.name_axes(found, shape, _unlimited(obj), candidates)
        else:
            dims = found
        for dim, size in zip(dims, shape):
            sizes[dim] = max(sizes.get(dim, 0), int(size))
        if is_scale and "NAME" in keys and _is_dimension_only(obj):
            continue  # a netCDF dimension without a variable
        if isinstance(name, str) and name.startswith(NON_COORD_PREFIX) and not is_scale:
            name = name[len(NON_COORD_PREFIX):]
        datasets[name] = (obj, plist, dims, keys)
    for name, (obj, plist, dims, keys) in datasets.items():
        if name in drop:
            continue
        full_name = _child_path(path, name)
        try:
            attrs = _attributes(obj, keys, url, f"variable {full_name!r}")
            attrs = _enum_attributes(obj, attrs, types)
            arrays[name] = _parse_dataset(obj, full_name, plist, dims, tuple(sizes[d] for d in dims), attrs, url,
                                          registry)
        except Exception as err:  # this variable only: the others are parsed all the same
            problems.append((full_name, _reason(err, f"{url}: variable {full_name!r}: ")))
    keys = _attribute_names(gid, gcpl)
    return ManifestGroup(arrays=arrays, groups=groups, attributes=_attributes(gid, keys, url, f"group {path!r}"))


def _enum_attributes(dsid, attrs: dict[str, Any], types: list[tuple[str, Any]]) -> dict[str, Any]:
    """An enum dataset's attributes plus its mapping, as netCDF4-python exposes it on the variable's type.

    The values are the enum's base integer type (what netCDF-C and xarray
    give); ``enum_dict`` is ``Variable.datatype.enum_dict`` (name -> value)
    and ``enum_name`` the type's name (``Variable.datatype.name``) when the
    type is a named one of the variable's group. Attributes of the same
    names in the file win.
    """
    import h5py

    mapping = h5py.check_enum_dtype(dsid.dtype)
    if mapping is None:
        return attrs
    extra: dict[str, Any] = {"enum_dict": {str(k): int(v) for k, v in mapping.items()}}
    if types:
        stored = dsid.get_type()
        name = next((n for n, t in types if t == stored), None)
        if name is not None:
            extra["enum_name"] = name
    return {**extra, **attrs}


def _reason(err: Exception, prefix: str) -> str:
    """Why a variable was left out, without the file and variable the message already names."""
    text = str(err).splitlines()[0] if str(err) else ""
    if isinstance(err, ParseError):
        return text.removeprefix(prefix)
    return f"unexpected {type(err).__name__}: {text}"


def _member_names(gid, gcpl) -> list[bytes]:
    """A group's link names in h5py's order: creation order when the group tracks it, else by name."""
    import h5py

    tracked = gcpl.get_link_creation_order() & h5py.h5p.CRT_ORDER_TRACKED
    names: list[bytes] = []
    gid.links.iterate(names.append, idx_type=h5py.h5.INDEX_CRT_ORDER if tracked else h5py.h5.INDEX_NAME)
    return names


def _is_dimension_scale(dataset_id) -> bool:
    """Whether a dataset with a ``CLASS`` attribute is a dimension scale (``CLASS == "DIMENSION_SCALE"``).

    This is the test ``H5DSis_scale`` makes; that routine (HDF5 1.14) leaves
    the ``CLASS`` attribute open when it holds anything else (PyTables writes
    ``CLASS="ARRAY"`` on every array), which kept the file open.
    """
    try:
        value = _read_attribute(dataset_id, "CLASS")
    except Exception:  # an unreadable CLASS attribute is no dimension scale
        return False
    return isinstance(value, (bytes, str)) and (value.encode() if isinstance(value, str) else value) == b"DIMENSION_SCALE"


def _is_dimension_only(scale_id) -> bool:
    """Whether a dimension scale is netCDF's stand-in for a dimension that has no variable.

    netCDF4 names those scales with a fixed sentence; a shorter ``NAME`` (a
    coordinate variable's own name) is not read at all. (``is_scale`` has
    already checked ``CLASS``.)
    """
    import h5py

    if h5py.h5a.open(scale_id, b"NAME").get_storage_size() < len(NETCDF_DIMENSION_ONLY):
        return False
    return bytes(_read_attribute(scale_id, "NAME")).startswith(NETCDF_DIMENSION_ONLY)


def _attribute_names(object_id, plist) -> list:
    """``list(obj.attrs)`` (same names, same order) from the creation plist the caller already holds.

    h5py lists in creation order when the object tracks it, else by name.
    """
    import h5py

    tracked = plist.get_attr_creation_order() & h5py.h5p.CRT_ORDER_TRACKED
    names: list = []
    h5py.h5a.iterate(object_id, names.append, index_type=h5py.h5.INDEX_CRT_ORDER if tracked else h5py.h5.INDEX_NAME)
    return [_decode_name(n) for n in names]


def _decode_name(name: bytes):
    """As h5py decodes names: UTF-8 if possible, else the bytes."""
    try:
        return name.decode("utf-8")
    except UnicodeDecodeError:
        return name


def _read_attribute(object_id, name):
    """An attribute's value exactly as h5py's ``obj.attrs[name]`` gives it, without its wrappers."""
    import h5py
    from h5py import h5t

    attr = h5py.h5a.open(object_id, name.encode("utf-8") if isinstance(name, str) else name)
    shape = attr.shape
    if shape is None:  # a null dataspace
        return h5py.Empty(attr.dtype)
    file_type = attr.get_type()
    if file_type.get_class() == h5t.STRING and not file_type.is_variable_str():
        # fixed-length text (netCDF's attributes): bytes of its size, no numpy dtype round trip
        value = np.empty(shape, f"S{file_type.get_size()}")
        attr.read(value, mtype=_fixed_string_type(file_type.get_size(), file_type.get_cset()))
        return value[()] if value.ndim == 0 else value
    dtype = file_type.dtype
    memory_type = h5t.py_create(dtype)
    if dtype.subdtype is not None:  # numpy has no top-level array types: fold the array into the shape
        dtype, subshape = dtype.subdtype
        shape = shape + subshape
    value = np.zeros(shape, dtype=dtype)
    attr.read(value, mtype=memory_type)
    string = h5t.check_string_dtype(dtype)
    if string and string.length is None:  # variable-length strings become Python str, as in h5py
        value = np.array([b.decode("utf-8", "surrogateescape") for b in value.flat], dtype=dtype).reshape(value.shape)
    return value[()] if value.ndim == 0 else value


def _read_int32(object_id, name: str, shape: tuple):
    """netCDF4's bookkeeping integers, read straight into int32 (the general reader if they are not that shape)."""
    import h5py

    value = np.empty(shape, np.int32)
    attr = h5py.h5a.open(object_id, name.encode())
    stored = attr.get_type()
    # exactly as many stored 4-byte integers as the buffer holds (HDF5 fills the buffer unchecked)
    if stored.get_class() != h5py.h5t.INTEGER or stored.get_size() != 4 or attr.get_storage_size() != value.nbytes:
        return _read_attribute(object_id, name)
    attr.read(value, mtype=_int32_type())
    return value


@functools.cache
def _int32_type():
    """The memory type of a native int32, made once (h5py would make one per read)."""
    import h5py

    return h5py.h5t.py_create(np.dtype(np.int32))


@functools.lru_cache(maxsize=64)
def _fixed_string_type(size: int, cset: int):
    """The memory type h5py reads fixed-length strings into (null-padded, same character set), made once."""
    import h5py

    encoding = "utf-8" if cset == h5py.h5t.CSET_UTF8 else "ascii"
    return h5py.h5t.py_create(h5py.string_dtype(encoding, size))


class PhonyDimensions:
    """netCDF-C's names for the axes of datasets without dimension scales: ``phony_dim_N``.

    What netCDF-C (and so netCDF4-python and xarray's netCDF4 backend) does:
    an axis without a scale takes the first dimension of its group (the
    group's real dimensions by id, then the phony ones in the order they
    were made) of the same length and the same unlimitedness that no earlier
    axis of the same dataset took; else a new ``phony_dim_N`` of the group.
    ``N`` counts on from the file's real dimensions (its dimension scales)
    across the whole file, subgroups numbered before their parent (netCDF-C
    matches scales group by group, children first), datasets in link order.
    Opening a subgroup (``group=``) numbers from there as if it were the
    file's only phony group below the root (netCDF-C would also count the
    phony dimensions of the groups it reads earlier).
    """

    def __init__(self, fid) -> None:
        self.fid = fid
        self.next: int | None = None  # counted when the first phony dimension is made

    def name_axes(self, found: list[str | None], shape: tuple, unlimited: tuple[bool, ...],
                  candidates: list[tuple[str, int, bool]]) -> list[str]:
        """``found`` with each ``None`` axis named; ``candidates``, the group's dimensions, grows."""
        names: list[str] = []
        for axis, name in enumerate(found):
            if name is None:
                size, unlim = int(shape[axis]), unlimited[axis]
                name = next((n for n, length, u in candidates
                             if length == size and u == unlim and n not in names and n not in found), None)
                if name is None:
                    name = f"phony_dim_{self._number()}"
                    candidates.append((name, size, unlim))
            names.append(name)
        return names

    def _number(self) -> int:
        if self.next is None:
            self.next = _count_dimension_scales(self.fid) if self.fid is not None else 0
        number, self.next = self.next, self.next + 1
        return number


def _group_dimensions(members: list, dimids: dict[int, str]) -> list[tuple[str, int, bool]]:
    """A group's dimensions as netCDF-C lists them before naming phony ones: its scales, by dimension id."""
    found = [(name, int(obj.shape[0]), _unlimited(obj)[0])
             for name, obj, _, _, is_scale in members if is_scale and len(obj.shape) == 1]
    order = {name: i for i, name in dimids.items()}
    return sorted(found, key=lambda c: order.get(c[0], len(order)))


def _count_dimension_scales(fid) -> int:
    """The dimension scales of the whole file: netCDF-C's real dimensions, numbered before the phony ones."""
    import h5py

    count = 0

    def visit(gid) -> None:
        nonlocal count
        for raw in _member_names(gid, gid.get_create_plist()):
            try:
                obj = h5py.h5o.open(gid, raw)
            except KeyError:
                continue
            if isinstance(obj, h5py.h5g.GroupID):
                visit(obj)
            elif isinstance(obj, h5py.h5d.DatasetID) and h5py.h5a.exists(obj, b"CLASS") and _is_dimension_scale(obj):
                count += 1

    visit(h5py.h5g.open(fid, b"/"))
    return count


def _unlimited(dsid) -> tuple[bool, ...]:
    """Per axis, whether the dataset can grow without limit (netCDF's unlimited dimensions)."""
    import h5py

    space = dsid.get_space()
    if space.get_simple_extent_type() != h5py.h5s.SIMPLE:
        return ()
    return tuple(m == h5py.h5s.UNLIMITED for m in space.get_simple_extent_dims(True))


class _Scope:
    """Names for dimension scales seen from one group, as netCDF names dimensions.

    A dimension is named by its bare name, except one of an ancestor group
    that a nearer group's dimension of the same name hides (netCDF's
    ``float var2(/dim, /g2/dim, dim)``): that one is named by its full path,
    so every axis keeps its own length and no two dimensions of a variable
    share a name.
    """

    def __init__(self, gid, path: str, scales: set) -> None:
        self.gid, self.path, self.scales = gid, path.rstrip("/"), scales
        self._hidden: dict[tuple[str, str], bool] = {}

    def name(self, scale_path: str) -> str:
        parent, _, base = scale_path.rpartition("/")
        if parent == self.path or not self.path.startswith(parent + "/") and parent != "":
            return base  # this group's own dimension (or one outside the ancestors, as before)
        key = (parent, base)
        hidden = self._hidden.get(key)
        if hidden is None:
            hidden = self._hidden[key] = self._is_hidden(parent, base)
        return scale_path if hidden else base

    def _is_hidden(self, ancestor: str, base: str) -> bool:
        """Whether a group below ``ancestor`` down to this one has a dimension scale named ``base``."""
        import h5py

        if base in self.scales:
            return True
        below = self.path[len(ancestor):].strip("/").split("/")[:-1]  # the groups strictly between
        for depth in range(len(below)):
            group = "/".join([ancestor, *below[: depth + 1]])
            try:
                obj = h5py.h5o.open(self.gid, f"{group}/{base}".encode())
            except (KeyError, ValueError):
                continue
            if isinstance(obj, h5py.h5d.DatasetID) and h5py.h5a.exists(obj, b"CLASS") and _is_dimension_scale(obj):
                return True
        return False


def _dimension_names(dsid, name: str, shape: tuple, keys: list, is_scale: bool,
                     dimids: dict[int, str] | None = None, scope: _Scope | None = None) -> list[str | None]:
    """Each axis's first attached dimension scale (by name), else ``None`` (``PhonyDimensions`` names it).

    netCDF4 files say it cheaply: a variable's ``_Netcdf4Coordinates`` lists
    its dimension ids, and each dimension scale's ``_Netcdf4Dimid`` its own
    (``dimids``: id -> scale name, for this group's scales). Otherwise the
    names come straight from the ``DIMENSION_LIST`` attribute (a list of
    object references per axis, which is what h5py's ``dims`` API iterates),
    named with ``h5r.get_name`` without opening every scale. That attribute
    is a variable-length one, read from the file's global heap: several
    times the cost of the ids. Anything unusual takes the ``dims`` API itself.
    """
    import h5py

    if len(shape) == 1 and is_scale:
        return [name]  # a coordinate variable is its own dimension
    if dimids and "_Netcdf4Coordinates" in keys:
        try:
            ids = np.asarray(_read_int32(dsid, "_Netcdf4Coordinates", (len(shape),))).ravel().tolist()
        except Exception:  # unreadable: the general way below decides
            ids = []
        if len(ids) == len(shape) and all(i in dimids for i in ids):
            return [dimids[i] for i in ids]
    if "DIMENSION_LIST" not in keys:
        return [None for _ in shape]
    if not is_scale:
        try:
            refs = _read_attribute(dsid, "DIMENSION_LIST")
            if refs.shape == (len(shape),):
                names: list[str | None] = []
                for scales in refs:
                    if len(scales):
                        path = h5py.h5r.get_name(scales[0], dsid).decode("utf-8")
                        names.append(scope.name(path) if scope is not None else path.rsplit("/", 1)[-1])
                    else:
                        names.append(None)
                return names
        except Exception:  # an odd DIMENSION_LIST: let h5py's dims API decide, as before
            pass
    names = []
    for dim in h5py.Dataset(dsid).dims:
        if not len(dim):
            names.append(None)
        else:
            names.append(scope.name(dim[0].name) if scope is not None else dim[0].name.rsplit("/", 1)[-1])
    return names


def _parse_dataset(dsid, name: str, plist, dims: list[str], shape: tuple[int, ...], attrs: dict, url: str,
                   registry) -> ManifestArray:
    """One dataset (``name``: its path); ``shape`` may exceed the dataset's along unlimited dimensions (read as fill)."""
    import h5py

    where = f"{url}: variable {name!r}"
    dtype = dsid.dtype
    string = h5py.check_string_dtype(dtype)
    if string is not None and (string.length is None or string.length > 1):
        return _inline_strings(h5py.Dataset(dsid), where, dims, shape, attrs, registry)
    is_char = string is not None  # netCDF's char (one-byte fixed strings): plain bytes, referenced like numbers
    is_struct = dtype.names is not None
    if is_struct:
        dtype, same_bytes = _packed_struct(dsid, dtype, where)  # or ParseError
        if not same_bytes:  # padded or big-endian: the values, packed, inlined
            return _inline_whole(h5py.Dataset(dsid), name, where, dims, attrs, registry, dtype=dtype)
    elif not is_char and dtype.kind not in "biufcM":
        _refuse_type(dsid, dtype, where)  # opaque, references, vlen sequences: a ParseError naming the type
        return _inline_whole(h5py.Dataset(dsid), name, where, dims, attrs, registry)
    elif dtype.kind in "fc" and dtype.itemsize > {"f": 8, "c": 16}[dtype.kind]:
        raise ParseError(f"{where}: HDF5 type {dtype.itemsize * 8}-bit {'complex' if dtype.kind == 'c' else 'float'} "
                         f"({dtype}) has no zarr data type")

    layout = plist.get_layout()
    fill = np.zeros((1,), dtype=dtype)  # what h5py's Dataset.fillvalue does, on the plist we hold
    plist.get_fill_value(fill)
    fill = fill[0].item()
    if is_struct:
        fill = tuple(fill)
    if is_char:
        dtype = np.dtype("S1")
    codecs = _codecs(plist, dtype, where)
    native = dtype.newbyteorder("=") if dtype.byteorder not in "=|" else dtype
    if is_struct:
        native = dtype

    if layout == h5py.h5d.COMPACT:
        return _inline_whole(h5py.Dataset(dsid), name, where, dims, attrs, registry, dtype=native)

    if layout == h5py.h5d.CHUNKED:
        chunks = tuple(int(c) for c in plist.get_chunk())
        grid = tuple(-(-s // c) for s, c in zip(shape, chunks))
        infos = []
        try:
            dsid.chunk_iter(infos.append)
        except Exception as err:
            raise ParseError(f"{where}: cannot read the chunk index: {err}") from err
        offsets = np.zeros(grid, np.uint64)
        lengths = np.zeros(grid, np.uint64)
        present = np.zeros(grid, bool)
        if infos and not present.size:
            raise ParseError(f"{where}: the chunk index lists {len(infos)} chunk(s) of an empty dataset")
        if infos:  # StoreInfo fields, transposed: element offsets, filter masks, byte offsets, sizes
            starts, masks, byte_offsets, sizes = zip(*infos)
            if any(masks):
                first = tuple(int(o) // c for o, c in zip(starts[np.flatnonzero(masks)[0]], chunks))
                raise ParseError(f"{where}: chunk {first} skipped some filters (filter mask); cannot virtualize it")
            count, ndim = len(infos), len(chunks)
            positions = np.fromiter(itertools.chain.from_iterable(starts), np.int64, count * ndim)
            flat = np.ravel_multi_index(tuple((positions.reshape(count, ndim) // chunks).T), grid)
            offsets.flat[flat] = byte_offsets
            lengths.flat[flat] = sizes
            present.flat[flat] = True
    else:  # contiguous: one chunk, or missing if never written
        chunks = tuple(max(int(c), 1) for c in shape)  # a zero-length axis: chunks of 1, none of them
        grid = tuple(1 if s else 0 for s in shape)
        offset = dsid.get_offset()
        size = dsid.get_storage_size()
        stored = offset is not None and bool(size)
        present = np.full(grid, stored)
        offsets = np.full(grid, offset or 0, np.uint64)
        lengths = np.full(grid, size or 0, np.uint64)
    if present.size == 0 or not present.any():  # nothing stored: every chunk reads as the fill value
        manifest = ChunkManifest.empty(present.shape)
    else:
        manifest = ChunkManifest.from_file_table(url, present, offsets, lengths)
    if is_char:  # zarr-python's fixed-size bytes type has no zarr v3 spec yet (it warns)
        import warnings

        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*does not have a Zarr V3 specification")
            metadata = create_array_metadata(shape=shape, chunk_shape=chunks, dtype=native, codecs=codecs,
                                             fill_value=fill, dimension_names=dims, attributes=attrs)
    else:
        metadata = create_array_metadata(
            shape=shape, chunk_shape=chunks, dtype=native, codecs=codecs, fill_value=fill,
            dimension_names=dims, attributes=attrs,
        )
    return ManifestArray(metadata, manifest, registry=registry)


def _packed_struct(dsid, dtype: np.dtype, where: str) -> tuple[np.dtype, bool]:
    """A compound dataset's zarr ``struct`` dtype (packed, little-endian numbers), and whether its bytes are that.

    zarr's ``struct`` data type is packed (no padding) with fields of zarr's
    numeric types. A compound type whose stored elements are exactly that is
    referenced virtually; one with padding (netCDF4-python aligns its
    compound types) or big-endian fields has the same values in that dtype
    but other bytes (``False``: the caller inlines it, if small); nested,
    text or other fields are refused.
    """
    import h5py

    file_type = dsid.get_type()
    names, fields, offset, same_bytes = [], [], 0, True
    for i in range(file_type.get_nmembers()):
        member = file_type.get_member_type(i)
        name = file_type.get_member_name(i).decode("utf-8", "replace")
        field = dtype.fields[dtype.names[i]][0]
        if member.get_class() not in (h5py.h5t.INTEGER, h5py.h5t.FLOAT) or field.kind not in "iuf":
            raise ParseError(f"{where}: HDF5 compound type {dtype} has field {name!r} of type {field}; zarr's struct "
                             "data type holds numbers only")
        if file_type.get_member_offset(i) != offset or field.itemsize > 1 and field.byteorder not in "=|<":
            same_bytes = False
        names.append(name)
        fields.append(field.newbyteorder("<") if field.itemsize > 1 else field)
        offset += member.get_size()
    return np.dtype(list(zip(names, fields))), same_bytes and offset == file_type.get_size()


def _refuse_type(dsid, dtype: np.dtype, where: str) -> None:
    """Raise a ParseError naming the HDF5 type of a dataset zarr cannot hold (other dtypes pass)."""
    import h5py

    if h5py.check_string_dtype(dtype) is not None:
        return
    cls = dsid.get_type().get_class()
    base = h5py.check_vlen_dtype(dtype)
    if base is not None:
        kind = f"variable-length sequences of {base} (HDF5 vlen)"
    elif cls == h5py.h5t.REFERENCE:
        kind = "object or region references (HDF5 reference)"
    elif cls == h5py.h5t.OPAQUE:
        return  # fixed-size opaque bytes: inlined (zarr's raw bytes type)
    else:
        kind = f"HDF5 type {dtype}"
    raise ParseError(f"{where}: {kind} cannot be held by a zarr array")


def _codecs(plist, dtype: np.dtype, where: str) -> list[Any]:
    """The zarr codecs of a dataset's filter pipeline (the same objects for the same pipeline and dtype)."""
    filters = tuple(plist.get_filter(i) for i in range(plist.get_nfilters()))
    key = (dtype.str, filters)
    codecs = _CODECS.get(key)
    if codecs is None:
        codecs = _build_codecs(filters, dtype, where)
        if len(_CODECS) >= 256:
            _CODECS.clear()
        _CODECS[key] = codecs
    return list(codecs)


#: Codecs per (dtype, filter pipeline): the variables of a collection share a few pipelines, and
#: shared (immutable) codec objects let ``create_array_metadata`` reuse its templates cheaply.
_CODECS: dict[tuple, tuple] = {}


def _build_codecs(filters: tuple, dtype: np.dtype, where: str) -> tuple[Any, ...]:
    import zarr.codecs as zc

    endian = "big" if dtype.byteorder == ">" else "little"
    codecs: list[Any] = [zc.BytesCodec(endian=endian if dtype.itemsize > 1 else None)]
    for code, _flags, values, _name in filters:
        if code == DEFLATE:
            codecs.append(zc.Zlib(level=int(values[0]) if values else 4))
        elif code == SHUFFLE:
            codecs.append(zc.Shuffle(elementsize=dtype.itemsize))
        elif code == FLETCHER32:
            codecs.append(zc.Fletcher32())
        elif code == ZSTD:
            codecs.append(zc.Zstd(level=int(values[0]) if values else 0))
        elif code == BZIP2:
            codecs.append(zc.BZ2(level=int(values[0]) if values else 9))
        elif code == BLOSC:
            codecs.append(zc.Blosc())
        elif code == LZ4:
            codecs.append(_lz4h5_codec(where))
        else:
            raise ParseError(
                f"{where}: HDF5 filter {FILTER_NAMES.get(code, code)!r} (id {code}) has no zarr codec that can "
                "read its stored chunks"
            )
    return tuple(codecs)


def _lz4h5_codec(where: str) -> dict[str, Any]:
    """HDF5's lz4 filter frames its blocks its own way; imagecodecs' ``lz4h5`` zarr codec reads that framing.

    (lzf has no such codec: HDF5 stores bare LZF blocks without their decoded
    size, which imagecodecs' zarr codec cannot decode, so lzf stays an error.)
    """
    from zarr.registry import get_codec_class

    name = "imagecodecs_lz4h5"
    try:
        get_codec_class(name)
    except Exception as err:
        raise ParseError(
            f"{where}: HDF5 filter 'lz4' (id {LZ4}) needs the zarr codec {name!r}; "
            "install it with `pip install imagecodecs-zarr` (included in vzdask[hdf])"
        ) from err
    return {"name": name}


def _inline_strings(dset, where, dims, shape, attrs, registry) -> ManifestArray:
    """Text (variable-length or fixed-length HDF5 strings): read and inlined as fixed-width ``<U`` strings.

    netCDF-C reads both kinds as ``NC_STRING`` and xarray gives them as
    ``<U{n}`` arrays, ``n`` the longest value (at least 1), with or without
    CF decoding: the virtual array has that very dtype and values (its
    chunk holds them; HDF5 keeps variable-length strings in a heap that no
    byte range reference can point into). Values past the dataset's extent
    along an unlimited dimension (another variable is longer) are empty
    strings, netCDF's fill value for strings.
    """
    import warnings

    from vzdask.codecs import codec_for

    nbytes = dset.size * 64
    if nbytes > SMALL_VARIABLE_BYTES * 16:
        raise ParseError(f"{where}: {dset.size} strings are too many to inline (strings cannot be referenced "
                         "virtually); drop the variable")
    try:
        raw = dset[()] if dset.size else np.empty(dset.shape, object)
    except OSError:  # HDF5 cannot read the fill value of unwritten variable-length strings from a read-only file
        raw = _read_written_chunks(dset, attrs.get("_FillValue", ""))
    flat = [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
            for v in np.asarray(raw, dtype=object).ravel().tolist()]
    width = max((len(v) for v in flat), default=0)
    dtype = np.dtype(f"<U{max(width, 1)}")
    values = np.array(flat, dtype=dtype).reshape(dset.shape)
    if tuple(values.shape) != tuple(shape):  # shorter along an unlimited dimension: pad with ""
        padded = np.zeros(shape, dtype)
        padded[tuple(slice(0, n) for n in values.shape)] = values
        values = padded
    chunk = tuple(max(int(s), 1) for s in shape)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have a Zarr V3 specification")
        metadata = create_array_metadata(shape=shape, chunk_shape=chunk, dtype=dtype, fill_value="",
                                         dimension_names=dims, attributes=attrs)
        grid = tuple(1 if s else 0 for s in shape)
        if not values.size:
            return ManifestArray(metadata, ChunkManifest.empty(grid), registry=registry)
        data = codec_for(metadata).encode(values)
    return ManifestArray(metadata, ChunkManifest.inlined_chunk(data, len(shape)), registry=registry)


def _read_written_chunks(dset, fill: Any) -> np.ndarray:
    """A chunked dataset's values read chunk by chunk, its unwritten chunks ``fill`` (what netCDF-C gives)."""
    values = np.full(dset.shape, fill if isinstance(fill, str) else "", dtype=object)
    chunks = dset.chunks
    if chunks is None:
        raise ParseError(f"{dset.name}: cannot read the values of a contiguous dataset")
    starts: list = []
    dset.id.chunk_iter(lambda info: starts.append(info.chunk_offset))
    for start in starts:
        region = tuple(slice(o, min(o + c, n)) for o, c, n in zip(start, chunks, dset.shape))
        values[region] = dset[region]
    return values


def _inline_whole(dset, name, where, dims, attrs, registry, dtype=None) -> ManifestArray:
    """Read a small dataset's values and store them as one inlined, zarr-encoded chunk (plain bytes codec).

    For compact datasets (their bytes live in the object header) and fixed-size
    opaque ones; ``dtype`` is the zarr-side dtype (``S1`` for netCDF chars, the
    packed struct of a compound), else the dataset's, native byte order.
    """
    import warnings

    from vzdask.codecs import codec_for

    dtype = np.dtype(dset.dtype if dtype is None else dtype)
    if dtype.byteorder not in "=|" and dtype.names is None:
        dtype = dtype.newbyteorder("=")
    nbytes = dset.size * max(dtype.itemsize, 8)
    if nbytes > SMALL_VARIABLE_BYTES:
        raise ParseError(
            f"{where}: dtype {dtype} cannot be referenced virtually and the variable is too large to inline "
            f"({nbytes} bytes)"
        )
    shape = tuple(int(s) for s in dset.shape)
    values = np.asarray(dset[()] if dset.size else np.zeros(shape, dset.dtype))
    values = values.astype(dtype) if dtype.names is None else np.array(values.tolist(), dtype=dtype).reshape(shape)
    fill = np.zeros((1,), dset.dtype)
    dset.id.get_create_plist().get_fill_value(fill)
    fill_value = tuple(fill[0].item()) if dtype.names is not None else fill.astype(dtype)[0].item()
    chunk = tuple(max(s, 1) for s in shape)
    grid = tuple(1 if s else 0 for s in shape)
    with warnings.catch_warnings():  # fixed-size bytes/raw types: zarr-python warns they have no v3 spec yet
        warnings.filterwarnings("ignore", message=".*does not have a Zarr V3 specification")
        metadata = create_array_metadata(shape=shape, chunk_shape=chunk, dtype=dtype, fill_value=fill_value,
                                         dimension_names=dims, attributes=attrs)
        if not values.size:  # zero-length axes: nothing to store
            return ManifestArray(metadata, ChunkManifest.empty(grid), registry=registry)
        data = codec_for(metadata).encode(values)
    return ManifestArray(metadata, ChunkManifest.inlined_chunk(data, len(shape)), registry=registry)


def _attributes(object_id, keys: list[str], url: str, where: str) -> dict[str, Any]:
    """User attributes, in the file's order; ``keys`` are their names, already listed (listing costs).

    An attribute zarr's JSON attributes cannot hold (opaque bytes, object
    references, compounds, complex numbers but a complex variable's
    ``_FillValue``) is left out with an ``UnsupportedAttributeWarning``
    naming the file, the variable and the attribute: netCDF-C leaves such
    attributes out too (silently), and the variable's values do not depend
    on them.
    """
    out = {}
    for key in keys:
        if key in INTERNAL_ATTRIBUTES:
            continue
        try:
            value = _json_value(_read_attribute(object_id, key))
            if _is_complex(value):
                if key == "_FillValue" and not isinstance(value, list):
                    out[key] = value  # a complex variable's fill value: create_array_metadata encodes it
                    continue
                raise TypeError("complex values have no JSON form")
            json.dumps(value)  # what zarr metadata must hold
        except Exception as err:  # unreadable attribute types (references, opaque, compound)
            import warnings

            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            warnings.warn(f"{url}: {where}: left out attribute {key!r}, which zarr attributes (JSON) cannot hold: "
                          f"{reason}", UnsupportedAttributeWarning, stacklevel=2)
            continue
        out[key] = value
    return out


class UnsupportedAttributeWarning(UserWarning):
    """An attribute left out because zarr attributes (JSON) cannot hold its value (complex numbers)."""


def _is_complex(value: Any) -> bool:
    return isinstance(value, complex) or isinstance(value, list) and any(isinstance(v, complex) for v in value)


def _json_value(value: Any) -> Any:
    import h5py

    if isinstance(value, h5py.Empty):  # a null dataspace (PyTables writes empty strings so): no value
        return "" if value.dtype.kind in "SUO" else None
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, str):  # undecodable bytes (kept by h5py as surrogates) become U+FFFD, as in netCDF-C
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        return value
    if isinstance(value, np.ndarray):
        if value.dtype.kind in "SO":
            items = [_json_value(v) for v in value.ravel().tolist()]
            return items[0] if value.size == 1 else items
        return attribute_value(value.ravel()[0]) if value.size == 1 else value.tolist()  # netCDF: 1-element = scalar
    if isinstance(value, np.generic):
        return attribute_value(value)
    if isinstance(value, (list, tuple)):
        return [_json_value(v) for v in value]
    return value
