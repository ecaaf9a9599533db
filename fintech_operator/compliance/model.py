"""Pure types of compliance: policies, check outcomes and AML facts. No I/O, no clock."""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

from fintech_operator import api
from fintech_operator.ledger import model as ledger_model

BUILTIN_REF: Final = "builtin/default"
DETAIL_MAX_LENGTH: Final = 256

_CURRENCY_RE: Final = re.compile(r"[A-Z]{3}")
_SUBJECT_RE: Final = re.compile(r"[^/\s]+/[^/\s]+")
_REASON_RE: Final = re.compile(r"[A-Za-z][A-Za-z0-9]*")
_POSTING_TYPES: Final = frozenset(t.value for t in api.PostingType)


class InvalidFacts(ValueError):
    """A fact handed to a compliance rule is malformed: a bug in the caller."""


class Outcome(enum.StrEnum):
    """Result of one check, from best to worst; Alert (AML) never blocks."""

    CLEAR = "Clear"
    ALERT = "Alert"
    REVIEW = "Review"
    REJECT = "Reject"

    @property
    def severity(self) -> int:
        return _SEVERITY[self]


_SEVERITY: Final[Mapping[Outcome, int]] = {
    Outcome.CLEAR: 0,
    Outcome.ALERT: 1,
    Outcome.REVIEW: 2,
    Outcome.REJECT: 3,
}


class CheckKind(enum.StrEnum):
    KYC = "Kyc"
    SANCTIONS = "Sanctions"
    AML = "Aml"


class AlertKind(enum.StrEnum):
    DAILY_THRESHOLD = "DailyThreshold"
    STRUCTURING = "Structuring"


@dataclass(frozen=True)
class Policy:
    """A namespace's compliance rules, or the built-in default (``name`` None)."""

    spec: api.CompliancePolicySpec
    namespace: str | None = None
    name: str | None = None

    @property
    def ref(self) -> str:
        if self.namespace is None or self.name is None:
            return BUILTIN_REF
        return f"{self.namespace}/{self.name}"


DEFAULT_POLICY: Final = Policy(spec=api.CompliancePolicySpec())


@dataclass(frozen=True)
class SanctionsHit:
    """The best list entry a name resembles, as shown on the card and stored with the check."""

    name: str
    entry_id: str | None
    program: str | None
    score_bps: int
    exact: bool

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "entryId": self.entry_id,
            "program": self.program,
            "scoreBps": self.score_bps,
            "exact": self.exact,
        }


@dataclass(frozen=True)
class CheckResult:
    """One check's outcome, with a CamelCase reason and what it looked at (for the audit row)."""

    kind: CheckKind
    outcome: Outcome
    reason: str
    detail: str
    inputs: Mapping[str, object] = field(default_factory=dict)
    result: Mapping[str, object] = field(default_factory=dict)
    hit: SanctionsHit | None = None

    def __post_init__(self) -> None:
        if _REASON_RE.fullmatch(self.reason) is None:
            raise InvalidFacts(f"reason must be CamelCase, got {self.reason!r}")
        object.__setattr__(self, "detail", self.detail[:DETAIL_MAX_LENGTH])


def worst(results: Iterable[CheckResult]) -> CheckResult | None:
    """The most severe result (the first of equals), or None when there are none."""
    chosen: CheckResult | None = None
    for result in results:
        if chosen is None or result.outcome.severity > chosen.outcome.severity:
            chosen = result
    return chosen


@dataclass(frozen=True)
class AmlFacts:
    """The posting being monitored. ``card`` is ``<namespace>/<name>``."""

    card: str
    account_code: str
    posting_key: str
    kind: str
    amount_minor: int
    currency: str

    def __post_init__(self) -> None:
        if not isinstance(self.card, str) or _SUBJECT_RE.fullmatch(self.card) is None:
            raise InvalidFacts(f"card must be <namespace>/<name>, got {self.card!r}")
        for name in ("account_code", "posting_key"):
            value = getattr(self, name)
            if not isinstance(value, str) or not 0 < len(value) <= ledger_model.KEY_LENGTH_MAX:
                raise InvalidFacts(f"{name} must be a non-empty string")
        if self.kind not in _POSTING_TYPES:
            raise InvalidFacts(f"kind must be one of {sorted(_POSTING_TYPES)}, got {self.kind!r}")
        if (
            type(self.amount_minor) is not int
            or not 0 < self.amount_minor <= ledger_model.AMOUNT_MINOR_MAX
        ):
            raise InvalidFacts("amount_minor must be a positive int of minor units")
        if not isinstance(self.currency, str) or _CURRENCY_RE.fullmatch(self.currency) is None:
            raise InvalidFacts(f"currency must be three uppercase letters, got {self.currency!r}")

    def to_json(self) -> dict[str, object]:
        return {
            "card": self.card,
            "account": self.account_code,
            "postingKey": self.posting_key,
            "kind": self.kind,
            "amountMinor": self.amount_minor,
            "currency": self.currency,
        }


@dataclass(frozen=True)
class Alert:
    """An AML alert raised by a posting (stored once per card, day, kind and currency)."""

    kind: AlertKind
    card: str
    business_day: str  # ISO date
    currency: str
    total_minor: int
    posting_count: int
    threshold_minor: int
    policy: str
    id: int | None = None  # Row id once stored; None when the day's alert already existed.
