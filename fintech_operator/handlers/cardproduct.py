"""CardProduct: validate the terms and report Ready and how many cards use them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import kopf
import pydantic

from fintech_operator import api
from fintech_operator.authorizations import mirror
from fintech_operator.handlers import card_refresh, report, wiring
from fintech_operator.handlers.context import OperatorMemo

if TYPE_CHECKING:
    from fintech_operator import config

PRODUCT_COUNT_INTERVAL_SECONDS = 15.0
# While cards use a product being deleted, deletion is re-checked this often.
DELETE_RECHECK_SECONDS = 10.0
USERS_SHOWN_MAX = 5
# Cards in these phases no longer need their product: it may be deleted under them.
FINISHED_PHASES = frozenset({api.CardPhase.CLOSED, api.CardPhase.REJECTED})
# Cards counted in ``status.cards``: issued and not closed.
OPEN_PHASES = frozenset({api.CardPhase.ACTIVE, api.CardPhase.FROZEN})


async def reconcile(
    body: kopf.Body,
    spec: kopf.Spec,
    patch: kopf.Patch,
    namespace: str | None,
    name: str,
    memo: OperatorMemo,
    **_: Any,
) -> None:
    generation = int(body.metadata.get("generation") or 0)
    try:
        product = api.CardProductSpec.model_validate(dict(spec))
    except pydantic.ValidationError as exc:
        report.reject(
            body, patch, api.CardProductReason.INVALID_SPEC, api.format_validation_error(exc)
        )
        return
    # The real-time gateway reads the product's terms from PostgreSQL (issue 13).
    async with memo.pool.connection() as conn:
        await mirror.put_product(conn, report.namespace_of(namespace), name, product)
    message = f"{product.currency} at {product.rewards_rate_bps} bps"
    patch.status["phase"] = api.CardProductPhase.READY
    patch.status["conditions"] = report.condition(
        body.status, api.READY, True, api.CardProductReason.VALID, message, generation
    )
    patch.status["observedGeneration"] = generation
    patch.status["reason"] = None
    patch.status["message"] = None


async def count_cards(
    namespace: str | None,
    name: str,
    status: kopf.Status,
    patch: kopf.Patch,
    **kwargs: Any,
) -> None:
    """Keep ``status.cards`` current; only a change is written, so idle products cost nothing.

    It counts what its description and the ``Cards`` column promise, the cards issued under the
    product and not closed (Active or Frozen): not a Rejected card, a Closed one, or one still
    Pending or in review.
    """
    _write_count(kwargs["cards"], namespace, name, status, patch)


def _write_count(
    cards: kopf.Index[Any, Any],
    namespace: str | None,
    name: str,
    status: kopf.Status,
    patch: kopf.Patch,
) -> None:
    """Patch ``status.cards`` when the open cards of the product are not what it shows."""
    count = sum(
        1
        for (card_namespace, _card), store in cards.items()
        if card_namespace == namespace
        for value in store
        if value.get("product") == name and value.get("phase") in OPEN_PHASES
    )
    if status.get("cards") != count:
        patch.status["cards"] = count


def _users(cards: kopf.Index[Any, Any], namespace: str | None, name: str) -> list[str]:
    """Names of the cards of the product that still need it (not Closed, not Rejected)."""
    return sorted(
        card_name
        for (card_namespace, card_name), store in cards.items()
        if card_namespace == namespace
        for value in store
        if value.get("product") == name and value.get("phase") not in FINISHED_PHASES
    )


async def protect(
    body: kopf.Body,
    namespace: str | None,
    name: str,
    patch: kopf.Patch,
    memo: OperatorMemo,
    **kwargs: Any,
) -> None:
    """Hold the finalizer while cards use the product, saying which and what to do.

    Cards keep their balances in the product's currency and read its rewards and fees; deleting
    it under them would strand them. This waits as long as they exist, by design, and says so.
    While it waits it stands in for the namespace's card refresh and reviews when no live
    product is left to run them, so the closes it asks for can complete.
    """
    await card_refresh.stand_in(namespace, name, memo, **kwargs)
    users = _users(kwargs["cards"], namespace, name)
    if not users:
        return
    # kopf stops count_cards' timer once deletion is requested, so the CARDS column would
    # freeze at its last count while cards are issued and closed under the waiting product.
    _write_count(kwargs["cards"], namespace, name, body.status, patch)
    shown = ", ".join(users[:USERS_SHOWN_MAX])
    more = f" and {len(users) - USERS_SHOWN_MAX} more" if len(users) > USERS_SHOWN_MAX else ""
    message = (
        f"deletion waits: {len(users)} card(s) still use this product ({shown}{more}); "
        "close or delete them first"
    )
    generation = int(body.metadata.get("generation") or 0)
    patch.status["reason"] = api.CardProductReason.IN_USE
    patch.status["message"] = message
    patch.status["conditions"] = report.condition(
        body.status, api.READY, False, api.CardProductReason.DELETION_BLOCKED, message, generation
    )
    kopf.warn(body, reason="DeletionBlocked", message=message)
    # A deliberate wait, logged at INFO like the others (report.WAIT_PREFIX), not at ERROR.
    raise kopf.TemporaryError(f"{report.WAIT_PREFIX}{message}", delay=DELETE_RECHECK_SECONDS)


def register(registry: kopf.OperatorRegistry, settings: config.Settings) -> None:
    """Add the CardProduct handlers to ``registry`` (see ``handlers.register``)."""
    wiring.on_spec(registry, "cardproducts", reconcile)
    kopf.timer(
        api.GROUP,
        api.VERSION,
        "cardproducts",
        interval=PRODUCT_COUNT_INTERVAL_SECONDS,
        registry=registry,
    )(count_cards)
    kopf.on.delete(api.GROUP, api.VERSION, "cardproducts", registry=registry)(protect)


__all__ = ["count_cards", "protect", "reconcile", "register"]
