"""Source readers: the records of a run's ``spec.source``, streamed (blocking I/O).

These run in the run's worker thread, next to the database work, so they use blocking clients:
the Kubernetes client for ConfigMaps and Secrets, httpx for URLs. Every failure a user can fix
becomes a :class:`model.SourceError` with a reason and a message naming the object, key or URL;
anything else (the API server is down) propagates as a transient error to be retried.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import time
from collections.abc import Callable, Iterator
from typing import Any, Final

import httpx
import kubernetes
from kubernetes.client.exceptions import ApiException

from fintech_operator import api, kube
from fintech_operator.api import reconciliationrun as run_api
from fintech_operator.recon import model, parse

KUBE_TIMEOUT_SECONDS: Final = 30
HTTP_CHUNK_CHARS: Final = 65_536
_HTTP_BACKOFF_SECONDS: Final = (1.0, 2.0, 4.0)
HTTP_REDIRECTS_MAX: Final = 5


@dataclasses.dataclass(frozen=True)
class Limits:
    records_max: int = 10_000_000

    def __post_init__(self) -> None:
        if not 1 <= self.records_max <= 1_000_000_000:
            raise ValueError("records_max must be in 1..1000000000")


def kube_client() -> kubernetes.client.ApiClient:
    """The process's client for the API server (:func:`fintech_operator.kube.api_client`)."""
    return kube.api_client()


def opener(
    spec: api.ReconciliationRunSpec, namespace: str, limits: Limits
) -> Callable[[], Iterator[model.Record]] | model.TextSource | None:
    """What the worker loads: a CSV file as a :class:`model.TextSource` (loaded in bulk by
    PostgreSQL), other sources as a callable yielding their records (called in the worker)."""
    source = spec.source
    if source is None:
        return None
    fmt = spec.format.value
    if source.inline is not None:
        inline = source.inline
        return lambda: _inline(inline)

    def chunks() -> Iterator[str]:
        if source.config_map_key_ref is not None:
            yield _config_map_text(namespace, source.config_map_key_ref)
        elif source.secret_key_ref is not None:
            yield _secret_text(namespace, source.secret_key_ref)
        elif source.http is not None:
            yield from _http_chunks(namespace, source.http)
        else:
            raise model.SourceError("InvalidSpec", "source names no records")

    if fmt == "csv":
        return model.TextSource(fmt, chunks, limits.records_max)
    return lambda: parse.parse(fmt, chunks(), limits.records_max)


def _inline(items: list[run_api.SettlementRecord]) -> Iterator[model.Record]:
    """The inline records, numbered from 1; a reference is held to the files' rule (not all
    blanks, no control character), which the schema's length bound alone does not enforce."""
    for index, item in enumerate(items, start=1):
        yield model.Record(
            line_no=index,
            reference=parse.parse_reference(item.reference, index),
            amount_minor=item.amount_minor,
            currency=item.currency,
            occurred_at=item.occurred_at,
        )


def _read(kind: str, namespace: str, name: str) -> Any:
    core = kubernetes.client.CoreV1Api(kube_client())
    read = core.read_namespaced_config_map if kind == "ConfigMap" else core.read_namespaced_secret
    try:
        return read(name, namespace, _request_timeout=KUBE_TIMEOUT_SECONDS)
    except ApiException as exc:
        if exc.status == 404:
            raise model.SourceError(
                "SourceNotFound", f"{kind} {namespace}/{name} does not exist"
            ) from None
        if exc.status == 403:
            raise model.SourceError(
                "SourceNotFound", f"{kind} {namespace}/{name} cannot be read: forbidden"
            ) from None
        raise


def _decode(raw: bytes, where: str) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise model.SourceError("SourceMalformed", f"{where} is not UTF-8 text: {exc}") from None


