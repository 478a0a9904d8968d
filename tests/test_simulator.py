"""The BMS API simulator over real HTTP: auth, validation, jobs, limits, faults, inspection.

Every test talks to a fresh simulator (the ``simulator`` fixture, rate limits off) with
``requests`` and the project's own signer, and checks the wire: status, envelope, codes.
"""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.fixtures.simulator import SimulatorHandle
from tests.fixtures.waiting import wait_for
from worker.bms.signing import AkSkAuth, authorization_header, format_sdk_date, signature
from worker.simulator.config import DEFAULT_AK, DEFAULT_SK, SimulatorConfig, server_fails
from worker.simulator.jobs import Job

PROJECT = "0123456789abcdef0123456789abcdef"
OTHER_PROJECT = "fedcba9876543210fedcba9876543210"
TIME_FORMAT = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
THROTTLE_MESSAGE = (
    "The throttling threshold has been reached: policy user over ratelimit,limit:{},time:1 minute"
)


def http(method: str, url: str, **kwargs: Any) -> requests.Response:
    return requests.request(method, url, timeout=kwargs.pop("timeout", 10), **kwargs)


def sid(n: int) -> str:
    return f"00000000-0000-4000-8000-{n:012x}"


def session(sim: SimulatorHandle, project: str = PROJECT) -> requests.Session:
    s = requests.Session()
    s.auth = AkSkAuth(sim.ak, sim.sk)
    s.headers["X-Project-Id"] = project
    return s


def action_url(sim: SimulatorHandle, project: str = PROJECT) -> str:
    return f"{sim.base_url}/v1/{project}/baremetalservers/action"


def job_url(sim: SimulatorHandle, job_id: str, project: str = PROJECT) -> str:
    return f"{sim.base_url}/v1/{project}/jobs/{job_id}"


def reboot_body(*ids: str, kind: str = "HARD") -> dict[str, Any]:
    return {"reboot": {"type": kind, "servers": [{"id": i} for i in ids]}}


def reboot(sim: SimulatorHandle, *ids: str, **kwargs: Any) -> requests.Response:
    return session(sim).post(action_url(sim), json=reboot_body(*ids), **kwargs)


def hand_signed(
    sim: SimulatorHandle,
    body: bytes,
    *,
    sk: str | None = None,
    ak: str | None = None,
    date: datetime | None = None,
    project_header: str | None = PROJECT,
) -> dict[str, str]:
    """Headers of a POST to the action URL, signed by hand (for skew and key tests)."""
    headers = {
        "content-type": "application/json",
        "host": sim.base_url.removeprefix("http://"),
        "x-sdk-date": format_sdk_date(date),
    }
    if project_header is not None:
        headers["x-project-id"] = project_header
    names = sorted(headers)
    path = f"/v1/{PROJECT}/baremetalservers/action"
    sig = signature(sk or sim.sk, "POST", path, headers, names, body)
    headers["authorization"] = authorization_header(ak or sim.ak, names, sig)
    return headers


def post_signed(sim: SimulatorHandle, **kwargs: Any) -> requests.Response:
    body = b'{"reboot": {"type": "HARD", "servers": [{"id": "%s"}]}}' % sid(1).encode()
    return http("POST", action_url(sim), data=body, headers=hand_signed(sim, body, **kwargs))


def wait_terminal(sim: SimulatorHandle, job_id: str) -> dict[str, Any]:
    s = session(sim)

    def ended() -> dict[str, Any] | None:
        job: dict[str, Any] = s.get(job_url(sim, job_id)).json()
        return job if job["status"] in ("SUCCESS", "FAIL") else None

    return wait_for(ended, f"job {job_id} ended", interval=0.02)


def assert_gateway_error(resp: requests.Response, status: int, code: str) -> dict[str, Any]:
    assert resp.status_code == status
    body: dict[str, Any] = resp.json()
    assert set(body) == {"error_msg", "error_code", "request_id"}
    assert body["error_code"] == code
    assert body["request_id"] == resp.headers["X-Request-Id"]
    return body


def assert_bms_error(resp: requests.Response, status: int, code: str) -> str:
    assert resp.status_code == status
    body = resp.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "code"}
    assert body["error"]["code"] == code
    return str(body["error"]["message"])


