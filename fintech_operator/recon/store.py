"""The reconciliation run's PostgreSQL adapter: load the source, compare set-wise, record.

A run is carried out on its own connection (not the operator's pool, whose connections are
sized for short posting transactions) in a worker thread, so the event loop never waits on
parsing or on a long query. The steps:

1. :func:`claim` in a short committed transaction: create the ``recon_runs`` row (attempt 1) or
   count one more attempt; a finished row is returned as it is, so a restarted operator reports
   the stored result instead of computing it again.
2. ONE ``REPEATABLE READ`` transaction does all the work on one snapshot of the ledger: lock the
   run row (``NOWAIT``: another worker on the same run means "busy, retry later"), stream the
   records into a temporary table with ``COPY``, classify every reference with joins, run the
   internal checks into the temporary ``recon_found`` table, copy the findings to
   ``recon_exceptions`` (unless dry run) and mark the run succeeded with its summary. Either all
   of it commits or none of it does: an interrupted run is never half reported.
3. A source that cannot be read (:class:`model.SourceError`) rolls that transaction back and
   marks the run failed, with the reason, in a transaction of its own.

The transaction that records the final state (2 or 3) also writes the run's
``dev.fintech.recon.completed.v1`` event to the outbox, so the event exists exactly when the
result does. Its id is derived from the run's uid and the insert skips an id already there,
so no retry or restart can write a second one (a finished row is never worked on again).
"""

from __future__ import annotations

import dataclasses
import datetime
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any, Final

import psycopg
from psycopg import errors, sql
from psycopg.rows import TupleRow
from psycopg.types.json import Jsonb

from fintech_operator.events import outbox, schema
from fintech_operator.ledger import model as ledger_model
from fintech_operator.recon import load, model, parse
from fintech_operator.rewards import points

Connection = psycopg.Connection[TupleRow]
RecordSource = load.RecordSource
Source = RecordSource | model.TextSource

REWARDS_CONSUMER: Final = "rewards"
POSTINGS_TOPIC: Final = "postings"
# Posting events that move points: posted and reversed, as CloudEvents types
# ("dev.fintech.posting.posted.v1") and as the bare types of the first event format.
_POSTING_EVENT_RE: Final = r"(^|\.)posting\.(posted|reversed)(\.v[0-9]+)?$"
_STOP_CHECK_EVERY: Final = 10_000
_FLUSH_CARDS_EVERY: Final = 10_000
_TS: Final = "to_char({} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')"


@dataclasses.dataclass(frozen=True)
class Limits:
    """Bounds of one run; checked on construction so a bad setting fails at start-up."""

    connect_timeout_seconds: int = 10
    statement_timeout_seconds: int = 1800
    lock_timeout_seconds: int = 10
    work_mem_mb: int = 64
    # For the one join of the file with the ledger's references: a hash table of a million
    # references takes about 150 MB, and one built in memory is several times faster than one
    # spilled to disk in batches. Bounds that statement's memory, not the others'.
    join_work_mem_mb: int = 256

    def __post_init__(self) -> None:
        if not 1 <= self.connect_timeout_seconds <= 300:
            raise ValueError("connect_timeout_seconds must be in 1..300")
        if not 1 <= self.statement_timeout_seconds <= 86_400:
            raise ValueError("statement_timeout_seconds must be in 1..86400")
        if not 1 <= self.lock_timeout_seconds <= self.statement_timeout_seconds:
            raise ValueError("lock_timeout_seconds must be in 1..statement_timeout_seconds")
        if not 4 <= self.work_mem_mb <= 4096:
            raise ValueError("work_mem_mb must be in 4..4096")
        if not self.work_mem_mb <= self.join_work_mem_mb <= 4096:
            raise ValueError("join_work_mem_mb must be in work_mem_mb..4096")


@dataclasses.dataclass(frozen=True)
class RunKey:
    """Which object a run belongs to; ``uid`` tells apart a deleted and re-created name."""

    uid: str
    namespace: str
    name: str


@dataclasses.dataclass(frozen=True)
class RunState:
    """A ``recon_runs`` row as the handler reports it."""

    run_id: int
    attempt: int
    state: str  # running | succeeded | failed
    started_at: datetime.datetime
    completed_at: datetime.datetime | None
    summary: Mapping[str, Any] | None
    reason: str | None
    message: str | None


class Busy(Exception):
    """Another worker holds the run (an older operator still finishing); retry later."""


_ROW: Final = "id, attempt, state, started_at, completed_at, summary, reason, message"


def _state(row: TupleRow | None) -> RunState:
    if row is None:
        raise RuntimeError("the recon_runs row vanished inside its own transaction")
    id_, attempt, state, started_at, completed_at, summary, reason, message = row
    return RunState(
        int(id_), int(attempt), str(state), started_at, completed_at, summary, reason, message
    )


def connect(dsn: str, limits: Limits) -> Connection:
    return psycopg.connect(dsn, autocommit=True, connect_timeout=limits.connect_timeout_seconds)


def claim(conn: Connection, key: RunKey, dry_run: bool, lock_timeout_seconds: int = 10) -> RunState:
    """Create the run row, or count a new attempt of an unfinished one (committed at once).

    Raises :class:`Busy` when another worker holds the row longer than the lock timeout.
    """
    try:
        return _claim(conn, key, dry_run, lock_timeout_seconds)
    except errors.LockNotAvailable as exc:
        raise Busy(f"run {key.namespace}/{key.name} is being worked on elsewhere") from exc


