"""The release step: which pending batch goes to the API next, and when, from the audit rows.

``release_project`` runs for one project at a time (task ``bmsreboot.release``). It asks the
audit database for the project's next releasable batches (``worker.db.plan.releasable``,
one query), reserves that project's next slots of the action budget (``worker.budget``, shared
by every worker), records the slots on the batches in one transaction, and sends each batch's
submit message with a countdown to its slot. A slot is reserved only when it is at most
``horizon()`` seconds away: the plan stays in the database, not in delayed broker messages, so
that a later limit, a cancel or a cut-off still decides what goes next. When the budget is
full, or the next batch is only due later (a retry backoff), the run schedules one wake-up of
the project (``claim_wake`` keeps it to one pending wake-up, however many callers ask) and ends.
Before a request's batches go, its alert gate is judged once a run (``worker.pipeline.gate``):
a closed gate keeps them ``pending`` until its next check.

Anything that may have made a batch releasable calls ``rt.dispatcher.release(project_id)``:
intake, a batch back to ``pending``, the end of a batch that a rollout limit waited on
(``worker.db.plan.end_may_release``), and the reconciler for work whose message was lost.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime

from worker.budget import ACTION, Reservation
from worker.db.plan import mark_released, next_due_at, releasable
from worker.db.rollout import cut_off_due
from worker.db.session import unit_of_work
from worker.pipeline import gate
from worker.pipeline.backoff import countdown_ceiling
from worker.pipeline.ending import request_changed
from worker.pipeline.runtime import Runtime, log

#: Farthest ahead a slot is reserved: ``HORIZON`` seconds, or ``SLOTS_AHEAD`` action intervals
#: when that is longer (at 50 POSTs a minute, 8 x 1.2 s): the submit message's longest
#: countdown. A run thus releases several batches at the real limits instead of one a run
#: (BENCHMARKS.md, "Thousands of jobs in flight"). A released batch is still ``pending``
#: until its submit claims it, so a cancel, a brake or a cut-off still stops it; only a
#: change of the limit itself waits for these slots to pass.
HORIZON = 1.0
SLOTS_AHEAD = 8
#: Batches one run releases before it hands on to a fresh run (bounds one task's duration).
PER_RUN = 100
#: How long one run holds the project's release lease (a crashed run frees it by then).
LEASE_SECONDS = 10.0
#: When another run holds the lease, look again this much later.
BUSY_RETRY = 0.5


def lease_key(rt: Runtime, project_id: str) -> str:
    return rt.budget_key(project_id, "release-lease")


def wake_key(rt: Runtime, project_id: str) -> str:
    return rt.budget_key(project_id, "release-wake")


def schedule_release(rt: Runtime, project_id: str, delay: float) -> None:
    """Have the project's release step run in ``delay`` seconds, unless one is already due by
    then (one pending wake-up per project, shared by every worker). A delay beyond the longest
    countdown a message may carry (a ``not_before`` hours ahead) wakes the step at that
    ceiling instead, which looks again; the reconciler also releases what falls due."""
    delay = min(delay, countdown_ceiling(rt.settings))
    if rt.budgets.claim_wake(wake_key(rt, project_id), delay):
        rt.dispatcher.release(project_id, countdown=delay)


def cut_off(rt: Runtime, project_id: str | None = None) -> int:
    """Requests (of the project, or all) past their ``not_after`` stop releasing and end
    ``halted`` once their batches in flight end; returns how many were cut off."""
    with unit_of_work(rt.engine) as session:
        stopped = cut_off_due(session, rt.now(), actor=rt.actor, project_id=project_id)
        for request_id in stopped:
            request_changed(session, request_id, rt)
    for request_id in stopped:
        log.warning("request %s cut off: its not_after has passed", request_id)
    return len(stopped)


def _mark(rt: Runtime, slots: list[tuple[uuid.UUID, Reservation]]) -> int:
    """Record the reserved slots on their batches in one transaction, then send each batch's
    submit message with a countdown to its slot; returns how many were released."""
    with unit_of_work(rt.engine) as session:
        now = rt.now()
        # Each slot as the budget's store timed it (Redis's clock, or this machine's).
        marked = mark_released(
            session,
            [(batch_id, datetime.fromtimestamp(slot.at, UTC)) for batch_id, slot in slots],
            now=now,
        )
    # A batch not marked was released by another run meanwhile (its slot goes unused).
    taken = [(batch_id, slot) for batch_id, slot in slots if batch_id in marked]
    for batch_id, slot in taken:
        rt.metrics.observe("bmsreboot_budget_wait_seconds", slot.wait)
        rt.dispatcher.submit(batch_id, countdown=slot.wait)
    return len(taken)


def horizon(rt: Runtime) -> float:
    """How far ahead a slot of the action budget may be reserved (seconds)."""
    return max(HORIZON, SLOTS_AHEAD * rt.rate(ACTION).interval)


def release_project(project_id: str, rt: Runtime) -> int:
    """Release the project's due batches that the action budget allows now; return how many."""
    with rt.metrics.batched():
        return _release_project(project_id, rt)


