"""HDFParser: netCDF4 and HDF5 files, metadata through h5py over obstore.

Chunked datasets are referenced chunk by chunk from HDF5's chunk index,
contiguous datasets as one chunk, compact datasets are inlined (their bytes
live in the object header), unallocated chunks are missing. HDF5 filters map
to zarr codecs; netCDF4's dimension scales become dimension names.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from vzdask.manifests.array import ManifestArray
from vzdask.manifests.group import ManifestGroup
from vzdask.manifests.manifest import ChunkManifest
from vzdask.manifests.metadata import create_array_metadata
from vzdask.manifests.store import ManifestStore
from vzdask.parsers.common import Parser, ObstoreFile, ParseError, finish
from vzdask.policy import InlinePolicy
from vzdask.registry import ObjectStoreRegistry

#: netCDF4/HDF5 bookkeeping attributes that are not user metadata.
INTERNAL_ATTRIBUTES = frozenset(
    {"DIMENSION_LIST", "REFERENCE_LIST", "CLASS", "NAME", "_Netcdf4Dimid", "_Netcdf4Coordinates",
     "_nc3_strict", "_NCProperties", "_SuperblockVersion", "_IsNetcdf4"}
)
NETCDF_DIMENSION_ONLY = b"This is a netCDF dimension but not a netCDF variable"

# HDF5 filter ids (H5Zpublic.h and the registered-filter list used by hdf5plugin)
DEFLATE, SHUFFLE, FLETCHER32, SZIP, LZF, BZIP2, BLOSC, LZ4, ZSTD = 1, 2, 3, 4, 32000, 307, 32001, 32004, 32015
FILTER_NAMES = {DEFLATE: "deflate", SHUFFLE: "shuffle", FLETCHER32: "fletcher32", SZIP: "szip", LZF: "lzf",
                BZIP2: "bzip2", BLOSC: "blosc", LZ4: "lz4", ZSTD: "zstd"}

#: Non-virtualizable variables up to this decoded size are encoded and inlined.
SMALL_VARIABLE_BYTES = 2**20


class HDFParser(Parser):
    """Parse netCDF4/HDF5 files into ManifestStores.

    Parameters
    ----------
    inline : InlinePolicy, optional
        Which chunks to copy into the manifest (compact datasets always are).
    group : str, optional
        Parse only this group of the file.
    drop_variables : iterable of str, optional
        Datasets of that group not to parse (they still name dimensions).
    """

    def __call__(self, url: str, registry: ObjectStoreRegistry) -> ManifestStore:
        import h5py

        handle = ObstoreFile(url, registry)
        if handle.size == 0:
            raise ParseError(f"{url}: empty file; nothing to virtualize")
        try:
            f = h5py.File(handle, "r")
        except OSError as err:
            raise ParseError(f"{url}: not a readable HDF5 file (truncated or corrupt?): {err}") from err
        with f:
            root = f
            if self.group:
                if self.group not in f or not isinstance(f[self.group], h5py.Group):
                    raise ParseError(f"{url}: no group {self.group!r}")
                root = f[self.group]
            group = _parse_group(root, url, registry, drop=self.drop_variables)
        return finish(group, registry, self.inline)


def _parse_group(h5group, url: str, registry: ObjectStoreRegistry, drop=frozenset()) -> ManifestGroup:
    import h5py

    arrays, groups = {}, {}
    phony: dict[int, str] = {}
    datasets = {}
    sizes: dict[str, int] = {}  # netCDF dimension lengths: an unlimited one is its longest variable
    for name, obj in h5group.items():
        if isinstance(obj, h5py.Group):
            groups[name] = _parse_group(obj, url, registry)
        elif isinstance(obj, h5py.Dataset):
            plist = obj.id.get_create_plist()
            keys = _attribute_names(obj.id, plist)
            is_scale = "CLASS" in keys and h5py.h5ds.is_scale(obj.id)
            dims = _dimension_names(obj, keys, is_scale, phony)
            for dim, size in zip(dims, obj.shape):
                sizes[dim] = max(sizes.get(dim, 0), int(size))
            if (is_scale and "NAME" in keys and bytes(obj.attrs["NAME"]).startswith(NETCDF_DIMENSION_ONLY)
                    and obj.attrs.get("CLASS") == b"DIMENSION_SCALE"):
                continue  # a netCDF dimension without a variable
            datasets[name] = (obj, plist, dims, keys)
    for name, (obj, plist, dims, keys) in datasets.items():
        if name in drop:
            continue
        attrs = _attributes(obj.attrs, keys, url, obj.name)
        arrays[name] = _parse_dataset(obj, plist, dims, tuple(sizes[d] for d in dims), attrs, url, registry)
    group_id = (h5group["/"] if isinstance(h5group, h5py.File) else h5group).id  # a File's id is the file's
    keys = _attribute_names(group_id, group_id.get_create_plist())
    return ManifestGroup(arrays=arrays, groups=groups, attributes=_attributes(h5group.attrs, keys, url, h5group.name))


def _attribute_names(object_id, plist) -> list:
    """``list(obj.attrs)`` (same names, same order) from the creation plist the caller already holds.

    h5py lists in creation order when the object tracks it, else by name;
    asking HDF5 directly saves h5py's per-call plist and wrappers (~25 us an
    object, and a netCDF4 file has one object per variable).
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


