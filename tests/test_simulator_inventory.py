"""The simulator's inventory: servers per project, the list and one-server routes, and server
state that follows the reboot jobs (HARD_REBOOT, boot, return or loss).

Wire behaviour is tested over real HTTP with the ``simulator`` fixture (rate limits off). The
server timeline is a pure function of the clock, like a job's status: those tests drive a
``SimulatorState`` with explicit times, so nothing waits and nothing depends on the machine's
speed.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import requests
from click.testing import CliRunner

from tests.fixtures.simulator import SimulatorHandle
from tests.fixtures.waiting import wait_for
from tests.test_simulator import (
    OTHER_PROJECT,
    PROJECT,
    THROTTLE_MESSAGE,
    action_url,
    assert_bms_error,
    assert_gateway_error,
    http,
    reboot,
    session,
    sid,
)
from worker.bms.signing import AkSkAuth
from worker.cli.demo import demo_simulator_config
from worker.cli.simulator import simulator as simulator_command
from worker.simulator.config import SimulatorConfig, server_fails, server_never_returns
from worker.simulator.inventory import (
    ENTERPRISE_PROJECTS,
    FLAVORS,
    ServerSpec,
    generated_server,
    generated_servers,
    server_id,
)
from worker.simulator.server import SimulatorServer
from worker.simulator.state import Refused, SimulatorState
from worker.simulator.validation import PowerAction

SPEC_TIME = "%Y-%m-%dT%H:%M:%SZ"


def list_url(sim: SimulatorHandle, project: str = PROJECT) -> str:
    return f"{sim.base_url}/v1/{project}/baremetalservers/detail"


def server_url(sim: SimulatorHandle, server: str, project: str = PROJECT) -> str:
    return f"{sim.base_url}/v1/{project}/baremetalservers/{server}"


def list_servers(sim: SimulatorHandle, **query: Any) -> dict[str, Any]:
    resp = session(sim).get(list_url(sim), params=query)
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


def show(sim: SimulatorHandle, server: str) -> dict[str, Any]:
    resp = session(sim).get(server_url(sim, server))
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()["server"]
    return body


def names(body: dict[str, Any]) -> list[str]:
    return [s["name"] for s in body["servers"]]


def gen(count: int) -> list[ServerSpec]:
    return generated_servers(PROJECT, count)


def write_inventory(path: Path, *lines: dict[str, Any] | str) -> str:
    path.write_text(
        "\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n"
    )
    return str(path)


def in_process(**knobs: Any) -> SimulatorState:
    return SimulatorState(SimulatorConfig(servers=knobs.pop("servers", 10), **knobs))


def seen(state: SimulatorState, server: str, now: float) -> tuple[str, str | None]:
    view, _ = state.find_server(PROJECT, server, now)
    assert view is not None
    return view.status, view.task_state


def history(state: SimulatorState, server: str, now: float) -> dict[str, Any]:
    found: dict[str, Any] = state.stats_json(now)["servers"][server]
    return found


# --- the inventory --------------------------------------------------------------------------


def test_given_servers_n_then_each_project_has_n_generated_servers_with_computable_ids(
    simulator: SimulatorHandle,
) -> None:
    # Given
    simulator.configure(servers=30)
    # When
    ours = list_servers(simulator, limit=1000)
    theirs = session(simulator, OTHER_PROJECT).get(list_url(simulator, OTHER_PROJECT)).json()
    # Then
    assert ours["count"] == 30
    assert [s["id"] for s in ours["servers"]] == [server_id(PROJECT, i) for i in range(1, 31)]
    assert names(ours)[:2] == ["bms-00001", "bms-00002"]
    assert theirs["count"] == 30
    assert theirs["servers"][0]["id"] == server_id(OTHER_PROJECT, 1) != server_id(PROJECT, 1)


def test_given_generated_servers_then_tags_enterprise_projects_and_flavors_are_spread() -> None:
    # Given
    specs = gen(120)
    # Then
    assert generated_server(PROJECT, 1).tags == (
        "__type_baremetal",
        "env=prod",
        "role=web",
        "rack=r001",
    )
    assert generated_server(PROJECT, 10).tags[1:3] == ("env=staging", "role=db")
    assert generated_server(PROJECT, 41).tags[3] == "rack=r002"
    assert {s.enterprise_project_id for s in specs} == set(ENTERPRISE_PROJECTS)
    assert {s.flavor for s in specs} == set(FLAVORS)
    assert len({s.ip for s in specs}) == 120


def test_given_2500_servers_then_pages_of_1000_are_numbered_from_1_and_count_every_one(
    simulator: SimulatorHandle,
) -> None:
    # Given
    simulator.configure(servers=2500)
    # When
    pages = [list_servers(simulator, limit=1000, offset=n) for n in (1, 2, 3, 4)]
    # Then
    assert [len(p["servers"]) for p in pages] == [1000, 1000, 500, 0]
    assert {p["count"] for p in pages} == {2500}
    read = [s["id"] for p in pages for s in p["servers"]]
    assert read == [s.id for s in gen(2500)]


def test_given_no_limit_then_a_page_holds_25_and_with_only_an_offset_1000(
    simulator: SimulatorHandle,
) -> None:
    # Given
    simulator.configure(servers=1100)
    # When
    default = list_servers(simulator)
    with_offset = list_servers(simulator, offset=1)
    # Then
    assert len(default["servers"]) == 25
    assert len(with_offset["servers"]) == 1000
    assert default["count"] == with_offset["count"] == 1100


@pytest.mark.parametrize(
    "query",
    [
        {"limit": 1001},
        {"limit": 0},
        {"limit": "ten"},
        {"offset": 0},
        {"offset": -1},
        [("tags", "env=prod"), ("tags", "role=db")],
    ],
)
def test_given_a_bad_limit_offset_or_a_second_tag_then_400_bms_0018_counted_rejected(
    simulator: SimulatorHandle, query: Any
) -> None:
    # Given
    simulator.configure(servers=5)
    # When
    resp = session(simulator).get(list_url(simulator), params=query)
    # Then
    message = assert_bms_error(resp, 400, "BMS.0018")
    assert message.startswith("Request parameter is invalid.")
    assert simulator.stats()["calls"]["servers"]["rejected"] == 1


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({"name": "bms-0001"}, lambda s: "bms-0001" in s.name),
        ({"tags": "env=prod"}, lambda s: "env=prod" in s.tags),
        ({"tags": "rack=r002"}, lambda s: "rack=r002" in s.tags),
        ({"tags": "role"}, lambda s: True),
        ({"tags": "env=pro"}, lambda s: False),
        (
            {"enterprise_project_id": ENTERPRISE_PROJECTS[1]},
            lambda s: s.enterprise_project_id == ENTERPRISE_PROJECTS[1],
        ),
        ({"enterprise_project_id": "all_granted_eps"}, lambda s: True),
        ({"flavor": FLAVORS[1]}, lambda s: s.flavor == FLAVORS[1]),
        (
            {"tags": "role=db", "name": "bms-000"},
            lambda s: "role=db" in s.tags and "bms-000" in s.name,
        ),
        ({"status": "ACTIVE"}, lambda s: True),
        ({"status": "SHUTOFF"}, lambda s: False),
    ],
)
def test_given_filters_then_the_list_holds_exactly_the_matching_servers_and_counts_them(
    simulator: SimulatorHandle, query: dict[str, str], expected: Any
) -> None:
    # Given
    simulator.configure(servers=150)
    # When
    body = list_servers(simulator, limit=1000, **query)
    # Then
    wanted = [s.name for s in gen(150) if expected(s)]
    assert names(body) == wanted
    assert body["count"] == len(wanted)


def test_given_a_status_filter_then_it_follows_the_servers_current_state(
    simulator: SimulatorHandle,
) -> None:
    # Given
    simulator.configure(servers=20, job_duration=30)
    first, second = server_id(PROJECT, 1), server_id(PROJECT, 2)
    # When
    assert reboot(simulator, first).status_code == 200
    simulator.set_server(second, status="SHUTOFF")
    # Then
    assert names(list_servers(simulator, status="HARD_REBOOT")) == ["bms-00001"]
    assert names(list_servers(simulator, status="SHUTOFF")) == ["bms-00002"]
    assert list_servers(simulator, status="ACTIVE")["count"] == 18


def test_given_a_server_then_its_details_carry_the_sdk_fields(simulator: SimulatorHandle) -> None:
    # Given
    simulator.configure(servers=3)
    spec = generated_server(PROJECT, 2)
    # When
    server = show(simulator, spec.id)
    # Then
    assert server == list_servers(simulator)["servers"][1]
    assert (server["id"], server["name"], server["status"]) == (spec.id, "bms-00002", "ACTIVE")
    assert server["OS-EXT-STS:task_state"] is None
    assert server["OS-EXT-STS:vm_state"] == "active"
    assert server["OS-EXT-STS:power_state"] == 1
    assert (server["locked"], server["host_status"]) == (False, "UP")
    assert server["tags"] == list(spec.tags)
    assert server["enterprise_project_id"] == spec.enterprise_project_id
    assert server["flavor"]["id"] == spec.flavor
    assert server["tenant_id"] == PROJECT
    time.strptime(server["updated"], SPEC_TIME)
    [network] = server["addresses"].values()
    assert network[0]["addr"] == spec.ip
    assert (network[0]["version"], network[0]["OS-EXT-IPS:type"]) == ("4", "fixed")
    assert isinstance(server["metadata"], dict)


def test_given_an_unknown_server_then_its_details_are_404_bms_0040(
    simulator: SimulatorHandle,
) -> None:
    # Given
    simulator.configure(servers=3)
    # When
    resp = session(simulator).get(server_url(simulator, sid(1)))
    other = session(simulator, OTHER_PROJECT).get(
        server_url(simulator, server_id(PROJECT, 1), OTHER_PROJECT)
    )
    # Then
    assert assert_bms_error(resp, 404, "BMS.0040") == "The server does not exist."
    assert_bms_error(other, 404, "BMS.0040")
    assert simulator.stats()["calls"]["server"]["rejected"] == 2


def test_given_no_inventory_then_the_list_is_empty_details_are_404_and_any_id_is_rebooted(
    simulator: SimulatorHandle,
) -> None:
    # When
    body = list_servers(simulator, limit=1000)
    details = session(simulator).get(server_url(simulator, sid(1)))
    rebooted = reboot(simulator, sid(1))
    # Then
    assert body == {"servers": [], "count": 0}
    assert_bms_error(details, 404, "BMS.0040")
    assert rebooted.status_code == 200
    assert simulator.stats()["reboots"] == {sid(1): 1}
    assert simulator.stats()["servers"] == {}


def test_given_an_inventory_file_then_its_servers_are_listed_with_their_fields(
    simulator: SimulatorHandle, tmp_path: Path
) -> None:
    # Given
    path = write_inventory(
        tmp_path / "fleet.jsonl",
        "# the web tier",
        {"id": sid(1), "name": "web-1", "tags": ["env=prod"], "enterprise_project_id": "ep-a"},
        "",
        {"id": sid(2), "name": "web-2", "locked": True, "host_status": "DOWN"},
        {"id": sid(3), "name": "db-1", "status": "SHUTOFF", "ip": "127.0.0.1"},
        {"id": sid(4), "name": "other", "project_id": OTHER_PROJECT},
    )
    # When
    simulator.configure(inventory=path)
    body = list_servers(simulator, limit=1000)
    # Then
    assert names(body) == ["web-1", "web-2", "db-1"]
    first, second, third = body["servers"]
    assert (first["tags"], first["enterprise_project_id"]) == (["env=prod"], "ep-a")
    assert (second["locked"], second["host_status"]) == (True, "DOWN")
    assert (third["status"], third["OS-EXT-STS:power_state"]) == ("SHUTOFF", 4)
    assert next(iter(third["addresses"].values()))[0]["addr"] == "127.0.0.1"
    other = session(simulator, OTHER_PROJECT).get(list_url(simulator, OTHER_PROJECT)).json()
    assert names(other) == ["other"]
    assert_bms_error(reboot(simulator, sid(9)), 400, "BMS.0040")


@pytest.mark.parametrize(
    ("line", "why"),
    [
        ("{not json", "line 2"),
        (json.dumps({"id": "not-a-uuid", "name": "x"}), "id must be a UUID"),
        (json.dumps({"id": sid(2)}), "name is required"),
        (json.dumps({"id": sid(2), "name": "x", "colour": "red"}), "unknown field(s) colour"),
        (json.dumps({"id": sid(2), "name": "x", "locked": "yes"}), "locked must be true"),
        (json.dumps({"id": sid(1), "name": "again"}), "listed twice"),
    ],
)
def test_given_a_bad_inventory_line_then_configure_is_refused_naming_the_line_and_nothing_changes(
    simulator: SimulatorHandle, tmp_path: Path, line: str, why: str
) -> None:
    # Given
    simulator.configure(servers=2)
    path = write_inventory(tmp_path / "bad.jsonl", {"id": sid(1), "name": "ok"}, line)
    # When
    patch = {"servers": 0, "inventory": path}
    resp = http("POST", f"{simulator.base_url}/_simulator/config", json=patch)
    # Then
    assert resp.status_code == 400
    assert "line 2" in resp.json()["error"]
    assert why in resp.json()["error"]
    assert list_servers(simulator)["count"] == 2


def test_given_a_bad_inventory_on_the_command_line_then_one_line_error_and_exit_2(
    tmp_path: Path,
) -> None:
    # Given
    path = write_inventory(tmp_path / "bad.jsonl", {"id": sid(1)})
    # When
    result = CliRunner().invoke(simulator_command, ["--port", "0", "--inventory", path])
    both = CliRunner().invoke(simulator_command, ["--servers", "3", "--inventory", path])
    # Then
    assert result.exit_code == 2
    assert "line 1: name is required" in result.output
    assert "Traceback" not in result.output
    assert both.exit_code == 2
    assert "servers and inventory exclude each other" in both.output


# --- refusals of a reboot ----------------------------------------------------------------------


def test_given_an_inventory_then_an_id_outside_it_refuses_the_whole_reboot_with_bms_0040(
    simulator: SimulatorHandle,
) -> None:
    # Given
    simulator.configure(servers=5)
    # When
    resp = reboot(simulator, server_id(PROJECT, 1), sid(1))
    # Then
    assert assert_bms_error(resp, 400, "BMS.0040") == "The server does not exist."
    assert simulator.stats()["reboots"] == {}
    assert show(simulator, server_id(PROJECT, 1))["status"] == "ACTIVE"


def test_given_a_locked_server_then_the_whole_reboot_is_refused_with_bms_0605(
    simulator: SimulatorHandle,
) -> None:
    # Given
    simulator.configure(servers=5)
    free, locked = server_id(PROJECT, 1), server_id(PROJECT, 2)
    simulator.set_server(locked, locked=True)
    # When
    resp = reboot(simulator, free, locked)
    # Then
    assert assert_bms_error(resp, 400, "BMS.0605") == "the BMS is locked."
    assert simulator.stats()["reboots"] == {}
    assert simulator.stats()["calls"]["action"]["rejected"] == 1


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"status": "SHUTOFF"}, "BMS.0037"),
        ({"status": "ERROR"}, "BMS.0037"),
        ({"status": "HARD_REBOOT", "task_state": "reboot_started_hard"}, "BMS.0037"),
        ({"task_state": "rebooting"}, "BMS.0037"),
        ({"task_state": "powering-on"}, "BMS.0035"),
        ({"task_state": "powering-off"}, "BMS.0036"),
    ],
)
def test_given_a_server_not_active_or_busy_then_the_whole_reboot_is_refused(
    simulator: SimulatorHandle, fields: dict[str, str], code: str
) -> None:
    # Given
    simulator.configure(servers=5)
    simulator.set_server(server_id(PROJECT, 3), **fields)
    # When
    resp = reboot(simulator, server_id(PROJECT, 1), server_id(PROJECT, 3))
    # Then
    assert_bms_error(resp, 400, code)
    assert simulator.stats()["reboots"] == {}


def test_given_a_server_rebooting_then_a_second_reboot_is_refused_with_bms_0037(
    simulator: SimulatorHandle,
) -> None:
    # Given
    simulator.configure(servers=5, job_duration=30)
    server = server_id(PROJECT, 1)
    assert reboot(simulator, server).status_code == 200
    # When
    resp = reboot(simulator, server)
    # Then
    assert assert_bms_error(resp, 400, "BMS.0037") == "Server is rebooting, not allow to reboot."
    assert simulator.stats()["reboots"] == {server: 1}


def test_given_many_concurrent_reboots_of_one_server_then_exactly_one_is_accepted(
    simulator: SimulatorHandle,
) -> None:
    # Given
    simulator.configure(servers=5, job_duration=30)
    server = server_id(PROJECT, 1)
    statuses: list[int] = []
    start = threading.Barrier(8)

    def client() -> None:
        s = session(simulator)
        start.wait()
        statuses.append(s.post(action_url(simulator), json=reboot_body(server)).status_code)

    # When
    threads = [threading.Thread(target=client) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # Then
    assert sorted(statuses) == [200] + [400] * 7
    assert simulator.stats()["reboots"] == {server: 1}


def reboot_body(*ids: str) -> dict[str, Any]:
    return {"reboot": {"type": "HARD", "servers": [{"id": i} for i in ids]}}


# --- the server's timeline (explicit clock) -----------------------------------------------------


def test_given_the_clock_then_a_rebooted_server_is_hard_reboot_through_its_boot_then_active() -> (
    None
):
    # Given: jobs of 10 s, boots of 30 s; a reboot accepted at t=100
    state = in_process(job_duration=10, boot_seconds=30)
    server = server_id(PROJECT, 1)
    job, _ = state.accept_action(PROJECT, PowerAction("reboot", "HARD", (server,)), 100.0)
    # When / Then
    busy = ("HARD_REBOOT", "reboot_started_hard")
    assert [seen(state, server, t) for t in (100.0, 109.9, 110.0, 139.9)] == [busy] * 4
    assert seen(state, server, 140.0) == ("ACTIVE", None)
    assert job.status(110.0) == "SUCCESS"
    timeline = history(state, server, 200.0)
    assert timeline["reboots"] == [100.0]
    assert timeline["job_ends"] == [110.0]
    assert timeline["returned"] == [140.0]
    assert timeline["lost"] == []
    view, _ = state.find_server(PROJECT, server, 200.0)
    assert view is not None
    assert view.updated == 140.0


def test_given_the_clock_then_the_stats_timeline_shows_no_moment_before_it_happens() -> None:
    # Given
    state = in_process(job_duration=10, boot_seconds=30)
    server = server_id(PROJECT, 1)
    state.accept_action(PROJECT, PowerAction("reboot", "HARD", (server,)), 100.0)
    # When
    during_job, during_boot = history(state, server, 105.0), history(state, server, 120.0)
    # Then
    assert (during_job["job_ends"], during_job["returned"]) == ([], [])
    assert (during_boot["job_ends"], during_boot["returned"]) == ([110.0], [])
    assert during_boot["status"] == "HARD_REBOOT"


def test_given_no_return_fraction_then_the_servers_server_never_returns_names_end_error() -> None:
    # Given
    state = in_process(servers=200, job_duration=5, boot_seconds=5, no_return_fraction=0.3)
    config = state.config
    ids = tuple(server_id(PROJECT, i) for i in range(1, 201))
    lost = {s for s in ids if server_never_returns(s, config)}
    assert 0 < len(lost) < len(ids)
    # When
    state.accept_action(PROJECT, PowerAction("reboot", "HARD", ids), 0.0)
    # Then
    assert {s for s in ids if seen(state, s, 10.0) == ("ERROR", None)} == lost
    assert {s for s in ids if seen(state, s, 10.0) == ("ACTIVE", None)} == set(ids) - lost
    timelines = state.stats_json(50.0)["servers"]
    assert {s for s in ids if timelines[s]["lost"] == [10.0]} == lost
    assert {s for s in ids if timelines[s]["returned"] == [10.0]} == set(ids) - lost
    with pytest.raises(Refused) as refused:
        state.accept_action(PROJECT, PowerAction("reboot", "HARD", (min(lost),)), 60.0)
    assert refused.value.code == "BMS.0037"


def test_given_no_return_servers_then_they_stay_error_for_ever() -> None:
    # Given
    server = server_id(PROJECT, 4)
    state = in_process(job_duration=1, boot_seconds=1, no_return_servers=frozenset({server}))
    # When
    state.accept_action(PROJECT, PowerAction("reboot", "HARD", (server,)), 0.0)
    # Then
    assert seen(state, server, 1.5) == ("HARD_REBOOT", "reboot_started_hard")
    assert seen(state, server, 2.0) == ("ERROR", None)
    assert seen(state, server, 1e6) == ("ERROR", None)
    view, _ = state.find_server(PROJECT, server, 10.0)
    assert view is not None
    assert view.updated == 2.0


def test_given_a_failing_sub_job_then_the_server_stays_active_and_never_counts_as_returned() -> (
    None
):
    # Given
    state = in_process(servers=40, job_duration=5, boot_seconds=5, fail_fraction=0.5)
    ids = tuple(server_id(PROJECT, i) for i in range(1, 41))
    failing = {s for s in ids if server_fails(s, state.config)}
    assert 0 < len(failing) < len(ids)
    # When
    state.accept_action(PROJECT, PowerAction("reboot", "HARD", ids), 0.0)
    # Then
    assert {s for s in ids if seen(state, s, 1.0) == ("ACTIVE", None)} == failing
    timelines = state.stats_json(100.0)["servers"]
    for server in failing:
        assert timelines[server]["reboots"] == [0.0]
        assert (timelines[server]["job_ends"], timelines[server]["returned"]) == ([], [])
    for server in set(ids) - failing:
        assert timelines[server]["returned"] == [10.0]


def test_given_a_stuck_job_then_its_servers_stay_hard_reboot() -> None:
    # Given
    server = server_id(PROJECT, 1)
    state = in_process(job_duration=1, stuck_servers=frozenset({server}))
    # When
    state.accept_action(PROJECT, PowerAction("reboot", "HARD", (server,)), 0.0)
    # Then
    assert seen(state, server, 1e6) == ("HARD_REBOOT", "reboot_started_hard")
    assert history(state, server, 1e6)["job_ends"] == []


def test_given_stop_then_start_then_the_server_is_shutoff_then_active_after_its_boot() -> None:
    # Given
    state = in_process(job_duration=10, boot_seconds=30)
    server = server_id(PROJECT, 1)
    # When
    state.accept_action(PROJECT, PowerAction("os-stop", None, (server,)), 0.0)
    stopping, stopped = seen(state, server, 5.0), seen(state, server, 10.0)
    with pytest.raises(Refused) as refused:
        state.accept_action(PROJECT, PowerAction("os-stop", None, (server,)), 11.0)
    state.accept_action(PROJECT, PowerAction("os-start", None, (server,)), 20.0)
    # Then
    assert stopping == ("ACTIVE", "powering-off")
    assert stopped == ("SHUTOFF", None)
    assert refused.value.code == "BMS.0039"
    assert seen(state, server, 59.9) == ("SHUTOFF", "powering-on")
    assert seen(state, server, 60.0) == ("ACTIVE", None)
    assert state.stats_json(100.0)["servers"] == {}  # only reboots have a timeline


def test_given_a_status_forced_during_a_reboot_then_the_reboot_never_returns() -> None:
    # Given
    state = in_process(job_duration=10, boot_seconds=10)
    server = server_id(PROJECT, 1)
    state.accept_action(PROJECT, PowerAction("reboot", "HARD", (server,)), 0.0)
    # When
    state.set_servers(PROJECT, [server], {"status": "ERROR", "task_state": None}, 15.0)
    # Then
    assert seen(state, server, 100.0) == ("ERROR", None)
    timeline = history(state, server, 100.0)
    assert (timeline["job_ends"], timeline["returned"]) == ([10.0], [])


def test_given_a_host_taken_down_during_a_reboot_then_the_reboot_goes_on() -> None:
    # Given
    state = in_process(job_duration=10, boot_seconds=10)
    server = server_id(PROJECT, 1)
    state.accept_action(PROJECT, PowerAction("reboot", "HARD", (server,)), 0.0)
    # When
    state.set_servers(PROJECT, [server], {"host_status": "DOWN"}, 5.0)
    # Then
    view, _ = state.find_server(PROJECT, server, 20.0)
    assert view is not None
    assert (view.status, view.host_status) == ("ACTIVE", "DOWN")


def test_given_reset_then_the_servers_are_back_as_built_and_timelines_forgotten() -> None:
    # Given
    state = in_process(job_duration=1)
    first, second = server_id(PROJECT, 1), server_id(PROJECT, 2)
    state.accept_action(PROJECT, PowerAction("reboot", "HARD", (first,)), 0.0)
    state.set_servers(PROJECT, [second], {"locked": True}, 0.0)
    # When
    state.reset()
    # Then
    assert seen(state, first, 0.5) == ("ACTIVE", None)
    view, _ = state.find_server(PROJECT, second, 0.5)
    assert view is not None
    assert view.locked is False
    assert state.stats_json(1.0)["servers"] == {}


# --- over HTTP ----------------------------------------------------------------------------------


def test_given_a_reboot_then_the_api_shows_hard_reboot_and_its_task_state_while_the_job_runs(
    simulator: SimulatorHandle,
) -> None:
    # Given
    simulator.configure(servers=3, job_duration=30)
    server = server_id(PROJECT, 1)
    before = show(simulator, server)
    # When
    assert reboot(simulator, server).status_code == 200
    # Then
    during = show(simulator, server)
    assert (during["status"], during["OS-EXT-STS:task_state"]) == (
        "HARD_REBOOT",
        "reboot_started_hard",
    )
    assert during["updated"] != before["updated"]
    assert show(simulator, server_id(PROJECT, 2))["status"] == "ACTIVE"


def test_given_boot_seconds_then_the_stats_record_the_job_end_and_the_return_after_the_boot(
    simulator: SimulatorHandle,
) -> None:
    # Given
    simulator.configure(servers=3, job_duration=0.2, boot_seconds=0.3)
    server = server_id(PROJECT, 1)
    job_id = reboot(simulator, server).json()["job_id"]
    # When: the server is seen ACTIVE again
    wait_for(
        lambda: show(simulator, server)["status"] == "ACTIVE", "the server back", interval=0.05
    )
    # Then
    stats = simulator.stats()
    timeline = stats["servers"][server]
    assert timeline["reboots"] == [pytest.approx(stats["jobs"][job_id]["created"])]
    assert timeline["job_ends"] == [pytest.approx(stats["jobs"][job_id]["ends"])]
    assert timeline["returned"] == [pytest.approx(timeline["job_ends"][0] + 0.3)]
    assert stats["reboots"] == {server: 1}
    assert show(simulator, server)["OS-EXT-STS:task_state"] is None


def test_given_the_admin_endpoint_then_servers_are_changed_and_bad_input_is_400(
    simulator: SimulatorHandle,
) -> None:
    # Given
    simulator.configure(servers=3)
    url = f"{simulator.base_url}/_simulator/servers"
    one, two = server_id(PROJECT, 1), server_id(PROJECT, 2)
    # When
    changed = http("POST", url, json={"ids": [one, two], "locked": True, "host_status": "DOWN"})
    unknown = http("POST", url, json={"id": sid(1), "locked": True})
    bad_field = http("POST", url, json={"id": one, "name": "x"})
    bad_value = http("POST", url, json={"id": one, "locked": "yes"})
    # Then
    assert changed.status_code == 200
    assert [s["locked"] for s in changed.json()["servers"]] == [True, True]
    assert show(simulator, two)["host_status"] == "DOWN"
    assert (unknown.status_code, bad_field.status_code, bad_value.status_code) == (400, 400, 400)
    assert "no server" in unknown.json()["error"]
    simulator.configure(servers=0)
    assert http("POST", url, json={"id": one, "locked": False}).status_code == 400


# --- gateway behaviour on the new routes ----------------------------------------------------


def test_given_bms_servers_list_denied_then_the_list_is_403_naming_it_and_details_still_work(
    simulator: SimulatorHandle,
) -> None:
    # Given
    simulator.configure(servers=3, denied_permissions=["bms:servers:list"])
    # When
    resp = session(simulator).get(list_url(simulator))
    # Then
    message = assert_bms_error(resp, 403, "BMS.0288")
    assert message == "Policy doesn't allow bms:servers:list to be performed."
    assert show(simulator, server_id(PROJECT, 1))["name"] == "bms-00001"
    assert simulator.stats()["calls"]["servers"]["rejected"] == 1
    with pytest.raises(ValueError, match="denied_permissions"):
        simulator.configure(denied_permissions=["bms:servers:fly"])


def test_given_the_list_and_server_limits_then_each_route_has_its_own_bucket(
    simulator: SimulatorHandle,
) -> None:
    # Given
    simulator.configure(servers=3, list_rate_limit=2, server_rate_limit=1)
    s = session(simulator)
    server = server_url(simulator, server_id(PROJECT, 1))
    # When
    lists = [s.get(list_url(simulator)).status_code for _ in range(3)]
    shows = [s.get(server).status_code for _ in range(2)]
    throttled = s.get(list_url(simulator))
    # Then
    assert lists == [200, 200, 429]
    assert shows == [200, 429]
    assert assert_gateway_error(throttled, 429, "APIGW.0308")["error_msg"] == (
        THROTTLE_MESSAGE.format(2)
    )
    assert reboot(simulator, server_id(PROJECT, 2)).status_code == 200
    calls = simulator.stats()["calls"]
    assert (calls["servers"]["throttled"], calls["server"]["throttled"]) == (2, 1)


def test_given_default_knobs_then_the_documented_500_list_and_1000_server_limits_apply() -> None:
    config = SimulatorConfig()

    assert (config.rate_limit("servers"), config.rate_limit("server")) == (500, 1000)
    assert SimulatorConfig(rate_limit_scale=0.1).rate_limit("servers") == 50


def test_given_faults_on_the_inventory_routes_then_they_strike_and_every_call_is_counted_once(
    simulator: SimulatorHandle,
) -> None:
    # Given
    simulator.configure(servers=3)
    s = session(simulator)
    server = server_url(simulator, server_id(PROJECT, 1))
    simulator.inject("servers", "5xx")
    simulator.inject("servers", "gateway_502")
    simulator.inject("server", "drop")
    simulator.inject("server", "429")
    # When
    failed_list = s.get(list_url(simulator)).status_code
    bad_gateway = s.get(list_url(simulator))
    with pytest.raises(requests.ConnectionError):
        s.get(server)
    throttled = s.get(server).status_code
    good = (s.get(list_url(simulator)).status_code, s.get(server).status_code)
    # Then
    assert (failed_list, bad_gateway.status_code, throttled, good) == (500, 502, 429, (200, 200))
    assert bad_gateway.headers["Content-Type"] == "text/html"
    calls = simulator.stats()["calls"]
    assert calls["servers"] == {
        "accepted": 1,
        "throttled": 0,
        "rejected": 0,
        "faulted": 2,
        "dropped": 0,
    }
    assert calls["server"] == {
        "accepted": 1,
        "throttled": 1,
        "rejected": 0,
        "faulted": 0,
        "dropped": 1,
    }


def test_given_a_wrong_sk_or_another_projects_token_then_the_list_is_refused(
    simulator: SimulatorHandle,
) -> None:
    # Given
    simulator.configure(servers=3)
    wrong = requests.Session()
    wrong.auth = AkSkAuth(simulator.ak, "not-the-secret-key")
    # When
    resp = wrong.get(list_url(simulator), timeout=10)
    mismatch = session(simulator, OTHER_PROJECT).get(list_url(simulator))
    # Then
    assert_gateway_error(resp, 401, "APIGW.0301")
    assert_bms_error(mismatch, 400, "Common.0018")
    assert simulator.stats()["calls"]["servers"]["rejected"] == 2


# --- the demo's simulator ------------------------------------------------------------------------


def test_given_the_demo_then_its_simulator_takes_any_id_unless_given_an_inventory() -> None:
    # Given
    default, with_servers = (
        demo_simulator_config(0.02),
        demo_simulator_config(0.0, inventory_servers=5),
    )
    # Then: as before, rate limits on, no inventory
    assert default == SimulatorConfig(job_duration=4.0, job_jitter=2.0, fail_fraction=0.02)
    assert not default.has_inventory
    # When
    with SimulatorServer(with_servers) as server:
        body = session(SimulatorHandle(server)).get(list_url(SimulatorHandle(server))).json()
    # Then
    assert body["count"] == 5
