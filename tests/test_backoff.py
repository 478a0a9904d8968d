"""Task-level delays, from tables: submit retries and the poll schedule."""

from __future__ import annotations

import random

import pytest

from worker.celery import ImproperlyConfigured, check_timing, longest_countdown
from worker.pipeline.backoff import poll_delay, submit_retry_delay, with_jitter
from worker.settings import Settings


@pytest.mark.parametrize(
    ("attempt", "retry_after", "expected"),
    [
        (1, None, 5.0),
        (2, None, 10.0),
        (3, None, 20.0),
        (7, None, 300.0),  # capped
        (1, 30.0, 30.0),  # the server's hint wins when longer
        (3, 2.0, 20.0),  # but never shortens the backoff
        (1, 9999.0, 300.0),  # and is capped too
    ],
)
def test_submit_retry_delay(attempt: int, retry_after: float | None, expected: float) -> None:
    assert submit_retry_delay(attempt, base=5.0, cap=300.0, retry_after=retry_after) == expected


@pytest.mark.parametrize(
    ("polls", "expected"),
    [(0, 4.0), (1, 6.0), (2, 9.0), (3, 13.5), (4, 20.0), (10, 20.0)],
)
def test_poll_delay_grows_to_its_cap(polls: int, expected: float) -> None:
    assert poll_delay(polls, first=4.0, cap=20.0) == pytest.approx(expected)


def test_jitter_only_adds_up_to_its_fraction() -> None:
    rng = random.Random(7)
    delays = [with_jitter(10.0, 0.2, rng) for _ in range(1000)]
    assert all(10.0 <= d < 12.0 for d in delays)
    assert max(delays) - min(delays) > 1.0
    assert with_jitter(10.0, 0.0) == 10.0


def test_default_settings_keep_countdowns_far_below_the_visibility_timeout() -> None:
    settings = Settings()
    check_timing(settings)
    assert longest_countdown(settings) < settings.visibility_timeout / 2


def test_a_countdown_near_the_visibility_timeout_refuses_to_start() -> None:
    settings = Settings(visibility_timeout=600, poll_max_interval=400)
    with pytest.raises(ImproperlyConfigured, match="BMSREBOOT_POLL_MAX_INTERVAL"):
        check_timing(settings)
