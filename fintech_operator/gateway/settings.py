"""The gateway's settings: read once from the environment, validated at start-up.

The gateway is its own process with its own needs (no Kafka, no Kubernetes API). Its settings
are a model of groups loaded by the operator's own loader (``config.load_groups``): the groups
it shares with the other processes, under the same variables (``database`` for
``DATABASE_URL``, ``health`` for ``FINTECH_HEALTH_HOST``, ``metrics`` for
``FINTECH_METRICS_PORT``, ``logs`` for ``FINTECH_LOG_LEVEL``), and its own ``gateway`` group,
``FINTECH_GATEWAY_<NAME>``, units in the names, every value bounded; a bad value stops the
process naming the variable.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Final

import pydantic
from pydantic import BaseModel, ConfigDict, Field

from fintech_operator import config

ENV_PREFIX: Final = "FINTECH_GATEWAY_"


def _env(field: str) -> config.Env:
    return config.Env(ENV_PREFIX + field.upper())


class GatewaySettings(config.Group):
    """The gateway's own tunables (``fintech-operator gateway``, docs/gateway.md)."""

    signing_secret_file: Annotated[
        str,
        _env("signing_secret_file"),
        Field(
            min_length=1,
            max_length=4096,
            description="Path of the processor's Standard Webhooks signing secret(s), "
            "whsec_<base64>, one per line (two during a rotation); a mounted Secret key. "
            "Required: the gateway never answers unsigned requests.",
        ),
    ]
    host: Annotated[
        str,
        _env("host"),
        Field(min_length=1, max_length=255, description="Listen address; default loopback."),
    ] = "127.0.0.1"
    port: Annotated[
        int, _env("port"), Field(ge=0, le=65535, description="Listen port; default 8088.")
    ] = 8088
    workers: Annotated[
        int,
        _env("workers"),
        Field(
            ge=1,
            le=32,
            description="Gateway processes sharing the listen socket (uvicorn workers); "
            "default 1. Each has its own database pool and in-flight limit.",
        ),
    ] = 1
    deadline_ms: Annotated[
        int,
        _env("deadline_ms"),
        Field(
            ge=50,
            le=30_000,
            description="Budget of one answer, from the request's arrival; a store that "
            "cannot answer in time gives IssuerUnavailable. Default 1500 (the card network "
            "waits about 2 s).",
        ),
    ] = 1500
    in_flight_max: Annotated[
        int,
        _env("in_flight_max"),
        Field(
            ge=1,
            le=10_000,
            description="Signed requests worked on at once; more wait in the queue "
            "(queue_max, queue_wait_ms). Default 64.",
        ),
    ] = 64
    queue_max: Annotated[
        int,
        _env("queue_max"),
        Field(
            ge=0,
            le=100_000,
            description="Requests that may wait for an in-flight slot, oldest first; one that "
            "finds the queue full is declined Overloaded at once. 0: no queue. Default 1024.",
        ),
    ] = 1024
    queue_wait_ms: Annotated[
        int | None,
        _env("queue_wait_ms"),
        Field(
            ge=0,
            le=30_000,
            description="Longest wait for an in-flight slot; a request still waiting then is "
            "declined Overloaded. Less than deadline_ms. Default: two thirds of deadline_ms "
            "(1000 of the default 1500).",
        ),
    ] = None
    body_bytes_max: Annotated[
        int,
        _env("body_bytes_max"),
        Field(ge=256, le=1_048_576, description="Largest request body; more is 413. Default 8192."),
    ] = 8192
    signature_tolerance_seconds: Annotated[
        int,
        _env("signature_tolerance_seconds"),
        Field(
            ge=1,
            le=3600,
            description="How far webhook-timestamp may be from now (replay window); default 300.",
        ),
    ] = 300
    secret_refresh_seconds: Annotated[
        float,
        _env("secret_refresh_seconds"),
        Field(
            ge=0,
            le=3600,
            description="How long a read signing secret is used before the file is read "
            "again (a rotated Secret takes effect within this time); default 10.",
        ),
    ] = 10.0
    db_pool_min_size: Annotated[
        int,
        _env("db_pool_min_size"),
        Field(
            ge=1,
            le=256,
            description="Connections to PostgreSQL one gateway process keeps open even when "
            "idle; default 4.",
        ),
    ] = 4
    db_pool_max_size: Annotated[
        int,
        _env("db_pool_max_size"),
        Field(
            ge=1,
            le=256,
            description="Connections to PostgreSQL held by one gateway process; default 16.",
        ),
    ] = 16
    db_connect_timeout_seconds: Annotated[
        float,
        _env("db_connect_timeout_seconds"),
        Field(gt=0, le=300, description="Longest wait to open one connection; default 10."),
    ] = 10.0
    settle_timeout_seconds: Annotated[
        float,
        _env("settle_timeout_seconds"),
        Field(
            gt=0,
            le=3600,
            description="After a missed deadline, how long the gateway keeps trying to settle "
            "the request (release any late hold and record the decline); default 300.",
        ),
    ] = 300.0
    tls_cert_file: Annotated[
        str | None,
        _env("tls_cert_file"),
        Field(
            min_length=1,
            max_length=4096,
            description="PEM certificate (chain) the gateway serves HTTPS with; with "
            "tls_key_file. Unset: plain HTTP.",
        ),
    ] = None
    tls_key_file: Annotated[
        str | None,
        _env("tls_key_file"),
        Field(min_length=1, max_length=4096, description="PEM private key of tls_cert_file."),
    ] = None
    tls_client_ca_file: Annotated[
        str | None,
        _env("tls_client_ca_file"),
        Field(
            min_length=1,
            max_length=4096,
            description="PEM CA certificate(s): when set, every connection must present a "
            "client certificate signed by one of them (mTLS), or the TLS handshake fails. "
            "Needs tls_cert_file.",
        ),
    ] = None

    @pydantic.model_validator(mode="after")
    def _pool_sizes(self) -> GatewaySettings:
        if self.db_pool_min_size > self.db_pool_max_size:
            raise ValueError(
                f"{env_name('db_pool_min_size')} must not exceed {env_name('db_pool_max_size')}"
            )
        return self

    @property
    def queue_wait_seconds(self) -> float:
        """The queue's wait: as set, or two thirds of the deadline (a third left for the work)."""
        wait_ms = (
            self.queue_wait_ms if self.queue_wait_ms is not None else self.deadline_ms * 2 // 3
        )
        return wait_ms / 1000

    @pydantic.model_validator(mode="after")
    def _queue_wait_within_deadline(self) -> GatewaySettings:
        # A request granted a slot at the end of its wait still needs time for its work.
        if self.queue_wait_ms is not None and self.queue_wait_ms >= self.deadline_ms:
            raise ValueError(
                f"{env_name('queue_wait_ms')} must be less than {env_name('deadline_ms')}"
            )
        return self

    @pydantic.model_validator(mode="after")
    def _tls_files(self) -> GatewaySettings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError(
                f"{env_name('tls_cert_file')} and {env_name('tls_key_file')} go together"
            )
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ValueError(
                f"{env_name('tls_client_ca_file')} needs {env_name('tls_cert_file')}"
                " (client certificates are asked for over TLS)"
            )
        return self


