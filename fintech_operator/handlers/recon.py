"""ReconciliationRun and ReconciliationSchedule: decode, call the use case, render.

A run is handled in two steps so that users see where it is: ``start`` sets ``Pending`` (a
status patch of its own, at once); ``execute`` calls :mod:`app.reconciliation`, which waits
for one of the ``FINTECH_RECON_WORKERS_MAX`` worker slots, shows ``Running`` as it takes one
(a status patch of its own, since kopf's patch would only land when the handler ends), does
the work in a worker thread and returns the stored outcome, which is rendered into status.
Both are idempotent: the ``recon_runs`` row decides, so an operator restarted mid-run counts a
new attempt and starts the work again from scratch, and one restarted after the work
committed only reports it. A schedule's timer calls :mod:`app.reconciliation_schedule`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import threading
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

import kopf
import kubernetes
from kubernetes.client.exceptions import ApiException

from fintech_operator import api
from fintech_operator.app import reconciliation as use_case
from fintech_operator.app import reconciliation_schedule as schedule_case
from fintech_operator.app.outcomes import Rejected, Retry
from fintech_operator.handlers import report, wiring
from fintech_operator.handlers.context import OperatorMemo
from fintech_operator.recon import model, schedule, sources, store

if TYPE_CHECKING:
    from fintech_operator import config

RUNS: Final = "reconciliationruns"
SCHEDULES: Final = "reconciliationschedules"
FINAL_PHASES: Final = frozenset({api.ReconciliationPhase.SUCCEEDED, api.ReconciliationPhase.FAILED})
STARTED_PHASES: Final = frozenset(
    {api.ReconciliationPhase.PENDING, api.ReconciliationPhase.RUNNING, *FINAL_PHASES}
)
RECONCILED: Final = api.ConditionType.RECONCILED
SCHEDULE_TICK_SECONDS: Final = 15.0
KUBE_TIMEOUT_SECONDS: Final = 30
RunEvent: Final = api.reconciliationrun.ReconciliationEvent
ScheduleEvent: Final = api.reconciliationschedule.ScheduleEvent


def _normal(body: kopf.Body, reason: str, message: str) -> None:
    """A Normal Event. kopf.info is filtered by the operator's posting level (WARNING, to keep
    kopf's own chatter out of Events); these are decisions users want to see."""
    kopf.event(body, type="Normal", reason=reason, message=message[:1024])


# Set when the operator stops: running workers roll back at their next checkpoint.
_STOPPING = threading.Event()


async def _recon_startup(memo: OperatorMemo, **_: Any) -> None:
    app = memo.settings  # loaded once, by cli
    memo.recon_slots = asyncio.Semaphore(app.recon.workers_max)
    memo.recon_limits = store.Limits(
        statement_timeout_seconds=app.recon.statement_timeout_seconds,
        work_mem_mb=app.recon.work_mem_mb,
        connect_timeout_seconds=max(1, int(app.database.timeout_seconds)),
    )
    memo.recon_source_limits = sources.Limits(records_max=app.recon.records_max)
    memo.recon_dsn = app.database.url
    memo.recon_cluster_namespace = app.recon.cluster_namespace


async def _recon_cleanup(**_: Any) -> None:
    _STOPPING.set()


def _iso(moment: datetime.datetime | None) -> str | None:
    if moment is None:
        return None
    return api.format_timestamp(moment)


def _conditions(
    body: kopf.Body,
    ready: tuple[bool, str, str],
    reconciled: tuple[api.ConditionStatus, str, str] | None = None,
) -> list[api.Condition]:
    """Ready, and Reconciled when given, over the object's conditions."""
    generation = report.generation_of(body)
    conditions = report.conditions(body.status, api.READY, *ready, generation)
    if reconciled is None:
        return conditions
    status, reason, message = reconciled
    new = api.Condition(
        type=RECONCILED,
        status=status,
        reason=reason,
        message=message[:1024],
        last_transition_time=report.now(),
        observed_generation=generation,
    )
    return api.set_condition(conditions, new)


async def start(body: kopf.Body, spec: kopf.Spec, namespace: str | None, **_: Any) -> None:
    """Show ``Pending`` until a worker takes the run (a spec that cannot run is refused by
    :func:`execute`, which runs next in the same cycle)."""
    if body.status.get("phase") in STARTED_PHASES:
        return
    if isinstance(use_case.parse_spec(spec), Rejected):
        return
    status = api.ReconciliationRunStatus(
        phase=api.ReconciliationPhase.PENDING,
        conditions=_conditions(
            body, (False, api.ReconciliationReason.PENDING, "waiting for a reconciliation worker")
        ),
        observed_generation=report.generation_of(body),
    )
    # A patch of its own, at once: kopf runs all of a run's handlers in one cycle and applies
    # their patches when the last returns, which for ``execute`` is when the run is over.
    await _patch_status(report.namespace_of(namespace), str(body.metadata.name), status)


