"""ReconciliationRun and ReconciliationSchedule: thin handlers around ``fintech_operator.recon``.

A run is handled in two steps so that users see where it is: ``start`` checks the spec and sets
``Pending`` (a status patch of its own, at once); ``execute`` waits
for one of the ``FINTECH_RECON_WORKERS_MAX`` worker slots, sets ``Running`` as it takes one (a
status patch of its own, since kopf's patch would only land when the handler ends), does the
work in a worker thread and reports the stored outcome. Both are idempotent: the ``recon_runs``
row decides, so an operator restarted mid-run counts a new attempt and starts the work again
from scratch, and one restarted after the work committed only reports it.

The run's ``dev.fintech.recon.completed.v1`` event is written by ``recon.store`` with the final
state; a run refused before any work (an invalid spec) writes it here, with the same derived id.
"""

from __future__ import annotations

import asyncio
import datetime
import threading
from collections.abc import Callable
from typing import Any, Final, TypeVar

import kopf
import kubernetes
import psycopg
import pydantic
from kubernetes.client.exceptions import ApiException

from fintech_operator import api
from fintech_operator.api import reconciliationrun as run_api
from fintech_operator.events import schema
from fintech_operator.handlers import report
from fintech_operator.ledger import engine
from fintech_operator.recon import model, plans, schedule, sources, store

RUNS: Final = "reconciliationruns"
SCHEDULES: Final = "reconciliationschedules"
FINAL_PHASES: Final = frozenset({api.ReconciliationPhase.SUCCEEDED, api.ReconciliationPhase.FAILED})
STARTED_PHASES: Final = frozenset(
    {api.ReconciliationPhase.PENDING, api.ReconciliationPhase.RUNNING, *FINAL_PHASES}
)
RECONCILED: Final = api.ConditionType.RECONCILED
SCHEDULE_LABEL: Final = f"{api.GROUP}/schedule"
SCHEDULE_TICK_SECONDS: Final = 15.0
BUSY_RETRY_SECONDS: Final = 15.0
TRANSIENT_RETRY_SECONDS: Final = 5.0
KUBE_TIMEOUT_SECONDS: Final = 30

_T = TypeVar("_T")


def _normal(body: kopf.Body, reason: str, message: str) -> None:
    """A Normal Event. kopf.info is filtered by the operator's posting level (WARNING, to keep
    kopf's own chatter out of Events); these are decisions users want to see."""
    kopf.event(body, type="Normal", reason=reason, message=message[:1024])


# Set when the operator stops: running workers roll back at their next checkpoint.
_STOPPING = threading.Event()


@kopf.on.startup()
async def _recon_startup(memo: kopf.Memo, **_: Any) -> None:
    from fintech_operator import config  # noqa: PLC0415 - settings are loaded once, here

    app = config.load()
    memo.recon_slots = asyncio.Semaphore(app.recon_workers_max)
    memo.recon_limits = store.Limits(
        statement_timeout_seconds=app.recon_statement_timeout_seconds,
        work_mem_mb=app.recon_work_mem_mb,
        connect_timeout_seconds=max(1, int(app.db_timeout_seconds)),
    )
    memo.recon_source_limits = sources.Limits(records_max=app.recon_records_max)
    memo.recon_dsn = app.database_url
    memo.recon_cluster_namespace = app.recon_cluster_namespace


@kopf.on.cleanup()
async def _recon_cleanup(**_: Any) -> None:
    _STOPPING.set()


