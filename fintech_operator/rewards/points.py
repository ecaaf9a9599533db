"""The points rule, DESIGN.md invariant 6 (pure: no I/O).

Points for a posting are ``floor(amount_minor * rate_bps / 10000)`` when its type is
in the product's ``earnOn``. A ``Refund`` never earns: it takes points back the same
way (negative) when purchases earn, so a full refund cancels its purchase exactly and
partial refunds never take back more than the purchase gave (a sum of floors is at
most the floor of the sum). A reversal takes back exactly what the reversed journal
gave, computed from the original posting's own terms, which its event carries. A
balance may go negative (a refund after the points were spent), as real programs allow.
Integer arithmetic only: no float ever touches an amount.
"""

from __future__ import annotations

from collections.abc import Collection

from fintech_operator import api

BPS_DENOMINATOR = 10_000
RATE_BPS_MAX = 10_000
AMOUNT_MINOR_MAX = 10**15
# The API declares the posting types once (Posting.spec.type).
POSTING_TYPES = frozenset(t.value for t in api.PostingType)


class PointsError(ValueError):
    """The inputs break the rule's preconditions (a bug upstream, never rounded away)."""


def _check(amount_minor: int, rate_bps: int) -> None:
    if type(amount_minor) is not int or not 0 < amount_minor <= AMOUNT_MINOR_MAX:
        raise PointsError(
            f"amount_minor must be an int in 1..{AMOUNT_MINOR_MAX}, got {amount_minor!r}"
        )
    if type(rate_bps) is not int or not 0 <= rate_bps <= RATE_BPS_MAX:
        raise PointsError(f"rate_bps must be an int in 0..{RATE_BPS_MAX}, got {rate_bps!r}")


def _check_types(posting_type: str, earn_on: Collection[str]) -> None:
    if posting_type not in POSTING_TYPES:
        raise PointsError(f"unknown posting type {posting_type!r}")
    if isinstance(earn_on, str) or not all(t in POSTING_TYPES for t in earn_on):
        raise PointsError(f"earn_on must be a collection of posting types, got {earn_on!r}")


def accrual(amount_minor: int, rate_bps: int) -> int:
    """Points earned on ``amount_minor`` at ``rate_bps``, rounded down."""
    _check(amount_minor, rate_bps)
    return amount_minor * rate_bps // BPS_DENOMINATOR


def for_posting(
    posting_type: str,
    amount_minor: int,
    rate_bps: int,
    earn_on: Collection[str],
    *,
    is_reversal: bool = False,
) -> int:
    """Signed points for one posting event: positive accrues, negative takes back.

    For a reversal pass the ORIGINAL posting's type, amount and terms with
    ``is_reversal=True``: the result is the exact negation of what the original gave.
    """
    _check(amount_minor, rate_bps)
    _check_types(posting_type, earn_on)
    if posting_type == "Refund":
        points = -accrual(amount_minor, rate_bps) if "Purchase" in earn_on else 0
    elif posting_type in earn_on:
        points = accrual(amount_minor, rate_bps)
    else:
        points = 0
    return -points if is_reversal else points
