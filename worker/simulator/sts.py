"""Temporary credentials: the metadata service, STS assume-agency, and the gateway's check of a
temporary AK's security token.

Routes (``docs/bms-api.md`` sections 7 and 8 for the real ones):

- ``PUT /meta-data/latest/api/token`` with ``X-Metadata-Token-Ttl-Seconds`` (1..21600): 200, the
  session token as text.
- ``GET /openstack/latest/securitykey`` with a valid ``X-Metadata-Token``: 200 ``{"credential":
  {"access", "secret", "securitytoken", "expires_at"}}``, a fresh temporary credential of the
  host's agency valid ``metadata_credential_ttl`` seconds; without a valid session token 401.
- ``POST /v5/agencies/assume`` signed with AK/SK (permanent, or temporary with its token):
  200 ``{"credentials": {"access_key_id", "secret_access_key", "security_token",
  "expiration"}, "assumed_agency": {"urn", "id"}}`` valid ``duration_seconds`` (or
  ``agency_credential_ttl``).

**Stateless by design.** A temporary credential is derived from the knob ``sts_secret``: its SK
is an HMAC of its AK, and its security token carries the AK, the expiry and where it came from,
sealed by an HMAC (the real gateway likewise decrypts the token). So simulators sharing the
secret (one per region) accept each other's temporary credentials, as the cloud's are valid in
every region, and ``reset`` has nothing to forget.

**The check** (:func:`check_temporary`), after the signature verified with the derived SK: with
``security_token`` on (the default, as the gateway), the request must carry the credential's
``X-Security-Token`` and sign it, and the credential must not have expired. Off, a missing or
unsigned token is let through (a present one is still checked). Failures are 401 APIGW.0301.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
import string
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from worker.bms.signing import parse_authorization
from worker.simulator import wire
from worker.simulator.auth import AuthFailure, Incoming
from worker.simulator.config import SimulatorConfig
from worker.simulator.wire import Reply

if TYPE_CHECKING:
    from worker.simulator.state import SimulatorState

METADATA_TOKEN_PATH = "/meta-data/latest/api/token"  # noqa: S105 - a URL path
SECURITY_KEY_PATH = "/openstack/latest/securitykey"
ASSUME_PATH = "/v5/agencies/assume"
ROUTES = ("metadata_token", "securitykey", "assume_agency")
METADATA_TOKEN_MAX_TTL = 21600
#: Temporary AKs look like the STS documentation's example (``HSTANOXZU2UXBS55JLJ3``).
TEMPORARY_AK_PREFIX = "HSTA"
TEMPORARY_AK_LENGTH = 20
_AK_ALPHABET = string.ascii_uppercase + string.digits
#: A caller signing with a security token may ask STS for at most this.
MAX_DURATION_WITH_TOKEN = 3600
MIN_DURATION, MAX_DURATION, DEFAULT_DURATION = 900, 43200, 3600
_SESSION_NAME = re.compile(r"[A-Za-z0-9_+=,.@-]{2,128}")
_AGENCY_URN = re.compile(r"iam::(?P<account>[^:]+):agency:(?P<name>.+)")
#: STS's envelope is the gateway's (``error_code``, ``error_msg``); STS5.1106 is documented,
#: the code of an invalid request is our choice.
STS_INVALID = "STS5.0400"
STS_NO_AGENCY = "STS5.1106"
NO_AGENCY_TEXT = "Please configure Cloud Service Agency first"
TEXT_TYPE = "text/plain;charset=UTF-8"


def route_of(request: Incoming) -> str | None:
    """The route name of a metadata or STS call, None for anything else."""
    return {
        ("PUT", METADATA_TOKEN_PATH): "metadata_token",
        ("GET", SECURITY_KEY_PATH): "securitykey",
        ("POST", ASSUME_PATH): "assume_agency",
    }.get((request.method, request.path))


# --- sealing: the derived SK, the security token, the metadata session token -----------------
def _mac(secret: str, purpose: str, data: bytes) -> bytes:
    return hmac.new(
        secret.encode("utf-8"), purpose.encode("utf-8") + b"\0" + data, "sha256"
    ).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _seal(secret: str, purpose: str, claims: dict[str, Any]) -> str:
    payload = _b64(json.dumps(claims, separators=(",", ":")).encode("utf-8"))
    return payload + "." + _b64(_mac(secret, purpose, payload.encode("ascii")))


def _unseal(secret: str, purpose: str, value: str) -> dict[str, Any] | None:
    payload, _, mac = value.partition(".")
    try:
        expected = _b64(_mac(secret, purpose, payload.encode("ascii")))
        if not mac or not hmac.compare_digest(expected, mac):
            return None
        claims = json.loads(_unb64(payload))
    except (UnicodeError, ValueError):
        return None
    return claims if isinstance(claims, dict) else None


def is_temporary_ak(ak: str) -> bool:
    return len(ak) == TEMPORARY_AK_LENGTH and ak.startswith(TEMPORARY_AK_PREFIX)


def is_security_token(secret: str, value: str) -> bool:
    """Whether ``value`` is a security token sealed with ``secret`` (tests look for one where
    no secret may be)."""
    return _unseal(secret, "security-token", value) is not None


def derive_sk(secret: str, ak: str) -> str:
    """The SK of a temporary AK: what the gateway recovers from its secret."""
    return _b64(_mac(secret, "sk", ak.encode("utf-8")))[:40]


@dataclass(frozen=True, slots=True)
class Issued:
    ak: str
    sk: str
    security_token: str
    expires_at: float
    #: ``metadata`` or ``agency:<urn>``: what the credential acts as.
    source: str


def issue(config: SimulatorConfig, source: str, now: float, ttl: float) -> Issued:
    """A new temporary credential valid ``ttl`` seconds."""
    ak = TEMPORARY_AK_PREFIX + "".join(
        secrets.choice(_AK_ALPHABET) for _ in range(TEMPORARY_AK_LENGTH - len(TEMPORARY_AK_PREFIX))
    )
    expires_at = now + ttl
    claims = {"ak": ak, "exp": expires_at, "src": source, "n": secrets.token_hex(8)}
    token = _seal(config.sts_secret, "security-token", claims)
    return Issued(ak, derive_sk(config.sts_secret, ak), token, expires_at, source)


def check_temporary(request: Incoming, ak: str, config: SimulatorConfig, now: float) -> str:
    """After the signature verified with the derived SK: the credential's source, or
    :class:`AuthFailure` for a missing, unsigned, foreign or expired security token."""
    token = request.headers.get("x-security-token")
    fields = parse_authorization(request.headers.get("authorization", "")) or {}
    signed = {name.strip().lower() for name in fields.get("SignedHeaders", "").split(";")}
    if token is None:
        if config.security_token:
            raise AuthFailure("a temporary AK needs its X-Security-Token")
        return "temporary"
    claims = _unseal(config.sts_secret, "security-token", token.strip())
    if claims is None:
        raise AuthFailure("decrypt security token fail")
    if claims.get("ak") != ak:
        raise AuthFailure("the security token does not belong to this AK")
    expires_at = claims.get("exp")
    if not isinstance(expires_at, int | float) or now >= expires_at:
        raise AuthFailure("the security token has expired")
    if config.security_token and "x-security-token" not in signed:
        raise AuthFailure("X-Security-Token must be signed")
    return str(claims.get("src", "temporary"))


def _iso(epoch: float) -> str:
    # The format the SDK parses expires_at with: %Y-%m-%dT%H:%M:%S.%fZ.
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# --- the routes ---------------------------------------------------------------------------
def handle(state: SimulatorState, route: str, request: Incoming, now: float) -> tuple[Reply, bool]:
    """The answer of a credential route and whether it was accepted (the caller counts it)."""
    if route == "metadata_token":
        return _metadata_token(state.config, request, now)
    if route == "securitykey":
        return _security_key(state, request, now)
    return _assume_agency(state, request, now)


def _text(status: int, text: str) -> Reply:
    return Reply(status, text.encode("utf-8"), content_type=TEXT_TYPE)


def _metadata_token(config: SimulatorConfig, request: Incoming, now: float) -> tuple[Reply, bool]:
    value = request.headers.get("x-metadata-token-ttl-seconds", "")
    try:
        ttl = int(value)
    except ValueError:
        ttl = 0
    if not 1 <= ttl <= METADATA_TOKEN_MAX_TTL:
        why = f"X-Metadata-Token-Ttl-Seconds must be 1..{METADATA_TOKEN_MAX_TTL}"
        return _text(400, why), False
    return _text(200, _seal(config.sts_secret, "metadata-token", {"exp": now + ttl})), True


def _security_key(state: SimulatorState, request: Incoming, now: float) -> tuple[Reply, bool]:
    config = state.config
    if not config.metadata_agency:
        return _text(401, NO_AGENCY_TEXT), False
    claims = _unseal(
        config.sts_secret, "metadata-token", request.headers.get("x-metadata-token", "")
    )
    expiry = claims.get("exp") if claims else None
    if not isinstance(expiry, int | float) or now >= expiry:
        return _text(401, "Unauthorized: a valid X-Metadata-Token is required"), False
    issued = issue(config, "metadata", now, config.metadata_credential_ttl)
    state.record_issued(issued.source, issued.ak)
    body = {
        "credential": {
            "access": issued.ak,
            "secret": issued.sk,
            "securitytoken": issued.security_token,
            "expires_at": _iso(issued.expires_at),
        }
    }
    return wire.json_reply(200, body), True


def _assume_agency(state: SimulatorState, request: Incoming, now: float) -> tuple[Reply, bool]:
    config = state.config
    try:
        caller = state.verify_aksk(request, now)
    except AuthFailure as failure:
        return wire.auth_error(failure.detail, request.request_id), False
    parsed = _assume_request(request.body, with_token=caller != "permanent")
    if isinstance(parsed, str):
        return wire.gateway_error(400, STS_INVALID, parsed, request.request_id), False
    urn, name, duration = parsed
    if config.agencies and urn not in config.agencies:
        message = f"the agency '{urn}' cannot be found"
        return wire.gateway_error(404, STS_NO_AGENCY, message, request.request_id), False
    issued = issue(config, f"agency:{urn}", now, config.agency_credential_ttl or float(duration))
    state.record_issued(issued.source, issued.ak)
    match = _AGENCY_URN.fullmatch(urn)
    account, agency = (match["account"], match["name"]) if match else ("unknown", urn)
    agency_id = hashlib.sha256(urn.encode("utf-8")).hexdigest()[:32]
    body = {
        "assumed_agency": {
            "urn": f"sts::{account}:assumed-agency:{agency}/{name}",
            "id": f"{agency_id}:{name}",
        },
        "credentials": {
            "access_key_id": issued.ak,
            "secret_access_key": issued.sk,
            "security_token": issued.security_token,
            "expiration": _iso(issued.expires_at),
        },
    }
    return wire.json_reply(200, body), True


def _assume_request(body: bytes, *, with_token: bool) -> tuple[str, str, int] | str:
    """``(agency_urn, agency_session_name, duration_seconds)``, or why the body is refused."""
    try:
        document = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        document = None
    if not isinstance(document, dict):
        return "The request body is not a JSON object."
    urn, name = document.get("agency_urn"), document.get("agency_session_name")
    duration = document.get("duration_seconds", DEFAULT_DURATION)
    if not isinstance(urn, str) or not 0 < len(urn) <= 1500:
        return "agency_urn is required (at most 1500 characters)."
    if not isinstance(name, str) or not _SESSION_NAME.fullmatch(name):
        return "agency_session_name must be 2 to 128 characters."
    if isinstance(duration, bool) or not isinstance(duration, int):
        return "duration_seconds must be an integer."
    if not MIN_DURATION <= duration <= MAX_DURATION:
        return f"duration_seconds must be within [{MIN_DURATION}, {MAX_DURATION}]."
    if with_token and duration > MAX_DURATION_WITH_TOKEN:
        return (
            f"duration_seconds cannot exceed {MAX_DURATION_WITH_TOKEN} when X-Security-Token "
            "is carried."
        )
    return urn, name, duration
