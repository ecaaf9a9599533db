"""The generated CRDs behave as the API promises on a real kube-apiserver.

Bad YAML is refused at apply time with a message naming the field, immutable fields
stay immutable, Closed stays final, and the status the operator writes is accepted
and kept. No operator runs here: everything is the API server's own validation.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from fintech_operator import api
from tests.conftest import Kubectl, wait_for

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def example(file_name: str) -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((EXAMPLES / file_name).read_text(encoding="utf-8"))
    return document


def card(**spec_changes: Any) -> dict[str, Any]:
    """The example card with some spec fields replaced."""
    document = example("10-card-u_demo.yaml")
    document["spec"].update(spec_changes)
    return document


def posting(**spec_changes: Any) -> dict[str, Any]:
    """The example purchase with some spec fields replaced."""
    document = example("20-posting-purchase.yaml")
    document["spec"].update(spec_changes)
    return document


def apply(kubectl: Kubectl, namespace: str, document: dict[str, Any], *, check: bool = True) -> str:
    """``kubectl apply`` one object; returns what kubectl printed (stderr on failure)."""
    result = kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(document), check=check)
    return result.stdout if result.returncode == 0 else result.stderr


def refused(kubectl: Kubectl, *args: str, input: str | None = None) -> str:
    """Run kubectl expecting the API server to refuse; return its error text."""
    result = kubectl(*args, input=input, check=False)
    assert result.returncode != 0, f"kubectl {' '.join(args)} unexpectedly succeeded"
    return result.stderr


def merge_patch(kind: str, name: str, namespace: str, patch: dict[str, Any]) -> tuple[str, ...]:
    return ("patch", kind, name, "-n", namespace, "--type=merge", "-p", json.dumps(patch))


def test_examples_apply_cleanly(kubectl: Kubectl, crds_installed: None, namespace: str) -> None:
    """Every example passes the API server's schema and CEL validation (server dry run)."""
    result = kubectl("apply", "--dry-run=server", "-n", namespace, "-f", str(EXAMPLES))
    assert "cardproduct.fintech.dev/standard created (server dry run)" in result.stdout
    assert "card.fintech.dev/u-demo-card created (server dry run)" in result.stdout
    assert "posting.fintech.dev/purchase-0001 created (server dry run)" in result.stdout


def test_defaults_are_applied(kubectl: Kubectl, crds_installed: None, namespace: str) -> None:
    """Fields left out get the documented defaults from the schema on the server."""
    minimal = card()
    minimal["spec"] = {
        "userId": "u_min",
        "product": "standard",
        "holder": {"name": "Min", "country": "US"},
    }
    apply(kubectl, namespace, minimal)
    got = json.loads(kubectl("get", "card", "u-demo-card", "-n", namespace, "-o", "json").stdout)
    assert got["spec"]["state"] == "Active"
    assert got["spec"]["type"] == "Virtual"
    assert got["spec"]["holder"]["kycStatus"] == "Pending"


INVALID = [
    (
        "float-amount",
        card(spendLimit={"amount": 12.5, "interval": "Daily"}),
        "spec.spendLimit.amount",
    ),
    (
        "bad-interval",
        card(spendLimit={"amount": 100, "interval": "Weekly"}),
        "spec.spendLimit.interval",
    ),
    ("bad-country", card(holder={"name": "A", "country": "usa"}), "spec.holder.country"),
    ("bad-state", card(state="Open"), "spec.state"),
    ("unknown-field", card(pan="4111111111111111"), "spec.pan"),
    ("lowercase-currency", posting(currency="usd"), "spec.currency"),
    ("zero-amount", posting(amount=0), "spec.amount"),
    ("bad-mcc", posting(merchant={"name": "M", "mcc": "58a4"}), "spec.merchant.mcc"),
    ("bad-time", posting(occurredAt="not-a-time"), "spec.occurredAt"),
    ("time-without-zone", posting(occurredAt="2025-01-15T09:30:00"), "spec.occurredAt"),
]


