"""The names other systems and queued messages rely on, each written once: task names, queue
names and which queue each task goes to, and the namespace of ids derived from keys.

Renaming any of them breaks messages already queued and producers in other languages (README,
"Asking for reboots"). The tasks (``tasks``), the routes (``worker.celery``), the dispatcher
(``worker.pipeline.tasking``), the producer API and the consumer's guards all read them here.
"""

from __future__ import annotations

import uuid

# --- queues ---------------------------------------------------------------------------------
#: New requests, cancels, schedule ticks, and beat's own tasks.
INTAKE_QUEUE = "bmsreboot.intake"
#: The release step and the submits.
SUBMIT_QUEUE = "bmsreboot.submit"
#: The polls of jobs, and the checks of rebooted servers.
POLL_QUEUE = "bmsreboot.poll"
#: Webhook and chat deliveries (``worker.webhooks``): last, and apart, so that a slow or dead
#: receiver never holds back the pipeline. A worker must consume it.
WEBHOOK_QUEUE = "bmsreboot.webhooks"
#: Every queue a worker consumes by default, in the order a worker on Redis reads them.
QUEUES = (INTAKE_QUEUE, SUBMIT_QUEUE, POLL_QUEUE, WEBHOOK_QUEUE)

# --- tasks ----------------------------------------------------------------------------------
REQUEST_REBOOT = "bmsreboot.request_reboot"
CANCEL_REQUEST = "bmsreboot.cancel_request"
SCHEDULE_TICK = "bmsreboot.schedule_tick"
RUN_SCHEDULES = "bmsreboot.run_schedules"
RELEASE = "bmsreboot.release"
SUBMIT_BATCH = "bmsreboot.submit_batch"
POLL_BATCH = "bmsreboot.poll_batch"
VERIFY_BATCH = "bmsreboot.verify_batch"
#: The batched steps (``worker.pipeline.sweep``): every batch due, across projects.
SUBMIT_DUE = "bmsreboot.submit_due"
POLL_DUE = "bmsreboot.poll_due"
VERIFY_DUE = "bmsreboot.verify_due"
RECONCILE = "bmsreboot.reconcile"
PURGE = "bmsreboot.purge"
DELIVER_WEBHOOK = "bmsreboot.deliver_webhook"

#: The queue of each task.
ROUTES: dict[str, str] = {
    REQUEST_REBOOT: INTAKE_QUEUE,
    CANCEL_REQUEST: INTAKE_QUEUE,
    SCHEDULE_TICK: INTAKE_QUEUE,
    RUN_SCHEDULES: INTAKE_QUEUE,
    RECONCILE: INTAKE_QUEUE,
    PURGE: INTAKE_QUEUE,
    RELEASE: SUBMIT_QUEUE,
    SUBMIT_BATCH: SUBMIT_QUEUE,
    POLL_BATCH: POLL_QUEUE,
    VERIFY_BATCH: POLL_QUEUE,
    SUBMIT_DUE: SUBMIT_QUEUE,
    POLL_DUE: POLL_QUEUE,
    VERIFY_DUE: POLL_QUEUE,
    DELIVER_WEBHOOK: WEBHOOK_QUEUE,
}
#: Intake's tasks: producers send them, and they take no countdown from a producer.
INTAKE_TASKS = frozenset({REQUEST_REBOOT, CANCEL_REQUEST, SCHEDULE_TICK})

# --- ids ------------------------------------------------------------------------------------
#: Request ids derived from idempotency keys (the producer API, schedules) live in this UUID
#: namespace; so do the ids of requests refused for reusing a key with another payload.
IDEMPOTENCY_NAMESPACE = uuid.UUID("5b0e7c8a-3f7e-4c59-9f65-6a1d2b7e4a10")
