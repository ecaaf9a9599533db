"""The gateway's HTTP surface: FastAPI routes that check, decode, call the store, answer.

Each request goes through the same steps, cheapest first, and stops at the first refusal:
413 (declared or streamed body over the limit, read no further), 401 (Standard Webhooks
signature missing, stale or wrong), 422 (a card number anywhere; then the fields, named),
then the in-flight limit and the deadline (:mod:`fintech_operator.gateway.gate`), then the
store. Bodies are read raw, not by FastAPI, because the signature covers the exact bytes and
must be checked before a single field is believed; the OpenAPI document still shows every
request model (see :func:`openapi_schema`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Final

import fastapi
import orjson
import prometheus_client
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


def create_app(deps: Deps, lifespan: Lifespan | None = None) -> fastapi.FastAPI:
    """The gateway application over ``deps``."""
    app = fastapi.FastAPI(
        title=TITLE,
        version=VERSION,
        description=(
            "Real-time card authorizations for the card processor: holds, increments, "
            "captures and voids, answered within a deadline. Every request is signed "
            "(Standard Webhooks); see docs/gateway.md."
        ),
        lifespan=lifespan,
    )
    _add_routes(app, deps)
    app.openapi = lambda: openapi_schema(app)  # type: ignore[method-assign]
    return app


def _add_routes(app: fastapi.FastAPI, deps: Deps) -> None:
    store = deps.gate.store

    @app.post("/v1/authorizations", **_doc("AuthorizeRequest", "Authorize a purchase"))
    async def authorize(request: fastapi.Request) -> Response:
        async def work(conn: gate.Connection, req: Any) -> contract.Answer:
            return await store.authorize(conn, req)

        return await _handle(deps, request, "authorize", contract.AuthorizeRequest, work)

    @app.post(
        "/v1/authorizations/{authorization_id}/increments",
        **_doc("IncrementRequest", "Raise an authorization's hold"),
    )
    async def increment(request: fastapi.Request, authorization_id: str) -> Response:
        async def work(conn: gate.Connection, req: Any) -> contract.Answer:
            return await store.increment(conn, authorization_id, req)

        return await _handle(
            deps, request, "increment", contract.IncrementRequest, work, authorization_id
        )

    @app.post(
        "/v1/authorizations/{authorization_id}/captures",
        **_doc("CaptureRequest", "Capture (clear) part or all of a hold"),
    )
    async def capture(request: fastapi.Request, authorization_id: str) -> Response:
        async def work(conn: gate.Connection, req: Any) -> contract.Answer:
            return await store.capture(conn, authorization_id, req)

        return await _handle(
            deps, request, "capture", contract.CaptureRequest, work, authorization_id
        )

    @app.post(
        "/v1/authorizations/{authorization_id}/void",
        **_doc("VoidRequest", "Release what is left of a hold"),
    )
    async def void(request: fastapi.Request, authorization_id: str) -> Response:
        async def work(conn: gate.Connection, req: Any) -> contract.Answer:
            return await store.void(conn, authorization_id, req)

        return await _handle(deps, request, "void", contract.VoidRequest, work, authorization_id)

    @app.get("/v1/authorizations/{authorization_id}", **_doc(None, "Read an authorization"))
    async def get(request: fastapi.Request, authorization_id: str) -> Response:
        async def work(conn: gate.Connection, _req: Any) -> contract.Answer:
            return await store.get(conn, authorization_id)

        return await _handle(deps, request, "get", None, work, authorization_id)

    _add_probes(app, deps)


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
            body = prometheus_client.generate_latest(metrics.REGISTRY)
            return Response(body, media_type=prometheus_client.CONTENT_TYPE_LATEST)


async def _handle(
    deps: Deps,
    request: fastapi.Request,
    endpoint: str,
    model: type[pydantic.BaseModel] | None,
    work: Callable[[gate.Connection, Any], Awaitable[contract.Answer]],
    path_id: str | None = None,
) -> Response:
    started = deps.clock()
    try:
        req = await _checked_request(deps, request, model, path_id)
    except trust.Refused as refused:
        metrics.gateway_refused(refused.kind)
        log.info("refused", extra={"endpoint": endpoint, "why": refused.kind})
        response = _refusal_response(refused)
    else:
        request_id = getattr(req, "id", None) or path_id or ""

        async def bound(conn: gate.Connection) -> contract.Answer:
            return await work(conn, req)

        answer = await deps.gate.run(
            request_id,
            bound,
            started=started,
            settle=model is not None,
        )
        _count_reason(endpoint, answer)
        response = _answer_response(answer)
    metrics.gateway_answered(endpoint, response.status_code, deps.clock() - started)
    return response


async def _checked_request(
    deps: Deps,
    request: fastapi.Request,
    model: type[pydantic.BaseModel] | None,
    path_id: str | None,
) -> pydantic.BaseModel | None:
    """The decoded request, or :class:`trust.Refused` with the first reason to refuse it."""
    body = await _read_body(request, deps.limits.body_bytes_max)
    try:
        keys = deps.secrets.keys()
    except Exception:
        # Without a readable secret nothing can be verified: refuse, and say so in the log.
        log.exception("the signing secret cannot be read; refusing every request")
        raise trust.Refused(401, "bad_signature", "the gateway cannot verify signatures") from None
    trust.verify(
        keys,
        request.headers,
        body,
        int(deps.wall_clock()),
        deps.limits.signature_tolerance_seconds,
    )
    trust.refuse_card_numbers(
        body.decode("utf-8", errors="replace"),
        path_id or "",
        request.headers.get("webhook-id", ""),
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


async def _read_body(request: fastapi.Request, body_bytes_max: int) -> bytes:
    """The body, refused (413) as soon as it is known to be over the limit."""
    trust.check_content_length(request.headers.get("content-length"), body_bytes_max)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > body_bytes_max:
            raise trust.Refused(413, "too_large", f"the body is larger than {body_bytes_max} bytes")
    return bytes(body)


def _refusal_response(refused: trust.Refused) -> Response:
    body = answers.refusal(refused.kind, refused.message, refused.fields)
    headers = {"Connection": "close"} if refused.status_code == 413 else None
    return Response(body, refused.status_code, media_type=JSON, headers=headers)


def _answer_response(answer: contract.Answer) -> Response:
    headers = {answers.REPLAYED_HEADER: "true"} if answer.replayed else None
    return Response(answer.body, answer.status_code, media_type=JSON, headers=headers)


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