def _release_project(project_id: str, rt: Runtime) -> int:
    budget = rt.budgets
    ahead = horizon(rt)
    budget.consume_wake(wake_key(rt, project_id))
    lease = lease_key(rt, project_id)
    token = budget.try_lease(lease, LEASE_SECONDS)
    if token is None:
        # Another run is releasing this project; it may have looked before our work was
        # committed, so look again shortly.
        schedule_release(rt, project_id, BUSY_RETRY)
        return 0
    started = time.monotonic()
    released = 0
    wake: float | None = None
    verdicts: dict[uuid.UUID, gate.Verdict] = {}  # the alert gates judged in this run
    try:
        cut_off(rt, project_id)
        while True:
            if released >= PER_RUN or time.monotonic() - started > LEASE_SECONDS / 2:
                wake = 0.0
                break
            now = rt.now()
            with unit_of_work(rt.engine) as session:
                candidates = releasable(session, project_id, now, PER_RUN - released)
                due = None if candidates else next_due_at(session, project_id, now)
            if not candidates:
                if due is not None:
                    wake = max((due - rt.now()).total_seconds(), 0.0)
                break
            # Before a batch goes, its request's alert gate (once a run): a closed gate holds
            # the request until its next check, which the release plan then waits for.
            admitted, judged = gate.admit(
                rt, candidates, verdicts, deadline=started + LEASE_SECONDS / 2
            )
            if not admitted:
                if judged or time.monotonic() > started + LEASE_SECONDS / 2:
                    continue  # the held requests are out of the plan now: look again
                # Only requests judged closed earlier in this run, whose hold has already
                # run out: a fresh run judges them again.
                wake = rt.settings.gate_interval
                break
            candidates = admitted
            # The slots of all of them in one reservation (as many as fit within ``ahead``).
            key, rate = rt.budget_key(project_id, ACTION), rt.rate(ACTION)
            got = budget.reserve_many(key, rate, len(candidates), max_wait=ahead)
            slots: list[tuple[uuid.UUID, Reservation]] = list(zip(candidates, got, strict=False))
            if len(got) < len(candidates):
                # The budget is full: the next slot is one interval after the last one given
                # (or, with none given, as far as a reservation says). Wake while a few
                # reserved slots are still ahead, so the POSTs never pause.
                if got:
                    next_wait = got[-1].wait + rate.interval
                else:
                    probe = budget.reserve(key, rate, max_wait=ahead)
                    if probe.granted:  # freed meanwhile: it is the first candidate's
                        slots.append((candidates[0], probe))
                        next_wait = probe.wait + rate.interval
                    else:
                        next_wait = probe.wait
                wake = max(next_wait - ahead / 2, 0.0)
            released += _mark(rt, slots)
            if wake is not None:
                break
    finally:
        budget.release_lease(lease, token)
    if released:
        log.info("project %s: released %d batches", project_id, released)
    if wake is not None:
        if wake == 0.0:
            rt.dispatcher.release(project_id)
        else:
            schedule_release(rt, project_id, wake)
    return released
