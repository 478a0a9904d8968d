"""The Celery tasks: thin wrappers that take ids, build the runtime, call one plain function.

Task names are stable, explicit and documented (README, "Task messages"): moving a function
must never break a message already queued. Policy sits on each declaration:

- ``bmsreboot.request_reboot`` (queue ``bmsreboot.intake``): idempotent by request id and
  idempotency key, so acks-late and redelivered if the worker dies.
- ``bmsreboot.submit_batch`` (queue ``bmsreboot.submit``): safe to repeat because submission is
  compare-and-set on the audit row (``worker.pipeline.submit``), so acks-late and redelivered.
- ``bmsreboot.poll_batch`` (queue ``bmsreboot.poll``): a read-only GET plus idempotent writes;
  ``seq`` (optional) keeps one live poll chain per batch.
- ``bmsreboot.verify_batch`` (queue ``bmsreboot.poll``): one check of a verifying batch's
  servers (list reads plus idempotent writes); ``seq`` keeps one live chain of checks.
- ``bmsreboot.submit_due`` (queue ``bmsreboot.submit``), ``bmsreboot.poll_due`` and
  ``bmsreboot.verify_due`` (queue ``bmsreboot.poll``): the batched steps
  (``worker.pipeline.sweep``), each every batch due, across projects; no arguments (what is
  due is in the audit database), their result names the batches by what happened. Safe to
  repeat (each batch is compare-and-set), so acks-late and redelivered.
- ``bmsreboot.release`` (queue ``bmsreboot.submit``): the release step of one project; safe to
  run twice (a lease, and compare-and-set on each batch).
- ``bmsreboot.cancel_request`` (queue ``bmsreboot.intake``): cancel a request; idempotent.
- ``bmsreboot.run_schedules`` (beat) and ``bmsreboot.schedule_tick`` (queue
  ``bmsreboot.intake``): the scheduled reboots (``worker.schedules``).
- ``bmsreboot.reconcile`` and ``bmsreboot.purge`` (queue ``bmsreboot.intake``), sent by beat:
  re-drive lost work from the audit database; delete finished requests past retention.

A database that is briefly unreachable retries the task (the work is safe to repeat); nothing
retries a POST whose fate is unknown. A run that fails for good (an argument the task cannot
use, an error no retry mends, retries exhausted) leaves a dead letter with the message and the
reason (:class:`PipelineTask`), never an acknowledged message and nothing else.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from celery import Task
from sqlalchemy.exc import OperationalError

from worker import deadletter, names
from worker.broker import PRODUCER_ETA
from worker.celery import app
from worker.db.retention import purge_finished
from worker.db.session import get_engine, unit_of_work
from worker.pipeline import (
    control,
    intake,
    poll,
    reconcile,
    release,
    scheduling,
    submit,
    verify,
)
from worker.pipeline.inventory import InventoryUnavailable
from worker.pipeline.message import PROJECT_ID_PATTERN
from worker.pipeline.runtime import Runtime, log
from worker.pipeline.tasking import CeleryDispatcher, shared_budget, worker_runtime
from worker.pipeline.validation import safe_text
from worker.schedules import SCHEDULE_CHECK_INTERVAL
from worker.settings import get_settings

COMMON: dict[str, Any] = {
    "bind": True,
    "acks_late": True,
    "reject_on_worker_lost": True,
    "autoretry_for": (OperationalError,),
    "retry_backoff": 2,
    "retry_backoff_max": 300,
    "retry_jitter": True,
    "max_retries": 20,
}


class BadArgument(ValueError):
    """A task argument the task cannot use: the message becomes a dead letter, this the
    reason."""


class GuardedTask(Task):  # type: ignore[type-arg]
    """Every task of ours: a message whose body Celery would fail on in the pool is refused
    on arrival and becomes a dead letter (``worker.broker.CheckedRequest``)."""

    Request = "worker.broker:CheckedRequest"
    #: What Flower shows of a run's result (its task-succeeded event; Celery's default cuts
    #: it at 1024 characters): a sweep's names its batches by what happened, up to 50 ids.
    resultrepr_maxsize = 8192


class PipelineTask(GuardedTask):
    """Every task that carries work. Celery acknowledges a message whose task raised (acks
    late or not): a run that fails for good records the message and the reason as a dead
    letter first, in the audit database (``bmsreboot dead-letters``), so that nothing
    vanishes with one log line. Retries (a database briefly down) are not failures; the
    soft time limit is (``SoftTimeLimitExceeded`` comes before the hard limit kills the
    run)."""

    def on_failure(self, exc: Exception, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        info = getattr(self.request, "delivery_info", None) or {}
        deadletter.record(
            get_engine(get_settings().effective_database_url),
            raw=deadletter.task_message(self.name, task_id, args, kwargs),
            error=exc,
            queue=info.get("routing_key") or getattr(self, "queue", None),
            task=self.name,
        )


class IntakeTask(PipelineTask):
    """Celery calls a task as ``task(*args, **kwargs)`` through a ``__call__(self, ...)``: a
    producer's keyword argument named ``self`` would fail that call before intake could record
    it. Here ``self`` is positional-only, so such a keyword reaches intake, which rejects it as
    an unknown field. (The worker has pushed the task's request already; like Celery's own
    worker path, this calls ``run`` directly.)"""

    def __call__(self, /, *args: Any, **kwargs: Any) -> Any:
        return self.run(*args, **kwargs)


def _short(value: Any) -> str:
    return safe_text(repr(value), 80)


def _uuid(name: str, value: Any) -> uuid.UUID:
    if isinstance(value, str):
        try:
            return uuid.UUID(value)
        except ValueError:
            pass
    raise BadArgument(f"{name} must be a UUID, got {_short(value)}")


def _project(value: Any) -> str:
    import re

    if isinstance(value, str) and re.fullmatch(PROJECT_ID_PATTERN, value):
        return value
    raise BadArgument(f"project_id must be 32 hexadecimal characters, got {_short(value)}")


def _runtime(task: Task[Any, Any]) -> Runtime:
    expires = get_settings().callback_expires
    # The batches' submits, polls and checks go to their steps' sweeps (worker.pipeline.sweep).
    dispatcher = CeleryDispatcher(app, callback_expires=expires, sweeps=shared_budget())
    return worker_runtime(dispatcher, actor=task.name)


@app.task(
    name=names.REQUEST_REBOOT, queue=names.ROUTES[names.REQUEST_REBOOT], base=IntakeTask, **COMMON
)
def request_reboot(self: Task[Any, Any], /, *args: Any, **payload: Any) -> dict[str, Any]:
    # Positional arguments are not part of the message format; they are recorded as a reason
    # for rejection rather than failing the task, so nothing a producer sends is lost. A
    # countdown the producer gave the message is its not_before (worker.broker.eta_refusal).
    eta = getattr(self.request, PRODUCER_ETA, None)
    rt = _runtime(self)
    try:
        return intake.accept_request(payload, rt, positional=len(args), eta=eta).as_dict()
    except InventoryUnavailable as exc:
        # A selector could not be resolved now (the list route timed out, 5xx): the request
        # is not recorded yet; try again, for about twenty minutes, then a dead letter.
        wait = min(5.0 * 2**self.request.retries, 300.0)
        raise self.retry(exc=exc, countdown=wait, max_retries=SELECTOR_RETRIES) from exc


@app.task(
    name=names.SUBMIT_BATCH, queue=names.ROUTES[names.SUBMIT_BATCH], base=PipelineTask, **COMMON
)
def submit_batch(self: Task[Any, Any], batch_id: Any = None) -> str:
    return submit.submit_batch(_uuid("batch_id", batch_id), _runtime(self))


@app.task(name=names.POLL_BATCH, queue=names.ROUTES[names.POLL_BATCH], base=PipelineTask, **COMMON)
def poll_batch(
    self: Task[Any, Any], batch_id: Any = None, seq: Any = None, reserved: Any = False
) -> str:
    checked = _uuid("batch_id", batch_id)
    if not isinstance(reserved, bool):
        raise BadArgument(f"reserved must be true or false, got {_short(reserved)}")
    return poll.poll_batch(checked, _runtime(self), seq=_seq(seq), reserved=reserved)


@app.task(
    name=names.VERIFY_BATCH, queue=names.ROUTES[names.VERIFY_BATCH], base=PipelineTask, **COMMON
)
def verify_batch(self: Task[Any, Any], batch_id: Any = None, seq: Any = None) -> str:
    return verify.verify_batch(_uuid("batch_id", batch_id), _runtime(self), seq=_seq(seq))


@app.task(name=names.SUBMIT_DUE, queue=names.ROUTES[names.SUBMIT_DUE], base=PipelineTask, **COMMON)
def submit_due(self: Task[Any, Any]) -> dict[str, list[str]]:
    return submit.submit_due(_runtime(self))


@app.task(name=names.POLL_DUE, queue=names.ROUTES[names.POLL_DUE], base=PipelineTask, **COMMON)
def poll_due(self: Task[Any, Any]) -> dict[str, list[str]]:
    return poll.poll_due(_runtime(self))


@app.task(name=names.VERIFY_DUE, queue=names.ROUTES[names.VERIFY_DUE], base=PipelineTask, **COMMON)
def verify_due(self: Task[Any, Any]) -> dict[str, list[str]]:
    return verify.verify_due(_runtime(self))


def _seq(seq: Any) -> int | None:
    if seq is not None and (isinstance(seq, bool) or not isinstance(seq, int) or seq < 0):
        raise BadArgument(f"seq must be a whole number of at least 0, got {_short(seq)}")
    return seq


@app.task(name=names.RELEASE, queue=names.ROUTES[names.RELEASE], base=PipelineTask, **COMMON)
def release_project(self: Task[Any, Any], project_id: Any = None) -> int:
    return release.release_project(_project(project_id), _runtime(self))


#: Times intake tries again to resolve a selector whose server list could not be read.
SELECTOR_RETRIES = 8
#: Times a cancel for a request not yet recorded waits 2 s for intake before giving up.
CANCEL_WAITS = 30


@app.task(
    name=names.CANCEL_REQUEST, queue=names.ROUTES[names.CANCEL_REQUEST], base=PipelineTask, **COMMON
)
def cancel_request(
    self: Task[Any, Any],
    request_id: Any = None,
    reason: Any = None,
    actor: Any = None,
    **unexpected: Any,
) -> dict[str, Any]:
    """Cancel a request (idempotent): what other applications send; ``actor`` says who.

    A cancel stops reboots, so it errs on the side of stopping: keywords it does not know
    (a misspelled ``reason``) are recorded with the cancel's reason and it is applied. One
    that cannot be applied (no request id, a request never recorded) is a dead letter."""
    if request_id is None:
        extra = f"; unknown keyword(s): {', '.join(sorted(unexpected))}" if unexpected else ""
        raise BadArgument(f"cancel_request needs request_id{extra}: the cancel was not applied")
    rid = _uuid("request_id", request_id)
    why = safe_text(reason, 1000) if reason is not None else ""
    if unexpected:
        pairs = sorted(unexpected.items())
        ignored = ", ".join(f"{safe_text(k, 60)}={_short(v)}" for k, v in pairs)
        why = safe_text(f"{why} [unknown keyword(s) ignored: {ignored}]".strip(), 1000)
        log.warning("cancel_request for %s: unknown keyword(s) ignored: %s", rid, ignored)
    who = safe_text(actor if actor is not None else "app:unknown", 255)
    result = control.cancel(rid, _runtime(self), reason=why, actor=who)
    if result["status"] is None:
        if self.request.retries < CANCEL_WAITS:
            # The request may still be queued behind this cancel on the intake queue: wait
            # for intake to record it (for about a minute) rather than drop the cancel.
            raise self.retry(countdown=2.0, max_retries=CANCEL_WAITS)
        raise LookupError(
            f"no request {rid} was recorded within {CANCEL_WAITS * 2} s: the cancel was not applied"
        )
    return result


@app.task(
    name=names.SCHEDULE_TICK, queue=names.ROUTES[names.SCHEDULE_TICK], base=PipelineTask, **COMMON
)
def schedule_tick(self: Task[Any, Any], name: Any = None, tick: Any = None) -> str:
    """One tick of a schedule entry (Flower shows the entry's name and the tick)."""
    if not isinstance(name, str) or not name:
        raise BadArgument(f"name must be a schedule entry's name, got {_short(name)}")
    try:
        moment = dt.datetime.fromisoformat(tick) if isinstance(tick, str) else None
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        raise BadArgument(f"tick must be an ISO 8601 time with a zone, got {_short(tick)}")
    return scheduling.schedule_tick(name, tick, _runtime(self))


# Beat's tasks: a lost or expired run is simply the next tick's work, so no acks-late here,
# and a failed run is not a lost message (no dead letter): the next run does the same work.
BEAT_TASK: dict[str, Any] = {"bind": True, "queue": names.INTAKE_QUEUE, "acks_late": False}
#: Beat's entries, each declared beside the task it sends. A tick a worker could not take in
#: time expires rather than piling up: the next tick does the same work.
BEAT: dict[str, dict[str, Any]] = {}


@app.task(name=names.RECONCILE, base=GuardedTask, **BEAT_TASK)
def reconcile_task(self: Task[Any, Any]) -> dict[str, int]:
    return reconcile.reconcile(_runtime(self))


_every = get_settings().reconcile_interval
BEAT[names.RECONCILE] = {
    "task": names.RECONCILE,
    "schedule": _every,
    "options": {"expires": max(_every * 0.9, 0.5)},
}


@app.task(name=names.RUN_SCHEDULES, base=GuardedTask, **BEAT_TASK)
def run_schedules(self: Task[Any, Any]) -> dict[str, int]:
    def send_tick(name: str, tick: str) -> None:
        schedule_tick.apply_async(args=(name, tick))

    return scheduling.run_schedules(_runtime(self), send_tick)


if get_settings().schedule_file is not None:
    # Reads the file each time: entries and ids files change without a restart.
    BEAT["bmsreboot.schedules"] = {
        "task": names.RUN_SCHEDULES,
        "schedule": SCHEDULE_CHECK_INTERVAL,
        "options": {"expires": SCHEDULE_CHECK_INTERVAL * 0.9},
    }


@app.task(name=names.PURGE, base=GuardedTask, **BEAT_TASK)
def purge(self: Task[Any, Any]) -> int:
    rt = _runtime(self)
    with unit_of_work(rt.engine) as session:
        purged = purge_finished(session, older_than_days=rt.settings.retention_days)
    log.info("purged %d finished requests older than %d days", purged, rt.settings.retention_days)
    return purged


BEAT[names.PURGE] = {"task": names.PURGE, "schedule": 86400.0, "options": {"expires": 3600.0}}

app.conf.beat_schedule = BEAT