# --- signatures ------------------------------------------------------------------------------


def test_given_a_signed_reboot_when_posted_then_a_32_hex_job_id_comes_back_as_json(
    simulator: SimulatorHandle,
) -> None:
    resp = reboot(simulator, sid(1))

    assert resp.status_code == 200
    assert re.fullmatch(r"[0-9a-f]{32}", resp.json()["job_id"])
    assert resp.headers["Content-Type"].startswith("application/json")
    assert re.fullmatch(r"[0-9a-f]{32}", resp.headers["X-Request-Id"])


def test_given_a_wrong_sk_when_posted_then_401_apigw_0301_and_nothing_accepted(
    simulator: SimulatorHandle,
) -> None:
    resp = post_signed(simulator, sk="not-the-secret-key")

    body = assert_gateway_error(resp, 401, "APIGW.0301")
    assert body["error_msg"].startswith("Incorrect IAM authentication information: ")
    assert "not-the-secret-key" not in resp.text
    assert simulator.stats()["reboots"] == {}
    assert simulator.stats()["calls"]["action"]["rejected"] == 1


def test_given_an_unknown_ak_or_no_authorization_then_401_apigw_0301(
    simulator: SimulatorHandle,
) -> None:
    assert_gateway_error(post_signed(simulator, ak="UNKNOWNAK"), 401, "APIGW.0301")
    unsigned = http("POST", action_url(simulator), json=reboot_body(sid(1)))
    assert_gateway_error(unsigned, 401, "APIGW.0301")


@pytest.mark.parametrize(("skew_minutes", "status"), [(-16, 401), (16, 401), (-14, 200), (14, 200)])
def test_given_x_sdk_date_skew_then_beyond_15_minutes_is_refused(
    simulator: SimulatorHandle, skew_minutes: int, status: int
) -> None:
    date = datetime.now(UTC) + timedelta(minutes=skew_minutes)

    resp = post_signed(simulator, date=date)

    assert resp.status_code == status
    if status == 401:
        assert_gateway_error(resp, 401, "APIGW.0301")


def test_given_a_body_changed_after_signing_then_the_signature_fails(
    simulator: SimulatorHandle,
) -> None:
    signed_body = b'{"reboot": {"type": "HARD", "servers": [{"id": "%s"}]}}' % sid(1).encode()
    headers = hand_signed(simulator, signed_body)

    resp = http(
        "POST", action_url(simulator), data=signed_body.replace(b"HARD", b"SOFT"), headers=headers
    )

    assert_gateway_error(resp, 401, "APIGW.0301")


def test_given_x_project_id_differs_from_the_url_then_400_common_0018(
    simulator: SimulatorHandle,
) -> None:
    resp = post_signed(simulator, project_header=OTHER_PROJECT)

    message = assert_bms_error(resp, 400, "Common.0018")
    assert message == "tenantId in token is not the same with in URL."


def test_given_repeated_signature_failures_then_the_ak_is_locked_even_for_a_good_signature(
    simulator: SimulatorHandle,
) -> None:
    simulator.configure(ak_lockout_failures=2, ak_lockout_seconds=60)
    for _ in range(3):
        post_signed(simulator, sk="wrong")

    resp = post_signed(simulator)

    body = assert_gateway_error(resp, 401, "APIGW.0301")
    assert "AK access failed to reach the limit" in body["error_msg"]


# --- IAM tokens ------------------------------------------------------------------------------


def token_body(sim: SimulatorHandle, **scope: str) -> dict[str, Any]:
    user = {"name": sim.iam_user, "password": sim.iam_password, "domain": {"name": sim.iam_domain}}
    return {
        "auth": {
            "identity": {"methods": ["password"], "password": {"user": user}},
            "scope": {"project": scope or {"id": PROJECT}},
        }
    }


