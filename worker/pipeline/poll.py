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
from typing import Any

from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from worker.bms.errors import BmsError, ThrottledError
from worker.bms.models import Job
from worker.budget import JOB
from worker.db.models import Batch, RebootRequest, utcnow
from worker.db.queries import batch_server_ids, learned_job_duration
from worker.db.session import savepoint, unit_of_work
from worker.db.states import BatchStatus, ServerStatus
from worker.db.sweeps import DuePoll, claim_polls, update_each
from worker.db.transitions import (
    ErrorInfo,
    ServerOutcome,
    record_poll,
    settle_batch,
    update_batch,
)
from worker.pipeline import silences, sweep
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


def next_poll_delay(
    polls: int, learned: float | None, at_least: float | None, rt: Runtime
) -> float:
    """Seconds to a batch's poll number ``polls`` (the backoff from its project's learned job
    duration, at least ``at_least`` when the API asked for it, with jitter, never past the
    longest countdown): for the one-batch poll and the sweep alike."""
    delay = poll_delay(
        polls,
        learned=learned,
        first=rt.settings.poll_first_delay,
        cap=rt.settings.poll_max_interval,
    )
    if at_least is not None:
        delay = min(max(delay, at_least), rt.settings.poll_max_interval)
    return min(with_jitter(delay, rt.settings.poll_jitter), countdown_ceiling(rt.settings))


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
        delay = next_poll_delay(polls, learned, at_least, rt)
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


# --- the batched step: every poll that falls due together -----------------------------------


def poll_due(rt: Runtime) -> dict[str, list[str]]:
    """The poll sweep (:func:`_poll_due`), its metrics written once at its end."""
    with rt.metrics.batched():
        return _poll_due(rt)


def _poll_due(rt: Runtime) -> dict[str, list[str]]:
    """The poll sweep (task ``bmsreboot.poll_due``, ``worker.pipeline.sweep``): claim the
    submitted batches whose next poll comes within the sweep's window, across projects; one
    reservation of each project's job budget for all of its polls; the GETs concurrently,
    each at its slot; then one statement for the polls to repeat (with and without an error),
    and one transaction for the jobs that ended (each batch in a savepoint of its own, so
    that one batch's failure leaves the others' outcomes). Polls the budget has no slot for
    soon are put off to when it has, without a GET. Returns the batches by what happened."""
    now = rt.now()
    lease = now + timedelta(seconds=sweep.lease_seconds(rt))
    with unit_of_work(rt.engine) as session:
        claimed = claim_polls(
            session,
            now + timedelta(seconds=sweep.WINDOW),
            lease,
            sweep.MAX_BATCHES,
            sweep.MAX_SERVERS,
        )
    # All it may take (batches, or servers: it may have stopped short for the next batch):
    # another sweep beside this one takes the rest.
    servers = sum(c.size for c in claimed)
    more = len(claimed) >= sweep.MAX_BATCHES or servers >= sweep.MAX_SERVERS // 2
    if more:
        rt.dispatcher.sweep(sweep.POLL, more=True)
    outcome: dict[uuid.UUID, str] = {}
    granted, later = _reserve(claimed, rt)
    if later:
        _put_off(later, rt, outcome)
    answers = sweep.at_slots(
        rt,
        granted,
        slot=lambda g: g[1],
        call=lambda g: rt.client_for(g[0].project_id).get_job(g[0].project_id, g[0].job_id),
    )
    again: list[tuple[_Poll, uuid.UUID, str | None, ErrorInfo | None, float | None]] = []
    ended: list[tuple[uuid.UUID, uuid.UUID, _Poll, Job]] = []
    throttled: set[str] = set()
    for (due, _slot), answer in zip(granted, answers, strict=True):
        this = _Poll(
            due.project_id,
            due.job_id,
            due.polls,
            due.deadline,
            due.missing_since,
            due.silence_id,
            due.silence_ends_at,
        )
        if isinstance(answer, Job):
            if answer.is_terminal:
                ended.append((due.request_id, due.batch_id, this, answer))
            else:
                again.append((this, due.batch_id, answer.status, None, None))
            continue
        if not isinstance(answer, BmsError):
            log.error("batch %s: poll of job %s failed: %s", due.batch_id, due.job_id, answer)
            info = ErrorInfo(message=describe(answer)[:1000])
            again.append((this, due.batch_id, None, info, None))
            continue
        if answer.status is None:
            rt.metrics.api_call("job", None)  # no answer came: the response hook saw nothing
        log.warning(
            "batch %s: poll of job %s failed: %s", due.batch_id, due.job_id, describe(answer)
        )
        what = after_poll(answer)
        if what is Next.MISSING:
            outcome[due.batch_id] = _job_missing(due.batch_id, this, rt, answer)
            continue
        at_least = None
        if what is Next.THROTTLED and isinstance(answer, ThrottledError):
            if due.project_id not in throttled:
                throttled.add(due.project_id)
                cooldown = throttle_cooldown(answer, rt.settings)
                rt.budgets.cooldown(rt.budget_key(due.project_id, JOB), rt.rate(JOB), cooldown)
            at_least = answer.retry_after
        again.append((this, due.batch_id, None, error_info(answer), at_least))
    if again:
        outcome.update(_again_many(again, rt))
    if ended:
        outcome.update(_settle_many(ended, rt))
    sweep.ask_next(rt, sweep.POLL)
    return sweep.by_outcome(outcome)


