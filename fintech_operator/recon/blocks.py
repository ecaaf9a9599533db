"""Cutting a CSV source into blocks of whole lines, and telling which PostgreSQL can load as is
(pure: text in, blocks out, no I/O).

The bulk load sends a block verbatim to ``COPY ... (FORMAT csv)`` only when PostgreSQL's reading
of it is bound to equal :mod:`parse`'s, record for record and line for line: one record per
line, so a record's line number is its position. That holds for a block with no double quote
(no quoted field can hold a newline, a comma, or a quote PostgreSQL and Python's ``csv`` read
differently), no NUL, no ``\\.`` (PostgreSQL's end-of-data marker), no blank line, one line
ending throughout (``\\n`` or ``\\r\\n``, and no other carriage return), and exactly
``width - 1`` commas per line on average (a line with too few or too many fields then makes
PostgreSQL refuse the block, which the loader notices).

A plain block is then checked by :func:`plain`: one compiled regular expression, made from the
header by :func:`line_pattern`, must match the whole block, which proves every line has exactly
the header's fields and that each required field is text :mod:`parse` accepts and PostgreSQL's
input functions read to the same value (a subset of what :mod:`parse` accepts: amounts of plain
digits, RFC 3339 times of one shape with the field ranges checked). Such a block goes to a
``COPY`` into typed columns as it is, with no per-line Python object. The one thing the pattern
leaves to PostgreSQL is the calendar (a 30 February): both refuse it, and the loader then reads
the source with :mod:`parse` to name the line. Every other block is read by :mod:`parse` itself,
which gives the exact record or the error with its line number.
"""

from __future__ import annotations

import dataclasses
import enum
import re
from collections.abc import Iterable, Iterator
from typing import Final

from fintech_operator.recon import model, parse

BLOCK_CHARS: Final = 1 << 20

# Field patterns, each accepting only text parse.record accepts and reads as PostgreSQL does.
# A reference: 1 to REFERENCE_MAX_LENGTH characters, no control character, not all white space
# (parse.parse_reference), no comma or quote (a plain block has none inside a field).
_REFERENCE: Final = (
    r'(?=[^,\n]*[^\s,])[^\x00-\x1f\x7f,"]{1,' + str(model.REFERENCE_MAX_LENGTH) + "}"
)
# An amount: optional minus and at most 16 digits whose value is at most AMOUNT_MINOR_MAX
# (10**15): 15 digits, or 16 with a leading zero, or 10**15 itself.
_AMOUNT: Final = r"-?(?:[0-9]{1,15}|0[0-9]{15}|1000000000000000)"
_CURRENCY: Final = r"[A-Z]{3}"
# An RFC 3339 time with an offset, year 1000-9999, at most microseconds, offsets up to 14:59.
_TIME: Final = (
    r"[1-9][0-9]{3}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01])"
    r"T(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\.[0-9]{1,6})?"
    r"(?:Z|[+-](?:0[0-9]|1[0-4]):[0-5][0-9])"
)
_OTHER: Final = r"[^,\r\n]*"
_FIELDS: Final = {
    "reference": _REFERENCE,
    "amount": _AMOUNT,
    "currency": _CURRENCY,
    "occurredAt": _TIME,
}


class Ending(enum.Enum):
    """How the lines of a loadable block end."""

    LF = "\n"
    CRLF = "\r\n"


@dataclasses.dataclass(frozen=True)
class Block:
    """Whole lines of the source: ``first_line`` is the line number of the first of them."""

    first_line: int
    text: str

    @property
    def lines(self) -> int:
        return self.text.count("\n") + (0 if self.text.endswith("\n") else 1)


def cut(
    chunks: Iterable[str],
    line_chars_max: int = parse.LINE_CHARS_MAX,
    block_chars: int = BLOCK_CHARS,
) -> Iterator[Block]:
    """Blocks of about ``block_chars`` characters, each ending at a line end (the last one may
    not). A line longer than ``line_chars_max`` is refused as :func:`parse.split_lines` refuses
    it, at the same line, without buffering more of it; the whole lines before it are yielded
    first, so a bad record before it is still the one reported."""
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
        end = pending.rfind("\n") + 1
        if end >= block_chars or len(pending) - end > line_chars_max:
            block = Block(line_no, pending[:end])
            pending = pending[end:]
            line_no += block.text.count("\n")
            if block.text:
                yield from _held_to(block, line_chars_max)
            if len(pending) > line_chars_max:
                raise parse.LineTooLong(line_no, line_chars_max, pending)
    if pending:
        yield from _held_to(Block(line_no, pending), line_chars_max)


def _held_to(block: Block, line_chars_max: int) -> Iterator[Block]:
    """The block, when none of its lines is longer than ``line_chars_max``; else its lines
    before the first long one, then the refusal of that line. (A long line that arrived whole
    within one chunk is found here; the check in :func:`cut` bounds only what is buffered.)"""
    offset = parse.long_line(block.text, line_chars_max)
    if offset is None:
        yield block
        return
    if offset:
        yield Block(block.first_line, block.text[:offset])
    line_no = block.first_line + block.text.count("\n", 0, offset)
    raise parse.LineTooLong(line_no, line_chars_max, block.text[offset:])


@dataclasses.dataclass(frozen=True)
class LinePattern:
    """The compiled whole-block patterns of one header, one per line ending."""

    lf: re.Pattern[str]
    crlf: re.Pattern[str]


def line_pattern(columns: dict[str, int], width: int) -> LinePattern:
    """The patterns of a header whose required columns are at ``columns`` among ``width``."""
    by_index = {index: _FIELDS[name] for name, index in columns.items()}
    line = ",".join(by_index.get(index, _OTHER) for index in range(width))
    # Each line is an atomic group and the repeat possessive: a line's fields cannot hold a
    # line end, so no match ever needs to give one back, and without backtracking points the
    # engine keeps no state per line (a plain ``*`` took 16 MiB per 1 MiB block).
    return LinePattern(
        lf=re.compile(f"(?:(?>{line}\n))*+(?:{line})?"),
        crlf=re.compile(f"(?:(?>{line}\r\n))*+(?:{line})?"),
    )


def plain(block: Block, width: int, pattern: LinePattern) -> Ending | None:
    """How the block's lines end when every line is one PostgreSQL may load typed as it is
    (see the module's docstring), else None."""
    found = ending(block, width)
    if found is None:
        return None
    compiled = pattern.lf if found is Ending.LF else pattern.crlf
    return found if compiled.fullmatch(block.text) else None


def ending(block: Block, width: int) -> Ending | None:
    """How the block's lines end when PostgreSQL may load it as is, else None."""
    text = block.text
    if '"' in text or "\x00" in text or "\\." in text:
        return None
    lines = block.lines
    if text.count(",") != (width - 1) * lines:
        return None
    returns = text.count("\r")
    if returns == 0:
        blank = text.startswith("\n") or "\n\n" in text
        return None if blank else Ending.LF
    if returns == text.count("\r\n") == lines and text.endswith("\r\n"):
        blank = text.startswith("\r\n") or "\n\r\n" in text
        return None if blank else Ending.CRLF
    return None
