"""Who may call: SDK-HMAC-SHA256 signatures (AK/SK) and the AK lockout of the API gateway.

Verification follows ``docs/bms-api.md`` (section 6) with the shared code of
``worker.bms.signing``: the signed header names come from the ``Authorization`` header, their
values from the request as received (``Host`` with its port), the payload hash from the body
bytes; ``X-Sdk-Date`` must be present, signed, and within 15 minutes of the simulator's clock.
Every failure is 401 APIGW.0301. Messages never carry the SK or the signature.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field
from datetime import UTC, datetime

from worker.bms.signing import parse_authorization, parse_sdk_date, signature

#: The gateway's tolerance between X-Sdk-Date and its own clock.
MAX_SKEW_SECONDS = 15 * 60
SIGNATURE_FAIL = "verify aksk signature fail"


@dataclass(frozen=True)
class Incoming:
    """A received request, as the endpoints see it. ``headers`` has lower-case names."""

    method: str
    target: str
    path: str
    headers: dict[str, str]
    body: bytes
    request_id: str


class AuthFailure(Exception):
    """A 401: ``detail`` follows ``Incorrect IAM authentication information: ``."""

    def __init__(self, detail: str, ak: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        #: The AK whose signature failed (counts toward its lockout); None for other failures.
        self.ak = ak


class TenantMismatch(Exception):
    """The project of the token or of ``X-Project-Id`` is not the project of the URL."""


def access_key(request: Incoming) -> str | None:
    """The AK named by the Authorization header, if it parses."""
    fields = parse_authorization(request.headers.get("authorization", ""))
    return fields["Access"] if fields else None


def verify_signature(request: Incoming, credentials: dict[str, str], now: float) -> str:
    """The AK of a correctly signed request; raises :class:`AuthFailure` otherwise."""
    fields = parse_authorization(request.headers.get("authorization", ""))
    if fields is None:
        raise AuthFailure(f"{SIGNATURE_FAIL}, Authorization header is missing or malformed")
    ak = fields["Access"]
    sk = credentials.get(ak)
    if sk is None:
        raise AuthFailure("Get secretKey failed,ak:******,err:ak not exist")
    signed = [name.strip().lower() for name in fields["SignedHeaders"].split(";") if name]
    if "x-sdk-date" not in signed:
        raise AuthFailure(f"{SIGNATURE_FAIL}, X-Sdk-Date must be signed", ak)
    if any(name not in request.headers for name in signed):
        raise AuthFailure(f"{SIGNATURE_FAIL}, a signed header is missing", ak)
    sdk_date = request.headers["x-sdk-date"]
    try:
        signed_at = parse_sdk_date(sdk_date).timestamp()
    except ValueError:
        raise AuthFailure(f"{SIGNATURE_FAIL}, X-Sdk-Date is malformed", ak) from None
    if abs(now - signed_at) > MAX_SKEW_SECONDS:
        server_time = datetime.fromtimestamp(now, UTC).strftime("%Y%m%dT%H%M%SZ")
        raise AuthFailure(
            f"signature expired, signature time:{sdk_date},server time:{server_time}", ak
        )
    expected = signature(sk, request.method, request.target, request.headers, signed, request.body)
    if not hmac.compare_digest(expected, fields["Signature"].strip().lower()):
        raise AuthFailure(SIGNATURE_FAIL, ak)
    return ak


@dataclass
class Lockout:
    """Locks an AK for ``seconds`` after more than ``failures`` consecutive signature failures.

    Not thread-safe: the caller holds the state lock."""

    _failures: dict[str, int] = field(default_factory=dict)
    _locked_until: dict[str, float] = field(default_factory=dict)

    def is_locked(self, ak: str, now: float) -> bool:
        until = self._locked_until.get(ak)
        if until is None:
            return False
        if now >= until:
            del self._locked_until[ak]
            self._failures.pop(ak, None)
            return False
        return True

    def record(self, ak: str, ok: bool, now: float, failures: int | None, seconds: float) -> None:
        if ok or failures is None:
            self._failures.pop(ak, None)
            return
        count = self._failures[ak] = self._failures.get(ak, 0) + 1
        if count > failures:
            self._locked_until[ak] = now + seconds

    def clear(self) -> None:
        self._failures.clear()
        self._locked_until.clear()
