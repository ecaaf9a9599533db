"""Posting decisions outside the ledger: card phases and time to live."""

from __future__ import annotations

import datetime

import pytest

from fintech_operator import posting_rules

T0 = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)


@pytest.mark.parametrize(
    ("phase", "posting_type", "accepted"),
    [
        ("Active", "Purchase", True),
        ("Active", "Adjustment", True),
        ("Frozen", "Purchase", False),
        ("Frozen", "Fee", False),
        ("Frozen", "Refund", True),
        ("Frozen", "Payment", True),
        ("Closed", "Payment", False),
        ("Closed", "Refund", True),
        ("Rejected", "Refund", False),
        ("PendingReview", "Purchase", False),
        (None, "Purchase", False),
        ("Active", "Chargeback", False),
    ],
)
def test_card_phase_decides_what_a_card_accepts(
    phase: str | None, posting_type: str, accepted: bool
) -> None:
    """Frozen cards take refunds and payments only, closed cards refunds only, others nothing."""
    assert posting_rules.card_accepts(phase, posting_type) is accepted


def test_spec_hash_ignores_order_and_ttl_but_not_amounts() -> None:
    """Key order and TTL do not change the hash; any recorded field does."""
    base = {"card": "c", "type": "Purchase", "amount": 100, "currency": "USD"}
    same = {"currency": "USD", "amount": 100, "type": "Purchase", "card": "c",
            "ttlSecondsAfterFinished": 5}  # fmt: skip
    assert posting_rules.spec_hash(base) == posting_rules.spec_hash(same)
    assert posting_rules.spec_hash(base) != posting_rules.spec_hash({**base, "amount": 101})


def test_ttl_remaining_counts_down_to_zero() -> None:
    """Remaining time is the TTL minus elapsed time, never negative, infinite without a TTL."""
    assert posting_rules.ttl_remaining_seconds(T0, 60, T0 + datetime.timedelta(seconds=45)) == 15
    assert posting_rules.ttl_remaining_seconds(T0, 60, T0 + datetime.timedelta(seconds=99)) == 0
    assert posting_rules.ttl_remaining_seconds(None, 60, T0) == float("inf")
    with pytest.raises(ValueError, match="negative"):
        posting_rules.ttl_remaining_seconds(T0, -1, T0)
