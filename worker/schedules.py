"""Scheduled reboots: a TOML file of named cron entries, each tick one ordinary request.

The file (``BMSREBOOT_SCHEDULE_FILE``) holds ``[[schedule]]`` entries with fixed field names, so
that other tools can write it::

    [[schedule]]
    name = "kernel-patch-group-a"
    cron = "0 3 * * SUN"
    timezone = "Asia/Shanghai"
    project_id = "0123456789abcdef0123456789abcdef"
    servers_file = "group-a.txt"     # next to this file; or: servers = ["616fb98f-..."]
    type = "HARD"
    window = "2h"
    max_in_flight = 2
    failure_threshold = 5
    concurrency = "forbid"           # or "allow"
    enabled = true

Beat sends ``bmsreboot.run_schedules`` every ``SCHEDULE_CHECK_INTERVAL`` seconds; it reads the
file (so entries and the ids files can change without a restart), and for each enabled entry
finds the cron ticks since the last one recorded in the audit database (``schedule_ticks``).
Missed ticks coalesce, as cron, a Kubernetes CronJob and Celery beat do:

- only the **latest** tick, and only if it is not older than ``BMSREBOOT_SCHEDULE_GRACE``,
  becomes a ``bmsreboot.schedule_tick`` message (Flower shows it with the entry's name), which
  creates the request through the ordinary intake with the idempotency key
  ``schedule:<name>:<tick in UTC, ISO 8601>`` and the source ``schedule:<name>``; ``window``
  becomes its ``not_after`` (tick + window). A restarted, duplicated or late beat never
  reboots twice for the same tick;
- every older tick is recorded ``skipped``: "superseded by the tick at ..." when a later one
  fires, "missed by ..." when even the latest is beyond the grace (never fired late into a
  window that may be over);
- a **new** entry (no tick recorded yet) fires nothing older than its first check: that check
  records the cron's tick before it as ``skipped``, and the entry fires from the next one.

``concurrency`` is the entry's overlap policy, like a CronJob's ``concurrencyPolicy``:
``"forbid"`` (the default) records a tick ``skipped`` while the request of the entry's previous
fired tick is still ``accepted`` or ``running``; ``"allow"`` fires it anyway.

``servers_file`` is resolved relative to the schedule file's directory and, symlinks resolved,
must stay inside it (or inside ``BMSREBOOT_SCHEDULE_IDS_DIR``); it must be a regular file of at
most ``MAX_IDS_FILE_BYTES``. A problem with a file's content names the lines and quotes at most
a short, redacted excerpt (``excerpt``), never a whole line: a path pointed at the wrong file
(``/proc/self/environ``, ``/etc/shadow``) must not print it into the logs.

A malformed file gets one clear error per problem, naming the entry (``bmsreboot schedules
check``); the valid entries keep running.
"""

from __future__ import annotations

import datetime as dt
import os
import stat
import tomllib
import uuid
from collections.abc import Iterable, Sequence
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
#: The largest ids file read (a million ids of 37 bytes is 37 MB).
MAX_IDS_FILE_BYTES = 64 * 1024 * 1024
#: The largest schedule file read.
MAX_SCHEDULE_FILE_BYTES = 4 * 1024 * 1024
#: Bad values quoted (as excerpts) in one problem, at most; the others are counted.
QUOTED_BAD_VALUES = 3
#: Line numbers of bad lines named in one problem, at most.
NAMED_BAD_LINES = 10
#: Characters of a bad value an excerpt shows, at most (and never more than a third of it).
EXCERPT_CHARS = 8
#: The overlap policies (``concurrency``), as a Kubernetes CronJob's ``concurrencyPolicy``.
CONCURRENCY = ("forbid", "allow")

FIELDS = {
    "name",
    "cron",
    "timezone",
    "project_id",
    "servers",
    "servers_file",
    "selector",
    "preflight",
    "verify",
    "silence",
    "health_timeout",
    "health_check",
    "soak_seconds",
    "notify_url",
    "gate_query",
    "gate_exclude",
    "gate_timeout",
    "type",
    "window",
    "batch_size",
    "max_in_flight",
    "canary_size",
    "failure_threshold",
    "concurrency",
    "enabled",
}
REQUIRED = ("name", "cron", "project_id")


