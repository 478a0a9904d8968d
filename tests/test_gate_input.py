"""The alert gate's input: the message fields, the settings' defaults and schedule entries
(what is refused, and in which words). No service is needed."""

from __future__ import annotations

import datetime as dt
import uuid
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from worker.pipeline.validation import validate_request
from worker.schedules import load_entries
from worker.settings import Settings

PROJECT = "0123456789abcdef0123456789abcdef"


def check(policy: dict[str, Any] | None = None, **payload: Any) -> Any:
    payload.setdefault("request_id", str(uuid.uuid4()))
    payload.setdefault("project_id", PROJECT)
    payload.setdefault("server_ids", [str(uuid.uuid4())])
    return validate_request(payload, max_servers=10, policy_defaults=policy)


def test_a_request_records_its_own_gate() -> None:
    result = check(gate_query=" up == 0 ", gate_exclude="NodeDown|InstanceDown", gate_timeout=600)
    assert result.valid, result.reasons
    assert (result.gate_query, result.gate_exclude, result.gate_timeout) == (
        "up == 0",
        "NodeDown|InstanceDown",
        600.0,
    )


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"gate_exclude": "Node(Down"}, "gate_exclude must be a regular expression (on alertname)"),
        ({"gate_timeout": 0}, "gate_timeout must be a number of seconds up to 86400"),
        ({"gate_timeout": 86401}, "gate_timeout must be a number of seconds up to 86400"),
        ({"gate_timeout": "1h"}, "gate_timeout must be a number of seconds up to 86400"),
        ({"gate_query": "   "}, "gate_query must be a non-empty string"),
        ({"gate_query": "x" * 2001}, "gate_query must be at most 2000 characters"),
    ],
)
def test_a_bad_gate_is_rejected_with_its_reason(fields: dict[str, Any], reason: str) -> None:
    result = check(**fields)
    assert not result.valid
    assert any(r.startswith(reason) for r in result.reasons), result.reasons


def test_with_a_prometheus_every_request_gets_the_deployments_gate() -> None:
    settings = Settings(prometheus_url="http://prometheus:9090", gate_exclude="NodeDown")
    result = check(settings.policy_defaults)
    assert (result.gate_query, result.gate_exclude, result.gate_timeout) == (
        'ALERTS{alertstate="firing",severity="critical"}',
        "NodeDown",
        3600.0,
    )
    # The request's own fields win
    mine = check(settings.policy_defaults, gate_query="up == 0", gate_timeout=60)
    assert (mine.gate_query, mine.gate_exclude, mine.gate_timeout) == ("up == 0", "NodeDown", 60.0)


def test_without_a_prometheus_no_request_is_gated() -> None:
    result = check(Settings().policy_defaults)
    assert result.gate_query is None


def test_a_bad_gate_exclude_setting_is_refused() -> None:
    with pytest.raises(ValidationError, match="not a regular expression"):
        Settings(gate_exclude="(")


def test_a_schedule_entry_carries_a_gate_and_refuses_a_bad_one(tmp_path: Path) -> None:
    base = (
        f'name = "a"\ncron = "0 3 * * *"\nproject_id = "{PROJECT}"\nservers = ["{uuid.uuid4()}"]\n'
    )
    (tmp_path / "good.toml").write_text(
        "[[schedule]]\n" + base + 'gate_query = "up == 0"\ngate_exclude = "NodeDown"\n'
        "gate_timeout = 600\n"
    )
    (entry,), problems = load_entries(tmp_path / "good.toml")
    assert problems == []
    payload = entry.payload(dt.datetime(2026, 12, 1, 3, tzinfo=dt.UTC))
    assert (payload["gate_query"], payload["gate_exclude"], payload["gate_timeout"]) == (
        "up == 0",
        "NodeDown",
        600.0,
    )
    (tmp_path / "bad.toml").write_text(
        "[[schedule]]\n" + base + 'gate_exclude = "Node(Down"\ngate_timeout = 0\n'
    )
    entries, problems = load_entries(tmp_path / "bad.toml")
    assert entries == []
    assert any("gate_exclude must be a regular expression" in p for p in problems), problems
    assert any("gate_timeout must be a number of seconds" in p for p in problems), problems


def test_status_and_watch_show_a_closed_gate_and_nothing_for_an_open_one() -> None:
    from worker.cli.show import gate_line

    gate = {
        "query": "up == 0",
        "exclude": None,
        "timeout": 600.0,
        "closed_since": "2026-12-01T03:00:00+00:00",
        "reason": '1 series from up == 0: up{job="api"}',
        "next_check_at": "2026-12-01T03:00:30+00:00",
    }
    line = gate_line({"status": "running", "gate": gate})
    assert line == (
        'gate: closed since 2026-12-01T03:00:00+00:00: 1 series from up == 0: up{job="api"}; '
        "next check at 2026-12-01T03:00:30+00:00; halts after 600 s closed"
    )
    opened = {**gate, "closed_since": None, "reason": None, "next_check_at": None}
    assert gate_line({"status": "running", "gate": opened}) == ""
    assert gate_line({"status": "running", "gate": None}) == ""
    assert gate_line({"status": "halted", "gate": gate}) == ""
