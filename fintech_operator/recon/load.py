"""Loading a run's source into ``recon_src`` inside the run's transaction (PostgreSQL adapter).

A CSV source is streamed straight into ``COPY recon_src FROM STDIN (FORMAT csv)``, the typed
table itself (bigint amounts, timestamptz times), as the benchmark's anchor loads the same
file: every block whose lines :func:`blocks.plain` proves PostgreSQL reads exactly as
:mod:`parse` would is sent verbatim, and a sequence numbers the rows with their lines (columns
the check does not need go to text columns of their own). There is no text staging and no
validation pass in SQL. From the first block that is not plain (quotes, blank lines, mixed line
endings, a field the patterns do not vouch for) on, the rest of the file is read by
:mod:`parse`, which names the first bad line exactly, and its records are copied typed.
Should PostgreSQL still refuse a row (a 30 February, which the patterns leave to the calendar),
the load starts over record by record, so the error is :mod:`parse`'s, with its line. Python
never holds more than one block (about 1 MiB).

Other sources (inline records, JSON) are parsed record by record and copied typed, as before.
"""

from __future__ import annotations

import csv
import itertools
import threading
from collections.abc import Callable, Iterator
from typing import Final

import psycopg
from psycopg import errors, sql
from psycopg.rows import TupleRow

from fintech_operator.recon import blocks, model, parse

Connection = psycopg.Connection[TupleRow]
RecordSource = Callable[[], Iterator[model.Record]]

STOP_CHECK_EVERY: Final = 10_000
_SRC_COLUMNS: Final = "line_no, reference, amount_minor, currency, occurred_at"

SRC_DDL: Final = """
CREATE TEMP TABLE recon_src (
    line_no      bigint      NOT NULL,
    reference    text        NOT NULL,
    amount_minor bigint      NOT NULL,
    currency     text        NOT NULL,
    occurred_at  timestamptz NOT NULL
) ON COMMIT DROP
"""


def load_records(conn: Connection, records: RecordSource, stop: threading.Event) -> int:
    """Copy already parsed records into ``recon_src``; returns how many."""
    with conn.cursor().copy(f"COPY recon_src ({_SRC_COLUMNS}) FROM STDIN") as copy:
        count = _copy_records(copy, records(), stop)
    return count


def _copy_records(
    copy: psycopg.Copy, records: Iterator[model.Record], stop: threading.Event
) -> int:
    count = 0
    for found in records:
        copy.write_row(
            (found.line_no, found.reference, found.amount_minor, found.currency, found.occurred_at)
        )
        count += 1
        if count % STOP_CHECK_EVERY == 0 and stop.is_set():
            raise model.Interrupted("the operator is stopping")
    return count


def load_csv(conn: Connection, source: model.TextSource, stop: threading.Event) -> int:
    """Bulk-load a CSV source; falls back to record-by-record reading of the whole source when
    PostgreSQL refuses a row of a block taken for plain (a date the calendar lacks)."""
    conn.execute("SAVEPOINT recon_load")
    try:
        count = _load_csv(conn, source, stop)
    except errors.DataError:
        conn.execute("ROLLBACK TO SAVEPOINT recon_load")
        count = load_records(
            conn, lambda: parse.parse("csv", source.chunks(), source.records_max), stop
        )
    conn.execute("RELEASE SAVEPOINT recon_load")
    return count


def _load_csv(conn: Connection, source: model.TextSource, stop: threading.Event) -> int:
    pieces = blocks.cut(source.chunks())
    first = next(pieces, None)
    header_line, _, rest = (first.text if first else "").partition("\n")
    if header_line.count('"') % 2:
        # A quoted newline in the header: read the whole source record by record.
        joined = itertools.chain([first.text] if first else [], (b.text for b in pieces))
        return load_records(conn, lambda: parse.parse("csv", joined, source.records_max), stop)
    header = parse.csv_header(csv.reader([header_line + "\n"], strict=True))
    columns = parse.columns_of(header)
    body = itertools.chain([blocks.Block(2, rest)] if rest else [], pieces)
    return _Loader(conn, source.records_max, columns, len(header), stop).run(body)


# recon_src's column for each required field of the file.
_TARGET: Final = {
    "reference": "reference",
    "amount": "amount_minor",
    "currency": "currency",
    "occurredAt": "occurred_at",
}


