"""Process settings, read once from the environment and validated at start-up.

Every limit has a unit in its name, a default and a bound; a bad value stops the
process at start with a message naming the variable, never later in a handler.
"""

from __future__ import annotations

import ipaddress
import os
import urllib.parse
from typing import Annotated

import pydantic
from pydantic import BaseModel, ConfigDict, Field

from fintech_operator import secretfile

ENV_PREFIX = "FINTECH_"
WEBHOOK_ALLOWED_CIDRS_MAX_ITEMS = 64
WEBHOOK_ALLOWED_CIDRS_MAX_CHARS = 4096


class Settings(BaseModel):
    """All tunables of the operator and its consumers."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    database_url: Annotated[str, Field(min_length=1, description="libpq DSN of the ledger")]
    # Least privilege: the ledger's owner migrates, a runtime role that owns nothing posts.
    migration_database_url: Annotated[
        str | None,
        Field(
            min_length=1,
            description="libpq DSN of the role that owns the ledger's tables, used only to "
            "apply migrations and grants; unset, migrations run as DATABASE_URL's role.",
        ),
    ] = None
    migration_database_password: Annotated[
        pydantic.SecretStr | None,
        Field(
            repr=False,
            description="Password of FINTECH_MIGRATION_DATABASE_URL's role (from a Secret), "
            "kept out of the URL; PGPASSWORD stays the runtime role's. Never logged.",
        ),
    ] = None
    database_runtime_role: Annotated[
        str | None,
        Field(
            pattern=r"^[a-z_][a-z0-9_]{0,62}$",
            description="PostgreSQL role granted exactly the privileges the processes use "
            "(no DDL, no TRUNCATE, no UPDATE or DELETE of append-only tables) each time "
            "migrations run; DATABASE_URL's role should be it or a member of it.",
        ),
    ] = None
    database_gateway_role: Annotated[
        str | None,
        Field(
            pattern=r"^[a-z_][a-z0-9_]{0,62}$",
            description="PostgreSQL role of the authorization gateway, granted each time "
            "migrations run exactly what the gateway uses (grants.GATEWAY_PRIVILEGES) and "
            "nothing on any other table; the gateway's DATABASE_URL role should be it or a "
            "member of it. Unset: no gateway role is managed.",
        ),
    ] = None
    kafka_bootstrap_servers: Annotated[str, Field(min_length=1)]
    db_pool_min_size: Annotated[int, Field(ge=1, le=64)] = 1
    db_pool_max_size: Annotated[int, Field(ge=1, le=256)] = 8
    db_timeout_seconds: Annotated[
        float,
        Field(
            gt=0,
            le=300,
            description="The one database timeout (issue 17): the longest wait for a pooled "
            "connection (handlers, the ledger engine, consumers), for the pool to open at "
            "start, and (whole seconds, at least 2) for connecting. Default 10.",
        ),
    ] = 10.0
    kafka_request_timeout_ms: Annotated[int, Field(ge=1000, le=300_000)] = 30_000
    # Kafka security: how every Kafka client of the product (relay, consumers, notifier,
    # topic creation, metrics) connects; events/kafka.py turns these into client options.
    kafka_security_protocol: Annotated[
        str,
        Field(
            pattern=r"^(PLAINTEXT|SSL|SASL_PLAINTEXT|SASL_SSL)$",
            description="PLAINTEXT (the default: no TLS, no login), SSL (TLS, optionally "
            "with a client certificate), SASL_PLAINTEXT (login without TLS) or SASL_SSL "
            "(login over TLS, what managed Kafka services require).",
        ),
    ] = "PLAINTEXT"
    kafka_sasl_mechanism: Annotated[
        str,
        Field(
            pattern=r"^(|PLAIN|SCRAM-SHA-256|SCRAM-SHA-512)$",
            description="SASL mechanism, required with a SASL_* protocol: SCRAM-SHA-512 "
            "(Strimzi's KafkaUser), SCRAM-SHA-256 or PLAIN (Confluent Cloud API keys; send "
            "it over SASL_SSL only, it carries the password as is). Default empty.",
        ),
    ] = ""
    kafka_sasl_username: Annotated[
        str,
        Field(max_length=1024, description="SASL user name; required with SASL_*."),
    ] = ""
    kafka_sasl_password: Annotated[
        pydantic.SecretStr,
        Field(
            repr=False,
            description="SASL password; set it or kafka_sasl_password_file, not both. "
            "Never logged.",
        ),
    ] = pydantic.SecretStr("")
    kafka_sasl_password_file: Annotated[
        str,
        Field(
            max_length=4096,
            description="Path of a file holding the SASL password (a mounted Secret key); "
            "read again by each new Kafka client, so a rotated Secret is used without a "
            "restart. A trailing newline is ignored.",
        ),
    ] = ""
    kafka_ssl_ca_file: Annotated[
        str,
        Field(
            max_length=4096,
            description="PEM file of the CA(s) that signed the brokers' certificates, for SSL "
            "and SASL_SSL; empty (the default) trusts the system's CAs. Broker host names "
            "are always checked against their certificates.",
        ),
    ] = ""
    kafka_ssl_cert_file: Annotated[
        str,
        Field(
            max_length=4096,
            description="PEM client certificate (chain) for mutual TLS; set together with "
            "kafka_ssl_key_file. Default empty: no client certificate.",
        ),
    ] = ""
    kafka_ssl_key_file: Annotated[
        str,
        Field(
            max_length=4096,
            description="Unencrypted PEM private key of kafka_ssl_cert_file.",
        ),
    ] = ""
    topic_partitions: Annotated[int, Field(ge=1, le=1024)] = 3
    relay_batch_size: Annotated[int, Field(ge=1, le=10_000)] = 5_000
    # The relay wakes on PostgreSQL NOTIFY at once; this is only its fallback scan interval.
    relay_idle_interval_ms: Annotated[int, Field(ge=10, le=60_000)] = 1000
    consumer_batch_size: Annotated[int, Field(ge=1, le=10_000)] = 5_000
    consumer_max_attempts: Annotated[int, Field(ge=1, le=100)] = 5
    card_refresh_interval_seconds: Annotated[float, Field(ge=1, le=3600)] = 10.0
    missing_card_retry_limit: Annotated[int, Field(ge=0, le=1000)] = 30
    # The posting queue (issue 14, app/posting_queue.py, docs/ledger.md "Posting queue").
    posting_workers: Annotated[
        int,
        Field(
            ge=1,
            le=64,
            description="Posting batches decided at once, each on one pooled connection "
            "(count). Postings of one card never run in two batches at once, so more workers "
            "only help many cards; each holds a connection for its batch, so it must be below "
            "FINTECH_DB_POOL_MAX_SIZE. Default 3.",
        ),
    ] = 3
    posting_batch_max: Annotated[
        int,
        Field(
            ge=1,
            le=500,
            description="Postings decided in one database transaction (count), each under its "
            "own savepoint with its own decision: one commit per batch instead of per posting. "
            "Larger batches hold their card locks longer. Default 20.",
        ),
    ] = 20
    posting_queue_max: Annotated[
        int,
        Field(
            ge=1,
            le=1_000_000,
            description="Postings waiting in the operator's queue (count); past it a posting's "
            "handler is retried a few seconds later instead of queueing, so a burst cannot grow "
            "the operator's memory without bound (about 2 KiB per waiting posting). "
            "Default 20000.",
        ),
    ] = 20_000
    health_port: Annotated[
        int,
        Field(
            ge=0,
            le=65535,
            description="TCP port of the operator's liveness probe /healthz on "
            "FINTECH_HEALTH_HOST; 0 turns it off; `run --liveness-port` wins over it. A port "
            "in use stops the operator at start naming it. Default 8080.",
        ),
    ] = 8080
    # Observability (issue 7): /metrics listens on FINTECH_HEALTH_HOST like the probes.
    metrics_port: Annotated[
        int,
        Field(
            ge=0,
            le=65535,
            description="TCP port of the Prometheus /metrics endpoint; 0 (the default) turns "
            "it and the outbox/lag collector off, so processes sharing a host never collide. "
            "The Helm chart sets 9102.",
        ),
    ] = 0
    metrics_collect_interval_seconds: Annotated[
        float,
        Field(
            ge=1,
            le=3600,
            description="How often the operator reads outbox backlog and consumer lag for "
            "/metrics; also the timeout of one such read. Default 15.",
        ),
    ] = 15.0
    metrics_consumer_groups_max: Annotated[
        int,
        Field(
            ge=0,
            le=1000,
            description="Most Kafka consumer groups whose lag is exported (in name order, "
            "only groups reading this installation's topics), bounding the label count; 0 "
            "turns lag collection off. Default 50.",
        ),
    ] = 50
    # Events, rewards and notifications (issue 5).
    topic_prefix: Annotated[
        str,
        Field(
            pattern=r"^[A-Za-z0-9._-]{0,64}$",
            description="Prepended to every topic name, so several environments (or test "
            "runs) can share one Kafka cluster; default empty.",
        ),
    ] = ""
    topic_replication_factor: Annotated[
        int,
        Field(ge=1, le=5, description="Replicas of each topic the product creates; default 1."),
    ] = 1
    relay_send_timeout_seconds: Annotated[
        float,
        Field(
            gt=0,
            le=300,
            description="Longest wait for Kafka to acknowledge one relay batch before the "
            "batch is rolled back and retried; default 30.",
        ),
    ] = 30.0
    relay_backoff_max_seconds: Annotated[
        float,
        Field(
            gt=0,
            le=300,
            description="Cap of the relay's exponential backoff while Kafka or PostgreSQL is "
            "down; default 10.",
        ),
    ] = 10.0
    notifier_refresh_interval_seconds: Annotated[
        float,
        Field(
            ge=1,
            le=300,
            description="How often the notifier re-reads Webhook resources and their Secrets "
            "(signing keys, endpoint ownership). A new Webhook does not wait for it: the notifier "
            "lists Webhooks again before routing any event newer than its last list. Default 10.",
        ),
    ] = 10.0
    notifier_clock_skew_seconds: Annotated[
        float,
        Field(
            ge=1,
            le=30,
            description="How long after an event's time a list of Webhooks must have started "
            "for the notifier to route the event with it: covers creationTimestamp's whole "
            "seconds, the API server's write and clock differences between the operator, the "
            "API server and the notifier. Every event is routed at the earliest this long "
            "after its time. Default 2.",
        ),
    ] = 2.0
    notifier_route_hold_max_seconds: Annotated[
        float,
        Field(
            ge=10,
            le=180,
            description="Longest the notifier holds events (routing nothing, committing no "
            "offset) while it cannot list Webhooks; past it, it routes them with the last list "
            "it has, logs a warning and counts them in "
            "fintech_notifier_routed_uncovered_total. Default 60.",
        ),
    ] = 60.0
    notifier_poll_interval_ms: Annotated[
        int,
        Field(
            ge=10,
            le=60_000,
            description="Longest sleep of an idle delivery worker when no notification wakes "
            "it; default 1000.",
        ),
    ] = 1000
    notifier_max_in_flight: Annotated[
        int,
        Field(
            ge=1,
            le=1000,
            description="Webhook HTTP requests in flight at once over all endpoints of one "
            "notifier process; default 64.",
        ),
    ] = 64
    webhook_status_interval_seconds: Annotated[
        float,
        Field(
            ge=1,
            le=3600,
            description="How often the operator copies delivery state into Webhook status "
            "(only changes are patched); default 10.",
        ),
    ] = 10.0
    webhook_log_retention_hours: Annotated[
        int,
        Field(
            ge=1,
            le=8760,
            description="Finished webhook deliveries (delivered or failed) and their attempts "
            "are deleted this many hours after they finished; default 336 (14 days).",
        ),
    ] = 336
    webhook_allowed_cidrs: Annotated[
        str,
        Field(
            max_length=WEBHOOK_ALLOWED_CIDRS_MAX_CHARS,
            pattern=r"^[0-9A-Fa-f:./, ]*$",
            description="Comma-separated CIDRs the notifier may deliver webhooks to although "
            "they are not public addresses (loopback, private, link-local, CGNAT, ...), for "
            "example 10.20.0.0/16 for an in-cluster receiver. Empty (the default) allows public "
            "addresses only, so a Webhook URL cannot reach cloud metadata, the cluster's "
            "Services or the notifier's own host. The local dev stack and the tests set "
            "127.0.0.0/8,::1/128.",
        ),
    ] = ""

    @pydantic.field_validator("webhook_allowed_cidrs")
    @classmethod
    def _cidrs(cls, value: str) -> str:
        """Each item must be a network address with its prefix (host bits zero); normalised."""
        items = [item for item in value.replace(",", " ").split() if item]
        if len(items) > WEBHOOK_ALLOWED_CIDRS_MAX_ITEMS:
            raise ValueError(f"at most {WEBHOOK_ALLOWED_CIDRS_MAX_ITEMS} CIDRs")
        return ",".join(str(ipaddress.ip_network(item, strict=True)) for item in items)

    # Reconciliation runs (issue 6).
    recon_workers_max: Annotated[
        int,
        Field(
            ge=1,
            le=16,
            description="ReconciliationRuns worked on at once, each in its own thread with its "
            "own database connection (outside the pool); others wait. Default 2.",
        ),
    ] = 2
    recon_records_max: Annotated[
        int,
        Field(
            ge=1,
            le=1_000_000_000,
            description="Most records one settlement source may hold; a larger source fails "
            "the run as SourceTooLarge. Default 10000000.",
        ),
    ] = 10_000_000
    recon_statement_timeout_seconds: Annotated[
        int,
        Field(
            ge=1,
            le=86_400,
            description="Longest single SQL statement of a run (loading, joining); default 1800.",
        ),
    ] = 1800
    recon_work_mem_mb: Annotated[
        int,
        Field(
            ge=4,
            le=4096,
            description="PostgreSQL work_mem of a run's transaction, in MiB: memory per sort "
            "or hash before it spills to disk. Default 64.",
        ),
    ] = 64
    recon_cluster_namespace: Annotated[
        str,
        Field(
            pattern=r"^([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)?$",
            description="The one namespace whose ReconciliationRuns may set spec.scope Cluster "
            "and so compare every namespace's money; grant create on reconciliationruns there "
            "only to those who may see all of it. Empty (the default): no run is cluster-wide, "
            "each compares only its own namespace.",
        ),
    ] = ""
    # Card numbers: the card processor's tokenizer (cards/http_tokenizer.py), or the
    # development one by explicit opt-in: the operator fails closed without either.
    tokenizer: Annotated[
        str,
        Field(
            pattern=r"^(|development)$",
            description="`development` opts in to the built-in development tokenizer (random "
            "last 4, no processor: never for production); empty (the default) needs "
            "FINTECH_TOKENIZER_URL. The operator refuses to start with neither, or with both.",
        ),
    ] = ""
    tokenizer_url: Annotated[
        str,
        Field(
            max_length=2048,
            description="URL the operator POSTs to for a new card's token and last 4 (the card "
            "processor's tokenization endpoint). Empty (the default): the operator refuses to "
            "start unless FINTECH_TOKENIZER=development. https is required, except http to a "
            "loopback host (127.0.0.1, ::1, localhost) for tests; no user:password@ in it.",
        ),
    ] = ""
    tokenizer_token_file: Annotated[
        str,
        Field(
            max_length=4096,
            description="Path of a file holding the processor's bearer credential (a mounted "
            "Secret key); required with FINTECH_TOKENIZER_URL. Read again on every request, so "
            "a rotated Secret is used without a restart. Surrounding whitespace is ignored.",
        ),
    ] = ""
    tokenizer_timeout_seconds: Annotated[
        float,
        Field(
            gt=0,
            le=60,
            description="Longest wait for one tokenization request, connecting included; a "
            "slower processor is treated as down and the issuance is retried with backoff "
            "(same idempotency key). Default 10.",
        ),
    ] = 10.0

    @pydantic.field_validator("tokenizer_url")
    @classmethod
    def _tokenizer_url(cls, value: str) -> str:
        """Empty, or an absolute https URL (http only to a loopback host), without credentials."""
        if not value:
            return value
        parts = urllib.parse.urlsplit(value)
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise ValueError("must be an absolute http(s) URL with a host, or empty")
        if parts.username is not None or parts.password is not None:
            raise ValueError("must not carry credentials; use FINTECH_TOKENIZER_TOKEN_FILE")
        if parts.fragment or any(c.isspace() for c in value):
            raise ValueError("must have no fragment and no whitespace")
        if parts.scheme == "http" and parts.hostname not in _LOOPBACK_HOSTS:
            raise ValueError("must use https (http is allowed only to a loopback host)")
        return value


_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})


class SettingsError(RuntimeError):
    """A setting is missing or out of bounds; the message names the variable."""


def check_operator(settings: Settings) -> None:
    """The operator's own cross-checks (other processes share the settings, not these)."""
    if settings.posting_workers >= settings.db_pool_max_size:
        raise SettingsError(
            f"{_env_name('posting_workers')} must be below {_env_name('db_pool_max_size')}: "
            "each posting worker holds a connection while its batch runs"
        )


