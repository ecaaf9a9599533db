"""ReconciliationRun: one Job-like comparison of a settlement file with the ledger, plus checks.

A run is applied once and never changes (its spec is immutable; a new run is a new object). The
operator reads the source, compares it with the ledger's postings by reference, runs the
internal checks (trial balance, rewards, events), stores every exception and reports the counts
in ``status.summary``. ``fintech-operator recon report RUN`` lists or exports the exceptions.
"""

from __future__ import annotations

import enum
import json
from typing import Annotated, Any, Final

import pydantic

from fintech_operator.api import common

INLINE_RECORDS_MAX: Final = 1000
RECORD_REFERENCE_MAX_LENGTH: Final = 512
URL_MAX_LENGTH: Final = 2048
TIME_TOLERANCE_SECONDS_MAX: Final = 366 * 86_400
EVENT_LAG_SECONDS_MAX: Final = 7 * 86_400
HTTP_TIMEOUT_SECONDS_MAX: Final = 600
HTTP_ATTEMPTS_MAX: Final = 10
ATTEMPT_MAX: Final = 2**31 - 1


class ReconciliationPhase(enum.StrEnum):
    """Lifecycle of a run, as for a Job: it runs once and ends Succeeded or Failed."""

    PENDING = "Pending"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


class ReconciliationReason(enum.StrEnum):
    """Why a run Failed (``status.reason``), and the reasons of its conditions."""

    INVALID_SPEC = "InvalidSpec"
    CLUSTER_SCOPE_NOT_ALLOWED = "ClusterScopeNotAllowed"
    SOURCE_NOT_FOUND = "SourceNotFound"
    CREDENTIALS_NOT_FOUND = "CredentialsNotFound"
    SOURCE_UNREACHABLE = "SourceUnreachable"
    SOURCE_MALFORMED = "SourceMalformed"
    SOURCE_TOO_LARGE = "SourceTooLarge"
    FAILED = "Failed"  # a failure that named no reason of its own
    # Reasons of conditions only
    PENDING = "Pending"
    RUNNING = "Running"
    COMPLETED = "Completed"
    NOT_RECONCILED = "NotReconciled"
    ALL_AGREED = "AllAgreed"
    EXCEPTIONS_FOUND = "ExceptionsFound"


class ReconciliationEvent(enum.StrEnum):
    """Reasons of the Events a run posts (``kubectl describe``)."""

    STARTED = "Started"
    SUCCEEDED = "Succeeded"
    EXCEPTIONS_FOUND = "ExceptionsFound"  # a warning, with the command that lists them
    FAILED = "Failed"  # a warning, with the reason and message


class SourceFormat(enum.StrEnum):
    CSV = "csv"
    JSON = "json"


class CheckName(enum.StrEnum):
    """The checks a run can perform."""

    SETTLEMENT = "Settlement"
    TRIAL_BALANCE = "TrialBalance"
    REWARDS = "Rewards"
    EVENTS = "Events"


class RunScope(enum.StrEnum):
    """Whose money a run compares (DESIGN.md invariant 10)."""

    NAMESPACE = "Namespace"
    CLUSTER = "Cluster"


class CheckResult(enum.StrEnum):
    PASSED = "Passed"
    FAILED = "Failed"
    SKIPPED = "Skipped"


class SettlementRecord(common.SpecModel):
    """One external settlement record written inline."""

    reference: str = pydantic.Field(
        min_length=1,
        max_length=RECORD_REFERENCE_MAX_LENGTH,
        description="External identifier of the transaction; matched with Posting.spec.reference.",
    )
    amount_minor: common.SignedAmountMinor = pydantic.Field(
        description="Settled amount in minor units (1250 = 12.50); negative for refunds."
    )
    currency: common.CurrencyCode = pydantic.Field(
        description="ISO 4217 code of the amount, three uppercase letters."
    )
    occurred_at: common.Timestamp = pydantic.Field(
        description="When the transaction happened (RFC 3339 with an offset)."
    )


class KeyReference(common.SpecModel):
    """A key of a ConfigMap or Secret in the run's namespace."""

    name: common.ObjectName = pydantic.Field(description="Name of the object.")
    key: common.KeyName = pydantic.Field(
        description="Key whose value is the settlement file.",
    )


