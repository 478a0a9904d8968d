"""All mutable state of one simulator, under one lock with short critical sections.

``SimulatorState`` owns the knobs, the jobs, the inventory (servers and their state), the tokens,
the AK lockout, the rate limiter, the fault queues, the counters and the seeded random source.
Each method takes the lock for a few dictionary operations only; signature checks, job and
server serialization run outside it, so many client threads are served in parallel as far as
the GIL allows.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Mapping
from typing import Any

from worker.simulator import sts
from worker.simulator.auth import (
    AuthFailure,
    Incoming,
    Lockout,
    TenantMismatch,
    access_key,
    verify_signature,
)
from worker.simulator.config import SimulatorConfig, patched, to_json
from worker.simulator.faults import Fault, FaultQueues
from worker.simulator.inventory import Filters, Inventory, ServerView
from worker.simulator.jobs import Job
from worker.simulator.ratelimit import RateLimiter
from worker.simulator.stats import Stats
from worker.simulator.tokens import Token, TokenStore
from worker.simulator.validation import PowerAction

#: Seconds between sweeps of expired jobs (a looked-up job is also checked on its own).
PURGE_INTERVAL = 1.0
AK_LOCKED = "AK access failed to reach the limit,forbidden"


class Refused(Exception):
    """A power action the inventory refuses as a whole (BMS.0040, BMS.0605, BMS.0035-0039)."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


