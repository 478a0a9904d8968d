"""BmsClient against the simulator over real HTTP: calls, job parsing, every error class, the
not-accepted / maybe-accepted classification of every injectable fault, and token auth.

No HTTP is mocked: each test talks to a fresh simulator (``simulator`` fixture), to a loopback
capture server, or to a socket that refuses or never completes connections.
"""

from __future__ import annotations

import json
import logging
import pickle
import select
import shutil
import socket
import ssl
import subprocess
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.fixtures.simulator import SimulatorHandle
from tests.fixtures.waiting import wait_for
from tests.test_signing import CaptureServer, capture_server  # noqa: F401 - a fixture
from worker import __version__
from worker.bms.agency import AgencyCredentials
from worker.bms.auth import TokenAuth
from worker.bms.client import (
    ALL_GRANTED_EPS,
    DEFAULT_USER_AGENT,
    JSON_CONTENT_TYPE,
    MAX_SERVERS_PER_CALL,
    BmsClient,
)
from worker.bms.credentials import StaticCredentials
from worker.bms.errors import (
    AuthenticationError,
    BmsError,
    ConfigurationError,
    ConnectError,
    ConnectionDropped,
    CredentialError,
    NotFoundError,
    PermissionDeniedError,
    ProtocolError,
    RejectedError,
    RequestTimeout,
    ServerError,
    ThrottledError,
    error_from_response,
    parse_error_body,
)
from worker.bms.metadata import MetadataCredentials
from worker.bms.models import TERMINAL_JOB_STATUSES, Job, ServerDetails
from worker.bms.signing import AkSkAuth
from worker.bms.sources import credentials_from_config
from worker.settings import Settings
from worker.simulator.faults import FAULTS
from worker.simulator.inventory import (
    ENTERPRISE_PROJECTS,
    FLAVORS,
    generated_server,
    generated_servers,
)

PROJECT = "0123456789abcdef0123456789abcdef"


def new_ids(n: int = 1) -> list[str]:
    return [str(uuid.uuid4()) for _ in range(n)]


def aksk_client(sim: SimulatorHandle, **kwargs: Any) -> BmsClient:
    kwargs.setdefault("timeout", (2.0, 5.0))
    return BmsClient(sim.base_url, AkSkAuth(sim.ak, sim.sk), **kwargs)


def token_auth(sim: SimulatorHandle, password: str | None = None) -> TokenAuth:
    return TokenAuth(
        sim.base_url, sim.iam_user, password or sim.iam_password, sim.iam_domain, timeout=(2, 5)
    )


def token_calls(sim: SimulatorHandle) -> int:
    return int(sim.stats()["calls"]["tokens"]["accepted"])


def wait_terminal(client: BmsClient, job_id: str) -> Job:
    def ended() -> Job | None:
        job = client.get_job(PROJECT, job_id)
        return job if job.is_terminal else None

    return wait_for(ended, f"job {job_id} ended")


@pytest.fixture
def client(simulator: SimulatorHandle) -> Iterator[BmsClient]:
    with aksk_client(simulator) as c:
        yield c


# --- calls -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("call", "action"),
    [
        (lambda c, ids: c.batch_reboot(PROJECT, ids), "reboot"),
        (lambda c, ids: c.batch_reboot(PROJECT, ids, "SOFT"), "reboot"),
    ],
)
def test_given_servers_when_a_power_action_is_sent_then_it_returns_the_job_id(
    simulator: SimulatorHandle,
    client: BmsClient,
    call: Callable[[BmsClient, list[str]], str],
    action: str,
) -> None:
    # Given
    ids = new_ids(3)
    # When
    job_id = call(client, ids)
    # Then
    assert isinstance(job_id, str)
    assert job_id
    assert simulator.stats()["actions"][action] == dict.fromkeys(ids, 1)


def test_given_a_finished_batch_when_get_job_then_sub_jobs_are_typed(
    simulator: SimulatorHandle, client: BmsClient
) -> None:
    # Given one server that fails and one that succeeds
    ok, bad = new_ids(2)
    simulator.configure(job_duration=0.1, fail_servers=[bad], fail_code="BMS.0036")
    job_id = client.batch_reboot(PROJECT, [ok, bad])
    # When
    job = wait_terminal(client, job_id)
    # Then
    assert job.job_id == job_id
    assert job.status == "FAIL"
    assert job.is_terminal
    assert job.sub_jobs_total == 2
    by_server = {s.server_id: s for s in job.sub_jobs}
    assert by_server[ok].status == "SUCCESS"
    assert by_server[ok].error_code is None
    assert by_server[bad].status == "FAIL"
    assert by_server[bad].error_code == "BMS.0036"
    assert by_server[bad].fail_reason == "Server is powering off, not allow to reboot."
    assert by_server[bad].errorcode_message == by_server[bad].fail_reason
    for sub in job.sub_jobs:
        assert sub.job_id
        assert sub.begin_time is not None
        assert sub.begin_time.tzinfo is not None
        assert sub.end_time is not None
        assert sub.end_time >= sub.begin_time


def test_given_a_running_job_when_get_job_then_it_is_not_terminal_and_has_no_end_time(
    simulator: SimulatorHandle, client: BmsClient
) -> None:
    # Given
    simulator.configure(job_duration=30)
    job_id = client.batch_reboot(PROJECT, new_ids(1))
    # When
    job = client.get_job(PROJECT, job_id)
    raw = client.get_job_raw(PROJECT, job_id)
    # Then
    assert job.status in ("INIT", "RUNNING")
    assert not job.is_terminal
    assert job.end_time is None
    assert raw["job_id"] == job_id
    assert raw["entities"]["sub_jobs_total"] == 1


def test_given_the_reference_example_when_parsed_then_every_field_is_typed() -> None:
    # Given the realistic example of bms-api.md §3.5 (abridged)
    raw = {
        "status": "FAIL",
        "entities": {
            "sub_jobs_total": 1,
            "sub_jobs": [
                {
                    "status": "FAIL",
                    "entities": {
                        "server_id": "726fb98f-46ca-475e-917e-2563e5a8cd20",
                        "errorcode_message": "Server is powering off, not allow to reboot.",
                    },
                    "job_id": "ff80808290a1b2c30190a1f0aa120002",
                    "job_type": "baremetalSingleOperate",
                    "begin_time": "2024-07-01T08:00:02.120Z",
                    "end_time": None,
                    "error_code": "BMS.0036",
                    "fail_reason": "Server is powering off, not allow to reboot.",
                }
            ],
        },
        "job_id": "ff80808290a1b2c30190a1f0a9f00000",
        "job_type": "baremetalBatchOperate",
        "begin_time": "2024-07-01T08:00:01.950Z",
        "end_time": "garbage",
        "error_code": "BMS.0036",
        "fail_reason": "Server is powering off, not allow to reboot.",
    }
    # When
    job = Job.from_api(raw)
    # Then
    (sub,) = job.sub_jobs
    assert sub.begin_time == datetime(2024, 7, 1, 8, 0, 2, 120000, tzinfo=UTC)
    assert sub.end_time is None
    assert job.end_time is None
    assert sub.server_id == "726fb98f-46ca-475e-917e-2563e5a8cd20"
    assert sub.job_id == "ff80808290a1b2c30190a1f0aa120002"
    assert {"SUCCESS", "FAIL"} == TERMINAL_JOB_STATUSES