class SecretReference(common.SpecModel):
    name: common.ObjectName = pydantic.Field(description="Name of a Secret in the run's namespace.")


class HttpSource(common.SpecModel):
    """A settlement file fetched over HTTP(S) and streamed, never held whole in memory."""

    url: Annotated[
        str,
        common.Expected(
            f"an http:// or https:// URL of up to {URL_MAX_LENGTH} characters without spaces, "
            "such as https://files.example.com/settlement.csv"
        ),
    ] = pydantic.Field(
        pattern=r"^https?://[^\s]+$",
        min_length=8,
        max_length=URL_MAX_LENGTH,
        description="http:// or https:// address of the file.",
    )
    credentials_secret_ref: SecretReference | None = pydantic.Field(
        default=None,
        description=(
            "Secret with the credentials: key `token` (sent as a Bearer token) or keys "
            "`username` and `password` (HTTP Basic). Absent means no credentials."
        ),
    )
    timeout_seconds: pydantic.StrictInt = pydantic.Field(
        default=30,
        ge=1,
        le=HTTP_TIMEOUT_SECONDS_MAX,
        description=(
            "Longest wait for connecting and for each read, in seconds "
            f"(1 to {HTTP_TIMEOUT_SECONDS_MAX}); default 30."
        ),
    )
    attempts: pydantic.StrictInt = pydantic.Field(
        default=3,
        ge=1,
        le=HTTP_ATTEMPTS_MAX,
        description=(
            "Tries before the run fails as SourceUnreachable when the server cannot be "
            "reached or answers 5xx (1 to 10); default 3, one second apart, then two."
        ),
    )


_ONE_SOURCE = (
    "[has(self.inline), has(self.configMapKeyRef), has(self.secretKeyRef), has(self.http)]"
    ".filter(x, x).size() == 1",
    "source needs exactly one of inline, configMapKeyRef, secretKeyRef or http",
)


class Source(common.SpecModel):
    """Where the external settlement records come from: exactly one of the fields."""

    model_config = pydantic.ConfigDict(json_schema_extra=common.cel_rules(_ONE_SOURCE))

    inline: list[SettlementRecord] | None = pydantic.Field(
        default=None,
        max_length=INLINE_RECORDS_MAX,
        description=f"Records written in the run itself, up to {INLINE_RECORDS_MAX}.",
    )
    config_map_key_ref: KeyReference | None = pydantic.Field(
        default=None, description="A ConfigMap key holding the file (data or binaryData)."
    )
    secret_key_ref: KeyReference | None = pydantic.Field(
        default=None, description="A Secret key holding the file."
    )
    http: HttpSource | None = pydantic.Field(
        default=None, description="A URL the file is fetched from, with httpx."
    )

    @pydantic.model_validator(mode="after")
    def _exactly_one(self) -> Source:
        chosen = [self.inline, self.config_map_key_ref, self.secret_key_ref, self.http]
        if sum(value is not None for value in chosen) != 1:
            raise ValueError(_ONE_SOURCE[1])
        return self


_CEL_RFC3339: Final = json.dumps(common.RFC3339_PATTERN)


class Window(common.SpecModel):
    """The ledger period compared, half-open: start <= occurredAt < end."""

    model_config = pydantic.ConfigDict(
        json_schema_extra=common.cel_rules(
            (
                # The times are checked as strings (so a bad one is refused with words, not
                # a type error), so each is compared only once its own rule passes.
                f"!self.start.matches({_CEL_RFC3339}) || !self.end.matches({_CEL_RFC3339}) "
                "|| timestamp(self.start) < timestamp(self.end)",
                "window.start must be before window.end",
            )
        )
    )

    start: common.Timestamp = pydantic.Field(description="First instant included (RFC 3339).")
    end: common.Timestamp = pydantic.Field(description="First instant excluded (RFC 3339).")

    @pydantic.model_validator(mode="after")
    def _ordered(self) -> Window:
        if not self.start < self.end:
            raise ValueError("window.start must be before window.end")
        return self


