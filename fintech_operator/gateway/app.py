"""The gateway's HTTP surface: check, decode, call the store, answer.

Each request goes through the same steps, cheapest first, and stops at the first refusal:
413 (declared or streamed body over the limit, read no further), 401 (Standard Webhooks
signature missing, stale or wrong), 422 (a card number anywhere; then the fields, named),
then the in-flight limit and the deadline (:mod:`fintech_operator.gateway.gate`), then the
store. Bodies are read raw, not by FastAPI, because the signature covers the exact bytes and
must be checked before a single field is believed; the OpenAPI document still shows every
request model (see :func:`openapi_schema`).

The five authorization routes are answered by a plain ASGI dispatcher placed in front of
FastAPI (:class:`GatewayAPI`): FastAPI's middleware stack, request objects, routing and
dependency solving cost about a quarter of the gateway's CPU per request and add nothing to
routes that read their body raw (bench/RESULTS.md). FastAPI still owns everything else
(``/docs``, ``/openapi.json``, the probes, ``/metrics``) and still declares the five routes,
which is what the OpenAPI document is made from; its handlers of those routes answer with the
same code (:func:`reply`), so both paths give the same bytes (tests/unit/test_gateway.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, MutableMapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Final

import fastapi
import orjson
import pydantic
from fastapi.openapi.utils import get_openapi
from starlette.responses import Response

from fintech_operator.authorizations import contract
from fintech_operator.gateway import answers, gate, trust
from fintech_operator.observability import metrics

log = logging.getLogger(__name__)

TITLE: Final = "fintech-operator authorization gateway"
VERSION: Final = "v1"
JSON: Final = "application/json"
_REQUEST_MODELS: Final[tuple[type[pydantic.BaseModel], ...]] = (
    contract.AuthorizeRequest,
    contract.IncrementRequest,
    contract.CaptureRequest,
    contract.VoidRequest,
)
_PATH_ID: Final = pydantic.TypeAdapter(contract.RequestId)


@dataclass(frozen=True)
class Limits:
    body_bytes_max: int
    signature_tolerance_seconds: int


@dataclass(frozen=True)
class Deps:
    """What the routes need; the server builds it from settings, tests from fakes."""

    gate: gate.Gate
    secrets: trust.SecretSource
    limits: Limits
    # True when the database answers; /readyz asks it.
    ready: Callable[[], Awaitable[bool]]
    serve_metrics: bool = True
    wall_clock: Callable[[], float] = time.time
    clock: Callable[[], float] = time.monotonic


Lifespan = Callable[[fastapi.FastAPI], AbstractAsyncContextManager[None]]
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]
StoreCall = Callable[[contract.Store, gate.Connection, str, Any], Awaitable[contract.Answer]]


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One authorization route: its metric name, request model (None: no body) and store call."""

    name: str
    model: type[pydantic.BaseModel] | None
    call: StoreCall


async def _authorize(store: contract.Store, conn: gate.Connection, _id: str, req: Any) -> Any:
    return await store.authorize(conn, req)


async def _increment(store: contract.Store, conn: gate.Connection, aid: str, req: Any) -> Any:
    return await store.increment(conn, aid, req)


async def _capture(store: contract.Store, conn: gate.Connection, aid: str, req: Any) -> Any:
    return await store.capture(conn, aid, req)


async def _void(store: contract.Store, conn: gate.Connection, aid: str, req: Any) -> Any:
    return await store.void(conn, aid, req)


async def _get(store: contract.Store, conn: gate.Connection, aid: str, _req: Any) -> Any:
    return await store.get(conn, aid)


AUTHORIZE: Final = Endpoint("authorize", contract.AuthorizeRequest, _authorize)
GET: Final = Endpoint("get", None, _get)
# The last path segment of a follow-up, and what it does.
FOLLOW_UPS: Final[Mapping[str, Endpoint]] = {
    "increments": Endpoint("increment", contract.IncrementRequest, _increment),
    "captures": Endpoint("capture", contract.CaptureRequest, _capture),
    "void": Endpoint("void", contract.VoidRequest, _void),
}
_PREFIX: Final = "/v1/authorizations"


def route(method: str, path: str) -> tuple[Endpoint, str | None] | None:
    """The authorization route of ``method`` and ``path`` with its ``{authorization_id}``, or
    None for anything else. Matches exactly what the FastAPI routes below match (a path
    parameter is one non-empty segment), so every other request gets FastAPI's own answer."""
    if path == _PREFIX:
        return (AUTHORIZE, None) if method == "POST" else None
    if not path.startswith(_PREFIX + "/"):
        return None
    parts = path[len(_PREFIX) + 1 :].split("/")
    if not parts[0]:
        return None
    if len(parts) == 1:
        return (GET, parts[0]) if method == "GET" else None
    endpoint = FOLLOW_UPS.get(parts[1]) if len(parts) == 2 and method == "POST" else None
    return None if endpoint is None else (endpoint, parts[0])


