"""The bulk load of CSV sources (typed COPY of the file's plain blocks) against the real
PostgreSQL: it fails exactly as reading record by record fails, finds the same records, and
leaves no staging table behind, whatever happens to the run.

Each case runs the same text twice through ``store.execute``: once as a ``TextSource`` (the bulk
path the operator uses for files) and once as parsed records (``parse.parse``, the reference).
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from fintech_operator.recon import blocks, model, parse, store
from fintech_operator.recon import model as recon

pytestmark = pytest.mark.integration

HEADER = "reference,amount,currency,occurredAt\n"
GOOD = "R-0,1,USD,2024-03-01T09:00:00Z\n"
# Nobody posts in this window: every record is MissingInLedger, at its line, with its values.
WINDOW = recon.Window(
    parse.parse_time("2031-01-01T00:00:00Z", 1), parse.parse_time("2031-01-02T00:00:00Z", 1)
)
PLAN = recon.Plan(
    checks=frozenset({recon.Check.SETTLEMENT}),
    tolerances=recon.Tolerances(amount_minor=0, time_seconds=60),
    window=WINDOW,
    event_lag_seconds_max=300,
    dry_run=False,
)


def run_key() -> store.RunKey:
    return store.RunKey(str(uuid.uuid4()), "bulk", f"run-{uuid.uuid4().hex[:8]}")


def bulk(text: str, records_max: int = 1000) -> model.TextSource:
    return model.TextSource("csv", lambda: iter([text[:7], text[7:]]), records_max)


def by_record(text: str, records_max: int = 1000) -> store.RecordSource:
    return lambda: parse.parse("csv", [text], records_max)


def findings(dsn: str, run_id: int) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return sorted((row[1], row[3], row[4], row[6]) for row in store.exceptions(conn, run_id))


def both(dsn: str, text: str, records_max: int = 1000) -> tuple[store.RunState, store.RunState]:
    fast = store.execute(dsn, run_key(), PLAN, bulk(text, records_max))
    slow = store.execute(dsn, run_key(), PLAN, by_record(text, records_max))
    return fast, slow


@pytest.mark.parametrize(
    "rows",
    [
        ["R-1,12.50,USD,2024-03-01T09:00:00Z\n"],  # the documented example, in a plain block
        ["R-1,1e3,USD,2024-03-01T09:00:00Z\n"],
        ["R-1, 100,USD,2024-03-01T09:00:00Z\n"],
        ["R-1,,USD,2024-03-01T09:00:00Z\n"],  # PostgreSQL reads NULL, Python ""
        ["R-1,99999999999999999,USD,2024-03-01T09:00:00Z\n"],
        ["R-1,1000000000000001,USD,2024-03-01T09:00:00Z\n"],
        ["R-1,100,usd,2024-03-01T09:00:00Z\n"],
        ["R-1,100,USD,2024-03-01\n"],
        ["R-1,100,USD,2024-03-01T09:00:00\n"],
        ["R-1,100,USD,2024-02-30T09:00:00Z\n"],
        ["R-1,100,USD,yesterday\n"],
        [",100,USD,2024-03-01T09:00:00Z\n"],
        ["   ,100,USD,2024-03-01T09:00:00Z\n"],
        ["R-1,100,USD\n"],  # too few fields: the comma count sends it to parse
        ["R-1,100,USD,2024-03-01T09:00:00Z,extra\n"],
        ['"R-1,100,USD,2024-03-01T09:00:00Z\n'],  # an unclosed quote
        # One field short and one too many: the block passes the comma count, PostgreSQL
        # refuses it, and the load starts over record by record.
        ["R-1,100,USD\n", "R-2,100,USD,2024-03-01T09:00:00Z,x\n"],
        # The first bad record wins: a bad amount before a structural error...
        ["R-1,12.50,USD,2024-03-01T09:00:00Z\n", GOOD, "R-2,100,USD\n"],
        # ...and a bad amount after a quoted row, read by parse after the plain block.
        [GOOD, '"R-2",100,USD,2024-03-01T09:00:00Z\n', "R-3,1.5,USD,2024-03-01T09:00:00Z\n"],
    ],
)
def test_a_bad_row_fails_the_bulk_load_exactly_as_record_by_record(
    migrated_database_url: str, rows: list[str]
) -> None:
    """Through COPY the run fails SourceMalformed with the same line and message that reading
    record by record gives, and stores no exception."""
    text = HEADER + GOOD + "".join(rows)
    fast, slow = both(migrated_database_url, text)
    assert slow.state == "failed"
    assert (slow.message or "").startswith("line ")
    assert (fast.state, fast.reason, fast.message) == (slow.state, slow.reason, slow.message)
    assert findings(migrated_database_url, fast.run_id) == []


@pytest.mark.parametrize(
    "text",
    [
        # Plain, then rows SQL leaves to Python and Python accepts: a non-ASCII reference,
        # 29 February, an amount of exactly 10**15, seven digits of fraction, an old year,
        # a reference with spaces around it.
        HEADER
        + GOOD
        + "Réf-é,5,EUR,2024-03-01T09:00:00Z\n"
        + "R-LEAP,6,USD,2024-02-29T23:00:00+01:00\n"
        + "R-MAX,1000000000000000,USD,2024-03-01T09:00:00Z\n"
        + "R-FRAC,7,USD,2024-03-01T09:00:00.1234567Z\n"
        + "R-OLD,8,USD,0999-03-01T09:00:00Z\n"
        + " R-SP ,9,USD,2024-03-01T09:00:00-15:30\n",
        # Columns in another order with an extra one, CRLF line ends, a BOM.
        "\ufeffmerchant,occurredAt,amount,reference,currency\r\n"
        "coffee,2024-03-01T09:00:00Z,1250,R-1,USD\r\n"
        "books,2024-03-01T10:00:00+02:00,-300,R-2,EUR\r\n",
        # Quoted fields, a quoted newline and blank lines: parse reads the block, and numbers
        # the lines after the multi-line record as it always did.
        "reference,amount,currency,occurredAt,memo\n"
        + "R-0,1,USD,2024-03-01T09:00:00Z,\n"
        + '"R-Q","100","USD","2024-03-01T09:00:00Z",""\n'
        + "\n"
        + 'R-NL,5,USD,2024-03-01T09:00:00Z,"first\nsecond line"\n'
        + "R-AFTER,7,USD,2024-03-01T09:00:00Z,x\n",
        # A reference repeated: the duplicate is reported at its line.
        HEADER + GOOD + GOOD,
        # An empty file but for its header.
        HEADER,
    ],
)
def test_the_bulk_load_finds_the_same_records(migrated_database_url: str, text: str) -> None:
    """Records SQL accepts, records only Python accepts and records of blocks parse reads all
    arrive with the values and line numbers reading record by record gives."""
    fast, slow = both(migrated_database_url, text)
    assert (fast.state, slow.state) == ("succeeded", "succeeded"), (fast, slow)
    assert fast.summary == slow.summary
    assert findings(migrated_database_url, fast.run_id) == findings(
        migrated_database_url, slow.run_id
    )


def test_records_max_is_enforced_at_the_same_record(migrated_database_url: str) -> None:
    """One record more than the limit fails SourceTooLarge in bulk as record by record, and a
    bad record before the limit is still reported first."""
    rows = "".join(f"R-{n},1,USD,2024-03-01T09:00:00Z\n" for n in range(5))
    fast, slow = both(migrated_database_url, HEADER + rows, records_max=3)
    assert (
        (fast.reason, fast.message)
        == (slow.reason, slow.message)
        == (
            "SourceTooLarge",
            "more than 3 records (the configured limit)",
        )
    )
    bad = HEADER + "R-0,x,USD,2024-03-01T09:00:00Z\n" + rows
    fast, slow = both(migrated_database_url, bad, records_max=3)
    assert (fast.reason, fast.message) == (slow.reason, slow.message)
    assert (fast.message or "").startswith("line 2: amount")


def _staging_relations(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_class WHERE relname IN"
            " ('recon_src', 'recon_src_line', 'recon_first', 'recon_ledger', 'recon_outcome')"
        ).fetchone()
    return int(row[0]) if row else -1


def test_no_staging_is_left_behind_by_a_failed_or_interrupted_run(
    migrated_database_url: str,
) -> None:
    """The staging table lives only in the run's transaction: after a run that failed on a
    bad row, one that fell back from a block PostgreSQL refused, and one stopped half way
    through the COPY, none of the run's tables exists in the database."""
    assert _staging_relations(migrated_database_url) == 0
    bad = HEADER + GOOD + "R-1,12.50,USD,2024-03-01T09:00:00Z\n"
    failed = store.execute(migrated_database_url, run_key(), PLAN, bulk(bad))
    assert failed.state == "failed"
    refused = HEADER + "R-1,1,USD\nR-2,1,USD,2024-03-01T09:00:00Z,x\n"
    fell_back = store.execute(migrated_database_url, run_key(), PLAN, bulk(refused))
    assert (fell_back.state, fell_back.message) == (
        "failed",
        "line 2: 3 fields where the header has 4",
    )
    assert _staging_relations(migrated_database_url) == 0

    stop = threading.Event()
    block = "".join(f"R-{n},1,USD,2024-03-01T09:00:00Z\n" for n in range(40_000))

    def stopping_chunks() -> Iterator[str]:
        yield HEADER
        for _ in range(3):
            yield block  # Each well over one block: the COPY is under way.
        stop.set()
        yield block
        yield block

    source = model.TextSource("csv", stopping_chunks, 10_000_000)
    key = run_key()
    with pytest.raises(model.Interrupted):
        store.execute(migrated_database_url, key, PLAN, source, stop=stop)
    assert _staging_relations(migrated_database_url) == 0
    with psycopg.connect(migrated_database_url) as conn:
        state = store.stored(conn, key)
    assert state is not None
    assert state.state == "running", "nothing of the run committed"
    assert len(block) > blocks.BLOCK_CHARS