def _b64(value: str, where: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except binascii.Error as exc:
        raise model.SourceError("SourceMalformed", f"{where} is not base64: {exc}") from None


def _config_map_text(namespace: str, ref: run_api.KeyReference) -> str:
    found = _read("ConfigMap", namespace, ref.name)
    where = f"ConfigMap {namespace}/{ref.name} key {ref.key}"
    data = found.data or {}
    binary = found.binary_data or {}
    if ref.key in data:
        return str(data[ref.key])
    if ref.key in binary:
        return _decode(_b64(binary[ref.key], where), where)
    keys = ", ".join(sorted([*data, *binary])) or "none"
    raise model.SourceError(
        "SourceNotFound", f"ConfigMap {namespace}/{ref.name} has no key {ref.key} (keys: {keys})"
    )


def _secret_data(namespace: str, name: str, reason: str) -> dict[str, str]:
    try:
        found = _read("Secret", namespace, name)
    except model.SourceError as exc:
        raise model.SourceError(reason, exc.message) from None
    return dict(found.data or {})


def _secret_text(namespace: str, ref: run_api.KeyReference) -> str:
    data = _secret_data(namespace, ref.name, "SourceNotFound")
    where = f"Secret {namespace}/{ref.name} key {ref.key}"
    if ref.key not in data:
        keys = ", ".join(sorted(data)) or "none"
        raise model.SourceError(
            "SourceNotFound", f"Secret {namespace}/{ref.name} has no key {ref.key} (keys: {keys})"
        )
    return _decode(_b64(data[ref.key], where), where)


def _auth(namespace: str, source: run_api.HttpSource) -> httpx.Auth | dict[str, str] | None:
    """Credentials from the Secret: ``token`` (Bearer) or ``username`` + ``password`` (Basic)."""
    if source.credentials_secret_ref is None:
        return None
    name = source.credentials_secret_ref.name
    data = _secret_data(namespace, name, "CredentialsNotFound")
    where = f"Secret {namespace}/{name}"
    values = {key: _decode(_b64(value, where), where).strip() for key, value in data.items()}
    if "token" in values:
        return {"Authorization": f"Bearer {values['token']}"}
    if "username" in values and "password" in values:
        return httpx.BasicAuth(values["username"], values["password"])
    raise model.SourceError(
        "CredentialsNotFound",
        f"{where} needs key token, or keys username and password",
    )


def _http_chunks(namespace: str, source: run_api.HttpSource) -> Iterator[str]:
    """The body as text chunks; connection failures and 5xx are tried ``attempts`` times.

    Once data has started to flow a failure is final: records already loaded cannot be
    un-read, and the run's transaction rolls back anyway.
    """
    credentials = _auth(namespace, source)
    headers = credentials if isinstance(credentials, dict) else {}
    auth = credentials if isinstance(credentials, httpx.Auth) else None
    timeout = httpx.Timeout(source.timeout_seconds)
    last_error = ""
    with httpx.Client(
        timeout=timeout, follow_redirects=True, max_redirects=HTTP_REDIRECTS_MAX
    ) as client:
        for attempt in range(1, source.attempts + 1):
            try:
                with client.stream("GET", source.url, headers=headers, auth=auth) as response:
                    if response.status_code >= 500:
                        last_error = f"GET {source.url} answered {response.status_code}"
                    elif response.status_code >= 300:
                        # A 3xx still here had no Location to follow: its body is not the file.
                        raise model.SourceError("SourceUnreachable", _refusal(source.url, response))
                    else:
                        yield from _body(response, source.url)
                        return
            except httpx.InvalidURL as exc:
                # The schema's pattern lets through what httpx cannot parse (a port that is
                # not a number): final, since no retry makes it a URL.
                raise model.SourceError(
                    "SourceUnreachable", f"GET {source.url}: not a URL that can be fetched: {exc}"
                ) from None
            except httpx.TooManyRedirects:
                # Final, like a 4xx: asking again follows the same loop. Left to kopf, it was a
                # handler error retried every minute with the run shown Running for ever.
                raise model.SourceError(
                    "SourceUnreachable",
                    f"GET {source.url} was redirected more than {HTTP_REDIRECTS_MAX} times",
                ) from None
            except httpx.TransportError as exc:
                last_error = f"cannot reach {source.url}: {type(exc).__name__}: {exc}"
            if attempt < source.attempts:
                time.sleep(_HTTP_BACKOFF_SECONDS[min(attempt, len(_HTTP_BACKOFF_SECONDS)) - 1])
    raise model.SourceError("SourceUnreachable", f"{last_error} (after {source.attempts} attempts)")


def _refusal(url: str, response: httpx.Response) -> str:
    answer = f"GET {url} answered {response.status_code} {response.reason_phrase}"
    if response.status_code < 400:
        return f"{answer} with no Location to follow"
    return answer


def _body(response: httpx.Response, url: str) -> Iterator[str]:
    try:
        yield from response.iter_text(HTTP_CHUNK_CHARS)
    except (httpx.TransportError, httpx.DecodingError) as exc:
        # DecodingError: a Content-Encoding (gzip, ...) whose body does not decode.
        raise model.SourceError(
            "SourceUnreachable", f"reading {url} failed part way: {type(exc).__name__}: {exc}"
        ) from None
