"""The gateway as a real process: ``fintech-operator gateway`` on a free loopback port, its log
kept, its requests signed like the processor signs them."""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import psycopg

from fintech_operator.notify import signing

SECRET = signing.format_secret(b"gateway-integration-secret-32by")
KEY = signing.parse_secret(SECRET)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def signed(body: bytes, *, stamp: int | None = None, key: bytes = KEY) -> dict[str, str]:
    now = int(time.time()) if stamp is None else stamp
    headers = signing.headers(key, f"msg_{uuid.uuid4().hex}", now, body)
    return {**headers, "content-type": "application/json"}


async def post_signed(client: httpx.AsyncClient, path: str, payload: object) -> httpx.Response:
    """A signed POST of ``payload`` as JSON, as the processor sends it."""
    body = json.dumps(payload).encode()
    return await client.post(path, content=body, headers=signed(body))


@contextmanager
def account_locked(database_url: str, account: str) -> Iterator[psycopg.Connection[Any]]:
    """Another connection holding the account's row lock (FOR UPDATE), as a slow transaction
    would: a request on its card waits until ``rollback()`` of the yielded connection, or the
    end of the block."""
    with psycopg.connect(database_url) as blocker:
        blocker.execute("SELECT 1 FROM accounts WHERE code = %s FOR UPDATE", (account,))
        yield blocker


class Gateway:
    """One ``fintech-operator gateway`` process; :meth:`stop` kills it (SIGKILL when asked)."""

    def __init__(
        self,
        database_url: str,
        tmp_dir: Path,
        *,
        client_tls: ssl.SSLContext | None = None,
        **settings: str,
    ) -> None:
        """``client_tls``: speak HTTPS with this context (its CA, and a client certificate
        when the gateway asks for one)."""
        self.port = free_port()
        scheme = "http" if client_tls is None else "https"
        self.base_url = f"{scheme}://127.0.0.1:{self.port}"
        self.verify: ssl.SSLContext | bool = True if client_tls is None else client_tls
        secret_file = tmp_dir / "signing.secret"
        secret_file.write_text(SECRET + "\n")
        self.log_path = tmp_dir / f"gateway-{self.port}.log"
        self.env = {
            **os.environ,
            "DATABASE_URL": database_url,
            "FINTECH_GATEWAY_PORT": str(self.port),
            "FINTECH_GATEWAY_SIGNING_SECRET_FILE": str(secret_file),
            "FINTECH_GATEWAY_DB_POOL_MIN_SIZE": "1",
            "FINTECH_GATEWAY_DB_POOL_MAX_SIZE": "4",
            "FINTECH_LOG_LEVEL": "DEBUG",
            "PYTHONUNBUFFERED": "1",
            **{f"FINTECH_GATEWAY_{k.upper()}": v for k, v in settings.items()},
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Gateway:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "fintech_operator", "gateway"],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"gateway exited: {self.log()}")
            try:
                ready = httpx.get(f"{self.base_url}/readyz", timeout=2, verify=self.verify)
                if ready.status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"gateway not ready in 60 s: {self.log()}")

    def stop(self, *, kill: bool = False) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def client(self, timeout_seconds: float = 30) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=timeout_seconds, verify=self.verify)

    def post(self, path: str, payload: Any, **kw: Any) -> httpx.Response:
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        with self.client() as client:
            return client.post(path, content=body, headers=kw.get("headers") or signed(body))

    def get(self, path: str) -> httpx.Response:
        with self.client() as client:
            return client.get(path, headers=signed(b""))

    def metric(self, name: str, labels: dict[str, str]) -> float:
        """A sample from the gateway's /metrics (0 when absent)."""
        with self.client() as client:
            text = client.get("/metrics").text
        wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        for line in text.splitlines():
            unlabelled = not labels and line.startswith(f"{name} ")
            if unlabelled or (line.startswith(f"{name}{{") and _labels(line) == wanted):
                return float(line.rsplit(" ", 1)[1])
        return 0.0


def _labels(line: str) -> str:
    inner = line[line.index("{") + 1 : line.index("}")]
    return ",".join(sorted(inner.split(","))) if inner else ""


def request_rows(raw: psycopg.Connection[Any]) -> int:
    """How many requests the store ever recorded (answers, holds, declines)."""
    row = raw.execute("SELECT count(*) FROM authorization_requests").fetchone()
    assert row is not None
    return int(row[0])


def postgres_pids(state_dir: Path) -> list[int]:
    """The postmaster of the platform's PostgreSQL and every process it forked."""
    postmaster = int((state_dir / "pg" / "data" / "postmaster.pid").read_text().split()[0])
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == postmaster:
            children.append(int(entry.name))
    return [postmaster, *children]
