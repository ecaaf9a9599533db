"""The real local platform: etcd, kube-apiserver, PostgreSQL and Kafka on 127.0.0.1.

One ``Platform`` owns one state directory. ``start`` brings every part up and
returns only when each answers its own readiness check; ``stop`` stops exactly the
processes it recorded (checked against their command line) and nothing else. The
test fixtures and the ``stack`` CLI both use this class, so tests run on the same
code a developer runs.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import fcntl
import json
import os
import pwd
import secrets
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import httpx

from fintech_devstack import build, certs, ports, versions

READY_TIMEOUT_SECONDS = 180.0
# The platform's processes in start order (PostgreSQL is pg_ctl's, apart); stopped in reverse.
PROCESS_PARTS: Final = ("etcd", "apiserver", "controller-manager", "kafka")
# The controllers of the platform's own kube-controller-manager (see _start_controller_manager).
PLATFORM_CONTROLLERS: Final = ("namespace-controller", "garbage-collector-controller")
CONTROLLER_MANAGER_READY_LINES: Final = (
    '"Starting namespace controller"',
    '"Proceeding to collect garbage"',
)
STOP_TIMEOUT_SECONDS = 30.0
POLL_INTERVAL_SECONDS = 0.25
KAFKA_HEAP = "-Xmx768m"
DATABASE_NAME = "fintech"
PG_SUPERUSER = "postgres"
# The one Kafka user of the SASL listeners; its password is made per platform.
KAFKA_USERNAME = "fintech"
KAFKA_SCRAM_MECHANISMS = ("SCRAM-SHA-256", "SCRAM-SHA-512")
KAFKA_TOOL_TIMEOUT_SECONDS = 120


class PlatformError(RuntimeError):
    """A part failed; the message says which part, why, and where its log is."""


# The ports live in their own module (chosen, remembered in ports.json, checked); the name
# stays here because the tests and benchmarks build platforms with ``platform.Ports``.
Ports = ports.Ports


def builtin_state_dir() -> Path:
    """The state directory of a shell without ``FINTECH_STACK_DIR``: world-traversable so the
    unprivileged PostgreSQL user can reach its data."""
    return ports.machine_dir() / "dev"


def default_state_dir() -> Path:
    """``FINTECH_STACK_DIR`` when set, else :func:`builtin_state_dir`."""
    configured = os.environ.get("FINTECH_STACK_DIR")
    if configured:
        return Path(configured)
    return builtin_state_dir()


def reap_orphans(base: Path, keep: tuple[str, ...] = ("dev",)) -> list[Path]:
    """Stop and delete platforms under ``base`` whose owning process is gone.

    Only directories with a state file naming an owner pid are touched, and never the
    ones named in ``keep`` (a developer's long-lived platform outlives its starter).
    Sessions starting together (pytest-xdist workers) reap one after the other, under a
    lock: two stopping the same orphan would each find half of it deleted by the other.
    """
    if not base.is_dir():
        return []
    with (base / "reap.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _reap_unlocked(base, keep)


def _reap_unlocked(base: Path, keep: tuple[str, ...]) -> list[Path]:
    reaped: list[Path] = []
    for state_dir in sorted(base.iterdir()):
        state_file = state_dir / "platform.json"
        if state_dir.name in keep or not state_file.is_file():
            continue
        try:
            owner = int(json.loads(state_file.read_text()).get("owner_pid", 0))
        except (ValueError, OSError):
            continue
        if owner <= 0 or Path(f"/proc/{owner}").exists():
            continue
        Platform.load(state_dir, reserve=False).stop()
        shutil.rmtree(state_dir, ignore_errors=True)
        reaped.append(state_dir)
    return reaped


def _say(message: str) -> None:
    print(f"[stack] {message}", file=sys.stderr, flush=True)


def _wait(
    what: str,
    log: Path,
    check: object,
    timeout_seconds: float,
    proc: subprocess.Popen[bytes] | None = None,
) -> None:
    """Poll ``check`` until it returns True; fail naming the part and its log.

    A process that exits while we wait fails at once: waiting out the timeout would
    only hide the reason, which is in its log.
    """
    deadline = time.monotonic() + timeout_seconds
    last_error = "not ready"
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = " | ".join(log.read_text(errors="replace").strip().splitlines()[-3:])
            raise PlatformError(
                f"{what} exited with code {proc.returncode} while starting: "
                f"{tail[-600:]}; log: {log}"
            )
        try:
            if check():  # type: ignore[operator]
                return
        except Exception as exc:
            last_error = f"{type(exc).__name__}: {exc}"
        time.sleep(POLL_INTERVAL_SECONDS)
    raise PlatformError(
        f"{what} did not become ready in {timeout_seconds:.0f}s ({last_error}); log: {log}"
    )


class Platform:
    """Start, check and stop the real components (etcd, kube-apiserver, its controller-manager,
    PostgreSQL, Kafka) under one state directory."""

    def __init__(
        self,
        state_dir: Path,
        ports: Ports | None = None,
        *,
        fast_disk: bool = False,
        reapable: bool = True,
        kube_controllers: bool = True,
    ):
        self.state_dir = state_dir
        self.ports = ports or Ports()
        # Tests trade durability for speed; a developer's platform keeps fsync on.
        self.fast_disk = fast_disk
        # A throwaway platform (tests, benchmarks) dies with its starter; a developer's
        # (`stack up`, `dev`, any --state-dir) outlives it and is never reaped.
        self.reapable = reapable
        # Run kube-controller-manager's namespace and garbage-collector controllers (see
        # _start_controller_manager). The test workers' platforms leave them out: the suite
        # deletes each test's namespace without waiting, and a namespace controller would then
        # delete that namespace's Cards through the still running operator behind the next test.
        self.kube_controllers = kube_controllers
        self.logs = state_dir / "logs"
        self.pids: dict[str, int] = {}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    # ---- paths and connection details -------------------------------------------------

    @property
    def kubeconfig(self) -> Path:
        return self.state_dir / "kubeconfig"

    @property
    def env_file(self) -> Path:
        return self.state_dir / "env.sh"

    @property
    def database_url(self) -> str:
        return self.database_url_for(DATABASE_NAME)

    def database_url_for(self, database: str) -> str:
        return f"postgresql://{PG_SUPERUSER}@127.0.0.1:{self.ports.postgres}/{database}"

    @property
    def kafka_bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.ports.kafka}"

    @property
    def kafka_password_file(self) -> Path:
        """The password of :data:`KAFKA_USERNAME`, one line, readable by its owner only."""
        return self.state_dir / "kafka" / "client.password"

    @property
    def kafka_pki(self) -> certs.KafkaPki:
        return certs.KafkaPki.at(self.state_dir / "pki")

    def kafka_client_env(self, protocol: str, mechanism: str = "SCRAM-SHA-512") -> dict[str, str]:
        """The product's settings that reach this platform's Kafka listener of ``protocol``.

        Merged into a process environment they replace KAFKA_BOOTSTRAP_SERVERS, so the
        product connects exactly as it would to a cluster that requires this protocol.
        """
        ports = {
            "PLAINTEXT": self.ports.kafka,
            "SASL_PLAINTEXT": self.ports.kafka_sasl,
            "SASL_SSL": self.ports.kafka_sasl_ssl,
            "SSL": self.ports.kafka_ssl,
        }
        env = {
            "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{ports[protocol]}",
            "FINTECH_KAFKA_SECURITY_PROTOCOL": protocol,
        }
        if protocol.startswith("SASL_"):
            env["FINTECH_KAFKA_SASL_MECHANISM"] = mechanism
            env["FINTECH_KAFKA_SASL_USERNAME"] = KAFKA_USERNAME
            env["FINTECH_KAFKA_SASL_PASSWORD_FILE"] = str(self.kafka_password_file)
        if protocol.endswith("SSL"):
            env["FINTECH_KAFKA_SSL_CA_FILE"] = str(self.kafka_pki.ca_cert)
        if protocol == "SSL":  # This listener requires a client certificate.
            env["FINTECH_KAFKA_SSL_CERT_FILE"] = str(self.kafka_pki.client_cert)
            env["FINTECH_KAFKA_SSL_KEY_FILE"] = str(self.kafka_pki.client_key)
        return env

    def env(self, binaries: build.Binaries) -> dict[str, str]:
        """The variables a shell, a test or the operator needs to reach the platform.

        The FINTECH_STACK_KAFKA_* ones describe the listeners that need a login or TLS;
        the product never reads them (docs/operations.md shows how to point it there).
        """
        path_dirs = _path_dirs(binaries)
        pki = self.kafka_pki
        return {
            "KUBECONFIG": str(self.kubeconfig),
            "DATABASE_URL": self.database_url,
            "KAFKA_BOOTSTRAP_SERVERS": self.kafka_bootstrap_servers,
            "FINTECH_STACK_KAFKA_SASL_BOOTSTRAP": f"127.0.0.1:{self.ports.kafka_sasl}",
            "FINTECH_STACK_KAFKA_SASL_SSL_BOOTSTRAP": f"127.0.0.1:{self.ports.kafka_sasl_ssl}",
            "FINTECH_STACK_KAFKA_SSL_BOOTSTRAP": f"127.0.0.1:{self.ports.kafka_ssl}",
            "FINTECH_STACK_KAFKA_USERNAME": KAFKA_USERNAME,
            "FINTECH_STACK_KAFKA_PASSWORD_FILE": str(self.kafka_password_file),
            "FINTECH_STACK_KAFKA_CA_FILE": str(pki.ca_cert),
            "FINTECH_STACK_KAFKA_CLIENT_CERT_FILE": str(pki.client_cert),
            "FINTECH_STACK_KAFKA_CLIENT_KEY_FILE": str(pki.client_key),
            # Written by `dev`'s gateway on first start; `fintech-operator gateway sign` reads it.
            "FINTECH_GATEWAY_SIGNING_SECRET_FILE": str(self.state_dir / "gateway-signing.secret"),
            "PATH": os.pathsep.join([*path_dirs, os.environ.get("PATH", "")]),
        }

    # ---- lifecycle ----------------------------------------------------------------------

    def start(self) -> build.Binaries:
        """Build what is missing, then start every part and wait until each is ready."""
        binaries = build.ensure_all()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.state_dir.chmod(0o755)
        self.logs.mkdir(exist_ok=True)
        ports.save(self.state_dir, self.ports)
        self._save()
        # Said before anything starts, with the holder's pid: a part that cannot bind would
        # only exit with its own, less clear, message.
        try:
            where = f"platform {self.state_dir}"
            ports.check_free(self.ports, ports.PLATFORM_PORTS, where, self.state_dir)
        except ports.PortTaken as exc:
            raise PlatformError(str(exc)) from None
        try:
            self._start_etcd(binaries)
            self._start_apiserver(binaries)
            if self.kube_controllers:
                self._start_controller_manager(binaries)
            self._start_postgres()
            self._start_kafka(binaries)
        except BaseException:
            self.stop()
            raise
        self._write_env(binaries)
        return binaries

    def stop(self) -> None:
        """Stop what this platform started, newest first; leave everything else alone."""
        state = self._load()
        for name in reversed(PROCESS_PARTS):
            pid = state.get(name)
            if pid:
                _terminate(name, pid, str(self.state_dir))
            proc = self.procs.pop(name, None)
            if proc is not None:
                # Reap our own child so Python does not warn that it is still running.
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=STOP_TIMEOUT_SECONDS)
        pgdata = self.state_dir / "pg" / "data"
        if (pgdata / "postmaster.pid").exists():
            _say(f"stopping postgres ({pgdata})")  # said like the others: pg_ctl stops it
            _pg(["pg_ctl", "-D", str(pgdata), "-m", "fast", "-w", "stop"], check=False)
        self.pids = {}
        if self.state_dir.exists():
            self._save()

    def status(self) -> dict[str, str]:
        """Each part's liveness as a short word, for ``stack status``."""
        state = self._load()
        # Every part is listed, started or not, so a stopped platform says so per part.
        result = {
            name: ("running" if _alive(state.get(name, 0), str(self.state_dir)) else "stopped")
            for name in PROCESS_PARTS
            if self.kube_controllers or name != "controller-manager"
        }
        pgdata = self.state_dir / "pg" / "data"
        running = _pg(["pg_ctl", "-D", str(pgdata), "status"], check=False).returncode == 0
        result["postgres"] = "running" if running else "stopped"
        return result

    # ---- state file ---------------------------------------------------------------------

    def _save(self) -> None:
        # The owner is the process that started the platform: a test session that is
        # killed leaves its platform behind, and the next session reaps it by this pid.
        # A developer's platform records no owner (0), so no session ever reaps it.
        data = {"pids": self.pids, "owner_pid": os.getpid() if self.reapable else 0}
        (self.state_dir / "platform.json").write_text(json.dumps(data, indent=2))

    def _load(self) -> dict[str, int]:
        path = self.state_dir / "platform.json"
        if not path.exists():
            return {}
        pids: dict[str, int] = json.loads(path.read_text()).get("pids", {})
        return pids

    @classmethod
    def load(cls, state_dir: Path, *, reserve: bool = True) -> Platform:
        """The platform recorded in ``state_dir``, on its remembered ports (new ones chosen
        for a new state directory: the documented ones for the default directory when free
        and not reserved for another directory; see :func:`ports.fill`). ``reserve=False``
        for a caller that will not start it: new ports are then not reserved."""
        prefer_defaults = state_dir.resolve() == default_state_dir().resolve()
        chosen = ports.load(state_dir, prefer_defaults=prefer_defaults, reserve=reserve)
        return cls(state_dir, chosen, reapable=False)

    def _spawn(self, name: str, cmd: list[str], env: dict[str, str] | None = None) -> Path:
        log = self.logs / f"{name}.log"
        with log.open("ab") as sink:
            proc = subprocess.Popen(
                cmd,
                stdout=sink,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env=env,
                cwd=self.state_dir,
            )
        self.pids[name] = proc.pid
        self.procs[name] = proc
        self._save()
        return log

    # ---- etcd ---------------------------------------------------------------------------

    def _start_etcd(self, binaries: build.Binaries) -> None:
        _say(f"starting etcd v{versions.ETCD_VERSION} on 127.0.0.1:{self.ports.etcd_client}")
        client = f"http://127.0.0.1:{self.ports.etcd_client}"
        peer = f"http://127.0.0.1:{self.ports.etcd_peer}"
        cmd = [
            str(binaries.etcd),
            "--name=fintech",
            f"--data-dir={self.state_dir / 'etcd'}",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=fintech={peer}",
            "--log-level=warn",
            f"--unsafe-no-fsync={'true' if self.fast_disk else 'false'}",
        ]
        log = self._spawn("etcd", cmd)
        _wait(
            "etcd",
            log,
            lambda: httpx.get(f"{client}/health", timeout=2).is_success,
            60,
            self.procs["etcd"],
        )

    # ---- kube-apiserver -----------------------------------------------------------------

    def _start_apiserver(self, binaries: build.Binaries) -> None:
        _say(
            f"starting kube-apiserver v{versions.KUBERNETES_VERSION} on "
            f"https://127.0.0.1:{self.ports.apiserver}"
        )
        pki_dir = self.state_dir / "pki"
        pki = _load_or_generate_pki(pki_dir)
        port = self.ports.apiserver
        cmd = [
            str(binaries.kube_apiserver),
            f"--etcd-servers=http://127.0.0.1:{self.ports.etcd_client}",
            f"--cert-dir={pki_dir}",
            f"--tls-cert-file={pki.serving_cert}",
            f"--tls-private-key-file={pki.serving_key}",
            f"--client-ca-file={pki.ca_cert}",
            f"--secure-port={port}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            "--authorization-mode=RBAC",
            "--service-cluster-ip-range=10.0.0.0/24",
            f"--service-account-issuer=https://127.0.0.1:{port}",
            f"--service-account-key-file={pki.sa_pub}",
            f"--service-account-signing-key-file={pki.sa_key}",
            "--allow-privileged=true",
            "--profiling=false",
            "--endpoint-reconciler-type=none",
            # `stack node`'s kubelet is reached at its address (logs, exec); no DNS knows it.
            "--kubelet-preferred-address-types=InternalIP",
        ]
        log = self._spawn("apiserver", cmd)
        self._write_kubeconfig(pki)
        context = ssl.create_default_context(cafile=str(pki.ca_cert))
        context.load_cert_chain(str(pki.admin_cert), str(pki.admin_key))
        url = f"https://127.0.0.1:{port}/readyz"

        def ready() -> bool:
            return httpx.get(url, verify=context, timeout=3).is_success

        _wait("kube-apiserver", log, ready, READY_TIMEOUT_SECONDS, self.procs["apiserver"])

    # ---- kube-controller-manager --------------------------------------------------------

    def _start_controller_manager(self, binaries: build.Binaries) -> None:
        """The two controllers a cluster without nodes still needs, so the platform behaves
        like one: the namespace controller (a deleted namespace's objects are deleted, then
        the namespace itself, instead of staying Terminating forever) and the garbage
        collector (a deleted owner's dependents go, e.g. a ReconciliationSchedule's runs).
        Nothing is served (``--secure-port=0``), so it takes no port; `stack node up` runs
        every other controller in its own controller-manager."""
        _say("starting kube-controller-manager (namespace and garbage collector controllers)")
        cmd = [
            str(binaries.kube_controller_manager),
            f"--kubeconfig={self.kubeconfig}",
            f"--controllers={','.join(PLATFORM_CONTROLLERS)}",
            "--leader-elect=false",
            "--use-service-account-credentials=false",
            "--secure-port=0",
        ]
        log = self._spawn("controller-manager", cmd)

        def ready() -> bool:
            # What the pinned release logs once each controller runs (the garbage collector
            # after its informers synced); test_platform.py proves both then work.
            text = log.read_text(errors="replace")
            return all(line in text for line in CONTROLLER_MANAGER_READY_LINES)

        _wait(
            "kube-controller-manager",
            log,
            ready,
            READY_TIMEOUT_SECONDS,
            self.procs["controller-manager"],
        )

    def _write_kubeconfig(self, pki: certs.ApiserverPki) -> None:
        def b64(path: Path) -> str:
            return base64.b64encode(path.read_bytes()).decode()

        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "fintech-local",
                    "cluster": {
                        "server": f"https://127.0.0.1:{self.ports.apiserver}",
                        "certificate-authority-data": b64(pki.ca_cert),
                    },
                }
            ],
            "users": [
                {
                    "name": "admin",
                    "user": {
                        "client-certificate-data": b64(pki.admin_cert),
                        "client-key-data": b64(pki.admin_key),
                    },
                }
            ],
            "contexts": [
                {
                    "name": "fintech-local",
                    "context": {
                        "cluster": "fintech-local",
                        "user": "admin",
                        "namespace": "default",
                    },
                }
            ],
            "current-context": "fintech-local",
        }
        self.kubeconfig.write_text(json.dumps(config, indent=2))
        self.kubeconfig.chmod(0o600)

    # ---- PostgreSQL ---------------------------------------------------------------------

    def _start_postgres(self) -> None:
        _ensure_postgres_installed()
        _say(f"starting PostgreSQL {_pg_version()} on 127.0.0.1:{self.ports.postgres}")
        home = self.state_dir / "pg"
        home.mkdir(exist_ok=True)
        _chown_to_pg_user(home)
        data, log = home / "data", self.logs / "postgres.log"
        if not (data / "PG_VERSION").exists():
            _pg(
                [
                    "initdb",
                    "-D",
                    str(data),
                    "--auth=trust",
                    f"--username={PG_SUPERUSER}",
                    "--encoding=UTF8",
                    "--no-locale",
                    "--no-sync",
                ]
            )
        options = [
            f"-p {self.ports.postgres}",
            f"-k {home}",
            "-c listen_addresses=127.0.0.1",
            "-c max_connections=300",
        ]
        if self.fast_disk:
            options += ["-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"]
        _chown_to_pg_user(log, create=True)
        result = _pg(
            [
                "pg_ctl",
                "-D",
                str(data),
                "-l",
                str(log),
                "-w",
                "-t",
                "120",
                "-o",
                " ".join(options),
                "start",
            ],
            check=False,
        )
        if result.returncode != 0:
            raise PlatformError(f"postgres failed to start: {result.stdout.strip()}; log: {log}")
        self._create_database(DATABASE_NAME)

    def _create_database(self, name: str) -> None:
        import psycopg  # noqa: PLC0415 - only the platform needs it at this point

        with psycopg.connect(self.database_url_for("postgres"), autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            if exists.fetchone() is None:
                conn.execute(f'CREATE DATABASE "{name}"')

    # ---- Kafka --------------------------------------------------------------------------

    def _start_kafka(self, binaries: build.Binaries) -> None:
        _say(
            f"starting Apache Kafka {versions.KAFKA_VERSION} (KRaft) on "
            f"{self.kafka_bootstrap_servers}"
        )
        home = self.state_dir / "kafka"
        home.mkdir(exist_ok=True)
        pki = self.kafka_pki
        if not pki.exists():
            certs.generate_kafka(pki.ca_cert.parent)
        # A platform formatted before the SASL listeners existed has no password yet; its
        # user is added through the running broker below instead of at format time.
        registered = self.kafka_password_file.exists()
        password = (
            self.kafka_password_file.read_text().strip()
            if registered
            else secrets.token_urlsafe(24)
        )
        properties = home / "server.properties"
        properties.write_text(_kafka_properties(self.ports, home / "data", pki, password))
        properties.chmod(0o600)  # It holds the PLAIN login's password.
        (home / "log4j2.properties").write_text(_LOG4J2)
        classpath = f"{binaries.kafka_libs}/*"
        java = [
            _java(),
            KAFKA_HEAP,
            "-XX:+UseG1GC",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={home / 'log4j2.properties'}",
            "-cp",
            classpath,
        ]
        if not (home / "data" / "meta.properties").exists():
            cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
            fmt = [
                *java,
                "kafka.tools.StorageTool",
                "format",
                # One argument, not two: a base64 id may start with "-", which the
                # tool's parser would otherwise read as an option.
                f"--cluster-id={cluster_id}",
                f"--config={properties}",
                # KRaft keeps SCRAM users in the metadata log: written here, they exist
                # from the broker's first second, with no extra JVM start.
                *(
                    f"--add-scram={mechanism}=[name={KAFKA_USERNAME},password={password}]"
                    for mechanism in KAFKA_SCRAM_MECHANISMS
                ),
            ]
            result = subprocess.run(
                fmt, capture_output=True, text=True, timeout=KAFKA_TOOL_TIMEOUT_SECONDS, check=False
            )
            if result.returncode != 0:
                raise PlatformError(
                    f"kafka storage format failed: {result.stdout}{result.stderr}".replace(
                        password, "***"
                    )
                )
            registered = True
        log = self._spawn("kafka", [*java, "kafka.Kafka", str(properties)])
        bootstrap = self.kafka_bootstrap_servers
        _wait(
            "kafka",
            log,
            lambda: asyncio.run(_kafka_ready(bootstrap)),
            READY_TIMEOUT_SECONDS,
            self.procs["kafka"],
        )
        if not registered:
            self._add_kafka_user(java, password)
        self.kafka_password_file.write_text(password + "\n")
        self.kafka_password_file.chmod(0o600)
        secured = self.kafka_client_env("SASL_SSL")
        _wait(
            "kafka SASL_SSL listener",
            log,
            lambda: asyncio.run(_kafka_secured_ready(self.database_url, secured)),
            READY_TIMEOUT_SECONDS,
            self.procs["kafka"],
        )

    def _add_kafka_user(self, java: list[str], password: str) -> None:
        """Give a platform formatted without SCRAM users its user, through the live broker."""
        _say(f"adding Kafka user {KAFKA_USERNAME} to a platform formatted before SASL")
        # One request may alter a user's credential once, so one run per mechanism.
        for mechanism in KAFKA_SCRAM_MECHANISMS:
            cmd = [
                *java,
                "org.apache.kafka.tools.ConfigCommand",
                f"--bootstrap-server={self.kafka_bootstrap_servers}",
                "--alter",
                "--entity-type=users",
                f"--entity-name={KAFKA_USERNAME}",
                f"--add-config={mechanism}=[password={password}]",
            ]
            result = subprocess.run(
                cmd,
                capture_output=True,
                text=True,
                timeout=KAFKA_TOOL_TIMEOUT_SECONDS,
                check=False,
            )
            if result.returncode != 0:
                output = f"{result.stdout}{result.stderr}".replace(password, "***")
                raise PlatformError(f"kafka: adding user {KAFKA_USERNAME} failed: {output}")

    # ---- env file -----------------------------------------------------------------------

    def _write_env(self, binaries: build.Binaries) -> None:
        env = self.env(binaries)
        path_value = os.pathsep.join([*_path_dirs(binaries), "$PATH"])
        lines = [
            f"export {key}={shlex.quote(value)}" for key, value in env.items() if key != "PATH"
        ]
        lines.append(f'export PATH="{path_value}"')
        self.env_file.write_text("\n".join(lines) + "\n")


_LOG4J2 = """\
status = warn
appender.console.type = Console
appender.console.name = STDOUT
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.console.ref = STDOUT
logger.kafka.name = kafka
logger.kafka.level = WARN
logger.org.name = org.apache.kafka
logger.org.level = WARN
"""


def _kafka_properties(ports: Ports, data_dir: Path, pki: certs.KafkaPki, password: str) -> str:
    # Clients use the PLAINTEXT listener unless they ask for another; the broker and its
    # controller talk PLAINTEXT among themselves, as before the secured listeners existed.
    client_listeners = {
        "PLAINTEXT": ports.kafka,
        "SASL_PLAINTEXT": ports.kafka_sasl,
        "SASL_SSL": ports.kafka_sasl_ssl,
        "SSL": ports.kafka_ssl,
    }
    advertised = ",".join(f"{name}://127.0.0.1:{port}" for name, port in client_listeners.items())
    settings = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@127.0.0.1:{ports.kafka_controller}",
        "listeners": f"{advertised},CONTROLLER://127.0.0.1:{ports.kafka_controller}",
        "advertised.listeners": advertised,
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,"
        + ",".join(f"{name}:{name}" for name in client_listeners),
        **_kafka_security_properties(pki, password),
        "log.dirs": str(data_dir),
        "num.partitions": "3",
        # One node: every internal topic must fit on a single replica.
        "offsets.topic.replication.factor": "1",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
        # The product creates its topics explicitly with known partitions and configs.
        "auto.create.topics.enable": "false",
    }
    return "".join(f"{key}={value}\n" for key, value in settings.items())