@pytest.mark.parametrize(
    ("document", "field"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID]
)
def test_invalid_objects_are_refused_naming_the_field(
    kubectl: Kubectl, crds_installed: None, namespace: str, document: dict[str, Any], field: str
) -> None:
    """Each invalid spec is refused at apply time, and the error names the offending field."""
    error = refused(kubectl, "apply", "-n", namespace, "-f", "-", input=json.dumps(document))
    assert field in error


def test_missing_user_id_is_refused(kubectl: Kubectl, crds_installed: None, namespace: str) -> None:
    """A Card without userId is refused as a required field."""
    document = card()
    del document["spec"]["userId"]
    error = refused(kubectl, "apply", "-n", namespace, "-f", "-", input=json.dumps(document))
    assert "spec.userId" in error
    assert "Required value" in error


def test_card_user_id_and_product_are_immutable(
    kubectl: Kubectl, crds_installed: None, namespace: str
) -> None:
    """Changing userId or product of an existing card is refused by the CEL rule; other
    fields (the spend limit) can still change."""
    apply(kubectl, namespace, card())
    error = refused(
        kubectl, *merge_patch("card", "u-demo-card", namespace, {"spec": {"userId": "u_other"}})
    )
    assert "spec.userId" in error
    assert "userId is immutable" in error
    error = refused(
        kubectl, *merge_patch("card", "u-demo-card", namespace, {"spec": {"product": "gold"}})
    )
    assert "product is immutable" in error
    kubectl(*merge_patch("card", "u-demo-card", namespace, {"spec": {"spendLimit": {"amount": 5}}}))


def test_posting_spec_is_immutable(kubectl: Kubectl, crds_installed: None, namespace: str) -> None:
    """Any change to a Posting's spec is refused, even re-applying with a new amount."""
    apply(kubectl, namespace, posting())
    error = refused(
        kubectl, *merge_patch("posting", "purchase-0001", namespace, {"spec": {"amount": 1}})
    )
    assert "spec is immutable" in error
    error = refused(
        kubectl, *merge_patch("posting", "purchase-0001", namespace, {"spec": {"reference": "x"}})
    )
    assert "spec is immutable" in error
    error = apply(kubectl, namespace, posting(currency="EUR"), check=False)
    assert "spec is immutable" in error


def test_closed_is_final(kubectl: Kubectl, crds_installed: None, namespace: str) -> None:
    """A card can go Active -> Frozen -> Active -> Closed, but never out of Closed."""
    apply(kubectl, namespace, card())
    for state in ("Frozen", "Active", "Closed"):
        kubectl(*merge_patch("card", "u-demo-card", namespace, {"spec": {"state": state}}))
    for state in ("Active", "Frozen"):
        error = refused(
            kubectl, *merge_patch("card", "u-demo-card", namespace, {"spec": {"state": state}})
        )
        assert "state Closed is final" in error


def status_round_trip(
    kubectl: Kubectl, namespace: str, kind: str, name: str, status: dict[str, Any]
) -> dict[str, Any]:
    """Write ``status`` through the status subresource and read back what was stored."""
    kubectl(*merge_patch(kind, name, namespace, {"status": status}), "--subresource=status")
    got = json.loads(kubectl("get", kind, name, "-n", namespace, "-o", "json").stdout)
    stored: dict[str, Any] = got["status"]
    return stored


def _ready(reason: str) -> api.Condition:
    return api.Condition.model_validate(
        {
            "type": "Ready",
            "status": "True",
            "reason": reason,
            "message": "ok",
            "lastTransitionTime": "2025-01-15T09:30:00Z",
            "observedGeneration": 1,
        }
    )


