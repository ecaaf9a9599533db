"""The card processor's tokenizer, over HTTP (httpx): the production :class:`Tokenizer`.

The processor holds the card number; the product asks it for a card and keeps only what it
returns: a token and the last four digits (DESIGN.md invariant 7). One request per issuance::

    POST <FINTECH_TOKENIZER_URL>
    Authorization: Bearer <contents of FINTECH_TOKENIZER_TOKEN_FILE>
    Idempotency-Key: card-token-<card uid>
    {"cardRef": "<namespace>/<name>", "idempotencyKey": "card-token-<card uid>"}

    200/201 {"token": "tok_...", "last4": "4242", ...}

The idempotency key is derived from the card's uid, so a retried issuance (a timeout after the
processor answered, an operator restart) asks for the same card and gets the same token back.

What can happen, and what the handler does with it:

- 2xx with a valid body: the token and last 4 (:func:`parse_response` checks them strictly).
- A refusal of the card (400, 402, 409, 410, 422 and other 4xx not listed below):
  :class:`TokenizerRefused`, final: the card ends ``Rejected`` with reason ``TokenizerRefused``.
- The processor is down or cannot serve us now (connection errors, timeouts, 5xx, 408, 425,
  429, a redirect) or our configuration is wrong (401/403: credentials; 404/405: the URL):
  :class:`TokenizerUnavailable`, retried by the handler with backoff; fixing the configuration
  (a rotated Secret is read again on every request) lets the waiting card through.
- A response that breaks the contract (not JSON, a malformed token or last 4, larger than
  :data:`RESPONSE_BYTES_MAX`, or ANY card number anywhere in it): refused as
  :class:`TokenizerUnavailable`; the body is never logged or echoed, only what was wrong.
"""

from __future__ import annotations

import asyncio
import json
import re
import urllib.parse
from typing import Final

import httpx

from fintech_operator import config, pan, secretfile
from fintech_operator.cards import tokenizer

RESPONSE_BYTES_MAX: Final = 16 * 1024
TOKEN_FILE_BYTES_MAX: Final = 8 * 1024
MESSAGE_CHARS_MAX: Final = 300
TOKEN_RE: Final = re.compile(r"tok_[A-Za-z0-9._:-]{1,60}")
LAST4_RE: Final = re.compile(r"[0-9]{4}")
# Stricter than the Luhn scan: a token never carries a long digit run, card number or not.
_DIGIT_RUN_RE: Final = re.compile(r"[0-9]{12,}")
# Statuses that say "not now" or "not configured right", never "not this card".
# 409: the processor is still working on this idempotency key (a retry after a timeout).
_RETRYABLE_STATUSES: Final = frozenset({401, 403, 404, 405, 408, 409, 425, 429})
_CONTROL_RE: Final = re.compile(r"[\x00-\x1f\x7f]+")


class TokenizerError(Exception):
    """The processor did not give a card; ``reason`` is the card's status reason."""

    reason: str = "TokenizerError"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class TokenizerUnavailable(TokenizerError):
    """Retry later: the processor is down, slow, misconfigured, or broke its contract."""

    reason = "TokenizerUnavailable"


class TokenizerRefused(TokenizerError):
    """The processor refused this card (a 4xx about the request): final, the card is Rejected."""

    reason = "TokenizerRefused"


def idempotency_key(card_uid: str) -> str:
    """The key of a card's tokenization: one per card uid, so a retry gets the same token."""
    if not card_uid or not re.fullmatch(r"[A-Za-z0-9-]{1,128}", card_uid):
        raise ValueError("card uid must be 1-128 letters, digits or dashes")
    return f"card-token-{card_uid}"


def parse_response(status: int, body: bytes) -> tokenizer.IssuedToken:
    """The token and last 4 of the processor's answer, or why there are none (pure).

    The body is scanned for card numbers before anything else: a response carrying one is
    refused whatever its status, and no message ever quotes the body's values.
    """
    if len(body) > RESPONSE_BYTES_MAX:
        raise TokenizerUnavailable(f"processor response larger than {RESPONSE_BYTES_MAX} bytes")
    text = body.decode("utf-8", errors="replace")
    if pan.find_pans(text):
        raise TokenizerUnavailable(
            f"processor response (HTTP {status}) contained a card number; it was refused and "
            "not logged (the processor must return a token and the last 4 only)"
        )
    if 200 <= status < 300:
        return _issued(text, status)
    detail = _error_detail(text)
    if 400 <= status < 500 and status not in _RETRYABLE_STATUSES:
        raise TokenizerRefused(f"the card processor refused the card (HTTP {status}){detail}")
    if status in (401, 403):
        why = "refused our credentials (check FINTECH_TOKENIZER_TOKEN_FILE)"
    elif status in (404, 405):
        why = "has no such endpoint (check FINTECH_TOKENIZER_URL)"
    elif 300 <= status < 400:
        why = "redirected the request (redirects are not followed; set the final URL)"
    else:
        why = "is unavailable"
    raise TokenizerUnavailable(f"the card processor {why} (HTTP {status}){detail}")


def _issued(text: str, status: int) -> tokenizer.IssuedToken:
    try:
        data = json.loads(text)
    except ValueError:
        raise TokenizerUnavailable(f"processor response (HTTP {status}) is not JSON") from None
    if not isinstance(data, dict):
        raise TokenizerUnavailable("processor response is not a JSON object")
    token, last4 = data.get("token"), data.get("last4")
    if not isinstance(token, str) or TOKEN_RE.fullmatch(token) is None:
        raise TokenizerUnavailable(
            "processor response has no valid token (a string tok_ followed by 1-60 of "
            "A-Z a-z 0-9 . _ : -)"
        )
    if _DIGIT_RUN_RE.search(token):
        raise TokenizerUnavailable("processor token contains a long run of digits; refused")
    if not isinstance(last4, str) or LAST4_RE.fullmatch(last4) is None:
        raise TokenizerUnavailable("processor response has no valid last4 (a string of 4 digits)")
    return tokenizer.IssuedToken(token=token, last4=last4)


