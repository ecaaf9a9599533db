"""`helm install` into the real API server, then the chart's pods run for real, minus the kubelet.

There is no kubelet or controller manager here, so nothing starts a pod. The test does what the
kubelet would: it reads each Deployment from the release's manifest, resolves its environment
(values, Secret keys, the pod name), hands the process the token of the chart's ServiceAccount
(`kubectl create token`, as the projected token would be) and runs the container's exact
arguments with the `fintech-operator` entry point. The release is namespace-scoped: its RBAC is
the strictest the chart renders, so reconciling a Card and a Posting proves it sufficient, and
`kubectl auth can-i` with the same tokens proves it minimal. Upgrade and uninstall follow.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from tests.conftest import Kubectl, RunningPlatform, wait_for
from tests.integration.test_helm_chart import CHART, Helm, one, parse_docs
from tests.unit.test_argocd_health import run_health

pytestmark = pytest.mark.e2e
REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = REPO_ROOT / "examples"
ENTRY_POINT = Path(sys.executable).with_name("fintech-operator")
# The image's own ENV (Dockerfile), under the container's env as the kubelet layers them.
IMAGE_ENV = {"PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1"}
PRIMARY_PRIORITY, STANDBY_PRIORITY = "200", "100"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Release:
    """One installed release and what its pods need."""

    name: str
    namespace: str
    apps: str
    values: dict[str, Any]
    helm: Helm
    tmp: Path
    docs: list[dict[str, Any]] = field(default_factory=list)

    def manifest(self) -> list[dict[str, Any]]:
        return parse_docs(self.helm("get", "manifest", self.name, "-n", self.namespace).stdout)

    def service_account(self, component: str) -> str:
        return str(one(self.docs, "ServiceAccount", f"-{component}")["metadata"]["name"])


def _kubeconfig_for(kubectl: Kubectl, running: RunningPlatform, release: Release, sa: str) -> Path:
    """A kubeconfig holding a fresh token of the ServiceAccount, like a pod's projected token."""
    token = kubectl(
        "create", "token", sa, "-n", release.namespace, "--duration=2h"
    ).stdout.strip()  # fmt: skip
    admin = json.loads(running.kubeconfig.read_text())
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": admin["clusters"],
        "users": [{"name": sa, "user": {"token": token}}],
        "contexts": [
            {
                "name": sa,
                "context": {"cluster": admin["clusters"][0]["name"], "user": sa},
            }
        ],
        "current-context": sa,
    }
    path = release.tmp / f"kubeconfig-{sa}"
    path.write_text(json.dumps(config))
    path.chmod(0o600)
    return path


def _container(release: Release, component: str) -> dict[str, Any]:
    deployment = one(release.docs, "Deployment", f"-{component}")
    container: dict[str, Any] = deployment["spec"]["template"]["spec"]["containers"][0]
    return container


def _pod_env(kubectl: Kubectl, release: Release, component: str, pod: str) -> dict[str, str]:
    """The container's environment resolved as the kubelet would resolve it."""
    env = {"PATH": os.environ["PATH"], "HOME": str(release.tmp / f"home-{pod}"), **IMAGE_ENV}
    Path(env["HOME"]).mkdir(exist_ok=True)
    for item in _container(release, component)["env"]:
        if "value" in item:
            env[item["name"]] = item["value"]
        elif "secretKeyRef" in item["valueFrom"]:
            ref = item["valueFrom"]["secretKeyRef"]
            secret = json.loads(
                kubectl("get", "secret", ref["name"], "-n", release.namespace, "-o", "json").stdout
            )
            env[item["name"]] = base64.b64decode(secret["data"][ref["key"]]).decode()
        elif item["valueFrom"].get("fieldRef", {}).get("fieldPath") == "metadata.name":
            env[item["name"]] = pod
        else:
            raise AssertionError(f"unresolvable env {item}")
    _mount_secret_volumes(kubectl, release, component, pod, env)
    # Loopback only on this machine; in the pod the chart's 0.0.0.0 is right.
    env["FINTECH_HEALTH_HOST"] = "127.0.0.1"
    # Two processes share this machine's ports; in the cluster each pod has its own.
    env["FINTECH_METRICS_PORT"] = str(_free_port())
    if component == "operator" and "FINTECH_TOKENIZER_URL" not in env:
        # No card processor runs here. The chart never renders this opt-in, and the operator
        # it renders without tokenizer.url refuses to start (test_the_chart_operator_fails_
        # closed_without_a_tokenizer); this harness opts in as a developer would.
        env["FINTECH_TOKENIZER"] = "development"
    return env


