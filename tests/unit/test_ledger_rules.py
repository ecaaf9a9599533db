"""Pure ledger rules and invariant checks: no server, no clock."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest

from fintech_operator.ledger import engine, model, rules

CARD = "card:default/alice:USD"
T0 = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
K = model.PostingKind
D = model.Direction


def purchase(amount_minor: int = 1250, /, **changes: object) -> model.PostingRequest:
    request = model.PostingRequest(
        idempotency_key="default/p1",
        kind=K.PURCHASE,
        lines=rules.lines_for(K.PURCHASE, CARD, amount_minor, "USD"),
        occurred_at=T0,
        reference="ref-1",
        metadata={"merchant": {"name": "Cafe", "mcc": "5814"}},
    )
    return dataclasses.replace(request, **changes)  # type: ignore[arg-type]


# --- Posting rules ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "card_side", "counterpart"),
    [
        (K.PURCHASE, D.DEBIT, "system:network_settlement:USD"),
        (K.REFUND, D.CREDIT, "system:network_settlement:USD"),
        (K.PAYMENT, D.CREDIT, "system:cash:USD"),
        (K.FEE, D.DEBIT, "system:fee_revenue:USD"),
        (K.ADJUSTMENT, D.DEBIT, "system:adjustments:USD"),
    ],
)
def test_lines_for_each_kind(kind: model.PostingKind, card_side: D, counterpart: str) -> None:
    """Each kind moves the card on its documented side against its system account, balanced."""
    lines = rules.lines_for(kind, CARD, 500, "USD")
    assert lines == (
        model.Line(CARD, card_side, 500, "USD"),
        model.Line(counterpart, card_side.opposite(), 500, "USD"),
    )
    model.check_balanced(lines)


def test_lines_for_accepts_api_strings() -> None:
    """Handlers pass ``spec.type`` as a string; it maps onto the same rule."""
    from_api = rules.lines_for("Purchase", CARD, 1, "USD")  # type: ignore[arg-type]
    assert from_api == rules.lines_for(K.PURCHASE, CARD, 1, "USD")


def test_lines_for_refuses_reversal_and_unknown_kinds() -> None:
    """Reversals are built from the original journal, never from a rule."""
    with pytest.raises(model.InvalidRequest):
        rules.lines_for(K.REVERSAL, CARD, 1, "USD")
    with pytest.raises(model.InvalidRequest, match="Chargeback"):
        rules.lines_for("Chargeback", CARD, 1, "USD")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("amount", "error"),
    [
        (12.5, model.InvalidAmount),
        (12.0, model.InvalidAmount),
        (True, model.InvalidAmount),
        (Decimal("12"), model.InvalidAmount),
        ("12", model.InvalidAmount),
        (None, model.InvalidAmount),
        (0, model.InvalidAmount),
        (-1, model.InvalidAmount),
        (model.AMOUNT_MINOR_MAX + 1, model.InvalidAmount),
    ],
)
def test_line_refuses_bad_amounts(amount: object, error: type[model.LedgerError]) -> None:
    """Invariant 4: only positive ints of minor units are money; bool, float, Decimal are not."""
    with pytest.raises(error):
        model.Line(CARD, D.DEBIT, amount, "USD")  # type: ignore[arg-type]


@pytest.mark.parametrize("currency", ["usd", "US", "USDX", "US1", "ÜSD", " USD", 840, None])
def test_line_refuses_bad_currencies(currency: object) -> None:
    """A currency is three upper-case ASCII letters, nothing else."""
    with pytest.raises(model.InvalidCurrency):
        model.Line(CARD, D.DEBIT, 100, currency)  # type: ignore[arg-type]


def test_line_refuses_bad_direction_and_account() -> None:
    """Directions are debit or credit; account codes are non-empty printable text."""
    with pytest.raises(model.InvalidRequest, match="direction"):
        model.Line(CARD, "up", 100, "USD")  # type: ignore[arg-type]
    with pytest.raises(model.InvalidRequest):
        model.Line("", D.DEBIT, 100, "USD")
    with pytest.raises(model.InvalidRequest):
        model.Line("card:a\nb:USD", D.DEBIT, 100, "USD")
    assert model.Line(CARD, "debit", 1, "USD").direction is D.DEBIT  # type: ignore[arg-type]


def test_error_reasons_are_stable_and_unique() -> None:
    """Handlers copy ``reason`` into status; it is the class name and never shared."""
    classes: list[type[model.LedgerError]] = [model.LedgerError, *_subclasses(model.LedgerError)]
    assert all(cls.reason == cls.__name__ for cls in classes)
    assert len({cls.reason for cls in classes}) == len(classes)


def _subclasses(cls: type[model.LedgerError]) -> list[type[model.LedgerError]]:
    found: list[type[model.LedgerError]] = []
    for sub in cls.__subclasses__():
        found += [sub, *_subclasses(sub)]
    return found


# --- Balance validation -------------------------------------------------------------------------


def test_balanced_lines_pass_including_multi_currency() -> None:
    """Balance is per currency: two balanced currencies in one journal are fine."""
    model.check_balanced(
        [
            model.Line("a:x:USD", D.DEBIT, 100, "USD"),
            model.Line("b:x:USD", D.CREDIT, 60, "USD"),
            model.Line("c:x:USD", D.CREDIT, 40, "USD"),
            model.Line("a:x:EUR", D.DEBIT, 90, "EUR"),
            model.Line("b:x:EUR", D.CREDIT, 90, "EUR"),
        ]
    )


@pytest.mark.parametrize(
    "lines",
    [
        [],
        [model.Line(CARD, D.DEBIT, 100, "USD")],
        [model.Line(CARD, D.DEBIT, 100, "USD"), model.Line("s:x:USD", D.CREDIT, 99, "USD")],
        [model.Line(CARD, D.DEBIT, 100, "USD"), model.Line("s:x:USD", D.DEBIT, 100, "USD")],
        # Equal totals, but in different currencies: not balanced.
        [model.Line(CARD, D.DEBIT, 100, "USD"), model.Line("s:x:EUR", D.CREDIT, 100, "EUR")],
        [model.Line(CARD, D.DEBIT, 1, "USD"), model.Line("s:x:USD", D.CREDIT, 1, "USD")] * 33,
    ],
)
def test_unbalanced_lines_are_refused(lines: list[model.Line]) -> None:
    """Invariant 1 in code: fewer than two lines, any per-currency difference, or too many."""
    with pytest.raises(model.Unbalanced):
        model.check_balanced(lines)
    with pytest.raises(model.Unbalanced):
        rules.validate_explicit(lines)
    with pytest.raises(model.Unbalanced):
        purchase(lines=lines)


def test_validate_explicit_accepts_balanced_and_refuses_non_lines() -> None:
    """Explicit entries are any balanced set of valid lines, returned as an immutable tuple."""
    lines = [
        model.Line("system:adjustments:USD", D.DEBIT, 5, "USD"),
        model.Line(CARD, D.CREDIT, 5, "USD"),
    ]
    assert rules.validate_explicit(lines) == tuple(lines)
    with pytest.raises(model.InvalidRequest):
        rules.validate_explicit([*lines, {"account": CARD}])  # type: ignore[list-item]


def test_posting_request_refuses_bad_fields() -> None:
    """Every PostingRequest field is checked, with a typed error, before any I/O."""
    with pytest.raises(model.InvalidRequest, match="timezone"):
        purchase(occurred_at=datetime(2024, 3, 1, 12, 0))
    with pytest.raises(model.InvalidRequest, match="reversals"):
        purchase(kind=K.REVERSAL)
    with pytest.raises(model.InvalidRequest, match="kind"):
        purchase(kind="Chargeback")
    with pytest.raises(model.InvalidRequest, match="idempotency_key"):
        purchase(idempotency_key="")
    with pytest.raises(model.InvalidRequest, match="idempotency_key"):
        purchase(idempotency_key="k" * 513)
    with pytest.raises(model.InvalidRequest, match="JSON"):
        purchase(metadata={"when": T0})
    with pytest.raises(model.InvalidRequest, match="JSON"):
        purchase(metadata={"ratio": float("nan")})
    with pytest.raises(model.InvalidRequest, match="larger"):
        purchase(metadata={"blob": "x" * model.METADATA_BYTES_MAX})
    with pytest.raises(model.InvalidRequest, match="reference"):
        purchase(reference="")
    assert purchase(kind="Purchase").kind is K.PURCHASE


def test_posting_request_refuses_bad_events_and_guards() -> None:
    """Events need unique ids; a guard must watch one of the posting's own accounts."""
    event = model.OutboxEvent(uuid.uuid4(), "postings", "k", {"a": 1})
    with pytest.raises(model.InvalidRequest, match="unique"):
        purchase(events=[event, event])
    with pytest.raises(model.InvalidRequest, match="at most"):
        purchase(events=[dataclasses.replace(event, event_id=uuid.uuid4()) for _ in range(17)])
    guard = model.SpendGuard("card:default/bob:USD", 100, model.SpendInterval.DAILY, T0)
    with pytest.raises(model.InvalidRequest, match="guarded account"):
        purchase(guard=guard)


