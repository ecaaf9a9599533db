"""One endpoint's delivery loop: due deliveries out, one at a time, signed, bounded.

Each Webhook endpoint has its own worker task (in the notifier that owns it), so a slow
or dead endpoint only ever delays its own events: its requests wait for its own
timeout, its own rate limit and its own circuit breaker. All workers of a process share
one bound on requests in flight (``FINTECH_NOTIFIER_MAX_IN_FLIGHT``).

A delivery is tried oldest first. A failure schedules the next attempt on the retry
policy's doubling schedule while later events go on, so receivers must order by the
event's ``time`` (and de-duplicate by ``webhook-id``). A 429 or 503 with ``Retry-After``
replaces the schedule's wait with the receiver's (clamped to ``retry.maxDelaySeconds``)
and pauses the whole endpoint that long. The attempt, the delivery's new state and the
endpoint's breaker are written in one transaction after each request; a crash between a
2xx and that commit is the only way an event is sent twice.

Every request goes through the destination guard (:mod:`destination`, in the client the
process builds): a URL whose host is or resolves to a non-public address is refused before
any connection, and that delivery fails at once (a refusal is not the endpoint's failure,
so it does not count toward the circuit breaker). The worker does not wait for an event to
find that out: before its first round with a configuration (a new Webhook, an edit, a fixed
Secret) it asks the same guard about the URL (:func:`destination.judge`) and records a
refusal as the endpoint's problem, with the text a refused delivery records, so the Webhook
shows it at once. A name that does not resolve yet is no refusal (a delivery retries it):
it is judged again ``JUDGE_AGAIN_SECONDS`` later. Bounds per request: the Webhook's
``timeoutSeconds`` over all of it (DNS, connect, TLS, send, answer), connect at most
``CONNECT_TIMEOUT_SECONDS_MAX``, and at most ``RESPONSE_BYTES_MAX`` of the answer read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any, Final

import httpx
from psycopg_pool import AsyncConnectionPool

from fintech_operator.events import envelope
from fintech_operator.notify import destination, endpoints, policy, signing, store
from fintech_operator.observability import metrics

log = logging.getLogger(__name__)
BATCH_SIZE: Final = 50
# The most of an answer read (the rest is never read: the connection is closed). Network
# reads come in chunks of up to 64 KiB, which bounds the memory of one request; headers are
# bounded by h11 (100 KiB).
RESPONSE_BYTES_MAX: Final = 4096
# Of what was read, this much goes into a failure's message in the delivery log.
EXCERPT_CHARS_MAX: Final = 200
CONNECT_TIMEOUT_SECONDS_MAX: Final = 10.0
USER_AGENT: Final = "fintech-operator-notifier/1"
EXPIRE_EVERY_SECONDS: Final = 30.0
# After a failed name resolution, how long until the destination is judged again.
JUDGE_AGAIN_SECONDS: Final = 30.0


class EndpointWorker:
    """Delivers one endpoint's queue until stopped; reconfigured in place on edits."""

    def __init__(
        self,
        endpoint: endpoints.Endpoint,
        pool: AsyncConnectionPool[Any],
        client: destination.GuardedClient,
        in_flight: asyncio.Semaphore,
        poll_seconds: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.endpoint = endpoint
        self._pool = pool
        self._client = client
        self._in_flight = in_flight
        self._poll_seconds = poll_seconds
        self._clock = clock
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._breaker = policy.CircuitBreaker(endpoint.failure_threshold, endpoint.open_seconds)
        self._bucket = policy.TokenBucket.full(endpoint.rate_per_second, endpoint.burst, clock())
        self._last_expire = 0.0
        self._resume_at = 0.0  # Epoch seconds; a receiver's Retry-After pauses the endpoint.
        self._judged: endpoints.Endpoint | None = None  # The configuration last judged.
        self._judge_after = 0.0  # Epoch seconds; set after a name did not resolve.
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self._run(), name=f"webhook-{self.endpoint.ref}")

    async def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self.task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(self.task, 30)

    def wake(self) -> None:
        self._wake.set()

    def update(self, endpoint: endpoints.Endpoint) -> None:
        """Take a new configuration (an edited Webhook or a fixed Secret) without losing state."""
        now = self._clock()
        self._breaker = self._breaker.reconfigured(
            endpoint.failure_threshold, endpoint.open_seconds
        )
        self._bucket = self._bucket.reconfigured(endpoint.rate_per_second, endpoint.burst, now)
        self.endpoint = endpoint
        self._judge_after = 0.0  # A new configuration is judged at once (the next round).
        self._wake.set()

    async def _run(self) -> None:
        async with self._pool.connection() as conn:
            self._breaker = await store.load_breaker(
                conn, self.endpoint.uid, self.endpoint.failure_threshold, self.endpoint.open_seconds
            )
        while not self._stop.is_set():
            self._wake.clear()
            try:
                wait = await self._round()
            except asyncio.CancelledError:
                raise
            except Exception:  # One endpoint's trouble (its database writes) never ends the loop.
                log.exception("webhook %s: delivery round failed", self.endpoint.ref)
                wait = self._poll_seconds
            if wait > 0:
                await self._sleep(wait)

    async def _round(self) -> float:
        """Deliver what is due; return how long to sleep before the next round."""
        endpoint = self.endpoint
        await self._judge_destination(endpoint)
        await self._expire_old(endpoint)
        held = self._held_seconds(endpoint)
        if held is not None:
            return held
        async with self._pool.connection() as conn:
            batch = await store.due(conn, endpoint.uid, BATCH_SIZE)
            if not batch:
                until = await store.seconds_until_next(conn, endpoint.uid)
                return self._poll_seconds if until is None else min(self._poll_seconds, until)
        for delivery in batch:
            if self._stop.is_set() or self.endpoint is not endpoint or self._paused():
                return 0.0  # Stopping, reconfigured or paused: the next round sorts it out.
            allowed, self._breaker = self._breaker.allow(self._clock())
            if not allowed:
                return 0.0
            await self._take_token()
            await self._deliver(endpoint, delivery)
        return 0.0

    def _paused(self) -> bool:
        return self._clock() < self._resume_at

    def _held_seconds(self, endpoint: endpoints.Endpoint) -> float | None:
        """How long nothing may be sent (held, paused by the receiver, circuit open), or None."""
        if endpoint.suspend or endpoint.key is None:
            return self._poll_seconds  # Held: events wait (and expire) in the log.
        if self._paused():
            return max(0.05, self._resume_at - self._clock())
        allowed, self._breaker = self._breaker.allow(self._clock())
        if not allowed:
            return max(0.05, self._breaker.seconds_until_allowed(self._clock()))
        return None

    async def _judge_destination(self, endpoint: endpoints.Endpoint) -> None:
        """Record whether the guard refuses this configuration's URL, once per configuration
        (see the module docstring); a name that does not resolve is judged again later."""
        if self._judged is endpoint or self._clock() < self._judge_after:
            return
        connect_seconds = min(endpoint.timeout_seconds, CONNECT_TIMEOUT_SECONDS_MAX)
        try:
            async with self._in_flight:
                reason = await self._client.judge(endpoint.url, connect_seconds)
        except httpx.InvalidURL as exc:  # Deliveries fail on it too, with their own message.
            log.warning("webhook %s: cannot judge its URL: %s", endpoint.ref, exc)
            self._judged = endpoint
            return
        except httpx.HTTPError as exc:  # DNS: an attempt would fail and be retried, not refused.
            self._judge_after = self._clock() + JUDGE_AGAIN_SECONDS
            log.info(
                "webhook %s: destination not judged yet (%s: %s); again in %.0fs",
                endpoint.ref,
                type(exc).__name__,
                exc,
                JUDGE_AGAIN_SECONDS,
            )
            return
        refusal = None if reason is None else policy.refused(reason).error
        async with self._pool.connection() as conn:
            changed = await store.record_judgement(conn, endpoint, refusal)
        self._judged = endpoint
        if refusal is not None and changed:
            log.warning("webhook %s: %s; every delivery will fail at once", endpoint.ref, refusal)

    async def _expire_old(self, endpoint: endpoints.Endpoint) -> None:
        now = self._clock()
        if now - self._last_expire < EXPIRE_EVERY_SECONDS:
            return
        self._last_expire = now
        async with self._pool.connection() as conn:
            expired = await store.expire(conn, endpoint.uid, endpoint.retry.age_seconds_max)
        if expired:
            log.warning("webhook %s: %d deliveries expired", endpoint.ref, expired)

    async def _take_token(self) -> None:
        while True:
            wait, self._bucket = self._bucket.take(self._clock())
            if wait <= 0:
                return
            await asyncio.sleep(wait)

    async def _deliver(self, endpoint: endpoints.Endpoint, delivery: store.Due) -> None:
        started = time.monotonic()
        attempt = await self._send(endpoint, delivery)
        duration_ms = int((time.monotonic() - started) * 1000)
        now = self._clock()
        age = now - delivery.created_at.timestamp()
        step = policy.next_step(endpoint.retry, attempt, delivery.attempts + 1, age)
        if step is None:
            self._breaker = self._breaker.on_success()
        else:
            if not attempt.final:  # A refusal says nothing about the endpoint's health.
                self._breaker = self._breaker.on_failure(now)
            if attempt.retry_after_seconds is not None:
                pause = endpoint.retry.honoured(attempt.retry_after_seconds)
                self._resume_at = max(self._resume_at, now + pause)
            log.log(
                logging.WARNING if attempt.final else logging.INFO,
                "webhook %s: event %s attempt %d failed (%s); %s",
                endpoint.ref,
                delivery.event_id,
                delivery.attempts + 1,
                attempt.error,
                step.verdict.value,
            )
        metrics.webhook_delivery(_metric_outcome(step), duration_ms / 1000)
        async with self._pool.connection() as conn, conn.transaction():
            result = store.AttemptResult(delivery, attempt, duration_ms, step)
            await store.record_attempt(conn, endpoint.uid, result, self._breaker)

    async def _send(self, endpoint: endpoints.Endpoint, delivery: store.Due) -> policy.Attempt:
        key = endpoint.key
        if key is None:
            return policy.classify(None, "no signing key")
        timestamp = int(self._clock())
        headers = {
            "content-type": envelope.CONTENT_TYPE,
            "user-agent": USER_AGENT,
            **signing.headers(key, str(delivery.event_id), timestamp, delivery.body),
        }
        limit = endpoint.timeout_seconds
        timeouts = httpx.Timeout(limit, connect=min(limit, CONNECT_TIMEOUT_SECONDS_MAX))
        # The wait for a slot among all endpoints is not this endpoint's time: its timeout
        # starts once it may send.
        async with self._in_flight:
            try:
                async with asyncio.timeout(limit):
                    request = self._client.build_request(
                        "POST",
                        endpoint.url,
                        content=delivery.body,
                        headers=headers,
                        timeout=timeouts,
                    )
                    response = await self._client.send(request, stream=True, follow_redirects=False)
                    try:
                        head = await _read_bounded(response)
                    finally:
                        await response.aclose()
            except destination.DestinationRefused as exc:
                return policy.refused(str(exc))
            except TimeoutError:
                return policy.classify(None, f"no answer within {limit:g}s")
            except httpx.HTTPError as exc:
                return policy.classify(None, f"{type(exc).__name__}: {exc}")
        return policy.classify(
            response.status_code,
            None,
            detail=_detail(response, head),
            retry_after_seconds=policy.parse_retry_after(
                response.headers.get("retry-after"), self._clock()
            ),
        )

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)


