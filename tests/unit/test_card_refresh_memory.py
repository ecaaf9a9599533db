"""What the operator keeps per Card stays small (issue 14), and reviews still get applied.

kopf keeps the whole last-seen body of every object of a kind that has a timer or daemon, so
Cards have none: their reviews are applied by a timer per namespace, fed by one index that keeps
only what the namespace's timers need.
"""

from __future__ import annotations

import asyncio
import importlib
import types
from typing import Any, cast

import kopf
import pytest

from fintech_operator import config, runtime

SETTINGS = {"DATABASE_URL": "postgresql://unused@127.0.0.1:1/unused",
            "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"}  # fmt: skip


@pytest.fixture(autouse=True)
def refresh() -> types.ModuleType:
    return importlib.import_module("fintech_operator.handlers.card_refresh")


CONDITIONS = [{"type": "Ready", "status": "True", "reason": "Issued", "message": "issued"}]


def card(phase: str, state: str = "Active", name: str = "c1") -> kopf.Body:
    raw: dict[str, Any] = {
        "apiVersion": "fintech.dev/v1alpha1",
        "kind": "Card",
        "metadata": {"name": name, "namespace": "ns", "uid": f"uid-{name}", "generation": 1,
                     "creationTimestamp": "2026-12-05T10:00:00Z",
                     "managedFields": [{"manager": "kubectl"}]},
        "spec": {"userId": "u1", "product": "standard", "state": state,
                 "holder": {"name": "A", "country": "US", "kycStatus": "Pending"}},
        "status": {"phase": phase, "account": "card:ns/c1:USD" if phase != "PendingReview"
                   else None, "balance": {"amount": 0, "currency": "USD"},
                   "conditions": CONDITIONS, "reason": "Issued", "token": "tok",
                   "kopf": {"last-handled-configuration": "{}"}},
    }  # fmt: skip
    return kopf.Body(cast(kopf.RawBody, raw))


def index(refresh: types.ModuleType, body: kopf.Body) -> dict[Any, Any]:
    result: dict[Any, Any] = refresh.namespace_cards(
        namespace="ns", name=body.metadata.name, body=body
    )
    return result


def test_cards_have_no_timer_or_daemon() -> None:
    """The property that keeps kopf from holding every card's body (it did, ~90 KiB a card)."""
    # The operator's registry, as it runs (nothing here connects anywhere).
    registry = runtime.build_registry(config.load(SETTINGS))
    spawning = [
        h
        for h in registry._spawning._handlers
        if h.selector and "cards" in (h.selector.plural, h.selector.any_name)
    ]
    assert spawning == []
    # The selector's spelling is the one the timers of CardProduct have (the check is live).
    assert any(h.selector and h.selector.any_name == "cardproducts"
               for h in registry._spawning._handlers)  # fmt: skip


def test_an_issued_card_keeps_only_what_the_refresh_reads(refresh: types.ModuleType) -> None:
    """One flat tuple per issued card, no dicts; the refresh builds a body from it per pass."""
    kept = index(refresh, card("Active"))["ns"]
    assert isinstance(kept, refresh.IssuedCard)
    assert not any(isinstance(value, dict) for value in kept)
    assert kept.closing is None  # only a card being closed keeps its conditions
    snapshot = refresh.snapshot_of(kept)
    assert snapshot["metadata"]["uid"] == "uid-c1"
    assert snapshot["spec"] == {"state": "Active"}
    assert snapshot["status"] == {"phase": "Active", "account": "card:ns/c1:USD",
                                  "balance": {"amount": 0, "currency": "USD"}}  # fmt: skip
    assert "managedFields" not in snapshot["metadata"]
    assert refresh.issued([kept, {"status": {"phase": "PendingReview"}}]) == [kept]


def test_an_issued_cards_figures_come_back_as_its_status_showed_them(
    refresh: types.ModuleType,
) -> None:
    raw = dict(card("Frozen"))
    raw["status"] = {**raw["status"], "rewardsPoints": 12,
                     "aml": {"alerts": 2, "lastAlertId": 7, "lastAlert": "x"},
                     "held": {"amount": 500, "currency": "USD"},
                     "available": {"amount": 1500, "currency": "USD"}}  # fmt: skip
    body = kopf.Body(cast(kopf.RawBody, raw))
    status = refresh.snapshot_of(index(refresh, body)["ns"])["status"]
    assert status["rewardsPoints"] == 12
    assert status["aml"] == {"alerts": 2, "lastAlertId": 7, "lastAlert": "x"}
    assert status["held"]["amount"] == 500
    assert status["available"]["amount"] == 1500
    assert status["phase"] == "Frozen"


