"""Simulated batch jobs: ``baremetalBatchOperate`` with one ``baremetalSingleOperate`` per server.

A job is fixed when it is created (servers, which of them fail, how long it runs) and its status
is a pure function of the clock: ``INIT`` for the first tenth of its duration, then ``RUNNING``,
then ``SUCCESS``, or ``FAIL`` when any sub-job failed. A job with a stuck server never leaves
``RUNNING``. Since the body only changes with the status, each status is serialized once and
cached, which keeps polls of 1000-server jobs cheap.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from worker.simulator.config import SimulatorConfig, failure_point, server_fails
from worker.simulator.wire import dump, failure_message, format_time

BATCH_JOB_TYPE = "baremetalBatchOperate"
SINGLE_JOB_TYPE = "baremetalSingleOperate"
TERMINAL = frozenset({"SUCCESS", "FAIL"})
#: Share of a job's duration spent in INIT before it turns RUNNING.
INIT_SHARE = 0.1


@dataclass
class Job:
    job_id: str
    project_id: str
    action: str
    server_ids: tuple[str, ...]
    #: server id -> error code, for the servers whose sub-job fails.
    failures: dict[str, str]
    created: float
    #: Seconds from creation to the terminal status; ``math.inf`` when stuck.
    duration: float
    init_period: float
    _cache: dict[str, bytes] = field(default_factory=dict, repr=False)

    @classmethod
    def create(
        cls,
        job_id: str,
        project_id: str,
        action: str,
        server_ids: tuple[str, ...],
        config: SimulatorConfig,
        now: float,
    ) -> Job:
        failures = {s: config.fail_code for s in server_ids if server_fails(s, config)}
        # Jitter is a fixed function of the job id, so a job's timing is reproducible.
        planned = config.job_duration + failure_point(job_id) * config.job_jitter
        stuck = not config.stuck_servers.isdisjoint(server_ids)
        return cls(
            job_id=job_id,
            project_id=project_id,
            action=action,
            server_ids=server_ids,
            failures=failures,
            created=now,
            duration=math.inf if stuck else planned,
            init_period=INIT_SHARE * config.job_duration,
        )

    @property
    def finished_at(self) -> float:
        return self.created + self.duration

    def status(self, now: float) -> str:
        elapsed = now - self.created
        if elapsed < self.init_period:
            return "INIT"
        if now < self.finished_at:
            return "RUNNING"
        return "FAIL" if self.failures else "SUCCESS"

    def body(self, now: float) -> bytes:
        """The ShowJobInfos body at ``now``. Rendering outside the state lock is safe: a job
        never changes after creation, and two threads caching the same bytes is harmless."""
        status = self.status(now)
        cached = self._cache.get(status)
        if cached is None:
            cached = self._cache[status] = dump(self.render(status))
        return cached

    def render(self, status: str) -> dict[str, Any]:
        done = status in TERMINAL
        end_time = format_time(self.finished_at) if done else None
        sub_jobs = [
            self._sub_job(index, server_id, status, end_time)
            for index, server_id in enumerate(self.server_ids)
        ]
        first_failure = next((s for s in sub_jobs if s["status"] == "FAIL"), None)
        return {
            "status": status,
            "entities": {"sub_jobs_total": len(sub_jobs), "sub_jobs": sub_jobs},
            "job_id": self.job_id,
            "job_type": BATCH_JOB_TYPE,
            "begin_time": format_time(self.created),
            "end_time": end_time,
            "error_code": first_failure["error_code"] if first_failure else None,
            "fail_reason": first_failure["fail_reason"] if first_failure else None,
        }

    def _sub_job(self, index: int, server_id: str, parent: str, end: str | None) -> dict[str, Any]:
        # Sub-jobs move with their parent; only a terminal job reveals per-server outcomes.
        code = self.failures.get(server_id) if parent in TERMINAL else None
        reason = failure_message(code, self.action) if code else None
        entities: dict[str, Any] = {"server_id": server_id}
        if reason:
            entities["errorcode_message"] = reason
        status = parent if parent not in TERMINAL else ("FAIL" if code else "SUCCESS")
        return {
            "status": status,
            "entities": entities,
            "job_id": f"{self.job_id[:24]}{index + 1:08x}",
            "job_type": SINGLE_JOB_TYPE,
            "begin_time": format_time(self.created),
            "end_time": end,
            "error_code": code,
            "fail_reason": reason,
        }
