"""The streaming settlement parsers: good files parse, every kind of bad input fails clearly."""

from __future__ import annotations

import datetime
from collections.abc import Iterator

import pytest

from fintech_operator import api
from fintech_operator.recon import model, parse, sources

HEADER = "reference,amount,currency,occurredAt\n"
WHEN = '"occurredAt": "2024-03-01T00:00:00Z"'


def obj(amount: str, reference: str = "R", currency: str = "USD") -> str:
    """One JSON record with ``amount`` written as raw JSON text."""
    return f'{{"reference": "{reference}", "amount": {amount}, "currency": "{currency}", {WHEN}}}'


def csv_of(*rows: str) -> list[model.Record]:
    return list(parse.parse("csv", [HEADER, *rows], 1000))


def test_csv_records_parse_with_extra_columns_quotes_and_crlf() -> None:
    """Columns may come in any order with extras; quoted commas, CRLF and a BOM are fine."""
    text = (
        "\ufeffmerchant,occurredAt,amount,reference,currency\r\n"
        '"Tea, Green",2024-03-01T09:00:00+02:00,1250,R-1,USD\r\n'
        "\r\n"
        "Books,2024-03-01T10:00:00Z,-300,R-2,EUR\r\n"
    )
    records = list(parse.parse("csv", [text[:17], text[17:40], text[40:]], 10))
    assert [(r.line_no, r.reference, r.amount_minor, r.currency) for r in records] == [
        (2, "R-1", 1250, "USD"),
        (4, "R-2", -300, "EUR"),
    ]
    assert records[0].occurred_at == datetime.datetime(2024, 3, 1, 7, tzinfo=datetime.UTC)


@pytest.mark.parametrize(
    ("row", "fragment"),
    [
        ("R-1,12.50,USD,2024-03-01T09:00:00Z\n", "amount must be an integer"),
        ("R-1,1e3,USD,2024-03-01T09:00:00Z\n", "amount must be an integer"),
        ("R-1, 100,USD,2024-03-01T09:00:00Z\n", "amount must be an integer"),
        ("R-1,,USD,2024-03-01T09:00:00Z\n", "amount must be an integer"),
        ("R-1,99999999999999999,USD,2024-03-01T09:00:00Z\n", "amount must be an integer"),
        ("R-1,1000000000000001,USD,2024-03-01T09:00:00Z\n", "beyond"),
        ("R-1,100,usd,2024-03-01T09:00:00Z\n", "currency must be an ISO 4217"),
        ("R-1,100,USD,2024-03-01\n", "RFC 3339"),
        ("R-1,100,USD,2024-03-01T09:00:00\n", "needs an offset"),
        ("R-1,100,USD,yesterday\n", "RFC 3339"),
        (",100,USD,2024-03-01T09:00:00Z\n", "reference is empty"),
        ("R-1,100,USD\n", "3 fields where the header has 4"),
        ("R-1,100,USD,2024-03-01T09:00:00Z,extra\n", "5 fields"),
        ('"R-1,100,USD,2024-03-01T09:00:00Z\n', "bad CSV"),
    ],
)
def test_a_malformed_row_fails_with_its_line_number(row: str, fragment: str) -> None:
    """Each kind of bad row stops the parse with SourceMalformed naming line 3 and the problem."""
    with pytest.raises(model.SourceError) as caught:
        csv_of("R-0,1,USD,2024-03-01T09:00:00Z\n", row)
    assert caught.value.reason == "SourceMalformed"
    assert caught.value.message.startswith("line 3: ")
    assert fragment in caught.value.message


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "empty"),
        ("reference,amount,currency\n", "lacks column occurredAt"),
        ("reference,amount,amount,currency,occurredAt\n", "repeats column amount"),
    ],
)
def test_a_bad_header_fails(text: str, fragment: str) -> None:
    """An empty file, a missing or a repeated column is refused at line 1."""
    with pytest.raises(model.SourceError) as caught:
        list(parse.parse("csv", [text], 10))
    assert caught.value.message.startswith("line 1: ")
    assert fragment in caught.value.message


