"""The API models accept what the contract allows and refuse everything else, naming the field."""

from __future__ import annotations

import copy
import datetime
from pathlib import Path
from typing import Any

import pydantic
import pytest
import yaml

from fintech_operator import api

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
_DELETE = object()
T0 = datetime.datetime(2025, 1, 15, 9, 30, tzinfo=datetime.UTC)
T1 = T0 + datetime.timedelta(minutes=5)


def card_spec() -> dict[str, Any]:
    return {
        "userId": "u_demo",
        "product": "standard",
        "holder": {"name": "Demo User", "country": "US", "kycStatus": "Accepted"},
        "state": "Active",
        "spendLimit": {"amount": 100000, "interval": "Daily"},
        "type": "Virtual",
        "memo": "demo",
    }


def posting_spec() -> dict[str, Any]:
    return {
        "card": "u-demo-card",
        "type": "Purchase",
        "amount": 12500,
        "currency": "USD",
        "merchant": {"name": "Blue Bottle Coffee", "mcc": "5814", "country": "US"},
        "reference": "auth-1",
        "occurredAt": "2025-01-15T09:30:00Z",
        "idempotencyKey": "ns/purchase-0001",
        "entries": [
            {
                "account": "card:u-demo-card",
                "direction": "Debit",
                "amount": 12500,
                "currency": "USD",
            },
            {
                "account": "merchant:settlement",
                "direction": "Credit",
                "amount": 12500,
                "currency": "USD",
            },
        ],
        "reverses": "purchase-0000",
        "ttlSecondsAfterFinished": 3600,
    }


def product_spec() -> dict[str, Any]:
    return {
        "currency": "USD",
        "rewardsRateBps": 100,
        "earnOn": ["Purchase", "Fee"],
        "issuanceFee": {"amount": 0},
        "spendLimit": {"amount": 500000, "interval": "Monthly"},
        "overCaptureBps": 2000,
        "authorizationTtlSeconds": 3600,
        "forcePost": True,
    }


BASES = {
    api.CardSpec: card_spec,
    api.PostingSpec: posting_spec,
    api.CardProductSpec: product_spec,
}


def with_value(model: type[pydantic.BaseModel], path: str, value: object) -> dict[str, Any]:
    """A valid spec for ``model`` with the dotted ``path`` set to ``value`` (or removed)."""
    data = copy.deepcopy(BASES[model]())
    *parents, leaf = path.split(".")
    node: Any = data
    for part in parents:
        node = node[int(part)] if part.isdigit() else node[part]
    if value is _DELETE:
        del node[leaf]
    else:
        node[leaf] = value
    return data


def error_locations(error: pydantic.ValidationError) -> list[str]:
    return [".".join(str(part) for part in item["loc"]) for item in error.errors()]


@pytest.mark.parametrize("model", list(BASES), ids=lambda m: m.__name__)
def test_full_valid_specs_parse(model: type[pydantic.BaseModel]) -> None:
    """A spec using every field parses, and serializes back to the same YAML names."""
    data = BASES[model]()
    parsed = model.model_validate(data)
    assert set(api.to_api(parsed)) == set(data)


@pytest.mark.parametrize("path", sorted(EXAMPLES.rglob("*.yaml")), ids=lambda p: p.name)
def test_examples_parse(path: Path) -> None:
    """Every shipped example is a valid object of its kind, in our API version."""
    for document in yaml.safe_load_all(path.read_text(encoding="utf-8")):
        if not document["apiVersion"].startswith(f"{api.GROUP}/"):
            continue  # Kubernetes' own kinds (the sanctions ConfigMap, reviewer RBAC).
        info = next(k for k in api.KINDS if k.kind == document["kind"])
        assert document["apiVersion"] == api.API_VERSION
        info.spec_model.model_validate(document["spec"])


def test_card_defaults() -> None:
    """A minimal card gets the documented defaults: Active, Virtual, KYC Pending, no limit."""
    spec = api.CardSpec.model_validate(
        {"userId": "u1", "product": "standard", "holder": {"name": "A", "country": "DE"}}
    )
    assert spec.state is api.CardState.ACTIVE
    assert spec.type is api.CardType.VIRTUAL
    assert spec.holder.kyc_status is api.KycStatus.PENDING
    assert spec.spend_limit is None