def _reserve(
    claimed: list[DuePoll], rt: Runtime
) -> tuple[list[tuple[DuePoll, datetime]], list[tuple[DuePoll, float]]]:
    """One reservation of each project's job budget for all of its claimed polls: the polls
    with a slot within ``MAX_SLEEP`` (and when), and those put off (and by how long: after
    the slots the budget gives out meanwhile, one interval apart)."""
    by_project: dict[str, list[DuePoll]] = {}
    for due in claimed:
        by_project.setdefault(due.project_id, []).append(due)
    granted: list[tuple[DuePoll, datetime]] = []
    later: list[tuple[DuePoll, float]] = []
    for project_id, polls in by_project.items():
        rate = rt.rate(JOB)
        slots = rt.budgets.reserve_many(
            rt.budget_key(project_id, JOB), rate, len(polls), max_wait=MAX_SLEEP
        )
        now = rt.now()
        for due, slot in zip(polls, slots, strict=False):
            rt.metrics.observe("bmsreboot_budget_wait_seconds", slot.wait)
            # At its slot, and never before it was due (the sweep's window takes it early).
            granted.append((due, max(now + timedelta(seconds=slot.wait), due.due_at)))
        for n, due in enumerate(polls[len(slots) :]):
            later.append((due, MAX_SLEEP + rate.interval * (n + 1)))
    return sorted(granted, key=lambda g: g[1]), later


def _put_off(
    later: list[tuple[DuePoll, float]], rt: Runtime, outcome: dict[uuid.UUID, str]
) -> None:
    """Polls the budget has no slot for soon: due again when it will (one statement)."""
    now = rt.now()
    with unit_of_work(rt.engine) as session:
        moved = update_each(
            session,
            {
                "id": [due.batch_id for due, _ in later],
                "next_poll_at": [now + timedelta(seconds=wait) for _, wait in later],
                "poll_count": [due.polls for due, _ in later],
            },
            fixed={"updated_at": now},
            guard={"status": BatchStatus.SUBMITTED.value},
            match=("poll_count",),
        )
        for due, wait in later:
            if due.batch_id in moved:
                rt.dispatcher.poll(due.batch_id, countdown=wait, seq=due.polls)
                outcome[due.batch_id] = "budget"