@pytest.mark.parametrize("count", [0, MAX_SERVERS_PER_CALL + 1])
def test_given_too_few_or_too_many_ids_when_rebooting_then_value_error_and_nothing_sent(
    simulator: SimulatorHandle, client: BmsClient, count: int
) -> None:
    # Given
    ids = new_ids(count)
    # When / Then
    with pytest.raises(ValueError, match=r"1\.\.1000"):
        client.batch_reboot(PROJECT, ids)
    assert sum(simulator.stats()["calls"]["action"].values()) == 0


def test_given_a_duplicate_id_when_rebooting_then_value_error() -> None:
    # Given a client pointing nowhere: nothing may be sent
    client = BmsClient("http://127.0.0.1:9", AkSkAuth("ak", "sk"))
    (one,) = new_ids(1)
    # When / Then
    with pytest.raises(ValueError, match="duplicates"):
        client.batch_reboot(PROJECT, [one, one])


def test_given_1000_ids_when_rebooting_then_all_are_sent_in_one_call(
    simulator: SimulatorHandle, client: BmsClient
) -> None:
    # Given
    ids = new_ids(MAX_SERVERS_PER_CALL)
    # When
    client.batch_reboot(PROJECT, ids)
    # Then
    assert len(simulator.stats()["reboots"]) == MAX_SERVERS_PER_CALL


# --- the wire: byte for byte what the official SDK sends --------------------------------------
def sdk_send(base_url: str, kind: str, ids: list[str], stop_type: str | None) -> None:
    from huaweicloudsdkbms.v1 import (
        BatchRebootBaremetalServersRequest,
        BatchStartBaremetalServersRequest,
        BatchStopBaremetalServersRequest,
        OsStartBody,
        OsStopBody,
        OsStopBodyType,
        RebootBody,
        ServersInfoType,
        ServersList,
        StartServersInfo,
    )
    from huaweicloudsdkbms.v1 import BmsClient as SdkClient
    from huaweicloudsdkcore.auth.credentials import BasicCredentials
    from huaweicloudsdkcore.http.http_config import HttpConfig

    config = HttpConfig.get_default_config()
    config.timeout = (2, 5)
    sdk = (
        SdkClient.new_builder()
        .with_http_config(config)
        .with_credentials(BasicCredentials("AK", "SK", PROJECT))
        .with_endpoint(base_url)
        .build()
    )
    servers = [ServersList(id=i) for i in ids]
    if kind == "reboot":
        sdk.batch_reboot_baremetal_servers(
            BatchRebootBaremetalServersRequest(
                body=RebootBody(reboot=ServersInfoType(type="HARD", servers=servers))
            )
        )
    elif kind == "start":
        sdk.batch_start_baremetal_servers(
            BatchStartBaremetalServersRequest(
                body=OsStartBody(os_start=StartServersInfo(servers=servers))
            )
        )
    else:
        sdk.batch_stop_baremetal_servers(
            BatchStopBaremetalServersRequest(
                body=OsStopBody(os_stop=OsStopBodyType(type=stop_type, servers=servers))
            )
        )


@pytest.mark.parametrize(
    ("kind", "stop_type"),
    [("reboot", None)],
)
def test_given_the_official_sdk_when_both_send_an_action_then_bodies_match_byte_for_byte(
    capture_server: CaptureServer,  # noqa: F811 - the imported fixture
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Any,
    kind: str,
    stop_type: str | None,
) -> None:
    # Given (the SDK writes an application id under $HOME)
    monkeypatch.setenv("HOME", str(tmp_path))
    ids = new_ids(2)
    client = BmsClient(capture_server.base_url, AkSkAuth("AK", "SK"))
    # When
    sdk_send(capture_server.base_url, kind, ids, stop_type)
    client.batch_reboot(PROJECT, ids)
    # Then
    theirs, ours = capture_server.requests
    assert ours.body == theirs.body
    assert ours.target == theirs.target == f"/v1/{PROJECT}/baremetalservers/action"
    assert ours.headers["content-type"] == theirs.headers["content-type"] == JSON_CONTENT_TYPE
    assert ours.headers["x-project-id"] == theirs.headers["x-project-id"] == PROJECT


def test_given_a_client_when_it_sends_then_user_agent_and_timeouts_are_set(
    capture_server: CaptureServer,  # noqa: F811 - the imported fixture
) -> None:
    # Given
    client = BmsClient(capture_server.base_url, AkSkAuth("AK", "SK"))
    # When
    client.batch_reboot(PROJECT, new_ids(1))
    # Then
    (sent,) = capture_server.requests
    assert sent.headers["user-agent"] == DEFAULT_USER_AGENT
    assert f"bmsreboot/{__version__} python-requests/{requests.__version__}" == DEFAULT_USER_AGENT
    assert all(t > 0 for t in client.timeout)
    assert client.verify is True


# --- errors ------------------------------------------------------------------------------------
def test_given_a_wrong_sk_when_rebooting_then_authentication_error(
    simulator: SimulatorHandle,
) -> None:
    # Given
    client = BmsClient(simulator.base_url, AkSkAuth(simulator.ak, "wrong-secret-key"))
    # When
    with pytest.raises(AuthenticationError) as caught:
        client.batch_reboot(PROJECT, new_ids(1))
    # Then
    error = caught.value
    assert (error.status, error.code) == (401, "APIGW.0301")
    assert error.request_id
    assert not error.maybe_accepted
    assert simulator.stats()["reboots"] == {}


def test_given_an_unknown_job_when_get_job_then_not_found(client: BmsClient) -> None:
    # When
    with pytest.raises(NotFoundError) as caught:
        client.get_job(PROJECT, "ff80808290a1b2c30190a1f0a9f0dead")
    # Then
    assert caught.value.status == 404
    assert caught.value.code
    assert caught.value.request_id


def test_given_an_unknown_server_when_rebooting_then_rejected_bms_0040(
    simulator: SimulatorHandle, client: BmsClient
) -> None:
    # Given
    known, unknown = new_ids(2)
    simulator.configure(unknown_servers=[unknown])
    # When
    with pytest.raises(RejectedError) as caught:
        client.batch_reboot(PROJECT, [known, unknown])
    # Then
    assert (caught.value.status, caught.value.code) == (400, "BMS.0040")
    assert caught.value.message == "The server does not exist."
    assert not caught.value.maybe_accepted
    assert simulator.stats()["reboots"] == {}