def _mount_secret_volumes(
    kubectl: Kubectl, release: Release, component: str, pod: str, env: dict[str, str]
) -> None:
    """Write each Secret volume's keys to a directory, as the kubelet mounts them, and point
    the environment's paths under its mountPath there."""
    deployment = one(release.docs, "Deployment", f"-{component}")["spec"]["template"]["spec"]
    secrets = {v["name"]: v["secret"]["secretName"] for v in deployment["volumes"] if "secret" in v}
    for mount in deployment["containers"][0].get("volumeMounts", []):
        if mount["name"] not in secrets:
            continue
        secret = json.loads(
            kubectl(
                "get", "secret", secrets[mount["name"]], "-n", release.namespace, "-o", "json"
            ).stdout
        )  # fmt: skip
        folder = release.tmp / f"{pod}-{mount['name']}"
        folder.mkdir(exist_ok=True)
        for key, value in secret["data"].items():
            (folder / key).write_bytes(base64.b64decode(value))
        for name, value in env.items():
            if value.startswith(mount["mountPath"] + "/"):
                env[name] = str(folder / value.removeprefix(mount["mountPath"] + "/"))


class Pods:
    """The release's "pods": real processes running the containers' arguments."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.envs: dict[str, dict[str, str]] = {}

    def start(self, pod: str, args: list[str], env: dict[str, str]) -> None:
        with (self.log_dir / f"{pod}.log").open("ab") as log:
            self.procs[pod] = subprocess.Popen(
                [str(ENTRY_POINT), *args], env=env, stdout=log, stderr=subprocess.STDOUT
            )
        self.envs[pod] = env

    def log(self, pod: str) -> str:
        return (self.log_dir / f"{pod}.log").read_text(errors="replace")

    def stop(self, pod: str) -> None:
        proc = self.procs.pop(pod)
        proc.send_signal(signal.SIGTERM)  # what the kubelet sends first
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def stop_all(self) -> None:
        for pod in list(self.procs):
            self.stop(pod)


@pytest.fixture(scope="module")
def helm(platform_running: RunningPlatform, tmp_path_factory: pytest.TempPathFactory) -> Helm:
    """The real Helm with private cache and config directories."""
    return Helm(platform_running, tmp_path_factory.mktemp("helm"))


@pytest.fixture(scope="module")
def release(
    helm: Helm,
    kubectl: Kubectl,
    operator_env: dict[str, str],
    operator_prefix: str,
    crds_installed: None,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Release]:
    """The chart installed namespace-scoped, with this module's database and the session's Kafka
    as external services; the operator watches only the apps namespace."""
    namespace, apps = f"{operator_prefix}-sys", f"{operator_prefix}-apps"
    for name in (namespace, apps):
        kubectl("create", "namespace", name)
    # libpq's PGPASSWORD comes from a Secret, as in production (the test server trusts loopback).
    for secret in ("ledger-db", "ledger-db-owner"):
        kubectl("create", "secret", "generic", secret, "-n", namespace, "--from-literal=password=x")
    # Kafka as a managed cluster is reached: SASL_SSL with SCRAM-SHA-512, CA from a Secret.
    stack = operator_env
    kubectl(
        "create", "secret", "generic", "kafka-user", "-n", namespace,
        f"--from-file=password={stack['FINTECH_STACK_KAFKA_PASSWORD_FILE']}",
    )  # fmt: skip
    kubectl(
        "create", "secret", "generic", "kafka-ca", "-n", namespace,
        f"--from-file=ca.crt={stack['FINTECH_STACK_KAFKA_CA_FILE']}",
    )  # fmt: skip
    values = {
        "rbac": {"scope": "namespace"},
        "watchNamespaces": [apps],
        "postgresql": {"enabled": False},
        # Least privilege as production runs it: the owner migrates, the runtime role posts.
        "externalDatabase": {
            "url": operator_env["DATABASE_URL"],
            "existingSecret": "ledger-db",
            "migration": {
                "url": operator_env["FINTECH_MIGRATION_DATABASE_URL"],
                "existingSecret": "ledger-db-owner",
            },
            "runtimeRole": operator_env["FINTECH_DATABASE_RUNTIME_ROLE"],
        },
        "kafka": {"enabled": False},
        "externalKafka": {
            "bootstrapServers": stack["FINTECH_STACK_KAFKA_SASL_SSL_BOOTSTRAP"],
            "security": {
                "protocol": "SASL_SSL",
                "saslMechanism": "SCRAM-SHA-512",
                "username": stack["FINTECH_STACK_KAFKA_USERNAME"],
                "passwordSecret": {"name": "kafka-user"},
                "tlsSecret": {"name": "kafka-ca"},
            },
        },
        "operator": {"healthPort": _free_port()},
        "rewards": {"group": f"rewards-{operator_prefix}"},
        # The examples' webhook receiver is on loopback, which the notifier refuses unless the
        # chart allows it (config.webhookAllowedCidrs, as a cluster would allow its own CIDR).
        "config": {
            "cardRefreshIntervalSeconds": 1,
            "topicPrefix": f"{operator_prefix}.",
            "webhookAllowedCidrs": "127.0.0.0/8,::1/128",
        },
        "defaults": {"namespaces": [apps]},
    }
    rel = Release("fin", namespace, apps, values, helm, tmp_path_factory.mktemp("release"))
    helm("install", rel.name, str(CHART), "-n", namespace, "-f", helm.values_file(values))
    rel.docs = rel.manifest()
    yield rel
    helm("uninstall", rel.name, "-n", namespace, check=False)
    for name in (namespace, apps):
        kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture(scope="module")
def pods(release: Release) -> Iterator[Pods]:
    """The processes of this module, stopped at the end whatever happened."""
    running = Pods(release.tmp)
    yield running
    running.stop_all()


def _start_operator(
    kubectl: Kubectl,
    platform_running: RunningPlatform,
    release: Release,
    pods: Pods,
    pod: str,
    priority: str,
) -> int:
    """Run the operator container's arguments as its ServiceAccount; return its probe port."""
    args = list(_container(release, "operator")["args"])
    port = _free_port()
    args[args.index("--liveness-port") + 1] = str(port)
    env = _pod_env(kubectl, release, "operator", pod)
    env["KUBECONFIG"] = str(
        _kubeconfig_for(kubectl, platform_running, release, release.service_account("operator"))
    )
    # Deterministic priorities so the test knows which replica leads (the chart leaves them
    # random).
    env["FINTECH_PEERING_PRIORITY"] = priority
    pods.start(pod, args, env)
    return port


