"""The end of a batch, and what follows it, decided in one place.

Every way a batch ends (its job ended, it was refused or never accepted, its POST's fate is
unknown, its worker was lost mid-POST, every server was held by another request, it timed out,
its job was lost, a cancel or a brake) goes through :func:`end_batch` (or, for a batch an
earlier step already moved, :func:`batch_ended`), in the unit of work that ended it:

1. the batch and its still-pending servers take their final states (``settle_batch``), and
   ``batch.ended`` is announced (``worker.pipeline.announce``);
2. the request's rollout brakes are judged and, if every batch has ended, its final status
   and counts are written (``notify.finalize``);
3. the completion callback, if any, is sent once that unit has committed;
4. its Alertmanager silence, if one runs, is expired once that unit has committed
   (``silences.after_end``);
5. the request's soak starts, if it has one (``plan.start_soak``);
6. the project's release step runs (after the soak) if this end can open the way for another
   batch of the request (``max_in_flight``, the canary, the soak: ``plan.end_may_release``).

A new final state is one new branch here, not an edit in every caller. A request stopped or
decided on without a batch ending (a cancel, a cut-off, an operator's decision) goes through
:func:`request_changed`, the same steps 2 and 3.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy.orm import Session

from worker.db.models import Batch
from worker.db.plan import end_may_release, start_soak
from worker.db.session import after_commit
from worker.db.states import BatchStatus, ServerStatus
from worker.db.transitions import ServerOutcome, settle_batch
from worker.pipeline import silences
from worker.pipeline.announce import announce, batch_data
from worker.pipeline.notify import finalize, send
from worker.pipeline.runtime import Runtime
from worker.webhooks import BATCH_ENDED


def end_batch(
    session: Session,
    batch_id: uuid.UUID,
    to: BatchStatus,
    rt: Runtime,
    *,
    servers: ServerStatus,
    outcomes: dict[str, ServerOutcome] | None = None,
    error_code: str | None = None,
    fail_reason: str | None = None,
    detail: dict[str, Any] | None = None,
    **values: Any,
) -> Batch:
    """End the batch ``to``: each pending server gets its outcome (``outcomes``) or
    ``servers`` with ``error_code``/``fail_reason``; ``values`` are batch columns set in the
    same UPDATE. Then everything that follows (:func:`batch_ended`)."""
    batch = settle_batch(
        session,
        batch_id,
        to,
        actor=rt.actor,
        outcomes=outcomes,
        default_status=servers,
        default_error_code=error_code,
        default_fail_reason=fail_reason,
        detail=detail,
        **values,
    )
    batch_ended(session, batch, rt)
    return batch


def batch_ended(session: Session, batch: Batch, rt: Runtime) -> None:
    """What follows the end of ``batch``, in the unit of work that ended it: the request's
    brakes and final status, its callback after commit, and the release step if a rollout
    limit waited on this batch."""
    announce(session, rt, BATCH_ENDED, batch.request_id, lambda: batch_data(session, batch))
    request_changed(session, batch.request_id, rt)
    silences.after_end(batch, rt)
    soak = start_soak(session, batch, rt.now())
    if end_may_release(session, batch):
        rt.dispatcher.release(batch.project_id, countdown=soak)


def request_changed(session: Session, request_id: uuid.UUID, rt: Runtime) -> None:
    """After something that may end the request: trip its brakes if due, close it if every
    batch has ended, and send its completion callback once this unit of work has committed."""
    notification = finalize(session, request_id, rt)
    if notification is not None:
        after_commit(lambda: send(notification, rt))
