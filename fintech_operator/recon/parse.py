"""Streaming parsers of settlement sources (pure: text in, records out, no I/O).

Sources may be far larger than memory, so everything here is a generator: text arrives in
chunks, is cut into lines of bounded length, and each record is validated and yielded on its
own. The first bad record stops the run with a :class:`model.SourceError` naming its line:
a settlement file with one unreadable row cannot be trusted to have the others right.

Formats:

- ``csv``: a header row naming at least ``reference``, ``amount``, ``currency`` and
  ``occurredAt`` (other columns are ignored), then one record per row. RFC 4180 quoting.
- ``json``: JSON Lines (one object per line, blank lines ignored), or one JSON array of
  objects when the document is small (at most ``document_chars_max`` characters).

Amounts are integers in minor units (``1250`` = 12.50), negative for refunds and other credits
to the cardholder; ``12.50`` is refused, never rounded. Times are RFC 3339 with an offset.
"""

from __future__ import annotations

import csv
import datetime
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Final

from fintech_operator.recon import model

REQUIRED_COLUMNS: Final = ("reference", "amount", "currency", "occurredAt")
LINE_CHARS_MAX: Final = 65_536
DOCUMENT_CHARS_MAX: Final = 1_048_576
_AMOUNT_RE: Final = re.compile(r"-?[0-9]{1,16}")
_CURRENCY_RE: Final = re.compile(r"[A-Z]{3}")
_CONTROL_RE: Final = re.compile(r"[\x00-\x1f\x7f]")


def _malformed(line_no: int, message: str) -> model.SourceError:
    return model.SourceError("SourceMalformed", f"line {line_no}: {message}", line_no)


class LineTooLong(model.SourceError):
    """A line longer than the bound; ``head`` is its start (a JSON array is told by it)."""

    def __init__(self, line_no: int, line_chars_max: int, head: str) -> None:
        super().__init__(
            "SourceMalformed",
            f"line {line_no}: line longer than {line_chars_max} characters",
            line_no,
        )
        self.head = head[:16]


def long_line(text: str, line_chars_max: int = LINE_CHARS_MAX) -> int | None:
    """The offset where the first line of ``text`` longer than ``line_chars_max`` characters
    (its line end not counted) starts, else None. It jumps to the last line end within each
    ``line_chars_max + 1`` characters: about ``len(text) / line_chars_max`` searches in C,
    nothing per line, so a bulk load can hold every line to the bound."""
    pos = 0
    while len(text) - pos > line_chars_max:
        end = text.rfind("\n", pos, pos + line_chars_max + 1)
        if end < 0:
            return pos
        pos = end + 1
    return None


def split_lines(chunks: Iterable[str], line_chars_max: int = LINE_CHARS_MAX) -> Iterator[str]:
    """Cut text chunks into lines that keep their line ending (``csv`` needs it for quoted
    newlines); a line longer than ``line_chars_max`` (its ending not counted) is refused, and
    one that runs past it is refused before more of it is buffered."""
    pending = ""
    line_no = 1
    first = True
    for chunk in chunks:
        if first and chunk:
            # A byte order mark some spreadsheet exports put first is not part of the header.
            pending += chunk.removeprefix("\ufeff")
            first = False
        else:
            pending += chunk
        start = 0
        while True:
            end = pending.find("\n", start)
            if end < 0:
                break
            if end - start > line_chars_max:
                raise LineTooLong(line_no, line_chars_max, pending[start:])
            yield pending[start : end + 1]
            line_no += 1
            start = end + 1
        pending = pending[start:]
        if len(pending) > line_chars_max:
            raise LineTooLong(line_no, line_chars_max, pending)
    if pending:
        yield pending


def parse_amount(raw: object, line_no: int) -> int:
    """An integer number of minor units; refuses floats, decimals, booleans and padding."""
    if isinstance(raw, bool) or not isinstance(raw, int | str):
        raise _malformed(line_no, f"amount must be an integer of minor units, got {raw!r}")
    if isinstance(raw, str):
        if not _AMOUNT_RE.fullmatch(raw):
            raise _malformed(
                line_no, f"amount must be an integer of minor units (1250 = 12.50), got {raw!r}"
            )
        raw = int(raw)
    if abs(raw) > model.AMOUNT_MINOR_MAX:
        raise _malformed(line_no, f"amount {raw} is beyond ±{model.AMOUNT_MINOR_MAX}")
    return raw


