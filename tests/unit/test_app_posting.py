"""Post and Reverse without kopf or a database: each outcome, with a fake of the ledger port.

The fake refuses and replays as the ledger does (``model.LedgerError`` subclasses, a replay
by request hash); every rejection reason the use case decides itself is covered here, and
every reason the ledger raises is mapped to its documented one.
"""

from __future__ import annotations

import dataclasses
import datetime
from dataclasses import dataclass, field
from typing import Any

import pytest

from fintech_operator import api
from fintech_operator.app import posting
from fintech_operator.compliance import model as compliance_model
from fintech_operator.ledger import model, rules
from fintech_operator.risk import model as risk_model
from fintech_operator.risk import store as risk_store

NOW = datetime.datetime(2026, 12, 5, 10, 0, tzinfo=datetime.UTC)
REF = posting.PostingRef("ns1", "p1", "u1", NOW)
ACCOUNT = model.card_account_code("ns1", "c1", "USD")
ACTIVE = posting.CardView("Active", ACCOUNT, "USD")


def _journal(request: model.PostingRequest, id_: int = 7) -> model.Journal:
    return model.Journal(
        id=id_, idempotency_key=request.idempotency_key, request_hash=rules.request_hash(request),
        kind=request.kind, reference=request.reference, occurred_at=request.occurred_at or NOW,
        posted_at=NOW, reverses_journal_id=None, metadata=request.metadata,
        lines=tuple(request.lines), namespace=request.namespace,
    )  # fmt: skip


@dataclass
class FakeLedger:
    """Journals by key; ``refuse`` is raised by the next post (as the engine would)."""

    journals: dict[str, model.Journal] = field(default_factory=dict)
    accounts: dict[str, model.Account] = field(default_factory=dict)
    events: dict[int, dict[str, Any]] = field(default_factory=dict)
    refuse: model.LedgerError | None = None
    decision: risk_model.Decision | None = None
    posted: list[model.PostingRequest] = field(default_factory=list)
    reversed: list[posting.Reversal] = field(default_factory=list)

    async def journal_by_key(self, key: str, namespace: str) -> model.Journal | None:
        return self.journals.get(key)

    async def journal(self, journal_id: int) -> model.Journal:
        for journal in self.journals.values():
            if journal.id == journal_id:
                return journal
        raise model.JournalNotFound(f"journal {journal_id} does not exist")

    async def open_account(self, code: str) -> model.Account | None:
        return self.accounts.get(code)

    async def posted_event(self, journal_id: int) -> dict[str, Any] | None:
        return self.events.get(journal_id)

    async def post(
        self, request: model.PostingRequest, check: risk_store.PostingCheck
    ) -> model.PostResult:
        if self.refuse is not None:
            raise self.refuse
        if self.decision is not None:
            check.decision, check.record_id = self.decision, 41
        self.posted.append(request)
        journal = _journal(request, 100 + len(self.posted))
        self.journals[request.idempotency_key] = journal
        return model.PostResult(journal=journal, replayed=False)

    async def reverse(self, reversal: posting.Reversal) -> model.PostResult:
        if self.refuse is not None:
            raise self.refuse
        self.reversed.append(reversal)
        original = await self.journal(reversal.journal_id)
        journal = model.Journal(
            id=200, idempotency_key=reversal.idempotency_key, request_hash="r",
            kind=model.PostingKind.REVERSAL, reference=None, occurred_at=NOW, posted_at=NOW,
            reverses_journal_id=reversal.journal_id, metadata={},
            lines=rules.reversal_lines(original.lines), namespace="ns1",
        )  # fmt: skip
        self.journals[reversal.idempotency_key] = journal
        return model.PostResult(journal=journal, replayed=False)


def _spec(**changes: Any) -> api.PostingSpec:
    spec = {"card": "c1", "type": "Purchase", "amount": 1250, "currency": "USD"}
    return api.PostingSpec.model_validate({**spec, **changes})


def _post(
    spec: api.PostingSpec | None = None,
    card: posting.CardView | None = ACTIVE,
    *,
    attempt: int = 0,
    product: posting.ProductView | None = None,
) -> posting.Post:
    return posting.Post(
        posting=REF, spec=spec or _spec(), card=card, product=product or posting.ProductView(),
        risk_policy=risk_model.DEFAULT_POLICY,
        compliance_policy=compliance_model.DEFAULT_POLICY, attempt=attempt, attempts_max=30,
    )  # fmt: skip


