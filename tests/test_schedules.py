"""Schedules: the file format and its problems, where ids files may be and how little of them a
problem quotes, cron ticks in a time zone, and the ticks on a real audit database on a clock the
tests move (fired once through the ordinary intake; missed ones coalesce into the latest;
``concurrency``), and ``bmsreboot schedules``."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from tests.fixtures.steps import PROJECT, ids, run_to_end
from tests.fixtures.waiting import wait_for
from worker.db.models import RebootRequest, ScheduleTick
from worker.db.session import unit_of_work
from worker.pipeline import scheduling
from worker.pipeline.runtime import Runtime
from worker.schedules import MAX_IDS_FILE_BYTES, load, tick_key

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
    ('concurrency = "sometimes"', 'concurrency must be "forbid" or "allow", got \'sometimes\''),
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


# --- ids files: where they may be, and how little of them a problem quotes -----------------

#: A fake access key planted in the environment: it must never be printed.
PLANTED_AK = "AKPLANTEDFAKE7Q3XW9ZK2M4"


def probe(conf: Path, servers_file: str) -> Path:
    """A schedule file in ``conf`` with one entry reading ``servers_file``."""
    conf.mkdir(parents=True, exist_ok=True)
    path = conf / "schedules.toml"
    path.write_text(
        "[[schedule]]\n"
        'name = "probe"\n'
        'cron = "0 3 * * *"\n'
        f'project_id = "{PROJECT}"\n'
        f"servers_file = {json.dumps(servers_file)}\n"
    )
    return path


def _content(target: Path) -> list[str]:
    """What of ``target`` must never be printed: its lines, or for an environ its entries
    (KEY=VALUE); empty if this user cannot read it."""
    try:
        raw = target.read_bytes().decode("utf-8", errors="replace")
    except OSError:
        return []
    parts = raw.split("\0") if "environ" in target.name else raw.splitlines()
    return [p for p in parts if len(p) >= 6]


@pytest.mark.parametrize("target", ["/proc/self/environ", "/etc/shadow", "outside/secret.txt"])
def test_an_ids_file_outside_the_schedule_directory_is_refused_and_never_quoted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, target: str
) -> None:
    # Given a schedule file whose servers_file points out of its directory: absolute, or
    # climbing out with "../" (to /etc/shadow, or to a file holding a fake key)
    conf = tmp_path / "conf"
    outside = tmp_path / target
    if not target.startswith("/"):
        outside.parent.mkdir()
        outside.write_text(f"HUAWEICLOUD_SDK_AK={PLANTED_AK}\nroot:$6$salt$hash:19000:0:::\n")
    given = target if target.startswith("/proc") else os.path.relpath(outside, conf)
    path = probe(conf, given)
    # When the file is checked, and when a check of beat's logs its problems
    entries, problems = load(path)
    with caplog.at_level(logging.DEBUG, logger="bmsreboot"):
        scheduling.entries(path)
    # Then the entry is refused, with one problem in one line saying why
    assert entries == []
    (problem,) = problems
    assert "\n" not in problem
    assert problem.startswith(f"schedule 'probe': servers_file {given!r} ")
    assert f"outside {conf}" in problem
    assert problem in caplog.text
    # And nothing of the file is in the problem or the logs
    secrets = _content(Path(target) if target.startswith("/") else outside)
    assert secrets or target == "/etc/shadow"  # /etc/shadow is unreadable but to root
    for secret in [PLANTED_AK, *secrets]:
        assert secret not in problem + caplog.text


def test_schedules_check_of_proc_self_environ_prints_one_line_and_no_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a fake AK in the environment of `bmsreboot schedules check`, and an entry whose
    # servers_file is that process's environment
    monkeypatch.setenv("HUAWEICLOUD_SDK_AK", PLANTED_AK)
    monkeypatch.setenv("BMSREBOOT_DATA_DIR", str(tmp_path / "data"))
    path = probe(tmp_path, "/proc/self/environ")
    # When the file is checked
    run = subprocess.run(
        [sys.executable, "-m", "worker", "schedules", "check", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    # Then it exits 1 with one line for the problem, and the key is printed nowhere
    assert run.returncode == 1, run.stderr
    (line,) = run.stderr.splitlines()
    assert "servers_file '/proc/self/environ' resolves to /proc/" in line
    assert "outside" in line
    assert PLANTED_AK not in run.stdout + run.stderr


def test_symlinks_that_stay_inside_the_directory_are_followed(tmp_path: Path) -> None:
    # Given a Kubernetes ConfigMap's layout: the schedule file and the ids file are symlinks
    # into a hidden directory next to them
    conf = tmp_path / "conf"
    data = conf / "..2030_01_07"
    data.mkdir(parents=True)
    servers = ids(2)
    (data / "group.txt").write_text("\n".join(servers) + "\n")
    probe(data, "group.txt")
    (conf / "schedules.toml").symlink_to(data / "schedules.toml")
    (conf / "group.txt").symlink_to(data / "group.txt")
    # When the schedule file is loaded by its symlink
    (entry,), problems = load(conf / "schedules.toml")
    # Then the entry and its ids are read
    assert problems == []
    assert entry.server_ids() == servers


def test_a_symlink_out_of_the_schedule_directory_is_refused(tmp_path: Path) -> None:
    # Given an ids file inside the directory that is a symlink to a file outside it
    secret = tmp_path / "secret.txt"
    secret.write_text(f"AK={PLANTED_AK}\n")
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "group.txt").symlink_to(secret)
    # When the file is checked
    _, (problem,) = load(probe(conf, "group.txt"))
    # Then it is refused for where it leads, and not quoted
    assert f"resolves to {secret}, outside {conf}" in problem
    assert PLANTED_AK not in problem


def test_an_ids_file_in_the_configured_ids_directory_is_read(tmp_path: Path) -> None:
    # Given an ids file outside the schedule file's directory, in BMSREBOOT_SCHEDULE_IDS_DIR
    shared = tmp_path / "ids"
    shared.mkdir()
    servers = ids(2)
    (shared / "group.txt").write_text("\n".join(servers) + "\n")
    path = probe(tmp_path / "conf", str(shared / "group.txt"))
    # When it is loaded with that directory, and without it
    (entry,), problems = load(path, ids_dir=shared)
    _, refused = load(path)
    # Then it is read with the directory, refused without
    assert problems == []
    assert entry.server_ids() == servers
    assert len(refused) == 1
    assert "outside" in refused[0]


def test_an_ids_file_that_is_not_a_regular_file_is_refused_without_reading_it(
    tmp_path: Path,
) -> None:
    # Given ids "files" that are a FIFO (reading it would hang) and a directory
    conf = tmp_path / "conf"
    conf.mkdir()
    os.mkfifo(conf / "fifo.txt")
    # When they are checked
    problems = [load(probe(conf, name))[1] for name in ("fifo.txt", ".")]
    # Then each is refused at once
    assert problems == [
        ["schedule 'probe': servers_file 'fifo.txt' is not a regular file: not read"],
        ["schedule 'probe': servers_file '.' is not a regular file: not read"],
    ]


def test_an_ids_file_over_the_size_limit_is_refused_without_reading_it(tmp_path: Path) -> None:
    # Given an ids file one byte over the limit (sparse: nothing is written to the disk)
    conf = tmp_path / "conf"
    conf.mkdir()
    with (conf / "huge.txt").open("wb") as file:
        file.truncate(MAX_IDS_FILE_BYTES + 1)
    # When it is checked
    _, problems = load(probe(conf, "huge.txt"))
    # Then it is refused for its size
    assert problems == [
        f"schedule 'probe': servers_file 'huge.txt' is larger than {MAX_IDS_FILE_BYTES} "
        "bytes: not read"
    ]


def test_a_garbage_line_in_an_ids_file_is_named_by_its_number_with_a_short_excerpt(
    tmp_path: Path,
) -> None:
    # Given an ids file with a valid id, a comment, and a line that is not an id
    garbage = f"SECRET_KEY={PLANTED_AK}"
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "group.txt").write_text(f"{ids(1)[0]}\n# a comment\n{garbage}\n")
    # When it is checked
    _, (problem,) = load(probe(conf, "group.txt"))
    # Then the problem names the line and shows its first 8 characters at most
    assert problem == (
        "schedule 'probe': servers_file 'group.txt' 1 line(s) are not UUIDs: "
        f"line 3 'SECRET_K…' ({len(garbage)} characters)"
    )
    assert garbage[:9] not in problem


def test_an_ids_file_without_a_single_id_is_refused_without_an_excerpt(tmp_path: Path) -> None:
    # Given a file allowed by its place but that is not an ids file at all
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "notes.txt").write_text(f"password={PLANTED_AK}\nuser=admin\n")
    # When it is checked
    _, (problem,) = load(probe(conf, "notes.txt"))
    # Then its bad lines are counted and numbered, and none is quoted
    assert problem == (
        "schedule 'probe': servers_file 'notes.txt' holds no server id: its 2 line(s) are "
        "not UUIDs (line 1, 2); is it an ids file?"
    )


def test_an_inline_id_that_is_not_a_uuid_is_quoted_only_in_part(tmp_path: Path) -> None:
    # Given an inline list with a long value that is not an id
    text = EVERY_MINUTE.replace('"616fb98f', f'"{PLANTED_AK}", 7, "616fb98f')
    # When the file is checked
    _, (problem,) = load(write(tmp_path, text))
    # Then the bad values are numbered, the string only as an excerpt
    assert problem == (
        "schedule 'every-minute': servers: 2 id(s) are not UUIDs: "
        f"#1 'AKPLANTE…' ({len(PLANTED_AK)} characters), #2 (a int)"
    )


# --- ticks on a real audit database, on a clock the tests move ------------------------------

#: The clock of these tests: a Monday noon, UTC. run_schedules and schedule_tick take ``now``.
T0 = dt.datetime(2030, 1, 7, 12, 0, tzinfo=dt.UTC)
NAME = "every-minute"


def at(minutes: float) -> dt.datetime:
    return T0 + dt.timedelta(minutes=minutes)


@pytest.fixture
def scheduled(make_rt: Callable[..., Runtime], tmp_path: Path) -> Runtime:
    return make_rt(schedule_file=write(tmp_path, EVERY_MINUTE), schedule_grace=600)


def check(rt: Runtime, now: dt.datetime) -> list[str]:
    """One beat's check at ``now``: the ticks it sent."""
    sent: list[str] = []
    scheduling.run_schedules(rt, lambda name, tick: sent.append(tick), now=now)
    return sent


