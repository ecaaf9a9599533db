"""Posting decisions outside the ledger: card phases and time to live."""

from __future__ import annotations

import datetime
import re
from typing import Any

import pytest

from fintech_operator import posting_rules
from fintech_operator.ledger import model

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


CARD = "card:ns/c1:USD"
OTHER_CARD = "card:other-ns/victim:USD"
SETTLEMENT = "system:network_settlement:USD"
FEES = "system:fee_revenue:USD"
D, C = model.Direction.DEBIT, model.Direction.CREDIT


def line(account: str, direction: model.Direction, amount: int, currency: str = "USD") -> Any:
    return model.Line(account, direction, amount, currency)


def test_explicit_entries_may_split_the_counter_side_across_system_accounts() -> None:
    """A purchase of 50.00 with 1.00 of interchange kept as fee revenue is accepted."""
    lines = [line(CARD, D, 5000), line(SETTLEMENT, C, 4900), line(FEES, C, 100)]
    posting_rules.check_explicit_entries(lines, CARD, "Purchase", 5000, "USD")
    credit = [line(CARD, C, 700), line(SETTLEMENT, D, 700)]
    posting_rules.check_explicit_entries(credit, CARD, "Adjustment", 700, "USD")


@pytest.mark.parametrize(
    ("lines", "posting_type", "amount", "reason", "says"),
    [
        # Another card, even in another namespace: never.
        ([line(OTHER_CARD, D, 100), line(SETTLEMENT, C, 100)], "Purchase", 100,
         "AccountNotAllowed", OTHER_CARD),
        ([line(CARD, D, 100), line(OTHER_CARD, C, 100)], "Purchase", 100,
         "AccountNotAllowed", OTHER_CARD),
        # The card must move, by exactly spec.amount, in the type's direction.
        ([line(SETTLEMENT, D, 100), line(FEES, C, 100)], "Purchase", 100,
         "InvalidSpec", "one direction"),
        ([line(CARD, D, 1), line(SETTLEMENT, C, 1)], "Purchase", 10**9,
         "InvalidSpec", "spec.amount"),
        ([line(CARD, C, 100), line(SETTLEMENT, D, 100)], "Purchase", 100,
         "InvalidSpec", "debit"),
        ([line(CARD, D, 100), line(SETTLEMENT, C, 100)], "Payment", 100,
         "InvalidSpec", "credit"),
        ([line(CARD, D, 100), line(CARD, C, 50), line(SETTLEMENT, C, 50)], "Adjustment", 50,
         "InvalidSpec", "one direction"),
        # No money moved between system accounts on the side.
        ([line(CARD, D, 100), line(SETTLEMENT, C, 1100), line(FEES, D, 1000)], "Purchase",
         100, "InvalidSpec", "other side"),
        ([line(CARD, D, 100, "EUR"), line("system:network_settlement:EUR", C, 100, "EUR")],
         "Purchase", 100, "CurrencyMismatch", "USD"),
    ],
)  # fmt: skip
def test_explicit_entries_that_break_the_rules_are_refused(
    lines: list[model.Line], posting_type: str, amount: int, reason: str, says: str
) -> None:
    with pytest.raises(posting_rules.SpecRefused, match=re.escape(says)) as refused:
        posting_rules.check_explicit_entries(lines, CARD, posting_type, amount, "USD")
    assert refused.value.reason == reason


def journal(kind: model.PostingKind, lines: list[model.Line], reverses: int | None = None) -> Any:
    return model.Journal(
        id=7, idempotency_key="ns/p", request_hash="h", kind=kind, reference=None,
        occurred_at=T0, posted_at=T0, reverses_journal_id=reverses, metadata={},
        lines=tuple(lines),
    )  # fmt: skip


@pytest.mark.parametrize(
    ("kind", "acts_as"),
    [
        (model.PostingKind.PURCHASE, "Refund"),
        (model.PostingKind.FEE, "Refund"),
        (model.PostingKind.PAYMENT, "Purchase"),
        (model.PostingKind.REFUND, "Purchase"),
        (model.PostingKind.ADJUSTMENT, "Adjustment"),
    ],
)
def test_a_reversal_obeys_the_card_rule_of_the_opposite_movement(
    kind: model.PostingKind, acts_as: str
) -> None:
    original = journal(kind, [line(CARD, D, 4000), line(SETTLEMENT, C, 4000)])
    assert posting_rules.check_reversal(original, CARD, 4000, "USD") == acts_as


@pytest.mark.parametrize(
    ("card", "amount", "currency", "reverses", "reason"),
    [
        (CARD, 1, "USD", None, "InvalidSpec"),  # a partial reversal is not a reversal
        (CARD, 4000, "EUR", None, "InvalidSpec"),
        ("card:ns/c2:USD", 4000, "USD", None, "InvalidSpec"),  # another card's journal
        (CARD, 4000, "USD", 3, "NotReversible"),  # the original is itself a reversal
    ],
)
def test_a_reversal_that_disagrees_with_its_original_is_refused(
    card: str, amount: int, currency: str, reverses: int | None, reason: str
) -> None:
    original = journal(
        model.PostingKind.PURCHASE, [line(CARD, D, 4000), line(SETTLEMENT, C, 4000)], reverses
    )
    with pytest.raises(posting_rules.SpecRefused) as refused:
        posting_rules.check_reversal(original, card, amount, currency)
    assert refused.value.reason == reason
