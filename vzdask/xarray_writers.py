"""xarray's own writers on virtual datasets: ``vds.to_netcdf(...)`` and ``vds.to_zarr(...)`` write the stored values.

xarray takes every dask collection that is also a duck array for a
``dask.array.Array``: it hands a ManifestArray to ``dask.array.store``, which
refuses anything but dask arrays, after the output file exists. A chunk
manager of vzdask's own cannot take over: xarray's dask manager recognises a
ManifestArray as well, and xarray refuses a type two managers recognise (and a
mix of chunked array types in one write). So the one place every xarray writer
passes through (``dump_to_store``: ``to_netcdf`` with any engine, ``to_zarr``,
``save_mfdataset``, the DataTree writers) first sees each virtual variable as
the dask array of its stored values, as a ``decode_cf=False`` dataset opened
with ``chunks`` is written; the CF attributes go along, so the written file
reads back decoded exactly as the original does.

Where a plain dask write would not reproduce the source, the hook adapts:
netCDF char arrays (``S1`` with the character dimension last) go to netCDF
writers as the fixed-width strings xarray's own decoding makes of them, with
their character dimension's name (also under a user's ``encoding=``), so the
writer splits them into the very same characters (a plain ``S1`` array would
get a new ``string1`` dimension); the chunk encoding is the stored chunk shape
(``chunksizes`` for netCDF); and a zarr write into existing arrays
(``append_dim``, ``region``, ``mode="a"``), which encodes values with each
array's own encoding, gets the virtual variables CF-decoded (lazily), as it
would a dataset from ``xr.open_dataset``.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from typing import Any

import numpy as np

from vzdask._compat import (dataset_replace, decode_cf_variables, install_xarray_write_hook, variable_data,
                            variable_fastpath, zarr_store_mode)
from vzdask.manifests.array import ManifestArray
from vzdask.xarray import MANIFEST_ENCODING_KEY


def stored_values_dataset(ds: Any, *, netcdf: bool) -> Any:
    """``ds`` with each virtual variable as the dask array of its stored values (``ds`` itself if it has none).

    Parameters
    ----------
    ds : xarray.Dataset
        A dataset some of whose variables may wrap ManifestArrays.
    netcdf : bool
        Whether a netCDF writer (netcdf4, h5netcdf, scipy) writes it: char
        arrays become strings over their character dimension and ``chunks``
        becomes ``chunksizes``. Zarr writers get the arrays as they are stored.
    """
    variables = dict(ds.variables)
    virtual = {name for name, var in variables.items()
               if isinstance(variable_data(var), ManifestArray) or MANIFEST_ENCODING_KEY in var.encoding}
    if not virtual:
        return ds
    for name in virtual:
        variables[name] = _writable(variables[name], netcdf=netcdf)
    dims: dict = {}
    for var in variables.values():
        dims.update(zip(var.dims, var.shape))
    return dataset_replace(ds, variables, set(ds.coords), dims={d: dims[d] for d in ds.dims if d in dims} | dims)


def _writable(var: Any, *, netcdf: bool) -> Any:
    """One variable as a writer takes it: dask array of the stored values, an encoding the writer understands."""
    encoding = dict(var.encoding)
    encoding.pop(MANIFEST_ENCODING_KEY, None)  # loaded for indexing: the values are already there
    array = variable_data(var)
    dims = var.dims
    if isinstance(array, ManifestArray):
        # Write chunks of the stored shape (the largest, where files of different lengths were joined: zarr
        # and netCDF take one size per axis), each task a block of whole ones.
        encoding["chunks"] = array.chunk_shape
        data = array.to_dask_array(chunks=array.chunk_shape if array.is_rectilinear else None)
        if netcdf and array.dtype == np.dtype("S1") and array.ndim and array.shape[-1]:
            data, dims = _char_strings(data), dims[:-1]
            encoding.setdefault("char_dim_name", var.dims[-1])
    else:
        data = array
    if netcdf and "chunks" in encoding:
        chunks = encoding.pop("chunks")
        if chunks is not None and "chunksizes" not in encoding and "contiguous" not in encoding:
            encoding["chunksizes"] = tuple(chunks)
    return variable_fastpath(dims, data, dict(var.attrs), encoding)


def _char_strings(data):
    """Characters along the last axis -> one fixed-width string per row (xarray's char decoding, lazily)."""
    width = data.shape[-1]
    data = data.rechunk({data.ndim - 1: -1})
    return data.map_blocks(_join_characters, dtype=f"S{width}", drop_axis=data.ndim - 1)


def _join_characters(block: np.ndarray) -> np.ndarray:
    """``(..., n)`` of ``S1`` -> ``(...)`` of ``S{n}``: the same bytes, trailing NULs the padding numpy drops."""
    block = np.ascontiguousarray(block)
    return block.view(f"S{block.shape[-1]}").reshape(block.shape[:-1])


def decoded_for_existing_store(ds: Any, virtual: Iterable[Hashable]) -> Any:
    """``ds`` (stored values, as dask arrays) with the ``virtual`` variables CF-decoded, lazily.

    What xarray's zarr writer needs when it writes into existing arrays (``append_dim``, ``region``,
    ``mode="a"``): it encodes the values with each array's own encoding, so they must be the decoded ones
    (stored values whose ``_FillValue`` or ``scale_factor`` attributes clash with that encoding are refused).
    Character arrays stay characters, as the store holds them.
    """
    variables = dict(ds.variables)
    raw = {name: variables[name] for name in virtual}
    decoded, _, _ = decode_cf_variables(raw, {}, concat_characters=False, decode_coords=False)
    variables.update(decoded)
    return dataset_replace(ds, variables, set(ds.coords))


def _prepare(dataset: Any, store: Any, encoding: Any) -> tuple[Any, Any]:
    """The hook every xarray writer runs (``vzdask._compat.install_xarray_write_hook``)."""
    from xarray.backends import ZarrStore

    virtual = [name for name, var in dataset.variables.items() if isinstance(variable_data(var), ManifestArray)]
    if not isinstance(store, ZarrStore):
        written = stored_values_dataset(dataset, netcdf=True)
        for name in virtual:  # the user's encoding of a char array replaces its own: keep its dimension's name
            char_dim = written.variables[name].encoding.get("char_dim_name")
            if encoding and name in encoding and char_dim and "char_dim_name" not in encoding[name]:
                encoding = {**encoding, name: {**encoding[name], "char_dim_name": char_dim}}
        return written, encoding
    written = stored_values_dataset(dataset, netcdf=False)
    if virtual and zarr_store_mode(store) not in ("w", "w-"):
        written = decoded_for_existing_store(written, virtual)
    return written, encoding


install_xarray_write_hook(_prepare)
