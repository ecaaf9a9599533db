"""Who may talk to the gateway, and what it refuses to read (pure, except the secret file).

Requests are signed by the card processor with Standard Webhooks (the format the notifier
already sends, :mod:`fintech_operator.notify.signing`): ``webhook-id``, ``webhook-timestamp``
and ``webhook-signature: v1,<base64 HMAC-SHA256(secret, id.timestamp.body)>``. A request
without them is ``unsigned``; one whose timestamp is outside the replay window is ``stale``;
one with no matching signature is ``bad_signature``. Each becomes a 401 and a metric, before
the body is parsed or anything is written.

A card number is never accepted, anywhere: a body, path or header holding a Luhn-valid run of
13 to 19 digits is refused (``card_number``) and the text is not logged.
"""

from __future__ import annotations

import hmac
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final

from fintech_operator import pan, secretfile
from fintech_operator.notify import signing

log = logging.getLogger(__name__)

SECRETS_MAX: Final = 4
SECRET_FILE_VARIABLE: Final = "FINTECH_GATEWAY_SIGNING_SECRET_FILE"  # noqa: S105 - a name


class Refused(Exception):
    """A request the gateway will not work on: ``kind`` names why, for metrics and the body."""

    def __init__(
        self, status_code: int, kind: str, message: str, fields: list[str] | None = None
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.kind = kind
        self.message = message
        self.fields = fields


def parse_secrets(text: str) -> tuple[bytes, ...]:
    """The keys of a secret file: one ``whsec_<base64>`` per line, at most :data:`SECRETS_MAX`.

    Two lines let an operator rotate: add the new secret, move the processor to it, drop the old.
    """
    items = text.split()
    if not 1 <= len(items) <= SECRETS_MAX:
        raise signing.SigningError(f"the signing secret file must hold 1 to {SECRETS_MAX} secrets")
    return tuple(signing.parse_secret(item) for item in items)


def read_secrets(path: str) -> tuple[bytes, ...]:
    """The keys of the secret file at ``path``; an error names the variable and the file
    (``secretfile.SecretFileError`` or ``SigningError``), never a secret."""
    text = secretfile.read(path, SECRET_FILE_VARIABLE)
    try:
        return parse_secrets(text)
    except signing.SigningError as exc:
        raise signing.SigningError(f"{SECRET_FILE_VARIABLE}: {path}: {exc}") from None


class SecretSource:
    """The current signing keys, read from the mounted file again after ``refresh_seconds``."""

    def __init__(
        self,
        path: str,
        refresh_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._path = path
        self._refresh_seconds = refresh_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._keys: tuple[bytes, ...] = ()
        self._read_at = float("-inf")

    def keys(self) -> tuple[bytes, ...]:
        """The keys; raises :class:`secretfile.SecretFileError` or ``SigningError`` when the
        file cannot be read or parsed and no earlier read succeeded. When a later read fails,
        the keys read before stay in use, with a warning, until the file can be used again
        (read every ``refresh_seconds``, not at every request)."""
        now = self._clock()
        with self._lock:
            if self._keys and now - self._read_at < self._refresh_seconds:
                return self._keys
            try:
                keys = read_secrets(self._path)
            except (secretfile.SecretFileError, signing.SigningError) as exc:
                # A Secret being rewritten may be read half-way: keep what worked before, and
                # say so, since a file that stays unusable leaves a rotation undone.
                if self._keys:
                    log.warning(
                        "the signing secret file cannot be used; the secrets read before are "
                        "still accepted",
                        extra={"error": str(exc)},
                    )
                    self._read_at = now
                    return self._keys
                raise
            self._keys, self._read_at = keys, now
            return keys


@dataclass(frozen=True, slots=True)
class SignedHeaders:
    msg_id: str
    timestamp: int
    signatures: tuple[str, ...]


def signed_headers(headers: Mapping[str, str]) -> SignedHeaders:
    """The three Standard Webhooks headers, or :class:`Refused` (``unsigned``)."""
    msg_id = headers.get(signing.ID_HEADER)
    stamp = headers.get(signing.TIMESTAMP_HEADER)
    signatures = headers.get(signing.SIGNATURE_HEADER)
    if not msg_id or not stamp or not signatures:
        raise Refused(401, "unsigned", "webhook-id, webhook-timestamp and webhook-signature needed")
    if not stamp.isascii() or not stamp.isdigit() or len(stamp) > 12:
        raise Refused(401, "bad_signature", "webhook-timestamp must be seconds since the epoch")
    offered = tuple(signatures.split(" ")[: signing.SIGNATURES_MAX])
    return SignedHeaders(msg_id, int(stamp), offered)


def verify(
    keys: tuple[bytes, ...],
    headers: Mapping[str, str],
    body: bytes,
    now_seconds: int,
    tolerance_seconds: int,
) -> str:
    """The request's ``webhook-id`` when one of ``keys`` signed it within the window."""
    signed = signed_headers(headers)
    if abs(now_seconds - signed.timestamp) > tolerance_seconds:
        raise Refused(401, "stale", "webhook-timestamp is outside the replay window")
    for key in keys:
        try:
            expected = signing.sign(key, signed.msg_id, signed.timestamp, body).encode()
        except signing.SigningError:
            raise Refused(401, "bad_signature", "webhook-id is not acceptable") from None
        # Every offered signature is compared, in constant time, against every key.
        if any(hmac.compare_digest(expected, item.encode()) for item in signed.signatures):
            return signed.msg_id
    raise Refused(401, "bad_signature", "no valid signature")


def refuse_card_numbers(*texts: str) -> None:
    """:class:`Refused` (422, ``card_number``) when any text holds a card number.

    The message never repeats the number, nor where it was beyond the part of the request.
    """
    for text in texts:
        if pan.find_pans(text):
            raise Refused(
                422, "card_number", "a card number is never accepted: send the card's token"
            )


def check_content_length(value: str | None, body_bytes_max: int) -> None:
    """:class:`Refused` (413) for a declared length over the limit, before reading anything."""
    if value is None:
        return
    if not value.isascii() or not value.isdigit():
        raise Refused(400, "invalid", "Content-Length must be a number")
    if int(value) > body_bytes_max:
        raise Refused(413, "too_large", f"the body is larger than {body_bytes_max} bytes")
