"""`helm install` of the chart on a real node: Pods of the locally built images, Ready through
their real probes; a card and a posting handled by the operator running in a Pod; `helm test`;
the PostgreSQL Pod replaced with its data kept; `helm upgrade`; `helm uninstall`.

The tests run in file order and share one release (each step builds on the previous one).
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from tests.cluster.conftest import CHART, REPO_ROOT, Cluster, fake_processor_manifest, wait_for

NAMESPACE = "fintech-cluster"
RELEASE = "fin"
INSTALL_TIMEOUT = "15m"
PHASE_TIMEOUT_SECONDS = 180
COMPONENTS = ("operator", "rewards", "notifier", "gateway", "postgresql", "kafka")
# What each image runs as (the official images' users, the product's own).
RUN_AS_UID = {
    "operator": 10001,
    "rewards": 10001,
    "notifier": 10001,
    "gateway": 10001,
    "postgresql": 999,
    "kafka": 1000,
}


def _component_pods(cluster: Cluster, component: str) -> list[dict[str, Any]]:
    selector = f"app.kubernetes.io/component={component},app.kubernetes.io/instance={RELEASE}"
    pods = cluster.get("pods", "-n", NAMESPACE, "-l", selector)["items"]
    return [p for p in pods if not p["metadata"].get("deletionTimestamp")]


def _component_pod(cluster: Cluster, component: str) -> dict[str, Any]:
    running = _component_pods(cluster, component)
    assert len(running) == 1, f"{component}: {[p['metadata']['name'] for p in running]}"
    return running[0]


def _ready(pod: dict[str, Any]) -> bool:
    conditions = pod.get("status", {}).get("conditions", [])
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def _install_args(cluster: Cluster) -> list[str]:
    def image(prefix: str, reference: str) -> list[str]:
        repository, tag = reference.rsplit(":", 1)
        return [
            "--set",
            f"{prefix}.repository={repository},{prefix}.tag={tag},{prefix}.pullPolicy=Never",
        ]

    processor = f"https://fake-processor.{NAMESPACE}.svc:8443/v1/tokens"
    return [
        *image("image", cluster.images["product"]),
        *image("postgresql.image", cluster.images["postgres"]),
        *image("kafka.image", cluster.images["kafka"]),
        "--set",
        f"tokenizer.url={processor},tokenizer.credentialSecret.name=processor-token",
        # The fake processor's certificate is signed by the cluster CA, which every Pod
        # with a service-account token already has.
        "--set",
        "extraEnv[0].name=SSL_CERT_FILE",
        "--set",
        "extraEnv[0].value=/var/run/secrets/kubernetes.io/serviceaccount/ca.crt",
    ]


def _phase(cluster: Cluster, kind: str, name: str, phases: set[str]) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        status: dict[str, Any] = cluster.get(kind, name, "-n", NAMESPACE).get("status", {})
        return status if status.get("phase") in phases else None

    result: dict[str, Any] = wait_for(f"{kind}/{name} in {phases}", probe, PHASE_TIMEOUT_SECONDS)
    return result


def _psql(cluster: Cluster, sql: str) -> str:
    pod = _component_pod(cluster, "postgresql")["metadata"]["name"]
    out = cluster.kubectl(
        "exec", "-n", NAMESPACE, pod, "--", "psql", "-U", "fintech", "-d", "fintech", "-tAc", sql
    )
    return out.strip()


def _posting(name: str, reference: str) -> str:
    return json.dumps(
        {
            "apiVersion": "fintech.dev/v1alpha1",
            "kind": "Posting",
            "metadata": {"name": name},
            "spec": {
                "card": "u-demo-card",
                "type": "Purchase",
                "amount": 2500,
                "currency": "USD",
                "merchant": {"name": "Cluster Test", "mcc": "5814", "country": "US"},
                "reference": reference,
                "occurredAt": "2025-01-15T09:30:00Z",
            },
        }
    )


def test_helm_install_every_pod_ready(cluster: Cluster) -> None:
    cluster.kubectl("create", "namespace", NAMESPACE)
    processor = fake_processor_manifest(cluster, NAMESPACE)
    cluster.kubectl("apply", "-n", NAMESPACE, "-f", "-", stdin=processor)
    cluster.kubectl(
        "-n", NAMESPACE, "rollout", "status", "deployment/fake-processor", "--timeout=300s"
    )
    cluster.helm(
        "install",
        RELEASE,
        str(CHART),
        "-n",
        NAMESPACE,
        *_install_args(cluster),
        "--wait",
        f"--timeout={INSTALL_TIMEOUT}",
    )
    for component in COMPONENTS:
        pods = _component_pods(cluster, component)
        assert pods, f"no {component} Pod"
        for pod in pods:
            assert _ready(pod), f"{component} not Ready: {pod['status']}"
            assert pod["spec"]["containers"][0]["image"].startswith("fintech.local/")


def test_pods_run_as_their_non_root_users_with_a_read_only_root(cluster: Cluster) -> None:
    for component, uid in RUN_AS_UID.items():
        for pod in _component_pods(cluster, component):
            name = pod["metadata"]["name"]
            got = cluster.kubectl("exec", "-n", NAMESPACE, name, "--", "id", "-u").strip()
            assert got == str(uid), f"{name} runs as {got}"
    operator = _component_pod(cluster, "operator")["metadata"]["name"]
    refused = cluster.exec_failure(NAMESPACE, operator, "touch", "/opt/fintech/x")
    assert "Read-only file system" in refused, refused


def test_card_active_and_posting_posted_by_the_operator_in_a_pod(cluster: Cluster) -> None:
    # The chart's defaults already made the `standard` CardProduct in the release namespace.
    _phase(cluster, "cardproduct", "standard", {"Ready"})
    for example in ("10-card-u_demo.yaml", "20-posting-purchase.yaml"):
        cluster.kubectl("apply", "-n", NAMESPACE, "-f", str(REPO_ROOT / "examples" / example))
    card = _phase(cluster, "card", "u-demo-card", {"Active", "Rejected"})
    assert card["phase"] == "Active", card
    # Token and last 4 from the fake processor in its Pod, over HTTPS through a Service.
    assert card.get("last4", "").startswith("42"), card
    posting = _phase(cluster, "posting", "purchase-0001", {"Posted", "Rejected"})
    assert posting["phase"] == "Posted", posting
    journal = int(posting["journalId"])
    sql = f"SELECT points FROM rewards_ledger WHERE journal_id = {journal}"
    points = wait_for("the rewards row (consumer in its Pod)", lambda: _psql(cluster, sql), 120)
    assert points == "125"


def test_helm_test_passes(cluster: Cluster) -> None:
    out = cluster.helm("test", RELEASE, "-n", NAMESPACE, "--timeout=5m")
    assert re.search(r"^Phase:\s+Succeeded$", out, re.MULTILINE), out


def test_postgresql_pod_replaced_keeps_its_data(cluster: Cluster) -> None:
    before = _psql(cluster, "SELECT count(*) FROM journals")
    assert int(before) >= 1
    old = _component_pod(cluster, "postgresql")
    cluster.kubectl("delete", "pod", "-n", NAMESPACE, old["metadata"]["name"], "--wait=true")

    def replaced_and_ready() -> bool:
        pod = _component_pod(cluster, "postgresql")
        return pod["metadata"]["uid"] != old["metadata"]["uid"] and _ready(pod)

    wait_for("a new Ready PostgreSQL Pod", replaced_and_ready, 300)
    assert _psql(cluster, "SELECT count(*) FROM journals") == before
    cluster.kubectl("apply", "-n", NAMESPACE, "-f", "-", stdin=_posting("after-pg", "auth-pg"))
    posting = _phase(cluster, "posting", "after-pg", {"Posted", "Rejected"})
    assert posting["phase"] == "Posted", posting


def _replace_pod(cluster: Cluster, component: str, meanwhile: str | None = None) -> None:
    """Delete ``component``'s Pod (applying ``meanwhile`` as soon as the delete is sent) and
    wait for its controller's replacement to be Ready."""
    old = _component_pod(cluster, component)["metadata"]
    cluster.kubectl("delete", "pod", "-n", NAMESPACE, old["name"], "--wait=false")
    if meanwhile is not None:
        cluster.kubectl("apply", "-n", NAMESPACE, "-f", "-", stdin=meanwhile)

    def replaced_and_ready() -> bool:
        pod = _component_pod(cluster, component)
        return pod["metadata"]["uid"] != old["uid"] and _ready(pod)

    wait_for(f"a new Ready {component} Pod", replaced_and_ready, 300)


