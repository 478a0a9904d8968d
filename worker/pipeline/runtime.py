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
from typing import Any, Protocol

from sqlalchemy.engine import Engine

from worker.bms.client import BmsClient
from worker.bms.errors import BmsError
from worker.budget import ACTION, JOB, Budget, DatabaseBudget, Rate, budget_key
from worker.db.models import utcnow as utcnow  # the one utcnow, re-exported for the pipeline
from worker.db.transitions import ErrorInfo
from worker.metrics import Metrics
from worker.settings import Settings

log = logging.getLogger("bmsreboot.pipeline")


class Dispatcher(Protocol):
    """Sends follow-up work. The Celery implementation lives in ``worker.pipeline.tasking``.

    Every method returns False instead of raising when the broker refused the message: the
    state it would have driven is already committed, and the reconciler re-drives it."""

    def release(self, project_id: str, countdown: float = 0.0) -> bool: ...

    def submit(self, batch_id: uuid.UUID, countdown: float = 0.0) -> bool: ...

    def poll(
        self, batch_id: uuid.UUID, countdown: float, seq: int | None = None, reserved: bool = False
    ) -> bool: ...

    def notify(self, task_name: str, status: dict[str, Any], queue: str | None) -> bool: ...

    def waiting(self, queue: str) -> int | None:
        """Messages ready on ``queue`` (not those workers hold for a countdown), or None when
        the broker cannot say."""
        ...


@dataclass
class Runtime:
    settings: Settings
    engine: Engine
    client: Callable[[], BmsClient]
    dispatcher: Dispatcher
    actor: str = "bmsreboot"
    #: Shared API budgets; None builds one on the audit database (tests, scripts).
    budget: Budget | None = None
    #: Shared counters for the metrics exporter (none recorded by default).
    metrics: Metrics = field(default_factory=lambda: Metrics(None))

    def __post_init__(self) -> None:
        if self.budget is None:
            self.budget = DatabaseBudget(self.engine)

    @property
    def budgets(self) -> Budget:
        assert self.budget is not None
        return self.budget

    def budget_key(self, project_id: str, route: str) -> str:
        return budget_key(self.settings.effective_bms_endpoint, project_id, route)

    def rate(self, route: str) -> Rate:
        s = self.settings
        if route == ACTION:
            return Rate(s.action_rate_limit, s.action_burst)
        assert route == JOB
        return Rate(s.job_rate_limit, s.job_burst)


@dataclass
class RecordingDispatcher:
    """A dispatcher that remembers what it was asked to send (for tests and dry runs)."""

    sent: list[tuple[str, Any, float]] = field(default_factory=list)
    #: What ``waiting`` answers, by queue (0 when not set).
    backlog: dict[str, int] = field(default_factory=dict)

    def release(self, project_id: str, countdown: float = 0.0) -> bool:
        self.sent.append(("release", project_id, countdown))
        return True

    def submit(self, batch_id: uuid.UUID, countdown: float = 0.0) -> bool:
        self.sent.append(("submit", batch_id, countdown))
        return True

    def poll(
        self, batch_id: uuid.UUID, countdown: float, seq: int | None = None, reserved: bool = False
    ) -> bool:
        self.sent.append(("poll", batch_id, countdown))
        return True

    def notify(self, task_name: str, status: dict[str, Any], queue: str | None) -> bool:
        self.sent.append(("notify", (task_name, status, queue), 0.0))
        return True

    def waiting(self, queue: str) -> int | None:
        return self.backlog.get(queue, 0)


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