def _claim(conn: Connection, key: RunKey, dry_run: bool, lock_timeout_seconds: int) -> RunState:
    with conn.transaction():
        conn.execute("SELECT set_config('lock_timeout', %s, true)", (f"{lock_timeout_seconds}s",))
        row = conn.execute(
            f"""
            INSERT INTO recon_runs (uid, namespace, name, dry_run) VALUES (%s, %s, %s, %s)
            ON CONFLICT (uid) DO UPDATE
               SET attempt = recon_runs.attempt + 1, attempt_started_at = now()
             WHERE recon_runs.state = 'running'
            RETURNING {_ROW}
            """,
            (key.uid, key.namespace, key.name, dry_run),
        ).fetchone()
        if row is None:  # Finished: the WHERE refused the update; report what is stored.
            row = conn.execute(
                f"SELECT {_ROW} FROM recon_runs WHERE uid = %s", (key.uid,)
            ).fetchone()
    return _state(row)


def stored(conn: Connection, key: RunKey) -> RunState | None:
    row = conn.execute(f"SELECT {_ROW} FROM recon_runs WHERE uid = %s", (key.uid,)).fetchone()
    return None if row is None else _state(row)


def forget(conn: Connection, uid: str) -> int:
    """Delete a run and its exceptions (history pruning, or the object was deleted)."""
    with conn.transaction():
        return conn.execute("DELETE FROM recon_runs WHERE uid = %s", (uid,)).rowcount


def execute(
    dsn: str,
    key: RunKey,
    plan: model.Plan,
    records: Source | None,
    *,
    stop: threading.Event | None = None,
    limits: Limits | None = None,
) -> RunState:
    """Carry out one run to a final state, or raise (transient error, :class:`Busy`,
    :class:`model.Interrupted`) leaving the run unfinished and nothing of it committed."""
    return _execute(dsn, key, plan, records, _Control(stop or threading.Event(), limits, None))


def execute_timed(
    dsn: str,
    key: RunKey,
    plan: model.Plan,
    records: Source | None,
    phases: dict[str, float],
    *,
    limits: Limits | None = None,
) -> RunState:
    """:func:`execute` that also adds the seconds each step took (prepare, load, settlement,
    checks and findings, commit) to ``phases``, for benchmarks and profiles."""
    return _execute(dsn, key, plan, records, _Control(threading.Event(), limits, phases))


@dataclasses.dataclass(frozen=True)
class _Control:
    """How a run is driven: its stop signal, its bounds, and where its step times go."""

    stop: threading.Event
    limits: Limits | None
    phases: dict[str, float] | None


def _execute(
    dsn: str, key: RunKey, plan: model.Plan, records: Source | None, control: _Control
) -> RunState:
    limits = control.limits or Limits()
    stop = control.stop
    clock = _Phases(control.phases)
    if model.Check.SETTLEMENT in plan.checks and records is None:
        raise ValueError("the settlement check needs a record source")
    with connect(dsn, limits) as conn:
        claimed = claim(conn, key, plan.dry_run, limits.lock_timeout_seconds)
        if claimed.state != "running":
            return claimed
        try:
            conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            with conn.transaction():
                _lock(conn, claimed, limits)
                summary = _reconcile(
                    conn,
                    claimed.run_id,
                    plan,
                    _Scope(scope_of(key, plan), limits.join_work_mem_mb, stop, clock),
                    records,
                )
                final = _succeed(conn, key, plan, claimed.run_id, summary)
            clock.lap("commit")
            return final
        except model.SourceError as exc:
            conn.isolation_level = psycopg.IsolationLevel.READ_COMMITTED
            return _fail(conn, key, plan, claimed.run_id, exc.reason, exc.message)


class _Phases:
    """Seconds per step of a run, into the caller's dict (or nowhere)."""

    def __init__(self, into: dict[str, float] | None) -> None:
        self.into = into
        self.last = time.monotonic()

    def lap(self, name: str) -> None:
        now = time.monotonic()
        if self.into is not None:
            self.into[name] = self.into.get(name, 0.0) + now - self.last
        self.last = now


@dataclasses.dataclass(frozen=True)
class _Scope:
    """Whose money a run compares (None: the whole ledger), its join's memory, its stop
    signal and its clock."""

    namespace: str | None
    join_work_mem_mb: int
    stop: threading.Event
    clock: _Phases


def _lock(conn: Connection, claimed: RunState, limits: Limits) -> None:
    conn.execute(
        "SELECT set_config('statement_timeout', %s, true), set_config('lock_timeout', %s, true),"
        " set_config('work_mem', %s, true), set_config('jit', 'off', true)",
        (
            f"{limits.statement_timeout_seconds}s",
            f"{limits.lock_timeout_seconds}s",
            f"{limits.work_mem_mb}MB",
        ),
    )
    try:
        row = conn.execute(
            "SELECT attempt, state FROM recon_runs WHERE id = %s FOR UPDATE NOWAIT",
            (claimed.run_id,),
        ).fetchone()
    except (errors.LockNotAvailable, errors.SerializationFailure) as exc:
        raise Busy(f"run {claimed.run_id} is being worked on by another worker") from exc
    if row != (claimed.attempt, "running"):
        raise Busy(f"run {claimed.run_id} moved on to {row} since attempt {claimed.attempt}")


def _succeed(
    conn: Connection, key: RunKey, plan: model.Plan, run_id: int, summary: model.Summary
) -> RunState:
    row = conn.execute(
        f"UPDATE recon_runs SET state = 'succeeded', summary = %s, completed_at = now()"
        f" WHERE id = %s RETURNING {_ROW}",
        (Jsonb(summary.to_api()), run_id),
    ).fetchone()
    final = _state(row)
    write_event(conn, completed_event(key, plan, final))
    return final


