"""worker.monitoring against a real Prometheus and a real Alertmanager (the tests' own
throwaway servers): queries that return series, none, or fail; silences created, seen active,
silencing a matching alert, extended, expired; every failure a clear error."""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests

from tests.fixtures.monitoring import AlertmanagerServer, PrometheusServer
from tests.fixtures.waiting import wait_for
from worker.monitoring import (
    AlertmanagerClient,
    Matcher,
    MonitoringRefused,
    MonitoringUnreachable,
    PrometheusClient,
    SilenceNotFound,
    parse_matchers,
)


def wait_for_series(client: PrometheusClient, expr: str, timeout: float = 30) -> None:
    wait_for(lambda: client.query(expr), f"series from {expr}", timeout=timeout)


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections and never answers (a hung server)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield listener.getsockname()[1]


def an_hour() -> tuple[datetime, datetime]:
    now = datetime.now(UTC)
    return now, now + timedelta(hours=1)


# --- Prometheus -------------------------------------------------------------------------------


def test_a_query_that_matches_returns_its_series_with_labels_and_value(
    make_prometheus: Callable[..., PrometheusServer],
) -> None:
    # Given a Prometheus that scrapes a target that is up (itself, as job "prometheus")
    server = make_prometheus(scrape_self=True)
    client = PrometheusClient(server.url)
    # When the query asks for that target once it has been scraped
    wait_for_series(client, 'up{job="prometheus"}')
    (series,) = client.query('up{job="prometheus"}')
    # Then its one series comes back with its labels and value
    assert series.labels == {
        "__name__": "up",
        "job": "prometheus",
        "instance": f"127.0.0.1:{server.port}",
    }
    assert series.value == 1.0
    assert abs(series.timestamp - time.time()) < 60


def test_a_query_that_matches_nothing_returns_no_series(
    make_prometheus: Callable[..., PrometheusServer],
) -> None:
    # Given a running Prometheus
    client = PrometheusClient(make_prometheus().url)
    # When the query selects a series that does not exist, then the answer is empty
    assert client.query('ALERTS{alertstate="firing",severity="critical"}') == []


def test_a_scalar_is_one_series_without_labels(
    make_prometheus: Callable[..., PrometheusServer],
) -> None:
    client = PrometheusClient(make_prometheus().url)
    (series,) = client.query("1 + 1")
    assert (series.labels, series.value) == ({}, 2.0)


def test_an_invalid_expression_is_refused_with_prometheus_s_message(
    make_prometheus: Callable[..., PrometheusServer],
) -> None:
    client = PrometheusClient(make_prometheus().url)
    # When the expression does not parse
    with pytest.raises(MonitoringRefused) as raised:
        client.query("up{")
    # Then the error says so, as Prometheus said it
    assert raised.value.status == 400
    assert "bad_data" in str(raised.value)
    assert "parse error" in str(raised.value)


def test_a_range_vector_is_refused_as_not_an_instant_query(
    make_prometheus: Callable[..., PrometheusServer],
) -> None:
    client = PrometheusClient(make_prometheus().url)
    with pytest.raises(MonitoringRefused, match="not an instant vector"):
        client.query("up[5m]")


def test_a_stopped_prometheus_is_unreachable(
    make_prometheus: Callable[..., PrometheusServer],
) -> None:
    # Given a Prometheus that answered, then stopped
    server = make_prometheus()
    client = PrometheusClient(server.url)
    assert client.query("vector(1)")
    server.stop()
    # When the query is made, then it fails as unreachable, naming the URL
    with pytest.raises(MonitoringUnreachable) as raised:
        client.query("vector(1)")
    assert raised.value.url == f"{server.url}/api/v1/query"
    assert "unreachable" in str(raised.value)