def test_given_more_than_1000_servers_on_the_wire_when_answered_then_rejected_bms_0205(
    simulator: SimulatorHandle,
) -> None:
    # Given a raw signed request the client itself would refuse to send
    body = json.dumps({"reboot": {"type": "HARD", "servers": [{"id": i} for i in new_ids(1001)]}})
    response = requests.post(
        f"{simulator.base_url}/v1/{PROJECT}/baremetalservers/action",
        data=body.encode(),
        headers={"Content-Type": JSON_CONTENT_TYPE, "X-Project-Id": PROJECT},
        auth=AkSkAuth(simulator.ak, simulator.sk),
        timeout=5,
    )
    # When
    error = error_from_response(response, is_post=True)
    # Then
    assert isinstance(error, RejectedError)
    assert (error.status, error.code, error.maybe_accepted) == (400, "BMS.0205", False)


def test_given_a_rate_limit_with_retry_after_when_exceeded_then_throttled_with_the_hint(
    simulator: SimulatorHandle, client: BmsClient
) -> None:
    # Given
    simulator.configure(action_rate_limit=1, retry_after=7)
    client.batch_reboot(PROJECT, new_ids(1))
    # When
    with pytest.raises(ThrottledError) as caught:
        client.batch_reboot(PROJECT, new_ids(1))
    # Then
    error = caught.value
    assert (error.status, error.code, error.retry_after) == (429, "APIGW.0308", 7.0)
    assert not error.maybe_accepted


def test_given_a_closed_port_when_rebooting_then_connect_error_not_accepted() -> None:
    # Given a port nobody listens on
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = BmsClient(f"http://127.0.0.1:{port}", AkSkAuth("ak", "sk"), timeout=(1, 1))
    # When
    with pytest.raises(ConnectError) as caught:
        client.batch_reboot(PROJECT, new_ids(1))
    # Then
    assert not caught.value.maybe_accepted
    assert caught.value.status is None


def _connected(sock: socket.socket) -> bool:
    """A non-blocking connect has completed (the socket is writable, with no error)."""
    _, writable, _ = select.select([], [sock], [], 0)
    return bool(writable) and sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0


def test_given_a_full_accept_queue_when_rebooting_then_connect_timeout_not_accepted() -> None:
    # Given a listener whose accept queue is full: the kernel drops further SYNs
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(3):
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(("127.0.0.1", port))
        fillers.append(filler)
    # The first filler's handshake done: the queue holds it, and drops what comes after
    wait_for(lambda: _connected(fillers[0]), "a connection in the accept queue")
    client = BmsClient(f"http://127.0.0.1:{port}", AkSkAuth("ak", "sk"), timeout=(0.3, 1))
    try:
        # When
        with pytest.raises(RequestTimeout) as caught:
            client.batch_reboot(PROJECT, new_ids(1))
    finally:
        for s in [*fillers, listener]:
            s.close()
    # Then
    assert not caught.value.maybe_accepted
    assert "connecting" in caught.value.message


# fault -> (error class, maybe_accepted for a POST)
FAULT_TABLE: dict[str, tuple[type[BmsError], bool]] = {
    "5xx": (ServerError, False),
    "429": (ThrottledError, False),
    "401": (AuthenticationError, False),
    # The simulator closes before accepting, but on the client's side of the wire this looks
    # exactly like "drop": the request was sent and no answer came. So: maybe accepted.
    "drop_before": (ConnectionDropped, True),
    "drop": (ConnectionDropped, True),
    "slow": (RequestTimeout, True),
    "gateway_502": (ServerError, True),
    "no_job_id": (ProtocolError, True),
    "404": (NotFoundError, False),
}
#: Faults that change only a job's answer (its sub-jobs left out): not an error of the call.
JOB_ANSWER_FAULTS = {"no_sub_jobs"}


def test_given_the_simulator_fault_list_then_the_table_covers_every_fault() -> None:
    assert set(FAULT_TABLE) | JOB_ANSWER_FAULTS == set(FAULTS)


@pytest.mark.parametrize("fault", sorted(FAULT_TABLE))
def test_given_an_injected_fault_when_rebooting_then_classified_and_never_falsely_not_accepted(
    simulator: SimulatorHandle, fault: str
) -> None:
    # Given
    expected_class, expected_maybe = FAULT_TABLE[fault]
    simulator.inject("action", fault, delay=2.0)
    client = aksk_client(simulator, timeout=(1.0, 0.5))
    (server,) = new_ids(1)
    # When
    with pytest.raises(BmsError) as caught:
        client.batch_reboot(PROJECT, [server])
    # Then
    error = caught.value
    assert type(error) is expected_class
    assert error.maybe_accepted is expected_maybe
    # ...and "not accepted" is never a lie: the simulator executed nothing.
    if not error.maybe_accepted:
        assert simulator.stats()["reboots"] == {}


@pytest.mark.parametrize("fault", sorted(FAULT_TABLE))
def test_given_an_injected_fault_when_getting_a_job_then_never_maybe_accepted(
    simulator: SimulatorHandle, client: BmsClient, fault: str
) -> None:
    # Given an existing job, then a fault on the jobs route
    job_id = client.batch_reboot(PROJECT, new_ids(1))
    simulator.inject("jobs", fault, delay=2.0)
    short = aksk_client(simulator, timeout=(1.0, 0.5))
    # When
    with pytest.raises(BmsError) as caught:
        short.get_job(PROJECT, job_id)
    # Then (no_job_id on GET answers {}, which is not a job either)
    assert type(caught.value) is FAULT_TABLE[fault][0]
    assert caught.value.maybe_accepted is False


def test_given_a_slow_answer_when_the_read_times_out_then_the_reboot_did_happen(
    simulator: SimulatorHandle,
) -> None:
    # Given
    simulator.inject("action", "slow", delay=2.0)
    client = aksk_client(simulator, timeout=(1.0, 0.3))
    (server,) = new_ids(1)
    # When
    with pytest.raises(RequestTimeout) as caught:
        client.batch_reboot(PROJECT, [server])
    # Then: this is why maybe_accepted exists
    assert caught.value.maybe_accepted
    assert simulator.stats()["reboots"] == {server: 1}


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"error": {"code": "BMS.0040", "message": "m"}}, ("BMS.0040", "m")),
        ({"error_code": "APIGW.0308", "error_msg": "m", "request_id": "r"}, ("APIGW.0308", "m")),
        ({"code": "BMS.0018", "message": "m"}, ("BMS.0018", "m")),
        ({"error": {"code": 401, "title": "Unauthorized", "message": "m"}}, ("401", "m")),
        ({"job_id": "x"}, (None, None)),
        ("<html>", (None, None)),
        (None, (None, None)),
    ],
)
def test_given_an_error_body_when_parsed_then_code_and_message_come_from_any_envelope(
    body: Any, expected: tuple[str | None, str | None]
) -> None:
    assert parse_error_body(body) == expected


