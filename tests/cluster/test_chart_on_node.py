"""`helm install` of the chart on a real node: Pods of the locally built images, Ready through
their real probes; a card and a posting handled by the operator running in a Pod; `helm test`;
the PostgreSQL Pod replaced with its data kept; `helm upgrade`; `helm uninstall`.

The tests run in file order and share one release (each step builds on the previous one).
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

import pytest

from fintech_operator.notify import signing
from tests.cluster.conftest import (
    CHART,
    RECEIVER_SERVICE_IP,
    REPO_ROOT,
    Cluster,
    fake_processor_manifest,
    outside_manifest,
    wait_for,
)
from tests.unit.test_argocd_health import run_health

# The README's "Install on a cluster" names, followed word for word (only the image differs:
# no registry is reachable here, so `make image` builds it and the chart gets pullPolicy Never).
NAMESPACE = "fintech-system"
RELEASE = "fintech"
GATEWAY_URL = f"http://{RELEASE}-fintech-operator-gateway.{NAMESPACE}.svc:8088"
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
        # The README's own values ...
        "--set",
        f"tokenizer.url={processor}",
        "--set",
        "tokenizer.credentialSecret.name=processor",
        # ... and what only this machine needs.
        *image("image", cluster.images["product"]),
        *image("postgresql.image", cluster.images["postgres"]),
        *image("kafka.image", cluster.images["kafka"]),
        # The fake processor's certificate is signed by the cluster CA, which every Pod
        # with a service-account token already has.
        # The notifier may deliver to the test's receiver Service and nowhere else private;
        # the gateway's NetworkPolicy admits the processor's namespace (this one).
        "--set",
        f"config.webhookAllowedCidrs={RECEIVER_SERVICE_IP}/32",
        "--set",
        f"gateway.networkPolicy.processorNamespaces={{{NAMESPACE}}}",
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
    """The README's install, command by command: namespace, processor Secret, helm install."""
    cluster.kubectl("create", "namespace", NAMESPACE)
    cluster.kubectl(
        "-n", NAMESPACE, "create", "secret", "generic", "processor",
        "--from-literal=token=cluster-test-token",
    )  # fmt: skip
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


HOOK_SECRET = "whsec_Y2x1c3Rlci10ZXN0LXdlYmhvb2stc2VjcmV0LTAwMDA="
WEBHOOK = "hooks-in-cluster"
# While this file exists in the receiver's Pod (its own emptyDir), it answers 500.
BROKEN = "/tmp/broken"  # noqa: S108


def _outside_pod(cluster: Cluster) -> str:
    pods = cluster.get("pods", "-n", NAMESPACE, "-l", "app=outside")["items"]
    ready = [p for p in pods if _ready(p) and not p["metadata"].get("deletionTimestamp")]
    assert len(ready) == 1, [p["metadata"]["name"] for p in pods]
    name: str = ready[0]["metadata"]["name"]
    return name


def _gateway(cluster: Cluster, path: str, body: dict[str, Any]) -> dict[str, Any]:
    """A signed POST to the gateway's Service from the processor's Pod: status and answer."""
    out = cluster.kubectl(
        "exec", "-n", NAMESPACE, _outside_pod(cluster), "--",
        "python", "/app/processor_client.py", GATEWAY_URL + path, json.dumps(body),
    )  # fmt: skip
    answer: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return answer


def _card_held(cluster: Cluster, held_minor: int) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        status: dict[str, Any] = cluster.get("card", "u-demo-card", "-n", NAMESPACE)["status"]
        held = status.get("held") or {}
        return status if held.get("amount") == held_minor else None

    result: dict[str, Any] = wait_for(f"card status held {held_minor}", probe, 120)
    return result


