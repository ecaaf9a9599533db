"""Types shared by every kind: money, names, conditions and the per-kind CRD facts.

Money is always an integer number of minor units (1250 = 12.50) next to an ISO 4217
code; ``StrictInt`` refuses floats, numeric strings and booleans so that no float can
ever become an amount, not even ``12.0``.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import re
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Final

import pydantic
from pydantic import alias_generators
from pydantic import config as pydantic_config

from fintech_operator import pan

GROUP: Final = "fintech.dev"
VERSION: Final = "v1alpha1"
API_VERSION: Final = f"{GROUP}/{VERSION}"
CATEGORY: Final = "fintech"

# 10^15 minor units is 10^13 of a two-decimal currency: far above any real
# amount, far below int64 overflow even after summing many of them.
AMOUNT_MINOR_MAX: Final = 10**15
INT32_MAX: Final = 2**31 - 1
# Kubernetes' own limits for object names (DNS-1123 subdomain) and condition text.
OBJECT_NAME_MAX_LENGTH: Final = 253
CONDITION_MESSAGE_MAX_LENGTH: Final = 32768
CONDITIONS_MAX_ITEMS: Final = 16
# A ledger account code such as ``card:<namespace>/<card>:<CUR>`` holds a 63-character
# namespace and a 253-character name, so 512 leaves room for every kind of account.
ACCOUNT_MAX_LENGTH: Final = 512
VALIDATION_MESSAGE_MAX_LENGTH: Final = 1024


class ConditionType(enum.StrEnum):
    """Every ``status.conditions[].type`` the operator writes. Ready is on every kind."""

    READY = "Ready"
    RISK_ASSESSED = "RiskAssessed"  # Card: the risk decision (reason Approve, Review, Decline)
    COMPLIANCE_CLEARED = "ComplianceCleared"  # Card: KYC and screening
    LEDGER_ACCOUNT_OPENED = "LedgerAccountOpened"  # Card: its ledger account
    RECONCILED = "Reconciled"  # ReconciliationRun: no check found an exception


READY: Final = ConditionType.READY


class PolicyReason(enum.StrEnum):
    """``status.reason`` (and Ready's reason) of a RiskPolicy or CompliancePolicy."""

    VALID = "Valid"
    INVALID_SPEC = "InvalidSpec"
    SANCTIONS_LIST_NOT_FOUND = "SanctionsListNotFound"
    SANCTIONS_LIST_INVALID = "SanctionsListInvalid"
    SANCTIONS_LIST_UNREADABLE = "SanctionsListUnreadable"


class PolicyEvent(enum.StrEnum):
    """Reason of the Normal Event of a usable policy (otherwise it warns with its reason)."""

    READY = "PolicyReady"


# Python attributes carry their unit (``amount_minor``); the YAML contract says
# ``amount``. Every other name is the plain camelCase of the attribute.
_ALIAS_OVERRIDES: Final[Mapping[str, str]] = {"amount_minor": "amount"}


def api_alias(field_name: str) -> str:
    """Return the YAML/JSON name of a Python attribute."""
    return _ALIAS_OVERRIDES.get(field_name) or alias_generators.to_camel(field_name)


class SpecModel(pydantic.BaseModel):
    """Base of user-written objects: unknown fields are errors, never silently dropped."""

    model_config = pydantic.ConfigDict(
        alias_generator=api_alias,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
    )


class StatusModel(pydantic.BaseModel):
    """Base of operator-written status.

    Unknown keys are ignored rather than refused so that an operator can read the
    status a newer (or older) version of itself wrote; the CRD schema still prunes
    anything the API does not declare.
    """

    model_config = pydantic.ConfigDict(
        alias_generator=api_alias,
        populate_by_name=True,
        extra="ignore",
        frozen=True,
    )


# The schema key that carries a string field's expected shape in words from the models to
# crdgen, which turns it into the field's CEL rule and message (never into the CRD itself).
EXPECTED_KEY: Final = "x-fintech-expected"
# An RFC 3339 time with a zone, as CEL's timestamp() parses it: what spec timestamps must be.
RFC3339_PATTERN: Final = (
    r"^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])"
    r"T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]+)?(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])$"
)
RFC3339_EXPECTED: Final = "an RFC 3339 time with a zone, such as 2025-01-15T09:30:00Z"


@dataclasses.dataclass(frozen=True)
class Expected:
    """What a valid value of a string field looks like, in words (``Annotated`` metadata).

    The API server refuses a bad value with "must be <words>" instead of quoting a regular
    expression: ``crdgen`` turns the field's pattern and length bounds into one CEL rule with
    this message, so that a cheap schema failure never hides the object's other CEL rules.
    """

    words: str

    def __get_pydantic_json_schema__(
        self, core_schema: Any, handler: pydantic.GetJsonSchemaHandler
    ) -> Any:
        schema = handler(core_schema)
        schema[EXPECTED_KEY] = self.words
        return schema


AmountMinor = Annotated[pydantic.StrictInt, pydantic.Field(ge=0, le=AMOUNT_MINOR_MAX)]
PositiveAmountMinor = Annotated[pydantic.StrictInt, pydantic.Field(ge=1, le=AMOUNT_MINOR_MAX)]
SignedAmountMinor = Annotated[
    pydantic.StrictInt, pydantic.Field(ge=-AMOUNT_MINOR_MAX, le=AMOUNT_MINOR_MAX)
]
# No upper bound: ``format: int64`` says it, and a 2**63 bound would be rounded by the
# float64 the API server stores schema bounds in.
Generation = Annotated[pydantic.StrictInt, pydantic.Field(ge=0)]
Count = Annotated[pydantic.StrictInt, pydantic.Field(ge=0)]
CurrencyCode = Annotated[
    str,
    pydantic.Field(pattern=r"^[A-Z]{3}$", min_length=3, max_length=3),
    Expected("an ISO 4217 currency code: three uppercase letters such as USD"),
]
CountryCode = Annotated[
    str,
    pydantic.Field(pattern=r"^[A-Z]{2}$", min_length=2, max_length=2),
    Expected("an ISO 3166-1 alpha-2 country code: two uppercase letters such as US"),
]
ObjectName = Annotated[
    str,
    pydantic.Field(
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$",
        min_length=1,
        max_length=OBJECT_NAME_MAX_LENGTH,
    ),
    Expected(
        f"an object name: up to {OBJECT_NAME_MAX_LENGTH} lowercase letters, digits, '-' and "
        "'.', starting and ending with a letter or digit, such as standard"
    ),
]
MerchantCategoryCode = Annotated[
    str,
    pydantic.Field(pattern=r"^[0-9]{4}$", min_length=4, max_length=4),
    Expected("an ISO 18245 merchant category code: four digits such as 5812"),
]
KEY_NAME_MAX_LENGTH: Final = 253
# A key of a ConfigMap's or Secret's data, as Kubernetes allows it.
KeyName = Annotated[
    str,
    pydantic.Field(pattern=r"^[-._a-zA-Z0-9]+$", min_length=1, max_length=KEY_NAME_MAX_LENGTH),
    Expected(
        f"a ConfigMap or Secret key: up to {KEY_NAME_MAX_LENGTH} letters, digits, '-', '_' "
        "and '.', such as sdn.csv"
    ),
]
# The same rule Kubernetes applies to metav1.Condition.reason: CamelCase words.
Reason = Annotated[
    str,
    pydantic.Field(
        pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$", min_length=1, max_length=1024
    ),
]
Message = Annotated[str, pydantic.Field(max_length=CONDITION_MESSAGE_MAX_LENGTH)]
Timestamp = pydantic.AwareDatetime


class PostingType(enum.StrEnum):
    """What a posting does to a card account."""

    PURCHASE = "Purchase"
    REFUND = "Refund"
    PAYMENT = "Payment"
    FEE = "Fee"
    ADJUSTMENT = "Adjustment"


def _refuse_repeated_posting_types(
    value: tuple[PostingType, ...], info: pydantic.ValidationInfo
) -> tuple[PostingType, ...]:
    """Refuse duplicates: the API server treats the list as a set and would too."""
    if len(set(value)) != len(value):
        raise ValueError(f"{api_alias(info.field_name or '')} must not list a posting type twice")
    return value


# A list of posting types without repeats. The bound comes before the validator so that
# pydantic keeps it an array bound (``maxItems``) in the schema.
PostingTypeSet = Annotated[
    tuple[PostingType, ...],
    pydantic.Field(
        max_length=len(PostingType), json_schema_extra={"x-kubernetes-list-type": "set"}
    ),
    pydantic.AfterValidator(_refuse_repeated_posting_types),
]


class SpendInterval(enum.StrEnum):
    """The window a spend limit is measured over."""

    PER_TRANSACTION = "PerTransaction"
    DAILY = "Daily"
    MONTHLY = "Monthly"
    LIFETIME = "Lifetime"


class SpendLimit(SpecModel):
    """The most a card may spend in one interval."""

    amount_minor: AmountMinor = pydantic.Field(
        description=(
            "Maximum spend in minor units of the card's currency (1250 = 12.50), "
            f"an integer from 0 to {AMOUNT_MINOR_MAX}; 0 blocks all spending."
        )
    )
    interval: SpendInterval = pydantic.Field(
        description=(
            "Window the limit applies to: PerTransaction (each posting alone), Daily and "
            "Monthly (calendar day and month in UTC) or Lifetime (all postings ever)."
        )
    )


class FeeAmount(SpecModel):
    """An amount in the currency of the object that declares it."""

    amount_minor: AmountMinor = pydantic.Field(
        description=(
            "Fee in minor units of the product currency (1250 = 12.50), "
            f"an integer from 0 to {AMOUNT_MINOR_MAX}."
        )
    )


class Money(StatusModel):
    """A signed amount with its currency, as reported by the ledger."""

    amount_minor: SignedAmountMinor = pydantic.Field(
        description=(
            "Amount in minor units of currency (1250 = 12.50); negative when the account "
            "is in credit."
        )
    )
    currency: CurrencyCode = pydantic.Field(
        description="ISO 4217 code of the amount, three uppercase letters, e.g. USD."
    )


class ConditionStatus(enum.StrEnum):
    """Whether a condition holds, as in Kubernetes' metav1.Condition."""

    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Condition(StatusModel):
    """One aspect of the object's current state, shaped like Kubernetes' metav1.Condition."""

    type: str = pydantic.Field(
        pattern=(
            r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
            r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$"
        ),
        min_length=1,
        max_length=316,
        description="Kind of condition in CamelCase, e.g. Ready. Unique within the list.",
    )
    status: ConditionStatus = pydantic.Field(
        description="Whether the condition holds: True, False or Unknown."
    )
    reason: Reason = pydantic.Field(
        description="Machine-readable CamelCase cause of the last transition, e.g. Posted."
    )
    message: Message = pydantic.Field(
        default="",
        description="Human-readable details of the last transition; may be empty.",
    )
    last_transition_time: Timestamp = pydantic.Field(
        description=(
            "When status last changed (RFC 3339). It does not move when only the "
            "reason or message changes."
        )
    )
    observed_generation: Generation | None = pydantic.Field(
        default=None,
        description="metadata.generation of the object the condition was computed from.",
    )


def format_timestamp(moment: datetime.datetime) -> str:
    """RFC 3339 in UTC with a ``Z``, to the second: how Kubernetes writes timestamps."""
    return moment.astimezone(datetime.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def parse_timestamp(text: str) -> datetime.datetime:
    """An RFC 3339 timestamp as the API server writes it (``Z`` or an offset)."""
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))


