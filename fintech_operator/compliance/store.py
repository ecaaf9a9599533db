"""The compliance audit trail in PostgreSQL: checks, alerts (with their outbox event), reviews.

Every writer here is idempotent: rows carry a UNIQUE key and are inserted with ``ON CONFLICT DO
NOTHING``; when the key exists, the *stored* row is returned, so a replayed handler reports the
first decision rather than making a second one. Functions take a connection and run in the
caller's transaction when there is one (the posting's), or in their own otherwise.
"""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from psycopg import AsyncConnection
from psycopg.rows import tuple_row
from psycopg.types.json import Jsonb

from fintech_operator.compliance import model
from fintech_operator.events import envelope, outbox, topics
from fintech_operator.ledger.model import OutboxEvent
from fintech_operator.observability import tracing

# The bare topic name the outbox uses; the relay adds the deployment prefix on the wire.
TOPIC: Final = topics.COMPLIANCE
ALERT_RAISED: Final = "dev.fintech.compliance.alert.raised.v1"
SOURCE: Final = "/fintech-operator/compliance"
ALERTS_PAGE_MAX: Final = 100


@dataclass(frozen=True)
class StoredCheck:
    """A compliance_checks row as stored (possibly by an earlier run with the same key)."""

    id: int
    check: model.CheckResult
    replayed: bool


def _result_json(check: model.CheckResult) -> dict[str, object]:
    return {
        **check.result,
        "detail": check.detail,
        "hit": check.hit.to_json() if check.hit else None,
    }


def _check_from_row(
    kind: str, outcome: str, reason: str, inputs: Any, result: Any
) -> model.CheckResult:
    stored = dict(result or {})
    detail = str(stored.pop("detail", ""))
    raw_hit = stored.pop("hit", None)
    hit = None
    if isinstance(raw_hit, Mapping):
        hit = model.SanctionsHit(
            name=str(raw_hit.get("name", "")),
            entry_id=_opt_str(raw_hit.get("entryId")),
            program=_opt_str(raw_hit.get("program")),
            score_bps=int(raw_hit.get("scoreBps", 0)),
            exact=bool(raw_hit.get("exact", False)),
        )
    return model.CheckResult(
        kind=model.CheckKind(kind),
        outcome=model.Outcome(outcome),
        reason=reason,
        detail=detail,
        inputs=dict(inputs or {}),
        result=stored,
        hit=hit,
    )


def _opt_str(value: object) -> str | None:
    return None if value is None else str(value)


@dataclass(frozen=True)
class CheckSubject:
    """What a check is about, under which policy, and the key that records it only once."""

    idempotency_key: str
    subject_kind: str  # CardIssuance or Posting
    subject: str  # <namespace>/<name> of the card
    subject_uid: str | None
    policy: str  # <namespace>/<name> of the policy, or builtin/default


async def record(
    conn: AsyncConnection[Any], subject: CheckSubject, check: model.CheckResult
) -> StoredCheck:
    """Store one check; when the key exists already, return what was stored first."""
    async with conn.cursor(row_factory=tuple_row) as cur:
        await cur.execute(
            """
            INSERT INTO compliance_checks (idempotency_key, subject_kind, subject, subject_uid,
                                           policy, check_kind, outcome, reason, inputs, result)
            VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
            ON CONFLICT (idempotency_key) DO NOTHING
            RETURNING id
            """,
            (
                subject.idempotency_key,
                subject.subject_kind,
                subject.subject,
                subject.subject_uid,
                subject.policy,
                check.kind.value,
                check.outcome.value,
                check.reason,
                Jsonb(dict(check.inputs)),
                Jsonb(_result_json(check)),
            ),
        )
        row = await cur.fetchone()
        if row is not None:
            return StoredCheck(id=int(row[0]), check=check, replayed=False)
        await cur.execute(
            "SELECT id, check_kind, outcome, reason, inputs, result FROM compliance_checks"
            " WHERE idempotency_key = %s",
            (subject.idempotency_key,),
        )
        found = await cur.fetchone()
    if found is None:
        raise RuntimeError(f"compliance check {subject.idempotency_key!r} conflicted but is absent")
    id_, kind, outcome, reason, inputs, result = found
    return StoredCheck(
        id=int(id_),
        check=_check_from_row(str(kind), str(outcome), str(reason), inputs, result),
        replayed=True,
    )


