"""Schedules: the file format and its problems, cron ticks in a time zone, and the ticks on a
real audit database (fired once through the ordinary intake, missed ones skipped)."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from tests.fixtures.steps import PROJECT, ids
from worker.db.models import RebootRequest, ScheduleTick
from worker.db.session import unit_of_work
from worker.pipeline import scheduling
from worker.pipeline.runtime import RecordingDispatcher, Runtime
from worker.schedules import load, tick_key

GROUP_A = """
[[schedule]]
name = "kernel-patch-group-a"
cron = "0 3 * * SUN"
timezone = "Asia/Shanghai"
project_id = "0123456789abcdef0123456789abcdef"
servers_file = "group-a.txt"
type = "HARD"
window = "2h"
max_in_flight = 2
failure_threshold = 5
enabled = true
"""
EVERY_MINUTE = """
[[schedule]]
name = "every-minute"
cron = "* * * * *"
project_id = "0123456789abcdef0123456789abcdef"
servers = ["616fb98f-46ca-475e-917e-2563e5a8cd19"]
"""
GOOD = GROUP_A + EVERY_MINUTE


def write(tmp_path: Path, text: str, ids_lines: list[str] | None = None) -> Path:
    path = tmp_path / "schedules.toml"
    path.write_text(text)
    if ids_lines is not None:
        (tmp_path / "group-a.txt").write_text("\n".join(ids_lines) + "\n")
    return path


def test_a_good_file_loads_every_field(tmp_path: Path) -> None:
    servers = ids(3)
    path = write(tmp_path, GOOD, ["# group a", *servers, ""])
    entries, problems = load(path)
    assert problems == []
    first, second = entries
    assert first.name == "kernel-patch-group-a"
    assert first.window == dt.timedelta(hours=2)
    assert first.server_ids() == servers
    assert second.timezone == "UTC"
    assert second.enabled


def test_the_ids_file_is_read_at_each_tick(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD, ids(2))
    (entry, _), _ = load(path)
    later = ids(4)
    (tmp_path / "group-a.txt").write_text("\n".join(later))
    assert entry.server_ids() == later


BAD = [
    ('cron = "61 * * * *"', "cron '61 * * * *' is not a valid"),
    ('cron = "0 3 * *"', "is not a valid 5-field cron"),
    ('colour = "red"', "unknown field(s): colour"),
    ('timezone = "Mars/Olympus"', "unknown time zone 'Mars/Olympus'"),
    ('servers = ["not-an-id"]', "1 id(s) are not UUIDs"),
    ('servers_file = "missing.txt"', "does not exist"),
    ('window = "soon"', "window 'soon' must be a duration"),
    ("max_in_flight = 0", "max_in_flight must be a whole number of at least 1"),
    ('project_id = "nope"', "project_id 'nope' must be 32 hexadecimal"),
]


@pytest.mark.parametrize(("line", "problem"), BAD)
def test_each_problem_is_named_with_its_entry_and_the_others_still_run(
    tmp_path: Path, line: str, problem: str
) -> None:
    key = line.split(" =", 1)[0]
    base = {
        "name": '"broken"',
        "cron": '"0 3 * * *"',
        "project_id": f'"{PROJECT}"',
        "servers": '["616fb98f-46ca-475e-917e-2563e5a8cd19"]',
    }
    if key == "servers_file":
        base.pop("servers")
    fields = [f"{k} = {v}" for k, v in base.items() if k != key] + [line]
    text = "[[schedule]]\n" + "\n".join(fields) + "\n" + EVERY_MINUTE
    entries, problems = load(write(tmp_path, text))
    assert len(problems) == 1, problems
    assert problems[0].startswith("schedule 'broken': ")
    assert problem in problems[0]
    assert [e.name for e in entries] == ["every-minute"]


def test_a_duplicate_name_and_an_unreadable_file_are_problems(tmp_path: Path) -> None:
    _, problems = load(write(tmp_path, GOOD + EVERY_MINUTE, ids(1)))
    assert problems == [
        "schedule 'every-minute': duplicate name 'every-minute': names must be unique"
    ]
    (broken,) = load(write(tmp_path, "[[schedule]\n"))[1]
    assert "not valid TOML" in broken
    (absent,) = load(tmp_path / "absent.toml")[1]
    assert "no such schedule file" in absent


def test_ticks_follow_the_cron_in_its_time_zone(tmp_path: Path) -> None:
    (entry, _), _ = load(write(tmp_path, GOOD, ids(1)))
    # 03:00 on Sundays in Shanghai is 19:00 UTC on Saturdays
    after = dt.datetime(2026, 11, 20, tzinfo=dt.UTC)
    ticks = entry.ticks(after, dt.datetime(2026, 12, 6, tzinfo=dt.UTC))
    assert ticks == [
        dt.datetime(2026, 11, 21, 19, 0, tzinfo=dt.UTC),
        dt.datetime(2026, 11, 28, 19, 0, tzinfo=dt.UTC),
        dt.datetime(2026, 12, 5, 19, 0, tzinfo=dt.UTC),
    ]
    payload = entry.payload(ticks[0])
    assert payload["idempotency_key"] == "schedule:kernel-patch-group-a:2026-11-21T19:00:00Z"
    assert payload["source"] == "schedule:kernel-patch-group-a"
    assert payload["not_after"] == "2026-11-21T21:00:00+00:00"
    assert payload["max_in_flight"] == 2


# --- ticks on a real audit database -----------------------------------------------------------


@pytest.fixture
def scheduled(make_rt: Callable[..., Runtime], tmp_path: Path) -> Runtime:
    return make_rt(schedule_file=write(tmp_path, EVERY_MINUTE), schedule_grace=120)


def _ticks(rt: Runtime) -> list[ScheduleTick]:
    with unit_of_work(rt.engine) as session:
        return list(session.scalars(select(ScheduleTick).order_by(ScheduleTick.tick_at)))


def test_a_due_tick_creates_one_request_however_often_it_is_sent(scheduled: Runtime) -> None:
    rt = scheduled
    sent: list[tuple[str, str]] = []
    result = scheduling.run_schedules(rt, lambda name, tick: sent.append((name, tick)))
    # A new entry starts now: the ticks within the grace (2 minutes) before now are due
    assert result["sent"] == len(sent) >= 1
    name, tick = sent[-1]
    outcomes = [scheduling.schedule_tick(name, tick, rt) for _ in range(3)]
    assert outcomes == ["fired", "fired", "fired"]
    moment = dt.datetime.fromisoformat(tick)
    with unit_of_work(rt.engine) as session:
        requests = session.scalars(
            select(RebootRequest).where(RebootRequest.idempotency_key == tick_key(name, moment))
        ).all()
    assert len(requests) == 1
    assert requests[0].source == "schedule:every-minute"
    assert [t.status for t in _ticks(rt) if t.tick_at == moment] == ["fired"]
    assert isinstance(rt.dispatcher, RecordingDispatcher)


def test_ticks_missed_beyond_the_grace_are_skipped_and_recorded(scheduled: Runtime) -> None:
    rt = scheduled
    # The last tick recorded was 10 minutes ago: beat was down since
    last = dt.datetime.now(dt.UTC).replace(second=0, microsecond=0) - dt.timedelta(minutes=10)
    with unit_of_work(rt.engine) as session:
        session.add(
            ScheduleTick(
                name="every-minute",
                tick_at=last,
                status="fired",
                request_id=uuid.uuid4(),
                recorded_at=last,
            )
        )
    sent: list[Any] = []
    result = scheduling.run_schedules(rt, lambda name, tick: sent.append(tick))
    # With a grace of 2 minutes, ticks older than that were skipped, the recent ones sent
    assert result["skipped"] >= 7
    assert 1 <= result["sent"] <= 3
    skipped = [t for t in _ticks(rt) if t.status == "skipped"]
    assert len(skipped) == result["skipped"]
    assert all("missed by" in (t.detail or "") for t in skipped)
    # Checking again finds nothing new to skip
    again = scheduling.run_schedules(rt, lambda name, tick: None)
    assert again["skipped"] == 0


# --- two beats against Redis: one leader, one request per tick ------------------------------


@pytest.mark.slow
@pytest.mark.redis
@pytest.mark.postgres
def test_two_beats_fire_each_tick_once_and_the_other_takes_over(fleet: Any, tmp_path: Path) -> None:
    import time

    from tests.test_chaos import Fleet
    from worker.cli.localworker import kill_worker

    assert isinstance(fleet, Fleet)
    servers = ids(20)
    schedule = tmp_path / "schedules.toml"
    schedule.write_text(
        "[[schedule]]\n"
        'name = "every-minute"\n'
        'cron = "* * * * *"\n'
        f'project_id = "{PROJECT}"\n'
        'servers_file = "servers.txt"\n'
        'window = "50s"\n'
        "batch_size = 10\n"
    )
    (tmp_path / "servers.txt").write_text("\n".join(servers) + "\n")
    fleet.env.update(
        {
            "BMSREBOOT_SCHEDULE_FILE": str(schedule),
            "BMSREBOOT_BEAT_LOCK_TIMEOUT": "10",
            "BMSREBOOT_SCHEDULE_GRACE": "120",
        }
    )
    fleet.configure(job_duration=0.3)
    fleet.start_worker(concurrency=2, beat=False)
    beats = {"beat-a": fleet.start_beat("beat-a"), "beat-b": fleet.start_beat("beat-b")}

    def fired() -> list[ScheduleTick]:
        with unit_of_work(fleet.engine) as session:
            return list(
                session.scalars(
                    select(ScheduleTick)
                    .where(ScheduleTick.status == "fired")
                    .order_by(ScheduleTick.tick_at)
                )
            )

    deadline = time.monotonic() + 200
    while len(fired()) < 2:
        assert time.monotonic() < deadline, fleet.tail()
        time.sleep(1.0)
    ticks = fired()
    # Exactly one request per tick, with the tick's idempotency key and the entry as source
    with unit_of_work(fleet.engine) as session:
        requests = session.scalars(
            select(RebootRequest).where(RebootRequest.source == "schedule:every-minute")
        ).all()
    keys = sorted(r.idempotency_key or "" for r in requests if r.status != "rejected")
    assert keys == sorted(tick_key("every-minute", t.tick_at) for t in ticks)
    assert len(keys) == len(set(keys))
    for tick in ticks:
        fleet.wait(str(tick.request_id), timeout=60)
    # No server rebooted twice for one tick: each once per fired tick
    reboots = fleet.stats()["reboots"]
    assert set(reboots.values()) == {len(ticks)}
    assert set(reboots) == set(servers)

    # One leader: only one beat sent anything
    logs = {name: (fleet.tmp / f"{name}.log") for name in beats}
    senders = [n for n, log in logs.items() if "Sending due task" in log.read_text()]
    assert len(senders) == 1
    leader = senders[0]
    other = next(n for n in beats if n != leader)
    # Kill the leader: the other takes over within the lock timeout (10 s) and its loop
    kill_worker(beats[leader])
    killed = time.monotonic()
    while "Sending due task" not in logs[other].read_text():
        assert time.monotonic() - killed < 10 + 5, logs[other].read_text()[-2000:]
        time.sleep(0.25)
