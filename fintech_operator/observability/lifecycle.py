"""Start-up of observability in each process: tracing, ``/metrics`` and handler timing.

A process calls :func:`start_process` once, after its settings are loaded and before it
does any work; the operator calls :func:`start_operator`, which also instruments the kopf
handlers of the registry it runs on (``runtime.build_registry``).
"""

from __future__ import annotations

import importlib.metadata
import logging
import wsgiref.simple_server
from typing import TYPE_CHECKING

from fintech_operator import config
from fintech_operator.observability import metrics, reconcile, tracing

if TYPE_CHECKING:
    import kopf

log = logging.getLogger(__name__)


def version() -> str:
    """The installed package's version, or ``unknown`` when run from an uninstalled tree."""
    try:
        return importlib.metadata.version("fintech-operator")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def start_process(
    settings: config.Settings, service: str
) -> wsgiref.simple_server.WSGIServer | None:
    """Set up tracing and, when ``FINTECH_METRICS_PORT`` is not 0, serve ``/metrics``."""
    tracing.setup(service, version(), settings.tracing)
    metrics.build_info.labels(version(), service).set(1)
    if settings.metrics.port == 0:
        log.info("metrics server off (FINTECH_METRICS_PORT=0)")
        return None
    return metrics.serve(settings.health.host, settings.metrics.port)


def start_operator(
    settings: config.Settings, registry: kopf.OperatorRegistry
) -> wsgiref.simple_server.WSGIServer | None:
    """:func:`start_process` for the operator, plus timing and tracing of the kopf handlers
    in ``registry``."""
    server = start_process(settings, "fintech-operator")
    count = reconcile.instrument(registry)
    log.info("instrumented %d kopf handlers", count)
    return server


__all__ = ["start_operator", "start_process", "version"]
