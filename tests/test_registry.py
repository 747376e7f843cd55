"""Tests for vzdask.registry.ObjectStoreRegistry."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap
import threading
import time

import obstore
import pytest
from dask.base import tokenize
from obstore.store import (
    AzureStore,
    GCSStore,
    HTTPStore,
    LocalStore,
    MemoryStore,
    S3Store,
)

from vzdask.registry import ObjectStoreRegistry

PAYLOAD = bytes(range(256)) * 4  # 1 KiB, every byte value


def _mem(**objects: bytes) -> MemoryStore:
    store = MemoryStore()
    for path, data in objects.items():
        obstore.put(store, path.replace("__", "/"), data)
    return store


def _read(store, path: str, start: int = 0, end: int | None = None) -> bytes:
    if end is None:
        end = obstore.head(store, path)["size"]
    return obstore.get_range(store, path, start=start, end=end).to_bytes()


# --------------------------------------------------------------------------- #
# matching
# --------------------------------------------------------------------------- #
def test_longest_prefix_wins_on_component_boundaries():
    a, b, c = MemoryStore(), MemoryStore(), MemoryStore()
    reg = ObjectStoreRegistry(
        {"s3://bkt": a, "s3://bkt/x": b, "s3://bkt/x/y": c}, create_missing=False
    )
    assert reg.resolve("s3://bkt/x/y/z.nc") == (c, "z.nc")
    assert reg.resolve("s3://bkt/x/yz/k") == (b, "yz/k")
    assert reg.resolve("s3://bkt/xy/z") == (a, "xy/z")
    assert reg.resolve("s3://bkt/x") == (b, "")
    assert reg.resolve("s3://bkt/x/") == (b, "")
    assert reg.resolve("s3://bkt") == (a, "")
    # "s3://bkt" is not a prefix of the bucket "bkt2".
    with pytest.raises(ValueError, match="s3://bkt2/k"):
        reg.resolve("s3://bkt2/k")


def test_prefixes_are_normalised():
    m = MemoryStore()
    reg = ObjectStoreRegistry(create_missing=False)
    reg.register("s3://bkt/sub/", m)
    reg.register("memory://mine//", m)
    reg.register("file:///", LocalStore())
    reg.register("HTTPS://host.example/", m)
    assert reg.prefixes == (
        "file:///",
        "https://host.example",
        "memory://mine",
        "s3://bkt/sub",
    )
    # Re-registering the same normalised prefix replaces the entry.
    other = MemoryStore()
    reg.register("s3://bkt/sub", other)
    assert len(reg.prefixes) == 4
    assert reg.resolve("s3://bkt/sub/k")[0] is other
    # The url's scheme is case-insensitive too.
    assert reg.resolve("S3://bkt/sub/k") == (other, "k")


def test_resolve_rejects_urls_without_scheme():
    reg = ObjectStoreRegistry()
    with pytest.raises(ValueError, match="/tmp/x.bin"):
        reg.resolve("/tmp/x.bin")


# --------------------------------------------------------------------------- #
# file://
# --------------------------------------------------------------------------- #
def test_file_url_reads_real_bytes(tmp_path):
    f = tmp_path / "data.bin"
    f.write_bytes(PAYLOAD)
    reg = ObjectStoreRegistry.default()
    store, path = reg.resolve(f"file://{f}")
    assert isinstance(store, LocalStore)
    assert path == str(f).lstrip("/")
    assert not path.startswith("/")
    assert _read(store, path, 10, 300) == PAYLOAD[10:300]
    assert reg.prefixes == ("file:///",)


def test_lazy_local_store_is_reused(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"aaaa")
    (tmp_path / "b.bin").write_bytes(b"bbbb")
    reg = ObjectStoreRegistry()
    s1, p1 = reg.resolve(f"file://{tmp_path}/a.bin")
    s2, p2 = reg.resolve(f"file://{tmp_path}/b.bin")
    assert s1 is s2
    assert (_read(s1, p1), _read(s2, p2)) == (b"aaaa", b"bbbb")
    assert reg.prefixes == ("file:///",)
    assert f"file://{tmp_path}/a.bin" in reg


def test_registered_local_store_with_prefix(tmp_path):
    sub = tmp_path / "sub"
    sub.mkdir()
    (sub / "x.bin").write_bytes(PAYLOAD)
    local = LocalStore(tmp_path)
    reg = ObjectStoreRegistry({f"file://{tmp_path}": local}, create_missing=False)
    store, path = reg.resolve(f"file://{tmp_path}/sub/x.bin")
    assert store is local
    assert path == "sub/x.bin"
    assert _read(store, path, 0, 16) == PAYLOAD[:16]


def test_percent_escapes_are_not_decoded(tmp_path):
    (tmp_path / "a b.bin").write_bytes(b"space")
    (tmp_path / "a%20b.bin").write_bytes(b"percent")
    reg = ObjectStoreRegistry()
    assert _read(*reg.resolve(f"file://{tmp_path}/a b.bin")) == b"space"
    assert _read(*reg.resolve(f"file://{tmp_path}/a%20b.bin")) == b"percent"


# --------------------------------------------------------------------------- #
# s3:// against moto
# --------------------------------------------------------------------------- #
def test_s3_lazy_store_from_env_reads_same_bytes_as_local(s3_env, s3_bucket, tmp_path):
    bucket, client = s3_bucket
    local = tmp_path / "obj.bin"
    local.write_bytes(PAYLOAD)
    client.upload_file(str(local), bucket, "dir/obj.bin")

    reg = ObjectStoreRegistry.default()
    s3, s3_path = reg.resolve(f"s3://{bucket}/dir/obj.bin")
    fs, fs_path = reg.resolve(f"file://{local}")
    assert isinstance(s3, S3Store)
    assert s3.config["bucket"] == bucket
    assert s3_path == "dir/obj.bin"
    assert _read(s3, s3_path, 100, 900) == _read(fs, fs_path, 100, 900)
    assert _read(s3, s3_path) == PAYLOAD
    assert reg.prefixes == ("file:///", f"s3://{bucket}")
    assert reg.resolve(f"s3://{bucket}/other")[0] is s3


def test_s3_explicit_store(s3_server, s3_bucket, monkeypatch):
    for var in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(var, raising=False)  # explicit config only
    bucket, client = s3_bucket
    client.put_object(Bucket=bucket, Key="pre/fix/k.bin", Body=PAYLOAD)
    kw = s3_server.store_kwargs()
    whole = S3Store(bucket, **kw)
    under = S3Store(bucket, prefix="pre/fix", **kw)
    reg = ObjectStoreRegistry(
        {f"s3://{bucket}": whole, f"s3://{bucket}/pre/fix": under},
        create_missing=False,
    )
    store, path = reg.resolve(f"s3://{bucket}/pre/fix/k.bin")
    assert (store, path) == (under, "k.bin")
    assert _read(store, path, 5, 50) == PAYLOAD[5:50]
    store, path = reg.resolve(f"s3://{bucket}/pre/fix2")
    assert (store, path) == (whole, "pre/fix2")
    assert _read(whole, "pre/fix/k.bin") == PAYLOAD


def test_register_rejects_store_whose_config_obstore_cannot_read():
    bad = S3Store("bkt", allow_http=True)  # belongs in client_options
    reg = ObjectStoreRegistry()
    with pytest.raises(ValueError, match="client_options"):
        reg.register("s3://bkt", bad)
    assert reg.prefixes == ()


# --------------------------------------------------------------------------- #
# other schemes and errors
# --------------------------------------------------------------------------- #
def test_lazy_http_gcs_azure(monkeypatch):
    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT_NAME", "acct")
    reg = ObjectStoreRegistry()
    http, path = reg.resolve("https://host.example:8443/a/b.nc")
    assert isinstance(http, HTTPStore)
    assert http.url == "https://host.example:8443/"
    assert path == "a/b.nc"
    gcs, path = reg.resolve("gs://gbkt/k/v")
    assert isinstance(gcs, GCSStore)
    assert (gcs.config["bucket"], path) == ("gbkt", "k/v")
    az, path = reg.resolve("az://container/x/y")
    assert isinstance(az, AzureStore)
    assert (az.config["container_name"], path) == ("container", "x/y")
    assert reg.prefixes == (
        "az://container",
        "gs://gbkt",
        "https://host.example:8443",
    )


def test_azure_without_account_is_a_clear_error(monkeypatch):
    for var in ("AZURE_STORAGE_ACCOUNT_NAME", "AZURE_STORAGE_ACCOUNT"):
        monkeypatch.delenv(var, raising=False)
    reg = ObjectStoreRegistry()
    with pytest.raises(ValueError, match=r"az://container/x.*register"):
        reg.resolve("az://container/x")
    assert reg.prefixes == ()


def test_unregistered_memory_url_raises_with_hint():
    reg = ObjectStoreRegistry.default()
    with pytest.raises(ValueError) as info:
        reg.resolve("memory://mine/a/b")
    msg = str(info.value)
    assert "memory://mine/a/b" in msg
    assert 'register("memory://mine", MemoryStore())' in msg
    m = _mem(a__b=b"hello")
    reg.register("memory://mine", m)
    assert _read(*reg.resolve("memory://mine/a/b")) == b"hello"


def test_unknown_scheme_raises():
    reg = ObjectStoreRegistry.default()
    with pytest.raises(ValueError, match=r"ftp://host/f.*unknown scheme.*register"):
        reg.resolve("ftp://host/f")
    assert reg.prefixes == ()


def test_create_missing_false_raises(tmp_path):
    reg = ObjectStoreRegistry(create_missing=False)
    url = f"file://{tmp_path}/x"
    with pytest.raises(ValueError, match=r"create_missing=False.*register"):
        reg.resolve(url)
    assert url not in reg
    assert reg.prefixes == ()


# --------------------------------------------------------------------------- #
# pickling
# --------------------------------------------------------------------------- #
def test_pickle_memory_store_snapshot():
    m = _mem(a__b=b"hello", c=PAYLOAD)
    reg = ObjectStoreRegistry({"memory://one": m, "memory://two": m})
    back = pickle.loads(pickle.dumps(reg))
    s1, p1 = back.resolve("memory://one/a/b")
    s2, p2 = back.resolve("memory://two/c")
    assert isinstance(s1, MemoryStore)
    assert s1 is not m
    assert s1 is s2  # one store under two prefixes stays one store
    assert _read(s1, p1) == b"hello"
    assert _read(s2, p2) == PAYLOAD
    assert back == reg
    assert tokenize(back) == tokenize(reg)
    assert back.create_missing is True


def test_pickle_local_and_s3(s3_server, s3_bucket, tmp_path):
    bucket, client = s3_bucket
    client.put_object(Bucket=bucket, Key="k.bin", Body=PAYLOAD)
    (tmp_path / "f.bin").write_bytes(PAYLOAD[::-1])
    reg = ObjectStoreRegistry(
        {
            f"s3://{bucket}": S3Store(bucket, **s3_server.store_kwargs()),
            f"file://{tmp_path}": LocalStore(tmp_path),
        },
        create_missing=False,
    )
    back = pickle.loads(pickle.dumps(reg))
    s3, path = back.resolve(f"s3://{bucket}/k.bin")
    assert isinstance(s3, S3Store)
    assert s3.config["endpoint"] == s3_server.endpoint
    assert s3.client_options["allow_http"] in (True, "true")
    assert _read(s3, path) == PAYLOAD
    local, path = back.resolve(f"file://{tmp_path}/f.bin")
    assert isinstance(local, LocalStore)
    assert str(local.prefix) == str(tmp_path.resolve())
    assert _read(local, path) == PAYLOAD[::-1]
    assert back.create_missing is False
    assert back == reg
    assert tokenize(back) == tokenize(reg)


def test_pickle_keeps_lazily_created_stores(tmp_path):
    (tmp_path / "x").write_bytes(b"xyz")
    reg = ObjectStoreRegistry()
    reg.resolve(f"file://{tmp_path}/x")
    back = pickle.loads(pickle.dumps(reg))
    assert back.prefixes == ("file:///",)
    assert _read(*back.resolve(f"file://{tmp_path}/x")) == b"xyz"
    assert "(auto)" in repr(back)


def test_dask_process_scheduler_ships_registry():
    import dask

    reg = ObjectStoreRegistry({"memory://m": _mem(k=PAYLOAD)})

    @dask.delayed
    def read(registry, url):
        import os

        store, path = registry.resolve(url)
        return os.getpid(), obstore.get(store, path).bytes().to_bytes()

    pid, data = read(reg, "memory://m/k").compute(scheduler="processes", num_workers=1)
    assert pid != os.getpid()
    assert data == PAYLOAD


# --------------------------------------------------------------------------- #
# tokens and equality
# --------------------------------------------------------------------------- #
# Builds the same registry here and in a subprocess.
_BUILD = textwrap.dedent(
    """
    import obstore
    from obstore.store import LocalStore, MemoryStore, S3Store, HTTPStore
    from vzdask.registry import ObjectStoreRegistry

    def build():
        mem = MemoryStore()
        obstore.put(mem, "b/obj", b"second")
        obstore.put(mem, "a/obj", b"first")
        return ObjectStoreRegistry({
            "memory://m": mem,
            "file:///data": LocalStore("/tmp"),
            "s3://bkt": S3Store(
                "bkt", endpoint="http://127.0.0.1:1", region="us-east-1",
                client_options={"allow_http": True, "timeout": "5s"},
            ),
            "https://host.example": HTTPStore.from_url("https://host.example"),
        })
    """
)


def _build():
    ns: dict = {}
    exec(_BUILD, ns)
    return ns["build"]()


def test_token_is_deterministic_and_survives_pickle():
    a, b = _build(), _build()
    assert a is not b
    assert tokenize(a) == tokenize(b)
    assert a == b
    assert tokenize(pickle.loads(pickle.dumps(a))) == tokenize(a)
    assert tokenize(ObjectStoreRegistry()) == tokenize(ObjectStoreRegistry.default())


def test_token_matches_in_another_process(tmp_path):
    reg = _build()
    blob = tmp_path / "reg.pkl"
    blob.write_bytes(pickle.dumps(reg))
    code = _BUILD + textwrap.dedent(
        f"""
        import pickle, sys
        from dask.base import tokenize
        fresh = build()
        shipped = pickle.loads(open({str(blob)!r}, "rb").read())
        store, path = shipped.resolve("memory://m/a/obj")
        print(tokenize(fresh))
        print(tokenize(shipped))
        print(obstore.get(store, path).bytes().to_bytes().decode())
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    fresh_token, shipped_token, content = out.stdout.split()
    assert fresh_token == tokenize(reg)
    assert shipped_token == tokenize(reg)
    assert content == "first"


