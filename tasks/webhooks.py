"""``bmsreboot.deliver_webhook`` (queue ``bmsreboot.webhooks``): one attempt at one delivery of
the outbox (``worker.webhooks.deliver``). Safe to repeat: every attempt is compare-and-set on
the row, so acks-late and redelivered if the worker dies; the message carries the row's id
only (the event and the destination are read from the audit database)."""

from __future__ import annotations

from typing import Any

from celery import Task

from tasks import COMMON, BadArgument, PipelineTask, _short
from worker.celery import app
from worker.names import WEBHOOK_QUEUE
from worker.webhooks.delivery import deliver
from worker.webhooks.dispatch import TASK_NAME, worker_runtime


@app.task(name=TASK_NAME, queue=WEBHOOK_QUEUE, base=PipelineTask, **COMMON)
def deliver_webhook(self: Task[Any, Any], delivery_id: Any = None) -> str:
    if isinstance(delivery_id, bool) or not isinstance(delivery_id, int) or delivery_id < 1:
        raise BadArgument(
            f"delivery_id must be a whole number of at least 1, got {_short(delivery_id)}"
        )
    return deliver(delivery_id, worker_runtime(app))
