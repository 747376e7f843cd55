"""The data model: ChunkManifest, ManifestArray, ManifestGroup, ManifestStore."""

from vzdask.manifests import array_api as _array_api  # noqa: F401  (registers the numpy functions)
from vzdask.manifests.array import ManifestArray
from vzdask.manifests.group import ManifestGroup
from vzdask.manifests.manifest import ChunkManifest
from vzdask.manifests.store import ManifestStore

__all__ = ["ChunkManifest", "ManifestArray", "ManifestGroup", "ManifestStore"]
