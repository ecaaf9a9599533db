"""One batched refresh of the issued cards of a namespace, instead of one timer per card.

Every ``FINTECH_CARD_REFRESH_INTERVAL_SECONDS`` the namespace's cards get their balance, rewards
points and new AML alerts mirrored into status, and a close that waited for a zero balance
completes. A timer per card cost 3,000 timers (about 300 refreshes a second, each with its own
database connection) at 3,000 cards; this is three statements per 500 cards, and a status patch
only for a card whose figures changed.

kopf has no per-namespace timer, so the timer is on CardProduct: an issued card always has its
product (a product in use cannot be deleted), and of a namespace's products only the first by
name does the work. What a refresh needs of each card is kept in an in-memory index, fed by the
watch kopf already has, so the refresh reads nothing from the API server.

The cards waiting for review get their recorded CardReview applied the same way, by a second
timer on the namespace's product (issue 14): kopf keeps the whole last-seen body of every object
of a kind that has a timer, so a timer on Card cost memory for every card, reviewed or not.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, NamedTuple, cast

import kopf
import psycopg_pool

from fintech_operator import api, kube
from fintech_operator.app import card_state, stores
from fintech_operator.authorizations import mirror
from fintech_operator.compliance import store as compliance_store
from fintech_operator.handlers import cards, report
from fintech_operator.handlers.context import OperatorMemo
from fintech_operator.ledger import engine, model
from fintech_operator.observability import metrics, reconcile
from fintech_operator.rewards import store as rewards_store

if TYPE_CHECKING:
    from fintech_operator import config

log = logging.getLogger(__name__)
# Cards read per round trip; bounds one statement's parameter list and one patch burst.
REFRESH_BATCH_MAX: Final = 500
# Card accounts read per orphan sweep of a namespace (oldest first); the rest at the next one.
ORPHAN_SWEEP_ACCOUNTS_MAX: Final = 50_000
# The log line's reason when the sweep closes a deleted card's account.
ORPHAN_REASON: Final = "DeletedCardAccountClosed"
# A review whose application failed for an unexpected reason is tried again after this long.
REVIEW_ERROR_DELAY_SECONDS: Final = 10.0


API_VERSION: Final = f"{api.GROUP}/{api.VERSION}"


class IssuedCard(NamedTuple):
    """What the refresh reads of an issued card, flat: one tuple per card instead of a body's
    four or more dicts (issue 14: kopf keeps every index value for every card). A card being
    closed also keeps what closing it reports against (its reason and conditions)."""

    name: str
    namespace: str
    uid: str
    generation: int
    state: str | None
    phase: str
    account: str
    balance_minor: int | None
    currency: str | None
    rewards_points: int | None
    aml: tuple[Any, Any, Any] | None  # alerts, lastAlertId, lastAlert
    held_minor: int | None
    available_minor: int | None
    closing: tuple[Any, Any] | None  # reason, conditions


def _amount(value: Any) -> Any:
    """``held`` and ``available`` are Money (or absent): the refresh compares the amount only."""
    return value.get("amount") if isinstance(value, dict) else None


def namespace_cards(namespace: str | None, name: str, body: kopf.Body, **_: Any) -> dict[Any, Any]:
    """namespace -> what the namespace's timers need of each card, and only that (one index:
    kopf keeps a few hundred bytes per object and index even for cards an index leaves out):
    issued cards for the refresh (an :class:`IssuedCard`), cards in PendingReview for their
    review (a snapshot of the body without kopf's state: there are few of them)."""
    status = body.get("status") or {}
    phase = status.get("phase")
    spec = body.get("spec") or {}
    if phase == api.CardPhase.PENDING_REVIEW:
        kept = {key: value for key, value in status.items() if key != "kopf"}
        return {namespace: _snapshot(body, name, namespace, dict(spec), kept)}
    if phase not in cards.ISSUED_PHASES or not status.get("account"):
        return {}  # not indexed: nothing to refresh
    aml = status.get("aml")
    balance = status.get("balance") or {}
    meta = body.metadata
    closing = spec.get("state") == "Closed"
    return {
        namespace: IssuedCard(
            name=name,
            namespace=str(namespace),
            uid=str(meta.get("uid")),
            generation=int(meta.get("generation") or 0),
            state=spec.get("state"),
            phase=str(phase),
            account=str(status.get("account")),
            balance_minor=balance.get("amount"),
            currency=balance.get("currency"),
            rewards_points=status.get("rewardsPoints"),
            aml=None
            if not aml
            else (aml.get("alerts"), aml.get("lastAlertId"), aml.get("lastAlert")),
            held_minor=_amount(status.get("held")),
            available_minor=_amount(status.get("available")),
            closing=(status.get("reason"), status.get("conditions")) if closing else None,
        )
    }


def snapshot_of(card: IssuedCard) -> dict[str, Any]:
    """The issued card as a body (only what the refresh reads), built for one refresh pass."""
    status: dict[str, Any] = {"phase": card.phase, "account": card.account}
    if card.balance_minor is not None:
        status["balance"] = {"amount": card.balance_minor, "currency": card.currency}
    if card.rewards_points is not None:
        status["rewardsPoints"] = card.rewards_points
    if card.aml is not None:
        status["aml"] = dict(zip(("alerts", "lastAlertId", "lastAlert"), card.aml, strict=True))
    if card.held_minor is not None:
        status["held"] = {"amount": card.held_minor}
    if card.available_minor is not None:
        status["available"] = {"amount": card.available_minor}
    if card.closing is not None:
        status["reason"], status["conditions"] = card.closing
    meta = {"uid": card.uid, "generation": card.generation}
    return _snapshot(kopf.Body(cast(kopf.RawBody, {"metadata": meta})), card.name,
                     card.namespace, {"state": card.state}, status)  # fmt: skip


def _snapshot(
    body: kopf.Body,
    name: str,
    namespace: str | None,
    spec: dict[str, Any],
    status: dict[str, Any],
) -> dict[str, Any]:
    meta = body.metadata
    return {
        "apiVersion": API_VERSION,
        "kind": "Card",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": meta.get("uid"),
            "generation": meta.get("generation"),
            "creationTimestamp": meta.get("creationTimestamp"),
        },
        "spec": spec,
        "status": status,
    }


