"""IssueCard without kopf or a database: each outcome, with fakes of the use case's ports."""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from fintech_operator import api
from fintech_operator.app import issuance
from fintech_operator.cards import http_tokenizer, lifecycle, tokenizer
from fintech_operator.cards import store as card_store
from fintech_operator.compliance import lists
from fintech_operator.compliance import model as compliance_model
from fintech_operator.events import schema
from fintech_operator.ledger import engine, model
from fintech_operator.risk import model as risk_model

NOW = datetime.datetime(2026, 12, 5, 10, 0, tzinfo=datetime.UTC)
CARD = issuance.CardRef("ns1", "c1", "0b6f3a8e-1d2c-4e5f-8a9b-0c1d2e3f4a5b", 1, NOW)
TOKEN = tokenizer.IssuedToken(token="tok_" + "a" * 32, last4="4242")


@dataclass
class FakeStore:
    """The database: what was recorded, written and issued, in memory."""

    owners: list[tuple[str, str | None]] = field(default_factory=list)
    events: list[model.OutboxEvent] = field(default_factory=list)
    issued: list[issuance.CardIssuance] = field(default_factory=list)
    recorded: dict[uuid.UUID, card_store.Issued] = field(default_factory=dict)
    taken_by: str | None = None  # the account belongs to this other uid

    async def account_owners(self, namespace: str, name: str) -> list[tuple[str, str | None]]:
        return self.owners

    async def recorded_issuance(self, event_id: uuid.UUID) -> card_store.Issued | None:
        return self.recorded.get(event_id)

    async def record_assessment(
        self, record: issuance.AssessmentRecord
    ) -> tuple[issuance.Assessment, lifecycle.Verdict]:
        checks = tuple((index, check) for index, (_, check) in enumerate(record.checks, 10))
        verdict = lifecycle.verdict(record.risk.decision, [check for _, check in checks])
        self.events.extend(record.events_of(verdict))
        assessment = issuance.Assessment(record.risk.decision, 1, record.policy_ref, checks)
        return assessment, verdict

    async def issue(self, request: issuance.CardIssuance) -> issuance.Committed:
        if self.taken_by is not None:
            raise engine.AccountOwnedByAnotherCard(request.ledger.account_code, self.taken_by)
        self.issued.append(request)
        self.events.extend(request.ledger.events)
        data = request.ledger.events[0].payload["data"]
        token = tokenizer.IssuedToken(token=data["token"], last4=data["last4"])
        committed = card_store.Issued(token, NOW)
        self.recorded[request.event_id] = committed
        return issuance.Committed(committed, (0, None))

    async def write_events(self, events: Sequence[model.OutboxEvent]) -> None:
        self.events.extend(events)

    def types(self) -> list[str]:
        return [str(event.payload["type"]) for event in self.events]


@dataclass
class FakeProcessor:
    """The card processor: a token, a refusal, or down."""

    error: Exception | None = None
    calls: list[str] = field(default_factory=list)

    async def issue(self, card_ref: str, *, idempotency_key: str = "") -> tokenizer.IssuedToken:
        self.calls.append(idempotency_key)
        if self.error is not None:
            raise self.error
        return TOKEN


class NoLists:
    """Sanctions lists that cannot be read (the ConfigMap is missing)."""

    async def get(self, namespace: str, config_map: str, key: str) -> lists.Loaded:
        raise lists.ListUnavailable("SanctionsListNotFound", f"configmap {config_map} not found")


def _ports(store: FakeStore, processor: FakeProcessor) -> issuance.Ports:
    return issuance.Ports(store, lambda: processor, NoLists(), clock=lambda: NOW)


def _command(
    kyc: str = "Accepted",
    *,
    state: str = "Active",
    fee_minor: int = 0,
    attempt: int = 0,
    compliance: dict[str, Any] | None = None,
) -> issuance.IssueCard:
    spec = api.CardSpec.model_validate(
        {"userId": "u1", "product": "standard", "state": state,
         "holder": {"name": "Ada Lovelace", "country": "GB", "kycStatus": kyc}}
    )  # fmt: skip
    product = api.CardProductSpec.model_validate(
        {"currency": "USD", "issuanceFee": {"amount": fee_minor}}
    )
    policy = compliance_model.Policy(spec=api.CompliancePolicySpec.model_validate(compliance or {}))
    return issuance.IssueCard(
        card=CARD, spec=spec, product=product, risk_policy=risk_model.DEFAULT_POLICY,
        compliance_policy=policy, user_cards=0, attempt=attempt,
    )  # fmt: skip


async def test_an_accepted_holder_is_issued_in_one_transaction_with_fee_and_freeze() -> None:
    store, processor = FakeStore(), FakeProcessor()
    outcome = await issuance.issue_card(
        _command(state="Frozen", fee_minor=500), _ports(store, processor)
    )
    assert isinstance(outcome, issuance.Issued)
    assert (outcome.token, outcome.last4, outcome.phase) == (TOKEN.token, "4242", "Frozen")
    assert outcome.account == model.card_account_code("ns1", "c1", "USD")
    assert outcome.assessment is not None
    assert outcome.assessment.risk.action.value == "Approve"
    [written] = store.issued  # ONE issuance: account, fee, freeze and event together
    assert written.ledger.frozen is True
    assert written.ledger.fee is not None
    assert written.ledger.fee.idempotency_key == f"card-issuance-fee/{CARD.uid}"
    assert written.ledger.fee.occurred_at == NOW
    assert store.types() == [schema.CARD_ISSUED]
    assert processor.calls == [http_tokenizer.idempotency_key(CARD.uid)]


