"""The operator's startup waits until the real API server serves its kinds (issue 16).

kopf scans API discovery once at start; the fault campaign (tests/faults, seed 16) found an
operator restarted while the API server re-initialized its CRD storage after an etcd kill
that never watched a Posting again while its health probe said OK. The startup now waits
for discovery to list every kind, and fails, naming the missing ones, when it does not.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from fintech_operator import api, kube
from tests.conftest import RunningPlatform

pytestmark = pytest.mark.integration
ALL_PLURALS = frozenset(kind.plural for kind in api.KINDS)


@pytest.fixture
def kubeconfig(
    platform_running: RunningPlatform, crds_installed: None, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    # kube.api_client reads KUBECONFIG when it makes the process's client (cleared here).
    monkeypatch.setenv("KUBECONFIG", platform_running.env["KUBECONFIG"])
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    kube.api_client.cache_clear()
    kube._custom_objects.cache_clear()
    yield
    kube.api_client.cache_clear()
    kube._custom_objects.cache_clear()


async def test_returns_once_every_kind_is_served(kubeconfig: None) -> None:
    """With the CRDs installed, every kind of api.KINDS is listed and the wait ends at once."""
    started = time.monotonic()
    await kube.wait_until_served(ALL_PLURALS, timeout_seconds=60)
    assert time.monotonic() - started < 30


async def test_fails_naming_a_kind_that_is_not_served(kubeconfig: None) -> None:
    """A kind discovery does not list makes the startup fail after the bound, saying which."""
    started = time.monotonic()
    with pytest.raises(kube.KindsNotServed, match=r"nonexistents of fintech\.dev/v1alpha1"):
        await kube.wait_until_served(ALL_PLURALS | {"nonexistents"}, timeout_seconds=2)
    assert 2 <= time.monotonic() - started < 30