class SimulatorState:
    def __init__(self, config: SimulatorConfig | None = None) -> None:
        self.lock = threading.Lock()
        self._config = config or SimulatorConfig()
        self._rng = random.Random(self._config.seed)
        self.jobs: dict[str, Job] = {}
        self.inventory = Inventory(self._config)
        self.tokens = TokenStore()
        self.lockout = Lockout()
        self.limiter = RateLimiter()
        self.faults = FaultQueues()
        self.stats = Stats()
        self._next_purge = 0.0

    # --- knobs ---------------------------------------------------------------------------
    @property
    def config(self) -> SimulatorConfig:
        return self._config

    def configure(self, patch: Mapping[str, Any]) -> SimulatorConfig:
        """Apply a knob patch (JSON names and values); raises ValueError on a bad one (nothing
        changes then). A new ``servers`` or ``inventory`` builds the inventory again."""
        with self.lock:
            old = self._config
            new = patched(old, patch)
            if (new.servers, new.inventory) != (old.servers, old.inventory):
                self.inventory = Inventory(new)
            if "seed" in patch:
                self._rng = random.Random(new.seed)
            self._config = new
            return new

    def reset(self) -> None:
        """Forget jobs, tokens, lockouts, buckets, queued faults and counters, and put the servers
        back as the inventory made them; keep the knobs."""
        with self.lock:
            self.jobs.clear()
            self.inventory.clear()
            self.tokens.clear()
            self.lockout.clear()
            self.limiter.clear()
            self.faults.clear()
            self.stats = Stats()
            self._rng = random.Random(self._config.seed)

    def inject(self, route: str, fault: str, count: int = 1, delay: float | None = None) -> None:
        with self.lock:
            self.faults.add(route, fault, count, delay)

    # --- small locked steps the endpoints are made of ---------------------------------------
    def count(self, route: str, outcome: str) -> None:
        with self.lock:
            self.stats.count_call(route, outcome)

    def chance(self, probability: float) -> bool:
        if probability <= 0.0:
            return False
        with self.lock:
            return self._rng.random() < probability

    def take_fault_before(self, route: str) -> Fault | None:
        with self.lock:
            return self.faults.take_before(route)

    def allow(self, route: str, project_id: str, monotonic: float) -> bool:
        """Take one request from the project's budget on ``route`` (monotonic clock)."""
        limit = self._config.rate_limit(route)
        with self.lock:
            return self.limiter.allow(route, project_id, limit, monotonic)

    def authenticate(self, request: Incoming, project_id: str, now: float) -> None:
        """Raise AuthFailure (401) or TenantMismatch (400 Common.0018) unless allowed."""
        token_value = request.headers.get("x-auth-token")
        if token_value is not None:
            with self.lock:
                found = self.tokens.lookup(token_value, now)
            if isinstance(found, str):
                raise AuthFailure(found)
            if found.project_id != project_id:
                raise TenantMismatch
            with self.lock:
                self.stats.signed_with["token"] += 1
            return
        self.verify_aksk(request, now)
        x_project = request.headers.get("x-project-id")
        if x_project is not None and x_project != project_id:
            raise TenantMismatch

    def verify_aksk(self, request: Incoming, now: float) -> str:
        """What signed a correct AK/SK request: ``permanent`` (a ``credentials`` AK), or the
        source of a temporary credential (``metadata``, ``agency:<urn>``: ``sts.py``). Raises
        AuthFailure (401) otherwise; signature failures count toward the AK's lockout."""
        config = self._config
        ak = access_key(request)
        credentials = config.credentials
        if ak is not None:
            with self.lock:
                if self.lockout.is_locked(ak, now):
                    raise AuthFailure(AK_LOCKED)
            if ak not in credentials and sts.is_temporary_ak(ak):
                credentials = {ak: sts.derive_sk(config.sts_secret, ak)}
        try:
            verify_signature(request, credentials, now)
        except AuthFailure as failure:
            if failure.ak is not None:
                with self.lock:
                    self.lockout.record(
                        failure.ak,
                        False,
                        now,
                        config.ak_lockout_failures,
                        config.ak_lockout_seconds,
                    )
            raise
        assert ak is not None  # a verified signature named its AK
        with self.lock:
            self.lockout.record(ak, True, now, None, 0.0)
        source = "permanent"
        if credentials is not config.credentials:
            source = sts.check_temporary(request, ak, config, now)
        with self.lock:
            self.stats.signed_with[source] += 1
        return source

    def record_issued(self, source: str, ak: str) -> None:
        """A temporary credential was issued (``stats["issued"]``)."""
        with self.lock:
            self.stats.issued.setdefault(source, []).append(ak)

    def accept_action(
        self, project_id: str, action: PowerAction, now: float
    ) -> tuple[Job, Fault | None]:
        """Create the job of an accepted action, count its servers, take an after-accept fault.
        With an inventory, raise :class:`Refused` when a server's state forbids the action:
        checked and started under one lock, so two calls cannot both reboot one server."""
        config = self._config
        with self.lock:
            inventory = self.inventory
            if inventory.enabled:
                code = inventory.refusal(project_id, action.action, action.server_ids, now)
                if code:
                    raise Refused(code)
            job_id = f"{self._rng.getrandbits(128):032x}"
            job = Job.create(job_id, project_id, action.action, action.server_ids, config, now)
            self.jobs[job_id] = job
            if inventory.enabled:
                inventory.start(
                    project_id,
                    action.action,
                    action.server_ids,
                    job.failures,
                    job.finished_at,
                    config,
                    now,
                )
            self.stats.count_action(action.action, action.server_ids)
            self._purge_if_due(now)
            return job, self.faults.take_after("action")

    def find_job(self, project_id: str, job_id: str, now: float) -> tuple[Job | None, Fault | None]:
        """The job if it exists in this project and is not purged; counts the poll."""
        with self.lock:
            self._purge_if_due(now)
            job = self.jobs.get(job_id)
            if job is not None and self._expired(job, now):
                del self.jobs[job_id]
                job = None
            if job is None or job.project_id != project_id:
                return None, None
            self.stats.polls[job_id] += 1
            return job, self.faults.take_after("jobs")

    def list_servers(
        self, project_id: str, filters: Filters, now: float
    ) -> tuple[int, list[ServerView], Fault | None]:
        """(matching count, the page's servers, an after-accept fault)."""
        with self.lock:
            count, views = self.inventory.page(project_id, filters, now)
            return count, views, self.faults.take_after("servers")

    def find_server(
        self, project_id: str, server_id: str, now: float
    ) -> tuple[ServerView | None, Fault | None]:
        with self.lock:
            view = self.inventory.find(project_id, server_id, now)
            if view is None:
                return None, None
            return view, self.faults.take_after("server")

    def set_servers(
        self, project_id: str, server_ids: list[str], fields: Mapping[str, Any], now: float
    ) -> list[ServerView]:
        """Change servers' ``locked``/``status``/``host_status``/``task_state``/``ip``."""
        with self.lock:
            return self.inventory.set_fields(project_id, server_ids, fields, now)

    def add_token(self, value: str, token: Token) -> Fault | None:
        with self.lock:
            self.tokens.add(value, token)
            return self.faults.take_after("tokens")

    # --- retention and inspection --------------------------------------------------------------
    def _expired(self, job: Job, now: float) -> bool:
        return now >= job.finished_at + self._config.job_ttl

    def _purge_if_due(self, now: float) -> None:
        if now < self._next_purge:
            return
        self._next_purge = now + PURGE_INTERVAL
        for job_id in [j for j, job in self.jobs.items() if self._expired(job, now)]:
            del self.jobs[job_id]

    def stats_json(self, now: float) -> dict[str, Any]:
        with self.lock:
            self._purge_if_due(now)
            jobs = {
                job_id: {
                    "project_id": job.project_id,
                    "servers": len(job.server_ids),
                    "status": job.status(now),
                    # Epoch seconds on the simulator's clock: for overlaps between jobs.
                    "created": job.created,
                    "ends": None if job.duration == float("inf") else job.finished_at,
                }
                for job_id, job in self.jobs.items()
            }
            return self.stats.to_json(jobs, self.inventory.history(now))

    def config_json(self) -> dict[str, Any]:
        return to_json(self._config)