# --- Alerts ---------------------------------------------------------------------------------------


def alert_event(
    alert: model.Alert,
    alert_id: int,
    event_id: uuid.UUID,
    posting_key: str,
    raised_at: datetime.datetime,
) -> dict[str, Any]:
    """The alert as a CloudEvent (the product's envelope) for the ``compliance`` topic.

    Type ``dev.fintech.compliance.alert.raised.v1``, subject the card, partition key the card
    (``<namespace>/<name>``) so a card's alerts stay in order.
    """
    namespace, card_name = alert.card.split("/", 1)
    return envelope.Draft(
        event_id=event_id,
        type_=ALERT_RAISED,
        source=SOURCE,
        subject_text=envelope.subject(namespace, "cards", card_name),
        time=raised_at,
        data={
            "alertId": alert_id,
            "alertKind": alert.kind.value,
            "card": alert.card,
            "businessDay": alert.business_day,
            "currency": alert.currency,
            "totalMinor": alert.total_minor,
            "postingCount": alert.posting_count,
            "thresholdMinor": alert.threshold_minor,
            "policy": alert.policy,
            "postingKey": posting_key,
        },
        extensions={"partitionkey": alert.card},
    ).build()


async def raise_alert(
    conn: AsyncConnection[Any], alert: model.Alert, posting_key: str
) -> model.Alert:
    """Store the alert and its outbox event, at most once per card, day, kind and currency.

    Returns the alert with its new ``id``, or with ``id`` None when the day already had it.
    """
    event_id = uuid.uuid4()
    async with conn.cursor(row_factory=tuple_row) as cur:
        await cur.execute(
            """
            INSERT INTO compliance_alerts (alert_kind, card, business_day, currency, total_minor,
                                           posting_count, threshold_minor, policy, posting_key,
                                           event_id)
            VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
            ON CONFLICT (card, business_day, alert_kind, currency) DO NOTHING
            RETURNING id, created_at
            """,
            (
                alert.kind.value,
                alert.card,
                datetime.date.fromisoformat(alert.business_day),
                alert.currency,
                alert.total_minor,
                alert.posting_count,
                alert.threshold_minor,
                alert.policy,
                posting_key,
                event_id,
            ),
        )
        row = await cur.fetchone()
        if row is None:
            return alert
        alert_id, raised_at = int(row[0]), row[1]
        payload = alert_event(alert, alert_id, event_id, posting_key, raised_at)
        # With the trace context, like every other event (the outbox's one writer).
        event = OutboxEvent(event_id, TOPIC, alert.card, payload, tracing.context_headers())
        await outbox.write(cur, [event])
    return _with_id(alert, alert_id)


def _with_id(alert: model.Alert, alert_id: int) -> model.Alert:
    return model.Alert(
        kind=alert.kind,
        card=alert.card,
        business_day=alert.business_day,
        currency=alert.currency,
        total_minor=alert.total_minor,
        posting_count=alert.posting_count,
        threshold_minor=alert.threshold_minor,
        policy=alert.policy,
        id=alert_id,
    )


