"""``worker.redis_client``: what a ``sentinel://`` list says, which transport options reach a
redis-py client and celery-redbeat, the error of a Sentinel URL without its master's name,
and the retry of a command that meets a connection error, a timeout or ``READONLY``.

The retries run against real ``redis-server`` processes of the test's own; the wait between
two attempts (``redis.retry.sleep``) is where each test changes the world (starts the
server, resumes it, promotes it), so nothing waits on a clock.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.retry
from celery import Celery
from redbeat.schedulers import get_redis

from tests.fixtures.services import RedisServer, SentinelGroup, free_port, require_redis_server
from worker import redis_client as rc

# --- the URL ---------------------------------------------------------------------------------

PARSED = [
    # (URL, sentinels, password, username, db)
    (
        "sentinel://h:26379;sentinel://h2:26379",
        (("h", 26379), ("h2", 26379)),
        None,
        None,
        0,
    ),
    (
        "sentinel://:pw@h:26379/3;sentinel://:pw@h2:26380/3",
        (("h", 26379), ("h2", 26380)),
        "pw",
        None,
        3,
    ),
    # No port: Sentinel's; credentials percent-decoded; the first URL's count (kombu's rule)
    (
        "sentinel://user:p%40ss@h/2;sentinel://other:x@h2:1",
        (("h", 26379), ("h2", 1)),
        "p@ss",
        "user",
        2,
    ),
    # Spaces around the parts and an empty last part are forgiven
    (" sentinel://h:1 ; sentinel://h2:2 ;", (("h", 1), ("h2", 2)), None, None, 0),
    ("SENTINEL://h:1", (("h", 1),), None, None, 0),
]


@pytest.mark.parametrize(("url", "sentinels", "password", "username", "db"), PARSED)
def test_a_sentinel_list_is_parsed_as_kombu_does(
    url: str,
    sentinels: tuple[tuple[str, int], ...],
    password: str | None,
    username: str | None,
    db: int,
) -> None:
    assert rc.parse_sentinel_url(url) == rc.SentinelAddress(sentinels, password, username, db)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("sentinel://:pw@h:1;redis://:pw@h2:2", "not a sentinel URL: 'h2:2'"),
        ("sentinel://:pw@:1", "not a sentinel URL: ':1'"),
        (";", "a sentinel URL names no sentinel"),
    ],
)
def test_a_bad_sentinel_list_says_which_part_without_its_password(url: str, message: str) -> None:
    with pytest.raises(ValueError, match="sentinel") as caught:
        rc.parse_sentinel_url(url)
    assert str(caught.value) == message
    assert "pw" not in str(caught.value)


@pytest.mark.parametrize(
    ("url", "sentinel"),
    [
        ("sentinel://h:1;sentinel://h2:2", True),
        ("Sentinel://h:1", True),
        ("redis://h:6379/0", False),
        ("rediss://h:6379/0", False),
        ("redis-sentinel://h:26379", False),  # redbeat's form, never the broker's
    ],
)
def test_only_kombus_sentinel_scheme_is_a_sentinel_url(url: str, sentinel: bool) -> None:
    assert rc.is_sentinel_url(url) is sentinel


def test_a_sentinel_url_without_the_masters_name_is_one_clear_line() -> None:
    for options in ({}, {"master_name": ""}, {"master_name": None}, {"visibility_timeout": 3600}):
        with pytest.raises(ValueError, match="needs the master's name") as caught:
            rc.master_name(options)
        message = str(caught.value)
        assert "\n" not in message
        assert "master_name" in message
        assert "BMSREBOOT_BROKER_TRANSPORT_OPTIONS" in message
    assert rc.master_name({"master_name": "mymaster"}) == "mymaster"


def test_a_sentinel_client_is_not_made_without_the_masters_name() -> None:
    with pytest.raises(ValueError, match="needs the master's name"):
        rc.redis_client("sentinel://127.0.0.1:1", {})
    with pytest.raises(ValueError, match="needs the master's name"):
        rc.redbeat_options("sentinel://127.0.0.1:1", {})


# --- the options -----------------------------------------------------------------------------


def test_client_options_default_to_a_dead_primary_noticed_in_seconds() -> None:
    assert rc.client_options({}) == {
        "socket_timeout": rc.SOCKET_TIMEOUT,
        "socket_connect_timeout": rc.SOCKET_TIMEOUT,
        "health_check_interval": rc.HEALTH_CHECK_INTERVAL,
    }


def test_client_options_take_the_operators_timeouts_and_leave_kombus_own() -> None:
    options = {
        "socket_timeout": 2.5,
        "socket_connect_timeout": None,  # not given: the default stays
        "health_check_interval": 10,
        "master_name": "mymaster",
        "visibility_timeout": 3600,
        "queue_order_strategy": "priority",
    }
    assert rc.client_options(options) == {
        "socket_timeout": 2.5,
        "socket_connect_timeout": rc.SOCKET_TIMEOUT,
        "health_check_interval": 10,
    }


def test_a_one_address_client_carries_the_timeouts_and_the_retry() -> None:
    client = rc.redis_client("redis://:pw@127.0.0.1:1/4", {"socket_timeout": 2.5})
    kwargs = client.connection_pool.connection_kwargs
    assert (kwargs["host"], kwargs["port"], kwargs["db"], kwargs["password"]) == (
        "127.0.0.1",
        1,
        4,
        "pw",
    )
    assert kwargs["socket_timeout"] == 2.5
    assert kwargs["socket_connect_timeout"] == rc.SOCKET_TIMEOUT
    assert kwargs["health_check_interval"] == rc.HEALTH_CHECK_INTERVAL
    assert set(kwargs["retry_on_error"]) == set(rc.RETRIED)
    assert kwargs["retry"].get_retries() == rc.retry_policy().get_retries()


def test_a_sentinel_client_asks_every_sentinel_for_the_named_master() -> None:
    client = rc.redis_client(
        "sentinel://:pw@10.0.0.1:26379/2;sentinel://:pw@10.0.0.2:26380/2",
        {"master_name": "mymaster", "socket_timeout": 3, "sentinel_kwargs": {"password": "s"}},
    )
    pool: Any = client.connection_pool
    assert pool.service_name == "mymaster"
    assert (pool.connection_kwargs["db"], pool.connection_kwargs["password"]) == (2, "pw")
    assert pool.connection_kwargs["socket_timeout"] == 3
    assert set(pool.connection_kwargs["retry_on_error"]) == set(rc.RETRIED)
    sentinels = [s.connection_pool.connection_kwargs for s in pool.sentinel_manager.sentinels]
    assert [(s["host"], s["port"]) for s in sentinels] == [("10.0.0.1", 26379), ("10.0.0.2", 26380)]
    # The sentinels' own password and timeouts: from sentinel_kwargs, else the client's
    assert {(s["password"], s["socket_timeout"]) for s in sentinels} == {("s", 3)}


def test_redbeat_gets_the_one_address_and_its_timeouts() -> None:
    assert rc.redbeat_options("redis://:pw@h:6379/1", {"socket_timeout": 2}) == {
        "redbeat_redis_url": "redis://:pw@h:6379/1",
        "redbeat_redis_options": {
            "socket_timeout": 2,
            "socket_connect_timeout": rc.SOCKET_TIMEOUT,
            "health_check_interval": rc.HEALTH_CHECK_INTERVAL,
        },
    }


def test_redbeat_gets_a_redis_sentinel_url_and_the_sentinels_in_its_options() -> None:
    options = {"master_name": "mymaster", "sentinel_kwargs": {"password": "s"}}
    url = "sentinel://u:pw@h:26379/3;sentinel://u:pw@h2:26380/3"
    assert rc.redbeat_options(url, options) == {
        "redbeat_redis_url": "redis-sentinel://h:26379/3",
        "redbeat_redis_options": {
            "socket_timeout": rc.SOCKET_TIMEOUT,
            "sentinels": [["h", 26379], ["h2", 26380]],
            "service_name": "mymaster",
            "db": 3,
            "password": "pw",
            "username": "u",
            "sentinel_kwargs": {"password": "s"},
        },
    }
    # No retry_period: redbeat would stall beat in its own retry loop (worker.beat retries)
    assert "retry_period" not in rc.redbeat_options(url, options)["redbeat_redis_options"]


def test_the_retries_wait_longer_than_a_dcs_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given the jitter at its median
    monkeypatch.setattr("redis.backoff.random.random", lambda: 0.5)
    policy = rc.retry_policy()
    backoff: Any = policy._backoff
    # When every retry is used, the waits add up to RETRY_SECONDS at least
    waits = [backoff.compute(n) for n in range(1, policy.get_retries() + 1)]
    assert sum(waits) >= rc.RETRY_SECONDS
    assert max(waits) == rc.RETRY_CAP


# --- the retries, on real servers ----------------------------------------------------------


class Waits:
    """The waits redis-py's retry asks for between two attempts (``redis.retry.sleep``), from
    :meth:`then` on: recorded, and each runs the actions given to :meth:`then` instead of
    sleeping (an action's own Redis clients, such as ``RedisServer.start``'s, go unrecorded)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.seconds: list[float] = []
        self._actions: list[Callable[[], object]] = []
        self._monkeypatch = monkeypatch
        self._acting = False

    def then(self, action: Callable[[], object]) -> None:
        self._actions.append(action)
        self._monkeypatch.setattr(redis.retry, "sleep", self)

    def __call__(self, seconds: float) -> None:
        if self._acting:
            return
        self.seconds.append(seconds)
        self._acting = True
        try:
            while self._actions:
                self._actions.pop(0)()
        finally:
            self._acting = False


