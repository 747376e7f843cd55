"""Shared pytest fixtures.

Sections are independent; add new fixtures in their own section.
"""

from __future__ import annotations

import socket
import uuid
from dataclasses import dataclass

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
