"""AML monitoring of a posting, inside the posting's own database transaction.

:func:`after_posting` is called by the posting path (``risk.store.PostingCheck`` chains it after
the risk rules) once the card account is locked, so the day's totals it reads are consistent
with the posting being written, and its alert rows and outbox events commit or roll back with
the posting (a rolled-back posting raises no alert). It never refuses a posting.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any, Final

from psycopg import AsyncConnection
from psycopg.rows import tuple_row

from fintech_operator.compliance import aml, model, store

_DAY_ACTIVITY: Final = """
WITH per_journal AS (
    SELECT j.id, sum(e.amount_minor) AS amount_minor
      FROM entries e
      JOIN journals j ON j.id = e.journal_id
     WHERE e.account_id = (SELECT id FROM accounts WHERE code = %(account)s)
       AND j.kind = ANY(%(kinds)s)
       AND j.posted_at >= %(start)s AND j.posted_at < %(end)s
       AND NOT EXISTS (SELECT 1 FROM journals r WHERE r.reverses_journal_id = j.id)
     GROUP BY j.id
)
SELECT count(*),
       coalesce(sum(amount_minor), 0),
       count(*) FILTER (WHERE amount_minor >= %(floor)s AND amount_minor < %(threshold)s)
  FROM per_journal
"""


@dataclass(frozen=True)
class MonitorResult:
    """What monitoring did: the recorded check (None when the posting is not monitored) and
    the alerts raised now (each with its row id; a day's repeat is not raised again)."""

    check_id: int | None
    outcome: model.Outcome | None
    alerts: tuple[model.Alert, ...]


async def after_posting(
    conn: AsyncConnection[Any], policy: model.Policy, facts: model.AmlFacts
) -> MonitorResult:
    """Monitor one posting in the caller's transaction: read the day, record, maybe alert."""
    config = aml.settings(policy)
    if not aml.monitors(config, facts):
        return MonitorResult(None, None, ())
    now = await _now(conn)
    day = aml.business_day(now, config.time_zone)
    before = await _day_activity(conn, config, facts, day)
    kinds = aml.evaluate(config, facts, before)
    near = 1 if aml.is_near_threshold(config, facts.amount_minor) else 0
    raised = []
    for kind in kinds:
        alert = model.Alert(
            kind=kind,
            card=facts.card,
            business_day=day.isoformat(),
            currency=facts.currency,
            total_minor=before.total_minor + facts.amount_minor,
            posting_count=before.count + 1,
            threshold_minor=config.threshold_minor,
            policy=policy.ref,
        )
        stored = await store.raise_alert(conn, alert, facts.posting_key)
        if stored.id is not None:
            raised.append(stored)
    check = model.CheckResult(
        kind=model.CheckKind.AML,
        outcome=model.Outcome.ALERT if kinds else model.Outcome.CLEAR,
        reason=kinds[0].value if kinds else "BelowThresholds",
        detail=_detail(kinds, before, facts, config),
        inputs={
            "posting": facts.to_json(),
            "before": before.to_json(),
            "businessDay": day.isoformat(),
            "settings": config.to_json(),
        },
        result={
            "alerts": [kind.value for kind in kinds],
            "raisedAlertIds": [alert.id for alert in raised],
            "nearThresholdCount": before.near_threshold_count + near,
        },
    )
    subject = store.CheckSubject(
        # Per namespace, like the posting's key itself (see risk.store.PostingCheck.key).
        idempotency_key=f"posting@{facts.card.split('/', 1)[0]}/{facts.posting_key}/aml",
        subject_kind="Posting",
        subject=facts.card,
        subject_uid=None,
        policy=policy.ref,
    )
    recorded = await store.record(conn, subject, check)
    return MonitorResult(recorded.id, check.outcome, tuple(raised))


def _detail(
    kinds: tuple[model.AlertKind, ...],
    before: aml.DayActivity,
    facts: model.AmlFacts,
    config: aml.Settings,
) -> str:
    total = before.total_minor + facts.amount_minor
    text = (
        f"{before.count + 1} posting(s) totalling {total} {facts.currency} today; threshold "
        f"{config.threshold_minor}"
    )
    return f"{', '.join(kind.value for kind in kinds)}: {text}" if kinds else text


async def _now(conn: AsyncConnection[Any]) -> datetime.datetime:
    # The transaction's own clock, the same one that stamps journals.posted_at.
    async with conn.cursor(row_factory=tuple_row) as cur:
        await cur.execute("SELECT now()")
        row = await cur.fetchone()
    if row is None or not isinstance(row[0], datetime.datetime):
        raise RuntimeError("SELECT now() returned no timestamp")
    return row[0]


async def _day_activity(
    conn: AsyncConnection[Any], config: aml.Settings, facts: model.AmlFacts, day: datetime.date
) -> aml.DayActivity:
    start, end = aml.day_bounds(day, config.time_zone)
    async with conn.cursor(row_factory=tuple_row) as cur:
        await cur.execute(
            _DAY_ACTIVITY,
            {
                "account": facts.account_code,
                "kinds": sorted(config.posting_types),
                "start": start,
                "end": end,
                "floor": config.structuring_floor_minor,
                "threshold": config.threshold_minor,
            },
        )
        row = await cur.fetchone()
    if row is None:
        raise RuntimeError("day activity query returned no row")
    count, total, near = row
    return aml.DayActivity(count=int(count), total_minor=int(total), near_threshold_count=int(near))
