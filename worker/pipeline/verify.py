"""Verification: a reboot counts only when the server is back.

A job's ``SUCCESS`` says only that the cloud power-cycled the machine; bare metal then spends
minutes in firmware and boot, and some machines never come back. So when a job ends, each
server whose sub-job succeeded is ``verifying``, and so is its batch (``worker.pipeline.poll``),
until the inventory shows it back, seen **after** the job's end: ``ACTIVE``, no task running,
not locked, its host ``UP`` (or no host information). Then, if the request has a
``health_check``, one probe (``worker.pipeline.probes``); then it is ``succeeded``, with
``verified_at``. A server not back within its health timeout (``BMSREBOOT_HEALTH_TIMEOUT``,
1200 s, from the job's end), seen ``ERROR`` or ``SHUTOFF`` after its job, or gone from the
inventory, ends ``unhealthy`` with what was last seen.

Each check is one task run (``bmsreboot.verify_batch``), like a poll: read the batch's servers
still verifying, through the project's list budget (``worker.pipeline.inventory``: list pages
shared by every batch of the project checked within a few seconds), settle those that are back
or lost, and schedule the next check with a countdown: the first at the project's learned boot
time (the median of its recent returns after the job's end) or ``BMSREBOOT_VERIFY_FIRST_DELAY``,
then short steps growing to ``BMSREBOOT_VERIFY_MAX_INTERVAL``. A check message carries ``seq``,
the batch's check count when it was sent: only the message whose ``seq`` still matches may book
the check, so a check re-sent by the reconciler never doubles the chain.

Once none of its servers is verifying, the batch ends (``ending.batch_ended``): its status from
its servers, its boot time recorded (the median of its servers' returns after the job's end,
each by the inventory's ``updated`` time of the server, so that the learned time is when they
came back, not when we happened to look), and what follows its end (the next wave: a
``verifying`` batch still counts against ``max_in_flight``, so at most that many batches' servers
are out of service at once).

A list the API refuses (403) halts the request, naming the permission: a server is never called
healthy without being seen. A list that cannot be read now only delays the check; a server not
seen back by its timeout is unhealthy.
"""

from __future__ import annotations

import statistics
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from worker.bms.models import ServerDetails
from worker.db.models import Batch, RebootRequest, ServerResult
from worker.db.queries import learned_boot_seconds
from worker.db.rollout import stop_request
from worker.db.session import unit_of_work
from worker.db.states import BatchStatus, RequestStatus, ServerStatus, derive_batch_status
from worker.db.sweeps import claim_checks
from worker.db.transitions import (
    ServerOutcome,
    settle_servers,
    settled_servers,
    transition_batch,
    update_batch,
)
from worker.pipeline import silences, sweep
from worker.pipeline.announce import announce
from worker.pipeline.backoff import countdown_ceiling, poll_delay, with_jitter
from worker.pipeline.ending import batch_ended, request_changed
from worker.pipeline.inventory import (
    InventoryBusy,
    InventoryRefused,
    InventoryUnavailable,
    is_back,
    seen,
    server_states,
)
from worker.pipeline.probes import probe_all
from worker.pipeline.runtime import Runtime, log
from worker.settings import Settings
from worker.webhooks import SERVER_UNHEALTHY

#: Statuses after which a rebooted server will not come back by itself.
LOST = frozenset({"ERROR", "SHUTOFF"})


@dataclass(frozen=True)
class _Check:
    project_id: str
    request_id: uuid.UUID
    job_ended_at: datetime
    #: A check reads what the inventory showed after this: the job's end, or the batch's
    #: previous check (a list read before it would only say again what that check saw).
    seen_after: datetime
    checks: int
    deadline: datetime
    timeout: float
    health_check: dict[str, Any] | None
    servers: list[str]


def verifies(request: RebootRequest, settings: Settings) -> bool:
    """Whether the request's rebooted servers must be seen back (its ``verify``, else
    ``BMSREBOOT_VERIFY``)."""
    return settings.verify if request.verify is None else request.verify


def first_check_delay(session: Session, project_id: str, rt: Runtime) -> float:
    """When to look first after a job's end: the project's learned boot time, else the
    setting (``BMSREBOOT_VERIFY_FIRST_DELAY``)."""
    learned = learned_boot_seconds(session, project_id, rt.settings.poll_history)
    first = learned if learned is not None else rt.settings.verify_first_delay
    return min(first, countdown_ceiling(rt.settings))


