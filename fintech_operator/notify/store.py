"""The notifier's tables (migration 0022): enqueue, claim, record, report.

Writes come from two places: the Kafka consumer enqueues deliveries (any notifier
replica), and the one worker that owns an endpoint records its attempts. The operator
only reads (:func:`endpoint_report`).
"""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

import psycopg

from fintech_operator.notify import policy

_ENQUEUE: Final = """
INSERT INTO webhook_deliveries (webhook_uid, webhook, event_id, event_type, body)
SELECT * FROM unnest(%s::uuid[], %s::text[], %s::uuid[], %s::text[], %s::bytea[])
ON CONFLICT (webhook_uid, event_id) DO NOTHING
"""
_DUE: Final = """
SELECT id, event_id, event_type, body, attempts, created_at
  FROM webhook_deliveries
 WHERE webhook_uid = %s AND state = 'pending' AND next_attempt_at <= now()
 ORDER BY next_attempt_at, id
 LIMIT %s
"""
_NEXT_DUE: Final = """
SELECT extract(epoch FROM min(next_attempt_at) - now())::float8
  FROM webhook_deliveries WHERE webhook_uid = %s AND state = 'pending'
"""
_EXPIRE: Final = """
WITH expired AS (
    UPDATE webhook_deliveries
       SET state = 'failed', finished_at = now(),
           last_error = 'expired: waited longer than retry.maxAgeSeconds'
     WHERE webhook_uid = %s AND state = 'pending'
       AND created_at < now() - make_interval(secs => %s)
    RETURNING 1
)
SELECT count(*) FROM expired
"""
# A refused destination is found by the worker (it needs DNS), not by the refresh that
# registers the endpoint: when it starts serving a configuration (:func:`record_judgement`)
# and at each delivery attempt (:func:`record_attempt`). Registering keeps that problem while
# the Webhook's generation is the same (its URL did not change) and nothing else is wrong. A
# new generation clears it; the worker then judges the new URL.
_REGISTER: Final = """
INSERT INTO webhook_endpoints (webhook_uid, namespace, name, generation, owner, problem)
VALUES (%s, %s, %s, %s, %s, %s)
ON CONFLICT (webhook_uid) DO UPDATE
   SET namespace = excluded.namespace, name = excluded.name, generation = excluded.generation,
       owner = excluded.owner,
       problem = CASE
           WHEN excluded.problem IS NULL
                AND webhook_endpoints.problem LIKE 'DestinationRefused:%%'
                AND webhook_endpoints.generation = excluded.generation
           THEN webhook_endpoints.problem
           ELSE excluded.problem END,
       updated_at = now()
"""
_CLEAN: Final = """
DELETE FROM webhook_deliveries
 WHERE id IN (SELECT id FROM webhook_deliveries
               WHERE finished_at < now() - make_interval(secs => %s)
               ORDER BY finished_at LIMIT %s)
"""
_ABANDON: Final = """
UPDATE webhook_deliveries
   SET state = 'failed', finished_at = now(),
       last_error = 'expired: no notifier served the endpoint (was the Webhook deleted?)'
 WHERE id IN (SELECT id FROM webhook_deliveries
               WHERE state = 'pending' AND created_at < now() - make_interval(secs => %s)
               ORDER BY id LIMIT %s)
"""
ERROR_MAX_CHARS: Final = 1000


@dataclass(frozen=True)
class Delivery:
    """One event to send to one endpoint."""

    webhook_uid: uuid.UUID
    webhook: str
    event_id: uuid.UUID
    event_type: str
    body: bytes


@dataclass(frozen=True)
class Due:
    """A pending delivery whose time has come."""

    id: int
    event_id: uuid.UUID
    event_type: str
    body: bytes
    attempts: int
    created_at: datetime.datetime


