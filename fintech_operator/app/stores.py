"""The use cases' ports on PostgreSQL: the ledger engine, the stores and the mirror.

One object per port, holding the connection pool; each method is one transaction (or one read),
so a use case's commit points are exactly the ones its docstring names.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any, Final

from psycopg import AsyncConnection, errors
from psycopg_pool import AsyncConnectionPool

from fintech_operator import api
from fintech_operator.app import card_state, issuance, posting, posting_queue
from fintech_operator.authorizations import mirror
from fintech_operator.cards import lifecycle
from fintech_operator.cards import store as card_store
from fintech_operator.compliance import store as compliance_store
from fintech_operator.events import outbox
from fintech_operator.ledger import engine, model
from fintech_operator.risk import store as risk_store


class Cards:
    """:class:`issuance.IssuanceStore` and :class:`card_state.CardLedger`."""

    def __init__(self, pool: AsyncConnectionPool[Any]) -> None:
        self._pool = pool

    async def account_owners(self, namespace: str, name: str) -> list[tuple[str, str | None]]:
        async with self._pool.connection() as conn:
            owners = await engine.card_account_owners(conn, namespace, name)
        return [(owner.code, owner.owner_uid) for owner in owners]

    async def recorded_issuance(self, event_id: uuid.UUID) -> card_store.Issued | None:
        async with self._pool.connection() as conn:
            return await card_store.issued(conn, event_id)

    async def record_assessment(
        self, record: issuance.AssessmentRecord
    ) -> tuple[issuance.Assessment, lifecycle.Verdict]:
        risk = record.risk
        async with self._pool.connection() as conn, conn.transaction():
            risk_row = await risk_store.record(conn, risk)
            stored = [
                await compliance_store.record(
                    conn,
                    compliance_store.CheckSubject(
                        idempotency_key=key,
                        subject_kind=risk.subject_kind,
                        subject=risk.subject,
                        subject_uid=risk.subject_uid,
                        policy=record.policy_ref,
                    ),
                    check,
                )
                for key, check in record.checks
            ]
            # The verdict follows from the RECORDED decisions (a replay's are the first run's),
            # so its event commits with them and a retry writes the same one.
            verdict = lifecycle.verdict(risk_row.decision, [row.check for row in stored])
            await engine.write_events(conn, record.events_of(verdict))
        assessment = issuance.Assessment(
            risk=risk_row.decision,
            risk_record_id=risk_row.id,
            policy_ref=record.policy_ref,
            checks=tuple((row.id, row.check) for row in stored),
        )
        return assessment, verdict

    async def issue(self, request: issuance.CardIssuance) -> issuance.Committed:
        ledger = request.ledger

        async def then(conn: AsyncConnection[Any]) -> issuance.Committed:
            # What committed is what the card shows: the token its event carries.
            issued = await card_store.issued(conn, request.event_id)
            if issued is None:
                raise model.InvariantViolation("card.issued event not found after it was written")
            await mirror.put_card(
                conn, namespace=ledger.namespace, name=ledger.card,
                account=ledger.account_code, token=issued.token.token, spec=request.spec,
            )  # fmt: skip
            return issuance.Committed(issued, await mirror.holds(conn, ledger.account_code))

        return await engine.issue_card(self._pool, ledger, then)

    async def write_events(self, events: Sequence[model.OutboxEvent]) -> None:
        async with self._pool.connection() as conn:
            await engine.write_events(conn, events)

    async def set_frozen(
        self,
        code: str,
        frozen: bool,
        events: Sequence[model.OutboxEvent],
        *,
        generation: int | None = None,
    ) -> bool:
        async with self._pool.connection() as conn:
            return await engine.set_frozen(conn, code, frozen, events, generation=generation)

    async def close_account(self, code: str, events: Sequence[model.OutboxEvent]) -> None:
        async with self._pool.connection() as conn:
            await engine.close_account(conn, code, events=events)

    async def mirror_card(
        self, card: card_state.IssuedCard, token: str, spec: api.CardSpec
    ) -> None:
        async with self._pool.connection() as conn:
            await mirror.put_card(
                conn, namespace=card.namespace, name=card.name, account=str(card.account),
                token=token, spec=spec,
            )  # fmt: skip

    async def mirror_limit(self, card: card_state.IssuedCard, limit: api.SpendLimit | None) -> None:
        async with self._pool.connection() as conn:
            await mirror.put_card_limit(conn, card.namespace, card.name, limit)

    async def retire(self, card: card_state.IssuedCard) -> None:
        async with self._pool.connection() as conn:
            await mirror.retire_card(conn, card.namespace, card.name)

    async def find_review(self, card_uid: str) -> compliance_store.Review | None:
        """The CardReview recorded for the card, if any."""
        async with self._pool.connection() as conn:
            return await compliance_store.find_review(conn, card_uid)


class Postings:
    """:class:`posting.PostingLedger` on the ledger engine and the risk store."""

    def __init__(self, pool: AsyncConnectionPool[Any]) -> None:
        self._pool = pool

    async def journal_by_key(self, key: str, namespace: str) -> model.Journal | None:
        async with self._pool.connection() as conn:
            return await engine.journal_by_key(conn, key, namespace=namespace)

    async def journal(self, journal_id: int) -> model.Journal:
        async with self._pool.connection() as conn:
            return await engine.journal(conn, journal_id)

    async def open_account(self, code: str) -> model.Account | None:
        try:
            async with self._pool.connection() as conn:
                account = await engine.account(conn, code)
        except model.AccountNotFound:
            return None
        return account if account.status is model.AccountStatus.OPEN else None

    async def posted_event(self, journal_id: int) -> dict[str, Any] | None:
        async with self._pool.connection() as conn:
            return await outbox.posted_event(conn, journal_id)

    async def post(
        self, request: model.PostingRequest, check: risk_store.PostingCheck
    ) -> model.PostResult:
        return await risk_store.post(self._pool, request, check)

    async def reverse(self, reversal: posting.Reversal) -> model.PostResult:
        return await engine.reverse(self._pool, _reversal_request(reversal))


def _reversal_request(reversal: posting.Reversal) -> model.ReversalRequest:
    """The ledger's request for an application-layer reversal (both ledgers post it)."""
    return model.ReversalRequest(
        reversal.idempotency_key,
        reversal.journal_id,
        reversal.reason,
        events=reversal.events,
        namespace=reversal.namespace,
    )


