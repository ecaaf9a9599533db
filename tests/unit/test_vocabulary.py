"""One vocabulary: the API's enums agree with every other place that names the same things.

Posting types are declared by the API (``Posting.spec.type``) and must mean the same in the
ledger (journal kinds), the events' schemas, rewards and the metrics' labels. Card reasons are
declared by the API and must cover every reason the domain rules can give a card. The reasons
users read must be the ones the docs list.
"""

from __future__ import annotations

import json
import typing
from pathlib import Path

import pytest

from fintech_operator import api
from fintech_operator.cards import http_tokenizer, lifecycle
from fintech_operator.compliance import model as compliance_model
from fintech_operator.compliance import rules, sanctions
from fintech_operator.events import schema
from fintech_operator.ledger import model as ledger_model
from fintech_operator.observability import metrics
from fintech_operator.rewards import points
from fintech_operator.risk import model as risk_model

DOCS = Path(__file__).resolve().parents[2] / "docs"
SDN = '90001,"PETROV, Ivan Demo","individual","DEMO-SDGT",-0- ,-0- ,-0- ,-0- ,-0- ,-0- ,-0- ,-0-\n'


def test_posting_types_agree_everywhere() -> None:
    """api, ledger, events (code and published JSON schemas), rewards and metrics name the same
    five posting types; only the ledger adds Reversal, which no one may request."""
    declared = {t.value for t in api.PostingType}
    assert declared == {"Purchase", "Refund", "Payment", "Fee", "Adjustment"}
    assert {k.value for k in ledger_model.PostingKind} == declared | {"Reversal"}
    assert ledger_model.PostingKind.REVERSAL.value not in declared
    assert set(typing.get_args(schema.PostingType)) == declared
    assert declared == points.POSTING_TYPES
    assert declared == metrics.POSTING_TYPES
    for name in ("dev.fintech.posting.posted.v1", "dev.fintech.posting.reversed.v1"):
        published = json.loads((DOCS / "events" / f"{name}.schema.json").read_text())
        assert set(published["$defs"]["postingType"]["enum"]) == declared, name


def _compliance_reasons() -> set[tuple[compliance_model.Outcome, str]]:
    """(outcome, reason) of every issuance check the compliance rules can return."""
    results = [
        rules.sanctions_not_configured(),
        rules.sanctions_unavailable("list gone", "configmap ns/list[sdn.csv]"),
    ]
    for allow_review in (True, False):
        policy = compliance_model.Policy(
            spec=api.CompliancePolicySpec(kyc=api.KycRules(allow_review=allow_review))
        )
        results += [rules.check_kyc(policy, status.value) for status in api.KycStatus]
    screener = sanctions.Screener.build(sanctions.parse_sdn_csv(SDN))
    for name in ("Ivan Petrov Demo", "Ivan Petrova Demo", "Jane Roe", "!!!"):
        results.append(rules.check_sanctions(screener, name, 8500, "configmap ns/list"))
    return {(result.outcome, result.reason) for result in results}


def test_every_reason_a_card_can_get_is_declared() -> None:
    """Each refusal or review reason the compliance rules, risk, the tokenizer and the
    lifecycle can give a card is a ``CardReason``; clearing reasons never reach status."""
    found = _compliance_reasons()
    outcomes = {outcome for outcome, _ in found}
    issuance = set(compliance_model.Outcome) - {compliance_model.Outcome.ALERT}  # AML only
    assert outcomes == issuance, "the sample misses an outcome"
    decided = {reason for outcome, reason in found if outcome is not compliance_model.Outcome.CLEAR}
    assert {"KycPending", "KycNotAccepted", "KycRejected", "ExactMatch", "PossibleMatch",
            "ScreeningUnavailable", "UnscreenableName"} <= decided  # fmt: skip
    others = {
        risk_model.RiskDeclined.reason,
        http_tokenizer.TokenizerRefused.reason,
        lifecycle.NAME_REUSED,
        lifecycle.verdict(
            risk_model.Decision(
                action=risk_model.Action.REVIEW, score=500, matches=(), policy="default"
            ),
            [],
        ).reason,
    }
    declared = {reason.value for reason in api.CardReason}
    assert decided | others <= declared


@pytest.mark.parametrize(
    ("enum", "doc"),
    [(api.CardReason, "cards.md"), (api.PostingReason, "ledger.md")],
    ids=["cards", "postings"],
)
def test_the_docs_list_every_reason(enum: type[typing.Any], doc: str) -> None:
    """A user reading the docs finds every reason ``kubectl get`` can show them."""
    text = (DOCS / doc).read_text(encoding="utf-8")
    missing = [reason.value for reason in enum if f"`{reason.value}`" not in text]
    assert not missing, f"docs/{doc} does not mention {missing}"


def test_ready_is_a_condition_type() -> None:
    """The condition every kind carries is one of the declared condition types."""
    assert api.READY is api.ConditionType.READY
    assert api.READY == "Ready"
