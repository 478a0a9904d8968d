"""The scheduled ticks, as plain functions behind ``bmsreboot.run_schedules`` (sent by beat)
and ``bmsreboot.schedule_tick`` (one per due tick; see ``worker.schedules``)."""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from worker.db.models import ScheduleTick
from worker.db.session import unit_of_work
from worker.pipeline import intake
from worker.pipeline.runtime import Runtime, utcnow
from worker.schedules import ScheduleEntry, load, request_id_for

log = logging.getLogger("bmsreboot.schedules")

#: The problems last logged, by file: a malformed file is logged when it changes, not at
#: every check.
_logged: dict[str, str] = {}


def entries(path: Path) -> list[ScheduleEntry]:
    """The valid entries of the file, logging its problems once per change."""
    valid, problems = load(path)
    digest = hashlib.sha256("\n".join(problems).encode()).hexdigest()
    if _logged.get(str(path)) != digest:
        _logged[str(path)] = digest
        for problem in problems:
            log.error("schedule file: %s (this entry is not run; the others are)", problem)
    return valid


def run_schedules(rt: Runtime, send_tick: Callable[[str, str], Any]) -> dict[str, int]:
    """Find each enabled entry's ticks since the last one recorded: due ones are sent as
    ``schedule_tick`` messages, ones older than the grace recorded as skipped."""
    path = rt.settings.schedule_file
    if path is None:
        return {}
    now = utcnow()
    grace = dt.timedelta(seconds=rt.settings.schedule_grace)
    done = {"sent": 0, "skipped": 0}
    for entry in entries(path):
        if not entry.enabled:
            continue
        with unit_of_work(rt.engine) as session:
            last = session.scalar(
                select(func.max(ScheduleTick.tick_at)).where(ScheduleTick.name == entry.name)
            )
        # A new entry starts now; a tick up to the grace before its first check still fires.
        since = last if last is not None else now - grace
        for tick in entry.ticks(since, now):
            late = now - tick
            if late > grace:
                _record(
                    rt,
                    entry.name,
                    tick,
                    "skipped",
                    None,
                    f"missed by {int(late.total_seconds())} s (beat was not running), more "
                    f"than the grace of {int(grace.total_seconds())} s: not fired late",
                )
                log.warning("schedule %s: tick %s missed, skipped", entry.name, tick.isoformat())
                done["skipped"] += 1
            else:
                send_tick(entry.name, tick.isoformat())
                done["sent"] += 1
    return done


def schedule_tick(name: str, tick_iso: str, rt: Runtime) -> str:
    """Create the request of one tick through the ordinary intake (idempotent by its key),
    then record the tick. Returns what happened, one word."""
    path = rt.settings.schedule_file
    tick = dt.datetime.fromisoformat(tick_iso).astimezone(dt.UTC)
    entry = next((e for e in entries(path) if e.name == name), None) if path else None
    if entry is None or not entry.enabled:
        _record(rt, name, tick, "skipped", None, "the entry is gone, disabled or invalid")
        return "gone"
    if entry.window is not None and utcnow() >= tick + entry.window:
        _record(
            rt, name, tick, "skipped", None, f"too late: its window ended at {tick + entry.window}"
        )
        log.warning("schedule %s: tick %s came after its window; skipped", name, tick_iso)
        return "too_late"
    try:
        payload = entry.payload(tick)
    except OSError as exc:
        _record(rt, name, tick, "skipped", None, f"servers_file cannot be read: {exc}")
        log.error("schedule %s: tick %s not fired: %s", name, tick_iso, exc)
        return "unreadable"
    payload["request_id"] = str(request_id_for(name, tick))
    result = intake.accept_request(payload, rt)
    status = "fired" if result.status != "rejected" else "rejected"
    _record(rt, name, tick, status, result.request_id, "; ".join(result.reasons) or None)
    log.info("schedule %s: tick %s -> request %s (%s)", name, tick_iso, result.request_id, status)
    return status


def _record(
    rt: Runtime,
    name: str,
    tick: dt.datetime,
    status: str,
    request_id: Any,
    detail: str | None,
) -> None:
    try:
        with unit_of_work(rt.engine) as session:
            session.add(
                ScheduleTick(
                    name=name,
                    tick_at=tick,
                    status=status,
                    request_id=request_id,
                    detail=detail,
                    recorded_at=utcnow(),
                )
            )
    except IntegrityError:
        pass  # another beat's message recorded this tick already
