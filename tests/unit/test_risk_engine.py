"""The risk rule engine: every rule approves, reviews and declines as its policy says (pure)."""

from __future__ import annotations

from typing import Any

import hypothesis
import pydantic
import pytest
from hypothesis import strategies as st

from fintech_operator import api
from fintech_operator.risk import engine, model, policy

CARD = "ns/card-a"
ACCOUNT = "card:ns/card-a:USD"


def make_policy(**spec: Any) -> model.Policy:
    return model.Policy(spec=api.RiskPolicySpec.model_validate(spec), namespace="ns", name="p")


def posting(**overrides: Any) -> model.PostingFacts:
    facts: dict[str, Any] = {
        "card": CARD,
        "account_code": ACCOUNT,
        "kind": "Purchase",
        "amount_minor": 10_000,
        "currency": "USD",
        "merchant_mcc": "5814",
        "merchant_country": "US",
    }
    facts.update(overrides)
    return model.PostingFacts(**facts)


def velocity(*totals: tuple[int, int, int]) -> model.Velocity:
    return model.Velocity.of(model.WindowTotals(*total) for total in totals)


def issuance(country: str = "US", cards: int = 0) -> model.IssuanceFacts:
    return model.IssuanceFacts(holder_country=country, user_cards=cards)


A, R, D = model.Action.APPROVE, model.Action.REVIEW, model.Action.DECLINE


# --- Issuance rules -------------------------------------------------------------------------------

ISSUANCE_CASES = [
    # (spec, facts, expected action, expected rules)
    ({"blockedHolderCountries": {"countries": ["KP"]}}, issuance("US"), A, ()),
    (
        {"blockedHolderCountries": {"countries": ["KP"]}},
        issuance("KP"),
        D,
        ("BlockedHolderCountry",),
    ),
    (
        {"blockedHolderCountries": {"countries": ["KP"], "action": "Review"}},
        issuance("KP"),
        R,
        ("BlockedHolderCountry",),
    ),
    ({"maxCardsPerUser": {"maxCards": 2}}, issuance(cards=1), A, ()),
    ({"maxCardsPerUser": {"maxCards": 2}}, issuance(cards=2), D, ("MaxCardsPerUser",)),
    (
        {"maxCardsPerUser": {"maxCards": 2, "action": "Review"}},
        issuance(cards=5),
        R,
        ("MaxCardsPerUser",),
    ),
]


@pytest.mark.parametrize(("spec", "facts", "action", "rules"), ISSUANCE_CASES)
def test_issuance_rules(
    spec: dict[str, Any], facts: model.IssuanceFacts, action: model.Action, rules: tuple[str, ...]
) -> None:
    """Holder country and cards per user approve below the rule, and review or decline on it."""
    decision = engine.assess_issuance(make_policy(**spec), facts)
    assert decision.action is action
    assert decision.reasons == rules
    assert decision.policy == "ns/p"


def test_issuance_ignores_posting_rules() -> None:
    """A policy with only posting rules approves every card."""
    spec = {
        "maxAmountPerTransaction": {"amount": 1, "currency": "USD"},
        "blockedMccs": {"codes": ["7995"]},
    }
    assert engine.assess_issuance(make_policy(**spec), issuance()).action is A


# --- Posting rules --------------------------------------------------------------------------------

NO_VELOCITY = model.Velocity()

