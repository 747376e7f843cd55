"""A local Icechunk repository for tests, with a virtual chunk container per data directory."""

from __future__ import annotations

import icechunk
import xarray as xr

#: The Icechunk objects vzdask takes as a source, for ``Repo.as_object``.
KINDS = ["repository", "session", "store"]


class Repo:
    """A local-filesystem repository whose config has a virtual chunk container per data directory."""

    def __init__(self, path, *data_dirs):
        self.path = str(path)
        prefixes = [f"file://{d}/" for d in data_dirs]
        config = icechunk.RepositoryConfig.default()
        for prefix, d in zip(prefixes, data_dirs):
            store = icechunk.local_filesystem_store(str(d))
            config.set_virtual_chunk_container(icechunk.VirtualChunkContainer(prefix, store))
        self.credentials = icechunk.containers_credentials(
            {prefix: icechunk.credentials.LocalFileSystemAccess for prefix in prefixes}
        )
        icechunk.Repository.create(self.storage(), config, authorize_virtual_chunk_access=self.credentials)

    def storage(self):
        return icechunk.local_filesystem_storage(self.path)

    def open(self) -> icechunk.Repository:
        return icechunk.Repository.open(self.storage(), authorize_virtual_chunk_access=self.credentials)

    def writable(self) -> icechunk.Session:
        return self.open().writable_session("main")

    def read(self, group=None) -> xr.Dataset:
        session = self.open().readonly_session("main")
        return xr.open_zarr(session.store, consolidated=False, group=group)

    def snapshots(self) -> list[str]:
        return [s.id for s in self.open().ancestry(branch="main")]

    def as_object(self, kind: str):
        """The repository as an object of ``kind`` (one of ``KINDS``): its ``Repository``, a read-only
        ``Session`` of ``main``, or that session's ``IcechunkStore``."""
        repository = self.open()
        if kind == "repository":
            return repository
        session = repository.readonly_session("main")
        return session if kind == "session" else session.store
