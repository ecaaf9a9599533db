"""A hypothesis state machine over authorize, increment, capture, void, expire and refund on
two cards, against a real PostgreSQL: after every step each card's held, posted and available
equal what a plain model says, every answer agrees with the model, the holds agree with the
pending authorizations, and the trial balance is zero (issue 13)."""

from __future__ import annotations

import asyncio
import datetime
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    invariant,
    rule,
    run_state_machine_as_test,
)
from psycopg_pool import AsyncConnectionPool

from fintech_operator.authorizations import contract
from fintech_operator.authorizations.store import PostgresStore
from fintech_operator.ledger import engine, model, rules
from tests.integration.authz_support import (
    Card,
    authorize_request,
    body,
    held,
    hold_drift,
    new_card,
    posted,
    trial_balance_zero,
)

pytestmark = pytest.mark.integration

LIMIT_MINOR = 20_000
STORE = PostgresStore()


@dataclass
class ModelAuth:
    """What the model expects of one authorization."""

    card: int
    held: int  # placed in total
    captured: int = 0
    consumed: int = 0
    released: int = 0
    status: str = "pending"

    @property
    def remaining(self) -> int:
        return self.held - self.consumed - self.released


@dataclass
class ModelCard:
    over_capture_bps: int
    spent: int = 0  # Purchase debits (captures)
    refunded: int = 0
    auths: list[ModelAuth] = field(default_factory=list)

    @property
    def held(self) -> int:
        return sum(a.remaining for a in self.auths if a.status == "pending")

    @property
    def available(self) -> int:
        return LIMIT_MINOR - self.spent - self.held


@dataclass
class Harness:
    """One event loop, pool and connection shared by every example (opening them per example
    would dominate the run)."""

    loop: asyncio.AbstractEventLoop
    pool: AsyncConnectionPool[Any]
    raw: psycopg.Connection[Any]

    def run(self, coroutine: Any) -> Any:
        return self.loop.run_until_complete(coroutine)


@pytest.fixture(scope="module")
def harness(migrated_database_url: str) -> Iterator[Harness]:
    loop = asyncio.new_event_loop()
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        migrated_database_url, min_size=2, max_size=2, open=False, kwargs={"autocommit": True}
    )
    loop.run_until_complete(pool.open(wait=True, timeout=60))
    with psycopg.connect(migrated_database_url, autocommit=True) as raw:
        yield Harness(loop, pool, raw)
    loop.run_until_complete(pool.close())
    loop.close()