class Matching(common.SpecModel):
    """How close a record must be to the ledger to match."""

    amount_tolerance_minor: pydantic.StrictInt = pydantic.Field(
        default=0,
        ge=0,
        le=common.AMOUNT_MINOR_MAX,
        description=(
            "Largest difference between a record's amount and the ledger's, in minor units, "
            "still counted as a match (reported as WithinTolerance); default 0 (exact)."
        ),
    )
    time_tolerance_seconds: pydantic.StrictInt = pydantic.Field(
        default=86_400,
        ge=0,
        le=TIME_TOLERANCE_SECONDS_MAX,
        description=(
            "Largest distance in seconds between a record's occurredAt and its postings' "
            "occurredAt; default 86400 (a day). Also widens the window when looking for "
            "postings of the file's references."
        ),
    )


_ALL_CHECKS: Final = tuple(CheckName)
_NEEDS_SOURCE = (
    "has(self.source) || (has(self.checks) && !('Settlement' in self.checks))",
    "source is required when the Settlement check runs",
)


class ReconciliationRunTemplate(common.SpecModel):
    """What a run does; a ReconciliationSchedule stamps runs out of this."""

    model_config = pydantic.ConfigDict(json_schema_extra=common.cel_rules(_NEEDS_SOURCE))

    source: Source | None = pydantic.Field(
        default=None,
        description="The external settlement records; required when Settlement is checked.",
    )
    format: SourceFormat = pydantic.Field(
        default=SourceFormat.CSV,
        description=(
            "csv (a header with at least reference, amount, currency, occurredAt) or json "
            "(JSON Lines, or one JSON array up to 1 MiB). Ignored for inline records."
        ),
    )
    matching: Matching = pydantic.Field(
        default_factory=Matching, description="Tolerances of the settlement check."
    )
    checks: list[CheckName] = pydantic.Field(
        default_factory=lambda: list(_ALL_CHECKS),
        min_length=1,
        max_length=len(_ALL_CHECKS),
        description=(
            "Checks to run: Settlement (records against postings), TrialBalance (journals and "
            "accounts balance), Rewards (points equal what postings imply, card by card), "
            "Events (nothing stuck in the outbox or unapplied). Default: all four."
        ),
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    event_lag_seconds_max: pydantic.StrictInt = pydantic.Field(
        default=300,
        ge=1,
        le=EVENT_LAG_SECONDS_MAX,
        description=(
            "Events check: an event unpublished this many seconds after it was written, or "
            "published this long without being applied by the rewards consumer, is an "
            "exception. Default 300."
        ),
    )
    dry_run: bool = pydantic.Field(
        default=False,
        description=(
            "Run every check and report the counts, but store no exceptions (so "
            "`recon report` shows none). Default false."
        ),
    )
    scope: RunScope = pydantic.Field(
        default=RunScope.NAMESPACE,
        description=(
            "Namespace (the default): compare only this namespace's postings, accounts, points "
            "and events. Cluster: the whole ledger, every namespace; allowed only in the one "
            "namespace the operator's administrator names (setting reconClusterNamespace), so "
            "RBAC on that namespace decides who may run one. Anywhere else the run fails with "
            "reason ClusterScopeNotAllowed."
        ),
    )

    @pydantic.field_validator("checks")
    @classmethod
    def _unique_checks(cls, value: list[CheckName]) -> list[CheckName]:
        if len(set(value)) != len(value):
            raise ValueError("checks must not name a check twice")
        return value

    @pydantic.model_validator(mode="after")
    def _source_when_settlement(self) -> ReconciliationRunTemplate:
        if self.source is None and CheckName.SETTLEMENT in self.checks:
            raise ValueError(_NEEDS_SOURCE[1])
        return self


class ReconciliationRunSpec(ReconciliationRunTemplate):
    """Desired run. The whole spec is immutable: a new run is a new object."""

    model_config = pydantic.ConfigDict(
        json_schema_extra=common.cel_rules(
            ("self == oldSelf", "spec is immutable: a run happens once; create a new run"),
            _NEEDS_SOURCE,
        )
    )

    window: Window | None = pydantic.Field(
        default=None,
        description=(
            "Ledger period compared (postings by occurredAt). Absent means the whole ledger."
        ),
    )


class CheckSummary(common.StatusModel):
    result: CheckResult = pydantic.Field(description="Passed, Failed or Skipped.")
    exceptions: common.Count = pydantic.Field(description="Exceptions this check found.")


class ChecksSummary(common.StatusModel):
    settlement: CheckSummary | None = pydantic.Field(default=None, description="Settlement.")
    trial_balance: CheckSummary | None = pydantic.Field(default=None, description="TrialBalance.")
    rewards: CheckSummary | None = pydantic.Field(default=None, description="Rewards.")
    events: CheckSummary | None = pydantic.Field(default=None, description="Events.")


class Summary(common.StatusModel):
    """Counts of a finished run; each exception is listed by `fintech-operator recon report`."""

    records_read: common.Count = pydantic.Field(description="Records read from the source.")
    ledger_references: common.Count = pydantic.Field(
        description="Distinct references of settlement postings in the window."
    )
    matched: common.Count = pydantic.Field(description="References that matched.")
    matched_within_tolerance: common.Count = pydantic.Field(
        description="Matches whose amounts differ within the amount tolerance."
    )
    partial_captures: common.Count = pydantic.Field(
        description="Matches of one record with several postings of the same reference."
    )
    amount_mismatches: common.Count = pydantic.Field(description="Amounts beyond tolerance.")
    currency_mismatches: common.Count = pydantic.Field(description="Different currencies.")
    time_mismatches: common.Count = pydantic.Field(description="Times beyond tolerance.")
    missing_in_ledger: common.Count = pydantic.Field(description="Records with no posting.")
    missing_in_source: common.Count = pydantic.Field(description="Postings with no record.")
    duplicates: common.Count = pydantic.Field(description="Repeated records of a reference.")
    exceptions: common.Count = pydantic.Field(description="All exceptions of all checks.")
    checks: ChecksSummary = pydantic.Field(description="Result of each check.")


class ReconciliationRunStatus(common.StatusModel):
    """Observed state of the run, written by the operator only."""

    phase: ReconciliationPhase | None = pydantic.Field(
        default=None,
        description="Pending, Running, then Succeeded (it ran; see the Reconciled condition for "
        "whether everything agreed) or Failed (it could not run; see reason).",
    )
    started_at: common.Timestamp | None = pydantic.Field(
        default=None, description="When the run started (RFC 3339)."
    )
    completed_at: common.Timestamp | None = pydantic.Field(
        default=None, description="When the run finished (RFC 3339)."
    )
    attempt: pydantic.StrictInt | None = pydantic.Field(
        default=None,
        ge=1,
        le=ATTEMPT_MAX,
        description="How many times the work started; more than 1 after an operator restart.",
    )
    summary: Summary | None = pydantic.Field(default=None, description="Counts, once Succeeded.")
    reason: common.Reason | None = pydantic.Field(
        default=None,
        description="Why the run Failed: InvalidSpec, ClusterScopeNotAllowed, SourceNotFound, "
        "CredentialsNotFound, SourceUnreachable, SourceMalformed or SourceTooLarge.",
    )
    message: common.Message | None = common.message_field("Human-readable details of the outcome.")
    conditions: list[common.Condition] = common.conditions_field(
        "Ready (finished) and Reconciled (no exceptions found)."
    )
    observed_generation: common.Generation | None = common.observed_generation_field()
    kopf: dict[str, Any] | None = common.kopf_status_field()


KIND_INFO: Final = common.KindInfo(
    kind="ReconciliationRun",
    plural="reconciliationruns",
    singular="reconciliationrun",
    short_names=("recon", "rrun"),
    description=(
        "ReconciliationRun compares external settlement records (inline, a ConfigMap or "
        "Secret key, or a URL) with the ledger's postings by reference and checks that the "
        "ledger, rewards and events agree. Like a Job it runs once; its spec is immutable."
    ),
    spec_model=ReconciliationRunSpec,
    status_model=ReconciliationRunStatus,
    printer_columns=(
        common.PrinterColumn("Phase", "string", ".status.phase", "Lifecycle phase."),
        common.reason_column("Why the run Failed."),
        common.PrinterColumn(
            "Records", "integer", ".status.summary.recordsRead", "Records read from the source."
        ),
        common.PrinterColumn(
            "Matched", "integer", ".status.summary.matched", "References that matched."
        ),
        common.PrinterColumn(
            "Exceptions", "integer", ".status.summary.exceptions", "Exceptions of all checks."
        ),
        common.PrinterColumn(
            "Reconciled",
            "string",
            '.status.conditions[?(@.type=="Reconciled")].status',
            "True when no check found an exception.",
        ),
        common.age_column(),
    ),
)