def issued(entries: Iterable[Any]) -> list[IssuedCard]:
    return [entry for entry in entries if isinstance(entry, IssuedCard)]


def in_review(entries: Iterable[Any]) -> list[Mapping[str, Any]]:
    return [
        entry
        for entry in entries
        if isinstance(entry, Mapping)
        and entry["status"].get("phase") == api.CardPhase.PENDING_REVIEW
    ]


def product_names(namespace: str | None, name: str, meta: kopf.Meta, **_: Any) -> dict[Any, Any]:
    """namespace -> (name, being deleted) of each product: who refreshes the namespace."""
    return {namespace: (name, meta.get("deletionTimestamp") is not None)}


def owner(products: Iterable[tuple[str, bool]]) -> str | None:
    """The product whose timer refreshes the namespace: the first by name that is not being
    deleted (kopf stops the timers of an object being deleted), else the first."""
    listed = sorted(products)
    live = [name for name, deleting in listed if not deleting]
    return live[0] if live else (listed[0][0] if listed else None)


# The timer ticks this often; a namespace is refreshed every FINTECH_CARD_REFRESH_INTERVAL_SECONDS
# (read at start-up, not at import: kopf needs a timer's interval when the module is imported).
TICK_SECONDS: Final = 1.0


def _stopping(memo: OperatorMemo) -> bool:
    """The operator is stopping: its cleanup may close the pool while kopf still ticks the
    timers, so they do nothing from now on (no "pool already closed" at every stop)."""
    stop = memo.get("stop_flag")
    pool = memo.get("pool")
    return bool((stop is not None and stop.is_set()) or (pool is not None and pool.closed))


def _due(memo: OperatorMemo, namespace: str) -> bool:
    """True once per refresh interval per namespace (the times live in the operator's memo)."""
    last: dict[str, float] = memo.card_refresh_last
    if not _interval_over(last, namespace, memo.settings.cards.refresh_interval_seconds):
        return False
    last[namespace] = time.monotonic()
    return True