def test_a_card_being_closed_also_keeps_its_conditions(refresh: types.ModuleType) -> None:
    kept = refresh.snapshot_of(index(refresh, card("Active", state="Closed"))["ns"])
    assert kept["status"]["conditions"] == CONDITIONS
    assert kept["status"]["reason"] == "Issued"
    assert kept["spec"] == {"state": "Closed"}


def test_a_card_in_review_keeps_its_spec_and_status_but_not_kopf_state(
    refresh: types.ModuleType,
) -> None:
    kept = index(refresh, card("PendingReview"))["ns"]
    assert kept["spec"]["holder"]["kycStatus"] == "Pending"
    assert kept["status"]["conditions"] == CONDITIONS
    assert "kopf" not in kept["status"]
    assert refresh.in_review([kept]) == [kept]
    assert refresh.issued([kept]) == []


@pytest.mark.parametrize("phase", ["Pending", "Rejected", "Closed"])
def test_other_cards_are_not_indexed(refresh: types.ModuleType, phase: str) -> None:
    assert index(refresh, card(phase)) == {}


class _Calls:
    def __init__(self) -> None:
        self.patched: list[tuple[str, dict[str, Any]]] = []
        self.applied: list[str] = []


def _install_fakes(
    monkeypatch: pytest.MonkeyPatch, refresh: types.ModuleType, outcomes: dict[str, Any]
) -> _Calls:
    """cards.apply_review and the status patch replaced: what each card's review does."""
    calls = _Calls()

    async def apply_review(*, name: str, patch: kopf.Patch, retry: int, **_: Any) -> None:
        calls.applied.append(f"{name}#{retry}")
        patch.status["review"] = {"decision": "Approve"}
        outcome = outcomes.get(name)
        if outcome is not None:
            raise outcome

    async def patch_status(plural: str, ns: str, name: str, uid: str, status: Any) -> bool:
        calls.patched.append((name, status))
        return True

    monkeypatch.setattr(refresh.cards, "apply_review", apply_review)
    monkeypatch.setattr(refresh.kube, "patch_status", patch_status)
    return calls


def _tick(refresh: types.ModuleType, memo: kopf.Memo, snapshots: list[Any]) -> None:
    index_ = {"ns": snapshots}
    asyncio.run(
        refresh.apply_reviews(
            namespace="ns", name="standard", memo=memo, cardproducts={},
            namespace_cards=index_, product_names={"ns": [("standard", False)]},
        )
    )  # fmt: skip


def test_reviews_are_applied_per_card_with_waits_and_failures_kept_apart(
    refresh: types.ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A wait (the processor) patches its status and is not tried again before its delay; an
    unexpected failure of one card leaves the others alone; a card that left review is
    forgotten."""
    waiting = kopf.TemporaryError("waiting: processor down", delay=600)
    calls = _install_fakes(
        monkeypatch, refresh, {"a": waiting, "b": RuntimeError("boom"), "c": None}
    )
    memo = kopf.Memo(card_review_waits={})
    snaps = [index(refresh, card("PendingReview", name=n))["ns"] for n in ("a", "b", "c")]
    snaps.append(index(refresh, card("Active", name="d"))["ns"])  # issued: not a review
    _tick(refresh, memo, snaps)
    assert calls.applied == ["a#0", "b#0", "c#0"]
    # Applied even after a failure, as kopf applies a handler's patch.
    assert [name for name, _ in calls.patched] == ["a", "b", "c"]
    assert set(memo.card_review_waits) == {"uid-a", "uid-b"}
    _tick(refresh, memo, snaps)
    assert calls.applied == ["a#0", "b#0", "c#0", "c#0"]  # a and b wait their delay
    _tick(refresh, memo, [snaps[2]])  # a and b left review (decided or deleted)
    assert memo.card_review_waits == {}


def test_only_the_namespace_owner_product_applies_reviews(
    refresh: types.ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _install_fakes(monkeypatch, refresh, {})
    memo = kopf.Memo(card_review_waits={})
    snaps = [index(refresh, card("PendingReview", name="a"))["ns"]]
    asyncio.run(
        refresh.apply_reviews(
            namespace="ns", name="premium", memo=memo, cardproducts={},
            namespace_cards={"ns": snaps},
            product_names={"ns": [("premium", False), ("basic", False)]},
        )
    )  # fmt: skip
    assert calls.applied == []
