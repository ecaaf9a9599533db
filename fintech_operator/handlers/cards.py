"""Card: assess (risk + compliance), issue, review, freeze, close and delete.

The lifecycle and what decides each step are in :mod:`fintech_operator.cards.lifecycle` and
``docs/cards.md``. Crash safety: an assessment is recorded under a key made of the card's uid
and generation before anything acts on it, and a replay finds the recorded decision, so a
restarted operator never decides a card twice; issuance (account, fee) is idempotent by key;
a card whose status has a decided phase is never issued again.

Events (topic ``cards``, see docs/events): each decision writes its event in the transaction
that records it: ``card.issued`` with the ledger account, ``card.rejected`` and
``card.review_requested`` with the assessment (or on their own when no record is written),
``card.state_changed`` to Closed with the account's closing, a freeze or unfreeze on its own.
Event ids are derived from the card's uid and what happened, so a retried handler never
writes one twice; the status is patched only after the event is committed.
"""

from __future__ import annotations

import datetime
from typing import Any, Final

import kopf
import psycopg
import pydantic

from fintech_operator import api
from fintech_operator.authorizations import mirror
from fintech_operator.cards import http_tokenizer, lifecycle
from fintech_operator.cards import store as card_store
from fintech_operator.compliance import lists, rules
from fintech_operator.compliance import model as compliance_model
from fintech_operator.compliance import policy as compliance_policy
from fintech_operator.compliance import store as compliance_store
from fintech_operator.events import schema
from fintech_operator.handlers import indexes, report
from fintech_operator.ledger import engine, model
from fintech_operator.observability import tracing
from fintech_operator.risk import engine as risk_engine
from fintech_operator.risk import model as risk_model
from fintech_operator.risk import policy as risk_policy
from fintech_operator.risk import store as risk_store

DECIDED_PHASES: Final = frozenset(set(api.CardPhase) - {api.CardPhase.PENDING})
ISSUED_PHASES: Final = lifecycle.ISSUED_PHASES
TEMPORARY_DELAY_SECONDS: Final = 2.0
# A sanctions list that cannot be read is retried this often before the card is held for review.
SCREENING_RETRY_LIMIT: Final = 3
# How often the cards in PendingReview look for a recorded CardReview (one timer per namespace).
REVIEW_POLL_INTERVAL_SECONDS: Final = 2.0
# Deleting a card waits at most this many attempts (about a minute) for the database; then the
# finalizer is released anyway and the account is left open: the finalizer never blocks forever.
DELETE_RETRY_LIMIT: Final = 6
DELETE_RETRY_DELAY_SECONDS: Final = 10.0
ALERT_EVENTS_PER_REFRESH_MAX: Final = 20
# The card processor being down is retried with exponential backoff, capped: a card waits in
# Pending (reason WaitingForProcessor, one Warning Event) and is issued once it answers again.
TOKENIZER_BACKOFF_BASE_SECONDS: Final = 2.0
TOKENIZER_BACKOFF_MAX_SECONDS: Final = 60.0
# Sanctions lists, compiled once per ConfigMap version and shared by every card and policy.
LISTS: Final = lists.ListCache(lists.fetch_configmap)


def normal_event(body: kopf.Body, reason: str, message: str) -> None:
    """A Normal Event on the object.

    Not ``kopf.info``: the operator posts kopf's own events only from WARNING up (see runtime),
    and ``kopf.info`` obeys that level too, so a user would never see issuance or closing.
    """
    kopf.event(body, type="Normal", reason=reason, message=message[:1024])


def _generation(body: kopf.Body) -> int:
    return int(body.metadata.get("generation") or 0)


def _uid(body: kopf.Body) -> str:
    return str(body.metadata.uid)


def _event_time() -> datetime.datetime:
    """When an event happens: now, to the millisecond (the event's ``time``)."""
    return datetime.datetime.now(datetime.UTC)


async def _set_frozen(memo: kopf.Memo, code: str, frozen: bool, *events: Any) -> None:
    """Freeze or unfreeze the card's account (the database then refuses debits) with the
    events that announce it, in one transaction."""
    async with memo.pool.connection() as conn:
        await engine.set_frozen(conn, code, frozen, events)


async def _mirror_card(
    memo: kopf.Memo, namespace: str, name: str, account: str, token: str, card: api.CardSpec
) -> tuple[int, int | None] | None:
    """What the real-time gateway needs of an issued card (token, account, product, limit);
    returns its (held, available) as the mirror now says, for the issuing status patch."""
    async with memo.pool.connection() as conn:
        await mirror.put_card(
            conn, namespace=namespace, name=name, account=account, token=token, spec=card
        )
        return await mirror.holds(conn, account)


