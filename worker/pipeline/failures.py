"""What to do after a failed API call: one decision for a submit and for a poll, from the error
alone, as pure functions tested from a table (openai-python's ``_should_retry``, dramatiq's
``compute_backoff``).

A failed **POST** (``after_submit``), in this order, because "may have been accepted" outranks
everything (resending could reboot a server twice):

- ``unknown``: the API may have taken it (read timeout after sending, connection dropped, a
  2xx without a job id, a proxy's 5xx page, any error that is not the client's): never sent
  again by the pipeline;
- ``throttled``: a 429: due again at once behind the project's cooled-down budget, never
  using up an attempt;
- ``isolate``: refused whole for the condition of some server it does not name (unknown,
  locked, powering on, off or rebooting: ``ISOLATE_CODES``): split in halves to find it;
- ``rejected``: any other refusal (4xx): its servers fail with the API's code;
- ``failed``: no attempt can help (no credentials) or the last attempt was not accepted;
- ``retry``: certainly not accepted (could not connect, a 5xx with the API's body): due
  again after the backoff.

A failed **GET** of a job (``after_poll``) never changes an outcome: ``throttled`` (a 429,
the budget cools down), ``missing`` (404: the API does not know the job; after a while the
batch is ``unknown``), else ``retry`` (the next poll, later).

How long a 429 cools the budget down is :func:`throttle_cooldown`, for both.
"""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING

from worker.bms.errors import (
    ApiError,
    BmsError,
    NotFoundError,
    ServerError,
    ThrottledError,
    TransportError,
)

if TYPE_CHECKING:
    from worker.settings import Settings

#: API refusals of a whole batch for the condition of some server in it, without naming it
#: (the BMS error table): the server does not exist (BMS.0040), is locked (BMS.0605), or is
#: powering on, off or rebooting (BMS.0035-0037).
ISOLATE_CODES = frozenset({"BMS.0040", "BMS.0605", "BMS.0035", "BMS.0036", "BMS.0037"})


class Next(StrEnum):
    """What happens to a batch after a failed call."""

    UNKNOWN = "unknown"
    THROTTLED = "throttled"
    ISOLATE = "isolate"
    REJECTED = "rejected"
    FAILED = "failed"
    RETRY = "retry"
    MISSING = "missing"


def after_submit(
    error: BaseException, *, attempt: int, max_attempts: int, servers: int, isolate: bool
) -> Next:
    """The one decision after a failed POST of ``servers`` servers (``attempt`` counts from 1;
    ``isolate``: ``BMSREBOOT_ISOLATE_UNKNOWN_SERVERS``)."""
    if not isinstance(error, BmsError) or error.maybe_accepted:
        return Next.UNKNOWN
    if isinstance(error, ThrottledError):
        return Next.THROTTLED
    if isinstance(error, ApiError) and not isinstance(error, ServerError):
        if error.code in ISOLATE_CODES and servers > 1 and isolate:
            return Next.ISOLATE
        return Next.REJECTED
    # Only a 5xx with the API's body and a transport error that sent nothing can go better
    # next time; anything else (no credentials) cannot.
    if not isinstance(error, ServerError | TransportError) or attempt >= max_attempts:
        return Next.FAILED
    return Next.RETRY


def after_poll(error: BaseException) -> Next:
    """The one decision after a failed GET of a job: it only delays the next poll."""
    if isinstance(error, ThrottledError):
        return Next.THROTTLED
    if isinstance(error, NotFoundError):
        return Next.MISSING
    return Next.RETRY


def throttle_cooldown(error: ThrottledError, settings: Settings) -> float:
    """How long a 429 pauses the project's budget of that route: the API's ``Retry-After``,
    else ``BMSREBOOT_THROTTLE_COOLDOWN``."""
    return error.retry_after if error.retry_after is not None else settings.throttle_cooldown
