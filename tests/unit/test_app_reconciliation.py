"""RunReconciliation's and TickSchedule's outcomes, with fakes of their ports (no kopf, no
database, no API server): a run that may not run is refused and still announced, a stored
outcome is reported (checked first), and every outage becomes a retry with its delay; a
schedule creates the run that is due once, and only that one."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import psycopg
import pydantic
import pytest

from fintech_operator import api
from fintech_operator.app import reconciliation as runs
from fintech_operator.app import reconciliation_schedule as schedules
from fintech_operator.app.outcomes import Rejected, Retry
from fintech_operator.ledger.model import OutboxEvent
from fintech_operator.recon import model, store

NS = "team-a"
STARTED = datetime.datetime(2026, 12, 5, 10, 0, 0, tzinfo=datetime.UTC)
COMPLETED = STARTED + datetime.timedelta(seconds=42)
SPEC: dict[str, Any] = {"checks": ["TrialBalance"]}
CHECK = {"result": "Passed", "exceptions": 0}
SUMMARY: dict[str, Any] = {
    "recordsRead": 3,
    "ledgerReferences": 3,
    "matched": 2,
    "matchedWithinTolerance": 0,
    "partialCaptures": 0,
    "amountMismatches": 1,
    "currencyMismatches": 0,
    "timeMismatches": 0,
    "missingInLedger": 0,
    "missingInSource": 0,
    "duplicates": 0,
    "exceptions": 1,
    "checks": {"trialBalance": CHECK},
}


@dataclasses.dataclass
class FakeRunner:
    """Returns ``state`` or raises ``error``; records what it was asked."""

    state: store.RunState | None = None
    error: BaseException | None = None
    executed: list[tuple[store.RunKey, model.Plan]] = dataclasses.field(default_factory=list)
    announced: list[OutboxEvent] = dataclasses.field(default_factory=list)
    slots: asyncio.Semaphore = dataclasses.field(default_factory=lambda: asyncio.Semaphore(1))

    def slot(self) -> asyncio.Semaphore:
        return self.slots

    async def execute(
        self, key: store.RunKey, plan: model.Plan, spec: api.ReconciliationRunSpec
    ) -> store.RunState:
        assert self.slots.locked(), "a run works only while it holds a worker slot"
        self.executed.append((key, plan))
        if self.error is not None:
            raise self.error
        assert self.state is not None
        return self.state

    async def announce(self, event: OutboxEvent) -> None:
        self.announced.append(event)


@dataclasses.dataclass
class FakeProgress:
    shown: list[model.Plan] = dataclasses.field(default_factory=list)

    async def running(self, plan: model.Plan) -> datetime.datetime:
        self.shown.append(plan)
        return STARTED


def state(kind: str, **changes: Any) -> store.RunState:
    fields: dict[str, Any] = {
        "run_id": 7,
        "attempt": 2,
        "state": kind,
        "started_at": STARTED - datetime.timedelta(hours=1),
        "completed_at": COMPLETED,
        "summary": SUMMARY if kind == "succeeded" else None,
        "reason": None,
        "message": None,
    }
    return store.RunState(**{**fields, **changes})


async def run(
    runner: FakeRunner, spec: Mapping[str, Any] = SPEC, cluster_namespace: str = ""
) -> tuple[runs.Outcome, FakeProgress]:
    progress = FakeProgress()
    command = runs.RunReconciliation(NS, "nightly", "uid-1", spec)
    outcome = await runs.run_reconciliation(
        command, runs.Ports(runner, progress, cluster_namespace)
    )
    return outcome, progress


async def test_a_run_that_ran_reports_its_checked_summary() -> None:
    runner = FakeRunner(state("succeeded"))
    outcome, progress = await run(runner)
    assert isinstance(outcome, runs.Succeeded)
    assert (outcome.attempt, outcome.started_at, outcome.completed_at) == (2, STARTED, COMPLETED)
    assert outcome.summary.exceptions == 1
    assert outcome.line == "3 records, 2 matched, 1 exceptions"
    assert [key for key, _ in runner.executed] == [store.RunKey("uid-1", NS, "nightly")]
    assert len(progress.shown) == 1
    assert progress.shown[0].cluster_wide is False


async def test_a_summary_the_database_returns_malformed_is_not_shown() -> None:
    """House rule 6: a negative count from the row is refused, not copied into status."""
    runner = FakeRunner(state("succeeded", summary={**SUMMARY, "matched": -1}))
    with pytest.raises(pydantic.ValidationError):
        await run(runner)


@pytest.mark.parametrize(
    ("stored", "reason"),
    [
        ("SourceNotFound", api.ReconciliationReason.SOURCE_NOT_FOUND),
        ("SourceTooLarge", api.ReconciliationReason.SOURCE_TOO_LARGE),
        (None, api.ReconciliationReason.FAILED),
        ("NoSuchWord", api.ReconciliationReason.FAILED),
    ],
)
async def test_a_run_that_could_not_read_its_source_fails_with_the_stored_reason(
    stored: str | None, reason: api.ReconciliationReason
) -> None:
    runner = FakeRunner(state("failed", reason=stored, message="configmap team-a/x is gone"))
    outcome, _ = await run(runner)
    assert outcome == runs.Failed(reason, "configmap team-a/x is gone", 2, STARTED, COMPLETED)


async def test_an_invalid_spec_is_refused_announced_and_never_run() -> None:
    runner = FakeRunner(state("succeeded"))
    outcome, progress = await run(runner, {"checks": ["Settlement"], "dryRun": True})
    assert isinstance(outcome, Rejected)
    assert outcome.reason is api.ReconciliationReason.INVALID_SPEC
    assert "source is required when the Settlement check runs" in outcome.message
    assert runner.executed == []
    assert progress.shown == []
    (event,) = runner.announced
    data = event.payload["data"]
    assert (data["run"], data["phase"], data["reason"]) == (
        "team-a/nightly",
        "Failed",
        "InvalidSpec",
    )
    assert data["dryRun"] is True


@pytest.mark.parametrize(("allowed", "refused"), [("", True), ("finance", True), (NS, False)])
async def test_a_cluster_wide_run_runs_only_in_the_administrators_namespace(
    allowed: str, refused: bool
) -> None:
    runner = FakeRunner(state("succeeded"))
    outcome, _ = await run(runner, {**SPEC, "scope": "Cluster"}, cluster_namespace=allowed)
    if refused:
        assert isinstance(outcome, Rejected)
        assert outcome.reason is api.ReconciliationReason.CLUSTER_SCOPE_NOT_ALLOWED
        assert runner.executed == []
        assert runner.announced[0].payload["data"]["reason"] == "ClusterScopeNotAllowed"
    else:
        assert isinstance(outcome, runs.Succeeded)
        assert runner.executed[0][1].cluster_wide is True
        assert runner.announced == []


@pytest.mark.parametrize(
    ("error", "delay_seconds", "why"),
    [
        (store.Busy("held by another worker"), runs.BUSY_RETRY_SECONDS, "held by another worker"),
        (model.Interrupted("stopping"), runs.TRANSIENT_RETRY_SECONDS, "stopping"),
        (
            psycopg.OperationalError("server closed"),
            runs.TRANSIENT_RETRY_SECONDS,
            "transient failure, retrying: OperationalError: server closed",
        ),
        (
            ConnectionRefusedError("refused"),
            runs.TRANSIENT_RETRY_SECONDS,
            "transient failure, retrying: ConnectionRefusedError: refused",
        ),
    ],
)
async def test_outages_are_retried_after_their_delay(
    error: BaseException, delay_seconds: float, why: str
) -> None:
    outcome, _ = await run(FakeRunner(error=error))
    assert outcome == Retry(delay_seconds, why)


async def test_a_bug_is_not_mistaken_for_an_outage() -> None:
    with pytest.raises(KeyError):
        await run(FakeRunner(error=KeyError("bug")))


async def test_a_run_still_running_elsewhere_is_retried() -> None:
    outcome, _ = await run(FakeRunner(state("running", completed_at=None)))
    assert outcome == Retry(runs.TRANSIENT_RETRY_SECONDS, "run is running")


def test_every_reason_a_source_can_fail_with_is_in_the_api() -> None:
    """The words recon's sources and parser put into SourceError are the API's reasons."""
    recon = Path(runs.__file__).resolve().parents[1] / "recon"
    text = "".join((recon / name).read_text() for name in ("sources.py", "parse.py"))
    words = set(re.findall(r'SourceError\(\s*"([A-Za-z]+)"', text))
    words |= set(re.findall(r'_secret_data\([^)]*"([A-Za-z]+)"\)', text))
    assert words >= {"SourceNotFound", "SourceMalformed", "CredentialsNotFound"}
    assert words <= {reason.value for reason in api.ReconciliationReason}


# --- Schedules ------------------------------------------------------------------------------------

NOW = datetime.datetime(2026, 12, 5, 2, 0, 30, tzinfo=datetime.UTC)
DAILY: dict[str, Any] = {"schedule": "0 2 * * *", "template": SPEC}


@dataclasses.dataclass
class FakeRuns:
    existing: set[str] = dataclasses.field(default_factory=set)
    created: list[Mapping[str, Any]] = dataclasses.field(default_factory=list)
    pruned_with: list[tuple[int, int]] = dataclasses.field(default_factory=list)
    doomed: tuple[str, ...] = ()

    async def create(self, namespace: str, run: Mapping[str, Any]) -> bool:
        name = run["metadata"]["name"]
        if name in self.existing:
            return False
        self.existing.add(name)
        self.created.append(run)
        return True

    async def prune(
        self, owner: schedules.TickSchedule, succeeded_max: int, failed_max: int
    ) -> Sequence[str]:
        self.pruned_with.append((succeeded_max, failed_max))
        return self.doomed


def tick_command(spec: Mapping[str, Any] = DAILY, **extra: Any) -> schedules.TickSchedule:
    created = NOW - datetime.timedelta(hours=3)
    return schedules.TickSchedule(
        NS, "nightly", "sched-uid", spec, NOW, created_at=created, **extra
    )


async def test_the_run_that_is_due_is_created_once_with_its_window_and_owner() -> None:
    fake = FakeRuns(doomed=("nightly-old",))
    first = await schedules.tick_schedule(tick_command(), fake)
    again = await schedules.tick_schedule(tick_command(), fake)
    due = NOW.replace(second=0)
    assert isinstance(first, schedules.Ticked)
    assert (first.due_at, first.created, first.pruned) == (due, True, ("nightly-old",))
    assert first.run_name == f"nightly-{int(due.timestamp()) // 60}"
    assert first.phase is api.SchedulePhase.ACTIVE
    assert first.next_at == due + datetime.timedelta(days=1)
    assert isinstance(again, schedules.Ticked)
    assert (again.run_name, again.created) == (first.run_name, False)
    (run,) = fake.created
    assert run["spec"]["window"] == {"start": "2026-12-04T02:00:00Z", "end": "2026-12-05T02:00:00Z"}
    assert run["spec"]["checks"] == ["TrialBalance"]
    owner = run["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["uid"], owner["controller"]) == (
        "ReconciliationSchedule",
        "sched-uid",
        True,
    )
    assert run["metadata"]["labels"] == {schedules.SCHEDULE_LABEL: "nightly"}
    assert fake.pruned_with == [(3, 1), (3, 1)]


async def test_nothing_is_due_after_the_last_run() -> None:
    fake = FakeRuns()
    outcome = await schedules.tick_schedule(
        tick_command(last_scheduled_at=NOW.replace(second=0)), fake
    )
    assert isinstance(outcome, schedules.Ticked)
    assert (outcome.due_at, outcome.run_name, outcome.created) == (None, None, False)
    assert fake.created == []


async def test_a_time_missed_beyond_the_starting_deadline_is_skipped() -> None:
    fake = FakeRuns()
    late = NOW + datetime.timedelta(hours=2)
    command = dataclasses.replace(tick_command({**DAILY, "startingDeadlineSeconds": 600}), now=late)
    outcome = await schedules.tick_schedule(command, fake)
    assert isinstance(outcome, schedules.Ticked)
    assert outcome.due_at is None
    assert fake.created == []


async def test_a_suspended_schedule_creates_nothing_and_has_no_next_time() -> None:
    fake = FakeRuns()
    outcome = await schedules.tick_schedule(tick_command({**DAILY, "suspend": True}), fake)
    assert outcome == schedules.Ticked(
        phase=api.SchedulePhase.SUSPENDED, message="0 2 * * * (UTC), suspended", next_at=None
    )
    assert fake.created == []


async def test_an_invalid_schedule_is_rejected_and_touches_no_run() -> None:
    fake = FakeRuns()
    outcome = await schedules.tick_schedule(tick_command({**DAILY, "schedule": "61 * * * *"}), fake)
    assert isinstance(outcome, Rejected)
    assert outcome.reason is api.ScheduleReason.INVALID_SPEC
    assert "spec.schedule" in outcome.message
    assert (fake.created, fake.pruned_with) == ([], [])
