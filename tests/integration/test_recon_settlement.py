"""Settlement matching against a real ledger in PostgreSQL (no operator needed).

The ledger is seeded through the ledger engine itself (``engine.post`` with ``rules.lines_for``),
the settlement file is CSV text parsed by the real parser, and the run goes through
``store.execute``: COPY into a temporary table, set-wise joins, findings stored in the same
transaction that completes the run.
"""

from __future__ import annotations

import datetime
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import hypothesis
import psycopg
import pytest
from hypothesis import strategies as st
from psycopg_pool import AsyncConnectionPool

from fintech_operator.ledger import engine, model, rules
from fintech_operator.recon import matching, parse, store
from fintech_operator.recon import model as recon

pytestmark = pytest.mark.integration

K = model.PostingKind
DAY = datetime.datetime(2024, 3, 1, tzinfo=datetime.UTC)
WINDOW = recon.Window(DAY, DAY + datetime.timedelta(days=1))


def at(hour: int, minute: int = 0, day: int = 0) -> datetime.datetime:
    return DAY + datetime.timedelta(days=day, hours=hour, minutes=minute)


async def post(
    pool: AsyncConnectionPool[Any],
    card: str,
    kind: model.PostingKind,
    amount_minor: int,
    reference: str,
    occurred_at: datetime.datetime,
) -> int:
    result = await engine.post(
        pool,
        model.PostingRequest(
            idempotency_key=f"k-{uuid.uuid4()}",
            kind=kind,
            lines=rules.lines_for(kind, card, amount_minor, "USD"),
            occurred_at=occurred_at,
            reference=reference,
        ),
    )
    return result.journal.id


def run_key() -> store.RunKey:
    return store.RunKey(str(uuid.uuid4()), "finance", f"run-{uuid.uuid4().hex[:8]}")


def plan(**overrides: Any) -> recon.Plan:
    values: dict[str, Any] = {
        "checks": frozenset({recon.Check.SETTLEMENT}),
        "tolerances": recon.Tolerances(amount_minor=5, time_seconds=3600),
        "window": WINDOW,
        "event_lag_seconds_max": 300,
        "dry_run": False,
    }
    values.update(overrides)
    return recon.Plan(**values)


SETTLEMENT_CSV = """\
reference,amount,currency,occurredAt,merchant
R-OK,1000,USD,2024-03-01T09:00:00Z,coffee
R-MISSING-LEDGER,1500,USD,2024-03-01T09:05:00Z,books
R-AMOUNT-OFF,2100,USD,2024-03-01T09:10:00Z,shoes
R-WITHIN,3004,USD,2024-03-01T09:15:00Z,"tea, green"
R-CURRENCY,4000,EUR,2024-03-01T09:20:00Z,hotel
R-DUP,5000,USD,2024-03-01T09:25:00Z,train
R-PARTIAL,10000,USD,2024-03-01T11:00:00Z,shop
R-TIME,7000,USD,2024-03-01T16:00:00Z,taxi
R-REFUND,-700,USD,2024-03-01T12:00:00Z,return
R-DUP,5000,USD,2024-03-01T09:25:00Z,train
R-EDGE,800,USD,2024-02-29T23:50:00Z,late night
"""