def test_token_differs_when_anything_differs():
    base = tokenize(_build())

    changed = _build()
    mem, _ = changed.resolve("memory://m/x")
    obstore.put(mem, "a/obj", b"FIRST")  # same paths, different bytes
    assert tokenize(changed) != base
    assert changed != _build()

    extra = _build()
    obstore.put(extra.resolve("memory://m/x")[0], "c", b"")  # one more object
    assert tokenize(extra) != base

    moved = _build()
    moved.register("file:///other", LocalStore("/tmp"))
    assert tokenize(moved) != base

    other_cfg = _build()
    other_cfg.register("s3://bkt", S3Store("bkt", region="eu-west-1"))
    assert tokenize(other_cfg) != base

    other_opts = _build()
    other_opts.register(
        "https://host.example",
        HTTPStore.from_url("https://host.example", client_options={"timeout": "9s"}),
    )
    assert tokenize(other_opts) != base

    assert tokenize(ObjectStoreRegistry(create_missing=False)) != tokenize(
        ObjectStoreRegistry()
    )
    assert tokenize(ObjectStoreRegistry({"memory://a": MemoryStore()})) != tokenize(
        ObjectStoreRegistry({"memory://b": MemoryStore()})
    )
    assert tokenize(ObjectStoreRegistry({"memory://a": MemoryStore()})) == tokenize(
        ObjectStoreRegistry({"memory://a": MemoryStore()})
    )


