"""``bmsreboot api job PROJECT_ID JOB_ID`` against the simulator, configured by environment."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from tests.fixtures.simulator import SimulatorHandle
from worker.bms.client import BmsClient
from worker.bms.signing import AkSkAuth
from worker.cli.api import api

PROJECT = "0123456789abcdef0123456789abcdef"
#: Everything Settings reads for the client; unset unless a test sets it.
_CLEAN = dict.fromkeys(
    (
        "HUAWEICLOUD_SDK_AK",
        "HUAWEICLOUD_SDK_SK",
        "BMSREBOOT_AK",
        "BMSREBOOT_SK",
        "BMSREBOOT_IAM_USER",
        "BMSREBOOT_IAM_PASSWORD",
        "BMSREBOOT_IAM_DOMAIN",
        "BMSREBOOT_IAM_ENDPOINT",
        "BMSREBOOT_BMS_ENDPOINT",
        "BMSREBOOT_CA_BUNDLE",
    )
)


def run(*args: str, **env: str) -> Result:
    return CliRunner().invoke(api, list(args), env={**_CLEAN, **env})


def aksk_env(sim: SimulatorHandle, sk: str | None = None) -> dict[str, str]:
    return {
        "BMSREBOOT_BMS_ENDPOINT": sim.base_url,
        "HUAWEICLOUD_SDK_AK": sim.ak,
        "HUAWEICLOUD_SDK_SK": sk or sim.sk,
    }


@pytest.fixture
def job_id(simulator: SimulatorHandle) -> str:
    client = BmsClient(simulator.base_url, AkSkAuth(simulator.ak, simulator.sk))
    return client.batch_reboot(PROJECT, [str(uuid.uuid4())])


def test_given_a_job_when_api_job_then_the_apis_json_is_printed_indented(
    simulator: SimulatorHandle, job_id: str
) -> None:
    # When
    result = run("job", PROJECT, job_id, **aksk_env(simulator))
    # Then
    assert result.exit_code == 0, result.stderr
    printed = json.loads(result.stdout)
    assert printed["job_id"] == job_id
    assert printed["entities"]["sub_jobs_total"] == 1
    assert result.stdout.startswith('{\n  "')
    assert simulator.stats()["polls"] == {job_id: 1}


def test_given_iam_login_when_api_job_then_token_auth_works_too(
    simulator: SimulatorHandle, job_id: str
) -> None:
    # When
    result = run(
        "job",
        PROJECT,
        job_id,
        BMSREBOOT_BMS_ENDPOINT=simulator.base_url,
        BMSREBOOT_IAM_ENDPOINT=simulator.base_url,
        BMSREBOOT_IAM_USER=simulator.iam_user,
        BMSREBOOT_IAM_PASSWORD=simulator.iam_password,
        BMSREBOOT_IAM_DOMAIN=simulator.iam_domain,
    )
    # Then
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["job_id"] == job_id


def test_given_an_unknown_job_when_api_job_then_the_error_goes_to_stderr_and_exit_1(
    simulator: SimulatorHandle,
) -> None:
    # When
    result = run("job", PROJECT, "ff80808290a1b2c30190a1f0a9f0dead", **aksk_env(simulator))
    # Then
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.startswith("NotFoundError: status=404 code=")
    assert "message=" in result.stderr
    assert "request_id=" in result.stderr


def test_given_a_wrong_sk_when_api_job_then_authentication_error_without_the_sk(
    simulator: SimulatorHandle, job_id: str
) -> None:
    # When
    result = run("job", PROJECT, job_id, **aksk_env(simulator, sk="SECRET-WRONG-SK-123"))
    # Then
    assert result.exit_code == 1
    assert result.stderr.startswith("AuthenticationError: status=401 code=APIGW.0301")
    assert "SECRET-WRONG-SK-123" not in result.output
    assert simulator.sk not in result.output


def test_given_no_credentials_when_api_job_then_configuration_error() -> None:
    # When
    result = run("job", PROJECT, "abc", BMSREBOOT_BMS_ENDPOINT="http://127.0.0.1:9")
    # Then
    assert result.exit_code == 1
    assert result.stderr.startswith("ConfigurationError: message=no BMS credentials")


def test_given_a_job_id_with_a_slash_when_api_job_then_usage_error(
    simulator: SimulatorHandle,
) -> None:
    # When
    result = run("job", PROJECT, "../../x", **aksk_env(simulator))
    # Then
    assert result.exit_code == 2
    assert "job_id" in result.stderr
    assert sum(simulator.stats()["calls"]["jobs"].values()) == 0


def test_given_a_project_id_that_is_not_32_hex_when_api_job_then_usage_error_and_no_call(
    simulator: SimulatorHandle,
) -> None:
    # When
    result = run("job", "nothex", "abc", **aksk_env(simulator))
    # Then
    assert result.exit_code == 2
    assert "'PROJECT_ID': not a project id (32 hexadecimal characters): 'nothex'" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert sum(simulator.stats()["calls"]["jobs"].values()) == 0


def test_given_a_fleet_file_when_api_job_then_the_projects_account_and_region_are_used(
    simulator: SimulatorHandle, job_id: str, tmp_path: Path
) -> None:
    # Given a fleet file whose region of PROJECT is the simulator, with its keys in variables
    fleet = tmp_path / "fleet.toml"
    fleet.write_text(
        '[[account]]\nname = "prod"\n'
        'credentials = { source = "env", ak_env = "OPS_AK", sk_env = "OPS_SK" }\n'
        f'projects = [{{ id = "{PROJECT}", region = "la-south-2" }}]\n'
        f'[regions."la-south-2"]\nbms = "{simulator.base_url}"\n'
    )
    env = {"BMSREBOOT_FLEET_FILE": str(fleet), "OPS_AK": simulator.ak, "OPS_SK": simulator.sk}
    # When
    result = run("job", PROJECT, job_id, BMSREBOOT_BMS_ENDPOINT="http://127.0.0.1:9", **env)
    # Then the project's region answered (not BMSREBOOT_BMS_ENDPOINT, unused with a fleet file)
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["job_id"] == job_id
    assert simulator.stats()["polls"] == {job_id: 1}
