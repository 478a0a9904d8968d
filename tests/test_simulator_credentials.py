"""The simulator's temporary credentials over real HTTP: the metadata service, STS
assume-agency, and the gateway's check of a temporary AK's signed security token.

Every test talks to a fresh simulator (the ``simulator`` fixture) with ``requests`` and the
project's own signer, and checks the wire: status, envelope, codes, counters.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
import requests

from tests.fixtures.simulator import SimulatorHandle
from worker.bms.models import parse_time
from worker.bms.signing import AkSkAuth
from worker.simulator.config import SimulatorConfig, patched
from worker.simulator.server import SimulatorServer
from worker.simulator.sts import issue

PROJECT = "0123456789abcdef0123456789abcdef"
AGENCY = "iam::0a1b2c3d4e5f60718293a4b5c6d7e8f9:agency:bms-operator"


def http(method: str, url: str, **kwargs: Any) -> requests.Response:
    return requests.request(method, url, timeout=kwargs.pop("timeout", 10), **kwargs)


def metadata_token(base_url: str, ttl: str = "21600") -> requests.Response:
    return http(
        "PUT",
        f"{base_url}/meta-data/latest/api/token",
        headers={"X-Metadata-Token-Ttl-Seconds": ttl},
    )


def security_key(base_url: str, token: str | None) -> requests.Response:
    headers = {"X-Metadata-Token": token} if token is not None else {}
    return http("GET", f"{base_url}/openstack/latest/securitykey", headers=headers)


def temporary_credential(base_url: str) -> dict[str, str]:
    token = metadata_token(base_url).text
    answer = security_key(base_url, token)
    assert answer.status_code == 200, answer.text
    credential: dict[str, str] = answer.json()["credential"]
    return credential


def job_url(base_url: str) -> str:
    return f"{base_url}/v1/{PROJECT}/jobs/{uuid.uuid4().hex}"


def reboot_url(base_url: str) -> str:
    return f"{base_url}/v1/{PROJECT}/baremetalservers/action"


def reboot_body() -> dict[str, Any]:
    return {"reboot": {"type": "HARD", "servers": [{"id": str(uuid.uuid4())}]}}


def signed_then_token_added(
    url: str, credential: dict[str, str], token: str
) -> requests.PreparedRequest:
    """A request signed without the token, the token header added after: present, unsigned."""
    request = requests.Request(
        "POST", url, json=reboot_body(), headers={"X-Project-Id": PROJECT}
    ).prepare()
    AkSkAuth(credential["access"], credential["secret"])(request)
    request.headers["X-Security-Token"] = token
    return request


def send(prepared: requests.PreparedRequest) -> requests.Response:
    with requests.Session() as s:
        return s.send(prepared, timeout=10)


def reboot_with(base_url: str, ak: str, sk: str, token: str | None) -> requests.Response:
    return http(
        "POST",
        reboot_url(base_url),
        json=reboot_body(),
        headers={"X-Project-Id": PROJECT},
        auth=AkSkAuth(ak, sk, security_token=token),
    )


def assume(base_url: str, auth: AkSkAuth, body: dict[str, Any] | None = None) -> requests.Response:
    document = body or {"agency_urn": AGENCY, "agency_session_name": "bmsreboot-test"}
    return http("POST", f"{base_url}/v5/agencies/assume", json=document, auth=auth)


# --- the metadata service ---------------------------------------------------------------------
def test_given_a_metadata_token_when_asking_the_securitykey_then_a_temporary_credential(
    simulator: SimulatorHandle,
) -> None:
    # Given
    simulator.configure(metadata_credential_ttl=600)
    token = metadata_token(simulator.base_url)
    # When
    started = time.time()
    answer = security_key(simulator.base_url, token.text)
    # Then: the documented shape, an expiry ttl seconds ahead in the SDK's time format
    assert token.status_code == 200
    assert answer.status_code == 200
    credential = answer.json()["credential"]
    assert set(credential) == {"access", "secret", "securitytoken", "expires_at"}
    assert len(credential["access"]) == 20
    expires_at = parse_time(credential["expires_at"])
    assert expires_at is not None
    assert credential["expires_at"].endswith("Z")
    assert 599 <= expires_at.timestamp() - started <= 601
    calls = simulator.stats()["calls"]
    assert calls["metadata_token"]["accepted"] == 1
    assert calls["securitykey"]["accepted"] == 1


@pytest.mark.parametrize("token", [None, "not-a-token", "e30.AAAA"])
def test_given_no_valid_metadata_token_when_asking_the_securitykey_then_401(
    simulator: SimulatorHandle, token: str | None
) -> None:
    # Given / When
    answer = security_key(simulator.base_url, token)
    # Then
    assert answer.status_code == 401
    assert "Please configure Cloud Service Agency first" not in answer.text
    assert simulator.stats()["calls"]["securitykey"]["rejected"] == 1


@pytest.mark.parametrize("ttl", ["", "0", "21601", "six hours"])
def test_given_a_bad_token_lifetime_when_asking_a_metadata_token_then_400(
    simulator: SimulatorHandle, ttl: str
) -> None:
    # Given / When
    answer = metadata_token(simulator.base_url, ttl)
    # Then
    assert answer.status_code == 400
    assert "X-Metadata-Token-Ttl-Seconds" in answer.text


def test_given_a_host_without_agency_when_asking_the_securitykey_then_401_says_so(
    simulator: SimulatorHandle,
) -> None:
    # Given
    simulator.configure(metadata_agency=False)
    token = metadata_token(simulator.base_url).text
    # When
    answer = security_key(simulator.base_url, token)
    # Then
    assert answer.status_code == 401
    assert answer.text == "Please configure Cloud Service Agency first"


# --- the gateway's check of a temporary AK ----------------------------------------------------
def test_given_a_temporary_credential_signed_with_its_token_when_rebooting_then_accepted(
    simulator: SimulatorHandle,
) -> None:
    # Given
    c = temporary_credential(simulator.base_url)
    # When
    answer = reboot_with(simulator.base_url, c["access"], c["secret"], c["securitytoken"])
    # Then
    assert answer.status_code == 200, answer.text
    assert simulator.stats()["signed_with"] == {"metadata": 1}


def test_given_a_temporary_ak_without_its_token_when_rebooting_then_401_and_nothing_accepted(
    simulator: SimulatorHandle,
) -> None:
    # Given
    c = temporary_credential(simulator.base_url)
    # When
    answer = reboot_with(simulator.base_url, c["access"], c["secret"], None)
    # Then
    assert answer.status_code == 401
    assert answer.json()["error_code"] == "APIGW.0301"
    assert "X-Security-Token" in answer.json()["error_msg"]
    assert simulator.stats()["reboots"] == {}


def test_given_a_temporary_ak_with_its_token_unsigned_when_rebooting_then_401(
    simulator: SimulatorHandle,
) -> None:
    # Given a request signed without the token, which is then added
    c = temporary_credential(simulator.base_url)
    request = signed_then_token_added(reboot_url(simulator.base_url), c, c["securitytoken"])
    # When
    answer = send(request)
    # Then
    assert answer.status_code == 401
    assert answer.json()["error_code"] == "APIGW.0301"
    assert "must be signed" in answer.json()["error_msg"]
    assert simulator.stats()["reboots"] == {}


def test_given_an_expired_temporary_credential_when_rebooting_then_401(
    simulator: SimulatorHandle,
) -> None:
    # Given a credential the simulator issued a minute ago for thirty seconds
    expired = issue(simulator.server.config, "metadata", time.time() - 60, 30)
    # When
    answer = reboot_with(simulator.base_url, expired.ak, expired.sk, expired.security_token)
    # Then
    assert answer.status_code == 401
    assert answer.json()["error_code"] == "APIGW.0301"
    assert "expired" in answer.json()["error_msg"]
    assert simulator.stats()["reboots"] == {}


def test_given_another_credentials_token_when_rebooting_then_401(
    simulator: SimulatorHandle,
) -> None:
    # Given two temporary credentials, the token of the second sent with the first
    first, second = (
        temporary_credential(simulator.base_url),
        temporary_credential(simulator.base_url),
    )
    # When
    answer = reboot_with(
        simulator.base_url, first["access"], first["secret"], second["securitytoken"]
    )
    # Then
    assert answer.status_code == 401
    assert "does not belong" in answer.json()["error_msg"]


def test_given_a_temporary_ak_with_a_wrong_sk_when_rebooting_then_401(
    simulator: SimulatorHandle,
) -> None:
    # Given
    c = temporary_credential(simulator.base_url)
    # When
    answer = reboot_with(simulator.base_url, c["access"], "x" * 40, c["securitytoken"])
    # Then
    assert answer.status_code == 401
    assert "verify aksk signature fail" in answer.json()["error_msg"]


def test_given_the_security_token_check_off_when_the_token_is_missing_or_unsigned_then_accepted(
    simulator: SimulatorHandle,
) -> None:
    # Given the knob off
    simulator.configure(security_token=False)
    c = temporary_credential(simulator.base_url)
    # When
    missing = reboot_with(simulator.base_url, c["access"], c["secret"], None)
    unsigned = send(signed_then_token_added(reboot_url(simulator.base_url), c, c["securitytoken"]))
    # Then
    assert (missing.status_code, unsigned.status_code) == (200, 200)


def test_given_two_simulators_sharing_the_secret_when_one_issues_then_the_other_accepts(
    simulator: SimulatorHandle,
) -> None:
    # Given a second simulator (another region) with the same secret, and a third without it
    with (
        SimulatorServer(SimulatorConfig(action_rate_limit=None)) as region_b,
        SimulatorServer(SimulatorConfig(sts_secret="another-cloud")) as foreign,
    ):
        c = temporary_credential(simulator.base_url)
        # When
        in_b = reboot_with(region_b.base_url, c["access"], c["secret"], c["securitytoken"])
        in_foreign = reboot_with(foreign.base_url, c["access"], c["secret"], c["securitytoken"])
        # Then
        assert in_b.status_code == 200
        assert in_foreign.status_code == 401
        assert region_b.state.stats_json(time.time())["signed_with"] == {"metadata": 1}


# --- STS assume-agency ------------------------------------------------------------------------
def test_given_permanent_keys_when_assuming_an_agency_then_credentials_bound_to_it(
    simulator: SimulatorHandle,
) -> None:
    # Given
    body = {"agency_urn": AGENCY, "agency_session_name": "ops", "duration_seconds": 7200}
    # When
    started = time.time()
    answer = assume(simulator.base_url, AkSkAuth(simulator.ak, simulator.sk), body)
    c = answer.json()["credentials"]
    used = reboot_with(
        simulator.base_url, c["access_key_id"], c["secret_access_key"], c["security_token"]
    )
    # Then: the documented shape, the asked lifetime, and the BMS call acts as the agency
    assert answer.status_code == 200, answer.text
    assert set(c) == {"access_key_id", "secret_access_key", "security_token", "expiration"}
    expiration = parse_time(c["expiration"])
    assert expiration is not None
    assert 7199 <= expiration.timestamp() - started <= 7201
    assert answer.json()["assumed_agency"]["urn"].endswith("bms-operator/ops")
    assert used.status_code == 200
    stats = simulator.stats()
    assert stats["calls"]["assume_agency"]["accepted"] == 1
    assert stats["signed_with"] == {"permanent": 1, f"agency:{AGENCY}": 1}


def test_given_agency_credential_ttl_when_assuming_then_the_credential_lives_that_long(
    simulator: SimulatorHandle,
) -> None:
    # Given
    simulator.configure(agency_credential_ttl=5)
    # When
    started = time.time()
    answer = assume(simulator.base_url, AkSkAuth(simulator.ak, simulator.sk))
    # Then
    expiration = parse_time(answer.json()["credentials"]["expiration"])
    assert expiration is not None
    assert 4 <= expiration.timestamp() - started <= 6


def test_given_a_temporary_caller_when_asking_more_than_an_hour_then_400_else_accepted(
    simulator: SimulatorHandle,
) -> None:
    # Given a caller signing with the metadata service's temporary credential
    c = temporary_credential(simulator.base_url)
    auth = AkSkAuth(c["access"], c["secret"], security_token=c["securitytoken"])
    body = {"agency_urn": AGENCY, "agency_session_name": "chain"}
    # When
    too_long = assume(simulator.base_url, auth, {**body, "duration_seconds": 3601})
    an_hour = assume(simulator.base_url, auth, {**body, "duration_seconds": 3600})
    # Then
    assert too_long.status_code == 400
    assert "3600" in too_long.json()["error_msg"]
    assert an_hour.status_code == 200


@pytest.mark.parametrize(
    "body",
    [
        {"agency_session_name": "ops"},
        {"agency_urn": AGENCY},
        {"agency_urn": AGENCY, "agency_session_name": "o"},
        {"agency_urn": AGENCY, "agency_session_name": "ops", "duration_seconds": 899},
        {"agency_urn": AGENCY, "agency_session_name": "ops", "duration_seconds": 43201},
        {"agency_urn": AGENCY, "agency_session_name": "ops", "duration_seconds": "3600"},
    ],
)
def test_given_a_bad_assume_request_when_sent_then_400_and_nothing_issued(
    simulator: SimulatorHandle, body: dict[str, Any]
) -> None:
    # Given / When
    answer = assume(simulator.base_url, AkSkAuth(simulator.ak, simulator.sk), body)
    # Then
    assert answer.status_code == 400
    assert answer.json()["error_code"] == "STS5.0400"
    assert simulator.stats()["calls"]["assume_agency"]["rejected"] == 1


def test_given_known_agencies_when_assuming_another_then_404_sts5_1106(
    simulator: SimulatorHandle,
) -> None:
    # Given
    simulator.configure(agencies=[AGENCY])
    other = AGENCY.replace("bms-operator", "nobody")
    # When
    known = assume(simulator.base_url, AkSkAuth(simulator.ak, simulator.sk))
    unknown = assume(
        simulator.base_url,
        AkSkAuth(simulator.ak, simulator.sk),
        {"agency_urn": other, "agency_session_name": "ops"},
    )
    # Then
    assert known.status_code == 200
    assert unknown.status_code == 404
    assert unknown.json() == {
        "error_code": "STS5.1106",
        "error_msg": f"the agency '{other}' cannot be found",
        "request_id": unknown.headers["X-Request-Id"],
    }


def test_given_a_wrong_signature_when_assuming_then_401_apigw_0301(
    simulator: SimulatorHandle,
) -> None:
    # Given / When
    answer = assume(simulator.base_url, AkSkAuth(simulator.ak, "wrong-secret"))
    # Then
    assert answer.status_code == 401
    assert answer.json()["error_code"] == "APIGW.0301"


# --- knobs and faults ---------------------------------------------------------------------------
def test_given_the_credential_knobs_as_cli_text_when_patched_then_they_convert() -> None:
    # Given / When
    config = patched(
        SimulatorConfig(),
        {
            "security_token": "off",
            "metadata_agency": "no",
            "metadata_credential_ttl": "5",
            "agency_credential_ttl": "none",
            "agencies": (f"{AGENCY},iam::1:agency:x",),
        },
    )
    # Then
    assert config.security_token is False
    assert config.metadata_agency is False
    assert config.metadata_credential_ttl == 5.0
    assert config.agency_credential_ttl is None
    assert config.agencies == frozenset({AGENCY, "iam::1:agency:x"})
    with pytest.raises(ValueError, match="security_token"):
        patched(SimulatorConfig(), {"security_token": "maybe"})


def test_given_the_config_endpoint_when_read_then_the_sts_secret_is_masked(
    simulator: SimulatorHandle,
) -> None:
    # Given / When
    shown = http("GET", f"{simulator.base_url}/_simulator/config").json()
    # Then
    assert shown["sts_secret"] == "******"
    assert shown["security_token"] is True


def test_given_an_injected_fault_on_the_securitykey_when_asked_then_it_answers_and_is_counted(
    simulator: SimulatorHandle,
) -> None:
    # Given
    token = metadata_token(simulator.base_url).text
    simulator.inject("securitykey", "5xx")
    # When
    faulted = security_key(simulator.base_url, token)
    then_ok = security_key(simulator.base_url, token)
    # Then
    assert (faulted.status_code, then_ok.status_code) == (500, 200)
    counts = simulator.stats()["calls"]["securitykey"]
    assert (counts["faulted"], counts["accepted"]) == (1, 1)
