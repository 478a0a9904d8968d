"""Scheduled reboots: a TOML file of named cron entries, each tick one ordinary request.

The file (``BMSREBOOT_SCHEDULE_FILE``) holds ``[[schedule]]`` entries with fixed field names, so
that other tools can write it::

    [[schedule]]
    name = "kernel-patch-group-a"
    cron = "0 3 * * SUN"
    timezone = "Asia/Shanghai"
    project_id = "0123456789abcdef0123456789abcdef"
    servers_file = "/etc/bmsreboot/group-a.txt"   # or: servers = ["616fb98f-..."]
    type = "HARD"
    window = "2h"
    max_in_flight = 2
    failure_threshold = 5
    enabled = true

Beat sends ``bmsreboot.run_schedules`` every ``SCHEDULE_CHECK_INTERVAL`` seconds; it reads the
file (so entries and the ids files can change without a restart), and for each enabled entry
finds the cron ticks since the last one recorded in the audit database (``schedule_ticks``):

- a tick not older than ``BMSREBOOT_SCHEDULE_GRACE`` becomes one ``bmsreboot.schedule_tick``
  message (Flower shows it with the entry's name), which creates the request through the
  ordinary intake with the idempotency key ``schedule:<name>:<tick in UTC, ISO 8601>`` and the
  source ``schedule:<name>``; ``window`` becomes its ``not_after`` (tick + window). A restarted,
  duplicated or late beat never reboots twice for the same tick;
- an older tick (beat was down) is recorded as ``skipped``, never fired late into a window that
  may be over.

A malformed file gets one clear error per problem, naming the entry (``bmsreboot schedules
check``); the valid entries keep running.
"""

from __future__ import annotations

import datetime as dt
import tomllib
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

from worker.pipeline.validation import (
    MAX_BATCH_SIZE,
    PROJECT_ID_RE,
    REBOOT_TYPES,
    UUID_RE,
    parse_duration,
)

#: How often beat asks for the schedules to be checked (seconds).
SCHEDULE_CHECK_INTERVAL = 15.0
#: Ticks looked at per entry and check, at most (a week down with a cron of every minute is
#: recorded as its last MAX_TICKS ticks skipped).
MAX_TICKS = 1000

FIELDS = {
    "name",
    "cron",
    "timezone",
    "project_id",
    "servers",
    "servers_file",
    "type",
    "window",
    "batch_size",
    "max_in_flight",
    "canary_size",
    "failure_threshold",
    "enabled",
}
REQUIRED = ("name", "cron", "project_id")


@dataclass(frozen=True)
class ScheduleEntry:
    name: str
    cron: str
    timezone: str
    project_id: str
    servers: tuple[str, ...] | None
    servers_file: Path | None
    type: str
    window: dt.timedelta | None
    batch_size: int | None
    max_in_flight: int | None
    canary_size: int | None
    failure_threshold: float | None
    enabled: bool

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def ticks(self, after: dt.datetime, until: dt.datetime) -> list[dt.datetime]:
        """The cron's ticks in (after, until], in UTC, at most the last MAX_TICKS."""
        local = croniter(self.cron, after.astimezone(self.zone))
        out: list[dt.datetime] = []
        while True:
            tick = local.get_next(dt.datetime).astimezone(dt.UTC)
            if tick > until:
                return out[-MAX_TICKS:]
            out.append(tick)
            if len(out) > 10 * MAX_TICKS:
                out = out[-MAX_TICKS:]

    def next_ticks(self, now: dt.datetime, count: int = 3) -> list[dt.datetime]:
        local = croniter(self.cron, now.astimezone(self.zone))
        return [local.get_next(dt.datetime) for _ in range(count)]

    def server_ids(self) -> list[str]:
        """The ids, read now (an ids file is read at each tick, one id per line; blank lines
        and ``#`` comments are skipped)."""
        if self.servers is not None:
            return list(self.servers)
        assert self.servers_file is not None
        return read_ids_file(self.servers_file)

    def payload(self, tick: dt.datetime) -> dict[str, Any]:
        """The intake payload of this entry's request for ``tick`` (UTC)."""
        stamp = tick.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")
        payload: dict[str, Any] = {
            "project_id": self.project_id,
            "server_ids": self.server_ids(),
            "type": self.type,
            "idempotency_key": f"schedule:{self.name}:{stamp}",
            "source": f"schedule:{self.name}",
            "batch_size": self.batch_size,
            "max_in_flight": self.max_in_flight,
            "canary_size": self.canary_size,
            "failure_threshold": self.failure_threshold,
            "not_after": (tick + self.window).isoformat() if self.window else None,
        }
        return {k: v for k, v in payload.items() if v is not None}