def _fail(
    conn: Connection, key: RunKey, plan: model.Plan, run_id: int, reason: str, message: str
) -> RunState:
    with conn.transaction():
        row = conn.execute(
            f"UPDATE recon_runs SET state = 'failed', reason = %s, message = %s,"
            f" completed_at = now() WHERE id = %s AND state = 'running' RETURNING {_ROW}",
            (reason[:128], message[:4096], run_id),
        ).fetchone()
        if row is None:  # Finished by someone else, who wrote its event with it.
            row = conn.execute(f"SELECT {_ROW} FROM recon_runs WHERE id = %s", (run_id,)).fetchone()
            return _state(row)
        final = _state(row)
        write_event(conn, completed_event(key, plan, final))
    return final


def completed_event(
    key: RunKey, plan: model.Plan | None, final: RunState
) -> ledger_model.OutboxEvent:
    """The ``recon.completed`` event of a run's final row (pure)."""
    if final.completed_at is None or final.state not in ("succeeded", "failed"):
        raise ValueError(f"run {key.namespace}/{key.name} is {final.state}, not finished")
    window = None if plan is None or plan.window is None else plan.window
    return schema.ReconCompleted(
        namespace=key.namespace,
        name=key.name,
        uid=key.uid,
        phase="Succeeded" if final.state == "succeeded" else "Failed",
        dry_run=False if plan is None else plan.dry_run,
        attempt=final.attempt,
        window=None if window is None else (window.start, window.end),
        started_at=final.started_at,
        completed_at=final.completed_at,
        summary=None if final.summary is None else dict(final.summary),
        reason=final.reason,
        message=final.message,
    ).outbox()


def write_event(conn: Connection, event: ledger_model.OutboxEvent) -> bool:
    """Insert an event in the caller's transaction; False when its id was already written."""
    return outbox.write_blocking(conn, [event]) == 1


# --- The work, inside the run's transaction ---------------------------------------------------


def scope_of(key: RunKey, plan: model.Plan) -> str | None:
    """The namespace whose money a run compares, or None for the whole ledger (DESIGN.md
    invariant 10). Cluster-wide only when the plan says so; the handler allows that only in
    the namespace the administrator named (FINTECH_RECON_CLUSTER_NAMESPACE)."""
    return None if plan.cluster_wide else key.namespace


# A journal moves the money of the namespace it names (ledger.engine writes it), or, written
# before migration 0045 (namespace NULL), of the namespace of the card accounts it touches:
# those are listed once per run in recon_scope_legacy, so every check probes a hashed set
# instead of running a correlated query per row. ``%(scope)s`` NULL: every journal (a
# cluster-wide run). ``{j}`` is the alias of the journals row.
_JOURNAL_IN_SCOPE: Final = """(
    %(scope)s::text IS NULL
    OR {j}.namespace = %(scope)s::text
    OR ({j}.namespace IS NULL AND {j}.id IN (SELECT id FROM recon_scope_legacy)))"""

# The namespace's journals written before 0045. The first probe reads the (namespace, key)
# index: a ledger with no such journal (any ledger created at 0045 or later) skips the scan.
_SCOPE_LEGACY: Final = """
CREATE TEMP TABLE recon_scope_legacy ON COMMIT DROP AS
SELECT DISTINCT e.journal_id AS id
  FROM accounts a
  JOIN entries e ON e.account_id = a.id
  JOIN journals j ON j.id = e.journal_id
 WHERE a.namespace = %(scope)s::text AND j.namespace IS NULL
   AND %(scope)s::text IS NOT NULL
   AND EXISTS (SELECT 1 FROM journals WHERE namespace IS NULL)
"""


def _scope_legacy(conn: Connection, scope: str | None) -> None:
    conn.execute(_SCOPE_LEGACY, {"scope": scope})
    conn.execute("ANALYZE recon_scope_legacy")


def _reconcile(
    conn: Connection,
    run_id: int,
    plan: model.Plan,
    run_scope: _Scope,
    records: Source | None,
) -> model.Summary:
    scope, stop, clock = run_scope.namespace, run_scope.stop, run_scope.clock
    conn.execute(FOUND_DDL)
    _scope_legacy(conn, scope)
    clock.lap("prepare")
    records_read = ledger_references = matched = 0
    if model.Check.SETTLEMENT in plan.checks and records is not None:
        records_read = _load(conn, records, stop)
        clock.lap("load")
        ledger_references, matched = _settlement(conn, plan, run_scope, records_read)
        clock.lap("settlement")
    if model.Check.TRIAL_BALANCE in plan.checks:
        _trial_balance(conn, plan.window, scope)
    if model.Check.REWARDS in plan.checks:
        _rewards(conn, plan.window, scope, stop)
    if model.Check.EVENTS in plan.checks:
        _events(conn, plan.event_lag_seconds_max, scope)
    counts = {
        str(kind): int(count)
        for kind, count in conn.execute(
            "SELECT kind, count(*) FROM recon_found GROUP BY kind"
        ).fetchall()
    }
    summary = model.build_summary(
        plan.checks,
        counts,
        records_read=records_read,
        ledger_references=ledger_references,
        matched=matched,
    )
    if not plan.dry_run:
        conn.execute(
            """
            INSERT INTO recon_exceptions
                   (run_id, check_name, kind, severity, reference, line_no, expected, actual)
            SELECT %s, check_name, kind, severity, reference, line_no, expected, actual
              FROM recon_found ORDER BY seq
            """,
            (run_id,),
        )
    clock.lap("checks and findings")
    return summary


def _load(conn: Connection, records: Source, stop: threading.Event) -> int:
    """Load the source into ``recon_src``: a CSV file in bulk, records as they come; memory
    stays flat whatever the size."""
    conn.execute(load.SRC_DDL)
    if isinstance(records, model.TextSource) and records.format == "csv":
        count = load.load_csv(conn, records, stop)
    elif isinstance(records, model.TextSource):
        text = records
        count = load.load_records(
            conn, lambda: parse.parse(text.format, text.chunks(), text.records_max), stop
        )
    else:
        count = load.load_records(conn, records, stop)
    # Temporary tables are never analysed automatically; the joins below need the row counts.
    conn.execute("ANALYZE recon_src")
    return count


