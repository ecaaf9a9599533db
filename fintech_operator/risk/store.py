"""Risk decisions against PostgreSQL: velocity reads, the ``risk_assessments`` trail, and the
posting check the ledger runs inside the posting transaction.

Wiring a posting (the whole integration, in the posting handler)::

    check = risk_store.PostingCheck(
        risk_policy.select(kwargs["riskpolicies"], namespace),
        risk_model.PostingFacts(card=..., account_code=..., kind=..., amount_minor=...,
                                currency=..., merchant_mcc=..., merchant_country=...),
        subject=f"{namespace}/{name}", subject_uid=uid,
        compliance_policy=compliance_policy.select(kwargs["compliancepolicies"], namespace),
    )
    result = await risk_store.post(memo.pool, request, check)   # instead of engine.post
    # RiskDeclined (a LedgerError, reason "RiskDeclined") -> Rejected; check.decision and
    # check.monitor.alerts say what happened when it posted.

Decisions are sticky per idempotency key (Invariant 3): the first decision recorded for a
posting key is the one every later attempt with that key gets.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from psycopg import AsyncConnection
from psycopg.rows import tuple_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from fintech_operator.compliance import model as compliance_model
from fintech_operator.compliance import monitor
from fintech_operator.ledger import engine as ledger_engine
from fintech_operator.ledger import model as ledger_model
from fintech_operator.risk import engine, model

_VELOCITY: Final = """
SELECT w.seconds, count(x.journal_id), coalesce(sum(x.amount_minor), 0)
  FROM unnest(%(windows)s::integer[]) AS w(seconds)
  LEFT JOIN LATERAL (
        SELECT j.id AS journal_id, e.amount_minor
          FROM entries e
          JOIN journals j ON j.id = e.journal_id
         WHERE e.account_id = (SELECT id FROM accounts WHERE code = %(account)s)
           AND j.kind = ANY(%(kinds)s)
           AND j.posted_at >= now() - make_interval(secs => w.seconds)
           AND NOT EXISTS (SELECT 1 FROM journals r WHERE r.reverses_journal_id = j.id)
       ) x ON true
 GROUP BY w.seconds
 ORDER BY w.seconds
