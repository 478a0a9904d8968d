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
    ListBareMetalServerDetailsRequest,
    ListBareMetalServersRequest,
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
from huaweicloudsdkcore.auth.internal import MetadataAccessor
from huaweicloudsdkcore.exceptions.exceptions import ClientRequestException
from huaweicloudsdkcore.http.http_config import HttpConfig

from tests.fixtures.simulator import SimulatorHandle
from tests.fixtures.waiting import wait_for
from worker.simulator.config import server_fails
from worker.simulator.inventory import generated_server, generated_servers

PROJECT = "0123456789abcdef0123456789abcdef"


def sid(n: int) -> str:
    return f"00000000-0000-4000-8000-{n:012x}"


@pytest.fixture
def sdk_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The SDK writes $HOME/.huaweicloud/application_id: keep it out of the real home."""
    monkeypatch.setenv("HOME", str(tmp_path))
    return tmp_path


def client(sim: SimulatorHandle, sk: str | None = None, ak: str | None = None) -> Any:
    config = HttpConfig.get_default_config()
    config.timeout = (5, 10)
    return (
        BmsClient.new_builder()
        .with_http_config(config)
        .with_credentials(BasicCredentials(ak or sim.ak, sk or sim.sk, PROJECT))
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


@pytest.mark.usefixtures("sdk_home")
def test_given_the_sdk_when_it_lists_servers_page_by_page_with_a_tag_then_it_reads_every_match(
    simulator: SimulatorHandle,
) -> None:
    # Given 2500 servers, 1250 of them env=prod
    simulator.configure(servers=2500)
    sdk = client(simulator)
    expected = [s.id for s in generated_servers(PROJECT, 2500) if "env=prod" in s.tags]
    # When
    pages = [
        sdk.list_bare_metal_servers(
            ListBareMetalServersRequest(limit=1000, offset=offset, tags="env=prod")
        )
        for offset in (1, 2)
    ]
    # Then
    assert [p.status_code for p in pages] == [200, 200]
    assert {p.count for p in pages} == {1250}
    assert [s.id for p in pages for s in p.servers] == expected
    first = pages[0].servers[0]
    assert first.name == "bms-00001"
    assert first.status == "ACTIVE"
    assert first.locked is False
    assert first.host_status == "UP"
    assert "env=prod" in first.tags
    assert first.os_ext_st_stask_state is None
    assert first.os_ext_st_spower_state == 1
    assert first.flavor.id == generated_server(PROJECT, 1).flavor


@pytest.mark.usefixtures("sdk_home")
def test_given_the_sdk_when_it_shows_a_rebooting_server_then_it_parses_its_details(
    simulator: SimulatorHandle,
) -> None:
    # Given
    simulator.configure(servers=3, job_duration=30)
    spec = generated_server(PROJECT, 2)
    sdk = client(simulator)
    sdk.batch_reboot_baremetal_servers(reboot_request(spec.id))
    # When
    shown = sdk.list_bare_metal_server_details(ListBareMetalServerDetailsRequest(spec.id))
    # Then
    server = shown.server
    assert (server.id, server.name) == (spec.id, "bms-00002")
    assert (server.status, server.os_ext_st_stask_state) == ("HARD_REBOOT", "reboot_started_hard")
    assert server.enterprise_project_id == spec.enterprise_project_id
    (address,) = next(iter(server.addresses.values()))
    assert (address.addr, address.os_ext_ip_stype, address.version) == (spec.ip, "fixed", "4")
    assert server.metadata.os_type == "Linux"


@pytest.mark.usefixtures("sdk_home")
def test_given_an_unknown_server_then_the_sdk_raises_404_bms_0040(
    simulator: SimulatorHandle,
) -> None:
    simulator.configure(servers=3)
    sdk = client(simulator)

    with pytest.raises(ClientRequestException) as raised:
        sdk.list_bare_metal_server_details(ListBareMetalServerDetailsRequest(sid(1)))

    assert raised.value.status_code == 404
    assert raised.value.error_code == "BMS.0040"


# --- temporary credentials: the SDK's own metadata accessor and security token ------------------
def sdk_metadata_credential(sim: SimulatorHandle) -> Any:
    """The SDK's MetadataAccessor (PUT token, GET securitykey), pointed at the simulator."""
    accessor = type("SimulatorMetadata", (MetadataAccessor,), {"_METADATA_ENDPOINT": sim.base_url})
    return accessor().get_credential()


@pytest.mark.usefixtures("sdk_home")
def test_given_the_sdk_metadata_accessor_when_it_asks_then_its_credential_reboots_with_a_token(
    simulator: SimulatorHandle,
) -> None:
    # Given a simulator that requires the signed security token of a temporary AK
    simulator.configure(security_token=True, job_duration=0.05)
    credential = sdk_metadata_credential(simulator)
    config = HttpConfig.get_default_config()
    config.timeout = (5, 10)
    basic = BasicCredentials(credential.access, credential.secret, PROJECT).with_security_token(
        credential.security_token
    )
    sdk = BmsClient.new_builder().with_http_config(config).with_credentials(basic)
    sdk = sdk.with_endpoint(simulator.base_url).build()
    # When the SDK reboots with it
    accepted = sdk.batch_reboot_baremetal_servers(reboot_request(sid(1)))
    # Then: the SDK parsed the metadata answer, and the simulator accepted its signed token
    assert credential.expire_at > 0
    assert wait_terminal(sdk, accepted.job_id).status == "SUCCESS"
    stats = simulator.stats()
    assert stats["calls"]["metadata_token"]["accepted"] == 1
    assert set(stats["signed_with"]) == {"metadata"}
    assert stats["reboots"] == {sid(1): 1}


@pytest.mark.usefixtures("sdk_home")
def test_given_the_sdk_without_the_token_when_it_reboots_then_401_apigw_0301(
    simulator: SimulatorHandle,
) -> None:
    # Given the temporary AK/SK without its security token
    credential = sdk_metadata_credential(simulator)
    sdk = client(simulator, sk=credential.secret, ak=credential.access)
    # When / Then
    with pytest.raises(ClientRequestException) as raised:
        sdk.batch_reboot_baremetal_servers(reboot_request(sid(1)))
    assert raised.value.status_code == 401
    assert raised.value.error_code == "APIGW.0301"
    assert simulator.stats()["reboots"] == {}