def test_given_a_password_login_when_a_token_is_issued_then_it_authorizes_reboots(
    simulator: SimulatorHandle,
) -> None:
    resp = http("POST", f"{simulator.base_url}/v3/auth/tokens", json=token_body(simulator))

    assert resp.status_code == 201
    token = resp.headers["X-Subject-Token"]
    body = resp.json()["token"]
    assert body["project"]["id"] == PROJECT
    assert body["methods"] == ["password"]
    assert {"expires_at", "issued_at", "project"} <= set(body)
    used = http(
        "POST", action_url(simulator), json=reboot_body(sid(1)), headers={"X-Auth-Token": token}
    )
    assert used.status_code == 200


def test_given_a_scope_by_project_name_then_the_token_names_its_project_id(
    simulator: SimulatorHandle,
) -> None:
    resp = http(
        "POST",
        f"{simulator.base_url}/v3/auth/tokens",
        json=token_body(simulator, name="cn-north-4"),
    )

    assert resp.json()["token"]["project"] == {
        "id": PROJECT,
        "name": "cn-north-4",
        "domain": resp.json()["token"]["project"]["domain"],
    }


def test_given_a_wrong_password_then_no_token(simulator: SimulatorHandle) -> None:
    body = token_body(simulator)
    body["auth"]["identity"]["password"]["user"]["password"] = "wrong"

    resp = http("POST", f"{simulator.base_url}/v3/auth/tokens", json=body)

    assert resp.status_code == 401
    assert "X-Subject-Token" not in resp.headers


def test_given_an_expired_or_unknown_token_then_401_apigw_0301(simulator: SimulatorHandle) -> None:
    simulator.configure(token_ttl=0.1)
    issued = http("POST", f"{simulator.base_url}/v3/auth/tokens", json=token_body(simulator))
    time.sleep(0.15)  # past its ttl on the simulator's clock (real time)

    for token in (issued.headers["X-Subject-Token"], "MIIbogus"):
        resp = http(
            "POST", action_url(simulator), json=reboot_body(sid(1)), headers={"X-Auth-Token": token}
        )
        assert_gateway_error(resp, 401, "APIGW.0301")


def test_given_a_token_of_another_project_then_400_common_0018(simulator: SimulatorHandle) -> None:
    issued = http(
        "POST", f"{simulator.base_url}/v3/auth/tokens", json=token_body(simulator, id=OTHER_PROJECT)
    )

    resp = http(
        "POST",
        action_url(simulator),
        json=reboot_body(sid(1)),
        headers={"X-Auth-Token": issued.headers["X-Subject-Token"]},
    )

    assert_bms_error(resp, 400, "Common.0018")


# --- body validation -------------------------------------------------------------------------

ONE = [{"id": sid(1)}]


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"{not json", "BMS.0001"),
        (b"[]", "BMS.0001"),
        (b"{}", "BMS.0018"),
        ({"reboot": {"type": "HARD", "servers": ONE}, "os-stop": {"servers": ONE}}, "BMS.0018"),
        ({"os-reboot": {"servers": ONE}}, "BMS.0018"),
        ({"reboot": {"servers": ONE}}, "BMS.0018"),
        ({"reboot": {"type": "WARM", "servers": ONE}}, "BMS.0018"),
        ({"os-stop": {"type": "hard", "servers": ONE}}, "BMS.0018"),
        ({"reboot": {"type": "HARD", "servers": []}}, "BMS.0018"),
        ({"reboot": {"type": "HARD", "servers": {"id": sid(1)}}}, "BMS.0018"),
        ({"reboot": {"type": "HARD", "servers": [{"id": "not-a-uuid"}]}}, "BMS.0018"),
        ({"reboot": {"type": "HARD", "servers": [sid(1)]}}, "BMS.0018"),
        ({"reboot": {"type": "HARD", "servers": ONE + ONE}}, "BMS.0018"),
        (
            {"reboot": {"type": "HARD", "servers": [{"id": sid(i)} for i in range(1001)]}},
            "BMS.0205",
        ),
    ],
)
def test_given_an_invalid_body_then_400_with_its_bms_code_and_nothing_accepted(
    simulator: SimulatorHandle, body: bytes | dict[str, Any], code: str
) -> None:
    s = session(simulator)

    resp = (
        s.post(action_url(simulator), data=body)
        if isinstance(body, bytes)
        else s.post(action_url(simulator), json=body)
    )

    assert_bms_error(resp, 400, code)
    assert simulator.stats()["actions"] == {"reboot": {}, "os-start": {}, "os-stop": {}}