def _status(kubectl: Kubectl, ns: str, kind: str, name: str) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(kubectl("get", kind, name, "-n", ns, "-o", "json").stdout)
    return body


def _phase_in(kubectl: Kubectl, ns: str, kind: str, name: str, phases: set[str]) -> Any:
    def probe() -> dict[str, Any] | None:
        body = _status(kubectl, ns, kind, name)
        return body if (body.get("status") or {}).get("phase") in phases else None

    return wait_for(f"{kind}/{name} in {phases}", probe, timeout_seconds=120)


def test_install_renders_only_namespaced_objects(release: Release, kubectl: Kubectl) -> None:
    """The namespace-scoped release creates nothing cluster-wide, and its peering object and
    default product wait in the watched namespace."""
    kinds = {d["kind"] for d in release.docs}
    assert not kinds & {"ClusterRole", "ClusterRoleBinding", "ClusterKopfPeering"}
    assert {"Role", "RoleBinding", "KopfPeering", "CardProduct", "Deployment"} <= kinds
    peering = one(release.docs, "KopfPeering")
    assert peering["metadata"]["namespace"] == release.apps
    kubectl("get", "kopfpeering", peering["metadata"]["name"], "-n", release.apps)
    kubectl("get", "cardproduct", "standard", "-n", release.apps)
    status = json.loads(
        release.helm("status", release.name, "-n", release.namespace, "-o", "json").stdout
    )
    assert status["info"]["status"] == "deployed"
    notes = status["info"]["notes"]
    assert f"rollout status deployment/{release.name}-fintech-operator-operator" in notes
    assert f"The operator watches {release.apps}." in notes
    assert "kubectl apply --server-side --force-conflicts" in notes
    assert "WARNING: tokenizer.url is empty, so the operator refuses to start" in notes


