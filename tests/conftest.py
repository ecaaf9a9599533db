"""Fixtures on the real local platform: the same code as ``fintech-operator stack``.

The platform starts once per test session on free loopback ports in its own state
directory, so a developer's ``make dev`` platform is never touched. A component that
fails to start fails every test that needs it: nothing is skipped.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import psycopg
import pytest
from psycopg.conninfo import make_conninfo
from psycopg_pool import AsyncConnectionPool

from fintech_devstack import build, platform, versions
from fintech_operator.ledger import migrate

REPO_ROOT = Path(__file__).resolve().parent.parent
# The cluster tier (a real node, root, minutes) runs only under `make cluster-test`.
collect_ignore = [] if os.environ.get("FINTECH_CLUSTER_TESTS") == "1" else ["cluster"]


class Kubectl(Protocol):
    def __call__(
        self, *args: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]: ...


class RunningPlatform:
    """What tests need to reach the session's platform."""

    def __init__(self, plat: platform.Platform, binaries: build.Binaries) -> None:
        self.platform = plat
        self.binaries = binaries
        self.env: dict[str, str] = {**os.environ, **plat.env(binaries)}
        self.kubeconfig = plat.kubeconfig
        self.database_url = plat.database_url
        self.kafka_bootstrap_servers = plat.kafka_bootstrap_servers

    def database_url_for(self, name: str) -> str:
        return self.platform.database_url_for(name)