class ScheduleFileError(Exception):
    """The schedule file cannot be used at all (one line, quoting none of its content)."""


class IdsFileError(ValueError):
    """An ids file that cannot be used. The message is one line and quotes none of the file's
    content beyond ``excerpt``s."""


def excerpt(value: str) -> str:
    """A short, redacted excerpt of a bad value: its first few characters (at most
    ``EXCERPT_CHARS``, and at most a third of it, so never the whole value) and its length."""
    shown = "".join(
        ch if ch.isprintable() else "?" for ch in value[: min(EXCERPT_CHARS, len(value) // 3)]
    )
    return f"'{shown}…' ({len(value)} characters)"


def _quote(value: Any, limit: int = 60) -> str:
    """A value the operator wrote in the schedule file, quoted in a problem (cut when long)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 1]}…"


def stamp(tick: dt.datetime) -> str:
    """A tick in UTC, ISO 8601 with a ``Z`` (as in idempotency keys)."""
    return tick.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


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
    concurrency: str = "forbid"
    #: Instead of ids: the project's servers a selector names, resolved at each tick.
    selector: dict[str, Any] | None = None
    preflight: bool | None = None
    #: Verification after each job (None: the deployment's): on or off, the timeout, a probe
    #: (``{tcp_port = 22}`` or ``{http_url = "..."}``), a soak between batches.
    verify: bool | None = None
    health_timeout: float | None = None
    health_check: dict[str, Any] | None = None
    soak_seconds: float | None = None
    #: Where each of the entry's requests sends its webhooks (besides BMSREBOOT_WEBHOOK_URL).
    notify_url: str | None = None
    #: The alert gate before each wave (None: the deployment's): PromQL, the alertnames it
    #: ignores, how long it may hold the request.
    gate_query: str | None = None
    gate_exclude: str | None = None
    gate_timeout: float | None = None
    #: False: no Alertmanager silences for its requests (None: the deployment's, on).
    silence: bool | None = None
    #: The directories ``servers_file`` must stay inside (resolved): the schedule file's, and
    #: ``BMSREBOOT_SCHEDULE_IDS_DIR`` when set.
    ids_dirs: tuple[Path, ...] = ()

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

    def previous_tick(self, now: dt.datetime) -> dt.datetime:
        """The cron's last tick strictly before ``now``, in UTC."""
        local = croniter(self.cron, now.astimezone(self.zone))
        return local.get_prev(dt.datetime).astimezone(dt.UTC)

    def next_ticks(self, now: dt.datetime, count: int = 3) -> list[dt.datetime]:
        local = croniter(self.cron, now.astimezone(self.zone))
        return [local.get_next(dt.datetime) for _ in range(count)]

    def server_ids(self) -> list[str]:
        """The ids, read now (an ids file is read at each tick, one id per line; blank lines
        and ``#`` comments are skipped). Raises ``IdsFileError``."""
        if self.servers is not None:
            return list(self.servers)
        assert self.servers_file is not None
        return read_ids_file(self.servers_file, self.ids_dirs)

    def payload(self, tick: dt.datetime) -> dict[str, Any]:
        """The intake payload of this entry's request for ``tick`` (UTC)."""
        payload: dict[str, Any] = {
            "project_id": self.project_id,
            "server_ids": None if self.selector is not None else self.server_ids(),
            "selector": self.selector,
            "preflight": self.preflight,
            "verify": self.verify,
            "silence": self.silence,
            "health_timeout": self.health_timeout,
            "health_check": self.health_check,
            "soak_seconds": self.soak_seconds,
            "notify_url": self.notify_url,
            "gate_query": self.gate_query,
            "gate_exclude": self.gate_exclude,
            "gate_timeout": self.gate_timeout,
            "type": self.type,
            "idempotency_key": tick_key(self.name, tick),
            "source": f"schedule:{self.name}",
            "batch_size": self.batch_size,
            "max_in_flight": self.max_in_flight,
            "canary_size": self.canary_size,
            "failure_threshold": self.failure_threshold,
            "not_after": (tick + self.window).isoformat() if self.window else None,
        }
        return {k: v for k, v in payload.items() if v is not None}


def _contained(path: Path, dirs: Sequence[Path]) -> Path:
    """``path`` with its symlinks resolved, if that is inside one of ``dirs``."""
    resolved = path.resolve()
    if any(resolved.is_relative_to(d) for d in dirs):
        return resolved
    where = " or ".join(str(d) for d in dirs)
    what = "is outside" if resolved == path else f"resolves to {resolved}, outside"
    raise IdsFileError(
        f"{what} {where} (an ids file must be in the schedule file's directory or in"
        " BMSREBOOT_SCHEDULE_IDS_DIR): not read"
    )


def _read_regular(path: Path, limit: int) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes. Opened without blocking (a FIFO
    would hang the reader) and checked on the open descriptor (``/dev/zero`` and friends are
    refused before a byte is read). Raises ``FileNotFoundError`` or ``IdsFileError``."""
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise IdsFileError(f"cannot be opened ({exc.strerror})") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise IdsFileError("is not a regular file: not read")
        if info.st_size > limit:
            raise IdsFileError(f"is larger than {limit} bytes: not read")
    except BaseException:
        os.close(fd)
        raise
    with os.fdopen(fd, "rb") as file:
        try:
            data = file.read(limit + 1)
        except OSError as exc:
            raise IdsFileError(f"cannot be read ({exc.strerror})") from None
    if len(data) > limit:
        raise IdsFileError(f"is larger than {limit} bytes: not read")
    return data


def read_ids_file(path: Path, dirs: Sequence[Path]) -> list[str]:
    """The ids of an ids file (one a line; blank lines and ``#`` comments skipped). The file
    must be inside one of ``dirs``, regular and at most ``MAX_IDS_FILE_BYTES``;
    every other line must be a UUID. Raises ``IdsFileError``, whose message never holds more
    of the file than excerpts of its bad lines, and none of a file without a single id."""
    resolved = _contained(path, dirs)
    try:
        data = _read_regular(resolved, MAX_IDS_FILE_BYTES)
    except FileNotFoundError:
        raise IdsFileError("does not exist") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise IdsFileError(f"is not UTF-8 text (byte {exc.start}): not read") from None
    found: list[str] = []
    bad: list[tuple[int, str]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        value = line.split("#", 1)[0].strip()
        if not value:
            continue
        if UUID_RE.match(value):
            found.append(value)
        else:
            bad.append((number, value))
    if bad and not found:
        # Not an ids file at all (a path pointed at the wrong file): no excerpt of it.
        lines = ", ".join(str(n) for n, _ in bad[:NAMED_BAD_LINES])
        etc = ", ..." if len(bad) > NAMED_BAD_LINES else ""
        raise IdsFileError(
            f"holds no server id: its {len(bad)} line(s) are not UUIDs (line {lines}{etc}); "
            "is it an ids file?"
        )
    if bad:
        quoted = ", ".join(f"line {n} {excerpt(v)}" for n, v in bad[:QUOTED_BAD_VALUES])
        rest = bad[QUOTED_BAD_VALUES:]
        more = ""
        if rest:
            lines = ", ".join(str(n) for n, _ in rest[:NAMED_BAD_LINES])
            etc = ", ..." if len(rest) > NAMED_BAD_LINES else ""
            more = f", and {len(rest)} more (line {lines}{etc})"
        raise IdsFileError(f"{len(bad)} line(s) are not UUIDs: {quoted}{more}")
    if not found:
        raise IdsFileError("holds no server id")
    return found


def read_file(path: Path) -> dict[str, Any]:
    """The parsed schedule file; raises ``ScheduleFileError`` (one line) when it cannot be
    read or parsed."""
    try:
        data = _read_regular(path.resolve(), MAX_SCHEDULE_FILE_BYTES)
    except FileNotFoundError:
        raise ScheduleFileError(f"{path}: no such schedule file") from None
    except IdsFileError as exc:  # not a regular file, too large, not readable
        raise ScheduleFileError(f"{path}: {exc}") from None
    try:
        return tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ScheduleFileError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except tomllib.TOMLDecodeError as exc:
        # tomllib's messages give the line and column, never the text.
        raise ScheduleFileError(f"{path}: not valid TOML: {exc}") from None


def load(
    path: Path, ids_dir: Path | None = None, served: Served | None = None
) -> tuple[list[ScheduleEntry], list[str]]:
    """The valid entries of a schedule file and one message per problem (naming the entry).
    A file that cannot be read or parsed is one problem and no entries. ``ids_dir``
    (``BMSREBOOT_SCHEDULE_IDS_DIR``) is a second directory ids files may be in. ``served``:
    the only projects this deployment touches and where they are listed (the fleet file,
    ``BMSREBOOT_ALLOWED_PROJECTS``); an entry naming another project is a problem."""
    try:
        return load_entries(path, ids_dir, served)
    except ScheduleFileError as exc:
        return [], [str(exc)]


@dataclass(frozen=True)
class Served:
    """The projects a deployment touches (lower case), and where that list comes from."""

    projects: frozenset[str]
    source: str


def load_entries(
    path: Path, ids_dir: Path | None = None, served: Served | None = None
) -> tuple[list[ScheduleEntry], list[str]]:
    """As ``load``, but a file that cannot be read or parsed raises ``ScheduleFileError``."""
    data = read_file(path)
    extra = sorted(set(data) - {"schedule"})
    problems = [f"{path}: unknown top-level key(s): {', '.join(extra)}"] if extra else []
    raw = data.get("schedule", [])
    if not isinstance(raw, list):
        return [], [*problems, f"{path}: 'schedule' must be an array of tables ([[schedule]])"]
    base = path.absolute().parent.resolve()
    dirs = (base,) if ids_dir is None else (base, ids_dir.absolute().resolve())
    entries: list[ScheduleEntry] = []
    seen: set[str] = set()
    for position, item in enumerate(raw, start=1):
        label = f"schedule #{position}"
        if isinstance(item, dict) and isinstance(item.get("name"), str) and item["name"]:
            label = f"schedule {_quote(item['name'])}"
        if not isinstance(item, dict):
            problems.append(f"{label}: must be a table")
            continue
        entry, errors = _entry(item, dirs)
        if (
            entry is not None
            and served is not None
            and entry.project_id.lower() not in served.projects
        ):
            errors.append(f"project_id {entry.project_id} is not in {served.source}")
        if entry is not None and entry.name in seen:
            errors.append(f"duplicate name {entry.name!r}: names must be unique")
        problems.extend(f"{label}: {error}" for error in errors)
        if entry is not None and not errors:
            seen.add(entry.name)
            entries.append(entry)
        elif entry is not None:
            seen.add(entry.name)
    return entries, problems


def _entry(item: dict[str, Any], dirs: tuple[Path, ...]) -> tuple[ScheduleEntry | None, list[str]]:
    errors: list[str] = []
    unknown = sorted(set(item) - FIELDS)
    if unknown:
        errors.append(f"unknown field(s): {_quote(', '.join(unknown), 200)[1:-1]}")
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
        errors.append(f"cron {_quote(cron)} is not a valid 5-field cron expression")
    timezone = item.get("timezone", "UTC")
    try:
        ZoneInfo(str(timezone))
    except (ZoneInfoNotFoundError, ValueError):
        errors.append(f"unknown time zone {_quote(timezone)}")
    project_id = item["project_id"].strip()
    if not PROJECT_ID_RE.match(project_id):
        errors.append(f"project_id {_quote(project_id)} must be 32 hexadecimal characters")
    servers, servers_file = _servers(item, dirs, errors)
    reboot_type = str(item.get("type", "HARD")).upper()
    if reboot_type not in REBOOT_TYPES:
        errors.append(f"type must be HARD or SOFT, got {_quote(item.get('type'))}")
    window = None
    if "window" in item:
        window = parse_duration(str(item["window"]))
        if window is None or window <= dt.timedelta(0):
            errors.append(f"window {_quote(item['window'])} must be a duration such as 90m or 2h")
    batch_size = _int(item, "batch_size", 1, MAX_BATCH_SIZE, errors)
    max_in_flight = _int(item, "max_in_flight", 1, None, errors)
    canary_size = _int(item, "canary_size", 1, MAX_BATCH_SIZE, errors)
    threshold = item.get("failure_threshold")
    if threshold is not None and (
        isinstance(threshold, bool)
        or not isinstance(threshold, int | float)
        or not 0 <= threshold <= 100
    ):
        errors.append(f"failure_threshold must be a percentage 0-100, got {_quote(threshold)}")
        threshold = None
    selector = _selector(item, errors)
    preflight = item.get("preflight")
    if preflight is not None and not isinstance(preflight, bool):
        errors.append(f"preflight must be true or false, got {_quote(preflight)}")
        preflight = None
    verify = item.get("verify")
    if verify is not None and not isinstance(verify, bool):
        errors.append(f"verify must be true or false, got {_quote(verify)}")
        verify = None
    silence = item.get("silence")
    if silence is not None and not isinstance(silence, bool):
        errors.append(f"silence must be true or false, got {_quote(silence)}")
        silence = None
    health_timeout = _seconds(item, "health_timeout", errors, positive=True)
    soak_seconds = _seconds(item, "soak_seconds", errors, positive=False)
    health_check = _health_check(item, errors)
    notify_url = _notify_url(item, errors)
    gate_query, gate_exclude = _gate(item, errors)
    gate_timeout = _seconds(item, "gate_timeout", errors, positive=True)
    concurrency = item.get("concurrency", "forbid")
    if concurrency not in CONCURRENCY:
        errors.append(f'concurrency must be "forbid" or "allow", got {_quote(concurrency)}')
    enabled = item.get("enabled", True)
    if not isinstance(enabled, bool):
        errors.append(f"enabled must be true or false, got {_quote(enabled)}")
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
        concurrency=str(concurrency),
        selector=selector,
        preflight=preflight,
        verify=verify,
        silence=silence,
        health_timeout=health_timeout,
        health_check=health_check,
        soak_seconds=soak_seconds,
        notify_url=notify_url,
        gate_query=gate_query,
        gate_exclude=gate_exclude,
        gate_timeout=gate_timeout,
        ids_dirs=dirs,
    )
    return entry, errors


def _seconds(item: dict[str, Any], name: str, errors: list[str], *, positive: bool) -> float | None:
    """A number of seconds up to a day (``health_timeout`` above 0, ``soak_seconds`` 0 or
    more), as intake checks it."""
    from worker.pipeline.message import MAX_HEALTH_TIMEOUT

    value = item.get(name)
    if value is None:
        return None
    number = not isinstance(value, bool) and isinstance(value, int | float)
    if not number or not (value > 0 if positive else value >= 0) or value > MAX_HEALTH_TIMEOUT:
        errors.append(f"{name} must be a number of seconds up to 86400, got {_quote(value)}")
        return None
    return float(value)


def _notify_url(item: dict[str, Any], errors: list[str]) -> str | None:
    """``notify_url = "https://hooks.example.com/bmsreboot"``, checked as intake checks it
    (the reason masks the URL's credentials)."""
    from worker.pipeline.message import notify_url_problem

    value = item.get("notify_url")
    if value is None:
        return None
    problem = notify_url_problem(value)
    if problem:
        errors.append(problem)
        return None
    return str(value)


def _gate(item: dict[str, Any], errors: list[str]) -> tuple[str | None, str | None]:
    """``gate_query`` (PromQL) and ``gate_exclude`` (a regular expression on alertname), checked
    as intake checks them."""
    from worker.pipeline.message import MAX_GATE_TEXT, gate_exclude_problem

    found: list[str | None] = []
    for name in ("gate_query", "gate_exclude"):
        value = item.get(name)
        if value is not None and (
            not isinstance(value, str) or not value.strip() or len(value) > MAX_GATE_TEXT
        ):
            errors.append(f"{name} must be a non-empty string, got {_quote(value)}")
            value = None
        found.append(value.strip() if value else None)
    if found[1] is not None and (problem := gate_exclude_problem(found[1])):
        errors.append(problem)
        found[1] = None
    return found[0], found[1]


def _health_check(item: dict[str, Any], errors: list[str]) -> dict[str, Any] | None:
    """``health_check = {tcp_port = 22}`` or ``{http_url = "http://{ip}:9100/-/healthy"}``,
    checked as intake checks it (the message model)."""
    if "health_check" not in item:
        return None
    from pydantic import ValidationError

    from worker.pipeline.message import HealthCheckMessage

    raw = item["health_check"]
    try:
        HealthCheckMessage.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        errors.append(
            "health_check must be {tcp_port = PORT} or {http_url = URL} (one of them): "
            f"{first['msg']}"
        )
        return None
    return {k: raw[k] for k in ("tcp_port", "http_url") if raw.get(k) is not None}


def _selector(item: dict[str, Any], errors: list[str]) -> dict[str, Any] | None:
    """``selector = { tags = [...], name = "...", enterprise_project_id = "..." }``, checked as
    intake checks it (the message model)."""
    if "selector" not in item:
        return None
    from pydantic import ValidationError

    from worker.pipeline.message import SelectorMessage

    raw = item["selector"]
    try:
        SelectorMessage.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        errors.append(
            "selector must be a table of tags (a list), name and enterprise_project_id, at "
            f"least one: {where + ': ' if where else ''}{first['msg']}"
        )
        return None
    return {k: raw[k] for k in ("tags", "name", "enterprise_project_id") if raw.get(k)}


def _servers(
    item: dict[str, Any], dirs: tuple[Path, ...], errors: list[str]
) -> tuple[tuple[str, ...] | None, Path | None]:
    has_list, has_file = "servers" in item, "servers_file" in item
    if "selector" in item:
        if has_list or has_file:
            errors.append("give exactly one of servers, servers_file or selector")
        return None, None
    if has_list == has_file:
        errors.append(
            "give exactly one of servers (a list of ids), servers_file (a path) or selector"
        )
        return None, None
    if has_list:
        ids = item["servers"]
        if not isinstance(ids, list) or not ids:
            errors.append("servers must be a non-empty list of server ids")
            return None, None
        _check_ids(ids, "servers", errors)
        return tuple(str(i).strip().lower() for i in ids), None
    given = item["servers_file"]
    if not isinstance(given, str) or not given.strip():
        errors.append("servers_file must be a path (a string)")
        return None, None
    path = Path(given)
    if not path.is_absolute():
        path = dirs[0] / path
    try:
        read_ids_file(path, dirs)
    except IdsFileError as exc:
        errors.append(f"servers_file {_quote(given)} {exc}")
    return None, path


def _check_ids(ids: Iterable[Any], where: str, errors: list[str]) -> None:
    bad = [
        (n, i)
        for n, i in enumerate(ids, start=1)
        if not isinstance(i, str) or not UUID_RE.match(i.strip())
    ]
    if bad:
        quoted = ", ".join(
            f"#{n} {excerpt(i) if isinstance(i, str) else f'(a {type(i).__name__})'}"
            for n, i in bad[:QUOTED_BAD_VALUES]
        )
        more = f", and {len(bad) - QUOTED_BAD_VALUES} more" if len(bad) > QUOTED_BAD_VALUES else ""
        errors.append(f"{where}: {len(bad)} id(s) are not UUIDs: {quoted}{more}")


def _int(
    item: dict[str, Any], name: str, low: int, high: int | None, errors: list[str]
) -> int | None:
    value = item.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        errors.append(f"{name} must be a whole number of at least {low}, got {_quote(value)}")
        return None
    if high is not None and value > high:
        errors.append(f"{name} must be at most {high}, got {value}")
        return None
    return value


def tick_key(name: str, tick: dt.datetime) -> str:
    return f"schedule:{name}:{stamp(tick)}"


def request_id_for(name: str, tick: dt.datetime) -> uuid.UUID:
    """The request id of an entry's tick: derived from its idempotency key, as the producer
    API derives ids, so that every beat and worker agrees on it."""
    from worker.names import IDEMPOTENCY_NAMESPACE

    return uuid.uuid5(IDEMPOTENCY_NAMESPACE, tick_key(name, tick))
