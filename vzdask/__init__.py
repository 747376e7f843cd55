"""vzdask: virtual Zarr datasets over archival files, every virtual array a dask collection."""

from vzdask import accessor as _accessor  # noqa: F401  (registers ds.vz)
from vzdask import errors
from vzdask.manifests import ChunkManifest, ManifestArray, ManifestGroup, ManifestStore
from vzdask.manifests.metadata import create_array_metadata
from vzdask.mfdataset import open_mfdataset, open_virtual_mfdataset
from vzdask.policy import InlinePolicy
from vzdask.registry import ObjectStoreRegistry
from vzdask.xarray import open_virtual_dataset

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
    "open_mfdataset",
    "open_virtual_dataset",
    "open_virtual_mfdataset",
]