def test_product_defaults() -> None:
    """A minimal product earns nothing (rate 0) and, once a rate is set, earns on Purchase."""
    spec = api.CardProductSpec.model_validate({"currency": "EUR"})
    assert spec.rewards_rate_bps == 0
    assert spec.earn_on == (api.PostingType.PURCHASE,)
    # Real-time authorizations: never above the hold, 7-day holds, no force posts.
    assert (spec.over_capture_bps, spec.authorization_ttl_seconds, spec.force_post) == (
        0, 7 * 24 * 3600, False,
    )  # fmt: skip


def test_snake_case_names_and_amount_minor() -> None:
    """Python code builds models with snake_case names; the API sees camelCase and ``amount``."""
    limit = api.SpendLimit(amount_minor=500, interval=api.SpendInterval.DAILY)
    assert api.to_api(limit) == {"amount": 500, "interval": "Daily"}
    assert api.SpendLimit.model_validate({"amount": 500, "interval": "Daily"}) == limit


INVALID_SPECS = [
    # Money is an integer of minor units: no float, not even a whole one, no string, no bool.
    (api.CardSpec, "spendLimit.amount", 12.5, "spendLimit.amount"),
    (api.CardSpec, "spendLimit.amount", 12.0, "spendLimit.amount"),
    (api.CardSpec, "spendLimit.amount", "1250", "spendLimit.amount"),
    (api.CardSpec, "spendLimit.amount", True, "spendLimit.amount"),
    (api.CardSpec, "spendLimit.amount", -1, "spendLimit.amount"),
    (api.CardSpec, "spendLimit.amount", 10**15 + 1, "spendLimit.amount"),
    (api.CardSpec, "spendLimit.interval", "Weekly", "spendLimit.interval"),
    (api.CardSpec, "spendLimit.interval", _DELETE, "spendLimit.interval"),
    (api.CardSpec, "userId", _DELETE, "userId"),
    (api.CardSpec, "userId", "", "userId"),
    (api.CardSpec, "userId", "u demo", "userId"),
    (api.CardSpec, "userId", "u" * 129, "userId"),
    (api.CardSpec, "product", "Standard", "product"),
    (api.CardSpec, "product", _DELETE, "product"),
    (api.CardSpec, "holder", _DELETE, "holder"),
    (api.CardSpec, "holder.name", "", "holder.name"),
    (api.CardSpec, "holder.name", "n" * 257, "holder.name"),
    (api.CardSpec, "holder.country", "usa", "holder.country"),
    (api.CardSpec, "holder.country", "us", "holder.country"),
    (api.CardSpec, "holder.kycStatus", "Approved", "holder.kycStatus"),
    (api.CardSpec, "holder.nickname", "x", "holder.nickname"),
    (api.CardSpec, "state", "Open", "state"),
    (api.CardSpec, "type", "Plastic", "type"),
    (api.CardSpec, "memo", "m" * 257, "memo"),
    (api.CardSpec, "pan", "4111111111111111", "pan"),
    (api.PostingSpec, "amount", 12.5, "amount"),
    (api.PostingSpec, "amount", 0, "amount"),
    (api.PostingSpec, "amount", -100, "amount"),
    (api.PostingSpec, "amount", 10**15 + 1, "amount"),
    (api.PostingSpec, "amount", _DELETE, "amount"),
    (api.PostingSpec, "currency", "usd", "currency"),
    (api.PostingSpec, "currency", "US", "currency"),
    (api.PostingSpec, "currency", "USDT", "currency"),
    (api.PostingSpec, "card", _DELETE, "card"),
    (api.PostingSpec, "card", "Demo_Card", "card"),
    (api.PostingSpec, "type", "Chargeback", "type"),
    (api.PostingSpec, "merchant.mcc", "58a4", "merchant.mcc"),
    (api.PostingSpec, "merchant.mcc", "581", "merchant.mcc"),
    (api.PostingSpec, "merchant.mcc", 5814, "merchant.mcc"),
    (api.PostingSpec, "merchant.name", "", "merchant.name"),
    (api.PostingSpec, "merchant.country", "usa", "merchant.country"),
    (api.PostingSpec, "reference", "r" * 129, "reference"),
    (api.PostingSpec, "occurredAt", "2025-01-15T09:30:00", "occurredAt"),
    (api.PostingSpec, "occurredAt", "yesterday", "occurredAt"),
    (api.PostingSpec, "idempotencyKey", "has space", "idempotencyKey"),
    (api.PostingSpec, "idempotencyKey", "k" * 257, "idempotencyKey"),
    (api.PostingSpec, "idempotencyKey", "", "idempotencyKey"),
    (api.PostingSpec, "entries", [], "entries"),
    (api.PostingSpec, "entries.0.direction", "Left", "entries.0.direction"),
    (api.PostingSpec, "entries.0.amount", 0, "entries.0.amount"),
    (api.PostingSpec, "entries.0.amount", 1.5, "entries.0.amount"),
    (api.PostingSpec, "entries.0.currency", "usd", "entries.0.currency"),
    (api.PostingSpec, "entries.0.account", "", "entries.0.account"),
    (api.PostingSpec, "entries.0.account", "has space", "entries.0.account"),
    (api.PostingSpec, "reverses", "Not_A_Name", "reverses"),
    (api.PostingSpec, "ttlSecondsAfterFinished", -1, "ttlSecondsAfterFinished"),
    (api.PostingSpec, "ttlSecondsAfterFinished", 2**31, "ttlSecondsAfterFinished"),
    (api.PostingSpec, "journalId", "1", "journalId"),
    (api.CardProductSpec, "currency", "usd", "currency"),
    (api.CardProductSpec, "currency", _DELETE, "currency"),
    (api.CardProductSpec, "rewardsRateBps", 10001, "rewardsRateBps"),
    (api.CardProductSpec, "rewardsRateBps", -1, "rewardsRateBps"),
    (api.CardProductSpec, "rewardsRateBps", 1.5, "rewardsRateBps"),
    (api.CardProductSpec, "earnOn", ["Purchase", "Purchase"], "earnOn"),
    (api.CardProductSpec, "earnOn", ["Cashback"], "earnOn.0"),
    (api.CardProductSpec, "issuanceFee.amount", -500, "issuanceFee.amount"),
    (api.CardProductSpec, "issuanceFee.amount", 4.99, "issuanceFee.amount"),
    (api.CardProductSpec, "issuanceFee.currency", "USD", "issuanceFee.currency"),
    (api.CardProductSpec, "spendLimit.interval", "Yearly", "spendLimit.interval"),
    (api.CardProductSpec, "overCaptureBps", -1, "overCaptureBps"),
    (api.CardProductSpec, "overCaptureBps", 10001, "overCaptureBps"),
    (api.CardProductSpec, "overCaptureBps", 1.5, "overCaptureBps"),
    (api.CardProductSpec, "authorizationTtlSeconds", 0, "authorizationTtlSeconds"),
    (api.CardProductSpec, "authorizationTtlSeconds", 31 * 86400 + 1, "authorizationTtlSeconds"),
    (api.CardProductSpec, "authorizationTtlSeconds", "7d", "authorizationTtlSeconds"),
    (api.CardProductSpec, "forcePost", "yes", "forcePost"),
]


