"""Bursts of objects against the real API server, for tests/e2e/test_burst.py and
bench/bench_postings_burst.py: concurrent creates, the API server's own request counters, the
operator's resident memory and the raw create+patch ceiling of the API server.
"""

from __future__ import annotations

import concurrent.futures
import functools
import os
import re
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import kubernetes
import urllib3

GROUP, VERSION = "fintech.dev", "v1alpha1"
THREADS = 16
_REQUEST = re.compile(r"^apiserver_request_total\{([^}]*)\} (\d+(?:\.\d+)?(?:e\+\d+)?)$")
_LABEL = re.compile(r'(\w+)="([^"]*)"')


def custom_objects(kubeconfig: str | Path) -> Any:
    """A CustomObjectsApi of its own (not the process-wide default) with room for the threads."""
    configuration = kubernetes.client.Configuration()
    kubernetes.config.load_kube_config(  # type: ignore[no-untyped-call]
        config_file=str(kubeconfig), client_configuration=configuration
    )
    configuration.connection_pool_maxsize = THREADS
    return kubernetes.client.CustomObjectsApi(kubernetes.client.ApiClient(configuration))


def _parallel(calls: Sequence[Callable[[], Any]]) -> float:
    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(THREADS) as pool:
        for future in [pool.submit(call) for call in calls]:
            future.result()
    return time.monotonic() - started


def create_all(api: Any, namespace: str, plural: str, bodies: Sequence[dict[str, Any]]) -> float:
    """Create ``bodies`` at once (THREADS in flight); seconds taken."""
    create = api.create_namespaced_custom_object
    return _parallel(
        [
            functools.partial(create, GROUP, VERSION, namespace, plural, body,
                              _request_timeout=120)
            for body in bodies
        ]
    )  # fmt: skip


def create_paced(
    api: Any, namespace: str, plural: str, bodies: Sequence[dict[str, Any]], per_second: float
) -> dict[str, float]:
    """Create ``bodies`` at ``per_second`` (an offered rate, not a burst: each create is sent at
    its own time whatever the answers take, THREADS in flight at most); the monotonic time each
    create was sent, by name, for an apply-to-decided latency."""
    if not 0 < per_second <= 10_000:
        raise ValueError(f"per_second must be in (0, 10000], got {per_second}")
    create = api.create_namespaced_custom_object
    sent: dict[str, float] = {}
    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(THREADS) as pool:
        futures = []
        for index, body in enumerate(bodies):
            delay = started + index / per_second - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            sent[body["metadata"]["name"]] = time.monotonic()
            futures.append(pool.submit(create, GROUP, VERSION, namespace, plural, body,
                                       _request_timeout=120))  # fmt: skip
        for future in futures:
            future.result()
    return sent


def raw_ceiling(api: Any, namespace: str, bodies: Sequence[dict[str, Any]]) -> float:
    """Objects per second the API server takes when each is created and its status patched
    once, as the operator does, with nobody watching the namespace: the ceiling to compare
    the operator's throughput with."""

    def create_and_patch(body: dict[str, Any]) -> None:
        name = body["metadata"]["name"]
        api.create_namespaced_custom_object(GROUP, VERSION, namespace, "postings", body,
                                            _request_timeout=120)  # fmt: skip
        api.patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, "postings", name,
            {"status": {"phase": "Posted", "journalId": "1"}},
            _content_type="application/merge-patch+json", _request_timeout=120,
        )  # fmt: skip

    seconds = _parallel([functools.partial(create_and_patch, body) for body in bodies])
    return len(bodies) / seconds


def posting(name: str, card: str, amount_minor: int) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Posting", "metadata": {"name": name},
            "spec": {"card": card, "type": "Purchase", "amount": amount_minor,
                     "currency": "USD", "reference": f"ref-{name}"}}  # fmt: skip


def card(name: str, product: str = "standard") -> dict[str, Any]:
    # One user per card: the default risk policy allows a few cards per user.
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Card", "metadata": {"name": name},
            "spec": {"userId": f"u_{name}", "product": product, "state": "Active",
                     "holder": {"name": "Bench", "country": "US",
                                "kycStatus": "Accepted"}}}  # fmt: skip


def product(name: str = "standard") -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "CardProduct",
            "metadata": {"name": name},
            "spec": {"currency": "USD", "rewardsRateBps": 100}}  # fmt: skip


def request_counts(kubectl: Sequence[str], env: dict[str, str]) -> Counter[tuple[str, ...]]:
    """The API server's ``apiserver_request_total`` by (verb, resource, subresource)."""
    text = subprocess.run([*kubectl, "get", "--raw", "/metrics"], env=env, capture_output=True,
                          text=True, check=True, timeout=60).stdout  # fmt: skip
    counts: Counter[tuple[str, ...]] = Counter()
    for line in text.splitlines():
        found = _REQUEST.match(line)
        if found:
            labels = dict(_LABEL.findall(found.group(1)))
            key = (labels.get("verb", ""), labels.get("resource", ""),
                   labels.get("subresource", ""))  # fmt: skip
            counts[key] += int(float(found.group(2)))
    return counts


def status_patches(before: Counter[tuple[str, ...]], after: Counter[tuple[str, ...]],
                   resource: str) -> int:  # fmt: skip
    key = ("PATCH", resource, "status")
    return after[key] - before[key]


def rss_bytes(pid: int) -> int:
    """Resident memory of a process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def phases(api: Any, namespace: str, plural: str) -> Counter[str]:
    """How many objects are in each phase, listed in pages (thousands of full objects in one
    answer are megabytes that a busy API server may cut off)."""
    seen: Counter[str] = Counter()
    token = None
    while True:
        page = api.list_namespaced_custom_object(GROUP, VERSION, namespace, plural, limit=500,
                                                 _continue=token, _request_timeout=120)  # fmt: skip
        seen.update(str((item.get("status") or {}).get("phase")) for item in page["items"])
        token = page["metadata"].get("continue")
        if not token:
            return seen


def wait_phases(api: Any, namespace: str, plural: str, done: set[str], count: int,
                timeout_seconds: float) -> float:  # fmt: skip
    """Seconds until ``count`` objects are in one of the ``done`` phases."""
    started = time.monotonic()
    while True:
        try:
            seen = phases(api, namespace, plural)
        except (urllib3.exceptions.HTTPError, kubernetes.client.ApiException):
            seen = Counter()  # a busy API server cut the answer off: ask again
        if sum(seen[p] for p in done) >= count:
            return time.monotonic() - started
        if time.monotonic() - started > timeout_seconds:
            raise AssertionError(f"{plural} not done after {timeout_seconds}s: {dict(seen)}")
        time.sleep(1)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
