"""One redis-py client for every Redis URL the broker may have: the API budgets
(``worker.budget``), the metrics' counters (``worker.metrics``, ``bmsreboot metrics``) and
beat's lock (``redbeat_redis_options``, ``worker.celery``) reach the same Redis as the broker,
through the same primary.

Two ways a production Redis keeps its address through a failover:

- **One address** (``redis://`` or ``rediss://``): Huawei Cloud's DCS master/standby, or any
  Redis behind a virtual IP, switches in about 30 s and keeps the address. The client gives up
  a dead connection after ``socket_timeout``, checks an idle one before use
  (``health_check_interval``), and retries a command on a new connection.
- **Sentinel** (``sentinel://host:26379;sentinel://host2:26379``, kombu's form; the master's
  name is ``master_name`` in ``BMSREBOOT_BROKER_TRANSPORT_OPTIONS``): the client asks the
  sentinels for the primary (``redis.sentinel.Sentinel(...).master_for(name)``) and asks again
  when its connection drops or the server it reached says it is a replica now. Our Lua scripts
  write, so they must run on the primary: a replica would answer ``READONLY``.

Either way a command that meets a connection error, a timeout or ``READONLY`` is retried on
a new connection, with exponential backoff and jitter, for about :data:`RETRY_SECONDS`: longer
than Sentinel's election and DCS's switch. A command retried after its answer was lost may
have run twice: a budget slot reserved twice (one slot wasted, never a call too many) or a
counter counted twice (metrics, not the record of work, which is the audit database).

The URL's password is the Redis servers' (as for kombu); the sentinels' own, if they have one,
is ``sentinel_kwargs: {"password": ...}`` in the transport options.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry
from redis.sentinel import Sentinel

_Sentinel: Any = Sentinel

SENTINEL_SCHEMES = ("sentinel",)
REDIS_SCHEMES = ("redis", "rediss", *SENTINEL_SCHEMES)
SENTINEL_PORT = 26379

#: Seconds of retries, at most, before a command's error reaches its caller: more than a
#: Sentinel election (down-after-milliseconds plus the election: seconds) and about DCS's
#: switch (within 30 s).
RETRY_SECONDS = 30.0
RETRY_BASE = 0.1
RETRY_CAP = 2.0
#: Errors after which a command is sent again on a new connection (a replica's READONLY
#: included: the old primary, demoted, keeps its address under a DCS switch).
RETRIED = (RedisConnectionError, RedisTimeoutError, ReadOnlyError)
#: Defaults when the transport options give none: a dead primary is noticed in seconds,
#: not at TCP's timeout, and a connection idle that long is checked before use.
SOCKET_TIMEOUT = 5.0
HEALTH_CHECK_INTERVAL = 25
#: The transport options a redis-py client also takes (the rest are kombu's alone).
CLIENT_OPTIONS = ("socket_timeout", "socket_connect_timeout", "health_check_interval")


def scheme_of(url: str) -> str:
    return url.split("://", 1)[0].lower()


def is_sentinel_url(url: str) -> bool:
    return scheme_of(url) in SENTINEL_SCHEMES


@dataclass(frozen=True)
class SentinelAddress:
    """What a ``sentinel://`` URL (kombu's ``;``-separated list) says."""

    sentinels: tuple[tuple[str, int], ...]
    password: str | None
    username: str | None
    db: int


def parse_sentinel_url(url: str) -> SentinelAddress:
    """The sentinels, credentials and database of ``sentinel://[:pw@]h:p[/db];sentinel://...``
    (the first URL's credentials and database count, as in kombu)."""
    sentinels: list[tuple[str, int]] = []
    password = username = None
    db = 0
    for index, part in enumerate(p.strip() for p in url.split(";") if p.strip()):
        parts = urlsplit(part)
        if parts.scheme.lower() not in SENTINEL_SCHEMES or not parts.hostname:
            raise ValueError(f"not a sentinel URL: {part.split('@')[-1]!r}")
        sentinels.append((parts.hostname, parts.port or SENTINEL_PORT))
        if index == 0:
            password = unquote(parts.password) if parts.password else None
            username = unquote(parts.username) if parts.username else None
            path = parts.path.strip("/")
            db = int(path) if path.isdigit() else 0
    if not sentinels:
        raise ValueError("a sentinel URL names no sentinel")
    return SentinelAddress(tuple(sentinels), password, username or None, db)