def _kafka_security_properties(pki: certs.KafkaPki, password: str) -> dict[str, str]:
    """SCRAM users live in the metadata log; PLAIN's one user is declared in its JAAS line."""
    scram_module = "org.apache.kafka.common.security.scram.ScramLoginModule required;"
    plain_module = (
        "org.apache.kafka.common.security.plain.PlainLoginModule required "
        f'user_{KAFKA_USERNAME}="{password}";'
    )
    jaas: dict[str, str] = {}
    for listener in ("sasl_plaintext", "sasl_ssl"):
        jaas[f"listener.name.{listener}.plain.sasl.jaas.config"] = plain_module
        for mechanism in KAFKA_SCRAM_MECHANISMS:
            jaas[f"listener.name.{listener}.{mechanism.lower()}.sasl.jaas.config"] = scram_module
    return {
        "sasl.enabled.mechanisms": ",".join(("PLAIN", *KAFKA_SCRAM_MECHANISMS)),
        **jaas,
        # PEM files straight from stack/certs.py: no keytool, no keystore password.
        "ssl.keystore.type": "PEM",
        "ssl.keystore.location": str(pki.broker_pem),
        "ssl.truststore.type": "PEM",
        "ssl.truststore.location": str(pki.ca_cert),
        # The SSL listener authenticates clients by certificate; SASL_SSL by login only.
        "listener.name.ssl.ssl.client.auth": "required",
    }


