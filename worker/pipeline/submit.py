"""Submission: the write-ahead protocol that keeps a server from being rebooted twice.

1. In a committed transaction the batch moves ``pending -> submitting`` (compare-and-set: of two
   workers holding the same message, one wins; the other finds it past ``pending`` and never
   POSTs).
2. The POST.
3. In a committed transaction the batch moves ``submitting -> submitted`` with its job id, and
   its first poll is scheduled.

A batch is POSTed only once the release step (``worker.pipeline.release``) reserved it a slot
of the project's API budget: a message for a batch that was not released, or that comes before
its slot, sends the work back to the release step instead of POSTing.

What happens after a failed POST is one pure function, ``failures.after_submit``. A failure
the client classifies as **not accepted** returns the batch to ``pending``, due again after
exponential backoff with jitter (a 429 is due at once, and cools down the whole budget of the
project). A **maybe accepted** failure (the API may have taken the reboot, we never learned a
job id) makes the batch ``unknown``: never resubmitted by the pipeline, visible in ``status``
with its reason. A refusal (4xx) makes it ``rejected`` with the API's code and message, or,
when it refused the whole batch for one server it does not name, splits it. A batch found in
``submitting`` by a later message, older than any POST could take, lost its worker mid-call:
it becomes ``unknown`` too. Every way a batch ends here goes through ``ending.end_batch``.
"""

from __future__ import annotations

import contextlib
import functools
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from worker.bms.errors import BmsError, ThrottledError
from worker.bms.models import ServerDetails
from worker.budget import ACTION
from worker.db.create import split_batch
from worker.db.models import Batch, RebootRequest
from worker.db.overlap import held_elsewhere, may_overlap
from worker.db.queries import batch_server_ids, learned_job_duration
from worker.db.rollout import stop_request
from worker.db.session import after_commit, unit_of_work
from worker.db.states import (
    ACTIVE_REQUEST_STATES,
    BatchStatus,
    IllegalTransition,
    RequestStatus,
    ServerStatus,
    past_cut_off,
)
from worker.db.sweeps import (
    DueSubmit,
    SubmittedRow,
    claim_submits,
    due_submits,
    record_submitted,
    server_ids_of,
    unrelease,
)
from worker.db.transitions import (
    ServerOutcome,
    settle_servers,
    transition_batch,
    transition_request,
    update_batch,
)
from worker.pipeline import silences, sweep
from worker.pipeline.backoff import first_poll_delay, submit_retry_delay, with_jitter
from worker.pipeline.ending import batch_ended, end_batch, request_changed
from worker.pipeline.failures import ISOLATE_CODES, Next, after_submit, throttle_cooldown
from worker.pipeline.inventory import (
    InventoryBusy,
    InventoryRefused,
    InventoryUnavailable,
    preflight_reason,
    server_states,
)
from worker.pipeline.release import schedule_release
from worker.pipeline.runtime import Runtime, describe, error_info, log

#: A submit message this much early for its slot runs anyway (timer resolution).
EARLY_TOLERANCE = 0.05


def stale_after(rt: Runtime) -> float:
    """Seconds after which a batch still ``submitting`` can no longer be in a live POST."""
    s = rt.settings
    return s.connect_timeout + s.read_timeout + s.submit_stale_margin


@dataclass(frozen=True)
class Claim:
    """A batch this worker moved to ``submitting``: what the POST needs."""

    attempt: int
    project_id: str
    reboot_type: str
    server_ids: list[str]


@dataclass(frozen=True)
class Ready:
    """A released batch at its slot, of a request still at work: what the claim needs."""

    batch_id: uuid.UUID
    request_id: uuid.UUID
    project_id: str
    server_ids: list[str]
    attempts: int
    preflight: bool


def submit_batch(batch_id: uuid.UUID, rt: Runtime) -> str:
    """Submit one batch. Returns what happened, one word, for logs and tests."""
    with unit_of_work(rt.engine) as session:
        ready = _ready(session, batch_id, rt)
    if not isinstance(ready, Ready):
        return ready
    checked = _checks(ready, rt)
    if isinstance(checked, str):
        return checked
    unsent, silence = checked
    with unit_of_work(rt.engine) as session:
        claim = _claim(session, ready, unsent, rt, silence)
    if not isinstance(claim, Claim):
        silences.discard(silence, rt)
        return claim
    # Committed: the batch is ``submitting`` before any byte goes to the cloud.
    return _post(batch_id, claim, rt)


