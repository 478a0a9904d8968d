"""The scheduled ticks, as plain functions behind ``bmsreboot.run_schedules`` (sent by beat)
and ``bmsreboot.schedule_tick`` (one per due tick; see ``worker.schedules``).

A tick's row in ``schedule_ticks`` (unique by entry and tick) is its decision, and whoever
inserts it first decides: ``run_schedules`` records the ticks it does not fire (superseded,
missed, or before a new entry's first check) with insert-or-ignore; ``schedule_tick`` claims
its tick (``fired``, with the request id derived from the tick) *before* it creates the
request, so a tick is never both fired and recorded skipped. A second delivery of a claimed
tick whose request is not recorded (its worker died between the two) creates it then.

Both take ``now`` (default: the clock), so tests move time rather than wait for it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from worker.db.models import RebootRequest, ScheduleTick
from worker.db.session import is_postgresql, unit_of_work
from worker.db.states import ACTIVE_REQUEST_STATES
from worker.fleet import served
from worker.pipeline import intake
from worker.pipeline.runtime import Runtime
from worker.schedules import (
    IdsFileError,
    ScheduleEntry,
    Served,
    load,
    request_id_for,
    stamp,
)

log = logging.getLogger("bmsreboot.schedules")

#: The states of a request that ``concurrency = "forbid"`` waits for.
#: Rows of one insert of skipped ticks.
RECORD_CHUNK = 500

#: The problems last logged, by file: a malformed file is logged when it changes, not at
#: every check.
_logged: dict[str, str] = {}


def entries(
    path: Path, ids_dir: Path | None = None, served: Served | None = None
) -> list[ScheduleEntry]:
    """The valid entries of the file, logging its problems once per change (``served``: the
    projects an entry may name)."""
    valid, problems = load(path, ids_dir, served)
    digest = hashlib.sha256("\n".join(problems).encode()).hexdigest()
    if _logged.get(str(path)) != digest:
        _logged[str(path)] = digest
        for problem in problems:
            log.error("schedule file: %s (this entry is not run; the others are)", problem)
    return valid


def run_schedules(
    rt: Runtime, send_tick: Callable[[str, str], Any], now: dt.datetime | None = None
) -> dict[str, int]:
    """For each enabled entry, the ticks since the last one recorded: the latest, if within
    the grace, is sent as a ``schedule_tick`` message; every older one is recorded skipped."""
    path = rt.settings.schedule_file
    if path is None:
        return {}
    now = now or rt.now()
    grace = dt.timedelta(seconds=rt.settings.schedule_grace)
    done = {"sent": 0, "skipped": 0}
    for entry in entries(path, rt.settings.schedule_ids_dir, served(rt.settings, rt.fleet)):
        if not entry.enabled:
            continue
        with unit_of_work(rt.engine) as session:
            last = session.scalar(
                select(func.max(ScheduleTick.tick_at)).where(ScheduleTick.name == entry.name)
            )
        if last is None:
            # A new entry fires nothing older than its first check: the tick before it is
            # recorded (so that the next check knows the entry), and the entry starts there.
            last = entry.previous_tick(now)
            first = f"before the entry's first check at {stamp(now)}: a new entry fires no "
            done["skipped"] += _record_skipped(
                rt, entry.name, [(last, first + "earlier tick")], now
            )
        ticks = entry.ticks(last, now)
        if not ticks:
            continue
        due = ticks[-1] if now - ticks[-1] <= grace else None
        older = ticks[:-1] if due is not None else ticks
        rows = [(tick, _why_not(tick, due, now, grace)) for tick in older]
        skipped = _record_skipped(rt, entry.name, rows, now)
        if skipped:
            log.warning(
                "schedule %s: %d missed tick(s) from %s to %s skipped (%s)",
                entry.name,
                skipped,
                stamp(older[0]),
                stamp(older[-1]),
                f"superseded by the tick at {stamp(due)}" if due else "beyond the grace",
            )
        done["skipped"] += skipped
        if due is not None:
            send_tick(entry.name, due.isoformat())
            done["sent"] += 1
    return done


def _why_not(
    tick: dt.datetime, due: dt.datetime | None, now: dt.datetime, grace: dt.timedelta
) -> str:
    late = int((now - tick).total_seconds())
    if due is not None:
        return (
            f"superseded by the tick at {stamp(due)} (missed by {late} s; missed ticks "
            "coalesce: only the latest fires)"
        )
    return (
        f"missed by {late} s (beat was not running), more than the grace of "
        f"{int(grace.total_seconds())} s: not fired late"
    )


def schedule_tick(name: str, tick_iso: str, rt: Runtime, now: dt.datetime | None = None) -> str:
    """Claim one tick, then create its request through the ordinary intake (idempotent by its
    request id and key). Returns what happened, one word: ``fired``, ``rejected``, ``busy``
    (``concurrency = "forbid"`` and the previous request still runs), ``gone``, ``too_late``,
    ``unreadable``, or the status a duplicate message found recorded."""
    now = now or rt.now()
    tick = dt.datetime.fromisoformat(tick_iso).astimezone(dt.UTC)
    request_id = request_id_for(name, tick)
    decided = _decided(rt, name, tick)
    if decided is not None:
        return decided  # a duplicate message (two beats, a redelivery): already done
    path = rt.settings.schedule_file
    scope = served(rt.settings, rt.fleet)
    found = entries(path, rt.settings.schedule_ids_dir, scope) if path else []
    entry = next((e for e in found if e.name == name), None)
    if entry is None or not entry.enabled:
        return _skip(rt, name, tick, "gone", "the entry is gone, disabled or invalid", now)
    if entry.window is not None and now >= tick + entry.window:
        why = f"too late: its window ended at {stamp(tick + entry.window)}"
        return _skip(rt, name, tick, "too_late", why, now)
    try:
        payload = entry.payload(tick)
    except IdsFileError as exc:
        return _skip(rt, name, tick, "unreadable", f"servers_file {exc}", now)
    busy = _claim(rt, entry, tick, request_id, now)
    if busy is not None:
        return busy
    payload["request_id"] = str(request_id)
    result = intake.accept_request(payload, rt)
    status = "fired" if result.status != "rejected" else "rejected"
    if status != "fired" or result.request_id != request_id:
        reasons = "; ".join(result.reasons) or None
        _settle(rt, name, tick, status, result.request_id, reasons, only_if_fired=False)
    log.info("schedule %s: tick %s -> request %s (%s)", name, tick_iso, result.request_id, status)
    return status


def _decided(rt: Runtime, name: str, tick: dt.datetime) -> str | None:
    """The status recorded for the tick, unless there is none or it was claimed (``fired``)
    without its request being recorded yet."""
    with unit_of_work(rt.engine) as session:
        row = session.execute(
            select(ScheduleTick.status, RebootRequest.id)
            .outerjoin(RebootRequest, RebootRequest.id == ScheduleTick.request_id)
            .where(ScheduleTick.name == name, ScheduleTick.tick_at == tick)
        ).first()
    if row is None or (row.status == "fired" and row.id is None):
        return None
    return str(row.status)


def _claim(
    rt: Runtime, entry: ScheduleEntry, tick: dt.datetime, request_id: uuid.UUID, now: dt.datetime
) -> str | None:
    """Record the tick ``fired`` (None: go on and create its request), or ``skipped`` because
    the entry's previous request still runs (``busy``), in one transaction. A tick already
    recorded answers what was recorded (None if it was claimed, by an earlier delivery)."""
    for _ in range(2):
        try:
            with unit_of_work(rt.engine) as session:
                row = session.scalar(
                    select(ScheduleTick).where(
                        ScheduleTick.name == entry.name, ScheduleTick.tick_at == tick
                    )
                )
                if row is not None:
                    return None if row.status == "fired" else str(row.status)
                running = _still_running(session, rt, entry, tick, now)
                if running is not None:
                    session.add(_row(entry.name, tick, "skipped", None, running, now))
                else:
                    session.add(_row(entry.name, tick, "fired", request_id, None, now))
        except IntegrityError:
            continue  # another delivery recorded this tick a moment ago: read what it did
        if running is not None:
            log.warning("schedule %s: tick %s skipped: %s", entry.name, stamp(tick), running)
            return "busy"
        return None
    raise RuntimeError(f"schedule {entry.name}: tick {stamp(tick)} could not be recorded")


def _still_running(
    session: Session, rt: Runtime, entry: ScheduleEntry, tick: dt.datetime, now: dt.datetime
) -> str | None:
    """With ``concurrency = "forbid"``: why the tick must not fire (the request of the entry's
    latest fired tick before it is still active), or None."""
    if entry.concurrency != "forbid":
        return None
    previous = session.execute(
        select(ScheduleTick.tick_at, ScheduleTick.request_id, ScheduleTick.recorded_at)
        .add_columns(RebootRequest.status)
        .outerjoin(RebootRequest, RebootRequest.id == ScheduleTick.request_id)
        .where(
            ScheduleTick.name == entry.name,
            ScheduleTick.status == "fired",
            ScheduleTick.tick_at < tick,
        )
        .order_by(ScheduleTick.tick_at.desc())
        .limit(1)
    ).first()
    if previous is None:
        return None
    if previous.status in ACTIVE_REQUEST_STATES:
        state = str(previous.status)
    elif previous.status is None and now - previous.recorded_at < _starting(rt):
        # Claimed, its request not recorded yet: its intake is running, or its message is
        # waiting to be redelivered (at most the visibility timeout and a task run). Later
        # than that the request was lost or purged, and it does not hold the entry up.
        state = "not recorded yet"
    else:
        return None
    return (
        f"previous request {previous.request_id} (tick at {stamp(previous.tick_at)}) still "
        f'running ({state}): concurrency is "forbid"'
    )


def _starting(rt: Runtime) -> dt.timedelta:
    s = rt.settings
    return dt.timedelta(seconds=s.visibility_timeout + s.task_time_limit)


def _skip(rt: Runtime, name: str, tick: dt.datetime, word: str, why: str, now: dt.datetime) -> str:
    """Record the tick ``skipped`` for ``why`` (also over a claim whose request was never
    recorded); answers ``word``, or the status found if the tick was decided meanwhile."""
    recorded = _settle(rt, name, tick, "skipped", None, why, only_if_fired=True, now=now)
    if recorded != "skipped":
        return recorded
    log.warning("schedule %s: tick %s skipped: %s", name, stamp(tick), why)
    return word


def _settle(
    rt: Runtime,
    name: str,
    tick: dt.datetime,
    status: str,
    request_id: uuid.UUID | None,
    detail: str | None,
    *,
    only_if_fired: bool,
    now: dt.datetime | None = None,
) -> str:
    """Record the tick's outcome: insert it, or update its claim (``fired``; when
    ``only_if_fired``, only a claim whose request is not recorded). Answers the status the
    tick ends with."""
    now = now or rt.now()
    for _ in range(2):
        try:
            with unit_of_work(rt.engine) as session:
                row = session.scalar(
                    select(ScheduleTick).where(
                        ScheduleTick.name == name, ScheduleTick.tick_at == tick
                    )
                )
                if row is None:
                    session.add(_row(name, tick, status, request_id, detail, now))
                    return status
                if only_if_fired:
                    request = session.get(RebootRequest, row.request_id) if row.request_id else None
                    if row.status != "fired" or request is not None:
                        return str(row.status)
                session.execute(
                    update(ScheduleTick)
                    .where(ScheduleTick.id == row.id)
                    .values(status=status, request_id=request_id, detail=detail)
                )
                return status
        except IntegrityError:
            continue
    raise RuntimeError(f"schedule {name}: tick {stamp(tick)} could not be recorded")


def _row(
    name: str,
    tick: dt.datetime,
    status: str,
    request_id: uuid.UUID | None,
    detail: str | None,
    now: dt.datetime,
) -> ScheduleTick:
    return ScheduleTick(
        name=name,
        tick_at=tick,
        status=status,
        request_id=request_id,
        detail=detail,
        recorded_at=now,
    )


def _record_skipped(
    rt: Runtime, name: str, rows: Sequence[tuple[dt.datetime, str]], now: dt.datetime
) -> int:
    """Record ticks ``skipped`` with their reasons, leaving alone any tick already recorded
    (claimed by its ``schedule_tick``, or by the other beat); returns how many were new."""
    if not rows:
        return 0
    added = 0
    for start in range(0, len(rows), RECORD_CHUNK):
        values = [
            {
                "name": name,
                "tick_at": tick,
                "status": "skipped",
                "request_id": None,
                "detail": detail,
                "recorded_at": now,
            }
            for tick, detail in rows[start : start + RECORD_CHUNK]
        ]
        with unit_of_work(rt.engine) as session:
            dialect = postgresql if is_postgresql(session) else sqlite
            statement = (
                dialect.insert(ScheduleTick)
                .values(values)
                .on_conflict_do_nothing(index_elements=["name", "tick_at"])
                .returning(ScheduleTick.id)
            )
            added += len(session.execute(statement).all())
    return added