def _interval_over(last: Mapping[str, float], namespace: str, interval_seconds: float) -> bool:
    """Whether ``interval_seconds`` have passed since ``last[namespace]`` (or it has none)."""
    return time.monotonic() - last.get(namespace, -math.inf) >= interval_seconds


async def refresh_cards(
    namespace: str | None,
    name: str,
    memo: OperatorMemo,
    **kwargs: Any,
) -> None:
    """Mirror balance, points and AML alerts of the namespace's issued cards; finish closes."""
    # kopf passes each index as a keyword argument named after its function.
    namespace_cards, product_names = kwargs["namespace_cards"], kwargs["product_names"]
    ns = report.namespace_of(namespace)
    if _stopping(memo) or owner(product_names.get(ns) or ()) != name or not _due(memo, ns):
        return
    entries = list(namespace_cards.get(ns) or ())
    listed = sorted(issued(entries), key=lambda card: card.name)
    try:
        for start in range(0, len(listed), REFRESH_BATCH_MAX):
            batch = [snapshot_of(card) for card in listed[start : start + REFRESH_BATCH_MAX]]
            await _refresh_batch(memo, batch)
        if _sweep_due(memo, ns):
            await _sweep_orphans(memo, ns, entries)
    except psycopg_pool.PoolClosed:
        if not _stopping(memo):
            raise
        log.info("card refresh of %s stopped with the operator", ns)


def _sweep_due(memo: OperatorMemo, namespace: str) -> bool:
    """True at the namespace's first refresh after the operator starts, then once per
    ``FINTECH_CARD_ORPHAN_SWEEP_INTERVAL_SECONDS`` (counted from the last sweep that ended)."""
    interval = memo.settings.cards.orphan_sweep_interval_seconds
    return _interval_over(memo.card_orphan_sweep_last, namespace, interval)


async def _sweep_orphans(memo: OperatorMemo, namespace: str, entries: Sequence[Any]) -> None:
    """Close the accounts of the namespace's deleted cards that nothing else will close
    (``card_state.orphan_suspects``): one statement for the accounts that can still spend,
    then the API server asked only about those the index does not show. A failure leaves the
    sweep due: the next refresh tries again."""
    indexed = {card.name: card.uid for card in issued(entries)}
    indexed.update(
        (str(entry["metadata"]["name"]), str(entry["metadata"]["uid"]))
        for entry in in_review(entries)
    )
    async with memo.pool.connection() as conn:
        live = await mirror.live_card_accounts(conn, namespace, ORPHAN_SWEEP_ACCOUNTS_MAX)
    for account in card_state.orphan_suspects(live, indexed):
        found = await kube.get("cards", namespace, account.name)
        card_uid = None if found is None else str(found["metadata"]["uid"])
        if card_state.is_orphan(account, card_uid):
            await _close_orphan(memo, namespace, account, card_uid)
    memo.card_orphan_sweep_last[namespace] = time.monotonic()


async def _close_orphan(
    memo: OperatorMemo, namespace: str, account: mirror.LiveAccount, card_uid: str | None
) -> None:
    outcome = await card_state.close_orphan(namespace, account, stores.Cards(memo.pool))
    if isinstance(outcome, card_state.Unchanged):
        return  # no such account: nothing was done
    metrics.deleted_card_account(isinstance(outcome, card_state.AccountClosed))
    gone = "is gone" if card_uid is None else f"is gone (card {card_uid} has its name now)"
    what = (
        f"its token retired and {outcome.message}"
        if isinstance(outcome, card_state.AccountLeftOpen)
        else "its token retired and its account closed; history kept"
    )
    log.warning(
        "card %s/%s (uid %s) %s: %s",
        namespace, account.name, account.uid or "unrecorded", gone, what,
        extra={"account": account.code, "reason": ORPHAN_REASON},
    )  # fmt: skip


