"""Posting: one ledger transaction and one status patch per posting.

A posting is decided exactly once: ``Posted`` with its journal, or ``Rejected`` with a
reason from the fixed set documented on ``PostingStatus.reason``. The idempotency key
(default ``namespace/name``) makes a replayed handler, a restarted operator, or a
deleted and re-applied object return the first journal instead of posting twice. Keys are
unique within the Posting's namespace (DESIGN.md invariant 10): every ledger call here names
it, so another namespace's journal is never replayed, reversed or blocked by this one.
"""

from __future__ import annotations

import datetime
from typing import Any

import kopf
import pydantic

from fintech_operator import api, kube, posting_rules
from fintech_operator.cards import lifecycle
from fintech_operator.compliance import policy as compliance_policy
from fintech_operator.events import outbox, schema
from fintech_operator.handlers import indexes, report
from fintech_operator.ledger import engine, model, rules
from fintech_operator.observability import metrics, tracing
from fintech_operator.risk import model as risk_model
from fintech_operator.risk import policy as risk_policy
from fintech_operator.risk import store as risk_store

DECIDED_PHASES = frozenset({api.PostingPhase.POSTED, api.PostingPhase.REJECTED})
TEMPORARY_DELAY_SECONDS = 2.0


class Rejection(Exception):
    """A final, user-visible refusal: becomes ``Rejected`` with this reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@kopf.index(api.GROUP, api.VERSION, "postings")
def postings(namespace: str | None, name: str, status: kopf.Status, **_: Any) -> dict[Any, Any]:
    return {(namespace, name): {"journalId": status.get("journalId")}}


async def _card_or_retry(
    memo: kopf.Memo,
    cards: kopf.Index[Any, Any],
    namespace: str,
    posting: api.PostingSpec,
    retry: int,
) -> dict[str, Any]:
    """The card if it exists (or its deleted card's open account); not yet seen or not yet
    issued is retried, then rejected."""
    card_name, limit = posting.card, memo.settings.missing_card_retry_limit
    card: dict[str, Any] | None = indexes.first(cards, (namespace, card_name))
    if card is None:
        card = await _deleted_card(memo, namespace, posting)
    pending = card is None or card.get("phase") in (None, "Pending")
    if pending and retry < limit:
        raise kopf.TemporaryError(
            f"card {card_name!r} not issued yet", delay=TEMPORARY_DELAY_SECONDS
        )
    if card is None:
        raise Rejection(
            api.PostingReason.CARD_NOT_FOUND, f"card {card_name!r} does not exist in {namespace}"
        )
    return card


async def _deleted_card(
    memo: kopf.Memo, namespace: str, posting: api.PostingSpec
) -> dict[str, Any] | None:
    """A card whose object was deleted while its account stayed open (it had a balance):
    its account, in phase ``Deleted``, so the debt can still be paid down. None otherwise."""
    code = model.card_account_code(namespace, posting.card, posting.currency)
    try:
        async with memo.pool.connection() as conn:
            account = await engine.account(conn, code)
    except model.AccountNotFound:
        return None  # Not issued yet (or never): the caller retries, then CardNotFound.
    if account.status is not model.AccountStatus.OPEN:
        return None
    return {"phase": "Deleted", "account": code, "currency": account.currency,
            "namespace": namespace, "product": None, "spendLimit": None}  # fmt: skip


def _check_card_accepts(card: dict[str, Any], spec: api.PostingSpec, acts_as: str) -> None:
    phase = card.get("phase")
    if not posting_rules.card_accepts(phase, acts_as):
        what = spec.type.value if acts_as == spec.type.value else f"a reversal (as {acts_as})"
        raise Rejection(
            api.PostingReason.CARD_NOT_ACTIVE,
            f"card {spec.card!r} is {phase or 'Pending'}: {what} refused",
        )


def _lines(spec: api.PostingSpec, account: str) -> tuple[model.Line, ...]:
    if spec.entries:
        explicit = [
            model.Line(
                e.account, model.Direction(e.direction.value.lower()), e.amount_minor, e.currency
            )
            for e in spec.entries
        ]
        checked = rules.validate_explicit(explicit)  # Unbalanced first: the ledger's own rule
        try:
            posting_rules.check_explicit_entries(
                checked, account, spec.type.value, spec.amount_minor, spec.currency
            )
        except posting_rules.SpecRefused as exc:
            raise Rejection(exc.reason, exc.message) from exc
        return checked
    return rules.lines_for(
        model.PostingKind(spec.type.value), account, spec.amount_minor, spec.currency
    )


def _guard(
    spec: api.PostingSpec, card: dict[str, Any], product: dict[str, Any], now: datetime.datetime
) -> model.SpendGuard | None:
    # The card's own limit wins; a card without one inherits its product's default.
    limit = card.get("spendLimit") or product.get("spendLimit")
    if not limit or spec.type is not api.PostingType.PURCHASE:
        return None
    return model.SpendGuard(
        card["account"], int(limit["amount"]), model.SpendInterval(limit["interval"]), now
    )


def _event(
    spec: api.PostingSpec,
    namespace: str,
    name: str,
    product: dict[str, Any],
    occurred_at: datetime.datetime,
) -> model.OutboxEvent:
    """The ``dev.fintech.posting.posted.v1`` event; the relay adds the journal id."""
    merchant = spec.merchant.model_dump(mode="json", exclude_none=True) if spec.merchant else None
    return schema.posting_posted(
        namespace=namespace,
        name=name,
        card=spec.card,
        posting_type=spec.type.value,
        amount_minor=spec.amount_minor,
        currency=spec.currency,
        rewards_rate_bps=int(product.get("rewardsRateBps", 0)),
        earn_on=list(product.get("earnOn") or ["Purchase"]),
        occurred_at=occurred_at,
        now=datetime.datetime.now(datetime.UTC),
        reference=spec.reference,
        merchant=merchant,
        headers=tracing.context_headers(),
    )


def _occurred_at(spec: api.PostingSpec, body: kopf.Body) -> datetime.datetime:
    # Deterministic, so a replay hashes the same request: the user's time or creation time.
    if spec.occurred_at is not None:
        return spec.occurred_at
    return api.parse_timestamp(str(body.metadata.get("creationTimestamp")))


def build_request(
    spec: api.PostingSpec, body: kopf.Body, card: dict[str, Any], product: dict[str, Any]
) -> model.PostingRequest:
    """Translate a Posting resource into a ledger request (no I/O)."""
    namespace = report.namespace_of(body.metadata.namespace)
    name = str(body.metadata.name)
    if spec.currency != card.get("currency"):
        raise Rejection(
            api.PostingReason.CURRENCY_MISMATCH,
            f"posting is in {spec.currency}, card account is in {card.get('currency')}",
        )
    occurred_at = _occurred_at(spec, body)
    return model.PostingRequest(
        idempotency_key=spec.idempotency_key or f"{namespace}/{name}",
        kind=model.PostingKind(spec.type.value),
        lines=_lines(spec, card["account"]),
        occurred_at=occurred_at,
        reference=spec.reference,
        metadata={
            "posting": f"{namespace}/{name}",
            "specHash": posting_rules.spec_hash(api.to_api(spec)),
            "merchant": spec.merchant.model_dump(mode="json") if spec.merchant else None,
        },
        events=(_event(spec, namespace, name, product, occurred_at),),
        guard=_guard(spec, card, product, report.now()),
        namespace=namespace,
    )


@kopf.on.resume(api.GROUP, api.VERSION, "postings")
@kopf.on.create(api.GROUP, api.VERSION, "postings")
async def post(
    body: kopf.Body,
    spec: kopf.Spec,
    patch: kopf.Patch,
    namespace: str | None,
    retry: int,
    memo: kopf.Memo,
    **kwargs: Any,
) -> None:
    if body.status.get("phase") in DECIDED_PHASES:
        return
    namespace = report.namespace_of(namespace)
    # kopf passes each index as a keyword argument named after its function.
    cards, cardproducts, postings = kwargs["cards"], kwargs["cardproducts"], kwargs["postings"]
    try:
        posting = api.PostingSpec.model_validate(dict(spec))
        # A key that already posted is a replay whatever happened to the card since: an
        # object deleted and re-applied (Argo CD) after a freeze still shows its journal.
        result = await _replay(memo, posting, body, postings)
        if result is None:
            card = await _card_or_retry(memo, cards, namespace, posting, retry)
            if posting.reverses:
                result = await _reverse(memo, posting, body, card, postings)
            else:
                _check_card_accepts(card, posting, posting.type.value)
                request = build_request(posting, body, card, _product(cardproducts, card))
                result = await _post_with_risk(memo, request, posting, body, card, kwargs, patch)
    except pydantic.ValidationError as exc:
        report.reject(body, patch, api.PostingReason.INVALID_SPEC, api.format_validation_error(exc))
        return
    except Rejection as exc:
        report.reject(body, patch, exc.reason, exc.message)
        return
    except risk_model.RiskDeclined as exc:
        if exc.record_id is not None:
            patch.status["risk"] = lifecycle.risk_status(exc.decision, exc.record_id, report.now())
        report.reject(body, patch, exc.reason, exc.message)
        return
    except model.LedgerError as exc:
        report.reject(body, patch, _reason(exc), exc.message)
        return
    _posted(body, patch, result)


# --- Risk and AML (issue 4): API in fintech_operator/risk/store.py, described in docs/cards.md --


async def _post_with_risk(
    memo: kopf.Memo,
    request: model.PostingRequest,
    posting: api.PostingSpec,
    body: kopf.Body,
    card: dict[str, Any],
    indexes_: dict[str, Any],
    patch: kopf.Patch,
) -> model.PostResult:
    """``engine.post`` with the namespace's risk rules and AML monitoring in its transaction.

    A decline raises ``risk_model.RiskDeclined`` (a LedgerError, reason RiskDeclined).
    """
    namespace = report.namespace_of(body.metadata.namespace)
    account = str(card.get("account"))
    merchant = posting.merchant
    check = risk_store.PostingCheck(
        risk_policy.select(indexes_["riskpolicies"], namespace),
        risk_model.PostingFacts(
            card=f"{namespace}/{posting.card}",
            account_code=account,
            kind=posting.type.value,
            amount_minor=posting.amount_minor,
            currency=posting.currency,
            merchant_mcc=merchant.mcc if merchant else None,
            merchant_country=merchant.country if merchant else None,
        ),
        subject=f"{namespace}/{body.metadata.name}",
        subject_uid=str(body.metadata.uid),
        compliance_policy=compliance_policy.select(indexes_["compliancepolicies"], namespace),
    )
    result = await risk_store.post(memo.pool, request, check)
    if check.decision is not None and check.record_id is not None:
        # Shown on the resource as well as stored: a Review still posts, and says so here.
        patch.status["risk"] = lifecycle.risk_status(check.decision, check.record_id, report.now())
    return result


# --- End of risk and AML --------------------------------------------------------------------------


def _product(cardproducts: kopf.Index[Any, Any], card: dict[str, Any]) -> dict[str, Any]:
    namespace, product = card.get("namespace"), card.get("product")
    found: dict[str, Any] | None = indexes.first(cardproducts, (str(namespace), str(product)))
    return found or {}


async def _replay(
    memo: kopf.Memo, posting: api.PostingSpec, body: kopf.Body, postings: kopf.Index[Any, Any]
) -> Any:
    """The first result of this posting's idempotency key, or None if it never posted.

    A deleted and re-applied object has a new uid and creation time, so the ledger's
    request hash would differ; what must match is the spec, recorded as ``specHash`` (a
    reversal: the journal it reversed, which must be the one ``spec.reverses`` names now).
    """
    namespace = report.namespace_of(body.metadata.namespace)
    key = posting.idempotency_key or f"{namespace}/{body.metadata.name}"
    async with memo.pool.connection() as conn:
        # Keys are unique per namespace: another namespace's key is never replayed here.
        journal = await engine.journal_by_key(conn, key, namespace=namespace)
        if journal is None:
            return None
        if posting.reverses and journal.reverses_journal_id is not None:
            target = await _target_journal(conn, postings, namespace, str(posting.reverses))
            if journal.reverses_journal_id == target.id:
                return model.PostResult(journal=journal, replayed=True)
        elif journal.metadata.get("specHash") == posting_rules.spec_hash(api.to_api(posting)):
            return model.PostResult(journal=journal, replayed=True)
    raise Rejection(
        api.PostingReason.IDEMPOTENCY_CONFLICT,
        f"idempotency key {key!r} already posted journal {journal.id} with another spec",
    )


async def _reverse(
    memo: kopf.Memo,
    posting: api.PostingSpec,
    body: kopf.Body,
    card: dict[str, Any],
    postings: kopf.Index[Any, Any],
) -> Any:
    namespace = report.namespace_of(body.metadata.namespace)
    async with memo.pool.connection() as conn:
        target = await _target_journal(conn, postings, namespace, str(posting.reverses))
        try:
            acts_as = posting_rules.check_reversal(
                target, str(card.get("account")), posting.amount_minor, posting.currency
            )
        except posting_rules.SpecRefused as exc:
            raise Rejection(exc.reason, exc.message) from exc
        _check_card_accepts(card, posting, acts_as)
        original = await outbox.posted_event(conn, target.id)
    journal = target.id
    key = posting.idempotency_key or f"{namespace}/{body.metadata.name}"
    reason = f"reversed by {key}"
    # The reversal's event carries the original's terms, so consumers take back exactly
    # what the original gave. Every posting's journal has one; journals written by other
    # means (the engine used directly) may not, and then there is nothing to take back.
    events = []
    if original is not None:
        events.append(
            schema.posting_reversed(
                original, reverses_journal_id=int(journal), namespace=namespace,
                name=str(body.metadata.name), reason=reason, now=report.now(),
                headers=tracing.context_headers(),
            )
        )  # fmt: skip
    return await engine.reverse(
        memo.pool, key, int(journal), reason, events=events, namespace=namespace
    )


async def _target_journal(
    conn: Any, postings: kopf.Index[Any, Any], namespace: str, name: str
) -> model.Journal:
    """The journal of the Posting ``name``: from the live object, or, once a TTL deleted it,
    from the ledger under the posting's default key, if that journal was posted by it."""
    entry = indexes.first(postings, (namespace, name))
    journal: model.Journal | None = None
    if entry is not None:
        found = entry.get("journalId")
        journal = await engine.journal(conn, int(found)) if found else None
    else:
        by_key = await engine.journal_by_key(conn, f"{namespace}/{name}", namespace=namespace)
        # Another posting may have chosen that key explicitly: only its own journal counts.
        if by_key is not None and by_key.metadata.get("posting") == f"{namespace}/{name}":
            journal = by_key
    if journal is None:
        raise Rejection(
            api.PostingReason.JOURNAL_NOT_FOUND, f"posting {name!r} has no journal to reverse"
        )
    return journal


def _reason(exc: model.LedgerError) -> str:
    """The documented reason for a ledger refusal; malformed requests are InvalidSpec."""
    if isinstance(exc, model.Unbalanced):
        return str(api.PostingReason.UNBALANCED)
    if isinstance(exc, model.InvalidRequest):
        return str(api.PostingReason.INVALID_SPEC)
    if isinstance(exc, model.AccountFrozen):
        # The ledger saw the freeze before the operator's view of the Card did: same answer.
        return str(api.PostingReason.CARD_NOT_ACTIVE)
    return exc.reason


def _posted(body: kopf.Body, patch: kopf.Patch, result: Any) -> None:
    journal = result.journal
    generation = int(body.metadata.get("generation") or 0)
    replay = " (replayed: the idempotency key had already posted)" if result.replayed else ""
    message = f"journal {journal.id}{replay}"
    patch.status.update(
        {
            "phase": api.PostingPhase.POSTED,
            "journalId": str(journal.id),
            "postedAt": journal.posted_at.isoformat().replace("+00:00", "Z"),
            "conditions": report.condition(
                body.status, api.READY, True, api.PostingPhase.POSTED, message, generation
            ),
            "observedGeneration": generation,
        }
    )
    kopf.info(body, reason="Posted", message=message)
    metrics.posting_decided(body.get("spec"), "replayed" if result.replayed else "posted")


# Long TTLs are re-checked at least this often, so a clock step cannot strand an object.
TTL_RECHECK_MAX_SECONDS = 3600.0


def _finished_at(status: kopf.Status) -> datetime.datetime | None:
    ready = api.find_condition(api.conditions_from_status(status.get("conditions")), api.READY)
    return None if ready is None else ready.last_transition_time


def _has_ttl(spec: kopf.Spec, **_: Any) -> bool:
    return spec.get("ttlSecondsAfterFinished") is not None


# A creation handler that retries until the TTL runs out, rather than a timer: kopf
# persists its retry schedule in status.kopf (it survives restarts), and it runs right
# after `post` on the same object, so no per-object timer has to be spawned and kept.
@kopf.on.resume(api.GROUP, api.VERSION, "postings", when=_has_ttl)
@kopf.on.create(api.GROUP, api.VERSION, "postings", when=_has_ttl)
async def expire(
    body: kopf.Body, spec: kopf.Spec, namespace: str | None, name: str, uid: str, **_: Any
) -> None:
    """Delete a finished posting after its TTL, like a Job; the ledger keeps the journal."""
    if body.status.get("phase") not in DECIDED_PHASES:
        # `post` decided it in this same cycle; its status arrives with the next event.
        raise kopf.TemporaryError("not finished yet; TTL starts when it is", delay=1)
    remaining = posting_rules.ttl_remaining_seconds(
        _finished_at(body.status), spec.get("ttlSecondsAfterFinished"), report.now()
    )
    if remaining > 0:
        raise kopf.TemporaryError(f"expires in {remaining:.0f}s (ttlSecondsAfterFinished)",
                                  delay=min(remaining, TTL_RECHECK_MAX_SECONDS))  # fmt: skip
    await kube.delete("postings", report.namespace_of(namespace), name, uid)
