"""A card stored before a schema rule it now breaks (an upgrade's stricter rule).

The API server keeps such objects, so the operator meets them at start and on later edits.
An issued card, which has an account and money, keeps its phase: the handlers that parse its
spec post one Warning ``InvalidSpec`` naming the field instead of raising (kopf would retry
them forever, a traceback each time), and nothing that needs the spec is changed.
"""

from __future__ import annotations

import asyncio
from typing import Any

import kopf
import pytest

from fintech_operator import api
from fintech_operator.handlers import cards
from fintech_operator.handlers.context import OperatorMemo

PAN_NAME = "ADA 4111 1111 1111 1111"


def _body(name: str) -> kopf.Body:
    return kopf.Body(
        {
            "apiVersion": "fintech.dev/v1alpha1",
            "kind": "Card",
            "metadata": {"namespace": "shop", "name": "c1", "uid": "u1", "generation": 2},
            "spec": {
                "product": "standard",
                "userId": "user-1",
                "holder": {"name": name, "country": "US"},
                "spendLimit": {"amount": 5000, "interval": "Daily"},
            },
            "status": {"phase": "Active", "account": "card:shop/c1:USD", "token": "tok_1"},
        }
    )


@pytest.fixture
def warnings(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """kopf.warn's Events, recorded instead of queued for the API server."""
    posted: list[dict[str, Any]] = []

    def record(body: kopf.Body, *, reason: str, message: str = "") -> None:
        posted.append({"name": body.metadata.name, "reason": reason, "message": message})

    monkeypatch.setattr(kopf, "warn", record)
    return posted


def _memo() -> OperatorMemo:
    """A memo without a pool: a handler that reached the database would fail on it."""
    memo = OperatorMemo()
    memo.pool = None  # type: ignore[assignment]
    return memo


def test_an_issued_cards_unparsable_spec_is_a_warning_at_start(
    warnings: list[dict[str, Any]],
) -> None:
    body = _body(PAN_NAME)
    asyncio.run(cards.resume(body, body.spec, _memo()))
    assert [w["reason"] for w in warnings] == [api.CardReason.INVALID_SPEC]
    assert "spec.holder.name" in warnings[0]["message"]
    assert "4111" not in warnings[0]["message"]


def test_an_issued_cards_unparsable_spec_keeps_its_mirrored_limit(
    warnings: list[dict[str, Any]],
) -> None:
    body = _body(PAN_NAME)
    asyncio.run(cards.spend_limit_changed(body, body.spec, _memo()))
    assert [w["reason"] for w in warnings] == [api.CardReason.INVALID_SPEC]


def test_a_parsable_spec_posts_no_warning(warnings: list[dict[str, Any]]) -> None:
    """The good input: the spec parses, and resume goes on to the database (here: none)."""
    body = _body("ADA LOVELACE")
    with pytest.raises(AttributeError):
        asyncio.run(cards.resume(body, body.spec, _memo()))
    assert warnings == []
