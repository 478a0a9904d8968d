"""Credential providers (worker.bms.credentials, .metadata, .agency, .sources) over real HTTP.

Env and file providers read a real environment mapping and real files; the metadata and agency
providers talk to the simulator (its metadata and STS routes), and the refresh rules are shown
with a clock the test moves forward instead of sleeping. Stats of the simulator count every
credential call, so "one refresh", "no call during the backoff" and "no failed call" are read
from the server's own counters.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.simulator import SimulatorHandle
from worker.bms.agency import AgencyCredentials
from worker.bms.client import BmsClient
from worker.bms.credentials import (
    Credential,
    CredentialProvider,
    EnvCredentials,
    FileCredentials,
    StaticCredentials,
)
from worker.bms.errors import (
    AuthenticationError,
    BmsError,
    CredentialError,
    NotFoundError,
    ServerError,
)
from worker.bms.metadata import MetadataCredentials
from worker.bms.signing import AkSkAuth
from worker.bms.sources import PasswordLogin, credentials_from_config
from worker.pipeline.failures import Next, after_submit
from worker.settings import Settings

PROJECT = "0123456789abcdef0123456789abcdef"
AGENCY = "iam::0a1b2c3d4e5f60718293a4b5c6d7e8f9:agency:bms-operator"


class Clock:
    """The real UTC time plus an offset the test moves: expiries come from the simulator's
    real clock, so only the provider's view of "now" is shifted."""

    def __init__(self) -> None:
        self.offset = timedelta(0)

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset


class Monotonic:
    """A monotonic clock that only moves when the test says so (backoff without sleeping)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def calls(sim: SimulatorHandle, route: str) -> int:
    return sum(sim.stats()["calls"][route].values())


def new_ids(n: int = 1) -> list[str]:
    return [str(uuid.uuid4()) for _ in range(n)]


@pytest.fixture
def metadata(simulator: SimulatorHandle) -> Iterator[Callable[..., MetadataCredentials]]:
    """Metadata providers on the simulator, closed after the test."""
    made: list[MetadataCredentials] = []

    def make(**kwargs: Any) -> MetadataCredentials:
        provider = MetadataCredentials(simulator.base_url, timeout=(2.0, 5.0), **kwargs)
        made.append(provider)
        return provider

    yield make
    for provider in made:
        provider.close()


# --- env ----------------------------------------------------------------------------------------
def test_given_named_variables_when_env_credentials_then_ak_sk_and_token_come_from_them() -> None:
    # Given
    environ = {"PROD_AK": "HPUAPROD0000000001", "PROD_SK": "prod-sk", "PROD_TOKEN": "prod-token"}
    # When
    provider = EnvCredentials("PROD_AK", "PROD_SK", "PROD_TOKEN", environ=environ)
    # Then
    assert provider.get() == Credential("HPUAPROD0000000001", "prod-sk", "prod-token")
    assert provider.temporary
    assert provider.describe() == (
        "environment variables PROD_AK and PROD_SK, security token from PROD_TOKEN"
    )


@pytest.mark.parametrize(
    ("environ", "token"),
    [
        ({"HUAWEICLOUD_SDK_AK": "a", "HUAWEICLOUD_SDK_SK": "s"}, None),
        (
            {
                "HUAWEICLOUD_SDK_AK": "a",
                "HUAWEICLOUD_SDK_SK": "s",
                "HUAWEICLOUD_SDK_SECURITY_TOKEN": "t",
            },
            "t",
        ),
    ],
)
def test_given_the_sdk_variables_when_env_credentials_without_names_then_the_token_is_optional(
    environ: dict[str, str], token: str | None
) -> None:
    # Given / When
    provider = EnvCredentials(environ=environ)
    # Then
    assert provider.get() == Credential("a", "s", token)


@pytest.mark.parametrize("missing", ["PROD_AK", "PROD_SK", "PROD_TOKEN"])
def test_given_a_named_variable_unset_when_env_credentials_then_the_error_names_it(
    missing: str,
) -> None:
    # Given
    environ = {"PROD_AK": "a", "PROD_SK": "s", "PROD_TOKEN": "t"}
    del environ[missing]
    # When / Then
    with pytest.raises(CredentialError, match=f"environment variable {missing} is not set"):
        EnvCredentials("PROD_AK", "PROD_SK", "PROD_TOKEN", environ=environ)


def test_given_static_credentials_when_refused_then_refresh_gives_the_same_one() -> None:
    # Given
    provider = StaticCredentials("HPUASTATIC00000001", "static-sk")
    used = provider.get()
    # When
    again = provider.refresh(used)
    # Then: nothing new to send with, so the client does not send again
    assert again == used
    assert not AkSkAuth(provider=provider).invalidate(PROJECT)


# --- file ---------------------------------------------------------------------------------------
CREDENTIALS_FILE = """\
[basic]
ak = HPUABASIC000000001
sk = basic-secret