def test_lazily_created_stores_do_not_change_identity(tmp_path):
    (tmp_path / "x").write_bytes(b"1")
    used, unused = ObjectStoreRegistry(), ObjectStoreRegistry()
    used.resolve(f"file://{tmp_path}/x")
    assert used.prefixes == ("file:///",)
    assert unused.prefixes == ()
    assert tokenize(used) == tokenize(unused)
    assert used == unused
    used.register("file:///", LocalStore())  # explicit now: part of identity
    assert tokenize(used) != tokenize(unused)


def test_repr_contains_and_eq():
    reg = ObjectStoreRegistry({"memory://m": MemoryStore(), "file:///": LocalStore()})
    text = repr(reg)
    assert "'memory://m': MemoryStore" in text
    assert "'file:///': LocalStore" in text
    assert "create_missing=True" in text
    assert "memory://m/a" in reg
    assert "memory://mx/a" not in reg
    assert "s3://nope/k" not in reg  # contains never creates stores
    assert reg.prefixes == ("file:///", "memory://m")
    assert 42 not in reg
    assert reg != object()
    with pytest.raises(TypeError):
        hash(reg)


# --------------------------------------------------------------------------- #
# concurrency
# --------------------------------------------------------------------------- #
def test_concurrent_lazy_creation_gives_one_store(s3_env, monkeypatch):
    reg = ObjectStoreRegistry()
    builds: list[str] = []
    real_build = ObjectStoreRegistry._build

    def slow_build(self, url):  # widen the race window
        builds.append(url)
        time.sleep(0.05)
        return real_build(self, url)

    monkeypatch.setattr(ObjectStoreRegistry, "_build", slow_build)
    n = 8
    barrier = threading.Barrier(n)
    results: list = [None] * n
    errors: list = []

    def work(i: int) -> None:
        try:
            barrier.wait(timeout=10)
            results[i] = reg.resolve(f"s3://race-bucket/key/{i}")
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert errors == []
    assert len(builds) == 1
    stores = {id(store) for store, _ in results}
    assert len(stores) == 1
    assert [path for _, path in results] == [f"key/{i}" for i in range(n)]
    assert reg.prefixes == ("s3://race-bucket",)
    assert isinstance(results[0][0], S3Store)