async def _refresh_batch(memo: OperatorMemo, batch: Sequence[Mapping[str, Any]]) -> None:
    names = [f"{s['metadata']['namespace']}/{s['metadata']['name']}" for s in batch]
    async with memo.pool.connection() as conn:
        balances = await engine.balances(conn, [str(s["status"]["account"]) for s in batch])
        points = await rewards_store.points_balances(conn, names)
        last_alerts = await compliance_store.last_alert_ids(conn, names)
        holds = await mirror.holds_of(conn, [str(s["status"]["account"]) for s in batch])
        freezes = await engine.card_freezes(conn, [str(s["status"]["account"]) for s in batch])
    await _repair_freezes(memo, batch, freezes)
    for snapshot, card in zip(batch, names, strict=True):
        account = str(snapshot["status"]["account"])
        found = balances.get(account)
        if found is not None:
            figures = _Figures(found, points[card], last_alerts.get(card, 0), holds.get(account))
            await _refresh_one(memo, snapshot, figures)


async def _repair_freezes(
    memo: OperatorMemo,
    batch: Sequence[Mapping[str, Any]],
    freezes: Mapping[str, engine.CardFreeze],
) -> None:
    """A card whose status shows its spec's state while its ledger account does not follow it
    gets the state applied again, with its event, a Warning on the card and a log line
    (``card_state.freeze_drift``: kopf lost the status patch of a freeze or unfreeze and then
    saw nothing to handle). One card's failure does not stop the refresh: it is tried again at
    the next one."""
    for snapshot in batch:
        body = kopf.Body(cast(kopf.RawBody, dict(snapshot)))
        card = cards.issued_card(body)
        found = freezes.get(str(card.account))
        if found is None:
            continue
        to = card_state.freeze_drift(card, body.spec.get("state"), found.frozen, found.generation)
        if to is None:
            continue
        try:
            changed = await card_state.repair_freeze(card, to, stores.Cards(memo.pool))
        except Exception:  # one card's failure must not stop the refresh; the next one retries
            log.exception("card %s/%s: repairing its ledger freeze failed", card.namespace,
                          card.name)  # fmt: skip
            continue
        if changed:
            cards.announce_freeze_repaired(body, card_state.repaired_message(to))


@dataclass(frozen=True)
class _Figures:
    """What the database says of one card: ledger balance, points, AML, real-time holds."""

    balance: model.Balance
    points: int
    last_alert_id: int
    holds: tuple[int, int | None] | None


async def _refresh_one(memo: OperatorMemo, snapshot: Mapping[str, Any], figures: _Figures) -> None:
    body = kopf.Body(cast(kopf.RawBody, dict(snapshot)))
    patch = kopf.Patch()
    balance, points, last_alert_id = figures.balance, figures.points, figures.last_alert_id
    if figures.holds is not None:
        cards.show_holds(body, patch, figures.holds, balance.currency)
    amount = balance.balance_minor
    if (body.status.get("balance") or {}).get("amount") != amount:
        patch.status["balance"] = {"amount": amount, "currency": balance.currency}
    if body.status.get("rewardsPoints") != points:
        patch.status["rewardsPoints"] = points
    aml = dict(body.status.get("aml") or {})
    if last_alert_id > int(aml.get("lastAlertId") or 0):
        card = f"{body.metadata.namespace}/{body.metadata.name}"
        async with memo.pool.connection() as conn:
            alerts = await compliance_store.alerts_after(
                conn, card, int(aml.get("lastAlertId") or 0), cards.ALERT_EVENTS_PER_REFRESH_MAX
            )
        cards.announce_alerts(body, patch, aml, alerts)
    if body.spec.get("state") == "Closed" and amount == 0:
        await cards.close(body, patch, memo, announce=False)
    if patch.status:
        await kube.patch_status(
            "cards",
            str(body.metadata.namespace),
            str(body.metadata.name),
            str(body.metadata.uid),
            dict(patch.status),
        )


# --- Reviews: the recorded decisions of cards in PendingReview -----------------------------------


async def apply_reviews(
    namespace: str | None, name: str, memo: OperatorMemo, **kwargs: Any
) -> None:
    """Apply the recorded CardReview of each of the namespace's cards in PendingReview."""
    ns = report.namespace_of(namespace)
    if _stopping(memo) or owner(kwargs["product_names"].get(ns) or ()) != name:
        return
    waits: dict[str, tuple[int, float]] = memo.card_review_waits
    waiting = in_review(kwargs["namespace_cards"].get(ns) or ())
    for uid in set(waits) - {str(s["metadata"]["uid"]) for s in waiting}:
        del waits[uid]  # decided, deleted, or no longer waiting: forget its retries
    for snapshot in sorted(waiting, key=lambda s: str(s["metadata"]["name"])):
        await _apply_review(memo, snapshot, kwargs["cardproducts"], waits)


