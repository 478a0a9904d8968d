"""The official Huawei Cloud SDK as an independent client of the simulator.

If the SDK (``huaweicloudsdkbms`` 3.1.219) can sign, send and parse everything the simulator
answers, the simulator speaks the real wire format, not just our own client's idea of it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from huaweicloudsdkbms.v1 import (
    BatchRebootBaremetalServersRequest,
    BatchStartBaremetalServersRequest,
    BatchStopBaremetalServersRequest,
    BmsClient,
    OsStartBody,
    OsStopBody,
    OsStopBodyType,
    RebootBody,
    ServersInfoType,
    ServersList,
    ShowJobInfosRequest,
    StartServersInfo,
)
from huaweicloudsdkcore.auth.credentials import BasicCredentials
from huaweicloudsdkcore.exceptions.exceptions import ClientRequestException
from huaweicloudsdkcore.http.http_config import HttpConfig

from tests.fixtures.simulator import SimulatorHandle
from tests.fixtures.waiting import wait_for
from worker.simulator.config import server_fails

PROJECT = "0123456789abcdef0123456789abcdef"


def sid(n: int) -> str:
    return f"00000000-0000-4000-8000-{n:012x}"


@pytest.fixture
def sdk_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The SDK writes $HOME/.huaweicloud/application_id: keep it out of the real home."""
    monkeypatch.setenv("HOME", str(tmp_path))
    return tmp_path


def client(sim: SimulatorHandle, sk: str | None = None) -> Any:
    config = HttpConfig.get_default_config()
    config.timeout = (5, 10)
    return (
        BmsClient.new_builder()
        .with_http_config(config)
        .with_credentials(BasicCredentials(sim.ak, sk or sim.sk, PROJECT))
        .with_endpoint(sim.base_url)
        .build()
    )


def reboot_request(*ids: str) -> BatchRebootBaremetalServersRequest:
    servers = [ServersList(id=i) for i in ids]
    return BatchRebootBaremetalServersRequest(
        body=RebootBody(reboot=ServersInfoType(type="HARD", servers=servers))
    )


def wait_terminal(sdk: Any, job_id: str) -> Any:
    def ended() -> Any:
        job = sdk.show_job_infos(ShowJobInfosRequest(job_id=job_id))
        return job if job.status in ("SUCCESS", "FAIL") else None

    return wait_for(ended, f"job {job_id} ended", interval=0.02)


@pytest.mark.usefixtures("sdk_home")
def test_given_the_sdk_when_it_reboots_then_it_parses_the_job_and_its_sub_jobs(
    simulator: SimulatorHandle,
) -> None:
    config = simulator.configure(job_duration=0.1, fail_servers=[sid(2)])
    sdk = client(simulator)

    accepted = sdk.batch_reboot_baremetal_servers(reboot_request(sid(1), sid(2)))
    job = wait_terminal(sdk, accepted.job_id)

    assert accepted.status_code == 200
    assert job.status == "FAIL"
    assert job.job_type == "baremetalBatchOperate"
    assert job.entities.sub_jobs_total == 2
    by_server = {sub.entities.server_id: sub for sub in job.entities.sub_jobs}
    for server_id, sub in by_server.items():
        expected = "FAIL" if server_fails(server_id, config) else "SUCCESS"
        assert sub.status == expected
    assert by_server[sid(1)].error_code is None
    assert by_server[sid(2)].error_code == "BMS.0036"
    assert by_server[sid(2)].fail_reason == "Server is powering off, not allow to reboot."
    assert by_server[sid(2)].entities.errorcode_message == by_server[sid(2)].fail_reason
    assert simulator.stats()["reboots"] == {sid(1): 1, sid(2): 1}


@pytest.mark.usefixtures("sdk_home")
def test_given_the_sdk_when_it_starts_and_stops_then_both_jobs_succeed(
    simulator: SimulatorHandle,
) -> None:
    simulator.configure(job_duration=0.05)
    sdk = client(simulator)
    servers = [ServersList(id=sid(1))]

    started = sdk.batch_start_baremetal_servers(
        BatchStartBaremetalServersRequest(body=OsStartBody(os_start=StartServersInfo(servers)))
    )
    stopped = sdk.batch_stop_baremetal_servers(
        BatchStopBaremetalServersRequest(body=OsStopBody(os_stop=OsStopBodyType(servers=servers)))
    )

    assert wait_terminal(sdk, started.job_id).status == "SUCCESS"
    assert wait_terminal(sdk, stopped.job_id).status == "SUCCESS"
    actions = simulator.stats()["actions"]
    assert actions["os-start"] == {sid(1): 1}
    assert actions["os-stop"] == {sid(1): 1}


@pytest.mark.usefixtures("sdk_home")
def test_given_a_wrong_sk_then_the_sdk_raises_401_apigw_0301(simulator: SimulatorHandle) -> None:
    sdk = client(simulator, sk="wrong-secret-key")

    with pytest.raises(ClientRequestException) as raised:
        sdk.batch_reboot_baremetal_servers(reboot_request(sid(1)))

    assert raised.value.status_code == 401
    assert raised.value.error_code == "APIGW.0301"
    assert raised.value.request_id


@pytest.mark.usefixtures("sdk_home")
def test_given_1001_servers_then_the_sdk_raises_400_bms_0205(simulator: SimulatorHandle) -> None:
    sdk = client(simulator)

    with pytest.raises(ClientRequestException) as raised:
        sdk.batch_reboot_baremetal_servers(reboot_request(*(sid(i) for i in range(1001))))

    assert raised.value.status_code == 400
    assert raised.value.error_code == "BMS.0205"
    assert simulator.stats()["reboots"] == {}


@pytest.mark.usefixtures("sdk_home")
def test_given_throttling_then_the_sdk_post_is_not_retried_and_raises_429_apigw_0308(
    simulator: SimulatorHandle,
) -> None:
    simulator.configure(action_rate_limit=1)
    sdk = client(simulator)
    sdk.batch_reboot_baremetal_servers(reboot_request(sid(1)))

    with pytest.raises(ClientRequestException) as raised:
        sdk.batch_reboot_baremetal_servers(reboot_request(sid(2)))

    assert raised.value.status_code == 429
    assert raised.value.error_code == "APIGW.0308"
    assert simulator.stats()["calls"]["action"]["throttled"] == 1
