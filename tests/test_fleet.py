"""The fleet file (worker.fleet): its problems and their lines, `bmsreboot fleet [check]`, the
routing of each project to its account's client of its region, and the projects served (intake
validation, the producer, schedules). Real processes for the CLI and the worker's start."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest
from sqlalchemy import create_engine

from worker.bms.errors import ConfigurationError
from worker.fleet import FleetError, Problem, parse_fleet
from worker.pipeline.runtime import RecordingDispatcher, Runtime, scope_of
from worker.pipeline.validation import validate_request
from worker.schedules import load
from worker.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
EAST = "0123456789abcdef0123456789abcdef"
WEST = "fedcba9876543210fedcba9876543210"
EDGE = "00112233445566778899aabbccddeeff"
ENV = {"PROD_AK": "HPUAPROD0000000001", "PROD_SK": "prod-secret-sk-value"}
GOOD = f"""\
[[account]]
name = "prod"
credentials = {{ source = "env", ak_env = "PROD_AK", sk_env = "PROD_SK" }}
projects = [
  {{ id = "{EAST}", region = "cn-north-4" }},
  {{ id = "{WEST}", region = "ap-southeast-1" }},
]

[[account]]
name = "edge"
credentials = {{ source = "agency", agency_urn = "iam::0a1b2c:agency:ops", from = "prod" }}
projects = [{{ id = "{EDGE}", region = "cn-north-4" }}]

[regions."cn-north-4"]
bms = "http://127.0.0.1:9/east"
"""


def parse(text: str, **environ: str) -> list[Problem]:
    """The problems of a fleet file's text (none: it parses)."""
    try:
        parse_fleet(text, "fleet.toml", Settings(), environ={**ENV, **environ}).close()
    except FleetError as error:
        return error.problems
    return []


def bmsreboot(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("BMSREBOOT_", "PROD_"))}
    return subprocess.run(
        [sys.executable, "-m", "worker", *args],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
    )


# --- the file's problems, each at its line ----------------------------------------------------
ACCOUNT = '[[account]]\nname = "prod"\n'
ENV_CREDENTIALS = 'credentials = { source = "env", ak_env = "PROD_AK", sk_env = "PROD_SK" }\n'


def projects(*items: tuple[str, str]) -> str:
    return (
        "projects = [\n"
        + "".join(f'  {{ id = "{i}", region = "{r}" }},\n' for i, r in items)
        + "]\n"
    )


