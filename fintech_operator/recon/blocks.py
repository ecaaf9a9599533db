"""Cutting a CSV source into blocks of whole lines, and telling which PostgreSQL can load as is
(pure: text in, blocks out, no I/O).

The bulk load sends a block verbatim to ``COPY ... (FORMAT csv)`` only when PostgreSQL's reading
of it is bound to equal :mod:`parse`'s, record for record and line for line: one record per
line, so a record's line number is its position. That holds for a block with no double quote
(no quoted field can hold a newline, a comma, or a quote PostgreSQL and Python's ``csv`` read
differently), no NUL, no ``\\.`` (PostgreSQL's end-of-data marker), no blank line, one line
ending throughout (``\\n`` or ``\\r\\n``, and no other carriage return), and exactly
``width - 1`` commas per line on average (a line with too few or too many fields then makes
PostgreSQL refuse the block, which the loader notices). Every other block is read by
:mod:`parse` itself, which gives the exact record or error.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterable, Iterator
from typing import Final

from fintech_operator.recon import model, parse

BLOCK_CHARS: Final = 1 << 20


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
    it, at the same line, without buffering it."""
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
        if len(pending) - end > line_chars_max:
            lines_before = pending.count("\n", 0, end)
            raise model.SourceError(
                "SourceMalformed",
                f"line {line_no + lines_before}: line longer than {line_chars_max} characters",
                line_no + lines_before,
            )
        if end >= block_chars:
            block = Block(line_no, pending[:end])
            pending = pending[end:]
            line_no += block.text.count("\n")
            yield block
    if pending:
        yield Block(line_no, pending)


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
