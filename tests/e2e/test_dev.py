"""`fintech-operator dev` as a developer runs it: two side by side, supervision, taken ports.

Each `dev` here starts its own platform in its own state directory (not the session's), as a
second `make dev` with `--state-dir` would, so these tests also prove that two platforms and
two sets of processes run on one machine without a port in common.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from fintech_devstack import platform
from tests.conftest import wait_for

pytestmark = pytest.mark.e2e
CLI = [sys.executable, "-m", "fintech_operator"]
# A cold platform on a busy machine, then migrations, CRDs and three Python processes.
DEV_READY_TIMEOUT_SECONDS = 420.0
STOP_TIMEOUT_SECONDS = 90.0


class Dev:
    """One `fintech-operator dev` in the background, its stderr kept in a file."""

    def __init__(self, state_dir: Path, log: Path, env: dict[str, str] | None = None) -> None:
        self.state_dir = state_dir
        self.log_path = log
        with log.open("ab") as sink:
            self.proc = subprocess.Popen(
                [*CLI, "dev", "--state-dir", str(state_dir)],
                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
                stdout=sink,
                stderr=subprocess.STDOUT,
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def ports(self) -> dict[str, int]:
        ports: dict[str, int] = json.loads((self.state_dir / "ports.json").read_text())
        return ports

    def operator_pids(self) -> list[int]:
        return [int(p) for p in re.findall(r"\[dev\] started operator \(pid (\d+)", self.log())]

    def child_pids(self) -> list[int]:
        return [int(p) for p in re.findall(r"\[dev\] started \w+ \(pid (\d+)", self.log())]

    def wait_ready(self) -> None:
        """Until the operator's probe answers on this dev's own port."""

        def healthy() -> bool:
            assert self.proc.poll() is None, f"dev exited early:\n{self.log()[-3000:]}"
            return bool(self.operator_pids()) and _healthz(self.ports()["operator_health"])

        wait_for("dev's operator to answer its probe", healthy, DEV_READY_TIMEOUT_SECONDS, 1.0)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=STOP_TIMEOUT_SECONDS)


def _healthz(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=3) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def _stack(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, "stack", *args], capture_output=True, text=True, timeout=600, check=False
    )


@contextlib.contextmanager
def _squatter(port: int) -> Iterator[None]:
    """Another program listening on ``port`` (which may still have TIME_WAIT connections of
    the platform that just stopped: SO_REUSEADDR, as servers set it)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen()
        yield


@pytest.fixture(scope="module")
def state_dirs() -> Iterator[tuple[Path, Path]]:
    """Two fresh state directories, their platforms stopped and deleted at the end."""
    base = platform.default_state_dir().parent
    dirs = (base / f"devtest-{uuid.uuid4().hex[:6]}-a", base / f"devtest-{uuid.uuid4().hex[:6]}-b")
    yield dirs
    for state in dirs:
        _stack("down", "--purge", "--state-dir", str(state))
        shutil.rmtree(state, ignore_errors=True)


def test_two_devs_run_side_by_side_and_a_killed_operator_is_restarted_and_named(
    state_dirs: tuple[Path, Path], tmp_path: Path
) -> None:
    """Two `dev`s with two state directories pick disjoint ports, remembered in ports.json,
    and both operators answer their own probe. SIGKILL of one operator is named on stderr
    with its status and the operator comes back on the same port; the other dev is
    untouched. SIGTERM stops a dev with status 0 and leaves none of its children."""
    first, second = (Dev(state, tmp_path / f"dev-{i}.log") for i, state in enumerate(state_dirs))
    try:
        first.wait_ready()
        second.wait_ready()
        a, b = first.ports(), second.ports()
        # Once all four processes answer, each dev says so, naming its gateway and how to
        # reach its platform from another shell (the README's first five minutes wait for it).
        ready = (
            f"[dev] ready: the operator, rewards consumer, notifier and gateway "
            f"(http://127.0.0.1:{a['gateway']}) answer; in another shell: "
            f'eval "$(.venv/bin/fintech-operator stack env --state-dir {first.state_dir})"'
        )
        wait_for("dev to say it is ready", lambda: ready in first.log(), 60, 0.5)
        assert first.log().count("[dev] ready:") == 1
        assert set(a) == set(b)
        assert {"operator_health", "operator_metrics", "postgres"} <= set(a)
        assert not set(a.values()) & set(b.values())
        listed = _stack("ports", "--state-dir", str(first.state_dir))
        assert f"operator_health   {a['operator_health']:5}  pid {first.operator_pids()[0]}" in (
            listed.stdout
        ), listed
        victim = first.operator_pids()[0]
        os.kill(victim, signal.SIGKILL)
        named = f"[dev] operator (pid {victim}) was killed by SIGKILL; restarting it in 1 s"
        wait_for("dev to name the killed operator", lambda: named in first.log(), 30, 0.5)
        wait_for(
            "a new operator answering on the same port",
            lambda: len(first.operator_pids()) == 2 and _healthz(a["operator_health"]),
            180,
            1.0,
        )
        assert len(second.operator_pids()) == 1
        assert _alive(second.operator_pids()[0])
        children = first.child_pids()
        assert first.stop() == 0, first.log()[-3000:]
        assert not any(_alive(pid) for pid in children)
    finally:
        first.stop()
        second.stop()