# --- token auth --------------------------------------------------------------------------------
def test_given_token_auth_when_calling_repeatedly_then_the_token_is_fetched_once(
    simulator: SimulatorHandle,
) -> None:
    # Given
    client = BmsClient(simulator.base_url, token_auth(simulator), timeout=(2, 5))
    # When
    job_id = client.batch_reboot(PROJECT, new_ids(1))
    client.get_job(PROJECT, job_id)
    client.batch_reboot(PROJECT, new_ids(1))
    # Then
    assert token_calls(simulator) == 1


def test_given_a_short_token_ttl_when_it_expires_then_a_new_token_is_fetched_before_use(
    simulator: SimulatorHandle,
) -> None:
    # Given tokens that live one second
    simulator.configure(token_ttl=1.0)
    client = BmsClient(simulator.base_url, token_auth(simulator), timeout=(2, 5))
    client.batch_reboot(PROJECT, new_ids(1))
    # When the first has expired on the simulator's clock (real time: it cannot be moved)
    time.sleep(1.1)
    client.batch_reboot(PROJECT, new_ids(1))
    # Then: refreshed ahead of time, never by a 401
    assert token_calls(simulator) == 2
    assert simulator.stats()["calls"]["action"]["rejected"] == 0


def test_given_one_401_when_rebooting_with_a_token_then_refreshed_once_and_succeeds(
    simulator: SimulatorHandle,
) -> None:
    # Given
    client = BmsClient(simulator.base_url, token_auth(simulator), timeout=(2, 5))
    simulator.inject("action", "401")
    (server,) = new_ids(1)
    # When
    job_id = client.batch_reboot(PROJECT, [server])
    # Then
    assert job_id
    assert token_calls(simulator) == 2
    assert simulator.stats()["reboots"] == {server: 1}


def test_given_two_401s_when_rebooting_with_a_token_then_authentication_error(
    simulator: SimulatorHandle,
) -> None:
    # Given
    client = BmsClient(simulator.base_url, token_auth(simulator), timeout=(2, 5))
    simulator.inject("action", "401", count=2)
    # When
    with pytest.raises(AuthenticationError) as caught:
        client.batch_reboot(PROJECT, new_ids(1))
    # Then
    assert caught.value.status == 401
    assert token_calls(simulator) == 2
    assert simulator.stats()["reboots"] == {}


def test_given_a_401_under_aksk_when_rebooting_then_no_retry(
    simulator: SimulatorHandle, client: BmsClient
) -> None:
    # Given
    simulator.inject("action", "401")
    # When
    with pytest.raises(AuthenticationError):
        client.batch_reboot(PROJECT, new_ids(1))
    # Then
    assert simulator.stats()["calls"]["action"]["rejected"] == 1
    assert sum(simulator.stats()["calls"]["action"].values()) == 1


def test_given_a_wrong_password_when_calling_then_authentication_error_and_nothing_sent(
    simulator: SimulatorHandle,
) -> None:
    # Given
    client = BmsClient(simulator.base_url, token_auth(simulator, password="wrong-pass"))
    # When
    with pytest.raises(AuthenticationError) as caught:
        client.batch_reboot(PROJECT, new_ids(1))
    # Then
    assert caught.value.message.startswith("IAM token request failed")
    assert not caught.value.maybe_accepted
    assert sum(simulator.stats()["calls"]["action"].values()) == 0


@pytest.mark.parametrize("fault", ["5xx", "drop", "slow", "gateway_502"])
def test_given_a_failing_iam_when_rebooting_then_not_accepted_whatever_the_token_call_did(
    simulator: SimulatorHandle, fault: str
) -> None:
    # Given
    simulator.inject("tokens", fault, delay=2.0)
    auth = TokenAuth(
        simulator.base_url,
        simulator.iam_user,
        simulator.iam_password,
        simulator.iam_domain,
        timeout=(1, 0.5),
    )
    client = BmsClient(simulator.base_url, auth)
    # When
    with pytest.raises(BmsError) as caught:
        client.batch_reboot(PROJECT, new_ids(1))
    # Then: the reboot itself was never sent
    assert not caught.value.maybe_accepted
    assert sum(simulator.stats()["calls"]["action"].values()) == 0


# --- no secret anywhere --------------------------------------------------------------------
def test_given_known_secrets_when_errors_clients_and_auths_are_printed_then_no_secret_shows(
    simulator: SimulatorHandle, caplog: pytest.LogCaptureFixture
) -> None:
    # Given credentials with recognisable secrets
    caplog.set_level(logging.DEBUG)
    wrong_sk = "SECRET-SK-0123456789"
    wrong_password = "SECRET-PASSWORD-42"
    real_password = simulator.iam_password
    aksk = AkSkAuth(simulator.ak, wrong_sk)
    bad_tokens = TokenAuth(simulator.base_url, simulator.iam_user, wrong_password, "d")
    good_tokens = token_auth(simulator)
    clients = [BmsClient(simulator.base_url, a) for a in (aksk, bad_tokens, good_tokens)]
    errors: list[BaseException] = []
    # When every kind of failure happens
    for c in clients[:2]:
        with pytest.raises(BmsError) as caught:
            c.batch_reboot(PROJECT, new_ids(1))
        errors.append(caught.value)
    job_id = clients[2].batch_reboot(PROJECT, new_ids(1))
    token = good_tokens.token(PROJECT)
    simulator.inject("jobs", "drop")
    with pytest.raises(BmsError) as caught:
        clients[2].get_job(PROJECT, job_id)
    errors.append(caught.value)
    simulator.inject("tokens", "5xx")
    good_tokens.invalidate(PROJECT)
    with pytest.raises(BmsError) as caught:
        clients[2].get_job(PROJECT, job_id)
    errors.append(caught.value)
    # Then
    texts = [str(o) + repr(o) for o in [aksk, bad_tokens, good_tokens, *clients, *errors]]
    texts += ["".join(traceback.format_exception(e)) for e in errors]
    texts.append(caplog.text)
    everything = "\n".join(texts)
    for secret in (wrong_sk, simulator.sk, wrong_password, real_password, token):
        assert secret not in everything
    assert '"password"' not in everything  # no IAM request body