def _post(batch_id: uuid.UUID, claim: Claim, rt: Runtime) -> str:
    """The POST of a claimed batch, and its answer recorded."""
    try:
        client = rt.client_for(claim.project_id)
        job_id = client.batch_reboot(claim.project_id, claim.server_ids, claim.reboot_type)
    except Exception as exc:
        return _failed(batch_id, claim, exc, rt)
    return _submitted(batch_id, claim.project_id, job_id, rt)


def _checks(
    ready: Ready, rt: Runtime
) -> tuple[dict[str, ServerOutcome], silences.Planned | None] | str:
    """What must happen before the claim, outside any transaction (no row is held while the
    API answers): the pre-flight read (the servers not to send, with their outcomes) and the
    silence of the servers sent; or, one word, why the batch does not go now."""
    try:
        unsent, states = _preflight(ready, rt) if ready.preflight else ({}, None)
    except InventoryBusy as busy:
        return _come_back(ready, busy.wait, rt)
    except InventoryUnavailable as exc:
        return _inventory_down(ready, str(exc), rt)
    except InventoryRefused as exc:
        return _inventory_refused(ready, str(exc), rt)
    sending = [s for s in ready.server_ids if s not in unsent]
    silence = silences.before_post(rt, ready.batch_id, sending, states) if sending else None
    if silence is not None and silence.error is not None and rt.settings.silence_required:
        return _unsilenced(ready, silence.error, rt)
    return unsent, silence


def _ready(session: Session, batch_id: uuid.UUID, rt: Runtime) -> Ready | str:
    """Whether the batch may be claimed now, or why not, one word: a second message for the
    same batch must never POST again, an early or unreleased one hands it back."""
    batch = session.get(Batch, batch_id)
    if batch is None:
        log.error("batch %s does not exist; nothing to submit", batch_id)
        return "missing"
    if batch.status == BatchStatus.SUBMITTING:
        return _found_submitting(session, batch, rt)
    if batch.status != BatchStatus.PENDING:
        log.info("batch %s is %s, past pending: not POSTing again", batch_id, batch.status)
        return "skipped"
    if batch.released_at is None:
        # Not released: no budget slot is ours. The release step decides when it goes.
        log.info("batch %s was not released; handing it to the release step", batch_id)
        rt.dispatcher.release(batch.project_id)
        return "not_released"
    now = rt.now()
    early = (batch.next_attempt_at - now).total_seconds() if batch.next_attempt_at else 0.0
    if early > EARLY_TOLERANCE:
        rt.dispatcher.submit(batch_id, countdown=early)
        return "early"
    request = session.get(RebootRequest, batch.request_id)
    assert request is not None
    if request.status not in ACTIVE_REQUEST_STATES:
        log.info("batch %s not submitted: its request is %s", batch_id, request.status)
        return "skipped"
    if request.stop is not None:
        log.info("batch %s not submitted: its request was stopped (%s)", batch_id, request.stop)
        return "skipped"
    if past_cut_off(request.not_after, now):
        # Released before the cut-off, its slot came after it: never POST after not_after.
        # The release step cuts the request off (and cancels this batch).
        log.info("batch %s not submitted: its request's not_after has passed", batch_id)
        rt.dispatcher.release(batch.project_id)
        return "cut_off"
    preflight = rt.settings.preflight if request.preflight is None else request.preflight
    return Ready(
        batch_id,
        request.id,
        batch.project_id,
        batch_server_ids(session, batch_id),
        batch.submit_attempts,
        preflight,
    )


def _preflight(
    ready: Ready, rt: Runtime
) -> tuple[dict[str, ServerOutcome], dict[str, ServerDetails | None]]:
    """The servers of the batch the inventory says must not be sent now, each with its
    outcome: ``skipped`` with what was seen (locked, not ACTIVE, busy, its host down), or
    ``failed`` with ``BMS.0040`` when the inventory does not have it (the API would refuse
    the whole batch for it); and what was read (the silence's names and addresses)."""
    unsent: dict[str, ServerOutcome] = {}
    states = server_states(rt, ready.project_id, ready.server_ids)
    for server_id, server in states.items():
        if server is None:
            unsent[server_id] = ServerOutcome(
                ServerStatus.FAILED,
                error_code="BMS.0040",
                fail_reason="not sent: the inventory has no such server (BMS.0040)",
            )
        elif (why := preflight_reason(server)) is not None:
            unsent[server_id] = ServerOutcome(ServerStatus.SKIPPED, fail_reason=f"not sent: {why}")
    if unsent:
        log.warning(
            "batch %s: pre-flight keeps %d of %d servers back",
            ready.batch_id,
            len(unsent),
            len(ready.server_ids),
        )
    return unsent, states


