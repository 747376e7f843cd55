"""Every non-public dask, xarray and zarr name vzdask uses, in one place.

Only this module imports private modules (``dask._task_spec``,
``dask.array.core``, ``xarray.backends.zarr``, ``zarr.core.*``...) or touches
private attributes of their objects (``Variable._data``, ``Dataset._replace``).
Each name says why vzdask needs it; where the name moved or behaves
differently between the versions pyproject.toml allows, the version gate is
here too. When a new release breaks one of them, this is the file to change,
and ``make test-min`` (the suite at the lowest declared versions) tells
whether the floors still hold.

Public API is imported where it is used: ``dask.base`` (tokenize,
DaskMethodsMixin, is_dask_collection), ``dask.threaded``, ``dask.utils``,
``zarr.abc.*`` (Store, codec ABCs), ``zarr.abc.buffer``/``zarr.buffer``
(Buffer, BufferPrototype, default_buffer_prototype), ``zarr.codecs``,
``zarr.registry``. "Public" is what the projects' API references document:
zarr's lists zarr.abc, zarr.buffer, zarr.codecs, zarr.dtype, zarr.registry and
zarr.storage (not zarr.core); xarray's lists ``decode_cf`` and the coders (not
the per-variable functions of ``xarray.conventions``).
"""

from __future__ import annotations

import base64
import re
import struct
from importlib.metadata import version as _distribution_version
from typing import Any

import numpy as np


def _release(distribution: str) -> tuple[int, ...]:
    """The leading numbers of an installed distribution's version: ``"3.2.0rc1"`` -> ``(3, 2, 0)``."""
    return tuple(int(n) for n in re.findall(r"\d+", _distribution_version(distribution).split("+")[0])[:3])


DASK_VERSION = _release("dask")
XARRAY_VERSION = _release("xarray")
ZARR_VERSION = _release("zarr")


# --- dask -----------------------------------------------------------------------------------------------------------

try:  # graph tasks with explicit dependencies (not legacy tuples); public as dask.task_spec in newer dask
    from dask.task_spec import Task, TaskRef
except ImportError:  # a dask with only the private module
    from dask._task_spec import Task, TaskRef

# dask.array's internals are loaded on first use (``__getattr__`` at the end): importing dask.array
# (and the scipy it pulls in) costs ~0.3 s, and only vzdask.dask_array needs them.
_DASK_ARRAY_NAMES = {
    # dask.array's own post-compute step (concatenates the blocks): SharedResult falls back to it
    "dask_array_finalize": ("dask.array.core", "finalize"),
    # the region of the whole array each block of a chunks tuple covers, as dask.array.Array computes it
    "slices_from_chunks": ("dask.array.core", "slices_from_chunks"),
    # dask.array's default graph optimisation, run after ours adds the SharedResult task
    "dask_array_optimize": ("dask.array.optimization", "optimize"),
}

# flattens the nested lists of block results that a compute hands to the post-compute step
from dask.core import flatten

# graph layers of our dask collections (the documented custom-collection graph type)
from dask.highlevelgraph import HighLevelGraph, MaterializedLayer


# --- xarray ---------------------------------------------------------------------------------------------------------

# the CF time units decode_cf treats as times/timedeltas: cf_tasks leaves those variables to xarray
from xarray.coding.times import TIME_UNITS

# CF decoding and encoding of single variables, exactly as xr.decode_cf / to_zarr do it for a whole Dataset
from xarray.conventions import decode_cf_variable, decode_cf_variables, encode_cf_variable

# non-index coordinates into "coordinates" attributes, as xarray's writers do (shared by our two writers)
from xarray.conventions import encode_dataset_coordinates

# xarray's zarr backend writes a float _FillValue as base64; ours must read/write exactly what it does
if XARRAY_VERSION >= (2026, 4):
    from xarray.backends.zarr import FillValueCoder
else:
    from xarray.backends.zarr import FillValueCoder as _XarrayFillValueCoder

    def _b64_double(value: float) -> str:
        return base64.standard_b64encode(struct.pack("<d", float(value))).decode()

    class FillValueCoder(_XarrayFillValueCoder):  # type: ignore[no-redef]
        """xarray < 2026.4 refuses complex fill values; 2026.4 writes them as [real, imag], each base64 like a float."""

        @classmethod
        def encode(cls, value, dtype):
            if np.dtype(dtype).kind == "c":
                value = complex(value)
                return [_b64_double(value.real), _b64_double(value.imag)]
            return super().encode(value, dtype)

        @classmethod
        def decode(cls, value, dtype):
            if dtype not in ("string", "bytes") and np.dtype(dtype).kind == "c":
                real, imag = (struct.unpack("<d", base64.standard_b64decode(v))[0] for v in value)
                return complex(real, imag)
            return super().decode(value, dtype)

# how xarray's zarr backend turns attribute values into JSON (numpy scalars, arrays, bytes)
from xarray.backends.zarr import encode_zarr_attr_value

