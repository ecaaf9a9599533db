"""RiskPolicy: the rules a namespace's cards and postings are assessed against (the seed's risk).

Every rule is optional; an absent rule never matches. A matched rule contributes its action
(``Review`` or ``Decline``) and a score; the decision is the worst matched action, optionally
escalated by the summed score (``reviewScore``, ``declineScore``). The rule engine that reads
this spec is pure code in :mod:`fintech_operator.risk.engine`.
"""

from __future__ import annotations

import enum
from typing import Annotated, Any, Final

import pydantic

from fintech_operator.api import common

SCORE_MAX: Final = 1000
VELOCITY_RULES_MAX_ITEMS: Final = 8
# A calendar month is the longest rolling window worth reading from the ledger in one posting.
WINDOW_SECONDS_MIN: Final = 60
WINDOW_SECONDS_MAX: Final = 31 * 24 * 3600
VELOCITY_COUNT_MAX: Final = 1_000_000
LIST_MAX_ITEMS: Final = 512
CARDS_PER_USER_MAX: Final = 1000

Mcc = Annotated[
    common.MerchantCategoryCode,
    pydantic.Field(description="ISO 18245 merchant category code, four digits."),
]

Country = Annotated[
    common.CountryCode,
    pydantic.Field(description="ISO 3166-1 alpha-2 country code, two uppercase letters."),
]


class RuleAction(enum.StrEnum):
    """What a matched rule asks for."""

    REVIEW = "Review"
    DECLINE = "Decline"


class RiskPolicyPhase(enum.StrEnum):
    """Lifecycle of a policy as the operator sees it."""

    READY = "Ready"
    REJECTED = "Rejected"


def _action_field(default: RuleAction) -> Any:
    return pydantic.Field(
        default=default,
        description=f"Review or Decline when the rule matches. Default {default.value}.",
    )


def _score_field() -> Any:
    return pydantic.Field(
        default=None,
        ge=0,
        le=SCORE_MAX,
        description=(
            f"Score the rule adds when it matches, 0 to {SCORE_MAX}. Default 500 for a Review "
            "rule and 1000 for a Decline rule. Scores are summed and capped at 1000."
        ),
    )


class Rule(common.SpecModel):
    """Fields every rule has: an action and a score."""

    action: RuleAction = _action_field(RuleAction.DECLINE)
    score: pydantic.StrictInt | None = _score_field()


class PolicyMoney(common.SpecModel):
    """An amount in a named currency."""

    amount_minor: common.PositiveAmountMinor = pydantic.Field(
        description=(
            "Amount in minor units of currency (1250 = 12.50), an integer from 1 to "
            f"{common.AMOUNT_MINOR_MAX}."
        )
    )
    currency: common.CurrencyCode = pydantic.Field(
        description="ISO 4217 code, three uppercase letters. The rule only compares "
        "postings in this currency (there is no conversion)."
    )


class AmountRule(Rule):
    """Matches a posting whose amount is above a maximum."""

    amount_minor: common.PositiveAmountMinor = pydantic.Field(
        description="Largest allowed amount of one posting, in minor units of currency."
    )
    currency: common.CurrencyCode = pydantic.Field(
        description="ISO 4217 code; postings in another currency are not compared."
    )


class VelocityRule(Rule):
    """Matches when a card's postings in a rolling window, this one included, exceed a bound."""

    model_config = pydantic.ConfigDict(
        json_schema_extra=common.cel_rules(
            ("has(self.maxCount) || has(self.maxAmount)", "set maxCount, maxAmount or both")
        )
    )

    action: RuleAction = _action_field(RuleAction.REVIEW)
    window_seconds: pydantic.StrictInt = pydantic.Field(
        ge=WINDOW_SECONDS_MIN,
        le=WINDOW_SECONDS_MAX,
        description=(
            f"Length of the rolling window in seconds, {WINDOW_SECONDS_MIN} to "
            f"{WINDOW_SECONDS_MAX} (31 days), ending at the posting."
        ),
    )
    max_count: pydantic.StrictInt | None = pydantic.Field(
        default=None,
        ge=1,
        le=VELOCITY_COUNT_MAX,
        description="Most postings allowed in the window, this one included.",
    )
    max_amount: PolicyMoney | None = pydantic.Field(
        default=None,
        description="Most money allowed in the window, this posting included, in its currency.",
    )


class MccListRule(Rule):
    """Matches a posting at a merchant whose category code is listed."""

    codes: list[Mcc] = pydantic.Field(
        min_length=1,
        max_length=LIST_MAX_ITEMS,
        description="ISO 18245 merchant category codes, four digits each, e.g. 7995 (betting).",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )


class CountryListRule(Rule):
    """Matches when a country is listed."""

    countries: list[Country] = pydantic.Field(
        min_length=1,
        max_length=LIST_MAX_ITEMS,
        description="ISO 3166-1 alpha-2 codes, two uppercase letters each.",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )


