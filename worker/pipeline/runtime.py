"""What a pipeline step needs from the outside world, passed in rather than imported.

The plain functions in ``intake``, ``submit`` and ``poll`` take a :class:`Runtime`, so they run
the same under a Celery worker (``tasks``) and in a test that records follow-up messages
instead of sending them. Follow-ups leave only after the unit of work they were asked for in
has committed, by construction (:class:`Dispatcher`): a worker must never receive an id whose
row it cannot read yet.
"""

from __future__ import annotations

import logging
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import Engine

from worker.bms.client import BmsClient
from worker.bms.errors import BmsError
from worker.budget import ACTION, JOB, LIST, Budget, DatabaseBudget, Rate, budget_key
from worker.db.models import utcnow as utcnow  # the one utcnow, re-exported for the pipeline
from worker.db.session import after_commit
from worker.db.transitions import ErrorInfo
from worker.metrics import Metrics
from worker.monitoring import AlertmanagerClient, Series
from worker.settings import Settings

if TYPE_CHECKING:
    from worker.fleet import Fleet

log = logging.getLogger("bmsreboot.pipeline")


class Dispatcher(ABC):
    """Sends follow-up work: a project's release step, a batch's submit, poll or check, a
    completion callback, the deliveries of announced events. Called inside a unit of work, it
    sends once that unit has committed (and never if it rolled back:
    ``worker.db.session.after_commit``), so a follow-up never names a row its receiver cannot
    read yet, wherever the call is written. The Celery
    implementation lives in ``worker.pipeline.tasking``; tests record instead
    (``RecordingDispatcher``).

    A send returns False instead of raising when the broker refused the message (True when it
    waits for a commit): the state it would have driven is committed, and the reconciler
    re-drives it."""

    def release(self, project_id: str, countdown: float = 0.0) -> bool:
        return self._later("release", project_id, countdown)

    def submit(self, batch_id: uuid.UUID, countdown: float = 0.0, alone: bool = False) -> bool:
        """The batch's submit is due in ``countdown`` s (its row says so); ``alone``: it must
        be looked at on its own (a claim another worker may still hold), not swept."""
        if alone:
            return self._later("submit", batch_id, countdown, alone=True)
        return self._later("submit", batch_id, countdown)

    def poll(
        self, batch_id: uuid.UUID, countdown: float, seq: int | None = None, reserved: bool = False
    ) -> bool:
        return self._later("poll", batch_id, countdown, seq=seq, reserved=reserved)

    def verify(self, batch_id: uuid.UUID, countdown: float, seq: int | None = None) -> bool:
        return self._later("verify", batch_id, countdown, seq=seq)

    def sweep(self, step: str, countdown: float = 0.0, *, more: bool = False) -> bool:
        """The step's next sweep (``worker.pipeline.sweep``) in ``countdown`` s; ``more``: the
        sweep running now took all it may, so another runs at once beside it."""
        return self._later("sweep", step, countdown, more=more)

    def notify(self, task_name: str, status: dict[str, Any], queue: str | None) -> bool:
        return self._later("notify", (task_name, status, queue), 0.0)

    def webhooks(self, delivery_ids: list[int]) -> bool:
        """The outbox rows just written (``worker.pipeline.announce``): one delivery message
        each, after the commit."""
        return self._later("webhooks", [int(i) for i in delivery_ids], 0.0)

    def _later(self, kind: str, item: Any, countdown: float, **options: Any) -> bool:
        sent: list[bool] = []
        after_commit(lambda: sent.append(self.deliver(kind, item, countdown, **options)))
        return sent[0] if sent else True

    @abstractmethod
    def deliver(self, kind: str, item: Any, countdown: float, **options: Any) -> bool:
        """Send one follow-up now (``kind``: release, submit, poll, verify, sweep, notify or
        webhooks)."""

    @abstractmethod
    def waiting(self, queue: str) -> int | None:
        """Messages ready on ``queue`` (not those workers hold for a countdown), or None when
        the broker cannot say."""


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
    #: The time the steps go by (what is due, how old a claim is); a test may move it.
    clock: Callable[[], datetime] = utcnow
    #: The fleet file's accounts, regions and projects (``worker.fleet``); None: the settings
    #: describe one account, and ``client`` reaches it.
    fleet: Fleet | None = None
    #: Evaluates an alert gate's PromQL (``worker.pipeline.gate``); None: a client of
    #: ``BMSREBOOT_PROMETHEUS_URL``. A test gives a function of its own.
    prometheus: Callable[[str], list[Series]] | None = None
    #: The Alertmanager the silences go to; None: one built from BMSREBOOT_ALERTMANAGER_URL
    #: when it is set (a test may give its own).
    silences: AlertmanagerClient | None = None

    def __post_init__(self) -> None:
        if self.budget is None:
            self.budget = DatabaseBudget(self.engine)

    def now(self) -> datetime:
        return self.clock()

    def alertmanager(self) -> AlertmanagerClient | None:
        """The Alertmanager of the batches' silences; None when none is configured."""
        if self.silences is None and self.settings.alertmanager_url:
            self.silences = AlertmanagerClient(self.settings.alertmanager_url)
        return self.silences

    @property
    def budgets(self) -> Budget:
        assert self.budget is not None
        return self.budget

    def client_for(self, project_id: str) -> BmsClient:
        """The client that reaches ``project_id``'s region with its account's credentials
        (one account and region unless a fleet is configured: ``worker.fleet``). A project
        outside the fleet file raises ConfigurationError: nothing is sent."""
        if self.fleet is not None:
            return self.fleet.client_for(project_id)
        return self.client()

    def endpoint_for(self, project_id: str) -> str:
        """The BMS endpoint of ``project_id``'s region (the settings' for a project outside
        the fleet file: no request for it is accepted, so only a budget key names it)."""
        found = self.fleet.endpoint_for(project_id) if self.fleet is not None else None
        return found or self.settings.effective_bms_endpoint

    def region_for(self, project_id: str) -> str:
        """The region ``project_id`` belongs to."""
        found = self.fleet.region_for(project_id) if self.fleet is not None else None
        return found or self.settings.region

    def scope(self) -> dict[str, Any]:
        """What validation checks a request's project and region against (the keyword
        arguments of ``validate_request``)."""
        return scope_of(self.settings, self.fleet)

    def budget_key(self, project_id: str, route: str) -> str:
        """A budget is per (endpoint, project, route): each region's API gets its own."""
        return budget_key(self.endpoint_for(project_id), project_id, route)

    def rate(self, route: str) -> Rate:
        s = self.settings
        if route == ACTION:
            return Rate(s.action_rate_limit, s.action_burst)
        if route == LIST:
            return Rate(s.list_rate_limit, s.list_burst)
        assert route == JOB
        return Rate(s.job_rate_limit, s.job_burst)