class _Loader:
    """The load of one CSV body: plain blocks copied typed as they are, the rest parsed."""

    def __init__(
        self,
        conn: Connection,
        records_max: int,
        columns: dict[str, int],
        width: int,
        stop: threading.Event,
    ) -> None:
        self.conn = conn
        self.records_max = records_max
        self.columns = columns
        self.width = width
        self.stop = stop
        self.pattern = blocks.line_pattern(columns, width)
        self.staged = 0
        self.parsed = 0

    def run(self, body: Iterator[blocks.Block]) -> int:
        targets = self._prepare()
        pending: model.SourceError | None = None
        try:
            rest = self._stage(body, targets)
            if rest is not None:
                self._parse(rest)
        except model.SourceError as exc:
            pending = exc
        self.conn.execute("ALTER TABLE recon_src ALTER COLUMN line_no DROP DEFAULT")
        self.conn.execute("DROP SEQUENCE recon_src_line")
        if pending is not None:
            raise pending
        return self.staged + self.parsed

    def _prepare(self) -> list[str]:
        """Number recon_src's rows by a sequence (the header is line 1) and give each column
        of the file that the check ignores a text column; returns the file's columns."""
        self.conn.execute("CREATE TEMP SEQUENCE recon_src_line START 2")
        self.conn.execute(
            "ALTER TABLE recon_src ALTER COLUMN line_no SET DEFAULT nextval('recon_src_line')"
        )
        names = {index: _TARGET[name] for name, index in self.columns.items()}
        targets = [names.get(index, f"ignored_{index}") for index in range(self.width)]
        for index in range(self.width):
            if index not in names:
                self.conn.execute(
                    sql.SQL("ALTER TABLE recon_src ADD COLUMN {} text").format(
                        sql.Identifier(f"ignored_{index}")
                    )
                )
        return targets

    def _stage(
        self, body: Iterator[blocks.Block], targets: list[str]
    ) -> Iterator[blocks.Block] | None:
        """COPY plain blocks verbatim; returns the blocks left for Python, from the first
        block that is not plain (or would pass the record limit), or None at the end."""
        names = sql.SQL(", ").join(sql.Identifier(name) for name in targets)
        statement = sql.SQL("COPY recon_src ({}) FROM STDIN (FORMAT csv)").format(names)
        failed: model.SourceError | None = None
        rest: Iterator[blocks.Block] | None = None
        with self.conn.cursor().copy(statement) as copy:
            try:
                rest = self._stage_blocks(copy, body)
            except model.SourceError as exc:
                failed = exc  # Raised once the COPY has ended well: what it holds stays.
        if failed is not None:
            raise failed
        return rest

    def _stage_blocks(
        self, copy: psycopg.Copy, body: Iterator[blocks.Block]
    ) -> Iterator[blocks.Block] | None:
        kind: blocks.Ending | None = None
        for block in body:
            if self.stop.is_set():
                raise model.Interrupted("the operator is stopping")
            found = blocks.plain(block, self.width, self.pattern)
            lines = block.lines
            if (
                found is None
                or (kind is not None and found is not kind)
                or self.staged + lines > self.records_max
            ):
                return itertools.chain([block], body)
            kind = found
            copy.write(block.text)
            self.staged += lines
        return None

    def _parse(self, rest: Iterator[blocks.Block]) -> None:
        """Records of the blocks from ``rest`` on, by parse itself, copied typed."""
        first = next(rest)
        lines = parse.split_lines(itertools.chain([first.text], (block.text for block in rest)))
        reader = csv.reader(lines, strict=True)
        records = parse.csv_rows(reader, self.columns, self.width, first.first_line - 1)
        failed: model.SourceError | None = None
        with self.conn.cursor().copy(f"COPY recon_src ({_SRC_COLUMNS}) FROM STDIN") as copy:
            try:
                _copy_records(copy, self._limited(records), self.stop)
            except model.SourceError as exc:
                failed = exc
        if failed is not None:
            raise failed

    def _limited(self, records: Iterator[model.Record]) -> Iterator[model.Record]:
        for count, found in enumerate(records, start=self.staged + 1):
            if count > self.records_max:
                raise parse.too_large(self.records_max, found.line_no)
            self.parsed += 1
            yield found
