"""ChangeCardState, resume and delete without kopf or a database, with a fake ledger port."""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest

from fintech_operator import api
from fintech_operator.app import card_state
from fintech_operator.events import schema
from fintech_operator.ledger import model

NOW = datetime.datetime(2026, 12, 5, 10, 0, tzinfo=datetime.UTC)
ACCOUNT = model.card_account_code("ns1", "c1", "USD")


@dataclass
class FakeLedger:
    """Records every call; ``balance_minor`` not zero makes closing wait; ``frozen`` is the
    account's freeze flag, and events come with a change only, as engine.set_frozen writes them."""

    balance_minor: int = 0
    missing: bool = False
    frozen: bool = False
    calls: list[tuple[str, object]] = field(default_factory=list)
    events: list[model.OutboxEvent] = field(default_factory=list)

    async def set_frozen(
        self, code: str, frozen: bool, events: Sequence[model.OutboxEvent]
    ) -> bool:
        if self.missing:
            raise model.AccountNotFound(f"card account {code} does not exist")
        self.calls.append(("set_frozen", frozen))
        if self.frozen == frozen:
            return False
        self.frozen = frozen
        self.events.extend(events)
        return True

    async def close_account(self, code: str, events: Sequence[model.OutboxEvent]) -> None:
        if self.balance_minor:
            raise model.AccountNotEmpty(f"account {code} has balance {self.balance_minor}")
        self.calls.append(("close", code))
        self.events.extend(events)

    async def write_events(self, events: Sequence[model.OutboxEvent]) -> None:
        self.events.extend(events)

    async def mirror_card(
        self, card: card_state.IssuedCard, token: str, spec: api.CardSpec
    ) -> None:
        self.calls.append(("mirror", token))

    async def mirror_limit(self, card: card_state.IssuedCard, limit: api.SpendLimit | None) -> None:
        self.calls.append(("limit", None if limit is None else limit.amount_minor))

    async def retire(self, card: card_state.IssuedCard) -> None:
        self.calls.append(("retire", card.name))


def _card(phase: str | None, account: str | None = ACCOUNT) -> card_state.IssuedCard:
    return card_state.IssuedCard("ns1", "c1", "uid-1", 3, phase, account)


async def _change(phase: str | None, to: str, ledger: FakeLedger) -> card_state.Outcome:
    command = card_state.ChangeCardState(_card(phase), api.CardState(to))
    return await card_state.change_card_state(command, ledger, clock=lambda: NOW)


@pytest.mark.parametrize(("phase", "to", "frozen"), [("Active", "Frozen", True),
                                                     ("Frozen", "Active", False)])  # fmt: skip
async def test_freeze_and_unfreeze_commit_the_flag_with_their_event(
    phase: str, to: str, frozen: bool
) -> None:
    ledger = FakeLedger(frozen=not frozen)
    outcome = await _change(phase, to, ledger)
    assert outcome == card_state.StateChanged(api.CardPhase(to), f"card is {to}")
    assert ledger.calls == [("set_frozen", frozen)]
    assert ledger.frozen is frozen
    [event] = ledger.events
    assert event.payload["type"] == schema.CARD_STATE_CHANGED
    assert event.payload["data"]["from"] == phase


@pytest.mark.parametrize("state", ["Active", "Frozen"])
async def test_the_same_state_again_changes_nothing(state: str) -> None:
    ledger = FakeLedger(frozen=state == "Frozen")
    assert await _change(state, state, ledger) == card_state.Unchanged()
    assert ledger.calls == [("set_frozen", state == "Frozen")]
    assert ledger.events == []


@pytest.mark.parametrize(
    ("stale_phase", "to", "frozen"), [("Active", "Active", True), ("Frozen", "Frozen", False)]
)
async def test_a_stale_status_does_not_leave_the_ledger_behind(
    stale_phase: str, to: str, frozen: bool
) -> None:
    """Frozen, then unfrozen before kopf's patch of the frozen status arrived: the handler sees
    the old phase (Active) and spec Active, while the ledger is frozen. The ledger follows the
    spec anyway, with the event of the change it makes, and the status is written again."""
    ledger = FakeLedger(frozen=frozen)
    outcome = await _change(stale_phase, to, ledger)
    assert outcome == card_state.StateChanged(api.CardPhase(to), f"card is {to}")
    assert ledger.frozen is (to == "Frozen")
    [event] = ledger.events
    assert event.payload["data"]["from"] == ("Frozen" if frozen else "Active")
    assert event.payload["data"]["to"] == to


