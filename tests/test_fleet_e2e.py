"""One deployment for a fleet of regions and accounts, with real workers: a fleet file of two
regions (a simulator each) and one account per credential source (``tests/fixtures/regions.py``).
"""

from __future__ import annotations

import re

import pytest

from tests.fixtures.pipeline import new_ids
from tests.fixtures.regions import (
    AGENCY_URN,
    OUTSIDE,
    PROJECTS,
    SECRETS,
    Regions,
    redis_text,
    regions,
)
from worker.simulator.sts import derive_sk, is_security_token

__all__ = ["regions"]  # the fixture

pytestmark = [pytest.mark.slow, pytest.mark.redis, pytest.mark.postgres]


def reboots(regions: Regions) -> tuple[dict[str, int], dict[str, int]]:
    """Each simulator's accepted reboots, server -> count: (east, west)."""
    east, west = (regions.stats(sim)["reboots"] for sim in regions.simulators)
    return east, west


def test_requests_for_a_project_of_each_region_reach_only_that_regions_simulator(
    regions: Regions,
) -> None:
    # Given one account with a project in each region
    regions.configure()
    east_ids, west_ids = new_ids(3), new_ids(2)
    # When a request for each project is sent (one of them naming its region)
    east_request = regions.send(PROJECTS["EAST"], east_ids, region="cn-north-4")
    west_request = regions.send(PROJECTS["WEST"], west_ids)
    east_status, west_status = regions.wait(east_request), regions.wait(west_request)
    # Then each project's calls went to its own region's endpoint, and only there
    assert (east_status["status"], west_status["status"]) == ("succeeded", "succeeded")
    assert reboots(regions) == (dict.fromkeys(east_ids, 1), dict.fromkeys(west_ids, 1))
    assert (east_status["region"], west_status["region"]) == ("cn-north-4", "ap-southeast-1")
    for sim in regions.simulators:
        assert regions.stats(sim)["signed_with"].keys() == {"permanent"}


def test_a_request_for_a_project_outside_the_fleet_file_is_rejected_with_no_api_call(
    regions: Regions,
) -> None:
    # Given a project that no account of the fleet file names
    regions.configure()
    # When a request for it is sent
    status = regions.wait(regions.send(OUTSIDE, new_ids(2)))
    # Then it is recorded rejected, and no simulator saw any call
    assert status["status"] == "rejected"
    assert status["rejection_reasons"] == [
        f"project {OUTSIDE} is not in the fleet file (BMSREBOOT_FLEET_FILE): nothing was sent "
        "to the cloud"
    ]
    assert [regions.calls(sim) for sim in regions.simulators] == [0, 0]


def test_a_request_naming_another_region_than_its_projects_is_rejected_with_no_api_call(
    regions: Regions,
) -> None:
    # Given a project of cn-north-4
    regions.configure()
    # When a request for it says ap-southeast-1
    status = regions.wait(regions.send(PROJECTS["EAST"], new_ids(1), region="ap-southeast-1"))
    # Then
    assert status["status"] == "rejected"
    assert status["rejection_reasons"] == [
        f"project {PROJECTS['EAST']} is in region cn-north-4, not ap-southeast-1"
    ]
    assert [regions.calls(sim) for sim in regions.simulators] == [0, 0]


def test_a_simulator_requiring_a_signed_security_token_accepts_our_temporary_credentials(
    regions: Regions,
) -> None:
    # Given a simulator that requires a temporary AK's signed X-Security-Token, and an account
    # holding a temporary AK/SK and its token in variables
    regions.configure(security_token=True)
    ids = new_ids(2)
    # When
    status = regions.wait(regions.send(PROJECTS["TEMP"], ids))
    # Then every call was accepted, signed with the temporary credential (of the metadata
    # service, where the fixture fetched it)
    assert status["status"] == "succeeded"
    east = regions.stats(regions.east)
    assert east["reboots"] == dict.fromkeys(ids, 1)
    assert east["signed_with"].keys() == {"metadata"}
    assert east["calls"]["action"]["rejected"] == east["calls"]["jobs"]["rejected"] == 0


def test_the_same_temporary_credentials_without_their_token_are_refused_and_nothing_reboots(
    regions: Regions,
) -> None:
    # Given an account with the temporary AK/SK but not its token
    regions.configure(security_token=True)
    # When
    status = regions.wait(regions.send(PROJECTS["TOKENLESS"], new_ids(2)), servers=True)
    # Then the gateway refused it: nothing was accepted, nothing rebooted
    assert status["status"] == "failed"
    east = regions.stats(regions.east)
    assert east["calls"]["action"]["rejected"] >= 1
    assert east["calls"]["action"]["accepted"] == 0
    assert east["reboots"] == {}
    assert {r["error_code"] for r in status["server_results"]} == {"APIGW.0301"}