async def _write_events(memo: kopf.Memo, *events: Any) -> None:
    """Events of a decision that has no record of its own, in one transaction, each once."""
    async with memo.pool.connection() as conn:
        await engine.write_events(conn, events)


def _rejected_event(
    body: kopf.Body,
    namespace: str,
    name: str,
    reason: str,
    message: str,
    card: api.CardSpec | None,
) -> model.OutboxEvent:
    return schema.card_rejected(
        namespace=namespace,
        name=name,
        uid=_uid(body),
        reason=reason,
        message=message,
        now=_event_time(),
        user_id=None if card is None else card.user_id,
        product=None if card is None else card.product,
        headers=tracing.context_headers(),
    )


async def _reject(
    body: kopf.Body,
    patch: kopf.Patch,
    memo: kopf.Memo,
    namespace: str,
    name: str,
    reason: str,
    message: str,
    card: api.CardSpec | None,
) -> None:
    """A final refusal of issuance: its ``card.rejected`` event first, then the status."""
    await _write_events(memo, _rejected_event(body, namespace, name, reason, message, card))
    report.reject(body, patch, reason, message)


# --- Indexes --------------------------------------------------------------------------------------


@kopf.index(api.GROUP, api.VERSION, "cards")
def cards_by_user(
    namespace: str | None,
    name: str,
    spec: kopf.Spec,
    status: kopf.Status,
    meta: kopf.Meta,
    **_: Any,
) -> dict[Any, Any]:
    """(namespace, userId) -> the user's cards, for the MaxCardsPerUser rule."""
    return {
        (namespace, spec.get("userId")): {
            "name": name,
            "phase": status.get("phase"),
            "created": str(meta.get("creationTimestamp") or ""),
        }
    }


# --- Issuance -------------------------------------------------------------------------------------


def _product_or_retry(
    body: kopf.Body,
    patch: kopf.Patch,
    products: kopf.Index[Any, Any],
    key: tuple[str, str],
    retry: int,
    limit: int,
) -> api.CardProductSpec | None:
    """The product's terms; a miss is a wait shown on the card (the product may be applied in
    the same batch), then, after ``limit`` retries, None: the caller rejects the card."""
    namespace, name = key
    raw = indexes.first(products, key)
    if raw is None:
        if retry < limit:
            message = (
                f"waiting for card product {name!r} in {namespace}: it does not exist; the card "
                f"is rejected (ProductNotFound) if it does not appear within about "
                f"{limit * TEMPORARY_DELAY_SECONDS:.0f} s"
            )
            raise report.waiting(
                body, patch, report.WAITING_FOR_PRODUCT, message,
                attempt=f"{retry + 1} of {limit}", delay_seconds=TEMPORARY_DELAY_SECONDS,
            )  # fmt: skip
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
    """Assess a new card and issue it, hold it for review, or reject it."""
    phase = body.status.get("phase")
    if phase in DECIDED_PHASES:
        if phase in ("Active", "Frozen") and body.status.get("account"):
            # On resume: the ledger's freeze follows the card (an upgrade from before
            # migration 0041, or a crash between the freeze and the status patch).
            try:
                await _set_frozen(memo, str(body.status["account"]), phase == "Frozen")
            except model.AccountNotFound as exc:
                kopf.warn(body, reason="AccountMissing", message=exc.message)
                return
            if body.status.get("token"):
                await _mirror_card(
                    memo,
                    report.namespace_of(namespace),
                    name,
                    str(body.status["account"]),
                    str(body.status["token"]),
                    api.CardSpec.model_validate(dict(spec)),
                )
        return
    namespace = report.namespace_of(namespace)
    try:
        card = api.CardSpec.model_validate(dict(spec))
    except pydantic.ValidationError as exc:
        message = api.format_validation_error(exc)
        await _reject(
            body, patch, memo, namespace, name, api.CardReason.INVALID_SPEC, message, None
        )
        return
    if card.state is api.CardState.CLOSED:
        await _closed_unissued(body, patch, memo, namespace, name)
        return
    reused = await _name_reused(memo, body, namespace, name)
    if reused is not None:
        await _reject(body, patch, memo, namespace, name, reused.reason, reused.message, card)
        return
    limit = memo.settings.missing_card_retry_limit
    product = _product_or_retry(
        body, patch, kwargs["cardproducts"], (namespace, card.product), retry, limit
    )
    if product is None:
        message = f"card product {card.product!r} does not exist in {namespace}"
        await _reject(
            body, patch, memo, namespace, name, api.CardReason.PRODUCT_NOT_FOUND, message, card
        )
        return
    await _assess(body, patch, memo, namespace, name, card, product, retry, kwargs)


