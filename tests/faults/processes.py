"""The product's processes, run and restarted the way ``make dev`` does, and the faults
the campaign injects into them and into the platform's parts."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from fintech_devstack import build, platform, supervise
from tests.faults import receiver

POLL_SECONDS = 0.5
STOP_TIMEOUT_SECONDS = 30.0
# The processes `dev` runs (fintech_devstack/cli.py); the outbox relay runs in the operator.
PRODUCT = (
    ("operator", ("run",)),
    ("rewards", ("rewards",)),
    ("notifier", ("notifier",)),
    # Its signing secret is made on first start, as under dev.
    ("gateway", ("gateway", "--create-secret-file")),
)
NAMES = tuple(name for name, _ in PRODUCT)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Child:
    name: str
    argv: list[str]
    env: dict[str, str]
    log: Path
    history: supervise.History
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    restart_at: float = 0.0
    restarts: int = 0


@dataclass
class Product:
    """Supervises operator, rewards consumer and notifier: a dead one is restarted after dev's
    backoff. Unlike dev it never gives up: the campaign kills on purpose."""

    env: dict[str, str]
    log_dir: Path
    children: dict[str, Child] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> None:
        policy = supervise.Policy(deaths_max=10_000)
        exe = [sys.executable, "-m", "fintech_operator"]
        for name, command in PRODUCT:
            own = {"FINTECH_METRICS_PORT": str(free_port())}
            if name == "operator":
                own["FINTECH_HEALTH_PORT"] = str(free_port())
            if name == "gateway":
                own = {"FINTECH_GATEWAY_PORT": str(free_port())}
            self.children[name] = Child(
                name,
                [*exe, *command],
                {**self.env, **own},
                self.log_dir / f"{name}.log",
                supervise.History(policy),
            )
        for child in self.children.values():
            self._spawn(child)
        threading.Thread(target=self._supervise, daemon=True).start()

    def _spawn(self, child: Child) -> None:
        with child.log.open("ab") as sink:
            child.proc = subprocess.Popen(
                child.argv,
                env=child.env,
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        child.started_at = time.monotonic()

    def _supervise(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                for child in self.children.values():
                    self._tend(child, time.monotonic())
            time.sleep(POLL_SECONDS)

    def _tend(self, child: Child, now: float) -> None:
        if child.proc is None:
            if now >= child.restart_at:
                self._spawn(child)
                child.restarts += 1
            return
        if child.proc.poll() is None:
            return
        decision = child.history.died(now, now - child.started_at)
        assert isinstance(decision, supervise.Restart)
        child.proc = None
        child.restart_at = now + decision.delay_seconds

    def pid(self, name: str) -> int | None:
        with self._lock:
            proc = self.children[name].proc
            return proc.pid if proc is not None and proc.poll() is None else None

    def alive(self) -> dict[str, bool]:
        with self._lock:
            return {
                n: c.proc is not None and c.proc.poll() is None for n, c in self.children.items()
            }

    def healthy(self, name: str) -> bool:
        """The operator's or the gateway's /healthz answers 2xx."""
        env = self.children[name].env
        port = env.get("FINTECH_HEALTH_PORT") or env["FINTECH_GATEWAY_PORT"]
        try:
            return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=3).is_success
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            running = [c.proc for c in self.children.values() if c.proc and c.proc.poll() is None]
            for proc in running:
                os.kill(proc.pid, signal.SIGCONT)  # a paused child must run to stop
                proc.terminate()
            for proc in running:
                try:
                    proc.wait(timeout=STOP_TIMEOUT_SECONDS)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def wait_until(check: object, timeout_seconds: float) -> float:
    """Seconds until ``check()`` is true; raises TimeoutError after ``timeout_seconds``."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_seconds:
        with contextlib.suppress(Exception):
            if check():  # type: ignore[operator]
                return time.monotonic() - started
        time.sleep(POLL_SECONDS)
    raise TimeoutError(f"not ready in {timeout_seconds:g} s")


@dataclass
class Injector:
    """Does one fault and returns once the target is back: seconds until it was."""

    plat: platform.Platform
    binaries: build.Binaries
    product: Product
    hook: receiver.Receiver
    pause_seconds: float
    outage_seconds: float

    def kill(self, name: str) -> float:
        pid = self.product.pid(name)
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
        # Back when the supervisor has a live new process (dev's 1 s backoff included).
        return wait_until(lambda: (p := self.product.pid(name)) is not None and p != pid, 120)

    def pause(self, name: str) -> float:
        # A process the supervisor is restarting is paused once it is back: never a no-op.
        wait_until(lambda: self.product.pid(name) is not None, 120)
        pid = self.product.pid(name)
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
        time.sleep(self.pause_seconds)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
        return self.pause_seconds

    def postgres_immediate(self) -> float:
        data = self.plat.state_dir / "pg" / "data"
        platform._pg(["pg_ctl", "-D", str(data), "-m", "immediate", "-w", "stop"], check=False)
        started = time.monotonic()
        self.plat._start_postgres()
        return time.monotonic() - started

    def _kill_part(self, name: str) -> None:
        proc = self.plat.procs.get(name)
        pid = self.plat.pids[name]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        if proc is not None:
            proc.wait(timeout=STOP_TIMEOUT_SECONDS)

    def kafka(self) -> float:
        self._kill_part("kafka")
        started = time.monotonic()
        self.plat._start_kafka(self.binaries)
        return time.monotonic() - started

    def apiserver(self) -> float:
        self._kill_part("apiserver")
        started = time.monotonic()
        self.plat._start_apiserver(self.binaries)
        return time.monotonic() - started

    def etcd(self) -> float:
        self._kill_part("etcd")
        started = time.monotonic()
        self.plat._start_etcd(self.binaries)
        return time.monotonic() - started

    def receiver_outage(self, status: int) -> float:
        self.hook.answer_status = status
        time.sleep(self.outage_seconds)
        self.hook.answer_status = 200
        return self.outage_seconds