def test_metadata_credentials_that_expire_mid_run_are_refreshed_with_no_failed_call(
    regions: Regions,
) -> None:
    # Given metadata credentials that live 2 s (an account whose provider has none yet), and a
    # request that lasts longer: 6 batches one after the other, each job 1 s
    regions.configure(metadata_credential_ttl=2.0, job_duration=1.0)
    ids = new_ids(12)
    # When
    status = regions.wait(
        regions.send(PROJECTS["BRIEF"], ids, batch_size=2, max_in_flight=1), timeout=90
    )
    # Then the credential was replaced several times, and no call was refused or sent twice
    assert status["status"] == "succeeded"
    east = regions.stats(regions.east)
    assert len(east["issued"]["metadata"]) >= 3
    assert east["reboots"] == dict.fromkeys(ids, 1)
    for route in ("action", "jobs"):
        assert east["calls"][route]["rejected"] == 0, route
        assert east["calls"][route]["faulted"] == 0, route
    assert east["signed_with"].keys() == {"metadata"}


def test_an_agencys_projects_are_rebooted_by_calls_signed_as_the_agency(
    regions: Regions,
) -> None:
    # Given an account whose credentials are an agency assumed with another account's keys
    regions.configure()
    ids = new_ids(2)
    # When
    status = regions.wait(regions.send(PROJECTS["OPS"], ids))
    # Then its region's BMS calls acted as the agency; the caller's own keys signed STS only
    assert status["status"] == "succeeded"
    west = regions.stats(regions.west)
    assert west["reboots"] == dict.fromkeys(ids, 1)
    assert west["signed_with"][f"agency:{AGENCY_URN}"] >= 2  # the POST and its polls
    assert west["signed_with"].get("permanent", 0) == west["calls"]["assume_agency"]["accepted"]
    assert regions.calls(regions.east) == 0


def test_a_password_account_reboots_with_iam_tokens_of_its_own_region(regions: Regions) -> None:
    # Given an account of an IAM user's password, with a project in ap-southeast-1
    regions.configure()
    ids = new_ids(2)
    # When
    status = regions.wait(regions.send(PROJECTS["LEGACY"], ids))
    # Then its calls carried tokens from that region's IAM
    assert status["status"] == "succeeded"
    west = regions.stats(regions.west)
    assert west["reboots"] == dict.fromkeys(ids, 1)
    assert west["signed_with"].keys() == {"token"}
    assert regions.calls(regions.east) == 0


# --- no secret of any source anywhere ------------------------------------------------------
_TOKEN_LIKE = re.compile(r"[A-Za-z0-9_-]{16,}\.[A-Za-z0-9_-]{43}")
_TEMPORARY_AK = re.compile(r"HSTA[A-Z0-9]{16}")


def test_no_secret_of_any_source_reaches_the_debug_log_the_audit_database_or_redis(
    regions: Regions,
) -> None:
    from sqlalchemy import MetaData, select

    # Given one request for each account: every credential source, and a refused one
    regions.configure(security_token=True)
    requests = [regions.send(project, new_ids(2)) for project in PROJECTS.values()]
    for request_id in requests:
        regions.wait(request_id)
    regions.configure()  # keeps what the simulators issued
    # When everything the worker wrote is read: its DEBUG log, every audit row, Redis
    log = regions.log_path.read_text(errors="replace")
    assert "DEBUG/" in log  # it did log at DEBUG
    metadata = MetaData()
    metadata.reflect(regions.engine)
    with regions.engine.connect() as conn:
        rows = "\n".join(
            str(tuple(row))
            for table in metadata.sorted_tables
            for row in conn.execute(select(table))
        )
    broker = redis_text(regions.broker_url)
    # Then no secret, no temporary credential's SK or token, and no IAM token is in any of them
    tokens = regions.tokens
    secret_of = regions.east.config.sts_secret
    issued_sks = [derive_sk(secret_of, ak) for aks in regions.issued.values() for ak in aks]
    assert regions.issued["metadata"]
    assert regions.issued[f"agency:{AGENCY_URN}"]
    secrets = [
        *SECRETS.values(),
        regions.temporary["TEMP_SK"],
        regions.temporary["TEMP_TOKEN"],
        *issued_sks,
        *tokens,
    ]
    assert tokens  # the password account did log in
    for where, text in (("log", log), ("audit rows", rows), ("redis", broker)):
        for secret in secrets:
            assert secret not in text, where
        assert not [t for t in _TOKEN_LIKE.findall(text) if is_security_token(secret_of, t)], where
        assert not _TEMPORARY_AK.findall(text), where  # an AK shows as its first 4 characters