POSTING_CASES = [
    # Maximum amount per transaction: at the limit approves, above it declines (or reviews).
    (
        {"maxAmountPerTransaction": {"amount": 10_000, "currency": "USD"}},
        posting(),
        NO_VELOCITY,
        A,
        (),
    ),
    (
        {"maxAmountPerTransaction": {"amount": 9_999, "currency": "USD"}},
        posting(),
        NO_VELOCITY,
        D,
        ("MaxAmountPerTransaction",),
    ),
    (
        {"maxAmountPerTransaction": {"amount": 9_999, "currency": "USD", "action": "Review"}},
        posting(),
        NO_VELOCITY,
        R,
        ("MaxAmountPerTransaction",),
    ),
    # ...and compares only postings in its own currency.
    (
        {"maxAmountPerTransaction": {"amount": 1, "currency": "EUR"}},
        posting(),
        NO_VELOCITY,
        A,
        (),
    ),
    # Blocked merchant categories.
    ({"blockedMccs": {"codes": ["7995"]}}, posting(merchant_mcc="5814"), NO_VELOCITY, A, ()),
    ({"blockedMccs": {"codes": ["7995"]}}, posting(merchant_mcc=None), NO_VELOCITY, A, ()),
    (
        {"blockedMccs": {"codes": ["7995"]}},
        posting(merchant_mcc="7995"),
        NO_VELOCITY,
        D,
        ("BlockedMcc",),
    ),
    (
        {"blockedMccs": {"codes": ["7995"], "action": "Review"}},
        posting(merchant_mcc="7995"),
        NO_VELOCITY,
        R,
        ("BlockedMcc",),
    ),
    # Blocked merchant countries.
    ({"blockedMerchantCountries": {"countries": ["IR"]}}, posting(), NO_VELOCITY, A, ()),
    (
        {"blockedMerchantCountries": {"countries": ["IR"]}},
        posting(merchant_country=None),
        NO_VELOCITY,
        A,
        (),
    ),
    (
        {"blockedMerchantCountries": {"countries": ["IR"]}},
        posting(merchant_country="IR"),
        NO_VELOCITY,
        D,
        ("BlockedMerchantCountry",),
    ),
    (
        {"blockedMerchantCountries": {"countries": ["IR"], "action": "Review"}},
        posting(merchant_country="IR"),
        NO_VELOCITY,
        R,
        ("BlockedMerchantCountry",),
    ),
    # Velocity by count: this posting is the (count + 1)th in the window.
    (
        {"velocity": [{"windowSeconds": 3600, "maxCount": 3}]},
        posting(),
        velocity((3600, 2, 0)),
        A,
        (),
    ),
    (
        {"velocity": [{"windowSeconds": 3600, "maxCount": 3}]},
        posting(),
        velocity((3600, 3, 0)),
        R,
        ("VelocityCount",),
    ),
    (
        {"velocity": [{"windowSeconds": 3600, "maxCount": 3, "action": "Decline"}]},
        posting(),
        velocity((3600, 3, 0)),
        D,
        ("VelocityCount",),
    ),
    # Velocity by amount, this posting included, in the rule's currency only.
    (
        {"velocity": [{"windowSeconds": 60, "maxAmount": {"amount": 50_000, "currency": "USD"}}]},
        posting(),
        velocity((60, 4, 40_000)),
        A,
        (),
    ),
    (
        {"velocity": [{"windowSeconds": 60, "maxAmount": {"amount": 50_000, "currency": "USD"}}]},
        posting(),
        velocity((60, 4, 40_001)),
        R,
        ("VelocityAmount",),
    ),
    (
        {
            "velocity": [
                {
                    "windowSeconds": 60,
                    "maxAmount": {"amount": 50_000, "currency": "USD"},
                    "action": "Decline",
                }
            ]
        },
        posting(),
        velocity((60, 4, 45_000)),
        D,
        ("VelocityAmount",),
    ),
    (
        {"velocity": [{"windowSeconds": 60, "maxAmount": {"amount": 1, "currency": "EUR"}}]},
        posting(),
        velocity((60, 4, 45_000)),
        A,
        (),
    ),
]


@pytest.mark.parametrize(("spec", "facts", "history", "action", "rules"), POSTING_CASES)
def test_posting_rules(
    spec: dict[str, Any],
    facts: model.PostingFacts,
    history: model.Velocity,
    action: model.Action,
    rules: tuple[str, ...],
) -> None:
    """Each posting rule approves under its bound and reviews or declines past it."""
    decision = engine.assess_posting(make_policy(**spec), facts, history)
    assert decision.action is action, decision.summary()
    assert decision.reasons == rules


def test_unassessed_posting_types_are_approved() -> None:
    """A Payment under a Purchase-only policy is approved without looking at any rule."""
    spec = {"maxAmountPerTransaction": {"amount": 1, "currency": "USD"}}
    decision = engine.assess_posting(make_policy(**spec), posting(kind="Payment"), NO_VELOCITY)
    assert (decision.action, decision.score, decision.matches) == (A, 0, ())


def test_velocity_windows_are_unique_and_sorted() -> None:
    """The store reads each window length once, shortest first."""
    spec = {
        "velocity": [
            {"windowSeconds": 86400, "maxCount": 9},
            {"windowSeconds": 60, "maxCount": 1},
            {"windowSeconds": 86400, "maxAmount": {"amount": 5, "currency": "USD"}},
        ]
    }
    assert engine.velocity_windows(make_policy(**spec)) == (60, 86400)


def test_missing_velocity_window_is_a_caller_bug() -> None:
    """Totals for a window the policy needs must be supplied; their absence is not 'no history'."""
    spec = {"velocity": [{"windowSeconds": 60, "maxCount": 1}]}
    with pytest.raises(model.InvalidFacts, match="60s"):
        engine.assess_posting(make_policy(**spec), posting(), NO_VELOCITY)


# --- Scores and thresholds ------------------------------------------------------------------------

ALL_POSTING_RULES = {
    "maxAmountPerTransaction": {"amount": 1, "currency": "USD", "action": "Review", "score": 300},
    "blockedMccs": {"codes": ["7995"], "action": "Review", "score": 300},
    "blockedMerchantCountries": {"countries": ["IR"], "action": "Review", "score": 300},
}


