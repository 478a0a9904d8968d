"""The alert gate before each wave: no batch of a request is sent while its PromQL query returns
a series, or while Prometheus cannot say (fail-closed, as kured's Prometheus check).

The release step (``worker.pipeline.release``) calls :func:`admit` with the batches it is
about to send. Each gated request among them (``gate_query`` recorded at intake: its own, or
``BMSREBOOT_GATE_QUERY`` when ``BMSREBOOT_PROMETHEUS_URL`` is set) is judged once per release
run (one ``GET /api/v1/query`` per distinct expression in the run):

- **open**: no series, once those whose ``alertname`` fully matches ``gate_exclude`` are left
  out. Its batches go; a gate that was closed is cleared (``gate_closed_since``,
  ``gate_reason``, ``gate_held_until`` back to None, one event).
- **closed**: any other series, or any error (unreachable, timed out, an error answer, no
  Prometheus configured). Its batches stay ``pending``: ``gate_held_until`` = now +
  ``BMSREBOOT_GATE_INTERVAL`` keeps them out of ``worker.db.plan.release_conditions`` until
  the next check, when the release step wakes for it (``plan.next_due_at``; the reconciler
  counts it overdue only after that: ``overdue.projects_with_overdue_releases``). The first
  close records ``gate_closed_since`` and one event; each check records the latest reason.
- **timed out**: closed for ``gate_timeout`` seconds or more since ``gate_closed_since``: the
  request is halted through ``worker.db.rollout.stop_request`` (its pending batches
  ``cancelled``, those in flight followed to their end, then ``halted``), the one stop path.

Batches already released or submitted are never recalled: the gate is judged before a batch
is released, not after.
"""

from __future__ import annotations

import datetime as dt
import re
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import lru_cache

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from worker.censor import mask_url_credentials
from worker.db.events import add_event
from worker.db.models import Batch, RebootRequest
from worker.db.rollout import stop_request
from worker.db.session import unit_of_work
from worker.db.states import ACTIVE_REQUEST_STATES, EventEntity, RequestStatus
from worker.monitoring import MonitoringError, PrometheusClient, Series
from worker.pipeline.ending import request_changed
from worker.pipeline.runtime import Runtime, log
from worker.text import fit

#: (connect, read) seconds of one gate query: short, since the release step holds its
#: project's lease meanwhile (``release.LEASE_SECONDS``); a slower Prometheus closes the gate.
QUERY_TIMEOUT = (2.0, 3.0)
#: Series a reason names, at most (then "and N more").
SHOWN_SERIES = 3

Query = Callable[[str], list[Series]]


@dataclass(frozen=True)
class Verdict:
    """One judgement of a request's gate: open, or closed and why."""

    open: bool
    reason: str | None = None


@lru_cache(maxsize=8)
def _client(url: str) -> PrometheusClient:
    # One client (one connection pool) per process and URL.
    return PrometheusClient(url, timeout=QUERY_TIMEOUT)


def query_function(rt: Runtime) -> Query | None:
    """What evaluates a gate's PromQL: the runtime's own (a test's), else a client of
    ``BMSREBOOT_PROMETHEUS_URL``; None when neither is there."""
    if rt.prometheus is not None:
        return rt.prometheus
    url = rt.settings.prometheus_url
    return _client(url).query if url else None


def _series_text(series: Series) -> str:
    labels = dict(series.labels)
    name = labels.pop("__name__", "")
    inner = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    return f"{name}{{{inner}}}"


#: What a query gave: its series, or the error it raised.
Answer = list[Series] | Exception


def ask(query: Query | None, expr: str) -> Answer | None:
    """Evaluate ``expr`` now: its series, the error (any failure closes the gate), or None
    when there is no Prometheus to ask."""
    if query is None:
        return None
    try:
        return query(expr)
    except Exception as exc:  # any failure closes the gate, with its reason
        return exc


def judge(answer: Answer | None, expr: str, exclude: str | None) -> Verdict:
    """The gate's verdict from what ``expr`` gave: closed on any series ``exclude`` (a regular
    expression, fully matched against ``alertname``, as Prometheus matches label regexes)
    leaves in, and on any error."""
    if answer is None:
        return Verdict(False, "no Prometheus to ask: BMSREBOOT_PROMETHEUS_URL is not set")
    if isinstance(answer, MonitoringError):
        return Verdict(False, f"Prometheus did not answer (fail-closed): {answer}")
    if isinstance(answer, Exception):
        return Verdict(
            False, f"Prometheus query failed (fail-closed): {type(answer).__name__}: {answer}"
        )
    pattern = re.compile(exclude) if exclude else None
    left = [
        s for s in answer if pattern is None or not pattern.fullmatch(s.labels.get("alertname", ""))
    ]
    if not left:
        return Verdict(True)
    shown = ", ".join(_series_text(s) for s in left[:SHOWN_SERIES])
    more = f" and {len(left) - SHOWN_SERIES} more" if len(left) > SHOWN_SERIES else ""
    return Verdict(False, f"{len(left)} series from {expr}: {shown}{more}")


