"""The dashboard (deploy/grafana/bmsreboot.json) and the alert rules on real parts: a real
Prometheus scraping a real ``bmsreboot metrics`` exporter of a worker that rebooted servers
against the simulator (Redis and PostgreSQL) returns data for every panel's expression, and
loads and evaluates every alert rule without error. And the dashboard's own shape: a datasource
variable every panel uses, the panels an operator needs, no panel on top of another."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from tests.fixtures.monitoring import (
    PLANNED_METRICS,
    PrometheusServer,
    exported_metric_names,
    metric_names,
    program,
)
from tests.fixtures.pipeline import Pipeline, new_ids
from tests.fixtures.services import free_port
from tests.fixtures.waiting import wait_for

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "deploy" / "grafana" / "bmsreboot.json"
RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
#: Grafana's built-in variables, as literal values a query can be sent with.
GRAFANA_VARIABLES = {
    "$__rate_interval": "1m",
    "$__interval": "15s",
    "$__range": "5m",
}


def dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def panels() -> list[dict[str, Any]]:
    return [p for p in dashboard()["panels"] if p["type"] != "row"]


def expressions() -> list[tuple[str, str]]:
    """(panel title, expression) of every query of the dashboard."""
    return [(p["title"], t["expr"]) for p in panels() for t in p["targets"]]


def literal(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"a template variable left in {expr}"
    return expr


def rule_exprs() -> list[tuple[str, str]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [(r["alert"], r["expr"]) for g in groups for r in g["rules"]]


# --- the dashboard's shape ----------------------------------------------------------------------


def test_every_panel_queries_the_datasource_the_variable_picks() -> None:
    board = dashboard()
    # Given the dashboard's one template variable: a Prometheus data source
    (variable,) = board["templating"]["list"]
    assert (variable["name"], variable["type"], variable["query"]) == (
        "datasource",
        "datasource",
        "prometheus",
    )
    # Then every panel and every query uses it
    wanted = {"type": "prometheus", "uid": "${datasource}"}
    for panel in panels():
        assert panel["datasource"] == wanted, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == wanted, panel["title"]
            assert target["expr"].strip(), panel["title"]


def test_the_dashboard_is_one_grafana_provisions_by_its_uid() -> None:
    board = dashboard()
    assert board["uid"] == "bmsreboot"
    assert board["id"] is None  # Grafana gives its own
    assert board["schemaVersion"] >= 39  # Grafana 11
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in panels():
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]


def test_no_panel_lies_on_another() -> None:
    taken: dict[tuple[int, int], str] = {}
    for panel in dashboard()["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in taken, f"{panel['title']} lies on {taken[(x, y)]}"
                taken[(x, y)] = panel["title"]


def test_the_dashboard_shows_what_an_operator_watches() -> None:
    used = {name for _, expr in expressions() for name in metric_names(expr)}
    assert {
        "bmsreboot_requests",
        "bmsreboot_servers",
        "bmsreboot_batches_in_flight",
        "bmsreboot_api_calls_total",
        "bmsreboot_api_throttled_total",
        "bmsreboot_budget_wait_seconds_bucket",
        "bmsreboot_detection_delay_seconds_bucket",
        "bmsreboot_polls_per_job_bucket",
        "bmsreboot_oldest_unfinished_batch_seconds",
        "bmsreboot_dead_letters",
        "bmsreboot_verify_seconds_bucket",
        "bmsreboot_webhook_deliveries_total",
    } <= used
    # Counters and histograms are shown as rates over Grafana's own interval
    for title, expr in expressions():
        for window in re.findall(r"\[([^\]]+)\]", expr):
            assert window == "$__rate_interval", f"{title}: [{window}]"


def test_every_metric_the_dashboard_names_is_exported_or_listed_as_coming(
    tmp_path: Path,
) -> None:
    exported = exported_metric_names(tmp_path)
    for title, expr in expressions():
        unknown = metric_names(expr) - exported - PLANNED_METRICS
        assert not unknown, f"{title}: {unknown}"


# --- on a real Prometheus scraping a real exporter ----------------------------------------------


@pytest.fixture(scope="module")
def scraped(
    pipeline_redis_pg: Pipeline, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PrometheusServer]:
    """A Prometheus (scraping and evaluating each second, alerts.yml loaded) that scrapes
    ``bmsreboot metrics`` of a worker that has just rebooted 30 servers."""
    program("prometheus")
    pipe = pipeline_redis_pg
    port = free_port()
    log = tmp_path_factory.mktemp("exporter") / "metrics.log"
    with log.open("ab") as out:
        exporter = subprocess.Popen(  # our own command on a free port
            [sys.executable, "-m", "worker", "metrics", "--host", "127.0.0.1", "--port", str(port)],
            env=pipe.env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    server = PrometheusServer(
        tmp_path_factory.mktemp("prometheus"),
        jobs={"bmsreboot": [f"127.0.0.1:{port}"]},
        rule_files=[RULES],
    )
    try:
        server.start()
        # Some traffic first, so that every counter and histogram has series
        pipe.configure(job_duration=0.3)
        status = pipe.wait(pipe.send(server_ids=new_ids(30), batch_size=10))
        assert status["status"] == "succeeded", status
        wait_until(server, 'up{job="bmsreboot"} == 1', log)
        yield server
    finally:
        server.close()
        exporter.terminate()
        exporter.wait(timeout=20)


def wait_until(server: PrometheusServer, expr: str, log: Path, timeout: float = 60) -> None:
    def answered() -> bool:
        answer = server.query(expr)
        assert answer["status"] == "success", answer
        return bool(answer["data"]["result"])

    wait_for(
        answered,
        f"data from {expr}",
        timeout=timeout,
        interval=0.25,
        details=lambda: (
            f"exporter log:\n{log.read_text(errors='replace')[-2000:]}\n"
            f"prometheus log:\n{server.log()[-2000:]}"
        ),
    )


@pytest.mark.slow
@pytest.mark.redis
@pytest.mark.postgres
def test_every_dashboard_expression_returns_data_from_the_exporter(
    scraped: PrometheusServer,
) -> None:
    # Given Prometheus scraping the exporter after a run
    for title, expr in expressions():
        query = literal(expr)
        if metric_names(expr) & PLANNED_METRICS:
            # A panel of a metric a later change adds: a valid query, no data yet
            answer = scraped.query(query)
            assert answer["status"] == "success", f"{title}: {query}: {answer}"
            continue

        # When its query runs, then it returns series (once two scrapes make a rate)
        def answered(query: str = query, title: str = title) -> bool:
            answer = scraped.query(query)
            assert answer["status"] == "success", f"{title}: {query}: {answer}"
            return bool(answer["data"]["result"])

        wait_for(answered, f"{title}: data from {query}", interval=0.25)


@pytest.mark.slow
@pytest.mark.redis
@pytest.mark.postgres
def test_every_alert_rule_expression_evaluates_without_error(scraped: PrometheusServer) -> None:
    # When each rule's expression is queried, then Prometheus evaluates it without error
    for name, expr in rule_exprs():
        answer = scraped.query(expr)
        assert answer["status"] == "success", f"{name}: {answer}"
        assert not answer.get("warnings"), f"{name}: {answer['warnings']}"


@pytest.mark.slow
@pytest.mark.redis
@pytest.mark.postgres
def test_prometheus_loads_every_rule_and_evaluates_each_healthy(
    scraped: PrometheusServer,
) -> None:
    expected = {name for name, _ in rule_exprs()}
    unevaluated: list[set[str]] = [expected]

    def all_evaluated() -> dict[str, Any] | None:
        # Given the rules Prometheus loaded from alerts.yml
        groups = requests.get(f"{scraped.url}/api/v1/rules", timeout=10).json()["data"]["groups"]
        rules = {r["name"]: r for g in groups for r in g["rules"]}
        assert set(rules) == expected
        evaluated = {n for n, r in rules.items() if not r["lastEvaluation"].startswith("0001")}
        unevaluated[0] = expected - evaluated
        return rules if evaluated == expected else None

    rules = wait_for(
        all_evaluated,
        "every rule evaluated",
        interval=0.25,
        details=lambda: f"never evaluated: {unevaluated[0]}",
    )
    # Then each was evaluated with no error
    for name, rule in rules.items():
        assert rule["health"] == "ok", f"{name}: {rule.get('lastError')}"
        assert not rule.get("lastError"), name
    # And a healthy run makes none of them fire, or even pend
    alerts = scraped.query('ALERTS{alertname=~"Bmsreboot.*"}')
    assert alerts["data"]["result"] == [], alerts
