"""Alertmanager silences while servers reboot, against a real Alertmanager of the test's own
(``tests.fixtures.monitoring``) and the simulator's inventory over HTTP, the pipeline's steps
played by hand (``tests.fixtures.steps``)."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests

from tests.fixtures.monitoring import AlertmanagerServer
from tests.fixtures.simulator import SimulatorHandle
from tests.fixtures.steps import PROJECT, accept, clock_of, run_to_end
from tests.fixtures.waiting import wait_for
from worker.db.models import Batch
from worker.db.session import unit_of_work
from worker.db.states import BatchStatus
from worker.db.status import request_status
from worker.monitoring import AlertmanagerClient
from worker.pipeline import poll, reconcile, release, submit, verify
from worker.pipeline.inventory import forget_snapshots
from worker.pipeline.runtime import RecordingDispatcher, Runtime
from worker.simulator.inventory import server_id


@pytest.fixture(autouse=True)
def _fresh_lists() -> None:
    forget_snapshots()


def fleet(count: int) -> list[str]:
    return [server_id(PROJECT, i) for i in range(1, count + 1)]


def name(i: int) -> str:
    return f"bms-{i:05d}"


def silenced_rt(
    make_rt: Callable[..., Runtime], alertmanager: AlertmanagerServer, **overrides: Any
) -> Runtime:
    fields: dict[str, Any] = {
        "alertmanager_url": alertmanager.url,
        "verify": True,
        "verify_first_delay": 0.2,
        "verify_max_interval": 0.3,
        "health_timeout": 30.0,
    }
    fields.update(overrides)
    return make_rt(**fields)


def silences(alertmanager: AlertmanagerServer) -> list[dict[str, Any]]:
    """Every silence the Alertmanager holds (expired ones too), oldest first."""
    response = requests.get(f"{alertmanager.url}/api/v2/silences", timeout=10)
    response.raise_for_status()
    return sorted(response.json(), key=lambda s: s["updatedAt"])


def silence(alertmanager: AlertmanagerServer, silence_id: str) -> dict[str, Any]:
    response = requests.get(f"{alertmanager.url}/api/v2/silence/{silence_id}", timeout=10)
    response.raise_for_status()
    return dict(response.json())


def batches(rt: Runtime, request_id: uuid.UUID) -> list[dict[str, Any]]:
    with unit_of_work(rt.engine) as session:
        status = request_status(session, request_id)
    assert status is not None
    return list(status["batches"])


def play_until(rt: Runtime, done: Callable[[], bool], timeout: float = 30) -> None:
    """Play the recorded follow-ups (each as soon as it is recorded: a poll of a job still
    running, or a check of servers still booting, only books the next one) until ``done``."""
    assert isinstance(rt.dispatcher, RecordingDispatcher)
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, f"not done after {timeout:g} s"
        if not rt.dispatcher.sent:
            continue
        kind, item, countdown = entry = rt.dispatcher.sent.pop(0)
        if kind in ("release", "submit"):
            clock_of(rt).advance(countdown)
        if kind == "release":
            release.release_project(item, rt)
        elif kind == "submit":
            submit.submit_batch(item, rt)
        elif kind == "poll":
            poll.poll_batch(item, rt, **entry.options)
        elif kind == "verify":
            verify.verify_batch(item, rt, **entry.options)


def statuses(rt: Runtime, request_id: uuid.UUID) -> list[str]:
    return [b["status"] for b in batches(rt, request_id)]


def test_each_batch_gets_one_silence_of_its_servers_before_its_post(
    make_rt: Callable[..., Runtime],
    simulator: SimulatorHandle,
    alertmanager: AlertmanagerServer,
) -> None:
    # Given servers that boot for a while after their job, and an Alertmanager
    simulator.configure(servers=6, job_duration=0.3, boot_seconds=60)
    rt = silenced_rt(make_rt, alertmanager)
    # When a request of two batches of three is sent
    request_id = accept(rt, fleet(6), batch_size=3)
    before = rt.now()
    play_until(rt, lambda: "pending" not in statuses(rt, request_id))
    # Then Alertmanager holds one silence per batch, of that batch's servers by name
    made = silences(alertmanager)
    assert len(made) == 2
    shown = batches(rt, request_id)
    by_id = {s["id"]: s for s in made}
    assert {b["silence_id"] for b in shown} == set(by_id)
    for batch, names in zip(shown, ([1, 2, 3], [4, 5, 6]), strict=True):
        made_for = by_id[batch["silence_id"]]
        assert made_for["status"]["state"] == "active"
        assert made_for["matchers"] == [
            {
                "name": "instance",
                "value": "|".join(name(i) for i in names),
                "isRegex": True,
                "isEqual": True,
            }
        ]
        assert made_for["createdBy"] == "bmsreboot"
        assert f"request {request_id}" in made_for["comment"]
        assert f"batch {batch['index']}" in made_for["comment"]
        # ending after the expected job and boot time and the margin (900 s)
        ends = datetime.fromisoformat(batch["silence_ends_at"])
        assert ends >= before + timedelta(seconds=900)
        assert abs(datetime.fromisoformat(made_for["endsAt"]) - ends) < timedelta(seconds=1)
        assert batch["silence_error"] is None
    # And each was recorded before its POST: no batch reached the API without one
    assert simulator.stats()["calls"]["action"]["accepted"] == 2


def test_a_silence_lasts_while_its_batch_verifies_and_is_expired_once_it_is_verified(
    make_rt: Callable[..., Runtime],
    simulator: SimulatorHandle,
    alertmanager: AlertmanagerServer,
) -> None:
    # Given servers that take 1.5 s to come back
    simulator.configure(servers=3, job_duration=0.2, boot_seconds=1.5)
    rt = silenced_rt(make_rt, alertmanager, health_timeout=600.0)
    request_id = accept(rt, fleet(3))
    # When the batch is verifying and has been checked once
    play_until(
        rt,
        lambda: (b := batches(rt, request_id)[0])["status"] == "verifying" and b["checks"] >= 1,
    )
    # Then its silence is active and lasts to the verification deadline plus the margin
    batch = batches(rt, request_id)[0]
    held = silence(alertmanager, batch["silence_id"])
    assert held["status"]["state"] == "active"
    deadline = datetime.fromisoformat(batch["job_ended_at"]) + timedelta(seconds=600 + 900)
    assert abs(datetime.fromisoformat(batch["silence_ends_at"]) - deadline) < timedelta(seconds=1)
    assert abs(datetime.fromisoformat(held["endsAt"]) - deadline) < timedelta(seconds=1)
    # And once its servers are verified, it is expired
    final = run_to_end(rt, request_id)
    assert final["status"] == "succeeded"
    ended = final["batches"][0]
    assert silence(alertmanager, ended["silence_id"])["status"]["state"] == "expired"
    assert datetime.fromisoformat(ended["silence_ends_at"]) <= rt.now()
    assert len(silences(alertmanager)) == 1


def test_with_verification_off_the_silence_is_expired_when_the_job_ends(
    make_rt: Callable[..., Runtime],
    simulator: SimulatorHandle,
    alertmanager: AlertmanagerServer,
) -> None:
    simulator.configure(servers=2, job_duration=0.2)
    rt = silenced_rt(make_rt, alertmanager, verify=False)
    final = run_to_end(rt, accept(rt, fleet(2)))
    assert final["status"] == "succeeded"
    assert silence(alertmanager, final["batches"][0]["silence_id"])["status"]["state"] == (
        "expired"
    )


def test_an_unhealthy_server_leaves_the_silence_at_once(
    make_rt: Callable[..., Runtime],
    simulator: SimulatorHandle,
    alertmanager: AlertmanagerServer,
) -> None:
    # Given a batch of three servers verifying, slow to boot
    servers = fleet(3)
    simulator.configure(servers=3, job_duration=0.2, boot_seconds=60)
    rt = silenced_rt(make_rt, alertmanager)
    request_id = accept(rt, servers)
    play_until(rt, lambda: statuses(rt, request_id) == ["verifying"])
    first = batches(rt, request_id)[0]["silence_id"]
    assert silence(alertmanager, first)["status"]["state"] == "active"
    # When a check finds one of them ERROR while the others still boot
    simulator.set_server(servers[1], status="ERROR", task_state=None)
    play_until(rt, lambda: batches(rt, request_id)[0]["silence_id"] != first)
    # Then the silence that held it is expired, and the batch's silence holds the others only
    batch = batches(rt, request_id)[0]
    assert batch["status"] == "verifying"
    assert silence(alertmanager, first)["status"]["state"] == "expired"
    now_held = silence(alertmanager, batch["silence_id"])
    assert now_held["status"]["state"] == "active"
    assert [m["value"] for m in now_held["matchers"]] == [f"{name(1)}|{name(3)}"]
    assert now_held["createdBy"] == "bmsreboot"
    assert batch["silence_error"] is None


def test_with_alertmanager_down_the_reboot_goes_on_and_the_error_is_shown(
    make_rt: Callable[..., Runtime],
    simulator: SimulatorHandle,
    alertmanager: AlertmanagerServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given an Alertmanager that is down, reached with credentials in its URL
    alertmanager.stop()
    simulator.configure(servers=2, job_duration=0.2, boot_seconds=0.3)
    url = f"http://bmsreboot:s3cret-word@127.0.0.1:{alertmanager.port}"
    rt = silenced_rt(make_rt, alertmanager, alertmanager_url=url)
    # When a request is sent
    with caplog.at_level(logging.WARNING, logger="bmsreboot.pipeline"):
        final = run_to_end(rt, accept(rt, fleet(2)))
    # Then its servers are rebooted all the same
    assert final["status"] == "succeeded"
    assert simulator.stats()["reboots"] == dict.fromkeys(fleet(2), 1)
    # And the batch shows why it had no silence, the URL's credentials masked
    batch = final["batches"][0]
    assert batch["silence_id"] is None
    assert batch["silence_error"].startswith("silence not created: ")
    assert "unreachable" in batch["silence_error"]
    assert "s3cret-word" not in batch["silence_error"]
    assert "********" in batch["silence_error"]
    # And one line was logged, without the password
    lines = [r.getMessage() for r in caplog.records if "silence not created" in r.getMessage()]
    assert len(lines) == 1
    assert "s3cret-word" not in caplog.text


def test_with_silences_required_a_batch_waits_until_it_can_be_silenced(
    make_rt: Callable[..., Runtime],
    simulator: SimulatorHandle,
    alertmanager: AlertmanagerServer,
) -> None:
    # Given silences are required and Alertmanager is down
    alertmanager.stop()
    simulator.configure(servers=2, job_duration=0.2, boot_seconds=0.3)
    rt = silenced_rt(make_rt, alertmanager, silence_required=True)
    request_id = accept(rt, fleet(2))
    # When its submit comes
    assert isinstance(rt.dispatcher, RecordingDispatcher)
    [(kind, batch_id, countdown)] = rt.dispatcher.sent
    rt.dispatcher.sent.clear()
    assert kind == "submit"
    clock_of(rt).advance(countdown)
    assert submit.submit_batch(batch_id, rt) == "unsilenced"
    # Then nothing was sent: the batch waits, pending, showing why, and comes back later
    assert simulator.stats()["calls"]["action"]["accepted"] == 0
    [batch] = batches(rt, request_id)
    assert batch["status"] == "pending"
    assert batch["silence_error"].startswith("silence not created: ")
    assert "SILENCE_REQUIRED" in batch["last_error"]["message"]
    assert [k for k, _, _ in rt.dispatcher.sent] == ["release"]
    # And once Alertmanager is back, the batch is sent, silenced
    alertmanager.start()
    play_until(rt, lambda: statuses(rt, request_id) != ["pending"])
    [batch] = batches(rt, request_id)
    assert batch["silence_error"] is None
    assert silence(alertmanager, batch["silence_id"])["status"]["state"] == "active"
    assert simulator.stats()["calls"]["action"]["accepted"] == 1


def test_a_request_may_opt_out_of_silences(
    make_rt: Callable[..., Runtime],
    simulator: SimulatorHandle,
    alertmanager: AlertmanagerServer,
) -> None:
    simulator.configure(servers=2, job_duration=0.2, boot_seconds=0.3)
    rt = silenced_rt(make_rt, alertmanager)
    final = run_to_end(rt, accept(rt, fleet(2), silence=False))
    assert final["status"] == "succeeded"
    assert final["silence"] is False
    assert final["batches"][0]["silence_id"] is None
    assert final["batches"][0]["silence_error"] is None
    assert silences(alertmanager) == []


def test_the_reconciler_expires_the_silence_of_a_batch_that_ended_while_it_could_not_be(
    make_rt: Callable[..., Runtime],
    simulator: SimulatorHandle,
    alertmanager: AlertmanagerServer,
) -> None:
    # Given a batch silenced and submitted
    simulator.configure(servers=2, job_duration=0.2)
    rt = silenced_rt(make_rt, alertmanager, verify=False)
    request_id = accept(rt, fleet(2))
    play_until(rt, lambda: statuses(rt, request_id) == ["submitted"])
    silence_id = batches(rt, request_id)[0]["silence_id"]
    # When its job ends while Alertmanager cannot be reached
    alertmanager.stop()
    play_until(rt, lambda: statuses(rt, request_id) == ["succeeded"])
    [batch] = batches(rt, request_id)
    assert batch["silence_error"].startswith("not expired: ")
    # Then, Alertmanager back, the reconciler's next run (past its grace) expires it
    alertmanager.start()
    assert silence(alertmanager, silence_id)["status"]["state"] == "active"
    clock_of(rt).advance(rt.settings.reconcile_grace + rt.settings.reconcile_interval + 1)
    done = reconcile.reconcile(rt)
    assert done.get("silences") == 1
    wait_for(
        lambda: silence(alertmanager, silence_id)["status"]["state"] == "expired",
        "the silence expired",
    )
    [batch] = batches(rt, request_id)
    assert batch["silence_error"] is None
    assert datetime.fromisoformat(batch["silence_ends_at"]) <= rt.now()
    # And a run after it has nothing left to expire
    clock_of(rt).advance(rt.settings.reconcile_interval + 1)
    assert "silences" not in reconcile.reconcile(rt)


def test_a_batch_claimed_by_another_worker_leaves_no_silence_behind(
    make_rt: Callable[..., Runtime],
    simulator: SimulatorHandle,
    alertmanager: AlertmanagerServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a released batch whose submit message two workers hold
    simulator.configure(servers=2, job_duration=5)
    rt = silenced_rt(make_rt, alertmanager)
    accept(rt, fleet(2))
    assert isinstance(rt.dispatcher, RecordingDispatcher)
    [(_, batch_id, countdown)] = rt.dispatcher.sent
    rt.dispatcher.sent.clear()
    clock_of(rt).advance(countdown)
    # When one claims it while the other is creating its silence
    from worker.db.transitions import transition_batch

    real = submit._claim

    def claimed_meanwhile(*args: Any, **kwargs: Any) -> Any:
        with unit_of_work(rt.engine) as session:
            transition_batch(session, batch_id, BatchStatus.SUBMITTING, actor="other")
        return real(*args, **kwargs)

    monkeypatch.setattr(submit, "_claim", claimed_meanwhile)
    assert submit.submit_batch(batch_id, rt) == "skipped"
    # Then the loser's silence is expired, and nothing was POSTed by it
    [made] = silences(alertmanager)
    assert made["status"]["state"] == "expired"
    assert simulator.stats()["calls"]["action"]["accepted"] == 0
    with unit_of_work(rt.engine) as session:
        assert session.get_one(Batch, batch_id).silence_id is None


class AlertmanagerCalls:
    """The calls a runtime's Alertmanager client makes, as ``(method, path)``: a real client
    on a real session whose response hook writes each one down."""

    def __init__(self, rt: Runtime, alertmanager: AlertmanagerServer) -> None:
        self.calls: list[tuple[str, str]] = []
        session = requests.Session()
        session.hooks["response"].append(self._seen)
        rt.silences = AlertmanagerClient(alertmanager.url, session=session)

    def _seen(self, response: requests.Response, *args: Any, **kwargs: Any) -> None:
        self.calls.append((str(response.request.method), urlsplit(response.url).path))

    def posts(self) -> int:
        return self.calls.count(("POST", "/api/v2/silences"))


def poll_once(rt: Runtime) -> str:
    """Play the one poll the batch has booked (whatever its countdown: the clock is the
    test's to move)."""
    assert isinstance(rt.dispatcher, RecordingDispatcher)
    [entry] = [e for e in rt.dispatcher.sent if e[0] == "poll"]
    rt.dispatcher.sent.remove(entry)
    return poll.poll_batch(entry[1], rt, **entry.options)


def test_a_job_slower_than_expected_pushes_its_silence_out_once_per_need(
    make_rt: Callable[..., Runtime],
    simulator: SimulatorHandle,
    alertmanager: AlertmanagerServer,
) -> None:
    # Given a batch submitted, silenced for the expected job and boot time plus 900 s, whose
    # job runs far longer than anything the tests wait for
    simulator.configure(servers=2, job_duration=600)
    rt = silenced_rt(make_rt, alertmanager)
    calls = AlertmanagerCalls(rt, alertmanager)
    request_id = accept(rt, fleet(2))
    play_until(rt, lambda: statuses(rt, request_id) == ["submitted"])
    [batch] = batches(rt, request_id)
    first_id = batch["silence_id"]
    first_end = datetime.fromisoformat(silence(alertmanager, first_id)["endsAt"])
    made = calls.posts()
    assert made == 1
    # When polls find the job running while the silence still has more than half a margin
    assert poll_once(rt) == "running"
    assert poll_once(rt) == "running"
    # Then nothing is asked of Alertmanager
    assert calls.posts() == made
    # When the clock reaches the point where less than half a margin is left
    clock_of(rt).advance(500)
    assert poll_once(rt) == "running"
    # Then the silence now ends a whole margin after that poll: one update
    assert calls.posts() == made + 1
    [batch] = batches(rt, request_id)
    held = silence(alertmanager, batch["silence_id"])
    assert held["status"]["state"] == "active"
    pushed = datetime.fromisoformat(held["endsAt"])
    assert pushed - first_end > timedelta(seconds=490)
    assert abs(datetime.fromisoformat(batch["silence_ends_at"]) - pushed) < timedelta(seconds=1)
    assert abs(pushed - (rt.now() + timedelta(seconds=900))) < timedelta(seconds=5)
    assert batch["silence_error"] is None
    # And the polls after it, with a margin ahead again, leave it alone
    assert poll_once(rt) == "running"
    assert poll_once(rt) == "running"
    assert calls.posts() == made + 1
    # And the next time it runs short, it is pushed out once more
    clock_of(rt).advance(500)
    assert poll_once(rt) == "running"
    assert poll_once(rt) == "running"
    assert calls.posts() == made + 2
    [batch] = batches(rt, request_id)
    again = datetime.fromisoformat(silence(alertmanager, batch["silence_id"])["endsAt"])
    assert again - pushed > timedelta(seconds=490)
    # And Alertmanager changed its end in place: the one silence, the id the batch first had
    assert [s["id"] for s in silences(alertmanager)] == [batch["silence_id"]] == [first_id]


def fire(alertmanager: AlertmanagerServer, *instances: str) -> None:
    """A firing ``NodeDown`` alert of each instance, as Prometheus would send it."""
    alerts = [{"labels": {"alertname": "NodeDown", "instance": i}} for i in instances]
    response = requests.post(f"{alertmanager.url}/api/v2/alerts", json=alerts, timeout=10)
    response.raise_for_status()


def silenced_by(alertmanager: AlertmanagerServer, instance: str) -> list[str]:
    """The silences Alertmanager says hold the ``NodeDown`` alert of ``instance`` now."""
    response = requests.get(
        f"{alertmanager.url}/api/v2/alerts",
        params={"filter": f'instance="{instance}"'},
        timeout=10,
    )
    response.raise_for_status()
    [alert] = response.json()
    return list(alert["status"]["silencedBy"])


def verifying_with_one_unhealthy(
    make_rt: Callable[..., Runtime],
    simulator: SimulatorHandle,
    alertmanager: AlertmanagerServer,
) -> tuple[Runtime, uuid.UUID, str]:
    """A batch of three servers verifying, slow to boot, under one active silence (returned
    with the request and its id), the second server now seen ``ERROR``: the next check finds
    it unhealthy."""
    servers = fleet(3)
    simulator.configure(servers=3, job_duration=0.2, boot_seconds=60)
    rt = silenced_rt(make_rt, alertmanager)
    request_id = accept(rt, servers)
    play_until(rt, lambda: statuses(rt, request_id) == ["verifying"])
    first = batches(rt, request_id)[0]["silence_id"]
    assert silence(alertmanager, first)["status"]["state"] == "active"
    simulator.set_server(servers[1], status="ERROR", task_state=None)
    return rt, request_id, first


def test_a_silence_that_cannot_leave_an_unhealthy_server_out_is_expired_whole(
    make_rt: Callable[..., Runtime],
    simulator: SimulatorHandle,
    alertmanager: AlertmanagerServer,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given a verifying batch, one of whose servers the next check finds unhealthy
    rt, request_id, first = verifying_with_one_unhealthy(make_rt, simulator, alertmanager)
    # When Alertmanager is down just as its silence is replaced by one of the others, and
    # answers again right after
    am = rt.alertmanager()
    assert am is not None
    real = am.update_silence

    def down_meanwhile(*args: Any, **kwargs: Any) -> str:
        alertmanager.stop()
        try:
            return real(*args, **kwargs)
        finally:
            alertmanager.start()

    monkeypatch.setattr(am, "update_silence", down_meanwhile)
    with caplog.at_level(logging.WARNING, logger="bmsreboot.pipeline"):
        play_until(rt, lambda: silence(alertmanager, first)["status"]["state"] == "expired")
    assert "could not leave its 1 unhealthy server(s) out" in caplog.text
    # Then the whole silence is expired and recorded so, the batch still verifying
    [batch] = batches(rt, request_id)
    assert batch["status"] == "verifying"
    assert batch["silence_id"] == first
    assert datetime.fromisoformat(batch["silence_ends_at"]) <= rt.now()
    assert len(silences(alertmanager)) == 1
    # And the unhealthy server's alerts page (the others' too: better than its silenced)
    fire(alertmanager, name(1), name(2), name(3))
    assert silenced_by(alertmanager, name(2)) == []
    assert silenced_by(alertmanager, name(1)) == []
    # And the checks after it never silence the batch again
    checks = batch["checks"]
    play_until(rt, lambda: batches(rt, request_id)[0]["checks"] >= checks + 2)
    assert len(silences(alertmanager)) == 1
    assert silenced_by(alertmanager, name(2)) == []


def test_an_unhealthy_server_left_silenced_while_alertmanager_is_down_leaves_it_when_it_is_back(
    make_rt: Callable[..., Runtime],
    simulator: SimulatorHandle,
    alertmanager: AlertmanagerServer,
) -> None:
    # Given a verifying batch, one of whose servers the next check finds unhealthy
    rt, request_id, first = verifying_with_one_unhealthy(make_rt, simulator, alertmanager)
    # When that check runs while Alertmanager is down: neither replaced nor expired
    alertmanager.stop()
    play_until(
        rt,
        lambda: (batches(rt, request_id)[0]["silence_error"] or "").startswith(
            "unhealthy servers still silenced: "
        ),
    )
    # Then the batch shows it, still verifying, and Alertmanager back still silences it
    [batch] = batches(rt, request_id)
    assert batch["status"] == "verifying"
    assert batch["silence_id"] == first
    assert "unreachable" in batch["silence_error"]
    alertmanager.start()
    fire(alertmanager, name(1), name(2), name(3))
    assert silenced_by(alertmanager, name(2)) == [first]
    # And the next check replaces the silence by one of the servers still booting
    play_until(rt, lambda: batches(rt, request_id)[0]["silence_id"] != first)
    [batch] = batches(rt, request_id)
    assert batch["status"] == "verifying"
    assert batch["silence_error"] is None
    assert silence(alertmanager, first)["status"]["state"] == "expired"
    now_held = silence(alertmanager, batch["silence_id"])
    assert now_held["status"]["state"] == "active"
    assert [m["value"] for m in now_held["matchers"]] == [f"{name(1)}|{name(3)}"]
    # So the unhealthy server's alerts page, the others' stay silenced
    assert silenced_by(alertmanager, name(2)) == []
    assert silenced_by(alertmanager, name(1)) == [batch["silence_id"]]
    assert silenced_by(alertmanager, name(3)) == [batch["silence_id"]]