def test_union_resolves_what_each_registry_resolves(tmp_path):
    """What combining arrays read through different registries uses: equal ones stay one, a clash is refused."""
    import numpy as np

    from vzdask.manifests.array import ManifestArray
    from vzdask.manifests.manifest import ChunkManifest
    from vzdask.manifests.metadata import create_array_metadata

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "x.bin").write_bytes(np.arange(4, dtype="<i4").tobytes())
    (tmp_path / "b" / "y.bin").write_bytes(np.arange(4, 8, dtype="<i4").tobytes())
    first = ObjectStoreRegistry({f"file://{tmp_path}/a": LocalStore(tmp_path / "a")}, create_missing=False)
    copy = pickle.loads(pickle.dumps(first))
    assert ObjectStoreRegistry.union([first, copy, first]) is first

    second = ObjectStoreRegistry({f"file://{tmp_path}/b": LocalStore(tmp_path / "b")}, create_missing=False)
    both = ObjectStoreRegistry.union([first, second])
    assert both.create_missing is False
    assert both.resolve(f"file://{tmp_path}/a/x.bin")[1] == "x.bin"
    assert both.resolve(f"file://{tmp_path}/b/y.bin")[1] == "y.bin"

    # np.concatenate of arrays from the two registries reads both files
    metadata = create_array_metadata(shape=(4,), chunk_shape=(4,), dtype="<i4")
    arrays = [ManifestArray(metadata, ChunkManifest.from_file_table(f"file://{tmp_path}/{d}/{f}", np.ones(1, bool),
                                                                    np.zeros(1, np.uint64), np.full(1, 16, np.uint64)),
                            registry=registry)
              for d, f, registry in (("a", "x.bin", first), ("b", "y.bin", second))]
    joined = np.concatenate(arrays)
    assert joined.registry == both and joined.registry.create_missing is False
    np.testing.assert_array_equal(joined.compute(), np.arange(8))
    assert np.broadcast_to(arrays[0][None], (3, 4)).registry is first

    clash = ObjectStoreRegistry({f"file://{tmp_path}/a": LocalStore(tmp_path / "b")}, create_missing=False)
    with pytest.raises(ValueError, match="different object stores at the same prefix"):
        ObjectStoreRegistry.union([first, clash])
