"""TickSchedule: create the ReconciliationRun a schedule has due, and prune old runs.

Like a CronJob: each tick creates at most the latest run that fell due since the last one
(runs missed for longer than ``startingDeadlineSeconds`` are skipped), named after the
schedule and its time so that a retried tick creates nothing twice, and deletes finished runs
beyond the history limits.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Mapping, Sequence
from typing import Any, Final, Protocol

import pydantic

from fintech_operator import api
from fintech_operator.app.outcomes import Rejected
from fintech_operator.recon import schedule

SCHEDULE_LABEL: Final = f"{api.GROUP}/schedule"


@dataclasses.dataclass(frozen=True)
class TickSchedule:
    """The command: ReconciliationSchedule ``namespace/name`` (uid ``uid``) at time ``now``.

    ``last_scheduled_at`` is the time of the newest run it created (None: none yet, then its
    ``created_at`` counts).
    """

    namespace: str
    name: str
    uid: str
    spec: Mapping[str, Any]
    now: datetime.datetime
    last_scheduled_at: datetime.datetime | None = None
    created_at: datetime.datetime | None = None


class Runs(Protocol):
    """The schedule's ReconciliationRuns."""

    async def create(self, namespace: str, run: Mapping[str, Any]) -> bool:
        """Create ``run``; False when it exists already (a retried tick)."""
        ...

    async def prune(
        self, owner: TickSchedule, succeeded_max: int, failed_max: int
    ) -> Sequence[str]:
        """Delete the owner's finished runs beyond the limits (and their rows); their names."""
        ...


@dataclasses.dataclass(frozen=True)
class Ticked:
    """What the tick did, and the schedule's state after it."""

    phase: api.SchedulePhase
    message: str
    next_at: datetime.datetime | None
    due_at: datetime.datetime | None = None  # the time of the run this tick asked for
    run_name: str | None = None
    created: bool = False  # False also when the run existed already
    pruned: tuple[str, ...] = ()


Outcome = Ticked | Rejected[api.ScheduleReason]


async def tick_schedule(command: TickSchedule, runs: Runs) -> Outcome:
    """Create the run that is due (if any), prune old runs, say what comes next."""
    try:
        wanted = api.ReconciliationScheduleSpec.model_validate(dict(command.spec))
    except pydantic.ValidationError as exc:
        return Rejected(api.ScheduleReason.INVALID_SPEC, api.format_validation_error(exc))
    cron = schedule.parse(wanted.schedule)
    deadline = command.now - datetime.timedelta(seconds=wanted.starting_deadline_seconds)
    last = command.last_scheduled_at or command.created_at
    after = max(last or deadline, deadline)
    due = None if wanted.suspend else schedule.latest_due(cron, after, command.now)
    following = schedule.next_after(cron, command.now)
    ticked = Ticked(
        phase=api.SchedulePhase.SUSPENDED if wanted.suspend else api.SchedulePhase.ACTIVE,
        message=f"{wanted.schedule} (UTC)" + (", suspended" if wanted.suspend else ""),
        next_at=None if wanted.suspend else following,
    )
    if due is not None:
        name = schedule.run_name(command.name, due)
        run = run_body(command, wanted.template, name, due, wanted.window_seconds)
        created = await runs.create(command.namespace, run)
        ticked = dataclasses.replace(ticked, due_at=due, run_name=name, created=created)
    pruned = await runs.prune(
        command, wanted.successful_runs_history_limit, wanted.failed_runs_history_limit
    )
    return dataclasses.replace(ticked, pruned=tuple(pruned))


def run_body(
    owner: TickSchedule,
    template: api.ReconciliationRunTemplate,
    name: str,
    scheduled_at: datetime.datetime,
    window_seconds: int,
) -> dict[str, Any]:
    """The ReconciliationRun a schedule creates for one time (pure)."""
    start = scheduled_at - datetime.timedelta(seconds=window_seconds)
    window = {"start": api.format_timestamp(start), "end": api.format_timestamp(scheduled_at)}
    return {
        "apiVersion": api.API_VERSION,
        "kind": "ReconciliationRun",
        "metadata": {
            "name": name,
            "namespace": owner.namespace,
            "labels": {SCHEDULE_LABEL: owner.name},
            "ownerReferences": [
                {
                    "apiVersion": api.API_VERSION,
                    "kind": "ReconciliationSchedule",
                    "name": owner.name,
                    "uid": owner.uid,
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": {**api.to_api(template), "window": window},
    }