def deliver(rt: Runtime, ticks: list[str], now: dt.datetime) -> list[str]:
    """The worker handles each sent tick at ``now``."""
    return [scheduling.schedule_tick(NAME, tick, rt, now=now) for tick in ticks]


def _ticks(rt: Runtime) -> list[ScheduleTick]:
    with unit_of_work(rt.engine) as session:
        return list(session.scalars(select(ScheduleTick).order_by(ScheduleTick.tick_at)))


def _requests(rt: Runtime) -> list[RebootRequest]:
    with unit_of_work(rt.engine) as session:
        return list(
            session.scalars(
                select(RebootRequest)
                .where(RebootRequest.source == f"schedule:{NAME}")
                .order_by(RebootRequest.idempotency_key)
            )
        )


def _fire(rt: Runtime, minute: int) -> uuid.UUID:
    """The entry's tick at ``minute`` fires: checked and delivered a few seconds after it."""
    now = at(minute + 0.1)
    assert deliver(rt, check(rt, now), now) == ["fired"]
    (row,) = [t for t in _ticks(rt) if t.tick_at == at(minute)]
    assert row.request_id is not None
    return row.request_id


def test_a_new_every_minute_entry_fires_at_most_one_tick_in_its_first_minute(
    scheduled: Runtime,
) -> None:
    rt = scheduled
    # Given a new entry "* * * * *", first checked at 12:00:30 (a grace of 10 minutes)
    # When beat checks it every 15 s for a minute and the worker handles what it sent
    for second in range(30, 91, 15):
        now = T0 + dt.timedelta(seconds=second)
        deliver(rt, check(rt, now), now)
    # Then one tick fired, the first after the first check, and one request was created
    fired = [t for t in _ticks(rt) if t.status == "fired"]
    assert [t.tick_at for t in fired] == [at(1)]
    assert [r.idempotency_key for r in _requests(rt)] == [tick_key(NAME, at(1))]
    # And the tick before the first check is recorded as not fired, with the reason
    (before,) = [t for t in _ticks(rt) if t.tick_at < at(0.5)]
    assert (before.tick_at, before.status) == (T0, "skipped")
    assert "before the entry's first check at 2030-01-07T12:00:30Z" in (before.detail or "")