def test_given_valid_variants_then_each_is_accepted_and_counted_per_action(
    simulator: SimulatorHandle,
) -> None:
    s = session(simulator)
    bodies = [
        reboot_body(sid(1), kind="SOFT"),
        {"os-stop": {"servers": [{"id": sid(2)}]}},
        {"os-stop": {"type": "HARD", "servers": [{"id": sid(3)}]}},
        {"os-start": {"servers": [{"id": sid(4)}]}},
        reboot_body(*(sid(i) for i in range(1000))),
    ]

    statuses = [s.post(action_url(simulator), json=b).status_code for b in bodies]

    assert statuses == [200] * 5
    actions = simulator.stats()["actions"]
    assert actions["os-stop"] == {sid(2): 1, sid(3): 1}
    assert actions["os-start"] == {sid(4): 1}
    assert actions["reboot"][sid(1)] == 2


def test_given_an_unknown_server_then_the_whole_request_is_400_bms_0040(
    simulator: SimulatorHandle,
) -> None:
    simulator.configure(unknown_servers=[sid(2)])

    resp = reboot(simulator, sid(1), sid(2))

    assert assert_bms_error(resp, 400, "BMS.0040") == "The server does not exist."
    assert simulator.stats()["reboots"] == {}


# --- job lifecycle ---------------------------------------------------------------------------


def test_given_a_reboot_when_polled_then_init_running_success_with_one_sub_job_per_server(
    simulator: SimulatorHandle,
) -> None:
    # INIT for the first tenth of the job (0.3 s), RUNNING until its end
    simulator.configure(job_duration=3.0)
    job_id = reboot(simulator, sid(1), sid(2)).json()["job_id"]
    s = session(simulator)

    def past_init() -> dict[str, Any] | None:
        job: dict[str, Any] = s.get(job_url(simulator, job_id)).json()
        return job if job["status"] != "INIT" else None

    first = s.get(job_url(simulator, job_id)).json()
    second = wait_for(past_init, "the job past INIT", interval=0.02)
    final = wait_terminal(simulator, job_id)

    assert (first["status"], second["status"], final["status"]) == ("INIT", "RUNNING", "SUCCESS")
    assert second["end_time"] is None
    assert final["job_id"] == job_id
    assert final["job_type"] == "baremetalBatchOperate"
    assert final["error_code"] is None
    assert final["fail_reason"] is None
    assert TIME_FORMAT.match(final["begin_time"])
    assert TIME_FORMAT.match(final["end_time"])
    subs = final["entities"]["sub_jobs"]
    assert final["entities"]["sub_jobs_total"] == 2
    assert [sub["entities"]["server_id"] for sub in subs] == [sid(1), sid(2)]
    for sub in subs:
        assert sub["status"] == "SUCCESS"
        assert sub["job_type"] == "baremetalSingleOperate"
        assert re.fullmatch(r"[0-9a-f]{32}", sub["job_id"])
        assert sub["error_code"] is None
        assert sub["fail_reason"] is None
        assert TIME_FORMAT.match(sub["begin_time"])
        assert TIME_FORMAT.match(sub["end_time"])


def test_given_the_job_clock_then_status_is_init_for_a_tenth_then_running_then_terminal() -> None:
    job = Job.create("a" * 32, PROJECT, "reboot", (sid(1),), SimulatorConfig(job_duration=10), 0.0)

    assert [job.status(t) for t in (0.0, 0.99, 1.0, 9.99, 10.0)] == [
        "INIT",
        "INIT",
        "RUNNING",
        "RUNNING",
        "SUCCESS",
    ]