def make_machine(h: Harness) -> type[RuleBasedStateMachine]:
    class Authorizations(RuleBasedStateMachine):
        auths = Bundle("auths")

        def __init__(self) -> None:
            super().__init__()
            self.cards: list[Card] = []
            self.model: list[ModelCard] = []
            for bps in (0, 1_000):
                terms = {"overCaptureBps": bps}
                card = h.run(
                    new_card(
                        h.pool,
                        limit_minor=LIMIT_MINOR,
                        interval="Lifetime",
                        product_terms=terms,
                    )
                )
                self.cards.append(card)
                self.model.append(ModelCard(over_capture_bps=bps))
            self.ids: dict[str, ModelAuth] = {}

        async def _call(self, method: str, *args: Any) -> dict[str, Any]:
            async with h.pool.connection() as conn:
                answer = await getattr(STORE, method)(conn, *args)
            parsed = body(answer)
            parsed["_status"] = answer.status_code
            return parsed

        @rule(target=auths, card=st.integers(0, 1), amount=st.integers(1, 9_000))
        def authorize(self, card: int, amount: int) -> str:
            m = self.model[card]
            req = authorize_request(self.cards[card], amount)
            got = h.run(self._call("authorize", req))
            expect = amount <= m.available
            assert got["approved"] is expect, (got, m.available)
            if expect:
                auth = ModelAuth(card=card, held=amount)
                m.auths.append(auth)
                self.ids[req.id] = auth
            else:
                assert got["reason"] == "SpendLimitExceeded"
            assert got["available"] == m.available
            return req.id

        @rule(auth=auths, amount=st.integers(1, 5_000))
        def increment(self, auth: str, amount: int) -> None:
            a = self.ids.get(auth)
            req = contract.IncrementRequest(id=f"i_{uuid.uuid4().hex}", amount=amount)
            got = h.run(self._call("increment", auth, req))
            if a is None:  # a declined authorization
                assert got["_status"] == 409
                return
            m = self.model[a.card]
            if a.status != "pending":
                assert got["_status"] == 409
                return
            expect = amount <= m.available
            assert got["approved"] is expect, (got, m.available)
            if expect:
                a.held += amount
            assert got["held"] == a.remaining

        @rule(auth=auths, amount=st.integers(1, 12_000), final=st.booleans())
        def capture(self, auth: str, amount: int, final: bool) -> None:
            a = self.ids.get(auth)
            req = contract.CaptureRequest(id=f"c_{uuid.uuid4().hex}", amount=amount, final=final)
            got = h.run(self._call("capture", auth, req))
            if a is None or a.status != "pending":
                # Declined or expired: a force post, which these products do not allow;
                # closed: refused.
                assert got["_status"] == 409
                return
            m = self.model[a.card]
            if (a.captured + amount) * 10_000 > a.held * (10_000 + m.over_capture_bps):
                assert got["error"] == "OverCapture"
                return
            consumed = min(amount, a.remaining)
            a.captured += amount
            a.consumed += consumed
            if final:
                a.released += a.remaining
                a.status = "closed"
            m.spent += amount
            assert (got["_status"], got["captured"], got["held"]) == (200, a.captured, a.remaining)

        @rule(auth=auths)
        def void(self, auth: str) -> None:
            a = self.ids.get(auth)
            got = h.run(self._call("void", auth, contract.VoidRequest(id=f"v_{uuid.uuid4().hex}")))
            if a is None or a.status != "pending":
                assert got["_status"] == 409
                return
            a.released += a.remaining
            a.status = "closed"
            assert (got["status"], got["held"]) == ("closed", 0)

        @rule(auth=auths)
        def expire(self, auth: str) -> None:
            # Time passing: the authorization's expiry is moved into the past, then the
            # worker's statement runs.
            h.raw.execute(
                "UPDATE authorizations SET expires_at = now() - interval '1 second'"
                " WHERE id = %s AND status = 'pending'",
                (auth,),
            )
            h.run(self._expire())
            a = self.ids.get(auth)
            if a is not None and a.status == "pending":
                a.released += a.remaining
                a.status = "expired"

        async def _expire(self) -> int:
            async with h.pool.connection() as conn:
                return await STORE.expire(conn, 100)

        @rule(card=st.integers(0, 1), amount=st.integers(1, 5_000))
        def refund(self, card: int, amount: int) -> None:
            account = self.cards[card].account
            request = model.PostingRequest(
                idempotency_key=f"refund-{uuid.uuid4()}",
                kind=model.PostingKind.REFUND,
                lines=rules.lines_for(model.PostingKind.REFUND, account, amount, "USD"),
                occurred_at=datetime.datetime.now(datetime.UTC),
            )
            h.run(engine.post(h.pool, request))
            self.model[card].refunded += amount

        @invariant()
        def money_matches_the_model(self) -> None:
            for card, m in zip(self.cards, self.model, strict=True):
                assert held(h.raw, card) == m.held
                assert posted(h.raw, card) == m.spent - m.refunded
                row = h.raw.execute(
                    "SELECT authorization_available(c.account_id, %s, 'Lifetime', c.held_minor)"
                    " FROM authorization_cards c WHERE c.card = %s",
                    (LIMIT_MINOR, card.ref),
                ).fetchone()
                assert row == (m.available,)
            assert trial_balance_zero(h.raw)
            assert hold_drift(h.raw) == []

    return Authorizations


def test_holds_captures_voids_expiry_and_refunds_agree_with_the_model(harness: Harness) -> None:
    run_state_machine_as_test(
        make_machine(harness),
        settings=settings(
            max_examples=40,
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
