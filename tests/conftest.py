"""Shared pytest fixtures.

Sections are independent; add new fixtures in their own section.
"""

from __future__ import annotations

import socket
import uuid
from dataclasses import dataclass
from pathlib import Path

import hdf5plugin  # noqa: F401  (register HDF5 filters in h5py before netCDF4 points HDF5 at its own plugins)
import numpy as np
import pytest

# =========================================================================== #
# S3: a real moto server on 127.0.0.1 (no other network)
# =========================================================================== #
S3_ACCESS_KEY = "testing"
S3_SECRET_KEY = "testing"
S3_REGION = "us-east-1"


@dataclass(frozen=True)
class S3Server:
    """Where the moto server listens and how to talk to it."""

    endpoint: str  # http://127.0.0.1:PORT
    port: int

    @property
    def env(self) -> dict[str, str]:
        """Environment variables that point obstore's S3Store at this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ALLOW_HTTP": "true",
            "AWS_ACCESS_KEY_ID": S3_ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": S3_SECRET_KEY,
            "AWS_REGION": S3_REGION,
            "AWS_DEFAULT_REGION": S3_REGION,
        }

    def client(self):
        """A boto3 S3 client for this server."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=S3_ACCESS_KEY,
            aws_secret_access_key=S3_SECRET_KEY,
            region_name=S3_REGION,
        )

    def store_kwargs(self) -> dict:
        """Keyword arguments for an explicitly configured ``obstore.store.S3Store``."""
        return {
            "endpoint": self.endpoint,
            "region": S3_REGION,
            "access_key_id": S3_ACCESS_KEY,
            "secret_access_key": S3_SECRET_KEY,
            # allow_http must go in client_options: as a plain S3Store keyword
            # obstore panics when reading .config or pickling the store.
            "client_options": {"allow_http": True},
        }


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server():
    """Start moto's S3-compatible server once per session; stop it afterwards."""
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield S3Server(endpoint=f"http://127.0.0.1:{port}", port=port)
    finally:
        server.stop()


@pytest.fixture
def s3_bucket(s3_server):
    """A fresh, empty bucket: yields ``(bucket_name, boto3_client)``."""
    client = s3_server.client()
    name = f"test-{uuid.uuid4().hex[:16]}"
    client.create_bucket(Bucket=name)
    yield name, client


# Variables that could make obstore/boto3 ignore or override the test settings.
_AWS_VARS_TO_CLEAR = (
    "AWS_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_ENDPOINT",
    "AWS_SKIP_SIGNATURE",
    "AWS_VIRTUAL_HOSTED_STYLE_REQUEST",
    "AWS_REQUEST_PAYER",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
)


def set_s3_env(monkeypatch: pytest.MonkeyPatch, server: S3Server) -> dict[str, str]:
    """Point obstore's ``S3Store(bucket)`` (built from env vars) at ``server``."""
    for var in _AWS_VARS_TO_CLEAR:
        monkeypatch.delenv(var, raising=False)
    env = server.env
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


@pytest.fixture
def s3_env(monkeypatch, s3_server) -> dict[str, str]:
    """AWS_* env vars set (for this test only) so obstore talks to moto."""
    return set_s3_env(monkeypatch, s3_server)


# =========================================================================== #
# Virtual arrays over real zarr chunk files, and a distributed cluster
# (used by test_dask_collection.py and test_xarray_dask.py)
# =========================================================================== #


