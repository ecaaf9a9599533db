"""Loading a run's source into ``recon_src`` inside the run's transaction (PostgreSQL adapter).

A CSV source is streamed straight into ``COPY recon_stage FROM STDIN (FORMAT csv)``: every block
that PostgreSQL reads exactly as :mod:`parse` would (see :mod:`blocks`) is sent verbatim, one
text column per field, and a sequence numbers the rows with their lines. Validation then happens
in SQL, in bulk: a row whose fields match a strict pattern (a subset of what :mod:`parse`
accepts, with the same values) is converted to ``recon_src`` in one ``INSERT ... SELECT``; the
few others are read back in line order and judged by :func:`parse.record` itself, so a bad row
fails the run with exactly the line and message that reading record by record gave, and a good
but unusual one (a non-ASCII reference, a 29 February) is loaded as Python read it. From the
first block that is not plain (quotes, blank lines, mixed line endings) on, the rest of the file
is parsed by :mod:`parse` and its records are copied typed. Python never holds more than one
block (about 1 MiB) and one batch of rows to re-check.

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
RECHECK_BATCH: Final = 1_000
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

# What SQL accepts without asking Python: each test accepts only text that parse.record
# accepts and reads to the same value (references of printable ASCII with a visible character;
# amounts of at most 15 digits, below AMOUNT_MINOR_MAX; RFC 3339 times with a real calendar
# date but no 29 February, years 1000-9999, offsets up to 14:59), so the casts cannot fail.
# translate() and comparisons rather than regular expressions: PostgreSQL's regex engine took
# over 10 s for the time pattern on a million rows, these about 2 s.
_DIGITS: Final = "'0123456789'"
_TIME_SHAPES: Final = [
    f"9999-99-99T99:99:99{fraction}{offset}"
    for fraction in ("", ".9", ".99", ".999", ".9999", ".99999", ".999999")
    for offset in ("Z", "+99:99", "-99:99")
]
_MONTH_DAYS: Final = (
    "CASE WHEN substr(s.occurred, 6, 2) IN ('04', '06', '09', '11') THEN '30'"
    " WHEN substr(s.occurred, 6, 2) = '02' THEN '28' ELSE '31' END"
)
_ACCEPT_TEXT: Final = f"""(
    s.ref ~ '^[ -~]*[!-~][ -~]*$' AND length(s.ref) <= {model.REFERENCE_MAX_LENGTH}
    AND (translate(s.amount, {_DIGITS}, '') = '' AND length(s.amount) BETWEEN 1 AND 15
         OR left(s.amount, 1) = '-' AND translate(substr(s.amount, 2), {_DIGITS}, '') = ''
            AND length(s.amount) BETWEEN 2 AND 16)
    AND length(s.currency) = 3 AND translate(s.currency, 'ABCDEFGHIJKLMNOPQRSTUVWXYZ', '') = ''
    AND translate(s.occurred, {_DIGITS}, '9999999999')
        = ANY(ARRAY[{", ".join(f"'{shape}'" for shape in _TIME_SHAPES)}])
    AND left(s.occurred, 1) <> '0'
    AND substr(s.occurred, 6, 2) COLLATE "C" BETWEEN '01' AND '12'
    AND substr(s.occurred, 9, 2) COLLATE "C" BETWEEN '01' AND {_MONTH_DAYS}
    AND substr(s.occurred, 12, 2) COLLATE "C" <= '23'
    AND substr(s.occurred, 15, 2) COLLATE "C" <= '59'
    AND substr(s.occurred, 18, 2) COLLATE "C" <= '59'
    AND (right(s.occurred, 1) = 'Z'
         OR left(right(s.occurred, 5), 2) COLLATE "C" <= '14'
            AND right(s.occurred, 2) COLLATE "C" <= '59'))"""
_ACCEPT: Final = sql.SQL(_ACCEPT_TEXT)


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
    PostgreSQL refuses a block taken for plain (a line with a wrong number of fields)."""
    conn.execute("SAVEPOINT recon_load")
    try:
        count = _load_csv(conn, source, stop)
    except errors.BadCopyFileFormat:
        conn.execute("ROLLBACK TO SAVEPOINT recon_load")
        conn.execute("DROP TABLE IF EXISTS recon_stage")
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


