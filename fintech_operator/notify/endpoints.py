"""Webhook resources and their Secrets, as the notifier's endpoint configurations.

:func:`from_resource` turns a Webhook object (and its Secret's value) into an
:class:`Endpoint` without I/O; :class:`KubeSource` reads them from the API server with
the ``kubernetes`` client (sync, so in a worker thread, each call with a timeout).
A Webhook whose Secret is missing or unusable still gets events queued: its
``problem`` says why they wait, and fixing the Secret delivers them.

Each list is stamped with the wall-clock time it started (:class:`View`): a list is a
consistent read, so it holds every Webhook stored before that time, which is what lets the
router know whether its view can route an event yet (:mod:`coverage`).
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import fnmatch
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import kubernetes
import pydantic
from kubernetes.client.exceptions import ApiException

from fintech_operator import api, kube
from fintech_operator.notify import policy, signing

REQUEST_TIMEOUT_SECONDS: Final = 15
SECRET_VALUE_MAX_BYTES: Final = 4096


@dataclass(frozen=True)
class Endpoint:
    """Everything the notifier needs to deliver to one Webhook."""

    uid: uuid.UUID
    namespace: str
    name: str
    generation: int
    created_at: datetime.datetime
    url: str
    event_types: tuple[str, ...]
    timeout_seconds: float
    retry: policy.RetryPolicy
    rate_per_second: float
    burst: int
    failure_threshold: int
    open_seconds: float
    suspend: bool
    secret_ref: tuple[str, str]
    key: bytes | None = None
    problem: str | None = None

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"

    def wants(self, namespace: str, event_type: str, event_time: datetime.datetime) -> bool:
        """An event of this namespace, of a subscribed type, that happened after creation."""
        return (
            namespace == self.namespace
            and event_time >= self.created_at
            and policy.matches(self.event_types, event_type)
        )


# What routing depends on, per Webhook: its uid (namespace and creationTimestamp are fixed for
# it) and its generation (the spec: event types). Equal sets mean an equal routing view.
Version = tuple[str, int]


@dataclass(frozen=True)
class View:
    """Webhooks of one list, and the wall-clock time (epoch seconds) that list started."""

    endpoints: list[Endpoint]
    problems: list[str]
    versions: frozenset[Version]
    listed_at: float


class InvalidWebhook(ValueError):
    """The Webhook object cannot be served (its spec or metadata is invalid)."""


def from_resource(obj: Mapping[str, Any], secret_value: bytes | None) -> Endpoint:
    """An endpoint from a Webhook object and the raw value of its Secret key (or None)."""
    metadata = obj.get("metadata") or {}
    try:
        spec = api.WebhookSpec.model_validate(obj.get("spec") or {})
        uid = uuid.UUID(str(metadata["uid"]))
        created = datetime.datetime.fromisoformat(
            str(metadata["creationTimestamp"]).replace("Z", "+00:00")
        )
    except (pydantic.ValidationError, KeyError, ValueError) as exc:
        raise InvalidWebhook(f"{metadata.get('namespace')}/{metadata.get('name')}: {exc}") from exc
    retry = spec.retry or api.webhook.RetryPolicy()
    rate = spec.rate_limit or api.webhook.RateLimit()
    breaker = spec.circuit_breaker or api.webhook.CircuitBreaker()
    key, problem = _key(spec.secret_ref, secret_value)
    return Endpoint(
        uid=uid,
        namespace=str(metadata["namespace"]),
        name=str(metadata["name"]),
        generation=int(metadata.get("generation") or 0),
        created_at=created,
        url=spec.url,
        event_types=spec.event_types,
        timeout_seconds=float(spec.timeout_seconds),
        retry=policy.RetryPolicy(
            retry.max_attempts,
            float(retry.initial_delay_seconds),
            float(retry.max_delay_seconds),
            float(retry.max_age_seconds),
        ),
        rate_per_second=float(rate.requests_per_second),
        burst=rate.burst,
        failure_threshold=breaker.failure_threshold,
        open_seconds=float(breaker.open_seconds),
        suspend=spec.suspend,
        secret_ref=(spec.secret_ref.name, spec.secret_ref.key),
        key=key,
        problem=problem,
    )


def _key(ref: api.webhook.SecretKeyRef, value: bytes | None) -> tuple[bytes | None, str | None]:
    if value is None:
        return None, f"SecretNotFound: Secret {ref.name!r} or its key {ref.key!r} does not exist"
    if len(value) > SECRET_VALUE_MAX_BYTES:
        return None, f"SecretInvalid: key {ref.key!r} of Secret {ref.name!r} is too large"
    try:
        return signing.parse_secret(value.decode()), None
    except (UnicodeDecodeError, signing.SigningError) as exc:
        return None, f"SecretInvalid: key {ref.key!r} of Secret {ref.name!r}: {exc}"


def secret_value(secret_data: Mapping[str, Any] | None, key: str) -> bytes | None:
    """The decoded value of ``key`` in a Secret's ``data`` (base64), or None."""
    if not secret_data or key not in secret_data:
        return None
    try:
        return base64.b64decode(str(secret_data[key]), validate=True)
    except ValueError:
        return None