async def seed_scenario(pool: AsyncConnectionPool[Any]) -> str:
    """One posting (or set of postings) per line of SETTLEMENT_CSV, plus what the file lacks."""
    async with pool.connection() as conn:
        card = (await engine.open_card_account(conn, "finance", "alice", "USD")).code
    await post(pool, card, K.PURCHASE, 1000, "R-OK", at(9))
    await post(pool, card, K.PURCHASE, 2000, "R-AMOUNT-OFF", at(9, 10))
    await post(pool, card, K.PURCHASE, 3000, "R-WITHIN", at(9, 15))
    await post(pool, card, K.PURCHASE, 4000, "R-CURRENCY", at(9, 20))
    await post(pool, card, K.PURCHASE, 5000, "R-DUP", at(9, 25))
    await post(pool, card, K.PURCHASE, 6000, "R-PARTIAL", at(10))
    await post(pool, card, K.PURCHASE, 4000, "R-PARTIAL", at(11, 30))
    await post(pool, card, K.PURCHASE, 7000, "R-TIME", at(13))
    await post(pool, card, K.REFUND, 700, "R-REFUND", at(12))
    await post(pool, card, K.PURCHASE, 900, "R-MISSING-SOURCE", at(14))
    # Just before the window, found only because the time tolerance widens it: matched, and
    # never reported as missing from a file about the next day.
    await post(pool, card, K.PURCHASE, 800, "R-EDGE", at(23, 55, day=-1))
    await post(pool, card, K.PURCHASE, 600, "R-BEFORE", at(20, day=-1))
    # A purchase and its reversal cancel out: nothing to settle, nothing reported.
    reversed_id = await post(pool, card, K.PURCHASE, 1200, "R-REVERSED", at(15))
    await engine.reverse(
        pool, model.ReversalRequest(f"rev-{uuid.uuid4()}", reversed_id, "duplicate authorisation")
    )
    # Fees and payments never go through the card network: not settlement postings.
    await post(pool, card, K.FEE, 300, "R-FEE", at(16))
    return card


def csv_records(text: str) -> store.RecordSource:
    return lambda: parse.parse("csv", [text], 1_000_000)


def findings(dsn: str, run_id: int) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return list(store.exceptions(conn, run_id))


async def test_each_discrepancy_is_reported_exactly_once(
    pool: AsyncConnectionPool[Any], migrated_database_url: str
) -> None:
    """Every kind of settlement discrepancy in one file is found once, with the right reference,
    and the matches that needed a tolerance or several postings are noted once each."""
    await seed_scenario(pool)
    outcome = store.execute(migrated_database_url, run_key(), plan(), csv_records(SETTLEMENT_CSV))
    assert outcome.state == "succeeded", outcome
    found = {(row[1], row[3]) for row in findings(migrated_database_url, outcome.run_id)}
    rows = findings(migrated_database_url, outcome.run_id)
    assert len(rows) == len(found), f"a finding was reported twice: {rows}"
    assert found == {
        ("MissingInLedger", "R-MISSING-LEDGER"),
        ("MissingInSource", "R-MISSING-SOURCE"),
        ("AmountMismatch", "R-AMOUNT-OFF"),
        ("CurrencyMismatch", "R-CURRENCY"),
        ("DuplicateRecord", "R-DUP"),
        ("TimeMismatch", "R-TIME"),
        ("WithinTolerance", "R-WITHIN"),
        ("PartialCapture", "R-PARTIAL"),
    }
    duplicate = next(row for row in rows if row[1] == "DuplicateRecord")
    assert duplicate[4] == 11, "the duplicate is reported at the line that repeats the record"
    summary = outcome.summary
    assert summary is not None
    assert summary["recordsRead"] == 11
    assert summary["matched"] == 6  # OK, WITHIN, DUP, PARTIAL, REFUND, EDGE
    assert summary["exceptions"] == 6
    assert (summary["missingInLedger"], summary["missingInSource"]) == (1, 1)
    assert (summary["amountMismatches"], summary["currencyMismatches"]) == (1, 1)
    assert (summary["timeMismatches"], summary["duplicates"]) == (1, 1)
    assert (summary["matchedWithinTolerance"], summary["partialCaptures"]) == (1, 1)
    assert summary["checks"]["settlement"] == {"result": "Failed", "exceptions": 6}
    assert summary["checks"]["rewards"] == {"result": "Skipped", "exceptions": 0}


async def test_dry_run_reports_counts_but_stores_nothing(migrated_database_url: str) -> None:
    """A dry run reports the same kind of summary but leaves recon_exceptions empty."""
    text = "reference,amount,currency,occurredAt\nR-NOWHERE,1,USD,2024-03-01T10:00:00Z\n"
    outcome = store.execute(
        migrated_database_url,
        run_key(),
        plan(window=recon.Window(at(0, day=30), at(0, day=31)), dry_run=True),
        csv_records(text),
    )
    assert outcome.state == "succeeded"
    assert outcome.summary is not None
    assert outcome.summary["missingInLedger"] == 1
    assert findings(migrated_database_url, outcome.run_id) == []