def read_ids_file(path: Path) -> list[str]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return [s for s in (line.split("#", 1)[0].strip() for line in lines) if s]


def load(path: Path) -> tuple[list[ScheduleEntry], list[str]]:
    """The valid entries of a schedule file and one message per problem (naming the entry).
    A file that cannot be read or parsed is one problem and no entries."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return [], [f"{path}: no such schedule file"]
    except (OSError, UnicodeDecodeError) as exc:
        return [], [f"{path}: cannot be read ({exc})"]
    except tomllib.TOMLDecodeError as exc:
        return [], [f"{path}: not valid TOML: {exc}"]
    extra = sorted(set(data) - {"schedule"})
    problems = [f"{path}: unknown top-level key(s): {', '.join(extra)}"] if extra else []
    raw = data.get("schedule", [])
    if not isinstance(raw, list):
        return [], [*problems, f"{path}: 'schedule' must be an array of tables ([[schedule]])"]
    entries: list[ScheduleEntry] = []
    seen: set[str] = set()
    for position, item in enumerate(raw, start=1):
        label = f"schedule #{position}"
        if isinstance(item, dict) and isinstance(item.get("name"), str) and item["name"]:
            label = f"schedule {item['name']!r}"
        if not isinstance(item, dict):
            problems.append(f"{label}: must be a table")
            continue
        entry, errors = _entry(item, path.parent)
        if entry is not None and entry.name in seen:
            errors.append(f"duplicate name {entry.name!r}: names must be unique")
        problems.extend(f"{label}: {error}" for error in errors)
        if entry is not None and not errors:
            seen.add(entry.name)
            entries.append(entry)
        elif entry is not None:
            seen.add(entry.name)
    return entries, problems


def _entry(item: dict[str, Any], base: Path) -> tuple[ScheduleEntry | None, list[str]]:
    errors: list[str] = []
    unknown = sorted(set(item) - FIELDS)
    if unknown:
        errors.append(f"unknown field(s): {', '.join(unknown)}")
    for name in REQUIRED:
        if not isinstance(item.get(name), str) or not item[name].strip():
            errors.append(f"{name} is required (a string)")
    if errors and any("required" in e for e in errors):
        return None, errors
    name = item["name"].strip()
    if not all(ch.isalnum() or ch in "-_." for ch in name):
        errors.append("name may hold letters, digits, '-', '_' and '.' only")
    cron = item["cron"].strip()
    if len(cron.split()) != 5 or not croniter.is_valid(cron):
        errors.append(f"cron {cron!r} is not a valid 5-field cron expression")
    timezone = item.get("timezone", "UTC")
    try:
        ZoneInfo(str(timezone))
    except (ZoneInfoNotFoundError, ValueError):
        errors.append(f"unknown time zone {timezone!r}")
    project_id = item["project_id"].strip()
    if not PROJECT_ID_RE.match(project_id):
        errors.append(f"project_id {project_id!r} must be 32 hexadecimal characters")
    servers, servers_file = _servers(item, base, errors)
    reboot_type = str(item.get("type", "HARD")).upper()
    if reboot_type not in REBOOT_TYPES:
        errors.append(f"type must be HARD or SOFT, got {item.get('type')!r}")
    window = None
    if "window" in item:
        window = parse_duration(str(item["window"]))
        if window is None or window <= dt.timedelta(0):
            errors.append(f"window {item['window']!r} must be a duration such as 90m or 2h")
    batch_size = _int(item, "batch_size", 1, MAX_BATCH_SIZE, errors)
    max_in_flight = _int(item, "max_in_flight", 1, None, errors)
    canary_size = _int(item, "canary_size", 1, MAX_BATCH_SIZE, errors)
    threshold = item.get("failure_threshold")
    if threshold is not None and (
        isinstance(threshold, bool)
        or not isinstance(threshold, int | float)
        or not 0 <= threshold <= 100
    ):
        errors.append(f"failure_threshold must be a percentage 0-100, got {threshold!r}")
        threshold = None
    enabled = item.get("enabled", True)
    if not isinstance(enabled, bool):
        errors.append(f"enabled must be true or false, got {enabled!r}")
    entry = ScheduleEntry(
        name=name,
        cron=cron,
        timezone=str(timezone),
        project_id=project_id,
        servers=servers,
        servers_file=servers_file,
        type=reboot_type,
        window=window,
        batch_size=batch_size,
        max_in_flight=max_in_flight,
        canary_size=canary_size,
        failure_threshold=float(threshold) if threshold is not None else None,
        enabled=bool(enabled),
    )
    return entry, errors


def _servers(
    item: dict[str, Any], base: Path, errors: list[str]
) -> tuple[tuple[str, ...] | None, Path | None]:
    has_list, has_file = "servers" in item, "servers_file" in item
    if has_list == has_file:
        errors.append("give exactly one of servers (a list of ids) or servers_file (a path)")
        return None, None
    if has_list:
        ids = item["servers"]
        if not isinstance(ids, list) or not ids:
            errors.append("servers must be a non-empty list of server ids")
            return None, None
        _check_ids(ids, "servers", errors)
        return tuple(str(i).strip().lower() for i in ids), None
    path = Path(str(item["servers_file"]))
    if not path.is_absolute():
        path = base / path
    try:
        ids = read_ids_file(path)
    except FileNotFoundError:
        errors.append(f"servers_file {str(path)!r} does not exist")
        return None, path
    except (OSError, UnicodeDecodeError) as exc:
        errors.append(f"servers_file {str(path)!r} cannot be read ({exc})")
        return None, path
    if not ids:
        errors.append(f"servers_file {str(path)!r} holds no server id")
    _check_ids(ids, f"servers_file {str(path)!r}", errors)
    return None, path


def _check_ids(ids: Iterable[Any], where: str, errors: list[str]) -> None:
    bad = [repr(i) for i in ids if not isinstance(i, str) or not UUID_RE.match(i.strip())]
    if bad:
        errors.append(f"{where}: {len(bad)} id(s) are not UUIDs: {', '.join(bad[:3])}")


def _int(
    item: dict[str, Any], name: str, low: int, high: int | None, errors: list[str]
) -> int | None:
    value = item.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        errors.append(f"{name} must be a whole number of at least {low}, got {value!r}")
        return None
    if high is not None and value > high:
        errors.append(f"{name} must be at most {high}, got {value}")
        return None
    return value


def tick_key(name: str, tick: dt.datetime) -> str:
    stamp = tick.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")
    return f"schedule:{name}:{stamp}"


def request_id_for(name: str, tick: dt.datetime) -> uuid.UUID:
    """The request id of an entry's tick: derived from its idempotency key, as the producer
    API derives ids, so that every beat and worker agrees on it."""
    from worker.pipeline.producer import IDEMPOTENCY_NAMESPACE

    return uuid.uuid5(IDEMPOTENCY_NAMESPACE, tick_key(name, tick))
