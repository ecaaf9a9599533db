"""``fintech-operator gateway sign BODY``: the Standard Webhooks headers for one request.

What the card processor does for each request, for trying the gateway with ``curl``::

    fintech-operator gateway sign "$BODY" | curl -H @- -H 'content-type: application/json' \\
        -d "$BODY" http://127.0.0.1:8088/v1/authorizations

It signs with the first secret in ``FINTECH_GATEWAY_SIGNING_SECRET_FILE`` (or
``--secret-file``); the headers are valid for the gateway's replay window (5 minutes).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid

from fintech_operator import secretfile
from fintech_operator.gateway import trust
from fintech_operator.notify import signing


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("body", help="the exact body to send ('' for a GET; - reads stdin)")
    # A command-line tool's default, read when ``cli`` builds its parser, never at import.
    parser.add_argument(
        "--secret-file",
        default=os.environ.get(trust.SECRET_FILE_VARIABLE, ""),
        help=f"the signing secret (default: ${trust.SECRET_FILE_VARIABLE})",
    )
    parser.add_argument("--id", default="", help="webhook-id (default: a fresh msg_<uuid>)")
    parser.add_argument(
        "--timestamp", type=int, default=None, help="seconds since the epoch (default: now)"
    )


def run(args: argparse.Namespace) -> int:
    if not args.secret_file:
        print(f"set {trust.SECRET_FILE_VARIABLE} or pass --secret-file", file=sys.stderr)
        return 2
    body = sys.stdin.buffer.read() if args.body == "-" else args.body.encode()
    try:
        key = trust.read_secrets(args.secret_file)[0]
        stamp = int(time.time()) if args.timestamp is None else args.timestamp
        headers = signing.headers(key, args.id or f"msg_{uuid.uuid4().hex}", stamp, body)
    except (secretfile.SecretFileError, signing.SigningError) as exc:
        print(exc, file=sys.stderr)
        return 2
    for name, value in headers.items():
        print(f"{name}: {value}")
    return 0
