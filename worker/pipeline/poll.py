"""Polling: follow a submitted batch's job until it ends, from stored state, never sleeping.

Each poll is one task run: read the batch, reserve a slot of the project's job-route budget
(shared by every worker, so 2000 jobs in flight stay under 2000 GETs a minute), GET the job,
write what was learned, schedule the next poll with a countdown. The first poll comes at the
job duration learned from the project's recently ended jobs, then short steps growing to
``poll_max_interval`` (``worker.pipeline.backoff``).

A poll message carries the batch id and ``seq``, the batch's poll count when it was sent. Only
the message whose ``seq`` still matches may book the poll, so a poll re-sent by the reconciler
while the original was only late never doubles the chain.

Transport errors, 429 and 5xx on a poll only delay the next poll;
they never change the batch's outcome. When the job is ``SUCCESS`` or ``FAIL`` the servers'
outcomes are written from ``sub_jobs`` (a server missing from them is ``unknown``, not
succeeded). A job still running past the batch's deadline makes the batch ``timed_out`` and its
servers ``unknown``.

With verification on (``BMSREBOOT_VERIFY``, a request's ``verify``), a server whose sub-job
succeeded is ``verifying``, not yet ``succeeded``, and so is its batch: it has not ended, and
``worker.pipeline.verify`` follows it until its servers are back.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from worker.bms.errors import BmsError, ThrottledError
from worker.bms.models import Job
from worker.budget import JOB
from worker.db.models import Batch, RebootRequest
from worker.db.queries import batch_server_ids, learned_job_duration
from worker.db.session import unit_of_work
from worker.db.states import BatchStatus, ServerStatus
from worker.db.transitions import (
    ErrorInfo,
    ServerOutcome,
    record_poll,
    settle_batch,
    update_batch,
)
from worker.pipeline import silences
from worker.pipeline.backoff import countdown_ceiling, poll_delay, with_jitter
from worker.pipeline.ending import end_batch
from worker.pipeline.failures import Next, after_poll, throttle_cooldown
from worker.pipeline.runtime import Runtime, describe, error_info, log
from worker.pipeline.verify import first_check_delay, verifies

#: A budget slot at most this far away is waited for in the task; farther ones are a countdown.
MAX_SLEEP = 1.0

MISSING_FROM_JOB = "the server is missing from the job's sub_jobs: outcome unknown"
NOTHING_KNOWN = "the job ended without a usable sub-job for any server: outcome unknown"
TIMED_OUT = "the job did not finish before the batch's deadline: outcome unknown"


@dataclass(frozen=True)
class _Poll:
    project_id: str
    job_id: str
    polls: int
    deadline: datetime | None
    #: Since when the API answers that it does not know the job (None: it knows it).
    missing_since: datetime | None
    #: The batch's Alertmanager silence and its end (``worker.pipeline.silences``).
    silence_id: str | None = None
    silence_ends_at: datetime | None = None


def poll_batch(
    batch_id: uuid.UUID, rt: Runtime, *, seq: int | None = None, reserved: bool = False
) -> str:
    """Poll one batch's job once. Returns what happened, one word, for logs and tests.

    ``seq``: the poll count the message was sent for (None: any); ``reserved``: the message was
    scheduled for a job-route slot already reserved for it."""
    with unit_of_work(rt.engine) as session:
        batch = session.get(Batch, batch_id)
        if batch is None:
            log.error("batch %s does not exist; nothing to poll", batch_id)
            return "missing"
        if batch.status != BatchStatus.SUBMITTED or not batch.job_id:
            return "done"  # a duplicate poll message for a batch already settled
        if seq is not None and seq != batch.poll_count:
            return "stale"  # another message carries this batch's poll chain
        this = _Poll(
            batch.project_id,
            batch.job_id,
            batch.poll_count,
            batch.deadline_at,
            batch.job_missing_since,
            batch.silence_id,
            batch.silence_ends_at,
        )

    if not reserved:
        slot = rt.budgets.reserve(rt.budget_key(this.project_id, JOB), rt.rate(JOB))
        rt.metrics.observe("bmsreboot_budget_wait_seconds", slot.wait)
        if slot.wait > MAX_SLEEP:
            # The slot is ours; come back for it instead of holding a worker process.
            with unit_of_work(rt.engine) as session:
                update_batch(
                    session,
                    batch_id,
                    expect=BatchStatus.SUBMITTED,
                    next_poll_at=rt.now() + timedelta(seconds=slot.wait),
                )
            rt.dispatcher.poll(batch_id, countdown=slot.wait, seq=this.polls, reserved=True)
            return "budget"
        if slot.wait > 0:
            time.sleep(slot.wait)

    try:
        job = rt.client_for(this.project_id).get_job(this.project_id, this.job_id)
    except BmsError as exc:
        if exc.status is None:
            rt.metrics.api_call("job", None)  # no answer came: the response hook saw nothing
        log.warning("batch %s: poll of job %s failed: %s", batch_id, this.job_id, describe(exc))
        what = after_poll(exc)
        if what is Next.MISSING:
            return _job_missing(batch_id, this, rt, exc)
        at_least = None
        if what is Next.THROTTLED and isinstance(exc, ThrottledError):
            cooldown = throttle_cooldown(exc, rt.settings)
            rt.budgets.cooldown(rt.budget_key(this.project_id, JOB), rt.rate(JOB), cooldown)
            at_least = exc.retry_after
        return _again(batch_id, this, rt, error=error_info(exc), at_least=at_least)

    if not job.is_terminal:
        result = _again(batch_id, this, rt, job_status=job.status)
        if result == "running":
            silences.while_running(rt, batch_id, this.silence_id, this.silence_ends_at)
        return result

    with unit_of_work(rt.engine) as session:
        detection_delay = _settle_job(session, batch_id, this, job, rt)
    if detection_delay is None:
        return "stale"  # another message of this chain settled it
    rt.metrics.observe("bmsreboot_polls_per_job", float(this.polls + 1))
    rt.metrics.observe("bmsreboot_detection_delay_seconds", detection_delay)
    return "finished"


def batch_status_from(outcomes: dict[str, ServerOutcome], server_ids: list[str]) -> BatchStatus:
    """``succeeded`` if every server of the batch succeeded, ``unknown`` if the job says
    nothing usable about any of them (no sub-jobs, or none ended: ``failed`` would invite a
    resubmission of servers that may have been rebooted), ``failed`` if none succeeded, else
    ``partially_failed`` (a server missing from the job counts against success)."""
    known = [outcomes[sid] for sid in server_ids if sid in outcomes]
    succeeded = sum(1 for o in known if o.status == ServerStatus.SUCCEEDED)
    if succeeded == len(server_ids):
        return BatchStatus.SUCCEEDED
    if all(o.status == ServerStatus.UNKNOWN for o in known):
        return BatchStatus.UNKNOWN
    if succeeded == 0:
        return BatchStatus.FAILED
    return BatchStatus.PARTIALLY_FAILED


def outcomes_from(job: Job) -> dict[str, ServerOutcome]:
    outcomes: dict[str, ServerOutcome] = {}
    for sub in job.sub_jobs:
        if not sub.server_id:
            continue
        if sub.status == "SUCCESS":
            status, reason = ServerStatus.SUCCEEDED, None
        elif sub.status == "FAIL":
            status = ServerStatus.FAILED
            reason = sub.fail_reason or sub.errorcode_message
        else:  # a sub-job still running inside a finished job: we cannot say
            status, reason = ServerStatus.UNKNOWN, f"sub-job ended the job as {sub.status}"
        outcomes[sub.server_id.lower()] = ServerOutcome(
            status=status,
            error_code=sub.error_code,
            fail_reason=reason,
            sub_job_id=sub.job_id,
            begin_time=sub.begin_time,
            end_time=sub.end_time,
        )
    return outcomes


def _settle_job(
    session: Session, batch_id: uuid.UUID, this: _Poll, job: Job, rt: Runtime
) -> float | None:
    """Write the ended job's outcomes and end the batch (or, with verification on and a
    server whose sub-job succeeded, make it ``verifying``); returns the detection delay, or
    None when another message of this poll chain got there first."""
    outcomes = outcomes_from(job)
    to = batch_status_from(outcomes, batch_server_ids(session, batch_id))
    if not record_poll(session, batch_id, next_poll_at=None, seq=this.polls):
        return None
    now = rt.now()
    # The job's own end time teaches the project's job duration; without one (or one from a
    # clock ahead of ours) the moment we learned it stands in.
    ended = min(job.end_time, now) if job.end_time else now
    detail = {
        "job_status": job.status,
        "sub_jobs": len(job.sub_jobs),
        "job_error_code": job.error_code,
    }
    request = session.get(RebootRequest, session.get_one(Batch, batch_id).request_id)
    assert request is not None
    back = {sid for sid, o in outcomes.items() if o.status == ServerStatus.SUCCEEDED}
    if back and verifies(request, rt.settings):
        # The cloud power-cycled them; they count once the inventory shows them back.
        for server_id in back:
            outcomes[server_id] = replace(outcomes[server_id], status=ServerStatus.VERIFYING)
        first = first_check_delay(session, this.project_id, rt)
        settle_batch(
            session,
            batch_id,
            BatchStatus.VERIFYING,
            actor=rt.actor,
            outcomes=outcomes,
            default_status=ServerStatus.UNKNOWN,
            default_fail_reason=MISSING_FROM_JOB,
            detail={**detail, "verifying": len(back)},
            job_ended_at=ended,
            detected_at=now,
            checks=0,
            next_check_at=ended + timedelta(seconds=first),
        )
        wait = max((ended - now).total_seconds() + first, 0.0)
        rt.dispatcher.verify(batch_id, countdown=wait, seq=0)
        log.info(
            "batch %s: job %s is %s; verifying %d server(s), first check in %.0f s",
            batch_id,
            job.job_id,
            job.status,
            len(back),
            wait,
        )
        return (now - ended).total_seconds()
    end_batch(
        session,
        batch_id,
        to,
        rt,
        servers=ServerStatus.UNKNOWN,
        outcomes=outcomes,
        fail_reason=MISSING_FROM_JOB,
        detail=detail,
        job_ended_at=ended,
        detected_at=now,
        **({"last_error_message": NOTHING_KNOWN} if to is BatchStatus.UNKNOWN else {}),
    )
    log.info("batch %s finished: job %s is %s, batch %s", batch_id, job.job_id, job.status, to)
    return (now - ended).total_seconds()


def _job_missing(batch_id: uuid.UUID, this: _Poll, rt: Runtime, exc: BmsError) -> str:
    """The API says it does not know the job (404, ``BMS.0008``). Once or twice may be the
    API catching up with a job just created; for ``BMSREBOOT_JOB_MISSING_AFTER`` seconds in a
    row, it will not learn it: the batch is ``unknown`` (its POST was accepted, so the reboot
    may have happened), rather than polled until the deadline."""
    now = rt.now()
    since = this.missing_since or now
    missing = (now - since).total_seconds()
    if missing < rt.settings.job_missing_after:
        return _again(batch_id, this, rt, error=error_info(exc), job_missing_since=since)
    reason = (
        f"the API has not known job {this.job_id} for {missing:.0f} s "
        f"({exc.code or 'HTTP 404'}): outcome unknown"
    )
    return _end_unanswered(batch_id, this, rt, BatchStatus.UNKNOWN, reason, error_info(exc))


def _end_unanswered(
    batch_id: uuid.UUID,
    this: _Poll,
    rt: Runtime,
    to: BatchStatus,
    reason: str,
    error: ErrorInfo | None,
    job_status: str | None = None,
) -> str:
    """End a batch whose job gave no outcome (timed out, or no longer known): its servers
    ``unknown``."""
    with unit_of_work(rt.engine) as session:
        if not record_poll(session, batch_id, next_poll_at=None, error=error, seq=this.polls):
            return "stale"
        end_batch(
            session,
            batch_id,
            to,
            rt,
            servers=ServerStatus.UNKNOWN,
            fail_reason=reason,
            detail={"reason": reason, "last_job_status": job_status},
            **(error.columns() if error else {"last_error_message": reason}),
        )
    log.error("batch %s ended %s after %d polls: %s", batch_id, to, this.polls + 1, reason)
    return str(to)


def _again(
    batch_id: uuid.UUID,
    this: _Poll,
    rt: Runtime,
    *,
    error: ErrorInfo | None = None,
    at_least: float | None = None,
    job_status: str | None = None,
    job_missing_since: datetime | None = None,
) -> str:
    """Schedule the next poll, or time the batch out if its deadline has passed."""
    now = rt.now()
    polls = this.polls + 1
    if this.deadline is not None and now >= this.deadline:
        return _end_unanswered(
            batch_id, this, rt, BatchStatus.TIMED_OUT, TIMED_OUT, error, job_status
        )
    with unit_of_work(rt.engine) as session:
        learned = learned_job_duration(session, this.project_id, rt.settings.poll_history)
        delay = poll_delay(
            polls,
            learned=learned,
            first=rt.settings.poll_first_delay,
            cap=rt.settings.poll_max_interval,
        )
        if at_least is not None:
            delay = min(max(delay, at_least), rt.settings.poll_max_interval)
        delay = min(with_jitter(delay, rt.settings.poll_jitter), countdown_ceiling(rt.settings))
        booked = record_poll(
            session,
            batch_id,
            next_poll_at=now + timedelta(seconds=delay),
            error=error,
            seq=this.polls,
            job_missing_since=job_missing_since,
        )
        if booked:
            rt.dispatcher.poll(batch_id, countdown=delay, seq=polls)
    if not booked:
        return "stale"
    return "retry" if error else "running"
