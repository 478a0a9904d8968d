"""What a pipeline step needs from the outside world, passed in rather than imported.

The plain functions in ``intake``, ``submit`` and ``poll`` take a :class:`Runtime`, so they run
the same under a Celery worker (``tasks``) and in a test that records follow-up messages
instead of sending them. Follow-ups are dispatched only after the unit of work has committed: a
worker must never receive an id whose row it cannot read yet.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from sqlalchemy.engine import Engine

from worker.bms.client import BmsClient
from worker.bms.errors import BmsError
from worker.db.requests import ErrorInfo
from worker.settings import Settings

log = logging.getLogger("bmsreboot.pipeline")


class Dispatcher(Protocol):
    """Sends follow-up work. The Celery implementation lives in ``tasks``."""

    def submit(self, batch_id: uuid.UUID, countdown: float = 0.0) -> None: ...

    def poll(self, batch_id: uuid.UUID, countdown: float) -> None: ...

    def notify(self, task_name: str, status: dict[str, Any], queue: str | None) -> None: ...


@dataclass
class Runtime:
    settings: Settings
    engine: Engine
    client: Callable[[], BmsClient]
    dispatcher: Dispatcher
    actor: str = "bmsreboot"


@dataclass
class RecordingDispatcher:
    """A dispatcher that remembers what it was asked to send (for tests and dry runs)."""

    sent: list[tuple[str, Any, float]] = field(default_factory=list)

    def submit(self, batch_id: uuid.UUID, countdown: float = 0.0) -> None:
        self.sent.append(("submit", batch_id, countdown))

    def poll(self, batch_id: uuid.UUID, countdown: float) -> None:
        self.sent.append(("poll", batch_id, countdown))

    def notify(self, task_name: str, status: dict[str, Any], queue: str | None) -> None:
        self.sent.append(("notify", (task_name, status, queue), 0.0))


def utcnow() -> datetime:
    return datetime.now(UTC)


def error_info(exc: BmsError) -> ErrorInfo:
    """The batch's last error from a client error (never holds a secret: the client's error
    texts are scrubbed at the source)."""
    return ErrorInfo(
        code=exc.code,
        message=(exc.message or str(exc))[:1000],
        status=exc.status,
        request_id=exc.request_id,
    )


def describe(exc: BaseException) -> str:
    """One line for logs and event details."""
    if isinstance(exc, BmsError):
        parts = [type(exc).__name__]
        if exc.status is not None:
            parts.append(f"HTTP {exc.status}")
        if exc.code:
            parts.append(exc.code)
        if exc.message:
            parts.append(exc.message)
        if exc.request_id:
            parts.append(f"request id {exc.request_id}")
        return parts[0] + (": " + ", ".join(parts[1:]) if len(parts) > 1 else "")
    return f"{type(exc).__name__}: {exc}"
