"""The PAN scanner finds card numbers in any spelling and nothing else (pure)."""

from __future__ import annotations

import re

import pytest

from fintech_operator import pan
from fintech_operator.cards import tokenizer

VISA = "4111111111111111"
AMEX = "378282246310005"


@pytest.mark.parametrize(
    "text",
    [
        f"pan={VISA}",
        f'{{"number": "{VISA}"}}',
        "card 4111 1111 1111 1111 ok",
        "card 4111-1111-1111-1111 ok",
        f"tok_{VISA}",
        f"{AMEX}\n",
        "6011000990139424",  # 16-digit Discover test number
        "4222222222222",  # 13 digits
    ],
)
def test_finds_luhn_valid_numbers(text: str) -> None:
    """Contiguous and grouped numbers are found, next to punctuation or underscores."""
    found = pan.find_pans(text)
    assert len(found) == 1
    digits = re.sub(r"\D", "", text)
    assert found[0].masked == "*" * (len(digits) - 4) + digits[-4:]


@pytest.mark.parametrize(
    "text",
    [
        "4111111111111112",  # Luhn fails
        "411111111111",  # 12 digits
        "41111111111111111111",  # 20 digits
        f"a{VISA}",  # part of a longer token (hex, ids)
        f"{VISA}f",
        "0a4111111111111111b",
        "2025-11-29T23:11:19.123Z",
        "4111 1111-1111 1111",  # mixed separators are not a printed card number
        "sha256:d2b8f1a4111111111111111",
        "",
    ],
)
def test_ignores_everything_else(text: str) -> None:
    """Failed Luhn, wrong lengths, digits inside longer tokens and timestamps are not PANs."""
    assert pan.find_pans(text) == []


def test_findings_are_masked_and_located() -> None:
    """A report shows only the last four digits and where the number was."""
    text = f"x {VISA} y {AMEX}"
    assert pan.find_pans(text) == [
        pan.Finding(2, "************1111"),
        pan.Finding(21, "***********0005"),
    ]


def test_builtin_tokenizer_numbers_would_be_found() -> None:
    """The scanner catches numbers of the built-in tokenizer's shape (so the scan is meaningful)."""
    body = tokenizer.DEV_BIN + "123456789"
    number = body + pan.luhn_check_digit(body)
    assert len(pan.find_pans(f"leaked {number}")) == 1


def test_refuses_non_text() -> None:
    """Bytes must be decoded by the caller, which knows their encoding."""
    with pytest.raises(ValueError, match="str"):
        pan.find_pans(b"4111111111111111")  # type: ignore[arg-type]