def find_condition(conditions: Sequence[Condition], type_: str) -> Condition | None:
    """Return the condition of the given type, or None when there is none."""
    return next((c for c in conditions if c.type == type_), None)


def is_condition_true(conditions: Sequence[Condition], type_: str) -> bool:
    """Tell whether the condition of the given type exists and has status True."""
    found = find_condition(conditions, type_)
    return found is not None and found.status is ConditionStatus.TRUE


def set_condition(conditions: Sequence[Condition], new: Condition) -> list[Condition]:
    """Return a copy of ``conditions`` where ``new`` replaces the condition of its type.

    The transition time records when the status changed, so when the status is the
    same as before the old ``lastTransitionTime`` is kept even if reason or message
    differ. A condition of a new type is appended; order is otherwise preserved.
    """
    old = find_condition(conditions, new.type)
    if old is None:
        return [*conditions, new]
    if old.status == new.status:
        new = new.model_copy(update={"last_transition_time": old.last_transition_time})
    return [new if c.type == new.type else c for c in conditions]


def conditions_from_status(raw: Sequence[Mapping[str, Any]] | None) -> list[Condition]:
    """Parse ``status.conditions`` as read from the API server (absent means empty)."""
    return [Condition.model_validate(item) for item in raw or ()]


def to_api(model: pydantic.BaseModel) -> dict[str, Any]:
    """Serialize a model the way the API stores it: camelCase names, JSON types, no nulls."""
    return model.model_dump(mode="json", by_alias=True, exclude_none=True)