def test_operator_status_is_accepted_and_kept(
    kubectl: Kubectl, crds_installed: None, namespace: str
) -> None:
    """Full statuses built with the models are stored unchanged, kopf's state included,
    so the schema never prunes or refuses what the operator writes."""
    apply(kubectl, namespace, card())
    card_status = api.CardStatus(
        phase=api.CardPhase.ACTIVE,
        token="tok_3f9a",
        last4="4242",
        account="card:u-demo-card",
        balance=api.Money(amount_minor=-12500, currency="USD"),
        rewards_points=125,
        risk=api.Decision.model_validate({"decision": "Approve", "score": 10, "model": "v2"}),
        issued_at=_ready("Issued").last_transition_time,
        conditions=[_ready("Issued")],
        observed_generation=1,
        kopf={"progress": {"issue": {"success": True}}},
    )
    expected = api.to_api(card_status)
    assert status_round_trip(kubectl, namespace, "card", "u-demo-card", expected) == expected
    apply(kubectl, namespace, posting())
    posting_status = api.PostingStatus(
        phase=api.PostingPhase.REJECTED,
        journal_id="9007199254740993",
        reason=api.PostingReason.SPEND_LIMIT_EXCEEDED,
        message="over the daily limit",
        conditions=[_ready("Rejected")],
        observed_generation=1,
    )
    expected = api.to_api(posting_status)
    assert status_round_trip(kubectl, namespace, "posting", "purchase-0001", expected) == expected


def test_kubectl_get_is_informative(kubectl: Kubectl, crds_installed: None, namespace: str) -> None:
    """Short names, the fintech category and the printer columns work in ``kubectl get``."""
    kubectl("apply", "-n", namespace, "-f", str(EXAMPLES))
    header = kubectl("get", "cd", "-n", namespace).stdout.splitlines()[0].split()
    assert header == [
        "NAME", "USER", "PRODUCT", "PHASE", "LAST4",
        "BALANCE", "HELD", "AVAILABLE", "POINTS", "AGE",
    ]  # fmt: skip
    header = kubectl("get", "post", "-n", namespace).stdout.splitlines()[0].split()
    assert header == ["NAME", "CARD", "TYPE", "AMOUNT", "CURRENCY", "PHASE", "REASON", "AGE"]
    header = kubectl("get", "cp", "-n", namespace).stdout.splitlines()[0].split()
    assert header == ["NAME", "CURRENCY", "RATE(BPS)", "PHASE", "CARDS", "AGE"]
    everything = kubectl("get", "fintech", "-n", namespace, "-o", "name").stdout.split()
    expected = sorted(
        f"{doc['kind'].lower()}.fintech.dev/{doc['metadata']['name']}"
        for path in sorted(EXAMPLES.glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if doc and doc["apiVersion"].startswith("fintech.dev/")
    )
    assert "card.fintech.dev/u-demo-card" in expected
    assert sorted(everything) == expected


def test_field_selector_on_card(kubectl: Kubectl, crds_installed: None, namespace: str) -> None:
    """Postings can be listed by card on the server (selectableFields)."""
    kubectl("apply", "-n", namespace, "-f", str(EXAMPLES))
    selected = kubectl(
        "get",
        "postings",
        "-n",
        namespace,
        "--field-selector",
        "spec.card=u-demo-card",
        "-o",
        "name",
    ).stdout.split()
    assert "posting.fintech.dev/purchase-0001" in selected
    assert all(name.startswith("posting.fintech.dev/") for name in selected)
    none = kubectl(
        "get", "postings", "-n", namespace, "--field-selector", "spec.card=other", "-o", "name"
    ).stdout.split()
    assert none == []


def test_kubectl_explain_teaches_the_api(kubectl: Kubectl, crds_installed: None) -> None:
    """Field descriptions reach ``kubectl explain`` (published asynchronously, so polled)."""

    def explained() -> str:
        result = kubectl("explain", "cards.spec.spendLimit.amount", check=False)
        return result.stdout if result.returncode == 0 else ""

    text = wait_for("kubectl explain of cards.spec.spendLimit.amount", explained, 60)
    assert "minor units" in text