def test_given_fail_fraction_then_exactly_the_servers_server_fails_names_fail(
    simulator: SimulatorHandle,
) -> None:
    config = simulator.configure(job_duration=0.05, fail_fraction=0.5)
    ids = [sid(i) for i in range(40)]
    expected_failed = {i for i in ids if server_fails(i, config)}
    assert 0 < len(expected_failed) < len(ids)

    job = wait_terminal(simulator, reboot(simulator, *ids).json()["job_id"])

    failed = {
        s["entities"]["server_id"] for s in job["entities"]["sub_jobs"] if s["status"] == "FAIL"
    }
    assert failed == expected_failed
    assert job["status"] == "FAIL"
    reason = "Server is powering off, not allow to reboot."
    assert (job["error_code"], job["fail_reason"]) == ("BMS.0036", reason)
    sub = next(s for s in job["entities"]["sub_jobs"] if s["status"] == "FAIL")
    assert (sub["error_code"], sub["fail_reason"]) == ("BMS.0036", reason)
    assert sub["entities"]["errorcode_message"] == reason


def test_given_fail_servers_and_a_fail_code_then_the_message_names_the_operation(
    simulator: SimulatorHandle,
) -> None:
    simulator.configure(job_duration=0.05, fail_servers=[sid(2)], fail_code="BMS.0037")
    body = {"os-stop": {"servers": [{"id": sid(1)}, {"id": sid(2)}]}}

    job_id = session(simulator).post(action_url(simulator), json=body).json()["job_id"]
    job = wait_terminal(simulator, job_id)

    by_server = {s["entities"]["server_id"]: s for s in job["entities"]["sub_jobs"]}
    assert by_server[sid(1)]["status"] == "SUCCESS"
    assert by_server[sid(2)]["error_code"] == "BMS.0037"
    assert by_server[sid(2)]["fail_reason"] == "Server is rebooting, not allow to stop."


def test_given_a_stuck_server_then_its_job_stays_running(simulator: SimulatorHandle) -> None:
    simulator.configure(job_duration=0.05, stuck_servers=[sid(2)])
    stuck = reboot(simulator, sid(1), sid(2)).json()["job_id"]
    free = reboot(simulator, sid(3)).json()["job_id"]

    # Once the job created after it, as long, has ended, the stuck one is still running
    assert wait_terminal(simulator, free)["status"] == "SUCCESS"
    assert session(simulator).get(job_url(simulator, stuck)).json()["status"] == "RUNNING"


def test_given_an_unknown_job_or_another_projects_job_then_404(simulator: SimulatorHandle) -> None:
    job_id = reboot(simulator, sid(1)).json()["job_id"]

    assert_bms_error(session(simulator).get(job_url(simulator, "f" * 32)), 404, "BMS.0404")
    other = session(simulator, OTHER_PROJECT).get(job_url(simulator, job_id, OTHER_PROJECT))
    assert_bms_error(other, 404, "BMS.0404")


def test_given_a_finished_job_older_than_job_ttl_then_it_is_purged_to_404(
    simulator: SimulatorHandle,
) -> None:
    simulator.configure(job_duration=0.05, job_ttl=0.1)
    job_id = reboot(simulator, sid(1)).json()["job_id"]
    assert wait_terminal(simulator, job_id)["status"] == "SUCCESS"

    time.sleep(0.15)  # past its job_ttl on the simulator's clock (real time)

    assert_bms_error(session(simulator).get(job_url(simulator, job_id)), 404, "BMS.0404")
    assert job_id not in simulator.stats()["jobs"]


def test_given_other_routes_then_404_apigw_0101(simulator: SimulatorHandle) -> None:
    for method, path in [
        ("GET", "/"),
        ("GET", f"/v1/{PROJECT}/baremetalservers/action"),
        ("POST", f"/v1/{PROJECT}/jobs/abc"),
        ("GET", f"/v2.1/{PROJECT}/servers"),
    ]:
        resp = session(simulator).request(method, simulator.base_url + path)
        body = assert_gateway_error(resp, 404, "APIGW.0101")
        assert body["error_msg"] == (
            "The API does not exist or has not been published in the environment."
        )


# --- rate limits -----------------------------------------------------------------------------


def test_given_an_action_limit_then_the_next_call_is_429_apigw_0308_with_the_documented_body(
    simulator: SimulatorHandle,
) -> None:
    simulator.configure(action_rate_limit=3, retry_after=2)
    statuses = [reboot(simulator, sid(i)).status_code for i in range(3)]

    resp = reboot(simulator, sid(9))

    assert statuses == [200, 200, 200]
    body = assert_gateway_error(resp, 429, "APIGW.0308")
    assert body["error_msg"] == THROTTLE_MESSAGE.format(3)
    assert resp.headers["Retry-After"] == "2"
    assert sid(9) not in simulator.stats()["reboots"]
    other = session(simulator, OTHER_PROJECT).post(
        action_url(simulator, OTHER_PROJECT), json=reboot_body(sid(9))
    )
    assert other.status_code == 200  # the budget is per project


