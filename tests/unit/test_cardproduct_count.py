"""A product's ``status.cards``: the cards issued under it and not closed, as its CRD says."""

from __future__ import annotations

import asyncio
from typing import Any

import kopf
import pytest

from fintech_operator.handlers import cardproduct


def _index(*cards: tuple[str, str, str, str | None]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """A kopf-like cards index: (namespace, name) -> [what indexes.cards stores]."""
    return {
        (ns, name): [{"product": product, "phase": phase}] for ns, name, product, phase in cards
    }


def _count(index: dict[Any, Any], status: dict[str, Any], namespace: str = "shop") -> Any:
    patch = kopf.Patch()
    asyncio.run(
        cardproduct.count_cards(
            namespace=namespace,
            name="standard",
            status=kopf.Body({"status": status}).status,  # type: ignore[arg-type]
            patch=patch,
            cards=index,
        )
    )
    return patch.status.get("cards", "unchanged")


def test_only_active_and_frozen_cards_of_the_product_in_its_namespace_count() -> None:
    """Rejected, Closed, undecided and in-review cards, other products' cards and another
    namespace's cards are not open cards of this product."""
    index = _index(
        ("shop", "a", "standard", "Active"),
        ("shop", "b", "standard", "Frozen"),
        ("shop", "c", "standard", "Closed"),
        ("shop", "d", "standard", "Rejected"),
        ("shop", "e", "standard", "PendingReview"),
        ("shop", "f", "standard", "Pending"),
        ("shop", "g", "standard", None),  # queued, no status yet
        ("shop", "h", "gold", "Active"),
        ("other", "i", "standard", "Active"),
    )
    assert _count(index, {}) == 2


@pytest.mark.parametrize(
    ("status", "expected"),
    [({"cards": 1}, "unchanged"), ({"cards": 3}, 1), ({}, 1)],
)
def test_only_a_change_is_written(status: dict[str, Any], expected: Any) -> None:
    """An idle product costs nothing: the count is patched only when it differs."""
    assert _count(_index(("shop", "a", "standard", "Active")), status) == expected


def test_a_product_whose_cards_all_closed_counts_zero() -> None:
    """Closing the last card brings the count to 0 (the bug counted every card object)."""
    index = _index(("shop", "a", "standard", "Closed"), ("shop", "b", "standard", "Rejected"))
    assert _count(index, {"cards": 2}) == 0


def test_a_product_whose_deletion_waits_keeps_counting(monkeypatch: pytest.MonkeyPatch) -> None:
    """kopf stops count_cards' timer once deletion is requested; the deletion handler, which
    runs every 10 s while cards hold the product, keeps ``status.cards`` current instead (the
    CARDS column stayed at 4 while 7 cards used a product whose deletion waited)."""
    monkeypatch.setattr(kopf, "warn", lambda *args, **kwargs: None)
    index = _index(
        ("shop", "a", "standard", "Active"),
        ("shop", "b", "standard", "Frozen"),
        ("shop", "c", "standard", "PendingReview"),
    )
    body = kopf.Body({"metadata": {"generation": 1}, "status": {"cards": 4}})
    patch = kopf.Patch()
    with pytest.raises(kopf.TemporaryError):
        asyncio.run(
            cardproduct.protect(
                body=body,
                namespace="shop",
                name="standard",
                patch=patch,
                memo=None,  # type: ignore[arg-type]
                cards=index,
                # A live product of the namespace keeps the refresh: the stand-in does nothing.
                product_names={"shop": [("gold", False), ("standard", True)]},
            )
        )
    assert patch.status["cards"] == 2
    assert patch.status["reason"] == "InUse"