def _claim(
    session: Session,
    ready: Ready,
    unsent: dict[str, ServerOutcome],
    rt: Runtime,
    silence: silences.Planned | None = None,
) -> Claim | str:
    """Move the batch ``pending -> submitting`` (compare-and-set: of two workers holding the
    same message one wins) with the servers it must not send settled, and its request
    ``running``; or end it at once when nothing is left to send."""
    request = session.get(RebootRequest, ready.request_id)
    assert request is not None
    others = [s for s in ready.server_ids if s not in unsent]
    held = held_elsewhere(session, request, others)
    outcomes = {
        **unsent,
        **{sid: ServerOutcome(ServerStatus.SKIPPED, fail_reason=why) for sid, why in held.items()},
    }
    try:
        if len(outcomes) == len(ready.server_ids):
            _nothing_to_send(session, ready, request, outcomes, rt)
            return "skipped"
        # The transition counts the attempt itself (submit_attempts + 1, in the same UPDATE).
        claimed = transition_batch(
            session,
            ready.batch_id,
            BatchStatus.SUBMITTING,
            actor=rt.actor,
            released_at=None,
            **(silence.columns() if silence is not None else {}),
        )
    except IllegalTransition as exc:
        log.info("batch %s claimed by another worker (%s): not POSTing", ready.batch_id, exc)
        return "skipped"
    if outcomes:
        settle_servers(session, ready.batch_id, outcomes, actor=rt.actor)
    if held:
        log.warning(
            "batch %s: %d of %d servers not sent, another request holds them",
            ready.batch_id,
            len(held),
            len(ready.server_ids),
        )
    _started(session, request, rt)
    return Claim(
        claimed.submit_attempts,
        request.project_id,
        request.type,
        [s for s in ready.server_ids if s not in outcomes],
    )


def _nothing_to_send(
    session: Session,
    ready: Ready,
    request: RebootRequest,
    outcomes: dict[str, ServerOutcome],
    rt: Runtime,
) -> None:
    """None of the batch's servers may be sent: it ends without a POST, ``skipped`` when every
    server was skipped, else ``failed``."""
    skipped = all(o.status == ServerStatus.SKIPPED for o in outcomes.values())
    _started(session, request, rt)
    end_batch(
        session,
        ready.batch_id,
        BatchStatus.SKIPPED if skipped else BatchStatus.FAILED,
        rt,
        servers=ServerStatus.SKIPPED,
        outcomes=outcomes,
        detail={"reason": "nothing left to send"},
        released_at=None,
        last_error_message="nothing left to send: every server was skipped or is unknown",
    )
    log.warning("batch %s not sent: nothing left to send", ready.batch_id)


def _come_back(ready: Ready, wait: float, rt: Runtime) -> str:
    """The list budget's next slot is far: the batch keeps its release and comes back then."""
    with unit_of_work(rt.engine) as session:
        if update_batch(
            session,
            ready.batch_id,
            expect=BatchStatus.PENDING,
            next_attempt_at=rt.now() + timedelta(seconds=wait),
        ):
            rt.dispatcher.submit(ready.batch_id, countdown=wait)
    return "budget"


