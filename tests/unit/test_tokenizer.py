"""The built-in tokenizer keeps only a token and the last four digits."""

from __future__ import annotations

import pytest

from fintech_operator.cards import tokenizer


@pytest.mark.parametrize(
    ("number", "valid"),
    [
        ("4111111111111111", True),
        ("4111111111111112", False),
        ("79927398713", True),
        ("", False),
        ("4a11", False),
    ],
)
def test_luhn(number: str, valid: bool) -> None:
    """The Luhn check accepts known-good numbers and refuses altered or non-digit ones."""
    assert tokenizer.luhn_valid(number) is valid


async def test_issue_returns_token_and_last4_only() -> None:
    """An issued card exposes a token and four digits; two issues never share a token."""
    first = await tokenizer.BuiltinTokenizer().issue("ns/card-a")
    second = await tokenizer.BuiltinTokenizer().issue("ns/card-b")
    assert first.token.startswith("tok_")
    assert len(first.last4) == 4
    assert first.last4.isdigit()
    assert first.token != second.token
    assert set(vars(first)) == {"token", "last4"}


@pytest.mark.parametrize(("token", "last4"), [("tok_x", "123"), ("abc", "1234"), ("tok_x", "12a4")])
def test_issued_token_refuses_malformed_values(token: str, last4: str) -> None:
    """A token without the prefix or a last4 that is not four digits is refused."""
    with pytest.raises(ValueError, match=r"last4|token"):
        tokenizer.IssuedToken(token=token, last4=last4)
