"""The risk rule engine: pure functions from a policy and facts to a decision. No I/O, no clock.

How a decision is made, the same for issuance and postings:

1. Each rule the policy sets is checked against the facts; a rule that fires yields a
   :class:`model.Match` with its action (Review or Decline) and its score (the rule's ``score``,
   default 500 for Review and 1000 for Decline).
2. The score is the sum of the matches' scores, capped at 1000.
3. The action is the worst matched action (Approve when nothing fired), escalated to Review when
   the score reaches ``reviewScore`` and to Decline when it reaches ``declineScore`` (each only
   when the policy sets it); an escalation is reported as the ``ScoreThreshold`` rule.

Velocity is the only rule that needs history; its totals are read by the caller (in the posting's
own transaction, see :mod:`fintech_operator.risk.store`) and handed in as :class:`model.Velocity`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from fintech_operator.api import riskpolicy
from fintech_operator.risk import model

REVIEW_SCORE_DEFAULT: Final = 500
DECLINE_SCORE_DEFAULT: Final = 1000


def rule_score(rule: riskpolicy.Rule) -> int:
    """The score a rule adds when it fires: its own, or the default of its action."""
    if rule.score is not None:
        return rule.score
    if rule.action is riskpolicy.RuleAction.DECLINE:
        return DECLINE_SCORE_DEFAULT
    return REVIEW_SCORE_DEFAULT


def _match(rule: riskpolicy.Rule, name: str, detail: str) -> model.Match:
    return model.Match(name, model.Action(rule.action.value), rule_score(rule), detail)


def decide(policy: model.Policy, matches: Iterable[model.Match]) -> model.Decision:
    """Combine the matches into one decision (steps 2 and 3 above)."""
    fired = tuple(matches)
    score = min(model.SCORE_MAX, sum(match.score for match in fired))
    action = model.worst(match.action for match in fired)
    spec = policy.spec
    escalated: model.Action | None = None
    if spec.decline_score is not None and score >= spec.decline_score:
        escalated = model.Action.DECLINE
    elif spec.review_score is not None and score >= spec.review_score:
        escalated = model.Action.REVIEW
    if escalated is not None and escalated.severity > action.severity:
        threshold = spec.decline_score if escalated is model.Action.DECLINE else spec.review_score
        fired += (
            model.Match(
                "ScoreThreshold",
                escalated,
                0,
                f"ScoreThreshold: score {score} reached the {escalated.value} threshold "
                f"{threshold}",
            ),
        )
        action = escalated
    return model.Decision(action=action, score=score, matches=fired, policy=policy.ref)


# --- Issuance -------------------------------------------------------------------------------------


def assess_issuance(policy: model.Policy, facts: model.IssuanceFacts) -> model.Decision:
    """Decide whether a new card may be issued: holder country and cards per user."""
    if not isinstance(facts, model.IssuanceFacts):
        raise model.InvalidFacts("assess_issuance needs IssuanceFacts")
    spec = policy.spec
    matches: list[model.Match] = []
    blocked = spec.blocked_holder_countries
    if blocked is not None and facts.holder_country in blocked.countries:
        matches.append(
            _match(
                blocked,
                "BlockedHolderCountry",
                f"BlockedHolderCountry: holder country {facts.holder_country} is blocked",
            )
        )
    per_user = spec.max_cards_per_user
    if per_user is not None and facts.user_cards >= per_user.max_cards:
        matches.append(
            _match(
                per_user,
                "MaxCardsPerUser",
                f"MaxCardsPerUser: the user already holds {facts.user_cards} live cards, "
                f"the maximum is {per_user.max_cards}",
            )
        )
    return decide(policy, matches)


# --- Postings -------------------------------------------------------------------------------------


def assesses(policy: model.Policy, kind: str) -> bool:
    """Whether posting rules apply to postings of this type at all."""
    return any(posting_type.value == kind for posting_type in policy.spec.posting_types)


def velocity_windows(policy: model.Policy) -> tuple[int, ...]:
    """Window lengths (seconds) whose totals :func:`assess_posting` needs, sorted, unique."""
    return tuple(sorted({rule.window_seconds for rule in policy.spec.velocity}))


def assess_posting(
    policy: model.Policy, facts: model.PostingFacts, velocity: model.Velocity
) -> model.Decision:
    """Decide a posting: amount, merchant category and country, then velocity per window.

    ``velocity`` holds, for each window of :func:`velocity_windows`, the card's postings of the
    assessed types in that window *before* this one; this posting is added here.
    """
    if not isinstance(facts, model.PostingFacts):
        raise model.InvalidFacts("assess_posting needs PostingFacts")
    if not isinstance(velocity, model.Velocity):
        raise model.InvalidFacts("assess_posting needs a Velocity")
    if not assesses(policy, facts.kind):
        return decide(policy, ())
    matches = [
        *_amount_matches(policy.spec, facts),
        *_merchant_matches(policy.spec, facts),
        *_velocity_matches(policy.spec, facts, velocity),
    ]
    return decide(policy, matches)


def _amount_matches(
    spec: riskpolicy.RiskPolicySpec, facts: model.PostingFacts
) -> list[model.Match]:
    rule = spec.max_amount_per_transaction
    if rule is None or rule.currency != facts.currency or facts.amount_minor <= rule.amount_minor:
        return []
    return [
        _match(
            rule,
            "MaxAmountPerTransaction",
            f"MaxAmountPerTransaction: {facts.amount_minor} {facts.currency} is above "
            f"{rule.amount_minor}",
        )
    ]


def _merchant_matches(
    spec: riskpolicy.RiskPolicySpec, facts: model.PostingFacts
) -> list[model.Match]:
    matches = []
    mccs = spec.blocked_mccs
    if mccs is not None and facts.merchant_mcc is not None and facts.merchant_mcc in mccs.codes:
        matches.append(
            _match(mccs, "BlockedMcc", f"BlockedMcc: merchant category {facts.merchant_mcc}")
        )
    countries = spec.blocked_merchant_countries
    if (
        countries is not None
        and facts.merchant_country is not None
        and facts.merchant_country in countries.countries
    ):
        matches.append(
            _match(
                countries,
                "BlockedMerchantCountry",
                f"BlockedMerchantCountry: merchant country {facts.merchant_country}",
            )
        )
    return matches


def _velocity_matches(
    spec: riskpolicy.RiskPolicySpec, facts: model.PostingFacts, velocity: model.Velocity
) -> list[model.Match]:
    matches = []
    for rule in spec.velocity:
        before = velocity.totals(rule.window_seconds)
        count = before.count + 1
        if rule.max_count is not None and count > rule.max_count:
            matches.append(
                _match(
                    rule,
                    "VelocityCount",
                    f"VelocityCount: {count} postings in {rule.window_seconds}s, "
                    f"the maximum is {rule.max_count}",
                )
            )
        limit = rule.max_amount
        if limit is not None and limit.currency == facts.currency:
            amount = before.amount_minor + facts.amount_minor
            if amount > limit.amount_minor:
                matches.append(
                    _match(
                        rule,
                        "VelocityAmount",
                        f"VelocityAmount: {amount} {facts.currency} in {rule.window_seconds}s, "
                        f"the maximum is {limit.amount_minor}",
                    )
                )
    return matches
