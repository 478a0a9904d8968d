"""The Celery side of deliveries: sending ``bmsreboot.deliver_webhook`` messages, and the
per-process runtime a worker builds once (its HTTP session is pooled, so it is reused)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import lru_cache
from typing import TYPE_CHECKING

from celery import Celery

from worker import names
from worker.webhooks.delivery import DeliveryRuntime

if TYPE_CHECKING:
    import requests

    from worker.metrics import Metrics

log = logging.getLogger("bmsreboot.webhooks")

TASK_NAME = names.DELIVER_WEBHOOK


def send_deliveries(app: Celery, delivery_ids: Sequence[int], countdown: float = 0.0) -> bool:
    """Send one delivery message per id (after the commit that wrote the rows). A publish
    that fails is logged and reported as False, never raised: the rows are committed, and
    the reconciler re-drives them (``redeliver_lost``)."""
    ok = True
    for delivery_id in delivery_ids:
        try:
            app.send_task(
                TASK_NAME,
                args=(int(delivery_id),),
                queue=names.WEBHOOK_QUEUE,
                countdown=max(countdown, 0.0),
            )
        except Exception as exc:
            log.error(
                "could not send delivery %s (%s: %s); the reconciler will",
                delivery_id,
                type(exc).__name__,
                exc,
            )
            ok = False
    return ok


def worker_runtime(app: Celery) -> DeliveryRuntime:
    """The runtime of deliveries in a worker process: its settings, engine, metrics and one
    pooled HTTP session; follow-up messages go through ``app``."""
    from worker.db.session import get_engine
    from worker.settings import get_settings

    settings = get_settings()
    engine = get_engine(settings.effective_database_url)
    metrics, http = _parts(settings.broker_url, settings.effective_database_url)
    return DeliveryRuntime(
        settings=settings,
        engine=engine,
        send=lambda ids, countdown: send_deliveries(app, ids, countdown),
        metrics=metrics,
        http=http,
    )


@lru_cache(maxsize=4)
def _parts(broker_url: str | None, database_url: str) -> tuple[Metrics, requests.Session]:
    """One metrics store and one HTTP session per process (a forked child builds its own:
    nothing is built before the first delivery)."""
    import requests

    from worker.db.session import get_engine
    from worker.metrics import Metrics, counters_for

    return Metrics(counters_for(broker_url, get_engine(database_url))), requests.Session()