def _inventory_down(ready: Ready, why: str, rt: Runtime) -> str:
    """The inventory could not be read: never send blind. Like a POST that was not accepted,
    the batch is due again after the backoff, up to ``BMSREBOOT_SUBMIT_MAX_ATTEMPTS``."""
    attempt = ready.attempts + 1
    if attempt >= rt.settings.submit_max_attempts:
        with unit_of_work(rt.engine) as session, contextlib.suppress(IllegalTransition):
            end_batch(
                session,
                ready.batch_id,
                BatchStatus.FAILED,
                rt,
                servers=ServerStatus.FAILED,
                fail_reason=f"not sent: the pre-flight check could not read the inventory "
                f"after {attempt} attempts ({why})"[:1000],
                detail={"reason": why},
                released_at=None,
                last_error_message=why[:1000],
            )
        return str(BatchStatus.FAILED)
    delay = with_jitter(
        submit_retry_delay(
            attempt, base=rt.settings.submit_retry_base, cap=rt.settings.submit_retry_max
        ),
        rt.settings.poll_jitter,
    )
    _due_again(ready, delay, rt, submit_attempts=attempt, last_error_message=f"pre-flight: {why}")
    log.warning(
        "batch %s: inventory unreadable (%s), due again in %.1f s", ready.batch_id, why, delay
    )
    return "retry"


def _due_again(
    ready: Ready, delay: float, rt: Runtime, *, last_error_message: str, **values: Any
) -> None:
    """A batch that could not be sent yet stays ``pending``, due again in ``delay`` seconds
    with the reason shown, and its project's release step wakes for it."""
    with unit_of_work(rt.engine) as session:
        update_batch(
            session,
            ready.batch_id,
            expect=BatchStatus.PENDING,
            released_at=None,
            next_attempt_at=rt.now() + timedelta(seconds=delay),
            last_error_message=last_error_message[:1000],
            **values,
        )
    schedule_release(rt, ready.project_id, delay)


def _unsilenced(ready: Ready, error: str, rt: Runtime) -> str:
    """``BMSREBOOT_SILENCE_REQUIRED`` and no silence could be made: the batch is not sent
    unsilenced. It stays ``pending``, due again after ``BMSREBOOT_SUBMIT_RETRY_MAX`` seconds
    (a gentle pace: each try reads the inventory again), with the reason shown; attempts are
    not counted (Alertmanager, not the cloud, is what failed)."""
    delay = with_jitter(rt.settings.submit_retry_max, rt.settings.poll_jitter)
    _due_again(
        ready,
        delay,
        rt,
        silence_error=error[:1000],
        last_error_message=f"waiting for a silence (BMSREBOOT_SILENCE_REQUIRED): {error}",
    )
    log.warning("batch %s not sent unsilenced: due again in %.1f s", ready.batch_id, delay)
    return "unsilenced"


def _inventory_refused(ready: Ready, why: str, rt: Runtime) -> str:
    """The API refuses to list the servers: the pre-flight check can never pass with this
    credential, and sending blind is not an option. The request stops (its pending batches,
    this one included, are cancelled) with the permission named."""
    reason = (
        f"pre-flight: {why}; grant it, or send the request with preflight false "
        "(BMSREBOOT_PREFLIGHT=false for every request)"
    )
    with unit_of_work(rt.engine) as session:
        if stop_request(session, ready.request_id, RequestStatus.HALTED, reason, actor=rt.actor):
            request_changed(session, ready.request_id, rt)
    log.error("request %s halted: %s", ready.request_id, reason)
    return "halted"


def _started(session: Session, request: RebootRequest, rt: Runtime) -> None:
    if request.status == RequestStatus.ACCEPTED:
        # Another batch of the same request may have started it a moment ago.
        with contextlib.suppress(IllegalTransition):
            transition_request(session, request.id, RequestStatus.RUNNING, actor=rt.actor)


def _found_submitting(session: Session, batch: Batch, rt: Runtime) -> str:
    """Another message for a batch already ``submitting``: a duplicate while a worker is in its
    POST, or a redelivery after that worker died. Wait until no POST can still be running,
    then call it ``unknown`` (a resubmit could be a second hard reboot)."""
    age = (rt.now() - batch.updated_at).total_seconds()
    limit = stale_after(rt)
    if age < limit:
        log.info("batch %s is being submitted by another worker; checking again later", batch.id)
        rt.dispatcher.submit(batch.id, countdown=limit - age + 1.0, alone=True)
        return "in_progress"
    settle_lost_submit(session, batch.id, age, rt)
    return str(BatchStatus.UNKNOWN)


def settle_lost_submit(session: Session, batch_id: uuid.UUID, age: float, rt: Runtime) -> None:
    """A batch ``submitting`` for longer than any POST can take lost its worker: ``unknown``
    (a later submit message finds it, or the reconciler)."""
    _end(
        session,
        batch_id,
        BatchStatus.UNKNOWN,
        rt,
        reason=(
            f"the worker submitting this batch was lost {int(age)} s ago, before it recorded "
            "an answer: the reboot may or may not have been accepted"
        ),
    )