@pytest.mark.parametrize(
    ("model", "path", "value", "location"),
    INVALID_SPECS,
    ids=[f"{m.__name__}-{p}-{v!r:.20}" for m, p, v, _ in INVALID_SPECS],
)
def test_invalid_spec_is_refused_naming_the_field(
    model: type[pydantic.BaseModel], path: str, value: object, location: str
) -> None:
    """Each invalid value (or missing required field) is refused, and the error names it."""
    with pytest.raises(pydantic.ValidationError) as caught:
        model.model_validate(with_value(model, path, value))
    assert location in error_locations(caught.value)


def test_specs_are_frozen() -> None:
    """Decoded specs cannot be mutated by a handler by accident."""
    spec = api.CardSpec.model_validate(card_spec())
    with pytest.raises(pydantic.ValidationError):
        spec.user_id = "someone-else"


def test_statuses_parse_what_the_operator_writes() -> None:
    """Full statuses of each kind parse, including kopf's own state and a negative balance."""
    card = api.CardStatus.model_validate(
        {
            "phase": "Active",
            "token": "tok_abc",
            "last4": "4242",
            "account": "card:u-demo-card",
            "balance": {"amount": -250, "currency": "USD"},
            "rewardsPoints": 125,
            "risk": {"decision": "Approve", "score": 12, "reasons": [], "model": "v2"},
            "compliance": {"decision": "Clear", "decidedAt": "2025-01-15T09:30:00Z"},
            "issuedAt": "2025-01-15T09:30:00Z",
            "conditions": [_condition_dict()],
            "observedGeneration": 1,
            "kopf": {"progress": {}},
        }
    )
    assert card.balance == api.Money(amount_minor=-250, currency="USD")
    assert card.risk is not None
    assert card.risk.model_extra == {"model": "v2"}
    posting = api.PostingStatus.model_validate(
        {"phase": "Rejected", "reason": "SpendLimitExceeded", "message": "over daily limit"}
    )
    assert posting.reason == api.PostingReason.SPEND_LIMIT_EXCEEDED
    product = api.CardProductStatus.model_validate({"phase": "Ready", "cards": 3})
    assert product.cards == 3


