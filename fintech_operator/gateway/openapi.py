"""The gateway's OpenAPI document, committed as ``docs/api/openapi.json`` and checked for drift.

``python -m fintech_operator.gateway.openapi`` writes it; ``--check`` (in ``make lint``) fails
when the committed file differs from what the code serves at ``/openapi.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Final, NoReturn

from fintech_operator.authorizations import contract
from fintech_operator.gateway import app, gate, trust

DEFAULT_PATH: Final = Path(__file__).resolve().parents[2] / "docs" / "api" / "openapi.json"


class _NoStore:
    """Routes are only described, never called, while rendering the document."""

    def __getattr__(self, name: str) -> NoReturn:
        raise RuntimeError(f"the OpenAPI renderer has no store ({name})")


@contextlib.asynccontextmanager
async def _no_connection(_wait_seconds: float) -> AsyncIterator[gate.Connection]:
    if _wait_seconds >= 0:
        raise RuntimeError("the OpenAPI renderer has no database")
    yield None  # type: ignore[misc]  # never reached: only makes this a generator


async def _never_ready() -> bool:
    return False


def document() -> dict[str, Any]:
    """The document the gateway serves at ``/openapi.json``."""
    store: contract.Store = _NoStore()
    deps = app.Deps(
        gate=gate.Gate(store, _no_connection, gate.Limits(1, 1, 1)),
        secrets=trust.SecretSource("/nonexistent", 0),
        limits=app.Limits(8192, 300),
        ready=_never_ready,
    )
    return app.openapi_schema(app.create_app(deps))


def render() -> str:
    return json.dumps(document(), indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if the file is out of date")
    parser.add_argument("--path", type=Path, default=DEFAULT_PATH)
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = args.path.read_text(encoding="utf-8") if args.path.exists() else ""
        if current != text:
            print(
                f"{args.path} is out of date: run python -m fintech_operator.gateway.openapi",
                file=sys.stderr,
            )
            return 1
        return 0
    args.path.parent.mkdir(parents=True, exist_ok=True)
    args.path.write_text(text, encoding="utf-8")
    print(args.path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