def parse_currency(raw: object, line_no: int) -> str:
    if not isinstance(raw, str) or not _CURRENCY_RE.fullmatch(raw):
        raise _malformed(line_no, f"currency must be an ISO 4217 code like USD, got {raw!r}")
    return raw


def parse_reference(raw: object, line_no: int) -> str:
    if not isinstance(raw, str) or not raw.strip():
        raise _malformed(line_no, "reference is empty")
    if len(raw) > model.REFERENCE_MAX_LENGTH or _CONTROL_RE.search(raw):
        raise _malformed(
            line_no,
            f"reference must be 1 to {model.REFERENCE_MAX_LENGTH} printable characters",
        )
    return raw


def parse_time(raw: object, line_no: int) -> datetime.datetime:
    """An RFC 3339 timestamp with an offset (``Z`` or ``+02:00``); a bare date is refused."""
    if not isinstance(raw, str) or "T" not in raw.upper():
        raise _malformed(line_no, f"occurredAt must be an RFC 3339 date-time, got {raw!r}")
    try:
        moment = datetime.datetime.fromisoformat(raw)
    except ValueError:
        raise _malformed(line_no, f"occurredAt is not an RFC 3339 date-time: {raw!r}") from None
    if moment.tzinfo is None:
        raise _malformed(line_no, f"occurredAt needs an offset such as Z: {raw!r}")
    return moment


def record(line_no: int, fields: Mapping[str, object]) -> model.Record:
    """Validate one record given as a mapping of the required column names."""
    missing = [name for name in REQUIRED_COLUMNS if fields.get(name) is None]
    if missing:
        raise _malformed(line_no, f"missing {', '.join(missing)}")
    return model.Record(
        line_no=line_no,
        reference=parse_reference(fields["reference"], line_no),
        amount_minor=parse_amount(fields["amount"], line_no),
        currency=parse_currency(fields["currency"], line_no),
        occurred_at=parse_time(fields["occurredAt"], line_no),
    )


def too_large(records_max: int, line_no: int | None = None) -> model.SourceError:
    return model.SourceError(
        "SourceTooLarge", f"more than {records_max} records (the configured limit)", line_no
    )


def _limited(records: Iterator[model.Record], records_max: int) -> Iterator[model.Record]:
    for count, found in enumerate(records, start=1):
        if count > records_max:
            raise too_large(records_max, found.line_no)
        yield found


def parse_csv(lines: Iterable[str], records_max: int) -> Iterator[model.Record]:
    """Records of a CSV document given as lines with their endings."""
    reader = csv.reader(iter(lines), strict=True)
    return _limited(_csv_records(reader), records_max)


def _csv_records(reader: Iterator[list[str]]) -> Iterator[model.Record]:
    header = csv_header(reader)
    return csv_rows(reader, columns_of(header), len(header))


def csv_header(reader: Iterator[list[str]]) -> list[str]:
    """The header row of a CSV reader (line 1)."""
    try:
        return next(reader)
    except StopIteration:
        raise _malformed(1, "the CSV source is empty; it needs a header row") from None
    except csv.Error as exc:
        raise _malformed(1, f"bad CSV: {exc}") from None


def csv_rows(
    reader: Iterator[list[str]], columns: Mapping[str, int], width: int, lines_before: int = 0
) -> Iterator[model.Record]:
    """Records of the rows after the header; ``lines_before`` is added to the reader's line
    numbers when it starts part way through the source."""
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise _malformed(lines_before + _line_of(reader), f"bad CSV: {exc}") from None
        line_no = lines_before + _line_of(reader)
        if not row or row == [""]:
            continue  # A blank line (often the last one) is not a record.
        if len(row) != width:
            raise _malformed(line_no, f"{len(row)} fields where the header has {width}")
        yield record(line_no, {name: row[index] for name, index in columns.items()})


def _line_of(reader: Iterator[list[str]]) -> int:
    line_num = getattr(reader, "line_num", 0)
    return int(line_num)