class _Loader:
    """The load of one CSV body: plain blocks staged as text, the rest parsed by Python."""

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
        self.staged = 0
        self.parsed = 0

    def run(self, body: Iterator[blocks.Block]) -> int:
        self._create_stage()
        pending: model.SourceError | None = None
        try:
            rest = self._stage(body)
            if rest is not None:
                self._parse(rest)
        except model.SourceError as exc:
            pending = exc  # Reported after any earlier bad row, as record by record.
        self._validate()
        if pending is not None:
            raise pending
        return self.staged + self.parsed

    def _create_stage(self) -> None:
        fields = sql.SQL(", ").join(
            sql.SQL("{} text").format(sql.Identifier(f"c{index}")) for index in range(self.width)
        )
        self.conn.execute("CREATE TEMP SEQUENCE recon_stage_line START 2")
        self.conn.execute(
            sql.SQL(
                "CREATE TEMP TABLE recon_stage (line_no bigint NOT NULL"
                " DEFAULT nextval('recon_stage_line'), {}) ON COMMIT DROP"
            ).format(fields)
        )

    def _stage(self, body: Iterator[blocks.Block]) -> Iterator[blocks.Block] | None:
        """COPY plain blocks verbatim; returns the blocks left for Python, from the first
        block that is not plain (or would pass the record limit), or None at the end."""
        names = sql.SQL(", ").join(sql.Identifier(f"c{i}") for i in range(self.width))
        statement = sql.SQL("COPY recon_stage ({}) FROM STDIN (FORMAT csv)").format(names)
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
            found = blocks.ending(block, self.width)
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

    def _validate(self) -> None:
        """Convert the staged rows SQL accepts; have parse judge the others, in line order."""
        ref, amount, currency, occurred = (
            sql.Identifier(f"c{self.columns[name]}") for name in parse.REQUIRED_COLUMNS
        )
        stage = sql.SQL(
            "(SELECT line_no, {} AS ref, {} AS amount, {} AS currency, {} AS occurred"
            " FROM recon_stage) s"
        ).format(ref, amount, currency, occurred)
        converted = self.conn.execute(
            sql.SQL(
                "INSERT INTO recon_src (" + _SRC_COLUMNS + ")"
                " SELECT s.line_no, s.ref, s.amount::bigint, s.currency,"
                " s.occurred::timestamptz FROM {} WHERE {}"
            ).format(stage, _ACCEPT)
        ).rowcount
        if converted < self.staged:
            self._recheck(stage)
        self.conn.execute("DROP TABLE recon_stage")
        self.conn.execute("DROP SEQUENCE recon_stage_line")

    def _recheck(self, stage: sql.Composable) -> None:
        query = sql.SQL(
            "SELECT s.line_no, s.ref, s.amount, s.currency, s.occurred FROM {}"
            " WHERE NOT coalesce({}, false) ORDER BY s.line_no"
        ).format(stage, _ACCEPT)
        good: list[model.Record] = []
        with self.conn.cursor(name="recon_recheck") as rows:
            rows.itersize = RECHECK_BATCH
            rows.execute(query)
            for line_no, *fields in rows:
                # PostgreSQL reads an empty unquoted field as NULL; Python's csv as "".
                values = ["" if value is None else str(value) for value in fields]
                good.append(
                    parse.record(
                        int(line_no), dict(zip(parse.REQUIRED_COLUMNS, values, strict=True))
                    )
                )
                if len(good) >= RECHECK_BATCH:
                    self._copy_good(good)
                    good = []
        self._copy_good(good)

    def _copy_good(self, good: list[model.Record]) -> None:
        if good:
            with self.conn.cursor().copy(f"COPY recon_src ({_SRC_COLUMNS}) FROM STDIN") as copy:
                _copy_records(copy, iter(good), self.stop)
