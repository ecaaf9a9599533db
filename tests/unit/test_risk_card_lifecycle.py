"""What risk and compliance outcomes mean for a card, and how they show in status (pure)."""

from __future__ import annotations

import datetime

import pytest

from fintech_operator import api
from fintech_operator.cards import lifecycle
from fintech_operator.compliance import model as cm
from fintech_operator.risk import model as rm

AT = datetime.datetime(2025, 1, 15, 9, 30, tzinfo=datetime.UTC)


def risk(action: rm.Action) -> rm.Decision:
    matches = (
        () if action is rm.Action.APPROVE else (rm.Match("BlockedHolderCountry", action, 500, "x"),)
    )
    return rm.Decision(action, 500 if matches else 0, matches, "ns/p")


def check(outcome: cm.Outcome, reason: str) -> cm.CheckResult:
    return cm.CheckResult(cm.CheckKind.SANCTIONS, outcome, reason, f"{reason} detail")


CLEAR = check(cm.Outcome.CLEAR, "NoMatch")


@pytest.mark.parametrize(
    ("decision", "checks", "phase", "reason"),
    [
        (risk(rm.Action.APPROVE), [CLEAR], "Active", "Approved"),
        (risk(rm.Action.REVIEW), [CLEAR], "PendingReview", "RiskReview"),
        (risk(rm.Action.DECLINE), [CLEAR], "Rejected", "RiskDeclined"),
        (
            risk(rm.Action.APPROVE),
            [check(cm.Outcome.REVIEW, "PossibleMatch")],
            "PendingReview",
            "PossibleMatch",
        ),
        (
            risk(rm.Action.APPROVE),
            [check(cm.Outcome.REJECT, "ExactMatch")],
            "Rejected",
            "ExactMatch",
        ),
        # Compliance is weighed first: its refusal is what the user must see.
        (
            risk(rm.Action.DECLINE),
            [check(cm.Outcome.REJECT, "KycRejected")],
            "Rejected",
            "KycRejected",
        ),
        (
            risk(rm.Action.REVIEW),
            [check(cm.Outcome.REVIEW, "KycPending")],
            "PendingReview",
            "KycPending",
        ),
        # A risk decline beats a compliance review: nobody reviews a card risk refuses.
        (
            risk(rm.Action.DECLINE),
            [check(cm.Outcome.REVIEW, "KycPending")],
            "Rejected",
            "RiskDeclined",
        ),
        (risk(rm.Action.APPROVE), [], "Active", "Approved"),
    ],
)
def test_verdict(
    decision: rm.Decision, checks: list[cm.CheckResult], phase: str, reason: str
) -> None:
    """Reject beats review beats approve; among refusals, compliance speaks first."""
    verdict = lifecycle.verdict(decision, checks)
    assert (verdict.phase, verdict.reason) == (phase, reason)
    assert verdict.message


def card(name: str, phase: str | None, created: str) -> dict[str, object]:
    return {"name": name, "phase": phase, "created": created}


def test_user_cards_counts_held_cards_and_older_undecided_ones() -> None:
    """Issued and reviewed cards count; undecided ones only when older; finished ones never."""
    mine = ("c-mine", "2025-01-15T10:00:00Z")
    entries = [
        card("c-mine", None, mine[1]),
        card("active", "Active", "2025-01-20T00:00:00Z"),  # newer but issued: counts
        card("frozen", "Frozen", "2025-01-01T00:00:00Z"),
        card("review", "PendingReview", "2025-01-01T00:00:00Z"),
        card("older-pending", "Pending", "2025-01-15T09:59:59Z"),
        card("older-new", None, "2025-01-15T09:00:00Z"),
        card("newer-pending", None, "2025-01-15T10:00:01Z"),  # newer and undecided: not yet
        card("a-same-time", None, mine[1]),  # same time: the name breaks the tie (a < c)
        card("z-same-time", None, mine[1]),
        card("closed", "Closed", "2025-01-01T00:00:00Z"),
        card("rejected", "Rejected", "2025-01-01T00:00:00Z"),
    ]
    assert lifecycle.user_cards(entries, *mine) == 6


def test_two_cards_applied_together_never_both_count_each_other() -> None:
    """Exactly one of two simultaneous undecided cards sees the other."""
    a, b = card("a", None, "t"), card("b", None, "t")
    assert lifecycle.user_cards([a, b], "a", "t") + lifecycle.user_cards([a, b], "b", "t") == 1


def test_risk_status_is_valid_api_status() -> None:
    """status.risk carries decision, score, rules, details and the audit row id."""
    status = lifecycle.risk_status(risk(rm.Action.REVIEW), 42, AT)
    assert status == {
        "decision": "Review",
        "policy": "ns/p",
        "score": 500,
        "reasons": ["BlockedHolderCountry"],
        "decidedAt": "2025-01-15T09:30:00Z",
        "details": ["x"],
        "recordId": "42",
    }
    api.Decision.model_validate(status)


def test_compliance_status_shows_worst_outcome_and_match() -> None:
    """status.compliance has the worst outcome, each check's reason and the listed name."""
    hit = cm.SanctionsHit("PETROV, Ivan Demo", "90001", "DEMO", 9750, False)
    review = cm.CheckResult(
        cm.CheckKind.SANCTIONS, cm.Outcome.REVIEW, "PossibleMatch", "resembles " * 40, hit=hit
    )
    kyc = cm.CheckResult(cm.CheckKind.KYC, cm.Outcome.CLEAR, "KycAccepted", "ok")
    status = lifecycle.compliance_status("ns/c", [(7, kyc), (8, review)], AT)
    assert status["decision"] == "Review"
    assert status["reasons"] == ["KycAccepted", "PossibleMatch"]
    assert status["recordId"] == "8"
    assert status["match"] == {
        "name": "PETROV, Ivan Demo",
        "entryId": "90001",
        "program": "DEMO",
        "scoreBps": 9750,
        "exact": False,
    }
    assert all(len(line) <= api.card.DETAIL_MAX_LENGTH for line in status["details"])
    api.Decision.model_validate(status)


def test_compliance_status_of_no_checks_is_clear() -> None:
    """With nothing checked there is nothing to hold the card for."""
    assert lifecycle.compliance_status("ns/c", [], AT)["decision"] == "Clear"
