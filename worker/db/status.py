"""Reading the audit record for people: a request's status, a server's history.

``request_status`` returns exactly what ``bmsreboot status --json`` prints and what the
completion callback receives, so every value is plain JSON (strings, numbers, lists, dicts).
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from worker import ids
from worker.censor import mask_url_credentials
from worker.db.models import Batch, RebootRequest, ServerResult
from worker.db.queries import server_counts
from worker.db.states import ServerStatus


def _iso(moment: dt.datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def request_status(
    session: Session, request_id: uuid.UUID, *, include_servers: bool = False
) -> dict[str, Any] | None:
    """The status of one request, or None if there is no such request.

    ``servers`` counts are computed live from ``server_results`` (one grouped query) and the
    sizes of batches not claimed yet, so they are right while the request runs, not only once
    it has finished.
    """
    request = session.scalar(
        select(RebootRequest)
        .where(RebootRequest.id == request_id)
        .execution_options(populate_existing=True)
    )
    if request is None:
        return None
    counts = server_counts(session, request_id)
    batches = session.scalars(
        select(Batch)
        .where(Batch.request_id == request_id)
        .order_by(Batch.index)
        .execution_options(populate_existing=True)
    ).all()
    index_of = {b.id: b.index for b in batches}
    status: dict[str, Any] = {
        "request_id": str(request.id),
        "status": request.status.value,
        "project_id": request.project_id,
        "type": request.type.value,
        "source": request.source,
        "idempotency_key": request.idempotency_key or request.rejected_idempotency_key,
        "region": request.region,
        "created_at": _iso(request.created_at),
        "started_at": _iso(request.started_at),
        "finished_at": _iso(request.finished_at),
        "notified_at": _iso(request.notified_at),
        "notify_url": mask_url_credentials(request.notify_url) if request.notify_url else None,
        "selector": request.selector,
        "preflight": request.preflight,
        "verify": request.verify,
        "health_timeout": request.health_timeout,
        "health_check": request.health_check,
        "soak_seconds": request.soak_seconds,
        "soak_until": _iso(request.soak_until),
        "gate": None
        if request.gate_query is None
        else {
            "query": request.gate_query,
            "exclude": request.gate_exclude,
            "timeout": request.gate_timeout,
            "closed_since": _iso(request.gate_closed_since),
            "reason": request.gate_reason,
            "next_check_at": _iso(request.gate_held_until),
        },
        "silence": request.silence,
        "not_before": _iso(request.not_before),
        "not_after": _iso(request.not_after),
        "reason": request.reason,
        "rejection_reasons": request.rejection_reasons,
        "duplicates_removed": request.duplicates_removed,
        "servers": {
            "total": sum(counts.values()),
            **{s.value: counts.get(s, 0) for s in ServerStatus},
        },
        "batches": [
            {
                "index": b.index,
                "split_from": index_of.get(b.parent_batch_id) if b.parent_batch_id else None,
                "status": b.status.value,
                "job_id": b.job_id,
                "size": b.size,
                "polls": b.poll_count,
                "submit_attempts": b.submit_attempts,
                "next_attempt_at": _iso(b.next_attempt_at),
                "released_at": _iso(b.released_at),
                "submitted_at": _iso(b.submitted_at),
                "job_ended_at": _iso(b.job_ended_at),
                "detected_at": _iso(b.detected_at),
                "checks": b.checks,
                "next_check_at": _iso(b.next_check_at),
                "boot_seconds": b.boot_seconds,
                "silence_id": b.silence_id,
                "silence_ends_at": _iso(b.silence_ends_at),
                "silence_error": b.silence_error,
                "finished_at": _iso(b.finished_at),
                "last_error": None
                if b.last_error_code is None and b.last_error_message is None
                else {
                    "code": b.last_error_code,
                    "message": b.last_error_message,
                    "status": b.last_error_status,
                    "request_id": b.last_error_request_id,
                },
            }
            for b in batches
        ],
    }
    if include_servers:
        rows = session.execute(
            select(
                ServerResult.server_id,
                ServerResult.status,
                ServerResult.error_code,
                ServerResult.fail_reason,
                ServerResult.verified_at,
                ServerResult.returned_at,
            )
            .where(ServerResult.request_id == request_id)
            .order_by(ServerResult.id)
        ).all()
        status["server_results"] = [
            {
                "id": sid,
                "status": st.value,
                "error_code": code,
                "fail_reason": reason,
                "verified_at": _iso(verified),
                "returned_at": _iso(returned),
            }
            for sid, st, code, reason, verified, returned in rows
        ]
        # Batches not claimed yet hold their ids packed, with no rows: all pending.
        for packed in session.scalars(
            select(Batch.pending_ids)
            .where(Batch.request_id == request_id, Batch.pending_ids.is_not(None))
            .order_by(Batch.index)
        ):
            status["server_results"].extend(
                {
                    "id": sid,
                    "status": "pending",
                    "error_code": None,
                    "fail_reason": None,
                    "verified_at": None,
                    "returned_at": None,
                }
                for sid in ids.iter_unpack(packed or b"")
            )
    return status


def server_history(session: Session, server_id: str, limit: int = 50) -> list[dict[str, Any]]:
    """What happened to one server, newest first: each request that included it, who asked,
    and the outcome. One query on the (server_id, updated_at) index."""
    rows = session.execute(
        select(ServerResult, RebootRequest, Batch)
        .join(RebootRequest, RebootRequest.id == ServerResult.request_id)
        .join(Batch, Batch.id == ServerResult.batch_id)
        .where(ServerResult.server_id == server_id)
        .order_by(ServerResult.updated_at.desc(), ServerResult.id.desc())
        .limit(limit)
    ).all()
    return [
        {
            "server_id": result.server_id,
            "status": result.status.value,
            "error_code": result.error_code,
            "fail_reason": result.fail_reason,
            "sub_job_id": result.sub_job_id,
            "begin_time": _iso(result.begin_time),
            "end_time": _iso(result.end_time),
            "verified_at": _iso(result.verified_at),
            "returned_at": _iso(result.returned_at),
            "updated_at": _iso(result.updated_at),
            "request_id": str(request.id),
            "request_status": request.status.value,
            "project_id": request.project_id,
            "type": request.type.value,
            "source": request.source,
            "requested_at": _iso(request.created_at),
            "batch_index": batch.index,
            "job_id": batch.job_id,
        }
        for result, request, batch in rows
    ]
