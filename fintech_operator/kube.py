"""The product's one Kubernetes client factory, and the few direct API calls the operator
makes outside kopf's own patches.

Every client of ours (these calls, the reconciliation sources, the sanctions lists, the
notifier's Webhook and Secret reads) comes from :func:`api_client`. kopf logs in on its own, with
the same rule (``kopf.login_via_client``, named in ``runtime.build_registry``).
"""

from __future__ import annotations

import asyncio
import functools
import os
from typing import Any

import kubernetes
from kubernetes.client.exceptions import ApiException

from fintech_operator import api

HTTP_NOT_FOUND = 404
HTTP_CONFLICT = 409
REQUEST_TIMEOUT_SECONDS = 30


@functools.cache
def api_client() -> kubernetes.client.ApiClient:
    """The process's API client: in-cluster credentials when running in a pod, the kubeconfig
    otherwise. Made on first use and shared (urllib3's pool is thread-safe)."""
    configuration = kubernetes.client.Configuration()
    try:
        kubernetes.config.load_incluster_config(client_configuration=configuration)
    except kubernetes.config.ConfigException:
        # KUBECONFIG is the client library's own variable (kubectl's too), not a setting of
        # ours: read here, when the first client is made, because the library reads it only
        # once, when it is first imported (before a test or a tool has set it).
        kubernetes.config.load_kube_config(
            config_file=os.environ.get("KUBECONFIG") or None, client_configuration=configuration
        )
    return kubernetes.client.ApiClient(configuration)


@functools.cache
def _custom_objects() -> Any:
    return kubernetes.client.CustomObjectsApi(api_client())


def _delete(plural: str, namespace: str, name: str, uid: str) -> bool:
    # The uid precondition makes sure we delete the object we decided on, never a
    # newer object that reuses its name.
    body = {"preconditions": {"uid": uid}, "propagationPolicy": "Background"}
    try:
        _custom_objects().delete_namespaced_custom_object(
            api.GROUP, api.VERSION, namespace, plural, name, body=body,
            _request_timeout=REQUEST_TIMEOUT_SECONDS,
        )  # fmt: skip
    except ApiException as exc:
        if exc.status == HTTP_NOT_FOUND:
            return False
        raise
    return True


async def delete(plural: str, namespace: str, name: str, uid: str) -> bool:
    """Delete one of our objects; False when it is already gone."""
    return await asyncio.to_thread(_delete, plural, namespace, name, uid)


def _get(plural: str, namespace: str, name: str) -> dict[str, Any] | None:
    try:
        found = _custom_objects().get_namespaced_custom_object(
            api.GROUP, api.VERSION, namespace, plural, name,
            _request_timeout=REQUEST_TIMEOUT_SECONDS,
        )  # fmt: skip
    except ApiException as exc:
        if exc.status == HTTP_NOT_FOUND:
            return None
        raise
    return dict(found)


async def get(plural: str, namespace: str, name: str) -> dict[str, Any] | None:
    """One of our objects as the API server has it now; None when it does not exist."""
    return await asyncio.to_thread(_get, plural, namespace, name)


def _patch_status(plural: str, namespace: str, name: str, uid: str, status: Any) -> bool:
    # The uid in the patch is a precondition: a newer object reusing the name is left alone.
    body = {"metadata": {"uid": uid}, "status": status}
    try:
        _custom_objects().patch_namespaced_custom_object_status(
            api.GROUP, api.VERSION, namespace, plural, name, body,
            _content_type="application/merge-patch+json",
            _request_timeout=REQUEST_TIMEOUT_SECONDS,
        )  # fmt: skip
    except ApiException as exc:
        if exc.status in (HTTP_NOT_FOUND, HTTP_CONFLICT):
            return False
        raise
    return True


async def patch_status(plural: str, namespace: str, name: str, uid: str, status: Any) -> bool:
    """Merge ``status`` into one of our objects' status; False when it is gone (or replaced)."""
    return await asyncio.to_thread(_patch_status, plural, namespace, name, uid, status)


class KindsNotServed(RuntimeError):
    """The API server did not list every kind of ours in time; the message names them."""


def _missing_plurals(wanted: frozenset[str]) -> set[str]:
    try:
        listed = _custom_objects().get_api_resources(
            api.GROUP, api.VERSION, _request_timeout=REQUEST_TIMEOUT_SECONDS
        )
    except ApiException as exc:
        if exc.status == HTTP_NOT_FOUND:  # the whole group is not served (yet)
            return set(wanted)
        raise
    served = {resource.name for resource in listed.resources or ()}
    return set(wanted - served)


async def wait_until_served(
    wanted: frozenset[str], timeout_seconds: float, poll_seconds: float = 1.0
) -> None:
    """Return once API discovery lists every plural in ``wanted``; else KindsNotServed.

    kopf scans discovery once at start and re-scans only when a CRD changes. An operator
    started while the API server is still (re)initializing its CRD storage (after an etcd
    or API server restart) would miss our kinds and stay healthy but blind for good; so
    the startup waits for them, and fails after ``timeout_seconds`` so that the process
    exits and its supervisor (kubelet, ``make dev``) starts it again.
    """
    deadline = asyncio.get_running_loop().time() + timeout_seconds
    missing: set[str] = set(wanted)
    last_error = ""
    while True:
        try:
            missing = await asyncio.to_thread(_missing_plurals, wanted)
            if not missing:
                return
        except Exception as exc:  # an API server that is down: keep waiting, within the bound
            last_error = f" (last error: {type(exc).__name__}: {str(exc)[:200]})"
        if asyncio.get_running_loop().time() >= deadline:
            raise KindsNotServed(
                f"the API server does not serve {', '.join(sorted(missing))} of {api.GROUP}/"
                f"{api.VERSION} after {timeout_seconds:g} s{last_error}; are the CRDs installed?"
            )
        await asyncio.sleep(poll_seconds)
