"""What a user sees while a resource waits, and how the operator stops (issue 11, items 3 and 7).

A Card naming a product that does not exist yet and a Posting naming a card that does not
exist yet must say so at once: phase Pending, a ``status.reason`` and a Ready condition whose
message names the missing thing, exactly one Event for the whole wait, and INFO log lines with
the attempt count instead of ERROR lines. The operator, a real process on the real platform,
must stop cleanly when SIGTERM arrives twice (the process group's and the one ``dev`` forwards).
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import Kubectl, OperatorProcesses, wait_for

pytestmark = pytest.mark.e2e
# Long enough to look at the wait (10 attempts, 2 s apart: about 20 s), short enough for CI.
RETRY_LIMIT = 10
SHOWN_WITHIN_SECONDS = 15.0


@pytest.fixture(scope="module")
def waiting_env(operator_env: dict[str, str]) -> dict[str, str]:
    return {**operator_env, "FINTECH_MISSING_CARD_RETRY_LIMIT": str(RETRY_LIMIT)}


@pytest.fixture(scope="module")
def operator(
    waiting_env: dict[str, str],
    crds_installed: None,
    operator_prefix: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[OperatorProcesses]:
    procs = OperatorProcesses(waiting_env, tmp_path_factory.mktemp("operator"))
    procs.start_operator(operator_prefix)
    yield procs
    procs.stop()


def _apply(kubectl: Kubectl, ns: str, *objects: dict[str, Any]) -> None:
    documents = [{"apiVersion": "fintech.dev/v1alpha1", **obj} for obj in objects]
    kubectl("apply", "-n", ns, "-f", "-", input=yaml.safe_dump_all(documents))


def _status(kubectl: Kubectl, ns: str, kind: str, name: str) -> dict[str, Any]:
    out = kubectl("get", "-n", ns, kind, name, "-o", "json").stdout
    status: dict[str, Any] = json.loads(out).get("status") or {}
    return status


def _events(kubectl: Kubectl, ns: str, name: str, reason: str) -> list[dict[str, Any]]:
    out = kubectl("get", "events", "-n", ns, "--field-selector",
                  f"involvedObject.name={name},reason={reason}", "-o", "json").stdout  # fmt: skip
    items: list[dict[str, Any]] = json.loads(out)["items"]
    return items


def _ready(status: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in status.get("conditions") or [] if c["type"] == "Ready")


def _log_lines(procs: OperatorProcesses, needle: str) -> list[dict[str, Any]]:
    lines = []
    for raw in procs.log("operator").splitlines():
        if needle in raw and raw.startswith("{"):
            lines.append(json.loads(raw))
    return lines


PRODUCT = {"kind": "CardProduct", "metadata": {"name": "gold"},
           "spec": {"currency": "USD", "rewardsRateBps": 100}}  # fmt: skip


def _card(name: str, product: str) -> dict[str, Any]:
    return {"kind": "Card", "metadata": {"name": name},
            "spec": {"userId": f"u-{name}", "product": product, "state": "Active",
                     "holder": {"name": "Ada Lovelace", "country": "GB",
                                "kycStatus": "Accepted"}}}  # fmt: skip


def _shows_wait(kubectl: Kubectl, ns: str, kind: str, name: str, reason: str) -> dict[str, Any]:
    started = time.monotonic()
    status: dict[str, Any] = wait_for(
        f"{kind} {name} showing {reason}",
        lambda: (s := _status(kubectl, ns, kind, name)).get("reason") == reason and s,
        timeout_seconds=SHOWN_WITHIN_SECONDS + 30,
    )
    assert time.monotonic() - started < SHOWN_WITHIN_SECONDS, "the wait was not shown at once"
    return status


def test_card_for_a_missing_product_shows_its_wait_then_is_rejected(
    kubectl: Kubectl, op_namespace: str, operator: OperatorProcesses
) -> None:
    """Pending with WaitingForProduct at once, one Event, INFO retries, then ProductNotFound."""
    ns = op_namespace
    _apply(kubectl, ns, _card("lost", "platinum"))
    status = _shows_wait(kubectl, ns, "card", "lost", "WaitingForProduct")
    assert status["phase"] == "Pending"
    assert "platinum" in status["message"]
    ready = _ready(status)
    assert (ready["status"], ready["reason"]) == ("False", "WaitingForProduct")
    assert "platinum" in ready["message"]
    final = wait_for(
        "card lost rejected",
        lambda: (s := _status(kubectl, ns, "card", "lost")).get("phase") == "Rejected" and s,
        timeout_seconds=RETRY_LIMIT * 2 + 60,
    )
    assert final["reason"] == "ProductNotFound"
    waits = _events(kubectl, ns, "lost", "WaitingForProduct")
    assert len(waits) == 1, waits
    assert waits[0].get("count", 1) == 1, waits
    assert "platinum" in waits[0]["message"]
    retries = [line for line in _log_lines(operator, "'platinum'") if "attempt" in line["msg"]]
    assert len(retries) >= RETRY_LIMIT - 1, retries
    assert {line["level"] for line in retries} == {"info"}, retries
    assert any(f"attempt 2 of {RETRY_LIMIT}" in line["msg"] for line in retries)


def test_card_waiting_for_its_product_is_issued_when_it_appears(
    kubectl: Kubectl, op_namespace: str, operator: OperatorProcesses
) -> None:
    """The wait ends when the product is applied: the card is issued and the reason is gone."""
    ns = op_namespace
    _apply(kubectl, ns, _card("late", "gold"))
    _shows_wait(kubectl, ns, "card", "late", "WaitingForProduct")
    _apply(kubectl, ns, PRODUCT)
    status = wait_for(
        "card late issued",
        lambda: (s := _status(kubectl, ns, "card", "late")).get("phase") == "Active" and s,
        timeout_seconds=90,
    )
    assert "reason" not in status, status
    assert _ready(status)["status"] == "True"
    assert len(_events(kubectl, ns, "late", "WaitingForProduct")) == 1


def test_posting_for_a_card_not_issued_yet_shows_its_wait_then_posts(
    kubectl: Kubectl, op_namespace: str, operator: OperatorProcesses
) -> None:
    """Pending with WaitingForCard naming the card, one Event; posted once the card is issued."""
    ns = op_namespace
    posting = {"kind": "Posting", "metadata": {"name": "early"},
               "spec": {"card": "soon", "type": "Purchase", "amount": 1250,
                        "currency": "USD"}}  # fmt: skip
    _apply(kubectl, ns, posting)
    status = _shows_wait(kubectl, ns, "posting", "early", "WaitingForCard")
    assert status["phase"] == "Pending"
    assert "'soon'" in status["message"]
    assert _ready(status)["reason"] == "WaitingForCard"
    time.sleep(5)  # a few retries
    _apply(kubectl, ns, PRODUCT, _card("soon", "gold"))
    final = wait_for(
        "posting early posted",
        lambda: (s := _status(kubectl, ns, "posting", "early")).get("phase") == "Posted" and s,
        timeout_seconds=90,
    )
    assert "reason" not in final, final
    assert len(_events(kubectl, ns, "early", "WaitingForCard")) == 1
    retries = [line for line in _log_lines(operator, "'soon'") if "attempt" in line["msg"]]
    assert retries, "no retry line"
    assert {line["level"] for line in retries} == {"info"}, retries


# --- Shutdown ------------------------------------------------------------------------------------


def test_sigterm_twice_stops_the_operator_cleanly(
    waiting_env: dict[str, str],
    crds_installed: None,
    operator_prefix: str,
    tmp_path: Path,
) -> None:
    """A second SIGTERM while stopping is harmless: exit status 0, no InvalidStateError."""
    log_path = tmp_path / "operator.log"
    proc = _started(
        ("fintech_operator", "run", "--liveness-port", "0", "--namespace",
         f"{operator_prefix}-sig-*"),
        waiting_env, log_path, "Activity '_startup' succeeded",
    )  # fmt: skip
    try:
        time.sleep(1)
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        returncode = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log_path.read_text()
    assert "InvalidStateError" not in text, text[-4000:]
    assert "Traceback" not in text, text[-4000:]
    assert returncode == 0, text[-4000:]


@pytest.mark.parametrize(
    "command",
    [
        ("fintech_operator", "run", "--liveness-port", "0", "--namespace", "kafka-down-*"),
        ("fintech_operator", "rewards"),
        ("fintech_operator", "notifier"),
        ("fintech_operator.events.relay",),
    ],
    ids=["operator", "rewards", "notifier", "relay"],
)
def test_sigterm_while_kafka_is_unreachable_stops_the_process_at_once(
    waiting_env: dict[str, str],
    crds_installed: None,
    tmp_path: Path,
    command: tuple[str, ...],
) -> None:
    """Every process waits up to 5 minutes for a broker that is down when it starts
    (``kafka.until_reachable``); a SIGTERM during that wait stops it at once with status 0,
    as a rollout or ``make dev``'s Ctrl-C expect (Kubernetes kills a pod 30 s after SIGTERM)."""
    env = {**waiting_env, "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{_closed_port()}"}
    log_path = tmp_path / "process.log"
    proc = _started(command, env, log_path, "Kafka not reachable yet")
    try:
        proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        returncode = proc.wait(timeout=60)
        stopped_seconds = time.monotonic() - signalled
    finally:
        if proc.poll() is None:
            proc.kill()
            # Reaped here: a Popen left running warns when collected, during whatever test
            # runs then, and fails that one instead of this.
            proc.wait(timeout=30)
    text = log_path.read_text()
    assert returncode == 0, text[-4000:]
    assert "Traceback" not in text, text[-4000:]
    assert stopped_seconds < STOPPED_WITHIN_SECONDS, (stopped_seconds, text[-4000:])


# A stop is immediate; the bound leaves room for a loaded 2-core machine (the wait itself is
# 300 s, so a process that ignored the signal fails this by far).
STOPPED_WITHIN_SECONDS = 20.0


def _closed_port() -> int:
    """A loopback port nothing listens on (bound, then closed): a broker that is down."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def _started(
    module_args: tuple[str, ...], env: dict[str, str], log_path: Path, ready: str
) -> subprocess.Popen[bytes]:
    """``python -m module_args`` with its output in ``log_path``, once ``ready`` shows there
    (killed if it never does)."""
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", *module_args], env=env, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        wait_for(repr(ready), lambda: ready in log_path.read_text(), timeout_seconds=90,
                 interval=0.2)  # fmt: skip
    except BaseException:
        proc.kill()
        raise
    return proc
