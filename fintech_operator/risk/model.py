"""Pure types of the risk engine: policies, facts, matches and decisions. No I/O, no clock.

Facts check themselves when built (house rule 6): an amount is a positive ``int`` of minor units,
codes have their ISO shapes. A bad fact is a programming error in the caller, raised as
:class:`InvalidFacts` (a ``ValueError``), never silently assessed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

from fintech_operator import api, decisions
from fintech_operator.api import riskpolicy
from fintech_operator.ledger import model as ledger_model

SCORE_MAX: Final = riskpolicy.SCORE_MAX

_MCC_RE: Final = re.compile(r"[0-9]{4}")

# A fact handed to the engine is malformed: a bug in the caller, not a risk signal.
InvalidFacts = decisions.InvalidFacts


class Action(decisions.RankedOutcome):
    """A decision, from best to worst."""

    APPROVE = "Approve"
    REVIEW = "Review"
    DECLINE = "Decline"


def worst(actions: Iterable[Action]) -> Action:
    """The most severe of ``actions``; Approve when there are none."""
    return max(actions, key=lambda action: action.severity, default=Action.APPROVE)


class Policy(decisions.Policy[api.RiskPolicySpec]):
    """A namespace's risk rules, or the built-in default (``name`` None)."""


# The default of a namespace without a RiskPolicy: conservative limits that stop runaway
# automation (a script issuing cards or hammering one card) without judging any merchant or
# country, which is each platform team's call to make in its own policy.
DEFAULT_SPEC: Final = api.RiskPolicySpec(
    max_cards_per_user=riskpolicy.CardCountRule(max_cards=5),
    velocity=[riskpolicy.VelocityRule(window_seconds=3600, max_count=30)],
)
DEFAULT_POLICY: Final = Policy(spec=DEFAULT_SPEC)


@dataclass(frozen=True)
class Match:
    """One rule that fired, what it asks for and what it saw."""

    rule: str
    action: Action
    score: int
    detail: str

    def __post_init__(self) -> None:
        if not (type(self.score) is int and 0 <= self.score <= SCORE_MAX):
            raise InvalidFacts(f"score must be an int in 0..{SCORE_MAX}, got {self.score!r}")
        object.__setattr__(self, "detail", self.detail[: decisions.DETAIL_MAX_LENGTH])

    def to_json(self) -> dict[str, object]:
        return {
            "rule": self.rule,
            "action": self.action.value,
            "score": self.score,
            "detail": self.detail,
        }


@dataclass(frozen=True)
class Decision:
    """The engine's answer: an action, a score from 0 to 1000 and the rules that fired."""

    action: Action
    score: int
    matches: tuple[Match, ...]
    policy: str

    @property
    def reasons(self) -> tuple[str, ...]:
        """Names of the rules that fired, each once, in firing order."""
        return tuple(dict.fromkeys(match.rule for match in self.matches))

    def summary(self) -> str:
        """One line for a status message or an Event."""
        if not self.matches:
            return f"{self.action.value} (score {self.score}) under {self.policy}: no rule matched"
        details = "; ".join(match.detail for match in self.matches)
        return f"{self.action.value} (score {self.score}) under {self.policy}: {details}"


@dataclass(frozen=True)
class IssuanceFacts:
    """What issuance rules look at: where the holder lives and how many cards the user has."""

    holder_country: str
    user_cards: (
        int  # Live cards (not Closed or Rejected) the user already holds, this one excluded.
    )

    def __post_init__(self) -> None:
        decisions.check_country(self.holder_country, "holder_country")
        if type(self.user_cards) is not int or self.user_cards < 0:
            raise InvalidFacts(f"user_cards must be an int >= 0, got {self.user_cards!r}")

    def to_json(self) -> dict[str, object]:
        return {"holderCountry": self.holder_country, "userCards": self.user_cards}


@dataclass(frozen=True)
class PostingFacts:
    """What posting rules look at. ``card`` is ``<namespace>/<name>``; ``kind`` a Posting type."""

    card: str
    account_code: str
    kind: str
    amount_minor: int
    currency: str
    merchant_mcc: str | None = None
    merchant_country: str | None = None

    def __post_init__(self) -> None:
        decisions.check_subject(self.card, "card")
        if not isinstance(self.account_code, str) or not self.account_code:
            raise InvalidFacts("account_code must be a non-empty string")
        decisions.check_posting_type(self.kind, "kind")
        decisions.check_amount(self.amount_minor, "amount_minor")
        decisions.check_currency(self.currency, "currency")
        if self.merchant_mcc is not None and (
            not isinstance(self.merchant_mcc, str) or _MCC_RE.fullmatch(self.merchant_mcc) is None
        ):
            raise InvalidFacts(f"merchant_mcc must be four digits, got {self.merchant_mcc!r}")
        if self.merchant_country is not None:
            decisions.check_country(self.merchant_country, "merchant_country")

    def to_json(self) -> dict[str, object]:
        return {
            "card": self.card,
            "account": self.account_code,
            "kind": self.kind,
            "amountMinor": self.amount_minor,
            "currency": self.currency,
            "merchantMcc": self.merchant_mcc,
            "merchantCountry": self.merchant_country,
        }


@dataclass(frozen=True)
class WindowTotals:
    """A card's postings in one rolling window before the one being assessed."""

    window_seconds: int
    count: int
    amount_minor: int

    def __post_init__(self) -> None:
        for name in ("window_seconds", "count", "amount_minor"):
            value = getattr(self, name)
            if type(value) is not int or value < 0:
                raise InvalidFacts(f"{name} must be an int >= 0, got {value!r}")


@dataclass(frozen=True)
class Velocity:
    """Totals per window length, as read from the ledger in the posting's transaction."""

    windows: Mapping[int, WindowTotals] = field(default_factory=dict)

    @classmethod
    def of(cls, totals: Iterable[WindowTotals]) -> Velocity:
        return cls({total.window_seconds: total for total in totals})

    def totals(self, window_seconds: int) -> WindowTotals:
        found = self.windows.get(window_seconds)
        if found is None:
            raise InvalidFacts(f"no velocity totals for a window of {window_seconds}s")
        return found

    def to_json(self) -> dict[str, object]:
        return {
            str(seconds): {"count": total.count, "amountMinor": total.amount_minor}
            for seconds, total in sorted(self.windows.items())
        }


class RiskDeclined(ledger_model.LedgerError):
    """A posting refused by the risk policy; the Posting ends ``Rejected`` with this reason.

    Raised inside the posting transaction (see :mod:`fintech_operator.risk.store`), so nothing
    of the posting is written. ``record_id`` is the risk_assessments row of the decline once
    :func:`fintech_operator.risk.store.post` has recorded it.
    """

    reason = "RiskDeclined"

    def __init__(self, message: str, *, decision: Decision, record: Assessment) -> None:
        super().__init__(message)
        self.decision = decision
        self.record = record
        self.record_id: int | None = None


@dataclass(frozen=True)
class Assessment:
    """A decision as stored in ``risk_assessments``: who, under which policy, from what."""

    idempotency_key: str
    subject_kind: str  # CardIssuance or Posting
    subject: str  # <namespace>/<name>
    subject_uid: str | None
    decision: Decision
    inputs: Mapping[str, object]