async def _name_reused(
    memo: kopf.Memo, body: kopf.Body, namespace: str, name: str
) -> lifecycle.Verdict | None:
    """A refusal when the card's name already has a ledger account of another card.

    Checked before anything is assessed or tokenized; ``engine.open_card_account`` checks again
    in the transaction that opens the account, so nothing can slip between the two.
    """
    async with memo.pool.connection() as conn:
        owners = await engine.card_account_owners(conn, namespace, name)
    return lifecycle.name_reused(
        namespace, name, _uid(body), [(owner.code, owner.owner_uid) for owner in owners]
    )


async def _assess(
    body: kopf.Body,
    patch: kopf.Patch,
    memo: kopf.Memo,
    namespace: str,
    name: str,
    card: api.CardSpec,
    product: api.CardProductSpec,
    retry: int,
    indexes_: dict[str, Any],
) -> None:
    """Risk and compliance for the card's current generation, recorded, then acted on."""
    uid = str(body.metadata.uid)
    generation = _generation(body)
    rpolicy = risk_policy.select(indexes_["riskpolicies"], namespace)
    cpolicy = compliance_policy.select(indexes_["compliancepolicies"], namespace)
    owned = indexes_["cards_by_user"].get((namespace, card.user_id)) or ()
    facts = risk_model.IssuanceFacts(
        holder_country=card.holder.country,
        user_cards=lifecycle.user_cards(
            owned, name, str(body.metadata.get("creationTimestamp") or "")
        ),
    )
    decision = risk_engine.assess_issuance(rpolicy, facts)
    checks = [
        rules.check_kyc(cpolicy, card.holder.kyc_status.value),
        await _screen(cpolicy, namespace, card.holder.name, retry),
    ]
    subject = f"{namespace}/{name}"
    base = f"card-issuance/{subject}/{uid}/g{generation}"
    async with memo.pool.connection() as conn, conn.transaction():
        risk_row = await risk_store.record(
            conn,
            risk_model.Assessment(
                idempotency_key=f"{base}/risk",
                subject_kind="CardIssuance",
                subject=subject,
                subject_uid=uid,
                decision=decision,
                inputs={"issuance": facts.to_json(), "userId": card.user_id},
            ),
        )
        stored = [
            await compliance_store.record_check(
                conn,
                idempotency_key=f"{base}/{check.kind.value}",
                subject_kind="CardIssuance",
                subject=subject,
                subject_uid=uid,
                policy=cpolicy.ref,
                check=check,
            )
            for check in checks
        ]
        # The verdict follows from the RECORDED decisions (a replay's are the first run's),
        # so its event commits with them and a retry writes the same one.
        verdict = lifecycle.verdict(risk_row.decision, [row.check for row in stored])
        decided = _verdict_event(body, namespace, name, card, verdict)
        if decided is not None:
            await engine.write_events(conn, [decided])
    now = report.now()
    recorded = [(row.id, row.check) for row in stored]
    patch.status["risk"] = lifecycle.risk_status(risk_row.decision, risk_row.id, now)
    patch.status["compliance"] = lifecycle.compliance_status(cpolicy.ref, recorded, now)
    conditions = _assessment_conditions(body, risk_row.decision, [c for _, c in recorded])
    normal_event(body, reason="RiskAssessed", message=risk_row.decision.summary()[:1024])
    if verdict.phase == "Rejected":
        report.reject(body, patch, verdict.reason, verdict.message)
        patch.status["conditions"] = _merge(conditions, patch.status["conditions"])
    elif verdict.phase == "PendingReview":
        _hold_for_review(body, patch, verdict, conditions)
    else:
        await _open(body, patch, memo, namespace, name, card, product, conditions, retry)


