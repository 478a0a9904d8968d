"""The fleet's inventory in the pipeline: requests that name their servers by a selector, and
the pre-flight check of each batch's servers just before its POST (steps on SQLite and
PostgreSQL against the simulator's inventory, over HTTP)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest

from tests.fixtures.simulator import SimulatorHandle
from tests.fixtures.steps import PROJECT, accept, run_to_end
from worker.pipeline import intake
from worker.pipeline.inventory import (
    InventoryUnavailable,
    Selector,
    forget_snapshots,
    preflight_reason,
)
from worker.pipeline.runtime import Runtime
from worker.simulator.inventory import generated_server, server_id


@pytest.fixture(autouse=True)
def _fresh_lists() -> None:
    # One test's inventory must not be another's: the process keeps lists a few seconds.
    forget_snapshots()


def ids_where(count: int, keep: Callable[[int], bool]) -> list[str]:
    return [server_id(PROJECT, i) for i in range(1, count + 1) if keep(i)]


def by_selector(rt: Runtime, **selector: Any) -> intake.IntakeResult:
    payload = {"request_id": str(uuid.uuid4()), "project_id": PROJECT, "selector": selector}
    return intake.accept_request(payload, rt)


def servers_of(status: dict[str, Any]) -> dict[str, tuple[str, str | None]]:
    return {s["id"]: (s["status"], s["fail_reason"]) for s in status["server_results"]}


# --- selectors --------------------------------------------------------------------------------


def test_a_tag_selector_reboots_exactly_the_matching_servers_once(
    make_rt: Callable[..., Runtime], simulator: SimulatorHandle
) -> None:
    # Given 50 servers, of which the odd ones are env=prod and every fifth role=db
    simulator.configure(servers=50, job_duration=0.1)
    rt = make_rt()
    # When a request names them by two tags
    result = by_selector(rt, tags=["env=prod", "role=db"])
    assert result.status == "accepted", result.reasons
    status = run_to_end(rt, result.request_id)
    # Then exactly the servers with both tags were rebooted, each once, and no other
    wanted = ids_where(50, lambda i: i % 2 == 1 and i % 5 == 0)
    assert simulator.stats()["reboots"] == dict.fromkeys(wanted, 1)
    assert status["status"] == "succeeded"
    assert status["selector"] == {"tags": ["env=prod", "role=db"]}


@pytest.mark.parametrize(
    ("selector", "keep"),
    [
        ({"name": "bms-0001"}, lambda i: 10 <= i <= 19),
        ({"enterprise_project_id": generated_server(PROJECT, 2).enterprise_project_id}, None),
        ({"tags": ["role"], "name": "bms-0002"}, lambda i: 20 <= i <= 29),
    ],
    ids=["name", "enterprise_project", "bare_tag_and_name"],
)
def test_name_and_enterprise_project_selectors_name_their_servers(
    make_rt: Callable[..., Runtime],
    simulator: SimulatorHandle,
    selector: dict[str, Any],
    keep: Callable[[int], bool] | None,
) -> None:
    simulator.configure(servers=60, job_duration=0.1)
    rt = make_rt()
    result = by_selector(rt, **selector)
    run_to_end(rt, result.request_id)
    if keep is None:
        project = selector["enterprise_project_id"]
        wanted = [
            generated_server(PROJECT, i).id
            for i in range(1, 61)
            if generated_server(PROJECT, i).enterprise_project_id == project
        ]
    else:
        wanted = ids_where(60, keep)
    assert wanted
    assert set(simulator.stats()["reboots"]) == set(wanted)


def test_a_selector_reads_every_page_of_the_list_within_the_list_budget(
    make_rt: Callable[..., Runtime], simulator: SimulatorHandle
) -> None:
    # Given 2500 servers behind a list route that refuses more than 600 calls a minute, and
    # our budget at the same rate
    simulator.configure(servers=2500, list_rate_limit=600)
    rt = make_rt(list_rate_limit=600)
    # When a request names all of them by a part of their names
    result = by_selector(rt, name="bms-")
    # Then the list was read in three pages of 1000, none refused for the rate
    calls = simulator.stats()["calls"]["servers"]
    assert (calls["accepted"], calls["throttled"]) == (3, 0)
    assert result.status == "accepted"
    status = run_to_end(rt, result.request_id)
    assert status["servers"]["total"] == 2500


def test_a_selector_that_matches_nothing_is_rejected(
    make_rt: Callable[..., Runtime], simulator: SimulatorHandle
) -> None:
    simulator.configure(servers=20)
    result = by_selector(make_rt(), name="no-such-server")
    assert result.status == "rejected"
    assert result.reasons == ['selector matched no servers: {"name": "no-such-server"}']
    assert sum(simulator.stats()["calls"]["action"].values()) == 0


def test_a_selector_the_api_refuses_to_list_is_rejected_naming_the_permission(
    make_rt: Callable[..., Runtime], simulator: SimulatorHandle
) -> None:
    simulator.configure(servers=20, denied_permissions=["bms:servers:list"])
    result = by_selector(make_rt(), tags=["env=prod"])
    assert result.status == "rejected"
    (reason,) = result.reasons
    assert reason.startswith("selector not resolved: the API refused to list the servers (")
    assert reason.endswith("the credential lacks bms:servers:list")


def test_a_list_that_cannot_be_read_leaves_intake_to_try_again(
    make_rt: Callable[..., Runtime], simulator: SimulatorHandle
) -> None:
    simulator.configure(servers=20)
    simulator.inject("servers", "5xx")
    with pytest.raises(InventoryUnavailable):
        by_selector(make_rt(), tags=["env=prod"])
    # Nothing was recorded: the task tries again (tasks.request_reboot)
    assert by_selector(make_rt(), tags=["env=prod"]).status == "accepted"


def test_a_selector_with_ids_or_with_nothing_in_it_is_refused() -> None:
    from worker.pipeline.validation import validate_request

    base = {"request_id": str(uuid.uuid4()), "project_id": PROJECT}
    both = validate_request(
        {**base, "selector": {"tags": ["env=prod"]}, "server_ids": [str(uuid.uuid4())]},
        max_servers=10,
    )
    assert both.reasons == ["give server_ids, server_ids_packed or selector: only one of them"]
    empty = validate_request({**base, "selector": {}}, max_servers=10)
    (reason,) = empty.reasons
    assert reason.startswith("selector must be an object of tags")
    assert "at least one of tags, name, enterprise_project_id" in reason


# --- pre-flight ------------------------------------------------------------------------------


def test_locked_rebooting_and_host_down_servers_are_skipped_with_what_was_seen(
    make_rt: Callable[..., Runtime], simulator: SimulatorHandle
) -> None:
    # Given 12 servers, one locked, one rebooting, one on a host that is down
    simulator.configure(servers=12, job_duration=0.1)
    servers = ids_where(12, lambda i: True)
    locked, rebooting, down = servers[1], servers[4], servers[7]
    simulator.set_server(locked, locked=True)
    simulator.set_server(rebooting, status="HARD_REBOOT", task_state="reboot_started_hard")
    simulator.set_server(down, host_status="DOWN")
    rt = make_rt(preflight=True)
    # When a request for all of them runs
    status = run_to_end(rt, accept(rt, servers))
    # Then those three were not sent, each with what was seen, and the rest were rebooted
    shown = servers_of(status)
    assert shown[locked] == ("skipped", "not sent: locked")
    assert shown[rebooting] == ("skipped", "not sent: status HARD_REBOOT")
    assert shown[down] == ("skipped", "not sent: host_status DOWN")
    assert set(simulator.stats()["reboots"]) == set(servers) - {locked, rebooting, down}
    # and the API never refused the batch for them (BMS.0605, BMS.0037)
    assert simulator.stats()["calls"]["action"]["rejected"] == 0
    assert status["status"] == "partially_failed"
    assert status["servers"]["skipped"] == 3


def test_a_server_the_inventory_does_not_have_fails_without_any_post(
    make_rt: Callable[..., Runtime], simulator: SimulatorHandle
) -> None:
    simulator.configure(servers=10, job_duration=0.1)
    stranger = str(uuid.uuid4())
    rt = make_rt(preflight=True)
    # A batch of only that server: no POST at all
    alone = run_to_end(rt, accept(rt, [stranger]))
    assert servers_of(alone)[stranger] == (
        "failed",
        "not sent: the inventory has no such server (BMS.0040)",
    )
    assert [b["status"] for b in alone["batches"]] == ["failed"]
    assert sum(simulator.stats()["calls"]["action"].values()) == 0
    # With servers it has: they are sent, the stranger is not (no refusal, no split)
    known = ids_where(10, lambda i: i <= 7)
    mixed = run_to_end(rt, accept(rt, [*known, stranger]))
    assert set(simulator.stats()["reboots"]) == set(known)
    assert [b["status"] for b in mixed["batches"]] == ["partially_failed"]
    assert simulator.stats()["calls"]["action"]["rejected"] == 0


def test_a_batch_whose_every_server_is_kept_back_ends_skipped_without_a_post(
    make_rt: Callable[..., Runtime], simulator: SimulatorHandle
) -> None:
    simulator.configure(servers=3, job_duration=0.1)
    servers = ids_where(3, lambda i: True)
    simulator.set_server(*servers, locked=True)
    rt = make_rt(preflight=True)
    status = run_to_end(rt, accept(rt, servers))
    assert [b["status"] for b in status["batches"]] == ["skipped"]
    assert status["status"] == "failed"
    assert sum(simulator.stats()["calls"]["action"].values()) == 0


def test_an_inventory_that_cannot_be_read_delays_the_batch_and_never_sends_blind(
    make_rt: Callable[..., Runtime], simulator: SimulatorHandle
) -> None:
    # Given a list route that fails twice (a batch of more servers than are read one by one)
    simulator.configure(servers=12, job_duration=0.1)
    simulator.inject("servers", "5xx", count=2)
    servers = ids_where(12, lambda i: True)
    rt = make_rt(preflight=True)
    # Then the batch waits for the list, and goes once it can be read
    status = run_to_end(rt, accept(rt, servers))
    assert status["status"] == "succeeded"
    assert simulator.stats()["calls"]["action"]["accepted"] == 1
    assert simulator.stats()["calls"]["servers"]["faulted"] == 2


def test_a_list_the_api_refuses_halts_the_request_naming_the_permission(
    make_rt: Callable[..., Runtime], simulator: SimulatorHandle
) -> None:
    simulator.configure(servers=12, denied_permissions=["bms:servers:list"])
    servers = ids_where(12, lambda i: True)
    rt = make_rt(preflight=True)
    status = run_to_end(rt, accept(rt, servers))
    assert status["status"] == "halted"
    assert "the credential lacks bms:servers:list" in status["reason"]
    assert sum(simulator.stats()["calls"]["action"].values()) == 0


def test_a_request_may_turn_the_pre_flight_check_off(
    make_rt: Callable[..., Runtime], simulator: SimulatorHandle
) -> None:
    # With the check off, a locked server goes to the API as before, which refuses the batch
    simulator.configure(servers=2, job_duration=0.1)
    servers = ids_where(2, lambda i: True)
    simulator.set_server(servers[0], locked=True)
    rt = make_rt(preflight=True)
    run_to_end(rt, accept(rt, servers, preflight=False))
    assert simulator.stats()["calls"]["action"]["rejected"] >= 1


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({}, None),
        ({"locked": True}, "locked"),
        ({"status": "SHUTOFF"}, "status SHUTOFF"),
        ({"task_state": "rebooting"}, "task_state rebooting"),
        ({"host_status": "MAINTENANCE"}, "host_status MAINTENANCE"),
        ({"host_status": "UNKNOWN"}, "host_status UNKNOWN"),
        ({"host_status": ""}, None),
        ({"host_status": "UP"}, None),
    ],
)
def test_what_the_pre_flight_check_refuses(fields: dict[str, Any], reason: str | None) -> None:
    from worker.bms.models import ServerDetails

    base = {"id": str(uuid.uuid4()), "name": "bms-1", "status": "ACTIVE", "host_status": "UP"}
    raw = {**base, **{k: v for k, v in fields.items() if k != "task_state"}}
    if "task_state" in fields:
        raw["OS-EXT-STS:task_state"] = fields["task_state"]
    assert preflight_reason(ServerDetails.from_api(raw)) == reason


def test_a_selector_matches_every_tag_a_bare_key_any_value() -> None:
    from worker.bms.models import ServerDetails

    server = ServerDetails.from_api(
        {
            "id": str(uuid.uuid4()),
            "name": "web-7",
            "status": "ACTIVE",
            "tags": ["env=prod", "role=web"],
        }
    )
    assert Selector(tags=("env=prod", "role")).matches(server)
    assert not Selector(tags=("env=prod", "role=db")).matches(server)
    assert Selector(name="web-").matches(server)
    assert not Selector(name="db-").matches(server)