def test_a_taken_port_is_named_with_its_holder_and_ports_survive_a_restart(
    state_dirs: tuple[Path, Path],
) -> None:
    """A stopped platform restarts on the ports it remembered; a port of it that another
    process listens on is refused before anything starts, naming the port and the holder."""
    state = state_dirs[0]
    remembered = json.loads((state / "ports.json").read_text())
    assert _stack("down", "--state-dir", str(state)).returncode == 0
    with _squatter(remembered["apiserver"]):
        refused = _stack("up", "--state-dir", str(state))
    assert refused.returncode == 1
    held = f"port {remembered['apiserver']} (apiserver) is taken by pid {os.getpid()} ("
    assert held in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr
    started = _stack("up", "--state-dir", str(state))
    assert started.returncode == 0, started.stderr
    assert json.loads((state / "ports.json").read_text()) == remembered
    status = _stack("status", "--state-dir", str(state))
    assert f"apiserver          running  127.0.0.1:{remembered['apiserver']}" in status.stdout
    assert "controller-manager running  -" in status.stdout
    # A developer's platform, whatever its directory's name, outlives the command that
    # started it: the test sessions' reaping of orphaned platforms leaves it alone.
    assert json.loads((state / "platform.json").read_text())["owner_pid"] == 0
    assert state not in platform.reap_orphans(state.parent)
    assert _stack("status", "--state-dir", str(state)).returncode == 0
    # dev's own ports are checked the same way before any process starts.
    with _squatter(remembered["operator_health"]):
        dev = subprocess.run(
            [*CLI, "dev", "--state-dir", str(state)],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    assert dev.returncode == 1
    assert f"port {remembered['operator_health']} (operator_health) is taken by pid" in dev.stderr


def test_a_crash_looping_operator_makes_dev_give_up_naming_it(
    state_dirs: tuple[Path, Path], tmp_path: Path
) -> None:
    """An operator that cannot start (here: FINTECH_TOKENIZER set empty in the shell, so no
    tokenizer) dies 5 times within 60 s; dev names it with its status each time, then gives
    up, stops the consumers and exits 1."""
    dev = Dev(state_dirs[1], tmp_path / "dev-crash.log", env={"FINTECH_TOKENIZER": ""})
    try:
        code = dev.proc.wait(timeout=DEV_READY_TIMEOUT_SECONDS)
    finally:
        dev.stop()
    log = dev.log()
    assert code == 1, log[-3000:]
    deaths = re.findall(r"\[dev\] operator \(pid \d+\) exited with status 2", log)
    assert len(deaths) == 5, log[-3000:]
    assert "restarting it in 1 s" in log
    assert "restarting it in 8 s" in log
    assert "5 deaths within 60 s, a crash loop; giving up" in log
    assert "[dev] giving up: operator is crash-looping" in log
    assert "no card tokenizer configured" in log
    assert not any(_alive(pid) for pid in dev.child_pids())


def test_status_of_a_state_directory_never_started_shows_no_ports(tmp_path: Path) -> None:
    """Ports are chosen at the first start: before it, `stack status` shows none (not numbers
    that change on every call), says so, and writes nothing into the directory."""
    state = tmp_path / "never"
    state.mkdir()
    first = _stack("status", "--state-dir", str(state))
    second = _stack("status", "--state-dir", str(state))
    assert first.returncode == 1
    assert first.stdout == second.stdout
    lines = first.stdout.splitlines()
    assert [line.split()[0] for line in lines] == [
        "etcd", "apiserver", "controller-manager", "kafka", "postgres"
    ]  # fmt: skip
    assert all(line.split()[1:] == ["stopped", "-"] for line in lines), first.stdout
    assert f"not started yet ({state})" in first.stderr
    assert list(state.iterdir()) == []
