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


def test_ttl_is_due_only_after_the_full_period() -> None:
    """A TTL of 60 s is not due at 59 s and is due at 60 s."""
    assert not posting_rules.ttl_due(T0, 60, T0 + datetime.timedelta(seconds=59))
    assert posting_rules.ttl_due(T0, 60, T0 + datetime.timedelta(seconds=60))


def test_no_ttl_or_unfinished_is_never_due() -> None:
    """Without a TTL or a finish time nothing is ever deleted."""
    later = T0 + datetime.timedelta(days=365)
    assert not posting_rules.ttl_due(None, 1, later)
    assert not posting_rules.ttl_due(T0, None, later)


def test_negative_ttl_is_refused() -> None:
    """A negative TTL is a bug upstream (the schema forbids it), never 'delete now'."""
    with pytest.raises(ValueError, match="negative"):
        posting_rules.ttl_due(T0, -1, T0)


def test_spec_hash_ignores_order_and_ttl_but_not_amounts() -> None:
    """Key order and TTL do not change the hash; any recorded field does."""
    base = {"card": "c", "type": "Purchase", "amount": 100, "currency": "USD"}
    same = {"currency": "USD", "amount": 100, "type": "Purchase", "card": "c",
            "ttlSecondsAfterFinished": 5}  # fmt: skip
    assert posting_rules.spec_hash(base) == posting_rules.spec_hash(same)
    assert posting_rules.spec_hash(base) != posting_rules.spec_hash({**base, "amount": 101})
