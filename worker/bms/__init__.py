"""The Huawei Cloud BMS API client.

- :mod:`worker.bms.client`: :class:`BmsClient` (batch reboot/start/stop, job queries, the
  server list and one server's details).
- :mod:`worker.bms.errors`: the error tree; ``maybe_accepted`` decides whether a POST may be resent.
- :mod:`worker.bms.signing`: AK/SK request signing (SDK-HMAC-SHA256).
- :mod:`worker.bms.auth`: IAM password-token auth.
- :mod:`worker.bms.models`: typed :class:`Job` / :class:`SubJob`, :class:`ServerDetails` /
  :class:`ServerPage`.
- :mod:`worker.bms.retry`: retry policy as pure functions, for the task layer.
"""

from worker.bms.auth import TokenAuth
from worker.bms.client import (
    ALL_GRANTED_EPS,
    MAX_SERVERS_PER_CALL,
    MAX_SERVERS_PER_PAGE,
    BmsClient,
)
from worker.bms.errors import (
    ApiError,
    AuthenticationError,
    BmsError,
    ConfigurationError,
    ConnectError,
    ConnectionDropped,
    NotFoundError,
    PermissionDeniedError,
    ProtocolError,
    RejectedError,
    RequestTimeout,
    ServerError,
    ThrottledError,
    TransportError,
)
from worker.bms.models import (
    TERMINAL_JOB_STATUSES,
    Address,
    Job,
    ServerDetails,
    ServerPage,
    SubJob,
)
from worker.bms.signing import AkSkAuth

__all__ = [
    "ALL_GRANTED_EPS",
    "MAX_SERVERS_PER_CALL",
    "MAX_SERVERS_PER_PAGE",
    "TERMINAL_JOB_STATUSES",
    "Address",
    "AkSkAuth",
    "ApiError",
    "AuthenticationError",
    "BmsClient",
    "BmsError",
    "ConfigurationError",
    "ConnectError",
    "ConnectionDropped",
    "Job",
    "NotFoundError",
    "PermissionDeniedError",
    "ProtocolError",
    "RejectedError",
    "RequestTimeout",
    "ServerDetails",
    "ServerError",
    "ServerPage",
    "SubJob",
    "ThrottledError",
    "TokenAuth",
    "TransportError",
]
