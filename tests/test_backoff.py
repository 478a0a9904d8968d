"""Task-level delays, from tables: submit retries and the poll schedule."""

from __future__ import annotations

import random

import pytest

from worker.celery import ImproperlyConfigured, check_timing, longest_countdown
from worker.pipeline.backoff import (
    countdown_ceiling,
    first_poll_delay,
    poll_delay,
    submit_retry_delay,
    with_jitter,
)
from worker.settings import Settings


@pytest.mark.parametrize(
    ("attempt", "retry_after", "expected"),
    [
        (1, None, 5.0),
        (2, None, 10.0),
        (3, None, 20.0),
        (7, None, 300.0),  # capped
        (5000, None, 300.0),  # however many attempts (no float overflow)
        (1, 30.0, 30.0),  # the server's hint wins when longer
        (3, 2.0, 20.0),  # but never shortens the backoff
        (1, 9999.0, 300.0),  # and is capped too
    ],
)
def test_submit_retry_delay(attempt: int, retry_after: float | None, expected: float) -> None:
    assert submit_retry_delay(attempt, base=5.0, cap=300.0, retry_after=retry_after) == expected


@pytest.mark.parametrize(
    ("polls", "expected"),
    [
        (1, 4.0),
        (2, 6.0),
        (3, 9.0),
        (4, 13.5),
        (5, 20.0),
        (10, 20.0),
        (5000, 20.0),  # no float overflow
    ],
)
def test_without_history_polls_start_at_the_first_delay_and_grow_to_the_cap(
    polls: int, expected: float
) -> None:
    assert poll_delay(polls, learned=None, first=4.0, cap=20.0) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("learned", "polls", "expected"),
    [
        (200.0, 1, 20.0),  # a tenth of the usual job after the first poll
        (200.0, 2, 30.0),
        (200.0, 3, 45.0),
        (200.0, 4, 60.0),  # capped
        (5.0, 1, 0.5),
        (0.3, 1, 0.1),  # never faster than MIN_POLL_STEP
    ],
)
def test_with_history_polls_after_the_first_are_short_steps(
    learned: float, polls: int, expected: float
) -> None:
    assert poll_delay(polls, learned=learned, first=5.0, cap=60.0) == pytest.approx(expected)


def test_the_first_poll_comes_at_the_learned_duration_without_jitter() -> None:
    settings = Settings(poll_first_delay=5.0, poll_jitter=0.2)
    assert first_poll_delay(180.0, settings) == 180.0
    # Never beyond what the visibility timeout allows
    assert first_poll_delay(10_000.0, settings) == countdown_ceiling(settings)
    # Without history: the configured first delay, jittered
    rng_free = [first_poll_delay(None, settings) for _ in range(50)]
    assert all(5.0 <= d < 6.0 for d in rng_free)


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
