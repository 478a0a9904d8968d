"""IAM tokens: ``POST /v3/auth/tokens`` (password identity, project scope) and their store.

The simulator answers on one base URL for both BMS and IAM. A token is opaque, scoped to one
project and valid for ``token_ttl`` seconds; it is sent back as ``X-Auth-Token``. Project names
resolve through ``SimulatorConfig.projects``; an unlisted name gets a stable id derived from its
domain and name, so any scope works without setup. IAM's own errors use its keystone-style
envelope ``{"error": {"code": <int>, "title", "message"}}``.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from worker.simulator.config import SimulatorConfig, iam_user_key
from worker.simulator.wire import Reply, json_reply

#: Real IAM tokens are long base64 strings starting "MII"; ours say they are simulated.
TOKEN_PREFIX = "MIIsim"  # noqa: S105 - a marker, not a secret


@dataclass(frozen=True)
class Token:
    project_id: str
    issued_at: float
    expires_at: float


class TokenRequestError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message

    def reply(self) -> Reply:
        title = "Unauthorized" if self.status == 401 else "Bad Request"
        return json_reply(
            self.status, {"error": {"code": self.status, "title": title, "message": self.message}}
        )


def _stable_id(*parts: str) -> str:
    return hashlib.sha256(":".join(parts).encode("utf-8")).hexdigest()[:32]


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _dig(document: Any, *keys: str) -> Any:
    for key in keys:
        document = document.get(key) if isinstance(document, dict) else None
    return document


@dataclass(frozen=True)
class Grant:
    """A verified token request: who, in which project."""

    domain: str
    user: str
    project_id: str
    project_name: str


def check_request(body: bytes, config: SimulatorConfig) -> Grant:
    """The grant a token request earns; raises :class:`TokenRequestError`."""
    try:
        document = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise TokenRequestError(400, "The request body is not valid JSON.") from None
    identity = _dig(document, "auth", "identity")
    user = _dig(identity, "password", "user")
    if "password" not in (_dig(identity, "methods") or []) or not isinstance(user, dict):
        raise TokenRequestError(400, "Only password identity is supported here.")
    name, password = user.get("name"), user.get("password")
    domain = _dig(user, "domain", "name")
    if not all(isinstance(v, str) for v in (name, password, domain)):
        raise TokenRequestError(400, "user.name, user.password and user.domain.name are required.")
    expected = config.iam_users.get(iam_user_key(str(domain), str(name)))
    if expected is None or not secrets.compare_digest(expected, str(password)):
        raise TokenRequestError(401, "The username or password is wrong.")
    project = _dig(document, "auth", "scope", "project")
    project_id, project_name = _dig(project, "id"), _dig(project, "name")
    if isinstance(project_id, str) and project_id:
        names = {pid: pname for pname, pid in config.projects.items()}
        project_name = names.get(project_id, project_id)
    elif isinstance(project_name, str) and project_name:
        project_id = config.projects.get(project_name) or _stable_id(
            "project", domain, project_name
        )
    else:
        raise TokenRequestError(400, "A project scope (scope.project.id or .name) is required.")
    return Grant(str(domain), str(name), str(project_id), str(project_name))


def issue(grant: Grant, now: float, ttl: float) -> tuple[str, Token, Reply]:
    """A new token for ``grant``: its value, its record and the 201 answer."""
    value = TOKEN_PREFIX + secrets.token_urlsafe(96)
    token = Token(grant.project_id, now, now + ttl)
    domain = {"id": _stable_id("domain", grant.domain), "name": grant.domain}
    body = {
        "token": {
            "expires_at": _iso(token.expires_at),
            "issued_at": _iso(now),
            "methods": ["password"],
            "project": {"id": grant.project_id, "name": grant.project_name, "domain": domain},
            "user": {
                "id": _stable_id("user", grant.domain, grant.user),
                "name": grant.user,
                "domain": domain,
            },
            "roles": [{"id": _stable_id("role", "te_admin"), "name": "te_admin"}],
            "catalog": [],
        }
    }
    return value, token, json_reply(201, body, (("X-Subject-Token", value),))


class TokenStore:
    """Issued tokens by value. Not thread-safe: the caller holds the state lock."""

    def __init__(self) -> None:
        self._tokens: dict[str, Token] = {}

    def add(self, value: str, token: Token) -> None:
        self._tokens[value] = token

    def lookup(self, value: str, now: float) -> Token | str:
        """The token, or why it is refused (the detail of the APIGW.0301 message)."""
        token = self._tokens.get(value)
        if token is None:
            return "decrypt token fail"
        if now >= token.expires_at:
            del self._tokens[value]
            return "The token must be updated"
        return token

    def clear(self) -> None:
        self._tokens.clear()

    def values(self) -> list[str]:
        """The tokens issued and not forgotten (a test looks for them where none may be)."""
        return list(self._tokens)
