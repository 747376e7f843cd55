"""The data model: ChunkManifest, ManifestArray, ManifestGroup, ManifestStore.

The names are loaded on first use (PEP 562), so importing one module of the
package (``vzdask.manifests.manifest``, say, from the task functions below
ManifestArray) does not import the modules above it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vzdask.manifests.array import ManifestArray
    from vzdask.manifests.group import ManifestGroup
    from vzdask.manifests.manifest import ChunkManifest
    from vzdask.manifests.store import ManifestStore

_WHERE = {
    "ChunkManifest": "vzdask.manifests.manifest",
    "ManifestArray": "vzdask.manifests.array",
    "ManifestGroup": "vzdask.manifests.group",
    "ManifestStore": "vzdask.manifests.store",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'vzdask.manifests' has no attribute {name!r}")


__all__ = ["ChunkManifest", "ManifestArray", "ManifestGroup", "ManifestStore"]