def _metric_outcome(step: policy.NextStep | None) -> str:
    if step is None:
        return "delivered"
    return "failed" if step.verdict is policy.Verdict.RETRY else "exhausted"


async def _read_bounded(response: httpx.Response) -> bytes:
    """At most ``RESPONSE_BYTES_MAX`` of the raw answer: an endpoint cannot make us read (or
    decompress: raw bytes are never decoded) a huge body; the rest is never read."""
    kept = bytearray()
    async for chunk in response.aiter_raw():
        kept += chunk[: RESPONSE_BYTES_MAX - len(kept)]
        if len(kept) >= RESPONSE_BYTES_MAX:
            break
    return bytes(kept)


def _detail(response: httpx.Response, head: bytes) -> str | None:
    """What a failure's message adds to its status: where a redirect pointed (it is not
    followed), else the start of the body as printable text (compressed bodies are not
    shown)."""
    if 300 <= response.status_code < 400:
        location = response.headers.get("location", "")[:EXCERPT_CHARS_MAX]
        return f"redirect to {location or '(no location)'} not followed"
    if not head or response.headers.get("content-encoding", "identity") != "identity":
        return None
    text = head.decode("utf-8", errors="replace")[:EXCERPT_CHARS_MAX]
    shown = "".join(ch if ch.isprintable() else " " for ch in text).strip()
    return shown or None