def _verdict_event(
    body: kopf.Body,
    namespace: str,
    name: str,
    card: api.CardSpec,
    verdict: lifecycle.Verdict,
) -> model.OutboxEvent | None:
    """The event of an assessment's verdict; issuance writes its own with the account."""
    if verdict.phase == "Rejected":
        return _rejected_event(body, namespace, name, verdict.reason, verdict.message, card)
    if verdict.phase == "PendingReview":
        return schema.card_review_requested(
            namespace=namespace,
            name=name,
            uid=_uid(body),
            generation=_generation(body),
            reason=verdict.reason,
            message=verdict.message,
            user_id=card.user_id,
            product=card.product,
            now=_event_time(),
            headers=tracing.context_headers(),
        )
    return None


async def _screen(
    policy: compliance_model.Policy, namespace: str, holder_name: str, retry: int
) -> compliance_model.CheckResult:
    """Screen the holder's name against the policy's list, failing closed to Review."""
    sanctions = policy.spec.sanctions
    if sanctions is None:
        return rules.sanctions_not_configured()
    ref = f"configmap {namespace}/{sanctions.config_map}[{sanctions.key}]"
    try:
        loaded = await LISTS.get(namespace, sanctions.config_map, sanctions.key)
    except lists.ListUnavailable as exc:
        if retry < SCREENING_RETRY_LIMIT:
            raise kopf.TemporaryError(exc.message, delay=TEMPORARY_DELAY_SECONDS) from exc
        return rules.sanctions_unavailable(exc.message, ref)
    return rules.check_sanctions(
        loaded.screener, holder_name, sanctions.match_threshold_bps, loaded.ref
    )


def _assessment_conditions(
    body: kopf.Body,
    decision: risk_model.Decision,
    checks: list[compliance_model.CheckResult],
) -> list[dict[str, Any]]:
    generation = _generation(body)
    conditions = report.condition(
        body.status,
        api.ConditionType.RISK_ASSESSED,
        True,
        decision.action.value,
        decision.summary(),
        generation,
    )
    worst = compliance_model.worst(checks)
    cleared = worst is None or worst.outcome is compliance_model.Outcome.CLEAR
    return report.condition(
        {"conditions": conditions},
        api.ConditionType.COMPLIANCE_CLEARED,
        cleared,
        api.CardReason.CLEARED if cleared or worst is None else worst.reason,
        "; ".join(f"{check.kind.value}: {check.detail}" for check in checks),
        generation,
    )


