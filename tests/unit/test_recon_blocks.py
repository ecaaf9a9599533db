"""Cutting CSV sources into blocks, and telling which blocks PostgreSQL may load verbatim."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from fintech_operator.recon import blocks, model, parse

ROW = "R-1,100,USD,2024-03-01T09:00:00Z\n"


def test_blocks_end_at_line_ends_and_number_their_lines() -> None:
    """Whatever the chunks, blocks hold whole lines, together they are the text (without a BOM),
    and each knows the line number it starts at."""
    text = "\ufeffh1,h2\n" + "".join(f"a{n},b{n}\n" for n in range(50)) + "tail,x"
    chunks = [text[i : i + 7] for i in range(0, len(text), 7)]
    cut = list(blocks.cut(chunks, block_chars=40))
    assert "".join(block.text for block in cut) == text.removeprefix("\ufeff")
    assert all(block.text.endswith("\n") for block in cut[:-1])
    line = 1
    for block in cut:
        assert block.first_line == line
        line += block.text.count("\n")
    assert cut[-1].text.endswith("tail,x")


def test_an_endless_line_is_refused_at_its_line_as_parse_refuses_it() -> None:
    """A line longer than the bound fails while streaming with the same line number and message
    as parse.split_lines gives, and carries the line number for ordering."""

    def chunks() -> Iterator[str]:
        yield "a,b\nc,d\n"
        while True:
            yield "x" * 10_000

    with pytest.raises(model.SourceError) as bulk:
        list(blocks.cut(chunks(), line_chars_max=50_000))
    with pytest.raises(model.SourceError) as single:
        list(parse.split_lines(chunks(), line_chars_max=50_000))
    assert (
        bulk.value.message == single.value.message == ("line 3: line longer than 50000 characters")
    )
    assert bulk.value.line_no == 3


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (ROW * 3, blocks.Ending.LF),
        (ROW * 2 + ROW.rstrip("\n"), blocks.Ending.LF),
        (ROW.replace("\n", "\r\n") * 3, blocks.Ending.CRLF),
        ('"R-1",100,USD,2024-03-01T09:00:00Z\n', None),  # quotes: parse reads it
        (ROW + "\n" + ROW, None),  # a blank line is no record
        ("\n" + ROW, None),  # nor at a block's start
        (ROW.replace("\n", "\r\n") + "\r\n" + ROW.replace("\n", "\r\n"), None),
        (ROW + ROW.replace("\n", "\r\n"), None),  # mixed line endings
        ("R-1,100,USD\n" + ROW, None),  # a line with too few fields
        ("R-1,1\r00,USD,2024-03-01T09:00:00Z\n", None),  # a bare carriage return
        ("R-\x001,100,USD,2024-03-01T09:00:00Z\n", None),  # NUL
        ("\\.\n" + ROW, None),  # PostgreSQL's end-of-data marker
    ],
)
def test_only_plain_blocks_go_to_postgresql_as_they_are(
    text: str, expected: blocks.Ending | None
) -> None:
    """A block is loadable verbatim only when PostgreSQL must read it record for record and
    line for line as parse does; anything else is left to parse."""
    assert blocks.ending(blocks.Block(2, text), width=4) is expected


def test_compensating_field_counts_pass_the_cheap_check() -> None:
    """The comma count is a check of the whole block: a line with one field too many and one
    with one too few pass it. PostgreSQL refuses such a block; the loader then starts over
    record by record (tested against PostgreSQL in test_recon_bulk_load)."""
    text = "R-1,100,USD\nR-2,100,USD,2024-03-01T09:00:00Z,x\n"
    assert blocks.ending(blocks.Block(2, text), width=4) is blocks.Ending.LF
