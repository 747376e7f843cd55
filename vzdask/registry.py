"""Map chunk urls to obstore stores.

Virtual chunk references are full urls (``s3://bucket/key``, ``file:///path``).
Readers need an obstore store plus a store-relative path for each of them; the
:class:`ObjectStoreRegistry` does that mapping, creates stores lazily for the
common schemes, and survives pickling so dask can ship it to worker processes.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Mapping
from datetime import timedelta
from pathlib import PurePath
from typing import Any

import dask.config
import obstore
from obstore.store import (
    AzureStore,
    GCSStore,
    HTTPStore,
    LocalStore,
    MemoryStore,
    S3Store,
    from_url,
)

from vzdask.object_io import get, is_panic

__all__ = ["ObjectStoreRegistry"]

_AZURE_SCHEMES = frozenset({"az", "abfs", "abfss", "adl", "azure"})
_S3_SCHEMES = frozenset({"s3", "s3a"})
_GCS_SCHEMES = frozenset({"gs", "gcs"})
_HTTP_SCHEMES = frozenset({"http", "https"})

#: obstore's client options (``ClientConfig``): given as store options (the CLI's ``--store-option``) they go
#: to ``client_options``, where obstore takes them.
CLIENT_OPTION_NAMES = frozenset({
    "allow_http", "allow_invalid_certificates", "connect_timeout", "default_content_type", "default_headers",
    "http1_only", "http2_keep_alive_interval", "http2_keep_alive_timeout", "http2_keep_alive_while_idle",
    "http2_only", "pool_idle_timeout", "pool_max_idle_per_host", "proxy_url", "proxy_ca_certificate",
    "proxy_excludes", "root_certificate", "randomize_addresses", "read_timeout", "timeout", "user_agent",
})

# Remote stores the registry creates fail within seconds when the network or the host is not there (obstore's
# own default retries for about 3 minutes). Change with dask.config.set({"vzdask.remote.max-retries": 10}) etc.
dask.config.update_defaults({"vzdask": {"remote": {
    "connect-timeout": "2s",  # one connection attempt
    "max-retries": 2,  # retries of a failed request (connection errors, 5xx, timeouts)
    "retry-timeout": "5s",  # no retry starts later than this after the first attempt
}}})


def _client_options_from_env(scheme: str) -> dict[str, Any]:
    """Client options set in the environment (``AWS_ALLOW_HTTP=true``...), which obstore reads itself only
    when no ``client_options`` are given."""
    prefix = "AWS_" if scheme in _S3_SCHEMES else "GOOGLE_" if scheme in _GCS_SCHEMES else (
        "AZURE_" if scheme in _AZURE_SCHEMES else None)
    found: dict[str, Any] = {}
    for key in CLIENT_OPTION_NAMES if prefix else ():
        value = os.environ.get(prefix + key.upper())
        if value is not None:
            found[key] = {"true": True, "false": False}.get(value.lower(), value)
    return found


def remote_defaults() -> tuple[dict[str, Any], dict[str, Any]]:
    """``(client_options, retry_config)`` for the stores the registry creates, from ``vzdask.remote`` config."""
    remote = dask.config.get("vzdask.remote")
    seconds = dask.utils.parse_timedelta(remote["retry-timeout"], default="s")
    client = {"connect_timeout": timedelta(seconds=dask.utils.parse_timedelta(remote["connect-timeout"],
                                                                                default="s"))}
    retry = {"max_retries": int(remote["max-retries"]), "retry_timeout": timedelta(seconds=seconds)}
    return client, retry


# --------------------------------------------------------------------------- #
# url helpers
# --------------------------------------------------------------------------- #
def _split_scheme(url: str) -> tuple[str, str]:
    """Split ``url`` into a lower-cased scheme and the rest after ``://``."""
    if not isinstance(url, str):
        raise TypeError(f"expected a url string, got {type(url).__name__}: {url!r}")
    scheme, sep, rest = url.partition("://")
    if not sep or not scheme:
        raise ValueError(
            f"{url!r} is not a url with a scheme (expected e.g. 's3://bucket/key' "
            "or 'file:///abs/path')"
        )
    return scheme.lower(), rest


def _normalise_url(url: str) -> str:
    """Lower-case the scheme so prefixes and urls compare consistently."""
    scheme, rest = _split_scheme(url)
    return f"{scheme}://{rest}"


def _normalise_prefix(prefix: str) -> str:
    """Strip trailing slashes, but keep scheme roots such as ``file:///``."""
    scheme, rest = _split_scheme(prefix)
    stripped = rest.rstrip("/")
    if not stripped and rest:
        stripped = "/"
    return f"{scheme}://{stripped}"


