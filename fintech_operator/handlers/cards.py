"""Card: issue (token, last 4, ledger account), freeze and unfreeze, refresh balances.

Issuance is decided once: a card whose status already has a phase is never issued
again, so a restart of the operator cannot mint a second token or account.
"""

from __future__ import annotations

import datetime
from typing import Any

import kopf
import pydantic

from fintech_operator import api, config
from fintech_operator.cards import tokenizer
from fintech_operator.handlers import indexes, report
from fintech_operator.ledger import engine, model
from fintech_operator.rewards import store

DECIDED_PHASES = frozenset({"Active", "Frozen", "Closed", "Rejected", "PendingReview"})
ISSUED_PHASES = frozenset({"Active", "Frozen"})
TEMPORARY_DELAY_SECONDS = 2.0
_TOKENIZER: tokenizer.Tokenizer = tokenizer.BuiltinTokenizer()


def _refresh_interval_seconds() -> float:
    return config.load().card_refresh_interval_seconds


def _product_or_retry(
    products: kopf.Index[Any, Any], namespace: str, name: str, retry: int, limit: int
) -> api.CardProductSpec | None:
    """The product's terms; a miss is retried (it may be applied in the same batch)."""
    raw = indexes.first(products, (namespace, name))
    if raw is None:
        if retry < limit:
            raise kopf.TemporaryError(
                f"card product {name!r} not found yet", delay=TEMPORARY_DELAY_SECONDS
            )
        return None
    return api.CardProductSpec.model_validate(raw)


@kopf.on.resume(api.GROUP, api.VERSION, "cards")
@kopf.on.create(api.GROUP, api.VERSION, "cards")
async def issue(
    body: kopf.Body,
    spec: kopf.Spec,
    patch: kopf.Patch,
    namespace: str | None,
    name: str,
    retry: int,
    memo: kopf.Memo,
    **kwargs: Any,
) -> None:
    if body.status.get("phase") in DECIDED_PHASES:
        return
    namespace = report.namespace_of(namespace)
    try:
        card = api.CardSpec.model_validate(dict(spec))
    except pydantic.ValidationError as exc:
        report.reject(body, patch, "InvalidSpec", api.format_validation_error(exc))
        return
    limit = memo.settings.missing_card_retry_limit
    product = _product_or_retry(kwargs["cardproducts"], namespace, card.product, retry, limit)
    if product is None:
        report.reject(
            body,
            patch,
            "ProductNotFound",
            f"card product {card.product!r} does not exist in {namespace}",
        )
        return
    if card.holder.kyc_status is not api.KycStatus.ACCEPTED:
        _hold_for_review(body, patch, f"holder KYC status is {card.holder.kyc_status.value}")
        return
    await _open(body, patch, memo, namespace, name, card, product)


def _hold_for_review(body: kopf.Body, patch: kopf.Patch, why: str) -> None:
    generation = int(body.metadata.get("generation") or 0)
    patch.status["phase"] = "PendingReview"
    patch.status["reason"] = "KycNotAccepted"
    patch.status["message"] = why
    patch.status["conditions"] = report.condition(
        body.status, "ComplianceCleared", False, "KycNotAccepted", why, generation
    )
    patch.status["observedGeneration"] = generation
    kopf.warn(body, reason="PendingReview", message=why)


async def _open(
    body: kopf.Body,
    patch: kopf.Patch,
    memo: kopf.Memo,
    namespace: str,
    name: str,
    card: api.CardSpec,
    product: api.CardProductSpec,
) -> None:
    currency = product.currency
    code = model.card_account_code(namespace, name, currency)
    issued = await _TOKENIZER.issue(f"{namespace}/{name}")
    async with memo.pool.connection() as conn:
        await engine.open_card_account(
            conn,
            namespace,
            name,
            currency,
            metadata={"card": f"{namespace}/{name}", "uid": str(body.metadata.uid)},
        )
    if product.issuance_fee is not None and product.issuance_fee.amount_minor > 0:
        await _post_issuance_fee(memo, body, code, product.issuance_fee.amount_minor, currency)
    generation = int(body.metadata.get("generation") or 0)
    conditions = report.condition(
        body.status, "LedgerAccountOpened", True, "Opened", code, generation
    )
    conditions = report.condition(
        {"conditions": conditions},
        api.READY,
        True,
        "Issued",
        f"issued, last 4 {issued.last4}",
        generation,
    )
    patch.status.update(
        {
            "phase": "Frozen" if card.state is api.CardState.FROZEN else "Active",
            "token": issued.token,
            "last4": issued.last4,
            "account": code,
            "balance": {"amount": 0, "currency": currency},
            "rewardsPoints": 0,
            "issuedAt": report.timestamp(),
            "conditions": conditions,
            "observedGeneration": generation,
        }
    )
    kopf.info(body, reason="Issued", message=f"card issued on {code}, last 4 {issued.last4}")