def _merge(base: list[dict[str, Any]], extra: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``base`` with the conditions of ``extra`` laid over it by type."""
    merged = {condition["type"]: condition for condition in base}
    merged.update({condition["type"]: condition for condition in extra})
    return list(merged.values())


def _hold_for_review(
    body: kopf.Body, patch: kopf.Patch, verdict: lifecycle.Verdict, conditions: list[dict[str, Any]]
) -> None:
    generation = _generation(body)
    why = f"{verdict.message}; a reviewer decides with a CardReview (see docs/cards.md)"
    patch.status["phase"] = api.CardPhase.PENDING_REVIEW
    patch.status["reason"] = verdict.reason
    patch.status["message"] = why[:1024]
    patch.status["conditions"] = report.condition(
        {"conditions": conditions}, api.READY, False, verdict.reason, why, generation
    )
    patch.status["observedGeneration"] = generation
    kopf.warn(body, reason="PendingReview", message=why[:1024])


async def _closed_unissued(
    body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, namespace: str, name: str
) -> None:
    """spec.state Closed before the card was ever issued: nothing to open or close."""
    generation = _generation(body)
    message = "closed before it was issued; no ledger account was opened"
    phase = body.status.get("phase")
    event = schema.card_state_changed(
        namespace=namespace,
        name=name,
        uid=_uid(body),
        generation=generation,
        from_phase="PendingReview" if phase == "PendingReview" else "Pending",
        to_state="Closed",
        reason=api.CardReason.CLOSED_BEFORE_ISSUE,
        now=_event_time(),
        headers=tracing.context_headers(),
    )
    await _write_events(memo, event)
    patch.status["phase"] = api.CardPhase.CLOSED
    patch.status["reason"] = api.CardReason.CLOSED_BEFORE_ISSUE
    patch.status["message"] = message
    patch.status["conditions"] = report.condition(
        body.status, api.READY, False, api.CardReason.CLOSED_BEFORE_ISSUE, message, generation
    )
    patch.status["observedGeneration"] = generation
    normal_event(body, reason="Closed", message=message)


async def _open(
    body: kopf.Body,
    patch: kopf.Patch,
    memo: kopf.Memo,
    namespace: str,
    name: str,
    card: api.CardSpec,
    product: api.CardProductSpec,
    conditions: list[dict[str, Any]],
    retry: int,
) -> None:
    """Open the card's ledger account with its ``card.issued`` event, charge the issuance fee,
    and report it issued with the token the event carries.

    The processor refusing the card rejects it (``TokenizerRefused``, final); the processor
    being unavailable is retried with backoff under the same idempotency key.
    """
    currency = product.currency
    code = model.card_account_code(namespace, name, currency)
    state = api.CardPhase.FROZEN if card.state is api.CardState.FROZEN else api.CardPhase.ACTIVE
    reused = await _name_reused(memo, body, namespace, name)
    if reused is not None:
        await _refuse_open(body, patch, memo, namespace, name, card, reused, conditions)
        return
    try:
        issued = await _issuance(memo, body, namespace, name)
    except http_tokenizer.TokenizerRefused as exc:
        refused = lifecycle.Verdict("Rejected", exc.reason, exc.message)
        await _refuse_open(body, patch, memo, namespace, name, card, refused, conditions)
        return
    except http_tokenizer.TokenizerUnavailable as exc:
        patch.status["conditions"] = conditions  # the assessment's, shown while it waits
        delay = min(
            TOKENIZER_BACKOFF_BASE_SECONDS * 2 ** min(retry, 10), TOKENIZER_BACKOFF_MAX_SECONDS
        )
        message = f"waiting for the card processor: {exc.message}"
        # A reviewed card keeps its phase: its review timer runs only while it is PendingReview.
        phase = "PendingReview" if body.status.get("phase") == "PendingReview" else "Pending"
        raise report.waiting(
            body, patch, report.WAITING_FOR_PROCESSOR, message,
            attempt=f"{retry + 1}", delay_seconds=delay, phase=phase,
        ) from exc  # fmt: skip
    event = schema.card_issued(
        namespace=namespace,
        name=name,
        uid=_uid(body),
        user_id=card.user_id,
        product=card.product,
        currency=currency,
        token=issued.token.token,
        last4=issued.token.last4,
        state=state,
        issued_at=issued.issued_at,
        headers=tracing.context_headers(),
    )
    async with memo.pool.connection() as conn:
        try:
            await engine.open_card_account(
                conn,
                namespace,
                name,
                currency,
                metadata={"card": f"{namespace}/{name}"},
                events=[event],
                card_uid=_uid(body),
            )
        except engine.AccountOwnedByAnotherCard as exc:
            taken = lifecycle.name_reused(namespace, name, _uid(body), [(exc.code, exc.owner_uid)])
            stored = None
        else:
            taken = None
            # What committed is what the status shows (house rule 6): the event's token.
            stored = await card_store.issued(conn, event.event_id)
    if taken is not None:
        await _refuse_open(body, patch, memo, namespace, name, card, taken, conditions)
        return
    if stored is None:
        raise kopf.TemporaryError("card.issued event not found after it was written", delay=2)
    issued = stored
    if product.issuance_fee is not None and product.issuance_fee.amount_minor > 0:
        await _post_issuance_fee(memo, body, code, product.issuance_fee.amount_minor, currency)
    # Issued frozen: the fee above is the last debit until it is unfrozen. Both ways, because a
    # retry may see another spec.state than the attempt that committed the account.
    await _set_frozen(memo, code, state == "Frozen")
    holds = await _mirror_card(memo, namespace, name, code, issued.token.token, card)
    generation = _generation(body)
    conditions = report.condition(
        {"conditions": conditions},
        api.ConditionType.LEDGER_ACCOUNT_OPENED,
        True,
        api.CardReason.OPENED,
        code,
        generation,
    )
    conditions = report.condition(
        {"conditions": conditions},
        api.READY,
        True,
        api.CardReason.ISSUED,
        f"issued, last 4 {issued.token.last4}",
        generation,
    )
    patch.status.update(
        {
            "phase": state,
            "token": issued.token.token,
            "last4": issued.token.last4,
            "account": code,
            "balance": {"amount": 0, "currency": currency},
            "rewardsPoints": 0,
            "issuedAt": api.format_timestamp(issued.issued_at),
            "reason": None,
            "message": None,
            "conditions": conditions,
            "observedGeneration": generation,
        }
    )
    if holds is not None:  # in the same patch: the first refresh then has nothing to change
        show_holds(body, patch, holds, currency)
    normal_event(
        body, reason="Issued", message=f"card issued on {code}, last 4 {issued.token.last4}"
    )


async def _refuse_open(
    body: kopf.Body,
    patch: kopf.Patch,
    memo: kopf.Memo,
    namespace: str,
    name: str,
    card: api.CardSpec,
    verdict: lifecycle.Verdict,
    conditions: list[dict[str, Any]],
) -> None:
    """Issuance refused after the assessment (final): keep its conditions, add the refusal."""
    await _reject(body, patch, memo, namespace, name, verdict.reason, verdict.message, card)
    patch.status["conditions"] = _merge(conditions, patch.status["conditions"])


async def _issuance(
    memo: kopf.Memo, body: kopf.Body, namespace: str, name: str
) -> card_store.Issued:
    """The card's token: the one its committed ``card.issued`` event carries when a previous
    attempt got that far (a retry must not issue a second card), else the tokenizer's, asked
    under a key derived from the card's uid (a retry gets the processor's first answer)."""
    event_id = schema.lifecycle_event_id(schema.CARD_ISSUED, _uid(body))
    async with memo.pool.connection() as conn:
        earlier = await card_store.issued(conn, event_id)
    if earlier is not None:
        return earlier
    tokenizer = http_tokenizer.from_settings(memo.settings)
    key = http_tokenizer.idempotency_key(_uid(body))
    token = await tokenizer.issue(f"{namespace}/{name}", idempotency_key=key)
    return card_store.Issued(token=token, issued_at=_event_time())


async def _post_issuance_fee(
    memo: kopf.Memo, body: kopf.Body, code: str, amount_minor: int, currency: str
) -> None:
    """The product's issuance fee, keyed by the card's uid so it is charged once."""
    from fintech_operator.ledger import rules  # noqa: PLC0415

    request = model.PostingRequest(
        idempotency_key=f"card-issuance-fee/{body.metadata.uid}",
        kind=model.PostingKind.FEE,
        lines=rules.lines_for(model.PostingKind.FEE, code, amount_minor, currency),
        occurred_at=api.parse_timestamp(str(body.metadata.get("creationTimestamp"))),
        reference=f"issuance-fee/{body.metadata.namespace}/{body.metadata.name}",
        namespace=report.namespace_of(body.metadata.namespace),
    )
    await engine.post(memo.pool, request)


# --- Re-assessment and manual review --------------------------------------------------------------


@kopf.on.field(api.GROUP, api.VERSION, "cards", field="spec.holder")
async def holder_changed(
    body: kopf.Body,
    old: Any,
    spec: kopf.Spec,
    patch: kopf.Patch,
    namespace: str | None,
    name: str,
    memo: kopf.Memo,
    **kwargs: Any,
) -> None:
    """A card waiting for review is assessed again when its holder changes (e.g. KYC done).

    A recorded review wins: once a reviewer decided, the new holder data changes nothing.
    """
    if old is None or body.status.get("phase") != "PendingReview":
        return
    namespace = report.namespace_of(namespace)
    async with memo.pool.connection() as conn:
        if await compliance_store.find_review(conn, str(body.metadata.uid)) is not None:
            return
    card = api.CardSpec.model_validate(dict(spec))
    product = indexes.first(kwargs["cardproducts"], (namespace, card.product))
    if product is None:
        message = f"card product {card.product!r} is gone"
        await _reject(
            body, patch, memo, namespace, name, api.CardReason.PRODUCT_NOT_FOUND, message, card
        )
        return
    parsed = api.CardProductSpec.model_validate(product)
    await _assess(body, patch, memo, namespace, name, card, parsed, kwargs["retry"], kwargs)


async def apply_review(
    body: kopf.Body,
    spec: kopf.Spec,
    patch: kopf.Patch,
    namespace: str | None,
    name: str,
    memo: kopf.Memo,
    **kwargs: Any,
) -> None:
    """Apply the recorded CardReview of a card in PendingReview: issue it or reject it.

    Called for each card waiting for review by the namespace's timer
    (``card_refresh.apply_reviews``), not by a timer per card: kopf keeps the whole last-seen
    body of every object of a kind that has a timer, about 90 KiB of memory per card (issue 14).
    """
    async with memo.pool.connection() as conn:
        review = await compliance_store.find_review(conn, str(body.metadata.uid))
    if review is None:
        return
    namespace = report.namespace_of(namespace)
    patch.status["review"] = api.to_api(
        api.ReviewRecord(
            decision=review.decision,
            reviewer=review.reviewer,
            comment=review.comment,
            card_review=review.review.split("/", 1)[1],
            reviewed_at=review.created_at.replace(microsecond=0),
        )
    )
    who = f"{review.decision} by {review.reviewer} (CardReview {review.review}): {review.comment}"
    card = api.CardSpec.model_validate(dict(spec))
    if review.decision != api.ReviewDecision.APPROVE.value:
        await _reject(body, patch, memo, namespace, name, api.CardReason.REVIEW_REJECTED, who, card)
        return
    normal_event(body, reason="ReviewApproved", message=who[:1024])
    product = indexes.first(kwargs["cardproducts"], (namespace, card.product))
    if product is None:
        message = f"card product {card.product!r} is gone"
        await _reject(
            body, patch, memo, namespace, name, api.CardReason.PRODUCT_NOT_FOUND, message, card
        )
        return
    conditions = report.condition(
        body.status,
        api.ConditionType.COMPLIANCE_CLEARED,
        True,
        api.CardReason.REVIEW_APPROVED,
        who,
        _generation(body),
    )
    await _open(
        body,
        patch,
        memo,
        namespace,
        name,
        card,
        api.CardProductSpec.model_validate(product),
        conditions,
        int(kwargs.get("retry") or 0),
    )


# --- State: freeze, unfreeze, close ---------------------------------------------------------------


@kopf.on.field(api.GROUP, api.VERSION, "cards", field="spec.state")
async def state_changed(
    body: kopf.Body,
    old: Any,
    new: Any,
    patch: kopf.Patch,
    namespace: str | None,
    name: str,
    memo: kopf.Memo,
    **_: Any,
) -> None:
    """Freeze, unfreeze or close a card when ``spec.state`` changes (creation is issue's job)."""
    if old is None:
        return
    phase = body.status.get("phase")
    generation = _generation(body)
    if phase in ISSUED_PHASES and new in ("Active", "Frozen") and new != phase:
        # The account's freeze flag and the event commit together, before the status says
        # so; the event's id is per generation, so a retry writes it once.
        await _set_frozen(
            memo,
            str(body.status.get("account")),
            new == "Frozen",
            schema.card_state_changed(
                namespace=report.namespace_of(namespace),
                name=name,
                uid=_uid(body),
                generation=generation,
                from_phase=str(phase),
                to_state=str(new),
                now=_event_time(),
                headers=tracing.context_headers(),
            ),
        )
        patch.status["phase"] = new
        patch.status["observedGeneration"] = generation
        patch.status["conditions"] = report.condition(
            body.status, api.READY, True, new, f"card is {new}", generation
        )
        normal_event(
            body, reason="Frozen" if new == "Frozen" else "Unfrozen", message=f"card is now {new}"
        )
    elif new == "Closed" and phase in ISSUED_PHASES:
        await close(body, patch, memo, announce=True)
    elif new == "Closed" and phase == "PendingReview":
        await _closed_unissued(body, patch, memo, report.namespace_of(namespace), name)


@kopf.on.field(api.GROUP, api.VERSION, "cards", field="spec.spendLimit")
async def spend_limit_changed(
    body: kopf.Body, spec: kopf.Spec, namespace: str | None, name: str, memo: kopf.Memo, **_: Any
) -> None:
    """A new spend limit reaches the real-time gateway's mirror (issue 13)."""
    if body.status.get("phase") not in ISSUED_PHASES:
        return
    card = api.CardSpec.model_validate(dict(spec))
    async with memo.pool.connection() as conn:
        await mirror.put_card_limit(conn, report.namespace_of(namespace), name, card.spend_limit)


def _closed_event(body: kopf.Body, reason: str | None = None) -> model.OutboxEvent:
    """``card.state_changed`` to Closed, written with the account's closing."""
    return schema.card_state_changed(
        namespace=str(body.metadata.namespace),
        name=str(body.metadata.name),
        uid=_uid(body),
        generation=_generation(body),
        from_phase=str(body.status.get("phase")),
        to_state="Closed",
        reason=reason,
        now=_event_time(),
        headers=tracing.context_headers(),
    )


async def close(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, *, announce: bool) -> None:
    """Close the card's account; while its balance is not zero, say why and keep the phase.

    The namespace's batched refresh (``card_refresh``) tries again, so closing completes by
    itself once the balance is zero.
    """
    generation = _generation(body)
    code = str(body.status.get("account"))
    async with memo.pool.connection() as conn:
        try:
            await engine.close_account(conn, code, events=[_closed_event(body)])
        except model.AccountNotEmpty as exc:
            why = (
                f"closing waits: {exc.message}; post a Payment (or Refund) that brings the "
                "balance to zero and closing completes by itself"
            )
            waits = api.CardReason.BALANCE_NOT_ZERO
            if announce or body.status.get("reason") != waits:
                kopf.warn(body, reason=waits, message=why)
            patch.status["reason"] = waits
            patch.status["message"] = why
            patch.status["conditions"] = report.condition(
                body.status, api.READY, False, waits, why, generation
            )
            return
    patch.status["phase"] = api.CardPhase.CLOSED
    patch.status["reason"] = None
    patch.status["message"] = None
    patch.status["observedGeneration"] = generation
    patch.status["conditions"] = report.condition(
        body.status,
        api.READY,
        False,
        api.CardPhase.CLOSED,
        "card closed; its ledger history is kept",
        generation,
    )
    normal_event(body, reason="Closed", message="card closed; its ledger history is kept")


def show_holds(
    body: kopf.Body, patch: kopf.Patch, holds: tuple[int, int | None], currency: str
) -> None:
    """``status.held`` and ``status.available`` from the real-time mirror; only a change."""
    held, available = holds
    if (body.status.get("held") or {}).get("amount") != held:
        patch.status["held"] = {"amount": held, "currency": currency}
    shown = (body.status.get("available") or {}).get("amount")
    if shown != available:
        patch.status["available"] = (
            None if available is None else {"amount": available, "currency": currency}
        )


def announce_alerts(
    body: kopf.Body,
    patch: kopf.Patch,
    aml: dict[str, Any],
    alerts: list[compliance_model.Alert],
) -> None:
    """One warning Event per new AML alert; status.aml remembers the last one announced."""
    for alert in alerts:
        kopf.warn(
            body,
            reason="ComplianceAlert",
            message=(
                f"{alert.kind.value} on {alert.business_day}: {alert.posting_count} posting(s) "
                f"totalling {alert.total_minor} {alert.currency} (threshold "
                f"{alert.threshold_minor}, policy {alert.policy}); the posting was not blocked"
            ),
        )
    last = alerts[-1]
    patch.status["aml"] = api.to_api(
        api.card.AmlStatus(
            alerts=int(aml.get("alerts") or 0) + len(alerts),
            last_alert_id=str(last.id),
            last_alert=f"{last.kind.value} on {last.business_day}",
        )
    )


# --- Deletion -------------------------------------------------------------------------------------


@kopf.on.delete(api.GROUP, api.VERSION, "cards")
async def delete(body: kopf.Body, retry: int, memo: kopf.Memo, **_: Any) -> None:
    """Close the card's ledger account, keeping its history; never block deletion for long.

    A balance that is not zero is a debt: the account stays open with its full history and the
    deletion goes ahead (the Event says so). A database outage is retried a bounded number of
    times, then the finalizer is released with a warning.
    """
    code = body.status.get("account")
    phase = body.status.get("phase")
    if not code or phase == "Closed":
        return
    if phase in ISSUED_PHASES:
        # First, and on its own: a deleted card's token authorizes nothing, even if its
        # account has to stay open below.
        async with memo.pool.connection() as conn:
            await mirror.retire_card(conn, str(body.metadata.namespace), str(body.metadata.name))
    # Deleting an issued card closes it: the same card.state_changed as a close, once.
    closed = [_closed_event(body, "CardDeleted")] if phase in ISSUED_PHASES else []
    try:
        async with memo.pool.connection() as conn:
            await engine.close_account(conn, str(code), events=closed)
    except model.AccountNotEmpty as exc:
        kopf.warn(
            body,
            reason="AccountLeftOpen",
            message=f"{exc.message}: the card is deleted but its account stays open with its "
            "balance and history in the ledger",
        )
        return
    except model.AccountNotFound:
        return
    except (psycopg.Error, OSError) as exc:
        if retry < DELETE_RETRY_LIMIT:
            raise kopf.TemporaryError(
                f"closing {code} failed: {exc}", delay=DELETE_RETRY_DELAY_SECONDS
            ) from exc
        kopf.warn(
            body,
            reason="AccountLeftOpen",
            message=f"gave up closing {code} after {retry} attempts ({exc}); the card is "
            "deleted and its account left open",
        )
        return
    normal_event(body, reason="AccountClosed", message=f"account {code} closed; history kept")


__all__ = [
    "announce_alerts",
    "apply_review",
    "cards_by_user",
    "close",
    "delete",
    "holder_changed",
    "issue",
    "normal_event",
    "show_holds",
    "spend_limit_changed",
    "state_changed",
]