def test_scores_add_up_and_default_by_action() -> None:
    """A Review rule adds 500 and a Decline rule 1000 unless they say otherwise."""
    spec = {
        "blockedMccs": {"codes": ["7995"], "action": "Review"},
        "blockedMerchantCountries": {"countries": ["IR"], "action": "Review", "score": 120},
    }
    decision = engine.assess_posting(
        make_policy(**spec), posting(merchant_mcc="7995", merchant_country="IR"), NO_VELOCITY
    )
    assert (decision.action, decision.score) == (R, 620)


def test_score_is_capped_at_1000() -> None:
    """Several Decline rules never push the score past 1000."""
    spec = {"blockedMccs": {"codes": ["7995"]}, "blockedMerchantCountries": {"countries": ["IR"]}}
    decision = engine.assess_posting(
        make_policy(**spec), posting(merchant_mcc="7995", merchant_country="IR"), NO_VELOCITY
    )
    assert (decision.action, decision.score) == (D, 1000)


@pytest.mark.parametrize(
    ("thresholds", "action", "escalated"),
    [
        ({}, R, False),  # No thresholds: three Review rules are a Review.
        ({"reviewScore": 900}, R, False),  # Already Review: nothing to escalate.
        ({"declineScore": 900}, D, True),  # 900 reached: Decline.
        ({"reviewScore": 500, "declineScore": 901}, R, False),
    ],
)
def test_score_thresholds_escalate(
    thresholds: dict[str, int], action: model.Action, escalated: bool
) -> None:
    """Summed scores escalate to the threshold's action, reported as ScoreThreshold."""
    decision = engine.assess_posting(
        make_policy(**ALL_POSTING_RULES, **thresholds),
        posting(merchant_mcc="7995", merchant_country="IR"),
        NO_VELOCITY,
    )
    assert decision.action is action
    assert decision.score == 900
    assert ("ScoreThreshold" in decision.reasons) is escalated


def test_review_score_turns_quiet_matches_into_review() -> None:
    """Low-score Review rules escalate only when the policy sets a reviewScore they reach."""
    spec = {"blockedMccs": {"codes": ["7995"], "action": "Review", "score": 100}}
    facts = posting(merchant_mcc="7995")
    assert engine.assess_posting(make_policy(**spec), facts, NO_VELOCITY).score == 100
    escalated = engine.decide(make_policy(reviewScore=100), [model.Match("X", A, 100, "x")])
    assert escalated.action is R
    assert escalated.reasons == ("X", "ScoreThreshold")


def test_nothing_matched_is_approve_with_score_zero() -> None:
    """An empty policy approves everything with score 0 and says no rule matched."""
    decision = engine.assess_posting(make_policy(), posting(), NO_VELOCITY)
    assert (decision.action, decision.score, decision.reasons) == (A, 0, ())
    assert "no rule matched" in decision.summary()


@hypothesis.given(
    scores=st.lists(st.integers(0, 1000), max_size=8),
    actions=st.lists(st.sampled_from([R, D]), min_size=8, max_size=8),
    review=st.one_of(st.none(), st.integers(1, 1000)),
    decline=st.one_of(st.none(), st.integers(1, 1000)),
)
def test_decide_properties(
    scores: list[int], actions: list[model.Action], review: int | None, decline: int | None
) -> None:
    """For any matches: score in 0..1000, never milder than a match, Approve only if nothing."""
    if review is not None and decline is not None and review > decline:
        review, decline = decline, review
    spec: dict[str, Any] = {"reviewScore": review, "declineScore": decline}
    matches = [model.Match(f"R{i}", actions[i], s, "d") for i, s in enumerate(scores)]
    decision = engine.decide(make_policy(**spec), matches)
    assert 0 <= decision.score <= 1000
    assert all(decision.action.severity >= m.action.severity for m in matches)
    if decision.action is A:
        assert not matches
    if decline is not None and decision.score >= decline:
        assert decision.action is D


# --- The default policy and policy selection ------------------------------------------------------


def test_default_policy_limits_cards_and_velocity() -> None:
    """Without a RiskPolicy, a sixth card is declined and a 31st purchase an hour reviewed."""
    default = model.DEFAULT_POLICY
    assert default.ref == "builtin/default"
    assert engine.assess_issuance(default, issuance(cards=4)).action is A
    assert engine.assess_issuance(default, issuance(cards=5)).action is D
    assert engine.assess_posting(default, posting(), velocity((3600, 29, 0))).action is A
    assert engine.assess_posting(default, posting(), velocity((3600, 30, 0))).action is R


def test_select_picks_first_valid_policy_by_name_or_default() -> None:
    """Several policies: the first by name is in use; a namespace with none gets the default."""
    first = policy.parse("ns", "a-first", {"blockedMccs": {"codes": ["7995"]}})
    second = policy.parse("ns", "b-second", {})
    assert first is not None
    assert second is not None
    index = {"ns": [second, first]}
    assert policy.select(index, "ns") is first
    assert policy.select(index, "other") is model.DEFAULT_POLICY
    assert policy.rule_count(first.spec) == 1


