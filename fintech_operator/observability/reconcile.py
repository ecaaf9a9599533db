"""Time, trace and log every kopf handler without touching the handler modules.

:func:`instrument` wraps each async resource handler kopf has registered (create, update,
resume, field and timer handlers; not daemons, which never return, nor indexes, which are
synchronous and trivial). The wrapper is transparent to kopf: same handler id, same keyword
arguments, same result and the same exception, so retries and backoff are kopf's as before.
Around each call it

* opens a ``reconcile <Kind>`` span, the parent of the ledger's and the relay's spans;
* binds the resource (kind, namespace, name, uid) and its card (name and token, never a
  number) to every log line the handler writes;
* observes ``fintech_reconcile_duration_seconds{kind,handler,outcome}``, where the outcome is
  ``rejected`` when the handler moved the object to phase Rejected, ``retry`` for
  ``kopf.TemporaryError``, ``failed`` for ``kopf.PermanentError``, ``error`` for anything
  else kopf will retry, ``cancelled``, or ``success``;
* counts a rejection by reason, and a rejected Posting by type and currency.

kopf has no public middleware hook, so this replaces the handler entries in kopf's registry
(``OperatorRegistry._changing`` and ``._spawning``, kopf 1.x). A kopf upgrade that changes
them makes :func:`instrument` find nothing; the unit tests fail on that, and at run time the
operator logs an error and runs uninstrumented rather than not at all.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final

import kopf

from fintech_operator import logs
from fintech_operator.observability import metrics, tracing

log = logging.getLogger(__name__)
_MARK: Final = "__fintech_instrumented__"
HandlerFn = Callable[..., Awaitable[Any]]


def _is_async(fn: Any) -> bool:
    import inspect  # noqa: PLC0415

    while hasattr(fn, "__wrapped__"):
        fn = fn.__wrapped__
    return inspect.iscoroutinefunction(fn)


def _first(index: Any, key: tuple[str, str]) -> Any:
    if not isinstance(index, Mapping):
        return None
    store = index.get(key)
    return next(iter(store), None) if store is not None else None


def _card_fields(kind: str, body: Mapping[str, Any], kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The card a handler works on: its name and token (a token, never a card number)."""
    namespace = (body.get("metadata") or {}).get("namespace")
    if kind == "Card":
        name = (body.get("metadata") or {}).get("name")
        token = (body.get("status") or {}).get("token")
    elif kind == "Posting":
        name = (body.get("spec") or {}).get("card")
        card = _first(kwargs.get("cards"), (str(namespace), str(name))) if name else None
        token = card.get("token") if isinstance(card, Mapping) else None
    else:
        return {}
    return {
        "card": f"{namespace}/{name}" if name else None,
        "card_token": token if isinstance(token, str) and token.startswith("tok_") else None,
    }


def _outcome_after_success(patch: Any) -> str:
    status = patch.get("status") if isinstance(patch, Mapping) else None
    if isinstance(status, Mapping) and status.get("phase") == "Rejected":
        return "rejected"
    return "success"


def _record(
    kind: str,
    handler_id: str,
    outcome: str,
    elapsed_seconds: float,
    body: Mapping[str, Any],
    patch: Any,
) -> None:
    metrics.reconcile(kind, handler_id, outcome, elapsed_seconds)
    if outcome != "rejected":
        return
    count_rejection(kind, patch)
    if kind == "Posting":
        metrics.posting_decided(body.get("spec"), "rejected")


def count_rejection(kind: str, patch: Any) -> None:
    """Count ``patch`` in fintech_rejections_total when it moves its resource to Rejected.

    Every handler's patch is counted here by :func:`wrap`; code that patches a status outside a
    kopf handler (the card review timer, card_refresh) calls it for its own patches."""
    if _outcome_after_success(patch) == "rejected":
        metrics.rejection(kind, (patch.get("status") or {}).get("reason"))


def wrap(fn: HandlerFn, handler_id: str, *, periodic: bool = False) -> HandlerFn:
    """``fn`` timed, traced and with its resource bound to log lines (see the module doc)."""
    if getattr(fn, _MARK, False):
        return fn
    level = logging.DEBUG if periodic else logging.INFO

    @functools.wraps(fn)
    async def instrumented(**kwargs: Any) -> Any:
        body: Mapping[str, Any] = kwargs.get("body") or {}
        meta: Mapping[str, Any] = body.get("metadata") or {}
        kind = str(body.get("kind") or "Unknown")
        resource = {
            "kind": kind,
            "namespace": meta.get("namespace"),
            "name": meta.get("name"),
            "uid": meta.get("uid"),
        }
        attributes = {
            "fintech.handler": handler_id,
            "k8s.resource.kind": kind,
            "k8s.namespace.name": str(meta.get("namespace")),
            "k8s.resource.name": str(meta.get("name")),
            "k8s.resource.uid": str(meta.get("uid")),
        }
        outcome = "error"
        started = time.perf_counter()
        with (
            logs.bind(resource=resource, handler=handler_id, **_card_fields(kind, body, kwargs)),
            tracing.span(f"reconcile {kind}", attributes=attributes) as current,
        ):
            try:
                result = await fn(**kwargs)
                outcome = _outcome_after_success(kwargs.get("patch"))
                return result
            except kopf.TemporaryError:
                outcome = "retry"
                raise
            except kopf.PermanentError:
                outcome = "failed"
                raise
            except asyncio.CancelledError:
                outcome = "cancelled"
                raise
            finally:
                elapsed = time.perf_counter() - started
                current.set_attribute("fintech.outcome", outcome)
                _record(kind, handler_id, outcome, elapsed, body, kwargs.get("patch"))
                log.log(
                    level,
                    "reconcile %s %s: %s in %.3fs",
                    kind,
                    handler_id,
                    outcome,
                    elapsed,
                    extra={"outcome": outcome, "duration_seconds": round(elapsed, 6)},
                )

    setattr(instrumented, _MARK, True)
    return instrumented


def instrument(registry: Any) -> int:
    """Wrap every async resource and timer handler in ``registry`` (the operator's own, from
    ``runtime.build_registry``; never kopf's default); return how many were."""
    wrapped = 0
    try:
        parts = (registry._changing._handlers, registry._spawning._handlers)
    except AttributeError:
        log.error("kopf's registry has changed shape: reconcile metrics and spans are off")
        return 0
    for entries in parts:
        for position, handler in enumerate(entries):
            # Daemons run for the object's lifetime: a duration or a span would mean nothing.
            periodic = hasattr(handler, "interval")
            daemon = not periodic and hasattr(handler, "cancellation_timeout")
            if daemon or not _is_async(handler.fn) or getattr(handler.fn, _MARK, False):
                continue
            fn = wrap(handler.fn, str(handler.id), periodic=periodic)
            entries[position] = dataclasses.replace(handler, fn=fn)
            wrapped += 1
    return wrapped


__all__ = ["count_rejection", "instrument", "wrap"]