# Every finding of a run, in the order found; copied to recon_exceptions at the end.
FOUND_DDL: Final = """
CREATE TEMP TABLE recon_found (
    seq        bigserial,
    check_name text NOT NULL,
    kind       text NOT NULL,
    severity   text NOT NULL,
    reference  text,
    line_no    bigint,
    expected   text,
    actual     text
) ON COMMIT DROP
"""

# The settlement postings a run compares: entries on a network settlement account of journals
# with a reference, not reversals, not reversed, in the (widened) window and in scope. Reversed
# journals are few: a hashed list of them is probed per journal (an anti-join by index would
# probe once per journal, a million times for a million postings).
_SETTLEMENT_ENTRIES: Final = f"""
  FROM journals j
  JOIN entries e ON e.journal_id = j.id
 WHERE e.account_id IN (
           SELECT id FROM accounts
            WHERE kind = 'system' AND code LIKE 'system:network\\_settlement:%%'
       )
   AND j.reference IS NOT NULL
   AND j.kind <> 'Reversal'
   AND j.id NOT IN (SELECT reverses_journal_id FROM journals WHERE reverses_journal_id IS NOT NULL)
   AND j.occurred_at >= %(start)s - make_interval(secs => %(slack)s)
   AND j.occurred_at < %(end)s + make_interval(secs => %(slack)s)
   AND {_JOURNAL_IN_SCOPE.format(j="j")}
"""

# One row per reference with plain aggregates only (a hashed aggregate; DISTINCT aggregates
# would sort a million rows). The count of postings and the currency list are exact whenever
# the reference's entries lie in one journal and one currency, which is nearly always;
# _LEDGER_EXACT recomputes the few others.
_LEDGER: Final = f"""
CREATE TEMP TABLE recon_ledger ON COMMIT DROP AS
SELECT j.reference,
       sum(CASE e.direction WHEN 'credit' THEN e.amount_minor ELSE -e.amount_minor END)::bigint
           AS amount_minor,
       min(e.currency::text) AS currency,
       1::bigint AS postings,
       min(j.occurred_at) AS first_at,
       max(j.occurred_at) AS last_at,
       bool_or(j.occurred_at >= %(start)s AND j.occurred_at < %(end)s) AS in_window,
       min(j.id) <> max(j.id) OR min(e.currency::text) <> max(e.currency::text) AS several
{_SETTLEMENT_ENTRIES}
 GROUP BY j.reference
"""

_LEDGER_EXACT: Final = f"""
UPDATE recon_ledger l
   SET postings = x.postings, currency = x.currency
  FROM (
        SELECT j.reference, count(DISTINCT j.id) AS postings,
               string_agg(DISTINCT e.currency::text, '+' ORDER BY e.currency::text) AS currency
        {_SETTLEMENT_ENTRIES}
           AND j.reference IN (SELECT reference FROM recon_ledger WHERE several)
         GROUP BY j.reference
       ) x
 WHERE l.reference = x.reference AND l.several
"""

# One row per reference of the file: its first record (lowest line). A sort, not a hashed
# aggregate: with a million references a hashed aggregate spills to disk in batches and was
# measured twice as slow.
_FIRST: Final = """
CREATE TEMP TABLE recon_first ON COMMIT DROP AS
SELECT DISTINCT ON (reference) line_no, reference, amount_minor, currency, occurred_at
  FROM recon_src
 ORDER BY reference, line_no
"""

# The rule of matching.classify, set-wise. Keep the two in step: a test compares them.
# Reads recon_first (one record per reference) and recon_ledger (one row per reference of the
# ledger) in one hashed full join, and keeps in recon_outcome every reference except the plain
# matches (both sides, one posting in the window, same amount and currency, time within the
# tolerance), which are nearly all of them and need no finding: they are counted, not stored.
CLASSIFY_SQL: Final = """
CREATE TEMP TABLE recon_outcome ON COMMIT DROP AS
SELECT * FROM (
SELECT coalesce(s.reference, l.reference) AS reference,
       s.line_no, s.amount_minor AS source_amount, s.currency AS source_currency,
       s.occurred_at AS source_at,
       l.amount_minor AS ledger_amount, l.currency AS ledger_currency, l.postings,
       l.first_at, l.last_at, l.in_window,
       CASE
           WHEN l.reference IS NULL THEN 'MissingInLedger'
           WHEN s.reference IS NULL THEN
               CASE WHEN l.in_window THEN 'MissingInSource' ELSE 'OutsideWindow' END
           WHEN s.currency <> l.currency THEN 'CurrencyMismatch'
           WHEN abs(s.amount_minor - l.amount_minor) > %(amount_tolerance)s THEN 'AmountMismatch'
           WHEN s.occurred_at < l.first_at - make_interval(secs => %(slack)s)
             OR s.occurred_at > l.last_at + make_interval(secs => %(slack)s) THEN 'TimeMismatch'
           ELSE 'Matched'
       END AS outcome
  FROM recon_first s
  FULL JOIN recon_ledger l ON l.reference = s.reference
) o
 WHERE NOT (o.outcome = 'Matched' AND o.in_window AND o.postings = 1
            AND o.source_amount = o.ledger_amount)
"""

# What the outcome table implies about the plain matches it leaves out: every source
# reference not in it is one, and each is matched with a ledger reference in the window.
_COUNTS: Final = """
SELECT count(*) FILTER (WHERE line_no IS NOT NULL),
       count(*) FILTER (WHERE outcome = 'Matched'),
       count(*) FILTER (WHERE in_window)
  FROM recon_outcome
"""

