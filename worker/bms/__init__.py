"""The Huawei Cloud BMS API client.

- :mod:`worker.bms.client`: :class:`BmsClient` (batch reboot/start/stop, job queries).
- :mod:`worker.bms.errors`: the error tree; ``maybe_accepted`` decides whether a POST may be resent.
- :mod:`worker.bms.signing`: AK/SK request signing (SDK-HMAC-SHA256).
- :mod:`worker.bms.auth`: IAM password-token auth.
- :mod:`worker.bms.credentials`: where an AK/SK comes from (static, environment, the SDK's
  credentials file) and the refresh of temporary credentials; :mod:`worker.bms.metadata` (the
  host's agency) and :mod:`worker.bms.agency` (STS assume-agency) are temporary ones.
- :mod:`worker.bms.sources`: any credential source from a small dict (``credentials_from_config``).
- :mod:`worker.bms.models`: typed :class:`Job` / :class:`SubJob`.
- :mod:`worker.bms.retry`: retry policy as pure functions, for the task layer.
"""

from worker.bms.auth import TokenAuth
from worker.bms.client import MAX_SERVERS_PER_CALL, BmsClient
from worker.bms.credentials import Credential, CredentialProvider
from worker.bms.errors import (
    ApiError,
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
    TransportError,
)
from worker.bms.models import TERMINAL_JOB_STATUSES, Job, SubJob
from worker.bms.signing import AkSkAuth
from worker.bms.sources import PasswordLogin, credentials_from_config

__all__ = [
    "MAX_SERVERS_PER_CALL",
    "TERMINAL_JOB_STATUSES",
    "AkSkAuth",
    "ApiError",
    "AuthenticationError",
    "BmsClient",
    "BmsError",
    "ConfigurationError",
    "ConnectError",
    "ConnectionDropped",
    "Credential",
    "CredentialError",
    "CredentialProvider",
    "Job",
    "NotFoundError",
    "PasswordLogin",
    "PermissionDeniedError",
    "ProtocolError",
    "RejectedError",
    "RequestTimeout",
    "ServerError",
    "SubJob",
    "ThrottledError",
    "TokenAuth",
    "TransportError",
    "credentials_from_config",
]
