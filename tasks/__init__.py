"""The Celery tasks: thin wrappers that take ids, build the runtime, call one plain function.

Task names are stable, explicit and documented (README, "Task messages"): moving a function
must never break a message already queued. Policy sits on each declaration:

- ``bmsreboot.request_reboot`` (queue ``bmsreboot.intake``): idempotent by request id and
  idempotency key, so acks-late and redelivered if the worker dies.
- ``bmsreboot.submit_batch`` (queue ``bmsreboot.submit``): safe to repeat because submission is
  compare-and-set on the audit row (``worker.pipeline.submit``), so acks-late and redelivered.
- ``bmsreboot.poll_batch`` (queue ``bmsreboot.poll``): a read-only GET plus idempotent writes;
  ``seq`` (optional) keeps one live poll chain per batch.
- ``bmsreboot.release`` (queue ``bmsreboot.submit``): the release step of one project; safe to
  run twice (a lease, and compare-and-set on each batch).
- ``bmsreboot.cancel_request`` (queue ``bmsreboot.intake``): cancel a request; idempotent.
- ``bmsreboot.run_schedules`` (beat) and ``bmsreboot.schedule_tick`` (queue
  ``bmsreboot.intake``): the scheduled reboots (``worker.schedules``).
- ``bmsreboot.reconcile`` and ``bmsreboot.purge`` (queue ``bmsreboot.intake``), sent by beat:
  re-drive lost work from the audit database; delete finished requests past retention.

A database that is briefly unreachable retries the task (the work is safe to repeat); nothing
retries a POST whose fate is unknown.
"""

from __future__ import annotations

import uuid
from typing import Any

from celery import Task
from sqlalchemy.exc import OperationalError

from worker.celery import INTAKE_QUEUE, POLL_QUEUE, SUBMIT_QUEUE, app
from worker.db.retention import purge_finished
from worker.db.session import unit_of_work
from worker.pipeline import control, intake, poll, reconcile, release, scheduling, submit
from worker.pipeline.runtime import Runtime, log
from worker.pipeline.tasking import CeleryDispatcher, worker_runtime
from worker.pipeline.validation import safe_text
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


def _runtime(task: Task[Any, Any]) -> Runtime:
    expires = get_settings().callback_expires
    return worker_runtime(CeleryDispatcher(app, callback_expires=expires), actor=task.name)


class IntakeTask(Task):  # type: ignore[type-arg]
    """Celery calls a task as ``task(*args, **kwargs)`` through a ``__call__(self, ...)``: a
    producer's keyword argument named ``self`` would fail that call before intake could record
    it. Here ``self`` is positional-only, so such a keyword reaches intake, which rejects it as
    an unknown field. (The worker has pushed the task's request already; like Celery's own
    worker path, this calls ``run`` directly.)"""

    def __call__(self, /, *args: Any, **kwargs: Any) -> Any:
        return self.run(*args, **kwargs)


@app.task(name="bmsreboot.request_reboot", queue=INTAKE_QUEUE, base=IntakeTask, **COMMON)
def request_reboot(self: Task[Any, Any], /, *args: Any, **payload: Any) -> dict[str, Any]:
    # Positional arguments are not part of the message format; they are recorded as a reason
    # for rejection rather than failing the task, so nothing a producer sends is lost.
    return intake.accept_request(payload, _runtime(self), positional=len(args)).as_dict()


@app.task(name="bmsreboot.submit_batch", queue=SUBMIT_QUEUE, **COMMON)
def submit_batch(self: Task[Any, Any], batch_id: str) -> str:
    return submit.submit_batch(uuid.UUID(batch_id), _runtime(self))


@app.task(name="bmsreboot.poll_batch", queue=POLL_QUEUE, **COMMON)
def poll_batch(
    self: Task[Any, Any], batch_id: str, seq: int | None = None, reserved: bool = False
) -> str:
    return poll.poll_batch(uuid.UUID(batch_id), _runtime(self), seq=seq, reserved=reserved)


@app.task(name="bmsreboot.release", queue=SUBMIT_QUEUE, **COMMON)
def release_project(self: Task[Any, Any], project_id: str) -> int:
    return release.release_project(project_id, _runtime(self))


#: Times a cancel for a request not yet recorded waits 2 s for intake before giving up.
CANCEL_WAITS = 30


@app.task(name="bmsreboot.cancel_request", queue=INTAKE_QUEUE, **COMMON)
def cancel_request(
    self: Task[Any, Any], request_id: str, reason: str | None = None, actor: str | None = None
) -> dict[str, Any]:
    """Cancel a request (idempotent): what other applications send; ``actor`` says who."""
    try:
        rid = uuid.UUID(str(request_id))
    except ValueError:
        log.error("cancel_request: not a request id: %r", request_id)
        return {"request_id": str(request_id), "changed": False, "message": "not a request id"}
    who = safe_text(actor or "app:unknown", 255)
    result = control.cancel(rid, _runtime(self), reason=safe_text(reason or "", 1000), actor=who)
    if result["status"] is None and self.request.retries < CANCEL_WAITS:
        # The request may still be queued behind this cancel on the intake queue: wait for
        # intake to record it (for about a minute) rather than drop the cancel.
        raise self.retry(countdown=2.0, max_retries=CANCEL_WAITS)
    if result["status"] is None:
        log.error("cancel_request: %s (gave up waiting for it)", result["message"])
    return result


@app.task(name="bmsreboot.schedule_tick", queue=INTAKE_QUEUE, **COMMON)
def schedule_tick(self: Task[Any, Any], name: str, tick: str) -> str:
    """One tick of a schedule entry (Flower shows the entry's name and the tick)."""
    return scheduling.schedule_tick(name, tick, _runtime(self))


# Beat's tasks: a lost or expired run is simply the next tick's work, so no acks-late here.
@app.task(name="bmsreboot.reconcile", bind=True, queue=INTAKE_QUEUE, acks_late=False)
def reconcile_task(self: Task[Any, Any]) -> dict[str, int]:
    return reconcile.reconcile(_runtime(self))


@app.task(name="bmsreboot.run_schedules", bind=True, queue=INTAKE_QUEUE, acks_late=False)
def run_schedules(self: Task[Any, Any]) -> dict[str, int]:
    def send_tick(name: str, tick: str) -> None:
        schedule_tick.apply_async(args=(name, tick))

    return scheduling.run_schedules(_runtime(self), send_tick)


@app.task(name="bmsreboot.purge", bind=True, queue=INTAKE_QUEUE, acks_late=False)
def purge(self: Task[Any, Any]) -> int:
    rt = _runtime(self)
    with unit_of_work(rt.engine) as session:
        purged = purge_finished(session, older_than_days=rt.settings.retention_days)
    log.info("purged %d finished requests older than %d days", purged, rt.settings.retention_days)
    return purged
