"""One idempotency fingerprint for postings: the ledger's request hash (issues 12 and 17).

A deleted and re-applied Posting (same name, same spec, a new creation time) is the same
request as the journal its key posted; any change of what the journal records is not.
"""

from __future__ import annotations

import datetime
from typing import Any

import pytest

from fintech_operator import api
from fintech_operator.app import posting as postings
from fintech_operator.ledger import model, rules

CREATED = "2026-12-01T10:00:00Z"


def _body(spec: dict[str, Any], created: str) -> postings.PostingRef:
    """The posting p1 in ns1 created at ``created`` (``spec`` is the caller's to decode)."""
    return postings.PostingRef("ns1", "p1", "u1", api.parse_timestamp(created))


SPEC = {"card": "c1", "type": "Purchase", "amount": 1250, "currency": "USD", "reference": "ref-1",
        "merchant": {"name": "Shop", "mcc": "5411", "country": "US"}}  # fmt: skip


def _journal(spec: dict[str, Any]) -> model.Journal:
    """The journal the ledger recorded for ``spec`` posted from an object created at CREATED."""
    card = postings.CardView("Active", model.card_account_code("ns1", "c1", "USD"), "USD")
    request = postings.build_request(
        _body(spec, CREATED), api.PostingSpec.model_validate(spec), card,
        postings.ProductView(), datetime.datetime.now(datetime.UTC),
    )  # fmt: skip
    return model.Journal(
        id=7, idempotency_key=request.idempotency_key, request_hash=rules.request_hash(request),
        kind=request.kind, reference=request.reference, occurred_at=request.occurred_at,
        posted_at=datetime.datetime.now(datetime.UTC), reverses_journal_id=None,
        metadata=request.metadata, lines=tuple(request.lines),
    )  # fmt: skip


def test_the_same_spec_reapplied_later_is_the_same_request() -> None:
    journal = _journal(SPEC)
    reapplied = _body(SPEC, "2026-12-03T08:00:00Z")  # deleted and applied again
    assert postings.same_request(reapplied, api.PostingSpec.model_validate(SPEC), journal)


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
    change: dict[str, Any],
) -> None:
    journal = _journal(SPEC)
    changed = {**SPEC, **change}
    body = _body(changed, "2026-12-03T08:00:00Z")
    assert not postings.same_request(body, api.PostingSpec.model_validate(changed), journal)


def test_the_journal_records_no_second_fingerprint() -> None:
    """No handler-side spec hash beside the ledger's request hash in new journals."""
    assert "specHash" not in _journal(SPEC).metadata
