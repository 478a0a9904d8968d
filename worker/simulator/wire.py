"""What the simulator puts on the wire: error envelopes, codes and messages, times, replies.

Two envelopes, as the real service (``docs/bms-api.md``, section 4): the BMS service
answers ``{"error": {"message", "code"}}``; the API gateway (auth, throttling, unknown route)
answers ``{"error_msg", "error_code", "request_id"}``. Messages are the documented ones verbatim.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

JSON_TYPE = "application/json;charset=UTF-8"
HTML_TYPE = "text/html"

# --- API gateway ------------------------------------------------------------------------------
APIGW_AUTH = "APIGW.0301"
APIGW_THROTTLED = "APIGW.0308"
APIGW_NO_ROUTE = "APIGW.0101"
NO_ROUTE_MESSAGE = "The API does not exist or has not been published in the environment."
AUTH_PREFIX = "Incorrect IAM authentication information: "

# --- BMS service ------------------------------------------------------------------------------
BMS_PARSE = "BMS.0001"
BMS_INVALID = "BMS.0018"
BMS_OUT_OF_RANGE = "BMS.0205"
BMS_NO_SERVER = "BMS.0040"
BMS_FORBIDDEN = "BMS.0288"
COMMON_TENANT = "Common.0018"
#: Not documented: the code of an unknown or purged job id (404) is our choice.
BMS_NO_JOB = "BMS.0404"
#: Not documented: the code of an injected 500 is our choice.
BMS_INTERNAL = "BMS.9999"

MESSAGES = {
    BMS_PARSE: "Fail to parse request, reason: {}.",
    BMS_INVALID: "Request parameter is invalid.",
    BMS_OUT_OF_RANGE: "The number of baremetal servers is out of range for one quest.",
    BMS_NO_SERVER: "The server does not exist.",
    COMMON_TENANT: "tenantId in token is not the same with in URL.",
    BMS_NO_JOB: "The job does not exist.",
    BMS_INTERNAL: "Internal server error, please try again later.",
}

#: Per-server failure messages; ``{}`` is the attempted operation (reboot, start, stop).
FAILURE_MESSAGES = {
    "BMS.0035": "Server is powering on, not allow to {}.",
    "BMS.0036": "Server is powering off, not allow to {}.",
    "BMS.0037": "Server is rebooting, not allow to {}.",
    "BMS.0038": "Server is running, not allow to start.",
    "BMS.0039": "Server is stopped, not allow to stop.",
    "BMS.0605": "the BMS is locked.",
}
GENERIC_FAILURE = "Fail to operate baremetal server."
OPERATION_WORDS = {"reboot": "reboot", "os-start": "start", "os-stop": "stop"}

GATEWAY_502_HTML = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n</body>\r\n</html>\r\n"
)


def failure_message(code: str, action: str) -> str:
    template = FAILURE_MESSAGES.get(code, GENERIC_FAILURE)
    return template.format(OPERATION_WORDS.get(action, action))


def refusal_message(code: str, action: str) -> str:
    """The message of a whole request refused for one server's condition."""
    return MESSAGES[code] if code in MESSAGES else failure_message(code, action)


def format_time(epoch: float) -> str:
    """``YYYY-MM-DDTHH:MM:SS.mmmZ`` in UTC, the job API's time format."""
    moment = datetime.fromtimestamp(epoch, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def dump(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode("utf-8")


@dataclass(frozen=True, slots=True)
class Reply:
    """One answer. ``drop`` closes the connection without answering; ``delay`` waits first."""

    status: int
    body: bytes = b""
    content_type: str = JSON_TYPE
    headers: tuple[tuple[str, str], ...] = ()
    delay: float = 0.0
    drop: bool = False


DROP = Reply(status=0, drop=True)


def json_reply(status: int, value: Any, headers: tuple[tuple[str, str], ...] = ()) -> Reply:
    return Reply(status, dump(value), headers=headers)


def bms_error(status: int, code: str, message: str | None = None) -> Reply:
    text = message if message is not None else MESSAGES[code]
    return json_reply(status, {"error": {"message": text, "code": code}})


def gateway_error(
    status: int, code: str, message: str, request_id: str, headers: tuple[tuple[str, str], ...] = ()
) -> Reply:
    body = {"error_msg": message, "error_code": code, "request_id": request_id}
    return json_reply(status, body, headers)


def auth_error(detail: str, request_id: str) -> Reply:
    return gateway_error(401, APIGW_AUTH, AUTH_PREFIX + detail, request_id)


def no_route(request_id: str) -> Reply:
    return gateway_error(404, APIGW_NO_ROUTE, NO_ROUTE_MESSAGE, request_id)


def throttled(limit: int, request_id: str, retry_after: float | None) -> Reply:
    message = (
        "The throttling threshold has been reached: policy user over ratelimit,"
        f"limit:{limit},time:1 minute"
    )
    headers: tuple[tuple[str, str], ...] = ()
    if retry_after is not None:
        # HTTP wants whole seconds; urllib3 rejects a fractional Retry-After, so round up.
        headers = (("Retry-After", str(max(0, math.ceil(retry_after)))),)
    return gateway_error(429, APIGW_THROTTLED, message, request_id, headers)


def forbidden(permission: str) -> Reply:
    """403 for a caller whose IAM policy lacks ``permission`` (e.g. ``bms:servers:list``)."""
    return bms_error(403, BMS_FORBIDDEN, f"Policy doesn't allow {permission} to be performed.")


def internal_error() -> Reply:
    return bms_error(500, BMS_INTERNAL)


def gateway_502() -> Reply:
    return Reply(502, GATEWAY_502_HTML, content_type=HTML_TYPE)
