"""ChangeCardState, resume and delete without kopf or a database, with a fake ledger port."""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest

from fintech_operator import api
from fintech_operator.app import card_state
from fintech_operator.authorizations import mirror
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
    generation: int | None = None  # the Card generation the flag follows (migration 0072)
    calls: list[tuple[str, object]] = field(default_factory=list)
    events: list[model.OutboxEvent] = field(default_factory=list)

    async def set_frozen(
        self,
        code: str,
        frozen: bool,
        events: Sequence[model.OutboxEvent],
        *,
        generation: int | None = None,
    ) -> bool:
        if self.missing:
            raise model.AccountNotFound(f"card account {code} does not exist")
        self.calls.append(("set_frozen", frozen))
        if generation is not None and self.generation is not None and generation < self.generation:
            return False
        if generation is not None:
            self.generation = generation
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


def _card(
    phase: str | None, account: str | None = ACCOUNT, generation: int = 3
) -> card_state.IssuedCard:
    return card_state.IssuedCard("ns1", "c1", "uid-1", generation, phase, account)


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
    outcome = await card_state.resume_card(
        _card("Frozen"), "tok_1", spec, ledger, spec_state="Frozen", clock=lambda: NOW
    )
    assert outcome == card_state.FreezeRepaired(
        api.CardState.FROZEN,
        "the ledger account was open while spec.state and status.phase are Frozen;"
        " it is Frozen again",
    )
    assert ledger.calls == [("set_frozen", True), ("mirror", "tok_1")]
    assert (ledger.frozen, ledger.generation) == (True, 3)
    [event] = ledger.events  # the account changed: announced
    assert (event.payload["data"]["from"], event.payload["data"]["to"]) == ("Active", "Frozen")
    missing = await card_state.resume_card(
        _card("Active"), None, spec, FakeLedger(missing=True), spec_state="Active"
    )
    assert isinstance(missing, card_state.AccountMissing)
    in_step = FakeLedger(frozen=True)
    again = await card_state.resume_card(_card("Frozen"), None, None, in_step, spec_state="Frozen")
    assert again == card_state.Unchanged()
    assert in_step.events == []


@pytest.mark.parametrize(("phase", "spec_state"), [("Active", "Frozen"), ("Frozen", "Active")])
async def test_resume_leaves_the_freeze_to_the_handler_while_the_status_lags_the_spec(
    phase: str, spec_state: str
) -> None:
    """The card queue read the card while its status still showed the old state; the
    spec.state handler may have changed the ledger since. Following the old status would undo
    that change: resume leaves the freeze alone and only mirrors the card."""
    ledger = FakeLedger(frozen=spec_state == "Frozen", generation=3)
    spec = api.CardSpec.model_validate(
        {"userId": "u1", "product": "standard", "holder": {"name": "A", "country": "US"}}
    )
    outcome = await card_state.resume_card(
        _card(phase), "tok_1", spec, ledger, spec_state=spec_state
    )
    assert outcome == card_state.Unchanged()
    assert ledger.calls == [("mirror", "tok_1")]
    assert ledger.frozen is (spec_state == "Frozen")
    assert ledger.events == []


async def test_resume_does_not_go_back_to_an_older_generation() -> None:
    """The card read at generation 3, a newer spec (generation 4) frozen since: unchanged."""
    ledger = FakeLedger(frozen=True, generation=4)
    outcome = await card_state.resume_card(_card("Active"), None, None, ledger, spec_state="Active")
    assert outcome == card_state.Unchanged()
    assert ledger.frozen is True
    assert ledger.events == []


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


async def test_a_change_records_the_cards_generation_and_an_older_one_changes_nothing() -> None:
    ledger = FakeLedger()
    await _change("Active", "Frozen", ledger)
    assert (ledger.frozen, ledger.generation) == (True, 3)
    stale = card_state.ChangeCardState(_card("Frozen", generation=2), api.CardState.ACTIVE)
    assert await card_state.change_card_state(stale, ledger, clock=lambda: NOW) == (
        card_state.StateChanged(api.CardPhase.ACTIVE, "card is Active")
    )
    assert ledger.frozen is True  # generation 3's Frozen stays
    assert len(ledger.events) == 1


# --- freeze_drift: what the namespace's refresh repairs --------------------------------------


@pytest.mark.parametrize(
    ("phase", "spec_state", "frozen", "recorded", "generation", "repaired"),
    [
        # kopf lost the status patch of a freeze, then the user set Active back (generation 4).
        ("Active", "Active", True, 3, 4, "Active"),
        # ... or of an unfreeze, then the user froze again: the card would keep approving.
        ("Frozen", "Frozen", False, 3, 4, "Frozen"),
        ("Frozen", "Frozen", False, None, 1, "Frozen"),  # before 0072, or set by resume
        ("Active", "Active", True, 4, 4, "Active"),  # the same generation's state, undone
        # In step: nothing to do.
        ("Active", "Active", False, 3, 4, None),
        ("Frozen", "Frozen", True, None, 4, None),
        # An older copy of the card than the ledger follows: a newer spec's freeze is in place.
        ("Active", "Active", True, 5, 4, None),
        # The status does not show the spec yet: kopf's handler is on it.
        ("Active", "Frozen", False, 3, 4, None),
        ("Frozen", "Active", True, 3, 4, None),
        # Closing is not a freeze; a card without a spec state is not judged.
        ("Active", "Closed", False, 3, 4, None),
        ("Active", None, True, None, 4, None),
    ],
)
def test_freeze_drift_repairs_only_a_card_whose_status_shows_a_state_the_ledger_lost(
    phase: str,
    spec_state: str | None,
    frozen: bool,
    recorded: int | None,
    generation: int,
    repaired: str | None,
) -> None:
    card = _card(phase, generation=generation)
    expected = None if repaired is None else api.CardState(repaired)
    assert card_state.freeze_drift(card, spec_state, frozen, recorded) == expected