def _env_name(field: str) -> str:
    # The two connection strings use the names every tool already knows.
    if field in ("database_url", "kafka_bootstrap_servers"):
        return field.upper()
    return ENV_PREFIX + field.upper()


def load(environ: dict[str, str] | None = None) -> Settings:
    """Build settings from the environment, failing with the variable's name."""
    source = os.environ if environ is None else environ
    values = {f: source[_env_name(f)] for f in Settings.model_fields if _env_name(f) in source}
    try:
        settings = Settings.model_validate(values)
    except pydantic.ValidationError as exc:
        problems = "; ".join(
            f"{_env_name(str(err['loc'][0]))}: {err['msg']}" for err in exc.errors()
        )
        # from None: pydantic's own text repeats each input value, and a value may be a secret.
        raise SettingsError(f"invalid settings: {problems}") from None
    if settings.db_pool_min_size > settings.db_pool_max_size:
        raise SettingsError(
            f"{_env_name('db_pool_min_size')} must not exceed {_env_name('db_pool_max_size')}"
        )
    if settings.notifier_route_hold_max_seconds <= settings.notifier_clock_skew_seconds:
        # Every fresh event waits the skew allowance before it is routed; a shorter hold would
        # route every one of them without the Webhook list that covers it.
        raise SettingsError(
            f"{_env_name('notifier_route_hold_max_seconds')} must exceed "
            f"{_env_name('notifier_clock_skew_seconds')}"
        )
    _check_kafka_security(settings)
    _check_tokenizer(settings)
    return settings