async def _patch_status(namespace: str, name: str, status: api.ReconciliationRunStatus) -> None:
    patch = {"status": report.status_fields(status)}
    await use_case.in_worker(
        lambda: _custom().patch_namespaced_custom_object_status(
            api.GROUP,
            api.VERSION,
            namespace,
            RUNS,
            name,
            patch,
            _content_type="application/merge-patch+json",
            _request_timeout=KUBE_TIMEOUT_SECONDS,
        ),
        f"recon-status-{name}",
    )


@dataclasses.dataclass(frozen=True)
class _Progress:
    """:class:`app.reconciliation.Progress` as the run's status and Events.

    ``Running`` is a status patch of its own, not kopf's: kopf applies a handler's patch when
    it returns, and :func:`execute` returns only when the run is over.
    """

    body: kopf.Body
    namespace: str

    async def running(self, plan: model.Plan) -> datetime.datetime:
        shown = self.body.status.get("startedAt")
        started = api.parse_timestamp(str(shown)) if shown else report.now()
        if self.body.status.get("phase") == api.ReconciliationPhase.RUNNING:
            return started
        status = api.ReconciliationRunStatus(
            phase=api.ReconciliationPhase.RUNNING,
            started_at=started,
            conditions=_conditions(
                self.body, (False, api.ReconciliationReason.RUNNING, "reconciling")
            ),
            observed_generation=report.generation_of(self.body),
        )
        await _patch_status(self.namespace, str(self.body.metadata.name), status)
        scope = "every namespace" if plan.cluster_wide else f"namespace {self.namespace} only"
        _normal(self.body, RunEvent.STARTED, f"reconciliation started: {scope}")
        return started


async def execute(
    body: kopf.Body, spec: kopf.Spec, patch: kopf.Patch, memo: OperatorMemo, **kwargs: Any
) -> None:
    """Do the run (or recover its stored outcome) and report it."""
    if body.status.get("phase") in FINAL_PHASES:
        return
    namespace = report.namespace_of(kwargs["namespace"])
    command = use_case.RunReconciliation(
        namespace, str(body.metadata.name), str(body.metadata.uid), spec
    )
    workers = use_case.Workers(
        dsn=memo.recon_dsn,
        limits=memo.recon_limits,
        source_limits=memo.recon_source_limits,
        slots=memo.recon_slots,
        stop=_STOPPING,
        pool=memo.pool,
    )
    ports = use_case.Ports(workers, _Progress(body, namespace), memo.recon_cluster_namespace)
    _render(body, patch, await use_case.run_reconciliation(command, ports))


def _render(body: kopf.Body, patch: kopf.Patch, outcome: use_case.Outcome) -> None:
    """Copy the outcome into status, with its Events; the database row is the truth."""
    if isinstance(outcome, Retry):
        raise kopf.TemporaryError(outcome.why, delay=outcome.delay_seconds)
    if isinstance(outcome, use_case.Succeeded):
        _render_succeeded(body, patch, outcome)
        return
    _render_failed(body, patch, outcome)


def _render_failed(
    body: kopf.Body,
    patch: kopf.Patch,
    outcome: use_case.Failed | Rejected[api.ReconciliationReason],
) -> None:
    """Phase Failed with the reason, and a warning Event."""
    message = outcome.message[:1024]
    conditions = _conditions(
        body,
        (False, outcome.reason, message),
        (api.ConditionStatus.UNKNOWN, api.ReconciliationReason.NOT_RECONCILED, message),
    )
    generation = report.generation_of(body)
    if isinstance(outcome, use_case.Failed):
        status = api.ReconciliationRunStatus(
            phase=api.ReconciliationPhase.FAILED,
            attempt=outcome.attempt,
            started_at=report.to_second(outcome.started_at),
            completed_at=_second(outcome.completed_at),
            reason=outcome.reason,
            message=message,
            conditions=conditions,
            observed_generation=generation,
        )
    else:  # Refused before any work: it completes now (or when it was first refused).
        shown = body.status.get("completedAt")
        status = api.ReconciliationRunStatus(
            phase=api.ReconciliationPhase.FAILED,
            completed_at=api.parse_timestamp(str(shown)) if shown else report.now(),
            reason=outcome.reason,
            message=message,
            conditions=conditions,
            observed_generation=generation,
        )
    report.write_status(patch, status)
    kopf.warn(body, reason=RunEvent.FAILED, message=f"{outcome.reason}: {message}"[:1024])


