"""Standard Webhooks signatures (pure: no I/O).

Every delivery carries three headers (https://www.standardwebhooks.com/):

- ``webhook-id``: the event's CloudEvents id, the same for every retry, so a receiver
  can de-duplicate;
- ``webhook-timestamp``: seconds since the epoch at this attempt, so a receiver can
  refuse replays of old requests;
- ``webhook-signature``: ``v1,<base64(HMAC-SHA256(secret, id.timestamp.body))>``; a
  receiver may get several space-separated signatures during a secret rotation.

The secret is written ``whsec_<base64>`` (the ``whsec_`` prefix optional), 24 to 64
random bytes once decoded. Any Standard Webhooks library verifies what we send; the
unit tests check our signer against the specification's published test vector.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Mapping
from typing import Final

SECRET_PREFIX: Final = "whsec_"  # noqa: S105 - the format's prefix, not a secret
SECRET_BYTES_MIN: Final = 24
SECRET_BYTES_MAX: Final = 64
TOLERANCE_SECONDS: Final = 300
VERSION: Final = "v1"
ID_HEADER: Final = "webhook-id"
TIMESTAMP_HEADER: Final = "webhook-timestamp"
SIGNATURE_HEADER: Final = "webhook-signature"
_ID_RE: Final = re.compile(r"^[^\s.]{1,256}$")
_B64_RE: Final = re.compile(r"^[A-Za-z0-9+/]+={0,2}$")
SIGNATURES_MAX: Final = 16


class SigningError(ValueError):
    """A secret, a header or a signature is not acceptable (the message says which)."""


def parse_secret(text: str) -> bytes:
    """The key bytes of ``whsec_<base64>``; refuses short, long and non-base64 secrets."""
    if not isinstance(text, str):
        raise SigningError("the signing secret must be text")
    encoded = text.strip().removeprefix(SECRET_PREFIX)
    if not _B64_RE.fullmatch(encoded):
        raise SigningError("the signing secret must be whsec_ followed by base64")
    try:
        key = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise SigningError(f"the signing secret is not valid base64: {exc}") from exc
    if not SECRET_BYTES_MIN <= len(key) <= SECRET_BYTES_MAX:
        raise SigningError(
            f"the signing secret must decode to {SECRET_BYTES_MIN} to {SECRET_BYTES_MAX} bytes,"
            f" got {len(key)}"
        )
    return key


def format_secret(key: bytes) -> str:
    """``whsec_<base64>`` of ``key`` (the form a Secret holds)."""
    if not SECRET_BYTES_MIN <= len(key) <= SECRET_BYTES_MAX:
        raise SigningError(f"a signing key must be {SECRET_BYTES_MIN} to {SECRET_BYTES_MAX} bytes")
    return SECRET_PREFIX + base64.b64encode(key).decode()


def _check_id_and_timestamp(msg_id: str, timestamp: int) -> None:
    if not isinstance(msg_id, str) or not _ID_RE.fullmatch(msg_id):
        raise SigningError("webhook-id must be 1 to 256 characters without spaces or dots")
    if type(timestamp) is not int or timestamp < 0:
        raise SigningError("webhook-timestamp must be a non-negative int of seconds")


def sign(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """``v1,<base64 HMAC-SHA256>`` over ``msg_id.timestamp.body``."""
    _check_id_and_timestamp(msg_id, timestamp)
    if not isinstance(body, bytes):
        raise SigningError("the body must be bytes, exactly as sent")
    if not SECRET_BYTES_MIN <= len(key) <= SECRET_BYTES_MAX:
        raise SigningError(f"a signing key must be {SECRET_BYTES_MIN} to {SECRET_BYTES_MAX} bytes")
    content = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, content, hashlib.sha256).digest()
    return f"{VERSION},{base64.b64encode(digest).decode()}"


def headers(key: bytes, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three Standard Webhooks headers of one attempt."""
    return {
        ID_HEADER: msg_id,
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: sign(key, msg_id, timestamp, body),
    }


def verify(
    key: bytes,
    received: Mapping[str, str],
    body: bytes,
    now: int,
    tolerance_seconds: int = TOLERANCE_SECONDS,
) -> str:
    """Check a received request the way a receiver should; return its ``webhook-id``.

    Raises :class:`SigningError` for a missing header, a timestamp outside
    ``now ± tolerance_seconds`` or no matching ``v1`` signature (compared in constant time).
    """
    lower = {k.lower(): v for k, v in received.items()}
    try:
        msg_id = lower[ID_HEADER]
        stamp = lower[TIMESTAMP_HEADER]
        signatures = lower[SIGNATURE_HEADER]
    except KeyError as exc:
        raise SigningError(f"missing header {exc.args[0]}") from exc
    if not stamp.isdigit():
        raise SigningError("webhook-timestamp is not an integer")
    timestamp = int(stamp)
    if abs(now - timestamp) > tolerance_seconds:
        raise SigningError("webhook-timestamp is outside the tolerance (a replay?)")
    expected = sign(key, msg_id, timestamp, body).encode()
    offered = signatures.split(" ")[:SIGNATURES_MAX]
    if not any(hmac.compare_digest(expected, candidate.encode()) for candidate in offered):
        raise SigningError("no valid signature")
    return msg_id
