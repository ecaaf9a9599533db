"""The Helm chart, rendered by the real Helm and judged by the real kube-apiserver.

`helm lint --strict` passes for every main combination of values; each rendered set is accepted
by a server-side dry run in a namespace that enforces the Pod Security "restricted" standard (so
the API server itself proves the pods are hardened); the chart's CRDs are the generated ones;
``values.schema.json`` refuses bad values with the offending path; and the rendered objects keep
the promises the docs make (RBAC scope, one operator at a time, data kept on uninstall).
"""

from __future__ import annotations

import base64
import http.server
import json
import re
import socket
import subprocess
import sys
import tarfile
import threading
import time
import tomllib
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final

import pytest
import yaml

from fintech_devstack import certs, platform, versions
from fintech_operator import config
from fintech_operator.gateway import settings as gateway_settings
from fintech_operator.gateway import trust as gateway_trust
from tests.conftest import Kubectl, RunningPlatform

pytestmark = pytest.mark.integration
REPO_ROOT = Path(__file__).resolve().parents[2]
CHART = REPO_ROOT / "charts" / "fintech-operator"
RESTRICTED = ("pod-security.kubernetes.io/enforce", "pod-security.kubernetes.io/warn")
CLUSTER_SCOPED_KINDS = {
    "ClusterRole",
    "ClusterRoleBinding",
    "ClusterKopfPeering",
    "CustomResourceDefinition",
    "Namespace",
}


