"""The one decision after a failed API call, for a submit and for a poll, from a table of every
error class and code the client can raise (``worker.pipeline.failures``)."""

from __future__ import annotations

from typing import Any

import pytest

from worker.bms.errors import (
    AuthenticationError,
    BmsError,
    ConfigurationError,
    ConnectError,
    ConnectionDropped,
    CredentialError,
    NotFoundError,
    PermissionDeniedError,
    ProtocolError,
    RejectedError,
    RequestTimeout,
    ServerError,
    ThrottledError,
)
from worker.pipeline.failures import (
    ISOLATE_CODES,
    Next,
    after_poll,
    after_submit,
    throttle_cooldown,
)
from worker.settings import Settings


def api(cls: type[BmsError], status: int, code: str = "C", **kw: Any) -> BmsError:
    return cls("x", status=status, code=code, **kw)


#: (error, attempt, servers in the batch, isolation on) -> what follows a failed POST
SUBMIT: list[tuple[BaseException, int, int, bool, Next]] = [
    # The POST may have been accepted: never again, whatever else is true
    (RuntimeError("not a client error"), 1, 10, True, Next.UNKNOWN),
    (RequestTimeout("read", maybe_accepted=True), 1, 10, True, Next.UNKNOWN),
    (ConnectionDropped("drop", maybe_accepted=True), 1, 10, True, Next.UNKNOWN),
    (ProtocolError("no job id", maybe_accepted=True), 1, 10, True, Next.UNKNOWN),
    (api(ServerError, 502, code="", maybe_accepted=True), 1, 10, True, Next.UNKNOWN),
    (api(ServerError, 502, maybe_accepted=True), 10, 10, True, Next.UNKNOWN),
    # Throttled: again at once behind the cooled-down budget; never uses up attempts
    (api(ThrottledError, 429, "APIGW.0308"), 1, 10, True, Next.THROTTLED),
    (api(ThrottledError, 429, "APIGW.0308"), 99, 10, True, Next.THROTTLED),
    # Refused whole for one server it does not name: split, when it can and may
    *[(api(RejectedError, 400, code), 1, 10, True, Next.ISOLATE) for code in ISOLATE_CODES],
    (api(RejectedError, 400, "BMS.0040"), 1, 1, True, Next.REJECTED),
    (api(RejectedError, 400, "BMS.0040"), 1, 10, False, Next.REJECTED),
    # Any other refusal
    (api(RejectedError, 400, "BMS.0205"), 1, 10, True, Next.REJECTED),
    (api(NotFoundError, 404), 1, 10, True, Next.REJECTED),
    (api(AuthenticationError, 401, "APIGW.0301"), 1, 10, True, Next.REJECTED),
    (api(PermissionDeniedError, 403), 1, 10, True, Next.REJECTED),
    # Certainly not accepted, and may go better: again after the backoff, up to the last
    (api(ServerError, 500, "BMS.9999"), 1, 10, True, Next.RETRY),
    (api(ServerError, 500, "BMS.9999"), 10, 10, True, Next.FAILED),
    (ConnectError("refused"), 3, 10, True, Next.RETRY),
    (RequestTimeout("connect"), 3, 10, True, Next.RETRY),
    (ConnectError("refused"), 10, 10, True, Next.FAILED),
    # No attempt can help
    (ConfigurationError("no credentials"), 1, 10, True, Next.FAILED),
    (CredentialError("the variable PROD_AK is not set"), 1, 10, True, Next.FAILED),
    (BmsError("something unclassified, certainly not accepted"), 1, 10, True, Next.FAILED),
]


@pytest.mark.parametrize(("error", "attempt", "servers", "isolate", "expected"), SUBMIT)
def test_what_follows_a_failed_post(
    error: BaseException, attempt: int, servers: int, isolate: bool, expected: Next
) -> None:
    decided = after_submit(
        error, attempt=attempt, max_attempts=10, servers=servers, isolate=isolate
    )
    assert decided is expected


POLL: list[tuple[BaseException, Next]] = [
    (api(ThrottledError, 429, "APIGW.0308"), Next.THROTTLED),
    (api(NotFoundError, 404, "BMS.0404"), Next.MISSING),
    (api(ServerError, 500), Next.RETRY),
    (api(ServerError, 502, code=""), Next.RETRY),
    (api(AuthenticationError, 401), Next.RETRY),
    (api(PermissionDeniedError, 403), Next.RETRY),
    (api(RejectedError, 400), Next.RETRY),
    (ConnectError("refused"), Next.RETRY),
    (RequestTimeout("read"), Next.RETRY),
    (ConnectionDropped("drop"), Next.RETRY),
    (ProtocolError("not a job"), Next.RETRY),
    (ConfigurationError("no credentials"), Next.RETRY),
    (CredentialError("the variable PROD_AK is not set"), Next.RETRY),
]


@pytest.mark.parametrize(("error", "expected"), POLL)
def test_a_failed_poll_only_delays_the_next(error: BaseException, expected: Next) -> None:
    assert after_poll(error) is expected


def test_every_error_class_of_the_client_is_in_both_tables() -> None:
    import worker.bms.errors as errors

    classes = {
        cls for cls in vars(errors).values() if isinstance(cls, type) and issubclass(cls, BmsError)
    }
    in_submit = {type(e) for e, *_ in SUBMIT}
    in_poll = {type(e) for e, _ in POLL}
    abstract = {errors.ApiError, errors.TransportError}
    assert classes - abstract <= in_submit
    assert classes - abstract - {BmsError} <= in_poll


@pytest.mark.parametrize(("retry_after", "expected"), [(7.0, 7.0), (None, 5.0), (0.0, 0.0)])
def test_a_429_cools_down_for_the_apis_hint_else_the_setting(
    retry_after: float | None, expected: float
) -> None:
    error = ThrottledError("t", status=429, retry_after=retry_after)
    assert throttle_cooldown(error, Settings(throttle_cooldown=5.0)) == expected