MISTAKES = {
    "an unknown credentials source": (
        ACCOUNT + 'credentials = { source = "vault" }\n' + projects((EAST, "cn-north-4")),
        3,
        "account 'prod': unknown credentials source 'vault' (one of env, file, metadata, "
        "agency, password)",
    ),
    "a project in two accounts": (
        ACCOUNT
        + ENV_CREDENTIALS
        + projects((EAST, "cn-north-4"))
        + '\n[[account]]\nname = "edge"\ncredentials = { source = "metadata" }\n'
        + projects((EDGE, "cn-north-4"), (EAST, "cn-north-4")),
        13,
        f"project {EAST} is also in account 'prod': a project belongs to one account (line 5)",
    ),
    "a missing environment variable": (
        ACCOUNT
        + 'credentials = { source = "env", ak_env = "PROD_AK", sk_env = "NOT_SET_SK" }\n'
        + projects((EAST, "cn-north-4")),
        3,
        "account 'prod': environment variable NOT_SET_SK is not set",
    ),
    "a project id that is not one": (
        ACCOUNT + ENV_CREDENTIALS + projects((EAST, "cn-north-4"), ("0123-not-hex", "cn-north-4")),
        6,
        "account 'prod': project id '0123-not-hex' must be 32 hexadecimal characters",
    ),
    "a region that is not one": (
        ACCOUNT + ENV_CREDENTIALS + projects((EAST, "CN North 4")),
        5,
        f"account 'prod': project {EAST} needs its region, a region name such as cn-north-4 "
        "(got 'CN North 4')",
    ),
    "an unknown key of an account": (
        ACCOUNT + ENV_CREDENTIALS + 'zone = "a"\n' + projects((EAST, "cn-north-4")),
        4,
        "account 'prod': unknown key 'zone' (its keys: credentials, name, projects)",
    ),
    "an unknown top-level key": (
        "version = 2\n" + ACCOUNT + ENV_CREDENTIALS + projects((EAST, "cn-north-4")),
        1,
        "unknown key 'version' (a fleet file holds [[account]] tables and an optional "
        "[regions] table)",
    ),
    "an agency from an unknown account": (
        ACCOUNT
        + 'credentials = { source = "agency", agency_urn = "iam::1:agency:a", from = "ops" }\n'
        + projects((EAST, "cn-north-4")),
        3,
        "account 'prod': agency from 'ops' names no account of this file (its accounts: prod)",
    ),
    "a cycle of agencies": (
        ACCOUNT
        + 'credentials = { source = "agency", agency_urn = "iam::1:agency:a", from = "ops" }\n'
        + projects((EAST, "cn-north-4"))
        + '[[account]]\nname = "ops"\n'
        + 'credentials = { source = "agency", agency_urn = "iam::1:agency:b", from = "prod" }\n'
        + projects((WEST, "cn-north-4")),
        3,
        "account 'prod': agency from forms a cycle: prod -> ops -> prod",
    ),
    "a region table no project uses": (
        ACCOUNT
        + ENV_CREDENTIALS
        + projects((EAST, "cn-north-4"))
        + '\n[regions."cn-nrth-4"]\nbms = "https://bms.example"\n',
        8,
        'regions."cn-nrth-4" is the region of no project (a typo?)',
    ),
    "an endpoint that is not a URL": (
        ACCOUNT
        + ENV_CREDENTIALS
        + projects((EAST, "cn-north-4"))
        + '\n[regions."cn-north-4"]\niam = "iam.example"\n',
        9,
        "regions.\"cn-north-4\".iam must be an http(s) URL, got 'iam.example'",
    ),
    "an account that serves nothing": (
        ACCOUNT + ENV_CREDENTIALS,
        1,
        "account 'prod' has no projects and assumes no agency for another account: it serves "
        "nothing",
    ),
    "not TOML at all": (
        ACCOUNT + 'credentials = { source = "env"\n',
        3,
        "not valid TOML: Unclosed inline table",
    ),
}


@pytest.mark.parametrize("mistake", list(MISTAKES))
def test_each_mistake_of_a_fleet_file_is_one_problem_at_its_line(mistake: str) -> None:
    # Given a fleet file with one mistake
    text, line, message = MISTAKES[mistake]
    # When it is read / Then it is refused with one problem naming that line
    (problem,) = parse(text)
    assert (problem.line, problem.message) == (line, message)


def test_a_secret_written_where_a_variables_name_belongs_is_refused_without_being_shown() -> None:
    # Given an SK written as the value of sk_env
    sk = "Zx9sQ2mN4bV6cX8zL1kJ3hG5fD7sA9pO0iU2yT4r"
    text = ACCOUNT + f'credentials = {{ source = "env", ak_env = "PROD_AK", sk_env = "{sk}" }}\n'
    # When / Then
    (problem,) = parse(text + projects((EAST, "cn-north-4")))
    assert problem.line == 3
    assert "sk_env must name an environment variable" in problem.message
    assert sk not in problem.message


def test_a_good_fleet_file_gives_each_project_its_account_region_and_endpoints() -> None:
    # Given / When
    fleet = parse_fleet(GOOD, "fleet.toml", Settings(), environ=ENV)
    # Then
    assert {p: (x.account, x.region) for p, x in fleet.projects.items()} == {
        EAST: ("prod", "cn-north-4"),
        WEST: ("prod", "ap-southeast-1"),
        EDGE: ("edge", "cn-north-4"),
    }
    east, west = fleet.regions["cn-north-4"], fleet.regions["ap-southeast-1"]
    assert (east.bms, east.iam) == (
        "http://127.0.0.1:9/east",
        "https://iam.cn-north-4.myhuaweicloud.com",
    )
    assert west.bms == "https://bms.ap-southeast-1.myhuaweicloud.com"
    assert fleet.accounts["edge"].describe().startswith("agency iam::0a1b2c:agency:ops")
    assert "https://sts.cn-north-4.myhuaweicloud.com" in fleet.accounts["edge"].describe()
    fleet.close()