async def enqueue(conn: psycopg.AsyncConnection[Any], deliveries: Sequence[Delivery]) -> int:
    """Queue deliveries (a repeated (endpoint, event) is ignored); return how many are new."""
    if not deliveries:
        return 0
    cur = await conn.execute(
        _ENQUEUE,
        (
            [d.webhook_uid for d in deliveries],
            [d.webhook for d in deliveries],
            [d.event_id for d in deliveries],
            [d.event_type for d in deliveries],
            [d.body for d in deliveries],
        ),
    )
    return max(cur.rowcount, 0)


async def due(conn: psycopg.AsyncConnection[Any], webhook_uid: uuid.UUID, limit: int) -> list[Due]:
    cur = await conn.execute(_DUE, (webhook_uid, limit))
    return [
        Due(int(i), event_id, str(event_type), bytes(body), int(attempts), created_at)
        for i, event_id, event_type, body, attempts, created_at in await cur.fetchall()
    ]


async def seconds_until_next(
    conn: psycopg.AsyncConnection[Any], webhook_uid: uuid.UUID
) -> float | None:
    """Seconds until the endpoint's next pending delivery is due (None: nothing pending)."""
    row = await (await conn.execute(_NEXT_DUE, (webhook_uid,))).fetchone()
    return None if row is None or row[0] is None else max(0.0, float(row[0]))


async def expire(
    conn: psycopg.AsyncConnection[Any], webhook_uid: uuid.UUID, age_seconds_max: float
) -> int:
    """Give up on deliveries that waited longer than ``age_seconds_max``; return how many."""
    row = await (await conn.execute(_EXPIRE, (webhook_uid, age_seconds_max))).fetchone()
    expired = int(row[0]) if row else 0
    if expired:
        await conn.execute(
            "UPDATE webhook_endpoints SET failed_total = failed_total + %s,"
            " last_outcome = 'Expired', updated_at = now() WHERE webhook_uid = %s",
            (expired, webhook_uid),
        )
    return expired