def verify_batch(batch_id: uuid.UUID, rt: Runtime, *, seq: int | None = None) -> str:
    """One check of a verifying batch's servers. Returns what happened, one word."""
    with unit_of_work(rt.engine) as session:
        this = _load(session, batch_id, rt, seq)
    if isinstance(this, str):
        return this
    now = rt.now()
    error: str | None = None
    try:
        states = server_states(rt, this.project_id, this.servers, after=this.seen_after)
    except InventoryBusy as busy:
        return _again(batch_id, this, rt, {}, delay=busy.wait, error=None)
    except InventoryRefused as refused:
        return _refused(batch_id, this, str(refused), rt)
    except InventoryUnavailable as exc:
        states, error = {}, f"the inventory could not be read: {exc}"
    outcomes: dict[str, ServerOutcome] = {}
    waiting: dict[str, str] = {}
    candidates = []
    for server_id in this.servers:
        if error is not None:
            waiting[server_id] = error
            continue
        server = states.get(server_id)
        if server is None:
            outcomes[server_id] = _unhealthy("gone from the inventory after its reboot")
        elif server.status in LOST:
            outcomes[server_id] = _unhealthy(f"status {server.status} after its reboot")
        elif is_back(server):
            candidates.append(server)
        else:
            waiting[server_id] = f"not back yet: {seen(server)}"
    failed_probes = (
        probe_all(this.health_check, candidates, rt.settings.probe_timeout)
        if (this.health_check)
        else {}
    )
    for server in candidates:
        why = failed_probes.get(server.id.lower())
        if why is None:
            outcomes[server.id.lower()] = ServerOutcome(
                ServerStatus.SUCCEEDED,
                verified_at=now,
                returned_at=_returned(server, this.job_ended_at, now),
            )
        else:
            waiting[server.id.lower()] = f"back, but its health check fails: {why}"
    if now >= this.deadline:
        for server_id, why in waiting.items():
            outcomes[server_id] = _unhealthy(f"not back within {this.timeout:g} s: {why}")
        waiting = {}
    result = _record(batch_id, this, rt, outcomes, waiting, error)
    if result == "waiting":
        # Booked and committed: the silence lasts to the deadline, and an unhealthy server
        # leaves it now (an ended batch's silence is expired by ``ending.batch_ended``).
        silences.while_verifying(
            rt,
            batch_id,
            deadline=this.deadline,
            left=list(waiting),
            states=states,
            dropped=[s for s, o in outcomes.items() if o.status == ServerStatus.UNHEALTHY],
        )
    return result


def _returned(server: ServerDetails, job_ended_at: datetime, now: datetime) -> datetime:
    """When the server came back: the inventory's ``updated`` time of it (its last change,
    the end of its boot), kept between the job's end and now; without one, now."""
    if server.updated is None:
        return now
    return min(max(server.updated, job_ended_at), now)


def _unhealthy(reason: str) -> ServerOutcome:
    return ServerOutcome(ServerStatus.UNHEALTHY, fail_reason=reason[:1000])


def _load(session: Session, batch_id: uuid.UUID, rt: Runtime, seq: int | None) -> _Check | str:
    batch = session.get(Batch, batch_id)
    if batch is None:
        log.error("batch %s does not exist; nothing to verify", batch_id)
        return "missing"
    if batch.status != BatchStatus.VERIFYING:
        return "done"  # a duplicate check message for a batch already ended
    if seq is not None and seq != batch.checks:
        return "stale"  # another message carries this batch's checks
    request = session.get(RebootRequest, batch.request_id)
    assert request is not None
    timeout = request.health_timeout or rt.settings.health_timeout
    ended = batch.job_ended_at or rt.now()
    servers = list(
        session.scalars(
            select(ServerResult.server_id)
            .where(ServerResult.batch_id == batch_id, ServerResult.status == ServerStatus.VERIFYING)
            .order_by(ServerResult.id)
        )
    )
    return _Check(
        batch.project_id,
        batch.request_id,
        ended,
        max(ended, batch.updated_at),
        batch.checks,
        ended + timedelta(seconds=timeout),
        timeout,
        request.health_check,
        servers,
    )


