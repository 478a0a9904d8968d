"""The BMS client's errors: one class per meaning, and the functions that pick the class.

Every error carries ``status`` (HTTP status or None), ``code`` (the API error code, e.g.
``BMS.0040`` / ``APIGW.0308``, or None), ``message``, ``request_id`` (the ``X-Request-Id``
response header) and one flag for the task layer:

``maybe_accepted``
    Only meaningful for a failed POST (for a GET it is always False). False means the request
    was certainly **not accepted**: nothing was sent (could not connect, connect timeout) or the
    API answered with an error (any 4xx including 429, a 5xx that carries an API error body).
    True means the servers **may be rebooting now**: the read timed out after the request was
    sent, the connection dropped before a response, a 5xx came without an API error body (a
    proxy's 502 page), or a 2xx came without a job id. A maybe-accepted POST must never be
    blindly re-sent; the whole project depends on this to never reboot a server twice.

What the pipeline does after an error (send again, wait, give up, split) is decided in one
place, from the error's class and this flag: ``worker.pipeline.failures``.

The tree::

    BmsError
    ├── ApiError                  the API answered with an HTTP error
    │   ├── AuthenticationError   401
    │   ├── PermissionDeniedError 403 (e.g. the credential lacks bms:servers:list)
    │   ├── NotFoundError         404 (an unknown job; an unknown server, BMS.0040)
    │   ├── ThrottledError        429, with .retry_after (seconds) from Retry-After
    │   ├── RejectedError         any other 4xx (BMS.0040, BMS.0205, BMS.0018, ...)
    │   └── ServerError           5xx
    ├── TransportError            no HTTP answer
    │   ├── ConnectError          could not connect (refused, DNS, TLS handshake): nothing sent
    │   ├── RequestTimeout        connect timeout (nothing sent) or read timeout (sent)
    │   └── ConnectionDropped     the connection closed before a response
    ├── ProtocolError             an answer we cannot use (2xx without job id, bad JSON)
    └── ConfigurationError        no usable endpoint or credentials
        └── CredentialError       a credential source that cannot work (unknown source, a
                                  missing variable, a host without an agency)

No message ever holds a secret: messages are built from response bodies and our own words,
never from request bodies or headers.
"""

from __future__ import annotations

import json
import ssl
from typing import Any

import requests
import urllib3.exceptions as u3

__all__ = [
    "ApiError",
    "AuthenticationError",
    "BmsError",
    "ConfigurationError",
    "ConnectError",
    "ConnectionDropped",
    "CredentialError",
    "NotFoundError",
    "PermissionDeniedError",
    "ProtocolError",
    "RejectedError",
    "RequestTimeout",
    "ServerError",
    "ThrottledError",
    "TransportError",
    "error_from_response",
    "parse_error_body",
]

#: OpenSSL reasons that only a handshake (before any request byte is sent) can produce.
_HANDSHAKE_REASONS = frozenset(
    {
        "CERTIFICATE_VERIFY_FAILED",
        "WRONG_VERSION_NUMBER",
        "SSLV3_ALERT_HANDSHAKE_FAILURE",
        "TLSV1_ALERT_PROTOCOL_VERSION",
        "TLSV1_ALERT_UNKNOWN_CA",
        "UNSUPPORTED_PROTOCOL",
        "NO_PROTOCOLS_AVAILABLE",
        "TLSV1_UNRECOGNIZED_NAME",
    }
)
#: Longest slice of a non-JSON body quoted in a message (a proxy's HTML page, say).
_BODY_EXCERPT = 120


class BmsError(Exception):
    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        request_id: str | None = None,
        maybe_accepted: bool = False,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.request_id = request_id
        self.maybe_accepted = maybe_accepted

    def __str__(self) -> str:
        details = [
            f"{name}={value}"
            for name, value in (
                ("status", self.status),
                ("code", self.code),
                ("request_id", self.request_id),
            )
            if value is not None
        ]
        if self.maybe_accepted:
            details.append("maybe_accepted")
        return f"{self.message} ({', '.join(details)})" if details else self.message

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(message={self.message!r}, status={self.status!r}, "
            f"code={self.code!r}, request_id={self.request_id!r}, "
            f"maybe_accepted={self.maybe_accepted!r})"
        )


class ApiError(BmsError):
    """The API answered with an HTTP error status."""


class AuthenticationError(ApiError):
    """401: bad signature, unknown AK, expired or invalid token, clock skew."""


class PermissionDeniedError(ApiError):
    """403: authenticated but not allowed."""


class NotFoundError(ApiError):
    """404: unknown job or server (BMS.0040), or route."""


class ThrottledError(ApiError):
    """429: over the rate limit. ``retry_after`` is the server's hint in seconds, if any."""

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class RejectedError(ApiError):
    """Any other 4xx: the API refused the request (unknown server, bad parameters, ...)."""


class ServerError(ApiError):
    """5xx from the API or a proxy in front of it."""


class TransportError(BmsError):
    """No HTTP answer at all."""


class ConnectError(TransportError):
    """Could not connect (refused, name resolution, TLS handshake): nothing was sent."""


class RequestTimeout(TransportError):
    """Connect timeout (nothing sent) or read timeout (the request was sent)."""


class ConnectionDropped(TransportError):
    """The connection closed before a complete response arrived."""


class ProtocolError(BmsError):
    """An answer we cannot use: a 2xx without a job id, an unparseable body, a stray 3xx."""


class ConfigurationError(BmsError):
    """No usable endpoint or credentials."""


class CredentialError(ConfigurationError):
    """A credential source that cannot work as configured: an unknown source, a missing
    variable or file, a metadata service without an agency. The message names what is wrong,
    never a secret."""