def test_a_server_that_never_answers_times_out(silent_port: int) -> None:
    # Given a server that accepts the connection and never answers
    client = PrometheusClient(f"http://127.0.0.1:{silent_port}", timeout=(1.0, 0.5))
    started = time.monotonic()
    # When the query is made, then it fails as unreachable within its timeout
    with pytest.raises(MonitoringUnreachable, match="no answer"):
        client.query("vector(1)")
    assert time.monotonic() - started < 10


def test_something_that_is_not_prometheus_is_refused(alertmanager: AlertmanagerServer) -> None:
    # Given the URL of an Alertmanager, not a Prometheus
    client = PrometheusClient(alertmanager.url)
    # When the query is made, then the answer is refused as not Prometheus's
    with pytest.raises(MonitoringRefused) as raised:
        client.query("vector(1)")
    assert raised.value.status == 404


# --- Alertmanager -----------------------------------------------------------------------------


def test_a_created_silence_is_active_with_its_matchers_until_expired(
    alertmanager: AlertmanagerServer,
) -> None:
    client = AlertmanagerClient(alertmanager.url)
    starts, ends = an_hour()
    matchers = [Matcher("instance", "node-a|node-b", is_regex=True)]
    # When a silence is created
    silence_id = client.create_silence(
        matchers, starts, ends, "bmsreboot", "request R, batch 0: rebooting"
    )
    # Then Alertmanager holds it, active, as given
    silence = client.get(silence_id)
    assert silence.state == "active"
    assert silence.matchers == matchers
    assert silence.created_by == "bmsreboot"
    assert silence.comment == "request R, batch 0: rebooting"
    assert abs((silence.ends_at - ends).total_seconds()) < 1
    # And once expired, it is expired
    client.expire(silence_id)
    assert client.get(silence_id).state == "expired"


def test_a_silence_silences_the_alerts_its_matchers_match_only(
    alertmanager: AlertmanagerServer,
) -> None:
    client = AlertmanagerClient(alertmanager.url)
    # Given two firing alerts, for a server being rebooted and for another one
    alerts = [
        {
            "labels": {"alertname": "NodeDown", "instance": name},
            "startsAt": an_hour()[0].isoformat(),
        }
        for name in ("node-a", "node-z")
    ]
    requests.post(f"{alertmanager.url}/api/v2/alerts", json=alerts, timeout=10).raise_for_status()
    # When a silence for the rebooted servers is created
    silence_id = client.create_silence(
        parse_matchers('instance=~"node-a|node-b"'), *an_hour(), "bmsreboot", "rebooting"
    )

    # Then Alertmanager suppresses the matching alert by that silence, and not the other
    def suppressed() -> dict[str, Any] | None:
        state = {
            a["labels"]["instance"]: a["status"]
            for a in requests.get(f"{alertmanager.url}/api/v2/alerts", timeout=10).json()
        }
        return state if state.get("node-a", {}).get("state") == "suppressed" else None

    state = wait_for(suppressed, "node-a's alert suppressed")
    assert state["node-a"]["silencedBy"] == [silence_id]
    assert state["node-z"]["state"] == "active"


def test_extending_a_silence_moves_its_end_and_keeps_its_id(
    alertmanager: AlertmanagerServer,
) -> None:
    client = AlertmanagerClient(alertmanager.url)
    starts, ends = an_hour()
    silence_id = client.create_silence([Matcher("instance", "node-a")], starts, ends, "b", "c")
    # When the silence is extended by an hour
    later = ends + timedelta(hours=1)
    kept = client.extend(silence_id, later)
    # Then it is the same silence, still active, ending later, all else kept
    assert kept == silence_id
    silence = client.get(silence_id)
    assert silence.state == "active"
    assert abs((silence.ends_at - later).total_seconds()) < 1
    assert (silence.matchers, silence.created_by, silence.comment) == (
        [Matcher("instance", "node-a")],
        "b",
        "c",
    )


