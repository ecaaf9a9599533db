"""CardProduct: validate the terms and report Ready and how many cards use them."""

from __future__ import annotations

from typing import Any

import kopf
import pydantic

from fintech_operator import api
from fintech_operator.handlers import report

PRODUCT_COUNT_INTERVAL_SECONDS = 15.0


@kopf.on.resume(api.GROUP, api.VERSION, "cardproducts")
@kopf.on.create(api.GROUP, api.VERSION, "cardproducts")
@kopf.on.update(api.GROUP, api.VERSION, "cardproducts", field="spec")
async def reconcile(body: kopf.Body, spec: kopf.Spec, patch: kopf.Patch, **_: Any) -> None:
    generation = int(body.metadata.get("generation") or 0)
    try:
        product = api.CardProductSpec.model_validate(dict(spec))
    except pydantic.ValidationError as exc:
        report.reject(body, patch, "InvalidSpec", api.format_validation_error(exc))
        return
    message = f"{product.currency} at {product.rewards_rate_bps} bps"
    patch.status["phase"] = "Ready"
    patch.status["conditions"] = report.condition(
        body.status, api.READY, True, "Valid", message, generation
    )
    patch.status["observedGeneration"] = generation
    patch.status["reason"] = None
    patch.status["message"] = None


@kopf.timer(api.GROUP, api.VERSION, "cardproducts", interval=PRODUCT_COUNT_INTERVAL_SECONDS)
async def count_cards(
    namespace: str | None,
    name: str,
    status: kopf.Status,
    patch: kopf.Patch,
    **kwargs: Any,
) -> None:
    """Keep ``status.cards`` current; only a change is written, so idle products cost nothing."""
    count = sum(
        1
        for (card_namespace, _card), store in kwargs["cards"].items()
        if card_namespace == namespace
        for value in store
        if value.get("product") == name
    )
    if status.get("cards") != count:
        patch.status["cards"] = count


__all__ = ["count_cards", "reconcile"]