def format_validation_error(
    error: pydantic.ValidationError, root: str = "spec", limit: int = 5
) -> str:
    """Render a validation error as one line naming each bad field, e.g. for status.message.

    At most ``limit`` problems are listed and the text is capped, because the message
    ends up in a status field and an Event that have size limits of their own.
    """
    problems = [_describe(root, item) for item in error.errors(include_url=False)]
    shown = "; ".join(problems[:limit])
    if len(problems) > limit:
        shown += f"; and {len(problems) - limit} more"
    return shown[:VALIDATION_MESSAGE_MAX_LENGTH]


def _describe(root: str, item: Mapping[str, Any]) -> str:
    """Describe one pydantic error as ``root.path.to.field: message``."""
    path = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in item["loc"])
    return f"{root}{path}: {item['msg']}"


@dataclasses.dataclass(frozen=True)
class PrinterColumn:
    """One column of ``kubectl get`` output."""

    name: str
    type: str
    json_path: str
    description: str
    priority: int = 0


@dataclasses.dataclass(frozen=True)
class KindInfo:
    """Everything the CRD of one kind needs beyond its spec and status models."""

    kind: str
    plural: str
    singular: str
    short_names: tuple[str, ...]
    description: str
    spec_model: type[pydantic.BaseModel]
    status_model: type[pydantic.BaseModel]
    printer_columns: tuple[PrinterColumn, ...]
    # Fields usable in ``kubectl get --field-selector``, as JSONPaths.
    selectable_fields: tuple[str, ...] = ()

    @property
    def crd_name(self) -> str:
        """The CRD's metadata.name, ``<plural>.<group>``."""
        return f"{self.plural}.{GROUP}"