def _dimension_names(dset, keys: list[str], is_scale: bool, phony: dict[int, str]) -> list[str]:
    """Each axis's first attached dimension scale (by name), else a shared ``phony_dim_N`` per length.

    Read straight from the ``DIMENSION_LIST`` attribute (a list of object
    references per axis, which is what h5py's ``dims`` API iterates) and
    named with ``h5r.get_name``, without opening every scale: the same names
    at a third of the cost. Anything unusual takes the ``dims`` API itself.
    """
    import h5py

    if dset.ndim == 1 and is_scale:
        return [dset.name.rsplit("/", 1)[-1]]  # a coordinate variable is its own dimension
    if "DIMENSION_LIST" not in keys:
        return [phony.setdefault(size, f"phony_dim_{len(phony)}") for size in dset.shape]
    if not is_scale:
        try:
            refs = dset.attrs["DIMENSION_LIST"]
            if refs.shape == (dset.ndim,):
                names = []
                for axis, scales in enumerate(refs):
                    if len(scales):
                        names.append(h5py.h5r.get_name(scales[0], dset.id).decode("utf-8").rsplit("/", 1)[-1])
                    else:
                        names.append(phony.setdefault(dset.shape[axis], f"phony_dim_{len(phony)}"))
                return names
        except Exception:  # an odd DIMENSION_LIST: let h5py's dims API decide, as before
            pass
    names = []
    for axis, dim in enumerate(dset.dims):
        if len(dim):
            names.append(dim[0].name.rsplit("/", 1)[-1])
        else:
            names.append(phony.setdefault(dset.shape[axis], f"phony_dim_{len(phony)}"))
    return names