async def _apply_review(
    memo: OperatorMemo,
    snapshot: Mapping[str, Any],
    products: kopf.Index[Any, Any],
    waits: dict[str, tuple[int, float]],
) -> None:
    """One card: as its own timer did, with the retry count and delay kept in ``waits``."""
    body = kopf.Body(cast(kopf.RawBody, dict(snapshot)))
    uid, ns, name = str(body.metadata.uid), str(body.metadata.namespace), str(body.metadata.name)
    attempts, not_before = waits.get(uid, (0, -math.inf))
    if time.monotonic() < not_before:
        return
    patch = kopf.Patch()
    try:
        await cards.apply_review(
            body=body, spec=body.spec, patch=patch, namespace=ns, name=name, memo=memo,
            cardproducts=products, retry=attempts,
        )  # fmt: skip
        waits.pop(uid, None)
    except kopf.TemporaryError as exc:  # a wait (the processor): its status is patched below
        waits[uid] = (attempts + 1, time.monotonic() + (exc.delay or REVIEW_ERROR_DELAY_SECONDS))
        log.info("card %s/%s: applying its review %s", ns, name, exc)
    except Exception:  # one card's failure must not stop the others' reviews
        waits[uid] = (attempts + 1, time.monotonic() + REVIEW_ERROR_DELAY_SECONDS)
        log.exception("card %s/%s: applying its review failed; retried", ns, name)
    if not patch.status:
        return
    # Applied even after a failure, as kopf applies a handler's patch: what was decided shows.
    try:
        await kube.patch_status("cards", ns, name, uid, dict(patch.status))
    except Exception:  # the API server: the card stays in review and the next tick retries
        waits[uid] = (attempts + 1, time.monotonic() + REVIEW_ERROR_DELAY_SECONDS)
        log.exception("card %s/%s: its review's status patch failed; retried", ns, name)
        return
    # This timer is not the card's kopf handler, so the handler wrapper that counts the other
    # rejections never sees this patch: a review's rejection (ReviewRejected, or ProductNotFound
    # when the product went away) is counted here, once it shows.
    reconcile.count_rejection("Card", patch)


async def stand_in(namespace: str | None, name: str, memo: OperatorMemo, **kwargs: Any) -> None:
    """Both timers' work, done by the deletion handler of a product (``cardproduct.protect``,
    every 10 s while it waits) when every product of its namespace is being deleted.

    kopf stops the timers of an object once its deletion is requested, so the namespace would
    have neither refresh nor reviews: a close waiting for a zero balance would never complete,
    and the product's deletion, which waits for that very card, would wait forever. A live
    product of the namespace keeps its timers, and then this does nothing.
    """
    ns = report.namespace_of(namespace)
    if any(not deleting for _product, deleting in kwargs["product_names"].get(ns) or ()):
        return
    for work in (refresh_cards, apply_reviews):
        try:
            await work(namespace, name, memo, **kwargs)
        except Exception:  # the product's own wait is still reported; the next round retries
            log.exception("cards of %s: the refresh while product %s is deleted failed", ns, name)


def register(registry: kopf.OperatorRegistry, settings: config.Settings) -> None:
    """Add the two indexes and the namespaces' two timers to ``registry`` (see
    ``handlers.register``). The timers are on CardProduct, never on Card (module docstring)."""
    kopf.index(api.GROUP, api.VERSION, "cards", registry=registry)(namespace_cards)
    kopf.index(api.GROUP, api.VERSION, "cardproducts", registry=registry)(product_names)
    for interval, fn in (
        (TICK_SECONDS, refresh_cards),
        (cards.REVIEW_POLL_INTERVAL_SECONDS, apply_reviews),
    ):
        kopf.timer(api.GROUP, api.VERSION, "cardproducts", interval=interval, registry=registry)(fn)


__all__ = [
    "IssuedCard",
    "apply_reviews",
    "in_review",
    "issued",
    "namespace_cards",
    "owner",
    "product_names",
    "refresh_cards",
    "register",
    "snapshot_of",
    "stand_in",
]