def test_operator_pod_replaced_and_a_posting_applied_meanwhile_posts_once(
    cluster: Cluster,
) -> None:
    _replace_pod(cluster, "operator", meanwhile=_posting("during-op", "auth-op"))
    posting = _phase(cluster, "posting", "during-op", {"Posted", "Rejected"})
    assert posting["phase"] == "Posted", posting
    assert _psql(cluster, "SELECT count(*) FROM journals WHERE reference = 'auth-op'") == "1"


def test_kafka_pod_replaced_and_rewards_still_flow(cluster: Cluster) -> None:
    _replace_pod(cluster, "kafka")
    cluster.kubectl("apply", "-n", NAMESPACE, "-f", "-", stdin=_posting("after-kafka", "auth-k"))
    posting = _phase(cluster, "posting", "after-kafka", {"Posted", "Rejected"})
    assert posting["phase"] == "Posted", posting
    sql = f"SELECT points FROM rewards_ledger WHERE journal_id = {int(posting['journalId'])}"
    points = wait_for(
        "the rewards row after Kafka's Pod was replaced", lambda: _psql(cluster, sql), 300
    )
    assert points == "25"


def test_helm_upgrade_rolls_out_and_postings_still_post(cluster: Cluster) -> None:
    old = _component_pod(cluster, "operator")["metadata"]["uid"]
    cluster.helm(
        "upgrade",
        RELEASE,
        str(CHART),
        "-n",
        NAMESPACE,
        *_install_args(cluster),
        "--set",
        "operator.podAnnotations.cluster-test/upgraded=yes",
        "--wait",
        f"--timeout={INSTALL_TIMEOUT}",
    )
    pod = _component_pod(cluster, "operator")
    assert pod["metadata"]["uid"] != old
    assert pod["metadata"]["annotations"]["cluster-test/upgraded"] == "yes"
    cluster.kubectl("apply", "-n", NAMESPACE, "-f", "-", stdin=_posting("after-up", "auth-up"))
    posting = _phase(cluster, "posting", "after-up", {"Posted", "Rejected"})
    assert posting["phase"] == "Posted", posting


def test_helm_uninstall_leaves_crds_and_data_volumes(cluster: Cluster) -> None:
    cluster.helm("uninstall", RELEASE, "-n", NAMESPACE, "--wait", "--timeout=5m")
    selector = f"app.kubernetes.io/instance={RELEASE}"

    def release_pods_gone() -> bool:
        return not cluster.get("pods", "-n", NAMESPACE, "-l", selector)["items"]

    wait_for("the release's Pods gone", release_pods_gone, 300)
    assert cluster.get("crd", "cards.fintech.dev")["metadata"]["name"] == "cards.fintech.dev"
    claims = [c["metadata"]["name"] for c in cluster.get("pvc", "-n", NAMESPACE)["items"]]
    assert any("postgresql" in name for name in claims), claims
    assert cluster.get("postings", "-n", NAMESPACE)["items"], "postings kept"


pytestmark = pytest.mark.cluster
