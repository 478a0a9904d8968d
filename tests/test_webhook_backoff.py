"""The retry schedule of webhook and chat deliveries: pure functions, table-tested."""

from __future__ import annotations

import datetime as dt
import random

import pytest

from worker.webhooks.backoff import countdown_for, next_attempt, retry_delay, schedule

T0 = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("attempt", "retry_after", "expected"),
    [
        (1, None, 5.0),
        (2, None, 10.0),
        (3, None, 20.0),
        (8, None, 640.0),
        (10, None, 2560.0),
        (11, None, 3600.0),  # capped
        (40, None, 3600.0),
        (1, 120.0, 120.0),  # a receiver's Retry-After, when longer, is honoured
        (3, 2.0, 20.0),  # ... never to come back sooner than the backoff
        (1, 86400.0, 3600.0),  # ... and never beyond the cap
    ],
)
def test_the_retry_delay_doubles_from_the_base_up_to_the_cap(
    attempt: int, retry_after: float | None, expected: float
) -> None:
    assert retry_delay(attempt, base=5.0, cap=3600.0, retry_after=retry_after) == expected


@pytest.mark.parametrize(
    ("age_hours", "attempt", "expected"),
    [
        (0.0, 1, T0 + dt.timedelta(seconds=5)),
        (0.0, 11, T0 + dt.timedelta(hours=1)),
        # An hour's backoff from 23.5 h after the event stops at the 24 h mark: the last try
        (23.5, 20, T0 + dt.timedelta(hours=0.5)),
        # 24 h after the event, a failed attempt is the last one
        (24.0, 20, None),
        (30.0, 2, None),
    ],
)
def test_a_delivery_is_retried_until_its_event_is_retry_hours_old(
    age_hours: float, attempt: int, expected: dt.datetime | None
) -> None:
    created = T0 - dt.timedelta(hours=age_hours)
    got = next_attempt(
        attempt, now=T0, created_at=created, base=5.0, cap=3600.0, retry_hours=24, jitter=0.0
    )
    assert got == expected


def test_jitter_adds_at_most_a_fifth_and_spreads_deliveries_that_failed_together() -> None:
    rng = random.Random(7)
    delays = [
        (
            next_attempt(3, now=T0, created_at=T0, base=5.0, cap=3600.0, retry_hours=24, rng=rng)
            or T0
        )
        - T0
        for _ in range(200)
    ]
    seconds = [d.total_seconds() for d in delays]
    assert all(20.0 <= s < 24.0 for s in seconds)
    assert len({round(s, 3) for s in seconds}) > 100


@pytest.mark.parametrize(
    ("wait", "ceiling", "expected"),
    [(0.0, 1500.0, 0.0), (-3.0, 1500.0, 0.0), (600.0, 1500.0, 600.0), (3600.0, 1500.0, None)],
)
def test_a_retry_longer_than_a_countdown_may_be_is_left_to_the_reconciler(
    wait: float, ceiling: float, expected: float | None
) -> None:
    assert countdown_for(T0 + dt.timedelta(seconds=wait), T0, ceiling) == expected


def test_the_default_schedule_tries_for_a_day() -> None:
    rows = schedule(base=5.0, cap=3600.0, retry_hours=24)
    assert rows[:4] == [(1, 0.0, 0.0), (2, 5.0, 5.0), (3, 10.0, 15.0), (4, 20.0, 35.0)]
    assert rows[-1][2] == 24 * 3600.0
    assert all(delay <= 3600.0 for _, delay, _ in rows)
    assert len(rows) == 34  # 11 in the first 85 minutes, then hourly