async def alerts_after(
    conn: AsyncConnection[Any], card: str, after_id: int, limit: int = 20
) -> list[model.Alert]:
    """The card's alerts with an id above ``after_id``, oldest first (for Events on the card)."""
    if type(limit) is not int or not 1 <= limit <= ALERTS_PAGE_MAX:
        raise ValueError(f"limit must be an int in 1..{ALERTS_PAGE_MAX}")
    async with conn.cursor(row_factory=tuple_row) as cur:
        await cur.execute(
            """
            SELECT id, alert_kind, business_day, currency, total_minor, posting_count,
                   threshold_minor, policy
              FROM compliance_alerts
             WHERE card = %s AND id > %s
             ORDER BY id
             LIMIT %s
            """,
            (card, after_id, limit),
        )
        rows = await cur.fetchall()
    return [
        model.Alert(
            kind=model.AlertKind(kind),
            card=card,
            business_day=day.isoformat(),
            currency=str(currency),
            total_minor=int(total),
            posting_count=int(count),
            threshold_minor=int(threshold),
            policy=str(policy),
            id=int(id_),
        )
        for id_, kind, day, currency, total, count, threshold, policy in rows
    ]


# --- Manual reviews -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Review:
    """A card_reviews row: the decision that stands for the card."""

    id: int
    card: str
    card_uid: str
    review: str  # <namespace>/<name> of the CardReview
    review_uid: str
    decision: str
    reviewer: str
    comment: str
    created_at: datetime.datetime


_REVIEW_COLUMNS: Final = (
    "id, card, card_uid, review, review_uid, decision, reviewer, comment, created_at"
)


def _review(row: tuple[Any, ...]) -> Review:
    id_, card, card_uid, review, review_uid, decision, reviewer, comment, created_at = row
    return Review(
        int(id_),
        str(card),
        str(card_uid),
        str(review),
        str(review_uid),
        str(decision),
        str(reviewer),
        str(comment),
        created_at,
    )


@dataclass(frozen=True)
class NewReview:
    """A reviewer's decision to store: ``card`` and ``review`` are ``<namespace>/<name>``."""

    card: str
    card_uid: str
    review: str
    review_uid: str
    decision: str
    reviewer: str
    comment: str


async def record_review(conn: AsyncConnection[Any], new: NewReview) -> Review:
    """Store a review unless the card already has one; return the one that stands."""
    async with conn.transaction(), conn.cursor(row_factory=tuple_row) as cur:
        await cur.execute(
            f"""
            INSERT INTO card_reviews (card, card_uid, review, review_uid, decision, reviewer,
                                      comment)
            VALUES (%s, %s, %s, %s, %s, %s, %s)
            ON CONFLICT (card_uid) DO NOTHING
            RETURNING {_REVIEW_COLUMNS}
            """,
            (
                new.card,
                new.card_uid,
                new.review,
                new.review_uid,
                new.decision,
                new.reviewer,
                new.comment,
            ),
        )
        row = await cur.fetchone()
        if row is not None:
            return _review(row)
        await cur.execute(
            f"SELECT {_REVIEW_COLUMNS} FROM card_reviews WHERE card_uid = %s", (new.card_uid,)
        )
        found = await cur.fetchone()
    if found is None:
        raise RuntimeError(f"review of card {new.card_uid} conflicted but is absent")
    return _review(found)


async def find_review(conn: AsyncConnection[Any], card_uid: str) -> Review | None:
    async with conn.cursor(row_factory=tuple_row) as cur:
        await cur.execute(
            f"SELECT {_REVIEW_COLUMNS} FROM card_reviews WHERE card_uid = %s", (card_uid,)
        )
        row = await cur.fetchone()
    return None if row is None else _review(row)


async def last_alert_ids(conn: AsyncConnection[Any], cards: Sequence[str]) -> dict[str, int]:
    """The id of each card's newest alert (cards without alerts are left out), in one query:
    the batched card refresh reads pages with :func:`alerts_after` only for cards that have new
    ones."""
    async with conn.cursor(row_factory=tuple_row) as cur:
        await cur.execute(
            "SELECT card, max(id) FROM compliance_alerts WHERE card = ANY(%s) GROUP BY card",
            (list(cards),),
        )
        rows = await cur.fetchall()
    return {str(card): int(id_) for card, id_ in rows}