async def _kafka_secured_ready(database_url: str, env: dict[str, str]) -> bool:
    """The SASL_SSL listener accepts the platform's user, through the product's own options."""
    from aiokafka.admin import AIOKafkaAdminClient  # noqa: PLC0415 - heavy import, used late

    from fintech_operator import config  # noqa: PLC0415 - the platform needs no settings before
    from fintech_operator.events import kafka  # noqa: PLC0415

    settings = config.load({"DATABASE_URL": database_url, **env})
    admin = AIOKafkaAdminClient(**kafka.client_options(settings), request_timeout_ms=3000)
    try:
        await kafka.start(admin, settings, 5)
        cluster = await asyncio.wait_for(admin.describe_cluster(), timeout=5)
        return bool(cluster.get("brokers"))
    finally:
        await admin.close()


async def _kafka_ready(bootstrap: str) -> bool:
    from aiokafka.admin import AIOKafkaAdminClient  # noqa: PLC0415 - heavy import, used late

    host, port = bootstrap.rsplit(":", 1)
    # A plain connect first: the admin client logs an error for every refused attempt.
    with socket.create_connection((host, int(port)), timeout=2):
        pass
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=3000)
    try:
        await asyncio.wait_for(admin.start(), timeout=5)
        cluster = await asyncio.wait_for(admin.describe_cluster(), timeout=5)
        return bool(cluster.get("brokers"))
    finally:
        await admin.close()


