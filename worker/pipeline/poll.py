"""Polling: follow a submitted batch's job until it ends, from stored state, never sleeping.

Each poll is one task run: read the batch, GET the job, write what was learned, schedule the
next poll with a countdown. Transport errors, 429 and 5xx on a poll only delay the next poll;
they never change the batch's outcome. When the job is ``SUCCESS`` or ``FAIL`` the servers'
outcomes are written from ``sub_jobs`` (a server missing from them is ``unknown``, not
succeeded). A job still running past the batch's deadline makes the batch ``timed_out`` and its
servers ``unknown``.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

from worker.bms.errors import BmsError, ThrottledError
from worker.bms.models import Job
from worker.db.models import Batch, RebootRequest
from worker.db.requests import (
    ErrorInfo,
    ServerOutcome,
    batch_server_ids,
    record_poll,
    settle_batch,
)
from worker.db.session import unit_of_work
from worker.db.states import BatchStatus, ServerStatus
from worker.pipeline.backoff import poll_delay, with_jitter
from worker.pipeline.notify import Notification, finalize, send
from worker.pipeline.runtime import Runtime, describe, error_info, log, utcnow

MISSING_FROM_JOB = "the server is missing from the job's sub_jobs: outcome unknown"
TIMED_OUT = "the job did not finish before the batch's deadline: outcome unknown"


def poll_batch(batch_id: uuid.UUID, rt: Runtime) -> str:
    """Poll one batch's job once. Returns what happened, one word, for logs and tests."""
    with unit_of_work(rt.engine) as session:
        batch = session.get(Batch, batch_id)
        if batch is None:
            log.error("batch %s does not exist; nothing to poll", batch_id)
            return "missing"
        if batch.status != BatchStatus.SUBMITTED or not batch.job_id:
            return "done"  # a duplicate poll message for a batch already settled
        request = session.get(RebootRequest, batch.request_id)
        assert request is not None
        project_id, job_id, polls = request.project_id, batch.job_id, batch.poll_count
        deadline = batch.deadline_at if batch.deadline_at else None

    try:
        job = rt.client().get_job(project_id, job_id)
    except BmsError as exc:
        retry_after = exc.retry_after if isinstance(exc, ThrottledError) else None
        log.warning("batch %s: poll of job %s failed: %s", batch_id, job_id, describe(exc))
        return _again(batch_id, polls, rt, deadline, error=error_info(exc), at_least=retry_after)

    if not job.is_terminal:
        return _again(batch_id, polls, rt, deadline, job_status=job.status)

    with unit_of_work(rt.engine) as session:
        notification = _settle_job(session, batch_id, job, rt)
    send(notification, rt)
    return "finished"


def batch_status_from(outcomes: dict[str, ServerOutcome], server_ids: list[str]) -> BatchStatus:
    """``succeeded`` if every server of the batch succeeded, ``failed`` if none did, else
    ``partially_failed`` (a server missing from the job counts against success)."""
    succeeded = sum(
        1
        for sid in server_ids
        if sid in outcomes and outcomes[sid].status == ServerStatus.SUCCEEDED
    )
    if succeeded == len(server_ids):
        return BatchStatus.SUCCEEDED
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


def _settle_job(session: Any, batch_id: uuid.UUID, job: Job, rt: Runtime) -> Notification | None:
    outcomes = outcomes_from(job)
    to = batch_status_from(outcomes, batch_server_ids(session, batch_id))
    record_poll(session, batch_id, next_poll_at=None)
    batch = settle_batch(
        session,
        batch_id,
        to,
        actor=rt.actor,
        outcomes=outcomes,
        default_status=ServerStatus.UNKNOWN,
        default_fail_reason=MISSING_FROM_JOB,
        detail={
            "job_status": job.status,
            "sub_jobs": len(job.sub_jobs),
            "job_error_code": job.error_code,
        },
    )
    log.info("batch %s finished: job %s is %s, batch %s", batch_id, job.job_id, job.status, to)
    return finalize(session, batch.request_id, rt)


def _again(
    batch_id: uuid.UUID,
    polls: int,
    rt: Runtime,
    deadline: datetime | None,
    *,
    error: ErrorInfo | None = None,
    at_least: float | None = None,
    job_status: str | None = None,
) -> str:
    """Schedule the next poll, or time the batch out if its deadline has passed."""
    now = utcnow()
    if deadline is not None and now >= deadline:
        with unit_of_work(rt.engine) as session:
            record_poll(session, batch_id, next_poll_at=None, error=error)
            batch = settle_batch(
                session,
                batch_id,
                BatchStatus.TIMED_OUT,
                actor=rt.actor,
                default_status=ServerStatus.UNKNOWN,
                default_fail_reason=TIMED_OUT,
                detail={"reason": TIMED_OUT, "last_job_status": job_status},
                **(error.columns() if error else {}),
            )
            notification = finalize(session, batch.request_id, rt)
        log.error("batch %s timed out after %d polls", batch_id, polls + 1)
        send(notification, rt)
        return "timed_out"
    delay = poll_delay(polls, first=rt.settings.poll_first_delay, cap=rt.settings.poll_max_interval)
    if at_least is not None:
        delay = min(max(delay, at_least), rt.settings.poll_max_interval)
    delay = with_jitter(delay, rt.settings.poll_jitter)
    with unit_of_work(rt.engine) as session:
        record_poll(session, batch_id, next_poll_at=now + timedelta(seconds=delay), error=error)
    rt.dispatcher.poll(batch_id, countdown=delay)
    return "retry" if error else "running"