def test_status_ignores_unknown_keys() -> None:
    """A status written by another operator version still parses; unknown keys are dropped."""
    status = api.PostingStatus.model_validate({"phase": "Posted", "futureField": 1})
    assert api.to_api(status) == {"phase": "Posted", "conditions": []}


INVALID_STATUSES = [
    (api.CardStatus, {"phase": "Open"}, "phase"),
    (api.CardStatus, {"last4": "42a2"}, "last4"),
    (api.CardStatus, {"last4": "42424"}, "last4"),
    (api.CardStatus, {"balance": {"amount": 1.5, "currency": "USD"}}, "balance.amount"),
    (api.CardStatus, {"balance": {"amount": 1, "currency": "usd"}}, "balance.currency"),
    (api.CardStatus, {"rewardsPoints": 1.5}, "rewardsPoints"),
    (api.CardStatus, {"risk": {"score": 1001}}, "risk.score"),
    (api.CardStatus, {"risk": {"reasons": ["not camel case"]}}, "risk.reasons.0"),
    (api.CardStatus, {"issuedAt": "2025-01-15T09:30:00"}, "issuedAt"),
    (api.CardStatus, {"reason": "has spaces"}, "reason"),
    (api.CardStatus, {"observedGeneration": -1}, "observedGeneration"),
    (api.PostingStatus, {"phase": "Done"}, "phase"),
    (api.PostingStatus, {"journalId": "12 34"}, "journalId"),
    (api.PostingStatus, {"journalId": ""}, "journalId"),
    (api.PostingStatus, {"postedAt": "never"}, "postedAt"),
    (api.CardProductStatus, {"cards": -1}, "cards"),
    (api.CardProductStatus, {"phase": "Active"}, "phase"),
]


@pytest.mark.parametrize(
    ("model", "data", "location"),
    INVALID_STATUSES,
    ids=[f"{m.__name__}-{loc}" for m, _, loc in INVALID_STATUSES],
)
def test_invalid_status_is_refused_naming_the_field(
    model: type[pydantic.BaseModel], data: dict[str, Any], location: str
) -> None:
    """The operator cannot build a status the CRD would refuse; the error names the field."""
    with pytest.raises(pydantic.ValidationError) as caught:
        model.model_validate(data)
    assert location in error_locations(caught.value)