def test_outbox_event_refuses_bad_fields() -> None:
    """Outbox rows are checked before the transaction that writes them."""
    with pytest.raises(model.InvalidRequest, match="uuid"):
        model.OutboxEvent("not-a-uuid", "postings", None, {})  # type: ignore[arg-type]
    with pytest.raises(model.InvalidRequest, match="topic"):
        model.OutboxEvent(uuid.uuid4(), "", None, {})
    with pytest.raises(model.InvalidRequest, match="headers"):
        model.OutboxEvent(uuid.uuid4(), "postings", None, {}, {"n": 1})  # type: ignore[dict-item]
    with pytest.raises(model.InvalidRequest, match="payload"):
        model.OutboxEvent(uuid.uuid4(), "postings", None, [1])  # type: ignore[arg-type]


# --- Reversals ----------------------------------------------------------------------------------


def test_reversal_lines_swap_every_direction() -> None:
    """A reversal moves the same amounts the other way; twice gives back the original."""
    lines = rules.lines_for(K.PURCHASE, CARD, 700, "USD")
    reversed_lines = rules.reversal_lines(lines)
    assert [line.direction for line in reversed_lines] == [D.CREDIT, D.DEBIT]
    assert [line.amount_minor for line in reversed_lines] == [700, 700]
    assert rules.reversal_lines(reversed_lines) == lines
    model.check_balanced(reversed_lines)


