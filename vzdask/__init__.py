"""vzdask: virtual Zarr datasets over archival files, every virtual array a dask collection."""

from vzdask import accessor as _accessor  # noqa: F401  (registers ds.vz)
from vzdask.manifests import ChunkManifest, ManifestArray, ManifestGroup, ManifestStore
from vzdask.manifests.metadata import create_array_metadata
from vzdask.registry import ObjectStoreRegistry

__version__ = "0.1.0.dev0"

__all__ = [
    "ChunkManifest",
    "ManifestArray",
    "ManifestGroup",
    "ManifestStore",
    "ObjectStoreRegistry",
    "create_array_metadata",
]
