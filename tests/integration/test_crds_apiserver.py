"""The generated CRDs behave as the API promises on a real kube-apiserver.

Bad YAML is refused at apply time with a message naming the field, immutable fields
stay immutable, Closed stays final, and the status the operator writes is accepted
and kept. No operator runs here: everything is the API server's own validation.
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
from collections.abc import Iterator
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


@pytest.mark.parametrize(
    ("kind", "document", "field"),
    [
        (
            "card",
            card(holder={"name": "Ana 4111111111111111", "country": "US"}),
            "spec.holder.name",
        ),
        ("card", card(memo="paid with 4111 1111 1111 1111"), "spec.memo"),
        ("card", card(memo="ref 5500-0000-0000-0004 ok"), "spec.memo"),
        (
            "posting",
            posting(merchant={"name": "Cafe 4111 1111 1111 1111", "mcc": "5814"}),
            "spec.merchant.name",
        ),
        (
            "cardreview",
            {
                "apiVersion": "fintech.dev/v1alpha1",
                "kind": "CardReview",
                "metadata": {"name": "pan-in-comment"},
                "spec": {
                    "card": "u-demo-card",
                    "decision": "Approve",
                    "reviewer": "ana@example.com",
                    "comment": "matched card 4111111111111111 to the passport",
                },
            },
            "spec.comment",
        ),
    ],
)
def test_a_card_number_in_free_text_is_refused_at_apply_time(
    kubectl: Kubectl,
    crds_installed: None,
    namespace: str,
    kind: str,
    document: dict[str, Any],
    field: str,
) -> None:
    """Invariant 7 (docs/cards.md, "Card numbers"): a card number typed into a holder's name, a
    card's memo or a review's comment was stored in etcd and copied into the ledger's audit
    rows; the API server now refuses it, naming the field, and nothing is stored."""
    error = refused(kubectl, "apply", "-n", namespace, "-f", "-", input=json.dumps(document))
    assert f"{field}: Invalid value" in error
    assert "must not contain a card number" in error
    name = document["metadata"]["name"]
    assert kubectl("get", kind, name, "-n", namespace, check=False).returncode != 0


def test_digits_that_are_no_card_number_are_accepted(
    kubectl: Kubectl, crds_installed: None, namespace: str
) -> None:
    """A phone number, a date or a short reference in a memo is not mistaken for one."""
    document = card(memo="call +1 555 123 4567 on 2025-01-15 about ticket 4711")
    assert "created" in apply(kubectl, namespace, document)


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
        "NAME", "USER", "PRODUCT", "PHASE", "REASON", "LAST4",
        "BALANCE", "HELD", "AVAILABLE", "POINTS", "AGE",
    ]  # fmt: skip
    header = kubectl("get", "post", "-n", namespace).stdout.splitlines()[0].split()
    assert header == ["NAME", "CARD", "TYPE", "AMOUNT", "CURRENCY", "PHASE", "REASON", "AGE"]
    header = kubectl("get", "cp", "-n", namespace).stdout.splitlines()[0].split()
    assert header == ["NAME", "CURRENCY", "RATE(BPS)", "PHASE", "REASON", "CARDS", "AGE"]
    everything = kubectl("get", "fintech", "-n", namespace, "-o", "name").stdout.split()
    expected = sorted(
        f"{doc['kind'].lower()}.fintech.dev/{doc['metadata']['name']}"
        for path in sorted(EXAMPLES.glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if doc and doc["apiVersion"].startswith("fintech.dev/")
    )
    assert "card.fintech.dev/u-demo-card" in expected
    assert sorted(everything) == expected


def test_kubectl_get_shows_why_a_card_waits_or_was_rejected(
    kubectl: Kubectl, crds_installed: None, namespace: str
) -> None:
    """The Reason column shows status.reason in plain ``kubectl get cards``: no describe."""
    apply(kubectl, namespace, card())
    status = api.CardStatus(
        phase=api.CardPhase.PENDING_REVIEW, reason="PossibleMatch", message="screening"
    )
    status_round_trip(kubectl, namespace, "card", "u-demo-card", api.to_api(status))
    header, row = kubectl("get", "cards", "-n", namespace).stdout.splitlines()[:2]
    # Empty cells (no last 4 yet) are blank, so cells are cut at the header's offsets.
    start, end = header.index("REASON"), header.index("LAST4")
    assert row[header.index("PHASE") : start].strip() == "PendingReview"
    assert row[start:end].strip() == "PossibleMatch"


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


# --- Issue 11.6: every validated spec field is refused in words, and never hides CEL rules ---

NOT_CHECKED = "some validation rules were not checked"
_TIME = "2025-01-15T09:30:00Z"
_MONEY = {"amount": 100, "currency": "USD"}
_SOURCE_INLINE = {
    "inline": [{"reference": "r-1", "amount": 100, "currency": "USD", "occurredAt": _TIME}]
}
_SOURCE_CONFIGMAP = {"configMapKeyRef": {"name": "settlement", "key": "file.csv"}}
_SOURCE_SECRET = {"secretKeyRef": {"name": "settlement", "key": "file.csv"}}
_SOURCE_HTTP = {
    "http": {
        "url": "https://files.example.com/f.csv",
        "credentialsSecretRef": {"name": "processor"},
    }
}
_SOURCES = (_SOURCE_INLINE, _SOURCE_CONFIGMAP, _SOURCE_SECRET, _SOURCE_HTTP)

# Valid specs that between them hold every optional string field of each kind (the run's
# sources are exclusive, so it needs one spec per source).
VALID_SPECS: dict[str, list[dict[str, Any]]] = {
    "CardProduct": [{"currency": "USD"}],
    "Card": [
        {
            "userId": "u_demo",
            "product": "standard",
            "memo": "m",
            "holder": {"name": "Ada", "country": "US"},
        }
    ],
    "Posting": [
        {
            "card": "u-demo-card",
            "type": "Adjustment",
            "amount": 100,
            "currency": "USD",
            "merchant": {"name": "Cafe", "mcc": "5812", "country": "US"},
            "reference": "ticket-1",
            "occurredAt": _TIME,
            "idempotencyKey": "backoffice/1",
            "reverses": "adjustment-0001",
            "entries": [
                {"account": "card:a", "direction": "Debit", "amount": 100, "currency": "USD"},
                {"account": "system:b", "direction": "Credit", "amount": 100, "currency": "USD"},
            ],
        }
    ],
    "RiskPolicy": [
        {
            "maxAmountPerTransaction": {**_MONEY},
            "velocity": [{"windowSeconds": 3600, "maxAmount": {**_MONEY}, "action": "Decline"}],
            "blockedMccs": {"codes": ["7995"]},
            "blockedMerchantCountries": {"countries": ["KP"]},
            "blockedHolderCountries": {"countries": ["KP"]},
        }
    ],
    "CompliancePolicy": [
        {
            "sanctions": {"configMap": "sdn-list", "key": "sdn.csv"},
            "aml": {"dailyThreshold": {**_MONEY}, "timeZone": "Europe/Berlin"},
        }
    ],
    "CardReview": [
        {
            "card": "u-demo-card",
            "decision": "Approve",
            "reviewer": "r@example.com",
            "comment": "KYC documents checked",
        }
    ],
    "ReconciliationRun": [
        {"source": source, "window": {"start": _TIME, "end": "2025-01-16T00:00:00+01:00"}}
        for source in _SOURCES
    ],
    "ReconciliationSchedule": [
        {"schedule": "0 2 * * *", "template": {"source": source}} for source in _SOURCES
    ],
    "Webhook": [
        {
            "url": "https://hooks.example.com/fintech",
            "eventTypes": ["dev.fintech.posting.*"],
            "secretRef": {"name": "hook-secret", "key": "secret"},
        }
    ],
}


def _document(info: api.KindInfo, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": api.API_VERSION,
        "kind": info.kind,
        "metadata": {"name": "bad-input"},
        "spec": spec,
    }


def _string_fields(schema: dict[str, Any], path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """(path, rule) of every string whose rule says what it expects ("must be ...")."""
    for rule in schema.get("x-kubernetes-validations", ()):
        if schema.get("type") == "string" and rule["message"].startswith("must be "):
            yield path, rule
    for name, child in schema.get("properties", {}).items():
        yield from _string_fields(child, f"{path}.{name}")
    if "items" in schema:
        yield from _string_fields(schema["items"], f"{path}[0]")


def _bad_values(rule: dict[str, Any]) -> list[str]:
    """A value one character too long and, where there is a shape, one of the wrong shape."""
    longest = int(re.search(r"size\(self\) <= (\d+)", rule["rule"]).group(1))  # type: ignore[union-attr]
    values = ["a" * (longest + 1)]
    if "self.matches(" in rule["rule"]:
        values.append(" x")
    elif "size(self) >= 1" in rule["rule"]:
        values.append("")
    return values


def _set(document: dict[str, Any], path: str, value: str) -> bool:
    """Set the field at ``spec.a[0].b`` in place; False when the document lacks its parent."""
    parts = re.findall(r"[^.\[\]]+|\[0\]", path)
    node: Any = document
    for part in parts[:-1]:
        if part == "[0]":
            if not node:
                return False
            node = node[0]
        elif part in node:
            node = node[part]
        else:
            return False
    if parts[-1] == "[0]":
        node[0] = value
    else:
        node[parts[-1]] = value
    return True


def _put(document: dict[str, Any], path: str, value: object) -> None:
    """Set the field at ``spec.a[0].b``, creating the objects and lists on the way."""
    parts = re.findall(r"[^.\[\]]+|\[0\]", path)
    node: Any = document
    for part, after in zip(parts, [*parts[1:], None], strict=True):
        if after is None:
            if part == "[0]":
                node[:1] = [value]
            else:
                node[part] = value
        elif part == "[0]":
            if not node:
                node.append([] if after == "[0]" else {})
            node = node[0]
        else:
            node = node.setdefault(part, [] if after == "[0]" else {})


def _bounded_fields(schema: dict[str, Any], path: str) -> Iterator[tuple[str, object, str]]:
    """(path, bad value, words the API server must say) of every numeric bound and enum."""
    if schema.get("type") == "integer":
        if "minimum" in schema:
            low = schema["minimum"]
            yield path, low - 1, f"should be greater than or equal to {low}"
        if "maximum" in schema:
            high = schema["maximum"]
            yield path, high + 1, f"should be less than or equal to {high}"
    if "enum" in schema and len(schema["enum"]) > 1:
        yield path, "Bogus", "supported values: " + ", ".join(f'"{v}"' for v in schema["enum"])
    for name, child in schema.get("properties", {}).items():
        yield from _bounded_fields(child, f"{path}.{name}")
    if "items" in schema:
        yield from _bounded_fields(schema["items"], f"{path}[0]")


def _crd_spec_schema(info: api.KindInfo) -> dict[str, Any]:
    from fintech_operator.api import crdgen  # noqa: PLC0415

    crd = crdgen.render_crd(info)
    schema: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema["properties"]["spec"]  # type: ignore[no-any-return]


@pytest.mark.parametrize("info", api.KINDS, ids=[info.kind for info in api.KINDS])
def test_every_validated_field_says_what_it_expects(
    kubectl: Kubectl, crds_installed: None, namespace: str, info: api.KindInfo
) -> None:
    """For each string field with a shape or a length, a bad value is refused with a message
    that names the field and says what is expected ("must be ..."), and the API server never
    adds that it skipped other rules: the valid specs themselves are accepted."""

    def create(document: dict[str, Any]) -> subprocess.CompletedProcess[str]:
        return kubectl(
            "create",
            "--dry-run=server",
            "-n",
            namespace,
            "-f",
            "-",
            input=json.dumps(document),
            check=False,
        )

    for spec in VALID_SPECS[info.kind]:
        accepted = create(_document(info, spec))
        assert accepted.returncode == 0, accepted.stderr
    fields = list(_string_fields(_crd_spec_schema(info), "spec"))
    assert fields, f"{info.kind} has no validated string field"
    problems = []
    for path, rule in fields:
        documents = [_document(info, copy.deepcopy(spec)) for spec in VALID_SPECS[info.kind]]
        document = next((d for d in documents if _set(d, path, "")), None)
        assert document is not None, f"no valid {info.kind} spec holds {path}: add one"
        for value in _bad_values(rule):
            _set(document, path, value)
            error = create(document).stderr
            if f"{path}: Invalid value" not in error or rule["message"] not in error:
                problems.append(f"{path}={value[:20]!r}: {error.strip()}")
            if NOT_CHECKED in error:
                problems.append(f"{path}={value[:20]!r} hid CEL rules: {error.strip()}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("info", api.KINDS, ids=[info.kind for info in api.KINDS])
def test_every_bounded_number_and_enum_says_what_it_expects(
    kubectl: Kubectl, crds_installed: None, namespace: str, info: api.KindInfo
) -> None:
    """Numbers out of their range name the field and the bound; an unknown enum value names
    the field and lists the values the API accepts (the API server's own messages)."""
    fields = list(_bounded_fields(_crd_spec_schema(info), "spec"))
    problems = []
    for path, value, words in fields:
        document = _document(info, copy.deepcopy(VALID_SPECS[info.kind][0]))
        _put(document, path, value)
        error = kubectl("create", "--dry-run=server", "-n", namespace, "-f", "-",
                        input=json.dumps(document), check=False).stderr  # fmt: skip
        if f"{path}: " not in error or words not in error:
            problems.append(f"{path}={value!r}: wanted {words!r}, got: {error.strip()}")
    assert not problems, "\n".join(problems)
    assert fields or info.kind == "CardReview", f"{info.kind} has no bounded field"


def test_a_bad_country_says_what_is_expected_and_hides_no_rule(
    kubectl: Kubectl, crds_installed: None, namespace: str
) -> None:
    """The issue's example: a three-letter country next to an immutable field's change gets
    both messages, in words, and no "some validation rules were not checked"."""
    apply(kubectl, namespace, card())
    changed = card(userId="u_other", holder={"name": "Ada", "country": "usa"})
    error = apply(kubectl, namespace, changed, check=False)
    assert (
        'spec.holder.country: Invalid value: "usa": must be an ISO 3166-1 alpha-2 country '
        "code: two uppercase letters such as US" in error
    )
    assert "userId is immutable" in error
    assert NOT_CHECKED not in error
    assert "Too long" not in error


def test_window_order_is_checked_on_times_with_offsets(
    kubectl: Kubectl, crds_installed: None, namespace: str
) -> None:
    """The window's CEL rule compares instants, not strings: 00:30+01:00 is before 00:00Z."""
    info = next(i for i in api.KINDS if i.kind == "ReconciliationRun")
    run = _document(
        info,
        {
            "source": _SOURCE_INLINE,
            "window": {"start": "2025-01-15T00:00:00Z", "end": "2025-01-15T00:30:00+01:00"},
        },
    )
    error = refused(
        kubectl, "create", "--dry-run=server", "-n", namespace, "-f", "-", input=json.dumps(run)
    )
    assert "window.start must be before window.end" in error
    run["spec"]["window"]["end"] = "2025-01-15T01:30:00+01:00"
    kubectl("create", "--dry-run=server", "-n", namespace, "-f", "-", input=json.dumps(run))