def test_given_start_stop_and_reboot_then_they_share_one_bucket(simulator: SimulatorHandle) -> None:
    simulator.configure(action_rate_limit=2)
    s = session(simulator)
    s.post(action_url(simulator), json={"os-start": {"servers": ONE}})
    s.post(action_url(simulator), json={"os-stop": {"servers": ONE}})

    assert reboot(simulator, sid(1)).status_code == 429


def test_given_rate_limit_scale_then_the_limit_is_multiplied(simulator: SimulatorHandle) -> None:
    simulator.configure(action_rate_limit=2, rate_limit_scale=2.0)
    statuses = [reboot(simulator, sid(i)).status_code for i in range(5)]

    assert statuses == [200, 200, 200, 200, 429]
    assert reboot(simulator, sid(1)).json()["error_msg"] == THROTTLE_MESSAGE.format(4)


def test_given_a_job_limit_then_polls_are_throttled(simulator: SimulatorHandle) -> None:
    simulator.configure(job_rate_limit=2)
    job_id = reboot(simulator, sid(1)).json()["job_id"]
    s = session(simulator)

    statuses = [s.get(job_url(simulator, job_id)).status_code for _ in range(3)]

    assert statuses == [200, 200, 429]
    assert "Retry-After" not in s.get(job_url(simulator, job_id)).headers
    assert simulator.stats()["calls"]["jobs"]["throttled"] == 2


def test_given_rate_limits_off_then_more_than_the_documented_50_pass() -> None:
    from tests.fixtures.simulator import SimulatorHandle as Handle
    from worker.simulator.server import SimulatorServer

    with SimulatorServer(SimulatorConfig(action_rate_limit=None)) as server:
        sim = Handle(server)
        assert server.config.action_rate_limit is None
        statuses = {reboot(sim, sid(i)).status_code for i in range(60)}
    assert statuses == {200}


def test_given_default_knobs_then_the_documented_50_per_minute_applies() -> None:
    from worker.simulator.server import SimulatorServer

    with SimulatorServer() as server:
        sim = SimulatorHandle(server)
        statuses = [reboot(sim, sid(i)).status_code for i in range(51)]
    assert statuses.count(200) == 50
    assert statuses[-1] == 429


# --- injected and random faults --------------------------------------------------------------


def test_given_an_injected_5xx_then_500_with_an_error_body_and_nothing_accepted(
    simulator: SimulatorHandle,
) -> None:
    simulator.inject("action", "5xx")

    resp = reboot(simulator, sid(1))

    assert_bms_error(resp, 500, "BMS.9999")
    stats = simulator.stats()
    assert stats["reboots"] == {}
    assert stats["calls"]["action"]["faulted"] == 1
    assert reboot(simulator, sid(1)).status_code == 200


def test_given_injected_faults_with_a_count_then_they_are_consumed_in_order(
    simulator: SimulatorHandle,
) -> None:
    simulator.inject("action", "5xx", count=2)
    simulator.inject("action", "429")

    statuses = [reboot(simulator, sid(i)).status_code for i in range(4)]

    assert statuses == [500, 500, 429, 200]
    assert simulator.stats()["calls"]["action"] == {
        "accepted": 1,
        "throttled": 1,
        "rejected": 0,
        "faulted": 2,
        "dropped": 0,
    }


def test_given_an_injected_429_then_the_throttled_envelope(simulator: SimulatorHandle) -> None:
    simulator.inject("action", "429")

    body = assert_gateway_error(reboot(simulator, sid(1)), 429, "APIGW.0308")

    assert body["error_msg"] == THROTTLE_MESSAGE.format(50)