# --- Request hashes -----------------------------------------------------------------------------


def test_request_hash_is_pinned() -> None:
    """The canonical form never drifts silently: a change would turn retries into conflicts."""
    assert rules.request_hash(purchase()) == (
        "f9a658e19a8e1752c0342378fcae06554429d228d9430d34c4be15493fa395a6"
    )


def test_request_hash_ignores_order_zones_events_and_guard() -> None:
    """Same meaning, same hash: line order, metadata key order, time zone, events, guard."""
    base = purchase()
    same = [
        purchase(lines=tuple(reversed(base.lines))),
        purchase(metadata={"merchant": {"mcc": "5814", "name": "Cafe"}}),
        purchase(occurred_at=T0.astimezone(timezone(timedelta(hours=-5)))),
        purchase(events=[model.OutboxEvent(uuid.uuid4(), "postings", None, {})]),
        purchase(guard=model.SpendGuard(CARD, 10, model.SpendInterval.DAILY, T0)),
        purchase(idempotency_key="other"),  # The key is the lookup, not part of the request.
    ]
    assert {rules.request_hash(request) for request in same} == {rules.request_hash(base)}


@pytest.mark.parametrize(
    "changes",
    [
        {"lines": rules.lines_for(K.PURCHASE, CARD, 1251, "USD")},
        {"lines": rules.lines_for(K.FEE, CARD, 1250, "USD"), "kind": K.FEE},
        {"reference": "ref-2"},
        {"reference": None},
        {"occurred_at": T0 + timedelta(microseconds=1)},
        {"metadata": {}},
    ],
)
def test_request_hash_changes_with_content(changes: dict[str, object]) -> None:
    """Anything the journal records changes the hash, so a reused key is caught."""
    assert rules.request_hash(purchase(**changes)) != rules.request_hash(purchase())


