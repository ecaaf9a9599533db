"""The gateway's settings: read once from the environment, validated at start-up.

The gateway is its own process with its own needs (no Kafka, no Kubernetes API), so it has
its own small settings model rather than the operator's. Names follow the same rule: the
connection string is ``DATABASE_URL``, everything else ``FINTECH_GATEWAY_<NAME>``, units in
the names, every value bounded; a bad value stops the process naming the variable.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Annotated, Final

import pydantic
from pydantic import BaseModel, ConfigDict, Field

from fintech_operator import config

ENV_PREFIX: Final = "FINTECH_GATEWAY_"
# Shared with the other processes: one setting decides what probes and /metrics listen on.
_SHARED_NAMES: Final = {
    "database_url": "DATABASE_URL",
    "metrics_port": "FINTECH_METRICS_PORT",
    "metrics_host": "FINTECH_HEALTH_HOST",
    "log_level": "FINTECH_LOG_LEVEL",
}


class GatewaySettings(BaseModel):
    """Every tunable of ``fintech-operator gateway``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    database_url: Annotated[str, Field(min_length=1, description="libpq DSN of the ledger")]
    signing_secret_file: Annotated[
        str,
        Field(
            min_length=1,
            max_length=4096,
            description="Path of the processor's Standard Webhooks signing secret(s), "
            "whsec_<base64>, one per line (two during a rotation); a mounted Secret key. "
            "Required: the gateway never answers unsigned requests.",
        ),
    ]
    host: Annotated[
        str, Field(min_length=1, max_length=255, description="Listen address; default loopback.")
    ] = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535, description="Listen port; default 8088.")] = 8088
    workers: Annotated[
        int,
        Field(
            ge=1,
            le=32,
            description="Gateway processes sharing the listen socket (uvicorn workers); "
            "default 1. Each has its own database pool and in-flight limit.",
        ),
    ] = 1
    deadline_ms: Annotated[
        int,
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
        Field(
            ge=1,
            le=10_000,
            description="Signed requests worked on at once; more are declined at once with "
            "Overloaded. Default 64.",
        ),
    ] = 64
    body_bytes_max: Annotated[
        int,
        Field(ge=256, le=1_048_576, description="Largest request body; more is 413. Default 8192."),
    ] = 8192
    signature_tolerance_seconds: Annotated[
        int,
        Field(
            ge=1,
            le=3600,
            description="How far webhook-timestamp may be from now (replay window); default 300.",
        ),
    ] = 300
    secret_refresh_seconds: Annotated[
        float,
        Field(
            ge=0,
            le=3600,
            description="How long a read signing secret is used before the file is read "
            "again (a rotated Secret takes effect within this time); default 10.",
        ),
    ] = 10.0
    db_pool_min_size: Annotated[int, Field(ge=1, le=256)] = 4
    db_pool_max_size: Annotated[
        int,
        Field(
            ge=1,
            le=256,
            description="Connections to PostgreSQL held by one gateway process; default 16.",
        ),
    ] = 16
    db_connect_timeout_seconds: Annotated[
        float, Field(gt=0, le=300, description="Longest wait to open one connection; default 10.")
    ] = 10.0
    settle_timeout_seconds: Annotated[
        float,
        Field(
            gt=0,
            le=3600,
            description="After a missed deadline, how long the gateway keeps trying to settle "
            "the request (release any late hold and record the decline); default 300.",
        ),
    ] = 300.0
    tls_cert_file: Annotated[
        str | None,
        Field(
            min_length=1,
            max_length=4096,
            description="PEM certificate (chain) the gateway serves HTTPS with; with "
            "tls_key_file. Unset: plain HTTP.",
        ),
    ] = None
    tls_key_file: Annotated[
        str | None,
        Field(min_length=1, max_length=4096, description="PEM private key of tls_cert_file."),
    ] = None
    tls_client_ca_file: Annotated[
        str | None,
        Field(
            min_length=1,
            max_length=4096,
            description="PEM CA certificate(s): when set, every connection must present a "
            "client certificate signed by one of them (mTLS), or the TLS handshake fails. "
            "Needs tls_cert_file.",
        ),
    ] = None
    metrics_port: Annotated[
        int,
        Field(
            ge=0,
            le=65535,
            description="FINTECH_METRICS_PORT: /metrics port, 0 (the default) serves it on "
            "the gateway's own port instead.",
        ),
    ] = 0
    metrics_host: Annotated[str, Field(min_length=1, max_length=255)] = "127.0.0.1"
    # The variable and the rule of the other processes' settings.logs.level.
    log_level: Annotated[
        config.LogLevel,
        Field(
            description="FINTECH_LOG_LEVEL: lowest level logged, as for the other "
            "processes; default INFO."
        ),
    ] = "INFO"

    @pydantic.model_validator(mode="after")
    def _pool_sizes(self) -> GatewaySettings:
        if self.db_pool_min_size > self.db_pool_max_size:
            raise ValueError(
                f"{env_name('db_pool_min_size')} must not exceed {env_name('db_pool_max_size')}"
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


class GatewaySettingsError(RuntimeError):
    """A setting is missing or out of bounds; the message names the variable."""


def env_name(field: str) -> str:
    """The environment variable of ``field``."""
    return _SHARED_NAMES.get(field, ENV_PREFIX + field.upper())


def load(environ: Mapping[str, str] | None = None) -> GatewaySettings:
    """Settings from the environment; :class:`GatewaySettingsError` naming the variable."""
    source = os.environ if environ is None else environ
    values = {
        field: source[env_name(field)]
        for field in GatewaySettings.model_fields
        if env_name(field) in source
    }
    try:
        return GatewaySettings.model_validate(values)
    except pydantic.ValidationError as exc:
        problems = "; ".join(
            f"{env_name(str(err['loc'][0])) if err['loc'] else 'settings'}: {err['msg']}"
            for err in exc.errors()
        )
        # from None: pydantic's text repeats each input, and DATABASE_URL may hold a password.
        raise GatewaySettingsError(f"invalid gateway settings: {problems}") from None