def _matches(prefix: str, url: str) -> bool:
    """True if ``prefix`` is a prefix of ``url`` on a path-component boundary."""
    if not url.startswith(prefix):
        return False
    n = len(prefix)
    return len(url) == n or prefix.endswith("/") or url[n] == "/"


# --------------------------------------------------------------------------- #
# store identity (for tokens, equality) and MemoryStore snapshots
# --------------------------------------------------------------------------- #
def _memory_items(store: MemoryStore) -> list[tuple[str, bytes]]:
    """Every object in a MemoryStore as sorted ``(path, bytes)`` pairs."""
    items = []
    for batch in obstore.list(store):
        for meta in batch:
            path = meta["path"]
            items.append((path, get(store, path, url=f"memory store object {path!r}")))
    items.sort()
    return items


def _memory_digest(store: MemoryStore) -> str:
    h = hashlib.sha256()
    for path, data in _memory_items(store):
        p = path.encode()
        h.update(len(p).to_bytes(8, "little") + p)
        h.update(len(data).to_bytes(8, "little") + data)
    return h.hexdigest()


def _canonical(value: Any) -> Any:
    """JSON-able, order-independent form of a store setting."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, Mapping):
        return sorted((str(k), _canonical(v)) for k, v in value.items())
    if isinstance(value, list | tuple):
        return [_canonical(v) for v in value]
    if isinstance(value, PurePath):
        return str(value)
    if callable(value):
        # Credential providers: addresses differ per process, names do not.
        t = value if isinstance(value, type) else type(value)
        name = getattr(value, "__qualname__", t.__qualname__)
        return f"<callable {getattr(value, '__module__', t.__module__)}.{name}>"
    return repr(value)


def _store_identity(store: Any) -> list:
    """What makes a store distinct: type plus its configuration.

    Settings obstore reads from the environment (``AWS_*`` etc.) are not part
    of ``.config`` and therefore not part of the identity.
    """
    kind = type(store).__name__
    if isinstance(store, MemoryStore):
        return [kind, _memory_digest(store)]
    ident: list = [kind]
    for attr in ("url", "prefix", "config", "client_options", "retry_config",
                 "credential_provider"):
        if hasattr(type(store), attr):
            ident.append([attr, _canonical(getattr(store, attr))])
    if len(ident) == 1:
        # Not an obstore store: fall back to dask's own hashing of the object.
        from dask.base import tokenize

        ident.append(["token", tokenize(store)])
    return ident


def _check_store(store: Any, prefix: str) -> None:
    """Fail at register time on stores that obstore could not pickle later."""
    if isinstance(store, S3Store | GCSStore | AzureStore):
        try:
            store.config  # noqa: B018
        except BaseException as exc:  # obstore raises a Rust panic here
            if not is_panic(exc):
                raise
            raise ValueError(
                f"cannot register {type(store).__name__} at {prefix!r}: obstore "
                "cannot read back its config (this happens e.g. when allow_http is "
                "passed as a store keyword; pass client_options={'allow_http': True} "
                "instead)"
            ) from None


class _MemorySnapshot:
    """Picklable stand-in for a MemoryStore: its objects as bytes."""

    __slots__ = ("items", "key")

    def __init__(self, items: list[tuple[str, bytes]], key: int):
        self.items = items
        self.key = key  # shared stores stay shared after unpickling

    def restore(self) -> MemoryStore:
        store = MemoryStore()
        for path, data in self.items:
            obstore.put(store, path, data)
        return store


# --------------------------------------------------------------------------- #
# registry
# --------------------------------------------------------------------------- #
class ObjectStoreRegistry:
    """Resolve urls to ``(store, path)`` by longest registered prefix.

    Parameters
    ----------
    stores : dict of str to obstore store, optional
        Initial ``{url_prefix: store}`` entries, e.g.
        ``{"s3://bucket": S3Store("bucket"), "memory://mine": MemoryStore()}``.
    create_missing : bool, default True
        Create and cache a store for unregistered ``file``, ``s3``, ``gs``,
        ``az``/``abfs`` and ``http(s)`` urls, configured from the environment.
    store_options : dict, optional
        Keywords for the remote stores it creates, e.g. ``{"skip_signature":
        True}`` for public S3 buckets (no credentials), ``{"region":
        "us-west-2"}`` or ``{"endpoint": "http://127.0.0.1:9000"}``. obstore's
        client options in it (``allow_http``, ``timeout``...: see
        ``CLIENT_OPTION_NAMES``) go to ``client_options``.
    client_options, retry_config : dict, optional
        obstore's ``ClientConfig`` and ``RetryConfig`` for the stores it
        creates. By default they fail fast: a 2 s connect timeout, 2 retries,
        none later than 5 s (``vzdask.remote`` in dask's config).
        ``http://`` urls get ``allow_http`` (asking for one is asking for it).

    Notes
    -----
    The registry is safe to use from many threads, pickles (MemoryStores are
    shipped as a snapshot of their contents) and has a deterministic dask
    token. Stores created lazily are cached but are not part of the token or
    of equality: they are a function of the url and the environment, so two
    registries that differ only in what they have resolved behave the same.
    """

    def __init__(
        self,
        stores: Mapping[str, Any] | None = None,
        *,
        create_missing: bool = True,
        store_options: Mapping[str, Any] | None = None,
        client_options: Mapping[str, Any] | None = None,
        retry_config: Mapping[str, Any] | None = None,
    ) -> None:
        self.create_missing = bool(create_missing)
        options = dict(store_options or {})
        self.client_options = {
            **{k: options.pop(k) for k in list(options) if k in CLIENT_OPTION_NAMES}, **dict(client_options or {})
        }
        self.store_options = options
        self.retry_config = dict(retry_config) if retry_config is not None else None
        self._lock = threading.RLock()
        # prefix -> (store, created_lazily). Replaced, never mutated, so
        # readers need no lock.
        self._stores: dict[str, tuple[Any, bool]] = {}
        self._ordered: tuple[tuple[str, Any], ...] = ()
        for prefix, store in (stores or {}).items():
            self.register(prefix, store)

    @classmethod
    def default(cls) -> ObjectStoreRegistry:
        """A fresh, empty registry that creates stores from the environment."""
        return cls(create_missing=True)

    @classmethod
    def union(cls, registries) -> ObjectStoreRegistry:
        """One registry that resolves every url each of ``registries`` resolves (arrays being combined).

        The first one when they are all equal (the usual case: one registry,
        or copies of it shipped to workers); otherwise a new registry with
        every explicitly registered store. Two different stores at one prefix
        raise ``ValueError``: which one a url meant cannot be told.
        """
        distinct: list[ObjectStoreRegistry] = []
        for registry in registries:
            if not any(registry is d or registry == d for d in distinct):
                distinct.append(registry)
        if len(distinct) == 1:
            return distinct[0]
        first = distinct[0]  # options for the stores made from the environment: the first registry's
        merged = cls(create_missing=any(r.create_missing for r in distinct), store_options=first.store_options,
                     client_options=first.client_options, retry_config=first.retry_config)
        for registry in distinct:
            for prefix, (store, lazy) in registry._stores.items():
                if lazy:
                    continue  # made from the url and the environment: made again when needed
                known = merged._stores.get(prefix)
                if known is not None and _store_identity(known[0]) != _store_identity(store):
                    raise ValueError(
                        f"arrays read through different object stores at the same prefix {prefix!r} "
                        "cannot be combined; register one store for it in one registry"
                    )
                merged._set(prefix, store, lazy=False)
        return merged

    # -- registration ------------------------------------------------------ #
    def register(self, prefix: str, store: Any) -> None:
        """Use ``store`` for every url under ``prefix`` (replacing any entry).

        Paths handed to ``store`` are relative to ``prefix``, so a store with
        its own prefix (``S3Store("b", prefix="data")``) should be registered
        at the matching url (``"s3://b/data"``).
        """
        prefix = _normalise_prefix(prefix)
        _check_store(store, prefix)
        with self._lock:
            self._set(prefix, store, lazy=False)

    def _set(self, prefix: str, store: Any, *, lazy: bool) -> None:
        stores = dict(self._stores)
        stores[prefix] = (store, lazy)
        ordered = tuple(
            (p, s) for p, (s, _) in sorted(stores.items(), key=lambda kv: -len(kv[0]))
        )
        self._stores, self._ordered = stores, ordered

    # -- lookup ------------------------------------------------------------ #
    def _match(self, url: str) -> tuple[str, Any] | None:
        for prefix, store in self._ordered:  # longest prefix first
            if _matches(prefix, url):
                return prefix, store
        return None

    def resolve(self, url: str) -> tuple[Any, str]:
        """Return ``(store, path)`` for ``url``.

        ``path`` is the part of ``url`` after the matched prefix, without a
        leading ``/``, ready for ``obstore.get_range(store, path, ...)``.
        Percent-escapes are not decoded: obstore takes paths literally.

        Raises
        ------
        ValueError
            If nothing matches and no store can (or may) be created.
        """
        url = _normalise_url(url)
        hit = self._match(url)
        if hit is None:
            hit = self._create(url)
        prefix, store = hit
        return store, url[len(prefix):].lstrip("/")

    def __contains__(self, url: object) -> bool:
        """True if a store is already registered (or created) for ``url``."""
        try:
            return self._match(_normalise_url(url)) is not None  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return False

    @property
    def prefixes(self) -> tuple[str, ...]:
        """Registered (and lazily created) prefixes, sorted."""
        return tuple(sorted(self._stores))

    # -- lazy creation ----------------------------------------------------- #
    def _create(self, url: str) -> tuple[str, Any]:
        if not self.create_missing:
            raise self._missing(url, "create_missing=False")
        with self._lock:
            hit = self._match(url)  # another thread may have won the race
            if hit is not None:
                return hit
            prefix, store = self._build(url)
            self._set(prefix, store, lazy=True)
            return prefix, store

    def _build(self, url: str) -> tuple[str, Any]:
        scheme, rest = _split_scheme(url)
        if scheme == "file":
            return "file:///", LocalStore()
        authority = rest.split("/", 1)[0]
        if scheme in _S3_SCHEMES | _GCS_SCHEMES | _AZURE_SCHEMES | _HTTP_SCHEMES:
            if not authority:
                raise self._missing(url, f"no bucket/host in the {scheme}:// url")
            prefix = f"{scheme}://{authority}"
            client, retry = remote_defaults()
            client.update(_client_options_from_env(scheme))  # obstore drops its env's once we give any
            client.update(self.client_options)
            if scheme == "http":
                client.setdefault("allow_http", True)
            options: dict[str, Any] = {
                "client_options": client, "retry_config": self.retry_config or retry, **self.store_options,
            }
            try:
                if scheme in _S3_SCHEMES:
                    store = S3Store(authority, **options)
                elif scheme in _GCS_SCHEMES:
                    store = GCSStore(authority, **options)
                elif scheme in _AZURE_SCHEMES:
                    store = from_url(prefix, **options)
                else:
                    store = HTTPStore.from_url(prefix, **options)
            except Exception as exc:
                first_line = (str(exc).strip().splitlines() or [""])[0]
                raise self._missing(
                    url, f"obstore could not build a store for {prefix!r}: {first_line}"
                ) from exc
            return prefix, store
        if scheme == "memory":
            reason = "memory:// stores hold data only in this process"
        else:
            reason = f"unknown scheme {scheme!r}"
        raise self._missing(url, reason)

    @staticmethod
    def _missing(url: str, reason: str) -> ValueError:
        scheme, rest = _split_scheme(url)
        example = f"{scheme}://{rest.split('/', 1)[0]}"
        hint = (
            f'registry.register("{example}", MemoryStore())'
            if scheme == "memory"
            else f'registry.register("{example}", <obstore store>)'
        )
        return ValueError(
            f"no object store registered for {url!r} ({reason}); register one "
            f"first, e.g. {hint}"
        )

    # -- identity: token, equality ----------------------------------------- #
    def _identity(self) -> list:
        explicit = sorted(
            ((p, s) for p, (s, lazy) in self._stores.items() if not lazy),
            key=lambda ps: ps[0],
        )
        return [
            "ObjectStoreRegistry",
            self.create_missing,
            [[p, _store_identity(s)] for p, s in explicit],
            _canonical([self.store_options, self.client_options, self.retry_config]),
        ]

    def __dask_tokenize__(self) -> str:
        blob = json.dumps(self._identity(), separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ObjectStoreRegistry):
            return NotImplemented
        return self is other or self._identity() == other._identity()

    __hash__ = None  # mutable (register), so not hashable

    def __repr__(self) -> str:
        parts = [
            f"{p!r}: {type(s).__name__}{' (auto)' if lazy else ''}"
            for p, (s, lazy) in sorted(self._stores.items())
        ]
        return (
            f"ObjectStoreRegistry({{{', '.join(parts)}}}, "
            f"create_missing={self.create_missing})"
        )

    # -- pickling ---------------------------------------------------------- #
    def __getstate__(self) -> dict:
        snapshots: dict[int, _MemorySnapshot] = {}
        entries = []
        for prefix, (store, lazy) in self._stores.items():
            if isinstance(store, MemoryStore):
                key = id(store)
                if key not in snapshots:
                    snapshots[key] = _MemorySnapshot(_memory_items(store), key)
                store = snapshots[key]
            entries.append((prefix, store, lazy))
        options = (self.store_options, self.client_options, self.retry_config)
        return {"create_missing": self.create_missing, "entries": entries, "options": options}

    def __setstate__(self, state: dict) -> None:
        self.create_missing = state["create_missing"]
        self.store_options, self.client_options, self.retry_config = state["options"]
        self._lock = threading.RLock()
        self._stores, self._ordered = {}, ()
        restored: dict[int, MemoryStore] = {}
        for prefix, store, lazy in state["entries"]:
            if isinstance(store, _MemorySnapshot):
                if store.key not in restored:
                    restored[store.key] = store.restore()
                store = restored[store.key]
            self._set(prefix, store, lazy=lazy)
