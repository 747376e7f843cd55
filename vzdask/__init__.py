"""vzdask: virtual Zarr datasets over archival files, every virtual array a dask collection."""

from vzdask import accessor as _accessor  # noqa: F401  (registers ds.vz)
from vzdask import errors
from vzdask import grib_codec as _grib_codec  # noqa: F401  (registers the GRIB codec with zarr and numcodecs)
from vzdask.manifests import array_api as _array_api  # noqa: F401  (ManifestArray's numpy functions)
from vzdask.manifests.array import ManifestArray
from vzdask.manifests.group import ManifestGroup
from vzdask.manifests.manifest import ChunkManifest
from vzdask.manifests.store import ManifestStore
from vzdask.manifests.metadata import create_array_metadata
from vzdask.mfdataset import open_mfdataset, open_virtual_mfdataset
from vzdask.datatree import open_datatree, open_virtual_datatree
from vzdask.policy import InlinePolicy
from vzdask.registry import ObjectStoreRegistry
from vzdask.xarray import open_virtual_dataset
from vzdask import xarray_writers as _xarray_writers  # noqa: F401  (xarray's writers write virtual variables' values)

__version__ = "0.1.0.dev0"

__all__ = [
    "ChunkManifest",
    "InlinePolicy",
    "ManifestArray",
    "ManifestGroup",
    "ManifestStore",
    "ObjectStoreRegistry",
    "create_array_metadata",
    "errors",
    "open_datatree",
    "open_mfdataset",
    "open_virtual_dataset",
    "open_virtual_datatree",
    "open_virtual_mfdataset",
]
