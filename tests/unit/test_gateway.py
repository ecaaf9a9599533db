"""The gateway's HTTP edge over an in-memory fake store (pure: no server, no database).

These prove the order and shape of the gateway's own answers: 413 before reading, 401 for
unsigned/stale/bad signatures, 422 naming fields, card numbers refused, Overloaded when the
in-flight limit is reached, IssuerUnavailable at the deadline followed by a settle. The same
behaviours against real uvicorn and real PostgreSQL are in tests/integration/test_gateway.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from fintech_operator import cli
from fintech_operator.authorizations import contract
from fintech_operator.gateway import app, gate, server, settings, trust
from fintech_operator.notify import signing
from fintech_operator.observability import metrics

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
KEY = signing.parse_secret(SECRET)
AUTH = {
    "id": "auth-1",
    "card": "tok_abc",
    "amount": 1250,
    "currency": "USD",
    "merchant": {"name": "Blue Bottle", "mcc": "5814", "country": "US"},
}
VISA_TEST_PAN = "4111111111111111"
COMMITTED_OPENAPI = Path(__file__).resolve().parents[2] / "docs" / "api" / "openapi.json"


class FakeStore:
    """Approves everything after ``delay_seconds``; records every call."""

    def __init__(self, delay_seconds: float = 0.0) -> None:
        self.delay_seconds = delay_seconds
        self.calls: list[tuple[str, str]] = []
        self.settled: list[str] = []
        self.ages: list[float] = []
        self.release = asyncio.Event()
        self.called = asyncio.Event()
        self.block = False

    async def _answer(self, op: str, key: str) -> contract.Answer:
        self.calls.append((op, key))
        self.called.set()
        if self.block:
            await self.release.wait()
        await asyncio.sleep(self.delay_seconds)
        body = {"approved": True, "reason": "Approved", "authorization": key}
        return contract.Answer(200, orjson.dumps(body))

    async def authorize(self, conn: Any, req: contract.AuthorizeRequest) -> contract.Answer:
        return await self._answer("authorize", req.id)

    async def increment(
        self, conn: Any, aid: str, req: contract.IncrementRequest
    ) -> contract.Answer:
        return await self._answer("increment", aid)

    async def capture(self, conn: Any, aid: str, req: contract.CaptureRequest) -> contract.Answer:
        return await self._answer("capture", aid)

    async def void(self, conn: Any, aid: str, req: contract.VoidRequest) -> contract.Answer:
        return await self._answer("void", aid)

    async def get(self, conn: Any, aid: str) -> contract.Answer:
        return await self._answer("get", aid)

    async def settle_timed_out(self, conn: Any, request_id: str, age_seconds: float) -> None:
        self.ages.append(age_seconds)
        self.settled.append(request_id)


@contextlib.asynccontextmanager
async def fake_connection(_wait_seconds: float) -> AsyncIterator[Any]:
    yield object()


async def always_ready() -> bool:
    return True


def make_app(
    tmp_path: Path,
    store: FakeStore,
    *,
    deadline_seconds: float = 1.5,
    in_flight_max: int = 8,
    queue_max: int = 0,
    queue_wait_seconds: float = 0.0,
    dispatcher: bool = True,
) -> tuple[Any, gate.Gate]:
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET + "\n")
    the_gate = gate.Gate(
        store,
        fake_connection,
        gate.Limits(
            deadline_seconds=deadline_seconds,
            in_flight_max=in_flight_max,
            settle_timeout_seconds=5,
            queue_max=queue_max,
            queue_wait_seconds=queue_wait_seconds,
        ),
    )
    deps = app.Deps(
        gate=the_gate,
        secrets=trust.SecretSource(str(secret_file), 10),
        limits=app.Limits(body_bytes_max=8192, signature_tolerance_seconds=300),
        ready=always_ready,
    )
    return app.create_app(deps, dispatcher=dispatcher), the_gate


def signed(body: bytes, *, stamp: int | None = None, key: bytes = KEY) -> dict[str, str]:
    now = int(time.time()) if stamp is None else stamp
    return {**signing.headers(key, "msg_1", now, body), "content-type": "application/json"}


def client(application: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=application), base_url="http://gw")


async def post(application: Any, path: str, payload: object, **kw: Any) -> httpx.Response:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    async with client(application) as c:
        return await c.post(path, content=body, headers=kw.get("headers") or signed(body))


async def test_a_signed_authorization_reaches_the_store(tmp_path: Path) -> None:
    """The happy path: the store's answer is sent as is."""
    store = FakeStore()
    application, _ = make_app(tmp_path, store)
    response = await post(application, "/v1/authorizations", AUTH)
    assert response.status_code == 200
    assert response.json()["approved"] is True
    assert store.calls == [("authorize", "auth-1")]