def test_updating_an_expired_silence_makes_a_new_one(alertmanager: AlertmanagerServer) -> None:
    client = AlertmanagerClient(alertmanager.url)
    old = client.create_silence([Matcher("instance", "node-a")], *an_hour(), "b", "c")
    client.expire(old)
    # When the expired silence is extended
    new = client.extend(old, datetime.now(UTC) + timedelta(hours=2))
    # Then Alertmanager made a new, active one (the id to record), and the old stays expired
    assert new != old
    assert client.get(new).state == "active"
    assert client.get(old).state == "expired"


def test_expiring_an_expired_silence_changes_nothing(alertmanager: AlertmanagerServer) -> None:
    client = AlertmanagerClient(alertmanager.url)
    silence_id = client.create_silence([Matcher("instance", "node-a")], *an_hour(), "b", "c")
    client.expire(silence_id)
    client.expire(silence_id)
    assert client.get(silence_id).state == "expired"


def test_an_unknown_silence_is_not_found(alertmanager: AlertmanagerServer) -> None:
    client = AlertmanagerClient(alertmanager.url)
    unknown = str(uuid.uuid4())
    with pytest.raises(SilenceNotFound, match=unknown):
        client.get(unknown)
    with pytest.raises(SilenceNotFound, match=unknown):
        client.expire(unknown)


def test_a_silence_alertmanager_refuses_says_why(alertmanager: AlertmanagerServer) -> None:
    client = AlertmanagerClient(alertmanager.url)
    starts, _ = an_hour()
    # When the silence would end before it starts
    with pytest.raises(MonitoringRefused) as raised:
        client.create_silence(
            [Matcher("instance", "a")], starts, starts - timedelta(hours=1), "b", "c"
        )
    # Then Alertmanager's reason is in the error
    assert raised.value.status == 400
    assert "end time" in str(raised.value).lower()


def test_a_silence_without_matchers_or_time_zone_is_refused_before_any_call() -> None:
    client = AlertmanagerClient("http://127.0.0.1:9")  # nothing listens: no call is made
    starts, ends = an_hour()
    with pytest.raises(ValueError, match="at least one matcher"):
        client.create_silence([], starts, ends, "b", "c")
    with pytest.raises(ValueError, match="no time zone"):
        client.create_silence([Matcher("a", "b")], starts.replace(tzinfo=None), ends, "b", "c")


def test_a_stopped_alertmanager_is_unreachable(alertmanager: AlertmanagerServer) -> None:
    client = AlertmanagerClient(alertmanager.url)
    alertmanager.stop()
    with pytest.raises(MonitoringUnreachable, match="unreachable"):
        client.create_silence([Matcher("instance", "a")], *an_hour(), "b", "c")


# --- matchers -----------------------------------------------------------------------------------


def test_matchers_are_read_as_alertmanager_writes_them() -> None:
    assert parse_matchers('{instance=~"node-a|node-b", job="node", env!="dev", dc!~"x.*"}') == [
        Matcher("instance", "node-a|node-b", is_regex=True),
        Matcher("job", "node"),
        Matcher("env", "dev", is_equal=False),
        Matcher("dc", "x.*", is_regex=True, is_equal=False),
    ]
    assert parse_matchers("severity=critical") == [Matcher("severity", "critical")]
    assert parse_matchers(r'msg="a \"quoted\", value"') == [Matcher("msg", 'a "quoted", value')]
    # A regex's own backslashes stay, as Alertmanager reads them
    assert parse_matchers(r'instance=~"node\.a|node\.b"') == [
        Matcher("instance", r"node\.a|node\.b", is_regex=True)
    ]


@pytest.mark.parametrize("text", ["", "{}", "instance", '=~"x"', 'instance=~"x" job', "a=b,,c=d"])
def test_unreadable_matchers_are_a_clear_error(text: str) -> None:
    with pytest.raises(ValueError, match="matchers"):
        parse_matchers(text)


def test_a_matcher_prints_as_it_is_read() -> None:
    for matcher in parse_matchers(r'a=~"x\.y|z", b!="q\"uote\\", c="two\nlines"'):
        assert parse_matchers(str(matcher)) == [matcher]