def _condition_dict(**overrides: object) -> dict[str, object]:
    base: dict[str, object] = {
        "type": "Ready",
        "status": "True",
        "reason": "Issued",
        "message": "card issued",
        "lastTransitionTime": "2025-01-15T09:30:00Z",
        "observedGeneration": 1,
    }
    return {**base, **overrides}


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("status", "Yes"),
        ("type", ""),
        ("type", "has space"),
        ("reason", ""),
        ("reason", "Has Space"),
        ("lastTransitionTime", "2025-01-15T09:30:00"),
        ("observedGeneration", -1),
        ("message", "m" * 32769),
    ],
)
def test_invalid_condition_is_refused(field: str, value: object) -> None:
    """Conditions follow metav1.Condition's rules; each broken field is named."""
    with pytest.raises(pydantic.ValidationError) as caught:
        api.Condition.model_validate(_condition_dict(**{field: value}))
    assert field in error_locations(caught.value)


def _condition(
    type_: str, status: api.ConditionStatus, reason: str, at: datetime.datetime
) -> api.Condition:
    return api.Condition(type=type_, status=status, reason=reason, last_transition_time=at)


def test_set_condition_appends_a_new_type() -> None:
    """A condition of a type not yet present is appended after the existing ones."""
    ready = _condition("Ready", api.ConditionStatus.FALSE, "Pending", T0)
    risk = _condition("RiskAssessed", api.ConditionStatus.TRUE, "Approved", T1)
    assert api.set_condition([ready], risk) == [ready, risk]


def test_set_condition_keeps_transition_time_when_status_unchanged() -> None:
    """Only a status change moves lastTransitionTime; reason and message still update."""
    old = _condition("Ready", api.ConditionStatus.FALSE, "Pending", T0)
    new = _condition("Ready", api.ConditionStatus.FALSE, "WaitingForProduct", T1)
    [result] = api.set_condition([old], new)
    assert result.reason == "WaitingForProduct"
    assert result.last_transition_time == T0


def test_set_condition_moves_transition_time_when_status_changes() -> None:
    """A status change replaces the condition in place with the new transition time."""
    other = _condition("RiskAssessed", api.ConditionStatus.TRUE, "Approved", T0)
    old = _condition("Ready", api.ConditionStatus.FALSE, "Pending", T0)
    new = _condition("Ready", api.ConditionStatus.TRUE, "Issued", T1)
    conditions = [old, other]
    assert api.set_condition(conditions, new) == [new, other]
    assert conditions == [old, other], "the input list must not be modified"


def test_find_and_is_condition_true() -> None:
    """Lookups by type find the condition, and absence or non-True status reads as not true."""
    ready = _condition("Ready", api.ConditionStatus.TRUE, "Issued", T0)
    stalled = _condition("Stalled", api.ConditionStatus.UNKNOWN, "Unknown", T0)
    assert api.find_condition([ready], "Ready") is ready
    assert api.find_condition([ready], "Missing") is None
    assert api.is_condition_true([ready, stalled], "Ready")
    assert not api.is_condition_true([ready, stalled], "Stalled")
    assert not api.is_condition_true([], "Ready")


def test_conditions_from_status_round_trips() -> None:
    """Conditions read from the API parse, absent means empty, and they dump back unchanged."""
    raw = [_condition_dict()]
    parsed = api.conditions_from_status(raw)
    assert [api.to_api(c) for c in parsed] == raw
    assert api.conditions_from_status(None) == []


def test_format_validation_error_names_fields() -> None:
    """The one-line message for status.message names each bad field with its full path."""
    data = with_value(api.CardSpec, "spendLimit.amount", 12.5)
    data["holder"]["country"] = "usa"
    with pytest.raises(pydantic.ValidationError) as caught:
        api.CardSpec.model_validate(data)
    message = api.format_validation_error(caught.value)
    assert "spec.spendLimit.amount: " in message
    assert "spec.holder.country: " in message


def test_format_validation_error_lists_indexes_and_caps() -> None:
    """List positions read as [i], and beyond the limit the rest are counted, not listed."""
    data = posting_spec()
    for entry in data["entries"]:
        entry["amount"] = 0
        entry["currency"] = "usd"
    with pytest.raises(pydantic.ValidationError) as caught:
        api.PostingSpec.model_validate(data)
    message = api.format_validation_error(caught.value, limit=2)
    assert message.startswith("spec.entries[0].amount: ")
    assert message.endswith("; and 2 more")