@pytest.fixture
def waits(monkeypatch: pytest.MonkeyPatch) -> Waits:
    return Waits(monkeypatch)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own, not started yet."""
    require_redis_server()
    redis_server = RedisServer(tmp_path / "redis", port=free_port())
    try:
        yield redis_server
    finally:
        redis_server.close()


def test_a_command_meeting_a_refused_connection_waits_for_the_server(
    server: RedisServer, waits: Waits
) -> None:
    # Given a client of an address where nothing answers yet (DCS switching)
    client = rc.redis_client(server.url())
    # When the server comes back during the first wait
    waits.then(server.start)
    # Then the command, retried, reaches it
    assert client.set("k", "v") is True
    assert len(waits.seconds) >= 1
    assert server.running
    assert client.get("k") == b"v"


def test_a_command_meeting_a_timeout_is_sent_again(server: RedisServer, waits: Waits) -> None:
    # Given a connected client, and its server frozen (a primary that stopped answering)
    server.start()
    client = rc.redis_client(server.url(), {"socket_timeout": 0.3})
    assert client.ping()
    assert server.process is not None
    pid = server.process.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        # When the server answers again during the wait after the timeout
        waits.then(lambda: os.kill(pid, signal.SIGCONT))
        # Then the command is sent again on a new connection and answered (each attempt
        # that timed out reached the server too, and ran once it was resumed)
        count = client.incr("n")
        assert waits.seconds
        assert 1 <= count <= len(waits.seconds) + 1
    finally:
        os.kill(pid, signal.SIGCONT)


def test_a_write_meeting_readonly_is_sent_again_to_the_promoted_primary(
    server: RedisServer, waits: Waits
) -> None:
    # Given a client of an address that is a replica now (DCS's old primary, demoted)
    server.start("--replicaof", "127.0.0.1", str(free_port()))
    client = rc.redis_client(server.url())
    admin = redis.Redis(host=server.host, port=server.port)
    # When that address is the primary again by the first wait
    waits.then(lambda: admin.replicaof("NO", "ONE"))
    # Then a script that writes (as the budgets' do) runs there
    assert client.eval("return redis.call('incr', KEYS[1])", 1, "n") == 1
    assert waits.seconds
    admin.close()


def test_an_error_of_the_command_itself_is_not_retried(server: RedisServer, waits: Waits) -> None:
    server.start()
    client = rc.redis_client(server.url())
    client.set("k", "not a number")
    with pytest.raises(redis.ResponseError):
        client.incr("k")
    assert len(waits.seconds) == 0


# --- through real sentinels ----------------------------------------------------------------


@pytest.mark.redis
def test_our_client_and_redbeats_follow_the_promoted_primary(
    sentinel_group: SentinelGroup,
) -> None:
    # Given our client and redbeat's, configured from the same sentinel:// URL
    url, options = sentinel_group.url(1), sentinel_group.transport_options
    ours = rc.redis_client(url, options)
    app = Celery("redbeat-test", set_as_current=False)
    app.conf.update(rc.redbeat_options(url, options))
    theirs = get_redis(app)
    assert ours.set("ours", "1")
    assert theirs.set("theirs", "1")
    primary = redis.Redis(host=sentinel_group.primary.host, port=sentinel_group.primary.port, db=1)
    assert primary.mget("ours", "theirs") == [b"1", b"1"]
    primary.close()
    # When the primary dies and the sentinels promote the replica
    sentinel_group.kill_primary()
    sentinel_group.wait_promoted()
    # Then both write to the replica, the primary now
    assert ours.incr("after") == 1
    assert theirs.incr("after") == 2
    replica = redis.Redis(host=sentinel_group.replica.host, port=sentinel_group.replica.port, db=1)
    assert replica.get("after") == b"2"
    replica.close()
