"""kopf handlers, one module per kind: decode, call the application layer, render status.

Importing this package, or any module in it, registers nothing and reads no environment.
:func:`register` adds every handler to the registry it is given: ``runtime.build_registry``
calls it once, at start-up, with the settings ``cli`` loaded, and the operator runs on that
registry (``kopf.operator(registry=...)``), never on kopf's default one. Each handler module
has a ``register(registry, settings)`` that lists its own handlers; a new module adds itself
to :data:`MODULES`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final, Protocol

from fintech_operator.handlers import (
    card_queue,
    card_refresh,
    cardproduct,
    cards,
    indexes,
    outages,
    policies,
    postings,
    readiness,
    recon,
    report,
    reviews,
    slots,
    webhooks,
    wiring,
)

if TYPE_CHECKING:
    import kopf

    from fintech_operator import config


class _HandlerModule(Protocol):
    def register(self, registry: kopf.OperatorRegistry, settings: config.Settings) -> None: ...


# Registration order is kopf's order of handlers for one object (a cycle runs them in it), so
# it is kept as it was: the indexes first, then the kinds; Card before its queue and refresh.
MODULES: Final[tuple[_HandlerModule, ...]] = (
    indexes,
    cards,
    card_queue,
    card_refresh,
    cardproduct,
    policies,
    postings,
    recon,
    reviews,
    webhooks,
)

__all__ = [
    "MODULES",
    "card_queue",
    "card_refresh",
    "cardproduct",
    "cards",
    "indexes",
    "outages",
    "policies",
    "postings",
    "readiness",
    "recon",
    "register",
    "report",
    "reviews",
    "slots",
    "webhooks",
    "wiring",
]


def register(registry: kopf.OperatorRegistry, settings: config.Settings) -> None:
    """Add every kopf handler of the operator to ``registry``, configured from ``settings``."""
    for module in MODULES:
        module.register(registry, settings)