def columns_of(header: list[str]) -> dict[str, int]:
    names = [name.strip() for name in header]
    duplicated = sorted({name for name in names if names.count(name) > 1})
    if duplicated:
        raise _malformed(1, f"header repeats column {', '.join(duplicated)}")
    missing = [name for name in REQUIRED_COLUMNS if name not in names]
    if missing:
        raise _malformed(
            1,
            f"header lacks column {', '.join(missing)} "
            f"(needs {', '.join(REQUIRED_COLUMNS)}; got {', '.join(names)})",
        )
    return {name: names.index(name) for name in REQUIRED_COLUMNS}


def parse_json(
    lines: Iterable[str], records_max: int, document_chars_max: int = DOCUMENT_CHARS_MAX
) -> Iterator[model.Record]:
    """Records of JSON Lines, or of one small JSON array of objects.

    ``lines`` may be up to ``document_chars_max`` long (:func:`parse` cuts them so), so that a
    JSON array written on one line is read up to the array bound; a JSON Lines record is still
    held to :data:`LINE_CHARS_MAX`."""
    return _limited(_json_records(iter(lines), document_chars_max), records_max)


def _array_too_large(document_chars_max: int) -> model.SourceError:
    return model.SourceError(
        "SourceTooLarge",
        f"a JSON array source may hold at most {document_chars_max} characters; "
        "use JSON Lines (one object per line) for larger files",
    )


def _json_records(lines: Iterator[str], document_chars_max: int) -> Iterator[model.Record]:
    in_array = False
    records_seen = False
    try:
        for line_no, line in enumerate(lines, start=1):
            text = line.strip()
            if not text:
                continue
            # A source is JSON Lines or ONE array: only its first record may open an array; a
            # later line that does is a bad JSON Lines record (_json_object names its line).
            if text.startswith("[") and not records_seen:
                in_array = True
                yield from _json_array(line_no, text, lines, document_chars_max)
                return
            if len(line.rstrip("\r\n")) > LINE_CHARS_MAX:
                raise LineTooLong(line_no, LINE_CHARS_MAX, line)
            records_seen = True
            yield record(line_no, _json_object(line_no, text))
    except LineTooLong as exc:
        # A line past the array bound: an array (begun, or beginning on it) is too large; a
        # JSON Lines line is held to the line bound, as a CSV line is.
        if in_array or (exc.head.lstrip().startswith("[") and not records_seen):
            raise _array_too_large(document_chars_max) from None
        if exc.line_no is not None and f"than {LINE_CHARS_MAX} " not in exc.message:
            raise LineTooLong(exc.line_no, LINE_CHARS_MAX, exc.head) from None
        raise


def _json_object(line_no: int, text: str) -> Mapping[str, object]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise _malformed(line_no, f"not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise _malformed(line_no, f"a record must be a JSON object, got {type(value).__name__}")
    return value


def _json_array(
    line_no: int, first: str, rest: Iterator[str], document_chars_max: int
) -> Iterator[model.Record]:
    parts = [first]
    size = len(first)
    for line in rest:
        size += len(line)
        if size > document_chars_max:
            raise _array_too_large(document_chars_max)
        parts.append(line)
    try:
        items = json.loads("".join(parts))
    except ValueError as exc:
        raise _malformed(line_no, f"not a JSON array: {exc}") from None
    if not isinstance(items, list):
        raise _malformed(line_no, "expected a JSON array of objects")
    # An array's records are named by position, counted from 1 like lines (and like the line
    # number a finding about one of them stores): "item 2" is the array's second object.
    for index, item in enumerate(items, start=1):
        if not isinstance(item, dict):
            raise model.SourceError(
                "SourceMalformed", f"item {index}: a record must be a JSON object", index
            )
        try:
            yield record(index, item)
        except model.SourceError as exc:
            raise model.SourceError(
                exc.reason, exc.message.replace(f"line {index}:", f"item {index}:", 1), index
            ) from None


def parse(format_: str, chunks: Iterable[str], records_max: int) -> Iterator[model.Record]:
    """Records of a source in ``format_`` (``csv`` or ``json``), streamed from text chunks."""
    if format_ == "csv":
        return parse_csv(split_lines(chunks), records_max)
    if format_ == "json":
        # Lines up to the array bound: a one-line JSON array is read whole up to 1 MiB.
        return parse_json(split_lines(chunks, DOCUMENT_CHARS_MAX), records_max)
    raise model.SourceError("InvalidSpec", f"unknown format {format_!r}; use csv or json")
