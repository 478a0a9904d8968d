"""Delays as pure functions: how long until the next submit attempt or the next poll.

These are task-level delays (seconds to minutes), separate from anything the HTTP client does.
Every delay they return is capped, and the caps are checked against the broker's visibility
timeout at start-up (``worker.celery.check_timing``): an ETA message held longer than the
visibility timeout is redelivered by Redis and would run twice.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from worker.settings import Settings

#: The share of the visibility timeout that the longest countdown may take. Redis redelivers a
#: message not acked within the visibility timeout, and a countdown message is held unacked by
#: the worker until it runs: a countdown near the timeout would run twice (celery#3270).
VISIBILITY_SHARE = 0.5
#: The shortest interval between two polls of one job, however short its jobs are.
MIN_POLL_STEP = 0.1
#: After the first poll, the interval starts at this share of the learned job duration.
POLL_STEP_SHARE = 0.1


def with_jitter(delay: float, jitter: float, rng: random.Random | None = None) -> float:
    """``delay`` plus a random fraction of it in [0, jitter): spreads retries apart so that
    many batches throttled at once do not come back at once (Huawei's APIG guidance)."""
    if jitter <= 0:
        return delay
    return delay * (1.0 + (rng or random).uniform(0.0, jitter))


#: Growth steps past which a delay is its cap anyway (1.5 ** 100 is 4e17: any first step of a
#: microsecond or more has passed any cap by then). Without this bound a long chain (a check
#: or poll count past about 1750 at a short cap) makes ``1.5 ** n`` overflow a float: the
#: task would raise OverflowError instead of booking its next run.
MAX_GROWTH_STEPS = 100


def submit_retry_delay(
    attempt: int, *, base: float, cap: float, retry_after: float | None = None
) -> float:
    """Exponential backoff for a submit that was not accepted; ``attempt`` counts from 1.

    A server hint (Retry-After) is honoured but still capped, so one bad header cannot park a
    batch beyond the visibility timeout.
    """
    computed = base * 2.0 ** min(max(attempt - 1, 0), MAX_GROWTH_STEPS)
    if retry_after is not None and retry_after > computed:
        computed = retry_after
    return min(computed, cap)


def countdown_ceiling(settings: Settings) -> float:
    """The longest countdown any message may carry (see ``VISIBILITY_SHARE``)."""
    return settings.visibility_timeout * VISIBILITY_SHARE / (1.0 + settings.poll_jitter)


def first_poll_delay(learned: float | None, settings: Settings) -> float:
    """When to poll a new job first: at the job duration learned from the project's recently
    ended jobs, or ``poll_first_delay`` without history. No jitter on a learned delay: the job
    route's budget already spreads polls apart, and jitter here is detection delay."""
    if learned is None:
        return with_jitter(settings.poll_first_delay, settings.poll_jitter)
    return min(learned, countdown_ceiling(settings))


def poll_delay(poll_count: int, *, learned: float | None, first: float, cap: float) -> float:
    """Delay before poll number ``poll_count + 1`` (``poll_count`` >= 1 done): short steps
    growing by half each poll, up to the cap. The first step is a tenth of the learned job
    duration (a job that outlasts the usual one is usually nearly done), else ``first``."""
    step = max(POLL_STEP_SHARE * learned, MIN_POLL_STEP) if learned is not None else first
    return min(step * (1.5 ** min(max(poll_count - 1, 0), MAX_GROWTH_STEPS)), cap)
