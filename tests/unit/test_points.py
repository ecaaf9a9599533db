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


def test_refund_never_earns_even_when_listed_in_earn_on() -> None:
    """A Refund in earnOn is a configuration slip, not a way to earn on money going back."""
    assert points.for_posting("Refund", 10_000, 100, ("Purchase", "Refund")) == -100
    assert points.for_posting("Refund", 10_000, 100, ("Refund",)) == 0


def test_refund_takes_nothing_back_when_purchases_do_not_earn() -> None:
    """With earnOn [Fee], a purchase earned nothing, so its refund takes nothing back."""
    assert points.for_posting("Refund", 10_000, 100, ("Fee",)) == 0


def test_partial_refunds_never_take_back_more_than_the_purchase_gave() -> None:
    """Three thirds of a refund sum to at most the purchase's points (floors of parts)."""
    earned = points.for_posting("Purchase", 10_050, 150, EARN)
    taken = sum(points.for_posting("Refund", 3_350, 150, EARN) for _ in range(3))
    assert earned == 150
    assert -taken <= earned


def test_reversal_of_a_refund_gives_its_points_back() -> None:
    """Reversing a refund re-credits what the refund took back."""
    assert points.for_posting("Refund", 5_000, 200, EARN, is_reversal=True) == 100


def test_reversal_of_a_type_outside_earn_on_is_zero() -> None:
    """A payment earned nothing, so reversing it takes nothing."""
    assert points.for_posting("Payment", 5_000, 200, EARN, is_reversal=True) == 0


def test_zero_rate_earns_nothing_and_tiny_amounts_round_to_zero() -> None:
    """rate 0 gives 0; 99 minor units at 1% is 0.99 points, floored to 0."""
    assert points.for_posting("Purchase", 5_000, 0, EARN) == 0
    assert points.for_posting("Purchase", 99, 100, EARN) == 0


@pytest.mark.parametrize(
    ("posting_type", "earn_on"),
    [("Chargeback", EARN), ("purchase", EARN), ("Purchase", "Purchase"), ("Purchase", ("Bonus",))],
)
def test_unknown_types_are_refused(posting_type: str, earn_on: object) -> None:
    """Unknown posting types, a bare string for earnOn and unknown earning types raise."""
    with pytest.raises(points.PointsError):
        points.for_posting(posting_type, 1_000, 100, earn_on)  # type: ignore[arg-type]


def test_amounts_above_the_ledger_bound_are_refused() -> None:
    """Amounts beyond 10^15 minor units cannot come from the ledger and are refused."""
    with pytest.raises(points.PointsError):
        points.for_posting("Purchase", 10**15 + 1, 100, EARN)
