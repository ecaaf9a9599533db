"""Reconciliation from `kubectl apply`, with the operator and the rewards consumer as processes.

The example postings are posted by the operator, then the example run (a ConfigMap with
January's settlement file) is applied: it must end Succeeded with its one planted exception,
say so in its conditions and Events, and `fintech-operator recon report` must export it. A run
with a missing ConfigMap must fail with its reason, and a schedule must create runs and keep
only its history limit of finished ones. An operator killed in the middle of a run must, once
restarted, run it again as attempt 2 and report every exception exactly once.
"""

from __future__ import annotations

import http.server
import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.conftest import Kubectl, OperatorProcesses, wait_for

pytestmark = pytest.mark.e2e
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
RUN = "settlement-2025-01"


def get(kubectl: Kubectl, ns: str, kind: str, name: str) -> dict[str, Any]:
    found: dict[str, Any] = json.loads(kubectl("get", "-n", ns, kind, name, "-o", "json").stdout)
    return found


def phase_in(
    kubectl: Kubectl, procs: OperatorProcesses, ns: str, kind: str, name: str, phases: set[str]
) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        status: dict[str, Any] = get(kubectl, ns, kind, name).get("status") or {}
        return status if status.get("phase") in phases else None

    try:
        found: dict[str, Any] = wait_for(f"{kind}/{name} in {phases}", probe, timeout_seconds=120)
    except AssertionError:
        print(procs.log("operator")[-6000:])
        raise
    return found


def event_reasons(kubectl: Kubectl, ns: str, name: str) -> set[str]:
    listed = json.loads(
        kubectl(
            "get",
            "events",
            "-n",
            ns,
            "--field-selector",
            f"involvedObject.name={name}",
            "-o",
            "json",
        ).stdout
    )
    return {item["reason"] for item in listed["items"]}


def test_reconciliation_from_kubectl(
    kubectl: Kubectl,
    op_namespace: str,
    operator_processes: OperatorProcesses,
    operator_env: dict[str, str],
) -> None:
    """The example run matches the example purchase and refund, reports the one transaction the
    ledger never saw, shows it in status, conditions and Events, exports it as CSV, and refuses
    a change of its spec; a run whose ConfigMap is missing fails with SourceNotFound, and once
    deleted its rows leave the database."""
    ns = op_namespace
    for example in (
        "00-cardproduct-standard",
        "10-card-u_demo",
        "20-posting-purchase",
        "21-posting-refund",
    ):
        kubectl("apply", "-n", ns, "-f", str(EXAMPLES / f"{example}.yaml"))
    for posting in ("purchase-0001", "refund-0001"):
        posted = phase_in(
            kubectl, operator_processes, ns, "posting", posting, {"Posted", "Rejected"}
        )
        assert posted["phase"] == "Posted", posted

    kubectl("apply", "-n", ns, "-f", str(EXAMPLES / "reconciliation" / "50-reconciliationrun.yaml"))
    status = phase_in(kubectl, operator_processes, ns, "recon", RUN, {"Succeeded", "Failed"})
    assert status["phase"] == "Succeeded", status
    summary = status["summary"]
    assert (summary["recordsRead"], summary["matched"], summary["missingInLedger"]) == (3, 2, 1)
    assert summary["exceptions"] == 1
    assert summary["checks"] == {
        "settlement": {"result": "Failed", "exceptions": 1},
        "trialBalance": {"result": "Passed", "exceptions": 0},
        "rewards": {"result": "Passed", "exceptions": 0},
        "events": {"result": "Passed", "exceptions": 0},
    }
    conditions = {c["type"]: c for c in status["conditions"]}
    assert (conditions["Ready"]["status"], conditions["Ready"]["reason"]) == ("True", "Completed")
    assert conditions["Reconciled"]["status"] == "False"
    assert status["attempt"] == 1
    assert status["startedAt"] <= status["completedAt"]
    assert {"Started", "Succeeded", "ExceptionsFound"} <= event_reasons(kubectl, ns, RUN)
    table = kubectl("get", "-n", ns, "recon", RUN).stdout
    assert "Succeeded" in table

    report = subprocess.run(
        [
            sys.executable,
            "-m",
            "fintech_operator",
            "recon",
            "report",
            RUN,
            "-n",
            ns,
            "--format",
            "csv",
        ],
        env=operator_env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    lines = report.stdout.splitlines()
    assert lines[0] == "check,kind,severity,reference,line,expected,actual"
    assert lines[1:] == [
        "Settlement,MissingInLedger,error,auth-9d81e0c4,4,no posting,"
        "4200 USD at 2025-01-17T18:02:00Z"
    ]

    refused = kubectl(
        "patch",
        "-n",
        ns,
        "recon",
        RUN,
        "--type=merge",
        "-p",
        '{"spec":{"matching":{"amountToleranceMinor":100}}}',
        check=False,
    )
    assert refused.returncode != 0
    assert "spec is immutable" in refused.stderr

    missing = {
        "apiVersion": "fintech.dev/v1alpha1",
        "kind": "ReconciliationRun",
        "metadata": {"name": "no-file"},
        "spec": {"source": {"configMapKeyRef": {"name": "nowhere", "key": "s.csv"}}},
    }
    kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(missing))
    failed = phase_in(kubectl, operator_processes, ns, "recon", "no-file", {"Succeeded", "Failed"})
    assert (failed["phase"], failed["reason"]) == ("Failed", "SourceNotFound")
    assert f"ConfigMap {ns}/nowhere does not exist" in failed["message"]
    assert "Failed" in event_reasons(kubectl, ns, "no-file")

    uid = get(kubectl, ns, "recon", "no-file")["metadata"]["uid"]
    kubectl("delete", "-n", ns, "recon", "no-file")

    def rows_gone() -> bool:
        with psycopg.connect(operator_env["DATABASE_URL"]) as conn:
            row = conn.execute("SELECT count(*) FROM recon_runs WHERE uid = %s", (uid,)).fetchone()
        return row == (0,)

    wait_for("the deleted run's rows to go", rows_gone, timeout_seconds=60)