def scope_of(settings: Settings, fleet: Fleet | None) -> dict[str, Any]:
    """``validate_request``'s keyword arguments for the projects and regions served: the fleet
    file's, or the settings' one region and ``BMSREBOOT_ALLOWED_PROJECTS``."""
    from worker.fleet import allowed_projects

    return {
        "allowed_projects": allowed_projects(settings, fleet),
        "project_regions": fleet.project_regions if fleet is not None else None,
        "region": settings.region if fleet is None else None,
    }


class Sent(tuple[str, Any, float]):
    """One recorded follow-up: ``(kind, item, countdown)``, and every other field it was sent
    with in ``options`` (a poll's ``seq`` and ``reserved``)."""

    options: dict[str, Any]

    def __new__(
        cls, kind: str, item: Any, countdown: float, options: dict[str, Any] | None = None
    ) -> Sent:
        sent = super().__new__(cls, (kind, item, countdown))
        sent.options = dict(options or {})
        return sent


@dataclass
class RecordingDispatcher(Dispatcher):
    """A dispatcher that remembers what it was asked to send (for tests and dry runs)."""

    sent: list[Sent] = field(default_factory=list)
    #: What ``waiting`` answers, by queue (0 when not set).
    backlog: dict[str, int] = field(default_factory=dict)

    def deliver(self, kind: str, item: Any, countdown: float, **options: Any) -> bool:
        self.sent.append(Sent(kind, item, countdown, options))
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