def _versions_line(running: RunningPlatform) -> str:
    kubectl = subprocess.run(
        [str(running.binaries.kubectl), "version", "-o", "json"],
        env=running.env,
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    server = re.search(r'"serverVersion":\s*{[^}]*"gitVersion":\s*"([^"]+)"', kubectl.stdout)
    with psycopg.connect(running.database_url) as conn:
        row = conn.execute("SHOW server_version").fetchone()
    etcd = subprocess.run(
        [str(running.binaries.etcd), "--version"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout.split("\n")[0]
    return (
        f"real platform: kube-apiserver {server.group(1) if server else '?'}, "
        f"{etcd.strip()}, PostgreSQL {row[0] if row else '?'}, "
        f"Apache Kafka {versions.KAFKA_VERSION} at {running.kafka_bootstrap_servers}"
    )


PLATFORM_LINE_KEY = "fintech_platform_line"
# Each xdist worker's platform line, gathered by the controller as the workers finish.
_WORKER_PLATFORM_LINES: dict[str, str] = {}


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object | None) -> None:
    """Keep the platform line a finished xdist worker sent (none if it needed no platform)."""
    line = getattr(node, "workeroutput", {}).get(PLATFORM_LINE_KEY)
    if line:
        _WORKER_PLATFORM_LINES[str(node.gateway.id)] = line


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Under xdist, one line per worker's platform, so a CI log proves which real components
    ran (a serial session says it when its platform is up)."""
    for worker, line in sorted(_WORKER_PLATFORM_LINES.items()):
        terminalreporter.write_line(f"[{worker}] {line}")


@pytest.fixture(scope="session")
def platform_running(pytestconfig: pytest.Config) -> Iterator[RunningPlatform]:
    """Start etcd, kube-apiserver, PostgreSQL and Kafka for this session; stop them after."""
    base = platform.default_state_dir().parent
    # Platforms of killed sessions would otherwise run until the machine reboots.
    platform.reap_orphans(base)
    state_dir = base / f"test-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    # No namespace controller: see Platform.kube_controllers (test_platform.py tests them).
    plat = platform.Platform(
        state_dir, platform.Ports.free(), fast_disk=True, kube_controllers=False
    )
    started = time.monotonic()
    binaries = plat.start()
    running = RunningPlatform(plat, binaries)
    reporter = pytestconfig.pluginmanager.get_plugin("terminalreporter")
    line = f"{_versions_line(running)} (up in {time.monotonic() - started:.1f}s)"
    capture = pytestconfig.pluginmanager.get_plugin("capturemanager")
    worker_output: dict[str, Any] | None = getattr(pytestconfig, "workeroutput", None)
    if worker_output is not None:
        # An xdist worker's terminal is not shown: the controller prints the line at the end.
        worker_output[PLATFORM_LINE_KEY] = line
    elif reporter is not None and capture is not None:
        # Said once per session so a CI log proves which real components ran.
        with capture.global_and_fixture_disabled():
            reporter.write_line("\n" + line)
    try:
        yield running
    finally:
        plat.stop()
        if not os.environ.get("FINTECH_KEEP_TEST_PLATFORM"):
            shutil.rmtree(state_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def kubectl(platform_running: RunningPlatform) -> Kubectl:
    """Run the real kubectl against the session's kube-apiserver."""

    def run(
        *args: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        cmd = [str(platform_running.binaries.kubectl), *args]
        result = subprocess.run(
            cmd,
            input=input,
            env=platform_running.env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed: {result.stderr}")
        return result

    return run


@pytest.fixture(scope="session")
def crds_installed(kubectl: Kubectl) -> None:
    """Install the generated CRDs and wait until the API server serves them."""
    kubectl("apply", "--server-side", "-f", str(REPO_ROOT / "crds"))
    kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd", "--all")


@pytest.fixture
def namespace(kubectl: Kubectl) -> Iterator[str]:
    """A fresh namespace per test; deletion is not awaited (there is no namespace controller)."""
    name = f"t-{uuid.uuid4().hex[:10]}"
    kubectl("create", "namespace", name)
    yield name
    kubectl("delete", "namespace", name, "--wait=false", check=False)


def _module_db_name(request: pytest.FixtureRequest) -> str:
    stem = re.sub(r"[^a-z0-9]+", "_", request.module.__name__.lower())[-40:]
    return f"t_{stem}_{uuid.uuid4().hex[:6]}"


@pytest.fixture(scope="module")
def database_url(
    platform_running: RunningPlatform, request: pytest.FixtureRequest
) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test module."""
    name = _module_db_name(request)
    admin = platform_running.database_url_for("postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield platform_running.database_url_for(name)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def migrated_database_url(database_url: str) -> str:
    """A fresh database for one module with every migration applied."""
    from fintech_operator.ledger import migrate  # noqa: PLC0415 - unit runs need no ledger

    migrate.apply(database_url)
    return database_url


@pytest.fixture(scope="module")
async def pool(migrated_database_url: str) -> AsyncIterator[AsyncConnectionPool[Any]]:
    """A small connection pool on the module's migrated database (modules that race many
    postings define their own, larger one)."""
    ledger_pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        migrated_database_url, min_size=1, max_size=4, open=False, timeout=30
    )
    await ledger_pool.open(wait=True, timeout=30)
    yield ledger_pool
    await ledger_pool.close()


@pytest.fixture
def raw(migrated_database_url: str) -> Iterator[psycopg.Connection[Any]]:
    """A plain autocommit connection for raw SQL that bypasses the engine."""
    with psycopg.connect(migrated_database_url, autocommit=True) as conn:
        yield conn


class OperatorProcesses:
    """The operator and the rewards consumer as real subprocesses, logs kept for failures."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.env = env
        self.log_dir = log_dir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, *args: str) -> None:
        cmd = [sys.executable, "-m", "fintech_operator", *args]
        # The child keeps its own copy of the descriptor; ours can close right away.
        with (self.log_dir / f"{name}.log").open("ab") as log:
            self.procs[name] = subprocess.Popen(
                cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT
            )

    def start_operator(self, prefix: str) -> None:
        """``fintech-operator run`` watching the module's namespaces (``<prefix>-*``)."""
        self.start("operator", "run", "--liveness-port", "0", "--namespace", f"{prefix}-*")

    def log(self, name: str) -> str:
        return (self.log_dir / f"{name}.log").read_text(errors="replace")

    def stop(self) -> None:
        for proc in self.procs.values():
            proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


RUNTIME_ROLE = "fintech_runtime"


def schema_migrated_below(database_url: str, version: int | None = None) -> str:
    """A DSN whose search_path is a new schema of ``database_url``: empty, or migrated with
    every shipped migration below ``version`` (a ledger as it stood before that migration)."""
    schema = f"m_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    dsn = make_conninfo(database_url, options=f"-c search_path={schema}")
    if version is not None:
        migrate.apply(dsn, [m for m in migrate.discover() if m.version < version])
    return dsn


def with_user(url: str, user: str) -> str:
    """``postgresql://owner@host:port/db`` as ``user`` (URL form, as the chart's values want)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}@{host}"))


@pytest.fixture(scope="session")
def runtime_role(platform_running: RunningPlatform) -> str:
    """A login role that owns nothing, as production runs the processes (docs/install.md)."""
    with psycopg.connect(platform_running.database_url_for("postgres"), autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (RUNTIME_ROLE,)).fetchone():
            return RUNTIME_ROLE
        conn.execute(f"CREATE ROLE {RUNTIME_ROLE} LOGIN")
    return RUNTIME_ROLE


@pytest.fixture(scope="module")
def operator_env(
    platform_running: RunningPlatform,
    migrated_database_url: str,
    runtime_role: str,
    operator_prefix: str,
) -> dict[str, str]:
    """Environment for product processes: the module's database and topics, the session's Kafka.

    Each module has its own database, so it must have its own topics too: a consumer of
    another module's events would apply them against a database without those cards. The
    processes connect as the runtime role, never the owner, so every e2e test also proves
    that :mod:`fintech_operator.ledger.grants` gives them enough; tests that must write past
    the product's own guards (tampering) use ``migrated_database_url``, the owner's.
    """
    from fintech_operator.ledger import migrate  # noqa: PLC0415 - unit runs need no ledger

    migrate.apply(migrated_database_url, runtime_role=runtime_role)
    return {
        **platform_running.env,
        "DATABASE_URL": with_user(migrated_database_url, runtime_role),
        "FINTECH_MIGRATION_DATABASE_URL": migrated_database_url,
        "FINTECH_DATABASE_RUNTIME_ROLE": runtime_role,
        "FINTECH_TOPIC_PREFIX": f"{operator_prefix}.",
        "FINTECH_HEALTH_PORT": "0",
        # No card processor runs here: the explicit development opt-in (the operator refuses
        # to start without it or FINTECH_TOKENIZER_URL).
        "FINTECH_TOKENIZER": "development",
        "FINTECH_CARD_REFRESH_INTERVAL_SECONDS": "1",
        # Deleted cards' accounts swept often, beside every other test's cards being issued.
        "FINTECH_CARD_ORPHAN_SWEEP_INTERVAL_SECONDS": "2",
        # A posting for a card that never appears is rejected after a few seconds.
        "FINTECH_MISSING_CARD_RETRY_LIMIT": "3",
        "PYTHONUNBUFFERED": "1",
    }


@pytest.fixture(scope="module")
def operator_prefix() -> str:
    """Namespaces of one module share this prefix; the module's operator watches only them.

    Operators of earlier modules are gone, but their objects stay (there is no namespace
    controller to delete them), so each operator must see only its own module's objects.
    """
    return f"m{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def operator_processes(
    operator_env: dict[str, str],
    crds_installed: None,
    operator_prefix: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[OperatorProcesses]:
    """Run ``fintech-operator run`` and ``fintech-operator rewards`` for one module."""
    procs = OperatorProcesses(operator_env, tmp_path_factory.mktemp("operator"))
    group = f"rewards-{operator_prefix}"
    procs.start_operator(operator_prefix)
    procs.start("rewards", "rewards", "--group", group)
    yield procs
    procs.stop()


@pytest.fixture
def op_namespace(kubectl: Kubectl, operator_prefix: str) -> Iterator[str]:
    """A fresh namespace watched by this module's operator."""
    name = f"{operator_prefix}-{uuid.uuid4().hex[:6]}"
    kubectl("create", "namespace", name)
    yield name
    kubectl("delete", "namespace", name, "--wait=false", check=False)


def wait_for(
    what: str, probe: Callable[[], Any], timeout_seconds: float = 60.0, interval: float = 0.3
) -> Any:
    """Poll ``probe`` until it returns a truthy value; fail with ``what`` on timeout."""
    deadline = time.monotonic() + timeout_seconds
    last: Any = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout_seconds}s waiting for {what}; last={last!r}")