def test_schedule_creates_runs_and_keeps_its_history_limit(
    kubectl: Kubectl, op_namespace: str, operator_processes: OperatorProcesses
) -> None:
    """A schedule firing every minute creates an owned run with the window ending at the
    scheduled time, and deletes finished runs beyond successfulRunsHistoryLimit."""
    ns = op_namespace
    schedule = {
        "apiVersion": "fintech.dev/v1alpha1",
        "kind": "ReconciliationSchedule",
        "metadata": {"name": "every-minute"},
        "spec": {
            "schedule": "* * * * *",
            "windowSeconds": 3600,
            "successfulRunsHistoryLimit": 1,
            "template": {"checks": ["TrialBalance"]},
        },
    }
    kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(schedule))
    uid = get(kubectl, ns, "rsched", "every-minute")["metadata"]["uid"]
    # Two older runs of this schedule, as a previous day would have left them.
    for name in ("every-minute-old-1", "every-minute-old-2"):
        run = {
            "apiVersion": "fintech.dev/v1alpha1",
            "kind": "ReconciliationRun",
            "metadata": {
                "name": name,
                "labels": {"fintech.dev/schedule": "every-minute"},
                "ownerReferences": [
                    {
                        "apiVersion": "fintech.dev/v1alpha1",
                        "kind": "ReconciliationSchedule",
                        "name": "every-minute",
                        "uid": uid,
                        "controller": True,
                    }
                ],
            },
            "spec": {"checks": ["TrialBalance"]},
        }
        kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(run))
        phase_in(kubectl, operator_processes, ns, "recon", name, {"Succeeded"})

    def created_and_pruned() -> dict[str, Any] | None:
        status: dict[str, Any] = get(kubectl, ns, "rsched", "every-minute").get("status") or {}
        names = kubectl(
            "get", "-n", ns, "recon", "-l", "fintech.dev/schedule=every-minute", "-o", "name"
        ).stdout.split()
        created = status.get("lastRunName")
        if not created or any(n.endswith("-old-1") for n in names):
            return None
        return status if f"reconciliationrun.fintech.dev/{created}" in names else None

    try:
        status = wait_for(
            "a scheduled run and pruned history",
            created_and_pruned,
            timeout_seconds=150,
            interval=2,
        )
    except AssertionError:
        print(operator_processes.log("operator")[-6000:])
        raise
    assert status["phase"] == "Active"
    created = get(kubectl, ns, "recon", status["lastRunName"])
    window = created["spec"]["window"]
    assert window["end"] == status["lastScheduleTime"]
    assert created["metadata"]["ownerReferences"][0]["uid"] == uid
    assert "RunCreated" in event_reasons(kubectl, ns, "every-minute")