class Helm:
    """The real Helm binary against the session's API server, values passed as a file."""

    def __init__(self, running: RunningPlatform, tmp_dir: Path) -> None:
        self.binary = str(running.binaries.helm)
        self.env = {**running.env, "HELM_CACHE_HOME": str(tmp_dir / "cache")}
        self.env["HELM_CONFIG_HOME"] = str(tmp_dir / "config")
        self.env["HELM_DATA_HOME"] = str(tmp_dir / "data")
        self.tmp_dir = tmp_dir

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [self.binary, *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed: {result.stderr}")
        return result

    def values_file(self, values: dict[str, Any]) -> str:
        path = self.tmp_dir / f"values-{uuid.uuid4().hex[:8]}.yaml"
        path.write_text(yaml.safe_dump(values))
        return str(path)

    def template(
        self, values: dict[str, Any], *, namespace: str = "fin", release: str = "fin"
    ) -> list[dict[str, Any]]:
        """Render the chart (hooks included) and return its objects."""
        out = self(
            "template", release, str(CHART), "-n", namespace, "-f", self.values_file(values)
        ).stdout
        return parse_docs(out)


def parse_docs(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def find(docs: list[dict[str, Any]], kind: str, suffix: str = "") -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind and d["metadata"]["name"].endswith(suffix)]


def one(docs: list[dict[str, Any]], kind: str, suffix: str = "") -> dict[str, Any]:
    found = find(docs, kind, suffix)
    assert len(found) == 1, (kind, suffix, [d["metadata"]["name"] for d in found])
    return found[0]


@pytest.fixture(scope="module")
def helm(platform_running: RunningPlatform, tmp_path_factory: pytest.TempPathFactory) -> Helm:
    """Helm with its own cache and config directories (nothing from the user's home)."""
    return Helm(platform_running, tmp_path_factory.mktemp("helm"))


@pytest.fixture(scope="module")
def chart_crds(helm: Helm) -> list[dict[str, Any]]:
    """Every CRD the chart ships, one document per file (`helm show crds` runs files together,
    so it is no input for kubectl)."""
    out = helm("template", "fin", str(CHART), "--include-crds", "--skip-tests").stdout
    return [d for d in parse_docs(out) if d["kind"] == "CustomResourceDefinition"]


@pytest.fixture(scope="module")
def chart_crds_installed(
    chart_crds: list[dict[str, Any]], kubectl: Kubectl, crds_installed: None
) -> None:
    """The chart's CRDs installed and served, as `helm install` leaves them."""
    manifest = "\n---\n".join(yaml.safe_dump(crd) for crd in chart_crds)
    kubectl("apply", "--server-side", "-f", "-", input=manifest)
    kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd", "--all")


@pytest.fixture
def restricted_namespace(kubectl: Kubectl) -> Iterator[Callable[[], str]]:
    """Make namespaces that enforce Pod Security "restricted", with the `default` ServiceAccount
    a real controller manager would have created (the test hook pod runs as it)."""
    made: list[str] = []

    def make() -> str:
        name = f"t-{uuid.uuid4().hex[:10]}"
        kubectl("create", "namespace", name)
        kubectl("label", "namespace", name, *(f"{label}=restricted" for label in RESTRICTED))
        kubectl("create", "serviceaccount", "default", "-n", name)
        made.append(name)
        return name

    yield make
    for name in made:
        kubectl("delete", "namespace", name, "--wait=false", check=False)


def dry_run(kubectl: Kubectl, docs: list[dict[str, Any]]) -> str:
    """Server-side dry run of every object; fails on any error or Pod Security warning."""
    manifest = "\n---\n".join(yaml.safe_dump(d) for d in docs)
    result = kubectl(
        "apply", "--server-side", "--dry-run=server", "--field-manager=helm", "-f", "-",
        input=manifest, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "would violate PodSecurity" not in result.stderr, result.stderr
    return result.stdout


def external(namespaces: list[str] | None = None) -> dict[str, Any]:
    """Values for external PostgreSQL and Kafka."""
    values: dict[str, Any] = {
        "postgresql": {"enabled": False},
        "externalDatabase": {
            "url": "postgresql://fintech@db.example.com:5432/fintech?sslmode=require",
            "existingSecret": "ledger-db",
        },
        "kafka": {"enabled": False},
        "externalKafka": {"bootstrapServers": "kafka-0.example.com:9092,kafka-1.example.com:9092"},
    }
    if namespaces:
        values |= {"rbac": {"scope": "namespace"}, "watchNamespaces": namespaces}
    return values


GATEWAY_OWN_ROLE: dict[str, Any] = {
    "database": {
        "url": "postgresql://fintech_gateway@db.example.com:5432/fintech?sslmode=require",
        "existingSecret": "gateway-db",
        "role": "fintech_gateway",
    },
    "signing": {"existingSecret": "processor-signing", "key": "whsec"},
    "autoscaling": {"enabled": True, "maxReplicas": 5},
    "networkPolicy": {"processorNamespaces": ["processor"], "processorCIDRs": ["10.20.0.0/16"]},
}
GATEWAY_MTLS: dict[str, Any] = {
    "workers": 3,
    "tls": {"secretName": "gateway-tls", "clientCA": {"secretName": "processor-ca", "key": "ca"}},
}
COMBINATIONS: dict[str, Callable[[list[str]], dict[str, Any]]] = {
    "bundled-defaults": lambda _apps: {},
    "external-services": lambda _apps: external(),
    "namespace-scoped": lambda apps: external(apps) | {"defaults": {"namespaces": apps}},
    "cluster-secrets-narrowed": lambda apps: {
        "rbac": {"secrets": {"enabled": True, "namespaces": apps}},
        "image": {"digest": "sha256:" + "a" * 64},
        "config": {"dbPoolMaxSize": 16, "cardRefreshIntervalSeconds": 5.0},
        "tracing": {"otlpEndpoint": "http://jaeger-collector.tracing:4318"},
    },
    "minimal": lambda _apps: (
        external()
        | {
            "rewards": {"enabled": False},
            "notifier": {"enabled": False},
            "metrics": {"enabled": False},
            "networkPolicy": {"enabled": False},
            "podDisruptionBudget": {"enabled": False},
            "tests": {"enabled": False},
            "defaults": {"cardProduct": {"enabled": False}},
            "operator": {"peering": {"enabled": False}},
            "rbac": {"secrets": {"enabled": False}},
            "gateway": {"enabled": False},
        }
    ),
    "gateway-own-role-autoscaled": lambda _apps: external() | {"gateway": GATEWAY_OWN_ROLE},
    "gateway-mtls-workers": lambda _apps: {"gateway": GATEWAY_MTLS},
}


@pytest.mark.parametrize("combination", sorted(COMBINATIONS))
def test_lint_strict_passes(helm: Helm, combination: str) -> None:
    """`helm lint --strict` finds nothing to complain about in each main combination."""
    values = COMBINATIONS[combination](["payments", "treasury"])
    result = helm("lint", "--strict", str(CHART), "-f", helm.values_file(values), check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[WARNING]" not in result.stdout


@pytest.mark.parametrize("combination", sorted(COMBINATIONS))
def test_rendered_combination_is_accepted_by_the_api_server(
    helm: Helm,
    kubectl: Kubectl,
    chart_crds_installed: None,
    restricted_namespace: Callable[[], str],
    combination: str,
) -> None:
    """Each combination's objects pass a server-side dry run, pods under "restricted"."""
    release_ns = restricted_namespace()
    apps = [restricted_namespace(), restricted_namespace()]
    docs = helm.template(COMBINATIONS[combination](apps), namespace=release_ns)
    out = dry_run(kubectl, docs)
    assert out.count("(server dry run)") == len(docs)


def test_chart_crds_are_exactly_the_generated_crds(chart_crds: list[dict[str, Any]]) -> None:
    """The chart ships every file of crds/ unchanged, plus kopf's two peering kinds."""
    assert (CHART / "crds" / "fintech").resolve() == (REPO_ROOT / "crds").resolve()
    generated = {
        path.name: yaml.safe_load(path.read_text()) for path in (REPO_ROOT / "crds").glob("*.yaml")
    }
    shipped = [c for c in chart_crds if c["spec"]["group"] == "fintech.dev"]
    by_name = {f"{c['metadata']['name']}.yaml": c for c in shipped}
    assert by_name == generated
    others = {c["metadata"]["name"] for c in chart_crds if c["spec"]["group"] != "fintech.dev"}
    assert others == {"clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev"}


def test_packaged_chart_carries_the_crd_files_byte_for_byte(helm: Helm, tmp_path: Path) -> None:
    """`helm package` (what a chart repository serves) resolves the crds/ link into real files
    identical to the repository's crds/, so a published chart needs no repository around it."""
    helm("package", str(CHART), "-d", str(tmp_path))
    (archive,) = tmp_path.glob("fintech-operator-*.tgz")
    packaged: dict[str, bytes] = {}
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            if member.name.startswith("fintech-operator/crds/fintech/") and member.isfile():
                content = tar.extractfile(member)
                assert content is not None
                packaged[Path(member.name).name] = content.read()
    generated = {p.name: p.read_bytes() for p in (REPO_ROOT / "crds").glob("*.yaml")}
    assert packaged == generated


def kafka_security(security: dict[str, Any]) -> dict[str, Any]:
    """Values for an external Kafka with these ``externalKafka.security`` settings."""
    return {
        "kafka": {"enabled": False},
        "externalKafka": {"bootstrapServers": "kafka.example:9093", "security": security},
    }


BAD_VALUES: list[tuple[str, dict[str, Any], str]] = [
    ("unknown-key", {"operatr": {}}, "operatr"),
    ("bad-scope", {"rbac": {"scope": "everything"}}, "/rbac/scope"),
    ("namespace-scope-without-namespaces", {"rbac": {"scope": "namespace"}}, "watchNamespaces"),
    ("bad-namespace-name", external(["Payments_EU"]), "/watchNamespaces/0"),
    ("external-db-without-url", {"postgresql": {"enabled": False}}, "externalDatabase"),
    (
        "password-in-url",
        {"postgresql": {"enabled": False}, "externalDatabase": {"url": "postgresql://u:pw@h/db"}},
        "/externalDatabase/url",
    ),
    ("external-kafka-without-servers", {"kafka": {"enabled": False}}, "externalKafka"),
    ("zero-replicas", {"operator": {"replicas": 0}}, "/operator/replicas"),
    ("zero-test-timeout", {"tests": {"timeoutSeconds": 0}}, "/tests/timeoutSeconds"),
    (
        "recon-cluster-namespace-pattern",
        {"config": {"reconClusterNamespace": "team-*"}},
        "/config/reconClusterNamespace",
    ),
    ("bad-digest", {"image": {"digest": "latest"}}, "/image/digest"),
    ("bad-pull-policy", {"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
    ("port-out-of-range", {"operator": {"healthPort": 70000}}, "/operator/healthPort"),
    ("unknown-setting", {"config": {"dbPoolSize": 4}}, "dbPoolSize"),
    ("setting-out-of-bounds", {"config": {"dbPoolMaxSize": 0}}, "/config/dbPoolMaxSize"),
    ("setting-wrong-type", {"config": {"topicPartitions": "three"}}, "/config/topicPartitions"),
    (
        "no-memory-limit",
        {"operator": {"resources": {"limits": {"memory": None}}}},
        "memory",
    ),
    ("bad-quantity", {"kafka": {"persistence": {"size": "ten gigs"}}}, "/kafka/persistence/size"),
    ("bad-budget", {"podDisruptionBudget": {"maxUnavailable": 0}}, "maxUnavailable"),
    ("bad-consumer-group", {"rewards": {"group": "has space"}}, "/rewards/group"),
    ("sasl-without-login", kafka_security({"protocol": "SASL_SSL"}), "saslMechanism"),
    (
        "tls-secret-on-plaintext",
        kafka_security(
            {
                "protocol": "SASL_PLAINTEXT",
                "saslMechanism": "PLAIN",
                "username": "u",
                "passwordSecret": {"name": "p"},
                "tlsSecret": {"name": "ca"},
            }
        ),
        "/externalKafka/security/tlsSecret/name",
    ),
    ("bad-sasl-mechanism", kafka_security({"saslMechanism": "GSSAPI"}), "saslMechanism"),
    (
        "client-cert-without-key",
        kafka_security({"protocol": "SSL", "tlsSecret": {"name": "ca", "certKey": "tls.crt"}}),
        "keyKey",
    ),
    (
        "bad-runtime-role",
        {
            "postgresql": {"enabled": False},
            "externalDatabase": {"url": "postgresql://u@h/db", "runtimeRole": "Bad-Role"},
        },
        "runtimeRole",
    ),
    (
        "runtime-role-without-owner",
        {
            "postgresql": {"enabled": False},
            "externalDatabase": {"url": "postgresql://u@h/db", "runtimeRole": "fintech_runtime"},
        },
        "migration",
    ),
    ("bad-allowed-cidrs", {"config": {"webhookAllowedCidrs": "evil.example"}}, "webhookAllowed"),
    (
        "owner-url-without-runtime-role-or-password",
        {
            "postgresql": {"enabled": False},
            "externalDatabase": {
                "url": "postgresql://rt@h/db",
                "migration": {"url": "postgresql://owner@h/db"},
            },
        },
        "runtimeRole",
    ),
    (
        "empty-sasl-password-key",
        kafka_security(
            {
                "protocol": "SASL_SSL",
                "saslMechanism": "SCRAM-SHA-512",
                "username": "u",
                "passwordSecret": {"name": "p", "key": ""},
            }
        ),
        "/externalKafka/security/passwordSecret/key",
    ),
    ("tokenizer-without-credential", {"tokenizer": {"url": "https://p.example/t"}}, "name"),
    (
        "tokenizer-over-http",
        {"tokenizer": {"url": "http://p.example/t", "credentialSecret": {"name": "p"}}},
        "/tokenizer/url",
    ),
    ("gateway-zero-replicas", {"gateway": {"replicas": 0}}, "/gateway/replicas"),
    ("gateway-deadline-too-short", {"gateway": {"deadlineMs": 10}}, "/gateway/deadlineMs"),
    ("gateway-privileged-port", {"gateway": {"port": 80}}, "/gateway/port"),
    (
        "gateway-processor-cidr-not-a-cidr",
        {"gateway": {"networkPolicy": {"processorCIDRs": ["10.0.0.1"]}}},
        "/gateway/networkPolicy/processorCIDRs/0",
    ),
    ("gateway-no-workers", {"gateway": {"workers": 0}}, "/gateway/workers"),
    (
        "gateway-client-ca-without-server-certificate",
        {"gateway": {"tls": {"clientCA": {"secretName": "processor-ca"}}}},
        "/gateway/tls/secretName",
    ),
    (
        "gateway-database-url-without-role",
        {"gateway": {"database": {"url": "postgresql://gw@db:5432/fintech"}}},
        "role",
    ),
    (
        "development-tokenizer-through-extra-env",
        {"extraEnv": [{"name": "FINTECH_TOKENIZER", "value": "development"}]},
        "/extraEnv/0/name",
    ),
]


@pytest.mark.parametrize("combination", sorted(COMBINATIONS))
def test_the_chart_never_renders_the_development_tokenizer(helm: Helm, combination: str) -> None:
    """No container of any combination, with or without a processor URL, gets
    FINTECH_TOKENIZER: the chart's operator uses the processor's tokenizer or refuses to start."""
    processor = {"tokenizer": {"url": "https://p.example/t", "credentialSecret": {"name": "p"}}}
    for values in (
        COMBINATIONS[combination](["apps"]),
        COMBINATIONS[combination](["apps"]) | processor,
    ):
        docs = helm.template(values)
        pods = [d["spec"]["template"]["spec"] for d in docs if "template" in d.get("spec", {})]
        pods += [d["spec"] for d in docs if d["kind"] == "Pod"]
        containers = [c for pod in pods for c in pod["containers"] + pod.get("initContainers", [])]
        assert containers
        for container in containers:
            names = {e["name"] for e in container.get("env", [])}
            assert "FINTECH_TOKENIZER" not in names, (combination, container["name"])
            assert not any("FINTECH_TOKENIZER=" in arg for arg in container.get("args", []))


def test_the_processor_tokenizer_reaches_only_the_operator(helm: Helm, tmp_path: Path) -> None:
    """tokenizer.url gives the operator (and nothing else) the URL, the mounted credential
    and the timeout, which config.py accepts."""
    docs = helm.template(
        {"tokenizer": {"url": "https://processor.example/v1/tokens",
                       "credentialSecret": {"name": "processor", "key": "api-key"},
                       "timeoutSeconds": 5}}
    )  # fmt: skip
    for deployment in find(docs, "Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
        is_operator = deployment["metadata"]["name"].endswith("-operator")
        assert ("FINTECH_TOKENIZER_URL" in env) is is_operator
        assert any(v["name"] == "tokenizer" for v in pod["volumes"]) is is_operator
        if is_operator:
            assert env["FINTECH_TOKENIZER_TOKEN_FILE"] == "/etc/fintech/tokenizer/api-key"
            secret = tmp_path / "api-key"
            secret.write_text("s3cret\n")
            local = {k: v for k, v in env.items() if v is not None}
            loaded = config.load({**local, "FINTECH_TOKENIZER_TOKEN_FILE": str(secret)})
            assert loaded.tokenizer.url == "https://processor.example/v1/tokens"
            assert loaded.tokenizer.timeout_seconds == 5


def test_kafka_security_reaches_every_process_as_settings_and_files(
    helm: Helm, tmp_path: Path
) -> None:
    """SASL_SSL values become the FINTECH_KAFKA_* settings of all three processes, the password
    and CA mounted read-only from their Secrets; config.py accepts what the chart renders. The
    gateway, which never uses Kafka, gets none of it."""
    docs = helm.template(
        kafka_security(
            {
                "protocol": "SASL_SSL",
                "saslMechanism": "SCRAM-SHA-512",
                "username": "fintech",
                "passwordSecret": {"name": "kafka-user"},
                "tlsSecret": {"name": "kafka-ca", "certKey": "user.crt", "keyKey": "user.key"},
            }
        )
    )
    for deployment in find(docs, "Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        container = pod["containers"][0]
        volumes = {v["name"]: v.get("secret", {}).get("secretName") for v in pod["volumes"]}
        if deployment["metadata"]["name"].endswith("-gateway"):
            # The gateway never talks to Kafka: it gets neither the settings nor the secrets.
            assert not {"kafka-sasl", "kafka-tls"} & volumes.keys()
            assert not [e for e in container["env"] if "KAFKA" in e["name"]]
            continue
        assert volumes["kafka-sasl"] == "kafka-user"
        assert volumes["kafka-tls"] == "kafka-ca"
        mounts = {m["name"]: m for m in container["volumeMounts"]}
        assert mounts["kafka-sasl"]["readOnly"]
        assert mounts["kafka-tls"]["readOnly"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert "FINTECH_KAFKA_SASL_PASSWORD" not in env  # only ever a file
        local: dict[str, str] = {}
        for name, value in env.items():
            if value is None:
                continue
            local[name] = value
            if any(value.startswith(m["mountPath"] + "/") for m in mounts.values()):
                path = tmp_path / value.removeprefix("/")
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text("x\n")
                local[name] = str(path)
        loaded = config.load(local)
        assert (loaded.kafka.security_protocol, loaded.kafka.sasl_mechanism) == (
            "SASL_SSL",
            "SCRAM-SHA-512",
        )
        assert loaded.kafka.ssl_cert_file.endswith("kafka-tls/user.crt")
    plain = helm.template({})
    for deployment in find(plain, "Deployment"):
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        assert not [e for e in container["env"] if e["name"].startswith("FINTECH_KAFKA_")]


@pytest.mark.parametrize(
    ("values", "path"), [(v, p) for _, v, p in BAD_VALUES], ids=[i for i, _, _ in BAD_VALUES]
)
def test_schema_refuses_bad_values(helm: Helm, values: dict[str, Any], path: str) -> None:
    """values.schema.json stops the render and names what is wrong."""
    result = helm("template", "fin", str(CHART), "-f", helm.values_file(values), check=False)
    assert result.returncode != 0, result.stdout[:500]
    assert "schema" in result.stderr, result.stderr
    assert path in result.stderr, result.stderr


def _hook_run(script: str, url: str, timeout_seconds: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", script],
        env={"HEALTH_URL": url, "TIMEOUT_SECONDS": str(timeout_seconds)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_helm_test_hook_waits_for_the_operator_then_gives_up(helm: Helm) -> None:
    """The `helm test` hook's own script, as rendered: it asks again until /healthz answers
    200 (an operator still starting), and fails after tests.timeoutSeconds with each
    attempt's error in its log (an operator that never starts)."""
    hook = one(helm.template({"tests": {"timeoutSeconds": 3}}), "Pod", "-test")
    container = hook["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["TIMEOUT_SECONDS"] == "3"
    script = container["command"][2]

    with socket.socket() as probe:  # a loopback port nobody listens on
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    failed = _hook_run(script, f"http://127.0.0.1:{closed_port}/healthz", 3)
    assert failed.returncode == 1, failed.stdout
    assert failed.stdout.count("Connection refused") >= 2, failed.stdout
    assert "not healthy within 3 s" in failed.stdout

    class Healthy(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            return

    server = http.server.HTTPServer(("127.0.0.1", 0), Healthy)
    port = server.server_address[1]
    server.socket.close()  # refused until the "operator" starts listening below

    def start_late() -> None:
        time.sleep(2.5)
        server.socket = socket.create_server(("127.0.0.1", port))
        server.serve_forever()

    threading.Thread(target=start_late, daemon=True).start()
    try:
        waited = _hook_run(script, f"http://127.0.0.1:{port}/healthz", 30)
    finally:
        server.shutdown()
        server.server_close()
    assert waited.returncode == 0, waited.stdout
    assert "Connection refused" in waited.stdout
    assert waited.stdout.rstrip().endswith("/healthz 200")


def test_default_policies_render_only_with_their_crds(helm: Helm) -> None:
    """Each default resource renders when the chart ships its kind's CRD, and otherwise fails
    the render with a message naming the missing CRD (never a half-installed release)."""
    shipped = {p.name.split(".")[0] for p in (REPO_ROOT / "crds").glob("*.yaml")}
    for key, kind, plural in (
        ("cardProduct", "CardProduct", "cardproducts"),
        ("riskPolicy", "RiskPolicy", "riskpolicies"),
        ("compliancePolicy", "CompliancePolicy", "compliancepolicies"),
    ):
        values = {"defaults": {"namespaces": ["a", "b"], key: {"enabled": True, "spec": {}}}}
        result = helm("template", "fin", str(CHART), "-f", helm.values_file(values), check=False)
        if plural in shipped:
            assert result.returncode == 0, result.stderr
            rendered = find(parse_docs(result.stdout), kind)
            assert sorted(d["metadata"]["namespace"] for d in rendered) == ["a", "b"]
        else:
            assert f"ships no CRD for {plural}" in result.stderr


def _snake(camel: str) -> str:
    return re.sub(r"(?<!^)([A-Z])", r"_\1", camel).lower()


def test_config_values_are_real_settings_with_the_same_bounds() -> None:
    """Every `config` key the schema accepts is a setting of config.py with its exact bounds."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    props = schema["properties"]["config"]["properties"]
    # The chart turns `config.dbPoolMaxSize` into FINTECH_DB_POOL_MAX_SIZE.
    fields = {field.env: field.info for field in config.fields()}
    for key, rule in props.items():
        name = config.ENV_PREFIX + _snake(key).upper()
        assert name in fields, f"config.{key} is not a setting of fintech_operator/config.py"
        expected: dict[str, Any] = {}
        for meta in fields[name].metadata:
            for attr, word in (
                ("ge", "minimum"),
                ("gt", "exclusiveMinimum"),
                ("le", "maximum"),
                ("pattern", "pattern"),
            ):
                if getattr(meta, attr, None) is not None:
                    expected[word] = getattr(meta, attr)
        bounds = ("minimum", "exclusiveMinimum", "maximum", "pattern")
        actual = {word: rule[word] for word in bounds if word in rule}
        assert actual == expected, key
        kind = {int: "integer", float: "number", str: "string"}[fields[name].annotation]
        assert rule["type"] == kind, key


# Settings the chart sets from values of their own (database roles and the migration
# password, Kafka security, the probe's host and port, peering, metrics, the tokenizer): not
# `config` keys. Peering priority stays random (equal priorities on replicas are a mistake).
SET_BY_THE_CHART: Final = frozenset(
    {
        "FINTECH_MIGRATION_DATABASE_URL",
        "FINTECH_MIGRATION_DATABASE_PASSWORD",
        "FINTECH_DATABASE_RUNTIME_ROLE",
        "FINTECH_DATABASE_GATEWAY_ROLE",
        "FINTECH_KAFKA_SECURITY_PROTOCOL",
        "FINTECH_KAFKA_SASL_MECHANISM",
        "FINTECH_KAFKA_SASL_USERNAME",
        "FINTECH_KAFKA_SASL_PASSWORD",
        "FINTECH_KAFKA_SASL_PASSWORD_FILE",
        "FINTECH_KAFKA_SSL_CA_FILE",
        "FINTECH_KAFKA_SSL_CERT_FILE",
        "FINTECH_KAFKA_SSL_KEY_FILE",
        "FINTECH_HEALTH_HOST",
        "FINTECH_HEALTH_PORT",
        "FINTECH_PEERING_NAME",
        "FINTECH_PEERING_PRIORITY",
        "FINTECH_METRICS_PORT",
        "FINTECH_TOKENIZER",
        "FINTECH_TOKENIZER_URL",
        "FINTECH_TOKENIZER_TOKEN_FILE",
        "FINTECH_TOKENIZER_TIMEOUT_SECONDS",
    }
)


def test_every_other_setting_is_a_config_value() -> None:
    """docs/configuration.md: `config:` sets every FINTECH_* setting the chart does not set
    from its own values (recon, posting queue, log level and retention were missing)."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    keys = {
        config.ENV_PREFIX + _snake(key).upper()
        for key in schema["properties"]["config"]["properties"]
    }
    settings = {f.env for f in config.fields() if f.env.startswith(config.ENV_PREFIX)}
    missing = settings - SET_BY_THE_CHART - keys
    assert not missing, f"add {sorted(missing)} to values.schema.json's config or SET_BY_THE_CHART"
    assert keys & SET_BY_THE_CHART == set()


def test_settings_become_environment_variables(helm: Helm) -> None:
    """`config: {dbPoolMaxSize: 16}` reaches the operator and consumers as
    FINTECH_DB_POOL_MAX_SIZE=16."""
    docs = helm.template({"config": {"dbPoolMaxSize": 16, "cardRefreshIntervalSeconds": 2.5}})
    # The gateway has its own settings (gateway.* values), tested with the gateway.
    for deployment in find(docs, "Deployment"):
        if deployment["metadata"]["name"].endswith("-gateway"):
            continue
        env = {
            e["name"]: e.get("value")
            for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]
        }
        assert env["FINTECH_DB_POOL_MAX_SIZE"] == "16"
        assert env["FINTECH_CARD_REFRESH_INTERVAL_SECONDS"] == "2.5"
        loaded = config.load({k: v for k, v in env.items() if v is not None})
        assert loaded.database.pool_size_max == 16


def _rules(role: dict[str, Any]) -> list[dict[str, Any]]:
    return sorted(role["rules"], key=json.dumps)


def test_rbac_scopes_grant_the_same_rules_and_namespace_scope_nothing_cluster_wide(
    helm: Helm,
) -> None:
    """A Role per watched namespace carries exactly the ClusterRole's rules; namespace scope
    renders no cluster-scoped object at all."""
    cluster = helm.template({})
    scoped = helm.template(external(["payments", "treasury"]))
    assert not {d["kind"] for d in scoped} & CLUSTER_SCOPED_KINDS
    for component in ("operator", "notifier"):
        cluster_rules = _rules(one(cluster, "ClusterRole", component))
        roles = find(scoped, "Role", component)
        assert sorted(r["metadata"]["namespace"] for r in roles) == ["payments", "treasury"]
        for role in roles:
            peering = [r for r in _rules(role) if r["apiGroups"] == ["kopf.dev"]]
            same = [r for r in _rules(role) if r["apiGroups"] != ["kopf.dev"]]
            assert same == [r for r in cluster_rules if r["apiGroups"] != ["kopf.dev"]]
            assert all(r["resources"] == ["kopfpeerings"] for r in peering)


def test_operator_rbac_covers_every_kind_and_writes_only_status(helm: Helm) -> None:
    """Every shipped kind is watchable and its status patchable; the only other writes are a
    posting's TTL delete, a schedule's runs, Events and the operator's own peering object."""
    role = one(helm.template({}), "ClusterRole", "operator")
    plurals = sorted(
        yaml.safe_load(p.read_text())["spec"]["names"]["plural"]
        for p in (REPO_ROOT / "crds").glob("*.yaml")
    )
    grants: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                grants.setdefault((group, resource), set()).update(rule["verbs"])
    for plural in plurals:
        assert grants[("fintech.dev", plural)] >= {"get", "list", "watch", "patch"}
        assert grants[("fintech.dev", f"{plural}/status")] == {"get", "patch"}
    writes = {
        key: verbs & {"create", "update", "delete", "deletecollection"}
        for key, verbs in grants.items()
    }
    assert {k: v for k, v in writes.items() if v} == {
        ("fintech.dev", "postings"): {"delete"},
        ("fintech.dev", "reconciliationruns"): {"create", "delete"},
        ("", "events"): {"create"},
    }
    assert grants[("", "secrets")] == {"get"}
    assert grants[("", "configmaps")] == {"get"}
    assert "*" not in json.dumps(role["rules"])


def test_one_operator_at_a_time(helm: Helm) -> None:
    """The operator rolls out with Recreate and joins a peering object the chart creates."""
    docs = helm.template({"operator": {"replicas": 2}})
    deployment = one(docs, "Deployment", "-operator")
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    env = {e["name"]: e for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    peering = one(docs, "ClusterKopfPeering")
    assert env["FINTECH_PEERING_NAME"]["value"] == peering["metadata"]["name"]
    assert env["POD_ID"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    scoped = helm.template(external(["payments"]))
    assert one(scoped, "KopfPeering")["metadata"]["namespace"] == "payments"


def test_default_product_goes_where_the_operator_watches(helm: Helm) -> None:
    """The default CardProduct lands in the release namespace in cluster scope, in every
    watched namespace in namespace scope, and wherever defaults.namespaces says otherwise."""

    def places(values: dict[str, Any]) -> list[str]:
        docs = helm.template(values, namespace="fintech-system")
        return sorted(d["metadata"]["namespace"] for d in find(docs, "CardProduct"))

    assert places({}) == ["fintech-system"]
    assert places(external(["payments", "treasury"])) == ["payments", "treasury"]
    assert places({"defaults": {"namespaces": ["cards-eu"]}}) == ["cards-eu"]
    assert places(
        external(["payments", "treasury"]) | {"defaults": {"namespaces": ["treasury"]}}
    ) == ["treasury"]


def test_default_product_outside_the_watched_namespaces_is_refused(helm: Helm) -> None:
    """In namespace scope a default CardProduct in a namespace the operator does not watch
    would never become Ready (no Role there, no watch): the render stops naming both lists.
    Without the check the chart installed it there, and it stayed without a phase."""
    values = external(["payments", "treasury"]) | {"defaults": {"namespaces": ["cards-eu"]}}
    result = helm("template", "fin", str(CHART), "-f", helm.values_file(values), check=False)
    assert result.returncode != 0, result.stdout[:500]
    assert (
        "defaults.namespaces: cards-eu is not one of watchNamespaces (payments, treasury)"
        in result.stderr
    ), result.stderr


def test_every_pod_is_hardened_and_bounded(helm: Helm) -> None:
    """Each container runs non-root on a read-only root, no capabilities, with a memory limit,
    and each long-running one has liveness and readiness probes."""
    docs = helm.template({})
    pods = [
        (d["kind"], d["spec"]["template"]["spec"])
        for d in docs
        if d["kind"] in ("Deployment", "StatefulSet")
    ] + [("Pod", one(docs, "Pod")["spec"])]
    assert len(pods) == 7
    for kind, pod in pods:
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        for container in pod["containers"]:
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True
            assert security["allowPrivilegeEscalation"] is False
            assert security["capabilities"]["drop"] == ["ALL"]
            assert container["resources"]["limits"]["memory"]
            if kind != "Pod":
                assert container["livenessProbe"]
                assert container["readinessProbe"]


def test_data_outlives_the_release(helm: Helm) -> None:
    """Volumes are retained when StatefulSets go, the generated password and the default
    product are kept by Helm on uninstall, and the rewards consumer gets no API token."""
    docs = helm.template({})
    for statefulset in find(docs, "StatefulSet"):
        assert statefulset["spec"]["persistentVolumeClaimRetentionPolicy"] == {
            "whenDeleted": "Retain",
            "whenScaled": "Retain",
        }
    secret = one(docs, "Secret", "-postgresql")
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    product = one(docs, "CardProduct")
    assert product["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert product["metadata"]["annotations"]["argocd.argoproj.io/sync-wave"] == "-1"
    rewards = one(docs, "Deployment", "-rewards")["spec"]["template"]["spec"]
    assert rewards["automountServiceAccountToken"] is False


def test_bundled_services_match_the_tested_platform(helm: Helm) -> None:
    """The bundled Kafka runs the version and settings the local platform tests with, the
    bundled PostgreSQL the tested major version, and the image tag is the package version."""
    docs = helm.template({})
    kafka = one(docs, "StatefulSet", "-kafka")["spec"]["template"]["spec"]["containers"][0]
    assert kafka["image"] == f"apache/kafka:{versions.KAFKA_VERSION}"
    properties = one(docs, "ConfigMap", "-kafka")["data"]["server.properties"]
    chart_keys = {line.split("=", 1)[0] for line in properties.splitlines() if line}
    pki = certs.KafkaPki(Path("/ca.pem"), Path("/broker.pem"), Path("/c.pem"), Path("/k.pem"))
    # The local broker also has SASL and TLS client listeners (to test the product's Kafka
    # security); the bundled one is PLAINTEXT inside the release's NetworkPolicy.
    tested = "".join(
        f"{line}\n"
        for line in platform._kafka_properties(
            platform.Ports(), Path("/data"), pki, "x"
        ).splitlines()
        if not line.startswith(("sasl.", "ssl.", "listener.name."))
    )
    assert chart_keys == {line.split("=", 1)[0] for line in tested.splitlines() if line}
    for line in tested.splitlines():
        key, value = line.split("=", 1)
        if "listener" not in key and "voters" not in key and key != "log.dirs":
            assert f"{key}={value}" in properties.splitlines()
    postgres = one(docs, "StatefulSet", "-postgresql")["spec"]["template"]["spec"]
    tag = postgres["containers"][0]["image"].split(":")[1]
    installed = sorted(Path("/usr/lib/postgresql").iterdir())[-1].name
    assert tag.split(".")[0] == installed
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["appVersion"] == pyproject["project"]["version"]
    operator = one(docs, "Deployment", "-operator")["spec"]["template"]["spec"]["containers"][0]
    assert operator["image"].endswith(f":{chart['appVersion']}")


def test_kafka_cluster_id_is_stable_and_valid(helm: Helm) -> None:
    """The KRaft cluster id is the same on every render (no Argo CD drift) and is 16 bytes."""

    def cluster_id(release: str) -> str:
        docs = helm.template({}, release=release)
        container = one(docs, "StatefulSet", "-kafka")["spec"]["template"]["spec"]["containers"]
        env = {e["name"]: e["value"] for e in container[0]["env"] if "value" in e}
        return env["KAFKA_CLUSTER_ID"]

    first, again, other = cluster_id("fin"), cluster_id("fin"), cluster_id("other")
    assert first == again
    assert first != other
    assert len(first) == 22
    assert len(base64.urlsafe_b64decode(first + "==")) == 16
    assert base64.urlsafe_b64encode(base64.urlsafe_b64decode(first + "==")).decode()[:22] == first


def test_service_monitor_scrapes_the_metrics_port(helm: Helm) -> None:
    """The optional ServiceMonitor selects the metrics Service by its labels and port name,
    and that Service selects exactly the four processes' pods."""
    docs = helm.template({"metrics": {"serviceMonitor": {"enabled": True}}})
    monitor = one(docs, "ServiceMonitor")
    service = one(docs, "Service", "-metrics")
    labels = service["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]
    selected = [
        d
        for d in find(docs, "Deployment") + find(docs, "StatefulSet")
        if service["spec"]["selector"].items()
        <= d["spec"]["template"]["metadata"]["labels"].items()
    ]
    assert sorted(d["metadata"]["name"].rsplit("-", 1)[1] for d in selected) == [
        "gateway",
        "notifier",
        "operator",
        "rewards",
    ]
    assert not find(helm.template({}), "ServiceMonitor")


def test_helm_test_hook_asks_the_operator_service(helm: Helm) -> None:
    """The `helm test` pod calls /healthz on the operator's Service, which targets the probe."""
    docs = helm.template({})
    pod = one(docs, "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    service = one(docs, "Service", "-operator")
    env = {e["name"]: e["value"] for e in pod["spec"]["containers"][0]["env"]}
    assert env["HEALTH_URL"] == f"http://{service['metadata']['name']}.fin.svc:8080/healthz"
    assert env["TIMEOUT_SECONDS"] == "120"
    assert service["spec"]["ports"][0]["targetPort"] == "health"


def test_dashboards_ship_as_configmaps_for_grafana(helm: Helm) -> None:
    """With metrics.dashboards.enabled, each dashboards/*.json becomes a ConfigMap with the
    sidecar label, holding the file unchanged."""
    docs = helm.template({"metrics": {"dashboards": {"enabled": True}}})
    files = sorted((CHART / "dashboards").glob("*.json"))
    assert files
    maps = [d for d in find(docs, "ConfigMap") if "grafana_dashboard" in d["metadata"]["labels"]]
    shipped = {key: json.loads(value) for m in maps for key, value in m["data"].items()}
    assert shipped == {f.name: json.loads(f.read_text()) for f in files}
    assert not [d for d in find(helm.template({}), "ConfigMap") if "dashboards" in str(d)]


def test_network_policies_admit_exactly_the_release_processes(helm: Helm) -> None:
    """PostgreSQL and Kafka admit pods that carry the release's process labels, which the three
    processes have and the databases themselves (and other releases) do not."""
    docs = helm.template({})
    for component in ("postgresql", "kafka"):
        policy = one(docs, "NetworkPolicy", f"-{component}")
        selector = policy["spec"]["ingress"][0]["from"][0]["podSelector"]
        peer = selector["matchLabels"]
        admitted = sorted(
            d["metadata"]["name"].rsplit("-", 1)[1]
            for d in find(docs, "Deployment") + find(docs, "StatefulSet")
            if selects(selector, d["spec"]["template"]["metadata"]["labels"])
        )
        # The gateway needs the ledger, never Kafka (its events leave through the outbox).
        expected = ["notifier", "operator", "rewards"]
        expected += ["gateway"] if component == "postgresql" else []
        assert admitted == sorted(expected), component
        assert peer["app.kubernetes.io/instance"] == "fin"


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A label selector's verdict on ``labels`` (matchLabels, In and NotIn expressions)."""
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    for expression in selector.get("matchExpressions", []):
        inside = labels.get(expression["key"]) in expression["values"]
        if inside != (expression["operator"] == "In"):
            return False
    return True


def gateway_env(deployment: dict[str, Any]) -> dict[str, Any]:
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def test_gateway_is_two_stateless_replicas_without_api_token_or_kafka(helm: Helm) -> None:
    """By default: 2 replicas that roll one at a time, a PDB, probes on /healthz and /readyz,
    no service-account token, no Kafka settings, and the settings the gateway really loads."""
    docs = helm.template({})
    deployment = one(docs, "Deployment", "-gateway")
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert pod["automountServiceAccountToken"] is False
    assert container["args"] == ["gateway"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert one(docs, "PodDisruptionBudget", "-gateway")["spec"]["maxUnavailable"] == 1
    assert one(docs, "Service", "-gateway")["spec"]["ports"][0]["port"] == 8088
    assert not find(docs, "HorizontalPodAutoscaler")
    env = gateway_env(deployment)
    assert not [name for name in env if "KAFKA" in name]
    loaded = gateway_settings.load({k: v for k, v in env.items() if isinstance(v, str)})
    assert (loaded.gateway.host, loaded.gateway.port, loaded.gateway.deadline_ms) == (
        "0.0.0.0",  # noqa: S104 - in the pod
        8088,
        1500,
    )
    assert (loaded.gateway.in_flight_max, loaded.gateway.queue_max) == (64, 1024)
    assert "FINTECH_GATEWAY_QUEUE_WAIT_MS" not in env  # two thirds of the deadline
    assert loaded.gateway.queue_wait_seconds == 1.0
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert loaded.gateway.signing_secret_file == mounts["signing"] + "/secret"


def test_gateway_autoscaler_below_its_minimum_is_refused_before_install(helm: Helm) -> None:
    """maxReplicas under gateway.replicas (the HPA's minReplicas) stops the render with both
    names; without this the API server refused the HPA mid-upgrade, after the Deployment had
    already lost its replica count (seen on the node: the gateway ran one replica)."""
    low = {"gateway": {"replicas": 3, "autoscaling": {"enabled": True, "maxReplicas": 2}}}
    result = helm("template", "fin", str(CHART), "-f", helm.values_file(low), check=False)
    assert result.returncode != 0, result.stdout[:500]
    assert "gateway.autoscaling.maxReplicas (2) is below gateway.replicas (3)" in result.stderr
    equal = {"gateway": {"replicas": 3, "autoscaling": {"enabled": True, "maxReplicas": 3}}}
    hpa = one(helm.template(equal), "HorizontalPodAutoscaler", "-gateway")["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (3, 3)


def test_gateway_queue_wait_at_or_past_the_deadline_is_refused_before_install(
    helm: Helm,
) -> None:
    """A queue wait the deadline leaves no time after stops the render with both names (the
    gateway itself would refuse to start on it); below the deadline both reach its env."""
    for wait in (1500, 2000):
        late = {"gateway": {"deadlineMs": 1500, "queueWaitMs": wait}}
        result = helm("template", "fin", str(CHART), "-f", helm.values_file(late), check=False)
        assert result.returncode != 0, result.stdout[:500]
        expected = f"gateway.queueWaitMs ({wait}) must be less than gateway.deadlineMs (1500)"
        assert expected in result.stderr
    fine = {"gateway": {"deadlineMs": 1500, "queueWaitMs": 1499, "queueMax": 0}}
    env = gateway_env(one(helm.template(fine), "Deployment", "-gateway"))
    assert (env["FINTECH_GATEWAY_QUEUE_WAIT_MS"], env["FINTECH_GATEWAY_QUEUE_MAX"]) == ("1499", "0")


def _notes(helm: Helm, values: dict[str, Any]) -> str:
    out = helm(
        "install", "fin", str(CHART), "-n", "fin", "--dry-run=client",
        "-f", helm.values_file(values),
    ).stdout  # fmt: skip
    return out.split("NOTES:", 1)[1]


def test_notes_tell_how_the_processor_reaches_the_gateway(
    helm: Helm, chart_crds_installed: None
) -> None:
    """NOTES.txt names the gateway's address, the command that reads the signing secret for
    the processor, and warns when the gateway's NetworkPolicy admits nobody (the README's
    install sets no processor namespace, and NetworkPolicies are enforced on most clusters)."""
    notes = _notes(helm, {})
    assert "http://fin-fintech-operator-gateway.fin.svc:8088/v1/authorizations" in notes
    assert (
        "kubectl -n fin get secret fin-fintech-operator-gateway-signing"
        " -o jsonpath='{.data.secret}' | base64 -d"
    ) in notes
    assert "WARNING: the gateway's NetworkPolicy admits nobody" in notes
    assert "and the gateway's signing Secret" in notes
    admitted = {
        "gateway": {
            "networkPolicy": {"processorNamespaces": ["processor"]},
            "tls": {"secretName": "gateway-tls"},
            "signing": {"existingSecret": "mine", "key": "whsec"},
        }
    }
    notes = _notes(helm, admitted)
    assert "https://fin-fintech-operator-gateway.fin.svc:8088/v1/authorizations" in notes
    assert "get secret mine -o jsonpath='{.data.whsec}'" in notes
    assert "admits nobody" not in notes
    assert "gateway's signing Secret" not in notes
    notes = _notes(helm, {"gateway": {"enabled": False}})
    assert "gateway" not in notes
    assert "3. Upgrading the chart later?" in notes


def test_gateway_mtls_mounts_what_the_gateway_loads_and_probes_tcp(helm: Helm) -> None:
    """With tls.secretName and tls.clientCA: the certificate, key and client CA are mounted
    where the settings the gateway loads point, the workers are set, and the probes are TCP
    checks (the kubelet has no client certificate); with tls only, they are HTTPS."""
    deployment = one(helm.template({"gateway": GATEWAY_MTLS}), "Deployment", "-gateway")
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    loaded = gateway_settings.load(
        {k: v for k, v in gateway_env(deployment).items() if isinstance(v, str)}
    )
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    secrets = {v["name"]: v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
    assert loaded.gateway.workers == 3
    assert (loaded.gateway.tls_cert_file, loaded.gateway.tls_key_file) == (
        mounts["tls"] + "/tls.crt",
        mounts["tls"] + "/tls.key",
    )
    assert loaded.gateway.tls_client_ca_file == mounts["client-ca"] + "/ca"
    assert (secrets["tls"], secrets["client-ca"]) == ("gateway-tls", "processor-ca")
    assert container["livenessProbe"]["tcpSocket"] == {"port": "http"}
    assert container["readinessProbe"]["tcpSocket"] == {"port": "http"}
    https_only = {"tls": {"secretName": "gateway-tls", "clientCA": {"secretName": ""}}}
    plain_ca = one(helm.template({"gateway": https_only}), "Deployment", "-gateway")
    probe = plain_ca["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]
    assert (probe["httpGet"]["path"], probe["httpGet"]["scheme"]) == ("/readyz", "HTTPS")
    assert (
        gateway_settings.load(
            {k: v for k, v in gateway_env(plain_ca).items() if isinstance(v, str)}
        ).gateway.tls_client_ca_file
        is None
    )


def test_gateway_signing_secret_is_generated_as_a_valid_key_and_kept(helm: Helm) -> None:
    """The generated Secret holds a whsec_ key the gateway accepts, and survives uninstall."""
    secret = one(helm.template({}), "Secret", "-gateway-signing")
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    text = base64.b64decode(secret["data"]["secret"]).decode()
    assert len(gateway_trust.parse_secrets(text)) == 1
    given = helm.template({"gateway": {"signing": {"existingSecret": "mine", "key": "k"}}})
    assert not find(given, "Secret", "-gateway-signing")
    volume = [
        v
        for v in one(given, "Deployment", "-gateway")["spec"]["template"]["spec"]["volumes"]
        if v["name"] == "signing"
    ]
    assert volume[0]["secret"]["secretName"] == "mine"


def test_only_the_processor_reaches_the_gateway(helm: Helm) -> None:
    """The gateway's NetworkPolicy admits the processor's namespaces and CIDRs on its port,
    and nobody when none is given."""
    closed = one(helm.template({}), "NetworkPolicy", "-gateway")
    assert closed["spec"]["ingress"] == []
    docs = helm.template({"gateway": GATEWAY_OWN_ROLE})
    policy = one(docs, "NetworkPolicy", "-gateway")
    (rule,) = policy["spec"]["ingress"]
    assert rule["ports"] == [{"port": 8088, "protocol": "TCP"}]
    assert rule["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "processor"}}},
        {"ipBlock": {"cidr": "10.20.0.0/16"}},
    ]
    assert policy["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "gateway"


def test_gateway_own_role_reaches_the_gateway_and_its_grant_the_operator(helm: Helm) -> None:
    """With its own role: the gateway connects as it (password from its Secret), the operator
    (who migrates) is told to grant it, and the HPA replaces the fixed replica count."""
    values = external() | {
        "externalDatabase": {
            **external()["externalDatabase"],
            "migration": {"url": "postgresql://owner@db:5432/fintech", "existingSecret": "o"},
            "runtimeRole": "fintech_runtime",
        },
        "gateway": GATEWAY_OWN_ROLE,
    }
    docs = helm.template(values)
    gateway = one(docs, "Deployment", "-gateway")
    env = gateway_env(gateway)
    assert env["DATABASE_URL"].startswith("postgresql://fintech_gateway@")
    assert env["PGPASSWORD"]["secretKeyRef"]["name"] == "gateway-db"
    assert "replicas" not in gateway["spec"]
    hpa = one(docs, "HorizontalPodAutoscaler", "-gateway")
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 5)
    operator_env = gateway_env(one(docs, "Deployment", "-operator"))
    assert operator_env["FINTECH_DATABASE_GATEWAY_ROLE"] == "fintech_gateway"
    assert (
        config.load(
            {k: v for k, v in operator_env.items() if isinstance(v, str)}
        ).database.gateway_role
        == "fintech_gateway"
    )
    for other in ("-rewards", "-notifier"):
        assert "FINTECH_DATABASE_GATEWAY_ROLE" not in gateway_env(one(docs, "Deployment", other))