def test_interrupted_run_commits_nothing_and_restarts_cleanly(migrated_database_url: str) -> None:
    """A run stopped half way (the operator is shutting down) leaves no exceptions and stays
    unfinished; the next attempt is numbered 2 and reports everything exactly once; asking
    again after it finished returns the stored result without running it a third time."""
    key = run_key()
    lines = ["reference,amount,currency,occurredAt\n"] + [
        f"R-INT-{n},{n},USD,2024-04-01T10:00:00Z\n" for n in range(1, 25_001)
    ]
    stop = threading.Event()

    def stopping_records() -> Iterator[recon.Record]:
        for index, found in enumerate(parse.parse("csv", lines, 1_000_000)):
            if index == 15_000:
                stop.set()  # The worker notices at its next checkpoint and rolls back.
            yield found

    quiet = plan(window=recon.Window(at(0, day=40), at(0, day=41)))
    with pytest.raises(recon.Interrupted):
        store.execute(migrated_database_url, key, quiet, stopping_records, stop=stop)
    with psycopg.connect(migrated_database_url) as conn:
        first = store.stored(conn, key)
        assert first is not None
        assert (first.state, first.attempt) == ("running", 1)
        assert conn.execute(
            "SELECT count(*) FROM recon_exceptions WHERE run_id = %s", (first.run_id,)
        ).fetchone() == (0,)

    second = store.execute(migrated_database_url, key, quiet, csv_records("".join(lines)))
    assert (second.state, second.attempt) == ("succeeded", 2)
    assert second.summary is not None
    assert second.summary["missingInLedger"] == 25_000
    assert len(findings(migrated_database_url, second.run_id)) == 25_000

    third = store.execute(migrated_database_url, key, quiet, csv_records("not,even,csv"))
    assert third == second, "a finished run is reported from storage, not run again"


def test_a_run_held_by_another_worker_is_busy(migrated_database_url: str) -> None:
    """While another session holds the run (an older operator still working), a second worker
    backs off with Busy instead of running the same reconciliation twice at once."""
    key = run_key()
    empty = plan(window=recon.Window(at(0, day=50), at(0, day=51)))
    quick = store.Limits(lock_timeout_seconds=1)
    with psycopg.connect(migrated_database_url) as holder:
        claimed = store.claim(holder, key, dry_run=False)
        holder.execute("SELECT 1 FROM recon_runs WHERE id = %s FOR UPDATE", (claimed.run_id,))
        with pytest.raises(store.Busy):
            store.execute(
                migrated_database_url,
                key,
                empty,
                csv_records("reference,amount,currency,occurredAt\n"),
                limits=quick,
            )
    done = store.execute(
        migrated_database_url, key, empty, csv_records("reference,amount,currency,occurredAt\n")
    )
    assert (done.state, done.attempt) == ("succeeded", 2)


def test_finished_runs_are_frozen(migrated_database_url: str) -> None:
    """The database refuses to add exceptions to, or change, a run that has finished."""
    outcome = store.execute(
        migrated_database_url,
        run_key(),
        plan(window=recon.Window(at(0, day=60), at(0, day=61))),
        csv_records("reference,amount,currency,occurredAt\nR-X,5,USD,2024-05-01T00:00:00Z\n"),
    )
    with psycopg.connect(migrated_database_url, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.RestrictViolation):
            conn.execute(
                "INSERT INTO recon_exceptions (run_id, check_name, kind, severity)"
                " VALUES (%s, 'Settlement', 'AmountMismatch', 'error')",
                (outcome.run_id,),
            )
        with pytest.raises(psycopg.errors.RestrictViolation):
            conn.execute("UPDATE recon_runs SET attempt = 9 WHERE id = %s", (outcome.run_id,))
        with pytest.raises(psycopg.errors.RestrictViolation):
            conn.execute(
                "UPDATE recon_exceptions SET kind = 'Nothing' WHERE run_id = %s", (outcome.run_id,)
            )


# --- The SQL rule equals the Python rule ------------------------------------------------------

_T0 = datetime.datetime(2024, 6, 1, 12, tzinfo=datetime.UTC)
_sources = st.one_of(
    st.none(),
    st.builds(
        matching.SourceSide,
        amount_minor=st.integers(-50, 50),
        currency=st.sampled_from(["USD", "EUR"]),
        occurred_at=st.integers(-200, 200).map(lambda s: _T0 + datetime.timedelta(seconds=s)),
    ),
)