def test_given_every_credential_source_when_used_and_failing_then_no_secret_shows_anywhere(
    simulator: SimulatorHandle, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    # Given every source: env, file, the metadata service, an agency, a password login
    caplog.set_level(logging.DEBUG)
    settings = Settings(metadata_url=simulator.base_url, sts_endpoint=simulator.base_url)
    (tmp_path / "credentials").write_text(
        "[basic]\nak = HPUAFILE0000000001\nsk = SECRET-FILE-SK\n"
        "security_token = SECRET-FILE-TOKEN\n"
    )
    environ = {
        "PROD_AK": "HPUAENV00000000001",
        "PROD_SK": "SECRET-ENV-SK",
        "PROD_TOKEN": "SECRET-ENV-TOKEN",
        "OPS_PASSWORD": "SECRET-OPS-PASSWORD",
    }

    def build(spec: dict[str, Any]) -> Any:
        return credentials_from_config(spec, settings=settings, environ=environ)

    env = build(
        {"source": "env", "ak_env": "PROD_AK", "sk_env": "PROD_SK", "token_env": "PROD_TOKEN"}
    )
    file = build({"source": "file", "path": str(tmp_path / "credentials")})
    meta = build({"source": "metadata"})
    agency = build(
        {
            "source": "agency",
            "agency_urn": "iam::0a1b2c:agency:ops",
            "from": StaticCredentials(simulator.ak, simulator.sk),
        }
    )
    login = build(
        {"source": "password", "user": "ops", "domain": "acme", "password_env": "OPS_PASSWORD"}
    )
    wrong_caller = AgencyCredentials(
        "iam::0a1b2c:agency:ops",
        via=StaticCredentials(simulator.ak, "SECRET-WRONG-SK"),
        sts_endpoint=simulator.base_url,
    )
    errors: list[BaseException] = []
    # When they sign BMS calls, refresh, and fail in every way they can
    with (
        BmsClient(simulator.base_url, AkSkAuth(provider=meta)) as by_metadata,
        BmsClient(simulator.base_url, AkSkAuth(provider=agency)) as by_agency,
    ):
        job_id = by_metadata.batch_reboot(PROJECT, new_ids(1))
        by_agency.get_job(PROJECT, job_id)
        simulator.inject("action", "401")  # a refused credential: refreshed, sent again
        by_metadata.batch_reboot(PROJECT, new_ids(1))
    issued = [meta.get(), agency.get()]
    simulator.inject("securitykey", "5xx")
    failing = MetadataCredentials(simulator.base_url)
    for attempt in (failing.get, wrong_caller.get):
        with pytest.raises(BmsError) as caught:
            attempt()
        errors.append(caught.value)
    for spec in (
        {"source": "env", "ak_env": "PROD_AK", "sk_env": "NOT_SET"},
        {"source": "file", "path": str(tmp_path / "credentials"), "profile": "missing"},
    ):
        with pytest.raises(CredentialError) as caught:
            build(spec)
        errors.append(caught.value)
    # Then no SK, token or password shows in a repr, a description, an error or a log line
    objects: list[Any] = [env, file, meta, agency, login, wrong_caller, failing, *issued, settings]
    objects += [AkSkAuth(provider=p) for p in (env, file, meta, agency)]
    texts = [str(o) + repr(o) for o in [*objects, *errors]]
    texts += [o.describe() for o in (env, file, meta, agency, login)]
    texts += ["".join(traceback.format_exception(e)) for e in errors]
    texts.append(caplog.text)
    everything = "\n".join(texts)
    secrets = [
        *("SECRET-FILE-SK", "SECRET-FILE-TOKEN", "SECRET-ENV-SK", "SECRET-ENV-TOKEN"),
        *("SECRET-OPS-PASSWORD", "SECRET-WRONG-SK", simulator.sk),
    ]
    secrets += [value for c in issued for value in (c.sk, c.security_token) if value]
    assert caplog.text  # the providers did log: fetched, refreshed, failed
    for secret in secrets:
        assert secret not in everything
    for c in issued:
        assert c.ak not in everything  # only its first characters
    for provider in (meta, agency, wrong_caller, failing):
        provider.close()


# --- construction from settings -------------------------------------------------------------
_ENV = (
    "HUAWEICLOUD_SDK_AK",
    "HUAWEICLOUD_SDK_SK",
    "BMSREBOOT_AK",
    "BMSREBOOT_SK",
    "BMSREBOOT_IAM_USER",
    "BMSREBOOT_IAM_PASSWORD",
    "BMSREBOOT_IAM_DOMAIN",
    "BMSREBOOT_BMS_ENDPOINT",
    "BMSREBOOT_IAM_ENDPOINT",
    "BMSREBOOT_CA_BUNDLE",
    "HUAWEICLOUD_SDK_SECURITY_TOKEN",
    "BMSREBOOT_SECURITY_TOKEN",
)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in _ENV:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_given_ak_sk_in_the_environment_when_from_settings_then_signing_is_used(
    simulator: SimulatorHandle, clean_env: pytest.MonkeyPatch
) -> None:
    # Given
    clean_env.setenv("BMSREBOOT_BMS_ENDPOINT", simulator.base_url)
    clean_env.setenv("HUAWEICLOUD_SDK_AK", simulator.ak)
    clean_env.setenv("HUAWEICLOUD_SDK_SK", simulator.sk)
    clean_env.setenv("BMSREBOOT_IAM_USER", "ignored-when-aksk-is-set")
    # When
    with BmsClient.from_settings(Settings()) as client:
        job_id = client.batch_reboot(PROJECT, new_ids(1))
    # Then
    assert isinstance(client.auth, AkSkAuth)
    assert job_id
    assert client.timeout == (5.0, 30.0)


def test_given_a_temporary_aksk_in_the_environment_when_from_settings_then_its_token_is_signed(
    simulator: SimulatorHandle, clean_env: pytest.MonkeyPatch
) -> None:
    # Given a temporary credential of the simulator's metadata service in the SDK's variables,
    # and a simulator that requires its signed security token
    simulator.configure(security_token=True)
    metadata = MetadataCredentials(simulator.base_url)
    issued = metadata.get()
    metadata.close()
    assert issued.security_token is not None
    clean_env.setenv("BMSREBOOT_BMS_ENDPOINT", simulator.base_url)
    clean_env.setenv("HUAWEICLOUD_SDK_AK", issued.ak)
    clean_env.setenv("HUAWEICLOUD_SDK_SK", issued.sk)
    clean_env.setenv("HUAWEICLOUD_SDK_SECURITY_TOKEN", issued.security_token)
    # When
    with BmsClient.from_settings(Settings()) as client:
        job_id = client.batch_reboot(PROJECT, new_ids(1))
    # Then
    assert job_id
    assert simulator.stats()["signed_with"] == {"metadata": 1}


def test_given_iam_login_in_the_environment_when_from_settings_then_tokens_are_used(
    simulator: SimulatorHandle, clean_env: pytest.MonkeyPatch
) -> None:
    # Given
    clean_env.setenv("BMSREBOOT_BMS_ENDPOINT", simulator.base_url)
    clean_env.setenv("BMSREBOOT_IAM_ENDPOINT", simulator.base_url)
    clean_env.setenv("BMSREBOOT_IAM_USER", simulator.iam_user)
    clean_env.setenv("BMSREBOOT_IAM_PASSWORD", simulator.iam_password)
    clean_env.setenv("BMSREBOOT_IAM_DOMAIN", simulator.iam_domain)
    # When
    with BmsClient.from_settings(Settings()) as client:
        job_id = client.batch_reboot(PROJECT, new_ids(1))
    # Then
    assert isinstance(client.auth, TokenAuth)
    assert job_id
    assert token_calls(simulator) == 1


@pytest.mark.parametrize(
    ("env", "match"),
    [
        ({}, "no BMS credentials"),
        ({"HUAWEICLOUD_SDK_AK": "only-the-ak"}, "both"),
        ({"BMSREBOOT_IAM_USER": "u", "BMSREBOOT_IAM_DOMAIN": "d"}, "no BMS credentials"),
        ({"HUAWEICLOUD_SDK_SECURITY_TOKEN": "t"}, "belongs to a temporary AK/SK"),
        (
            {"HUAWEICLOUD_SDK_AK": "a", "HUAWEICLOUD_SDK_SK": "s", "BMSREBOOT_BMS_ENDPOINT": "x"},
            "URL",
        ),
    ],
)
def test_given_incomplete_configuration_when_from_settings_then_configuration_error(
    clean_env: pytest.MonkeyPatch, env: dict[str, str], match: str
) -> None:
    # Given
    for name, value in env.items():
        clean_env.setenv(name, value)
    # When / Then
    with pytest.raises(ConfigurationError, match=match):
        BmsClient.from_settings(Settings())


def test_given_a_ca_bundle_when_from_settings_then_it_is_the_verify_value(
    clean_env: pytest.MonkeyPatch,
) -> None:
    # Given
    clean_env.setenv("HUAWEICLOUD_SDK_AK", "a")
    clean_env.setenv("HUAWEICLOUD_SDK_SK", "s")
    clean_env.setenv("BMSREBOOT_CA_BUNDLE", "/etc/ssl/our-ca.pem")
    # When
    client = BmsClient.from_settings(Settings())
    # Then
    assert client.verify == "/etc/ssl/our-ca.pem"
    assert client.endpoint == "https://bms.cn-north-4.myhuaweicloud.com"


# --- TLS: verification on by default, a CA bundle option, and what a TLS failure means ----------
@pytest.fixture(scope="module")
def self_signed(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A certificate for 127.0.0.1 and its key, made by the openssl command line."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make a test certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = str(folder / "cert.pem"), str(folder / "key.pem")
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
            "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
            "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", key, "-out", cert,
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


class TlsServer:
    """Serves one TLS connection: reads one request, then answers ``answer`` or, if None,
    closes the connection without a byte (a TLS-level drop after the request was sent)."""

    def __init__(self, cert: str, key: str, answer: bytes | None) -> None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.base_url = f"https://127.0.0.1:{self._listener.getsockname()[1]}"
        self.received = threading.Event()
        self._thread = threading.Thread(target=self._serve, args=(context, answer), daemon=True)
        self._thread.start()

    def _serve(self, context: ssl.SSLContext, answer: bytes | None) -> None:
        raw, _ = self._listener.accept()
        try:
            with context.wrap_socket(raw, server_side=True) as conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    data += conn.recv(65536)
                head, _, body = data.partition(b"\r\n\r\n")
                length = next(
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length")
                )
                while len(body) < length:
                    body += conn.recv(65536)
                self.received.set()
                if answer is not None:
                    conn.sendall(answer)
        except (ssl.SSLError, OSError):
            pass  # the client refused our certificate

    def close(self) -> None:
        self._listener.close()
        self._thread.join(timeout=2)


def test_given_an_untrusted_certificate_when_rebooting_then_connect_error_nothing_sent(
    self_signed: tuple[str, str],
) -> None:
    # Given a TLS server whose certificate no default CA signed
    server = TlsServer(*self_signed, answer=None)
    client = BmsClient(server.base_url, AkSkAuth("ak", "sk"), timeout=(2, 2))
    # When
    with pytest.raises(ConnectError) as caught:
        client.batch_reboot(PROJECT, new_ids(1))
    server.close()
    # Then
    assert not caught.value.maybe_accepted
    assert not server.received.is_set()


def test_given_a_ca_bundle_when_the_server_answers_then_the_call_succeeds(
    self_signed: tuple[str, str],
) -> None:
    # Given
    cert, key = self_signed
    answer = b'HTTP/1.1 200 OK\r\nContent-Length: 17\r\nConnection: close\r\n\r\n{"job_id": "tls"}'
    server = TlsServer(cert, key, answer=answer)
    client = BmsClient(server.base_url, AkSkAuth("ak", "sk"), timeout=(2, 2), verify=cert)
    # When
    job_id = client.batch_reboot(PROJECT, new_ids(1))
    server.close()
    # Then
    assert job_id == "tls"


def test_given_tls_closed_after_the_request_when_rebooting_then_maybe_accepted(
    self_signed: tuple[str, str],
) -> None:
    # Given a server that reads the whole request, then closes the TLS connection
    cert, key = self_signed
    server = TlsServer(cert, key, answer=None)
    client = BmsClient(server.base_url, AkSkAuth("ak", "sk"), timeout=(2, 2), verify=cert)
    # When
    with pytest.raises(ConnectionDropped) as caught:
        client.batch_reboot(PROJECT, new_ids(1))
    server.close()
    # Then
    assert server.received.is_set()
    assert caught.value.maybe_accepted


def test_given_two_projects_when_calling_with_tokens_then_one_token_per_project(
    simulator: SimulatorHandle,
) -> None:
    # Given
    other = "fedcba9876543210fedcba9876543210"
    client = BmsClient(simulator.base_url, token_auth(simulator), timeout=(2, 5))
    # When
    for project in (PROJECT, other, PROJECT, other):
        client.batch_reboot(project, new_ids(1))
    # Then: tokens are project-scoped, so the cache is keyed by project
    assert token_calls(simulator) == 2


@pytest.mark.parametrize(
    "error",
    [
        ThrottledError("t", status=429, code="APIGW.0308", request_id="r", retry_after=3.0),
        ConnectionDropped("d", maybe_accepted=True),
        RejectedError("r", status=400, code="BMS.0040"),
    ],
)
def test_given_an_error_when_pickled_then_every_attribute_survives(error: BmsError) -> None:
    # When (Celery and multiprocessing pickle exceptions)
    copy = pickle.loads(pickle.dumps(error))  # noqa: S301 - our own bytes
    # Then
    assert type(copy) is type(error)
    assert vars(copy) == vars(error)
    assert str(copy) == str(error)


# --- servers: the list and one server's details ----------------------------------------------
def test_given_2500_servers_when_iter_servers_then_three_pages_of_1000_are_read_once_each(
    simulator: SimulatorHandle, client: BmsClient
) -> None:
    # Given
    simulator.configure(servers=2500)
    # When
    pages = list(client.iter_servers(PROJECT))
    # Then
    assert [len(p.servers) for p in pages] == [1000, 1000, 500]
    assert {p.count for p in pages} == {2500}
    assert [s.id for p in pages for s in p.servers] == [
        s.id for s in generated_servers(PROJECT, 2500)
    ]
    assert simulator.stats()["calls"]["servers"]["accepted"] == 3


def test_given_an_exact_multiple_of_the_page_when_iter_servers_then_no_empty_page_is_asked(
    simulator: SimulatorHandle, client: BmsClient
) -> None:
    # Given
    simulator.configure(servers=20)
    # When
    pages = list(client.iter_servers(PROJECT, limit=10))
    # Then
    assert [len(p.servers) for p in pages] == [10, 10]
    assert simulator.stats()["calls"]["servers"]["accepted"] == 2


def test_given_iter_servers_when_the_caller_stops_between_pages_then_no_further_call_is_made(
    simulator: SimulatorHandle, client: BmsClient
) -> None:
    # Given
    simulator.configure(servers=30)
    pages = client.iter_servers(PROJECT, limit=10)
    # When
    first = next(pages)
    calls_after_first = simulator.stats()["calls"]["servers"]["accepted"]
    second = next(pages)
    # Then
    assert calls_after_first == 1
    assert [s.name for s in first.servers + second.servers] == [
        f"bms-{i:05d}" for i in range(1, 21)
    ]
    assert simulator.stats()["calls"]["servers"]["accepted"] == 2


@pytest.mark.parametrize(
    ("filters", "matches"),
    [
        ({"tags": "env=prod"}, lambda s: "env=prod" in s.tags),
        ({"tags": "role=db"}, lambda s: "role=db" in s.tags),
        ({"name": "bms-0002"}, lambda s: "bms-0002" in s.name),
        (
            {"enterprise_project_id": ENTERPRISE_PROJECTS[2]},
            lambda s: s.enterprise_project_id == ENTERPRISE_PROJECTS[2],
        ),
        ({"enterprise_project_id": ALL_GRANTED_EPS}, lambda s: True),
        (
            {"flavor": FLAVORS[1], "tags": "env=staging"},
            lambda s: s.flavor == FLAVORS[1] and "env=staging" in s.tags,
        ),
        ({"status": "ACTIVE"}, lambda s: True),
        ({"status": "ERROR"}, lambda s: False),
    ],
)
def test_given_filters_when_list_servers_then_the_api_answers_exactly_the_matching_servers(
    simulator: SimulatorHandle, client: BmsClient, filters: dict[str, str], matches: Any
) -> None:
    # Given
    simulator.configure(servers=120)
    # When
    page = client.list_servers(PROJECT, **filters)
    # Then
    expected = [s.id for s in generated_servers(PROJECT, 120) if matches(s)]
    assert [s.id for s in page.servers] == expected
    assert page.count == len(expected)


def test_given_names_with_spaces_and_symbols_when_listed_by_name_then_signed_and_matched(
    simulator: SimulatorHandle, client: BmsClient, tmp_path: Path
) -> None:
    # Given
    names = ["web 01+a", "web&b=c", "db/1~x", "数据库-1"]
    lines = [json.dumps({"id": str(uuid.uuid4()), "name": n}) for n in names]
    (tmp_path / "fleet.jsonl").write_text("\n".join(lines))
    simulator.configure(inventory=str(tmp_path / "fleet.jsonl"))
    # When
    found = {n: [s.name for s in client.list_servers(PROJECT, name=n).servers] for n in names}
    # Then
    assert found == {n: [n] for n in names}
    assert [s.name for s in client.list_servers(PROJECT, name="web").servers] == names[:2]


def test_given_a_server_when_get_server_then_every_field_is_typed(
    simulator: SimulatorHandle, client: BmsClient
) -> None:
    # Given
    simulator.configure(servers=5)
    spec = generated_server(PROJECT, 5)
    # When
    server = client.get_server(PROJECT, spec.id)
    # Then
    assert (server.id, server.name, server.status) == (spec.id, "bms-00005", "ACTIVE")
    assert server.task_state is None
    assert (server.vm_state, server.power_state) == ("active", 1)
    assert server.locked is False
    assert server.host_status == "UP"
    assert server.tags == spec.tags
    assert server.enterprise_project_id == spec.enterprise_project_id
    assert server.flavor_id == spec.flavor
    assert server.updated is not None
    assert server.updated.tzinfo is not None
    assert server.first_fixed_ipv4() == spec.ip
    assert server.metadata["os_type"] == "Linux"
    assert server == client.list_servers(PROJECT).servers[4]


def test_given_a_rebooting_locked_server_on_a_down_host_when_get_server_then_the_api_says_so(
    simulator: SimulatorHandle, client: BmsClient
) -> None:
    # Given
    simulator.configure(servers=2, job_duration=30)
    server_id = generated_server(PROJECT, 1).id
    before = client.get_server(PROJECT, server_id)
    client.batch_reboot(PROJECT, [server_id])
    simulator.set_server(server_id, locked=True, host_status="DOWN")
    # When
    server = client.get_server(PROJECT, server_id)
    # Then
    assert (server.status, server.task_state) == ("HARD_REBOOT", "reboot_started_hard")
    assert (server.locked, server.host_status) == (True, "DOWN")
    assert server.updated is not None
    assert before.updated is not None
    assert server.updated > before.updated


def test_given_an_unknown_server_when_get_server_then_not_found_bms_0040(
    simulator: SimulatorHandle, client: BmsClient
) -> None:
    # Given
    simulator.configure(servers=2)
    # When
    with pytest.raises(NotFoundError) as raised:
        client.get_server(PROJECT, str(uuid.uuid4()))
    # Then
    assert (raised.value.status, raised.value.code) == (404, "BMS.0040")
    assert raised.value.message == "The server does not exist."
    assert raised.value.maybe_accepted is False


def test_given_a_credential_without_bms_servers_list_when_listing_then_permission_denied(
    simulator: SimulatorHandle, client: BmsClient
) -> None:
    # Given
    simulator.configure(servers=2, denied_permissions=["bms:servers:list"])
    # When
    with pytest.raises(PermissionDeniedError) as raised:
        next(client.iter_servers(PROJECT))
    # Then
    assert (raised.value.status, raised.value.code) == (403, "BMS.0288")
    assert "bms:servers:list" in raised.value.message


def test_given_a_throttled_list_when_listing_then_throttled_error(
    simulator: SimulatorHandle, client: BmsClient
) -> None:
    # Given
    simulator.configure(servers=2, list_rate_limit=1, retry_after=3)
    client.list_servers(PROJECT)
    # When
    with pytest.raises(ThrottledError) as raised:
        client.list_servers(PROJECT)
    # Then
    assert raised.value.code == "APIGW.0308"
    assert raised.value.retry_after == 3


@pytest.mark.parametrize(
    "kwargs",
    [
        {"limit": 0},
        {"limit": 1001},
        {"limit": True},
        {"offset": 0},
        {"offset": -1},
        {"tags": ["env=prod", "role=db"]},
        {"name": ""},
    ],
)
def test_given_a_bad_page_or_filter_when_list_servers_then_value_error_and_nothing_sent(
    simulator: SimulatorHandle, client: BmsClient, kwargs: dict[str, Any]
) -> None:
    # When
    with pytest.raises(ValueError, match=r"limit|offset|must be"):
        client.list_servers(PROJECT, **kwargs)
    # Then
    assert simulator.stats()["calls"]["servers"] == dict.fromkeys(
        ("accepted", "throttled", "rejected", "faulted", "dropped"), 0
    )


def test_given_a_200_without_a_page_when_list_servers_then_protocol_error(
    simulator: SimulatorHandle, client: BmsClient
) -> None:
    # Given the no_job_id fault: an accepted call answered 200 {}
    simulator.configure(servers=2)
    simulator.inject("servers", "no_job_id")
    # When
    with pytest.raises(ProtocolError, match="not a page"):
        client.list_servers(PROJECT)
    # Then a later call reads the page
    assert client.list_servers(PROJECT).count == 2


def test_given_token_auth_when_listing_and_showing_then_both_work(
    simulator: SimulatorHandle,
) -> None:
    # Given
    simulator.configure(servers=3)
    client = BmsClient(simulator.base_url, token_auth(simulator), timeout=(2, 5))
    # When
    page = client.list_servers(PROJECT, tags="env=prod")
    server = client.get_server(PROJECT, page.servers[0].id)
    # Then
    assert [s.name for s in page.servers] == ["bms-00001", "bms-00003"]
    assert server.name == "bms-00001"
    assert token_calls(simulator) == 1


def test_given_the_official_sdk_when_both_list_servers_then_the_request_target_is_the_same(
    capture_server: CaptureServer,  # noqa: F811 - the imported fixture
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Any,
) -> None:
    # Given (the SDK writes an application id under $HOME)
    from huaweicloudsdkbms.v1 import BmsClient as SdkClient
    from huaweicloudsdkbms.v1 import ListBareMetalServersRequest
    from huaweicloudsdkcore.auth.credentials import BasicCredentials

    monkeypatch.setenv("HOME", str(tmp_path))
    capture_server.answer = (200, b'{"servers": [], "count": 0}')
    sdk = (
        SdkClient.new_builder()
        .with_credentials(BasicCredentials("AK", "SK", PROJECT))
        .with_endpoint(capture_server.base_url)
        .build()
    )
    client = BmsClient(capture_server.base_url, AkSkAuth("AK", "SK"))
    query = {"name": "web 01", "tags": "env=prod", "enterprise_project_id": "all_granted_eps"}
    # When
    sdk.list_bare_metal_servers(ListBareMetalServersRequest(limit=1000, offset=2, **query))
    client.list_servers(PROJECT, limit=1000, offset=2, **query)
    # Then
    theirs, ours = capture_server.requests
    assert ours.method == theirs.method == "GET"
    assert ours.target == theirs.target
    assert ours.target.startswith(f"/v1/{PROJECT}/baremetalservers/detail?")
    assert "tags=env%3Dprod" in ours.target
    assert "name=web%2001" in ours.target


def test_given_a_short_page_when_iter_servers_then_reading_ends_though_count_says_more(
    capture_server: CaptureServer,  # noqa: F811 - the imported fixture
) -> None:
    # Given a fleet that shrank while it was read: count 5, one server on the page
    one = {"id": str(uuid.uuid4()), "name": "a", "status": "ACTIVE"}
    capture_server.answer = (200, json.dumps({"servers": [one], "count": 5}).encode())
    client = BmsClient(capture_server.base_url, AkSkAuth("AK", "SK"))
    # When
    pages = list(client.iter_servers(PROJECT, limit=2))
    # Then
    assert len(pages) == 1
    assert len(capture_server.requests) == 1


@pytest.mark.parametrize(
    "answer",
    [
        {"servers": [], "count": "2"},
        {"servers": {}, "count": 0},
        {"count": 0},
        {"servers": [{"name": "no id"}], "count": 1},
        {"servers": ["text"], "count": 1},
    ],
)
def test_given_an_unusable_page_when_list_servers_then_protocol_error(
    capture_server: CaptureServer,  # noqa: F811 - the imported fixture
    answer: dict[str, Any],
) -> None:
    # Given
    capture_server.answer = (200, json.dumps(answer).encode())
    client = BmsClient(capture_server.base_url, AkSkAuth("AK", "SK"))
    # When / Then
    with pytest.raises(ProtocolError):
        client.list_servers(PROJECT)


def test_given_odd_field_types_when_a_server_is_parsed_then_they_read_as_absent() -> None:
    # Given
    raw = {
        "id": "616fb98f-46ca-475e-917e-2563e5a8cd19",
        "name": None,
        "status": None,
        "OS-EXT-STS:task_state": "",
        "OS-EXT-STS:power_state": True,
        "locked": "yes",
        "host_status": None,
        "tags": ["a=b", 3, ""],
        "updated": "yesterday",
        "addresses": {
            "net-a": [
                {"addr": "fe80::1", "version": 6, "OS-EXT-IPS:type": "fixed"},
                {"addr": "192.0.2.7", "version": "4", "OS-EXT-IPS:type": "floating"},
                "junk",
            ],
            "net-b": [{"addr": "10.0.0.9", "version": "4", "OS-EXT-IPS:type": "fixed"}],
            "net-c": "junk",
        },
        "metadata": ["not", "a", "dict"],
        "flavor": "physical.s4",
    }
    # When
    server = ServerDetails.from_api(raw)
    # Then
    assert (server.name, server.status, server.task_state) == ("", "", None)
    assert server.power_state is None
    assert server.locked is False
    assert server.host_status == ""
    assert server.tags == ("a=b",)
    assert server.updated is None
    assert server.first_fixed_ipv4() == "10.0.0.9"
    assert [a.addr for a in server.addresses["net-a"]] == ["fe80::1", "192.0.2.7"]
    assert server.metadata == {}
    assert server.flavor_id is None
    assert ServerDetails.from_api({**raw, "locked": True}).locked is True
    with pytest.raises(ValueError, match="id"):
        ServerDetails.from_api({"name": "no id"})