def test_given_drop_then_the_action_is_executed_but_the_connection_closes_unanswered(
    simulator: SimulatorHandle,
) -> None:
    simulator.inject("action", "drop")

    with pytest.raises(requests.ConnectionError):
        reboot(simulator, sid(1))

    stats = simulator.stats()
    assert stats["reboots"] == {sid(1): 1}
    assert stats["calls"]["action"]["dropped"] == 1
    assert len(stats["jobs"]) == 1


def test_given_drop_before_then_the_connection_closes_and_nothing_is_executed(
    simulator: SimulatorHandle,
) -> None:
    simulator.inject("action", "drop_before")

    with pytest.raises(requests.ConnectionError):
        reboot(simulator, sid(1))

    assert simulator.stats()["reboots"] == {}
    assert simulator.stats()["jobs"] == {}


def test_given_slow_then_the_action_is_executed_and_the_client_times_out(
    simulator: SimulatorHandle,
) -> None:
    simulator.inject("action", "slow", delay=0.5)

    with pytest.raises(requests.ReadTimeout):
        reboot(simulator, sid(1), timeout=(1, 0.1))

    assert simulator.stats()["reboots"] == {sid(1): 1}
    assert simulator.stats()["calls"]["action"]["faulted"] == 1


def test_given_slow_and_a_patient_client_then_the_answer_arrives_late(
    simulator: SimulatorHandle,
) -> None:
    simulator.inject("action", "slow", delay=0.2)
    started = time.monotonic()

    resp = reboot(simulator, sid(1))

    assert resp.status_code == 200
    assert time.monotonic() - started >= 0.2


def test_given_gateway_502_then_the_action_is_executed_and_an_html_502_comes_back(
    simulator: SimulatorHandle,
) -> None:
    simulator.inject("action", "gateway_502")

    resp = reboot(simulator, sid(1))

    assert resp.status_code == 502
    assert resp.headers["Content-Type"].startswith("text/html")
    assert "X-Request-Id" in resp.headers
    assert simulator.stats()["reboots"] == {sid(1): 1}


def test_given_no_job_id_then_the_action_is_executed_and_the_answer_is_empty(
    simulator: SimulatorHandle,
) -> None:
    simulator.inject("action", "no_job_id")

    resp = reboot(simulator, sid(1))

    assert (resp.status_code, resp.json()) == (200, {})
    assert simulator.stats()["reboots"] == {sid(1): 1}


def test_given_an_injected_401_then_a_good_signature_is_refused_once(
    simulator: SimulatorHandle,
) -> None:
    simulator.inject("action", "401")

    assert_gateway_error(reboot(simulator, sid(1)), 401, "APIGW.0301")
    assert reboot(simulator, sid(1)).status_code == 200


def test_given_an_after_accept_fault_then_a_rejected_request_does_not_consume_it(
    simulator: SimulatorHandle,
) -> None:
    simulator.inject("action", "no_job_id")
    session(simulator).post(action_url(simulator), json={"reboot": {"servers": ONE}})

    resp = reboot(simulator, sid(1))

    assert resp.json() == {}


def test_given_faults_on_the_jobs_route_then_polls_fail_but_are_counted(
    simulator: SimulatorHandle,
) -> None:
    job_id = reboot(simulator, sid(1)).json()["job_id"]
    simulator.inject("jobs", "5xx")
    simulator.inject("jobs", "drop")
    s = session(simulator)

    assert s.get(job_url(simulator, job_id)).status_code == 500
    with pytest.raises(requests.ConnectionError):
        s.get(job_url(simulator, job_id))

    assert s.get(job_url(simulator, job_id)).status_code == 200
    assert simulator.stats()["polls"] == {job_id: 2}
    calls = simulator.stats()["calls"]["jobs"]
    assert (calls["faulted"], calls["dropped"], calls["accepted"]) == (1, 1, 1)


def test_given_a_fault_on_the_tokens_route_then_no_token(simulator: SimulatorHandle) -> None:
    simulator.inject("tokens", "5xx")

    resp = http("POST", f"{simulator.base_url}/v3/auth/tokens", json=token_body(simulator))

    assert resp.status_code == 500
    assert "X-Subject-Token" not in resp.headers