def _java() -> str:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").exists():
        return str(Path(java_home) / "bin" / "java")
    found = shutil.which("java")
    if found is None:
        raise PlatformError("kafka: no java on PATH; install a JDK 17 or newer")
    return found


def _load_or_generate_pki(directory: Path) -> certs.ApiserverPki:
    if (directory / "sa.pub").exists():
        return certs.ApiserverPki(
            *(
                directory / n
                for n in (
                    "ca.crt",
                    "apiserver.crt",
                    "apiserver.key",
                    "admin.crt",
                    "admin.key",
                    "sa.key",
                    "sa.pub",
                )
            )
        )
    return certs.generate(directory)


# ---- process helpers ------------------------------------------------------------------------


def _alive(pid: int, marker: str) -> bool:
    """True when ``pid`` runs and is ours: its command line names our state directory."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return False
    return marker in cmdline and Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def _terminate(name: str, pid: int, marker: str) -> None:
    if not _alive(pid, marker):
        return
    _say(f"stopping {name} (pid {pid})")
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
    while time.monotonic() < deadline and _alive(pid, marker):
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.1)
    if _alive(pid, marker):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


# ---- PostgreSQL helpers ---------------------------------------------------------------------


def _pg_bin() -> Path:
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), reverse=True)
    if not candidates:
        raise PlatformError("postgres: no server binaries under /usr/lib/postgresql")
    return candidates[0].parent


def _pg_version() -> str:
    out = subprocess.run(
        [str(_pg_bin() / "postgres"), "--version"],
        capture_output=True,
        text=True,
        check=True,
        timeout=10,
    )
    # "postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)": the third word is the version.
    return out.stdout.split()[2]


def _pg_user() -> str | None:
    """PostgreSQL refuses to run as root; as root we run it as the distribution's user."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("postgres")
    except KeyError as exc:
        raise PlatformError("postgres: running as root but no 'postgres' user exists") from exc
    return "postgres"


