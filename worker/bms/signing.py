"""SDK-HMAC-SHA256 request signing, the algorithm of Huawei Cloud's API gateway.

The client attaches :class:`AkSkAuth` to each request; the simulator verifies with
:func:`signature`. Both sides share the canonical-request code below, and the tests hold it
byte for byte against the official SDK's ``huaweicloudsdkcore.signer.Signer`` (the oracle).

Rules (``docs/bms-api.md``, section 6): the canonical URI is the path with each segment
percent-encoded and a trailing ``/`` appended; the query pairs are sorted and encoded; every signed
header is ``name:value.strip()``; the payload hash is the SHA-256 of the body bytes; the key is the
SK itself (no derivation).
"""

from __future__ import annotations

import hashlib
import hmac
import threading
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from urllib.parse import parse_qsl, quote, unquote, urlsplit

import requests

from worker.bms.credentials import Credential, CredentialProvider, StaticCredentials

ALGORITHM = "SDK-HMAC-SHA256"
DATE_FORMAT = "%Y%m%dT%H%M%SZ"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
#: Headers our client signs when present. The SDK signs every header it set itself; the gateway
#: requires only X-Sdk-Date. We sign these and leave transport headers (Accept-Encoding,
#: Connection, Content-Length) unsigned, as the SDK does.
SIGNED_HEADER_NAMES = (
    "content-type",
    "host",
    "x-project-id",
    "x-sdk-content-sha256",
    "x-sdk-date",
    "x-security-token",
)


def _encode(value: str) -> str:
    return quote(value, safe="~")


def canonical_uri(path: str) -> str:
    uri = "/".join(_encode(segment) for segment in unquote(path).split("/"))
    return uri if uri.endswith("/") else uri + "/"


def canonical_query(pairs: Iterable[tuple[str, str]]) -> str:
    return "&".join(f"{_encode(k)}={_encode(v)}" for k, v in sorted(pairs))


def canonical_request(
    method: str,
    path: str,
    query_pairs: Iterable[tuple[str, str]],
    headers: Mapping[str, str],
    signed_headers: list[str],
    body: bytes,
) -> str:
    """The canonical request. ``headers`` maps lower-case names to values."""
    lines = "".join(f"{name}:{headers[name].strip()}\n" for name in signed_headers)
    # As the SDK: an empty body always hashes as empty, even when X-Sdk-Content-Sha256 is set.
    payload_hash = (
        (headers.get("x-sdk-content-sha256") or hashlib.sha256(body).hexdigest())
        if body
        else EMPTY_SHA256
    )
    return "\n".join(
        [
            method.upper(),
            canonical_uri(path),
            canonical_query(query_pairs),
            lines,
            ";".join(signed_headers),
            payload_hash,
        ]
    )


def string_to_sign(canonical: str, sdk_date: str) -> str:
    digest = hashlib.sha256(canonical.encode("utf-8")).hexdigest()
    return f"{ALGORITHM}\n{sdk_date}\n{digest}"


def signature(
    sk: str,
    method: str,
    target: str,
    headers: Mapping[str, str],
    signed_headers: list[str],
    body: bytes,
) -> str:
    """Hex HMAC-SHA256 of the request. ``target`` is the path with its query string;
    ``headers`` maps lower-case names to values and must hold ``x-sdk-date``."""
    # Not urlsplit: a request target such as "//x" would lose its path to a netloc.
    path, _, query = target.partition("?")
    pairs = parse_qsl(query, keep_blank_values=True)
    canonical = canonical_request(method, path, pairs, headers, signed_headers, body)
    sts = string_to_sign(canonical, headers["x-sdk-date"])
    return hmac.new(sk.encode("utf-8"), sts.encode("utf-8"), hashlib.sha256).hexdigest()


def authorization_header(ak: str, signed_headers: list[str], sig: str) -> str:
    return f"{ALGORITHM} Access={ak}, SignedHeaders={';'.join(signed_headers)}, Signature={sig}"


def parse_authorization(value: str) -> dict[str, str] | None:
    """Split ``SDK-HMAC-SHA256 Access=.., SignedHeaders=.., Signature=..``; None if malformed."""
    algorithm, _, rest = value.strip().partition(" ")
    if algorithm != ALGORITHM:
        return None
    fields: dict[str, str] = {}
    for item in rest.split(","):
        key, sep, val = item.strip().partition("=")
        if not sep:
            return None
        fields[key] = val
    if not {"Access", "SignedHeaders", "Signature"} <= fields.keys():
        return None
    return fields


def format_sdk_date(moment: datetime | None = None) -> str:
    return (moment or datetime.now(UTC)).strftime(DATE_FORMAT)


def parse_sdk_date(value: str) -> datetime:
    return datetime.strptime(value, DATE_FORMAT).replace(tzinfo=UTC)


class AkSkAuth(requests.auth.AuthBase):
    """Signs a prepared request with AK/SK, and with the security token of temporary
    credentials: sent as ``X-Security-Token`` and signed (it is in SignedHeaders), as the
    official SDK does (``Credentials.sign_request`` sets the header before ``Signer.sign``).

    Give it an AK/SK (and optional token), or a :class:`CredentialProvider` that it asks on
    every request, so temporary credentials are replaced without rebuilding the client.
    Credentials are injected, never read from the environment here, and never shown by
    ``repr``. ``clock`` exists for fixed test vectors."""

    def __init__(
        self,
        ak: str | None = None,
        sk: str | None = None,
        security_token: str | None = None,
        *,
        provider: CredentialProvider | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        if provider is None:
            if not ak or not sk:
                raise ValueError("AkSkAuth needs a non-empty AK and SK")
            provider = StaticCredentials(ak, sk, security_token)
        elif ak or sk or security_token:
            raise ValueError("AkSkAuth takes an AK/SK or a provider, not both")
        self.provider = provider
        self._clock = clock or (lambda: datetime.now(UTC))
        # The credential this thread signed with last: what a 401 refused (see invalidate).
        self._used = threading.local()

    def __repr__(self) -> str:
        return f"AkSkAuth({self.provider.describe()})"

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        credential = self.provider.get()
        self._used.credential = credential
        parts = urlsplit(r.url or "")
        r.headers["Host"] = parts.netloc
        r.headers["X-Sdk-Date"] = format_sdk_date(self._clock())
        if credential.security_token:
            r.headers["X-Security-Token"] = credential.security_token
        else:
            r.headers.pop("X-Security-Token", None)
        lowered = {k.lower(): str(v) for k, v in r.headers.items()}
        signed = sorted(name for name in SIGNED_HEADER_NAMES if name in lowered)
        body = r.body if isinstance(r.body, bytes) else (r.body or "").encode("utf-8")
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        sig = signature(credential.sk, r.method or "GET", target, lowered, signed, body)
        r.headers["Authorization"] = authorization_header(credential.ak, signed, sig)
        return r

    def invalidate(self, project_id: str) -> bool:
        """The API refused the credential this thread signed with (401): ask the provider for
        another. True when it gave a different one, so that sending again may succeed."""
        stale: Credential | None = getattr(self._used, "credential", None)
        fresh = self.provider.refresh(stale)
        return stale is not None and fresh != stale