def _render_succeeded(body: kopf.Body, patch: kopf.Patch, outcome: use_case.Succeeded) -> None:
    exceptions = outcome.summary.exceptions
    reconciled = (
        (api.ConditionStatus.TRUE, api.ReconciliationReason.ALL_AGREED, outcome.line)
        if exceptions == 0
        else (api.ConditionStatus.FALSE, api.ReconciliationReason.EXCEPTIONS_FOUND, outcome.line)
    )
    status = api.ReconciliationRunStatus(
        phase=api.ReconciliationPhase.SUCCEEDED,
        started_at=report.to_second(outcome.started_at),
        completed_at=_second(outcome.completed_at),
        attempt=outcome.attempt,
        summary=outcome.summary,
        reason=None,
        message=outcome.line,
        conditions=_conditions(
            body, (True, api.ReconciliationReason.COMPLETED, outcome.line), reconciled
        ),
        observed_generation=report.generation_of(body),
    )
    report.write_status(patch, status)
    _normal(body, RunEvent.SUCCEEDED, outcome.line)
    if exceptions:
        kopf.warn(
            body,
            reason=RunEvent.EXCEPTIONS_FOUND,
            message=f"{outcome.line}; list them with: fintech-operator recon report "
            f"{body.metadata.name} -n {body.metadata.namespace}",
        )


def _second(moment: datetime.datetime | None) -> datetime.datetime | None:
    return None if moment is None else report.to_second(moment)


async def forget(event: kopf.RawEvent, memo: OperatorMemo, **_: Any) -> None:
    """Drop a deleted run's rows and exceptions.

    A watch event, not an on.delete handler: runs carry no finalizer (deleting one never waits
    for the operator), and kopf calls delete handlers only for objects that wait. A run deleted
    while no operator watches keeps its rows; they are small, and a re-created run of the same
    name gets new ones (its uid differs), which is what ``recon report`` shows.
    """
    if event.get("type") != "DELETED":
        return
    uid = str(event.get("object", {}).get("metadata", {}).get("uid", ""))
    if not uid:
        return

    def work() -> int:
        with store.connect(memo.recon_dsn, memo.recon_limits) as conn:
            return store.forget(conn, uid)

    await use_case.in_worker(work, f"recon-forget-{uid}")


# --- Schedules --------------------------------------------------------------------------------


def _custom() -> Any:
    return kubernetes.client.CustomObjectsApi(sources.kube_client())


@dataclasses.dataclass(frozen=True)
class _Runs:
    """:class:`app.reconciliation_schedule.Runs` through the API server (in worker threads)
    and ``recon_runs`` (a pruned run's rows go with it)."""

    dsn: str
    limits: store.Limits

    async def create(self, namespace: str, run: Mapping[str, Any]) -> bool:
        name = str(run["metadata"]["name"])
        return await use_case.in_worker(
            lambda: _create_run(namespace, dict(run)), f"recon-cron-{name}"
        )

    async def prune(
        self, owner: schedule_case.TickSchedule, succeeded_max: int, failed_max: int
    ) -> Sequence[str]:
        return await use_case.in_worker(
            lambda: self._prune(owner, succeeded_max, failed_max), f"recon-prune-{owner.name}"
        )

    def _prune(
        self, owner: schedule_case.TickSchedule, succeeded_max: int, failed_max: int
    ) -> list[str]:
        owned = _owned_runs(owner)
        doomed = schedule.runs_to_prune(
            [ref for ref, _ in owned.values()], succeeded_max, failed_max
        )
        for ref in doomed:
            try:
                _custom().delete_namespaced_custom_object(
                    api.GROUP,
                    api.VERSION,
                    owner.namespace,
                    RUNS,
                    ref.name,
                    _request_timeout=KUBE_TIMEOUT_SECONDS,
                )
            except ApiException as exc:
                if exc.status != 404:
                    raise
            with store.connect(self.dsn, self.limits) as conn:
                store.forget(conn, owned[ref.name][1])
        return [ref.name for ref in doomed]


def _create_run(namespace: str, body: dict[str, Any]) -> bool:
    """Create the run; False when it exists already (a retried tick)."""
    try:
        _custom().create_namespaced_custom_object(
            api.GROUP, api.VERSION, namespace, RUNS, body, _request_timeout=KUBE_TIMEOUT_SECONDS
        )
    except ApiException as exc:
        if exc.status == 409:
            return False
        raise
    return True