async def test_closing_an_issued_card_closes_its_account() -> None:
    ledger = FakeLedger()
    outcome = await _change("Active", "Closed", ledger)
    assert outcome == card_state.StateChanged(api.CardPhase.CLOSED, card_state.CLOSED_MESSAGE)
    assert ledger.calls == [("close", ACCOUNT)]
    assert [e.payload["type"] for e in ledger.events] == [schema.CARD_STATE_CHANGED]


async def test_closing_waits_while_the_balance_is_not_zero() -> None:
    ledger = FakeLedger(balance_minor=1250)
    outcome = await _change("Frozen", "Closed", ledger)
    assert isinstance(outcome, card_state.ClosingWaits)
    assert outcome.reason == "BalanceNotZero"
    assert "balance 1250" in outcome.message
    assert ledger.events == []


@pytest.mark.parametrize("phase", [None, "Pending", "PendingReview"])
async def test_closing_before_issue_opens_nothing_and_says_so(phase: str | None) -> None:
    ledger = FakeLedger()
    outcome = await _change(phase, "Closed", ledger)
    assert outcome == card_state.StateChanged(
        api.CardPhase.CLOSED, card_state.CLOSED_BEFORE_ISSUE_MESSAGE, "ClosedBeforeIssue"
    )
    assert ledger.calls == []
    [event] = ledger.events
    assert event.payload["data"]["from"] == (phase if phase == "PendingReview" else "Pending")


async def test_a_rejected_card_is_not_closed_again() -> None:
    ledger = FakeLedger()
    assert await _change("Rejected", "Closed", ledger) == card_state.Unchanged()
    assert ledger.events == []


async def test_resume_makes_the_ledger_and_mirror_follow_an_issued_card() -> None:
    ledger = FakeLedger()
    spec = api.CardSpec.model_validate(
        {"userId": "u1", "product": "standard", "holder": {"name": "A", "country": "US"}}
    )
    outcome = await card_state.resume_card(_card("Frozen"), "tok_1", spec, ledger)
    assert outcome == card_state.Unchanged()
    assert ledger.calls == [("set_frozen", True), ("mirror", "tok_1")]
    missing = await card_state.resume_card(_card("Active"), None, spec, FakeLedger(missing=True))
    assert isinstance(missing, card_state.AccountMissing)


async def test_deleting_an_issued_card_retires_its_token_first_then_closes() -> None:
    ledger = FakeLedger()
    outcome = await card_state.delete_card(_card("Active"), ledger, clock=lambda: NOW)
    assert outcome == card_state.AccountClosed(ACCOUNT)
    assert ledger.calls == [("retire", "c1"), ("close", ACCOUNT)]
    [event] = ledger.events
    assert event.payload["data"]["reason"] == "CardDeleted"


async def test_deleting_a_card_with_a_balance_leaves_its_account_open() -> None:
    ledger = FakeLedger(balance_minor=10)
    outcome = await card_state.delete_card(_card("Frozen"), ledger, clock=lambda: NOW)
    assert isinstance(outcome, card_state.AccountLeftOpen)
    assert ledger.calls == [("retire", "c1")]


@pytest.mark.parametrize(("phase", "account"), [("Closed", ACCOUNT), ("Rejected", None)])
async def test_deleting_a_card_without_an_open_account_does_nothing(
    phase: str, account: str | None
) -> None:
    ledger = FakeLedger()
    outcome = await card_state.delete_card(_card(phase, account), ledger)
    assert outcome == card_state.Unchanged()
    assert ledger.calls == []


async def test_a_new_spend_limit_reaches_the_mirror_of_an_issued_card_only() -> None:
    limit = api.SpendLimit(amount_minor=5000, interval=api.SpendInterval.DAILY)
    ledger = FakeLedger()
    await card_state.change_spend_limit(_card("Frozen"), limit, ledger)
    await card_state.change_spend_limit(_card("PendingReview", None), limit, ledger)
    assert ledger.calls == [("limit", 5000)]