def test_a_beat_stopped_five_minutes_fires_one_tick_on_return_and_records_the_rest(
    scheduled: Runtime,
) -> None:
    rt = scheduled
    # Given the entry fired its 12:00 tick, its request ended, and beat then stopped
    check(rt, at(-0.5))
    assert run_to_end(rt, _fire(rt, 0))["status"] == "succeeded"
    # When beat is back at 12:05:10 (within the grace of 10 minutes)
    sent = check(rt, at(5 + 10 / 60))
    # Then only the latest tick is sent, and it creates one request
    assert sent == [at(5).isoformat()]
    assert deliver(rt, sent, at(5.2)) == ["fired"]
    assert [r.idempotency_key for r in _requests(rt)] == [
        tick_key(NAME, at(0)),
        tick_key(NAME, at(5)),
    ]
    # And the four it missed are recorded skipped, superseded by it
    missed = [t for t in _ticks(rt) if at(0) < t.tick_at < at(5)]
    assert [(t.tick_at, t.status) for t in missed] == [(at(m), "skipped") for m in (1, 2, 3, 4)]
    assert all(
        (t.detail or "").startswith("superseded by the tick at 2030-01-07T12:05:00Z")
        for t in missed
    )
    # And the next check sends nothing new
    assert check(rt, at(5.5)) == []