def _parse_dataset(dset, plist, dims: list[str], shape: tuple[int, ...], attrs: dict, url: str, registry) -> ManifestArray:
    """One dataset; ``shape`` may exceed the dataset's along unlimited dimensions (read as fill)."""
    import h5py

    where = f"{url}: variable {dset.name!r}"
    dsid = dset.id
    dtype = dsid.dtype
    if dtype.kind not in "biufc" and dtype.kind != "M" or dtype.names is not None:
        return _inline_whole(dset, where, dims, attrs, registry)

    layout = plist.get_layout()
    fill = np.zeros((1,), dtype=dtype)  # what h5py's Dataset.fillvalue does, on the plist we hold
    plist.get_fill_value(fill)
    fill = fill[0].item()
    codecs = _codecs(plist, dtype, where)
    native = dtype.newbyteorder("=") if dtype.byteorder not in "=|" else dtype

    if layout == h5py.h5d.COMPACT:
        return _inline_whole(dset, where, dims, attrs, registry, codecs=codecs)

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
        if infos:  # one row per chunk: its element offset, then byte offset, size and filter mask
            table = np.array([(*i.chunk_offset, i.byte_offset, i.size, i.filter_mask) for i in infos], np.uint64)
            ndim = len(chunks)
            masked = np.flatnonzero(table[:, ndim + 2])
            if masked.size:
                first = tuple(int(o) // c for o, c in zip(table[masked[0], :ndim], chunks))
                raise ParseError(f"{where}: chunk {first} skipped some filters (filter mask); cannot virtualize it")
            index = tuple((table[:, :ndim] // np.array(chunks, np.uint64)).T)
            offsets[index] = table[:, ndim]
            lengths[index] = table[:, ndim + 1]
            present[index] = True
        paths = np.where(present, url, "").astype(object)
    else:  # contiguous: one chunk, or missing if never written
        chunks = shape if shape else ()
        grid = tuple(1 for _ in shape)
        offset = dsid.get_offset()
        size = dsid.get_storage_size()
        paths = np.full(grid, url if offset is not None and size else "", dtype=object)
        offsets = np.full(grid, offset or 0, np.uint64)
        lengths = np.full(grid, size or 0, np.uint64)
        if any(c == 0 for c in chunks):
            chunks = tuple(max(c, 1) for c in chunks)
    manifest = ChunkManifest.from_arrays(paths=paths, offsets=offsets, lengths=lengths)
    metadata = create_array_metadata(
        shape=shape, chunk_shape=chunks, dtype=native, codecs=codecs, fill_value=fill,
        dimension_names=dims, attributes=attrs,
    )
    return ManifestArray(metadata, manifest, registry=registry)


def _codecs(plist, dtype: np.dtype, where: str) -> list[Any]:
    import zarr.codecs as zc

    endian = "big" if dtype.byteorder == ">" else "little"
    codecs: list[Any] = [{"name": "bytes", "configuration": {"endian": endian}} if dtype.itemsize > 1 else {"name": "bytes"}]
    for i in range(plist.get_nfilters()):
        code, _flags, values, _name = plist.get_filter(i)
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
                "read its stored chunks; drop the variable (drop_variables=[...]) to open the others"
            )
    return codecs


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


def _inline_whole(dset, where, dims, attrs, registry, codecs=None) -> ManifestArray:
    """Read a small dataset's values and store them as one inlined, zarr-encoded chunk."""
    from vzdask.codecs import codec_for

    dtype = dset.dtype
    nbytes = dset.size * max(dtype.itemsize, 8)
    if nbytes > SMALL_VARIABLE_BYTES:
        raise ParseError(
            f"{where}: dtype {dtype} cannot be referenced virtually and the variable is too large to inline "
            f"({nbytes} bytes); drop it with drop_variables=[{dset.name.rsplit('/', 1)[-1]!r}]"
        )
    values = dset[()]
    shape = tuple(int(s) for s in dset.shape)
    import h5py

    if h5py.check_string_dtype(dtype) is not None or dtype.kind in "OSU":
        values = np.asarray(values, dtype=object)
        values = np.vectorize(lambda v: v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v), otypes=[object])(values) if values.size else values
        native = np.dtypes.StringDType()
        values = values.astype(native)
        codecs = [{"name": "vlen-utf8"}]
        fill = ""
    elif dtype.names is not None:
        raise ParseError(
            f"{where}: compound dtype {dtype} is not supported by zarr v3 here; drop it with drop_variables"
        )
    else:
        native = dtype.newbyteorder("=") if dtype.byteorder not in "=|" else dtype
        values = np.asarray(values, dtype=native)
        codecs = None  # plain little-endian bytes: the compact data are not filtered
        fill = dset.fillvalue.item() if hasattr(dset.fillvalue, "item") else dset.fillvalue
    chunk = tuple(max(s, 1) for s in shape)
    metadata = create_array_metadata(shape=shape, chunk_shape=chunk, dtype=native, codecs=codecs,
                                      fill_value=fill, dimension_names=dims, attributes=attrs)
    padded = values
    if shape != chunk:  # zero-length axes: nothing to store
        return ManifestArray(metadata, ChunkManifest.empty(tuple(1 for _ in shape)), registry=registry)
    data = codec_for(metadata).encode(padded)
    manifest = ChunkManifest.from_arrays(
        paths=np.full(tuple(1 for _ in shape), "", dtype=object),
        offsets=np.zeros(tuple(1 for _ in shape), np.uint64),
        lengths=np.zeros(tuple(1 for _ in shape), np.uint64),
        inlined={tuple(0 for _ in shape): data},
    )
    return ManifestArray(metadata, manifest, registry=registry)


def _attributes(attrs, keys: list[str], url: str, where: str) -> dict[str, Any]:
    """User attributes, in the file's order; ``keys`` are their names, already listed (listing costs)."""
    out = {}
    for key in keys:
        if key in INTERNAL_ATTRIBUTES:
            continue
        try:
            value = attrs[key]
        except Exception as err:  # unreadable attribute types (references, opaque)
            raise ParseError(f"{url}: attribute {key!r} of {where!r} cannot be read: {err}") from err
        out[key] = _json_value(value)
    return out


def _json_value(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray):
        if value.dtype.kind in "SO":
            items = [_json_value(v) for v in value.ravel().tolist()]
            return items[0] if value.size == 1 else items
        return value.ravel()[0].item() if value.size == 1 else value.tolist()  # netCDF: 1-element = scalar
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [_json_value(v) for v in value]
    return value