class GatewayProcessSettings(BaseModel):
    """Everything ``fintech-operator gateway`` reads, one group per concern.

    The shared groups are the other processes' own, under the same variables; the gateway
    reads ``database.url`` (its pool is sized by its own group), ``health.host`` (where a
    separate /metrics listens), ``metrics.port`` (0, the default, serves /metrics on the
    gateway's own port instead of turning it off) and ``logs.level``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    database: config.DatabaseSettings
    health: config.HealthSettings = config.HealthSettings()
    metrics: config.MetricsSettings = config.MetricsSettings()
    logs: config.LogSettings = config.LogSettings()
    gateway: GatewaySettings


# The operator's SettingsError: the gateway's settings are loaded by the same loader.
GatewaySettingsError = config.SettingsError


def env_name(field: str) -> str:
    """The environment variable of the gateway group's ``field``."""
    return ENV_PREFIX + field.upper()


def load(environ: Mapping[str, str] | None = None) -> GatewayProcessSettings:
    """The gateway's settings from the environment; :class:`GatewaySettingsError` naming the
    variable (``config.load_groups``)."""
    return config.load_groups(GatewayProcessSettings, environ)


__all__ = [
    "ENV_PREFIX",
    "GatewayProcessSettings",
    "GatewaySettings",
    "GatewaySettingsError",
    "env_name",
    "load",
]