def test_parse_refuses_invalid_spec() -> None:
    """An invalid policy is not indexed at all (its status explains), so it cannot apply."""
    assert policy.parse("ns", "bad", {"maxCardsPerUser": {"maxCards": 0}}) is None
    assert policy.parse("ns", "bad", {"unknownRule": {}}) is None


# --- Bad input ------------------------------------------------------------------------------------

BAD_POSTING_FACTS = [
    {"amount_minor": 12.5},
    {"amount_minor": 100.0},
    {"amount_minor": True},
    {"amount_minor": "100"},
    {"amount_minor": 0},
    {"amount_minor": -5},
    {"amount_minor": 10**15 + 1},
    {"currency": "usd"},
    {"currency": "US"},
    {"merchant_mcc": "58"},
    {"merchant_mcc": 5814},
    {"merchant_country": "usa"},
    {"kind": "Reversal"},
    {"card": "no-namespace"},
    {"card": "ns/a/b"},
    {"account_code": ""},
]


@pytest.mark.parametrize("bad", BAD_POSTING_FACTS, ids=repr)
def test_bad_posting_facts_are_refused(bad: dict[str, Any]) -> None:
    """A float, bool or string amount, or a malformed code, never reaches the rules."""
    with pytest.raises(model.InvalidFacts):
        posting(**bad)


@pytest.mark.parametrize(
    "bad", [{"holder_country": "kp"}, {"user_cards": -1}, {"user_cards": 1.0}, {"user_cards": None}]
)
def test_bad_issuance_facts_are_refused(bad: dict[str, Any]) -> None:
    """Issuance facts check their shapes too."""
    facts: dict[str, Any] = {"holder_country": "US", "user_cards": 0, **bad}
    with pytest.raises(model.InvalidFacts):
        model.IssuanceFacts(**facts)


def test_bad_velocity_and_arguments_are_refused() -> None:
    """Negative or float totals, and the wrong fact type, are caller bugs."""
    with pytest.raises(model.InvalidFacts):
        model.WindowTotals(60, -1, 0)
    with pytest.raises(model.InvalidFacts):
        model.WindowTotals(60, 1, 1.5)  # type: ignore[arg-type]
    with pytest.raises(model.InvalidFacts):
        engine.assess_posting(make_policy(), issuance(), NO_VELOCITY)  # type: ignore[arg-type]
    with pytest.raises(model.InvalidFacts):
        engine.assess_issuance(make_policy(), posting())  # type: ignore[arg-type]
    with pytest.raises(model.InvalidFacts):
        engine.assess_posting(make_policy(), posting(), {})  # type: ignore[arg-type]
    with pytest.raises(model.InvalidFacts):
        model.Match("X", R, 1001, "too much")


INVALID_POLICIES = [
    ({"velocity": [{"windowSeconds": 60}]}, "maxCount, maxAmount or both"),
    ({"velocity": [{"windowSeconds": 59, "maxCount": 1}]}, "windowSeconds"),
    ({"velocity": [{"windowSeconds": 60, "maxCount": 0}]}, "maxCount"),
    ({"reviewScore": 600, "declineScore": 500}, "reviewScore must not exceed"),
    ({"maxAmountPerTransaction": {"amount": 10.5, "currency": "USD"}}, "amount"),
    ({"maxAmountPerTransaction": {"amount": "100", "currency": "USD"}}, "amount"),
    ({"maxAmountPerTransaction": {"amount": 0, "currency": "USD"}}, "amount"),
    ({"blockedMccs": {"codes": ["79950"]}}, "codes"),
    ({"blockedMccs": {"codes": []}}, "codes"),
    ({"blockedHolderCountries": {"countries": ["kp"]}}, "countries"),
    ({"maxCardsPerUser": {"maxCards": 1, "action": "Approve"}}, "action"),
    ({"maxCardsPerUser": {"maxCards": 1, "score": 1001}}, "score"),
    ({"postingTypes": ["Purchase", "Purchase"]}, "twice"),
    ({"postingTypes": []}, "postingTypes"),
    ({"blockedMcc": {"codes": ["7995"]}}, "blockedMcc"),
]


@pytest.mark.parametrize(("spec", "needle"), INVALID_POLICIES)
def test_invalid_policies_are_refused_naming_the_field(spec: dict[str, Any], needle: str) -> None:
    """Every validator refuses bad input, and the message names the field or rule."""
    with pytest.raises(pydantic.ValidationError) as caught:
        api.RiskPolicySpec.model_validate(spec)
    assert needle in api.format_validation_error(caught.value)
