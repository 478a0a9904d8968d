"""AK/SK signing (worker.bms.signing) held against the reference vectors and the official SDK.

The SDK's ``Signer`` is the oracle: for many generated requests, the Authorization header that
``AkSkAuth`` puts on a real ``requests`` request must equal, byte for byte, what the SDK computes
for the same method, path, query, signed headers, body and X-Sdk-Date.
"""

from __future__ import annotations

import hashlib
import hmac
import http.server
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from urllib.parse import parse_qsl, quote, unquote, urlsplit

import pytest
import requests
from huaweicloudsdkcore.auth.credentials import BasicCredentials
from huaweicloudsdkcore.sdk_request import SdkRequest
from huaweicloudsdkcore.signer.signer import Signer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from worker.bms.signing import (
    AkSkAuth,
    canonical_request,
    parse_authorization,
    parse_sdk_date,
    signature,
)

# --- the reference's vectors (bms-api.md §6.2) -----------------------------------------------
A_AK, A_SK = "QTWAOYTTINDUT2QVKYUC", "MFyfvK41ba2giqM7Uio6PznpdUKGpownRZlmVmHc"
A_URL = (
    "https://service.region.example.com/v1/77b6a44cba5143ab91d13ab9a8ff44fd/vpcs"
    "?limit=2&marker=13551d6b-755d-4757-b956-536f674975c0"
)
A_DATE = "20191115T033655Z"
A_CANONICAL = (
    "GET\n"
    "/v1/77b6a44cba5143ab91d13ab9a8ff44fd/vpcs/\n"
    "limit=2&marker=13551d6b-755d-4757-b956-536f674975c0\n"
    "content-type:application/json\n"
    "host:service.region.example.com\n"
    "x-sdk-date:20191115T033655Z\n"
    "\n"
    "content-type;host;x-sdk-date\n"
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
)
A_AUTHORIZATION = (
    "SDK-HMAC-SHA256 Access=QTWAOYTTINDUT2QVKYUC, SignedHeaders=content-type;host;x-sdk-date, "
    "Signature=7be6668032f70418fcc22abc52071e57aff61b84a1d2381bb430d6870f4f6ebe"
)

B_AK, B_SK = "HPUAEXAMPLEAK0000001", "exampleSecretKey0000000000000000000000001"
B_PROJECT = "0123456789abcdef0123456789abcdef"
B_URL = f"https://bms.cn-north-4.myhuaweicloud.com/v1/{B_PROJECT}/baremetalservers/action"
B_DATE = "20240314T081019Z"
B_BODY = (
    b'{"reboot": {"type": "HARD", "servers": [{"id": "616fc3e9-3d1a-4d5c-9e4a-3a0d2e1b7c01"}]}}'
)
B_AUTHORIZATION = (
    "SDK-HMAC-SHA256 Access=HPUAEXAMPLEAK0000001, "
    "SignedHeaders=content-type;host;x-project-id;x-sdk-date, "
    "Signature=aac3e57a16e48fbe8224ff9e08766d4ce288ada24833682d7514ac7e94123302"
)


def signer(ak: str, sk: str, sdk_date: str) -> AkSkAuth:
    moment = parse_sdk_date(sdk_date)
    return AkSkAuth(ak, sk, clock=lambda: moment)


def test_given_vector_a_when_building_the_canonical_request_then_it_matches_the_reference() -> None:
    # Given the official signing-guide GET
    parts = urlsplit(A_URL)
    headers = {
        "content-type": "application/json",
        "host": "service.region.example.com",
        "x-sdk-date": A_DATE,
    }
    # When
    canonical = canonical_request(
        "GET", parts.path, parse_qsl(parts.query), headers, sorted(headers), b""
    )
    # Then
    assert canonical == A_CANONICAL
    assert hashlib.sha256(canonical.encode()).hexdigest() == (
        "b25362e603ee30f4f25e7858e8a7160fd36e803bb2dfe206278659d71a9bcd7a"
    )