async def in_worker(func: Callable[[], _T], name: str) -> _T:
    """Run blocking ``func`` in a daemon thread (never delaying process exit) and await it."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[_T] = loop.create_future()

    def settle(value: _T | None, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(value)  # type: ignore[arg-type]

    def target() -> None:
        try:
            value = func()
        except BaseException as exc:  # Handed to the awaiting task as it is.
            loop.call_soon_threadsafe(settle, None, exc)
        else:
            loop.call_soon_threadsafe(settle, value, None)

    threading.Thread(target=target, name=name, daemon=True).start()
    return await future


def _iso(moment: datetime.datetime | None) -> str | None:
    if moment is None:
        return None
    return api.format_timestamp(moment)


def _conditions(
    body: kopf.Body, ready: tuple[bool, str, str], reconciled: tuple[str, str, str] | None
) -> list[dict[str, Any]]:
    generation = int(body.metadata.get("generation") or 0)
    ok, reason, message = ready
    conditions = report.condition(body.status, api.READY, ok, reason, message, generation)
    if reconciled is not None:
        status, reason, message = reconciled
        new = api.Condition(
            type=RECONCILED,
            status=api.ConditionStatus(status),
            reason=reason,
            message=message[:1024],
            last_transition_time=report.now(),
            observed_generation=generation,
        )
        current = api.conditions_from_status(conditions)
        conditions = [api.to_api(c) for c in api.set_condition(current, new)]
    return conditions


def _fail(body: kopf.Body, patch: kopf.Patch, reason: str, message: str) -> None:
    """A run that could not run: phase Failed, the reason, and a warning Event."""
    patch.status.update(
        {
            "phase": api.ReconciliationPhase.FAILED,
            "reason": reason,
            "message": message[:1024],
            "completedAt": body.status.get("completedAt") or report.timestamp(),
            "conditions": _conditions(
                body,
                (False, reason, message),
                ("Unknown", api.ReconciliationReason.NOT_RECONCILED, message),
            ),
            "observedGeneration": int(body.metadata.get("generation") or 0),
        }
    )
    kopf.warn(body, reason="Failed", message=f"{reason}: {message}"[:1024])


async def _invalid(
    body: kopf.Body,
    spec: kopf.Spec,
    patch: kopf.Patch,
    namespace: str,
    memo: kopf.Memo,
    exc: pydantic.ValidationError,
) -> None:
    """A spec the operator cannot run: its ``recon.completed`` (Failed) event, then status."""
    await _refuse(
        body, spec, patch, namespace, memo, ("InvalidSpec", api.format_validation_error(exc))
    )


async def _refuse(
    body: kopf.Body,
    spec: kopf.Spec,
    patch: kopf.Patch,
    namespace: str,
    memo: kopf.Memo,
    why: tuple[str, str],
) -> None:
    """A run refused before any work: its ``recon.completed`` (Failed) event, then status."""
    reason, message = why
    event = schema.recon_completed(
        namespace=namespace,
        name=str(body.metadata.name),
        uid=str(body.metadata.uid),
        phase="Failed",
        dry_run=spec.get("dryRun") is True,
        completed_at=datetime.datetime.now(datetime.UTC),
        reason=reason,
        message=message,
    )
    async with memo.pool.connection() as conn:
        await engine.write_events(conn, [event])
    _fail(body, patch, reason, message)


@kopf.on.resume(api.GROUP, api.VERSION, RUNS)
@kopf.on.create(api.GROUP, api.VERSION, RUNS)
async def start(
    body: kopf.Body,
    spec: kopf.Spec,
    patch: kopf.Patch,
    namespace: str | None,
    memo: kopf.Memo,
    **_: Any,
) -> None:
    """Check the spec and show ``Pending`` until a worker takes the run."""
    if body.status.get("phase") in STARTED_PHASES:
        return
    try:
        api.ReconciliationRunSpec.model_validate(dict(spec))
    except pydantic.ValidationError as exc:
        await _invalid(body, spec, patch, report.namespace_of(namespace), memo, exc)
        return
    status = {
        "phase": api.ReconciliationPhase.PENDING,
        "conditions": _conditions(
            body,
            (False, api.ReconciliationReason.PENDING, "waiting for a reconciliation worker"),
            None,
        ),
        "observedGeneration": int(body.metadata.get("generation") or 0),
    }
    # A patch of its own, at once: kopf runs all of a run's handlers in one cycle and applies
    # their patches when the last returns, which for ``execute`` is when the run is over.
    name = str(body.metadata.name)
    await in_worker(
        lambda: _patch_status(report.namespace_of(namespace), name, status), f"recon-pending-{name}"
    )


def _patch_status(namespace: str, name: str, status: dict[str, Any]) -> None:
    _custom().patch_namespaced_custom_object_status(
        api.GROUP,
        api.VERSION,
        namespace,
        RUNS,
        name,
        {"status": status},
        _content_type="application/merge-patch+json",
        _request_timeout=KUBE_TIMEOUT_SECONDS,
    )


async def _running(body: kopf.Body, namespace: str, plan: model.Plan) -> str:
    """Show ``Running`` now that a worker has the run; return its ``startedAt``.

    A status patch of its own, not kopf's: kopf applies a handler's patch when it returns,
    and this handler returns only when the run is over.
    """
    started = str(body.status.get("startedAt") or report.timestamp())
    if body.status.get("phase") == api.ReconciliationPhase.RUNNING:
        return started
    status = {
        "phase": api.ReconciliationPhase.RUNNING,
        "startedAt": started,
        "conditions": _conditions(
            body, (False, api.ReconciliationReason.RUNNING, "reconciling"), None
        ),
        "observedGeneration": int(body.metadata.get("generation") or 0),
    }
    name = str(body.metadata.name)
    await in_worker(lambda: _patch_status(namespace, name, status), f"recon-status-{name}")
    scope = "every namespace" if plan.cluster_wide else f"namespace {namespace} only"
    _normal(body, "Started", f"reconciliation started: {scope}")
    return started


@kopf.on.resume(api.GROUP, api.VERSION, RUNS)
@kopf.on.create(api.GROUP, api.VERSION, RUNS)
async def execute(
    body: kopf.Body,
    spec: kopf.Spec,
    patch: kopf.Patch,
    namespace: str | None,
    memo: kopf.Memo,
    **_: Any,
) -> None:
    """Do the run (or recover its stored outcome) and report it."""
    if body.status.get("phase") in FINAL_PHASES:
        return
    namespace = report.namespace_of(namespace)
    try:
        run_spec = api.ReconciliationRunSpec.model_validate(dict(spec))
    except pydantic.ValidationError as exc:
        await _invalid(body, spec, patch, namespace, memo, exc)
        return
    refusal = plans.cluster_scope_refusal(run_spec, namespace, memo.recon_cluster_namespace)
    if refusal is not None:
        await _refuse(body, spec, patch, namespace, memo, ("ClusterScopeNotAllowed", refusal))
        return
    key = store.RunKey(str(body.metadata.uid), namespace, str(body.metadata.name))
    records = sources.opener(run_spec, namespace, memo.recon_source_limits)
    plan = plans.plan_of(run_spec)

    def work() -> store.RunState:
        return store.execute(
            memo.recon_dsn, key, plan, records, stop=_STOPPING, limits=memo.recon_limits
        )

    try:
        async with memo.recon_slots:
            started = await _running(body, namespace, plan)
            outcome = await in_worker(work, f"recon-{namespace}/{key.name}")
    except store.Busy as exc:
        raise kopf.TemporaryError(str(exc), delay=BUSY_RETRY_SECONDS) from exc
    except model.Interrupted as exc:
        raise kopf.TemporaryError(str(exc), delay=TRANSIENT_RETRY_SECONDS) from exc
    except (psycopg.OperationalError, ApiException, OSError) as exc:
        raise kopf.TemporaryError(
            f"transient failure, retrying: {type(exc).__name__}: {exc}",
            delay=TRANSIENT_RETRY_SECONDS,
        ) from exc
    _report(body, patch, outcome, started)


def _report(
    body: kopf.Body, patch: kopf.Patch, outcome: store.RunState, started: str | None = None
) -> None:
    """Copy the stored outcome into status; the database row is the truth."""
    started = started or body.status.get("startedAt") or _iso(outcome.started_at)
    if outcome.state == "failed":
        _fail(body, patch, outcome.reason or api.ReconciliationReason.FAILED, outcome.message or "")
        patch.status.update(
            {
                "attempt": outcome.attempt,
                "startedAt": started,
                "completedAt": _iso(outcome.completed_at),
            }
        )
        return
    if outcome.state != "succeeded" or outcome.summary is None:
        raise kopf.TemporaryError(f"run is {outcome.state}", delay=TRANSIENT_RETRY_SECONDS)
    # House rule 6: what the database returns is checked before it is shown as the result.
    summary = api.to_api(run_api.Summary.model_validate(dict(outcome.summary)))
    line = model.summary_line(summary)
    exceptions = int(summary["exceptions"])
    reconciled = (
        ("True", api.ReconciliationReason.ALL_AGREED, line)
        if exceptions == 0
        else ("False", api.ReconciliationReason.EXCEPTIONS_FOUND, line)
    )
    patch.status.update(
        {
            "phase": api.ReconciliationPhase.SUCCEEDED,
            "startedAt": started,
            "completedAt": _iso(outcome.completed_at),
            "attempt": outcome.attempt,
            "summary": summary,
            "reason": None,
            "message": line,
            "conditions": _conditions(
                body, (True, api.ReconciliationReason.COMPLETED, line), reconciled
            ),
            "observedGeneration": int(body.metadata.get("generation") or 0),
        }
    )
    _normal(body, "Succeeded", line)
    if exceptions:
        kopf.warn(
            body,
            reason="ExceptionsFound",
            message=f"{line}; list them with: fintech-operator recon report "
            f"{body.metadata.name} -n {body.metadata.namespace}",
        )


@kopf.on.event(api.GROUP, api.VERSION, RUNS)
async def forget(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
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

    await in_worker(work, f"recon-forget-{uid}")


# --- Schedules --------------------------------------------------------------------------------


def run_body(
    schedule_body: kopf.Body,
    template: api.ReconciliationRunTemplate,
    name: str,
    scheduled_at: datetime.datetime,
    window_seconds: int,
) -> dict[str, Any]:
    """The ReconciliationRun a schedule creates for one time (no I/O)."""
    start = scheduled_at - datetime.timedelta(seconds=window_seconds)
    spec = {**api.to_api(template), "window": {"start": _iso(start), "end": _iso(scheduled_at)}}
    return {
        "apiVersion": api.API_VERSION,
        "kind": "ReconciliationRun",
        "metadata": {
            "name": name,
            "namespace": schedule_body.metadata.namespace,
            "labels": {SCHEDULE_LABEL: str(schedule_body.metadata.name)},
            "ownerReferences": [
                {
                    "apiVersion": api.API_VERSION,
                    "kind": "ReconciliationSchedule",
                    "name": str(schedule_body.metadata.name),
                    "uid": str(schedule_body.metadata.uid),
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": spec,
    }


def _custom() -> Any:
    return kubernetes.client.CustomObjectsApi(sources.kube_client())


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


def _prune(
    namespace: str,
    schedule_name: str,
    owner_uid: str,
    keep_ok: int,
    keep_failed: int,
    dsn: str,
    limits: store.Limits,
) -> list[str]:
    listed = _custom().list_namespaced_custom_object(
        api.GROUP,
        api.VERSION,
        namespace,
        RUNS,
        label_selector=f"{SCHEDULE_LABEL}={schedule_name}",
        _request_timeout=KUBE_TIMEOUT_SECONDS,
    )
    owned = {}
    for item in listed.get("items", []):
        meta = item.get("metadata", {})
        if any(ref.get("uid") == owner_uid for ref in meta.get("ownerReferences", [])):
            created = api.parse_timestamp(str(meta["creationTimestamp"]))
            owned[meta["name"]] = (
                schedule.RunRef(meta["name"], item.get("status", {}).get("phase"), created),
                str(meta.get("uid")),
            )
    doomed = schedule.runs_to_prune([ref for ref, _ in owned.values()], keep_ok, keep_failed)
    for ref in doomed:
        try:
            _custom().delete_namespaced_custom_object(
                api.GROUP,
                api.VERSION,
                namespace,
                RUNS,
                ref.name,
                _request_timeout=KUBE_TIMEOUT_SECONDS,
            )
        except ApiException as exc:
            if exc.status != 404:
                raise
        with store.connect(dsn, limits) as conn:
            store.forget(conn, owned[ref.name][1])
    return [ref.name for ref in doomed]


def _parse_time(raw: Any) -> datetime.datetime | None:
    if not raw:
        return None
    return api.parse_timestamp(str(raw))


@kopf.timer(api.GROUP, api.VERSION, SCHEDULES, interval=SCHEDULE_TICK_SECONDS)
async def tick(
    body: kopf.Body,
    spec: kopf.Spec,
    status: kopf.Status,
    patch: kopf.Patch,
    namespace: str | None,
    name: str,
    memo: kopf.Memo,
    **_: Any,
) -> None:
    """Create the run that is due, prune old runs, and keep status current (changes only)."""
    namespace = report.namespace_of(namespace)
    generation = int(body.metadata.get("generation") or 0)
    try:
        wanted = api.ReconciliationScheduleSpec.model_validate(dict(spec))
    except pydantic.ValidationError as exc:
        message = api.format_validation_error(exc)
        if status.get("phase") != api.SchedulePhase.INVALID:
            patch.status.update(
                {
                    "phase": api.SchedulePhase.INVALID,
                    "reason": api.ScheduleReason.INVALID_SPEC,
                    "message": message[:1024],
                    "conditions": report.condition(
                        status,
                        api.READY,
                        False,
                        api.ScheduleReason.INVALID_SPEC,
                        message,
                        generation,
                    ),
                    "observedGeneration": generation,
                }
            )
            kopf.warn(body, reason="InvalidSpec", message=message)
        return
    cron = schedule.parse(wanted.schedule)
    now = report.now()
    last = _parse_time(status.get("lastScheduleTime")) or _parse_time(
        body.metadata.get("creationTimestamp")
    )
    deadline = now - datetime.timedelta(seconds=wanted.starting_deadline_seconds)
    after = max(last or deadline, deadline)
    due = None if wanted.suspend else schedule.latest_due(cron, after, now)
    if due is not None:
        run_name = schedule.run_name(name, due)
        new_run = run_body(body, wanted.template, run_name, due, wanted.window_seconds)
        created = await in_worker(lambda: _create_run(namespace, new_run), f"recon-cron-{name}")
        patch.status["lastScheduleTime"] = _iso(due)
        patch.status["lastRunName"] = run_name
        if created:
            _normal(body, "RunCreated", f"created {run_name} for {_iso(due)}")
    pruned = await in_worker(
        lambda: _prune(
            namespace,
            name,
            str(body.metadata.uid),
            wanted.successful_runs_history_limit,
            wanted.failed_runs_history_limit,
            memo.recon_dsn,
            memo.recon_limits,
        ),
        f"recon-prune-{name}",
    )
    if pruned:
        _normal(body, "RunsDeleted", f"history limit: deleted {', '.join(pruned)}")
    _schedule_status(body, status, patch, wanted, cron, now, generation)


def _schedule_status(
    body: kopf.Body,
    status: kopf.Status,
    patch: kopf.Patch,
    wanted: api.ReconciliationScheduleSpec,
    cron: schedule.Cron,
    now: datetime.datetime,
    generation: int,
) -> None:
    phase = api.SchedulePhase.SUSPENDED if wanted.suspend else api.SchedulePhase.ACTIVE
    following = schedule.next_after(cron, now)
    next_time = None if wanted.suspend or following is None else _iso(following)
    message = f"{wanted.schedule} (UTC)" + (", suspended" if wanted.suspend else "")
    if (status.get("phase"), status.get("nextScheduleTime"), status.get("observedGeneration")) == (
        phase,
        next_time,
        generation,
    ):
        return
    patch.status.update(
        {
            "phase": phase,
            "nextScheduleTime": next_time,
            "reason": None,
            "message": None,
            "conditions": report.condition(status, api.READY, True, phase, message, generation),
            "observedGeneration": generation,
        }
    )