SLOW_ROWS = 3000


class _SlowFile(http.server.BaseHTTPRequestHandler):
    """A settlement file that takes a few seconds to stream, so a run can be caught mid-way."""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/csv")
        self.end_headers()
        self.wfile.write(b"reference,amount,currency,occurredAt\n")
        for n in range(SLOW_ROWS):
            self.wfile.write(f"SLOW-{n},{n + 1},USD,2031-01-01T00:00:00Z\n".encode())
            if n % 100 == 0:
                self.wfile.flush()
                time.sleep(0.2)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""


@pytest.fixture
def slow_url() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _SlowFile)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/slow.csv"
    server.shutdown()
    server.server_close()


def test_a_run_interrupted_by_an_operator_crash_restarts_cleanly(
    kubectl: Kubectl,
    op_namespace: str,
    operator_processes: OperatorProcesses,
    operator_env: dict[str, str],
    operator_prefix: str,
    slow_url: str,
) -> None:
    """SIGKILL the operator while a run is loading its file: nothing of attempt 1 is visible;
    the restarted operator resumes the run as attempt 2, and each exception is stored once."""
    ns = op_namespace
    run = {
        "apiVersion": "fintech.dev/v1alpha1",
        "kind": "ReconciliationRun",
        "metadata": {"name": "slow"},
        "spec": {
            "source": {"http": {"url": slow_url, "timeoutSeconds": 30}},
            "checks": ["Settlement"],
            "window": {"start": "2031-01-01T00:00:00Z", "end": "2031-01-02T00:00:00Z"},
        },
    }
    kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(run))
    uid = get(kubectl, ns, "recon", "slow")["metadata"]["uid"]
    dsn = operator_env["DATABASE_URL"]

    def attempt_running() -> tuple[Any, ...] | None:
        with psycopg.connect(dsn) as conn:
            row = conn.execute(
                "SELECT id, attempt, state FROM recon_runs WHERE uid = %s", (uid,)
            ).fetchone()
        return row if row is not None and row[1:] == (1, "running") else None

    run_id = wait_for("attempt 1 under way", attempt_running, timeout_seconds=60)[0]
    operator_processes.procs["operator"].send_signal(signal.SIGKILL)
    operator_processes.procs["operator"].wait(timeout=30)
    with psycopg.connect(dsn) as conn:
        assert conn.execute(
            "SELECT count(*) FROM recon_exceptions WHERE run_id = %s", (run_id,)
        ).fetchone() == (0,)
    operator_processes.start(
        "operator", "run", "--liveness-port", "0", "--namespace", f"{operator_prefix}-*"
    )
    status = phase_in(kubectl, operator_processes, ns, "recon", "slow", {"Succeeded", "Failed"})
    assert (status["phase"], status["attempt"]) == ("Succeeded", 2), status
    assert status["summary"]["missingInLedger"] == SLOW_ROWS
    with psycopg.connect(dsn) as conn:
        assert conn.execute(
            "SELECT count(*), count(DISTINCT reference) FROM recon_exceptions WHERE run_id = %s",
            (run_id,),
        ).fetchone() == (SLOW_ROWS, SLOW_ROWS)