def _record(
    batch_id: uuid.UUID,
    this: _Check,
    rt: Runtime,
    outcomes: dict[str, ServerOutcome],
    waiting: dict[str, str],
    error: str | None,
) -> str:
    """Settle what this check decided; end the batch if nothing is left to wait for, else
    book the next check."""
    if waiting or not outcomes:
        return _again(batch_id, this, rt, outcomes, delay=None, error=error)
    with unit_of_work(rt.engine) as session:
        if not _book(session, batch_id, this, next_check_at=None, error=error):
            return "stale"
        _settle(session, batch_id, this, outcomes, rt)
        batch = _end(session, batch_id, this, rt)
    _observe(rt, this, outcomes)
    log.info("batch %s verified: %s", batch_id, batch.status)
    return str(batch.status)


def _again(
    batch_id: uuid.UUID,
    this: _Check,
    rt: Runtime,
    outcomes: dict[str, ServerOutcome],
    *,
    delay: float | None,
    error: str | None,
) -> str:
    if delay is None:
        with unit_of_work(rt.engine) as session:
            learned = learned_boot_seconds(session, this.project_id, rt.settings.poll_history)
        delay = with_jitter(
            poll_delay(
                this.checks + 1,
                learned=learned,
                first=rt.settings.verify_first_delay / 10 or 1.0,
                cap=rt.settings.verify_max_interval,
            ),
            rt.settings.poll_jitter,
        )
        # Never later than the deadline: a server not back then is unhealthy at once.
        delay = max(min(delay, (this.deadline - rt.now()).total_seconds()), 0.0)
    delay = min(delay, countdown_ceiling(rt.settings))
    with unit_of_work(rt.engine) as session:
        if not _book(
            session, batch_id, this, next_check_at=rt.now() + timedelta(seconds=delay), error=error
        ):
            return "stale"
        if outcomes:
            _settle(session, batch_id, this, outcomes, rt)
        rt.dispatcher.verify(batch_id, countdown=delay, seq=this.checks + 1)
    # After the commit: the metrics store may be this same database (the embedded default),
    # whose one writer is the unit of work above until it ends.
    _observe(rt, this, outcomes)
    return "waiting"


def _settle(
    session: Session,
    batch_id: uuid.UUID,
    this: _Check,
    outcomes: dict[str, ServerOutcome],
    rt: Runtime,
) -> None:
    """Settle the servers this check decided on; each that this call made ``unhealthy`` is
    announced (``server.unhealthy``), once: a server already settled is not settled again."""
    settled = settled_servers(
        session, batch_id, outcomes, actor=rt.actor, expect=ServerStatus.VERIFYING
    )
    unhealthy = [(sid, o) for sid, o in settled if o.status == ServerStatus.UNHEALTHY]
    if not unhealthy:
        return
    notify_url = session.scalar(
        select(RebootRequest.notify_url).where(RebootRequest.id == this.request_id)
    )
    for server_id, outcome in unhealthy:
        announce(
            session,
            rt,
            SERVER_UNHEALTHY,
            this.request_id,
            {
                "request_id": str(this.request_id),
                "server_id": server_id,
                "batch_id": str(batch_id),
                "reason": outcome.fail_reason,
            },
            notify_url=notify_url,
        )


def _book(
    session: Session,
    batch_id: uuid.UUID,
    this: _Check,
    *,
    next_check_at: datetime | None,
    error: str | None,
) -> bool:
    """Count this check (compare-and-set on ``checks``): False if another message booked it."""
    values: dict[str, Any] = {"checks": Batch.checks + 1, "next_check_at": next_check_at}
    if error is not None:
        values["last_error_message"] = error[:1000]
    return update_batch(
        session, batch_id, expect=BatchStatus.VERIFYING, checks_is=this.checks, **values
    )


def _end(session: Session, batch_id: uuid.UUID, this: _Check, rt: Runtime) -> Batch:
    """None of the batch's servers is verifying any more: it ends, its status from its
    servers, with the time they took to come back (the project's learned boot time)."""
    counts = dict(
        session.execute(
            select(ServerResult.status, func.count())
            .where(ServerResult.batch_id == batch_id)
            .group_by(ServerResult.status)
        ).all()
    )
    returns = [
        (returned - this.job_ended_at).total_seconds()
        for returned in session.scalars(
            select(ServerResult.returned_at).where(
                ServerResult.batch_id == batch_id, ServerResult.returned_at.is_not(None)
            )
        )
        if returned is not None
    ]
    batch = transition_batch(
        session,
        batch_id,
        derive_batch_status({ServerStatus(k): v for k, v in counts.items()}),
        actor=rt.actor,
        detail={"servers": {str(k): v for k, v in counts.items()}},
        boot_seconds=statistics.median(returns) if returns else None,
        next_check_at=None,
    )
    batch_ended(session, batch, rt)
    return batch


