"""The end of a request: its final status, and the producer's completion callback.

``finalize`` runs inside the unit of work that ended a batch; it returns the message to send,
and the caller sends it only after commit. ``finalize_request_if_done`` makes exactly one caller
the finaliser. The callback is delivered **at least once**: after the broker took it, the
request's ``notified_at`` is set; a worker killed in between (or a broker that refused it)
leaves ``notified_at`` empty and the reconciler sends it again. A consumer de-duplicates on the
status dict's ``request_id``.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from worker.db.models import RebootRequest
from worker.db.rollout import check_brakes, take_halted
from worker.db.session import unit_of_work
from worker.db.status import request_status
from worker.db.transitions import finalize_request_if_done, mark_notified
from worker.pipeline.announce import announce, status_of
from worker.pipeline.runtime import Runtime, log
from worker.webhooks import REQUEST_FINISHED, REQUEST_HALTED


@dataclass(frozen=True)
class Notification:
    request_id: uuid.UUID
    task_name: str
    status: dict[str, Any]
    queue: str | None = None


def notification_for(session: Session, request_id: uuid.UUID) -> Notification | None:
    """The completion callback of a finished request, or None if it asked for none."""
    request = session.get(RebootRequest, request_id)
    if request is None or not request.notify_task:
        return None
    status = request_status(session, request_id)
    assert status is not None
    return Notification(request_id, request.notify_task, status, request.notify_queue)


def finalize(session: Session, request_id: uuid.UUID, rt: Runtime) -> Notification | None:
    """After a batch of the request ended, in that transaction: trip the rollout brakes if
    due (``worker.db.rollout``), then close the request if it is done; ``request.halted`` and
    ``request.finished`` are announced here (``worker.pipeline.announce``)."""
    stopped = check_brakes(session, request_id, actor=rt.actor)
    if stopped:
        log.warning("request %s halted: %s", request_id, stopped)
    # Every request halted in this unit of work (here, or by the caller before: a cut-off, a
    # refused inventory, a submit that cannot go on), announced once, before it may finish.
    for halted in take_halted(session):
        announce(session, rt, REQUEST_HALTED, halted, status_of(session, halted))
    request = finalize_request_if_done(session, request_id, actor=rt.actor)
    if request is None:
        return None
    announce(
        session,
        rt,
        REQUEST_FINISHED,
        request.id,
        status_of(session, request.id),
        notify_url=request.notify_url,
    )
    log.info(
        "request %s finished: %s (%d succeeded, %d failed, %d unknown of %d)",
        request.id,
        request.status,
        request.servers_succeeded,
        request.servers_failed,
        request.servers_unknown,
        request.servers_total,
    )
    return notification_for(session, request.id)


def send(notification: Notification | None, rt: Runtime) -> bool:
    """Hand the callback to the broker, then record that it was (False: not sent now; the
    reconciler tries again)."""
    if notification is None:
        return False
    if not rt.dispatcher.notify(notification.task_name, notification.status, notification.queue):
        return False
    with unit_of_work(rt.engine) as session:
        mark_notified(session, notification.request_id, rt.now())
    return True
