"""Typed views of the BMS job API (``GET /v1/{project_id}/jobs/{job_id}``).

A batch power action creates one job with one sub-job per server; the outcome of a server is its
sub-job's ``status`` (decide per server, never from the parent's ``error_code``). Statuses stay
plain strings so a status the API adds later (``PENDING_PAYMENT``) passes through unharmed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

#: A job or sub-job in one of these states will not change any more.
TERMINAL_JOB_STATUSES: frozenset[str] = frozenset({"SUCCESS", "FAIL"})


def parse_time(value: Any) -> datetime | None:
    """``2019-04-25T20:04:47.591Z`` as an aware datetime; None for null, empty or garbage."""
    if not isinstance(value, str) or not value:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _str(value: Any) -> str | None:
    return None if value is None else str(value)


def _dict(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


@dataclass(frozen=True, slots=True)
class SubJob:
    """One server's part of a batch job."""

    job_id: str | None
    status: str
    server_id: str | None
    job_type: str | None
    error_code: str | None
    fail_reason: str | None
    errorcode_message: str | None
    begin_time: datetime | None
    end_time: datetime | None

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_JOB_STATUSES

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> SubJob:
        entities = _dict(data.get("entities"))
        return cls(
            job_id=_str(data.get("job_id")),
            status=str(data.get("status") or ""),
            server_id=_str(entities.get("server_id")),
            job_type=_str(data.get("job_type")),
            error_code=_str(data.get("error_code")),
            fail_reason=_str(data.get("fail_reason")),
            errorcode_message=_str(entities.get("errorcode_message")),
            begin_time=parse_time(data.get("begin_time")),
            end_time=parse_time(data.get("end_time")),
        )


@dataclass(frozen=True, slots=True)
class Job:
    """A batch job and its sub-jobs, as ShowJobInfos returns it."""

    job_id: str
    status: str
    job_type: str | None
    error_code: str | None
    fail_reason: str | None
    begin_time: datetime | None
    end_time: datetime | None
    sub_jobs_total: int
    sub_jobs: tuple[SubJob, ...]

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_JOB_STATUSES

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> Job:
        """Build from the API's JSON; raises ValueError when it is not a job at all."""
        job_id, status = data.get("job_id"), data.get("status")
        if not isinstance(job_id, str) or not job_id or not isinstance(status, str):
            raise ValueError("a job needs a string job_id and status")
        entities = _dict(data.get("entities"))
        raw_subs = entities.get("sub_jobs")
        sub_jobs = tuple(
            SubJob.from_api(s)
            for s in (raw_subs if isinstance(raw_subs, list) else [])
            if isinstance(s, Mapping)
        )
        total = entities.get("sub_jobs_total")
        return cls(
            job_id=job_id,
            status=status,
            job_type=_str(data.get("job_type")),
            error_code=_str(data.get("error_code")),
            fail_reason=_str(data.get("fail_reason")),
            begin_time=parse_time(data.get("begin_time")),
            end_time=parse_time(data.get("end_time")),
            sub_jobs_total=total if isinstance(total, int) else len(sub_jobs),
            sub_jobs=sub_jobs,
        )
