"""Submission: the write-ahead protocol that keeps a server from being rebooted twice.

1. In a committed transaction the batch moves ``pending -> submitting`` (compare-and-set: of two
   workers holding the same message, one wins; the other finds it past ``pending`` and never
   POSTs).
2. The POST.
3. In a committed transaction the batch moves ``submitting -> submitted`` with its job id, and
   its first poll is scheduled.

A failure the client classifies as **not accepted** returns the batch to ``pending`` and retries
with exponential backoff and jitter. A **maybe accepted** failure (the API may have taken the
reboot, we never learned a job id) makes the batch ``unknown``: never resubmitted by the
pipeline, visible in ``status`` with its reason. A refusal (4xx) makes it ``rejected`` with the
API's code and message. A batch found in ``submitting`` by a later message, older than any POST
could take, lost its worker mid-call: it becomes ``unknown`` too.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy.exc import OperationalError

from worker.bms.errors import ApiError, BmsError, ServerError, ThrottledError
from worker.bms.retry import may_resubmit
from worker.db.models import Batch, RebootRequest
from worker.db.requests import (
    batch_server_ids,
    settle_batch,
    transition_batch,
    transition_request,
)
from worker.db.session import unit_of_work
from worker.db.states import BatchStatus, IllegalTransition, RequestStatus, ServerStatus
from worker.pipeline.backoff import submit_retry_delay, with_jitter
from worker.pipeline.notify import Notification, finalize, send
from worker.pipeline.runtime import Runtime, describe, error_info, log, utcnow

#: Margin beyond the client's own timeouts after which a batch still ``submitting`` can no
#: longer be in a live worker's POST.
STALE_MARGIN = 60.0


def stale_after(rt: Runtime) -> float:
    return rt.settings.connect_timeout + rt.settings.read_timeout + STALE_MARGIN


@dataclass(frozen=True)
class Claim:
    """A batch this worker moved to ``submitting``: what the POST needs."""

    attempt: int
    project_id: str
    reboot_type: str
    server_ids: list[str]


def submit_batch(batch_id: uuid.UUID, rt: Runtime) -> str:
    """Submit one batch. Returns what happened, one word, for logs and tests."""
    with unit_of_work(rt.engine) as session:
        claim = _claim(session, batch_id, rt)
    if not isinstance(claim, Claim):
        outcome, notification = claim
        send(notification, rt)
        return outcome
    # Committed: the batch is ``submitting`` before any byte goes to the cloud.

    try:
        job_id = rt.client().batch_reboot(claim.project_id, claim.server_ids, claim.reboot_type)
    except BmsError as exc:
        return _failed(batch_id, claim.attempt, exc, rt)
    except Exception as exc:
        # Not a classified client error: we cannot tell whether the POST went out.
        log.exception("batch %s: unexpected error around the POST", batch_id)
        return _settle(batch_id, BatchStatus.UNKNOWN, rt, reason=describe(exc))
    return _submitted(batch_id, job_id, rt)


def _claim(
    session: Any, batch_id: uuid.UUID, rt: Runtime
) -> Claim | tuple[str, Notification | None]:
    """Move the batch ``pending -> submitting`` (and its request to ``running``), or say why
    not: a second message for the same batch must never POST again."""
    batch = session.get(Batch, batch_id)
    if batch is None:
        log.error("batch %s does not exist; nothing to submit", batch_id)
        return "missing", None
    if batch.status == BatchStatus.SUBMITTING:
        return _found_submitting(session, batch, rt)
    if batch.status != BatchStatus.PENDING:
        log.info("batch %s is %s, past pending: not POSTing again", batch_id, batch.status)
        return "skipped", None
    request = session.get(RebootRequest, batch.request_id)
    assert request is not None
    if request.status not in (RequestStatus.ACCEPTED, RequestStatus.RUNNING):
        log.info("batch %s not submitted: its request is %s", batch_id, request.status)
        return "skipped", None
    try:
        # The transition counts the attempt itself (submit_attempts + 1, in the same UPDATE).
        claimed = transition_batch(session, batch_id, BatchStatus.SUBMITTING, actor=rt.actor)
    except IllegalTransition as exc:
        log.info("batch %s claimed by another worker (%s): not POSTing", batch_id, exc)
        return "skipped", None
    if request.status == RequestStatus.ACCEPTED:
        # Another batch of the same request may have started it a moment ago.
        with contextlib.suppress(IllegalTransition):
            transition_request(session, request.id, RequestStatus.RUNNING, actor=rt.actor)
    return Claim(
        claimed.submit_attempts,
        request.project_id,
        request.type,
        batch_server_ids(session, batch_id),
    )


def _found_submitting(session: Any, batch: Batch, rt: Runtime) -> tuple[str, Notification | None]:
    """Another message for a batch already ``submitting``: a duplicate while a worker is in its
    POST, or a redelivery after that worker died. Wait until no POST can still be running,
    then call it ``unknown`` (a resubmit could be a second hard reboot)."""
    age = (utcnow() - batch.updated_at).total_seconds()
    limit = stale_after(rt)
    if age < limit:
        log.info("batch %s is being submitted by another worker; checking again later", batch.id)
        # Sent before commit on purpose: this transaction wrote nothing the check needs.
        rt.dispatcher.submit(batch.id, countdown=limit - age + 1.0)
        return "in_progress", None
    return _settle_in(
        session,
        batch.id,
        BatchStatus.UNKNOWN,
        rt,
        reason=(
            f"the worker submitting this batch was lost {int(age)} s ago, before it recorded "
            "an answer: the reboot may or may not have been accepted"
        ),
    )


def _failed(batch_id: uuid.UUID, attempt: int, exc: BmsError, rt: Runtime) -> str:
    if exc.maybe_accepted:
        log.error("batch %s: POST may have been accepted (%s): unknown", batch_id, describe(exc))
        return _settle(batch_id, BatchStatus.UNKNOWN, rt, reason=describe(exc), error=exc)
    if isinstance(exc, ApiError) and not isinstance(exc, ThrottledError | ServerError):
        log.error("batch %s rejected by the API: %s", batch_id, describe(exc))
        return _settle(batch_id, BatchStatus.REJECTED, rt, reason=describe(exc), error=exc)
    if not may_resubmit(exc):
        # Certainly not accepted, but no new attempt can succeed (a configuration or protocol
        # error): the servers were never rebooted.
        log.error("batch %s cannot be submitted: %s", batch_id, describe(exc))
        return _settle(batch_id, BatchStatus.FAILED, rt, reason=describe(exc), error=exc)
    throttled = isinstance(exc, ThrottledError)
    if not throttled and attempt >= rt.settings.submit_max_attempts:
        log.error("batch %s: giving up after %d attempts: %s", batch_id, attempt, describe(exc))
        return _settle(batch_id, BatchStatus.FAILED, rt, reason=describe(exc), error=exc)
    retry_after = exc.retry_after if isinstance(exc, ThrottledError) else None
    delay = with_jitter(
        submit_retry_delay(
            attempt,
            base=rt.settings.submit_retry_base,
            cap=rt.settings.submit_retry_max,
            retry_after=retry_after,
        ),
        rt.settings.poll_jitter,
    )
    with unit_of_work(rt.engine) as session:
        transition_batch(
            session,
            batch_id,
            BatchStatus.PENDING,
            actor=rt.actor,
            detail={"not_accepted": describe(exc), "retry_in_seconds": round(delay, 3)},
            **error_info(exc).columns(),
        )
    log.warning(
        "batch %s not accepted (%s); retry %d in %.1f s", batch_id, describe(exc), attempt, delay
    )
    rt.dispatcher.submit(batch_id, countdown=delay)
    return "retry"


def _submitted(batch_id: uuid.UUID, job_id: str, rt: Runtime) -> str:
    now = utcnow()
    first = rt.settings.poll_first_delay
    values = {
        "job_id": job_id,
        "next_poll_at": now + timedelta(seconds=first),
        "deadline_at": now + timedelta(seconds=rt.settings.job_deadline),
    }
    # The job id exists only in this process now: a short database outage must not lose it.
    for attempt in range(4):
        try:
            with unit_of_work(rt.engine) as session:
                transition_batch(
                    session,
                    batch_id,
                    BatchStatus.SUBMITTED,
                    actor=rt.actor,
                    detail={"job_id": job_id},
                    **values,
                )
            break
        except OperationalError:
            if attempt == 3:
                log.critical("batch %s: job %s could not be recorded", batch_id, job_id)
                raise
            time.sleep(2**attempt)
        except IllegalTransition:
            log.critical(
                "batch %s: job %s accepted but the batch left 'submitting' meanwhile",
                batch_id,
                job_id,
            )
            return "conflict"
    log.info("batch %s submitted: job %s", batch_id, job_id)
    rt.dispatcher.poll(batch_id, countdown=with_jitter(first, rt.settings.poll_jitter))
    return "submitted"


def _settle(
    batch_id: uuid.UUID,
    to: BatchStatus,
    rt: Runtime,
    *,
    reason: str,
    error: BmsError | None = None,
) -> str:
    with unit_of_work(rt.engine) as session:
        outcome, notification = _settle_in(session, batch_id, to, rt, reason=reason, error=error)
    send(notification, rt)
    return outcome


def _settle_in(
    session: Any,
    batch_id: uuid.UUID,
    to: BatchStatus,
    rt: Runtime,
    *,
    reason: str,
    error: BmsError | None = None,
) -> tuple[str, Notification | None]:
    """End a batch that never got a job: its servers become ``unknown`` (maybe rebooted) or
    ``failed`` with the API's code (refused, or never accepted)."""
    server_status = ServerStatus.UNKNOWN if to == BatchStatus.UNKNOWN else ServerStatus.FAILED
    columns = error_info(error).columns() if error else {"last_error_message": reason[:1000]}
    batch = settle_batch(
        session,
        batch_id,
        to,
        actor=rt.actor,
        default_status=server_status,
        default_error_code=error.code if error else None,
        default_fail_reason=(error.message if error and error.message else reason)[:1000],
        detail={"reason": reason},
        **columns,
    )
    return str(to), finalize(session, batch.request_id, rt)