async def _post_issuance_fee(
    memo: kopf.Memo, body: kopf.Body, code: str, amount_minor: int, currency: str
) -> None:
    """The product's issuance fee, keyed by the card's uid so it is charged once."""
    from fintech_operator.ledger import rules  # noqa: PLC0415

    request = model.PostingRequest(
        idempotency_key=f"card-issuance-fee/{body.metadata.uid}",
        kind=model.PostingKind.FEE,
        lines=rules.lines_for(model.PostingKind.FEE, code, amount_minor, currency),
        occurred_at=datetime.datetime.fromisoformat(
            str(body.metadata.get("creationTimestamp")).replace("Z", "+00:00")
        ),
        reference=f"issuance-fee/{body.metadata.namespace}/{body.metadata.name}",
    )
    await engine.post(memo.pool, request)


@kopf.on.field(api.GROUP, api.VERSION, "cards", field="spec.state")
async def state_changed(
    body: kopf.Body, new: Any, patch: kopf.Patch, memo: kopf.Memo, **_: Any
) -> None:
    """Freeze, unfreeze or close an issued card when ``spec.state`` changes."""
    phase = body.status.get("phase")
    if phase not in ISSUED_PHASES:
        return
    generation = int(body.metadata.get("generation") or 0)
    if new in ("Active", "Frozen") and new != phase:
        patch.status["phase"] = new
        patch.status["observedGeneration"] = generation
        kopf.info(
            body, reason="Frozen" if new == "Frozen" else "Unfrozen", message=f"card is now {new}"
        )
    elif new == "Closed":
        await _close(body, patch, memo, generation)


async def _close(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, generation: int) -> None:
    code = str(body.status.get("account"))
    async with memo.pool.connection() as conn:
        try:
            await engine.close_account(conn, code)
        except model.AccountNotEmpty as exc:
            why = f"{exc.message}; pay or refund the balance to zero, then closing completes"
            patch.status["conditions"] = report.condition(
                body.status, api.READY, False, "BalanceNotZero", why, generation
            )
            kopf.warn(body, reason="BalanceNotZero", message=why)
            raise kopf.TemporaryError(why, delay=30) from exc
    patch.status["phase"] = "Closed"
    patch.status["observedGeneration"] = generation
    patch.status["conditions"] = report.condition(
        body.status, api.READY, False, "Closed", "card closed", generation
    )
    kopf.info(body, reason="Closed", message="card closed; its ledger history is kept")


@kopf.timer(
    api.GROUP,
    api.VERSION,
    "cards",
    interval=_refresh_interval_seconds(),
    when=lambda status, **_: status.get("phase") in ISSUED_PHASES,
)
async def refresh(
    body: kopf.Body, namespace: str | None, name: str, patch: kopf.Patch, memo: kopf.Memo, **_: Any
) -> None:
    """Mirror the ledger balance and the rewards points into status when they change."""
    code = str(body.status.get("account"))
    async with memo.pool.connection() as conn:
        balance = await engine.balance(conn, code)
        points = await store.points_balance(conn, f"{namespace}/{name}")
    amount = balance.balance_minor
    current = body.status.get("balance") or {}
    if current.get("amount") != amount:
        patch.status["balance"] = {"amount": amount, "currency": balance.currency}
    if body.status.get("rewardsPoints") != points:
        patch.status["rewardsPoints"] = points
