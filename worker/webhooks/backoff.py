"""When a delivery is tried again: pure functions, table-tested (tests/test_webhook_backoff.py).

Exponential backoff with jitter, as the Standard Webhooks specification recommends: the
``n``-th failed attempt waits ``BMSREBOOT_WEBHOOK_RETRY_BASE * 2**(n-1)`` seconds (5, 10, 20,
40 s, ...), at most ``BMSREBOOT_WEBHOOK_RETRY_MAX`` (an hour), plus up to a fifth of random
jitter so that deliveries that failed together do not come back together. A receiver's
``Retry-After`` (429, 503) is honoured up to the same cap. A delivery whose event is older than
``BMSREBOOT_WEBHOOK_RETRY_HOURS`` after a failed attempt is ``failed``; the last retry is
scheduled no later than that moment.

How a delay is waited for is :func:`countdown_for`: a countdown message when it stays below the
broker's visibility timeout (``worker.pipeline.backoff.countdown_ceiling``), else only the row's
``next_attempt_at``, which the reconciler re-drives (``worker.webhooks.redeliver_lost``).
"""

from __future__ import annotations

import datetime as dt
import random

from worker.pipeline.backoff import with_jitter

#: The random share added to a retry delay (at most).
JITTER = 0.2


def retry_delay(
    attempt: int, *, base: float, cap: float, retry_after: float | None = None
) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (from 1), before jitter."""
    computed = base * 2.0 ** max(attempt - 1, 0)
    if retry_after is not None and retry_after > computed:
        computed = retry_after
    return min(computed, cap)


def next_attempt(
    attempt: int,
    *,
    now: dt.datetime,
    created_at: dt.datetime,
    base: float,
    cap: float,
    retry_hours: float,
    retry_after: float | None = None,
    jitter: float = JITTER,
    rng: random.Random | None = None,
) -> dt.datetime | None:
    """When to try again after failed attempt number ``attempt``, or None: give up (the event
    is ``retry_hours`` old). Never later than the moment it would be given up."""
    give_up_at = created_at + dt.timedelta(hours=retry_hours)
    if now >= give_up_at:
        return None
    delay = with_jitter(
        retry_delay(attempt, base=base, cap=cap, retry_after=retry_after), jitter, rng
    )
    return min(now + dt.timedelta(seconds=delay), give_up_at)


def countdown_for(due: dt.datetime, now: dt.datetime, ceiling: float) -> float | None:
    """The countdown of the message that makes the attempt due at ``due``, or None when it
    would be longer than ``ceiling``: then no message is sent, and the reconciler re-drives
    the row once it is due (a countdown near the visibility timeout would run twice)."""
    wait = max((due - now).total_seconds(), 0.0)
    return wait if wait <= ceiling else None


def schedule(
    *, base: float, cap: float, retry_hours: float, limit: int = 100
) -> list[tuple[int, float, float]]:
    """The retry schedule without jitter, for people: ``(attempt, delay before it, seconds
    since the event)`` for every attempt made within ``retry_hours`` (the first at 0)."""
    rows = [(1, 0.0, 0.0)]
    elapsed = 0.0
    end = retry_hours * 3600.0
    attempt = 1
    while attempt < limit and elapsed < end:
        delay = min(retry_delay(attempt, base=base, cap=cap), end - elapsed)
        elapsed += delay
        attempt += 1
        rows.append((attempt, delay, elapsed))
    return rows