# --- routing -----------------------------------------------------------------------------------
def runtime(fleet: object | None, **settings: object) -> Runtime:
    return Runtime(
        settings=Settings(**settings),  # type: ignore[arg-type]
        engine=create_engine("sqlite://"),
        client=lambda: pytest.fail("the settings' client is not used with a fleet file"),
        dispatcher=RecordingDispatcher(),
        fleet=fleet,  # type: ignore[arg-type]
    )


def test_each_project_gets_the_pooled_client_of_its_account_and_region() -> None:
    # Given a fleet of two accounts, one of them in two regions
    rt = runtime(parse_fleet(GOOD, "fleet.toml", Settings(), environ=ENV))
    # When clients are asked for from many threads at once
    seen: dict[str, set[int]] = {p: set() for p in (EAST, WEST, EDGE)}
    barrier = threading.Barrier(8)

    def ask() -> None:
        barrier.wait()
        for project in seen:
            seen[project].add(id(rt.client_for(project)))

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # Then one client per (account, region), with that region's endpoint
    assert all(len(ids) == 1 for ids in seen.values())
    assert len({next(iter(ids)) for ids in seen.values()}) == 3
    assert rt.client_for(EAST).endpoint == "http://127.0.0.1:9/east"
    assert rt.client_for(WEST).endpoint == "https://bms.ap-southeast-1.myhuaweicloud.com"
    assert (rt.region_for(WEST), rt.endpoint_for(WEST)) == (
        "ap-southeast-1",
        "https://bms.ap-southeast-1.myhuaweicloud.com",
    )
    assert rt.budget_key(EAST, "action") != rt.budget_key(WEST, "action")
    assert rt.fleet is not None
    rt.fleet.close()


def test_a_project_outside_the_fleet_file_gets_no_client() -> None:
    rt = runtime(parse_fleet(GOOD, "fleet.toml", Settings(), environ=ENV))
    outside = uuid.uuid4().hex
    with pytest.raises(ConfigurationError, match=f"project {outside} is not in the fleet file"):
        rt.client_for(outside)


def test_without_a_fleet_file_the_settings_describe_the_one_account() -> None:
    rt = Runtime(
        settings=Settings(region="eu-west-101", bms_endpoint="http://127.0.0.1:9/one"),
        engine=create_engine("sqlite://"),
        client=lambda: "the settings' client",  # type: ignore[arg-type,return-value]
        dispatcher=RecordingDispatcher(),
    )
    assert rt.client_for(EAST) == "the settings' client"
    assert (rt.region_for(EAST), rt.endpoint_for(EAST)) == ("eu-west-101", "http://127.0.0.1:9/one")


# --- the projects served -------------------------------------------------------------------------
def validated(settings: Settings, fleet: object | None, **payload: object) -> list[str]:
    request = {"request_id": str(uuid.uuid4()), "server_ids": [str(uuid.uuid4())], **payload}
    checked = validate_request(request, max_servers=10, **scope_of(settings, fleet))  # type: ignore[arg-type]
    return checked.reasons


def test_a_request_must_name_its_projects_region_as_the_fleet_file_says() -> None:
    fleet = parse_fleet(GOOD, "fleet.toml", Settings(), environ=ENV, credentials=False)
    assert validated(Settings(), fleet, project_id=WEST, region="ap-southeast-1") == []
    assert validated(Settings(), fleet, project_id=WEST.upper(), region="cn-north-4") == [
        f"project {WEST.upper()} is in region ap-southeast-1, not cn-north-4"
    ]