@pytest.mark.parametrize(
    ("headers_for", "kind"),
    [
        (lambda body: {"content-type": "application/json"}, "unsigned"),
        (lambda body: signed(body, stamp=int(time.time()) - 301), "stale"),
        (lambda body: signed(body, stamp=int(time.time()) + 301), "stale"),
        (lambda body: signed(body, key=b"x" * 32), "bad_signature"),
        (lambda body: signed(body + b" "), "bad_signature"),
    ],
)
async def test_unsigned_stale_and_bad_signatures_are_401_and_reach_nothing(
    tmp_path: Path, headers_for: Any, kind: str
) -> None:
    """Each untrusted request is 401 with its kind, counted, and the store is never called."""
    store = FakeStore()
    application, _ = make_app(tmp_path, store)
    body = json.dumps(AUTH).encode()
    before = metrics.sample("fintech_gateway_refused_total", {"reason": kind}) or 0
    response = await post(application, "/v1/authorizations", body, headers=headers_for(body))
    assert response.status_code == 401
    assert response.json()["error"] == kind
    assert store.calls == []
    assert metrics.sample("fintech_gateway_refused_total", {"reason": kind}) == before + 1


async def test_a_rotated_secret_file_with_two_keys_accepts_both(tmp_path: Path) -> None:
    """During a rotation the file holds two secrets; a signature by either is accepted."""
    store = FakeStore()
    application, _ = make_app(tmp_path, store)
    other = signing.format_secret(b"k" * 32)
    (tmp_path / "secret").write_text(f"{other}\n{SECRET}\n")
    body = json.dumps(AUTH).encode()
    new = await post(application, "/v1/authorizations", body, headers=signed(body, key=b"k" * 32))
    old = await post(application, "/v1/authorizations", body, headers=signed(body))
    assert (new.status_code, old.status_code) == (200, 200)


async def test_a_declared_oversized_body_is_413_unread(tmp_path: Path) -> None:
    """Content-Length over the limit is refused before the body is read."""
    store = FakeStore()
    application, _ = make_app(tmp_path, store)
    body = json.dumps({**AUTH, "pad": "x" * 9000}).encode()
    response = await post(application, "/v1/authorizations", body)
    assert response.status_code == 413
    assert response.json()["error"] == "too_large"
    assert store.calls == []


async def test_a_streamed_oversized_body_without_length_is_413(tmp_path: Path) -> None:
    """A chunked body is counted as it arrives and refused once past the limit."""
    store = FakeStore()
    application, _ = make_app(tmp_path, store)

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(20):
            yield b"x" * 1024

    async with client(application) as c:
        response = await c.post("/v1/authorizations", content=chunks(), headers=signed(b""))
    assert response.status_code == 413
    assert store.calls == []


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"amount": -5}, "amount"),
        ({"amount": 12.5}, "amount"),
        ({"amount": "1250"}, "amount"),
        ({"currency": "usd"}, "currency"),
        ({"merchant": {"name": "x", "mcc": "58", "country": "US"}}, "merchant.mcc"),
        ({"id": "has space"}, "id"),
        ({"extra": 1}, "extra"),
        ({"card": "tok_\u0000"}, "card"),
        ({"card": "tok\n1"}, "card"),
        ({"merchant": {"name": "Cafe\u0000", "mcc": "5812", "country": "US"}}, "merchant.name"),
        ({"merchant": {"name": "Cafe\u007f", "mcc": "5812", "country": "US"}}, "merchant.name"),
    ],
)
async def test_invalid_fields_are_422_naming_the_field(
    tmp_path: Path, change: dict[str, Any], field: str
) -> None:
    """A bad field is 422 with its dotted name; the value is never echoed."""
    store = FakeStore()
    application, _ = make_app(tmp_path, store)
    response = await post(application, "/v1/authorizations", {**AUTH, **change})
    assert response.status_code == 422
    assert field in response.json()["fields"]
    assert store.calls == []


async def test_a_body_that_is_not_json_is_422(tmp_path: Path) -> None:
    """Malformed JSON is invalid input, not a server error."""
    application, _ = make_app(tmp_path, FakeStore())
    response = await post(application, "/v1/authorizations", b"{not json")
    assert response.status_code == 422