def test_reversal_request_hash_depends_on_journal_and_reason() -> None:
    """A reversal request is identified by the journal it reverses and its reason."""
    first = rules.reversal_request_hash(1, "duplicate")
    assert first == rules.reversal_request_hash(1, "duplicate")
    assert first != rules.reversal_request_hash(2, "duplicate")
    assert first != rules.reversal_request_hash(1, "fraud")
    assert len(first) == 64


# --- Spend windows and limits -------------------------------------------------------------------

PLUS5 = timezone(timedelta(hours=5))


@pytest.mark.parametrize(
    ("interval", "now", "start"),
    [
        (model.SpendInterval.PER_TRANSACTION, T0, T0),
        (model.SpendInterval.DAILY, T0, datetime(2024, 3, 1, tzinfo=UTC)),
        (model.SpendInterval.MONTHLY, T0, datetime(2024, 3, 1, tzinfo=UTC)),
        (model.SpendInterval.LIFETIME, T0, None),
        # 01:30 at +05:00 is 20:30 UTC the day before, in the previous (leap-year) month.
        (
            model.SpendInterval.DAILY,
            datetime(2024, 3, 1, 1, 30, tzinfo=PLUS5),
            datetime(2024, 2, 29, tzinfo=UTC),
        ),
        (
            model.SpendInterval.MONTHLY,
            datetime(2024, 3, 1, 1, 30, tzinfo=PLUS5),
            datetime(2024, 2, 1, tzinfo=UTC),
        ),
        (
            model.SpendInterval.MONTHLY,
            datetime(2024, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
            datetime(2024, 12, 1, tzinfo=UTC),
        ),
    ],
)
def test_spend_window_start(
    interval: model.SpendInterval, now: datetime, start: datetime | None
) -> None:
    """Windows are UTC calendar days and months; Lifetime is unbounded."""
    assert rules.spend_window_start(interval, now) == start


def test_spend_window_refuses_naive_now_and_unknown_intervals() -> None:
    """A naive clock would put the window in an unknown zone; intervals are the API's four."""
    with pytest.raises(model.InvalidRequest):
        rules.spend_window_start(model.SpendInterval.DAILY, datetime(2024, 3, 1))
    with pytest.raises(model.InvalidRequest, match="Weekly"):
        rules.spend_window_start("Weekly", T0)  # type: ignore[arg-type]


def test_requested_spend_counts_purchase_debits_only() -> None:
    """Only spend kinds count, and only their debits to the guarded account."""
    assert rules.requested_spend(purchase(900), CARD) == 900
    assert rules.requested_spend(purchase(900), "system:network_settlement:USD") == 0
    refund = purchase(kind=K.REFUND, lines=rules.lines_for(K.REFUND, CARD, 900, "USD"))
    assert rules.requested_spend(refund, CARD) == 0
    fee = purchase(kind=K.FEE, lines=rules.lines_for(K.FEE, CARD, 900, "USD"))
    assert rules.requested_spend(fee, CARD) == 0


def test_check_spend_allows_up_to_the_limit_and_no_further() -> None:
    """The limit itself is reachable; one minor unit more is refused, with the numbers."""
    guard = model.SpendGuard(CARD, 1000, model.SpendInterval.DAILY, T0)
    rules.check_spend(guard, 600, 400)
    with pytest.raises(model.SpendLimitExceeded) as refused:
        rules.check_spend(guard, 600, 401)
    assert (
        refused.value.limit_minor,
        refused.value.spent_minor,
        refused.value.requested_minor,
    ) == (1000, 600, 401)
    # What counts is posted spend and open holds together, and the message says so.
    assert str(refused.value) == f"Daily limit 1000 of {CARD}: 600 spent or held, 401 requested"
    zero = model.SpendGuard(CARD, 0, model.SpendInterval.LIFETIME, T0)
    with pytest.raises(model.SpendLimitExceeded):
        rules.check_spend(zero, 0, 1)


@pytest.mark.parametrize(
    "changes",
    [
        {"limit_minor": -1},
        {"limit_minor": 10.0},
        {"limit_minor": True},
        {"now": datetime(2024, 1, 1)},
        {"interval": "Weekly"},
    ],
)
def test_spend_guard_refuses_bad_fields(changes: dict[str, object]) -> None:
    """A guard with a bad limit, clock or interval never reaches the database."""
    fields: dict[str, object] = {
        "account_code": CARD,
        "limit_minor": 10,
        "interval": "Daily",
        "now": T0,
    }
    with pytest.raises(model.InvalidRequest):
        model.SpendGuard(**(fields | changes))  # type: ignore[arg-type]


# --- Accounts, balances, limits -----------------------------------------------------------------


def test_account_codes() -> None:
    """Codes name kind and currency; names with spaces or empty parts are refused."""
    assert model.card_account_code("default", "alice", "USD") == CARD
    assert model.system_account_code(model.SystemAccount.CASH, "EUR") == "system:cash:EUR"
    assert model.parse_system_code("system:cash:EUR") == (model.SystemAccount.CASH, "EUR")
    for not_system in (
        "system:vault:EUR",
        "card:default/alice:USD",
        "system:cash:eur",
        "system:cash",
    ):
        assert model.parse_system_code(not_system) is None
    for bad in (("default", "al ice"), ("", "alice"), ("default", "")):
        with pytest.raises(model.InvalidRequest):
            model.card_account_code(*bad, "USD")
    with pytest.raises(model.InvalidRequest):
        model.check_account_code("card:default/alice:USD", model.AccountKind.CARD, "EUR")
    with pytest.raises(model.InvalidRequest):
        model.check_account_code("card::USD", model.AccountKind.CARD, "USD")


def test_balance_signs_by_normal_balance_and_refuses_negatives() -> None:
    """A debit-normal card shows what is owed; a credit-normal account the reverse."""
    card = model.Balance(CARD, "USD", D.DEBIT, 1500, 500, 3)
    settlement = model.Balance("system:network_settlement:USD", "USD", D.CREDIT, 500, 1500, 3)
    assert (card.balance_minor, settlement.balance_minor) == (1000, 1000)
    with pytest.raises(model.InvariantViolation):
        model.Balance(CARD, "USD", D.DEBIT, -1, 0, 0)
    with pytest.raises(model.InvariantViolation):
        model.Balance(CARD, "USD", D.DEBIT, 1.5, 0, 1)  # type: ignore[arg-type]


def test_system_accounts_all_have_a_normal_balance() -> None:
    """Every system account is opened with a documented normal balance."""
    assert set(model.SYSTEM_NORMAL_BALANCE) == set(model.SystemAccount)


@pytest.mark.parametrize(
    "changes",
    [
        {"attempts_max": 0},
        {"attempts_max": 21},
        {"backoff_base_ms": 0},
        {"backoff_base_ms": 300, "backoff_max_ms": 200},
        {"lock_timeout_ms": 0},
        {"lock_timeout_ms": 20_000, "statement_timeout_ms": 10_000},
        {"pool_timeout_seconds": 0},
    ],
)
def test_engine_limits_refuse_bad_settings(changes: dict[str, object]) -> None:
    """Bad limits fail at start-up with a clear message (house rule 5)."""
    with pytest.raises(ValueError, match=r"must|need"):
        engine.Limits(**changes)  # type: ignore[arg-type]
