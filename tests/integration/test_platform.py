"""The local platform itself: real components, RBAC on, clean start and stop."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psycopg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from fintech_devstack import build, platform, versions
from tests.conftest import Kubectl, RunningPlatform

pytestmark = pytest.mark.integration


def _our_processes(marker: str) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if marker in cmdline:
            pids.append(int(proc.name))
    return pids


def test_apiserver_is_the_pinned_release_with_rbac(kubectl: Kubectl) -> None:
    """The server reports the pinned version and RBAC refuses an unprivileged user."""
    out = kubectl("version", "-o", "json").stdout
    assert f'"gitVersion": "v{versions.KUBERNETES_VERSION}"' in out
    assert kubectl("auth", "can-i", "create", "pods").stdout.strip() == "yes"
    denied = kubectl("auth", "can-i", "list", "secrets", "--as=nobody", check=False)
    assert denied.stdout.strip() == "no"


def test_postgres_runs_as_a_non_root_user(platform_running: RunningPlatform) -> None:
    """The server is a real PostgreSQL whose process owner is not root."""
    with psycopg.connect(platform_running.database_url) as conn:
        version = conn.execute("SHOW server_version_num").fetchone()
        data_dir = conn.execute("SHOW data_directory").fetchone()
    assert version is not None
    assert int(version[0]) >= versions.POSTGRES_MAJOR * 10_000
    assert data_dir is not None
    assert Path(data_dir[0]).stat().st_uid != 0


async def test_kafka_round_trip(platform_running: RunningPlatform) -> None:
    """A message produced with acks=all is consumed back from a real broker."""
    bootstrap = platform_running.kafka_bootstrap_servers
    topic = f"t-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"hello", key=b"k")
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=topic,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        record = await asyncio.wait_for(consumer.getone(), 30)
    finally:
        await consumer.stop()
    assert record.value == b"hello"


def test_up_then_down_leaves_no_process(platform_running: RunningPlatform) -> None:
    """A second platform, as `stack up` and `make dev` start it (with its controller-manager),
    starts beside the session's, behaves like a cluster's control plane, and stops without
    leaving a process."""
    state = platform.default_state_dir().parent / f"updown-{uuid.uuid4().hex[:6]}"
    plat = platform.Platform(state, platform.Ports.free(), fast_disk=True)
    binaries = plat.start()
    try:
        assert set(plat.status()) == {
            "etcd",
            "apiserver",
            "controller-manager",
            "kafka",
            "postgres",
        }
        assert set(plat.status().values()) == {"running"}
        assert len(_our_processes(str(state))) >= 5
        _namespace_and_owner_deletions_complete(plat, binaries)
    finally:
        plat.stop()
    assert _our_processes(str(state)) == []
    assert set(plat.status().values()) == {"stopped"}
    assert set(platform_running.platform.status().values()) == {"running"}
    shutil.rmtree(state)


def _namespace_and_owner_deletions_complete(
    plat: platform.Platform, binaries: build.Binaries
) -> None:
    """The controller-manager's two controllers at work: a deleted namespace goes with what
    is in it (not Terminating forever), and a deleted owner takes its dependents with it (a
    ReconciliationSchedule's runs, docs/reconciliation.md)."""

    def kubectl(*args: str, stdin: str | None = None) -> str:
        cmd = [str(binaries.kubectl), f"--kubeconfig={plat.kubeconfig}", *args]
        return subprocess.run(cmd, input=stdin, capture_output=True, text=True, check=True).stdout

    repo = Path(__file__).resolve().parents[2]
    kubectl("apply", "--server-side", "-f", str(repo / "crds"))
    kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd", "--all")
    kubectl("create", "namespace", "gone")
    kubectl("create", "-n", "gone", "configmap", "inside", "--from-literal=k=v")
    kubectl("create", "namespace", "owners")
    schedule = {
        "apiVersion": "fintech.dev/v1alpha1",
        "kind": "ReconciliationSchedule",
        "metadata": {"name": "nightly", "namespace": "owners"},
        "spec": {"schedule": "0 2 * * *", "template": {"checks": ["TrialBalance"]}},
    }
    kubectl("apply", "-f", "-", stdin=json.dumps(schedule))
    uid = kubectl("get", "-n", "owners", "rsched", "nightly", "-o", "jsonpath={.metadata.uid}")
    run = {
        "apiVersion": "fintech.dev/v1alpha1",
        "kind": "ReconciliationRun",
        "metadata": {
            "name": "nightly-1",
            "namespace": "owners",
            "ownerReferences": [{"apiVersion": "fintech.dev/v1alpha1",
                                 "kind": "ReconciliationSchedule", "name": "nightly",
                                 "uid": uid, "controller": True}],
        },
        "spec": {"checks": ["TrialBalance"]},
    }  # fmt: skip
    kubectl("apply", "-f", "-", stdin=json.dumps(run))

    # kubectl waits for the namespace to be gone: it returns only if the controller ran.
    kubectl("delete", "namespace", "gone", "--timeout=60s")
    assert "gone" not in kubectl("get", "namespaces", "-o", "name").split()
    kubectl("delete", "-n", "owners", "rsched", "nightly", "--timeout=60s")
    deadline = time.monotonic() + 60
    while kubectl("get", "-n", "owners", "recon", "-o", "name").strip():
        assert time.monotonic() < deadline, "the schedule's run outlived it by 60 s"
        time.sleep(0.5)


def test_a_failing_part_names_itself_and_its_log() -> None:
    """When etcd cannot start (its data directory is a file), start fails naming etcd and its
    log, and cleans up."""
    state = platform.default_state_dir().parent / f"fail-{uuid.uuid4().hex[:6]}"
    state.mkdir(parents=True)
    (state / "etcd").write_text("not a directory")
    plat = platform.Platform(state, platform.Ports.free(), fast_disk=True)
    with pytest.raises(platform.PlatformError, match=r"etcd.*log: .*etcd\.log"):
        plat.start()
    assert _our_processes(str(state)) == []
    shutil.rmtree(state)


def test_a_taken_port_is_named_with_the_process_holding_it() -> None:
    """Before starting anything, a port the platform wants that another process listens on
    is refused with its number, its name and the holder's pid and command line."""
    ports = platform.Ports.free()
    state = platform.default_state_dir().parent / f"taken-{uuid.uuid4().hex[:6]}"
    plat = platform.Platform(state, ports, fast_disk=True)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", ports.postgres))
        squatter.listen()
        with pytest.raises(platform.PlatformError) as refused:
            plat.start()
    message = str(refused.value)
    assert f"port {ports.postgres} (postgres) is taken by pid {os.getpid()} (" in message
    assert "pytest" in message or sys.executable in message
    assert "another --state-dir" in message
    assert _our_processes(str(state)) == []
    assert not (state / "logs" / "etcd.log").exists()
    shutil.rmtree(state)


def test_orphaned_platforms_are_reaped(tmp_path: Path) -> None:
    """A platform whose owner died is stopped and deleted; live owners and dev are kept."""
    dead = subprocess.Popen(["true"])
    dead.wait()
    owners = {"orphan": dead.pid, "alive": os.getpid(), "dev": dead.pid}
    for name, owner in owners.items():
        (tmp_path / name).mkdir()
        state = {"pids": {}, "ports": {}, "owner_pid": owner}
        (tmp_path / name / "platform.json").write_text(json.dumps(state))
    (tmp_path / "no-state-file").mkdir()
    assert platform.reap_orphans(tmp_path) == [tmp_path / "orphan"]
    # Only directories: reaping takes a lock file in the base directory (xdist workers reap
    # one after the other).
    kept = sorted(p.name for p in tmp_path.iterdir() if p.is_dir())
    assert kept == ["alive", "dev", "no-state-file"]
    assert (tmp_path / "reap.lock").is_file()


def test_kafka_secured_listeners_are_described_and_their_secrets_kept_private(
    platform_running: RunningPlatform,
) -> None:
    """Besides PLAINTEXT, the broker listens for SASL_PLAINTEXT, SASL_SSL and mutual-TLS SSL
    on loopback; the env file says where and with which user and files; the password, the
    broker's properties (PLAIN's JAAS line) and every key are readable by their owner only."""
    plat = platform_running.platform
    ports = plat.ports
    secured = (ports.kafka_sasl, ports.kafka_sasl_ssl, ports.kafka_ssl)
    assert len({ports.kafka, *secured}) == 4
    for port in secured:
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
    exported = plat.env_file.read_text()
    for line in (
        f"export FINTECH_STACK_KAFKA_SASL_BOOTSTRAP=127.0.0.1:{ports.kafka_sasl}",
        f"export FINTECH_STACK_KAFKA_SASL_SSL_BOOTSTRAP=127.0.0.1:{ports.kafka_sasl_ssl}",
        f"export FINTECH_STACK_KAFKA_SSL_BOOTSTRAP=127.0.0.1:{ports.kafka_ssl}",
        f"export FINTECH_STACK_KAFKA_USERNAME={platform.KAFKA_USERNAME}",
        f"export FINTECH_STACK_KAFKA_PASSWORD_FILE={plat.kafka_password_file}",
        f"export FINTECH_STACK_KAFKA_CA_FILE={plat.kafka_pki.ca_cert}",
    ):
        assert line in exported.splitlines()
    # The default listener and its variable are what they always were.
    assert f"export KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:{ports.kafka}" in exported.splitlines()
    password = plat.kafka_password_file.read_text().strip()
    assert len(password) >= 24
    assert password not in exported
    private = (
        plat.kafka_password_file,
        plat.state_dir / "kafka" / "server.properties",
        plat.kafka_pki.broker_pem,
        plat.kafka_pki.client_key,
    )
    for path in private:
        assert path.stat().st_mode & 0o077 == 0, path


def test_env_file_puts_the_tools_and_the_product_on_path(
    platform_running: RunningPlatform, tmp_path: Path
) -> None:
    """After `eval "$(fintech-operator stack env)"` a shell finds kubectl, helm, psql and
    fintech-operator itself (README's first five minutes), ahead of anything else."""
    tools = "kubectl helm psql fintech-operator"
    script = f'. {platform_running.platform.env_file} && for t in {tools}; do command -v "$t"; done'
    result = subprocess.run(
        ["bash", "-c", script], env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    found = result.stdout.split()
    assert len(found) == 4, result
    assert found[3] == str(Path(sys.executable).parent / "fintech-operator")
    assert all(not p.startswith(("/usr/bin", "/bin")) for p in found[:2])
