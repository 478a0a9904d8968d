"""The reconciler: re-drive, from the audit database alone, work whose message was lost.

``bmsreboot.reconcile`` runs every ``BMSREBOOT_RECONCILE_INTERVAL`` seconds from Celery beat.
The broker may lose messages (Redis restarted without AOF, ``FLUSHDB``, a worker killed after
its commit and before its publish, a publish that failed); the audit database does not. Each
run looks for work overdue by more than ``BMSREBOOT_RECONCILE_GRACE`` seconds:

- released batches still ``pending`` long after their slot (the submit message is gone): they
  are made releasable again, unless messages wait on the submit queue (then the submit may
  only be queued behind them: the next run looks again);
- due batches nobody released (the release message is gone): their project's release step
  runs;
- batches ``submitting`` for longer than any POST can take (their worker died in the POST):
  ``unknown``, never resubmitted;
- ``submitted`` batches whose next poll is overdue: polled again (the ``seq`` of the new
  message makes it the only live poll chain of the batch), unless messages wait on the poll
  queue (then the poll may only be queued behind them: the next run looks again);
- ``verifying`` batches whose next check is overdue: checked again (by ``seq`` too; the same
  rule, on the same queue);
- requests whose batches have all ended but which were never finalized: finalized;
- finished requests whose completion callback was not handed to the broker: sent;
- requests past their ``not_after`` with batches not yet sent: cut off (``halted``);
- webhook deliveries still pending whose message was lost (``worker.webhooks.redeliver_lost``).
- ended batches whose Alertmanager silence still runs (they ended while no worker, or no
  Alertmanager, could expire it): expired (``silences.expire_ended``).

Two runs at once (two beats, a slow run overlapping the next) are safe: every change is
compare-and-set, and a lease held for most of an interval makes the second run skip, so no work
is done twice.
"""

from __future__ import annotations

from collections import Counter
from datetime import timedelta

from worker.db.models import Batch
from worker.db.overdue import (
    overdue_checks,
    overdue_polls,
    projects_with_overdue_releases,
    stale_submitting,
    unfinalized_requests,
    unnotified_requests,
    unrelease_lost,
)
from worker.db.session import unit_of_work
from worker.db.states import BatchStatus, IllegalTransition
from worker.names import POLL_QUEUE, SUBMIT_QUEUE
from worker.pipeline import silences
from worker.pipeline.ending import request_changed
from worker.pipeline.notify import notification_for, send
from worker.pipeline.release import cut_off
from worker.pipeline.runtime import Runtime, log
from worker.pipeline.submit import settle_lost_submit, stale_after
from worker.webhooks import redeliver_lost

#: Rows one run handles per kind of work (the next run takes the rest).
PER_RUN = 1000
LEASE_KEY = "bmsreboot:lease:reconcile"
#: Under a backlog on the poll queue, polls and checks are re-driven once overdue by this many
#: times the grace (150 s by default) instead of once overdue by the grace.
BACKLOG_PATIENCE = 10


def reconcile(rt: Runtime) -> dict[str, int]:
    """One reconciler pass; returns what it re-drove, by kind (``skipped`` when another run
    holds the lease)."""
    interval = rt.settings.reconcile_interval
    if rt.budgets.try_lease(LEASE_KEY, interval * 0.8) is None:
        return {"skipped": 1}
    done: Counter[str] = Counter()
    now = rt.now()
    overdue = now - timedelta(seconds=rt.settings.reconcile_grace)

    done["cut_off"] = cut_off(rt)

    # A released batch long past its slot is lost only if its submit message is not simply
    # waiting behind others: under a backlog, re-driving it would only add a duplicate (and
    # a wasted slot) to the queue (BENCHMARKS.md, "Thousands of jobs in flight").
    backlog = rt.dispatcher.waiting(SUBMIT_QUEUE)
    unreleased: list[str] = []
    if backlog:
        log.info(
            "%d messages wait on %s: released batches are not re-driven", backlog, SUBMIT_QUEUE
        )
    else:
        with unit_of_work(rt.engine) as session:
            unreleased = unrelease_lost(session, overdue, PER_RUN)
    done["unreleased"] = len(unreleased)
    projects = set(unreleased)
    with unit_of_work(rt.engine) as session:
        projects.update(projects_with_overdue_releases(session, overdue))
    for project_id in sorted(projects):
        rt.dispatcher.release(project_id)
    done["releases"] = len(projects)

    with unit_of_work(rt.engine) as session:
        lost = stale_submitting(session, now - timedelta(seconds=stale_after(rt)), PER_RUN)
    for batch_id in lost:
        try:
            with unit_of_work(rt.engine) as session:
                batch = session.get(Batch, batch_id)
                if batch is None or batch.status != BatchStatus.SUBMITTING:
                    continue
                age = (rt.now() - batch.updated_at).total_seconds()
                settle_lost_submit(session, batch_id, age, rt)
        except IllegalTransition:
            continue  # its worker recorded an answer after all
        done["unknown"] += 1

    # An overdue poll or check is lost only if its message is not waiting behind others on the
    # poll queue: under a backlog a re-drive is a second message that only one of the two
    # books (by seq), a task for nothing. The queue's count cannot tell a lost poll from a
    # late one (it does not see the countdown messages workers hold), so under a backlog only
    # polls overdue far longer than any queue takes to drain are re-driven: a backlog that
    # never empties does not leave a lost poll for ever.
    poll_backlog = rt.dispatcher.waiting(POLL_QUEUE)
    poll_overdue = overdue
    if poll_backlog:
        poll_overdue = now - timedelta(seconds=rt.settings.reconcile_grace * BACKLOG_PATIENCE)
        log.info(
            "%d messages wait on %s: only polls and checks overdue by over %g s are re-driven",
            poll_backlog,
            POLL_QUEUE,
            rt.settings.reconcile_grace * BACKLOG_PATIENCE,
        )
    with unit_of_work(rt.engine) as session:
        polls = overdue_polls(session, poll_overdue, PER_RUN)
        checks = overdue_checks(session, poll_overdue, PER_RUN)
    for batch_id, seq in polls:
        rt.dispatcher.poll(batch_id, countdown=0.0, seq=seq)
    done["polls"] = len(polls)

    for batch_id, seq in checks:
        rt.dispatcher.verify(batch_id, countdown=0.0, seq=seq)
    done["checks"] = len(checks)

    with unit_of_work(rt.engine) as session:
        open_requests = unfinalized_requests(session, PER_RUN)
    for request_id in open_requests:
        with unit_of_work(rt.engine) as session:
            request_changed(session, request_id, rt)
        done["finalized"] += 1

    with unit_of_work(rt.engine) as session:
        unnotified = unnotified_requests(session, overdue, PER_RUN)
    for request_id in unnotified:
        with unit_of_work(rt.engine) as session:
            notification = notification_for(session, request_id)
        if send(notification, rt):
            done["callbacks"] += 1

    # Webhook deliveries whose message was lost (a worker killed between its commit and its
    # send, a broker flushed): the outbox says which; sent again after this commit.
    with unit_of_work(rt.engine) as session:
        lost_hooks = redeliver_lost(session, now, PER_RUN, grace=rt.settings.reconcile_grace)
        if lost_hooks:
            rt.dispatcher.webhooks(lost_hooks)
    done["webhooks"] = len(lost_hooks)

    done["silences"] = silences.expire_ended(rt, PER_RUN)

    rt.metrics.reconciled(rt.now().timestamp())
    result = {kind: n for kind, n in done.items() if n}
    if result:
        log.warning("reconciler re-drove lost work: %s", result)
    return result
