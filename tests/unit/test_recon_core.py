"""Pure reconciliation core: the matching rule, tolerances, windows and the summary builder."""

from __future__ import annotations

import datetime

import pytest

from fintech_operator.recon import matching, model

T0 = datetime.datetime(2024, 3, 1, 12, tzinfo=datetime.UTC)
K = model.Kind


def src(amount: int = 1000, currency: str = "USD", seconds: int = 0) -> matching.SourceSide:
    return matching.SourceSide(amount, currency, T0 + datetime.timedelta(seconds=seconds))


def led(
    amount: int = 1000,
    currencies: frozenset[str] = frozenset({"USD"}),
    postings: int = 1,
    span_seconds: int = 0,
    in_window: bool = True,
) -> matching.LedgerSide:
    return matching.LedgerSide(
        amount, currencies, postings, T0, T0 + datetime.timedelta(seconds=span_seconds), in_window
    )


TOL = model.Tolerances(amount_minor=5, time_seconds=60)


@pytest.mark.parametrize(
    ("source", "ledger", "matched", "kinds"),
    [
        (src(), led(), True, ()),
        (src(), None, False, (K.MISSING_IN_LEDGER,)),
        (None, led(), False, (K.MISSING_IN_SOURCE,)),
        (None, led(in_window=False), False, ()),
        (src(currency="EUR"), led(), False, (K.CURRENCY_MISMATCH,)),
        (src(), led(currencies=frozenset({"USD", "EUR"})), False, (K.CURRENCY_MISMATCH,)),
        (src(1006), led(), False, (K.AMOUNT_MISMATCH,)),
        (src(994), led(), False, (K.AMOUNT_MISMATCH,)),
        (src(1005), led(), True, (K.WITHIN_TOLERANCE,)),
        (src(995), led(), True, (K.WITHIN_TOLERANCE,)),
        (src(seconds=61), led(), False, (K.TIME_MISMATCH,)),
        (src(seconds=-61), led(), False, (K.TIME_MISMATCH,)),
        (src(seconds=60), led(), True, ()),
        (src(seconds=150), led(postings=2, span_seconds=100), True, (K.PARTIAL_CAPTURE,)),
        (src(1003), led(postings=3), True, (K.WITHIN_TOLERANCE, K.PARTIAL_CAPTURE)),
        (src(-700), led(-700), True, ()),
        (src(700), led(-700), False, (K.AMOUNT_MISMATCH,)),
        # Currency is judged before amount: a EUR record is not "off by" a USD amount.
        (src(5, currency="EUR"), led(1000), False, (K.CURRENCY_MISMATCH,)),
    ],
)
def test_classify(
    source: matching.SourceSide | None,
    ledger: matching.LedgerSide | None,
    matched: bool,
    kinds: tuple[model.Kind, ...],
) -> None:
    """Each branch of the matching rule, including both edges of each tolerance."""
    assert matching.classify(source, ledger, TOL) == matching.Outcome(matched, kinds)


def test_classify_refuses_an_empty_reference() -> None:
    """Neither a record nor postings is a caller bug, never silently "matched"."""
    with pytest.raises(ValueError, match="record or postings"):
        matching.classify(None, None, TOL)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"postings": 0},
        {"currencies": frozenset()},
        {"span_seconds": -1},
    ],
)
def test_ledger_side_refuses_impossible_values(kwargs: dict[str, object]) -> None:
    """A ledger side with no postings, no currency or an inverted time span is refused."""
    with pytest.raises(ValueError, match=r"at least one|must not be after"):
        led(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("amount", "seconds"),
    [(-1, 0), (0, -1), (10**15 + 1, 0), (0, 366 * 86_400 + 1), (1.5, 0), (True, 0), (0, "60")],
)
def test_tolerances_refuse_bad_values(amount: object, seconds: object) -> None:
    """Negative, too large, float, boolean or string tolerances are refused."""
    with pytest.raises(ValueError, match="tolerance must be an int"):
        model.Tolerances(amount, seconds)  # type: ignore[arg-type]


def test_window_needs_zones_and_order() -> None:
    """A window must be time-zone aware and start before it ends."""
    naive = datetime.datetime(2024, 3, 1)
    with pytest.raises(ValueError, match="time zone"):
        model.Window(naive, T0)
    with pytest.raises(ValueError, match="before"):
        model.Window(T0, T0)
    assert model.Window(T0, T0 + datetime.timedelta(seconds=1)).start == T0


ALL = frozenset(model.Check)


def test_summary_counts_kinds_and_checks() -> None:
    """Per-kind counts become the summary fields; info findings are not exceptions; checks not
    planned are Skipped, planned ones Passed or Failed by their own exceptions."""
    summary = model.build_summary(
        frozenset({model.Check.SETTLEMENT, model.Check.REWARDS}),
        {"AmountMismatch": 2, "WithinTolerance": 3, "PartialCapture": 1, "DuplicateRecord": 1},
        records_read=10,
        ledger_references=9,
        matched=6,
    )
    api = summary.to_api()
    assert api["amountMismatches"] == 2
    assert api["matchedWithinTolerance"] == 3
    assert api["partialCaptures"] == 1
    assert api["duplicates"] == 1
    assert api["exceptions"] == 3
    assert api["checks"] == {
        "settlement": {"result": "Failed", "exceptions": 3},
        "trialBalance": {"result": "Skipped", "exceptions": 0},
        "rewards": {"result": "Passed", "exceptions": 0},
        "events": {"result": "Skipped", "exceptions": 0},
    }
    assert model.summary_line(api) == "10 records, 6 matched, 3 exceptions (failed: settlement)"


@pytest.mark.parametrize(
    ("counts", "kwargs", "fragment"),
    [
        ({"NoSuchKind": 1}, {}, "NoSuchKind"),
        ({"AmountMismatch": -1}, {}, "non-negative"),
        ({"AmountMismatch": 1.0}, {}, "non-negative"),
        ({}, {"records_read": -1}, "records_read"),
        ({"PointsMismatch": 1}, {}, "not planned"),
    ],
)
def test_summary_refuses_bad_counts(
    counts: dict[str, object], kwargs: dict[str, int], fragment: str
) -> None:
    """Unknown kinds, negative or float counts, and findings of a check that did not run are
    adapter bugs: the builder refuses them rather than hide them from finance."""
    values = {"records_read": 1, "ledger_references": 1, "matched": 1, **kwargs}
    with pytest.raises(ValueError, match=fragment):
        model.build_summary(frozenset({model.Check.SETTLEMENT}), counts, **values)  # type: ignore[arg-type]


def test_every_kind_belongs_to_one_check() -> None:
    """No finding kind is orphaned: each maps to the check that reports it."""
    assert set(model.CHECK_OF_KIND) == set(model.Kind)
    assert model.severity_of(model.Kind.PARTIAL_CAPTURE) is model.Severity.INFO
    assert model.severity_of(model.Kind.MISSING_IN_SOURCE) is model.Severity.ERROR
    assert set(model.CHECK_OF_KIND.values()) == ALL
