"""Sanctions lists from ConfigMaps: fetched from the API server, compiled once per version.

A compiled :class:`sanctions.Screener` is cached per (namespace, ConfigMap, key) and reused while
the ConfigMap's ``resourceVersion`` is unchanged; the ConfigMap is re-read at most every
``age_seconds_max``, so an updated list takes effect within that time without a watch on every
ConfigMap of the cluster. Parsing and compiling a large list is CPU work, done in a thread so
the operator's event loop keeps serving other objects.

The operator needs ``get`` on ``configmaps`` in the namespaces it watches (Helm RBAC).
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from fintech_operator.compliance import sanctions

AGE_SECONDS_MAX_DEFAULT: Final = 30.0
CACHED_LISTS_MAX: Final = 32
REQUEST_TIMEOUT_SECONDS: Final = 10.0


class ListUnavailable(Exception):
    """The list cannot be read or used now; ``reason`` is CamelCase for a status."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class ConfigMapData:
    """The parts of a ConfigMap a list needs."""

    resource_version: str
    data: Mapping[str, str]
    binary_data: Mapping[str, str]


@dataclass
class Loaded:
    """A compiled list and where it came from."""

    screener: sanctions.Screener
    namespace: str
    config_map: str
    key: str
    resource_version: str
    checked_at: float  # time.monotonic() of the last read of the ConfigMap.

    @property
    def ref(self) -> str:
        return f"configmap {self.namespace}/{self.config_map}[{self.key}]"


Fetch = Callable[[str, str], Awaitable[ConfigMapData]]


class ListCache:
    """Compiled lists by (namespace, ConfigMap, key), least recently used evicted first."""

    def __init__(
        self,
        fetch: Fetch,
        *,
        age_seconds_max: float = AGE_SECONDS_MAX_DEFAULT,
        size_max: int = CACHED_LISTS_MAX,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0 <= age_seconds_max <= 3600:
            raise ValueError("age_seconds_max must be in 0..3600")
        if not 1 <= size_max <= 1024:
            raise ValueError("size_max must be in 1..1024")
        self._fetch = fetch
        self._age_seconds_max = age_seconds_max
        self._size_max = size_max
        self._clock = clock
        self._items: collections.OrderedDict[tuple[str, str, str], Loaded] = (
            collections.OrderedDict()
        )
        self._locks: dict[tuple[str, str, str], asyncio.Lock] = {}

    async def get(self, namespace: str, config_map: str, key: str) -> Loaded:
        """The compiled list; raises :class:`ListUnavailable` with a reason when it cannot be."""
        ident = (namespace, config_map, key)
        lock = self._locks.setdefault(ident, asyncio.Lock())
        async with lock:
            cached = self._items.get(ident)
            now = self._clock()
            if cached is not None and now - cached.checked_at < self._age_seconds_max:
                self._items.move_to_end(ident)
                return cached
            found = await self._fetch(namespace, config_map)
            if cached is not None and cached.resource_version == found.resource_version:
                cached.checked_at = now
                self._items.move_to_end(ident)
                return cached
            screener = await asyncio.to_thread(_compile, found, key)
            loaded = Loaded(screener, namespace, config_map, key, found.resource_version, now)
            self._items[ident] = loaded
            self._items.move_to_end(ident)
            while len(self._items) > self._size_max:
                evicted, _ = self._items.popitem(last=False)
                self._locks.pop(evicted, None)
            return loaded


def _compile(found: ConfigMapData, key: str) -> sanctions.Screener:
    try:
        text = sanctions.decode_configmap_value(found.data, found.binary_data, key)
        return sanctions.Screener.build(sanctions.parse_sdn_csv(text))
    except sanctions.ListError as exc:
        raise ListUnavailable("SanctionsListInvalid", str(exc)) from exc


# --- The API server ---------------------------------------------------------------------------

_API: Any = None


def _core_api() -> Any:
    """A CoreV1Api on the process's one client (:func:`fintech_operator.kube.api_client`)."""
    global _API  # noqa: PLW0603 - one client per process, created on first use
    if _API is None:
        from kubernetes import client  # noqa: PLC0415 - only the operator needs it

        from fintech_operator import kube  # noqa: PLC0415 - as the client library

        _API = client.CoreV1Api(kube.api_client())
    return _API


def _read(namespace: str, name: str) -> ConfigMapData:
    import urllib3  # noqa: PLC0415 - the kubernetes client's transport
    from kubernetes.client.exceptions import ApiException  # noqa: PLC0415

    try:
        found = _core_api().read_namespaced_config_map(
            name, namespace, _request_timeout=REQUEST_TIMEOUT_SECONDS
        )
    except ApiException as exc:
        if exc.status == 404:
            raise ListUnavailable(
                "SanctionsListNotFound", f"configmap {namespace}/{name} does not exist"
            ) from exc
        raise ListUnavailable(
            "SanctionsListUnreadable", f"configmap {namespace}/{name}: HTTP {exc.status}"
        ) from exc
    except (OSError, urllib3.exceptions.HTTPError) as exc:
        raise ListUnavailable(
            "SanctionsListUnreadable", f"configmap {namespace}/{name}: {exc}"
        ) from exc
    return ConfigMapData(
        resource_version=str(found.metadata.resource_version),
        data=dict(found.data or {}),
        binary_data=dict(found.binary_data or {}),
    )


async def fetch_configmap(namespace: str, name: str) -> ConfigMapData:
    """Read a ConfigMap without blocking the event loop (the client is synchronous)."""
    return await asyncio.to_thread(_read, namespace, name)
