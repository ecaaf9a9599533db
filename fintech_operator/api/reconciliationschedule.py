"""ReconciliationSchedule: creates ReconciliationRuns on a cron schedule and prunes old ones.

Finance reconciles daily. A schedule stamps a run out of its ``template`` at each cron time,
with the window ending at that time, names it ``<schedule>-<minutes since epoch>`` (so a tick
retried after a restart creates it once), owns it (deleting the schedule deletes its runs) and
keeps only the newest finished runs, as a CronJob does with Jobs.
"""

from __future__ import annotations

import enum
from typing import Annotated, Any, Final

import pydantic

from fintech_operator.api import common, cron, reconciliationrun

SCHEDULE_MAX_LENGTH: Final = 128
WINDOW_SECONDS_MAX: Final = 366 * 86_400
DEADLINE_SECONDS_MAX: Final = 7 * 86_400
HISTORY_LIMIT_MAX: Final = 100


class SchedulePhase(enum.StrEnum):
    ACTIVE = "Active"
    SUSPENDED = "Suspended"
    INVALID = "Invalid"


class ScheduleEvent(enum.StrEnum):
    """Reasons of the Normal Events a schedule posts (an invalid one warns with its reason)."""

    RUN_CREATED = "RunCreated"
    RUNS_DELETED = "RunsDeleted"


class ScheduleReason(enum.StrEnum):
    """Why a schedule is Invalid (``status.reason``)."""

    INVALID_SPEC = "InvalidSpec"


class ReconciliationScheduleSpec(common.SpecModel):
    """When to run, over which period, and what each run does."""

    schedule: Annotated[
        str,
        common.Expected(
            "a cron expression of five fields (minute hour day-of-month month day-of-week) "
            "such as '0 2 * * *', or @hourly, @daily, @weekly or @monthly"
        ),
    ] = pydantic.Field(
        min_length=1,
        max_length=SCHEDULE_MAX_LENGTH,
        pattern=r"^(@[a-z]+|\S+( +\S+){4})$",
        description=(
            "Cron expression in UTC: minute hour day-of-month month day-of-week, e.g. "
            "'0 2 * * *' for 02:00 every day, or @daily, @hourly, @weekly, @monthly."
        ),
    )
    suspend: bool = pydantic.Field(
        default=False, description="True stops creating runs; existing runs are kept."
    )
    window_seconds: pydantic.StrictInt = pydantic.Field(
        default=86_400,
        ge=60,
        le=WINDOW_SECONDS_MAX,
        description=(
            "Length of each run's window, ending at the scheduled time, in seconds; default "
            "86400: a run at 02:00 compares the 24 hours before it."
        ),
    )
    starting_deadline_seconds: pydantic.StrictInt = pydantic.Field(
        default=3600,
        ge=10,
        le=DEADLINE_SECONDS_MAX,
        description=(
            "A scheduled time missed by more than this many seconds (the operator was down) "
            "is skipped; only the latest missed time runs. Default 3600."
        ),
    )
    successful_runs_history_limit: pydantic.StrictInt = pydantic.Field(
        default=3,
        ge=0,
        le=HISTORY_LIMIT_MAX,
        description="Succeeded runs to keep (with their exceptions); older ones are deleted. "
        "Default 3.",
    )
    failed_runs_history_limit: pydantic.StrictInt = pydantic.Field(
        default=1,
        ge=0,
        le=HISTORY_LIMIT_MAX,
        description="Failed runs to keep; older ones are deleted. Default 1.",
    )
    template: reconciliationrun.ReconciliationRunTemplate = pydantic.Field(
        description="Spec of each run, without window (the schedule sets it)."
    )

    @pydantic.field_validator("schedule")
    @classmethod
    def _valid_cron(cls, value: str) -> str:
        cron.parse(value)  # CronError is a ValueError: pydantic reports it on the field.
        return value


class ReconciliationScheduleStatus(common.StatusModel):
    """What the operator observed: the schedule's phase and the runs it created."""

    phase: SchedulePhase | None = pydantic.Field(
        default=None, description="Active, Suspended, or Invalid (see the Ready condition)."
    )
    last_schedule_time: common.Timestamp | None = pydantic.Field(
        default=None, description="Scheduled time of the newest run created (RFC 3339)."
    )
    last_run_name: common.ObjectName | None = pydantic.Field(
        default=None, description="Name of the newest run created."
    )
    next_schedule_time: common.Timestamp | None = pydantic.Field(
        default=None, description="Next time a run will be created (RFC 3339)."
    )
    reason: common.Reason | None = pydantic.Field(
        default=None, description="CamelCase cause of an Invalid phase: InvalidSpec."
    )
    message: common.Message | None = common.message_field()
    conditions: list[common.Condition] = common.conditions_field(
        "Ready: the schedule is valid and being followed."
    )
    observed_generation: common.Generation | None = common.observed_generation_field()
    kopf: dict[str, Any] | None = common.kopf_status_field()


KIND_INFO: Final = common.KindInfo(
    kind="ReconciliationSchedule",
    plural="reconciliationschedules",
    singular="reconciliationschedule",
    short_names=("rsched",),
    description=(
        "ReconciliationSchedule creates a ReconciliationRun from its template at each time "
        "of a cron schedule (UTC), with the window ending at that time, and deletes finished "
        "runs beyond its history limits."
    ),
    spec_model=ReconciliationScheduleSpec,
    status_model=ReconciliationScheduleStatus,
    printer_columns=(
        common.PrinterColumn("Schedule", "string", ".spec.schedule", "Cron expression (UTC)."),
        common.PrinterColumn("Suspend", "boolean", ".spec.suspend", "Run creation paused."),
        common.reason_column("Why the schedule is Invalid."),
        common.PrinterColumn("Last", "date", ".status.lastScheduleTime", "Time of the newest run."),
        common.PrinterColumn("Next", "string", ".status.nextScheduleTime", "Next run time."),
        common.age_column(),
    ),
)