[prod]
ak = HPUAPROD0000000001
sk = prod-secret
security_token = prod-token
"""


def test_given_a_credentials_file_with_profiles_when_read_then_each_profile_has_its_keys(
    tmp_path: Path,
) -> None:
    # Given
    path = tmp_path / "credentials"
    path.write_text(CREDENTIALS_FILE)
    # When
    default = FileCredentials(path)
    prod = FileCredentials(path, "prod")
    # Then: [basic] is the section the SDK's BasicCredentials read
    assert default.get() == Credential("HPUABASIC000000001", "basic-secret")
    assert prod.get() == Credential("HPUAPROD0000000001", "prod-secret", "prod-token")
    assert prod.describe() == f"credentials file {path}, profile [prod]"


def test_given_no_path_when_file_credentials_then_the_sdk_variable_else_home_decides(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a file named by the SDK's variable, and another under a home directory
    named = tmp_path / "named"
    named.write_text("[basic]\nak = HPUANAMED000000001\nsk = named-secret\n")
    home = tmp_path / "home"
    (home / ".huaweicloud").mkdir(parents=True)
    (home / ".huaweicloud" / "credentials").write_text(CREDENTIALS_FILE)
    monkeypatch.setenv("HOME", str(home))
    # When
    by_variable = FileCredentials(environ={"HUAWEICLOUD_SDK_CREDENTIALS_FILE": str(named)})
    by_home = FileCredentials(environ={})
    # Then
    assert by_variable.get().ak == "HPUANAMED000000001"
    assert by_home.get().ak == "HPUABASIC000000001"
    assert by_home.path == home / ".huaweicloud" / "credentials"


@pytest.mark.parametrize(
    ("content", "profile", "match"),
    [
        (None, "basic", "does not exist"),
        (CREDENTIALS_FILE, "staging", r"has no profile \[staging\] \(its profiles: basic, prod\)"),
        ("[basic]\nak = HPUA0000000000000001\n", "basic", "has no sk"),
        ("[basic]\nsk = s\n", "basic", "has no ak and no sk|has no ak"),
        ("ak = outside any section\n", "basic", "is not an INI file: MissingSectionHeaderError"),
    ],
)
def test_given_a_bad_credentials_file_when_read_then_the_error_says_what_is_wrong(
    tmp_path: Path, content: str | None, profile: str, match: str
) -> None:
    # Given
    path = tmp_path / "credentials"
    if content is not None:
        path.write_text(content)
    # When / Then
    with pytest.raises(CredentialError, match=match):
        FileCredentials(path, profile)


def test_given_a_rewritten_file_when_the_api_refused_the_old_one_then_the_new_one_is_used(
    tmp_path: Path,
) -> None:
    # Given a file read once, then rewritten with a rotated key
    path = tmp_path / "credentials"
    path.write_text(CREDENTIALS_FILE)
    provider = FileCredentials(path)
    old = provider.get()
    path.write_text(CREDENTIALS_FILE.replace("basic-secret", "rotated-secret"))
    # When the API refuses the old one
    new = provider.refresh(old)
    # Then
    assert new == Credential("HPUABASIC000000001", "rotated-secret")
    assert provider.get() == new


# --- metadata -------------------------------------------------------------------------------
def test_given_the_metadata_service_when_asked_then_a_temporary_credential_with_its_expiry(
    simulator: SimulatorHandle, metadata: Callable[..., MetadataCredentials]
) -> None:
    # Given
    simulator.configure(metadata_credential_ttl=600)
    provider = metadata()
    # When
    first, second = provider.get(), provider.get()
    # Then: fetched once (a session token, then the key), kept while far from expiry
    assert first is second
    assert first.temporary
    assert first.expires_at is not None
    assert timedelta(seconds=590) < first.expires_at - datetime.now(UTC) <= timedelta(seconds=600)
    assert (calls(simulator, "metadata_token"), calls(simulator, "securitykey")) == (1, 1)


def test_given_a_credential_within_the_margin_when_asked_then_refreshed_before_it_expires(
    simulator: SimulatorHandle, metadata: Callable[..., MetadataCredentials]
) -> None:
    # Given an hour-long credential and a margin of 15 minutes
    simulator.configure(metadata_credential_ttl=3600)
    clock = Clock()
    provider = metadata(refresh_margin=900, clock=clock)
    first = provider.get()
    # When 44 minutes pass, then 46
    clock.offset = timedelta(minutes=44)
    at_44 = provider.get()
    clock.offset = timedelta(minutes=46)
    at_46 = provider.get()
    # Then: the same credential until 15 minutes are left, a new one after
    assert at_44 is first
    assert at_46 != first
    assert calls(simulator, "securitykey") == 2


def test_given_a_refresh_due_when_threads_ask_at_once_then_one_refresh_serves_them(
    simulator: SimulatorHandle, metadata: Callable[..., MetadataCredentials]
) -> None:
    # Given a valid credential whose refresh is due, and a slow metadata answer
    clock = Clock()
    provider = metadata(refresh_margin=900, clock=clock)
    first = provider.get()
    clock.offset = timedelta(minutes=50)
    simulator.inject("securitykey", "slow", delay=1.0)
    barrier = threading.Barrier(8)
    got: list[Credential] = []

    def ask() -> None:
        barrier.wait()
        got.append(provider.get())

    # When eight threads ask at once
    threads = [threading.Thread(target=ask) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    # Then: one refresh; everyone got a valid credential (the old one while it ran, or the new)
    assert len(got) == 8
    assert calls(simulator, "securitykey") == 2
    clock.offset = timedelta(0)
    fresh = provider.get()
    assert fresh != first
    assert set(got) <= {first, fresh}


def test_given_no_credential_yet_when_threads_ask_at_once_then_they_wait_for_one_fetch(
    simulator: SimulatorHandle, metadata: Callable[..., MetadataCredentials]
) -> None:
    # Given a fresh provider and a slow metadata answer
    provider = metadata()
    simulator.inject("securitykey", "slow", delay=0.5)
    barrier = threading.Barrier(6)
    got: list[Credential] = []

    def ask() -> None:
        barrier.wait()
        got.append(provider.get())

    # When
    threads = [threading.Thread(target=ask) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    # Then
    assert len(got) == 6
    assert len(set(got)) == 1
    assert calls(simulator, "securitykey") == 1


def test_given_a_failing_metadata_service_when_asked_then_retried_after_a_pause_not_in_a_loop(
    simulator: SimulatorHandle, metadata: Callable[..., MetadataCredentials]
) -> None:
    # Given no credential yet and a metadata service that fails once
    monotonic = Monotonic()
    provider = metadata(retry_base=5.0, retry_max=5.0, monotonic=monotonic)
    simulator.inject("securitykey", "5xx")
    # When the first caller fails, and another asks at once
    with pytest.raises(ServerError, match="metadata credential request failed"):
        provider.get()
    with pytest.raises(ServerError, match="metadata credential request failed"):
        provider.get()
    calls_during_pause = calls(simulator, "securitykey")
    # ... and again once the pause is over
    monotonic.now += 5.0
    credential = provider.get()
    # Then: the second caller got the last error without a call; the retry succeeded
    assert calls_during_pause == 1
    assert credential.temporary
    assert calls(simulator, "securitykey") == 2


def test_given_a_failed_refresh_while_the_credential_is_valid_then_the_current_one_is_kept(
    simulator: SimulatorHandle, metadata: Callable[..., MetadataCredentials]
) -> None:
    # Given a credential due for refresh, and a metadata service failing once
    clock, monotonic = Clock(), Monotonic()
    provider = metadata(
        refresh_margin=900, retry_base=5.0, retry_max=5.0, clock=clock, monotonic=monotonic
    )
    first = provider.get()
    clock.offset = timedelta(minutes=50)
    simulator.inject("securitykey", "5xx")
    # When the refresh fails, callers ask during the pause, and after it
    after_failure = provider.get()
    during_pause = provider.get()
    calls_during_pause = calls(simulator, "securitykey")
    monotonic.now += 5.0
    after_pause = provider.get()
    # Then
    assert after_failure is first
    assert during_pause is first
    assert calls_during_pause == 2
    assert after_pause != first


def test_given_a_401_from_the_metadata_service_when_asked_then_a_new_session_token_once(
    simulator: SimulatorHandle, metadata: Callable[..., MetadataCredentials]
) -> None:
    # Given an answer refusing the session token once
    provider = metadata()
    simulator.inject("securitykey", "401")
    # When
    credential = provider.get()
    # Then: the SDK's rule: a new session token, one more try
    assert credential.temporary
    assert calls(simulator, "metadata_token") == 2
    assert calls(simulator, "securitykey") == 2


def test_given_a_host_without_agency_when_asked_then_a_credential_error_says_so(
    simulator: SimulatorHandle, metadata: Callable[..., MetadataCredentials]
) -> None:
    # Given
    simulator.configure(metadata_agency=False)
    provider = metadata()
    # When / Then
    with pytest.raises(CredentialError, match="has no agency"):
        provider.get()


# --- agency ---------------------------------------------------------------------------------
def agency(sim: SimulatorHandle, via: CredentialProvider, **kwargs: Any) -> AgencyCredentials:
    return AgencyCredentials(
        AGENCY, via=via, sts_endpoint=sim.base_url, timeout=(2.0, 5.0), **kwargs
    )


def test_given_permanent_keys_when_an_agency_is_assumed_then_its_credential_signs_bms_calls(
    simulator: SimulatorHandle,
) -> None:
    # Given another account's permanent keys and an agency assumed with them
    provider = agency(simulator, StaticCredentials(simulator.ak, simulator.sk))
    # When
    with BmsClient(simulator.base_url, AkSkAuth(provider=provider)) as client:
        job_id = client.batch_reboot(PROJECT, new_ids(1))
        client.get_job(PROJECT, job_id)
    # Then: one assume, and both BMS calls act as the agency
    stats = simulator.stats()
    assert stats["calls"]["assume_agency"]["accepted"] == 1
    assert stats["signed_with"] == {"permanent": 1, f"agency:{AGENCY}": 2}
    provider.close()


def test_given_metadata_credentials_when_assuming_an_agency_then_chained_for_an_hour(
    simulator: SimulatorHandle, metadata: Callable[..., MetadataCredentials]
) -> None:
    # Given the host's temporary credentials as the caller
    via = metadata()
    # When / Then: more than an hour is refused before any call; an hour works
    with pytest.raises(CredentialError, match="at most 3600"):
        agency(simulator, via, duration_seconds=7200)
    provider = agency(simulator, via, duration_seconds=3600)
    credential = provider.get()
    assert credential.temporary
    assert simulator.stats()["signed_with"] == {"metadata": 1}
    provider.close()


def test_given_an_unknown_agency_when_assumed_then_the_sts_error_comes_back(
    simulator: SimulatorHandle,
) -> None:
    # Given
    simulator.configure(agencies=["iam::1:agency:another"])
    provider = agency(simulator, StaticCredentials(simulator.ak, simulator.sk))
    # When / Then
    with pytest.raises(NotFoundError, match="STS assume-agency request failed") as caught:
        provider.get()
    assert caught.value.code == "STS5.1106"
    assert not caught.value.maybe_accepted


def test_given_a_wrong_caller_key_when_assumed_then_authentication_error(
    simulator: SimulatorHandle,
) -> None:
    # Given
    provider = agency(simulator, StaticCredentials(simulator.ak, "wrong-secret"))
    # When / Then
    with pytest.raises(AuthenticationError, match="STS assume-agency request failed"):
        provider.get()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"duration_seconds": 899}, "within 900..43200"),
        ({"duration_seconds": 43201}, "within 900..43200"),
        ({"duration_seconds": "3600"}, "whole number"),
        ({"session_name": "x"}, "agency_session_name"),
        ({"session_name": "has space"}, "agency_session_name"),
    ],
)
def test_given_bad_agency_parameters_when_built_then_credential_error(
    kwargs: dict[str, Any], match: str
) -> None:
    # Given / When / Then
    with pytest.raises(CredentialError, match=match):
        AgencyCredentials(AGENCY, via=StaticCredentials("HPUA000000000001", "s"), **kwargs)


# --- the factory ------------------------------------------------------------------------------
@pytest.fixture
def settings(simulator: SimulatorHandle) -> Settings:
    return Settings(
        metadata_url=simulator.base_url,
        sts_endpoint=simulator.base_url,
        credentials_refresh_margin=600,
    )


def test_given_each_source_when_built_from_a_dict_then_the_provider_says_where_it_comes_from(
    settings: Settings, tmp_path: Path
) -> None:
    # Given
    path = tmp_path / "credentials"
    path.write_text(CREDENTIALS_FILE)
    environ = {"PROD_AK": "HPUAPROD0000000001", "PROD_SK": "s", "OPS_PASSWORD": "p"}
    build: Callable[[dict[str, Any]], Any] = lambda spec: credentials_from_config(  # noqa: E731
        spec, settings=settings, environ=environ
    )
    # When
    env = build({"source": "env", "ak_env": "PROD_AK", "sk_env": "PROD_SK"})
    file = build({"source": "file", "path": str(path), "profile": "prod"})
    meta = build({"source": "metadata"})
    assumed = build({"source": "agency", "agency_urn": AGENCY, "from": env})
    nested = build(
        {"source": "agency", "agency_urn": AGENCY, "from": {"source": "file", "path": str(path)}}
    )
    login = build(
        {"source": "password", "user": "ops", "domain": "acme", "password_env": "OPS_PASSWORD"}
    )
    # Then
    assert isinstance(env, EnvCredentials)
    assert env.describe() == "environment variables PROD_AK and PROD_SK"
    assert isinstance(file, FileCredentials)
    assert file.get().security_token == "prod-token"
    assert isinstance(meta, MetadataCredentials)
    assert meta.describe() == (
        f"the ECS/BMS metadata service at {settings.metadata_url} (temporary credentials of "
        "the host's agency, refreshed 10 min before expiry)"
    )
    assert isinstance(assumed, AgencyCredentials)
    assert assumed.via is env
    assert assumed.describe() == (
        f"agency {AGENCY} (session bmsreboot, 3600 s) assumed at {settings.sts_endpoint} as "
        "environment variables PROD_AK and PROD_SK"
    )
    assert isinstance(nested, AgencyCredentials)
    assert isinstance(nested.via, FileCredentials)
    assert isinstance(login, PasswordLogin)
    assert login.describe() == (
        "IAM password login of user ops in domain acme (password from OPS_PASSWORD)"
    )
    for made in (meta, assumed, nested):
        made.close()


def test_given_an_agency_from_an_account_name_when_built_then_resolve_finds_its_credentials(
    settings: Settings,
) -> None:
    # Given the credentials of account "prod", found by name
    prod = StaticCredentials("HPUAPROD0000000001", "s")
    accounts: dict[str, Any] = {"prod": prod}
    # When
    built = credentials_from_config(
        {"source": "agency", "agency_urn": AGENCY, "from": "prod"},
        settings=settings,
        resolve=accounts.__getitem__,
    )
    # Then
    assert isinstance(built, AgencyCredentials)
    assert built.via is prod


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ({"ak_env": "A"}, "need a source"),
        ({"source": "vault"}, "unknown credentials source 'vault'"),
        ({"source": "env", "ak": "HPUA0000"}, "unknown key 'ak' for credentials source 'env'"),
        ({"source": "env", "ak_env": "PROD_AK"}, "both ak_env and sk_env"),
        ({"source": "env", "ak_env": "NOPE_AK", "sk_env": "PROD_SK"}, "NOPE_AK is not set"),
        ({"source": "env", "ak_env": 42, "sk_env": "PROD_SK"}, "ak_env must be a non-empty"),
        ({"source": "metadata", "url": "http://x"}, "unknown key 'url'"),
        ({"source": "agency", "from": {"source": "env"}}, "needs agency_urn"),
        ({"source": "agency", "agency_urn": AGENCY}, "needs from"),
        ({"source": "agency", "agency_urn": AGENCY, "from": "staging"}, "names no credentials"),
        (
            {
                "source": "agency",
                "agency_urn": AGENCY,
                "from": {
                    "source": "password",
                    "user": "u",
                    "domain": "d",
                    "password_env": "PROD_SK",
                },
            },
            "not a password login",
        ),
        ({"source": "password", "user": "u"}, "needs user and domain"),
        ({"source": "password", "user": "u", "domain": "d"}, "BMSREBOOT_IAM_PASSWORD is not set"),
    ],
)
def test_given_a_bad_credentials_dict_when_built_then_the_error_names_what_is_wrong(
    settings: Settings, spec: dict[str, Any], match: str
) -> None:
    # Given
    environ = {"PROD_AK": "a", "PROD_SK": "s", "BMSREBOOT_IAM_PASSWORD": ""}
    accounts: dict[str, Any] = {}
    # When / Then
    with pytest.raises(CredentialError, match=match):
        credentials_from_config(
            spec, settings=settings, environ=environ, resolve=accounts.__getitem__
        )


# --- the client with temporary credentials --------------------------------------------------
def test_given_metadata_credentials_that_expire_mid_sequence_when_calling_then_every_call_works(
    simulator: SimulatorHandle, metadata: Callable[..., MetadataCredentials]
) -> None:
    # Given credentials of 1.5 s (refreshed at half their life), a signed token required
    simulator.configure(metadata_credential_ttl=1.5, security_token=True, job_duration=0.2)
    provider = metadata()
    client = BmsClient(simulator.base_url, AkSkAuth(provider=provider), timeout=(2.0, 5.0))
    rebooted: set[str] = set()
    # When rebooting and polling until four credentials have come and gone
    deadline = time.monotonic() + 30
    while calls(simulator, "securitykey") < 4 and time.monotonic() < deadline:
        ids = new_ids(1)
        job_id = client.batch_reboot(PROJECT, ids)
        client.get_job(PROJECT, job_id)
        rebooted.update(ids)
        time.sleep(0.1)
    client.close()
    # Then: every call was accepted, none refused, each server rebooted once
    stats = simulator.stats()
    assert calls(simulator, "securitykey") >= 4
    assert stats["calls"]["action"]["rejected"] == 0
    assert stats["calls"]["jobs"]["rejected"] == 0
    assert stats["calls"]["action"]["accepted"] == len(rebooted)
    assert stats["reboots"] == dict.fromkeys(rebooted, 1)
    assert stats["signed_with"] == {"metadata": 2 * len(rebooted)}


def test_given_a_temporary_credential_refused_early_when_rebooting_then_a_new_one_and_sent_again(
    simulator: SimulatorHandle, metadata: Callable[..., MetadataCredentials]
) -> None:
    # Given a credential the API refuses once (revoked before its expiry)
    provider = metadata()
    client = BmsClient(simulator.base_url, AkSkAuth(provider=provider), timeout=(2.0, 5.0))
    first = provider.get()
    simulator.inject("action", "401")
    ids = new_ids(1)
    # When
    job_id = client.batch_reboot(PROJECT, ids)
    # Then: a new credential, the POST sent once more, the server rebooted once
    assert job_id
    assert provider.get() != first
    assert calls(simulator, "securitykey") == 2
    assert simulator.stats()["reboots"] == {ids[0]: 1}
    client.close()


def test_given_a_refused_credential_and_no_new_one_when_rebooting_then_not_sent_again(
    simulator: SimulatorHandle,
) -> None:
    # Given a static temporary credential (env: nothing new to fetch), refused once
    c = MetadataCredentials(simulator.base_url, timeout=(2.0, 5.0))
    issued = c.get()
    c.close()
    static = StaticCredentials(issued.ak, issued.sk, issued.security_token)
    client = BmsClient(simulator.base_url, AkSkAuth(provider=static), timeout=(2.0, 5.0))
    simulator.inject("action", "401")
    # When / Then
    with pytest.raises(AuthenticationError) as caught:
        client.batch_reboot(PROJECT, new_ids(1))
    assert not caught.value.maybe_accepted
    assert sum(simulator.stats()["calls"]["action"].values()) == 1


def test_given_an_unreachable_metadata_service_when_rebooting_then_not_accepted_and_nothing_sent(
    simulator: SimulatorHandle,
) -> None:
    # Given a metadata URL where nothing listens
    provider = MetadataCredentials("http://127.0.0.1:9", timeout=(1.0, 1.0))
    client = BmsClient(simulator.base_url, AkSkAuth(provider=provider), timeout=(2.0, 5.0))
    # When
    with pytest.raises(BmsError) as caught:
        client.batch_reboot(PROJECT, new_ids(1))
    # Then: the reboot itself never went out, and the pipeline sends it again later
    assert not caught.value.maybe_accepted
    decision = after_submit(caught.value, attempt=1, max_attempts=3, servers=1, isolate=False)
    assert decision is Next.RETRY
    assert sum(simulator.stats()["calls"]["action"].values()) == 0
    client.close()
