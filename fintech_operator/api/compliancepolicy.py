"""CompliancePolicy: KYC, sanctions screening and AML monitoring of a namespace (seed AML/KYC).

Absent sections take the documented defaults, so an empty spec is a complete policy. A
namespace without any CompliancePolicy uses the same defaults (see docs/cards.md).
"""

from __future__ import annotations

import enum
from typing import Annotated, Any, Final

import pydantic

from fintech_operator.api import common, riskpolicy

BPS_MAX: Final = 10_000
# Below 80% Jaro-Winkler similarity unrelated names match; a lower threshold would only flood
# reviewers, so the schema refuses it.
MATCH_THRESHOLD_BPS_MIN: Final = 8_000
MATCH_THRESHOLD_BPS_DEFAULT: Final = 9_000
TIME_ZONE_MAX_LENGTH: Final = 64
STRUCTURING_COUNT_MIN: Final = 2
STRUCTURING_COUNT_MAX: Final = 100
STRUCTURING_COUNT_DEFAULT: Final = 3
STRUCTURING_MARGIN_BPS_DEFAULT: Final = 1_000
# 10,000.00 USD: the classic currency-transaction-report threshold.
AML_DAILY_THRESHOLD_MINOR_DEFAULT: Final = 1_000_000
AML_DAILY_THRESHOLD_CURRENCY_DEFAULT: Final = "USD"
AML_POSTING_TYPES_DEFAULT: Final = (common.PostingType.PURCHASE, common.PostingType.PAYMENT)


class CompliancePolicyPhase(enum.StrEnum):
    """Lifecycle of a policy as the operator sees it."""

    READY = "Ready"
    # Valid, but its sanctions list cannot be used: cards are held in PendingReview meanwhile.
    DEGRADED = "Degraded"
    REJECTED = "Rejected"


class KycRules(common.SpecModel):
    """Know-your-customer gate at issuance."""

    allow_review: pydantic.StrictBool = pydantic.Field(
        default=False,
        description=(
            "When true, a holder whose kycStatus is Pending sends the card to PendingReview "
            "for a person to decide; when false (default) such a card is Rejected. A "
            "kycStatus of Rejected always rejects."
        ),
    )


class SanctionsRules(common.SpecModel):
    """Screening of the holder's name against a list in the OFAC SDN CSV layout."""

    config_map: common.ObjectName = pydantic.Field(
        description="Name of a ConfigMap in the policy's namespace holding the list."
    )
    key: common.KeyName = pydantic.Field(
        default="sdn.csv",
        description=(
            "Key of the list in the ConfigMap's data, or in binaryData when it ends in .gz "
            "(gzip, for lists above the 1 MiB ConfigMap limit). Rows use the SDN layout: "
            "ent_num, SDN_Name, SDN_Type, Program, ... with -0- for empty. Default sdn.csv."
        ),
    )
    match_threshold_bps: pydantic.StrictInt = pydantic.Field(
        default=MATCH_THRESHOLD_BPS_DEFAULT,
        ge=MATCH_THRESHOLD_BPS_MIN,
        le=BPS_MAX,
        description=(
            "Jaro-Winkler similarity, in basis points, at or above which a name is a possible "
            "match and the card goes to PendingReview (9000 = 0.90). An exact match of the "
            f"normalized name always rejects. {MATCH_THRESHOLD_BPS_MIN} to {BPS_MAX}; default "
            f"{MATCH_THRESHOLD_BPS_DEFAULT}."
        ),
    )


class StructuringRule(common.SpecModel):
    """Several postings just under the daily threshold in one business day."""

    enabled: pydantic.StrictBool = pydantic.Field(
        default=True, description="Set false to turn the rule off. Default true."
    )
    min_count: pydantic.StrictInt = pydantic.Field(
        default=STRUCTURING_COUNT_DEFAULT,
        ge=STRUCTURING_COUNT_MIN,
        le=STRUCTURING_COUNT_MAX,
        description=(
            "Postings in one business day, each just under the threshold, that raise a "
            f"Structuring alert. {STRUCTURING_COUNT_MIN} to {STRUCTURING_COUNT_MAX}; default "
            f"{STRUCTURING_COUNT_DEFAULT}."
        ),
    )
    margin_bps: pydantic.StrictInt = pydantic.Field(
        default=STRUCTURING_MARGIN_BPS_DEFAULT,
        ge=1,
        le=5_000,
        description=(
            "How far under the threshold counts as just under, in basis points of the "
            "threshold: 1000 means from 90% of it up to (not including) it. Default "
            f"{STRUCTURING_MARGIN_BPS_DEFAULT}."
        ),
    )


