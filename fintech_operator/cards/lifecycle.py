"""The card lifecycle's decisions (pure): what risk and compliance outcomes mean for a card.

::

    Pending ─► risk + compliance ─┬─► Active | Frozen   (Approve and Clear: account opened)
                                  ├─► PendingReview    (any Review) ─CardReview─► Active | Rejected
                                  └─► Rejected         (compliance Reject or risk Decline)
    Active ◄─spec.state─► Frozen;  Active | Frozen ─spec.state: Closed─► Closed (balance 0)

Compliance is weighed before risk: a legal refusal (KYC, an exact sanctions match) is the reason
a user must see even when risk also declined.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from fintech_operator import api
from fintech_operator.compliance import model as compliance_model
from fintech_operator.risk import model as risk_model

ISSUED_PHASES: Final = frozenset({"Active", "Frozen"})
# Phases of cards that hold (or may still get) an account: they count towards cards per user.
HELD_PHASES: Final = frozenset({"Active", "Frozen", "PendingReview"})
UNDECIDED_PHASES: Final = frozenset({None, "", "Pending"})


@dataclass(frozen=True)
class Verdict:
    """What to do with a card after its assessment."""

    phase: str  # Active (issue it), PendingReview or Rejected
    reason: str
    message: str


def verdict(risk: risk_model.Decision, checks: Sequence[compliance_model.CheckResult]) -> Verdict:
    """Combine the risk decision and the compliance checks into the card's next phase."""
    worst = compliance_model.worst(checks)
    if worst is not None and worst.outcome is compliance_model.Outcome.REJECT:
        return Verdict("Rejected", worst.reason, worst.detail)
    if risk.action is risk_model.Action.DECLINE:
        return Verdict("Rejected", "RiskDeclined", risk.summary())
    if worst is not None and worst.outcome is compliance_model.Outcome.REVIEW:
        return Verdict("PendingReview", worst.reason, worst.detail)
    if risk.action is risk_model.Action.REVIEW:
        return Verdict("PendingReview", "RiskReview", risk.summary())
    return Verdict("Active", "Approved", "risk approved and compliance cleared")


NAME_REUSED: Final = "NameReused"


def name_reused(
    namespace: str, name: str, uid: str, owners: Iterable[tuple[str, str | None]]
) -> Verdict | None:
    """Refuse a card whose name already has a ledger account opened for another card.

    ``owners`` are (account code, card uid it was opened for) of every account opened under the
    name. The card's own account (a retried or resumed handler) is no obstacle; an account of any
    other uid (or of none recorded) means the name belonged to a deleted card whose balance,
    history and rewards must not pass to a new card. The refusal is final: a new name is the fix.
    """
    for code, owner in owners:
        if owner == uid:
            continue
        who = "a card whose uid was not recorded" if owner is None else f"card uid {owner}"
        return Verdict(
            "Rejected",
            NAME_REUSED,
            f"the name {namespace}/{name} belonged to {who}, deleted since; its ledger account "
            f"{code} and history are kept and never pass to another card: apply this card "
            "under a new name",
        )
    return None


def user_cards(entries: Iterable[Mapping[str, Any]], name: str, created: str) -> int:
    """Cards the user already holds, for the MaxCardsPerUser rule.

    Every other card that is issued or waiting for review counts; a card still undecided counts
    only when it is older (creation time, then name), so two cards applied together never both
    count each other and exactly the newer one can exceed the limit.
    """
    mine = (created, name)
    count = 0
    for entry in entries:
        other = str(entry.get("name"))
        if other == name:
            continue
        phase = entry.get("phase")
        if phase in HELD_PHASES or (
            phase in UNDECIDED_PHASES and (str(entry.get("created")), other) < mine
        ):
            count += 1
    return count


def risk_status(
    decision: risk_model.Decision, record_id: int, at: datetime.datetime
) -> dict[str, Any]:
    """``status.risk`` of the card, as the API stores it."""
    return api.to_api(risk_decision(decision, record_id, at))


def risk_decision(
    decision: risk_model.Decision, record_id: int, at: datetime.datetime
) -> api.Decision:
    """``status.risk`` of a card or a posting."""
    return api.Decision(
        decision=decision.action.value,
        policy=decision.policy,
        score=decision.score,
        reasons=list(decision.reasons)[: _reasons_max()],
        decided_at=at,
        details=[_line(match.detail) for match in decision.matches][: _reasons_max()],
        record_id=str(record_id),
    )


def compliance_status(
    policy_ref: str,
    checks: Sequence[tuple[int, compliance_model.CheckResult]],
    at: datetime.datetime,
) -> dict[str, Any]:
    """``status.compliance`` of the card, as the API stores it."""
    return api.to_api(compliance_decision(policy_ref, checks, at))


def compliance_decision(
    policy_ref: str,
    checks: Sequence[tuple[int, compliance_model.CheckResult]],
    at: datetime.datetime,
) -> api.Decision:
    """``status.compliance`` of the card: the worst outcome, every check's reason and detail."""
    results = [check for _, check in checks]
    worst = compliance_model.worst(results)
    worst_id = next((id_ for id_, check in checks if check is worst), None)
    hit = next((check.hit for check in results if check.hit is not None), None)
    return api.Decision(
        decision=worst.outcome.value if worst else compliance_model.Outcome.CLEAR.value,
        policy=policy_ref,
        reasons=[check.reason for check in results][: _reasons_max()],
        decided_at=at,
        details=[_line(f"{check.kind.value}: {check.detail}") for check in results][
            : _reasons_max()
        ],
        record_id=None if worst_id is None else str(worst_id),
        match=None
        if hit is None
        else api.SanctionsMatch(
            name=hit.name,
            entry_id=hit.entry_id,
            program=hit.program,
            score_bps=hit.score_bps,
            exact=hit.exact,
        ),
    )


def _reasons_max() -> int:
    return int(api.card.DECISION_REASONS_MAX_ITEMS)


def _line(text: str) -> str:
    return text[: api.card.DETAIL_MAX_LENGTH]