def _owned_runs(owner: schedule_case.TickSchedule) -> dict[str, tuple[schedule.RunRef, str]]:
    """The runs the schedule owns, by name: each one's phase and age, and its uid."""
    listed = _custom().list_namespaced_custom_object(
        api.GROUP,
        api.VERSION,
        owner.namespace,
        RUNS,
        label_selector=f"{schedule_case.SCHEDULE_LABEL}={owner.name}",
        _request_timeout=KUBE_TIMEOUT_SECONDS,
    )
    owned = {}
    for item in listed.get("items", []):
        meta = item.get("metadata", {})
        if any(ref.get("uid") == owner.uid for ref in meta.get("ownerReferences", [])):
            created = api.parse_timestamp(str(meta["creationTimestamp"]))
            owned[meta["name"]] = (
                schedule.RunRef(meta["name"], item.get("status", {}).get("phase"), created),
                str(meta.get("uid")),
            )
    return owned


def _parse_time(raw: Any) -> datetime.datetime | None:
    if not raw:
        return None
    return api.parse_timestamp(str(raw))


async def tick(
    body: kopf.Body, spec: kopf.Spec, patch: kopf.Patch, memo: OperatorMemo, **kwargs: Any
) -> None:
    """Create the run that is due, prune old runs, and keep status current (changes only)."""
    command = schedule_case.TickSchedule(
        namespace=report.namespace_of(kwargs["namespace"]),
        name=str(body.metadata.name),
        uid=str(body.metadata.uid),
        spec=spec,
        now=report.now(),
        last_scheduled_at=_parse_time(body.status.get("lastScheduleTime")),
        created_at=_parse_time(body.metadata.get("creationTimestamp")),
    )
    outcome = await schedule_case.tick_schedule(command, _Runs(memo.recon_dsn, memo.recon_limits))
    if isinstance(outcome, Rejected):
        _render_invalid(body, patch, outcome)
    else:
        _render_tick(body, patch, outcome)


def _render_invalid(
    body: kopf.Body, patch: kopf.Patch, outcome: Rejected[api.ScheduleReason]
) -> None:
    if body.status.get("phase") == api.SchedulePhase.INVALID:
        return
    report.reject(body, patch, outcome.reason, outcome.message, phase=api.SchedulePhase.INVALID)


def _render_tick(body: kopf.Body, patch: kopf.Patch, outcome: schedule_case.Ticked) -> None:
    if outcome.due_at is not None:
        created = api.ReconciliationScheduleStatus(
            last_schedule_time=outcome.due_at, last_run_name=outcome.run_name
        )
        report.write_status(patch, created)
        if outcome.created:
            _normal(
                body,
                ScheduleEvent.RUN_CREATED,
                f"created {outcome.run_name} for {_iso(outcome.due_at)}",
            )
    if outcome.pruned:
        _normal(
            body, ScheduleEvent.RUNS_DELETED, f"history limit: deleted {', '.join(outcome.pruned)}"
        )
    generation = report.generation_of(body)
    next_time = _iso(outcome.next_at)
    shown = (
        body.status.get("phase"),
        body.status.get("nextScheduleTime"),
        body.status.get("observedGeneration"),
    )
    if shown == (outcome.phase, next_time, generation):
        return
    status = api.ReconciliationScheduleStatus(
        phase=outcome.phase,
        next_schedule_time=outcome.next_at,
        reason=None,
        message=None,
        conditions=report.conditions(
            body.status, api.READY, True, outcome.phase, outcome.message, generation
        ),
        observed_generation=generation,
    )
    report.write_status(patch, status)


def register(registry: kopf.OperatorRegistry, settings: config.Settings) -> None:
    """Add the reconciliation handlers to ``registry`` (see ``handlers.register``): the
    start-up hook that sizes the workers, the runs' handlers and the schedules' timer."""
    kopf.on.startup(registry=registry)(_recon_startup)
    kopf.on.cleanup(registry=registry)(_recon_cleanup)
    wiring.on_new(registry, RUNS, start)
    wiring.on_new(registry, RUNS, execute)
    kopf.on.event(api.GROUP, api.VERSION, RUNS, registry=registry)(forget)
    kopf.timer(
        api.GROUP, api.VERSION, SCHEDULES, interval=SCHEDULE_TICK_SECONDS, registry=registry
    )(tick)
