"""The card's freeze on a real PostgreSQL when the operator's paths interleave.

The card queue's resume (at every operator start) and kopf's ``spec.state`` handler act on
copies of the Card read at different times. The fault campaign caught a resume undoing a freeze
the handler had just committed (bench/RESULTS.md, "What the repair found at once"); these tests
play each order of events in a fixed sequence, through the operator's own ledger adapter
(``stores.Cards``) and migration 0072's generation fence, so they repeat on every run.
"""

from __future__ import annotations

import datetime
import uuid
from typing import Any

import pytest
from psycopg_pool import AsyncConnectionPool

from fintech_operator import api
from fintech_operator.app import card_state, stores
from fintech_operator.ledger import engine

pytestmark = pytest.mark.integration

NOW = datetime.datetime(2026, 12, 7, 12, 0, tzinfo=datetime.UTC)
FROZEN, ACTIVE = api.CardState.FROZEN, api.CardState.ACTIVE
_ACCOUNT = "SELECT frozen_at IS NOT NULL, state_generation FROM accounts WHERE code = %s"
_EVENTS = (
    "SELECT payload->'data'->>'from', payload->'data'->>'to' FROM outbox"
    " WHERE payload->>'type' = 'dev.fintech.card.state_changed.v1'"
    " AND payload->'data'->>'card' = %s ORDER BY id"
)


async def _issued(pool: AsyncConnectionPool[Any]) -> card_state.IssuedCard:
    """A card issued at generation 1 (Active, account open), with a uid of its own so that its
    events' ids (uid, state, generation) meet no other test's."""
    name = f"o-{uuid.uuid4().hex[:8]}"
    async with pool.connection() as conn:
        account = await engine.open_card_account(conn, "ns", name, "USD")
    return card_state.IssuedCard("ns", name, str(uuid.uuid4()), 1, "Active", account.code)


def _as_read(card: card_state.IssuedCard, generation: int, phase: str) -> card_state.IssuedCard:
    """The card as one path read it: its generation and the phase its status showed."""
    return card_state.IssuedCard(
        card.namespace, card.name, card.uid, generation, phase, card.account
    )


async def _ledger(pool: AsyncConnectionPool[Any], card: card_state.IssuedCard) -> Any:
    async with pool.connection() as conn:
        account = await (await conn.execute(_ACCOUNT, (card.account,))).fetchone()
        events = await (await conn.execute(_EVENTS, (f"ns/{card.name}",))).fetchall()
    return account, [tuple(event) for event in events]


async def test_a_resume_that_read_the_old_status_does_not_undo_the_handlers_freeze(
    pool: AsyncConnectionPool[Any],
) -> None:
    """The order the campaign found: the resume reads the card (spec Frozen at generation 2,
    status still Active); the handler freezes the account and would patch the status; then
    the resume runs on what it read. It leaves the freeze alone. The generation alone could
    not have stopped it (both hold generation 2): following the status it read, as the
    resume did before the fix, reopens the account, shown last."""
    ledger = stores.Cards(pool)
    card = await _issued(pool)
    read_by_resume = _as_read(card, 2, "Active")
    handled = await card_state.change_card_state(
        card_state.ChangeCardState(_as_read(card, 2, "Active"), FROZEN), ledger, lambda: NOW
    )
    assert handled == card_state.StateChanged(api.CardPhase.FROZEN, "card is Frozen")

    resumed = await card_state.resume_card(
        read_by_resume, None, None, ledger, spec_state="Frozen", clock=lambda: NOW
    )

    assert resumed == card_state.Unchanged()
    assert await _ledger(pool, card) == ((True, 2), [("Active", "Frozen")])
    # Before the fix the resume made the freeze follow the status it had read:
    assert await card_state.repair_freeze(read_by_resume, ACTIVE, ledger, lambda: NOW) is True
    assert await _ledger(pool, card) == ((False, 2), [("Active", "Frozen"), ("Frozen", "Active")])


async def test_a_lost_status_patch_then_a_state_set_back_is_repaired_once_by_the_resume(
    pool: AsyncConnectionPool[Any],
) -> None:
    """Frozen at generation 2 (status Frozen), unfrozen at 3 (the account opens, kopf's status
    patch is lost), frozen again at 4: kopf compares with the state it last recorded as
    handled (Frozen) and calls no handler. Spec and status say Frozen, the account is open.
    The resume freezes it again with its event; a second resume changes nothing."""
    ledger = stores.Cards(pool)
    card = await _issued(pool)
    for generation, phase, to in ((2, "Active", FROZEN), (3, "Frozen", ACTIVE)):
        await card_state.change_card_state(
            card_state.ChangeCardState(_as_read(card, generation, phase), to), ledger, lambda: NOW
        )
    assert (await _ledger(pool, card))[0] == (False, 3)
    read_at_start = _as_read(card, 4, "Frozen")

    first = await card_state.resume_card(
        read_at_start, None, None, ledger, spec_state="Frozen", clock=lambda: NOW
    )
    second = await card_state.resume_card(
        read_at_start, None, None, ledger, spec_state="Frozen", clock=lambda: NOW
    )

    assert first == card_state.FreezeRepaired(FROZEN, card_state.repaired_message(FROZEN))
    assert second == card_state.Unchanged()
    assert await _ledger(pool, card) == (
        (True, 4),
        [("Active", "Frozen"), ("Frozen", "Active"), ("Active", "Frozen")],
    )


async def test_a_resume_holding_an_older_generation_than_the_ledger_changes_nothing(
    pool: AsyncConnectionPool[Any],
) -> None:
    """The resume read the card at generation 2 (spec and status Active); the user froze it
    since and the handler froze the account for generation 3. The resume's copy agrees with
    itself, so it would follow it: the ledger's fence refuses the older generation."""
    ledger = stores.Cards(pool)
    card = await _issued(pool)
    read_by_resume = _as_read(card, 2, "Active")
    await card_state.change_card_state(
        card_state.ChangeCardState(_as_read(card, 3, "Active"), FROZEN), ledger, lambda: NOW
    )

    resumed = await card_state.resume_card(
        read_by_resume, None, None, ledger, spec_state="Active", clock=lambda: NOW
    )

    assert resumed == card_state.Unchanged()
    assert await _ledger(pool, card) == ((True, 3), [("Active", "Frozen")])
