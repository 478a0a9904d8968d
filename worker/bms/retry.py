"""Retry policy for BMS calls, as pure functions.

The client itself never retries (except one token refresh on a 401); the task layer decides with
these, and computes its delays in ``worker.pipeline.backoff``. Two questions, kept apart: *may*
a new attempt succeed (:func:`is_retryable`), and is it *safe* to send the same POST again
(:func:`may_resubmit`: only when the first was certainly not accepted, see
:mod:`worker.bms.errors`).
"""

from __future__ import annotations

from worker.bms.errors import BmsError


def is_retryable(error: BaseException) -> bool:
    """True for throttling, 5xx and transport errors."""
    return isinstance(error, BmsError) and error.retryable


def may_resubmit(error: BaseException) -> bool:
    """True when the failed POST may be sent again: retryable and certainly not accepted."""
    return is_retryable(error) and not getattr(error, "maybe_accepted", True)
