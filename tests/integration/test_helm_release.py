"""Helm releases of the chart on the real API server: bundled services, upgrades, uninstalls,
and the cluster-wide RBAC seen through the ServiceAccount's own token.

No controller manager runs here, so StatefulSets create no volumes; what Helm itself does
(render, apply, three-way merge, keep policies, adoption on reinstall) is all real.
"""

from __future__ import annotations

import base64
import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Kubectl, RunningPlatform
from tests.integration.test_helm_chart import CHART, Helm, one, parse_docs

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def helm(platform_running: RunningPlatform, tmp_path_factory: pytest.TempPathFactory) -> Helm:
    """The real Helm with private cache and config directories."""
    return Helm(platform_running, tmp_path_factory.mktemp("helm"))


@pytest.fixture
def release_name() -> str:
    """A release name no other test uses (cluster-scoped RBAC objects carry it)."""
    return f"r{uuid.uuid4().hex[:8]}"


def _password(kubectl: Kubectl, namespace: str, secret: str) -> str:
    body = json.loads(kubectl("get", "secret", secret, "-n", namespace, "-o", "json").stdout)
    return base64.b64decode(body["data"]["password"]).decode()


def test_bundled_release_survives_upgrade_uninstall_and_reinstall(
    helm: Helm, kubectl: Kubectl, namespace: str, crds_installed: None, release_name: str
) -> None:
    """The generated PostgreSQL password is made once: `helm upgrade` reads it back, uninstall
    keeps it (with the CRDs and the default product), and a reinstall adopts it, so the kept
    database volume still opens."""
    secret = f"{release_name}-fintech-operator-postgresql"
    helm("install", release_name, str(CHART), "-n", namespace)
    password = _password(kubectl, namespace, secret)
    assert len(password) == 32

    heap = {"kafka": {"heapOpts": "-Xms768m -Xmx768m"}}
    helm("upgrade", release_name, str(CHART), "-n", namespace, "-f", helm.values_file(heap))
    assert _password(kubectl, namespace, secret) == password
    manifest = parse_docs(helm("get", "manifest", release_name, "-n", namespace).stdout)
    kafka = one(manifest, "StatefulSet", "-kafka")["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "KAFKA_HEAP_OPTS", "value": "-Xms768m -Xmx768m"} in kafka["env"]

    helm("uninstall", release_name, "-n", namespace)
    assert _password(kubectl, namespace, secret) == password
    kubectl("get", "cardproduct", "standard", "-n", namespace)
    kubectl("get", "crd", "cards.fintech.dev", "kopfpeerings.kopf.dev")
    remaining = kubectl("get", "statefulsets,deployments", "-n", namespace, "-o", "name").stdout
    assert remaining.strip() == ""

    helm("install", release_name, str(CHART), "-n", namespace)
    assert _password(kubectl, namespace, secret) == password
    helm("uninstall", release_name, "-n", namespace)


def test_turning_gateway_autoscaling_on_keeps_the_running_replicas(
    helm: Helm, kubectl: Kubectl, namespace: str, crds_installed: None, release_name: str
) -> None:
    """An upgrade that turns the gateway's HPA on must not drop its Deployment to Kubernetes'
    default of one replica (no HPA controller runs here, so what Helm applied stays visible);
    later upgrades keep what the autoscaler set, and raise it to a higher minimum."""
    deployment = f"{release_name}-fintech-operator-gateway"

    def replicas() -> int:
        body = kubectl("get", "deployment", deployment, "-n", namespace, "-o", "json").stdout
        count: int = json.loads(body)["spec"]["replicas"]
        return count

    helm("install", release_name, str(CHART), "-n", namespace)
    assert replicas() == 2
    autoscaled = {"gateway": {"autoscaling": {"enabled": True, "maxReplicas": 6}}}
    values = helm.values_file(autoscaled)
    helm("upgrade", release_name, str(CHART), "-n", namespace, "-f", values)
    assert replicas() == 2
    kubectl("scale", "deployment", deployment, "-n", namespace, "--replicas=5")  # as the HPA would
    helm("upgrade", release_name, str(CHART), "-n", namespace, "-f", values)
    assert replicas() == 5
    higher = {"gateway": {"replicas": 6, "autoscaling": {"enabled": True, "maxReplicas": 6}}}
    helm("upgrade", release_name, str(CHART), "-n", namespace, "-f", helm.values_file(higher))
    assert replicas() == 6
    helm("uninstall", release_name, "-n", namespace)


def _token_kubeconfig(
    kubectl: Kubectl, running: RunningPlatform, namespace: str, sa: str, path: Path
) -> Path:
    token = kubectl("create", "token", sa, "-n", namespace, "--duration=1h").stdout.strip()
    admin = json.loads(running.kubeconfig.read_text())
    cluster = admin["clusters"][0]
    path.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [cluster],
                "users": [{"name": sa, "user": {"token": token}}],
                "contexts": [{"name": sa, "context": {"cluster": cluster["name"], "user": sa}}],
                "current-context": sa,
            }
        )
    )
    path.chmod(0o600)
    return path