@pytest.mark.parametrize(
    "payload",
    [
        {**AUTH, "card": VISA_TEST_PAN},
        {**AUTH, "merchant": {"name": f"shop {VISA_TEST_PAN}", "mcc": "5814", "country": "US"}},
        {**AUTH, "card": "4111 1111 1111 1111"},
    ],
)
async def test_a_card_number_anywhere_is_refused_and_not_echoed(
    tmp_path: Path, payload: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    """A Luhn-valid PAN in any field is 422 card_number; neither answer nor log carries it."""
    store = FakeStore()
    application, _ = make_app(tmp_path, store)
    caplog.set_level("DEBUG")
    response = await post(application, "/v1/authorizations", payload)
    assert response.status_code == 422
    assert response.json()["error"] == "card_number"
    assert "1111" not in response.text
    assert "1111" not in caplog.text
    assert store.calls == []


async def test_a_luhn_invalid_long_number_is_not_a_card_number(tmp_path: Path) -> None:
    """Only Luhn-valid runs are card numbers: a 16-digit token failing Luhn passes."""
    store = FakeStore()
    application, _ = make_app(tmp_path, store)
    response = await post(application, "/v1/authorizations", {**AUTH, "card": "4111111111111112"})
    assert response.status_code == 200


async def test_a_card_number_in_the_path_is_refused(tmp_path: Path) -> None:
    """Follow-ups carry the authorization id in the path; a PAN there is refused too."""
    store = FakeStore()
    application, _ = make_app(tmp_path, store)
    path = f"/v1/authorizations/{VISA_TEST_PAN}/void"
    response = await post(application, path, {"id": "void-1"})
    assert response.status_code == 422
    assert store.calls == []


async def test_overload_declines_at_once_with_overloaded(tmp_path: Path) -> None:
    """With every slot taken and no queue, the next request is declined Overloaded without
    waiting."""
    store = FakeStore()
    store.block = True
    application, the_gate = make_app(tmp_path, store, in_flight_max=2)
    first = [
        asyncio.create_task(post(application, "/v1/authorizations", {**AUTH, "id": f"a{i}"}))
        for i in range(2)
    ]
    while len(store.calls) < 2:
        store.called.clear()
        await asyncio.wait_for(store.called.wait(), 5)
    assert the_gate.in_flight == 2
    started = time.monotonic()
    response = await post(application, "/v1/authorizations", {**AUTH, "id": "a3"})
    elapsed = time.monotonic() - started
    assert response.status_code == 200
    assert response.content == (
        b'{"held": 0, "reason": "Overloaded", "status": "declined", "approved": false, '
        b'"authorization": "a3"}'
    )
    assert elapsed < 1.0
    store.release.set()
    for task in first:
        assert (await task).json()["approved"] is True
    assert the_gate.in_flight == 0


async def _until_waiting(the_gate: gate.Gate, count: int) -> None:
    async with asyncio.timeout(5):
        while the_gate.waiting < count:  # noqa: ASYNC110 - the gate's count has no event
            await asyncio.sleep(0.005)


async def test_requests_wait_for_a_slot_and_take_it_oldest_first(tmp_path: Path) -> None:
    """With every slot taken, requests wait in the queue and are worked on in arrival order as
    slots free: all of them answered, none declined."""
    store = FakeStore()
    store.block = True
    application, the_gate = make_app(
        tmp_path, store, in_flight_max=1, queue_max=5, queue_wait_seconds=5
    )
    tasks = []
    for i in range(4):
        payload = {**AUTH, "id": f"q{i}"}
        tasks.append(asyncio.create_task(post(application, "/v1/authorizations", payload)))
        await _until_waiting(the_gate, i)  # arrivals in this order
    assert store.calls == [("authorize", "q0")]
    assert (the_gate.in_flight, the_gate.waiting) == (1, 3)
    store.release.set()
    answers = [(await task).json() for task in tasks]
    assert [a["approved"] for a in answers] == [True] * 4
    assert store.calls == [("authorize", f"q{i}") for i in range(4)]
    assert (the_gate.in_flight, the_gate.waiting) == (0, 0)


async def _one_slot_held(
    tmp_path: Path, first_id: str, *, queue_max: int, queue_wait_seconds: float
) -> tuple[FakeStore, Any, gate.Gate, asyncio.Task[httpx.Response]]:
    """An app with one in-flight slot, held by a request ``first_id`` that the blocked store
    keeps working until ``store.release`` is set."""
    store = FakeStore()
    store.block = True
    application, the_gate = make_app(
        tmp_path, store, in_flight_max=1, queue_max=queue_max,
        queue_wait_seconds=queue_wait_seconds,
    )  # fmt: skip
    first = asyncio.create_task(post(application, "/v1/authorizations", {**AUTH, "id": first_id}))
    await asyncio.wait_for(store.called.wait(), 5)
    return store, application, the_gate, first


async def test_a_full_queue_declines_overloaded_at_once(tmp_path: Path) -> None:
    """Beyond the queue's bound a request is declined Overloaded at once, nothing called."""
    store, application, the_gate, first = await _one_slot_held(
        tmp_path, "f1", queue_max=1, queue_wait_seconds=5
    )
    queued = asyncio.create_task(post(application, "/v1/authorizations", {**AUTH, "id": "f2"}))
    await _until_waiting(the_gate, 1)
    started = time.monotonic()
    response = await post(application, "/v1/authorizations", {**AUTH, "id": "f3"})
    assert time.monotonic() - started < 1.0
    assert response.json() == {
        "held": 0, "reason": "Overloaded", "status": "declined", "approved": False,
        "authorization": "f3",
    }  # fmt: skip
    store.release.set()
    assert (await first).json()["approved"] is True
    assert (await queued).json()["approved"] is True
    assert ("authorize", "f3") not in store.calls
    assert (the_gate.in_flight, the_gate.waiting) == (0, 0)


async def test_a_wait_that_ends_without_a_slot_is_declined_overloaded(tmp_path: Path) -> None:
    """A stalled store fills the slots: a queued request is declined Overloaded when its wait
    ends, within its deadline, and leaves the queue; the slot's holder is unaffected."""
    store, application, the_gate, first = await _one_slot_held(
        tmp_path, "w1", queue_max=5, queue_wait_seconds=0.2
    )
    started = time.monotonic()
    response = await post(application, "/v1/authorizations", {**AUTH, "id": "w2"})
    elapsed = time.monotonic() - started
    assert response.json()["reason"] == "Overloaded"
    assert 0.2 <= elapsed < 1.0, elapsed
    assert the_gate.waiting == 0
    assert store.calls == [("authorize", "w1")]
    store.release.set()
    assert (await first).json()["approved"] is True
    assert the_gate.in_flight == 0


async def test_a_wait_never_outlasts_the_deadline(tmp_path: Path) -> None:
    """A queue wait longer than what is left of the request's deadline is cut to it: the
    request is declined Overloaded when its deadline comes, not after the queue's wait."""
    store = FakeStore()
    store.block = True
    _, the_gate = make_app(
        tmp_path, store, deadline_seconds=5, in_flight_max=1, queue_max=5, queue_wait_seconds=30
    )

    async def work(conn: Any) -> contract.Answer:
        return await store._answer("authorize", "holder")

    holder = asyncio.create_task(the_gate.run("holder", work, started=time.monotonic()))
    await asyncio.wait_for(store.called.wait(), 5)
    started = time.monotonic()
    # Received 4.8 s ago: 0.2 s of its deadline left, far less than the queue's 30 s.
    answer = await the_gate.run("late", work, started=started - 4.8)
    elapsed = time.monotonic() - started
    assert orjson.loads(answer.body)["reason"] == "Overloaded"
    assert 0.15 <= elapsed < 2.0, elapsed
    assert the_gate.waiting == 0
    store.release.set()
    assert orjson.loads((await holder).body)["approved"] is True
    assert store.calls == [("authorize", "holder")]
    assert (the_gate.in_flight, the_gate.waiting) == (0, 0)


async def test_a_cancelled_waiter_passes_its_place_on(tmp_path: Path) -> None:
    """A waiter whose caller goes away leaves the queue; the slot goes to the next one and no
    slot is lost, whichever of the cancel and the hand-over comes first."""
    store = FakeStore()
    store.block = True
    _, the_gate = make_app(tmp_path, store, in_flight_max=1, queue_max=5, queue_wait_seconds=5)

    def run(key: str) -> asyncio.Task[contract.Answer]:
        async def work(conn: Any) -> contract.Answer:
            return await store._answer("authorize", key)

        return asyncio.create_task(the_gate.run(key, work, started=time.monotonic()))

    for release_first in (False, True):
        store.release.clear()
        store.calls.clear()
        holder = run("c1")
        await asyncio.wait_for(store.called.wait(), 5)
        gone, kept = run("c2"), run("c3")
        await _until_waiting(the_gate, 2)
        if release_first:
            store.release.set()
            gone.cancel()
        else:
            gone.cancel()
            await asyncio.sleep(0.01)
            assert the_gate.waiting == 1
            store.release.set()
        for task in (holder, kept):
            assert orjson.loads((await task).body)["approved"] is True
        with pytest.raises(asyncio.CancelledError):
            await gone
        assert ("authorize", "c2") not in store.calls
        assert (the_gate.in_flight, the_gate.waiting) == (0, 0)


def test_gate_limits_refuse_nonsense() -> None:
    """A gate needs a slot, and neither a negative queue nor a negative wait means anything."""
    assert gate.Limits(1, 1, 1, queue_max=0, queue_wait_seconds=0).queue_max == 0
    bad: list[Callable[[], gate.Limits]] = [
        lambda: gate.Limits(1, 0, 1),
        lambda: gate.Limits(1, 1, 1, queue_max=-1),
        lambda: gate.Limits(1, 1, 1, queue_wait_seconds=-0.1),
    ]
    for make in bad:
        with pytest.raises(ValueError, match="in_flight_max >= 1"):
            make()


async def test_a_late_store_is_declined_issuer_unavailable_then_settled(tmp_path: Path) -> None:
    """Past the deadline the answer is IssuerUnavailable within budget, and settle runs."""
    store = FakeStore()
    store.block = True
    application, the_gate = make_app(tmp_path, store, deadline_seconds=0.2)
    started = time.monotonic()
    response = await post(application, "/v1/authorizations", AUTH)
    elapsed = time.monotonic() - started
    assert response.json()["reason"] == "IssuerUnavailable"
    assert response.json()["approved"] is False
    assert elapsed < 0.2 + 0.5
    assert await the_gate.drain(5) == 0
    assert store.settled == ["auth-1"]
    # The settle learns how long ago the attempt arrived (issue 16: an answer committed before
    # then is an earlier attempt's and stands): at least the deadline, well under the timeout.
    assert len(store.ages) == 1
    assert 0.2 <= store.ages[0] < 5
    assert the_gate.in_flight == 0


async def test_a_late_follow_up_is_settled_and_a_late_read_is_not(tmp_path: Path) -> None:
    """A capture past its deadline is declined IssuerUnavailable and settled by its own id;
    a late GET is 503 and not settled (its id is an authorization's, which settling would
    release)."""
    store = FakeStore()
    store.block = True
    application, the_gate = make_app(tmp_path, store, deadline_seconds=0.1)
    capture = await post(
        application, "/v1/authorizations/auth-1/captures", {"id": "cap-1", "amount": 5}
    )
    assert (capture.status_code, capture.json()["reason"]) == (200, "IssuerUnavailable")
    async with client(application) as c:
        read = await c.get("/v1/authorizations/auth-1", headers=signed(b""))
    assert read.status_code == 503
    assert await the_gate.drain(5) == 0
    assert store.settled == ["cap-1"]


async def test_probes_answer(tmp_path: Path) -> None:
    """/healthz and /readyz answer without a signature; /metrics serves the registry."""
    application, _ = make_app(tmp_path, FakeStore())
    async with client(application) as c:
        assert (await c.get("/healthz")).status_code == 200
        assert (await c.get("/readyz")).status_code == 200
        assert "fintech_gateway_requests_total" in (await c.get("/metrics")).text


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        ("POST", "/v1/authorizations", ("authorize", None)),
        ("POST", "/v1/authorizations/a-1/increments", ("increment", "a-1")),
        ("POST", "/v1/authorizations/a-1/captures", ("capture", "a-1")),
        ("POST", "/v1/authorizations/a-1/void", ("void", "a-1")),
        ("GET", "/v1/authorizations/a-1", ("get", "a-1")),
        ("GET", "/v1/authorizations", None),
        ("POST", "/v1/authorizations/", None),
        ("POST", "/v1/authorizations/a-1", None),
        ("GET", "/v1/authorizations/a-1/void", None),
        ("POST", "/v1/authorizations//void", None),
        ("POST", "/v1/authorizations/a-1/refunds", None),
        ("POST", "/v1/authorizations/a-1/void/x", None),
        ("POST", "/v1/authorizationsX", None),
        ("GET", "/openapi.json", None),
    ],
)
def test_the_dispatcher_takes_exactly_the_authorization_routes(
    method: str, path: str, expected: tuple[str, str | None] | None
) -> None:
    """What the dispatcher answers itself; everything else is FastAPI's (404, 405, docs)."""
    found = app.route(method, path)
    assert (None if found is None else (found[0].name, found[1])) == expected