def cel_rules(*rules: tuple[str, str]) -> pydantic_config.JsonDict:
    """Schema extra holding CEL validation rules, each a ``(rule, message)`` pair.

    The API server evaluates them on create and update, so bad YAML is refused at
    apply time with the message instead of being rejected later by the operator.
    """
    return {
        "x-kubernetes-validations": [{"rule": rule, "message": message} for rule, message in rules]
    }


# Free text a person types (a holder's name, a memo, a review's comment) never carries a card
# number (invariant 7): a run of 13 or more digits, contiguous or grouped by single spaces or
# dashes as card numbers are written, is refused at apply time by a CEL rule and, for objects
# that reach the operator without the API server, by the same expression in the models. Without
# it a number typed there was stored in etcd, the ledger's audit rows and the logs.
CARD_NUMBER_RUN: Final = "[0-9]([ -]?[0-9]){12}"
NO_CARD_NUMBER_MESSAGE: Final = (
    "must not contain a card number: no run of 13 or more digits, even grouped by spaces or "
    "dashes (card numbers stay with the card processor; use the card's last 4 digits)"
)


def no_card_number() -> pydantic_config.JsonDict:
    """Schema extra refusing a string that holds a card number (:data:`CARD_NUMBER_RUN`)."""
    return cel_rules((f"!self.matches('{CARD_NUMBER_RUN}')", NO_CARD_NUMBER_MESSAGE))