def test_ticks_missed_beyond_the_grace_are_skipped_and_none_fires_late(
    make_rt: Callable[..., Runtime], tmp_path: Path
) -> None:
    rt = make_rt(schedule_file=write(tmp_path, EVERY_MINUTE), schedule_grace=20)
    # Given the entry fired at 12:00 and beat was down until 12:10:30 (a grace of 20 s)
    check(rt, at(-0.1))
    _fire(rt, 0)
    # When beat checks again
    sent = check(rt, at(10.5))
    # Then nothing is sent: even the latest tick (12:10) was missed by more than the grace
    assert sent == []
    skipped = [t for t in _ticks(rt) if t.tick_at > at(0)]
    assert [t.tick_at for t in skipped] == [at(m) for m in range(1, 11)]
    assert all(t.status == "skipped" for t in skipped)
    assert all("more than the grace of 20 s" in (t.detail or "") for t in skipped)
    # And checking again finds nothing new to skip
    assert check(rt, at(10.6)) == []
    assert len(_ticks(rt)) == len(skipped) + 2


def test_a_late_message_for_a_superseded_tick_fires_nothing(scheduled: Runtime) -> None:
    rt = scheduled
    # Given the 12:01 tick was sent, but its message waits in the queue past 12:02
    check(rt, at(0.5))
    late = check(rt, at(1.1))
    assert late == [at(1).isoformat()]
    # When beat sends 12:02 (recording 12:01 superseded), and both messages are handled
    latest = check(rt, at(2.1))
    outcomes = deliver(rt, late + latest, at(2.2))
    # Then only 12:02 fired: one request
    assert outcomes == ["skipped", "fired"]
    assert [r.idempotency_key for r in _requests(rt)] == [tick_key(NAME, at(2))]