def test_freeze_drift_needs_an_account() -> None:
    assert card_state.freeze_drift(_card("Active", account=None), "Active", True, None) is None


async def test_repair_freeze_applies_the_state_with_its_event_once() -> None:
    ledger = FakeLedger(frozen=True, generation=3)
    card = _card("Active", generation=4)
    assert await card_state.repair_freeze(card, api.CardState.ACTIVE, ledger, clock=lambda: NOW)
    assert (ledger.frozen, ledger.generation) == (False, 4)
    [event] = ledger.events
    assert (event.payload["data"]["from"], event.payload["data"]["to"]) == ("Frozen", "Active")
    again = await card_state.repair_freeze(card, api.CardState.ACTIVE, ledger, clock=lambda: NOW)
    assert again is False
    assert len(ledger.events) == 1


async def test_repair_freeze_loses_to_a_newer_generation_and_refuses_closed() -> None:
    ledger = FakeLedger(frozen=True, generation=5)
    card = _card("Active", generation=4)
    assert not await card_state.repair_freeze(card, api.CardState.ACTIVE, ledger)
    assert ledger.frozen is True
    with pytest.raises(ValueError, match="only Active or Frozen"):
        await card_state.repair_freeze(card, api.CardState.CLOSED, ledger)


def _live(name: str, uid: str | None, *, frozen: bool = False) -> mirror.LiveAccount:
    return mirror.LiveAccount(f"card:ns1/{name}:USD", name, uid, frozen)


def test_orphan_suspects_are_the_accounts_the_index_does_not_show() -> None:
    """By name, and by uid when the account recorded one; an unrecorded uid matches any card
    of its name."""
    accounts = [
        _live("shown", "u1"),
        _live("not-indexed", "u2"),
        _live("other-uid", "u3"),
        _live("unrecorded", None),
        _live("unrecorded-gone", None),
    ]
    cards = {"shown": "u1", "other-uid": "u9", "unrecorded": "u7"}
    suspects = card_state.orphan_suspects(accounts, cards)
    assert [account.name for account in suspects] == [
        "not-indexed",
        "other-uid",
        "unrecorded-gone",
    ]
    assert card_state.orphan_suspects([], cards) == []
    assert card_state.orphan_suspects(accounts, {}) == accounts


@pytest.mark.parametrize(
    ("uid", "card_uid", "orphan"),
    [
        ("u1", None, True),  # no Card of that name: deleted
        ("u1", "u2", True),  # deleted and created again: the new card never uses it
        ("u1", "u1", False),  # the index lagged: the card exists (being issued)
        (None, None, True),  # unrecorded uid, no Card of that name
        (None, "u2", False),  # unrecorded uid: a card of that name may be its own
    ],
)
def test_an_orphan_is_an_account_whose_card_the_api_server_does_not_have(
    uid: str | None, card_uid: str | None, orphan: bool
) -> None:
    assert card_state.is_orphan(_live("c1", uid), card_uid) is orphan


@pytest.mark.parametrize("frozen", [False, True])
async def test_an_orphan_is_closed_as_its_cards_deletion_would_have(frozen: bool) -> None:
    """Token retired first, then the account closed with card.state_changed (CardDeleted,
    from the state the account shows), the event's id from the recorded uid."""
    ledger = FakeLedger()
    outcome = await card_state.close_orphan(
        "ns1", _live("c1", "uid-1", frozen=frozen), ledger, clock=lambda: NOW
    )
    assert outcome == card_state.AccountClosed("card:ns1/c1:USD")
    assert ledger.calls == [("retire", "c1"), ("close", "card:ns1/c1:USD")]
    [event] = ledger.events
    data = event.payload["data"]
    assert (data["card"], data["from"], data["to"], data["reason"]) == (
        "ns1/c1",
        "Frozen" if frozen else "Active",
        "Closed",
        "CardDeleted",
    )
    # The deletion handler's outcome and event id for the same card: a deletion that closed
    # the account after all and the sweep write one event between them.
    deletion = FakeLedger()
    phase = "Frozen" if frozen else "Active"
    deleted = await card_state.delete_card(
        card_state.IssuedCard("ns1", "c1", "uid-1", 4, phase, "card:ns1/c1:USD"),
        deletion,
        clock=lambda: NOW,
    )
    assert deleted == outcome
    assert [written.event_id for written in deletion.events] == [event.event_id]


async def test_an_orphan_with_a_balance_keeps_its_account_open_and_its_token_retired() -> None:
    ledger = FakeLedger(balance_minor=1_250)
    unrecorded = _live("c1", None)
    outcome = await card_state.close_orphan("ns1", unrecorded, ledger, clock=lambda: NOW)
    assert isinstance(outcome, card_state.AccountLeftOpen)
    assert "has balance 1250" in outcome.message
    assert ledger.calls == [("retire", "c1")]
    assert ledger.events == []
