"""The order in which a worker reads its queues on Redis: intake first, then submit, then poll
(``queue_order_strategy = "priority"`` in ``worker.celery``), on a real Redis."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from kombu import Consumer, Message, Queue

from worker.celery import celery_config, make_celery_app
from worker.names import INTAKE_QUEUE, POLL_QUEUE, QUEUES
from worker.settings import Settings


def test_the_embedded_broker_gets_no_queue_order_option(tmp_path: Path) -> None:
    # kombu's SQLAlchemy transport hands its options to create_engine(), which refuses them
    assert celery_config(Settings(data_dir=tmp_path))["broker_transport_options"] == {}


def test_a_worker_reads_the_intake_queue_before_the_follow_ups(
    redis_url: str, tmp_path: Path
) -> None:
    app = make_celery_app(Settings(data_dir=tmp_path, broker_url=redis_url))
    try:
        with app.connection_for_write() as conn:
            producer = conn.Producer()
            queues = [Queue(name) for name in QUEUES]
            for queue in queues:
                queue(conn.default_channel).declare()
            # A poll waits first; then two requests arrive
            for body, queue in [("poll", POLL_QUEUE), ("r1", INTAKE_QUEUE), ("r2", INTAKE_QUEUE)]:
                producer.publish(body, routing_key=queue, serializer="json")
        seen: list[str] = []

        def got(body: str, message: Message) -> None:
            seen.append(body)
            message.ack()

        with (
            app.connection_for_read() as conn,
            Consumer(conn, queues=[Queue(name) for name in QUEUES], callbacks=[got]),
        ):
            while len(seen) < 3:
                conn.drain_events(timeout=5)
        # Round robin (kombu's default) would read r1, poll, r2: a queue goes to the back of
        # the line once read
        assert seen == ["r1", "r2", "poll"]
    finally:
        app.close()


def test_an_empty_queue_is_counted_as_empty_without_a_warning(
    redis_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from worker.pipeline.tasking import CeleryDispatcher

    # Given a Redis broker on which nothing was ever sent to the submit queue (kombu keeps no
    # key for an empty queue: asking for it answers NOT_FOUND)
    app = make_celery_app(Settings(data_dir=tmp_path, broker_url=redis_url))
    try:
        with caplog.at_level(logging.WARNING):
            # Then it is an empty queue, not a failure worth a warning every 30 s
            assert CeleryDispatcher(app).waiting("bmsreboot.submit") == 0
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    finally:
        app.close()