def test_records_max_bounds_the_source() -> None:
    """One record more than the limit fails as SourceTooLarge instead of loading on."""
    rows = [f"R-{n},1,USD,2024-03-01T09:00:00Z\n" for n in range(4)]
    with pytest.raises(model.SourceError) as caught:
        list(parse.parse("csv", [HEADER, *rows], 3))
    assert caught.value.reason == "SourceTooLarge"


def test_an_endless_line_is_refused_not_buffered() -> None:
    """A line longer than the bound fails while streaming, before it is held in memory."""

    def chunks() -> Iterator[str]:
        yield HEADER
        while True:
            yield "x" * 10_000

    with pytest.raises(model.SourceError) as caught:
        list(parse.parse_csv(parse.split_lines(chunks(), line_chars_max=50_000), 10))
    assert "longer than 50000" in caught.value.message


def test_split_lines_keeps_endings_and_streams_lazily() -> None:
    """Lines keep their endings, chunks may cut anywhere, and nothing is read ahead."""
    pulled = []

    def chunks() -> Iterator[str]:
        for part in ["a,b\nc", ",d\n", "e,f"]:
            pulled.append(part)
            yield part

    lines = parse.split_lines(chunks())
    assert next(lines) == "a,b\n"
    assert pulled == ["a,b\nc"]
    assert list(lines) == ["c,d\n", "e,f"]


def test_json_lines_and_json_array_parse() -> None:
    """JSON Lines (blank lines skipped) and a small JSON array give the same records."""
    one = obj("5", "R-1")
    two = obj("-7", "R-2", "EUR")
    lines = list(parse.parse("json", [f"{one}\n\n{two}\n"], 10))
    array = list(parse.parse("json", [f"[{one},\n {two}]"], 10))
    assert [(r.reference, r.amount_minor) for r in lines] == [("R-1", 5), ("R-2", -7)]
    assert [(r.reference, r.amount_minor) for r in array] == [("R-1", 5), ("R-2", -7)]
    assert lines[1].line_no == 3


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        (
            obj("1.5"),
            "integer",
        ),
        (
            obj('"15"'),
            None,
        ),
        (
            obj("true"),
            "integer",
        ),
        (
            '{"reference": "R", "currency": "USD", "occurredAt": "2024-03-01T00:00:00Z"}',
            "missing amount",
        ),
        ("[1, 2]", "must be a JSON object"),
        ("not json", "not JSON"),
        ('"a string"', "must be a JSON object"),
        ("[{", "not a JSON array"),
    ],
)
def test_bad_json_records_fail(text: str, fragment: str | None) -> None:
    """Floats, booleans, missing fields and non-objects are refused; a numeric string of
    minor units is accepted as CSV would accept it."""
    if fragment is None:
        assert [r.amount_minor for r in parse.parse("json", [text], 10)] == [15]
        return
    with pytest.raises(model.SourceError) as caught:
        list(parse.parse("json", [text], 10))
    assert caught.value.reason == "SourceMalformed"
    assert fragment in caught.value.message


def test_a_json_array_after_json_lines_records_is_a_bad_line_not_a_second_source() -> None:
    """docs/reconciliation.md: a JSON source is JSON Lines or ONE array. An array on a later
    line of a JSON Lines file is that line's bad record, named by its line: before, it was read
    as an array source, so its objects were loaded too (numbered "item 1", "item 2" again, line
    numbers the file had already used) and a non-object in it was blamed on "item 1"."""
    one = obj("5", "R-1")
    with pytest.raises(model.SourceError) as caught:
        list(parse.parse("json", [f"{one}\n[1, 2]\n"], 10))
    assert caught.value.message == "line 2: a record must be a JSON object, got list"
    with pytest.raises(model.SourceError) as caught:
        list(parse.parse("json", [f"{one}\n\n[{obj('6', 'R-2')}]\n"], 10))
    assert caught.value.message == "line 3: a record must be a JSON object, got list"


def test_a_large_json_array_is_refused() -> None:
    """A JSON array bigger than the document bound is refused with advice to use JSON Lines."""
    item = obj("1") + ",\n"
    with pytest.raises(model.SourceError) as caught:
        list(parse.parse_json(["[\n", *[item] * 100, "]"], 1000, document_chars_max=1000))
    assert caught.value.reason == "SourceTooLarge"
    assert "JSON Lines" in caught.value.message


