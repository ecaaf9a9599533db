"""One idempotency fingerprint for postings: the ledger's request hash (issues 12 and 17).

A deleted and re-applied Posting (same name, same spec, a new creation time) is the same
request as the journal its key posted; any change of what the journal records is not.
"""

from __future__ import annotations

import datetime
import importlib
from typing import Any

import kopf
import pytest

from fintech_operator import api
from fintech_operator.ledger import model, rules

CREATED = "2026-12-01T10:00:00Z"


@pytest.fixture
def postings(monkeypatch: pytest.MonkeyPatch) -> Any:
    # The handler package reads some timer intervals from settings when imported.
    monkeypatch.setenv("DATABASE_URL", "postgresql://unused@127.0.0.1:1/unused")
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:1")
    return importlib.import_module("fintech_operator.handlers.postings")


def _body(spec: dict[str, Any], created: str) -> kopf.Body:
    return kopf.Body({"apiVersion": "fintech.dev/v1alpha1", "kind": "Posting",
                      "metadata": {"name": "p1", "namespace": "ns1", "uid": "u1",
                                   "creationTimestamp": created},
                      "spec": spec})  # fmt: skip


SPEC = {"card": "c1", "type": "Purchase", "amount": 1250, "currency": "USD", "reference": "ref-1",
        "merchant": {"name": "Shop", "mcc": "5411", "country": "US"}}  # fmt: skip


def _journal(postings: Any, spec: dict[str, Any]) -> model.Journal:
    """The journal the ledger recorded for ``spec`` posted from an object created at CREATED."""
    card = {"account": model.card_account_code("ns1", "c1", "USD"), "currency": "USD"}
    request = postings.build_request(
        api.PostingSpec.model_validate(spec), _body(spec, CREATED), card, {}
    )
    return model.Journal(
        id=7, idempotency_key=request.idempotency_key, request_hash=rules.request_hash(request),
        kind=request.kind, reference=request.reference, occurred_at=request.occurred_at,
        posted_at=datetime.datetime.now(datetime.UTC), reverses_journal_id=None,
        metadata=request.metadata, lines=tuple(request.lines),
    )  # fmt: skip


def test_the_same_spec_reapplied_later_is_the_same_request(postings: Any) -> None:
    journal = _journal(postings, SPEC)
    reapplied = _body(SPEC, "2026-12-03T08:00:00Z")  # deleted and applied again
    assert postings._same_request(api.PostingSpec.model_validate(SPEC), reapplied, journal)


@pytest.mark.parametrize(
    "change",
    [
        {"amount": 1251},
        {"type": "Fee"},
        {"card": "c2"},
        {"reference": "ref-2"},
        {"merchant": {"name": "Other", "mcc": "5411", "country": "US"}},
        {"occurredAt": "2026-11-30T09:00:00Z"},
    ],
)
def test_any_change_of_what_the_journal_records_is_another_request(
    postings: Any, change: dict[str, Any]
) -> None:
    journal = _journal(postings, SPEC)
    changed = {**SPEC, **change}
    body = _body(changed, "2026-12-03T08:00:00Z")
    assert not postings._same_request(api.PostingSpec.model_validate(changed), body, journal)


def test_the_journal_records_no_second_fingerprint(postings: Any) -> None:
    """No handler-side spec hash beside the ledger's request hash in new journals."""
    assert "specHash" not in _journal(postings, SPEC).metadata