_LEDGER_TEXT: Final = (
    "o.ledger_amount || ' ' || o.ledger_currency"
    " || CASE WHEN o.postings > 1 THEN ' in ' || o.postings || ' postings' ELSE '' END"
    " || ' at ' || " + _TS.format("o.first_at")
)
_SOURCE_TEXT: Final = "o.source_amount || ' ' || o.source_currency || ' at ' || " + _TS.format(
    "o.source_at"
)

SETTLEMENT_FINDINGS_SQL: Final = f"""
INSERT INTO recon_found (check_name, kind, severity, reference, line_no, expected, actual)
SELECT 'Settlement', o.outcome, 'error', o.reference, o.line_no,
       CASE WHEN o.outcome = 'MissingInLedger' THEN 'no posting' ELSE {_LEDGER_TEXT} END,
       CASE WHEN o.outcome = 'MissingInSource' THEN 'no record' ELSE {_SOURCE_TEXT} END
  FROM recon_outcome o
 WHERE o.outcome NOT IN ('Matched', 'OutsideWindow')
UNION ALL
SELECT 'Settlement', 'WithinTolerance', 'info', o.reference, o.line_no, {_LEDGER_TEXT},
       {_SOURCE_TEXT}
  FROM recon_outcome o
 WHERE o.outcome = 'Matched' AND o.source_amount <> o.ledger_amount
UNION ALL
SELECT 'Settlement', 'PartialCapture', 'info', o.reference, o.line_no, {_LEDGER_TEXT},
       {_SOURCE_TEXT}
  FROM recon_outcome o
 WHERE o.outcome = 'Matched' AND o.postings > 1
"""

_DUPLICATES: Final = f"""
INSERT INTO recon_found (check_name, kind, severity, reference, line_no, expected, actual)
SELECT 'Settlement', 'DuplicateRecord', 'error', s.reference, s.line_no,
       'one record per reference (first at line ' || f.line_no || ')',
       s.amount_minor || ' ' || s.currency || ' at ' || {_TS.format("s.occurred_at")}
  FROM recon_src s
  JOIN recon_first f ON f.reference = s.reference
 WHERE s.line_no <> f.line_no
 ORDER BY s.line_no
"""


def _window_params(window: model.Window | None, scope: str | None) -> dict[str, Any]:
    if window is None:
        return {
            "start": datetime.datetime.min.replace(tzinfo=datetime.UTC),
            "end": datetime.datetime.max.replace(tzinfo=datetime.UTC),
            "scope": scope,
        }
    return {"start": window.start, "end": window.end, "scope": scope}


def _settlement(
    conn: Connection, plan: model.Plan, run_scope: _Scope, records_read: int
) -> tuple[int, int]:
    """Classify every reference; returns (ledger references in the window, matched)."""
    params = {
        **_window_params(plan.window, run_scope.namespace),
        "slack": plan.tolerances.time_seconds,
        "amount_tolerance": plan.tolerances.amount_minor,
    }
    if plan.window is None:
        # No window: compare the whole ledger; no widening (and no overflow at the extremes).
        params["slack"] = 0
    references, first_is_view = _first_records(conn, records_read)
    ledger_is_view = _summary_serves(conn, run_scope.namespace)
    if ledger_is_view:
        _summary_ledger(conn, params)
    else:
        _entries_ledger(conn, params)
    # One hashed full join, in memory: sorting both sides for a merge join costs more.
    row = conn.execute(
        "SELECT current_setting('work_mem'), set_config('work_mem', %s, true),"
        " set_config('enable_mergejoin', 'off', true)",
        (f"{run_scope.join_work_mem_mb}MB",),
    ).fetchone()
    conn.execute(CLASSIFY_SQL, {**params, "slack": plan.tolerances.time_seconds})
    conn.execute(
        "SELECT set_config('work_mem', %s, true), set_config('enable_mergejoin', 'on', true)",
        (str(row[0]) if row else "64MB",),
    )
    row = conn.execute(_COUNTS).fetchone()
    conn.execute(SETTLEMENT_FINDINGS_SQL)
    # Temporary views outlive the transaction (tables here drop at commit): drop them now.
    if ledger_is_view:
        conn.execute("DROP VIEW recon_ledger")
    if first_is_view:
        conn.execute("DROP VIEW recon_first")
    stored_sources, stored_matched, stored_in_window = (int(v) for v in row) if row else (0, 0, 0)
    plain = references - stored_sources
    return plain + stored_in_window, plain + stored_matched


# Whether two records might share a reference: a hashed count of the references' 64-bit hashes
# (a small hash table, no sort of the text). A false alarm (two references with one hash) only
# costs the exact path below.
_MAY_REPEAT: Final = """
SELECT EXISTS (SELECT 1 FROM recon_src GROUP BY hashtextextended(reference, 0)
               HAVING count(*) > 1)
"""

_FIRST_VIEW: Final = """
CREATE TEMP VIEW recon_first AS
SELECT line_no, reference, amount_minor, currency, occurred_at FROM recon_src
"""


def _first_records(conn: Connection, records_read: int) -> tuple[int, bool]:
    """Make recon_first, the first record of each reference (a view of recon_src when no
    reference repeats); returns how many references, and whether it is a view."""
    row = conn.execute(_MAY_REPEAT).fetchone()
    if row is None or not row[0]:
        conn.execute(_FIRST_VIEW)
        return records_read, True
    references = conn.execute(_FIRST).rowcount
    if references != records_read:
        conn.execute(_DUPLICATES)
    conn.execute("ANALYZE recon_first")
    return references, False


def _summary_serves(conn: Connection, scope: str | None) -> bool:
    """Whether settlement_references holds the run's whole ledger side: a namespaced run
    whose namespace has no journal written before 0045 (those name no namespace; see
    migration 0057). A cluster-wide run adds up every namespace's rows, so it reads entries."""
    if scope is None:
        return False
    row = conn.execute("SELECT NOT EXISTS (SELECT 1 FROM recon_scope_legacy)").fetchone()
    return bool(row and row[0])


