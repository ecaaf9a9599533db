"""The points rule, DESIGN.md invariant 6 (pure: no I/O).

Points for a posting are ``floor(amount_minor * rate_bps / 10000)`` when its type
earns; a refund of an earning type takes back points the same way, so a full refund
cancels its purchase exactly; a reversal takes back what the reversed journal gave.
Integer arithmetic only: no float ever touches an amount.
"""

from __future__ import annotations

from collections.abc import Collection

BPS_DENOMINATOR = 10_000
MAX_RATE_BPS = 10_000


class PointsError(ValueError):
    """The inputs break the rule's preconditions (a bug upstream, never rounded away)."""


def _check(amount_minor: int, rate_bps: int) -> None:
    if type(amount_minor) is not int or amount_minor <= 0:
        raise PointsError(f"amount_minor must be a positive int, got {amount_minor!r}")
    if type(rate_bps) is not int or not 0 <= rate_bps <= MAX_RATE_BPS:
        raise PointsError(f"rate_bps must be an int in 0..{MAX_RATE_BPS}, got {rate_bps!r}")


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
    """Signed points for one posting event: positive accrues, negative takes back."""
    if posting_type in earn_on:
        points = accrual(amount_minor, rate_bps)
    elif posting_type == "Refund" and "Purchase" in earn_on:
        points = -accrual(amount_minor, rate_bps)
    else:
        _check(amount_minor, rate_bps)
        points = 0
    return -points if is_reversal else points