def test_the_chart_operator_fails_closed_without_a_tokenizer(
    kubectl: Kubectl, release: Release
) -> None:
    """The operator exactly as the chart renders it without tokenizer.url (no processor, and
    the chart never opts in to the development tokenizer) refuses to start: status 2 and one
    line saying what to set, which `kubectl logs` would show beside CrashLoopBackOff."""
    env = _pod_env(kubectl, release, "operator", "fin-operator-closed")
    env.pop("FINTECH_TOKENIZER")  # The harness's opt-in; the chart rendered none.
    rendered = {e["name"] for e in _container(release, "operator")["env"]}
    assert not {"FINTECH_TOKENIZER", "FINTECH_TOKENIZER_URL"} & rendered
    refused = subprocess.run(
        [str(ENTRY_POINT), *_container(release, "operator")["args"]],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert "fintech-operator run: no card tokenizer configured" in refused.stderr


def test_card_and_posting_reconcile_as_the_charts_service_accounts(
    release: Release,
    pods: Pods,
    kubectl: Kubectl,
    platform_running: RunningPlatform,
    operator_env: dict[str, str],
) -> None:
    """With only the chart's RBAC, the operator issues a card and posts a purchase, and the
    rewards consumer, with no Kubernetes credentials at all, accrues the 1% points."""
    _start_operator(kubectl, platform_running, release, pods, "operator-a", PRIMARY_PRIORITY)
    rewards_env = _pod_env(kubectl, release, "rewards", "rewards-a")
    pods.start("rewards-a", list(_container(release, "rewards")["args"]), rewards_env)
    assert "KUBECONFIG" not in rewards_env
    # Only the operator migrates, so only it holds the owner's credentials.
    assert not {k for k in rewards_env if k.startswith("FINTECH_MIGRATION_")}
    ns = release.apps
    kubectl(
        "apply", "-n", ns, "-f", str(EXAMPLES / "10-card-u_demo.yaml"),
        "-f", str(EXAMPLES / "20-posting-purchase.yaml"),
    )  # fmt: skip
    try:
        card = _phase_in(kubectl, ns, "card", "u-demo-card", {"Active", "Rejected"})
        posting = _phase_in(kubectl, ns, "posting", "purchase-0001", {"Posted", "Rejected"})
    except AssertionError:
        print(pods.log("operator-a")[-6000:])
        raise
    assert card["status"]["phase"] == "Active", card["status"]
    assert posting["status"]["phase"] == "Posted", posting["status"]
    assert run_health("Card", card)[0] == "Healthy"
    assert run_health("Posting", posting)[0] == "Healthy"
    journal = int(posting["status"]["journalId"])

    def points() -> Any:
        with psycopg.connect(operator_env["DATABASE_URL"]) as conn:
            row = conn.execute(
                "SELECT points FROM rewards_ledger WHERE journal_id = %s", (journal,)
            ).fetchone()
        return row

    assert wait_for("the rewards row", points, timeout_seconds=90) == (125,)
    # Events need their own permission: a card whose holder's KYC is pending raises a Warning.
    review = yaml.safe_load((EXAMPLES / "10-card-u_demo.yaml").read_text())
    review["metadata"]["name"] = "u-review-card"
    review["spec"] |= {"userId": "u_review"}
    review["spec"]["holder"]["kycStatus"] = "Pending"
    kubectl("apply", "-n", ns, "-f", "-", input=yaml.safe_dump(review))
    held = _phase_in(kubectl, ns, "card", "u-review-card", {"PendingReview", "Rejected"})
    # Held for review, or rejected when no policy allows review: either way a Warning Event.
    expected = {"PendingReview": "Suspended", "Rejected": "Degraded"}[held["status"]["phase"]]
    assert run_health("Card", held)[0] == expected, held["status"]

    def warned() -> bool:
        selector = "involvedObject.name=u-review-card,type=Warning"
        out = kubectl("get", "events", "-n", ns, "--field-selector", selector, "-o", "json")
        return bool(json.loads(out.stdout)["items"])

    wait_for("the Warning Event of the held card", warned, timeout_seconds=60)
    for pod in ("operator-a", "rewards-a"):
        assert "Forbidden" not in pods.log(pod), pods.log(pod)[-3000:]
        # The consumers' liveness and readiness probes ask /metrics on the metrics port.
        url = f"http://127.0.0.1:{pods.envs[pod]['FINTECH_METRICS_PORT']}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            assert response.status == 200
            assert b"fintech_build_info" in response.read()


def test_helm_test_hook_command_passes_against_the_operator(release: Release, pods: Pods) -> None:
    """The `helm test` pod's exact command exits 0 against the running operator's /healthz."""
    hooks = parse_docs(release.helm("get", "hooks", release.name, "-n", release.namespace).stdout)
    container = one(hooks, "Pod")["spec"]["containers"][0]
    assert container["command"][0] == "python"
    args = pods.procs["operator-a"].args
    assert isinstance(args, list)
    url = f"http://127.0.0.1:{args[args.index('--liveness-port') + 1]}/healthz"
    # The image's `python` is this interpreter, with the hook's own environment (its
    # TIMEOUT_SECONDS too); only the Service address becomes loopback.
    hook_env = {e["name"]: e["value"] for e in container["env"]}
    result = subprocess.run(
        [sys.executable, *container["command"][1:]],
        env={**hook_env, "PATH": os.environ["PATH"], "HEALTH_URL": url},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "200" in result.stdout


def test_notifier_serves_webhooks_as_its_service_account(
    release: Release, pods: Pods, kubectl: Kubectl, platform_running: RunningPlatform
) -> None:
    """With only the chart's RBAC, the notifier lists the watched namespace's Webhooks and
    reads their signing Secret, and the operator reports the Webhook Active."""
    env = _pod_env(kubectl, release, "notifier", "notifier-a")
    env["KUBECONFIG"] = str(
        _kubeconfig_for(kubectl, platform_running, release, release.service_account("notifier"))
    )
    env["FINTECH_NOTIFIER_REFRESH_INTERVAL_SECONDS"] = "1"
    assert env["FINTECH_WEBHOOK_ALLOWED_CIDRS"] == "127.0.0.0/8,::1/128"  # from the chart
    pods.start("notifier-a", list(_container(release, "notifier")["args"]), env)
    kubectl("apply", "-n", release.apps, "-f", str(EXAMPLES / "40-webhook.yaml"))
    name = "postings-to-local-receiver"
    try:
        webhook = _phase_in(kubectl, release.apps, "webhook", name, {"Active", "Rejected"})
    except AssertionError:
        print(pods.log("notifier-a")[-5000:])
        raise
    assert webhook["status"]["phase"] == "Active", webhook["status"]
    assert run_health("Webhook", webhook)[0] == "Healthy"
    assert "Forbidden" not in pods.log("notifier-a"), pods.log("notifier-a")[-3000:]


def _can(kubectl: Kubectl, kubeconfig: Path, *args: str) -> bool:
    result = kubectl("--kubeconfig", str(kubeconfig), "auth", "can-i", *args, check=False)
    assert result.stdout.strip() in ("yes", "no"), result.stdout + result.stderr
    return result.stdout.strip() == "yes"


def test_permissions_are_sufficient_and_minimal(
    release: Release, kubectl: Kubectl, platform_running: RunningPlatform
) -> None:
    """`kubectl auth can-i` with each ServiceAccount's own token: the operator may do exactly
    its job in the watched namespace and nothing anywhere else; the notifier may read Webhooks
    and Secrets by name; the rewards consumer may do nothing."""
    ns, home = release.apps, release.namespace
    peering = one(release.docs, "KopfPeering")["metadata"]["name"]
    operator = _kubeconfig_for(
        kubectl, platform_running, release, release.service_account("operator")
    )
    allowed = [
        ("list", "cards"),
        ("watch", "postings"),
        ("patch", "cards"),
        ("patch", "cards", "--subresource=status"),
        ("patch", "postings", "--subresource=status"),
        ("delete", "postings"),
        ("create", "reconciliationruns"),
        ("create", "events"),
        ("get", "configmaps"),
        ("get", "secrets"),
        ("list", "kopfpeerings.kopf.dev"),
        ("patch", f"kopfpeerings.kopf.dev/{peering}"),
    ]
    denied = [
        ("create", "cards"),
        ("delete", "cards"),
        ("update", "cards"),
        ("create", "postings"),
        ("update", "postings"),
        ("delete", "cardproducts"),
        ("list", "secrets"),
        ("watch", "secrets"),
        ("create", "secrets"),
        ("list", "configmaps"),
        ("create", "pods"),
        ("list", "pods"),
        ("create", "deployments.apps"),
        ("patch", "kopfpeerings.kopf.dev/someone-else"),
        ("create", "serviceaccounts/token"),
        ("create", "roles.rbac.authorization.k8s.io"),
        ("create", "rolebindings.rbac.authorization.k8s.io"),
    ]
    for verb, *rest in allowed:
        assert _can(kubectl, operator, verb, *rest, "-n", ns), (verb, rest)
    for verb, *rest in denied:
        assert not _can(kubectl, operator, verb, *rest, "-n", ns), (verb, rest)
    elsewhere = [
        ("get", "secrets", "-n", home),  # not even the release's own database Secret
        ("list", "cards", "-n", home),
        ("list", "cards", "--all-namespaces"),
        ("create", "events", "-n", "default"),
        ("create", "customresourcedefinitions.apiextensions.k8s.io"),
        ("create", "clusterroles.rbac.authorization.k8s.io"),
        ("delete", "namespaces"),
        ("list", "nodes"),
        ("impersonate", "users"),
        ("patch", "clusterkopfpeerings.kopf.dev"),
    ]
    for verb, *rest in elsewhere:
        assert not _can(kubectl, operator, verb, *rest), (verb, rest)
    listing = kubectl("--kubeconfig", str(operator), "auth", "can-i", "--list", "-n", ns).stdout
    print(f"\nkubectl auth can-i --list -n {ns} (operator ServiceAccount):\n{listing}")

    notifier = _kubeconfig_for(
        kubectl, platform_running, release, release.service_account("notifier")
    )
    assert _can(kubectl, notifier, "list", "webhooks.fintech.dev", "-n", ns)
    assert _can(kubectl, notifier, "get", "secrets", "-n", ns)
    for verb, resource in (
        ("patch", "webhooks.fintech.dev"),
        ("list", "secrets"),
        ("list", "cards"),
    ):
        assert not _can(kubectl, notifier, verb, resource, "-n", ns)
    assert not _can(kubectl, notifier, "get", "secrets", "-n", home)

    rewards = _kubeconfig_for(
        kubectl, platform_running, release, release.service_account("rewards")
    )
    for verb, resource in (("list", "cards"), ("get", "secrets"), ("create", "events")):
        assert not _can(kubectl, rewards, verb, resource, "-n", ns)
    rewards_pod = one(release.docs, "Deployment", "-rewards")["spec"]["template"]["spec"]
    assert rewards_pod["automountServiceAccountToken"] is False


def test_standby_replica_waits_and_takes_over(
    release: Release, pods: Pods, kubectl: Kubectl, platform_running: RunningPlatform
) -> None:
    """A second replica with a lower priority joins the peering object and stays paused; when
    the leader stops (SIGTERM, as on a rollout), it resumes and reconciles new cards."""
    peering = one(release.docs, "KopfPeering")["metadata"]["name"]
    _start_operator(kubectl, platform_running, release, pods, "operator-b", STANDBY_PRIORITY)

    def registered() -> bool:
        body = _status(kubectl, release.apps, "kopfpeering", peering)
        return {"operator-a", "operator-b"} <= set(body.get("status") or {})

    wait_for("both replicas in the peering object", registered, timeout_seconds=90)
    assert "Resuming operations" not in pods.log("operator-b")
    pods.stop("operator-a")
    try:
        wait_for(
            "the standby to resume",
            lambda: "Resuming operations" in pods.log("operator-b"),
            timeout_seconds=120,
        )
    except AssertionError:
        print(pods.log("operator-b")[-5000:])
        raise
    card = yaml.safe_load((EXAMPLES / "10-card-u_demo.yaml").read_text())
    card["metadata"]["name"] = "u-standby-card"
    card["spec"]["userId"] = "u_standby"
    kubectl("apply", "-n", release.apps, "-f", "-", input=yaml.safe_dump(card))
    issued = _phase_in(kubectl, release.apps, "card", "u-standby-card", {"Active", "Rejected"})
    assert issued["status"]["phase"] == "Active", issued["status"]
    body = _status(kubectl, release.apps, "kopfpeering", peering)
    assert "operator-a" not in (body.get("status") or {})


def test_upgrade_changes_settings_and_keeps_objects(release: Release, kubectl: Kubectl) -> None:
    """`helm upgrade` with a new setting rolls it into the Deployments and leaves the default
    product (same uid), the peering object and every card and posting alone."""
    before = _status(kubectl, release.apps, "cardproduct", "standard")["metadata"]["uid"]
    values = {**release.values, "config": {**release.values["config"], "dbPoolMaxSize": 12}}
    release.helm(
        "upgrade", release.name, str(CHART), "-n", release.namespace,
        "-f", release.helm.values_file(values),
    )  # fmt: skip
    docs = release.manifest()
    env = {e["name"]: e.get("value") for e in _container_of(docs, "operator")["env"]}
    assert env["FINTECH_DB_POOL_MAX_SIZE"] == "12"
    assert _status(kubectl, release.apps, "cardproduct", "standard")["metadata"]["uid"] == before
    for kind, name in (("card", "u-demo-card"), ("posting", "purchase-0001")):
        assert _status(kubectl, release.apps, kind, name)["status"]["phase"] in ("Active", "Posted")
    history = json.loads(
        release.helm("history", release.name, "-n", release.namespace, "-o", "json").stdout
    )
    assert [h["revision"] for h in history] == [1, 2]


def _container_of(docs: list[dict[str, Any]], component: str) -> dict[str, Any]:
    container: dict[str, Any] = one(docs, "Deployment", f"-{component}")["spec"]["template"][
        "spec"
    ]["containers"][0]
    return container


def test_uninstall_keeps_crds_resources_and_the_ledger(
    release: Release, pods: Pods, kubectl: Kubectl, operator_env: dict[str, str]
) -> None:
    """`helm uninstall` removes the workloads and every permission but keeps the CRDs, the
    default product, each card and posting with its status, and the ledger's journals."""
    pods.stop_all()
    posting = _status(kubectl, release.apps, "posting", "purchase-0001")
    release.helm("uninstall", release.name, "-n", release.namespace)
    prefix = "customresourcedefinition.apiextensions.k8s.io/"
    served = {n.removeprefix(prefix) for n in kubectl("get", "crd", "-o", "name").stdout.split()}
    generated = {p.name.removesuffix(".yaml") for p in (REPO_ROOT / "crds").glob("*.yaml")}
    assert generated | {"kopfpeerings.kopf.dev", "clusterkopfpeerings.kopf.dev"} <= served
    kubectl("get", "cardproduct", "standard", "-n", release.apps)
    assert _status(kubectl, release.apps, "card", "u-demo-card")["status"]["phase"] == "Active"
    kept = _status(kubectl, release.apps, "posting", "purchase-0001")
    assert kept["metadata"]["uid"] == posting["metadata"]["uid"]
    assert kept["status"]["journalId"] == posting["status"]["journalId"]
    with psycopg.connect(operator_env["DATABASE_URL"]) as conn:
        row = conn.execute(
            "SELECT count(*) FROM entries WHERE journal_id = %s",
            (int(posting["status"]["journalId"]),),
        ).fetchone()
    assert row == (2,)
    assert (
        kubectl(
            "get", "deployments,serviceaccounts", "-n", release.namespace, "-o", "name"
        ).stdout.strip()
        == ""
    )
    assert (
        kubectl("get", "roles,rolebindings", "-n", release.apps, "-o", "name").stdout.strip() == ""
    )
