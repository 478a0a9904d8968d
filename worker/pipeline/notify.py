"""The end of a request: its final status, and the producer's completion callback.

``finalize`` runs inside the unit of work that ended a batch; it returns the message to send,
and the caller sends it only after commit. ``finalize_request_if_done`` makes exactly one caller
the finaliser, so the callback is sent once (at most once: a worker killed between the commit and
the send loses it; the final status stays in the audit database either way).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from worker.db.requests import finalize_request_if_done
from worker.db.status import request_status
from worker.pipeline.runtime import Runtime, log


@dataclass(frozen=True)
class Notification:
    task_name: str
    status: dict[str, Any]


def finalize(session: Session, request_id: uuid.UUID, rt: Runtime) -> Notification | None:
    request = finalize_request_if_done(session, request_id, actor=rt.actor)
    if request is None:
        return None
    log.info(
        "request %s finished: %s (%d succeeded, %d failed, %d unknown of %d)",
        request.id,
        request.status,
        request.servers_succeeded,
        request.servers_failed,
        request.servers_unknown,
        request.servers_total,
    )
    if not request.notify_task:
        return None
    status = request_status(session, request.id)
    assert status is not None
    return Notification(request.notify_task, status)


def send(notification: Notification | None, rt: Runtime) -> None:
    if notification is not None:
        rt.dispatcher.notify(notification.task_name, notification.status, None)