def test_given_vector_a_when_aksk_auth_signs_it_then_the_authorization_matches() -> None:
    # Given
    request = requests.Request("GET", A_URL, headers={"Content-Type": "application/json"})
    # When
    prepared = signer(A_AK, A_SK, A_DATE)(request.prepare())
    # Then
    assert prepared.headers["Authorization"] == A_AUTHORIZATION
    assert prepared.headers["X-Sdk-Date"] == A_DATE


def test_given_vector_b_when_aksk_auth_signs_the_bms_reboot_then_the_authorization_matches() -> (
    None
):
    # Given the BMS reboot POST of the reference
    assert hashlib.sha256(B_BODY).hexdigest() == (
        "1f20b4852aa32b5e8c8f9baa3e2cfbd400e0e406a5d5d9a4e02e0d9965aa3712"
    )
    request = requests.Request(
        "POST",
        B_URL,
        data=B_BODY,
        headers={"Content-Type": "application/json;charset=UTF-8", "X-Project-Id": B_PROJECT},
    )
    # When
    prepared = signer(B_AK, B_SK, B_DATE)(request.prepare())
    # Then
    assert prepared.headers["Authorization"] == B_AUTHORIZATION


def test_given_an_auth_object_when_printed_then_the_sk_does_not_show() -> None:
    # Given / When
    text = repr(AkSkAuth(B_AK, B_SK, security_token="tok-secret")) + str(AkSkAuth(B_AK, B_SK))
    # Then
    assert B_SK not in text
    assert "tok-secret" not in text


# --- the SDK as an oracle over generated requests ----------------------------------------------
def oracle_authorization(
    ak: str,
    sk: str,
    method: str,
    host: str,
    path: str,
    query_pairs: list[tuple[str, str]],
    headers: dict[str, str],
    body: bytes,
) -> str:
    request = SdkRequest(
        method=method,
        schema="https",
        host=host,
        resource_path=path,
        query_params=list(query_pairs),
        header_params=dict(headers),
        body=body,
    )
    Signer(BasicCredentials(ak, sk)).sign(request)
    return str(request.header_params["Authorization"])


_PATH_CHARS = st.characters(
    categories=("L", "N", "P", "S", "Zs"), exclude_characters="/?#\\", max_codepoint=0x2FFF
)
_segments = st.text(_PATH_CHARS, min_size=0, max_size=8).filter(
    # urllib3 removes dot segments from the URL it sends; a path that changes on the way out is
    # signed as sent, which the SDK (given the unsent path) cannot know.
    lambda s: unquote(s) not in (".", "..")
)
_paths = st.lists(_segments, min_size=1, max_size=5).map(lambda segs: "/" + "/".join(segs))
_query_text = st.text(st.characters(categories=("L", "N", "P", "S", "Zs")), max_size=6)
_queries = st.lists(
    st.tuples(
        st.sampled_from(["limit", "marker", "a", "a", "", "ké y"]) | _query_text, _query_text
    ),
    max_size=6,
)
_header_value = st.text(
    st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=20
).map(lambda v: v + " ")  # a trailing space: the canonical form strips it
_json_types = st.sampled_from(
    ["application/json", "application/json;charset=utf-8", "application/json; charset=UTF-8"]
)


@dataclass
class Generated:
    method: str
    host: str
    path: str
    query: list[tuple[str, str]]
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    security_token: str | None = None