def _chown_to_pg_user(path: Path, *, create: bool = False) -> None:
    if create and not path.exists():
        path.touch()
    user = _pg_user()
    if user is not None:
        entry = pwd.getpwnam(user)
        os.chown(path, entry.pw_uid, entry.pw_gid)


def _pg(args: list[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    cmd = [str(_pg_bin() / args[0]), *args[1:]]
    user = _pg_user()
    if user is not None:
        cmd = ["runuser", "-u", user, "--", *cmd]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=False, cwd="/")
    if check and result.returncode != 0:
        raise PlatformError(f"postgres: {' '.join(args[:2])} failed: {result.stderr.strip()}")
    return result


def _ensure_postgres_installed() -> None:
    """Install Debian's PostgreSQL server when missing, without its default cluster."""
    if list(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl")):
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise PlatformError("postgres: server not installed; run: apt-get install postgresql")
    _say("installing PostgreSQL from Debian's packages (first time only)")
    conf = Path("/etc/postgresql-common/createcluster.d")
    conf.mkdir(parents=True, exist_ok=True)
    # We initdb our own cluster; the package's default one would squat on port 5432.
    (conf / "fintech-operator.conf").write_text("create_main_cluster = false\n")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (
        ["apt-get", "update", "-q"],
        ["apt-get", "install", "-y", "-q", "--no-install-recommends", "postgresql"],
    ):
        subprocess.run(cmd, check=True, env=env, timeout=900)


def _path_dirs(binaries: build.Binaries) -> list[str]:
    """kubectl, etcd and helm, PostgreSQL's tools, and this interpreter's scripts folder,
    where ``fintech-operator`` is (the project's virtualenv under ``make``)."""
    scripts = Path(sys.executable).parent
    return [*(str(p) for p in binaries.bin_dirs), str(_pg_bin()), str(scripts)]


@contextlib.contextmanager
def throwaway(prefix: str = "bench-", *, fast_disk: bool = True) -> Iterator[Platform]:
    """A private platform on free ports in a temporary state directory (by default with the
    tests' fast disk, as in CI), stopped and removed afterwards: for benchmarks that must not
    touch ``make dev``'s. ``fast_disk=False`` keeps PostgreSQL's fsync, for real latencies."""
    state = default_state_dir().parent / f"{prefix}{uuid.uuid4().hex[:6]}"
    plat = Platform(state, Ports.free(), fast_disk=fast_disk)
    plat.start()
    try:
        yield plat
    finally:
        plat.stop()
        shutil.rmtree(state, ignore_errors=True)
