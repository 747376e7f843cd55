"""The ``ds.vz`` accessor: virtual-dataset operations on an ``xarray.Dataset``.

xarray computes a Dataset's lazy variables through one "chunk manager" and
refuses to mix chunked array types (ManifestArray with dask.array). The
accessor's ``compute``/``persist`` hand every lazy variable, of either kind,
to ``dask.compute``/``dask.persist`` in one call instead, so mixed datasets
work; ``to_dask`` turns virtual variables into dask arrays for analysis.
"""

from __future__ import annotations

from typing import Any

import dask
import xarray as xr
from dask.base import is_dask_collection

from vzdask._compat import dataset_replace, variable_data
from vzdask.manifests.array import ManifestArray


@xr.register_dataset_accessor("vzdask")
@xr.register_dataset_accessor("vz")
class VirtualDatasetAccessor:
    """``ds.vz`` (also ``ds.vzdask``): work with the ManifestArray variables of a Dataset.

    VirtualiZarr registers a ``vz`` accessor too, and the package imported
    last owns that name; ``ds.vzdask`` is always this one.
    """

    def __init__(self, ds: xr.Dataset) -> None:
        self._ds = ds

    @property
    def virtual_variables(self) -> list[str]:
        """Names of the variables backed by ManifestArrays."""
        return [name for name, var in self._ds.variables.items() if isinstance(variable_data(var), ManifestArray)]

    def _lazy(self) -> dict[str, Any]:
        data = {name: variable_data(var) for name, var in self._ds.variables.items()}
        return {name: array for name, array in data.items() if is_dask_collection(array)}

    def _with_data(self, new_data: dict[str, Any]) -> xr.Dataset:
        """The Dataset with these variables' data replaced (or whole Variables, when given Variables)."""
        variables = {}
        for name, var in self._ds.variables.items():
            if name in new_data:
                new = new_data[name]
                var = new if isinstance(new, xr.Variable) else var.copy(deep=False, data=new)
            variables[name] = var
        coord_names = set(self._ds.coords)
        return dataset_replace(self._ds, variables, coord_names)

    def compute(self, **kwargs) -> xr.Dataset:
        """Load every lazy variable (virtual or dask) into numpy in one ``dask.compute`` call."""
        lazy = self._lazy()
        if not lazy:
            return self._ds.copy()
        values = dask.compute(*lazy.values(), **kwargs)
        return self._with_data(dict(zip(lazy, values)))

    def persist(self, **kwargs) -> xr.Dataset:
        """Persist every lazy variable: virtual ones become fully inlined ManifestArrays.

        On a ``distributed.Client`` the inlined bytes stay on the workers
        until written or gathered (``ds.vz.gather()``).
        """
        lazy = self._lazy()
        if not lazy:
            return self._ds.copy()
        values = dask.persist(*lazy.values(), **kwargs)
        return self._with_data(dict(zip(lazy, values)))

    def gather(self) -> xr.Dataset:
        """Bring persisted virtual variables' chunks from the cluster into this process."""
        variables = self._ds.variables
        return self._with_data({name: variable_data(variables[name]).gather() for name in self.virtual_variables})

    def to_dask(self, chunks: Any = None, *, mask_and_scale: bool = False) -> xr.Dataset:
        """Replace virtual variables by dask arrays that fetch and decode their chunks directly.

        The result is an ordinary dask-backed Dataset: ``compute``, ``chunk``,
        arithmetic and ``apply_ufunc(..., dask="parallelized")`` all work.
        ``chunks`` is as for ``ManifestArray.to_dask_array``, or a dict keyed
        by dimension name (as ``xr.open_mfdataset`` takes). With
        ``mask_and_scale`` the load tasks also apply CF masking and unpacking
        (``_FillValue``, ``scale_factor``...), as ``xr.decode_cf`` would
        (``vzdask.cf_tasks``); times are left for ``xr.decode_cf``.
        """
        from vzdask.cf_tasks import decoded_in_tasks

        variables = self._ds.variables
        replaced = {}
        for name in self.virtual_variables:
            var, axis_chunks = variables[name], _axis_chunks(chunks, variables[name].dims)
            decoded = decoded_in_tasks(str(name), var, axis_chunks) if mask_and_scale else None
            replaced[name] = decoded if decoded is not None else variable_data(var).to_dask_array(chunks=axis_chunks)
        return self._with_data(replaced)

    def to_icechunk(self, store_or_session, *, group=None, mode="w", append_dim=None, commit=None):
        """Write to an Icechunk session or store; see ``vzdask.writers.icechunk.write_icechunk``.

        Variables persisted on a distributed cluster are written by the workers holding their chunks.
        """
        from vzdask.writers.icechunk import write_icechunk

        return write_icechunk(
            self._ds, store_or_session, group=group, mode=mode, append_dim=append_dim, commit=commit
        )

    def to_kerchunk(self, path=None, *, format="dict", record_size=100_000, categorical_threshold=10):
        """Write as kerchunk references (dict, JSON or Parquet); see ``vzdask.writers.kerchunk.to_kerchunk``.

        With Parquet, variables persisted on a distributed cluster are written by the workers holding their
        chunks (the target must be on a filesystem they share).
        """
        from vzdask.writers.kerchunk import to_kerchunk

        return to_kerchunk(
            self._ds, path, format=format, record_size=record_size, categorical_threshold=categorical_threshold
        )


