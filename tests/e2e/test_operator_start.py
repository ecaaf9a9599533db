"""`fintech-operator run` refuses to start, in one line and before connecting to anything,
without a card tokenizer or when its probe port is taken; it, the rewards consumer and the
notifier do the same when their /metrics port is taken.

The processes get a database and Kafka address where nothing listens: a refusal here proves
the check comes first, since anything that reached for a server would fail differently.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest

pytestmark = pytest.mark.e2e
CLI = [sys.executable, "-m", "fintech_operator"]
START_TIMEOUT_SECONDS = 60
NOWHERE = {
    "DATABASE_URL": "postgresql://nobody@127.0.0.1:9/none",
    "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9",
}


def _env(**extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("FINTECH_")}
    return {**base, **NOWHERE, "FINTECH_HEALTH_PORT": "0", **extra}


def _run(*args: str, env: dict[str, str], command: str = "run") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, command, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT_SECONDS,
        check=False,
    )


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def test_the_operator_refuses_to_start_without_a_tokenizer() -> None:
    """No FINTECH_TOKENIZER_URL and no FINTECH_TOKENIZER=development: exit status 2 and one
    line that names both ways out, no traceback."""
    refused = _run(env=_env())
    assert refused.returncode == 2, refused.stderr
    assert "fintech-operator run: no card tokenizer configured" in refused.stderr
    assert "FINTECH_TOKENIZER_URL" in refused.stderr
    assert "FINTECH_TOKENIZER=development" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_the_operator_refuses_an_unknown_tokenizer_and_both_at_once() -> None:
    """A misspelt opt-in, or the opt-in beside a processor URL, stops it the same way."""
    misspelt = _run(env=_env(FINTECH_TOKENIZER="dev"))
    assert misspelt.returncode == 2
    assert "FINTECH_TOKENIZER:" in misspelt.stderr
    both = _run(
        env=_env(FINTECH_TOKENIZER="development", FINTECH_TOKENIZER_URL="https://p.example/t")
    )
    assert both.returncode == 2
    assert "both set" in both.stderr


def test_a_taken_probe_port_is_refused_and_the_flag_wins_over_the_variable(
    taken_port: int,
) -> None:
    """FINTECH_HEALTH_PORT is the probe's port; --liveness-port wins over it. Either way a
    port in use stops the operator at start, naming the port and both settings."""
    opted_in = {"FINTECH_TOKENIZER": "development"}
    from_variable = _run(env=_env(**opted_in, FINTECH_HEALTH_PORT=str(taken_port)))
    assert from_variable.returncode == 2, from_variable.stderr
    named = f"cannot serve the liveness probe on 127.0.0.1:{taken_port}"
    assert named in from_variable.stderr
    assert "--liveness-port or FINTECH_HEALTH_PORT" in from_variable.stderr
    from_flag = _run(
        "--liveness-port", str(taken_port), env=_env(**opted_in, FINTECH_HEALTH_PORT="0")
    )
    assert from_flag.returncode == 2, from_flag.stderr
    assert named in from_flag.stderr


@pytest.mark.parametrize("command", ["run", "rewards", "notifier"])
def test_a_taken_metrics_port_stops_the_process_with_one_line(
    command: str, taken_port: int
) -> None:
    """docs/operations.md: a FINTECH_METRICS_PORT already in use stops the process at start with
    a message naming the variable. It ended in a traceback (exit status 1); now it is one line
    and exit status 2, as for every other setting the process cannot start with."""
    refused = _run(
        env=_env(FINTECH_TOKENIZER="development", FINTECH_METRICS_PORT=str(taken_port)),
        command=command,
    )
    assert refused.returncode == 2, refused.stderr
    assert "Traceback" not in refused.stderr
    assert refused.stderr.splitlines()[-1] == (
        f"fintech-operator {command}: cannot serve /metrics on 127.0.0.1:{taken_port} "
        "(FINTECH_METRICS_PORT): Address already in use"
    )