async def test_a_product_without_a_fee_charges_nothing() -> None:
    store = FakeStore()
    await issuance.issue_card(_command(), _ports(store, FakeProcessor()))
    assert store.issued[0].ledger.fee is None
    assert store.issued[0].ledger.frozen is False


async def test_a_retry_after_the_commit_reports_the_committed_token_without_the_processor() -> None:
    store, processor = FakeStore(), FakeProcessor()
    await issuance.issue_card(_command(), _ports(store, processor))
    again = await issuance.issue_card(_command(), _ports(store, processor))
    assert isinstance(again, issuance.Issued)
    assert again.token == TOKEN.token
    assert len(processor.calls) == 1  # the second attempt read the committed event


@pytest.mark.parametrize(("kyc", "reason"), [("Rejected", "KycRejected"),
                                             ("Pending", "KycNotAccepted")])  # fmt: skip
async def test_a_holder_refused_by_kyc_is_rejected_with_its_event(kyc: str, reason: str) -> None:
    store, processor = FakeStore(), FakeProcessor()
    outcome = await issuance.issue_card(
        _command(kyc, compliance={"kyc": {"allowReview": False}}), _ports(store, processor)
    )
    assert isinstance(outcome, issuance.Rejected)
    assert outcome.reason == reason
    assert outcome.assessment is not None
    assert store.types() == [schema.CARD_REJECTED]
    assert store.issued == []
    assert processor.calls == []


async def test_a_pending_kyc_the_policy_sends_to_review_is_held_for_review() -> None:
    store, processor = FakeStore(), FakeProcessor()
    outcome = await issuance.issue_card(
        _command("Pending", compliance={"kyc": {"allowReview": True}}), _ports(store, processor)
    )
    assert isinstance(outcome, issuance.HeldForReview)
    assert outcome.reason == "KycPending"
    assert store.types() == [schema.CARD_REVIEW_REQUESTED]
    assert store.issued == []
    assert processor.calls == []


@pytest.mark.parametrize(("attempt", "delay_seconds"), [(0, 2.0), (3, 16.0), (20, 60.0)])
async def test_the_processor_down_is_a_retry_with_capped_backoff(
    attempt: int, delay_seconds: float
) -> None:
    store = FakeStore()
    processor = FakeProcessor(http_tokenizer.TokenizerUnavailable("connection refused"))
    outcome = await issuance.issue_card(_command(attempt=attempt), _ports(store, processor))
    assert isinstance(outcome, issuance.Retry)
    assert outcome.reason == "WaitingForProcessor"
    assert outcome.delay_seconds == delay_seconds
    assert "connection refused" in outcome.why
    assert outcome.assessment is not None  # shown on the card while it waits
    assert store.issued == []
    assert schema.CARD_REJECTED not in store.types()


async def test_the_processor_refusing_the_card_rejects_it() -> None:
    store = FakeStore()
    processor = FakeProcessor(http_tokenizer.TokenizerRefused("card refused: bad holder"))
    outcome = await issuance.issue_card(_command(), _ports(store, processor))
    assert isinstance(outcome, issuance.Rejected)
    assert outcome.reason == "TokenizerRefused"
    assert store.types() == [schema.CARD_REJECTED]
    assert store.issued == []


async def test_a_name_owned_by_a_deleted_card_is_refused_before_the_processor() -> None:
    store = FakeStore(owners=[(model.card_account_code("ns1", "c1", "USD"), "old-uid")])
    processor = FakeProcessor()
    outcome = await issuance.issue_card(_command(), _ports(store, processor))
    assert isinstance(outcome, issuance.Rejected)
    assert outcome.reason == "NameReused"
    assert processor.calls == []
    assert store.issued == []


async def test_a_name_taken_inside_the_transaction_is_refused_too() -> None:
    store = FakeStore(taken_by="another-uid")
    outcome = await issuance.issue_card(_command(), _ports(store, FakeProcessor()))
    assert isinstance(outcome, issuance.Rejected)
    assert outcome.reason == "NameReused"
    assert store.types() == [schema.CARD_REJECTED]


async def test_an_unreadable_sanctions_list_is_retried_then_held_for_review() -> None:
    sanctions = {"sanctions": {"configMap": "sdn", "key": "sdn.csv"}}
    early = await issuance.issue_card(
        _command(compliance=sanctions), _ports(FakeStore(), FakeProcessor())
    )
    assert isinstance(early, issuance.Retry)
    assert early.reason is None
    store = FakeStore()
    late = await issuance.issue_card(
        _command(compliance=sanctions, attempt=issuance.SCREENING_RETRIES_MAX),
        _ports(store, FakeProcessor()),
    )
    assert isinstance(late, issuance.HeldForReview)
    assert late.reason == "ScreeningUnavailable"


async def test_reject_card_writes_the_rejected_event_first() -> None:
    store = FakeStore()
    command = issuance.RejectCard(CARD, "InvalidSpec", "spec.holder: field required", None)
    outcome = await issuance.reject_card(command, _ports(store, FakeProcessor()))
    assert outcome == issuance.Rejected("InvalidSpec", "spec.holder: field required")
    assert store.types() == [schema.CARD_REJECTED]
