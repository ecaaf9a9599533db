"""CardProduct: the terms a family of cards is issued under (currency, rewards, fees, limits)."""

from __future__ import annotations

import enum
from typing import Any, Final

import pydantic

from fintech_operator.api import common

RATE_BPS_MAX: Final = 10_000
OVER_CAPTURE_BPS_MAX: Final = 10_000
# A network keeps an authorization open for days, not months; 31 days bounds a forgotten hold.
AUTHORIZATION_TTL_SECONDS_DEFAULT: Final = 7 * 24 * 3600
AUTHORIZATION_TTL_SECONDS_MAX: Final = 31 * 24 * 3600


class CardProductPhase(enum.StrEnum):
    """Lifecycle of a product as the operator sees it."""

    PENDING = "Pending"
    READY = "Ready"
    REJECTED = "Rejected"


class CardProductReason(enum.StrEnum):
    """``status.reason`` of a product and the reasons of its Ready condition."""

    VALID = "Valid"
    INVALID_SPEC = "InvalidSpec"
    IN_USE = "InUse"  # deletion waits for the cards that use it
    DELETION_BLOCKED = "DeletionBlocked"


class CardProductSpec(common.SpecModel):
    """Desired terms of the product."""

    currency: common.CurrencyCode = pydantic.Field(
        description=(
            "ISO 4217 code of the product, three uppercase letters, e.g. USD. Every card "
            "of the product holds its balance in this currency. Immutable."
        ),
        json_schema_extra=common.immutable("currency", "cards hold their balances in it"),
    )
    rewards_rate_bps: pydantic.StrictInt = pydantic.Field(
        default=0,
        ge=0,
        le=RATE_BPS_MAX,
        description=(
            "Rewards points earned per eligible posting, in basis points of its amount "
            "in minor units: points = floor(amount x rate / 10000), so 100 = 1%. "
            f"0 to {RATE_BPS_MAX}; default 0 (no rewards)."
        ),
    )
    earn_on: common.PostingTypeSet = pydantic.Field(
        default=(common.PostingType.PURCHASE,),
        description=(
            "Posting types that earn points, without duplicates; a Refund of an earning "
            "posting takes its points back in proportion. Default [Purchase]."
        ),
    )
    issuance_fee: common.FeeAmount | None = pydantic.Field(
        default=None,
        description="Fee posted to a card when it is issued, in the product currency. "
        "Absent means no fee.",
    )
    spend_limit: common.SpendLimit | None = pydantic.Field(
        default=None,
        description="Spend limit of cards that do not set their own, in the product "
        "currency. Absent means no limit.",
    )
    over_capture_bps: pydantic.StrictInt = pydantic.Field(
        default=0,
        ge=0,
        le=OVER_CAPTURE_BPS_MAX,
        description=(
            "How far the captures of a real-time authorization may exceed its hold, in basis "
            "points of the hold (a tip on a restaurant bill): 2000 lets a 100.00 hold be "
            f"captured up to 120.00. 0 to {OVER_CAPTURE_BPS_MAX}; default 0 (never above the hold)."
        ),
    )
    authorization_ttl_seconds: pydantic.StrictInt = pydantic.Field(
        default=AUTHORIZATION_TTL_SECONDS_DEFAULT,
        ge=1,
        le=AUTHORIZATION_TTL_SECONDS_MAX,
        description=(
            "Seconds an approved authorization holds funds before it expires and its hold is "
            f"released. 1 to {AUTHORIZATION_TTL_SECONDS_MAX} (31 days); default "
            f"{AUTHORIZATION_TTL_SECONDS_DEFAULT} (7 days), as card networks keep most holds."
        ),
    )
    force_post: pydantic.StrictBool = pydantic.Field(
        default=False,
        description=(
            "Whether a capture the issuer holds no authorization for (never seen, expired or "
            "declined) is posted anyway as a force post. Default false: such captures are "
            "refused with ForcePostNotAllowed."
        ),
    )


class CardProductStatus(common.StatusModel):
    """Observed state of the product, written by the operator only."""

    phase: CardProductPhase | None = pydantic.Field(
        default=None,
        description="Pending until the operator has checked the product, then Ready "
        "(cards can be issued) or Rejected (see reason and message).",
    )
    cards: common.Count | None = pydantic.Field(
        default=None, description="Number of cards issued under the product and not closed."
    )
    reason: common.Reason | None = pydantic.Field(
        default=None, description="CamelCase cause of a Rejected phase."
    )
    message: common.Message | None = common.message_field()
    conditions: list[common.Condition] = common.conditions_field(
        "Current conditions of the product; Ready is always present once seen."
    )
    observed_generation: common.Generation | None = common.observed_generation_field()
    kopf: dict[str, Any] | None = common.kopf_status_field()


KIND_INFO: Final = common.KindInfo(
    kind="CardProduct",
    plural="cardproducts",
    singular="cardproduct",
    short_names=("cp",),
    description=(
        "CardProduct is the set of terms cards are issued under: currency, rewards rate, "
        "which postings earn points, issuance fee and the default spend limit."
    ),
    spec_model=CardProductSpec,
    status_model=CardProductStatus,
    printer_columns=(
        common.PrinterColumn("Currency", "string", ".spec.currency", "ISO 4217 currency."),
        common.PrinterColumn(
            "Rate(bps)", "integer", ".spec.rewardsRateBps", "Rewards rate in basis points."
        ),
        common.PrinterColumn("Phase", "string", ".status.phase", "Lifecycle phase."),
        common.reason_column("Why the product is Rejected or its deletion waits."),
        common.PrinterColumn("Cards", "integer", ".status.cards", "Open cards of the product."),
        common.age_column(),
    ),
)