# The namespace's references in the (widened) window, from the running summary (0057): one
# row per reference, no aggregation. A reference whose postings straddle the window counts
# whole (all its postings) when any part of its span lies in it.
_SUMMARY_LEDGER: Final = """
CREATE TEMP VIEW recon_ledger AS
SELECT reference, amount_minor, currency, postings, first_at, last_at,
       (last_at >= {start} AND first_at < {end}) AS in_window
  FROM settlement_references
 WHERE namespace = {scope}
   AND last_at >= {start}::timestamptz - make_interval(secs => {slack})
   AND first_at < {end}::timestamptz + make_interval(secs => {slack})
"""


def _summary_ledger(conn: Connection, params: dict[str, Any]) -> None:
    # A view cannot take parameters, so the values go in as literals (quoted by psycopg).
    conn.execute(
        sql.SQL(_SUMMARY_LEDGER).format(
            start=sql.Literal(params["start"]),
            end=sql.Literal(params["end"]),
            scope=sql.Literal(params["scope"]),
            slack=sql.Literal(params["slack"]),
        )
    )


def _entries_ledger(conn: Connection, params: dict[str, Any]) -> None:
    """The ledger side from the journals and entries themselves (cluster-wide runs, and
    namespaces with journals older than their namespace column)."""
    # Grouped by sorting: a hashed aggregate of a million references spills and is slower.
    conn.execute("SET LOCAL enable_hashagg = off")
    conn.execute(_LEDGER, params)
    conn.execute("SET LOCAL enable_hashagg TO DEFAULT")
    conn.execute(_LEDGER_EXACT, params)
    conn.execute("ANALYZE recon_ledger")


# --- Trial balance ----------------------------------------------------------------------------


_UNBALANCED: Final = f"""
INSERT INTO recon_found (check_name, kind, severity, reference, expected, actual)
SELECT 'TrialBalance', 'UnbalancedJournal', 'error', 'journal ' || t.journal_id,
       'debits equal credits in ' || t.currency,
       'debits ' || t.debits || ', credits ' || t.credits || ' ' || t.currency
  FROM (
        SELECT e.journal_id, e.currency::text AS currency,
               coalesce(sum(e.amount_minor) FILTER (WHERE e.direction = 'debit'), 0) AS debits,
               coalesce(sum(e.amount_minor) FILTER (WHERE e.direction = 'credit'), 0) AS credits
          FROM entries e
          JOIN journals j ON j.id = e.journal_id
         WHERE j.occurred_at >= %(start)s AND j.occurred_at < %(end)s
           AND {_JOURNAL_IN_SCOPE.format(j="j")}
         GROUP BY e.journal_id, e.currency
       ) t
 WHERE t.debits <> t.credits
 ORDER BY t.journal_id
"""

_IMBALANCE: Final = """
INSERT INTO recon_found (check_name, kind, severity, reference, expected, actual)
SELECT 'TrialBalance', 'CurrencyImbalance', 'error', t.currency,
       'all accounts sum to zero', 'debits ' || t.debits || ', credits ' || t.credits
  FROM (
        SELECT a.currency::text AS currency, sum(b.debits_minor) AS debits,
               sum(b.credits_minor) AS credits
          FROM accounts a JOIN account_balances b ON b.account_id = a.id
         GROUP BY a.currency
       ) t
 WHERE t.debits <> t.credits
 ORDER BY t.currency
"""

_DRIFT: Final = """
INSERT INTO recon_found (check_name, kind, severity, reference, expected, actual)
SELECT 'TrialBalance', 'BalanceDrift', 'error', d.code,
       'entries: debits ' || d.entries_debits_minor || ', credits ' || d.entries_credits_minor,
       'balance: debits ' || d.debits_minor || ', credits ' || d.credits_minor
  FROM ledger_balance_drift d
 ORDER BY d.code
"""


# A namespace shares the system accounts with every other namespace, so their totals are
# nobody's business but a cluster-wide run's. A namespaced run checks its own share instead:
# its card accounts' balances plus its journals' system-account entries sum to zero per
# currency, and its card accounts' balances equal their entries.
_SCOPE_JOURNALS: Final = """
CREATE TEMP TABLE recon_scope_journals ON COMMIT DROP AS
SELECT id FROM journals WHERE namespace = %(scope)s
UNION ALL
SELECT id FROM recon_scope_legacy
"""

_SCOPED_IMBALANCE: Final = """
INSERT INTO recon_found (check_name, kind, severity, reference, expected, actual)
SELECT 'TrialBalance', 'CurrencyImbalance', 'error', t.currency,
       'the namespace''s accounts and its entries on system accounts sum to zero',
       'debits ' || t.debits || ', credits ' || t.credits
  FROM (
        SELECT currency, sum(debits) AS debits, sum(credits) AS credits
          FROM (
                SELECT a.currency::text AS currency, b.debits_minor AS debits,
                       b.credits_minor AS credits
                  FROM accounts a JOIN account_balances b ON b.account_id = a.id
                 WHERE a.namespace = %(scope)s
                UNION ALL
                SELECT e.currency::text,
                       CASE e.direction WHEN 'debit' THEN e.amount_minor ELSE 0 END,
                       CASE e.direction WHEN 'credit' THEN e.amount_minor ELSE 0 END
                  FROM recon_scope_journals s
                  JOIN entries e ON e.journal_id = s.id
                  JOIN accounts a ON a.id = e.account_id AND a.kind = 'system'
               ) parts
         GROUP BY currency
       ) t
 WHERE t.debits <> t.credits
 ORDER BY t.currency
"""

