"""The reviews, policies and recon handlers render each outcome into the status fields and
Events the docs promise, through the kinds' Status models (no kopf operator, no server: the
Event calls are recorded instead of posted)."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import kopf
import pytest

from fintech_operator import api
from fintech_operator.api import reconciliationrun as run_api
from fintech_operator.app import card_state
from fintech_operator.app import policies as policy_case
from fintech_operator.app import reconciliation as run_case
from fintech_operator.app import reconciliation_schedule as schedule_case
from fintech_operator.app import review as review_case
from fintech_operator.app.outcomes import Rejected, Retry
from fintech_operator.handlers import cards, policies, postings, recon, reviews

WHEN = datetime.datetime(2026, 12, 5, 10, 0, 0, 654321, tzinfo=datetime.UTC)
SUMMARY = {
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
    "checks": {"settlement": {"result": "Failed", "exceptions": 1}},
}


@pytest.fixture
def events(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str, str]]:
    """(type, reason, message) of every Event the handlers post."""
    posted: list[tuple[str, str, str]] = []

    def event(_: Any, *, type: str, reason: str, message: str = "") -> None:
        posted.append((type, reason, message))

    def warn(_: Any, *, reason: str, message: str = "") -> None:
        posted.append(("Warning", reason, message))

    monkeypatch.setattr(kopf, "event", event)
    monkeypatch.setattr(kopf, "warn", warn)
    monkeypatch.setattr(
        kopf,
        "info",
        lambda _, *, reason, message="": event(_, type="Normal", reason=reason, message=message),
    )
    return posted


def body(status: dict[str, Any] | None = None) -> kopf.Body:
    meta = {"name": "x", "namespace": "team-a", "uid": "uid-x", "generation": 3}
    return kopf.Body({"metadata": meta, "status": status or {}})


def ready_of(patch: kopf.Patch, type_: str = "Ready") -> dict[str, Any]:
    return next(c for c in patch.status["conditions"] if c["type"] == type_)


def test_a_refused_review_shows_the_reason_and_warns(events: list[tuple[str, str, str]]) -> None:
    patch = kopf.Patch()
    refused = Rejected(api.CardReviewReason.CARD_NOT_FOUND, "card 'a' does not exist in team-a")
    reviews._render(body(), patch, refused)
    status = dict(patch.status)
    assert (status["phase"], status["reason"], status["observedGeneration"]) == (
        "Refused",
        "CardNotFound",
        3,
    )
    ready = ready_of(patch)
    assert (ready["status"], ready["reason"], ready["observedGeneration"]) == (
        "False",
        "CardNotFound",
        3,
    )
    assert events == [("Warning", "CardNotFound", "card 'a' does not exist in team-a")]


def test_a_recorded_review_shows_when_to_the_second_and_clears_the_reason(
    events: list[tuple[str, str, str]],
) -> None:
    patch = kopf.Patch()
    reviews._render(body({"reason": "Old"}), patch, review_case.Recorded(9, WHEN, "recorded"))
    assert patch.status["recordedAt"] == "2026-12-05T10:00:00Z"
    assert patch.status["reason"] is None  # null: the merge patch removes the old reason
    assert ready_of(patch)["reason"] == "Recorded"
    assert events == [("Normal", "ReviewRecorded", "recorded")]


def test_a_review_waiting_for_its_card_shows_the_wait_and_retries(
    events: list[tuple[str, str, str]],
) -> None:
    """A CardReview applied before its card (or for a card that never comes) showed no phase and
    no reason for the whole minute of its wait; it shows Pending, WaitingForCard and why, with
    one Warning Event, as a Posting waiting for its card does."""
    patch = kopf.Patch()
    why = "waiting for card 'a' in ns: it does not exist; the review is refused (CardNotFound)"
    with pytest.raises(kopf.TemporaryError) as raised:
        reviews._render(body(), patch, Retry(2.0, why), "3 of 30")
    assert raised.value.delay == 2.0
    assert str(raised.value) == f"waiting: {why} (attempt 3 of 30, next in 2 s)"  # INFO
    assert (patch.status["phase"], patch.status["reason"]) == ("Pending", "WaitingForCard")
    assert patch.status["message"] == why
    assert ready_of(patch)["status"] == "False"
    assert events == [("Warning", "WaitingForCard", why)]
    with pytest.raises(kopf.TemporaryError):
        recon._render(body(), kopf.Patch(), Retry(15.0, "busy"))


def test_a_degraded_compliance_policy_warns_and_a_quiet_recheck_writes_nothing_new(
    events: list[tuple[str, str, str]],
) -> None:
    degraded = policy_case.Checked(True, api.PolicyReason.SANCTIONS_LIST_NOT_FOUND, "gone")
    patch = kopf.Patch()
    policies._render(body(), patch, policies.COMPLIANCE, degraded, quiet=False)
    assert (patch.status["phase"], patch.status["reason"]) == ("Degraded", "SanctionsListNotFound")
    assert events == [("Warning", "SanctionsListNotFound", "gone")]
    again = kopf.Patch()
    policies._render(body(dict(patch.status)), again, policies.COMPLIANCE, degraded, quiet=True)
    assert dict(again) == {}
    assert len(events) == 1


def test_a_recheck_that_finds_a_risk_policy_now_in_use_writes_it(
    events: list[tuple[str, str, str]],
) -> None:
    shown = {"phase": "Ready", "inUse": False, "rules": 1, "observedGeneration": 3}
    now_in_use = policy_case.Checked(True, api.PolicyReason.VALID, "1 rule(s); in use", rules=1)
    patch = kopf.Patch()
    policies._render(body(shown), patch, policies.RISK, now_in_use, quiet=True)
    assert patch.status["inUse"] is True
    assert ready_of(patch)["message"] == "1 rule(s); in use"
    assert events == [("Normal", "PolicyReady", "1 rule(s); in use")]


def test_a_run_with_exceptions_succeeds_but_is_not_reconciled(
    events: list[tuple[str, str, str]],
) -> None:
    succeeded = run_case.Succeeded(
        attempt=1,
        started_at=WHEN,
        completed_at=WHEN + datetime.timedelta(seconds=5),
        summary=run_api.Summary.model_validate(SUMMARY),
        line="3 records, 2 matched, 1 exceptions",
    )
    patch = kopf.Patch()
    recon._render(body({"phase": "Running"}), patch, succeeded)
    status = dict(patch.status)
    assert status["phase"] == "Succeeded"
    assert (status["startedAt"], status["completedAt"]) == (
        "2026-12-05T10:00:00Z",
        "2026-12-05T10:00:05Z",
    )
    assert status["summary"]["checks"] == {"settlement": {"result": "Failed", "exceptions": 1}}
    assert (ready_of(patch)["status"], ready_of(patch)["reason"]) == ("True", "Completed")
    reconciled = ready_of(patch, "Reconciled")
    assert (reconciled["status"], reconciled["reason"]) == ("False", "ExceptionsFound")
    assert [(kind, reason) for kind, reason, _ in events] == [
        ("Normal", "Succeeded"),
        ("Warning", "ExceptionsFound"),
    ]
    assert "fintech-operator recon report x -n team-a" in events[1][2]


def test_a_failed_run_shows_its_attempt_and_a_refused_one_keeps_its_completion_time(
    events: list[tuple[str, str, str]],
) -> None:
    failed = run_case.Failed(api.ReconciliationReason.SOURCE_NOT_FOUND, "gone", 2, WHEN, WHEN)
    patch = kopf.Patch()
    recon._render(body(), patch, failed)
    assert (patch.status["phase"], patch.status["reason"], patch.status["attempt"]) == (
        "Failed",
        "SourceNotFound",
        2,
    )
    assert ready_of(patch, "Reconciled")["status"] == "Unknown"
    refused = Rejected(api.ReconciliationReason.INVALID_SPEC, "spec.window: bad")
    again = kopf.Patch()
    recon._render(body({"completedAt": "2026-12-01T00:00:00Z"}), again, refused)
    assert again.status["completedAt"] == "2026-12-01T00:00:00Z"
    assert "attempt" not in again.status
    assert events[-1] == ("Warning", "Failed", "InvalidSpec: spec.window: bad")


def test_a_tick_writes_the_run_it_created_and_only_a_changed_schedule_status(
    events: list[tuple[str, str, str]],
) -> None:
    due = WHEN.replace(microsecond=0)
    ticked = schedule_case.Ticked(
        phase=api.SchedulePhase.ACTIVE,
        message="0 2 * * * (UTC)",
        next_at=due + datetime.timedelta(days=1),
        due_at=due,
        run_name="x-1",
        created=True,
    )
    patch = kopf.Patch()
    recon._render_tick(body(), patch, ticked)
    assert (patch.status["lastScheduleTime"], patch.status["lastRunName"]) == (
        "2026-12-05T10:00:00Z",
        "x-1",
    )
    assert (patch.status["phase"], patch.status["nextScheduleTime"]) == (
        "Active",
        "2026-12-06T10:00:00Z",
    )
    assert events == [("Normal", "RunCreated", "created x-1 for 2026-12-05T10:00:00Z")]
    shown = {"phase": "Active", "nextScheduleTime": "2026-12-06T10:00:00Z", "observedGeneration": 3}
    quiet = kopf.Patch()
    nothing_due = schedule_case.Ticked(api.SchedulePhase.ACTIVE, "m", ticked.next_at)
    recon._render_tick(body(shown), quiet, nothing_due)
    assert dict(quiet) == {}


def test_the_events_a_run_posts_are_the_ones_its_docs_name() -> None:
    """Users read these reasons in ``kubectl describe``; docs/reconciliation.md lists them."""
    docs = (Path(__file__).resolve().parents[2] / "docs" / "reconciliation.md").read_text()
    for reason in api.reconciliationrun.ReconciliationEvent:
        assert f"`{reason.value}`" in docs, reason


def test_a_closed_card_shows_the_zero_balance_its_close_needed(
    events: list[tuple[str, str, str]],
) -> None:
    """A card paid off and closed before the next refresh showed Closed with its old debt
    (BALANCE 8400) forever, since a Closed card is no longer refreshed; the close itself
    proves the balance is zero, so it says so."""
    shown = {"phase": "Active", "balance": {"amount": 8400, "currency": "USD"}}
    patch = kopf.Patch()
    closed = card_state.StateChanged(api.CardPhase.CLOSED, card_state.CLOSED_MESSAGE)
    cards._render_state(body(shown), patch, closed, announce=True)
    assert patch.status["phase"] == "Closed"
    assert patch.status["balance"] == {"amount": 0, "currency": "USD"}
    frozen = kopf.Patch()
    now_frozen = card_state.StateChanged(api.CardPhase.FROZEN, "card is Frozen")
    cards._render_state(body(shown), frozen, now_frozen, announce=True)
    assert "balance" not in frozen.status  # only a close knows the balance
    never_issued = kopf.Patch()
    before_issue = card_state.StateChanged(
        api.CardPhase.CLOSED, "closed before it was issued", "ClosedBeforeIssue"
    )
    cards._render_state(body({"phase": "PendingReview"}), never_issued, before_issue, announce=True)
    assert "balance" not in never_issued.status


def _journal(journal_id: int) -> Any:
    from fintech_operator.ledger import model  # noqa: PLC0415

    moment = datetime.datetime(2026, 12, 5, 10, 0, tzinfo=datetime.UTC)
    return model.Journal(
        id=journal_id, idempotency_key="team-a/x", request_hash="h",
        kind=model.PostingKind.PURCHASE, reference=None, occurred_at=moment, posted_at=moment,
        reverses_journal_id=None, metadata={}, lines=(),
    )  # fmt: skip


def test_a_posting_flagged_for_review_warns_with_why(events: list[tuple[str, str, str]]) -> None:
    """docs/cards.md: a posting decided Review is posted and flagged, and "the record and Events
    make it visible"; the only Event was a Normal "journal 21". It now also posts a Warning
    RiskReview saying why; an approved posting posts none."""
    from fintech_operator.app import posting as posting_case  # noqa: PLC0415

    spec = {"type": "Purchase", "currency": "USD", "amount": 100}
    flagged = api.Decision(
        decision="Review",
        reasons=["VelocityCount"],
        details=["VelocityCount: 2 postings in 3600s, the maximum is 1"],
    )
    patch = kopf.Patch()
    flagged_body = kopf.Body({**body(), "spec": spec})
    postings._render(flagged_body, patch, posting_case.Posted(_journal(21), flagged))
    assert patch.status["phase"] == "Posted"
    assert patch.status["risk"]["decision"] == "Review"
    assert events == [
        ("Normal", "Posted", "journal 21"),
        (
            "Warning",
            "RiskReview",
            "journal 21 posted, flagged for review: VelocityCount: 2 postings in 3600s, "
            "the maximum is 1",
        ),
    ]
    events.clear()
    approved = api.Decision(decision="Approve")
    postings._render(flagged_body, kopf.Patch(), posting_case.Posted(_journal(22), approved))
    assert events == [("Normal", "Posted", "journal 22")]
