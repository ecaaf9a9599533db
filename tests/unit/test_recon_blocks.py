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


COLUMNS = {"reference": 0, "amount": 1, "currency": 2, "occurredAt": 3}
PATTERN = blocks.line_pattern(COLUMNS, 5)
LINE = "R-1,1250,USD,2024-03-01T09:00:00Z,coffee\n"


@pytest.mark.parametrize(
    "line",
    [
        LINE,
        "R-1,-0,USD,2024-03-01T09:00:00.123456+14:59,\n",
        "R-1,1000000000000000,USD,2024-02-29T23:59:59-05:00,x\n",
        "R-1,0000000000000007,USD,9999-12-31T23:59:59Z,x\n",
        " café R,1,EUR,1000-01-01T00:00:00Z,x\n",
        "R" * 512 + ",1,USD,2024-03-01T09:00:00Z,x\n",
    ],
)
def test_a_block_of_good_lines_is_plain_and_parse_reads_each_alike(line: str) -> None:
    """Lines the pattern vouches for are ones parse.record accepts (so PostgreSQL's typed COPY
    sees only text it reads to the same values)."""
    block = blocks.Block(2, line * 3)
    assert blocks.plain(block, 5, PATTERN) is blocks.Ending.LF
    fields = line.rstrip("\n").split(",")
    found = parse.record(2, dict(zip(parse.REQUIRED_COLUMNS, fields[:4], strict=True)))
    assert found.reference == fields[0]


@pytest.mark.parametrize(
    "bad",
    [
        "R-1,12.50,USD,2024-03-01T09:00:00Z,x\n",
        "R-1,1e3,USD,2024-03-01T09:00:00Z,x\n",
        "R-1, 100,USD,2024-03-01T09:00:00Z,x\n",
        "R-1,,USD,2024-03-01T09:00:00Z,x\n",
        "R-1,1000000000000001,USD,2024-03-01T09:00:00Z,x\n",
        "R-1,99999999999999999,USD,2024-03-01T09:00:00Z,x\n",
        "R-1,100,usd,2024-03-01T09:00:00Z,x\n",
        "R-1,100,USD,2024-03-01,x\n",
        "R-1,100,USD,2024-03-01T09:00:00,x\n",
        "R-1,100,USD,2024-13-01T09:00:00Z,x\n",
        "R-1,100,USD,2024-03-01T24:00:00Z,x\n",
        "R-1,100,USD,2024-03-01T09:00:60Z,x\n",
        "R-1,100,USD,2024-03-01T09:00:00.1234567Z,x\n",
        "R-1,100,USD,2024-03-01T09:00:00+15:00,x\n",
        "R-1,100,USD,0999-03-01T09:00:00Z,x\n",
        "R-1,100,USD,2024-03-01t09:00:00z,x\n",
        ",100,USD,2024-03-01T09:00:00Z,x\n",
        "   ,100,USD,2024-03-01T09:00:00Z,x\n",
        "R\t1,100,USD,2024-03-01T09:00:00Z,x\n",
        "R" * 513 + ",1,USD,2024-03-01T09:00:00Z,x\n",
    ],
)
def test_one_bad_line_makes_the_block_not_plain(bad: str) -> None:
    """A single line the pattern does not vouch for, anywhere in the block, sends the block to
    parse (which names the line); the comma count alone would have let it through."""
    block = blocks.Block(2, LINE + bad + LINE)
    assert blocks.ending(block, 5) is blocks.Ending.LF
    assert blocks.plain(block, 5, PATTERN) is None


def test_the_pattern_follows_the_header_order_and_line_ending() -> None:
    """Columns in another order, and CRLF lines, are matched by the header's own pattern."""
    pattern = blocks.line_pattern({"occurredAt": 0, "currency": 1, "amount": 2, "reference": 3}, 4)
    crlf = "2024-03-01T09:00:00Z,USD,5,R-1\r\n" * 2
    assert blocks.plain(blocks.Block(2, crlf), 4, pattern) is blocks.Ending.CRLF
    assert blocks.plain(blocks.Block(2, LINE), 5, pattern) is None


@pytest.mark.parametrize("chunk_chars", [7, 100, 10_000])
def test_a_long_line_that_arrives_whole_is_refused_too(chunk_chars: int) -> None:
    """A line over the bound inside one chunk (a ConfigMap is one chunk) is refused at its line,
    as split_lines refuses it, after the whole lines before it (a bad record there comes first);
    a line of exactly the bound passes."""
    text = "a,b\nc,d\n" + "y" * 60 + "\n" + "x" * 61 + "\r\ne,f\n"
    chunks = [text[i : i + chunk_chars] for i in range(0, len(text), chunk_chars)]
    passed: list[blocks.Block] = []
    with pytest.raises(model.SourceError) as bulk:
        passed.extend(blocks.cut(chunks, line_chars_max=60, block_chars=4))
    with pytest.raises(model.SourceError) as single:
        list(parse.split_lines(chunks, line_chars_max=60))
    assert bulk.value.message == single.value.message == "line 4: line longer than 60 characters"
    assert bulk.value.line_no == 4
    assert "".join(block.text for block in passed) == "a,b\nc,d\n" + "y" * 60 + "\n"


@pytest.mark.parametrize(
    ("text", "offset"),
    [
        ("", None),
        ("a\n" * 100, None),
        ("x" * 10, None),
        ("x" * 11, 0),
        ("ab\n" + "x" * 10 + "\n" + "x" * 11 + "\nz", 14),
        (("x" * 10 + "\n") * 50 + "x" * 11, 550),
    ],
)
def test_long_line_finds_the_first_line_over_the_bound(text: str, offset: int | None) -> None:
    assert parse.long_line(text, 10) == offset
