"""CheckPolicy's outcomes for both policy kinds, with fakes of its ports (no kopf, no database):
invalid specs are rejected with words, the first policy by name is in use, a RiskPolicy in use
mirrors its rules (on a recheck only when it has just come into use), and a CompliancePolicy
whose sanctions list cannot load is degraded with the list's reason. The handler's status
builders speak the API's field names only."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from fintech_operator import api
from fintech_operator.app import policies
from fintech_operator.app.outcomes import Rejected
from fintech_operator.compliance import lists, sanctions
from fintech_operator.handlers import policies as handler

NS = "team-a"
SDN = '90001,"PETROV, Ivan Demo","individual","DEMO-SDGT",-0- ,-0- ,-0- ,-0- ,-0- ,-0- ,-0- ,-0-\n'
RISK_SPEC: dict[str, Any] = {
    "blockedMccs": {"codes": ["7995"]},
    "velocity": [{"windowSeconds": 3600, "maxCount": 5}],
}


@dataclasses.dataclass
class FakeSelection:
    in_use_names: set[str]

    def in_use(self, namespace: str, name: str) -> bool:
        return namespace == NS and name in self.in_use_names


@dataclasses.dataclass
class FakeRules:
    put_calls: list[tuple[str, str, api.RiskPolicySpec]] = dataclasses.field(default_factory=list)

    async def put(self, namespace: str, policy: str, spec: api.RiskPolicySpec) -> None:
        self.put_calls.append((namespace, policy, spec))

    async def drop(self, namespace: str, policy: str) -> None:
        raise AssertionError("a check never drops rules")


@dataclasses.dataclass
class FakeLists:
    unavailable: lists.ListUnavailable | None = None

    async def get(self, namespace: str, config_map: str, key: str) -> lists.Loaded:
        if self.unavailable is not None:
            raise self.unavailable
        screener = sanctions.Screener.build(sanctions.parse_sdn_csv(SDN))
        return lists.Loaded(screener, namespace, config_map, key, "42", 0.0)


def command(spec: dict[str, Any], name: str = "a", **extra: Any) -> policies.CheckPolicy:
    return policies.CheckPolicy(NS, name, spec, **extra)


async def test_a_risk_policy_in_use_reports_its_rules_and_mirrors_them() -> None:
    rules = FakeRules()
    outcome = await policies.check_risk_policy(command(RISK_SPEC), FakeSelection({"a"}), rules)
    assert outcome == policies.Checked(True, api.PolicyReason.VALID, "2 rule(s); in use", rules=2)
    assert [(ns, ref) for ns, ref, _ in rules.put_calls] == [(NS, "team-a/a")]
    assert rules.put_calls[0][2].blocked_mccs is not None


async def test_a_shadowed_risk_policy_is_valid_but_not_in_use_and_mirrors_nothing() -> None:
    rules = FakeRules()
    outcome = await policies.check_risk_policy(command(RISK_SPEC), FakeSelection({"0"}), rules)
    assert isinstance(outcome, policies.Checked)
    assert outcome.usable
    assert not outcome.in_use
    assert outcome.message == f"2 rule(s); not in use: {policies.SHADOWED}"
    assert rules.put_calls == []


@pytest.mark.parametrize(
    ("was_in_use", "puts"),
    [(True, 0), (False, 1), (None, 1)],
)
async def test_a_recheck_mirrors_the_rules_only_when_the_policy_came_into_use(
    was_in_use: bool | None, puts: int
) -> None:
    rules = FakeRules()
    recheck = command(RISK_SPEC, spec_changed=False, was_in_use=was_in_use)
    outcome = await policies.check_risk_policy(recheck, FakeSelection({"a"}), rules)
    assert isinstance(outcome, policies.Checked)
    assert outcome.in_use
    assert len(rules.put_calls) == puts


async def test_an_invalid_risk_policy_is_rejected_naming_the_field() -> None:
    rules = FakeRules()
    bad = {"reviewScore": 900, "declineScore": 100, "blockedMccs": {"codes": ["79"]}}
    outcome = await policies.check_risk_policy(command(bad), FakeSelection({"a"}), rules)
    assert isinstance(outcome, Rejected)
    assert outcome.reason is api.PolicyReason.INVALID_SPEC
    assert "spec.blockedMccs.codes[0]" in outcome.message
    assert rules.put_calls == []


async def test_a_compliance_policy_without_a_list_is_valid() -> None:
    outcome = await policies.check_compliance_policy(command({}), FakeSelection({"a"}), FakeLists())
    assert outcome == policies.Checked(True, api.PolicyReason.VALID, "valid")


async def test_a_compliance_policy_reports_the_list_it_loaded() -> None:
    spec = {"sanctions": {"configMap": "sdn-list"}}
    outcome = await policies.check_compliance_policy(
        command(spec, name="b"), FakeSelection({"a"}), FakeLists()
    )
    assert isinstance(outcome, policies.Checked)
    assert outcome.usable
    assert not outcome.in_use
    size = sanctions.Screener.build(sanctions.parse_sdn_csv(SDN)).size
    assert outcome.sanctions_list == policies.ListLoaded("sdn-list", "42", size)
    assert outcome.message.startswith("sanctions list configmap team-a/sdn-list[sdn.csv]: ")
    assert outcome.message.endswith(f": {size} names; not in use: {policies.SHADOWED}")


async def test_a_list_that_cannot_load_degrades_the_policy_with_its_reason() -> None:
    missing = lists.ListUnavailable("SanctionsListNotFound", "configmap team-a/sdn does not exist")
    spec = {"sanctions": {"configMap": "sdn"}}
    outcome = await policies.check_compliance_policy(
        command(spec), FakeSelection({"a"}), FakeLists(missing)
    )
    assert outcome == policies.Checked(
        True,
        api.PolicyReason.SANCTIONS_LIST_NOT_FOUND,
        "configmap team-a/sdn does not exist; new cards are held in PendingReview "
        "(ScreeningUnavailable) until the list loads; a card held meanwhile waits for a "
        "CardReview, or a change of its spec.holder screens it again",
    )
    assert isinstance(outcome, policies.Checked)
    assert not outcome.usable


async def test_an_invalid_compliance_policy_is_rejected_naming_the_field() -> None:
    outcome = await policies.check_compliance_policy(
        command({"aml": {"timeZone": "Mars/Olympus"}}), FakeSelection({"a"}), FakeLists()
    )
    assert isinstance(outcome, Rejected)
    assert outcome.reason is api.PolicyReason.INVALID_SPEC
    assert outcome.message.startswith("spec.aml.timeZone")


def test_status_builders_write_api_names_and_clear_what_no_longer_applies() -> None:
    """Degraded shows reason and message; Ready clears them and the list (null removes)."""
    degraded = policies.Checked(False, api.PolicyReason.SANCTIONS_LIST_INVALID, "bad list")
    fields = handler.report.status_fields(handler._compliance_status(degraded, [], 3))
    assert fields == {
        "phase": "Degraded",
        "inUse": False,
        "sanctionsList": None,
        "reason": "SanctionsListInvalid",
        "message": "bad list",
        "conditions": [],
        "observedGeneration": 3,
    }
    ready = policies.Checked(True, api.PolicyReason.VALID, "1 rule(s); in use", rules=1)
    fields = handler.report.status_fields(handler._risk_status(ready, [], 4))
    assert fields == {
        "phase": "Ready",
        "inUse": True,
        "rules": 1,
        "reason": None,
        "message": None,
        "conditions": [],
        "observedGeneration": 4,
    }
    rejected = Rejected(api.PolicyReason.INVALID_SPEC, "spec.x: wrong")
    fields = handler.report.status_fields(handler._risk_status(rejected, [], 5))
    assert (fields["phase"], fields["inUse"], fields["reason"]) == (
        "Rejected",
        False,
        "InvalidSpec",
    )
    assert "rules" not in fields


def test_a_recheck_writes_only_when_more_than_the_words_changed() -> None:
    current = {"phase": "Ready", "inUse": True, "rules": 1, "message": "old", "conditions": []}
    same = {"phase": "Ready", "inUse": True, "rules": 1, "message": "new", "conditions": [{}]}
    assert not handler._changed(current, same)
    assert handler._changed(current, {**same, "inUse": False})
    assert handler._changed(current, {**same, "observedGeneration": 2})