def _exchanges() -> list[tuple[str, str, bytes, dict[str, str] | None]]:
    """Requests of every outcome the gateway gives by itself or passes on from the store."""
    auth = json.dumps(AUTH).encode()
    capture = json.dumps({"id": "cap-1", "amount": 5, "final": True}).encode()
    bad = json.dumps({**AUTH, "amount": 0, "merchant": {"mcc": "58"}}).encode()
    pan_body = json.dumps({**AUTH, "card": VISA_TEST_PAN}).encode()
    big = json.dumps({**AUTH, "pad": "x" * 9000}).encode()
    return [
        ("POST", "/v1/authorizations", auth, None),
        ("POST", "/v1/authorizations", auth, {"content-type": "application/json"}),
        ("POST", "/v1/authorizations", auth, signed(auth, stamp=1)),
        ("POST", "/v1/authorizations", bad, None),
        ("POST", "/v1/authorizations", b"{not json", None),
        ("POST", "/v1/authorizations", pan_body, None),
        ("POST", "/v1/authorizations", big, None),
        ("POST", "/v1/authorizations/auth-1/captures", capture, None),
        ("POST", "/v1/authorizations/auth-1/increments", b'{"id": "i-1", "amount": 3}', None),
        ("POST", "/v1/authorizations/auth-1/void", b'{"id": "v-1"}', None),
        ("POST", "/v1/authorizations/bad id!/void", b'{"id": "v-1"}', None),
        ("GET", "/v1/authorizations/auth-1", b"", None),
        ("GET", "/v1/authorizations", b"", None),
        ("POST", "/v1/authorizations/auth-1/refunds", b"{}", None),
    ]