def test_the_fleet_file_and_allowed_projects_both_bound_what_is_served() -> None:
    fleet = parse_fleet(GOOD, "fleet.toml", Settings(), environ=ENV, credentials=False)
    only_east = Settings(allowed_projects=EAST)
    assert validated(only_east, fleet, project_id=EAST) == []
    assert validated(only_east, fleet, project_id=WEST) == [
        f"project {WEST} is not one this deployment serves (BMSREBOOT_ALLOWED_PROJECTS): "
        "nothing was sent to the cloud"
    ]


def test_without_a_fleet_file_a_request_for_another_region_is_rejected() -> None:
    assert (
        validated(Settings(region="cn-north-4"), None, project_id=EAST, region="cn-north-4") == []
    )
    assert validated(Settings(region="cn-north-4"), None, project_id=EAST, region="af-south-1") == [
        "this deployment serves region cn-north-4 (BMSREBOOT_REGION), not af-south-1"
    ]


def test_the_producer_checks_a_request_against_the_fleet_file(tmp_path: Path) -> None:
    from worker.pipeline.producer import build_payload, checked

    # Given a producer configured with the fleet file (it needs none of its credentials)
    path = tmp_path / "fleet.toml"
    path.write_text(GOOD)
    settings = Settings(fleet_file=path)
    outside = uuid.uuid4().hex
    # When / Then
    assert checked(build_payload(EAST, [str(uuid.uuid4())]), settings).valid
    reasons = checked(build_payload(outside, [str(uuid.uuid4())]), settings).reasons
    assert reasons == [
        f"project {outside} is not in the fleet file (BMSREBOOT_FLEET_FILE): nothing was sent "
        "to the cloud"
    ]


def test_a_schedule_entry_for_a_project_outside_the_fleet_file_is_a_problem_of_the_entry(
    tmp_path: Path,
) -> None:
    from worker.fleet import served

    # Given a schedule with an entry for a fleet project and one for another
    outside = uuid.uuid4().hex
    schedule = tmp_path / "schedules.toml"
    server = str(uuid.uuid4())
    schedule.write_text(
        f'[[schedule]]\nname = "east"\ncron = "0 3 * * *"\nproject_id = "{EAST}"\n'
        f'servers = ["{server}"]\n\n'
        f'[[schedule]]\nname = "other"\ncron = "0 3 * * *"\nproject_id = "{outside}"\n'
        f'servers = ["{server}"]\n'
    )
    fleet = parse_fleet(GOOD, "fleet.toml", Settings(), environ=ENV, credentials=False)
    # When
    entries, problems = load(schedule, served=served(Settings(), fleet))
    # Then
    assert [e.name for e in entries] == ["east"]
    assert problems == [
        f"schedule 'other': project_id {outside} is not in the fleet file fleet.toml"
    ]


# --- bmsreboot fleet [check], and the worker's start --------------------------------------------
def test_fleet_check_prints_one_line_per_problem_with_its_line_and_exits_1(tmp_path: Path) -> None:
    # Given a file with three mistakes
    path = tmp_path / "fleet.toml"
    path.write_text(
        ACCOUNT
        + 'credentials = { source = "env", ak_env = "PROD_AK", sk_env = "NOT_SET_SK" }\n'
        + projects((EAST, "cn-north-4"))
        + '[[account]]\nname = "edge"\ncredentials = { source = "vault" }\n'
        + projects((EAST, "cn-north-4"))
    )
    # When
    run = bmsreboot("fleet", "check", str(path), PROD_AK="HPUAPROD0000000001")
    # Then
    assert run.returncode == 1
    assert run.stderr.splitlines() == [
        f"{path}:3: account 'prod': environment variable NOT_SET_SK is not set",
        f"{path}:9: account 'edge': unknown credentials source 'vault' (one of env, file, "
        "metadata, agency, password)",
        f"{path}:11: project {EAST} is also in account 'prod': a project belongs to one account "
        "(line 5)",
    ]
    assert run.stdout == f"{path}: 3 problems\n"


def test_fleet_check_of_a_good_file_prints_a_summary_and_exits_0(tmp_path: Path) -> None:
    path = tmp_path / "fleet.toml"
    path.write_text(GOOD)
    run = bmsreboot("fleet", "check", str(path), **ENV)
    assert (run.returncode, run.stderr) == (0, "")
    assert run.stdout == f"{path}: 2 accounts, 3 projects in 2 regions, no problems\n"