def _again_many(
    again: list[tuple[_Poll, uuid.UUID, str | None, ErrorInfo | None, float | None]],
    rt: Runtime,
) -> dict[uuid.UUID, str]:
    """Book the polls whose job still runs (or whose GET failed) and schedule their next:
    one statement for those without an error, one for those with; a batch past its deadline
    ends ``timed_out`` instead."""
    now = rt.now()
    result: dict[uuid.UUID, str] = {}
    due: list[tuple[_Poll, uuid.UUID, ErrorInfo | None, float]] = []
    with unit_of_work(rt.engine) as session:
        learned: dict[str, float | None] = {}
        for this, batch_id, _status, error, at_least in again:
            if this.deadline is not None and now >= this.deadline:
                continue
            if this.project_id not in learned:
                learned[this.project_id] = learned_job_duration(
                    session, this.project_id, rt.settings.poll_history
                )
            delay = next_poll_delay(this.polls + 1, learned[this.project_id], at_least, rt)
            due.append((this, batch_id, error, delay))
        booked: dict[uuid.UUID, uuid.UUID] = {}
        for with_error in (False, True):
            rows = [d for d in due if (d[2] is not None) is with_error]
            if not rows:
                continue
            columns: dict[str, list[Any]] = {
                "id": [batch_id for _, batch_id, _, _ in rows],
                "next_poll_at": [now + timedelta(seconds=delay) for *_, delay in rows],
                "poll_count": [this.polls for this, *_ in rows],
            }
            if with_error:
                for name in ErrorInfo().columns():
                    columns[name] = [e.columns()[name] for _, _, e, _ in rows if e is not None]
            booked.update(
                update_each(
                    session,
                    columns,
                    fixed={
                        "last_polled_at": utcnow(),
                        "job_missing_since": None,
                        "updated_at": now,
                    },
                    guard={"status": BatchStatus.SUBMITTED.value},
                    match=("poll_count",),
                    increment=("poll_count",),
                )
            )
        for this, batch_id, error, delay in due:
            if batch_id in booked:
                rt.dispatcher.poll(batch_id, countdown=delay, seq=this.polls + 1)
                result[batch_id] = "retry" if error else "running"
            else:
                result[batch_id] = "stale"
    for this, batch_id, job_status, error, _at_least in again:
        if this.deadline is not None and now >= this.deadline:
            result[batch_id] = _end_unanswered(
                batch_id, this, rt, BatchStatus.TIMED_OUT, TIMED_OUT, error, job_status
            )
        elif result.get(batch_id) == "running":
            silences.while_running(rt, batch_id, this.silence_id, this.silence_ends_at)
    return result


def _settle_many(
    ended: list[tuple[uuid.UUID, uuid.UUID, _Poll, Job]], rt: Runtime
) -> dict[uuid.UUID, str]:
    """Write the outcomes of the jobs that ended, in one transaction, each batch in a
    savepoint: a batch whose writes fail keeps its claim's lease (it is polled again then),
    the others keep their outcomes. In the order of their requests, the order every sweep
    locks requests in (two sweeps never wait on each other in a circle)."""
    result: dict[uuid.UUID, str] = {}
    delays: list[tuple[_Poll, float]] = []
    with unit_of_work(rt.engine) as session:
        for _request_id, batch_id, this, job in sorted(ended, key=lambda e: (e[0], e[1])):
            try:
                with savepoint(session):
                    detection_delay = _settle_job(session, batch_id, this, job, rt)
            except OperationalError:
                raise  # the database itself: the whole sweep is tried again
            except Exception:
                log.exception("batch %s: the outcome of job %s not written", batch_id, this.job_id)
                result[batch_id] = "error"
                continue
            if detection_delay is None:
                result[batch_id] = "stale"
            else:
                result[batch_id] = "finished"
                delays.append((this, detection_delay))
    for this, detection_delay in delays:
        rt.metrics.observe("bmsreboot_polls_per_job", float(this.polls + 1))
        rt.metrics.observe("bmsreboot_detection_delay_seconds", detection_delay)
    return result