def test_given_random_fault_knobs_at_certainty_then_every_call_faults(
    simulator: SimulatorHandle,
) -> None:
    simulator.configure(fault_5xx=1.0)
    assert reboot(simulator, sid(1)).status_code == 500

    simulator.configure(fault_5xx=0.0, drop_after_accept=1.0)
    with pytest.raises(requests.ConnectionError):
        reboot(simulator, sid(2))

    assert simulator.stats()["reboots"] == {sid(2): 1}


def test_given_latency_then_answers_are_delayed(simulator: SimulatorHandle) -> None:
    simulator.configure(latency=0.2)
    started = time.monotonic()

    reboot(simulator, sid(1))

    assert time.monotonic() - started >= 0.2


# --- inspection endpoints --------------------------------------------------------------------


def test_given_the_http_control_endpoints_then_config_inject_stats_and_reset_work(
    simulator: SimulatorHandle,
) -> None:
    base = f"{simulator.base_url}/_simulator"

    patched = http("POST", f"{base}/config", json={"fail_servers": [sid(1)], "job_duration": 0.05})
    injected = http("POST", f"{base}/inject", json={"route": "jobs", "fault": "5xx", "count": 2})
    bad = http("POST", f"{base}/config", json={"no_such_knob": 1})
    bad_fault = http("POST", f"{base}/inject", json={"route": "action", "fault": "teapot"})

    assert patched.json()["fail_servers"] == [sid(1)]
    assert patched.json()["credentials"] == {simulator.ak: "******"}
    assert injected.json()["pending"]["jobs"] == ["5xx", "5xx"]
    assert (bad.status_code, bad_fault.status_code) == (400, 400)
    job_id = reboot(simulator, sid(1), sid(2)).json()["job_id"]
    stats = http("GET", f"{base}/stats").json()
    assert stats["reboots"] == {sid(1): 1, sid(2): 1}
    assert stats["jobs"][job_id]["servers"] == 2
    assert set(stats["calls"]) == {
        *("action", "jobs", "tokens", "servers", "server"),
        *("metadata_token", "securitykey", "assume_agency"),
    }
    assert http("POST", f"{base}/reset").status_code == 200
    after = http("GET", f"{base}/stats").json()
    assert after["reboots"] == {}
    assert after["jobs"] == {}
    assert after["polls"] == {}
    assert http("GET", f"{base}/config").json()["job_duration"] == 0.05


def test_given_many_concurrent_clients_then_every_server_is_rebooted_once(
    simulator: SimulatorHandle,
) -> None:
    simulator.configure(job_duration=0.05)
    job_ids: list[str] = []
    errors: list[BaseException] = []

    def client(worker: int) -> None:
        s = session(simulator)
        try:
            for n in range(20):
                body = reboot_body(sid(worker * 100 + n))
                job_id = s.post(action_url(simulator), json=body).json()["job_id"]
                assert s.get(job_url(simulator, job_id)).status_code == 200
                job_ids.append(job_id)
        except BaseException as exc:  # surfaced by the main thread below
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert errors == []
    assert len(set(job_ids)) == 160
    reboots = simulator.stats()["reboots"]
    assert len(reboots) == 160
    assert set(reboots.values()) == {1}


# --- the command line ------------------------------------------------------------------------


def test_given_the_cli_with_port_0_then_the_first_line_names_the_url_and_it_serves() -> None:
    exe = Path(sys.executable).with_name("bmsreboot")
    proc = subprocess.Popen(
        [str(exe), "simulator", "--port", "0", "--no-rate-limit", "--verbose"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().rstrip("\n")
        match = re.fullmatch(r"bmsreboot simulator listening on (http://127\.0\.0\.1:(\d+))", line)
        assert match, line
        resp = requests.post(
            f"{match[1]}/v1/{PROJECT}/baremetalservers/action",
            json=reboot_body(sid(1)),
            auth=AkSkAuth(DEFAULT_AK, DEFAULT_SK),
            timeout=10,
        )
        assert resp.status_code == 200
    finally:
        proc.terminate()
        _, stderr = proc.communicate(timeout=10)
    assert proc.returncode == 0
    assert "/baremetalservers/action 200" in stderr
    assert DEFAULT_SK not in stderr
    assert "Signature=" not in stderr