async def test_the_dispatcher_answers_as_the_fastapi_routes_do(tmp_path: Path) -> None:
    """Every request above gets the same status, body and headers (but the date) from the
    dispatcher as from FastAPI's own routing of the same routes."""
    results = []
    for dispatcher in (True, False):
        application, _ = make_app(tmp_path, FakeStore(), dispatcher=dispatcher)
        seen = []
        async with client(application) as c:
            for method, path, body, headers in _exchanges():
                response = await c.request(
                    method, path, content=body, headers=headers or signed(body)
                )
                kept = sorted((k, v) for k, v in response.headers.items() if k != "date")
                seen.append((response.status_code, response.content, kept))
        results.append(seen)
    assert results[0] == results[1]
    assert {status for status, _, _ in results[0]} >= {200, 401, 404, 405, 413, 422}


def test_settings_refuse_bad_values_naming_the_variable() -> None:
    """Every bound is checked at start, and the message names the environment variable."""
    base = {"DATABASE_URL": "postgresql://x", "FINTECH_GATEWAY_SIGNING_SECRET_FILE": "/s"}
    assert settings.load(base).gateway.deadline_ms == 1500
    with pytest.raises(settings.GatewaySettingsError, match="FINTECH_GATEWAY_DEADLINE_MS"):
        settings.load({**base, "FINTECH_GATEWAY_DEADLINE_MS": "0"})
    defaults = settings.load(base).gateway
    assert (defaults.in_flight_max, defaults.queue_max, defaults.queue_wait_seconds) == (
        64,
        1024,
        1,
    )
    short = settings.load({**base, "FINTECH_GATEWAY_DEADLINE_MS": "300"}).gateway
    assert short.queue_wait_seconds == 0.2  # two thirds of any deadline by default
    assert (
        settings.load({**base, "FINTECH_GATEWAY_QUEUE_WAIT_MS": "0"}).gateway.queue_wait_seconds
        == 0
    )
    assert settings.load({**base, "FINTECH_GATEWAY_QUEUE_MAX": "0"}).gateway.queue_max == 0
    for name, value in (("QUEUE_MAX", "-1"), ("QUEUE_MAX", "100001"), ("QUEUE_WAIT_MS", "-1")):
        with pytest.raises(settings.GatewaySettingsError, match=f"FINTECH_GATEWAY_{name}"):
            settings.load({**base, f"FINTECH_GATEWAY_{name}": value})
    with pytest.raises(
        settings.GatewaySettingsError,
        match="FINTECH_GATEWAY_QUEUE_WAIT_MS must be less than FINTECH_GATEWAY_DEADLINE_MS",
    ):
        settings.load({**base, "FINTECH_GATEWAY_QUEUE_WAIT_MS": "1500"})
    assert settings.load({**base, "FINTECH_GATEWAY_WORKERS": "4"}).gateway.workers == 4
    for workers in ("0", "33", "two"):
        with pytest.raises(settings.GatewaySettingsError, match="FINTECH_GATEWAY_WORKERS"):
            settings.load({**base, "FINTECH_GATEWAY_WORKERS": workers})
    tls = {"FINTECH_GATEWAY_TLS_CERT_FILE": "/c", "FINTECH_GATEWAY_TLS_KEY_FILE": "/k"}
    assert settings.load({**base, **tls, "FINTECH_GATEWAY_TLS_CLIENT_CA_FILE": "/ca"})
    with pytest.raises(settings.GatewaySettingsError, match="FINTECH_GATEWAY_TLS_KEY_FILE"):
        settings.load({**base, "FINTECH_GATEWAY_TLS_CERT_FILE": "/c"})
    with pytest.raises(settings.GatewaySettingsError, match="FINTECH_GATEWAY_TLS_CLIENT_CA_FILE"):
        settings.load({**base, "FINTECH_GATEWAY_TLS_CLIENT_CA_FILE": "/ca"})
    with pytest.raises(settings.GatewaySettingsError, match="FINTECH_GATEWAY_SIGNING_SECRET_FILE"):
        settings.load({"DATABASE_URL": "postgresql://x"})
    with pytest.raises(settings.GatewaySettingsError, match="FINTECH_GATEWAY_DB_POOL_MIN_SIZE"):
        settings.load(
            {
                **base,
                "FINTECH_GATEWAY_DB_POOL_MIN_SIZE": "9",
                "FINTECH_GATEWAY_DB_POOL_MAX_SIZE": "2",
            }
        )