def _failed(batch_id: uuid.UUID, claim: Claim, exc: Exception, rt: Runtime) -> str:
    attempt = claim.attempt
    if not isinstance(exc, BmsError) or exc.status is None:
        rt.metrics.api_call("action", None)  # no answer came: the response hook saw nothing
    what = after_submit(
        exc,
        attempt=attempt,
        max_attempts=rt.settings.submit_max_attempts,
        servers=len(claim.server_ids),
        isolate=rt.settings.isolate_unknown_servers,
    )
    if not isinstance(exc, BmsError):
        # Not a classified client error: we cannot tell whether the POST went out.
        log.exception("batch %s: unexpected error around the POST", batch_id)
        return _settle(batch_id, BatchStatus.UNKNOWN, rt, reason=describe(exc))
    if what is Next.UNKNOWN:
        log.error("batch %s: POST may have been accepted (%s): unknown", batch_id, describe(exc))
        return _settle(batch_id, BatchStatus.UNKNOWN, rt, reason=describe(exc), error=exc)
    if what is Next.ISOLATE:
        log.error("batch %s refused whole by the API: %s", batch_id, describe(exc))
        return _split(batch_id, claim, exc, rt)
    if what is Next.REJECTED:
        log.error("batch %s rejected by the API: %s", batch_id, describe(exc))
        whole = None
        if exc.code in ISOLATE_CODES and len(claim.server_ids) > 1:
            whole = (
                f"not rebooted: the API refused the whole batch of {len(claim.server_ids)} "
                f"servers ({exc.code}: {exc.message}) without naming a server, and isolation "
                "is off (BMSREBOOT_ISOLATE_UNKNOWN_SERVERS)"
            )
        return _settle(
            batch_id,
            BatchStatus.REJECTED,
            rt,
            reason=whole or describe(exc),
            error=exc,
            why=whole,
        )
    if what is Next.FAILED:
        log.error("batch %s cannot be submitted (attempt %d): %s", batch_id, attempt, describe(exc))
        return _settle(batch_id, BatchStatus.FAILED, rt, reason=describe(exc), error=exc)
    if what is Next.THROTTLED:
        assert isinstance(exc, ThrottledError)
        # The whole project's budget pauses, not only this batch: every worker waits.
        delay = min(throttle_cooldown(exc, rt.settings), rt.settings.submit_retry_max)
        rt.budgets.cooldown(rt.budget_key(claim.project_id, ACTION), rt.rate(ACTION), delay)
        due_in = 0.0
    else:
        delay = due_in = with_jitter(
            submit_retry_delay(
                attempt, base=rt.settings.submit_retry_base, cap=rt.settings.submit_retry_max
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
            released_at=None,
            next_attempt_at=rt.now() + timedelta(seconds=due_in),
            **error_info(exc).columns(),
        )
    # Not inside the unit of work: the budget's store may be the audit database itself.
    schedule_release(rt, claim.project_id, delay)
    log.warning(
        "batch %s not accepted (%s); attempt %d, due again in %.1f s",
        batch_id,
        describe(exc),
        attempt,
        delay,
    )
    return str(what)


def _split(batch_id: uuid.UUID, claim: Claim, exc: BmsError, rt: Runtime) -> str:
    """The API refused the whole batch for one of its servers, naming none: the batch ends
    ``rejected`` and its servers go, in two halves, to two new batches (``parent_batch_id``),
    released like any other. Halving again finds the servers at fault, which end ``failed``
    with the API's code; no other server is left out."""
    now = rt.now()
    with unit_of_work(rt.engine) as session:
        batch = transition_batch(
            session,
            batch_id,
            BatchStatus.REJECTED,
            actor=rt.actor,
            detail={"refused": describe(exc), "split": True},
            released_at=None,
            **error_info(exc).columns(),
        )
        children = split_batch(session, batch_id, now=now, actor=rt.actor)
        batch_ended(session, batch, rt)
        rt.dispatcher.release(claim.project_id)  # the halves are due at once
    log.warning(
        "batch %s of %d servers refused whole (%s): split into %d batches to isolate the server",
        batch_id,
        len(claim.server_ids),
        exc.code,
        len(children),
    )
    return "split"


def _submitted(batch_id: uuid.UUID, project_id: str, job_id: str, rt: Runtime) -> str:
    now = rt.now()
    # The job id exists only in this process now: a short database outage must not lose it.
    for attempt in range(4):
        try:
            with unit_of_work(rt.engine) as session:
                learned = learned_job_duration(session, project_id, rt.settings.poll_history)
                first = first_poll_delay(learned, rt.settings)
                transition_batch(
                    session,
                    batch_id,
                    BatchStatus.SUBMITTED,
                    actor=rt.actor,
                    detail={"job_id": job_id, "first_poll_in": round(first, 3)},
                    job_id=job_id,
                    next_poll_at=now + timedelta(seconds=first),
                    deadline_at=now + timedelta(seconds=rt.settings.job_deadline),
                )
                rt.dispatcher.poll(batch_id, countdown=first, seq=0)
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
    log.info("batch %s submitted: job %s, first poll in %.1f s", batch_id, job_id, first)
    return "submitted"


def _settle(
    batch_id: uuid.UUID,
    to: BatchStatus,
    rt: Runtime,
    *,
    reason: str,
    error: BmsError | None = None,
    why: str | None = None,
) -> str:
    with unit_of_work(rt.engine) as session:
        _end(session, batch_id, to, rt, reason=reason, error=error, why=why)
    return str(to)


def _end(
    session: Session,
    batch_id: uuid.UUID,
    to: BatchStatus,
    rt: Runtime,
    *,
    reason: str,
    error: BmsError | None = None,
    why: str | None = None,
) -> None:
    """End a batch that never got a job: its servers become ``unknown`` (maybe rebooted) or
    ``failed`` with the API's code (refused, or never accepted); ``why`` overrides the
    servers' fail reason."""
    columns = error_info(error).columns() if error else {"last_error_message": reason[:1000]}
    end_batch(
        session,
        batch_id,
        to,
        rt,
        servers=ServerStatus.UNKNOWN if to == BatchStatus.UNKNOWN else ServerStatus.FAILED,
        error_code=error.code if error else None,
        fail_reason=(why or (error.message if error and error.message else reason))[:1000],
        detail={"reason": reason},
        released_at=None,
        **columns,
    )


# --- the batched step: every batch whose slot has come, across projects -----------------------


def submit_due(rt: Runtime) -> dict[str, list[str]]:
    """The submit sweep (:func:`_submit_due`), its metrics written once at its end."""
    with rt.metrics.batched():
        return _submit_due(rt)


def _submit_due(rt: Runtime) -> dict[str, list[str]]:
    """The submit sweep (task ``bmsreboot.submit_due``, ``worker.pipeline.sweep``): the
    released batches whose slots come within the sweep's window, across projects, in waves
    of at most ``CONCURRENCY``: each wave claimed in one transaction, POSTed concurrently
    (each batch at its own slot), its answers recorded; then the next wave, up to
    ``MAX_BATCHES`` a run. The write-ahead rule is the one batch's: every batch is committed
    ``submitting`` before its POST, each answer is committed after it, an answer that cannot
    be told makes that batch ``unknown``, and one batch's failure is its own. A wave is only
    as large as the POSTs that go out at once, so a worker lost mid-sweep leaves ``unknown``
    only the batches whose POSTs were under way; the rest were never claimed and are still
    ``pending``. Returns the batches by what happened to them (what Flower shows)."""
    outcome: dict[uuid.UUID, str] = {}
    taken = 0
    helped = False
    while taken < sweep.MAX_BATCHES:
        seen, moved, backlog = _wave(rt, min(sweep.CONCURRENCY, sweep.MAX_BATCHES - taken), outcome)
        if backlog and not helped:
            # More is due than one wave: another worker process can take waves beside this.
            rt.dispatcher.sweep(sweep.SUBMIT, more=True)
            helped = True
        taken += seen
        if not moved:
            break  # nothing (more) of it was this sweep's to send
    sweep.ask_next(rt, sweep.SUBMIT, idle=not outcome)
    return sweep.by_outcome(outcome)


def _wave(rt: Runtime, size: int, outcome: dict[uuid.UUID, str]) -> tuple[int, bool, bool]:
    """One wave of the submit sweep: up to ``size`` due batches taken (locked: a sweep beside
    this one takes others), claimed, POSTed, recorded; what became of each goes into
    ``outcome``. Returns how many were taken, whether any of them moved, and whether more
    were due than the wave could take."""
    now = rt.now()
    claims: list[tuple[DueSubmit, Claim]] = []
    checking: list[tuple[DueSubmit, Ready]] = []
    with unit_of_work(rt.engine) as session:
        due = due_submits(session, now + timedelta(seconds=sweep.WINDOW), size + 1, lock=True)
        backlog = len(due) > size
        due = due[:size]
        # At most MAX_SERVERS servers a wave (one batch at least): large batches are spread
        # over the sweeps of several worker processes, not all claimed by one.
        servers = 0
        for n, d in enumerate(due):
            servers += d.size
            if n and servers > sweep.MAX_SERVERS:
                due, backlog = due[:n], True
                break
        members = server_ids_of(session, [d.batch_id for d in due if d.sendable])
        silencing = rt.alertmanager() is not None
        plain: list[tuple[DueSubmit, Ready]] = []
        for d in due:
            if not d.sendable:
                continue
            preflight = rt.settings.preflight if d.preflight is None else d.preflight
            one = Ready(
                d.batch_id,
                d.request_id,
                d.project_id,
                members[d.batch_id],
                d.submit_attempts,
                preflight,
            )
            if preflight or (silencing and d.silence):
                checking.append((d, one))
            else:
                plain.append((d, one))
        claims += _claim_plain(session, plain, rt, outcome)
    # Committed: these batches are ``submitting``. A request no longer at work (stopped,
    # cut off, ended): the one-batch step says what becomes of its batch, without a POST; one
    # it leaves released goes back to the release step (which holds what a stopped request
    # may not send), not to the next sweep.
    for d in due:
        if not d.sendable:
            outcome[d.batch_id] = submit_batch(d.batch_id, rt)
    idle = [d.batch_id for d in due if not d.sendable and outcome[d.batch_id] == "skipped"]
    if idle:
        with unit_of_work(rt.engine) as session:
            for project_id in unrelease(session, idle):
                rt.dispatcher.release(project_id)
    if checking:
        claims += _claim_checked(checking, rt, outcome)
    claims.sort(key=lambda c: c[0].slot)
    # Committed: every claimed batch is ``submitting`` before any byte goes to the cloud.
    answers = sweep.at_slots(
        rt,
        claims,
        slot=lambda c: c[0].slot,
        call=lambda c: rt.client_for(c[1].project_id).batch_reboot(
            c[1].project_id, c[1].server_ids, c[1].reboot_type
        ),
    )
    accepted: list[tuple[uuid.UUID, str, str]] = []
    for (d, claim), answer in zip(claims, answers, strict=True):
        if isinstance(answer, Exception):
            outcome[d.batch_id] = _failed(d.batch_id, claim, answer, rt)
        else:
            accepted.append((d.batch_id, d.project_id, answer))
    outcome.update(_submitted_many(accepted, rt))
    moved = any(d.batch_id in outcome for d in due)
    return len(due), moved, backlog


def _claim_plain(
    session: Session,
    plain: list[tuple[DueSubmit, Ready]],
    rt: Runtime,
    outcome: dict[uuid.UUID, str],
) -> list[tuple[DueSubmit, Claim]]:
    """Claim, in the caller's transaction, the batches with nothing to check first: in one
    statement those whose servers no other request could hold, the others one by one (the
    one-batch claim asks which servers another request holds)."""
    if not plain:
        return []
    now = rt.now()
    shared = may_overlap(session, [(d.project_id, d.request_id) for d, _ in plain])
    alone = [(d, r) for d, r in plain if (d.project_id, d.request_id) in shared]
    together = [d.batch_id for d, r in plain if (d.project_id, d.request_id) not in shared]
    taken = {c.batch_id: c for c in claim_submits(session, together, actor=rt.actor, now=now)}
    started_requests(session, {c.request_id for c in taken.values()}, rt.actor)
    claims: list[tuple[DueSubmit, Claim]] = []
    for d, r in plain:
        if d.batch_id in taken:
            attempts = taken[d.batch_id].submit_attempts
            claims.append((d, Claim(attempts, d.project_id, d.reboot_type, r.server_ids)))
        elif d.batch_id in together:
            outcome[d.batch_id] = "skipped"  # claimed by another worker meanwhile
    # In the order of their requests, the order every sweep locks requests in.
    for d, r in sorted(alone, key=lambda dr: (dr[0].request_id, dr[0].batch_id)):
        one = _claim(session, r, {}, rt)
        if isinstance(one, Claim):
            claims.append((d, one))
        else:
            outcome[d.batch_id] = one
    return claims


def _claim_checked(
    checking: list[tuple[DueSubmit, Ready]], rt: Runtime, outcome: dict[uuid.UUID, str]
) -> list[tuple[DueSubmit, Claim]]:
    """The batches with a pre-flight read or a silence first: those outside any transaction
    (no row is held while the inventory or Alertmanager answers: a project's list is read
    once for all of its batches), then each claimed as the one-batch step claims, all in one
    transaction."""
    checked: list[tuple[DueSubmit, Ready, dict[str, ServerOutcome], silences.Planned | None]] = []
    for d, r in checking:
        found = _checks(r, rt)
        if isinstance(found, str):
            outcome[d.batch_id] = found
        else:
            checked.append((d, r, *found))
    claims: list[tuple[DueSubmit, Claim]] = []
    with unit_of_work(rt.engine) as session:
        # In the order of their requests, the order every sweep locks requests in.
        for d, r, unsent, silence in sorted(
            checked, key=lambda c: (c[0].request_id, c[0].batch_id)
        ):
            one = _claim(session, r, unsent, rt, silence)
            if isinstance(one, Claim):
                claims.append((d, one))
            else:
                outcome[d.batch_id] = one
                after_commit(functools.partial(silences.discard, silence, rt))
    return claims


def started_requests(session: Session, request_ids: set[uuid.UUID], actor: str) -> None:
    """The requests of just-claimed batches that were ``accepted`` are ``running`` now."""
    if not request_ids:
        return
    waiting = session.scalars(
        select(RebootRequest.id).where(
            RebootRequest.id.in_(sorted(request_ids)),
            RebootRequest.status == RequestStatus.ACCEPTED,
        )
    ).all()
    for request_id in waiting:
        # Another batch of the same request may have started it a moment ago.
        with contextlib.suppress(IllegalTransition):
            transition_request(session, request_id, RequestStatus.RUNNING, actor=actor)


def _submitted_many(
    accepted: list[tuple[uuid.UUID, str, str]], rt: Runtime
) -> dict[uuid.UUID, str]:
    """Record the job ids of the accepted batches in one statement, each batch's first poll
    scheduled; a short database outage must not lose them (they exist only in this process
    now), so the write is tried again as the one-batch step does."""
    if not accepted:
        return {}
    now = rt.now()
    for attempt in range(4):
        try:
            with unit_of_work(rt.engine) as session:
                firsts: dict[str, float] = {}
                rows = []
                for batch_id, project_id, job_id in accepted:
                    if project_id not in firsts:
                        learned = learned_job_duration(
                            session, project_id, rt.settings.poll_history
                        )
                        firsts[project_id] = first_poll_delay(learned, rt.settings)
                    first = firsts[project_id]
                    rows.append(
                        SubmittedRow(
                            batch_id,
                            job_id,
                            now + timedelta(seconds=first),
                            now + timedelta(seconds=rt.settings.job_deadline),
                            first,
                        )
                    )
                moved = record_submitted(session, rows, actor=rt.actor, now=now)
                for row in rows:
                    if row.batch_id in moved:
                        rt.dispatcher.poll(row.batch_id, countdown=row.first_poll_in, seq=0)
            break
        except OperationalError:
            if attempt == 3:
                for batch_id, _project, job_id in accepted:
                    log.critical("batch %s: job %s could not be recorded", batch_id, job_id)
                raise
            time.sleep(2**attempt)
    result: dict[uuid.UUID, str] = {}
    for row in rows:
        if row.batch_id in moved:
            log.info(
                "batch %s submitted: job %s, first poll in %.1f s",
                row.batch_id,
                row.job_id,
                row.first_poll_in,
            )
            result[row.batch_id] = "submitted"
        else:
            log.critical(
                "batch %s: job %s accepted but the batch left 'submitting' meanwhile",
                row.batch_id,
                row.job_id,
            )
            result[row.batch_id] = "conflict"
    return result