def test_longest_card_account_fits() -> None:
    """The ledger's longest card account (63-char namespace, 253-char name) is a valid
    entry account and card status account, so no real card is refused for its name."""
    account = f"card:{'n' * 63}/{'c' * 253}:USD"
    data = posting_spec()
    data["entries"][0]["account"] = account
    assert api.PostingSpec.model_validate(data).entries is not None
    assert api.CardStatus.model_validate({"account": account}).account == account


def test_timestamps_round_trip_as_kubernetes_writes_them() -> None:
    """Formatting gives UTC to the second with a Z; parsing reads Z and offsets alike."""
    import datetime  # noqa: PLC0415

    moment = datetime.datetime(2026, 1, 2, 4, 5, 6, 789, tzinfo=datetime.timezone(
        datetime.timedelta(hours=1)))  # fmt: skip
    assert api.format_timestamp(moment) == "2026-01-02T03:05:06Z"
    assert api.parse_timestamp("2026-01-02T03:05:06Z") == moment.replace(microsecond=0)
    assert api.parse_timestamp("2026-01-02T04:05:06+01:00") == moment.replace(microsecond=0)


@pytest.mark.parametrize(
    ("model", "spec", "field"),
    [
        (
            api.CardSpec,
            {"userId": "u", "product": "p", "holder": {"name": "A 4111 1111 1111 1111",
                                                       "country": "US"}},
            "spec.holder.name",
        ),
        (
            api.CardSpec,
            {"userId": "u", "product": "p", "holder": {"name": "A", "country": "US"},
             "memo": "4111-1111-1111-1111"},
            "spec.memo",
        ),
        (
            api.CardReviewSpec,
            {"card": "c", "decision": "Approve", "reviewer": "r", "comment": "4111111111111111"},
            "spec.comment",
        ),
    ],
)  # fmt: skip
def test_the_models_refuse_a_card_number_in_free_text(
    model: type[pydantic.BaseModel], spec: dict[str, Any], field: str
) -> None:
    """The operator checks specs again with the models (InvalidSpec), with the same rule as
    the CRD's CEL: a run of 13 or more digits, grouped or not, is a card number."""
    with pytest.raises(pydantic.ValidationError) as raised:
        model.model_validate(spec)
    assert f"{field}: Value error, must not contain a card number" in api.format_validation_error(
        raised.value
    )


def _posting(**fields: Any) -> dict[str, Any]:
    spec = {"card": "c", "type": "Purchase", "amount": 100, "currency": "USD"}
    return {**spec, **fields}


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        (_posting(merchant={"name": "Cafe 4111111111111111"}), "spec.merchant.name"),
        (_posting(merchant={"name": "Cafe 4111 1111 1111 1111"}), "spec.merchant.name"),
        (_posting(reference="4111111111111111"), "spec.reference"),
        (_posting(reference="arn 5500-0000-0000-0004 / 7"), "spec.reference"),
    ],
)
def test_a_posting_refuses_a_card_number_in_its_merchant_name_or_reference(
    spec: dict[str, Any], field: str
) -> None:
    """Invariant 7: a Posting's merchant name and reference reach the journal, its events on
    Kafka and webhook deliveries, so a card number there is refused (InvalidSpec) naming the
    field, and the message does not repeat the number."""
    with pytest.raises(pydantic.ValidationError) as raised:
        api.PostingSpec.model_validate(spec)
    message = api.format_validation_error(raised.value)
    assert f"{field}: Value error, must not contain a card number" in message
    assert "1111" not in message
    assert "0004" not in message


@pytest.mark.parametrize(
    "reference",
    [
        "74537604221431003881865",  # a 23-digit acquirer reference number
        "4111111111111112",  # 16 digits failing the Luhn check: an order number
        "auth-9d81e0c4",
        "RRN 123456789012",
    ],
)
def test_a_posting_reference_that_holds_no_card_number_is_accepted(reference: str) -> None:
    """A processor's reference is often a long number: only a Luhn-valid 13 to 19 digit
    number standing alone is taken for a card number."""
    assert api.PostingSpec.model_validate(_posting(reference=reference)).reference == reference
