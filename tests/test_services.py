"""The suite keeps to what it owns: its own Redis server, its own databases on the shared
PostgreSQL, and a cluster of its own for the test that restarts PostgreSQL."""

from __future__ import annotations

from urllib.parse import urlsplit

import psycopg
import pytest
import redis

from tests.fixtures import services
from tests.fixtures.services import PostgresCluster, RedisServer


@pytest.mark.skipif(
    services.EXTERNAL_REDIS_URL is not None, reason="BMSREBOOT_TEST_REDIS_URL names a Redis"
)
def test_the_suite_claims_its_redis_databases_on_a_server_of_its_own(redis_url: str) -> None:
    # Given no BMSREBOOT_TEST_REDIS_URL, when a test claims a Redis database
    port = urlsplit(redis_url).port
    # Then it is on the server this session started, never the machine's shared 6379
    assert services._session_redis is not None
    assert services._session_redis.running
    assert port == services._session_redis.port != 6379
    with redis.Redis.from_url(redis_url) as client:
        assert client.ping()


def test_a_redis_of_a_tests_own_can_be_stopped_and_started_again(
    own_redis: RedisServer,
) -> None:
    client = redis.Redis.from_url(own_redis.url(1), socket_timeout=2)
    client.set("k", "v")
    own_redis.stop()
    with pytest.raises(redis.ConnectionError):
        client.ping()
    own_redis.start()
    # Back on the same port, empty, as after SHUTDOWN NOSAVE
    assert client.ping()
    assert client.get("k") is None
    client.close()


def _shared_postmaster_started() -> object:
    services.require_postgres()
    with psycopg.connect(
        host=services.PG_HOST,
        port=services.PG_PORT,
        user=services.PG_USER,
        dbname="postgres",
        autocommit=True,
    ) as conn:
        row = conn.execute("SELECT pg_postmaster_start_time()").fetchone()
    assert row is not None
    return row[0]


def test_restarting_a_cluster_of_our_own_leaves_the_shared_postgresql_alone(
    own_postgres: PostgresCluster,
) -> None:
    # Given the shared server's start time and a database on our own cluster
    before = _shared_postmaster_started()
    url = own_postgres.create_database()
    name = url.rsplit("/", 1)[1]
    # When our cluster restarts
    own_postgres.restart()
    # Then our database is back, on our port, and the shared server never restarted
    with psycopg.connect(
        host="127.0.0.1", port=own_postgres.port, user="postgres", dbname=name, autocommit=True
    ) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert own_postgres.port != services.PG_PORT
    assert _shared_postmaster_started() == before
