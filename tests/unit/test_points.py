"""The rewards rule (DESIGN.md invariant 6) on its own, without any server."""

from __future__ import annotations

import pytest

from fintech_operator.rewards import points

EARN = ("Purchase",)


def test_one_percent_of_a_purchase_rounds_down() -> None:
    """1% of 12 599 minor units is 125 points: floor, never rounding up."""
    assert points.for_posting("Purchase", 12_599, 100, EARN) == 125


def test_refund_takes_back_what_the_same_purchase_gave() -> None:
    """A full refund cancels its purchase exactly, so the points sum to zero."""
    earned = points.for_posting("Purchase", 10_050, 150, EARN)
    taken = points.for_posting("Refund", 10_050, 150, EARN)
    assert earned == 150
    assert earned + taken == 0


def test_types_that_do_not_earn_give_nothing() -> None:
    """Payments and fees earn no points under the default earnOn."""
    assert points.for_posting("Payment", 5_000, 100, EARN) == 0
    assert points.for_posting("Fee", 5_000, 100, EARN) == 0


def test_reversal_negates_the_original_points() -> None:
    """A reversal of a purchase takes back exactly the purchase's points."""
    assert points.for_posting("Purchase", 20_000, 100, EARN, is_reversal=True) == -200


def test_earn_on_can_include_fees() -> None:
    """A product may let fees earn: earnOn is honoured, not hard-coded."""
    assert points.for_posting("Fee", 1_000, 1_000, ("Purchase", "Fee")) == 100


@pytest.mark.parametrize(
    ("amount", "rate"),
    [(12.5, 100), (0, 100), (-5, 100), (True, 100), (100, -1), (100, 10_001), (100, 1.5)],
)
def test_bad_inputs_are_refused_not_rounded(amount: object, rate: object) -> None:
    """Floats, booleans, zero, negatives and out-of-range rates raise instead of rounding."""
    with pytest.raises(points.PointsError):
        points.for_posting("Purchase", amount, rate, EARN)  # type: ignore[arg-type]
