"""The few direct Kubernetes API calls the operator makes outside kopf's own patches."""

from __future__ import annotations

import asyncio
import functools
from typing import Any

import kubernetes
from kubernetes.client.exceptions import ApiException

from fintech_operator import api

HTTP_NOT_FOUND = 404
HTTP_CONFLICT = 409
REQUEST_TIMEOUT_SECONDS = 30


@functools.cache
def _custom_objects() -> Any:
    """In-cluster credentials when running in a pod, the kubeconfig otherwise."""
    try:
        kubernetes.config.load_incluster_config()
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config()
    return kubernetes.client.CustomObjectsApi()


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
