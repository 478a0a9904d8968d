"""Retry policy for BMS calls, as pure functions with named constants.

The client itself never retries (except one token refresh on a 401); the task layer decides with
these. Two questions, kept apart: *may* a new attempt succeed (:func:`is_retryable`), and is it
*safe* to send the same POST again (:func:`may_resubmit`: only when the first was certainly not
accepted, see :mod:`worker.bms.errors`).
"""

from __future__ import annotations

import random
from collections.abc import Callable

from worker.bms.errors import BmsError

#: First retry delay, seconds; doubles with every attempt.
RETRY_BASE = 2.0
#: Cap of the computed delay, and of a server's Retry-After hint.
RETRY_CAP = 60.0
#: Random fraction added to a computed delay so that many workers do not retry in step.
RETRY_JITTER = 0.2


def is_retryable(error: BaseException) -> bool:
    """True for throttling, 5xx and transport errors."""
    return isinstance(error, BmsError) and error.retryable


def may_resubmit(error: BaseException) -> bool:
    """True when the failed POST may be sent again: retryable and certainly not accepted."""
    return is_retryable(error) and not getattr(error, "maybe_accepted", True)


def retry_delay(
    attempt: int,
    *,
    retry_after: float | None = None,
    base: float = RETRY_BASE,
    cap: float = RETRY_CAP,
    jitter: float = RETRY_JITTER,
    rand: Callable[[], float] = random.random,
) -> float:
    """Seconds to wait before retry number ``attempt`` (1 for the first retry).

    A server hint (Retry-After) wins, capped at ``cap``; otherwise ``base * 2**(attempt-1)``,
    capped, plus up to ``jitter`` of itself at random."""
    if attempt < 1:
        raise ValueError("attempt counts from 1")
    if retry_after is not None and retry_after >= 0:
        return min(retry_after, cap)
    delay = min(base * 2.0 ** min(attempt - 1, 60), cap)
    return delay + delay * jitter * rand()