# the lazy indexing layer a backend's arrays live under (xarray's "how to add a new backend" guide uses these:
# BackendArray.__getitem__ hands its key to explicit_indexing_adapter; variables wrap LazilyIndexedArray)
from xarray.core.indexing import IndexingSupport, LazilyIndexedArray, explicit_indexing_adapter

# the base of xarray's lazy array wrappers (CopyOnWriteArray, MemoryCachedArray are built on it, alike in 2025.8
# and 2026.9): the engine's opened data is one more such wrapper, so xarray indexes and loads it as theirs
from xarray.core.indexing import ExplicitlyIndexedNDArrayMixin


def opened_data(var: Any) -> Any:
    """``var``'s data under the wrappers ``xr.open_dataset`` adds to a backend's variables.

    ``_protect_dataset_variables_inplace`` wraps each in ``CopyOnWriteArray`` (and ``MemoryCachedArray``
    when caching); a write or a cached load replaces their ``array`` with numpy values, so what is
    under them is the backend's data only while nothing has been written or loaded.
    """
    from xarray.core.indexing import CopyOnWriteArray, MemoryCachedArray

    data = var._data
    while isinstance(data, (CopyOnWriteArray, MemoryCachedArray)):
        data = data.array
    return data


def variable_data(var: Any) -> Any:
    """The array a Variable wraps, as it is: ``Variable.data`` would load a lazily indexed backend array."""
    return var._data


def variable_fastpath(dims, data, attrs=None, encoding=None):
    """A Variable around ``data`` as it is (``fastpath``: no conversion, no copy; the data is already valid)."""
    import xarray as xr

    return xr.Variable(dims, data, attrs, encoding, fastpath=True)


def dataset_replace(ds: Any, variables: dict, coord_names: set, dims: dict | None = None):
    """``ds`` with these variables (indexes untouched; ``dims`` if they change): the constructor would re-align
    and copy them."""
    if dims is None:
        return ds._replace(variables=variables, coord_names=coord_names)
    return ds._replace(variables=variables, coord_names=coord_names, dims=dims)


def install_xarray_write_hook(prepare) -> None:
    """Have every xarray writer run ``prepare(dataset, store, encoding) -> (dataset, encoding)`` first.

    ``dump_to_store(dataset, store, writer=None, encoder=None, encoding=None, unlimited_dims=None)`` is the
    one function ``to_netcdf`` (every engine), ``to_zarr``, ``save_mfdataset`` and the DataTree writers
    pass a dataset through on its way to the store, with the ``encoding=`` the user gave (in
    ``xarray.backends.writers``; ``xarray.backends.api`` in xarray 2025.8). xarray offers no public hook
    there, and the writers look the function up in their module at each call, so it is wrapped in that
    module; installing again replaces the wrapper (a reloaded module). What ``prepare`` returns unchanged
    is written exactly as before.
    """
    import functools
    import importlib

    module: Any
    try:
        module = importlib.import_module("xarray.backends.writers")
    except ImportError:
        module = importlib.import_module("xarray.backends.api")
    original = module.dump_to_store
    if hasattr(original, "__vzdask_prepare__"):
        original = original.__wrapped__

    @functools.wraps(original)
    def dump_to_store(dataset, store, writer=None, encoder=None, encoding=None, unlimited_dims=None):
        dataset, encoding = prepare(dataset, store, encoding)
        return original(dataset, store, writer, encoder=encoder, encoding=encoding, unlimited_dims=unlimited_dims)

    dump_to_store.__vzdask_prepare__ = prepare  # type: ignore[attr-defined]
    module.dump_to_store = dump_to_store


def zarr_store_mode(store: Any) -> str:
    """The mode xarray's ``ZarrStore`` writes in (``"w"``, ``"w-"``: new arrays; ``"a"``, ``"a-"``, ``"r+"``:
    into a store whose existing arrays keep their own CF encoding)."""
    return store._mode


# --- zarr -----------------------------------------------------------------------------------------------------------
# zarr documents zarr.abc, zarr.buffer, zarr.codecs, zarr.dtype, zarr.registry and zarr.storage; zarr.core is internal.

# run zarr's async codec pipeline and store coroutines from synchronous code, on zarr's own event loop thread
from zarr.core.sync import sync

# the zarr v3 array metadata object: the data model of ManifestArray (what zarr.Array.metadata is)
from zarr.core.metadata.v3 import ArrayV3Metadata, RegularChunkGridMetadata, parse_dimension_names

# zarr 3.4's rectilinear chunk grid (experimental, behind zarr.config "array.rectilinear_chunks"): files of
# different lengths along the concatenation axis
from zarr.core.metadata.v3 import RectilinearChunkGridMetadata

# v2 metadata: the .zarray documents of the kerchunk writer and the zarr v2 parser
from zarr.core.metadata.v2 import ArrayV2Metadata

