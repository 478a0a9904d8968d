"""Announcing the pipeline's moments to other systems: one call where a state changes.

:func:`announce` runs in the unit of work of the compare-and-set change that causes the event
(a repeated task that loses that change announces nothing): it writes the event to the outbox
(``worker.webhooks.emit``: the request's ``notify_url``, ``BMSREBOOT_WEBHOOK_URL``, the chat
targets for the chat types) and asks the runtime's dispatcher to send the deliveries once that
unit has committed (``Dispatcher.webhooks``), like every other follow-up. A delivery whose
message is lost (a worker killed between commit and send, a broker flush) is re-driven by the
reconciler from the outbox (``redeliver_lost``).

Where each event is announced (each exactly once):

- ``request.accepted`` / ``request.rejected``: intake, in the transaction that records the
  request (an id or key reused with another payload too: ``intake._conflict``);
- ``batch.ended``: ``ending.batch_ended``, the one function every end of a batch goes through;
- ``server.unhealthy``: ``verify``, where a verifying server is settled ``unhealthy``;
- ``request.halted``: ``notify.finalize``, for each request ``rollout.stop_request`` halted in
  the unit of work (failure brake, failed canary, cut-off, a refused inventory);
- ``request.finished``: ``notify.finalize``, where ``finalize_request_if_done`` closes it.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from worker.db.models import Batch, RebootRequest, ServerResult
from worker.db.status import request_status
from worker.pipeline.runtime import Runtime
from worker.settings import Settings
from worker.webhooks import CHAT_TYPES, emit

#: ``notify_url`` not given: read it from the request.
_READ: Any = object()


def _anywhere(type: str, notify_url: str | None, settings: Settings) -> bool:
    """Whether an event of ``type`` has any destination (cheap: before its data is built)."""
    return bool(
        notify_url or settings.webhook_url or (type in CHAT_TYPES and settings.apprise_urls)
    )


def announce(
    session: Session,
    rt: Runtime,
    type: str,
    request_id: uuid.UUID,
    data: dict[str, Any] | Callable[[], dict[str, Any]],
    *,
    notify_url: str | None = _READ,
) -> list[int]:
    """Record the event in this unit of work and send its deliveries after its commit; the
    ids of the rows written (none when no destination is configured). ``data`` may be a
    function, called only when the event goes somewhere (a status dict is a query)."""
    if notify_url is _READ:
        notify_url = session.scalar(
            select(RebootRequest.notify_url).where(RebootRequest.id == request_id)
        )
    if not _anywhere(type, notify_url, rt.settings):
        return []
    ids = emit(
        session,
        type=type,
        request_id=request_id,
        data=data() if callable(data) else data,
        notify_url=notify_url,
        settings=rt.settings,
        now=rt.now(),
    )
    if ids:
        rt.dispatcher.webhooks(ids)
    return ids


def status_of(session: Session, request_id: uuid.UUID) -> Callable[[], dict[str, Any]]:
    """The request's status dict (``bmsreboot status --json``), read when it is needed."""

    def read() -> dict[str, Any]:
        status = request_status(session, request_id)
        assert status is not None, f"request {request_id} is not recorded"
        return status

    return read


def batch_data(session: Session, batch: Batch) -> dict[str, Any]:
    """A ``batch.ended`` event's data: the batch, its job and its servers' counts by state."""
    counts = {
        str(status.value if hasattr(status, "value") else status): n
        for status, n in session.execute(
            select(ServerResult.status, func.count())
            .where(ServerResult.batch_id == batch.id)
            .group_by(ServerResult.status)
        ).all()
    }
    return {
        "request_id": str(batch.request_id),
        "batch_id": str(batch.id),
        "index": batch.index,
        "status": batch.status.value,
        "job_id": batch.job_id,
        "servers": {"total": sum(counts.values()), **dict(sorted(counts.items()))},
    }