class GatewayAPI(fastapi.FastAPI):
    """FastAPI, with the authorization routes answered before its middleware and routing."""

    deps: Deps | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.deps is not None and scope["type"] == "http":
            found = route(scope["method"], scope["path"])
            if found is not None:
                await _serve_asgi(self.deps, found[0], found[1], scope, receive, send)
                return
        await super().__call__(scope, receive, send)


def create_app(
    deps: Deps, lifespan: Lifespan | None = None, *, dispatcher: bool = True
) -> fastapi.FastAPI:
    """The gateway application over ``deps``; ``dispatcher=False`` leaves the authorization
    routes to FastAPI's routing (the tests compare the two)."""
    app = GatewayAPI(
        title=TITLE,
        version=VERSION,
        description=(
            "Real-time card authorizations for the card processor: holds, increments, "
            "captures and voids, answered within a deadline. Every request is signed "
            "(Standard Webhooks); see docs/gateway.md."
        ),
        lifespan=lifespan,
    )
    app.deps = deps if dispatcher else None
    _add_routes(app, deps)
    app.openapi = lambda: openapi_schema(app)  # type: ignore[method-assign]
    return app


def _add_routes(app: fastapi.FastAPI, deps: Deps) -> None:
    @app.post(_PREFIX, **_doc("AuthorizeRequest", "Authorize a purchase"))
    async def authorize(request: fastapi.Request) -> Response:
        return await _serve_starlette(deps, AUTHORIZE, None, request)

    for segment, model, summary in (
        ("increments", "IncrementRequest", "Raise an authorization's hold"),
        ("captures", "CaptureRequest", "Capture (clear) part or all of a hold"),
        ("void", "VoidRequest", "Release what is left of a hold"),
    ):
        _add_follow_up(app, deps, FOLLOW_UPS[segment], segment, _doc(model, summary))

    @app.get(_PREFIX + "/{authorization_id}", **_doc(None, "Read an authorization"))
    async def get(request: fastapi.Request, authorization_id: str) -> Response:
        return await _serve_starlette(deps, GET, authorization_id, request)

    _add_probes(app, deps)


def _add_follow_up(
    app: fastapi.FastAPI, deps: Deps, endpoint: Endpoint, segment: str, doc: dict[str, Any]
) -> None:
    async def follow_up(request: fastapi.Request, authorization_id: str) -> Response:
        return await _serve_starlette(deps, endpoint, authorization_id, request)

    follow_up.__name__ = endpoint.name  # the operationId FastAPI derives, as before
    app.post(_PREFIX + "/{authorization_id}/" + segment, **doc)(follow_up)


def _add_probes(app: fastapi.FastAPI, deps: Deps) -> None:
    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> Response:
        return Response(b'{"status":"ok"}', media_type=JSON)

    @app.get("/readyz", include_in_schema=False)
    async def readyz() -> Response:
        if await deps.ready():
            return Response(b'{"status":"ready"}', media_type=JSON)
        return Response(b'{"status":"database unavailable"}', 503, media_type=JSON)

    if deps.serve_metrics:

        @app.get("/metrics", include_in_schema=False)
        async def metrics_endpoint() -> Response:
            body, content_type = metrics.exposition()
            return Response(body, media_type=content_type)


class _Disconnected(Exception):
    """The client went away before its body arrived: nothing to answer."""


async def _serve_asgi(
    deps: Deps,
    endpoint: Endpoint,
    path_id: str | None,
    scope: Scope,
    receive: Receive,
    send: Send,
) -> None:
    """One authorization request as plain ASGI messages."""
    headers: dict[str, str] = {}
    for name, value in scope["headers"]:
        # The first of repeated headers, as Starlette's Headers.get gives it.
        headers.setdefault(name.decode("latin-1"), value.decode("latin-1"))
    try:
        status, body, extra = await reply(deps, endpoint, headers, _asgi_chunks(receive), path_id)
    except _Disconnected:
        return
    raw = [
        *extra,
        (b"content-length", str(len(body)).encode()),
        (b"content-type", b"application/json"),
    ]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


async def _asgi_chunks(receive: Receive) -> AsyncIterator[bytes]:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Disconnected
        yield message.get("body", b"")
        if not message.get("more_body", False):
            return


async def _serve_starlette(
    deps: Deps, endpoint: Endpoint, path_id: str | None, request: fastapi.Request
) -> Response:
    status, body, extra = await reply(deps, endpoint, request.headers, request.stream(), path_id)
    headers = {name.decode(): value.decode() for name, value in extra}
    return Response(body, status, media_type=JSON, headers=headers or None)