@st.composite
def generated_requests(draw: st.DrawFn) -> Generated:
    headers: dict[str, str] = {}
    if draw(st.booleans()):
        headers["Content-Type"] = draw(_json_types)
    if draw(st.booleans()):
        headers["X-Project-Id"] = draw(_header_value)
    if draw(st.booleans()):
        headers["X-Sdk-Content-Sha256"] = "UNSIGNED-PAYLOAD"
    if draw(st.booleans()):
        headers["X-Unsigned-Trace"] = draw(_header_value)  # not signed by us: must not matter
    return Generated(
        method=draw(st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH"])),
        host=draw(st.sampled_from(["bms.cn-north-4.myhuaweicloud.com", "127.0.0.1:18080"])),
        path=draw(_paths),
        query=draw(_queries),
        body=draw(st.binary(max_size=64)),
        headers=headers,
        security_token=draw(st.none() | _header_value.map(str.strip)),
    )


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(generated_requests())
def test_given_generated_requests_when_signed_then_the_sdk_signer_agrees_byte_for_byte(
    g: Generated,
) -> None:
    # Given a real requests request and our signer with a fixed clock
    date = "20240314T081019Z"
    request = requests.Request(
        g.method, f"https://{g.host}{g.path}", params=g.query, data=g.body, headers=g.headers
    )
    auth = AkSkAuth(B_AK, B_SK, security_token=g.security_token, clock=lambda: parse_sdk_date(date))
    # When
    prepared = auth(request.prepare())
    # Then the SDK, given the same request and exactly the headers we signed, agrees
    ours = prepared.headers["Authorization"]
    fields = parse_authorization(ours)
    assert fields is not None
    signed = fields["SignedHeaders"].split(";")
    assert {"host", "x-sdk-date"} <= set(signed)
    lowered = {k.lower(): str(v) for k, v in prepared.headers.items()}
    oracle_headers = {name: lowered[name] for name in signed}
    oracle = oracle_authorization(
        B_AK, B_SK, g.method, g.host, g.path, g.query, oracle_headers, g.body
    )
    assert ours == oracle


# --- temporary credentials: the security token, set and signed as the SDK's credentials do --
_tokens = st.text(
    st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=120
).filter(lambda t: t == t.strip())


def sdk_signed_with_token(
    token: str, method: str, host: str, path: str, body: bytes, headers: dict[str, str]
) -> dict[str, str]:
    """The headers the SDK's own credentials path produces: ``BasicCredentials.sign_request``
    sets X-Project-Id and X-Security-Token, then its Signer signs every header it holds."""
    request = SdkRequest(
        method=method,
        schema="https",
        host=host,
        resource_path=path,
        query_params=[],
        header_params=dict(headers),
        body=body,
    )
    credentials = BasicCredentials(B_AK, B_SK, B_PROJECT).with_security_token(token)
    credentials.sign_request(request)
    return {k: str(v) for k, v in request.header_params.items()}


def test_given_a_security_token_when_signing_the_bms_reboot_then_it_is_sent_and_signed() -> None:
    # Given a temporary credential's token and the reboot POST as BmsClient sends it
    token = "hQpjbi1ub3J0aC00temporaryTOKEN/+=="
    request = requests.Request(
        "POST",
        B_URL,
        data=B_BODY,
        headers={"Content-Type": "application/json;charset=utf-8", "X-Project-Id": B_PROJECT},
    )
    auth = AkSkAuth(B_AK, B_SK, security_token=token, clock=lambda: parse_sdk_date(B_DATE))
    # When
    prepared = auth(request.prepare())
    # Then the header carries the token, SignedHeaders names it, and the SDK agrees byte for byte
    fields = parse_authorization(prepared.headers["Authorization"])
    assert fields is not None
    assert prepared.headers["X-Security-Token"] == token
    assert fields["SignedHeaders"] == ("content-type;host;x-project-id;x-sdk-date;x-security-token")
    sdk = sdk_signed_with_token(
        token,
        "POST",
        "bms.cn-north-4.myhuaweicloud.com",
        f"/v1/{B_PROJECT}/baremetalservers/action",
        B_BODY,
        {"Content-Type": "application/json;charset=utf-8", "X-Sdk-Date": B_DATE},
    )
    assert sdk["X-Security-Token"] == token
    assert prepared.headers["Authorization"] == sdk["Authorization"]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE"]),
    path=_paths,
    body=st.binary(max_size=64),
    token=_tokens,
    content_type=st.none() | _json_types,
)
def test_given_generated_requests_with_a_token_when_signed_then_the_sdk_credentials_agree(
    method: str, path: str, body: bytes, token: str, content_type: str | None
) -> None:
    # Given the headers BmsClient sets, our signer with a token, and the SDK's own
    # credentials object with the same token (it decides for itself what it signs)
    date = "20240314T081019Z"
    host = "bms.cn-north-4.myhuaweicloud.com"
    headers = {"X-Project-Id": B_PROJECT}
    if content_type:
        headers["Content-Type"] = content_type
    request = requests.Request(method, f"https://{host}{path}", data=body, headers=headers)
    auth = AkSkAuth(B_AK, B_SK, security_token=token, clock=lambda: parse_sdk_date(date))
    # When
    prepared = auth(request.prepare())
    sdk_headers = {k: v for k, v in headers.items() if k != "X-Project-Id"}
    sdk = sdk_signed_with_token(
        token, method, host, path, body, {**sdk_headers, "X-Sdk-Date": date}
    )
    # Then: the same token header and the same Authorization, SignedHeaders included
    assert prepared.headers["X-Security-Token"] == sdk["X-Security-Token"] == token
    assert prepared.headers["Authorization"] == sdk["Authorization"]