def test_forbid_skips_a_tick_while_the_previous_request_runs(scheduled: Runtime) -> None:
    rt = scheduled
    # Given the 12:01 tick fired (concurrency "forbid", the default) and its request is still
    # accepted: nothing has run it yet
    check(rt, at(0.5))
    first = _fire(rt, 1)
    # When the 12:02 tick comes
    outcome = deliver(rt, check(rt, at(2.1)), at(2.1))
    # Then it is recorded skipped, naming the previous request, and creates none
    assert outcome == ["busy"]
    (row,) = [t for t in _ticks(rt) if t.tick_at == at(2)]
    assert (row.status, row.request_id) == ("skipped", None)
    assert row.detail == (
        f"previous request {first} (tick at 2030-01-07T12:01:00Z) still running (accepted): "
        'concurrency is "forbid"'
    )
    assert len(_requests(rt)) == 1
    # And once the previous request has ended, the next tick fires
    assert run_to_end(rt, first)["status"] == "succeeded"
    assert deliver(rt, check(rt, at(3.1)), at(3.1)) == ["fired"]
    assert len(_requests(rt)) == 2


def test_allow_fires_a_tick_while_the_previous_request_runs(
    make_rt: Callable[..., Runtime], tmp_path: Path
) -> None:
    text = EVERY_MINUTE + 'concurrency = "allow"\n'
    rt = make_rt(schedule_file=write(tmp_path, text), schedule_grace=600)
    # Given the 12:01 tick fired and its request is still accepted
    check(rt, at(0.5))
    _fire(rt, 1)
    # When the 12:02 tick comes, with concurrency "allow"
    outcome = deliver(rt, check(rt, at(2.1)), at(2.1))
    # Then it fires too
    assert outcome == ["fired"]
    assert all(r.status == "accepted" for r in _requests(rt))
    assert len(_requests(rt)) == 2


def test_two_beats_and_duplicate_messages_fire_each_tick_once(scheduled: Runtime) -> None:
    rt = scheduled
    # Given two beats that both check the entry, before and after its 12:01 tick
    assert check(rt, at(0.5)) == check(rt, at(0.5)) == []
    sent = check(rt, at(1.1)) + check(rt, at(1.2))
    assert sent == [at(1).isoformat()] * 2
    # When the worker handles both messages, and a redelivered one
    outcomes = deliver(rt, [*sent, sent[0]], at(1.3))
    # Then the tick fired once: one request, with the tick's key and the entry as source
    assert outcomes == ["fired", "fired", "fired"]
    (request,) = _requests(rt)
    assert request.idempotency_key == tick_key(NAME, at(1))
    assert request.source == f"schedule:{NAME}"
    assert [t.status for t in _ticks(rt) if t.tick_at == at(1)] == ["fired"]


# --- bmsreboot schedules ------------------------------------------------------------------

DISABLED = """
[[schedule]]
name = "paused"
cron = "0 3 * * *"
project_id = "0123456789abcdef0123456789abcdef"
servers = ["616fb98f-46ca-475e-917e-2563e5a8cd19"]
enabled = false
"""


