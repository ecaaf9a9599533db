"""RunReconciliation: carry out one ReconciliationRun, or recover its stored outcome.

The ``recon_runs`` row decides (``recon.store.execute``): a run whose work committed is only
reported again, and one interrupted (an operator restarted mid-run) counts a new attempt and
starts again from scratch. A run refused before any work (an invalid spec, a cluster-wide
scope outside the administrator's namespace) still announces its ``recon.completed`` (Failed)
event, with the same id a retry would derive, so consumers see every run end.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import threading
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any, Final, Protocol, TypeVar

import psycopg
import pydantic
from kubernetes.client.exceptions import ApiException
from psycopg_pool import AsyncConnectionPool

from fintech_operator import api
from fintech_operator.api import reconciliationrun as run_api
from fintech_operator.app.outcomes import Rejected, Retry
from fintech_operator.events import schema
from fintech_operator.ledger import engine
from fintech_operator.ledger.model import OutboxEvent
from fintech_operator.recon import model, plans, sources, store

BUSY_RETRY_SECONDS: Final = 15.0
TRANSIENT_RETRY_SECONDS: Final = 5.0
# Outages a later attempt may not meet: the database, the API server (a ConfigMap or Secret
# source), the network. Anything else is a bug and is raised as it is.
TRANSIENT_ERRORS: Final = (psycopg.OperationalError, ApiException, OSError)

_T = TypeVar("_T")


@dataclasses.dataclass(frozen=True)
class RunReconciliation:
    """The command: ReconciliationRun ``namespace/name`` (uid ``uid``) with its raw spec."""

    namespace: str
    name: str
    uid: str
    spec: Mapping[str, Any]


class Runner(Protocol):
    """Where runs are carried out: a bounded number at a time, each in a worker."""

    def slot(self) -> AbstractAsyncContextManager[Any]:
        """Held while a run works; waits while every slot is taken."""
        ...

    async def execute(
        self, key: store.RunKey, plan: model.Plan, spec: api.ReconciliationRunSpec
    ) -> store.RunState:
        """Carry out the run to its final row (``recon.store.execute``) or raise."""
        ...

    async def announce(self, event: OutboxEvent) -> None:
        """Write an event no run row carries (a refused run's ``recon.completed``)."""
        ...


class Progress(Protocol):
    """Shows a run's progress to its user while it works."""

    async def running(self, plan: model.Plan) -> datetime.datetime:
        """Show that the run has a worker now; return when it started (as first shown)."""
        ...


@dataclasses.dataclass(frozen=True)
class Ports:
    runner: Runner
    progress: Progress
    # The one namespace where a cluster-wide run is allowed (empty: none).
    cluster_namespace: str


@dataclasses.dataclass(frozen=True)
class Succeeded:
    """The run ran; ``summary.exceptions`` says whether everything agreed."""

    attempt: int
    started_at: datetime.datetime
    completed_at: datetime.datetime | None
    summary: run_api.Summary
    line: str  # the summary in one line, for status and Events


@dataclasses.dataclass(frozen=True)
class Failed:
    """The run could not run (its source could not be read or parsed): stored as failed."""

    reason: api.ReconciliationReason
    message: str
    attempt: int
    started_at: datetime.datetime
    completed_at: datetime.datetime | None


Outcome = Succeeded | Failed | Rejected[api.ReconciliationReason] | Retry


def parse_spec(spec: Mapping[str, Any]) -> api.ReconciliationRunSpec | Rejected[Any]:
    """The run's spec, or why it cannot run (pure)."""
    try:
        return api.ReconciliationRunSpec.model_validate(dict(spec))
    except pydantic.ValidationError as exc:
        return Rejected(api.ReconciliationReason.INVALID_SPEC, api.format_validation_error(exc))


async def run_reconciliation(command: RunReconciliation, ports: Ports) -> Outcome:
    """Refuse a run that may not run (announcing it), else carry it out and report it."""
    spec = parse_spec(command.spec)
    if isinstance(spec, Rejected):
        return await _refuse(command, ports.runner, spec)
    refusal = plans.cluster_scope_refusal(spec, command.namespace, ports.cluster_namespace)
    if refusal is not None:
        rejected = Rejected(api.ReconciliationReason.CLUSTER_SCOPE_NOT_ALLOWED, refusal)
        return await _refuse(command, ports.runner, rejected)
    key = store.RunKey(command.uid, command.namespace, command.name)
    plan = plans.plan_of(spec)
    try:
        async with ports.runner.slot():
            started_at = await ports.progress.running(plan)
            state = await ports.runner.execute(key, plan, spec)
    except store.Busy as exc:
        return Retry(BUSY_RETRY_SECONDS, str(exc))
    except model.Interrupted as exc:
        return Retry(TRANSIENT_RETRY_SECONDS, str(exc))
    except TRANSIENT_ERRORS as exc:
        why = f"transient failure, retrying: {type(exc).__name__}: {exc}"
        return Retry(TRANSIENT_RETRY_SECONDS, why)
    return outcome_of(state, started_at)


async def _refuse(
    command: RunReconciliation, runner: Runner, rejected: Rejected[api.ReconciliationReason]
) -> Rejected[api.ReconciliationReason]:
    event = schema.ReconCompleted(
        namespace=command.namespace,
        name=command.name,
        uid=command.uid,
        phase=api.ReconciliationPhase.FAILED.value,
        dry_run=command.spec.get("dryRun") is True,
        completed_at=datetime.datetime.now(datetime.UTC),
        reason=rejected.reason.value,
        message=rejected.message,
    ).outbox()
    await runner.announce(event)
    return rejected


def outcome_of(state: store.RunState, started_at: datetime.datetime | None = None) -> Outcome:
    """What a run's stored row says (pure); ``started_at`` as shown, else the row's."""
    started_at = started_at or state.started_at
    if state.state == "failed":
        return Failed(
            reason=reason_of(state.reason),
            message=state.message or "",
            attempt=state.attempt,
            started_at=started_at,
            completed_at=state.completed_at,
        )
    if state.state != "succeeded" or state.summary is None:
        return Retry(TRANSIENT_RETRY_SECONDS, f"run is {state.state}")
    # House rule 6: what the database returns is checked before it is shown as the result.
    summary = run_api.Summary.model_validate(dict(state.summary))
    return Succeeded(
        attempt=state.attempt,
        started_at=started_at,
        completed_at=state.completed_at,
        summary=summary,
        line=model.summary_line(api.to_api(summary)),
    )


def reason_of(stored: str | None) -> api.ReconciliationReason:
    """The API's word for a stored failure reason; Failed when the failure named none."""
    if stored in set(api.ReconciliationReason):
        return api.ReconciliationReason(stored)
    return api.ReconciliationReason.FAILED


# --- The adapter the operator uses ---------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Workers:
    """:class:`Runner` on worker threads: ``slots`` bound how many runs work at once, ``stop``
    makes running workers roll back at their next checkpoint (the operator is stopping)."""

    dsn: str
    limits: store.Limits
    source_limits: sources.Limits
    slots: asyncio.Semaphore
    stop: threading.Event
    pool: AsyncConnectionPool[Any]

    def slot(self) -> AbstractAsyncContextManager[Any]:
        return self.slots

    async def execute(
        self, key: store.RunKey, plan: model.Plan, spec: api.ReconciliationRunSpec
    ) -> store.RunState:
        records = sources.opener(spec, key.namespace, self.source_limits)
        return await in_worker(
            lambda: store.execute(self.dsn, key, plan, records, stop=self.stop, limits=self.limits),
            f"recon-{key.namespace}/{key.name}",
        )

    async def announce(self, event: OutboxEvent) -> None:
        async with self.pool.connection() as conn:
            await engine.write_events(conn, [event])


def in_worker(func: Callable[[], _T], name: str) -> Awaitable[_T]:
    """Run blocking ``func`` in a daemon thread (never delaying process exit); await it."""
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
    return future
