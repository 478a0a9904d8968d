"""The Celery side of the runtime: a dispatcher that sends task messages, and the per-process
runtime a worker builds once (engine and HTTP client are pooled, so they are reused)."""

from __future__ import annotations

import uuid
from functools import lru_cache
from typing import Any

from celery import Celery, Task

from worker.bms.client import BmsClient
from worker.db.session import get_engine
from worker.pipeline.runtime import Runtime
from worker.settings import get_settings


class CeleryDispatcher:
    def __init__(self, submit_task: Task[Any, Any], poll_task: Task[Any, Any], app: Celery):
        self._submit = submit_task
        self._poll = poll_task
        self._app = app

    def submit(self, batch_id: uuid.UUID, countdown: float = 0.0) -> None:
        self._submit.apply_async(args=(str(batch_id),), countdown=countdown)

    def poll(self, batch_id: uuid.UUID, countdown: float) -> None:
        self._poll.apply_async(args=(str(batch_id),), countdown=countdown)

    def notify(self, task_name: str, status: dict[str, Any], queue: str | None) -> None:
        self._app.send_task(task_name, args=[status], queue=queue)


@lru_cache(maxsize=1)
def _client() -> BmsClient:
    return BmsClient.from_settings(get_settings())


def worker_runtime(dispatcher: CeleryDispatcher, *, actor: str) -> Runtime:
    settings = get_settings()
    return Runtime(
        settings=settings,
        engine=get_engine(settings.effective_database_url),
        client=_client,
        dispatcher=dispatcher,
        actor=actor,
    )