def master_name(options: Mapping[str, Any]) -> str:
    name = options.get("master_name")
    if not isinstance(name, str) or not name:
        raise ValueError(
            "a sentinel:// broker URL needs the master's name: "
            'BMSREBOOT_BROKER_TRANSPORT_OPTIONS=\'{"master_name": "mymaster"}\''
        )
    return name


def retry_policy() -> Retry:
    retries = int(RETRY_SECONDS / RETRY_CAP) + 4  # the first few waits are shorter than the cap
    return Retry(ExponentialWithJitterBackoff(cap=RETRY_CAP, base=RETRY_BASE), retries, RETRIED)


def client_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """The connection settings of a redis-py client, from the broker's transport options."""
    chosen: dict[str, Any] = {
        "socket_timeout": SOCKET_TIMEOUT,
        "socket_connect_timeout": SOCKET_TIMEOUT,
        "health_check_interval": HEALTH_CHECK_INTERVAL,
    }
    chosen.update({k: options[k] for k in CLIENT_OPTIONS if options.get(k) is not None})
    return chosen


def redis_client(url: str, options: Mapping[str, Any] | None = None) -> redis.Redis:
    """A client of the Redis primary that ``url`` names (``redis://``, ``rediss://`` or
    ``sentinel://``; ``options``: the broker's transport options), retrying as the module
    says."""
    options = options or {}
    settings = {
        **client_options(options),
        "retry": retry_policy(),
        "retry_on_error": list(RETRIED),
    }
    if not is_sentinel_url(url):
        return redis.Redis.from_url(url, **settings)
    address = parse_sentinel_url(url)
    sentinel_kwargs = dict(options.get("sentinel_kwargs") or {})
    sentinel_kwargs.setdefault("socket_timeout", settings["socket_timeout"])
    sentinel_kwargs.setdefault("socket_connect_timeout", settings["socket_connect_timeout"])
    # redis-py's Sentinel is not typed.
    sentinel: Any = _Sentinel(
        list(address.sentinels),
        min_other_sentinels=int(options.get("min_other_sentinels", 0)),
        sentinel_kwargs=sentinel_kwargs,
        password=address.password,
        username=address.username,
    )
    client: redis.Redis = sentinel.master_for(master_name(options), db=address.db, **settings)
    return client


def redbeat_options(url: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """celery-redbeat's settings for the broker's Redis: ``redbeat_redis_url`` and
    ``redbeat_redis_options``. For Sentinel, redbeat wants a ``redis-sentinel://`` URL and
    the sentinels, master (``service_name``), password and database in its options (its
    README, "Sentinel"); its password is masked where Celery shows the configuration, by its
    key. No ``retry_period``: a command that meets a connection error reaches beat at once,
    which tries again at its next loop (``worker.beat``) rather than stall in redbeat."""
    conf = client_options(options)
    redbeat: dict[str, Any] = {"socket_timeout": conf["socket_timeout"]}
    if not is_sentinel_url(url):
        redbeat.update(
            socket_connect_timeout=conf["socket_connect_timeout"],
            health_check_interval=conf["health_check_interval"],
        )
        return {"redbeat_redis_url": url, "redbeat_redis_options": redbeat}
    address = parse_sentinel_url(url)
    host, port = address.sentinels[0]
    redbeat.update(
        sentinels=[list(s) for s in address.sentinels],
        service_name=master_name(options),
        db=address.db,
    )
    if address.password is not None:
        redbeat["password"] = address.password
    if address.username is not None:
        redbeat["username"] = address.username
    if options.get("sentinel_kwargs"):
        redbeat["sentinel_kwargs"] = dict(options["sentinel_kwargs"])
    return {
        "redbeat_redis_url": f"redis-sentinel://{host}:{port}/{address.db}",
        "redbeat_redis_options": redbeat,
    }
