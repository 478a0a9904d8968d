"""Temporary AK/SK from the ECS/BMS metadata service: the agency attached to this host.

The calls, as the official SDK's ``MetadataAccessor`` makes them (``docs/bms-api.md``, section 8):

1. ``PUT {base}/meta-data/latest/api/token`` with ``X-Metadata-Token-Ttl-Seconds`` (the SDK asks
   for 21600 s): the answer's body is a session token. A service without this API answers 404,
   405 or 503; then the next call goes without a token.
2. ``GET {base}/openstack/latest/securitykey`` with ``X-Metadata-Token``: ``{"credential":
   {"access", "secret", "securitytoken", "expires_at"}}``. A 401 whose body does not say
   ``Please configure Cloud Service Agency first`` means the session token expired: one new
   token, one more try. With that text, the host has no agency: a configuration error.

``base`` is ``http://169.254.169.254`` (``BMSREBOOT_METADATA_URL`` overrides it for tests).
Refreshing, the lock and the backoff are :class:`~worker.bms.credentials.RefreshingCredentials`.
"""

from __future__ import annotations

import time
from typing import Any

import requests

from worker.bms.auth import plain_session
from worker.bms.credentials import Credential, RefreshingCredentials
from worker.bms.errors import (
    BmsError,
    CredentialError,
    ProtocolError,
    decode_json,
    error_from_exception,
    error_from_response,
)
from worker.bms.models import parse_time

DEFAULT_METADATA_URL = "http://169.254.169.254"
TOKEN_PATH = "/meta-data/latest/api/token"  # noqa: S105 - a URL path
SECURITY_KEY_PATH = "/openstack/latest/securitykey"
TOKEN_TTL_HEADER = "X-Metadata-Token-Ttl-Seconds"  # noqa: S105 - a header name
TOKEN_HEADER = "X-Metadata-Token"  # noqa: S105 - a header name
#: The session token's lifetime we ask for (the SDK's value; the service allows 1..21600).
TOKEN_TTL_SECONDS = 21600
#: Ask for a new session token this long before the old one ends.
TOKEN_RENEW_MARGIN = 60.0
#: Statuses of a metadata service without the token API (the SDK then goes without a token).
NO_TOKEN_API = frozenset({404, 405, 503})
NO_AGENCY_TEXT = "Please configure Cloud Service Agency first"
#: The SDK's (connect, read) timeouts for the metadata service: it is on the host's own link.
DEFAULT_TIMEOUT = (3.0, 3.0)


class MetadataCredentials(RefreshingCredentials):
    """The host agency's temporary credentials, refreshed before they expire."""

    def __init__(
        self,
        base_url: str = DEFAULT_METADATA_URL,
        *,
        timeout: tuple[float, float] = DEFAULT_TIMEOUT,
        session: requests.Session | None = None,
        user_agent: str | None = None,
        **refresh: Any,
    ) -> None:
        super().__init__(**refresh)
        if not base_url.startswith(("http://", "https://")):
            raise CredentialError(f"the metadata URL must be http(s), got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self._timeout = timeout
        self._owns_session = session is None
        self._session = session or plain_session(user_agent)
        self._token: str | None = None
        #: Monotonic time after which the session token (or its absence) is asked again.
        self._token_until = float("-inf")

    def describe(self) -> str:
        margin = self.refresh_margin.total_seconds() / 60
        return (
            f"the ECS/BMS metadata service at {self.base_url} (temporary credentials of the "
            f"host's agency, refreshed {margin:g} min before expiry)"
        )

    def close(self) -> None:
        if self._owns_session:
            self._session.close()

    # Runs under the refresh lock: one caller at a time.
    def _fetch(self) -> Credential:
        if time.monotonic() >= self._token_until:
            self._renew_token(required=False)
        response = self._get_security_key()
        if response.status_code == 401 and NO_AGENCY_TEXT not in response.text:
            self._renew_token(required=True)
            response = self._get_security_key()
        if response.status_code == 401 and NO_AGENCY_TEXT in response.text:
            raise CredentialError(
                f"the metadata service at {self.base_url} says this host has no agency "
                f"({NO_AGENCY_TEXT!r}): attach one to the server"
            )
        if not 200 <= response.status_code < 300:
            raise _failed(error_from_response(response, is_post=False))
        try:
            document = decode_json(response, is_post=False)
        except BmsError as error:
            raise _failed(error) from None
        try:
            return credential_from(document.get("credential"), METADATA_FIELDS, "credential")
        except BmsError as error:
            raise _failed(error) from None

    def _renew_token(self, *, required: bool) -> None:
        try:
            response = self._session.put(
                f"{self.base_url}{TOKEN_PATH}",
                headers={TOKEN_TTL_HEADER: str(TOKEN_TTL_SECONDS)},
                timeout=self._timeout,
                allow_redirects=False,
            )
        except requests.RequestException as exc:
            raise _failed(error_from_exception(exc, is_post=False)) from None
        if 200 <= response.status_code < 300 and response.text.strip():
            self._token = response.text.strip()
            self._token_until = time.monotonic() + TOKEN_TTL_SECONDS - TOKEN_RENEW_MARGIN
        elif response.status_code in NO_TOKEN_API and not required:
            self._token = None
            self._token_until = time.monotonic() + TOKEN_TTL_SECONDS
        else:
            raise _failed(error_from_response(response, is_post=False))

    def _get_security_key(self) -> requests.Response:
        headers = {TOKEN_HEADER: self._token} if self._token else {}
        try:
            return self._session.get(
                f"{self.base_url}{SECURITY_KEY_PATH}",
                headers=headers,
                timeout=self._timeout,
                allow_redirects=False,
            )
        except requests.RequestException as exc:
            raise _failed(error_from_exception(exc, is_post=False)) from None


#: The answer's field names for the AK, SK, security token and expiry.
METADATA_FIELDS = ("access", "secret", "securitytoken", "expires_at")


def credential_from(value: Any, names: tuple[str, str, str, str], what: str) -> Credential:
    """A temporary credential from an answer's object ``value`` whose fields ``names`` hold the
    AK, SK, security token and expiry (ISO 8601); raises ProtocolError naming what is missing,
    never quoting a value."""
    fields = value if isinstance(value, dict) else {}
    missing = [name for name in names if not isinstance(fields.get(name), str) or not fields[name]]
    if missing:
        raise ProtocolError(f"the answer's {what} has no {', '.join(missing)}")
    ak, sk, token, expiry = (fields[name] for name in names)
    expires_at = parse_time(expiry)
    if expires_at is None:
        raise ProtocolError(f"the answer's {what}.{names[3]} is not a time")
    return Credential(ak, sk, token, expires_at)


def _failed(error: BmsError) -> BmsError:
    error.message = f"metadata credential request failed: {error.message}"
    error.args = (error.message,)
    return error