def test_fleet_check_of_a_missing_file_is_one_line_and_exit_1(tmp_path: Path) -> None:
    run = bmsreboot("fleet", "check", str(tmp_path / "nope.toml"))
    assert run.returncode == 1
    assert run.stderr == f"{tmp_path / 'nope.toml'}: no such fleet file\n"
    assert run.stdout == ""


def test_fleet_shows_accounts_regions_and_where_credentials_come_from_never_the_secret(
    tmp_path: Path,
) -> None:
    # Given the fleet file of the deployment
    path = tmp_path / "fleet.toml"
    path.write_text(GOOD)
    # When
    text = bmsreboot("fleet", BMSREBOOT_FLEET_FILE=str(path), **ENV)
    shown = bmsreboot("fleet", "--json", BMSREBOOT_FLEET_FILE=str(path), **ENV)
    # Then
    assert text.returncode == shown.returncode == 0
    lines = text.stdout.splitlines()
    assert lines[0] == f"fleet file {path}: 2 accounts, 3 projects in 2 regions"
    assert "account prod: environment variables PROD_AK and PROD_SK" in lines
    assert f"  project {WEST}  ap-southeast-1" in lines
    assert (
        "region cn-north-4: bms http://127.0.0.1:9/east, iam https://iam.cn-north-4."
        "myhuaweicloud.com, sts https://sts.cn-north-4.myhuaweicloud.com  (from the file: bms)"
    ) in lines
    data = json.loads(shown.stdout)
    assert [a["name"] for a in data["accounts"]] == ["prod", "edge"]
    assert data["accounts"][1]["source"] == "agency"
    for output in (text.stdout + text.stderr, shown.stdout + shown.stderr):
        assert ENV["PROD_SK"] not in output
        assert ENV["PROD_AK"] not in output  # only its first 4 characters, if at all


def test_a_worker_with_a_bad_fleet_file_does_not_start_and_says_why_in_one_line(
    tmp_path: Path,
) -> None:
    # Given a fleet file naming a variable that is not set
    path = tmp_path / "fleet.toml"
    path.write_text(
        ACCOUNT
        + 'credentials = { source = "env", ak_env = "NOT_SET_AK", sk_env = "NOT_SET_SK" }\n'
        + projects((EAST, "cn-north-4"))
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("BMSREBOOT_")}
    env.update(BMSREBOOT_FLEET_FILE=str(path), BMSREBOOT_DATA_DIR=str(tmp_path / "data"))
    # When
    run = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "worker", "worker", "--pool=solo"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=ROOT,
    )
    # Then it ended before consuming anything, naming the file's line
    assert run.returncode != 0
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("bmsreboot: the worker did not start: ")
    assert f"{path}:3: account 'prod': environment variable NOT_SET_AK is not set" in last
    assert " ready." not in run.stdout + run.stderr


def test_fleet_without_a_fleet_file_shows_the_one_account_of_the_settings() -> None:
    # Given the single-account settings of today
    run = bmsreboot(
        "fleet",
        HUAWEICLOUD_SDK_AK=ENV["PROD_AK"],
        HUAWEICLOUD_SDK_SK=ENV["PROD_SK"],
        BMSREBOOT_REGION="ap-southeast-1",
        BMSREBOOT_ALLOWED_PROJECTS=EAST,
    )
    # Then
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == [
        "no fleet file (BMSREBOOT_FLEET_FILE): the settings describe one account",
        "account settings: static AK HPUA**** (HUAWEICLOUD_SDK_AK/HUAWEICLOUD_SDK_SK)",
        f"  projects (BMSREBOOT_ALLOWED_PROJECTS): {EAST}",
        "region ap-southeast-1: bms https://bms.ap-southeast-1.myhuaweicloud.com, iam "
        "https://iam.ap-southeast-1.myhuaweicloud.com, sts "
        "https://sts.ap-southeast-1.myhuaweicloud.com",
    ]
    assert ENV["PROD_SK"] not in run.stdout + run.stderr
