"""Reconciliation from `kubectl apply`, with the operator and the rewards consumer as processes.

The example postings are posted by the operator, then the example run (a ConfigMap with
January's settlement file) is applied: it must end Succeeded with its one planted exception,
say so in its conditions and Events, and `fintech-operator recon report` must export it. A run
with a missing ConfigMap must fail with its reason, and a schedule must create runs and keep
only its history limit of finished ones. An operator killed in the middle of a run must, once
restarted, run it again as attempt 2 and report every exception exactly once. Every run shows
Pending until a worker takes it (a run waits Pending while all worker slots are busy), and
ends with exactly one ``dev.fintech.recon.completed.v1`` on the real Kafka ``recon`` topic.
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

import kubernetes
import psycopg
import pytest

from fintech_operator.events import schema
from tests.conftest import Kubectl, OperatorProcesses, RunningPlatform, wait_for
from tests.e2e.lifecycle_events import events_of, wait_events

pytestmark = pytest.mark.e2e
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
RUN = "settlement-2025-01"
COMPLETED = schema.RECON_COMPLETED


class PhaseWatch:
    """Every phase each run of a namespace goes through, consecutive repeats folded.

    The watch starts at the resourceVersion of a list made before any run exists, so it sees
    every change from creation on, however fast the operator is.
    """

    def __init__(self, platform_running: RunningPlatform, ns: str) -> None:
        client = kubernetes.config.new_client_from_config(
            config_file=str(platform_running.kubeconfig)
        )
        self.api = kubernetes.client.CustomObjectsApi(client)
        self.ns = ns
        listed = self.api.list_namespaced_custom_object(
            "fintech.dev", "v1alpha1", ns, "reconciliationruns"
        )
        self.phases: dict[str, list[str | None]] = {}
        self.error: Exception | None = None
        self.watch = kubernetes.watch.Watch()
        version = listed["metadata"]["resourceVersion"]
        threading.Thread(target=self._follow, args=(version,), daemon=True).start()

    def _follow(self, version: str) -> None:
        try:
            for event in self.watch.stream(
                self.api.list_namespaced_custom_object,
                "fintech.dev",
                "v1alpha1",
                self.ns,
                "reconciliationruns",
                resource_version=version,
                timeout_seconds=60,
            ):
                found = event["object"]
                seen = self.phases.setdefault(found["metadata"]["name"], [])
                phase = (found.get("status") or {}).get("phase")
                if not seen or seen[-1] != phase:
                    seen.append(phase)
        except Exception as exc:  # stop() closes the stream under the reader.
            self.error = exc

    def stop(self) -> None:
        """End the watch now: an open watch would hold the API server's shutdown."""
        self.watch.stop()
        response = getattr(self.watch, "_resp", None)
        if response is not None:
            response.close()

    def of(self, name: str) -> list[str | None]:
        """The run's phases, once the watch has seen it finish."""
        return list(
            wait_for(
                f"the watch to see {name} finish (watch error: {self.error!r})",
                lambda: (
                    (seen := self.phases.get(name, []))
                    and seen[-1] in ("Succeeded", "Failed")
                    and seen
                ),
                timeout_seconds=30,
            )
        )


@pytest.fixture
def phase_watch(platform_running: RunningPlatform, op_namespace: str) -> Iterator[PhaseWatch]:
    """A PhaseWatch of the test's namespace, opened before the test applies anything."""
    watch = PhaseWatch(platform_running, op_namespace)
    yield watch
    watch.stop()


def recon_event(env: dict[str, str], ns: str, name: str) -> dict[str, Any]:
    """The run's one recon.completed: one outbox row, and on Kafka one event id."""
    with psycopg.connect(env["DATABASE_URL"]) as conn:
        rows = conn.execute(
            "SELECT payload->>'type' FROM outbox WHERE topic = 'recon' AND key = %s",
            (f"{ns}/{name}",),
        ).fetchall()
    assert rows == [(COMPLETED,)], rows
    [event] = wait_events(env, "recon", f"{ns}/{name}", [COMPLETED])
    assert len(events_of(env, "recon", f"{ns}/{name}")) == 1
    assert event["subject"] == f"namespaces/{ns}/reconciliationruns/{name}"
    return event


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
    phase_watch: PhaseWatch,
) -> None:
    """The example run matches the example purchase and refund, reports the one transaction the
    ledger never saw, shows it in status, conditions and Events, exports it as CSV, and refuses
    a change of its spec; it went Pending, Running, Succeeded and published one recon.completed
    with its summary. A run whose ConfigMap is missing fails with SourceNotFound (and says so in
    its event), and once deleted its rows leave the database."""
    ns, watch = op_namespace, phase_watch
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
    assert watch.of(RUN) == [None, "Pending", "Running", "Succeeded"]
    data = recon_event(operator_env, ns, RUN)["data"]
    assert (data["phase"], data["exceptions"], data["attempt"]) == ("Succeeded", 1, 1)
    assert data["summary"] == summary
    assert data["window"] == {
        "start": "2025-01-01T00:00:00.000Z",
        "end": "2025-02-01T00:00:00.000Z",
    }

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
    data = recon_event(operator_env, ns, "no-file")["data"]
    assert (data["phase"], data["reason"], data["exceptions"]) == ("Failed", "SourceNotFound", 0)
    assert data["message"] == failed["message"]

    uid = get(kubectl, ns, "recon", "no-file")["metadata"]["uid"]
    kubectl("delete", "-n", ns, "recon", "no-file")

    def rows_gone() -> bool:
        with psycopg.connect(operator_env["DATABASE_URL"]) as conn:
            row = conn.execute("SELECT count(*) FROM recon_runs WHERE uid = %s", (uid,)).fetchone()
        return row == (0,)

    wait_for("the deleted run's rows to go", rows_gone, timeout_seconds=60)


