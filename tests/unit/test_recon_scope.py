"""Whose money a ReconciliationRun compares: its namespace's, unless the administrator allows
a cluster-wide run in one namespace (DESIGN.md invariant 10; issue 11, item 2)."""

from __future__ import annotations

from typing import Any

import pydantic
import pytest

from fintech_operator import api, config
from fintech_operator.ledger import model
from fintech_operator.recon import plans, store

BASE = {"DATABASE_URL": "postgresql://x@127.0.0.1/db", "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9092"}
SPEC: dict[str, Any] = {"checks": ["TrialBalance"]}


def spec(**extra: Any) -> api.ReconciliationRunSpec:
    return api.ReconciliationRunSpec.model_validate({**SPEC, **extra})


def test_a_run_is_namespaced_unless_it_asks_otherwise() -> None:
    """No scope means Namespace: the plan compares the run's own namespace only."""
    plan = plans.plan_of(spec())
    assert plan.cluster_wide is False
    key = store.RunKey("uid", "team-a", "run")
    assert store.scope_of(key, plan) == "team-a"
    assert plans.cluster_scope_refusal(spec(), "team-a", "") is None
    wide = plans.plan_of(spec(scope="Cluster"))
    assert wide.cluster_wide is True
    assert store.scope_of(key, wide) is None


@pytest.mark.parametrize(
    ("namespace", "allowed"),
    [("team-a", ""), ("team-a", "finance"), ("finance-2", "finance"), ("", "")],
)
def test_a_cluster_run_outside_the_allowed_namespace_is_refused(
    namespace: str, allowed: str
) -> None:
    """Cluster scope is refused everywhere when no namespace is allowed, and in every
    namespace but the allowed one (no prefix match); the reason names the setting."""
    refusal = plans.cluster_scope_refusal(spec(scope="Cluster"), namespace, allowed)
    assert refusal is not None
    assert "FINTECH_RECON_CLUSTER_NAMESPACE" in refusal
    assert plans.cluster_scope_refusal(spec(scope="Namespace"), namespace, allowed) is None


def test_a_cluster_run_in_the_allowed_namespace_is_allowed() -> None:
    assert plans.cluster_scope_refusal(spec(scope="Cluster"), "finance", "finance") is None


@pytest.mark.parametrize("scope", ["cluster", "All", "", 1])
def test_bad_scopes_are_refused(scope: object) -> None:
    with pytest.raises(pydantic.ValidationError, match="scope"):
        spec(scope=scope)


def test_the_cluster_namespace_setting_defaults_to_none() -> None:
    assert config.load(BASE).recon.cluster_namespace == ""
    loaded = config.load({**BASE, "FINTECH_RECON_CLUSTER_NAMESPACE": "finance"})
    assert loaded.recon.cluster_namespace == "finance"


@pytest.mark.parametrize("value", ["Finance", "team/a", "-a", "a" * 64, "a b", "*"])
def test_bad_cluster_namespaces_name_the_variable(value: str) -> None:
    """Only a namespace name (RFC 1123 label) may be named: no pattern, no prefix."""
    with pytest.raises(config.SettingsError, match="FINTECH_RECON_CLUSTER_NAMESPACE"):
        config.load({**BASE, "FINTECH_RECON_CLUSTER_NAMESPACE": value})


@pytest.mark.parametrize(
    ("code", "namespace"),
    [
        ("card:team-a/alice:USD", "team-a"),
        ("card:a/b/c:USD", "a"),
        ("card:a/b:c:USD", "a"),  # as migration 0045's SQL reads it: the code's second field
        ("card:alice:USD", None),
        ("card:/alice:USD", None),
        ("system:network_settlement:USD", None),
        ("system:x/y:USD", None),
        ("nonsense", None),
    ],
)
def test_a_card_account_codes_namespace(code: str, namespace: str | None) -> None:
    assert model.card_namespace(code) == namespace


def test_a_journal_moves_one_namespaces_money() -> None:
    """Derived from the card lines, or declared; two namespaces, or a bad name, are refused."""
    a = model.Line("card:a/x:USD", model.Direction.DEBIT, 5, "USD")
    b = model.Line("card:b/x:USD", model.Direction.CREDIT, 5, "USD")
    system = model.Line("system:cash:USD", model.Direction.CREDIT, 5, "USD")
    assert model.journal_namespace(None, [a, system]) == "a"
    assert model.journal_namespace("a", [a, system]) == "a"
    assert model.journal_namespace(None, [system]) is None
    assert model.journal_namespace("c", [system]) == "c"
    for declared, lines in ((None, [a, b]), ("b", [a, system])):
        with pytest.raises(model.InvalidRequest, match="one namespace"):
            model.journal_namespace(declared, lines)
    for bad in ("", "a/b", "a b", 7):
        with pytest.raises(model.InvalidRequest, match="namespace"):
            model.journal_namespace(bad, [system])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "overrides",
    [
        {"join_work_mem_mb": 32},  # below work_mem_mb (64)
        {"join_work_mem_mb": 5000},
        {"work_mem_mb": 128, "join_work_mem_mb": 64},
    ],
)
def test_a_join_memory_below_work_mem_or_too_large_fails_at_start_up(
    overrides: dict[str, int],
) -> None:
    """The join's memory bound lies between the run's work_mem and 4 GiB, or the limits are
    refused when built; the default is accepted."""
    with pytest.raises(ValueError, match="join_work_mem_mb"):
        store.Limits(**overrides)
    assert store.Limits().join_work_mem_mb == 256
