"""Card numbers (PANs): the Luhn check, and finding them in text to prove none is ever stored
or logged (pure, and below every other layer: the event schema and the tokenizers use it).

A candidate is 13 to 19 digits, contiguous or in the printed groups of four (``4111 1111 1111
1111``, ``4111-1111-1111-1111``), not touching another letter or digit (so hashes, UUIDs and
longer numbers are not split into false candidates), that passes the Luhn check. Findings are
reported masked, so a report never prints the number it found.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

_CANDIDATE: Final = re.compile(
    r"(?<![0-9A-Za-z])"
    r"(?:\d{13,19}|\d{4}(?P<sep>[ -])\d{4}(?:(?P=sep)\d{4}){1,2}(?:(?P=sep)\d{1,3})?)"
    r"(?![0-9A-Za-z])"
)
TEXT_LENGTH_MAX: Final = 512 * 1024 * 1024


def luhn_check_digit(payload: str) -> str:
    """The digit that makes ``payload + digit`` pass the Luhn check."""
    total = 0
    for index, char in enumerate(reversed(payload)):
        digit = int(char)
        if index % 2 == 0:
            digit *= 2
            if digit > 9:
                digit -= 9
        total += digit
    return str((10 - total % 10) % 10)


def luhn_valid(number: str) -> bool:
    """True when ``number`` passes the Luhn check."""
    if len(number) < 2 or not number.isdigit():
        return False
    return luhn_check_digit(number[:-1]) == number[-1]


@dataclass(frozen=True)
class Finding:
    """A Luhn-valid card-number candidate: where, and its masked form (last 4 only)."""

    offset: int
    masked: str


def find_pans(text: str) -> list[Finding]:
    """Every Luhn-valid 13-19 digit number in ``text``, masked."""
    if not isinstance(text, str) or len(text) > TEXT_LENGTH_MAX:
        raise ValueError(f"text must be a str of at most {TEXT_LENGTH_MAX} characters")
    found = []
    for match in _CANDIDATE.finditer(text):
        digits = re.sub(r"[ -]", "", match.group(0))
        if 13 <= len(digits) <= 19 and luhn_valid(digits):
            found.append(Finding(match.start(), "*" * (len(digits) - 4) + digits[-4:]))
    return found


def mask_pans(text: str) -> str:
    """``text`` with every Luhn-valid card-number candidate replaced by its masked form.

    For free text that leaves the product (event messages): a holder name or a settlement
    line quoted in a message must never carry a card number out, whoever typed it.
    """
    if not isinstance(text, str) or len(text) > TEXT_LENGTH_MAX:
        raise ValueError(f"text must be a str of at most {TEXT_LENGTH_MAX} characters")

    def masked(match: re.Match[str]) -> str:
        digits = re.sub(r"[ -]", "", match.group(0))
        if 13 <= len(digits) <= 19 and luhn_valid(digits):
            return "*" * (len(digits) - 4) + digits[-4:]
        return match.group(0)

    return _CANDIDATE.sub(masked, text)