@st.composite
def _ledgers(draw: st.DrawFn) -> matching.LedgerSide | None:
    if draw(st.booleans()):
        return None
    first = draw(st.integers(-200, 200))
    return matching.LedgerSide(
        amount_minor=draw(st.integers(-50, 50)),
        currencies=frozenset(draw(st.sets(st.sampled_from(["USD", "EUR"]), min_size=1))),
        postings=draw(st.integers(1, 3)),
        first_at=_T0 + datetime.timedelta(seconds=first),
        last_at=_T0 + datetime.timedelta(seconds=first + draw(st.integers(0, 100))),
        in_window=draw(st.booleans()),
    )


_cases = st.lists(
    st.tuples(_sources, _ledgers()).filter(lambda case: case != (None, None)),
    min_size=1,
    max_size=80,
)


@hypothesis.settings(max_examples=15, deadline=None, database=None)
@hypothesis.given(
    cases=_cases, amount_tolerance=st.integers(0, 10), time_tolerance=st.integers(0, 60)
)
def test_sql_classification_equals_the_python_rule(
    migrated_database_url: str,
    cases: list[tuple[matching.SourceSide | None, matching.LedgerSide | None]],
    amount_tolerance: int,
    time_tolerance: int,
) -> None:
    """For random references (either side missing, several currencies, amounts and times around
    the tolerances) the SQL that runs set-wise classifies each exactly as matching.classify."""
    tolerances = recon.Tolerances(amount_tolerance, time_tolerance)
    with psycopg.connect(migrated_database_url) as conn, conn.transaction(force_rollback=True):
        conn.execute(
            "CREATE TEMP TABLE recon_first (line_no bigint, reference text, amount_minor bigint,"
            " currency text, occurred_at timestamptz) ON COMMIT DROP"
        )
        conn.execute(
            "CREATE TEMP TABLE recon_ledger (reference text, amount_minor bigint, currency text,"
            " postings bigint, first_at timestamptz, last_at timestamptz, in_window boolean)"
            " ON COMMIT DROP"
        )
        for index, (source, ledger) in enumerate(cases):
            reference = f"R{index}"
            if source is not None:
                conn.execute(
                    "INSERT INTO recon_first VALUES (%s, %s, %s, %s, %s)",
                    (
                        index + 1,
                        reference,
                        source.amount_minor,
                        source.currency,
                        source.occurred_at,
                    ),
                )
            if ledger is not None:
                conn.execute(
                    "INSERT INTO recon_ledger VALUES (%s, %s, %s, %s, %s, %s, %s)",
                    (
                        reference,
                        ledger.amount_minor,
                        "+".join(sorted(ledger.currencies)),
                        ledger.postings,
                        ledger.first_at,
                        ledger.last_at,
                        ledger.in_window,
                    ),
                )
        conn.execute(store.FOUND_DDL)
        conn.execute(
            store.CLASSIFY_SQL,
            {"amount_tolerance": amount_tolerance, "slack": time_tolerance},
        )
        conn.execute(store.SETTLEMENT_FINDINGS_SQL)
        kinds: dict[str, set[str]] = {}
        for reference, kind in conn.execute("SELECT reference, kind FROM recon_found").fetchall():
            kinds.setdefault(str(reference), set()).add(str(kind))
        # recon_outcome keeps every reference but the plain matches, which it only counts.
        stored = dict(conn.execute("SELECT reference, outcome FROM recon_outcome").fetchall())
        both_sides = {
            f"R{index}" for index, (source, ledger) in enumerate(cases) if source and ledger
        }
        matched = {str(ref) for ref, outcome in stored.items() if outcome == "Matched"} | {
            ref for ref in both_sides if ref not in stored
        }
    for index, (source, ledger) in enumerate(cases):
        expected = matching.classify(source, ledger, tolerances)
        reference = f"R{index}"
        assert (reference in matched) == expected.matched, (source, ledger)
        assert kinds.get(reference, set()) == {kind.value for kind in expected.kinds}, (
            source,
            ledger,
        )