@dataclass(frozen=True)
class _Gate:
    request_id: uuid.UUID
    query: str
    exclude: str | None
    timeout: float | None
    closed_since: dt.datetime | None


def _gates(session: Session, batch_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, _Gate]:
    """The gated requests of these batches, by batch id (ungated batches are left out)."""
    rows = session.execute(
        select(
            Batch.id,
            RebootRequest.id,
            RebootRequest.gate_query,
            RebootRequest.gate_exclude,
            RebootRequest.gate_timeout,
            RebootRequest.gate_closed_since,
        )
        .join(RebootRequest, RebootRequest.id == Batch.request_id)
        .where(Batch.id.in_(list(batch_ids)), RebootRequest.gate_query.is_not(None))
    ).all()
    return {
        batch_id: _Gate(request_id, query or "", exclude, timeout, since)
        for batch_id, request_id, query, exclude, timeout, since in rows
    }


def admit(
    rt: Runtime,
    candidates: list[uuid.UUID],
    verdicts: dict[uuid.UUID, Verdict],
    *,
    deadline: float,
) -> tuple[list[uuid.UUID], bool]:
    """Of ``candidates`` (batch ids the release step is about to send, in order), the ones
    whose request's gate is open, and whether a gate was judged now. ``verdicts`` holds this
    release run's judgements by request (a request is judged once a run); no new one is
    made past ``deadline`` (``time.monotonic()``): those batches wait for the next run."""
    with unit_of_work(rt.engine) as session:
        gates = _gates(session, candidates)
    if not gates:
        return candidates, False
    query = query_function(rt)
    answers: dict[str, Answer | None] = {}  # one GET per distinct expression here
    judged = False
    for gate in {g.request_id: g for g in gates.values()}.values():
        if gate.request_id in verdicts or time.monotonic() > deadline:
            continue
        if gate.query not in answers:
            answers[gate.query] = ask(query, gate.query)
        verdict = judge(answers[gate.query], gate.query, gate.exclude)
        verdicts[gate.request_id] = verdict
        judged = True
        _record(rt, gate, verdict)
    admitted = [
        b
        for b in candidates
        if b not in gates
        or (gates[b].request_id in verdicts and verdicts[gates[b].request_id].open)
    ]
    return admitted, judged


def _record(rt: Runtime, gate: _Gate, verdict: Verdict) -> None:
    """Write the verdict on the request in one unit of work: clear an open gate, hold a closed
    one until its next check, or halt a request whose gate stayed closed past its timeout."""
    now = rt.now()
    with unit_of_work(rt.engine) as session:
        request = session.scalar(
            select(RebootRequest)
            .where(
                RebootRequest.id == gate.request_id,
                RebootRequest.status.in_(ACTIVE_REQUEST_STATES),
                RebootRequest.stop.is_(None),
            )
            .with_for_update(key_share=True)
        )
        if request is None:
            return  # ended or stopped meanwhile: nothing of it is released anyway
        if verdict.open:
            if request.gate_closed_since is not None:
                _write(session, request, None, None, None)
                _event(session, request, rt.actor, {"gate": "open"}, now)
                log.info("request %s: the alert gate is open again", request.id)
            return
        reason = mask_url_credentials(verdict.reason or "closed")
        since = request.gate_closed_since or now
        timeout = request.gate_timeout or rt.settings.gate_timeout
        closed_for = (now - since).total_seconds()
        if closed_for >= timeout:
            why = (
                f"alert gate closed for {closed_for:.0f} s, past its timeout of {timeout:g} s: "
                f"{reason}"
            )
            _write(session, request, since, reason, None)
            if stop_request(session, request.id, RequestStatus.HALTED, why, actor=rt.actor):
                request_changed(session, request.id, rt)
                log.warning("request %s halted: %s", request.id, why)
            return
        held_until = now + dt.timedelta(seconds=rt.settings.gate_interval)
        _write(session, request, since, reason, held_until)
        if request.gate_closed_since is None:
            _event(session, request, rt.actor, {"gate": "closed", "reason": reason}, now)
        log.warning(
            "request %s held by its alert gate until %s: %s",
            request.id,
            held_until.isoformat(),
            reason,
        )


def _write(
    session: Session,
    request: RebootRequest,
    since: dt.datetime | None,
    reason: str | None,
    held_until: dt.datetime | None,
) -> None:
    session.execute(
        update(RebootRequest)
        .where(RebootRequest.id == request.id)
        .values(
            gate_closed_since=since,
            gate_reason=fit(reason, 4000),
            gate_held_until=held_until,
        )
        .execution_options(synchronize_session=False)
    )


def _event(
    session: Session, request: RebootRequest, actor: str, detail: dict[str, str], at: dt.datetime
) -> None:
    add_event(
        session,
        EventEntity.REQUEST,
        request.id,
        request.status,
        request.status,
        actor,
        detail,
        at=at,
    )