# --- what requests actually puts on the wire ---------------------------------------------------
@dataclass
class Captured:
    method: str
    target: str
    headers: dict[str, str]
    body: bytes


class CaptureServer:
    """A loopback HTTP server that records each request and answers ``answer``."""

    def __init__(self) -> None:
        self.requests: list[Captured] = []
        self.answer: tuple[int, bytes] = (200, b'{"job_id": "captured"}')
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                headers = {k.lower(): v for k, v in self.headers.items()}
                outer.requests.append(Captured(self.command, self.path, headers, body))
                status, payload = outer.answer
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PUT = do_DELETE = _handle

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def capture_server() -> Iterator[CaptureServer]:
    server = CaptureServer()
    yield server
    server.close()


def independent_signature(sk: str, captured: Captured, signed: list[str]) -> str:
    """The reference's 10-line verifier, deliberately not our signing module."""
    u = urlsplit(captured.target)
    uri = "/".join(quote(s, safe="~") for s in unquote(u.path).split("/"))
    uri = uri if uri.endswith("/") else uri + "/"
    pairs = sorted(parse_qsl(u.query, keep_blank_values=True))
    qs = "&".join(f"{quote(k, safe='~')}={quote(v, safe='~')}" for k, v in pairs)
    lines = "".join(f"{h}:{captured.headers[h].strip()}\n" for h in signed)
    creq = "\n".join(
        [
            captured.method,
            uri,
            qs,
            lines,
            ";".join(signed),
            hashlib.sha256(captured.body).hexdigest(),
        ]
    )
    digest = hashlib.sha256(creq.encode()).hexdigest()
    sts = f"SDK-HMAC-SHA256\n{captured.headers['x-sdk-date']}\n{digest}"
    return hmac.new(sk.encode(), sts.encode(), hashlib.sha256).hexdigest()


def test_given_a_session_request_when_sent_then_the_signature_verifies_against_the_wire(
    capture_server: CaptureServer,
) -> None:
    # Given a request with an odd path, a repeated key, a blank value and a JSON body
    url = f"{capture_server.base_url}/v1/{B_PROJECT}/some path/ü;x"
    params = [("b", "2"), ("a", ""), ("a", "x y+z")]
    with requests.Session() as session:
        # When requests sends it through the session, with its own extra headers
        session.post(
            url,
            params=params,
            data=B_BODY,
            headers={"Content-Type": "application/json;charset=utf-8", "X-Project-Id": B_PROJECT},
            auth=AkSkAuth(B_AK, B_SK),
            timeout=5,
        )
    # Then the signature verifies over exactly the bytes that arrived
    (captured,) = capture_server.requests
    fields = parse_authorization(captured.headers["authorization"])
    assert fields is not None
    signed = fields["SignedHeaders"].split(";")
    assert signed == ["content-type", "host", "x-project-id", "x-sdk-date"]
    assert captured.headers["host"] == capture_server.base_url.removeprefix("http://")
    assert fields["Signature"] == independent_signature(B_SK, captured, signed)
    assert fields["Signature"] == signature(
        B_SK, captured.method, captured.target, captured.headers, signed, captured.body
    )
    sent_at = parse_sdk_date(captured.headers["x-sdk-date"])
    assert abs((datetime.now(UTC) - sent_at).total_seconds()) < 60
