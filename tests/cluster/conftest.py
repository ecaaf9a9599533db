"""The cluster tier: the chart installed with Helm on a real node (`stack node`).

Slow, and needs root, containerd and the locally built images, so it is collected only with
FINTECH_CLUSTER_TESTS=1: `make cluster-test`, which `make test` runs after the rest. The
session starts its own throwaway platform on free ports, adds the node to it, and stops both
afterwards. A node that cannot start fails the session and says why; nothing is skipped.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from fintech_devstack import build, certs, images, node, platform

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
CHART = REPO_ROOT / "charts" / "fintech-operator"
COMMAND_TIMEOUT_SECONDS = 900


@dataclass
class Cluster:
    """The node's platform, its tools and the images the chart is installed with."""

    plat: platform.Platform
    binaries: build.Binaries
    images: dict[str, str]
    node: node.Node

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "KUBECONFIG": str(self.plat.kubeconfig)}

    def run(self, tool: Path, *args: str, stdin: str | None = None, check: bool = True) -> str:
        result = subprocess.run(
            [str(tool), *args],
            input=stdin,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT_SECONDS,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"{tool.name} {' '.join(args)}: {result.stderr[-2000:]}")
        return result.stdout

    def kubectl(self, *args: str, stdin: str | None = None, check: bool = True) -> str:
        return self.run(self.binaries.kubectl, *args, stdin=stdin, check=check)

    def helm(self, *args: str, check: bool = True) -> str:
        return self.run(self.binaries.helm, *args, check=check)

    def exec_failure(self, namespace: str, pod: str, *command: str) -> str:
        """Run ``command`` in ``pod``, expecting it to fail; its error output."""
        result = subprocess.run(
            [str(self.binaries.kubectl), "exec", "-n", namespace, pod, "--", *command],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT_SECONDS,
            check=False,
        )
        assert result.returncode != 0, f"{' '.join(command)} succeeded in {pod}"
        return result.stderr

    def get(self, *args: str) -> Any:
        return json.loads(self.kubectl("get", *args, "-o", "json"))


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    """A platform plus a node, with every image built (cached) and loaded."""
    missing = node.machine_ready()
    assert not missing, f"this machine cannot run a node: {', '.join(missing)}"
    base = platform.default_state_dir().parent
    platform.reap_orphans(base)
    state_dir = base / f"cluster-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    plat = platform.Platform(state_dir, platform.Ports.free(), fast_disk=True)
    the_node = node.Node(plat)
    try:
        binaries = plat.start()
        built = images.all_images()
        the_node.up([images.tar_of(image) for image in built.values()])
        yield Cluster(plat, binaries, built, the_node)
    finally:
        the_node.down()
        plat.stop()
        if not os.environ.get("FINTECH_KEEP_TEST_PLATFORM"):
            shutil.rmtree(state_dir, ignore_errors=True)


def fake_processor_manifest(cluster: Cluster, namespace: str) -> str:
    """The fake card processor: a Deployment of the product image serving HTTPS with a
    certificate from the platform's CA, which pods trust via their service-account bundle."""
    host = f"fake-processor.{namespace}.svc"
    cert, key = certs.sign_serving(cluster.plat.state_dir / "pki", [host])
    labels = {"app": "fake-processor"}
    script = (Path(__file__).parent / "fake_processor.py").read_text()
    items: list[dict[str, Any]] = [
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "fake-processor-tls"},
            "stringData": {"tls.crt": cert.decode(), "tls.key": key.decode()},
        },
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "fake-processor"},
            "data": {"fake_processor.py": script},
        },
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "fake-processor"},
            "spec": {
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "containers": [
                            {
                                "name": "processor",
                                "image": cluster.images["product"],
                                "imagePullPolicy": "Never",
                                "command": ["python", "/app/fake_processor.py"],
                                "ports": [{"containerPort": 8443}],
                                "readinessProbe": {"tcpSocket": {"port": 8443}},
                                "volumeMounts": [
                                    {"name": "app", "mountPath": "/app"},
                                    {"name": "tls", "mountPath": "/tls"},
                                ],
                            }
                        ],
                        "volumes": [
                            {"name": "app", "configMap": {"name": "fake-processor"}},
                            {"name": "tls", "secret": {"secretName": "fake-processor-tls"}},
                        ],
                    },
                },
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "fake-processor"},
            "spec": {"selector": labels, "ports": [{"port": 8443, "targetPort": 8443}]},
        },
    ]
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": items})


# The receiver's Service address, fixed so the chart can allow exactly it
# (config.webhookAllowedCidrs) before the Service exists; inside the node's 10.0.0.0/24, in
# its lower 16 addresses: Kubernetes keeps that band for fixed addresses (CoreDNS has .10) and
# gives Services without one addresses above it first. 10.0.0.200, in the upper band, was
# once already taken by the chart's own Services ("provided IP is already allocated").
RECEIVER_SERVICE_IP = "10.0.0.14"


def outside_manifest(cluster: Cluster, signing_secret: str) -> str:
    """What stands outside the product: a Webhook receiver (tests/cluster/receiver.py) behind
    a Service at :data:`RECEIVER_SERVICE_IP`, in a Pod that also plays the card processor
    (tests/cluster/processor_client.py, with the gateway's signing Secret mounted)."""
    here = Path(__file__).parent
    labels = {"app": "outside"}
    container = {
        "name": "receiver",
        "image": cluster.images["product"],
        "imagePullPolicy": "Never",
        "command": ["python", "/app/receiver.py"],
        "ports": [{"containerPort": 8080}],
        "readinessProbe": {"tcpSocket": {"port": 8080}},
        "volumeMounts": [
            {"name": "app", "mountPath": "/app"},
            {"name": "tmp", "mountPath": "/tmp"},  # noqa: S108 - the Pod's own emptyDir
            {"name": "signing", "mountPath": "/signing", "readOnly": True},
        ],
    }
    volumes = [
        {"name": "app", "configMap": {"name": "outside"}},
        {"name": "tmp", "emptyDir": {}},
        {"name": "signing", "secret": {"secretName": signing_secret}},
    ]
    items: list[dict[str, Any]] = [
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "outside"},
            "data": {
                name: (here / name).read_text() for name in ("receiver.py", "processor_client.py")
            },
        },
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "outside"},
            "spec": {
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {"containers": [container], "volumes": volumes},
                },
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "hooks"},
            "spec": {
                "selector": labels,
                "clusterIP": RECEIVER_SERVICE_IP,
                "ports": [{"port": 80, "targetPort": 8080}],
            },
        },
    ]
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": items})


def wait_for(what: str, probe: Any, timeout_seconds: float) -> Any:
    """Poll ``probe`` until it returns something truthy; fail naming ``what``."""
    deadline = time.monotonic() + timeout_seconds
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = probe()
        except (AssertionError, json.JSONDecodeError, subprocess.SubprocessError) as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(3)
    raise AssertionError(f"{what}: not within {timeout_seconds:.0f}s (last: {last!r})")