def slow_run(name: str, url: str) -> dict[str, Any]:
    """A run whose settlement file takes a few seconds to stream (see _SlowFile)."""
    return {
        "apiVersion": "fintech.dev/v1alpha1",
        "kind": "ReconciliationRun",
        "metadata": {"name": name},
        "spec": {
            "source": {"http": {"url": url, "timeoutSeconds": 30}},
            "checks": ["Settlement"],
            "window": {"start": "2031-01-01T00:00:00Z", "end": "2031-01-02T00:00:00Z"},
        },
    }


def test_a_run_stays_pending_until_a_worker_is_free(
    kubectl: Kubectl,
    op_namespace: str,
    operator_processes: OperatorProcesses,
    operator_env: dict[str, str],
    phase_watch: PhaseWatch,
    slow_url: str,
) -> None:
    """Both worker slots (FINTECH_RECON_WORKERS_MAX, 2) busy with slow runs: a third run shows
    Pending, not Running, and starts only when a slot frees; each run went Pending, Running,
    Succeeded and published exactly one recon.completed."""
    ns, procs, watch = op_namespace, operator_processes, phase_watch
    for name in ("slow-a", "slow-b"):
        kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(slow_run(name, slow_url)))
    for name in ("slow-a", "slow-b"):
        phase_in(kubectl, procs, ns, "recon", name, {"Running"})
    waiting = {
        "apiVersion": "fintech.dev/v1alpha1",
        "kind": "ReconciliationRun",
        "metadata": {"name": "waiting"},
        "spec": {"checks": ["TrialBalance"]},
    }
    kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(waiting))
    pending = phase_in(kubectl, procs, ns, "recon", "waiting", {"Pending", "Running"})
    busy = [get(kubectl, ns, "recon", n)["status"]["phase"] for n in ("slow-a", "slow-b")]
    assert (pending["phase"], busy) == ("Pending", ["Running", "Running"]), (pending, busy)
    assert "startedAt" not in pending
    done = {
        name: phase_in(kubectl, procs, ns, "recon", name, {"Succeeded", "Failed"})
        for name in ("slow-a", "slow-b", "waiting")
    }
    assert {name: status["phase"] for name, status in done.items()} == dict.fromkeys(
        done, "Succeeded"
    )
    first_free = min(done["slow-a"]["completedAt"], done["slow-b"]["completedAt"])
    assert done["waiting"]["startedAt"] >= first_free, done
    for name in done:
        assert watch.of(name) == [None, "Pending", "Running", "Succeeded"], name
        assert recon_event(operator_env, ns, name)["data"]["phase"] == "Succeeded"


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
    the restarted operator resumes the run as attempt 2, each exception is stored once, and
    the run's recon.completed is written and published once, by attempt 2."""
    ns = op_namespace
    kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(slow_run("slow", slow_url)))
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
    operator_processes.start_operator(operator_prefix)
    status = phase_in(kubectl, operator_processes, ns, "recon", "slow", {"Succeeded", "Failed"})
    assert (status["phase"], status["attempt"]) == ("Succeeded", 2), status
    assert status["summary"]["missingInLedger"] == SLOW_ROWS
    with psycopg.connect(dsn) as conn:
        assert conn.execute(
            "SELECT count(*), count(DISTINCT reference) FROM recon_exceptions WHERE run_id = %s",
            (run_id,),
        ).fetchone() == (SLOW_ROWS, SLOW_ROWS)
    data = recon_event(operator_env, ns, "slow")["data"]
    assert (data["attempt"], data["exceptions"]) == (2, SLOW_ROWS)