def _check_tokenizer(settings: Settings) -> None:
    """The processor's tokenizer needs its credential file, readable and not empty, at start."""
    url_var, file_var = _env_name("tokenizer_url"), _env_name("tokenizer_token_file")
    if settings.tokenizer and settings.tokenizer_url:
        raise SettingsError(
            f"{_env_name('tokenizer')}={settings.tokenizer} and {url_var} are both set; "
            f"set {url_var} for the card processor's tokenizer, or "
            f"{_env_name('tokenizer')}=development for the built-in one, not both"
        )
    if not settings.tokenizer_url:
        if settings.tokenizer_token_file:
            raise SettingsError(
                f"{file_var} is set but {url_var} is empty (the built-in tokenizer needs no "
                f"credential); set {url_var} to the card processor's tokenization URL"
            )
        return
    if not settings.tokenizer_token_file:
        raise SettingsError(
            f"{file_var} is required when {url_var} is set (the processor's bearer credential)"
        )
    _check_secret_file("tokenizer_token_file", settings.tokenizer_token_file)


_KAFKA_SASL_PROTOCOLS = ("SASL_PLAINTEXT", "SASL_SSL")
_KAFKA_TLS_PROTOCOLS = ("SSL", "SASL_SSL")


def _check_kafka_security(settings: Settings) -> None:
    """Refuse Kafka security settings that cannot work together, naming the variables.

    A setting that the chosen protocol would ignore is an error, not a no-op: a password
    given with PLAINTEXT means someone forgot the protocol, and connecting without the
    login they meant to use would only fail later, less clearly.
    """
    protocol = settings.kafka_security_protocol
    protocol_var = _env_name("kafka_security_protocol")
    sasl = {
        "kafka_sasl_mechanism": settings.kafka_sasl_mechanism,
        "kafka_sasl_username": settings.kafka_sasl_username,
        "kafka_sasl_password": settings.kafka_sasl_password.get_secret_value(),
        "kafka_sasl_password_file": settings.kafka_sasl_password_file,
    }
    tls = {
        "kafka_ssl_ca_file": settings.kafka_ssl_ca_file,
        "kafka_ssl_cert_file": settings.kafka_ssl_cert_file,
        "kafka_ssl_key_file": settings.kafka_ssl_key_file,
    }
    if protocol in _KAFKA_SASL_PROTOCOLS:
        _check_kafka_sasl(settings, protocol, protocol_var)
    else:
        for field, value in sasl.items():
            if value:
                raise SettingsError(
                    f"{_env_name(field)} is set but {protocol_var} is {protocol}, which sends "
                    "no login; set it to SASL_PLAINTEXT or SASL_SSL"
                )
    if protocol not in _KAFKA_TLS_PROTOCOLS:
        for field, value in tls.items():
            if value:
                raise SettingsError(
                    f"{_env_name(field)} is set but {protocol_var} is {protocol}, which does "
                    "not use TLS; set it to SSL or SASL_SSL"
                )
    if bool(settings.kafka_ssl_cert_file) != bool(settings.kafka_ssl_key_file):
        raise SettingsError(
            f"{_env_name('kafka_ssl_cert_file')} and {_env_name('kafka_ssl_key_file')} "
            "go together: set both for mutual TLS, or neither"
        )
    for field, path in tls.items():
        if path:
            _check_readable_file(field, path)


