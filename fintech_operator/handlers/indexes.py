"""In-memory indexes of products and cards, kept current by kopf's watches.

Handlers look up a posting's card and a card's product here instead of calling the
API server on every event; a miss right after creation is retried, not rejected.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import kopf

from fintech_operator import api

if TYPE_CHECKING:
    from fintech_operator import config


def cardproducts(namespace: str | None, name: str, spec: kopf.Spec, **_: Any) -> dict[Any, Any]:
    return {(namespace, name): dict(spec)}


def cards(
    namespace: str | None,
    name: str,
    uid: str | None,
    spec: kopf.Spec,
    status: kopf.Status,
    **_: Any,
) -> dict[Any, Any]:
    return {
        (namespace, name): {
            "uid": uid,  # CardReviews record their card's uid
            "phase": status.get("phase"),
            "account": status.get("account"),
            "currency": (status.get("balance") or {}).get("currency"),
            "spendLimit": spec.get("spendLimit"),
            "product": spec.get("product"),
            "token": status.get("token"),  # for log lines of its postings (never a PAN)
            "namespace": namespace,
        }
    }


def first(index: kopf.Index[Any, Any], key: tuple[str, str]) -> Any:
    """The single value stored under ``key``, or None when kopf has not seen it yet."""
    store = index.get(key)
    return next(iter(store), None) if store is not None else None


def register(registry: kopf.OperatorRegistry, settings: config.Settings) -> None:
    """Add the product and card indexes to ``registry`` (see ``handlers.register``)."""
    kopf.index(api.GROUP, api.VERSION, "cardproducts", registry=registry)(cardproducts)
    kopf.index(api.GROUP, api.VERSION, "cards", registry=registry)(cards)