async def _run(command: posting.Post, ledger: FakeLedger) -> posting.Outcome:
    return await posting.post(command, ledger, clock=lambda: NOW)


async def test_a_purchase_on_an_active_card_is_posted() -> None:
    ledger = FakeLedger()
    outcome = await _run(_post(), ledger)
    assert isinstance(outcome, posting.Posted)
    [request] = ledger.posted
    assert request.idempotency_key == "ns1/p1"  # the default key: namespace/name
    assert request.namespace == "ns1"
    assert request.occurred_at == NOW  # the object's creation time
    assert [event.payload["type"] for event in request.events] == ["dev.fintech.posting.posted.v1"]


async def test_a_risk_review_still_posts_and_is_shown() -> None:
    review = risk_model.Decision(
        action=risk_model.Action.REVIEW, score=500, policy="default", matches=()
    )
    outcome = await _run(_post(), FakeLedger(decision=review))
    assert isinstance(outcome, posting.Posted)
    assert outcome.risk is not None
    assert (outcome.risk.decision, outcome.risk.record_id) == ("Review", "41")


async def test_the_same_request_again_is_replayed_without_posting() -> None:
    ledger = FakeLedger()
    first = await _run(_post(), ledger)
    assert isinstance(first, posting.Posted)
    # Deleted and re-applied later (a new creation time), even after the card was frozen.
    frozen = _post(card=posting.CardView("Frozen", ACCOUNT, "USD"))
    reapplied = posting.PostingRef("ns1", "p1", "u2", NOW.replace(day=6))
    again = dataclasses.replace(frozen, posting=reapplied)
    outcome = await _run(again, ledger)
    assert outcome == posting.Replayed(first.journal)
    assert len(ledger.posted) == 1


async def test_a_card_not_there_yet_is_a_wait_then_card_not_found() -> None:
    waiting = await _run(_post(card=None, attempt=2), FakeLedger())
    assert isinstance(waiting, posting.WaitingForCard)
    assert waiting.attempt == "3 of 30"
    assert "about 60 s" in waiting.message
    pending = await _run(_post(card=posting.CardView("Pending", ACCOUNT, "USD")), FakeLedger())
    assert isinstance(pending, posting.WaitingForCard)
    gone = await _run(_post(card=None, attempt=30), FakeLedger())
    assert isinstance(gone, posting.Rejected)
    assert gone.reason == "CardNotFound"


async def test_a_card_waiting_for_its_review_is_a_wait_then_card_not_active() -> None:
    """docs/ledger.md: a posting applied while its card waits for a review waits like one
    whose card is not issued yet (WaitingForCard), and only then ends CardNotActive."""
    in_review = posting.CardView("PendingReview", ACCOUNT, "USD")
    waiting = await _run(_post(card=in_review, attempt=0), FakeLedger())
    assert isinstance(waiting, posting.WaitingForCard)
    assert "its phase is PendingReview" in waiting.message
    refused = await _run(_post(card=in_review, attempt=30), FakeLedger())
    assert isinstance(refused, posting.Rejected)
    assert refused.reason == "CardNotActive"
    assert "PendingReview" in refused.message


async def test_a_deleted_cards_open_account_still_takes_a_payment() -> None:
    account = model.Account(
        id=1, code=ACCOUNT, kind=model.AccountKind.CARD, normal_balance=model.Direction.DEBIT,
        currency="USD", status=model.AccountStatus.OPEN, metadata={}, created_at=NOW,
        closed_at=None,
    )  # fmt: skip
    ledger = FakeLedger(accounts={ACCOUNT: account})
    outcome = await _run(_post(_spec(type="Payment"), card=None), ledger)
    assert isinstance(outcome, posting.Posted)
    refused = await _run(
        _post(_spec(type="Purchase"), card=None), FakeLedger(accounts=ledger.accounts)
    )
    assert isinstance(refused, posting.Rejected)
    assert refused.reason == "CardNotActive"