def _axis_chunks(chunks: Any, dims: tuple) -> Any:
    """A ``{dimension name: chunks}`` dict (xarray style) -> ``{axis: chunks}`` for one variable; else unchanged."""
    if isinstance(chunks, dict) and any(isinstance(k, str) for k in chunks):
        return {dims.index(d): c for d, c in chunks.items() if d in dims}
    return chunks


@xr.register_datatree_accessor("vzdask")
@xr.register_datatree_accessor("vz")
class VirtualDataTreeAccessor:
    """``tree.vz`` (also ``tree.vzdask``): the ``ds.vz`` operations on every group of a DataTree.

    Each node is handled with its own variables (``node.to_dataset(inherit=False)``), so a group's
    inherited coordinates stay its ancestors' and are written once, where they are.
    """

    def __init__(self, tree: xr.DataTree) -> None:
        self._tree = tree

    def _map(self, method: str, *args, **kwargs) -> xr.DataTree:
        return xr.DataTree.from_dict({
            node.path: getattr(VirtualDatasetAccessor(node.to_dataset(inherit=False)), method)(*args, **kwargs)
            for node in self._tree.subtree
        }, name=self._tree.name)

    @property
    def virtual_variables(self) -> list[str]:
        """Paths (``"group/name"``, from this node) of the variables backed by ManifestArrays."""
        return [
            "/".join(p for p in (node.relative_to(self._tree).strip("."), str(name)) if p)
            for node in self._tree.subtree
            for name in VirtualDatasetAccessor(node.to_dataset(inherit=False)).virtual_variables
        ]

    def compute(self, **kwargs) -> xr.DataTree:
        """Every group's lazy variables loaded into numpy (``ds.vz.compute`` group by group)."""
        return self._map("compute", **kwargs)

    def persist(self, **kwargs) -> xr.DataTree:
        """Every group's lazy variables persisted: virtual ones become fully inlined ManifestArrays."""
        return self._map("persist", **kwargs)

    def to_dask(self, chunks: Any = None, *, mask_and_scale: bool = False) -> xr.DataTree:
        """Every group's virtual variables as dask arrays (``ds.vz.to_dask``)."""
        return self._map("to_dask", chunks, mask_and_scale=mask_and_scale)

    def to_icechunk(self, store_or_session, *, group=None, mode="w", append_dim=None, commit=None):
        """Write every group to an Icechunk session or store (below ``group``); see ``write_icechunk``."""
        from vzdask.writers.icechunk import write_icechunk

        return write_icechunk(
            self._tree, store_or_session, group=group, mode=mode, append_dim=append_dim, commit=commit
        )

    def to_kerchunk(self, path=None, *, format="dict", record_size=100_000, categorical_threshold=10):
        """Write every group as kerchunk references (nested groups are key prefixes); see ``to_kerchunk``."""
        from vzdask.writers.kerchunk import to_kerchunk

        return to_kerchunk(
            self._tree, path, format=format, record_size=record_size, categorical_threshold=categorical_threshold
        )