"""


@dataclass(frozen=True)
class Stored:
    """A risk_assessments row: its id and the decision that stands for its key."""

    id: int
    decision: model.Decision
    replayed: bool


async def read_velocity(
    conn: AsyncConnection[Any], account_code: str, windows: Sequence[int], kinds: Sequence[str]
) -> model.Velocity:
    """Count and sum a card account's postings per rolling window ending now (not reversed).

    Called under the posting's account lock, so no concurrent posting of the card can slip in
    between this read and the write it guards (Invariant 8).
    """
    if not windows:
        return model.Velocity()
    async with conn.cursor(row_factory=tuple_row) as cur:
        await cur.execute(
            _VELOCITY,
            {"windows": list(windows), "account": account_code, "kinds": sorted(kinds)},
        )
        rows = await cur.fetchall()
    return model.Velocity.of(
        model.WindowTotals(int(seconds), int(count), int(amount)) for seconds, count, amount in rows
    )


async def find(
    conn: AsyncConnection[Any], idempotency_key: str, *, subject_namespace: str | None = None
) -> Stored | None:
    """The decision stored under a key; with ``subject_namespace``, only one about a subject
    of that namespace."""
    async with conn.cursor(row_factory=tuple_row) as cur:
        await cur.execute(
            "SELECT id, decision, score, matched, policy FROM risk_assessments"
            " WHERE idempotency_key = %(key)s AND (%(namespace)s::text IS NULL"
            " OR split_part(subject, '/', 1) = %(namespace)s::text)",
            {"key": idempotency_key, "namespace": subject_namespace},
        )
        row = await cur.fetchone()
    if row is None:
        return None
    id_, decision, score, matched, policy = row
    return Stored(int(id_), _decision(str(decision), int(score), matched, str(policy)), True)


def _decision(action: str, score: int, matched: Any, policy: str) -> model.Decision:
    matches = tuple(
        model.Match(
            str(item.get("rule", "")),
            model.Action(str(item.get("action", "Review"))),
            int(item.get("score", 0)),
            str(item.get("detail", "")),
        )
        for item in (matched or [])
        if isinstance(item, Mapping)
    )
    return model.Decision(model.Action(action), score, matches, policy)


async def record(conn: AsyncConnection[Any], assessment: model.Assessment) -> Stored:
    """Store a decision; when its key exists already, return the first decision instead."""
    decision = assessment.decision
    async with conn.cursor(row_factory=tuple_row) as cur:
        await cur.execute(
            """
            INSERT INTO risk_assessments (idempotency_key, subject_kind, subject, subject_uid,
                                          policy, decision, score, matched, inputs)
            VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)
            ON CONFLICT (idempotency_key) DO NOTHING
            RETURNING id
            """,
            (
                assessment.idempotency_key,
                assessment.subject_kind,
                assessment.subject,
                assessment.subject_uid,
                decision.policy,
                decision.action.value,
                decision.score,
                Jsonb([match.to_json() for match in decision.matches]),
                Jsonb(dict(assessment.inputs)),
            ),
        )
        row = await cur.fetchone()
    if row is not None:
        return Stored(int(row[0]), decision, False)
    stored = await find(conn, assessment.idempotency_key)
    if stored is None:
        raise RuntimeError(f"risk assessment {assessment.idempotency_key!r} vanished")
    return stored


class PostingCheck:
    """A ``ledger.engine.Check``: risk rules, then AML monitoring, in the posting transaction.

    After :func:`post` returns, ``decision`` (Approve or Review), ``record_id`` and ``monitor``
    (the AML result, None without a compliance policy) describe what happened.
    """

    def __init__(
        self,
        policy: model.Policy,
        facts: model.PostingFacts,
        *,
        subject: str,
        subject_uid: str | None = None,
        compliance_policy: compliance_model.Policy | None = None,
    ) -> None:
        if not isinstance(facts, model.PostingFacts):
            raise model.InvalidFacts("PostingCheck needs PostingFacts")
        self.policy = policy
        self.facts = facts
        self.subject = subject
        self.subject_uid = subject_uid
        self.compliance_policy = compliance_policy
        self.decision: model.Decision | None = None
        self.record_id: int | None = None
        self.monitor: monitor.MonitorResult | None = None
        self._velocity = model.Velocity()

    def key(self, request: ledger_model.PostingRequest) -> str:
        """The decision's key: the posting's key within its namespace. ``posting@`` never
        begins a key of the first form (``posting/<key>/risk``), so the two cannot collide."""
        return f"posting@{request.namespace}/{request.idempotency_key}/risk"

    async def _stored(
        self, conn: AsyncConnection[Any], request: ledger_model.PostingRequest
    ) -> Stored | None:
        """The first decision for this posting: under its key, or (recorded before keys were
        per namespace) under the key of the first form if it was this namespace's posting."""
        stored = await find(conn, self.key(request))
        if stored is not None or request.namespace is None:
            return stored
        return await find(
            conn, f"posting/{request.idempotency_key}/risk", subject_namespace=request.namespace
        )

    async def __call__(
        self, conn: AsyncConnection[Any], request: ledger_model.PostingRequest
    ) -> None:
        if self.facts.account_code not in request.account_codes:
            # Velocity is only consistent when read under the lock of the account it counts.
            raise ledger_model.InvalidRequest(
                f"risk facts name account {self.facts.account_code}, not one of the posting's"
            )
        key = self.key(request)
        stored = await self._stored(conn, request)
        decision = stored.decision if stored else await self._assess(conn)
        if decision.action is model.Action.DECLINE:
            raise model.RiskDeclined(
                f"declined by risk policy {decision.summary()}",
                decision=decision,
                record=self._assessment(key, decision),
            )
        if stored is None:
            stored = await record(conn, self._assessment(key, decision))
        self.decision, self.record_id = stored.decision, stored.id
        if self.compliance_policy is not None:
            self.monitor = await monitor.after_posting(
                conn, self.compliance_policy, self._aml_facts(request)
            )

    async def _assess(self, conn: AsyncConnection[Any]) -> model.Decision:
        velocity = model.Velocity()
        if engine.assesses(self.policy, self.facts.kind):
            kinds = [posting_type.value for posting_type in self.policy.spec.posting_types]
            velocity = await read_velocity(
                conn, self.facts.account_code, engine.velocity_windows(self.policy), kinds
            )
        self._velocity = velocity
        return engine.assess_posting(self.policy, self.facts, velocity)

    def _assessment(self, key: str, decision: model.Decision) -> model.Assessment:
        return model.Assessment(
            idempotency_key=key,
            subject_kind="Posting",
            subject=self.subject,
            subject_uid=self.subject_uid,
            decision=decision,
            inputs={"posting": self.facts.to_json(), "velocity": self._velocity.to_json()},
        )

    def _aml_facts(self, request: ledger_model.PostingRequest) -> compliance_model.AmlFacts:
        return compliance_model.AmlFacts(
            card=self.facts.card,
            account_code=self.facts.account_code,
            posting_key=request.idempotency_key,
            kind=self.facts.kind,
            amount_minor=self.facts.amount_minor,
            currency=self.facts.currency,
        )


async def record_declined(pool: AsyncConnectionPool[Any], error: model.RiskDeclined) -> int:
    """Store a decline in its own transaction (the posting's was rolled back); return its id."""
    async with pool.connection() as conn, conn.transaction():
        stored = await record(conn, error.record)
    error.record_id = stored.id
    return stored.id


async def post(
    pool: AsyncConnectionPool[Any],
    request: ledger_model.PostingRequest,
    check: PostingCheck,
    *,
    limits: ledger_engine.Limits = ledger_engine.DEFAULT_LIMITS,
) -> ledger_model.PostResult:
    """``ledger.engine.post`` with ``check``; a decline is recorded, then re-raised."""
    try:
        return await ledger_engine.post(pool, request, check=check, limits=limits)
    except model.RiskDeclined as error:
        await record_declined(pool, error)
        raise


async def post_nested(
    conn: AsyncConnection[Any],
    request: ledger_model.PostingRequest,
    check: PostingCheck,
) -> ledger_model.PostResult:
    """:func:`post` inside the caller's transaction (``ledger.engine.post_nested``): the
    posting's savepoint is rolled back on a decline, which is then recorded in the caller's
    transaction under a savepoint of its own, and re-raised."""
    try:
        return await ledger_engine.post_nested(conn, request, check=check)
    except model.RiskDeclined as error:
        async with conn.transaction():
            stored = await record(conn, error.record)
        error.record_id = stored.id
        raise