def versions_of(objects: Sequence[Mapping[str, Any]]) -> frozenset[Version]:
    """The (uid, generation) of each Webhook object, invalid ones included."""
    found: set[Version] = set()
    for obj in objects:
        metadata = obj.get("metadata") or {}
        found.add((str(metadata.get("uid")), int(metadata.get("generation") or 0)))
    return frozenset(found)


def namespace_selected(namespace: str, patterns: Sequence[str]) -> bool:
    """Shell-style namespace patterns (``team-*``); none means every namespace."""
    return not patterns or any(fnmatch.fnmatchcase(namespace, p) for p in patterns)


class KubeSource:
    """Webhooks and Secrets from the API server (:func:`fintech_operator.kube.api_client`)."""

    def __init__(self, namespaces: Sequence[str]) -> None:
        client = kube.api_client()
        self._custom: Any = kubernetes.client.CustomObjectsApi(client)
        self._core: Any = kubernetes.client.CoreV1Api(client)
        self._namespaces = tuple(namespaces)

    async def load(self) -> View:
        """Every selected Webhook as an Endpoint, and the problems of those that are invalid."""
        return await asyncio.to_thread(self._load)

    async def versions(self) -> tuple[frozenset[Version], float]:
        """The selected Webhooks' versions and when the list started: one request per
        namespace, no Secret read, so the router can afford it every few seconds."""
        return await asyncio.to_thread(self._versions)

    def _list(self) -> list[dict[str, Any]]:
        """Webhooks of the exact namespaces given (a namespaced Role is enough), or of every
        namespace when none or patterns are given (then filtered; needs a ClusterRole)."""
        if self._namespaces and not any(set(ns) & set("*?[") for ns in self._namespaces):
            items: list[dict[str, Any]] = []
            for namespace in self._namespaces:
                listed: dict[str, Any] = self._custom.list_namespaced_custom_object(
                    api.GROUP,
                    api.VERSION,
                    namespace,
                    "webhooks",
                    _request_timeout=REQUEST_TIMEOUT_SECONDS,
                )
                items += listed.get("items") or []
            return items
        everything: dict[str, Any] = self._custom.list_cluster_custom_object(
            api.GROUP, api.VERSION, "webhooks", _request_timeout=REQUEST_TIMEOUT_SECONDS
        )
        return list(everything.get("items") or [])

    def _selected(self) -> tuple[list[dict[str, Any]], float]:
        listed_at = time.time()  # before the request: the list holds everything stored by then
        items = [
            obj
            for obj in self._list()
            if namespace_selected(
                str((obj.get("metadata") or {}).get("namespace")), self._namespaces
            )
        ]
        return items, listed_at

    def _versions(self) -> tuple[frozenset[Version], float]:
        items, listed_at = self._selected()
        return versions_of(items), listed_at

    def _load(self) -> View:
        endpoints: list[Endpoint] = []
        problems: list[str] = []
        items, listed_at = self._selected()
        for obj in items:
            metadata = obj.get("metadata") or {}
            try:
                ref = api.WebhookSpec.model_validate(obj.get("spec") or {}).secret_ref
                value = self._secret(str(metadata.get("namespace")), ref.name, ref.key)
                endpoints.append(from_resource(obj, value))
            except (InvalidWebhook, pydantic.ValidationError) as exc:
                problems.append(str(exc))
        return View(endpoints, problems, versions_of(items), listed_at)

    def _secret(self, namespace: str, name: str, key: str) -> bytes | None:
        try:
            secret = self._core.read_namespaced_secret(
                name, namespace, _request_timeout=REQUEST_TIMEOUT_SECONDS
            )
        except ApiException as exc:
            if exc.status in (403, 404):
                return None
            raise
        return secret_value(secret.data, key)