def test_unreadable_tls_files_stop_the_start_naming_the_variable(tmp_path: Path) -> None:
    """A certificate, key or client CA that cannot be loaded is refused before serving."""
    base = {"DATABASE_URL": "postgresql://x", "FINTECH_GATEWAY_SIGNING_SECRET_FILE": "/s"}
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate")
    config = settings.load(
        {
            **base,
            "FINTECH_GATEWAY_TLS_CERT_FILE": str(garbage),
            "FINTECH_GATEWAY_TLS_KEY_FILE": str(garbage),
        }
    )
    with pytest.raises(ValueError, match="FINTECH_GATEWAY_TLS_CERT_FILE"):
        server.check_tls(config)
    assert server.tls_options(settings.load(base)) == {}


def test_a_taken_port_or_unknown_host_stops_the_start_naming_the_variables() -> None:
    """A gateway port another process listens on stopped the gateway only in uvicorn, with
    its own error and exit status 3 after the line "gateway listening"; it is refused before
    serving, naming FINTECH_GATEWAY_HOST / FINTECH_GATEWAY_PORT, as a taken metrics or probe
    port names its variable. A free port passes."""
    base = {"DATABASE_URL": "postgresql://x", "FINTECH_GATEWAY_SIGNING_SECRET_FILE": "/s"}
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        config = settings.load({**base, "FINTECH_GATEWAY_PORT": str(port)})
        with pytest.raises(ValueError, match=r"FINTECH_GATEWAY_PORT: cannot listen on .*in use"):
            server.check_listen(config)
    unknown = settings.load({**base, "FINTECH_GATEWAY_HOST": "no-such-host.invalid"})
    with pytest.raises(ValueError, match="FINTECH_GATEWAY_HOST"):
        server.check_listen(unknown)
    server.check_listen(settings.load({**base, "FINTECH_GATEWAY_PORT": "0"}))


