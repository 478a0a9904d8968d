"""IAM password-token authentication, the alternative to AK/SK signing.

:class:`TokenAuth` is a ``requests`` auth object like :class:`~worker.bms.signing.AkSkAuth`. It
gets a project-scoped token from ``POST {iam}/v3/auth/tokens`` (password identity, project scope
by id), reads it from the ``X-Subject-Token`` response header and caches it per project id until
shortly before its ``expires_at``. The project comes from the request's ``X-Project-Id`` header,
which :class:`~worker.bms.client.BmsClient` sets on every call. The client asks for one refresh
(:meth:`TokenAuth.invalidate`) when the API answers 401 to a token it believed valid.

The password, the token and the IAM request body never appear in a repr, log line or error.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from worker.bms.errors import (
    BmsError,
    ConfigurationError,
    decode_json,
    error_from_exception,
    error_from_response,
    protocol_error,
)
from worker.bms.models import parse_time

log = logging.getLogger(__name__)

#: Refresh this long before ``expires_at`` (tokens live 24 h), or at a tenth of a short lifetime.
TOKEN_REFRESH_MARGIN = timedelta(minutes=5)
#: Assumed lifetime when the IAM answer carries no usable ``expires_at``.
FALLBACK_TOKEN_LIFETIME = timedelta(hours=1)
TOKEN_PATH = "/v3/auth/tokens"  # noqa: S105 - a URL path, not a password


@dataclass(frozen=True, slots=True)
class _Token:
    value: str
    refresh_at: datetime


class TokenAuth(requests.auth.AuthBase):
    """Adds ``X-Auth-Token`` for the request's project (``X-Project-Id``), fetching as needed."""

    def __init__(
        self,
        iam_endpoint: str,
        user: str,
        password: str,
        domain: str,
        *,
        timeout: tuple[float, float] = (5.0, 30.0),
        verify: bool | str = True,
        session: requests.Session | None = None,
        user_agent: str | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        if not (iam_endpoint and user and password and domain):
            raise ConfigurationError("token auth needs an IAM endpoint, user, password and domain")
        self.iam_endpoint = iam_endpoint.rstrip("/")
        self.user = user
        self.domain = domain
        self._password = password
        self._timeout = timeout
        self._verify = verify
        self._owns_session = session is None
        self._session = session or plain_session(user_agent)
        self._clock = clock or (lambda: datetime.now(UTC))
        self._tokens: dict[str, _Token] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return (
            f"TokenAuth(iam_endpoint={self.iam_endpoint!r}, user={self.user!r}, "
            f"domain={self.domain!r})"
        )

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        project_id = r.headers.get("X-Project-Id")
        if not project_id:
            raise ConfigurationError("token auth needs the X-Project-Id header on the request")
        r.headers["X-Auth-Token"] = self.token(str(project_id))
        return r

    def token(self, project_id: str) -> str:
        """A valid token for ``project_id``, from the cache or fresh from IAM."""
        with self._lock:
            cached = self._tokens.get(project_id)
            if cached is None or self._clock() >= cached.refresh_at:
                cached = self._tokens[project_id] = self._fetch(project_id)
            return cached.value

    def invalidate(self, project_id: str) -> bool:
        """Forget the project's token: the API refused it (revoked, or expired early). True:
        the next request fetches a new one, so sending again may succeed."""
        with self._lock:
            self._tokens.pop(project_id, None)
        return True

    def add_response_hook(self, hook: Any) -> None:
        self._session.hooks["response"].append(hook)

    def close(self) -> None:
        if self._owns_session:
            self._session.close()

    def _fetch(self, project_id: str) -> _Token:
        body = {
            "auth": {
                "identity": {
                    "methods": ["password"],
                    "password": {
                        "user": {
                            "name": self.user,
                            "password": self._password,
                            "domain": {"name": self.domain},
                        }
                    },
                },
                "scope": {"project": {"id": project_id}},
            }
        }
        # Errors are built with is_post=False: whatever happened to the token request, the
        # BMS request it was for has not been sent.
        try:
            response = self._session.post(
                f"{self.iam_endpoint}{TOKEN_PATH}",
                params={"nocatalog": "true"},
                data=json.dumps(body).encode("utf-8"),
                headers={"Content-Type": "application/json;charset=utf8"},
                timeout=self._timeout,
                verify=self._verify,
                allow_redirects=False,
            )
        except requests.RequestException as exc:
            raise _from_iam(error_from_exception(exc, is_post=False)) from None
        if not 200 <= response.status_code < 300:
            raise _from_iam(error_from_response(response, is_post=False))
        value = response.headers.get("X-Subject-Token")
        if not value:
            raise _from_iam(protocol_error(response, "no X-Subject-Token header", is_post=False))
        try:
            token = decode_json(response, is_post=False).get("token")
        except BmsError as error:
            raise _from_iam(error) from None
        expires_at = parse_time(token.get("expires_at")) if isinstance(token, dict) else None
        now = self._clock()
        lifetime = (expires_at - now) if expires_at else FALLBACK_TOKEN_LIFETIME
        refresh_at = now + lifetime - min(TOKEN_REFRESH_MARGIN, lifetime / 10)
        log.info("fetched an IAM token for project %s, refresh at %s", project_id, refresh_at)
        return _Token(value=value, refresh_at=refresh_at)


def _from_iam(error: BmsError) -> BmsError:
    error.message = f"IAM token request failed: {error.message}"
    error.args = (error.message,)
    return error


def plain_session(user_agent: str | None) -> requests.Session:
    """A session of its own for credential calls (IAM, metadata, STS): no automatic retries."""
    session = requests.Session()
    if user_agent:
        session.headers["User-Agent"] = user_agent
    adapter = HTTPAdapter(max_retries=Retry(total=0, read=False, redirect=False))
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return session