def _check_kafka_sasl(settings: Settings, protocol: str, protocol_var: str) -> None:
    if not settings.kafka_sasl_mechanism:
        raise SettingsError(
            f"{_env_name('kafka_sasl_mechanism')} is required when {protocol_var} is "
            f"{protocol}: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512"
        )
    if not settings.kafka_sasl_username:
        raise SettingsError(
            f"{_env_name('kafka_sasl_username')} is required when {protocol_var} is {protocol}"
        )
    password_var = _env_name("kafka_sasl_password")
    file_var = _env_name("kafka_sasl_password_file")
    has_password = bool(settings.kafka_sasl_password.get_secret_value())
    if has_password == bool(settings.kafka_sasl_password_file):
        raise SettingsError(
            f"set exactly one of {password_var} and {file_var} when {protocol_var} is "
            f"{protocol} (a {settings.kafka_sasl_mechanism} login needs a password)"
        )
    if settings.kafka_sasl_password_file:
        _check_secret_file("kafka_sasl_password_file", settings.kafka_sasl_password_file)


def _check_secret_file(field: str, path: str) -> None:
    """A mounted Secret key must exist and hold something, checked at start as on each use."""
    _check_readable_file(field, path)
    try:
        secretfile.read(path, _env_name(field))
    except secretfile.SecretFileError as exc:
        raise SettingsError(str(exc)) from None


def _check_readable_file(field: str, path: str) -> None:
    """Fail at start-up, naming the variable, when a mounted file is missing or unreadable."""
    if not os.path.isfile(path):
        raise SettingsError(f"{_env_name(field)}: no such file: {path}")
    try:
        with open(path, "rb") as handle:
            handle.read(1)
    except OSError as exc:
        raise SettingsError(f"{_env_name(field)}: cannot read {path}: {exc.strerror}") from exc