class _InTransaction:
    """:class:`posting.PostingLedger` on one connection inside the batch's transaction: reads
    see what earlier postings of the batch wrote, writes are under savepoints."""

    def __init__(self, conn: AsyncConnection[Any]) -> None:
        self._conn = conn

    async def journal_by_key(self, key: str, namespace: str) -> model.Journal | None:
        return await engine.journal_by_key(self._conn, key, namespace=namespace)

    async def journal(self, journal_id: int) -> model.Journal:
        return await engine.journal(self._conn, journal_id)

    async def open_account(self, code: str) -> model.Account | None:
        try:
            account = await engine.account(self._conn, code)
        except model.AccountNotFound:
            return None
        return account if account.status is model.AccountStatus.OPEN else None

    async def posted_event(self, journal_id: int) -> dict[str, Any] | None:
        return await outbox.posted_event(self._conn, journal_id)

    async def post(
        self, request: model.PostingRequest, check: risk_store.PostingCheck
    ) -> model.PostResult:
        return await risk_store.post_nested(self._conn, request, check)

    async def reverse(self, reversal: posting.Reversal) -> model.PostResult:
        return await engine.reverse_nested(self._conn, _reversal_request(reversal))


# A step that hit a deadlock (two batches' postings touching the same system balance stripe in
# opposite orders) is tried again in the same transaction this many times in all.
STEP_ATTEMPTS_MAX: Final = 3
_RETRYABLE: Final = (errors.SerializationFailure, errors.DeadlockDetected)
Step = posting_queue.Step


class PostingBatch:
    """:class:`posting_queue.PostingBatch`: the steps in ONE ledger transaction
    (``engine.in_transaction``), each under a savepoint of its own."""

    def __init__(
        self, pool: AsyncConnectionPool[Any], limits: engine.Limits = engine.DEFAULT_LIMITS
    ) -> None:
        self._pool = pool
        self._limits = limits

    async def run(self, steps: Sequence[Step]) -> list[posting.Outcome | Exception]:
        results: list[posting.Outcome | Exception] = []
        async with engine.in_transaction(self._pool, self._limits) as conn:
            ledger = _InTransaction(conn)
            for step in steps:
                results.append(await _step(conn, ledger, step))
        # The engine refuses to commit an aborted transaction (engine.check_committable): then
        # the whole batch raises and no step's outcome is handed to its handler.
        return results


async def _step(
    conn: AsyncConnection[Any], ledger: _InTransaction, step: Step
) -> posting.Outcome | Exception:
    """One posting's decision under its savepoint: an error rolls back this posting only."""
    attempt = 1
    while True:
        try:
            async with conn.transaction():
                return await step(ledger)
        except _RETRYABLE as exc:
            if attempt >= STEP_ATTEMPTS_MAX:
                return exc
            attempt += 1
        except Exception as exc:  # the posting's own failure, handed back to its handler
            # unless the connection went with it: then the whole batch fails
            engine.check_committable(conn)
            return exc
