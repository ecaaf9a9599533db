"""The settlement matching rule, stated once in plain Python (pure: no I/O).

The run applies this rule set-wise in PostgreSQL (see ``store._CLASSIFY``); an integration test
feeds random cases through both and proves they agree, so this function is the readable,
unit-tested definition of what the SQL does.

Per reference, after duplicate records were set aside (the first record of a reference, by line,
is the one compared; each further record is one ``DuplicateRecord``):

1. A record with no ledger postings is ``MissingInLedger``.
2. Ledger postings with no record are ``MissingInSource`` when one of them lies in the window
   (postings found only because the window was widened by the time tolerance are not expected
   in this file).
3. A different currency (or ledger postings in several currencies) is ``CurrencyMismatch``.
4. An amount further than the amount tolerance from the ledger's sum is ``AmountMismatch``.
5. A record time outside [first posting - time tolerance, last posting + time tolerance] is
   ``TimeMismatch``.
6. Otherwise the reference matches; a non-zero difference adds ``WithinTolerance`` and several
   postings (partial captures) add ``PartialCapture``, both informational.
"""

from __future__ import annotations

import dataclasses
import datetime

from fintech_operator.recon import model


@dataclasses.dataclass(frozen=True)
class SourceSide:
    """The record compared for one reference."""

    amount_minor: int
    currency: str
    occurred_at: datetime.datetime


@dataclasses.dataclass(frozen=True)
class LedgerSide:
    """The ledger's postings for one reference, summed.

    ``amount_minor`` is what the postings moved on the network settlement account, positive for
    purchases and negative for refunds, the sign convention of settlement files.
    """

    amount_minor: int
    currencies: frozenset[str]
    postings: int
    first_at: datetime.datetime
    last_at: datetime.datetime
    in_window: bool

    def __post_init__(self) -> None:
        if self.postings < 1 or not self.currencies:
            raise ValueError("a ledger side has at least one posting and one currency")
        if self.first_at > self.last_at:
            raise ValueError("first_at must not be after last_at")


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What one reference contributes: whether it matched, and its findings."""

    matched: bool
    kinds: tuple[model.Kind, ...]


def classify(
    source: SourceSide | None, ledger: LedgerSide | None, tolerances: model.Tolerances
) -> Outcome:
    """Apply the rule of this module to one reference."""
    if source is None and ledger is None:
        raise ValueError("a reference needs a record or postings")
    if ledger is None:
        return Outcome(False, (model.Kind.MISSING_IN_LEDGER,))
    if source is None:
        return Outcome(False, (model.Kind.MISSING_IN_SOURCE,) if ledger.in_window else ())
    if ledger.currencies != {source.currency}:
        return Outcome(False, (model.Kind.CURRENCY_MISMATCH,))
    difference = source.amount_minor - ledger.amount_minor
    if abs(difference) > tolerances.amount_minor:
        return Outcome(False, (model.Kind.AMOUNT_MISMATCH,))
    slack = datetime.timedelta(seconds=tolerances.time_seconds)
    if not ledger.first_at - slack <= source.occurred_at <= ledger.last_at + slack:
        return Outcome(False, (model.Kind.TIME_MISMATCH,))
    notes: list[model.Kind] = []
    if difference:
        notes.append(model.Kind.WITHIN_TOLERANCE)
    if ledger.postings > 1:
        notes.append(model.Kind.PARTIAL_CAPTURE)
    return Outcome(True, tuple(notes))