# zarr's own normalisation of shapes and attributes, used when metadata is copied with a new shape
from zarr.core.common import parse_shapelike
from zarr.core.metadata.common import parse_attributes

# numpy dtype / v2 JSON dtype -> zarr data type (zarr.dtype documents only parse_dtype, which takes neither form)
from zarr.core.dtype import get_data_type_from_json, get_data_type_from_native_dtype

# a chunk's spec, what codecs decode and encode against
from zarr.core.array_spec import ArrayConfig, ArraySpec

# zarr's async codec pipeline: chains without a synchronous path (and every chain before zarr 3.3)
from zarr.core.codec_pipeline import BatchedCodecPipeline

# the "default" chunk key encoding (c/0/1), to name the chunk keys Icechunk stores
from zarr.core.chunk_key_encodings import DefaultChunkKeyEncoding

# group metadata documents (zarr.json of a group) served by ManifestStore
from zarr.core.group import GroupMetadata

# zarr's synchronous per-chunk codec chain (much faster than the async pipeline for one chunk); zarr 3.3+,
# which is also the first zarr whose DefaultChunkKeyEncoding.decode_chunk_key reads "c/0/1" (ManifestStore needs it)
from zarr.core.chunk_utils import ChunkTransform, evolve_codecs


def array_metadata_like(template: ArrayV3Metadata, shape, dimension_names, attributes) -> ArrayV3Metadata:
    """``template`` with another shape, dimension names and attributes, its parsed codecs reused.

    The constructor parses and evolves every codec again (most of a parser's time per variable); this
    copies the frozen dataclass, sets the three fields as the constructor would parse them, and runs the
    constructor's own check (ndim of shape, chunks and names agree; the codecs accept the shape).
    """
    metadata = object.__new__(type(template))  # copy.copy, minus its generic machinery
    metadata.__dict__.update(template.__dict__)
    object.__setattr__(metadata, "shape", parse_shapelike(shape))
    object.__setattr__(metadata, "dimension_names", parse_dimension_names(dimension_names))
    object.__setattr__(metadata, "attributes", parse_attributes(attributes))
    metadata._validate_metadata()
    return metadata


def array_metadata_with_grid(template: ArrayV3Metadata, shape, chunk_grid, dimension_names,
                             attributes) -> ArrayV3Metadata:
    """``array_metadata_like`` that also sets the chunk grid (a ``RectilinearChunkGridMetadata``, say).

    ``ArrayV3Metadata.from_dict`` refuses a rectilinear grid unless the process enabled zarr's
    ``array.rectilinear_chunks`` flag, a global setting that a context manager would flip for every
    thread at once; the constructor's own check (``_validate_metadata``: edges cover the shape, codecs
    accept the grid) still runs.
    """
    metadata = object.__new__(type(template))
    metadata.__dict__.update(template.__dict__)
    object.__setattr__(metadata, "chunk_grid", chunk_grid)
    object.__setattr__(metadata, "shape", parse_shapelike(shape))
    object.__setattr__(metadata, "dimension_names", parse_dimension_names(dimension_names))
    object.__setattr__(metadata, "attributes", parse_attributes(attributes))
    metadata._validate_metadata()
    return metadata


__all__ = [
    "DASK_VERSION",
    "XARRAY_VERSION",
    "ZARR_VERSION",
    "ArrayConfig",
    "ArraySpec",
    "ArrayV2Metadata",
    "ArrayV3Metadata",
    "BatchedCodecPipeline",
    "ChunkTransform",
    "DefaultChunkKeyEncoding",
    "ExplicitlyIndexedNDArrayMixin",
    "FillValueCoder",
    "GroupMetadata",
    "HighLevelGraph",
    "IndexingSupport",
    "LazilyIndexedArray",
    "MaterializedLayer",
    "RectilinearChunkGridMetadata",
    "RegularChunkGridMetadata",
    "TIME_UNITS",
    "Task",
    "TaskRef",
    "array_metadata_like",
    "array_metadata_with_grid",
    "dataset_replace",
    "decode_cf_variable",
    "decode_cf_variables",
    "encode_cf_variable",
    "encode_dataset_coordinates",
    "encode_zarr_attr_value",
    "evolve_codecs",
    "explicit_indexing_adapter",
    "flatten",
    "get_data_type_from_json",
    "get_data_type_from_native_dtype",
    "install_xarray_write_hook",
    "opened_data",
    "parse_attributes",
    "parse_dimension_names",
    "parse_shapelike",
    "sync",
    "variable_data",
    "variable_fastpath",
    "zarr_store_mode",
]


def __getattr__(name: str) -> Any:
    if name in _DASK_ARRAY_NAMES:
        import importlib

        module, attribute = _DASK_ARRAY_NAMES[name]
        return getattr(importlib.import_module(module), attribute)
    raise AttributeError(f"module 'vzdask._compat' has no attribute {name!r}")