def test_secret_files_refuse_garbage_and_too_many_secrets(tmp_path: Path) -> None:
    """A secret file must hold 1 to 4 whsec_ secrets; anything else is refused."""
    with pytest.raises(signing.SigningError):
        trust.parse_secrets("not-base64!")
    with pytest.raises(signing.SigningError):
        trust.parse_secrets(" ".join([SECRET] * 5))
    assert trust.parse_secrets(SECRET) == (KEY,)


@pytest.mark.parametrize("text", ["whsec_abc", " ".join([SECRET] * 5)])
def test_an_unusable_secret_file_is_refused_naming_its_variable_and_path(
    tmp_path: Path, text: str
) -> None:
    """What stops the gateway at start (and `gateway sign`) names the setting to fix, as every
    bad setting does, and never shows the secret."""
    path = tmp_path / "secret"
    path.write_text(text + "\n")
    with pytest.raises(signing.SigningError) as refused:
        trust.SecretSource(str(path), 0).keys()
    message = str(refused.value)
    assert message.startswith(f"FINTECH_GATEWAY_SIGNING_SECRET_FILE: {path}: ")
    assert "abc" not in message.removeprefix(f"FINTECH_GATEWAY_SIGNING_SECRET_FILE: {path}: ")


def test_a_secret_file_that_turns_unusable_keeps_the_old_keys_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A rotation that leaves the file unusable (five secrets, a typo) does not lock the
    processor out, but it is logged, and the file is read again every refresh, not at every
    request."""
    now = [0.0]
    path = tmp_path / "secret"
    path.write_text(SECRET + "\n")
    source = trust.SecretSource(str(path), 10, clock=lambda: now[0])
    assert source.keys() == (KEY,)
    path.write_text(" ".join([SECRET] * 5))
    now[0] = 11.0
    with caplog.at_level("WARNING", logger="fintech_operator.gateway.trust"):
        assert source.keys() == (KEY,)
    warnings = [r for r in caplog.records if r.name == "fintech_operator.gateway.trust"]
    assert [r.getMessage() for r in warnings] == [
        "the signing secret file cannot be used; the secrets read before are still accepted"
    ]
    assert "1 to 4 secrets" in warnings[0].__dict__["error"]
    other = signing.format_secret(b"k" * 32)
    path.write_text(other + "\n")
    now[0] = 15.0  # within the refresh interval of the failed read: not read again yet
    assert source.keys() == (KEY,)
    now[0] = 22.0
    assert source.keys() == (b"k" * 32,)


async def test_the_served_openapi_is_the_committed_one(tmp_path: Path) -> None:
    """/openapi.json is exactly docs/api/openapi.json (make lint checks the file), and /docs
    serves the interactive page."""
    application, _ = make_app(tmp_path, FakeStore())
    async with client(application) as c:
        served = (await c.get("/openapi.json")).json()
        docs_page = await c.get("/docs")
    assert served == json.loads(COMMITTED_OPENAPI.read_text())
    assert docs_page.status_code == 200
    assert "/v1/authorizations/{authorization_id}/captures" in served["paths"]


def test_sign_prints_headers_the_gateway_accepts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`fintech-operator gateway sign BODY` prints three header lines that verify against the
    same secret file, and refuses a missing secret file with exit status 2."""
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET + "\n")
    body = json.dumps(AUTH)
    assert cli.main(["gateway", "sign", "--secret-file", str(secret_file), body]) == 0
    lines = capsys.readouterr().out.splitlines()
    headers = dict(line.split(": ", 1) for line in lines)
    assert sorted(headers) == ["webhook-id", "webhook-signature", "webhook-timestamp"]
    assert trust.verify((KEY,), headers, body.encode(), int(time.time()), 300)
    missing = str(tmp_path / "nope")
    assert cli.main(["gateway", "sign", "--secret-file", missing, body]) == 2


def test_the_gateway_shares_the_other_processes_groups_and_their_rules() -> None:
    """One loader for every process: the variables the gateway shares with the operator land in
    the same groups and are checked by the same rules, naming the same variable."""
    base = {"DATABASE_URL": "postgresql://x", "FINTECH_GATEWAY_SIGNING_SECRET_FILE": "/s"}
    shared = {"FINTECH_LOG_LEVEL": "debug", "FINTECH_METRICS_PORT": "9102",
              "FINTECH_HEALTH_HOST": "::1"}  # fmt: skip
    loaded = settings.load({**base, **shared})
    assert (loaded.database.url, loaded.logs.level) == ("postgresql://x", "DEBUG")
    assert (loaded.metrics.port, loaded.health.host) == (9102, "::1")
    for env, value in (("FINTECH_LOG_LEVEL", "loud"), ("FINTECH_METRICS_PORT", "70000")):
        with pytest.raises(settings.GatewaySettingsError, match=env):
            settings.load({**base, env: value})
    with pytest.raises(settings.GatewaySettingsError, match="DATABASE_URL"):
        settings.load({"FINTECH_GATEWAY_SIGNING_SECRET_FILE": "/s"})