def parse_error_body(body: Any) -> tuple[str | None, str | None]:
    """``(code, message)`` from any of the envelopes the API uses, or ``(None, None)``.

    ``{"error": {"code", "message"}}`` (BMS), ``{"error_code", "error_msg"}`` (API gateway)
    and a flat ``{"code", "message"}`` (job queries)."""
    if not isinstance(body, dict):
        return None, None
    for code_key, message_key in (("error_code", "error_msg"), ("code", "message")):
        code = body.get(code_key)
        if code is not None and not isinstance(code, dict):
            message = body.get(message_key)
            return str(code), None if message is None else str(message)
    nested = body.get("error")
    if isinstance(nested, dict):
        return parse_error_body(nested)
    return None, None


def _retry_after(value: str | None) -> float | None:
    # Only the delta-seconds form; Huawei documents no Retry-After at all.
    try:
        seconds = float(value) if value is not None else None
    except ValueError:
        return None
    return seconds if seconds is not None and seconds >= 0 else None


_BY_STATUS: dict[int, type[ApiError]] = {
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    429: ThrottledError,
}


def error_from_response(response: requests.Response, *, is_post: bool) -> BmsError:
    """The error for a response that is not a success. ``is_post`` decides ``maybe_accepted``."""
    status = response.status_code
    request_id = response.headers.get("X-Request-Id")
    try:
        body: Any = response.json()
    except ValueError:
        body = None
    code, message = parse_error_body(body)
    has_api_body = code is not None
    if message is None:
        excerpt = " ".join(response.text[:_BODY_EXCERPT].split())
        message = f"HTTP {status} {response.reason or ''}".strip() + (
            f": {excerpt}" if excerpt else ""
        )
    common: dict[str, Any] = {"status": status, "code": code, "request_id": request_id}
    if status < 400:
        return ProtocolError(f"unexpected answer: {message}", maybe_accepted=is_post, **common)
    if status >= 500:
        # A 5xx with the API's own error body was decided by the API: not accepted. Without
        # one (a proxy's HTML page) the request may have reached the API before the failure.
        return ServerError(message, maybe_accepted=is_post and not has_api_body, **common)
    if status == 429:
        retry_after = _retry_after(response.headers.get("Retry-After"))
        return ThrottledError(message, retry_after=retry_after, **common)
    return _BY_STATUS.get(status, RejectedError)(message, **common)


def protocol_error(response: requests.Response, reason: str, *, is_post: bool) -> ProtocolError:
    """A 2xx we cannot use; for a POST the work may have been accepted."""
    return ProtocolError(
        reason,
        status=response.status_code,
        request_id=response.headers.get("X-Request-Id"),
        maybe_accepted=is_post,
    )


def decode_json(response: requests.Response, *, is_post: bool) -> dict[str, Any]:
    """The JSON object of a 2xx body, or a ProtocolError."""
    try:
        body = json.loads(response.content)
    except ValueError:
        raise protocol_error(response, "the success body is not JSON", is_post=is_post) from None
    if not isinstance(body, dict):
        raise protocol_error(response, "the success body is not a JSON object", is_post=is_post)
    return body


def _causes(exc: BaseException) -> list[BaseException]:
    """The exception and everything it explicitly wraps (requests and urllib3 nest several
    levels). Not ``__context__``: an unrelated earlier error must not decide the class."""
    seen: list[BaseException] = []
    todo: list[object] = [exc]
    while todo:
        item = todo.pop()
        if not isinstance(item, BaseException) or any(item is s for s in seen):
            continue
        seen.append(item)
        todo.extend([item.__cause__, getattr(item, "reason", None), *item.args])
    return seen


def error_from_exception(exc: requests.RequestException, *, is_post: bool) -> TransportError:
    """The error for a request that got no HTTP answer. ``is_post`` decides ``maybe_accepted``."""
    causes = _causes(exc)
    # Evidence that the request went out is checked first: when in doubt, maybe accepted.
    if isinstance(exc, requests.ReadTimeout) or any(
        isinstance(c, u3.ReadTimeoutError) for c in causes
    ):
        return RequestTimeout(
            "timed out waiting for the answer after the request was sent",
            maybe_accepted=is_post,
        )
    if isinstance(exc, requests.ConnectTimeout) or any(
        isinstance(c, u3.ConnectTimeoutError) and not isinstance(c, u3.NewConnectionError)
        for c in causes
    ):
        return RequestTimeout("timed out connecting to the API; nothing was sent")
    if isinstance(exc, requests.exceptions.ProxyError) or any(
        isinstance(c, u3.NewConnectionError | u3.NameResolutionError) or _handshake_failure(c)
        for c in causes
    ):
        return ConnectError(f"could not connect to the API: {_reason(causes)}")
    return ConnectionDropped(
        f"the connection closed before a response: {_reason(causes)}", maybe_accepted=is_post
    )


def _handshake_failure(error: BaseException) -> bool:
    # Only a failed TLS handshake proves nothing was sent; a TLS error later in the exchange
    # (an EOF after the request went out) is a dropped connection.
    if isinstance(error, ssl.SSLCertVerificationError):
        return True
    reason = getattr(error, "reason", None) if isinstance(error, ssl.SSLError) else None
    return isinstance(reason, str) and reason in _HANDSHAKE_REASONS


def _reason(causes: list[BaseException]) -> str:
    # The innermost OS-level error names the problem without repeating URLs.
    for cause in reversed(causes):
        if isinstance(cause, OSError) and not isinstance(cause, requests.RequestException):
            return type(cause).__name__ + (f": {cause.strerror}" if cause.strerror else "")
    return type(causes[-1]).__name__
