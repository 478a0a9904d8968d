"""deploy/prometheus/alerts.yml: valid for Prometheus (``promtool check rules``), every rule
unit-tested firing and not firing (``promtool test rules alerts.test.yml``), each with a
severity, a summary and a runbook-style description, and every metric it names one the exporter
serves today or one listed as still to come."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from tests.fixtures.monitoring import (
    PLANNED_METRICS,
    exported_metric_names,
    metric_names,
    promtool,
)

ROOT = Path(__file__).resolve().parents[1]
RULES_DIR = ROOT / "deploy" / "prometheus"
RULES = RULES_DIR / "alerts.yml"
RULE_TESTS = RULES_DIR / "alerts.test.yml"


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_the_alert_rules_pass_promtool_check() -> None:
    # When promtool checks the rule file
    result = promtool("check", "rules", str(RULES))
    # Then it is valid, with every rule found
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout


def test_the_alert_rules_pass_their_promtool_unit_tests() -> None:
    # When promtool runs the unit tests of the rules (from their directory, as they name it)
    result = promtool("test", "rules", RULE_TESTS.name, cwd=RULES_DIR)
    # Then every one passes
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_rule_is_unit_tested_both_firing_and_not_firing() -> None:
    # Given the unit tests, and the files they load
    tests = yaml.safe_load(RULE_TESTS.read_text())
    assert tests["rule_files"] == [RULES.name]
    cases = [case for group in tests["tests"] for case in group.get("alert_rule_test", [])]
    # Then each rule has a time it must fire and a time it must not
    for rule in alert_rules():
        mine = [case for case in cases if case["alertname"] == rule["alert"]]
        assert any(case["exp_alerts"] for case in mine), f"{rule['alert']}: never seen firing"
        assert any(not case["exp_alerts"] for case in mine), f"{rule['alert']}: always firing"
    # And no test names a rule that does not exist
    assert {case["alertname"] for case in cases} <= {rule["alert"] for rule in alert_rules()}


def test_every_rule_has_a_severity_a_summary_and_a_runbook_description() -> None:
    names = [rule["alert"] for rule in alert_rules()]
    assert len(names) == len(set(names))
    for rule in alert_rules():
        name = rule["alert"]
        assert re.fullmatch(r"Bmsreboot[A-Z][A-Za-z]+", name), name
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        annotations = rule["annotations"]
        assert set(annotations) == {"summary", "description"}, name
        assert len(annotations["summary"]) <= 100, name
        # A runbook: what it means and what to check, with a bmsreboot command to run
        assert len(annotations["description"]) >= 200, name
        assert "`bmsreboot " in annotations["description"], name


def test_the_rules_cover_what_an_operator_must_hear_about() -> None:
    exprs = {rule["alert"]: rule["expr"] for rule in alert_rules()}
    wanted = {
        "BmsrebootRequestHalted": 'bmsreboot_requests{status="halted"}',
        "BmsrebootServersUnhealthy": 'bmsreboot_servers{status="unhealthy"}',
        "BmsrebootServersUnknown": 'bmsreboot_servers{status="unknown"}',
        "BmsrebootApiThrottled": "bmsreboot_api_throttled_total",
        "BmsrebootNoPolls": "bmsreboot_batches_in_flight",
        "BmsrebootQueueNotDrained": "bmsreboot_queue_messages",
        "BmsrebootReconcilerNotRunning": "bmsreboot_reconcile_last_run_timestamp_seconds",
        "BmsrebootMetricsDown": 'up{job="bmsreboot"} == 0',
        "BmsrebootDeadLetters": "bmsreboot_dead_letters",
    }
    for name, fragment in wanted.items():
        assert fragment in exprs[name], name


def test_every_metric_a_rule_names_is_exported_or_listed_as_coming(tmp_path: Path) -> None:
    # Given the metric names the exporter serves (an exporter on a fresh audit database)
    exported = exported_metric_names(tmp_path)
    # Then each name in a rule is one of them, or one a later change adds (listed)
    for rule in alert_rules():
        unknown = metric_names(rule["expr"]) - exported - PLANNED_METRICS
        assert not unknown, f"{rule['alert']}: {unknown}"
