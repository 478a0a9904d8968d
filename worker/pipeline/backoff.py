"""Delays as pure functions: how long until the next submit attempt or the next poll.

These are task-level delays (seconds to minutes), separate from anything the HTTP client does.
Every delay they return is capped, and the caps are checked against the broker's visibility
timeout at start-up (``worker.celery.check_timing``): an ETA message held longer than the
visibility timeout is redelivered by Redis and would run twice.
"""

from __future__ import annotations

import random


def with_jitter(delay: float, jitter: float, rng: random.Random | None = None) -> float:
    """``delay`` plus a random fraction of it in [0, jitter): spreads retries apart so that
    many batches throttled at once do not come back at once (Huawei's APIG guidance)."""
    if jitter <= 0:
        return delay
    return delay * (1.0 + (rng or random).uniform(0.0, jitter))


def submit_retry_delay(
    attempt: int, *, base: float, cap: float, retry_after: float | None = None
) -> float:
    """Exponential backoff for a submit that was not accepted; ``attempt`` counts from 1.

    A server hint (Retry-After) is honoured but still capped, so one bad header cannot park a
    batch beyond the visibility timeout.
    """
    computed = base * 2.0 ** max(attempt - 1, 0)
    if retry_after is not None and retry_after > computed:
        computed = retry_after
    return min(computed, cap)


def poll_delay(poll_count: int, *, first: float, cap: float) -> float:
    """Delay before poll number ``poll_count + 1``: the first delay, growing by half each
    poll, up to the cap. BMS reboots take minutes; polling fast at first catches quick jobs
    and the cap keeps a long job to one call per interval."""
    return min(first * (1.5**poll_count), cap)
