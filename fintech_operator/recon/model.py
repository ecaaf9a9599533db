"""Pure types of a reconciliation run: records, tolerances, findings, summary (no I/O).

A run compares external settlement records with the ledger and runs internal checks. Every
discrepancy it finds is a *finding* with a check, a kind and a severity: ``error`` findings are
the exceptions finance must look at; ``info`` findings record matches that needed a tolerance
or several postings, so the report says how each reference was matched.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
from collections.abc import Callable, Iterator, Mapping
from typing import Final

# The journals table allows references up to 512 characters (Posting.spec.reference up to 128).
REFERENCE_MAX_LENGTH: Final = 512
# Same bound as the API's amounts: far above any real amount, far below int64 overflow.
AMOUNT_MINOR_MAX: Final = 10**15


class Check(enum.StrEnum):
    """The checks a run can perform; all by default."""

    SETTLEMENT = "Settlement"
    TRIAL_BALANCE = "TrialBalance"
    REWARDS = "Rewards"
    EVENTS = "Events"


class Severity(enum.StrEnum):
    ERROR = "error"
    INFO = "info"


class Kind(enum.StrEnum):
    """Kinds of findings, per check. The set is fixed and documented in docs/reconciliation.md."""

    # Settlement, errors.
    MISSING_IN_LEDGER = "MissingInLedger"
    MISSING_IN_SOURCE = "MissingInSource"
    AMOUNT_MISMATCH = "AmountMismatch"
    CURRENCY_MISMATCH = "CurrencyMismatch"
    TIME_MISMATCH = "TimeMismatch"
    DUPLICATE_RECORD = "DuplicateRecord"
    # Settlement, information about a match.
    WITHIN_TOLERANCE = "WithinTolerance"
    PARTIAL_CAPTURE = "PartialCapture"
    # Trial balance.
    UNBALANCED_JOURNAL = "UnbalancedJournal"
    CURRENCY_IMBALANCE = "CurrencyImbalance"
    BALANCE_DRIFT = "BalanceDrift"
    # Rewards.
    POINTS_MISMATCH = "PointsMismatch"
    ORPHAN_REWARDS = "OrphanRewards"
    UNREADABLE_EVENT = "UnreadableEvent"
    # Events.
    UNPUBLISHED_EVENT = "UnpublishedEvent"
    UNAPPLIED_EVENT = "UnappliedEvent"


INFO_KINDS: Final = frozenset({Kind.WITHIN_TOLERANCE, Kind.PARTIAL_CAPTURE})

CHECK_OF_KIND: Final[Mapping[Kind, Check]] = {
    **dict.fromkeys(
        (
            Kind.MISSING_IN_LEDGER,
            Kind.MISSING_IN_SOURCE,
            Kind.AMOUNT_MISMATCH,
            Kind.CURRENCY_MISMATCH,
            Kind.TIME_MISMATCH,
            Kind.DUPLICATE_RECORD,
            Kind.WITHIN_TOLERANCE,
            Kind.PARTIAL_CAPTURE,
        ),
        Check.SETTLEMENT,
    ),
    Kind.UNBALANCED_JOURNAL: Check.TRIAL_BALANCE,
    Kind.CURRENCY_IMBALANCE: Check.TRIAL_BALANCE,
    Kind.BALANCE_DRIFT: Check.TRIAL_BALANCE,
    Kind.POINTS_MISMATCH: Check.REWARDS,
    Kind.ORPHAN_REWARDS: Check.REWARDS,
    Kind.UNREADABLE_EVENT: Check.REWARDS,
    Kind.UNPUBLISHED_EVENT: Check.EVENTS,
    Kind.UNAPPLIED_EVENT: Check.EVENTS,
}


def severity_of(kind: Kind) -> Severity:
    return Severity.INFO if kind in INFO_KINDS else Severity.ERROR


class SourceError(Exception):
    """The source cannot be read or parsed: the run fails with this reason and message.

    ``reason`` is a CamelCase word for ``status.reason`` and the Event; the message names the
    place (line, key, URL) so a person can fix the file.
    """

    def __init__(self, reason: str, message: str, line_no: int | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        # Where in the source it was found, when it has a place: a bulk load that meets it
        # still reports an earlier bad record first, as reading record by record would.
        self.line_no = line_no


class Interrupted(Exception):
    """The run was asked to stop (operator shutdown); nothing it did was committed."""


@dataclasses.dataclass(frozen=True)
class TextSource:
    """A source file as text, loaded in bulk: ``chunks`` opens it (again, when a load must
    start over) and yields its text in pieces; ``format`` is ``csv`` or ``json``."""

    format: str
    chunks: Callable[[], Iterator[str]]
    records_max: int


@dataclasses.dataclass(frozen=True)
class Record:
    """One external settlement record. ``line_no`` is where it starts in the source (1-based)."""

    line_no: int
    reference: str
    amount_minor: int
    currency: str
    occurred_at: datetime.datetime


@dataclasses.dataclass(frozen=True)
class Tolerances:
    """How far a record may be from the ledger and still match."""

    amount_minor: int = 0
    time_seconds: int = 86_400

    def __post_init__(self) -> None:
        if type(self.amount_minor) is not int or not 0 <= self.amount_minor <= AMOUNT_MINOR_MAX:
            raise ValueError(f"amount tolerance must be an int in 0..{AMOUNT_MINOR_MAX}")
        if type(self.time_seconds) is not int or not 0 <= self.time_seconds <= 366 * 86_400:
            raise ValueError("time tolerance must be an int number of seconds in 0..31622400")


@dataclasses.dataclass(frozen=True)
class Window:
    """The ledger period compared, half-open: ``start <= occurred_at < end``."""

    start: datetime.datetime
    end: datetime.datetime

    def __post_init__(self) -> None:
        if self.start.tzinfo is None or self.end.tzinfo is None:
            raise ValueError("window bounds need a time zone")
        if not self.start < self.end:
            raise ValueError("window start must be before its end")


@dataclasses.dataclass(frozen=True)
class Plan:
    """Everything a run does, decided from the spec before any I/O."""

    checks: frozenset[Check]
    tolerances: Tolerances
    window: Window | None
    event_lag_seconds_max: int
    dry_run: bool
    # False: only the run's own namespace's money (DESIGN.md invariant 10); True: the whole
    # ledger, which the handler allows only in the administrator's one namespace for it.
    cluster_wide: bool = False


@dataclasses.dataclass(frozen=True)
class CheckResult:
    result: str  # Passed | Failed | Skipped
    exceptions: int


@dataclasses.dataclass(frozen=True)
class Summary:
    """Counts reported in ``status.summary``; built by :func:`build_summary` only."""

    records_read: int
    ledger_references: int
    matched: int
    matched_within_tolerance: int
    partial_captures: int
    amount_mismatches: int
    currency_mismatches: int
    time_mismatches: int
    missing_in_ledger: int
    missing_in_source: int
    duplicates: int
    exceptions: int
    checks: Mapping[Check, CheckResult]

    def to_api(self) -> dict[str, object]:
        """The camelCase JSON stored in the run row and in ``status.summary``."""
        return {
            "recordsRead": self.records_read,
            "ledgerReferences": self.ledger_references,
            "matched": self.matched,
            "matchedWithinTolerance": self.matched_within_tolerance,
            "partialCaptures": self.partial_captures,
            "amountMismatches": self.amount_mismatches,
            "currencyMismatches": self.currency_mismatches,
            "timeMismatches": self.time_mismatches,
            "missingInLedger": self.missing_in_ledger,
            "missingInSource": self.missing_in_source,
            "duplicates": self.duplicates,
            "exceptions": self.exceptions,
            "checks": {
                _CHECK_KEYS[check]: {"result": found.result, "exceptions": found.exceptions}
                for check, found in self.checks.items()
            },
        }


_CHECK_KEYS: Final[Mapping[Check, str]] = {
    Check.SETTLEMENT: "settlement",
    Check.TRIAL_BALANCE: "trialBalance",
    Check.REWARDS: "rewards",
    Check.EVENTS: "events",
}


def build_summary(
    plan_checks: frozenset[Check],
    counts: Mapping[str, int],
    *,
    records_read: int,
    ledger_references: int,
    matched: int,
) -> Summary:
    """Turn per-kind finding counts into the run's summary.

    ``counts`` maps a :class:`Kind` value to how many findings of that kind the run produced;
    an unknown kind or a negative count is a bug in the adapter and raises ``ValueError``
    rather than being dropped from what finance sees.
    """
    by_kind: dict[Kind, int] = dict.fromkeys(Kind, 0)
    for raw_kind, count in counts.items():
        kind = Kind(raw_kind)  # ValueError on an unknown kind.
        if type(count) is not int or count < 0:
            raise ValueError(f"count of {raw_kind} must be a non-negative int, got {count!r}")
        by_kind[kind] += count
    for name, value in (
        ("records_read", records_read),
        ("ledger_references", ledger_references),
        ("matched", matched),
    ):
        if type(value) is not int or value < 0:
            raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    checks = {check: _check_result(check, plan_checks, by_kind) for check in Check}
    errors = sum(n for kind, n in by_kind.items() if severity_of(kind) is Severity.ERROR)
    return Summary(
        records_read=records_read,
        ledger_references=ledger_references,
        matched=matched,
        matched_within_tolerance=by_kind[Kind.WITHIN_TOLERANCE],
        partial_captures=by_kind[Kind.PARTIAL_CAPTURE],
        amount_mismatches=by_kind[Kind.AMOUNT_MISMATCH],
        currency_mismatches=by_kind[Kind.CURRENCY_MISMATCH],
        time_mismatches=by_kind[Kind.TIME_MISMATCH],
        missing_in_ledger=by_kind[Kind.MISSING_IN_LEDGER],
        missing_in_source=by_kind[Kind.MISSING_IN_SOURCE],
        duplicates=by_kind[Kind.DUPLICATE_RECORD],
        exceptions=errors,
        checks=checks,
    )


def _check_result(
    check: Check, plan_checks: frozenset[Check], by_kind: Mapping[Kind, int]
) -> CheckResult:
    errors = sum(
        n
        for kind, n in by_kind.items()
        if CHECK_OF_KIND[kind] is check and severity_of(kind) is Severity.ERROR
    )
    if check not in plan_checks:
        if errors:
            raise ValueError(f"check {check} was not planned but has {errors} findings")
        return CheckResult("Skipped", 0)
    return CheckResult("Failed" if errors else "Passed", errors)


def summary_line(summary: Mapping[str, object]) -> str:
    """One human line for an Event or condition message, from the API form of a summary."""
    checks = summary.get("checks")
    failed = (
        sorted(
            name
            for name, found in checks.items()
            if isinstance(found, Mapping) and found.get("result") == "Failed"
        )
        if isinstance(checks, Mapping)
        else []
    )
    text = (
        f"{summary.get('recordsRead', 0)} records, {summary.get('matched', 0)} matched, "
        f"{summary.get('exceptions', 0)} exceptions"
    )
    return text + (f" (failed: {', '.join(failed)})" if failed else "")