def _can(kubectl: Kubectl, kubeconfig: Path, *args: str) -> bool:
    result = kubectl("--kubeconfig", str(kubeconfig), "auth", "can-i", *args, check=False)
    assert result.stdout.strip() in ("yes", "no"), result.stdout + result.stderr
    return result.stdout.strip() == "yes"


def test_cluster_scope_permissions_reach_every_namespace_but_no_further(
    helm: Helm,
    kubectl: Kubectl,
    namespace: str,
    crds_installed: None,
    release_name: str,
    platform_running: RunningPlatform,
    tmp_path: Path,
) -> None:
    """Installed cluster-wide with Secret reads narrowed to one namespace, the operator's token
    may watch and patch its kinds everywhere and read Secrets only there; it may not create
    or change anything cluster-scoped but its own peering object."""
    secrets_ns, other_ns = f"{namespace}-s", f"{namespace}-o"
    for name in (secrets_ns, other_ns):
        kubectl("create", "namespace", name)
    values: dict[str, Any] = {
        "rbac": {"secrets": {"enabled": True, "namespaces": [secrets_ns]}},
        "postgresql": {"enabled": False},
        "externalDatabase": {"url": "postgresql://fintech@db:5432/fintech"},
        "kafka": {"enabled": False},
        "externalKafka": {"bootstrapServers": "kafka:9092"},
    }
    helm("install", release_name, str(CHART), "-n", namespace, "-f", helm.values_file(values))
    try:
        manifest = parse_docs(helm("get", "manifest", release_name, "-n", namespace).stdout)
        operator_sa = one(manifest, "ServiceAccount", "-operator")["metadata"]["name"]
        peering = one(manifest, "ClusterKopfPeering")["metadata"]["name"]
        token = _token_kubeconfig(
            kubectl, platform_running, namespace, operator_sa, tmp_path / "kubeconfig"
        )
        allowed = [
            ("list", "cards", "--all-namespaces"),
            ("watch", "postings", "-n", other_ns),
            ("patch", "cards", "--subresource=status", "-n", other_ns),
            ("create", "events", "-n", other_ns),
            ("get", "secrets", "-n", secrets_ns),
            ("patch", f"clusterkopfpeerings.kopf.dev/{peering}"),
        ]
        denied = [
            ("get", "secrets", "-n", other_ns),
            ("get", "secrets", "-n", namespace),
            ("list", "secrets", "-n", secrets_ns),
            ("create", "cards", "-n", other_ns),
            ("create", "customresourcedefinitions.apiextensions.k8s.io"),
            ("patch", "customresourcedefinitions.apiextensions.k8s.io"),
            ("create", "clusterroles.rbac.authorization.k8s.io"),
            ("create", "clusterrolebindings.rbac.authorization.k8s.io"),
            ("create", "namespaces"),
            ("delete", "namespaces"),
            ("patch", "clusterkopfpeerings.kopf.dev/another-operator"),
            ("create", "pods", "-n", other_ns),
            ("update", "deployments.apps", "-n", namespace),
            ("list", "nodes"),
        ]
        for args in allowed:
            assert _can(kubectl, token, *args), args
        for args in denied:
            assert not _can(kubectl, token, *args), args
    finally:
        helm("uninstall", release_name, "-n", namespace, check=False)
        for name in (secrets_ns, other_ns):
            kubectl("delete", "namespace", name, "--wait=false", check=False)
