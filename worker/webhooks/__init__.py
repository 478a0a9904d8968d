"""Every phase announced to other systems: signed webhooks and chat messages, delivered at
least once from the audit database.

The API the pipeline calls:

- :func:`emit` (``session, *, type, request_id, data, notify_url=None, settings``), in the
  transaction that causes the event: writes the CloudEvents document once per destination
  (the request's ``notify_url``, ``BMSREBOOT_WEBHOOK_URL``, and for ``request.halted``,
  ``server.unhealthy`` and ``request.finished`` every ``BMSREBOOT_NOTIFY_APPRISE`` target)
  into the outbox (``webhook_deliveries``) and returns the rows' ids;
- :func:`send_deliveries` (``app, ids, countdown=0.0``), after that commit: one
  ``bmsreboot.deliver_webhook`` message per id, on the ``bmsreboot.webhooks`` queue
  (``worker.names.WEBHOOK_QUEUE``);
- :func:`redeliver_lost` (``session_or_engine, now, limit, *, grace``), from the reconciler:
  the deliveries whose message was lost, to send again.

``bmsreboot.deliver_webhook`` runs :func:`deliver`: one compare-and-set attempt, then the
retry (exponential backoff with jitter for ``BMSREBOOT_WEBHOOK_RETRY_HOURS``) or the next
event of the request to that destination. Event types are the constants below
(``worker.webhooks.events``); the README's "Webhooks and chat" shows an example of each.
"""

from __future__ import annotations

from worker.webhooks.delivery import DeliveryRuntime, deliver
from worker.webhooks.dispatch import TASK_NAME, send_deliveries
from worker.webhooks.events import (
    BATCH_ENDED,
    CHAT_TYPES,
    EVENT_TYPES,
    REQUEST_ACCEPTED,
    REQUEST_FINISHED,
    REQUEST_HALTED,
    REQUEST_REJECTED,
    SERVER_UNHEALTHY,
)
from worker.webhooks.outbox import emit, redeliver_lost

__all__ = [
    "BATCH_ENDED",
    "CHAT_TYPES",
    "EVENT_TYPES",
    "REQUEST_ACCEPTED",
    "REQUEST_FINISHED",
    "REQUEST_HALTED",
    "REQUEST_REJECTED",
    "SERVER_UNHEALTHY",
    "TASK_NAME",
    "DeliveryRuntime",
    "deliver",
    "emit",
    "redeliver_lost",
    "send_deliveries",
]