def refuse_card_number(value: str | None) -> str | None:
    """The models' side of :func:`no_card_number`, for a field validator."""
    if value is not None and re.search(CARD_NUMBER_RUN, value):
        raise ValueError(NO_CARD_NUMBER_MESSAGE)
    return value


# An identifier from outside (a processor's reference) may be a long number: an acquirer
# reference number has 23 digits. So it is refused only when it holds what is a card number
# for certain, a Luhn-valid 13 to 19 digit number standing alone (:func:`pan.find_pans`), and
# only by the models (CEL has no Luhn check): the object is then Rejected InvalidSpec naming
# the field, before anything of it reaches the ledger, the outbox or Kafka.
NO_PAN_MESSAGE: Final = (
    "must not contain a card number (a Luhn-valid number of 13 to 19 digits; card numbers "
    "stay with the card processor)"
)


def refuse_pan(value: str | None) -> str | None:
    """A field validator refusing text that holds a card number (:data:`NO_PAN_MESSAGE`)."""
    if value is not None and pan.find_pans(value):
        raise ValueError(NO_PAN_MESSAGE)
    return value


def immutable(field: str, why: str) -> pydantic_config.JsonDict:
    """Schema extra refusing any change of a field once the object exists."""
    return cel_rules(("self == oldSelf", f"{field} is immutable: {why}"))


def age_column() -> PrinterColumn:
    """The conventional last column: time since creation."""
    return PrinterColumn(
        name="Age",
        type="date",
        json_path=".metadata.creationTimestamp",
        description="Time since the object was created.",
    )


def reason_column(
    description: str = "CamelCase cause of the phase; empty when none.",
) -> PrinterColumn:
    """``status.reason`` in ``kubectl get``, as pods show CrashLoopBackOff: why, at a glance."""
    return PrinterColumn(
        name="Reason", type="string", json_path=".status.reason", description=description
    )


def conditions_field(description: str) -> Any:
    """Field for ``status.conditions``: a list of Kubernetes-shaped conditions keyed by type.

    The API server merges the list by ``type`` (a map list) on server-side apply, as it does
    for the conditions of its own kinds.
    """
    return pydantic.Field(
        default_factory=list,
        max_length=CONDITIONS_MAX_ITEMS,
        description=description,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )


def observed_generation_field() -> Any:
    """Field for ``status.observedGeneration``, the generation the status describes."""
    return pydantic.Field(
        default=None, description="metadata.generation the status was computed from."
    )


def message_field(description: str = "Human-readable details of the phase.") -> Any:
    """Field for ``status.message``, the words next to ``status.reason``."""
    return pydantic.Field(default=None, description=description)


def kopf_status_field() -> Any:
    """Field for ``status.kopf``: the framework's own progress and diff-base storage.

    kopf keeps handler progress there when configured to leave annotations alone (so
    GitOps tools see no drift); the schema must keep it or the API server prunes it.
    """
    return pydantic.Field(
        default=None,
        description=(
            "Internal state of the kopf framework (handler progress, last handled "
            "configuration). Not part of the API; do not rely on it."
        ),
    )