def bmsreboot(tmp_path: Path, db_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "BMSREBOOT_DATABASE_URL": db_url,
        "BMSREBOOT_DATA_DIR": str(tmp_path / "data"),
    }
    return subprocess.run(
        [sys.executable, "-m", "worker", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_schedules_shows_skipped_ticks_with_their_reasons_and_no_next_tick_when_disabled(
    make_rt: Callable[..., Runtime], db_url: str, tmp_path: Path
) -> None:
    path = write(tmp_path, EVERY_MINUTE + DISABLED)
    rt = make_rt(schedule_file=path, schedule_grace=600)
    # Given an entry whose 12:01 request still runs, two ticks superseded by 12:04, and 12:04
    # skipped because of the running request; and a disabled entry
    check(rt, at(0.5))
    first = _fire(rt, 1)
    assert deliver(rt, check(rt, at(4.1)), at(4.1)) == ["busy"]
    # When the schedules are listed, as text and as JSON
    text = bmsreboot(tmp_path, db_url, "schedules", "--file", str(path))
    as_json = bmsreboot(tmp_path, db_url, "schedules", "--file", str(path), "--json")
    # Then the last ticks show why they did not fire
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert [x for x in lines if x.startswith("  last")] == [
        f"  last  2030-01-07T12:04:00+00:00  skipped: previous request {first} (tick at "
        '2030-01-07T12:01:00Z) still running (accepted): concurrency is "forbid"',
        "  last  2030-01-07T12:03:00+00:00  skipped: superseded by the tick at "
        "2030-01-07T12:04:00Z (missed by 66 s; missed ticks coalesce: only the latest fires)",
        "  last  2030-01-07T12:02:00+00:00  skipped: superseded by the tick at "
        "2030-01-07T12:04:00Z (missed by 126 s; missed ticks coalesce: only the latest fires)",
    ]
    # And only the enabled entry shows its next ticks
    assert [x.split("  ")[0] for x in lines if not x.startswith(" ")] == ["every-minute", "paused"]
    assert lines[0].startswith("every-minute  (enabled)")
    assert [x for x in lines[1:4] if x.startswith("  next  ")] == lines[1:4]
    assert (
        lines[-1] == "paused  (disabled: no tick fires)  cron '0 3 * * *' UTC  concurrency forbid"
    )
    listed = {row["name"]: row for row in json.loads(as_json.stdout)["schedules"]}
    assert listed["paused"]["next_ticks"] == []
    assert len(listed["every-minute"]["next_ticks"]) == 3
    assert [
        (t["status"], (t["detail"] or "")[:14]) for t in listed["every-minute"]["last_ticks"]
    ] == [
        ("skipped", "previous reque"),
        ("skipped", "superseded by "),
        ("skipped", "superseded by "),
    ]


def test_schedules_of_a_missing_file_exits_1_with_one_line(tmp_path: Path) -> None:
    # Given no schedule file at the path
    missing = tmp_path / "missing.toml"
    # When it is listed, and checked
    db_url = f"sqlite:///{tmp_path / 'audit.db'}"
    listed = bmsreboot(tmp_path, db_url, "schedules", "--file", str(missing))
    checked = bmsreboot(tmp_path, db_url, "schedules", "check", str(missing))
    # Then both exit 1; the listing with one line saying so
    assert (listed.returncode, listed.stdout, listed.stderr) == (
        1,
        "",
        f"Error: {missing}: no such schedule file\n",
    )
    assert checked.returncode == 1
    assert f"{missing}: no such schedule file" in checked.stderr


# --- two beats against Redis: one leader, one request per tick ------------------------------


@pytest.mark.slow
@pytest.mark.redis
@pytest.mark.postgres
def test_two_beats_fire_each_tick_once_and_the_other_takes_over(fleet: Any, tmp_path: Path) -> None:
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

    fleet.wait_until(lambda: len(fired()) >= 2, "two ticks fired", timeout=200)
    first = fired()[:2]
    # A tick is marked fired when its message is sent: its request is recorded by the worker
    # after that. Each of the first two runs to its end.
    for tick in first:
        fleet.wait(str(tick.request_id), timeout=60)
    # Exactly one request per tick, with the tick's idempotency key and the entry as source.
    # The next minute's tick may fire meanwhile: the requests are read first, then the ticks,
    # so that every request read has its tick among those.
    with unit_of_work(fleet.engine) as session:
        requests = session.scalars(
            select(RebootRequest).where(RebootRequest.source == "schedule:every-minute")
        ).all()
    reboots = fleet.stats()["reboots"]
    ticks = fired()
    tick_keys = {tick_key("every-minute", t.tick_at) for t in ticks}
    keys = [r.idempotency_key or "" for r in requests if r.status != "rejected"]
    assert len(keys) == len(set(keys))
    assert {tick_key("every-minute", t.tick_at) for t in first} <= set(keys) <= tick_keys
    # No server rebooted twice for one tick: once for each of the first two ticks, and never
    # more often than ticks fired
    assert set(reboots) == set(servers)
    assert all(2 <= n <= len(ticks) for n in reboots.values()), (reboots, len(ticks))

    # One leader: only one beat sent anything
    logs = {name: (fleet.tmp / f"{name}.log") for name in beats}
    senders = [n for n, log in logs.items() if "Sending due task" in log.read_text()]
    assert len(senders) == 1
    leader = senders[0]
    other = next(n for n in beats if n != leader)
    # Kill the leader: the other takes over within the lock timeout (10 s) and its loop
    kill_worker(beats[leader])
    wait_for(
        lambda: "Sending due task" in logs[other].read_text(),
        f"{other} taking over",
        timeout=10 + 5,
        details=lambda: logs[other].read_text()[-2000:],
    )


def test_an_entry_may_name_its_servers_by_a_selector(tmp_path: Path) -> None:
    text = """
[[schedule]]
name = "db-nodes"
cron = "0 4 * * *"
project_id = "0123456789abcdef0123456789abcdef"
selector = { tags = ["env=prod", "role=db"] }
preflight = true
"""
    entries, problems = load(write(tmp_path, text))
    assert problems == []
    (entry,) = entries
    payload = entry.payload(dt.datetime(2026, 12, 1, 4, tzinfo=dt.UTC))
    assert payload["selector"] == {"tags": ["env=prod", "role=db"]}
    assert payload["preflight"] is True
    assert "server_ids" not in payload


@pytest.mark.parametrize(
    ("lines", "problem"),
    [
        ("selector = {}\n", "selector must be a table of tags"),
        (
            'selector = { tags = ["a"] }\nservers = ["616fb98f-46ca-475e-917e-2563e5a8cd19"]\n',
            "give exactly one of servers, servers_file or selector",
        ),
        ('selector = { colour = "red" }\n', "selector must be a table of tags"),
    ],
)
def test_a_bad_selector_in_an_entry_is_a_problem_naming_it(
    tmp_path: Path, lines: str, problem: str
) -> None:
    text = (
        '[[schedule]]\nname = "x"\ncron = "0 4 * * *"\n'
        'project_id = "0123456789abcdef0123456789abcdef"\n' + lines
    )
    _entries, problems = load(write(tmp_path, text))
    assert any(problem in p for p in problems), problems


def test_an_entry_carries_its_verification_policy_into_each_request(tmp_path: Path) -> None:
    text = """
[[schedule]]
name = "web"
cron = "0 4 * * *"
project_id = "0123456789abcdef0123456789abcdef"
selector = { tags = ["role=web"] }
max_in_flight = 1
health_timeout = 900
health_check = { http_url = "http://{ip}:9100/-/healthy" }
soak_seconds = 120
"""
    entries, problems = load(write(tmp_path, text))
    assert problems == []
    payload = entries[0].payload(dt.datetime(2026, 12, 1, 4, tzinfo=dt.UTC))
    assert payload["health_timeout"] == 900
    assert payload["health_check"] == {"http_url": "http://{ip}:9100/-/healthy"}
    assert payload["soak_seconds"] == 120
    assert "verify" not in payload  # the deployment's default
    assert "silence" not in payload  # silenced when the deployment has an Alertmanager


def test_an_entry_may_opt_out_of_silences(tmp_path: Path) -> None:
    text = """
[[schedule]]
name = "db"
cron = "0 4 * * *"
project_id = "0123456789abcdef0123456789abcdef"
servers = ["616fb98f-46ca-475e-917e-2563e5a8cd19"]
silence = false
"""
    entries, problems = load(write(tmp_path, text))
    assert problems == []
    assert entries[0].payload(dt.datetime(2026, 12, 1, 4, tzinfo=dt.UTC))["silence"] is False


@pytest.mark.parametrize(
    ("lines", "problem"),
    [
        ('verify = "yes"\n', "verify must be true or false"),
        ('silence = "no"\n', "silence must be true or false"),
        ("health_timeout = 0\n", "health_timeout must be a number of seconds up to 86400"),
        ("soak_seconds = -1\n", "soak_seconds must be a number of seconds up to 86400"),
        ("health_timeout = 100000\n", "health_timeout must be a number of seconds up to 86400"),
        ("health_check = { tcp_port = 22, http_url = 'http://x' }\n", "health_check must be"),
        ("health_check = { port = 22 }\n", "health_check must be"),
    ],
)
def test_a_bad_verification_field_in_an_entry_is_a_problem_naming_it(
    tmp_path: Path, lines: str, problem: str
) -> None:
    text = (
        '[[schedule]]\nname = "x"\ncron = "0 4 * * *"\n'
        'project_id = "0123456789abcdef0123456789abcdef"\n'
        'servers = ["616fb98f-46ca-475e-917e-2563e5a8cd19"]\n' + lines
    )
    _entries, problems = load(write(tmp_path, text))
    assert any(problem in p for p in problems), problems