@pytest.mark.parametrize(
    ("command", "reason"),
    [
        (_post(card=posting.CardView("Frozen", ACCOUNT, "USD")), "CardNotActive"),
        (_post(card=posting.CardView("Closed", ACCOUNT, "USD"), attempt=30), "CardNotActive"),
        (_post(card=posting.CardView("Pending", ACCOUNT, "USD"), attempt=30), "CardNotActive"),
        (_post(card=posting.CardView("Active", ACCOUNT, "EUR")), "CurrencyMismatch"),
        (
            _post(_spec(entries=[
                {"account": ACCOUNT, "direction": "Debit", "amount": 1250, "currency": "USD"},
                {"account": "system:network_settlement:USD", "direction": "Credit",
                 "amount": 1000, "currency": "USD"},
            ])),
            "Unbalanced",
        ),
        (
            _post(_spec(entries=[
                {"account": model.card_account_code("ns1", "other", "USD"), "direction": "Debit",
                 "amount": 1250, "currency": "USD"},
                {"account": "system:network_settlement:USD", "direction": "Credit",
                 "amount": 1250, "currency": "USD"},
            ])),
            "AccountNotAllowed",
        ),
    ],
)  # fmt: skip
async def test_the_use_case_refuses_with_the_documented_reason(
    command: posting.Post, reason: str
) -> None:
    ledger = FakeLedger()
    outcome = await _run(command, ledger)
    assert isinstance(outcome, posting.Rejected)
    assert outcome.reason == reason
    assert outcome.reason in set(api.PostingReason)
    assert ledger.posted == []


async def test_the_same_key_with_another_request_is_an_idempotency_conflict() -> None:
    ledger = FakeLedger()
    await _run(_post(), ledger)
    outcome = await _run(_post(_spec(amount=1251)), ledger)
    assert isinstance(outcome, posting.Rejected)
    assert outcome.reason == "IdempotencyConflict"
    assert len(ledger.posted) == 1


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (model.SpendLimitExceeded("over", limit_minor=1, spent_minor=1, requested_minor=1),
         "SpendLimitExceeded"),
        (model.AccountFrozen("frozen"), "CardNotActive"),
        (model.AccountClosed("closed"), "AccountClosed"),
        (model.AccountNotFound("missing"), "AccountNotFound"),
        (model.InvalidRequest("bad"), "InvalidSpec"),
    ],
)  # fmt: skip
async def test_a_ledger_refusal_is_rejected_with_its_documented_reason(
    error: model.LedgerError, reason: str
) -> None:
    outcome = await _run(_post(), FakeLedger(refuse=error))
    assert outcome == posting.Rejected(reason, error.message)
    assert reason in set(api.PostingReason)


async def test_a_risk_decline_is_rejected_and_shows_the_recorded_decision() -> None:
    decline = risk_model.Decision(
        action=risk_model.Action.DECLINE, score=900, policy="strict", matches=()
    )
    assessment = risk_model.Assessment("k", "Posting", "ns1/p1", "u1", decline, {})
    error = risk_model.RiskDeclined("declined", decision=decline, record=assessment)
    error.record_id = 9
    outcome = await _run(_post(), FakeLedger(refuse=error))
    assert isinstance(outcome, posting.Rejected)
    assert outcome.reason == "RiskDeclined"
    assert outcome.risk is not None
    assert (outcome.risk.decision, outcome.risk.record_id) == ("Decline", "9")


def _reverse(target: posting.Target, *, attempt: int = 0, **changes: Any) -> posting.Reverse:
    spec = _spec(type="Refund", reverses="p1", **changes)
    ref = posting.PostingRef("ns1", "r1", "u3", NOW)
    return posting.Reverse(ref, spec, ACTIVE, target, attempt=attempt, attempts_max=30)


async def test_a_reversal_posts_the_opposite_once_then_replays() -> None:
    ledger = FakeLedger()
    first = await _run(_post(), ledger)
    assert isinstance(first, posting.Posted)
    command = _reverse(posting.Target(exists=True, journal_id=first.journal.id))
    reversed_ = await posting.reverse(command, ledger, clock=lambda: NOW)
    assert isinstance(reversed_, posting.Posted)
    assert [r.journal_id for r in ledger.reversed] == [first.journal.id]
    again = await posting.reverse(command, ledger, clock=lambda: NOW)
    assert again == posting.Replayed(reversed_.journal)
    assert len(ledger.reversed) == 1


