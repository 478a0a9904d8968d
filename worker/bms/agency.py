"""Temporary credentials of an agency (often another account's), from STS AssumeAgency.

``POST {sts}/v5/agencies/assume``, signed with the AK/SK of the caller (another provider: an
account's permanent keys, or temporary ones, whose security token is then sent and signed):

- body ``{"agency_urn": "iam::<account id>:agency:<name>", "agency_session_name": "<2..128>",
  "duration_seconds": 900..43200}`` (the API's default 3600);
- a caller that signs with a security token may ask for at most 3600 seconds;
- the answer ``{"credentials": {"access_key_id", "secret_access_key", "security_token",
  "expiration"}, "assumed_agency": {...}}``.

The STS endpoint is ``https://sts.{region}.myhuaweicloud.com`` (any region's serves every
region); ``BMSREBOOT_STS_ENDPOINT`` overrides it. Facts restated in ``docs/bms-api.md``
(section 9). Refreshing, the lock and the backoff are
:class:`~worker.bms.credentials.RefreshingCredentials`.
"""

from __future__ import annotations

import json
import re
from typing import Any

import requests

from worker.bms.auth import plain_session
from worker.bms.credentials import Credential, CredentialProvider, RefreshingCredentials
from worker.bms.errors import (
    BmsError,
    CredentialError,
    decode_json,
    error_from_exception,
    error_from_response,
)
from worker.bms.metadata import credential_from
from worker.bms.signing import AkSkAuth

ASSUME_PATH = "/v5/agencies/assume"
DEFAULT_SESSION_NAME = "bmsreboot"
DEFAULT_DURATION = 3600
MIN_DURATION = 900
MAX_DURATION = 43200
#: The longest a caller signing with a security token may ask for.
MAX_DURATION_WITH_TOKEN = 3600
#: The API allows 2..128 characters; we also keep to characters safe in any URN.
_SESSION_NAME = re.compile(r"[A-Za-z0-9_+=,.@-]{2,128}")
STS_FIELDS = ("access_key_id", "secret_access_key", "security_token", "expiration")
JSON_CONTENT_TYPE = "application/json;charset=UTF-8"


def default_sts_endpoint(region: str) -> str:
    return f"https://sts.{region}.myhuaweicloud.com"


class AgencyCredentials(RefreshingCredentials):
    """The agency's temporary credentials, assumed with ``via``'s, refreshed before expiry."""

    def __init__(
        self,
        agency_urn: str,
        *,
        via: CredentialProvider,
        sts_endpoint: str = default_sts_endpoint("cn-north-4"),
        session_name: str = DEFAULT_SESSION_NAME,
        duration_seconds: int = DEFAULT_DURATION,
        timeout: tuple[float, float] = (5.0, 30.0),
        verify: bool | str = True,
        session: requests.Session | None = None,
        user_agent: str | None = None,
        **refresh: Any,
    ) -> None:
        super().__init__(**refresh)
        if not isinstance(agency_urn, str) or not agency_urn.strip():
            raise CredentialError(
                "an agency needs its agency_urn (iam::<account id>:agency:<name>)"
            )
        if not _SESSION_NAME.fullmatch(session_name):
            raise CredentialError(
                "agency_session_name must be 2 to 128 letters, digits or _+=,.@-, "
                f"got {session_name!r}"
            )
        if isinstance(duration_seconds, bool) or not isinstance(duration_seconds, int):
            raise CredentialError("duration_seconds must be a whole number of seconds")
        if not MIN_DURATION <= duration_seconds <= MAX_DURATION:
            raise CredentialError(
                f"duration_seconds must be within {MIN_DURATION}..{MAX_DURATION}, "
                f"got {duration_seconds}"
            )
        if via.temporary and duration_seconds > MAX_DURATION_WITH_TOKEN:
            raise CredentialError(
                f"duration_seconds is at most {MAX_DURATION_WITH_TOKEN} when the caller signs "
                f"with temporary credentials ({via.describe()}), got {duration_seconds}"
            )
        if not sts_endpoint.startswith(("https://", "http://")):
            raise CredentialError(f"the STS endpoint must be an http(s) URL, got {sts_endpoint!r}")
        self.agency_urn = agency_urn.strip()
        self.via = via
        self.sts_endpoint = sts_endpoint.rstrip("/")
        self.session_name = session_name
        self.duration_seconds = duration_seconds
        self._timeout = timeout
        self._verify = verify
        self._owns_session = session is None
        self._session = session or plain_session(user_agent)
        self._auth = AkSkAuth(provider=via)

    def describe(self) -> str:
        return (
            f"agency {self.agency_urn} (session {self.session_name}, {self.duration_seconds} s) "
            f"assumed at {self.sts_endpoint} as {self.via.describe()}"
        )

    def close(self) -> None:
        if self._owns_session:
            self._session.close()

    def _fetch(self) -> Credential:
        caller = self.via.get()
        duration = self.duration_seconds
        if caller.temporary:
            # Checked at construction when the caller is known to be temporary; a file may
            # gain a token later, and the API refuses more than this with one.
            duration = min(duration, MAX_DURATION_WITH_TOKEN)
        body = json.dumps(
            {
                "agency_urn": self.agency_urn,
                "agency_session_name": self.session_name,
                "duration_seconds": duration,
            }
        ).encode("utf-8")
        response = self._post(body)
        if response.status_code == 401 and self._auth.invalidate(""):
            response = self._post(body)  # a 401 issued nothing: safe to send again
        if not 200 <= response.status_code < 300:
            raise _failed(error_from_response(response, is_post=False))
        try:
            document = decode_json(response, is_post=False)
            return credential_from(document.get("credentials"), STS_FIELDS, "credentials")
        except BmsError as error:
            raise _failed(error) from None

    def _post(self, body: bytes) -> requests.Response:
        try:
            return self._session.post(
                f"{self.sts_endpoint}{ASSUME_PATH}",
                data=body,
                headers={"Content-Type": JSON_CONTENT_TYPE, "Accept": "application/json"},
                auth=self._auth,
                timeout=self._timeout,
                verify=self._verify,
                allow_redirects=False,
            )
        except BmsError as error:
            raise _failed(error) from None  # the caller's own credential could not be had
        except requests.RequestException as exc:
            raise _failed(error_from_exception(exc, is_post=False)) from None


def _failed(error: BmsError) -> BmsError:
    error.message = f"STS assume-agency request failed: {error.message}"
    error.args = (error.message,)
    return error