def _observe(rt: Runtime, this: _Check, outcomes: dict[str, ServerOutcome]) -> None:
    for outcome in outcomes.values():
        if outcome.verified_at is not None:
            back = (outcome.verified_at - this.job_ended_at).total_seconds()
            rt.metrics.observe("bmsreboot_verify_seconds", max(back, 0.0))


def _refused(batch_id: uuid.UUID, this: _Check, why: str, rt: Runtime) -> str:
    """The API refuses to list the servers: they can never be seen back with this credential.
    The request stops (nothing more is sent), naming the permission; this batch's servers are
    ``unknown`` (rebooted, never seen), and it ends."""
    reason = (
        f"verification: {why}; grant it, or send the request with verify false "
        "(BMSREBOOT_VERIFY=false for every request)"
    )
    unseen = ServerOutcome(ServerStatus.UNKNOWN, fail_reason=f"never seen back: {why}"[:1000])
    with unit_of_work(rt.engine) as session:
        if not _book(session, batch_id, this, next_check_at=None, error=why):
            return "stale"
        stop_request(session, this.request_id, RequestStatus.HALTED, reason, actor=rt.actor)
        settle_servers(
            session,
            batch_id,
            dict.fromkeys(this.servers, unseen),
            actor=rt.actor,
            expect=ServerStatus.VERIFYING,
        )
        _end(session, batch_id, this, rt)
        request_changed(session, this.request_id, rt)
    log.error("request %s halted: %s", this.request_id, reason)
    return "halted"


# --- the batched step: every check that falls due together ----------------------------------


def verify_due(rt: Runtime) -> dict[str, list[str]]:
    """The check sweep (:func:`_verify_due`), its metrics written once at its end."""
    with rt.metrics.batched():
        return _verify_due(rt)


def _verify_due(rt: Runtime) -> dict[str, list[str]]:
    """The check sweep (task ``bmsreboot.verify_due``, ``worker.pipeline.sweep``): claim the
    verifying batches whose next check comes within the sweep's window, across projects, and
    check them project by project, the projects concurrently: one project's batches one
    after the other, so that they share its list pages (``worker.pipeline.inventory``) and
    its list budget serves them all with the fewest reads. Each batch's check is the
    one-batch check (its own transaction, compare-and-set by its check count). Returns the
    batches by what happened."""
    now = rt.now()
    with unit_of_work(rt.engine) as session:
        claimed = claim_checks(
            session,
            now + timedelta(seconds=sweep.WINDOW),
            now + timedelta(seconds=sweep.lease_seconds(rt)),
            sweep.MAX_BATCHES,
            sweep.MAX_SERVERS,
        )
    more = len(claimed) >= sweep.MAX_BATCHES
    if more:
        rt.dispatcher.sweep(sweep.VERIFY, more=True)
    by_project: dict[str, list[tuple[uuid.UUID, int, datetime]]] = {}
    for batch_id, project_id, checks, due_at in claimed:
        by_project.setdefault(project_id, []).append((batch_id, checks, due_at))

    def check_project(
        batches: list[tuple[uuid.UUID, int, datetime]],
    ) -> list[tuple[uuid.UUID, str]]:
        done = []
        for batch_id, checks, due_at in sorted(batches, key=lambda b: b[2]):
            early = (due_at - rt.now()).total_seconds()
            if early > 0:
                time.sleep(early)  # within the sweep's window: never before it is due
            try:
                done.append((batch_id, verify_batch(batch_id, rt, seq=checks)))
            except OperationalError:
                raise  # the database itself: the sweep is tried again (the others leased)
            except Exception:
                # This batch's check keeps its lease (it is checked again then); the
                # project's other batches go on.
                log.exception("batch %s: check failed", batch_id)
                done.append((batch_id, "error"))
        return done

    results = sweep.at_slots(rt, list(by_project.values()), lambda _b: None, check_project)
    outcome: dict[uuid.UUID, str] = {}
    for answer in results:
        if isinstance(answer, Exception):
            raise answer
        outcome.update(answer)
    sweep.ask_next(rt, sweep.VERIFY)
    return sweep.by_outcome(outcome)