_SCOPED_DRIFT: Final = """
INSERT INTO recon_found (check_name, kind, severity, reference, expected, actual)
SELECT 'TrialBalance', 'BalanceDrift', 'error', a.code,
       'entries: debits ' || s.debits || ', credits ' || s.credits,
       'balance: debits ' || b.debits_minor || ', credits ' || b.credits_minor
  FROM accounts a
  JOIN account_balances b ON b.account_id = a.id
  CROSS JOIN LATERAL (
        SELECT coalesce(sum(e.amount_minor) FILTER (WHERE e.direction = 'debit'), 0) AS debits,
               coalesce(sum(e.amount_minor) FILTER (WHERE e.direction = 'credit'), 0) AS credits,
               count(*) AS entry_count
          FROM entries e WHERE e.account_id = a.id
       ) s
 WHERE a.namespace = %(scope)s
   AND (b.debits_minor, b.credits_minor, b.entry_count)
       IS DISTINCT FROM (s.debits, s.credits, s.entry_count)
 ORDER BY a.code
"""


def _trial_balance(conn: Connection, window: model.Window | None, scope: str | None) -> None:
    conn.execute(_UNBALANCED, _window_params(window, scope))
    if scope is None:
        conn.execute(_IMBALANCE)
        conn.execute(_DRIFT)
        return
    conn.execute(_SCOPE_JOURNALS, {"scope": scope})
    conn.execute("ANALYZE recon_scope_journals")
    conn.execute(_SCOPED_IMBALANCE, {"scope": scope})
    conn.execute(_SCOPED_DRIFT, {"scope": scope})


# --- Rewards ----------------------------------------------------------------------------------

# Posting events in scope: applied by the rewards consumer (the others belong to the events
# check) and, with a window, of journals that occurred in it. The payload is read both bare and
# inside a CloudEvents envelope (``data``).
_SCOPE: Final = f"""
CREATE TEMP TABLE recon_reward_events ON COMMIT DROP AS
SELECT o.event_id, coalesce(o.payload -> 'data', o.payload) AS data
  FROM outbox o
  LEFT JOIN journals j ON j.id = o.journal_id
 WHERE o.topic = %(topic)s
   AND coalesce(o.payload ->> 'type', '') ~ %(type_re)s
   AND EXISTS (SELECT 1 FROM processed_events p
                WHERE p.consumer = %(consumer)s AND p.event_id = o.event_id)
   AND coalesce(j.occurred_at, o.created_at) >= %(start)s
   AND coalesce(j.occurred_at, o.created_at) < %(end)s
   AND {_JOURNAL_IN_SCOPE.format(j="j")}
"""

_EXPECTED_SOURCE: Final = """
SELECT event_id::text, data ->> 'card', data ->> 'postingType',
       coalesce(data ->> 'amount', data ->> 'amountMinor'),
       data ->> 'rewardsRateBps', data -> 'earnOn', data ->> 'reversesJournalId'
  FROM recon_reward_events
 ORDER BY data ->> 'card', event_id
"""

_REWARDS_COMPARE: Final = """
INSERT INTO recon_found (check_name, kind, severity, reference, expected, actual)
SELECT 'Rewards', 'PointsMismatch', 'error', coalesce(e.card, a.card),
       coalesce(e.points, 0) || ' points from ' || coalesce(e.events, 0) || ' posting events',
       coalesce(a.points, 0) || ' points in ' || coalesce(a.rows, 0) || ' rewards rows'
  FROM recon_points_expected e
  FULL JOIN (
        SELECT r.card, sum(r.points)::bigint AS points, count(*) AS rows
          FROM rewards_ledger r
         WHERE r.event_id IN (SELECT event_id FROM recon_reward_events)
         GROUP BY r.card
       ) a ON a.card = e.card
 WHERE coalesce(e.points, 0) <> coalesce(a.points, 0)
 ORDER BY 4
"""

_ORPHANS: Final = f"""
INSERT INTO recon_found (check_name, kind, severity, reference, expected, actual)
SELECT 'Rewards', 'OrphanRewards', 'error', r.event_id::text,
       'a posting event for every rewards row',
       r.points || ' points for ' || r.card || ' with no posting event'
  FROM rewards_ledger r
  JOIN journals j ON j.id = r.journal_id
 WHERE NOT EXISTS (SELECT 1 FROM outbox o WHERE o.event_id = r.event_id)
   AND r.created_at >= %(start)s AND r.created_at < %(end)s
   AND {_JOURNAL_IN_SCOPE.format(j="j")}
 ORDER BY r.id
"""


@dataclasses.dataclass
class _CardPoints:
    card: str
    points: int = 0
    events: int = 0


def expected_points(row: tuple[Any, ...]) -> int:
    """Points one posting event implies (DESIGN.md invariant 6), by the consumer's own rule.

    Raises ``ValueError`` when the payload lacks what the rule needs.
    """
    _event_id, card, posting_type, amount, rate, earn_on, reverses = row
    if not card or not posting_type or amount is None or rate is None:
        raise ValueError("payload lacks card, postingType, amountMinor or rewardsRateBps")
    terms = earn_on if isinstance(earn_on, list) else ["Purchase"]
    return points.for_posting(
        str(posting_type),
        int(amount),
        int(rate),
        [str(t) for t in terms],
        is_reversal=reverses is not None,
    )


def _rewards(
    conn: Connection, window: model.Window | None, scope: str | None, stop: threading.Event
) -> None:
    params = _window_params(window, scope)
    conn.execute(
        _SCOPE,
        {
            **params,
            "topic": POSTINGS_TOPIC,
            "type_re": _POSTING_EVENT_RE,
            "consumer": REWARDS_CONSUMER,
        },
    )
    conn.execute(
        "CREATE TEMP TABLE recon_points_expected (card text PRIMARY KEY, points bigint NOT NULL,"
        " events bigint NOT NULL) ON COMMIT DROP"
    )
    _stream_expected(conn, stop)
    conn.execute("ANALYZE recon_reward_events")
    conn.execute("ANALYZE recon_points_expected")
    conn.execute(_REWARDS_COMPARE)
    conn.execute(_ORPHANS, params)