class CardCountRule(Rule):
    """Matches a new card when its user already has this many live cards."""

    max_cards: pydantic.StrictInt = pydantic.Field(
        ge=1,
        le=CARDS_PER_USER_MAX,
        description=(
            "Most cards one userId may hold in the namespace (cards not Closed or Rejected, "
            f"oldest first), 1 to {CARDS_PER_USER_MAX}."
        ),
    )


class RiskPolicySpec(common.SpecModel):
    """Rules of the namespace's risk policy. Absent rules never match."""

    model_config = pydantic.ConfigDict(
        json_schema_extra=common.cel_rules(
            (
                "!has(self.reviewScore) || !has(self.declineScore) || "
                "self.reviewScore <= self.declineScore",
                "reviewScore must not exceed declineScore",
            )
        )
    )

    posting_types: common.PostingTypeSet = pydantic.Field(
        default=(common.PostingType.PURCHASE,),
        min_length=1,
        description="Posting types the posting rules assess (others are approved without "
        "assessment), without duplicates. Default [Purchase].",
    )
    max_amount_per_transaction: AmountRule | None = pydantic.Field(
        default=None, description="Largest amount of a single posting. Default Decline."
    )
    velocity: list[VelocityRule] = pydantic.Field(
        default_factory=list,
        max_length=VELOCITY_RULES_MAX_ITEMS,
        description=(
            f"Up to {VELOCITY_RULES_MAX_ITEMS} rolling-window limits per card, counted from "
            "the ledger in the posting's own transaction. Default Review."
        ),
    )
    blocked_mccs: MccListRule | None = pydantic.Field(
        default=None, description="Merchant categories refused. Default Decline."
    )
    blocked_merchant_countries: CountryListRule | None = pydantic.Field(
        default=None, description="Merchant countries refused. Default Decline."
    )
    blocked_holder_countries: CountryListRule | None = pydantic.Field(
        default=None,
        description="Holder countries of residence refused at issuance. Default Decline.",
    )
    max_cards_per_user: CardCountRule | None = pydantic.Field(
        default=None, description="Cards one user may hold, checked at issuance. Default Decline."
    )
    review_score: pydantic.StrictInt | None = pydantic.Field(
        default=None,
        ge=1,
        le=SCORE_MAX,
        description="A summed score at or above this sends the subject to Review even if no "
        "matched rule asked for it. Absent: scores never escalate to Review.",
    )
    decline_score: pydantic.StrictInt | None = pydantic.Field(
        default=None,
        ge=1,
        le=SCORE_MAX,
        description="A summed score at or above this declines. Absent: scores never "
        "escalate to Decline.",
    )

    @pydantic.model_validator(mode="after")
    def _scores_ordered(self) -> RiskPolicySpec:
        """The same rule the CEL expression enforces, for objects that skip the API server."""
        if (
            self.review_score is not None
            and self.decline_score is not None
            and self.review_score > self.decline_score
        ):
            raise ValueError("reviewScore must not exceed declineScore")
        for rule in self.velocity:
            if rule.max_count is None and rule.max_amount is None:
                raise ValueError("a velocity rule needs maxCount, maxAmount or both")
        return self


class RiskPolicyStatus(common.StatusModel):
    """Observed state of the policy, written by the operator only."""

    phase: RiskPolicyPhase | None = pydantic.Field(
        default=None,
        description="Ready (valid; see inUse) or Rejected (see reason and message).",
    )
    in_use: bool | None = pydantic.Field(
        default=None,
        description="True when this is the policy the namespace's decisions use: the first "
        "Ready policy by name. Others are kept but ignored.",
    )
    rules: common.Count | None = pydantic.Field(
        default=None, description="Number of rules the policy sets."
    )
    reason: common.Reason | None = pydantic.Field(
        default=None, description="CamelCase cause of the phase, e.g. InvalidSpec."
    )
    message: common.Message | None = common.message_field()
    conditions: list[common.Condition] = common.conditions_field(
        "Current conditions of the policy; Ready is always present once seen."
    )
    observed_generation: common.Generation | None = common.observed_generation_field()
    kopf: dict[str, Any] | None = common.kopf_status_field()


KIND_INFO: Final = common.KindInfo(
    kind="RiskPolicy",
    plural="riskpolicies",
    singular="riskpolicy",
    short_names=("rpol",),
    description=(
        "RiskPolicy holds the risk rules of its namespace, evaluated when a card is issued "
        "and on every posting: amount per transaction, velocity per card, blocked merchant "
        "categories and countries, blocked holder countries and cards per user. Each "
        "decision is Approve, Review or Decline with a score, recorded in the database. A "
        "namespace without a policy uses the built-in default (see docs/cards.md)."
    ),
    spec_model=RiskPolicySpec,
    status_model=RiskPolicyStatus,
    printer_columns=(
        common.PrinterColumn("Phase", "string", ".status.phase", "Lifecycle phase."),
        common.reason_column("Why the policy is Rejected."),
        common.PrinterColumn(
            "InUse", "boolean", ".status.inUse", "Whether decisions use this policy."
        ),
        common.PrinterColumn("Rules", "integer", ".status.rules", "Number of rules set."),
        common.age_column(),
    ),
)
