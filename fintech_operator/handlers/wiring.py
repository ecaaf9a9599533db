"""The two registrations most handler modules share, so each ``register`` reads as a list.

kopf takes an explicit registry in every decorator (``registry=``): the handler modules
register into the one :func:`fintech_operator.handlers.register` is given, never into kopf's
default registry, so importing a module registers nothing.

kopf derives each handler's id from the function's name (plus ``/field`` for a field or
update handler) and keeps its progress under that id in ``status.kopf``: the id must not
change between versions, so these helpers register plain module functions and pass no ``id``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import kopf

from fintech_operator import api

When = Callable[..., bool]


def on_new(registry: kopf.OperatorRegistry, plural: str, fn: Any, when: When | None = None) -> None:
    """``fn`` for a new object and for each object kopf lists at start (create, resume)."""
    kopf.on.create(api.GROUP, api.VERSION, plural, when=when, registry=registry)(fn)
    kopf.on.resume(api.GROUP, api.VERSION, plural, when=when, registry=registry)(fn)


def on_spec(registry: kopf.OperatorRegistry, plural: str, fn: Any) -> None:
    """``fn`` for a new object, each listed at start, and each change of its ``spec``."""
    kopf.on.update(api.GROUP, api.VERSION, plural, field="spec", registry=registry)(fn)
    on_new(registry, plural, fn)


__all__ = ["When", "on_new", "on_spec"]