def zarr_codec_kwargs(codec: str, itemsize: int) -> dict:
    """``zarr.create_array`` keyword arguments for a named codec pipeline."""
    import zarr.codecs as zc

    return {
        "bytes": {"compressors": None},
        "bytes-big-endian": {"serializer": zc.BytesCodec(endian="big"), "compressors": None},
        "zlib": {"compressors": [zc.Zlib(level=6)]},
        "shuffle-zlib": {"compressors": [zc.Shuffle(elementsize=itemsize), zc.Zlib(level=1)]},
        "zstd": {"compressors": [zc.ZstdCodec(level=3)]},
        "blosc": {"compressors": [zc.BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")]},
    }[codec]


def mixed_states(index: tuple[int, ...]) -> str:
    """Virtual, inlined and missing chunks spread over the grid (edge chunks get each state)."""
    return ("virtual", "inlined", "missing")[sum(index) % 3]


@dataclass
class VirtualCase:
    """A ManifestArray over chunk files zarr-python wrote, and what it must read as."""

    array: object  # ManifestArray
    expected: np.ndarray  # the source values, fill value where a chunk is missing
    raw: dict  # chunk index -> the encoded bytes zarr wrote for it
    states: dict  # chunk index -> "virtual" | "inlined" | "missing"
    urls: dict  # chunk index -> url of the file a virtual chunk points into
    metadata_json: Path  # the zarr.json zarr wrote

    def store(self, name: str = "v"):
        from vzdask import ManifestGroup, ManifestStore

        return ManifestStore(ManifestGroup(arrays={name: self.array}))


@pytest.fixture
def make_virtual(tmp_path):
    """Factory: write ``data`` with zarr-python, return a :class:`VirtualCase` over its chunk files.

    ``make_virtual(data, chunks, codec="zstd", fill_value=None, state_of=mixed_states,
    packed=False, name="v", dimension_names=None, attributes=None)``. With
    ``packed=True`` every chunk is copied, after a header, into one file
    (``<name>.pack``) and virtual chunks point into it at their offsets;
    otherwise each virtual chunk is zarr's own chunk file.
    """
    import zarr
    from zarr.storage import LocalStore

    from vzdask import ChunkManifest, ManifestArray

    def make(
        data,
        chunks,
        *,
        codec="zstd",
        fill_value=None,
        state_of=mixed_states,
        packed=False,
        name="v",
        dimension_names=None,
        attributes=None,
    ):
        data = np.asarray(data)
        zarray = zarr.create_array(
            LocalStore(tmp_path),
            name=name,
            shape=data.shape,
            chunks=chunks,
            dtype=data.dtype,
            fill_value=fill_value,
            dimension_names=dimension_names or tuple(f"d{i}" for i in range(data.ndim)),
            attributes=attributes,
            config={"write_empty_chunks": True},
            **zarr_codec_kwargs(codec, data.dtype.itemsize),
        )
        zarray[...] = data
        grid = tuple(-(-s // c) for s, c in zip(data.shape, zarray.chunks))
        indices = list(np.ndindex(*grid))
        raw = {ix: (tmp_path / name / zarray.metadata.encode_chunk_key(ix)).read_bytes() for ix in indices}
        positions = {ix: (0, len(raw[ix])) for ix in indices}
        files = {ix: tmp_path / name / zarray.metadata.encode_chunk_key(ix) for ix in indices}
        if packed:
            pack = tmp_path / f"{name}.pack"
            position = 16
            with open(pack, "wb") as f:
                f.write(b"PACKED-HEADER-16")
                for ix in indices:
                    f.write(raw[ix])
                    positions[ix] = (position, len(raw[ix]))
                    files[ix] = pack
                    position += len(raw[ix])
        paths = np.full(grid, "", dtype=object)
        offsets = np.zeros(grid, dtype=np.uint64)
        lengths = np.zeros(grid, dtype=np.uint64)
        inlined, states, urls = {}, {}, {}
        expected = data.copy()
        fill = zarray.metadata.fill_value
        for ix in indices:
            state = states[ix] = state_of(ix)
            if state == "virtual":
                urls[ix] = paths[ix] = files[ix].as_uri()
                offsets[ix], lengths[ix] = positions[ix]
            elif state == "inlined":
                inlined[ix] = raw[ix]
            else:
                expected[tuple(slice(i * c, (i + 1) * c) for i, c in zip(ix, zarray.chunks))] = fill
        manifest = ChunkManifest.from_arrays(paths=paths, offsets=offsets, lengths=lengths, inlined=inlined or None)
        return VirtualCase(
            ManifestArray(zarray.metadata, manifest), expected, raw, states, urls, tmp_path / name / "zarr.json"
        )

    return make


@pytest.fixture(scope="session")
def dask_cluster():
    """A 2-worker ``distributed.LocalCluster`` (processes) and its Client, for the whole session.

    The Client is not made the global default; use the ``dask_client`` fixture,
    which makes it the scheduler for one test only.
    """
    import warnings

    distributed = pytest.importorskip("distributed")
    with warnings.catch_warnings():
        # the (unused) HTTP server moves off port 8787 when another session holds it
        warnings.filterwarnings("ignore", message="Port .* is already in use", category=UserWarning)
        cluster = distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None)
    with cluster, distributed.Client(cluster, set_as_default=False) as client:
        yield client


@pytest.fixture
def dask_client(dask_cluster):
    """The session's distributed Client, acting as dask's scheduler during this test."""
    with dask_cluster.as_current():
        yield dask_cluster


# =========================================================================== #
# Exit: skip interpreter teardown once pytest has reported, if Icechunk was used
# =========================================================================== #
# Icechunk's Rust runtime, after a store listing, now and then crashes (SIGSEGV)
# while CPython finalizes, after every test has passed and the summary is
# printed (repro/icechunk_exit_crash.py shows it without vzdask); a process that
# read Parquet references with pyarrow aborted at exit too (vzdask.process). Once
# either is imported, the process ends right after pytest is done, with pytest's
# own exit status (vzdask.process does the same for the CLI).
_EXIT_STATUS: list[int] = []


def pytest_sessionfinish(session, exitstatus):
    _EXIT_STATUS.append(int(exitstatus))


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    import sys

    from vzdask.process import CRASHES_AT_EXIT, exit_process

    if _EXIT_STATUS and not hasattr(config, "workerinput") and any(m in sys.modules for m in CRASHES_AT_EXIT):
        exit_process(_EXIT_STATUS[-1])