def test_gateway_answers_signed_authorizations_from_a_pod(cluster: Cluster) -> None:
    """The card processor (a Pod) authorizes, captures and voids through the gateway's
    Service; the gateway Pods answer from the ledger and the Card's status shows the hold."""
    secret = f"{RELEASE}-fintech-operator-gateway-signing"
    cluster.kubectl("apply", "-n", NAMESPACE, "-f", "-", stdin=outside_manifest(cluster, secret))
    cluster.kubectl("-n", NAMESPACE, "rollout", "status", "deployment/outside", "--timeout=300s")
    token = cluster.get("card", "u-demo-card", "-n", NAMESPACE)["status"]["token"]
    merchant = {"name": "Pod Cafe", "mcc": "5814", "country": "US"}
    request = {"card": token, "currency": "USD", "merchant": merchant}
    approved = _gateway(cluster, "/v1/authorizations", {**request, "id": "pod-1", "amount": 5000})
    assert approved["status"] == 200, approved
    assert approved["answer"]["approved"] is True, approved
    assert approved["answer"]["held"] == 5000, approved
    _card_held(cluster, 5000)
    captured = _gateway(
        cluster, "/v1/authorizations/pod-1/captures", {"id": "pod-cap-1", "amount": 3000}
    )
    assert captured["status"] == 200, captured
    assert (captured["answer"]["held"], captured["answer"]["captured"]) == (2000, 3000), captured
    voided = _gateway(cluster, "/v1/authorizations/pod-1/void", {"id": "pod-void-1"})
    assert voided["status"] == 200, voided
    assert (voided["answer"]["held"], voided["answer"]["released"]) == (0, 2000), voided
    _card_held(cluster, 0)
    again = _gateway(cluster, "/v1/authorizations", {**request, "id": "pod-1", "amount": 5000})
    assert again["answer"] == approved["answer"], "a retry gets the first answer"
    unsigned = cluster.kubectl(
        "exec", "-n", NAMESPACE, _outside_pod(cluster), "--", "python", "-c",
        "import httpx, sys; print(httpx.post(sys.argv[1], content=b'{}').status_code)",
        GATEWAY_URL + "/v1/authorizations",
    )  # fmt: skip
    assert unsigned.strip() == "401", unsigned


def _webhook_manifest() -> str:
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "hook-secret"},
        "stringData": {"secret": HOOK_SECRET},
    }
    webhook = {
        "apiVersion": "fintech.dev/v1alpha1",
        "kind": "Webhook",
        "metadata": {"name": WEBHOOK},
        "spec": {
            "url": f"http://hooks.{NAMESPACE}.svc/hooks",
            "eventTypes": ["dev.fintech.posting.*"],
            "secretRef": {"name": "hook-secret", "key": "secret"},
            "timeoutSeconds": 5,
            "retry": {"maxAttempts": 20, "initialDelaySeconds": 1, "maxDelaySeconds": 5},
            # One failure opens the circuit, so a broken receiver shows at once.
            "circuitBreaker": {"failureThreshold": 1, "openSeconds": 5},
        },
    }
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": [secret, webhook]})


def _deliveries(cluster: Cluster) -> list[dict[str, Any]]:
    out = cluster.kubectl(
        "exec", "-n", NAMESPACE, _outside_pod(cluster), "--",
        "sh", "-c", "cat /tmp/deliveries.jsonl 2>/dev/null || true",
    )  # fmt: skip
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def _delivered(cluster: Cluster, reference: str) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        hits = [d for d in _deliveries(cluster) if reference in d["body"]]
        return hits[0] if hits else None

    found: dict[str, Any] = wait_for(f"a delivery naming {reference}", probe, 180)
    return found


def _health(cluster: Cluster, kind: str, name: str) -> tuple[str, str]:
    return run_health(kind, cluster.get(kind.lower(), name, "-n", NAMESPACE))


def _health_is(cluster: Cluster, kind: str, name: str, wanted: str) -> None:
    wait_for(
        f"Argo CD health of {kind}/{name} {wanted}",
        lambda: _health(cluster, kind, name)[0] == wanted,
        180,
    )


def test_notifier_in_its_pod_delivers_and_argocd_health_follows_a_broken_receiver(
    cluster: Cluster,
) -> None:
    """The notifier in its Pod delivers a posting's event, signed, to a receiver Pod; Argo CD's
    health checks (deploy/argocd/health/) on the live objects say Healthy, then Degraded
    while the receiver is broken on purpose, and Healthy again once it is repaired, with the
    event of the broken time delivered too."""
    cluster.kubectl("apply", "-n", NAMESPACE, "-f", "-", stdin=_webhook_manifest())
    _health_is(cluster, "Webhook", WEBHOOK, "Healthy")
    cluster.kubectl("apply", "-n", NAMESPACE, "-f", "-", stdin=_posting("to-hook", "hook-1"))
    delivery = _delivered(cluster, "hook-1")
    body = delivery["body"].encode()
    key = signing.parse_secret(HOOK_SECRET)
    signing.verify(key, delivery["headers"], body, now=int(time.time()), tolerance_seconds=600)
    for kind, name in (
        ("CardProduct", "standard"),
        ("Card", "u-demo-card"),
        ("Posting", "to-hook"),
    ):
        assert _health(cluster, kind, name)[0] == "Healthy", (kind, name)
    pod = _outside_pod(cluster)
    cluster.kubectl("exec", "-n", NAMESPACE, pod, "--", "touch", BROKEN)
    cluster.kubectl("apply", "-n", NAMESPACE, "-f", "-", stdin=_posting("hook-down", "hook-2"))
    _health_is(cluster, "Webhook", WEBHOOK, "Degraded")
    cluster.kubectl("exec", "-n", NAMESPACE, pod, "--", "rm", BROKEN)
    _delivered(cluster, "hook-2")
    _health_is(cluster, "Webhook", WEBHOOK, "Healthy")


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