async def reply(
    deps: Deps,
    endpoint: Endpoint,
    headers: Mapping[str, str],
    chunks: AsyncIterator[bytes],
    path_id: str | None,
) -> tuple[int, bytes, Headers]:
    """Status, body and extra headers of one authorization request (both paths use this)."""
    started = deps.clock()
    try:
        body = await _read_body(chunks, headers.get("content-length"), deps.limits.body_bytes_max)
        req = _checked_request(deps, headers, body, endpoint.model, path_id)
    except trust.Refused as refused:
        metrics.gateway_refused(refused.kind)
        log.info("refused", extra={"endpoint": endpoint.name, "why": refused.kind})
        status, content = refused.status_code, _refusal_body(refused)
        extra: Headers = [(b"connection", b"close")] if status == 413 else []
    else:
        request_id = getattr(req, "id", None) or path_id or ""
        store, target = deps.gate.store, path_id or ""

        async def bound(conn: gate.Connection) -> contract.Answer:
            return await endpoint.call(store, conn, target, req)

        answer = await deps.gate.run(
            request_id, bound, started=started, settle=endpoint.model is not None
        )
        _count_reason(endpoint.name, answer)
        status, content = answer.status_code, answer.body
        extra = [(answers.REPLAYED_HEADER.lower().encode(), b"true")] if answer.replayed else []
    metrics.gateway_answered(endpoint.name, status, deps.clock() - started)
    return status, content, extra


def _checked_request(
    deps: Deps,
    headers: Mapping[str, str],
    body: bytes,
    model: type[pydantic.BaseModel] | None,
    path_id: str | None,
) -> pydantic.BaseModel | None:
    """The decoded request, or :class:`trust.Refused` with the first reason to refuse it."""
    try:
        keys = deps.secrets.keys()
    except Exception:
        # Without a readable secret nothing can be verified: refuse, and say so in the log.
        log.exception("the signing secret cannot be read; refusing every request")
        raise trust.Refused(401, "bad_signature", "the gateway cannot verify signatures") from None
    trust.verify(
        keys,
        headers,
        body,
        int(deps.wall_clock()),
        deps.limits.signature_tolerance_seconds,
    )
    trust.refuse_card_numbers(
        body.decode("utf-8", errors="replace"),
        path_id or "",
        headers.get("webhook-id", ""),
    )
    try:
        if path_id is not None:
            _PATH_ID.validate_python(path_id)
    except pydantic.ValidationError:
        raise trust.Refused(
            422, "invalid", "authorization: not a valid id", ["authorization"]
        ) from None
    if model is None:
        return None
    try:
        return model.model_validate_json(body)
    except pydantic.ValidationError as exc:
        fields, message = answers.invalid_fields(exc)
        raise trust.Refused(422, "invalid", message, fields) from None


async def _read_body(
    chunks: AsyncIterator[bytes], content_length: str | None, body_bytes_max: int
) -> bytes:
    """The body, refused (413) as soon as it is known to be over the limit."""
    trust.check_content_length(content_length, body_bytes_max)
    body = bytearray()
    async for chunk in chunks:
        body += chunk
        if len(body) > body_bytes_max:
            raise trust.Refused(413, "too_large", f"the body is larger than {body_bytes_max} bytes")
    return bytes(body)


def _refusal_body(refused: trust.Refused) -> bytes:
    return answers.refusal(refused.kind, refused.message, refused.fields)


def _count_reason(endpoint: str, answer: contract.Answer) -> None:
    try:
        reason = orjson.loads(answer.body).get("reason")
    except (orjson.JSONDecodeError, AttributeError):
        reason = None
    if reason is not None:
        metrics.gateway_decision(endpoint, reason)


def _doc(model: str | None, summary: str) -> dict[str, Any]:
    """OpenAPI details of a route: its request body (read raw, so declared here), its answers."""
    responses: dict[int | str, dict[str, Any]] = {
        200: {"model": answers.AuthorizationAnswer, "description": "The answer."},
        401: {"model": answers.Refusal, "description": "Unsigned, stale or badly signed."},
        404: {"model": answers.Refusal, "description": "No such authorization."},
        409: {"model": answers.Refusal, "description": "Refused transition or id reused."},
        413: {"model": answers.Refusal, "description": "Body over the limit."},
        422: {"model": answers.Refusal, "description": "A field is invalid, or a card number."},
    }  # fmt: skip
    extra: dict[str, Any] = {}
    if model is not None:
        ref = {"$ref": f"#/components/schemas/{model}"}
        extra["requestBody"] = {"required": True, "content": {JSON: {"schema": ref}}}
    return {
        "summary": summary,
        "responses": responses,
        "openapi_extra": extra,
        "response_class": Response,
    }


def openapi_schema(app: fastapi.FastAPI) -> dict[str, Any]:
    """The OpenAPI document, with the request models the routes read raw."""
    if app.openapi_schema is not None:
        return app.openapi_schema
    schema = get_openapi(
        title=app.title, version=app.version, description=app.description, routes=app.routes
    )
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for model in _REQUEST_MODELS:
        found = model.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(found.pop("$defs", {}))
        components[model.__name__] = found
    schema["components"]["securitySchemes"] = {
        "StandardWebhooks": {
            "type": "apiKey",
            "in": "header",
            "name": "webhook-signature",
            "description": "Standard Webhooks HMAC-SHA256 over webhook-id.webhook-timestamp."
            "body, with webhook-id and webhook-timestamp headers (docs/gateway.md).",
        }
    }
    schema["security"] = [{"StandardWebhooks": []}]
    app.openapi_schema = schema
    return schema