@pytest.mark.parametrize(
    ("target", "attempt"),
    [
        (posting.Target(exists=True, journal_id=None, phase="Rejected"), 0),
        (posting.Target(exists=False), 30),
    ],
)
async def test_a_reversal_of_a_posting_without_a_journal_is_journal_not_found(
    target: posting.Target, attempt: int
) -> None:
    command = _reverse(target, attempt=attempt)
    outcome = await posting.reverse(command, FakeLedger(), clock=lambda: NOW)
    assert isinstance(outcome, posting.Rejected)
    assert outcome.reason == "JournalNotFound"


@pytest.mark.parametrize("phase", [None, "Posted"])
async def test_a_reversal_finds_a_journal_its_originals_status_does_not_show_yet(
    phase: str | None,
) -> None:
    """Applied together, the original is decided just before its reversal (earlier in the
    card's queue or in the same batch) while its status patch is still on its way: the
    reversal finds the original's journal in the ledger under its key."""
    ledger = FakeLedger()
    first = await _run(_post(), ledger)
    assert isinstance(first, posting.Posted)
    target = posting.Target(exists=True, journal_id=None, phase=phase)
    outcome = await posting.reverse(_reverse(target), ledger, clock=lambda: NOW)
    assert isinstance(outcome, posting.Posted)
    assert [r.journal_id for r in ledger.reversed] == [first.journal.id]


async def test_a_reversal_finds_its_originals_journal_under_its_explicit_key() -> None:
    ledger = FakeLedger()
    first = await _run(_post(_spec(idempotencyKey="k-1")), ledger)
    assert isinstance(first, posting.Posted)
    target = posting.Target(exists=True, journal_id=None, phase=None, key="k-1")
    outcome = await posting.reverse(_reverse(target), ledger, clock=lambda: NOW)
    assert isinstance(outcome, posting.Posted)
    assert [r.journal_id for r in ledger.reversed] == [first.journal.id]


@pytest.mark.parametrize(
    ("target", "what"),
    [
        (posting.Target(exists=True, journal_id=None, phase="Pending"), "is not decided yet"),
        (posting.Target(exists=False), "does not exist"),
    ],
)
async def test_a_reversal_waits_for_an_undecided_original_then_is_journal_not_found(
    target: posting.Target, what: str
) -> None:
    """A reversal decided before its original (applied first, or in the same apply before the
    operator saw the original) waits, as a posting waits for its card, and is rejected only
    when the original still has no journal after the wait."""
    waiting = await posting.reverse(_reverse(target, attempt=3), FakeLedger(), clock=lambda: NOW)
    assert isinstance(waiting, posting.WaitingForOriginal)
    assert waiting.attempt == "4 of 30"
    assert f"waiting for posting 'p1' in ns1, which this one reverses: it {what}" in (
        waiting.message
    )
    final = await posting.reverse(_reverse(target, attempt=30), FakeLedger(), clock=lambda: NOW)
    assert isinstance(final, posting.Rejected)
    assert final.reason == "JournalNotFound"


async def test_a_reversal_that_disagrees_with_the_original_is_invalid_spec() -> None:
    ledger = FakeLedger()
    first = await _run(_post(), ledger)
    assert isinstance(first, posting.Posted)
    command = _reverse(posting.Target(exists=True, journal_id=first.journal.id), amount=99)
    outcome = await posting.reverse(command, ledger, clock=lambda: NOW)
    assert isinstance(outcome, posting.Rejected)
    assert outcome.reason == "InvalidSpec"
    assert ledger.reversed == []


async def test_a_second_reversal_is_already_reversed() -> None:
    ledger = FakeLedger()
    first = await _run(_post(), ledger)
    assert isinstance(first, posting.Posted)
    ledger.refuse = model.AlreadyReversed("journal was already reversed")
    command = _reverse(posting.Target(exists=True, journal_id=first.journal.id))
    outcome = await posting.reverse(command, ledger, clock=lambda: NOW)
    assert outcome == posting.Rejected("AlreadyReversed", "journal was already reversed")
