"""Secrets mounted as files (a Kubernetes Secret volume): read when used, bounded, and named
in every error by the variable that points at them.

Read on every use, not once, so that a rotated Secret reaches each new connection; bounded,
so that a path pointing at something large is refused rather than read whole. The text is
never part of an error. Callers turn :class:`SecretFileError` into their own error type.
"""

from __future__ import annotations

from typing import Final

BYTES_MAX: Final = 64 * 1024


class SecretFileError(ValueError):
    """The file is missing, unreadable, too large, not UTF-8 or empty; the message says which."""


def read(path: str, variable: str, *, bytes_max: int = BYTES_MAX) -> str:
    """The file's text without its trailing line break (what ``kubectl create secret
    --from-file`` and editors leave); :class:`SecretFileError` naming ``variable`` otherwise."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read(bytes_max + 1)
    except OSError as exc:
        raise SecretFileError(f"{variable}: cannot read {path}: {exc.strerror}") from None
    if len(raw) > bytes_max:
        raise SecretFileError(f"{variable}: {path} is larger than {bytes_max} bytes")
    try:
        text = raw.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError:
        raise SecretFileError(f"{variable}: {path} is not UTF-8 text") from None
    if not text.strip():
        raise SecretFileError(f"{variable}: {path} is empty")
    return text
