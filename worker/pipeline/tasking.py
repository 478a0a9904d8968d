"""The Celery side of the runtime: a dispatcher that sends task messages, and the per-process
runtime a worker builds once (engine and HTTP client are pooled, so they are reused)."""

from __future__ import annotations

import logging
import time
from functools import lru_cache
from typing import Any

from celery import Celery

from worker import names
from worker.bms.client import BmsClient
from worker.budget import Budget, budget_for
from worker.db.session import get_engine
from worker.fleet import Fleet, load_fleet
from worker.metrics import Metrics, counters_for, response_hook
from worker.pipeline.runtime import Dispatcher, Runtime
from worker.pipeline.sweep import wake_key as sweep_wake_key
from worker.settings import get_settings
from worker.webhooks import send_deliveries

log = logging.getLogger("bmsreboot.pipeline")

#: The sweep task of each step (``worker.pipeline.sweep``).
SWEEP_TASKS = {
    "submit": names.SUBMIT_DUE,
    "poll": names.POLL_DUE,
    "verify": names.VERIFY_DUE,
}


class CeleryDispatcher(Dispatcher):
    """Sends follow-ups as task messages. A publish that fails (broker down, connection lost)
    is logged and reported as False, never raised: the state it would have driven is committed
    already, and ``bmsreboot.reconcile`` re-drives it from the audit database.

    With ``sweeps`` (the shared budget store), a batch's submit, poll or check becomes its
    step's sweep (``worker.pipeline.sweep``): one pending sweep message per step, whatever
    the number of batches due, kept by a wake-up mark every worker shares; a sweep due no
    later than this one was asked for already (here, or by anyone) covers it. Without, one
    message per batch (a command line tool's runtime)."""

    def __init__(
        self,
        app: Celery,
        *,
        callback_expires: float | None = None,
        sweeps: Budget | None = None,
    ):
        self._app = app
        self._callback_expires = callback_expires
        self._sweeps = sweeps
        #: The sweeps this dispatcher knows are pending, by step: when (monotonic seconds).
        self._pending: dict[str, float] = {}

    def deliver(self, kind: str, item: Any, countdown: float, **options: Any) -> bool:
        countdown = max(countdown, 0.0)
        if kind == "sweep":
            # A sweep's own ask for the next (after it gave up its wake-up mark): what this
            # dispatcher remembers may be that very mark, so the store decides.
            return self._sweep(item, countdown, more=bool(options.get("more")), remembered=False)
        if self._sweeps is not None and kind in SWEEP_TASKS and not options.get("alone"):
            return self._sweep(kind, countdown)
        if kind == "release":
            return self._send(
                names.RELEASE,
                f"a release of project {item}",
                args=(item,),
                countdown=countdown,
            )
        if kind == "submit":
            return self._send(
                names.SUBMIT_BATCH,
                f"the submit of batch {item}",
                args=(str(item),),
                countdown=countdown,
            )
        if kind == "poll":
            kwargs: dict[str, Any] = {}
            if options.get("seq") is not None:
                kwargs["seq"] = options["seq"]
            if options.get("reserved"):
                kwargs["reserved"] = True
            return self._send(
                names.POLL_BATCH,
                f"a poll of batch {item}",
                args=(str(item),),
                kwargs=kwargs,
                countdown=countdown,
            )
        if kind == "verify":
            return self._send(
                names.VERIFY_BATCH,
                f"a check of batch {item}",
                args=(str(item),),
                kwargs={"seq": options["seq"]} if options.get("seq") is not None else {},
                countdown=countdown,
            )
        if kind == "webhooks":
            # Logs and reports a failed publish itself: the reconciler re-drives the rows.
            return send_deliveries(self._app, item)
        assert kind == "notify", kind
        task_name, status, queue = item
        # A callback nobody consumes expires instead of piling up in its queue for ever.
        return self._send(
            task_name,
            f"the callback {task_name}",
            args=[status],
            queue=queue,
            expires=self._callback_expires,
        )

    def _sweep(
        self, step: str, countdown: float, *, more: bool = False, remembered: bool = True
    ) -> bool:
        """Have the step's sweep run within ``countdown`` s: send it, unless one due by then
        is pending already. ``more``: send another now, whatever is pending; ``remembered``:
        trust what this dispatcher already asked for (or found pending)."""
        if self._sweeps is None:
            return self._send(SWEEP_TASKS[step], f"a {step} sweep", countdown=countdown)
        now = time.monotonic()
        due = now + countdown
        known = self._pending.get(step) if remembered else None
        if not more and known is not None and now <= known <= due + 0.05:
            return True  # this dispatcher asked for one by then already
        if not more and not self._sweeps.claim_wake(sweep_wake_key(step), countdown):
            self._pending[step] = due  # another one by then is pending (someone asked)
            return True
        self._pending[step] = due
        return self._send(SWEEP_TASKS[step], f"a {step} sweep", countdown=countdown)

    def _send(self, name: str, what: str, **options: Any) -> bool:
        try:
            self._app.send_task(name, **options)
        except Exception as exc:
            log.error(
                "could not send %s (%s: %s); the reconciler will", what, type(exc).__name__, exc
            )
            return False
        return True

    def waiting(self, queue: str) -> int | None:
        return ready_messages(self._app, queue)


def ready_messages(app: Celery, queue: str) -> int | None:
    """Messages ready on ``queue`` (not those workers hold for a countdown), or None when the
    broker cannot say (logged)."""
    try:
        with app.connection_for_read() as conn:
            channel: Any = conn.default_channel  # kombu's virtual channel (Redis, SQLAlchemy)
            declared = channel.queue_declare(queue=queue, passive=True)
            return int(declared.message_count)
    except Exception as exc:
        if "NOT_FOUND" in str(exc):
            # kombu's Redis transport has no queue key while a queue is empty: an empty
            # queue, not a failure.
            return 0
        log.warning("could not count the messages on %s (%s: %s)", queue, type(exc).__name__, exc)
        return None


@lru_cache(maxsize=1)
def _client() -> BmsClient:
    client = BmsClient.from_settings(get_settings())
    client.add_response_hook(response_hook(_metrics()))
    return client


@lru_cache(maxsize=1)
def _fleet() -> Fleet | None:
    """The fleet file's accounts, regions and projects, read once per process (a change needs
    a restart: the worker checks the file when it starts); None without one."""
    settings = get_settings()
    if settings.fleet_file is None:
        return None
    fleet = load_fleet(settings.fleet_file, settings)
    fleet.add_response_hook(response_hook(_metrics()))
    return fleet


@lru_cache(maxsize=1)
def _metrics() -> Metrics:
    settings = get_settings()
    engine = get_engine(settings.effective_database_url)
    return Metrics(counters_for(settings.broker_url, engine, settings.broker_transport_options))


@lru_cache(maxsize=1)
def _budget() -> Budget:
    settings = get_settings()
    engine = get_engine(settings.effective_database_url)
    return budget_for(settings.broker_url, engine, settings.broker_transport_options)


def shared_budget() -> Budget:
    """The process's shared budget store (Redis, or the audit database)."""
    return _budget()


def worker_runtime(dispatcher: CeleryDispatcher, *, actor: str) -> Runtime:
    settings = get_settings()
    return Runtime(
        settings=settings,
        engine=get_engine(settings.effective_database_url),
        client=_client,
        dispatcher=dispatcher,
        actor=actor,
        budget=_budget(),
        metrics=_metrics(),
        fleet=_fleet(),
    )