def test_unknown_format_is_refused() -> None:
    """A format other than csv or json is an InvalidSpec, not a guess."""
    with pytest.raises(model.SourceError) as caught:
        list(parse.parse("xml", ["<a/>"], 1))
    assert caught.value.reason == "InvalidSpec"


def test_report_table_columns_line_up() -> None:
    """Every row's cells start where the header's do; an over-long cell is cut with an ellipsis."""
    import io  # noqa: PLC0415

    from fintech_operator.recon import report  # noqa: PLC0415

    out = io.StringIO()
    rows = [("Settlement", "MissingInLedger", "error", "auth-1", 2, "no posting", "x" * 60)]
    assert report.write_table(rows, out) == 1
    header, row = out.getvalue().splitlines()
    assert header.index("KIND") == row.index("MissingInLedger")
    assert header.index("REFERENCE") == row.index("auth-1")
    assert row.endswith("…")


@pytest.mark.parametrize(
    ("second", "message"),
    [
        (obj("1.5", "R-2"), "item 2: amount must be an integer of minor units, got 1.5"),
        ("7", "item 2: a record must be a JSON object"),
    ],
)
def test_a_bad_json_array_item_is_named_by_its_position_from_1(second: str, message: str) -> None:
    """An array's bad record is named as `item N`, counted from 1 like lines and like the line
    a finding about an array record stores (the second object is item 2, not item 1)."""
    with pytest.raises(model.SourceError) as caught:
        list(parse.parse("json", [f"[{obj('5', 'R-1')},\n {second}]"], 10))
    assert (caught.value.reason, caught.value.message) == ("SourceMalformed", message)
    assert caught.value.line_no == 2


@pytest.mark.parametrize(
    ("reference", "fragment"),
    [("   ", "line 2: reference is empty"), ("a\tb", "line 2: reference must be 1 to")],
)
def test_an_inline_record_is_held_to_the_files_reference_rule(
    reference: str, fragment: str
) -> None:
    """An inline reference of blanks or with a control character passes the schema's length
    bound but fails the run as SourceMalformed at its line, as the same record in a file does."""
    spec = api.ReconciliationRunSpec.model_validate(
        {
            "source": {
                "inline": [
                    {"reference": ref, "amount": 5, "currency": "USD", "occurredAt": when}
                    for ref, when in (
                        ("R-1", "2024-03-01T00:00:00Z"),
                        (reference, "2024-03-01T00:00:00Z"),
                    )
                ]
            }
        }
    )
    records = sources.opener(spec, "team-a", sources.Limits())
    assert callable(records)
    with pytest.raises(model.SourceError) as caught:
        list(records())
    assert caught.value.reason == "SourceMalformed"
    assert caught.value.message.startswith(fragment)
    assert caught.value.line_no == 2


def test_a_one_line_json_array_is_read_up_to_the_array_bound() -> None:
    """A JSON array on one line (as json.dumps writes it) longer than a line may be is read
    whole up to 1 MiB, in any chunking; past it, SourceTooLarge with the JSON Lines advice."""
    items = [obj("5", f"R-{n:06d}") for n in range(1_000)]
    text = "[" + ", ".join(items) + "]\n"
    assert parse.LINE_CHARS_MAX < len(text) < parse.DOCUMENT_CHARS_MAX
    for size in (len(text), 65_536, 1_000):
        chunks = [text[i : i + size] for i in range(0, len(text), size)]
        assert len(list(parse.parse("json", chunks, 10_000))) == 1_000
    big = "[" + ", ".join([obj("5")] * 15_000) + "]"
    with pytest.raises(model.SourceError) as caught:
        list(parse.parse("json", [big[i : i + 65_536] for i in range(0, len(big), 65_536)], 10**6))
    assert caught.value.reason == "SourceTooLarge"
    assert "JSON Lines" in caught.value.message


def test_a_json_lines_record_is_held_to_the_line_bound() -> None:
    """JSON Lines keep the 64 KiB line bound although an array's line may be longer."""
    long_reference = "R" * 70_000
    text = obj("5") + "\n" + obj("5", long_reference) + "\n"
    with pytest.raises(model.SourceError) as caught:
        list(parse.parse("json", [text], 10))
    assert (caught.value.reason, caught.value.message) == (
        "SourceMalformed",
        "line 2: line longer than 65536 characters",
    )