def _stream_expected(conn: Connection, stop: threading.Event) -> None:
    """Recompute each card's points event by event, streaming (ordered by card, so each
    finished card is flushed and Python holds one batch at a time)."""
    done: list[tuple[str, int, int]] = []
    unreadable: list[tuple[str, str]] = []
    current: _CardPoints | None = None
    with conn.cursor(name="recon_reward_events_cursor") as events:
        events.itersize = 5_000
        events.execute(_EXPECTED_SOURCE)
        for seen, row in enumerate(events, start=1):
            if seen % _STOP_CHECK_EVERY == 0 and stop.is_set():
                raise model.Interrupted("the operator is stopping")
            card = str(row[1]) if row[1] else ""
            try:
                signed = expected_points(row)
            except (ValueError, TypeError, points.PointsError) as exc:
                unreadable.append((str(row[0]), f"{card or '?'}: {exc}"))
                continue
            if current is None or current.card != card:
                if current is not None:
                    done.append((current.card, current.points, current.events))
                current = _CardPoints(card)
            current.points += signed
            current.events += 1
            if len(done) >= _FLUSH_CARDS_EVERY:
                _flush_expected(conn, done)
                done = []
    if current is not None:
        done.append((current.card, current.points, current.events))
    _flush_expected(conn, done)
    if unreadable:
        conn.cursor().executemany(
            "INSERT INTO recon_found (check_name, kind, severity, reference, expected, actual)"
            " VALUES ('Rewards', 'UnreadableEvent', 'error', %s,"
            " 'a posting event the points rule can read', %s)",
            unreadable,
        )


def _flush_expected(conn: Connection, rows: list[tuple[str, int, int]]) -> None:
    if not rows:
        return
    with conn.cursor().copy("COPY recon_points_expected (card, points, events) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)


# --- Events -----------------------------------------------------------------------------------

# Every event the product writes is keyed <namespace>/<name> (events.schema: the card, the run,
# the object), so an event's namespace is its key's first part. Not a hot path: the checks
# below read these rows anyway, and this only filters them.
_EVENT_IN_SCOPE: Final = "(%(scope)s::text IS NULL OR split_part(o.key, '/', 1) = %(scope)s::text)"

_UNPUBLISHED: Final = f"""
INSERT INTO recon_found (check_name, kind, severity, reference, expected, actual)
SELECT 'Events', 'UnpublishedEvent', 'error', o.event_id::text,
       'published within ' || %(lag)s || 's',
       'unpublished for ' || floor(extract(epoch FROM now() - o.created_at))::bigint
           || 's on topic ' || o.topic || ' (created ' || {_TS.format("o.created_at")} || ')'
  FROM outbox o
 WHERE o.published_at IS NULL
   AND o.created_at < now() - make_interval(secs => %(lag)s)
   AND {_EVENT_IN_SCOPE}
 ORDER BY o.id
"""

_UNAPPLIED: Final = f"""
INSERT INTO recon_found (check_name, kind, severity, reference, expected, actual)
SELECT 'Events', 'UnappliedEvent', 'error', o.event_id::text,
       'applied by the ' || %(consumer)s || ' consumer within ' || %(lag)s || 's of publication',
       'published ' || {_TS.format("o.published_at")} || ', not applied'
  FROM outbox o
 WHERE o.topic = %(topic)s
   AND coalesce(o.payload ->> 'type', '') ~ %(type_re)s
   AND o.published_at IS NOT NULL
   AND o.published_at < now() - make_interval(secs => %(lag)s)
   AND NOT EXISTS (SELECT 1 FROM processed_events p
                    WHERE p.consumer = %(consumer)s AND p.event_id = o.event_id)
   AND {_EVENT_IN_SCOPE}
 ORDER BY o.id
"""


def _events(conn: Connection, lag_seconds: int, scope: str | None) -> None:
    params = {
        "scope": scope,
        "lag": lag_seconds,
        "topic": POSTINGS_TOPIC,
        "type_re": _POSTING_EVENT_RE,
        "consumer": REWARDS_CONSUMER,
    }
    conn.execute(_UNPUBLISHED, params)
    conn.execute(_UNAPPLIED, params)


# --- Reports ----------------------------------------------------------------------------------

REPORT_COLUMNS: Final = ("check", "kind", "severity", "reference", "line", "expected", "actual")


def latest_run(conn: Connection, namespace: str, name: str) -> RunState | None:
    row = conn.execute(
        f"SELECT {_ROW} FROM recon_runs WHERE namespace = %s AND name = %s"
        " ORDER BY id DESC LIMIT 1",
        (namespace, name),
    ).fetchone()
    return None if row is None else _state(row)


def exceptions(
    conn: Connection, run_id: int, *, include_info: bool = True, check: str | None = None
) -> Iterator[tuple[Any, ...]]:
    """A run's findings in the order found, streamed with a server-side cursor."""
    query = sql.SQL(
        "SELECT check_name, kind, severity, reference, line_no, expected, actual"
        " FROM recon_exceptions WHERE run_id = %(run)s"
        " AND (%(info)s OR severity = 'error')"
        " AND (%(check)s::text IS NULL OR check_name = %(check)s::text) ORDER BY id"
    )
    with conn.transaction(), conn.cursor(name="recon_report") as cur:
        cur.itersize = 2_000
        cur.execute(query, {"run": run_id, "info": include_info, "check": check})
        yield from cur
