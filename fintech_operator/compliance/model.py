"""Pure types of compliance: policies, check outcomes and AML facts. No I/O, no clock."""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

from fintech_operator import api, decisions
from fintech_operator.ledger import model as ledger_model

_REASON_RE: Final = re.compile(r"[A-Za-z][A-Za-z0-9]*")

# A fact handed to a compliance rule is malformed: a bug in the caller.
InvalidFacts = decisions.InvalidFacts


class Outcome(decisions.RankedOutcome):
    """Result of one check, from best to worst; Alert (AML) never blocks."""

    CLEAR = "Clear"
    ALERT = "Alert"
    REVIEW = "Review"
    REJECT = "Reject"


class CheckKind(enum.StrEnum):
    KYC = "Kyc"
    SANCTIONS = "Sanctions"
    AML = "Aml"


class AlertKind(enum.StrEnum):
    DAILY_THRESHOLD = "DailyThreshold"
    STRUCTURING = "Structuring"


class Policy(decisions.Policy[api.CompliancePolicySpec]):
    """A namespace's compliance rules, or the built-in default (``name`` None)."""


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
        object.__setattr__(self, "detail", self.detail[: decisions.DETAIL_MAX_LENGTH])


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
        decisions.check_subject(self.card, "card")
        for name in ("account_code", "posting_key"):
            value = getattr(self, name)
            if not isinstance(value, str) or not 0 < len(value) <= ledger_model.KEY_LENGTH_MAX:
                raise InvalidFacts(f"{name} must be a non-empty string")
        decisions.check_posting_type(self.kind, "kind")
        decisions.check_amount(self.amount_minor, "amount_minor")
        decisions.check_currency(self.currency, "currency")

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
