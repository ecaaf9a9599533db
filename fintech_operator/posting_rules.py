"""Pure decisions about Posting resources that are not ledger rules (no I/O, no clock)."""

from __future__ import annotations

import datetime
import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any, Final

from fintech_operator import api
from fintech_operator.ledger import model

# What each card phase accepts. A frozen card still takes money back (refunds) and
# money in (payments); a closed card takes only refunds, which can arrive long after
# the purchase. Everything else is refused with CardNotActive.
ACCEPTED_BY_PHASE: Final[dict[str, frozenset[str]]] = {
    "Active": frozenset(t.value for t in api.PostingType),
    "Frozen": frozenset({"Refund", "Payment"}),
    "Closed": frozenset({"Refund"}),
    # The Card object is gone but its account was left open with a balance: the debt can
    # still be paid and late refunds still land; nothing new is charged.
    "Deleted": frozenset({"Refund", "Payment"}),
}


def card_accepts(phase: str | None, posting_type: str) -> bool:
    """Whether a card in ``phase`` accepts a posting of ``posting_type``."""
    return posting_type in ACCEPTED_BY_PHASE.get(phase or "", frozenset())


def ttl_remaining_seconds(
    finished_at: datetime.datetime | None, ttl_seconds: int | None, now: datetime.datetime
) -> float:
    """Seconds until a finished posting expires; 0 when due, infinity without a TTL."""
    if finished_at is None or ttl_seconds is None:
        return float("inf")
    if ttl_seconds < 0:
        raise ValueError("ttl_seconds must not be negative")
    expires = finished_at + datetime.timedelta(seconds=ttl_seconds)
    return max(0.0, (expires - now).total_seconds())


# Fields that do not change what the ledger records: editing them is not a new request.
_NOT_HASHED: Final = frozenset({"ttlSecondsAfterFinished"})


def spec_hash(spec: Mapping[str, Any]) -> str:
    """A stable hash of what a Posting asks the ledger to record (its spec, canonically)."""
    recorded = {k: v for k, v in spec.items() if k not in _NOT_HASHED}
    canonical = json.dumps(recorded, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


# --- Explicit entries and reversals ---------------------------------------------------------------

SYSTEM_ACCOUNT_PREFIX: Final = "system:"
# How each type moves the card's account: a debit adds to what the cardholder owes.
# Adjustment may go either way.
CARD_DIRECTION: Final[Mapping[str, model.Direction | None]] = {
    "Purchase": model.Direction.DEBIT,
    "Fee": model.Direction.DEBIT,
    "Refund": model.Direction.CREDIT,
    "Payment": model.Direction.CREDIT,
    "Adjustment": None,
}
# Which type's card-state rule a reversal obeys: undoing a purchase gives money back to the
# card like a refund (a Closed card takes it); undoing a payment charges the card again like
# a purchase (a Frozen card refuses it).
REVERSAL_ACTS_AS: Final[Mapping[str, str]] = {
    "Purchase": "Refund",
    "Fee": "Refund",
    "Refund": "Purchase",
    "Payment": "Purchase",
    "Adjustment": "Adjustment",
}


class SpecRefused(ValueError):
    """A Posting's spec is refused before the ledger sees it; ``reason`` is documented."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def check_explicit_entries(
    lines: Sequence[model.Line],
    card_account: str,
    posting_type: str,
    amount_minor: int,
    currency: str,
) -> None:
    """Explicit entries move the posting's own card by exactly ``amount_minor`` of
    ``currency`` in its type's direction, and split the other side across system accounts.

    So entries can never touch another card (another namespace's included), never move
    money between system accounts on the side, and rewards, limits and risk, which read
    ``spec.amount``, see what the ledger records.
    """
    foreign = sorted(
        {
            line.account_code
            for line in lines
            if line.account_code != card_account
            and not line.account_code.startswith(SYSTEM_ACCOUNT_PREFIX)
        }
    )
    if foreign:
        raise SpecRefused(
            "AccountNotAllowed",
            f"explicit entries may post only to the card's account {card_account} and to "
            f"system accounts, not to {', '.join(foreign)}",
        )
    card_lines = [line for line in lines if line.account_code == card_account]
    card_sides = {line.direction for line in card_lines}
    if len(card_sides) != 1:
        raise SpecRefused(
            "InvalidSpec",
            f"explicit entries must move the card's account {card_account} in one direction",
        )
    (side,) = card_sides
    expected = CARD_DIRECTION[posting_type]
    if expected is not None and side is not expected:
        raise SpecRefused(
            "InvalidSpec", f"a {posting_type} must {expected.value} the card's account"
        )
    if {line.currency for line in lines} != {currency}:
        raise SpecRefused("CurrencyMismatch", f"every explicit entry must be in {currency}")
    moved = sum(line.amount_minor for line in card_lines)
    if moved != amount_minor:
        raise SpecRefused(
            "InvalidSpec",
            f"explicit entries move the card's account by {moved}, spec.amount is {amount_minor}",
        )
    if any(line.direction is side for line in lines if line.account_code != card_account):
        raise SpecRefused(
            "InvalidSpec", "every system-account entry must be on the other side of the card's"
        )


def check_reversal(
    original: model.Journal, card_account: str, amount_minor: int, currency: str
) -> str:
    """Check a reversal's spec against the journal it reverses; return the type whose
    card-state rule applies to it. A reversal undoes the whole original, so its spec
    names the original's card, amount and currency, or it is refused."""
    if original.reverses_journal_id is not None:
        raise SpecRefused("NotReversible", f"journal {original.id} is itself a reversal")
    card_lines = [line for line in original.lines if line.account_code == card_account]
    if not card_lines:
        raise SpecRefused(
            "InvalidSpec", f"journal {original.id} does not move the card's account {card_account}"
        )
    moved = sum(line.amount_minor for line in card_lines)
    if (moved, card_lines[0].currency) != (amount_minor, currency):
        raise SpecRefused(
            "InvalidSpec",
            f"journal {original.id} moved {moved} {card_lines[0].currency} on the card; a "
            f"reversal undoes all of it, so spec.amount and spec.currency must say so",
        )
    return REVERSAL_ACTS_AS.get(original.kind.value, "Adjustment")