class Registered(Protocol):
    """What :func:`register` reads of an endpoint (``endpoints.Endpoint`` has it all)."""

    @property
    def uid(self) -> uuid.UUID: ...
    @property
    def namespace(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def generation(self) -> int: ...
    @property
    def problem(self) -> str | None: ...


async def register(conn: psycopg.AsyncConnection[Any], endpoint: Registered, owner: str) -> None:
    """Say that ``owner`` serves this endpoint, and what holds its deliveries if anything."""
    problem = endpoint.problem
    await conn.execute(
        _REGISTER,
        (
            endpoint.uid,
            endpoint.namespace,
            endpoint.name,
            endpoint.generation,
            owner,
            None if problem is None else problem[:1000],
        ),
    )


# The worker's verdict on a configuration's destination, before any event. It only replaces
# no problem or a refusal: a Secret problem (the refresh's) stays, and a verdict on an older
# generation (the Webhook changed meanwhile) changes nothing.
_JUDGED: Final = """
UPDATE webhook_endpoints
   SET problem = left(%(problem)s::text, 1000), updated_at = now()
 WHERE webhook_uid = %(uid)s AND generation = %(generation)s
   AND (problem IS NULL OR problem LIKE 'DestinationRefused:%%')
   AND problem IS DISTINCT FROM left(%(problem)s::text, 1000)
"""


async def record_judgement(
    conn: psycopg.AsyncConnection[Any], endpoint: Registered, refusal: str | None
) -> bool:
    """Record the guard's verdict on ``endpoint``'s URL: ``refusal`` (the text a refused
    delivery records, ``DestinationRefused: ...``) becomes its problem, None clears a refusal,
    as an attempt that passed the guard does. Return whether the row changed."""
    cur = await conn.execute(
        _JUDGED,
        {"problem": refusal, "uid": endpoint.uid, "generation": endpoint.generation},
    )
    return cur.rowcount > 0


@dataclass(frozen=True)
class AttemptResult:
    """One finished attempt at a delivery: what happened, how long it took, what comes next.

    ``step`` is None after a success; otherwise it says retry (with its delay) or give up.
    """

    delivery: Due
    attempt: policy.Attempt
    duration_ms: int
    step: policy.NextStep | None

    @property
    def number(self) -> int:
        return self.delivery.attempts + 1

    @property
    def error(self) -> str | None:
        return None if self.attempt.error is None else self.attempt.error[:ERROR_MAX_CHARS]

    def verdict_is(self, verdict: policy.Verdict) -> bool:
        return self.step is not None and self.step.verdict is verdict


async def record_attempt(
    conn: psycopg.AsyncConnection[Any],
    webhook_uid: uuid.UUID,
    result: AttemptResult,
    breaker: policy.CircuitBreaker,
) -> None:
    """Log one attempt, move the delivery on, and save the endpoint's state, atomically
    (the caller holds the transaction).

    A refused destination becomes the endpoint's problem (shown as the Webhook's reason);
    any attempt that got past the guard clears that problem.
    """
    await conn.execute(
        "INSERT INTO webhook_delivery_attempts"
        " (delivery_id, attempt, outcome, status_code, error, duration_ms)"
        " VALUES (%s, %s, %s, %s, %s, %s)",
        (
            result.delivery.id,
            result.number,
            result.attempt.outcome.value,
            result.attempt.status_code,
            result.error,
            result.duration_ms,
        ),
    )
    finished = await _move_delivery_on(conn, result)
    await _save_endpoint(conn, webhook_uid, result, breaker, finished=finished)


async def _move_delivery_on(conn: psycopg.AsyncConnection[Any], result: AttemptResult) -> bool:
    """Delivered, retried later or failed; return whether the delivery is finished."""
    if result.step is None:
        state, next_in, finished = "delivered", 0.0, True
    elif result.step.verdict is policy.Verdict.RETRY:
        state, next_in, finished = "pending", result.step.delay_seconds, False
    else:
        state, next_in, finished = "failed", 0.0, True
    await conn.execute(
        "UPDATE webhook_deliveries SET state = %s, attempts = %s,"
        " next_attempt_at = now() + make_interval(secs => %s),"
        " last_status_code = %s, last_error = %s,"
        " finished_at = CASE WHEN %s THEN now() END"
        " WHERE id = %s AND state = 'pending'",
        (
            state,
            result.number,
            next_in,
            result.attempt.status_code,
            result.error,
            finished,
            result.delivery.id,
        ),
    )
    return finished


_SAVE_ENDPOINT: Final = """
UPDATE webhook_endpoints
   SET circuit = %s,
       circuit_open_until = to_timestamp(%s),
       consecutive_failures = %s,
       last_attempt_at = now(),
       last_success_at = CASE WHEN %s THEN now() ELSE last_success_at END,
       last_event_id = %s, last_event_type = %s, last_outcome = %s,
       last_status_code = %s, last_error = %s,
       delivered_total = delivered_total + CASE WHEN %s THEN 1 ELSE 0 END,
       failed_total = failed_total + CASE WHEN %s THEN 1 ELSE 0 END,
       problem = CASE
           WHEN %s::text IS NOT NULL THEN left(%s::text, 1000)
           WHEN problem LIKE 'DestinationRefused:%%' THEN NULL
           ELSE problem END,
       updated_at = now()
 WHERE webhook_uid = %s
"""


async def _save_endpoint(
    conn: psycopg.AsyncConnection[Any],
    webhook_uid: uuid.UUID,
    result: AttemptResult,
    breaker: policy.CircuitBreaker,
    *,
    finished: bool,
) -> None:
    delivered = result.step is None
    refused = result.error if result.verdict_is(policy.Verdict.REFUSED) else None
    expired = result.verdict_is(policy.Verdict.EXPIRED)
    outcome = "Expired" if expired else result.attempt.outcome.value
    await conn.execute(
        _SAVE_ENDPOINT,
        (
            breaker.state.value,
            breaker.open_until,
            breaker.consecutive_failures,
            delivered,
            result.delivery.event_id,
            result.delivery.event_type,
            outcome,
            result.attempt.status_code,
            result.error,
            delivered,
            finished and not delivered,
            refused,
            refused,
            webhook_uid,
        ),
    )


async def save_breaker(
    conn: psycopg.AsyncConnection[Any], webhook_uid: uuid.UUID, breaker: policy.CircuitBreaker
) -> None:
    await conn.execute(
        "UPDATE webhook_endpoints SET circuit = %s, circuit_open_until = to_timestamp(%s),"
        " consecutive_failures = %s, updated_at = now() WHERE webhook_uid = %s",
        (breaker.state.value, breaker.open_until, breaker.consecutive_failures, webhook_uid),
    )


async def load_breaker(
    conn: psycopg.AsyncConnection[Any], webhook_uid: uuid.UUID, threshold: int, open_seconds: float
) -> policy.CircuitBreaker:
    """The endpoint's saved breaker (a new owner carries on where the last one stopped)."""
    row = await (
        await conn.execute(
            "SELECT circuit, extract(epoch FROM circuit_open_until)::float8, consecutive_failures"
            " FROM webhook_endpoints WHERE webhook_uid = %s",
            (webhook_uid,),
        )
    ).fetchone()
    if row is None:
        return policy.CircuitBreaker(threshold, open_seconds)
    circuit, open_until, failures = row
    state = policy.Circuit(circuit)
    if state is policy.Circuit.HALF_OPEN:
        state = policy.Circuit.OPEN  # The trial's outcome was lost with its owner: rest again.
        open_until = 0.0
    return policy.CircuitBreaker(
        threshold,
        open_seconds,
        state=state,
        consecutive_failures=int(failures),
        open_until=None if state is not policy.Circuit.OPEN else float(open_until or 0.0),
    )


async def clean(conn: psycopg.AsyncConnection[Any], retention_seconds: float, limit: int) -> int:
    """Delete finished deliveries (and their attempts) older than the retention; bounded.

    Pending deliveries older than the longest age any Webhook may allow belong to endpoints
    that no notifier serves any more (the Webhook was deleted): they are failed first, so
    the log stays bounded even then.
    """
    await conn.execute(_ABANDON, (policy.AGE_SECONDS_MAX, limit))
    cur = await conn.execute(_CLEAN, (retention_seconds, limit))
    return max(cur.rowcount, 0)


@dataclass(frozen=True)
class EndpointReport:
    """What the operator shows in a Webhook's status."""

    problem: str | None
    circuit: str
    consecutive_failures: int
    last_attempt_at: datetime.datetime | None
    last_success_at: datetime.datetime | None
    last_event_id: uuid.UUID | None
    last_event_type: str | None
    last_outcome: str | None
    last_status_code: int | None
    last_error: str | None
    delivered_total: int
    failed_total: int
    pending: int


async def endpoint_report(
    conn: psycopg.AsyncConnection[Any], webhook_uid: uuid.UUID
) -> EndpointReport | None:
    row = await (
        await conn.execute(
            """
            SELECT problem, circuit, consecutive_failures, last_attempt_at, last_success_at,
                   last_event_id, last_event_type, last_outcome, last_status_code, last_error,
                   delivered_total, failed_total,
                   (SELECT count(*) FROM webhook_deliveries d
                     WHERE d.webhook_uid = e.webhook_uid AND d.state = 'pending')
              FROM webhook_endpoints e WHERE webhook_uid = %s
            """,
            (webhook_uid,),
        )
    ).fetchone()
    if row is None:
        return None
    return EndpointReport(
        problem=row[0],
        circuit=str(row[1]),
        consecutive_failures=int(row[2]),
        last_attempt_at=row[3],
        last_success_at=row[4],
        last_event_id=row[5],
        last_event_type=row[6],
        last_outcome=row[7],
        last_status_code=row[8],
        last_error=row[9],
        delivered_total=int(row[10]),
        failed_total=int(row[11]),
        pending=int(row[12]),
    )
