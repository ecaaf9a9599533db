"""Tokenizers turn a card into a token and its last four digits.

In production the card processor's API holds the card number and returns a token
(:mod:`fintech_operator.cards.http_tokenizer`, chosen by ``FINTECH_TOKENIZER_URL``); the
built-in tokenizer serves development. It creates a Luhn-valid number in memory
only to derive the last four digits and drops it: no PAN, CVV or PIN is ever
returned, stored, logged or written to a resource (DESIGN.md invariant 7).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Protocol

from fintech_operator import pan as card_numbers

PAN_LENGTH = 16
# A test-range issuer prefix: numbers from it can never be real cards.
DEV_BIN = "400000"


@dataclass(frozen=True)
class IssuedToken:
    """What the product keeps about a card number: a token and the last four digits."""

    token: str
    last4: str

    def __post_init__(self) -> None:
        if len(self.last4) != 4 or not self.last4.isdigit():
            raise ValueError("last4 must be exactly four digits")
        if not self.token.startswith("tok_") or len(self.token) > 64:
            raise ValueError("token must start with 'tok_' and be at most 64 characters")


class Tokenizer(Protocol):
    async def issue(self, card_ref: str, *, idempotency_key: str = "") -> IssuedToken:
        """Issue a card number for ``card_ref`` and return only its token and last 4.

        ``idempotency_key`` (derived from the card's uid) makes a retried request return the
        first answer: the processor's tokenizer sends it; the built-in one has no state to keep.
        """
        ...


class BuiltinTokenizer:
    """Development tokenizer: random Luhn-valid numbers that exist only in memory."""

    async def issue(self, card_ref: str, *, idempotency_key: str = "") -> IssuedToken:
        body = DEV_BIN + "".join(
            str(secrets.randbelow(10)) for _ in range(PAN_LENGTH - len(DEV_BIN) - 1)
        )
        pan = body + card_numbers.luhn_check_digit(body)
        issued = IssuedToken(token="tok_" + secrets.token_hex(16), last4=pan[-4:])
        del pan  # The number's only use was its last four digits.
        return issued