class AmlRules(common.SpecModel):
    """Anti-money-laundering monitoring of postings; alerts never block a posting."""

    daily_threshold: riskpolicy.PolicyMoney | None = pydantic.Field(
        default=None,
        description=(
            "Total of a card's postings in one business day at or above which a "
            "DailyThreshold alert is raised. Only postings in this currency are summed. "
            f"Default {AML_DAILY_THRESHOLD_MINOR_DEFAULT} {AML_DAILY_THRESHOLD_CURRENCY_DEFAULT} "
            "(10,000.00)."
        ),
    )
    posting_types: common.PostingTypeSet = pydantic.Field(
        default=AML_POSTING_TYPES_DEFAULT,
        min_length=1,
        description="Posting types that count, without duplicates. Default [Purchase, Payment].",
    )
    structuring: StructuringRule | None = pydantic.Field(
        default=None,
        description="The structuring rule. Absent: on, with its defaults (3 postings within "
        "10% under the threshold).",
    )
    time_zone: Annotated[
        str,
        common.Expected(
            f"an IANA time zone name of up to {TIME_ZONE_MAX_LENGTH} characters, such as "
            "Europe/Berlin or UTC"
        ),
    ] = pydantic.Field(
        default="UTC",
        pattern=r"^[A-Za-z0-9_+-]+(/[A-Za-z0-9_+-]+)*$",
        min_length=1,
        max_length=TIME_ZONE_MAX_LENGTH,
        description="IANA time zone whose calendar day is the business day. Default UTC.",
    )


class CompliancePolicySpec(common.SpecModel):
    """KYC, sanctions and AML rules. Absent sections take their defaults."""

    kyc: KycRules | None = pydantic.Field(
        default=None, description="KYC gate. Absent: only kycStatus Accepted is issued."
    )
    sanctions: SanctionsRules | None = pydantic.Field(
        default=None,
        description="Sanctions screening. Absent: names are not screened (the check is "
        "recorded as NotConfigured).",
    )
    aml: AmlRules | None = pydantic.Field(
        default=None, description="AML monitoring. Absent: on, with its defaults."
    )


class SanctionsListStatus(common.StatusModel):
    """What the operator loaded from the sanctions ConfigMap."""

    config_map: str | None = pydantic.Field(
        default=None, max_length=common.OBJECT_NAME_MAX_LENGTH, description="ConfigMap read."
    )
    resource_version: str | None = pydantic.Field(
        default=None, max_length=64, description="resourceVersion of the ConfigMap read."
    )
    entries: common.Count | None = pydantic.Field(
        default=None, description="Names screened against (entries and their name variants)."
    )


class CompliancePolicyStatus(common.StatusModel):
    """Observed state of the policy, written by the operator only."""

    phase: CompliancePolicyPhase | None = pydantic.Field(
        default=None,
        description="Ready (valid; see inUse), Degraded (valid, but the sanctions list cannot "
        "be used: cards are held for review until it can) or Rejected (see reason and message).",
    )
    in_use: bool | None = pydantic.Field(
        default=None,
        description="True when this is the policy the namespace's decisions use: the first "
        "valid policy by name. Others are kept but ignored.",
    )
    sanctions_list: SanctionsListStatus | None = pydantic.Field(
        default=None, description="The sanctions list as last loaded."
    )
    reason: common.Reason | None = pydantic.Field(
        default=None, description="CamelCase cause of the phase, e.g. SanctionsListNotFound."
    )
    message: common.Message | None = common.message_field()
    conditions: list[common.Condition] = common.conditions_field(
        "Current conditions of the policy; Ready is always present once seen."
    )
    observed_generation: common.Generation | None = common.observed_generation_field()
    kopf: dict[str, Any] | None = common.kopf_status_field()


KIND_INFO: Final = common.KindInfo(
    kind="CompliancePolicy",
    plural="compliancepolicies",
    singular="compliancepolicy",
    short_names=("cpol",),
    description=(
        "CompliancePolicy holds the KYC, sanctions-screening and AML rules of its namespace. "
        "Cards are screened at issuance (KYC status, holder name against an OFAC SDN-layout "
        "list in a ConfigMap, fuzzy and exact); postings are monitored for daily totals and "
        "structuring, raising alerts without blocking. Every check is recorded."
    ),
    spec_model=CompliancePolicySpec,
    status_model=CompliancePolicyStatus,
    printer_columns=(
        common.PrinterColumn("Phase", "string", ".status.phase", "Lifecycle phase."),
        common.reason_column("Why the policy is Degraded or Rejected."),
        common.PrinterColumn(
            "InUse", "boolean", ".status.inUse", "Whether decisions use this policy."
        ),
        common.PrinterColumn(
            "Names", "integer", ".status.sanctionsList.entries", "Sanctions names loaded."
        ),
        common.age_column(),
    ),
)