def _error_detail(text: str) -> str:
    """``: <code>: <message>`` from a JSON error body, cleaned and bounded, or nothing.

    Accepts ``{"error": {"code", "message"}}``, ``{"code", "message"}`` and
    ``{"error": "..."}``; the body has been scanned for card numbers already and is masked
    again here, so nothing a processor echoes can carry one into a status or an Event.
    """
    try:
        data = json.loads(text)
    except ValueError:
        return ""
    if not isinstance(data, dict):
        return ""
    error = data.get("error", data)
    if isinstance(error, str):
        parts = [error]
    elif isinstance(error, dict):
        parts = [str(error[k]) for k in ("code", "message") if isinstance(error.get(k), str)]
    else:
        parts = []
    # Control characters and runs of whitespace become single spaces before masking, so a
    # number split by tabs or newlines is still recognised and masked.
    joined = " ".join(_CONTROL_RE.sub(" ", ": ".join(p for p in parts if p)).split())
    cleaned = pan.mask_pans(joined)
    return f": {cleaned[:MESSAGE_CHARS_MAX]}" if cleaned else ""


def read_token_file(path: str) -> str:
    """The bearer credential from a mounted Secret, read on every request (rotation)."""
    try:
        text = secretfile.read(path, "FINTECH_TOKENIZER_TOKEN_FILE", bytes_max=TOKEN_FILE_BYTES_MAX)
    except secretfile.SecretFileError as exc:
        raise TokenizerUnavailable(str(exc)) from None
    secret = text.strip()
    if not secret.isascii() or _CONTROL_RE.search(secret) or " " in secret:
        raise TokenizerUnavailable(
            f"FINTECH_TOKENIZER_TOKEN_FILE {path} is not a single ASCII token"
        )
    return secret


class HttpTokenizer:
    """Issues cards through the processor's API; a new client per request (issuance is rare)."""

    def __init__(
        self,
        url: str,
        token_file: str,
        timeout_seconds: float,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if not url or not token_file or not 0 < timeout_seconds <= 300:
            raise ValueError("url, token_file and a timeout in (0, 300] seconds are required")
        self._url = url
        self._token_file = token_file
        self._timeout_seconds = timeout_seconds
        self._transport = transport

    async def issue(self, card_ref: str, *, idempotency_key: str = "") -> tokenizer.IssuedToken:
        """Ask the processor for ``card_ref``'s card under ``idempotency_key`` (required here)."""
        if not idempotency_key:
            raise ValueError("the HTTP tokenizer needs the card's idempotency key")
        secret = read_token_file(self._token_file)
        headers = {
            "Authorization": f"Bearer {secret}",
            "Idempotency-Key": idempotency_key,
            "Accept": "application/json",
        }
        payload = {"cardRef": card_ref, "idempotencyKey": idempotency_key}
        host = urllib.parse.urlsplit(self._url).netloc
        try:
            # One deadline for the whole exchange, on top of httpx's per-phase timeouts.
            async with asyncio.timeout(self._timeout_seconds):
                status, body = await self._post(headers, payload)
        except TimeoutError:
            raise TokenizerUnavailable(
                f"the card processor at {host} did not answer within {self._timeout_seconds} s"
            ) from None
        except httpx.HTTPError as exc:
            raise TokenizerUnavailable(
                f"the card processor at {host} is unreachable: {type(exc).__name__}"
            ) from None
        return parse_response(status, body)

    async def _post(self, headers: dict[str, str], payload: dict[str, str]) -> tuple[int, bytes]:
        async with (
            httpx.AsyncClient(
                timeout=httpx.Timeout(self._timeout_seconds),
                follow_redirects=False,
                trust_env=True,  # HTTPS_PROXY / NO_PROXY / SSL_CERT_FILE of the pod apply.
                transport=self._transport,
            ) as client,
            client.stream("POST", self._url, headers=headers, json=payload) as response,
        ):
            chunks: list[bytes] = []
            size = 0
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > RESPONSE_BYTES_MAX:
                    raise TokenizerUnavailable(
                        f"processor response larger than {RESPONSE_BYTES_MAX} bytes"
                    )
                chunks.append(chunk)
            return response.status_code, b"".join(chunks)


DEVELOPMENT: Final = "development"
NO_TOKENIZER: Final = (
    "no card tokenizer configured: set FINTECH_TOKENIZER_URL (and "
    "FINTECH_TOKENIZER_TOKEN_FILE) to the card processor's tokenization endpoint, or "
    "FINTECH_TOKENIZER=development to opt in to the built-in development tokenizer (random "
    "last 4 digits, no processor: never in production); the operator does not start without one"
)


def from_settings(settings: config.Settings) -> tokenizer.Tokenizer:
    """The processor's tokenizer when ``FINTECH_TOKENIZER_URL`` is set, the built-in one when
    ``FINTECH_TOKENIZER=development``; with neither, :class:`config.SettingsError`.

    Failing closed: an install that forgets the URL must not issue Active cards with invented
    last 4 digits.
    """
    if not settings.tokenizer.url:
        if settings.tokenizer.mode == DEVELOPMENT:
            return tokenizer.BuiltinTokenizer()
        raise config.SettingsError(NO_TOKENIZER)
    return HttpTokenizer(
        settings.tokenizer.url,
        settings.tokenizer.token_file,
        settings.tokenizer.timeout_seconds,
    )
