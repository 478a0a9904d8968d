"""Clients of the two monitoring APIs bmsreboot reads and writes: Prometheus's instant query and
Alertmanager's silences.

- :class:`PrometheusClient` ``.query(expr)``: ``GET /api/v1/query``; the series an instant
  query returns (a gate before a wave closes on any series, and on any error).
- :class:`AlertmanagerClient`: ``create_silence`` (``POST /api/v2/silences``), ``extend`` and
  ``update_silence`` (the same POST with the silence's id), ``get`` (``GET
  /api/v2/silence/{id}``) and ``expire`` (``DELETE /api/v2/silence/{id}``).

Every failure is a :class:`MonitoringError`, and says which URL and why in one line:

- :class:`MonitoringUnreachable`: no answer (could not connect, timed out, connection dropped);
- :class:`MonitoringRefused`: an answer that is an error (an HTTP error status, Prometheus's
  ``status`` other than ``success`` with its ``errorType`` and ``error``, Alertmanager's error
  message), or one that is not what the API answers (not JSON, missing fields);
- :class:`SilenceNotFound` (a :class:`MonitoringRefused`): no silence with that id.

Both clients use ``requests`` with a (connect, read) timeout on every call, and take a
``requests.Session`` for whatever a deployment needs beyond a URL (TLS, basic auth, a
proxy). Nothing here retries: the caller decides (the gate re-checks at its interval).

No library for the two APIs is used: the Python Prometheus clients (e.g.
``prometheus-api-client``) bring pandas and matplotlib for one GET, and none covers
Alertmanager's v2 silences; these are five calls on ``requests``, which we already use.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import requests

#: (connect, read) seconds for every call, unless the client is given others.
DEFAULT_TIMEOUT = (3.0, 10.0)


class MonitoringError(Exception):
    """A call to Prometheus or Alertmanager failed; ``url`` is the one that was called."""

    def __init__(self, message: str, url: str) -> None:
        super().__init__(message)
        self.url = url


class MonitoringUnreachable(MonitoringError):
    """No answer: could not connect, timed out, or the connection dropped."""


class MonitoringRefused(MonitoringError):
    """An answer that is an error, or not what the API answers. ``status`` is its HTTP status."""

    def __init__(self, message: str, url: str, status: int | None = None) -> None:
        super().__init__(message, url)
        self.status = status


class SilenceNotFound(MonitoringRefused):
    """Alertmanager has no silence with that id."""


def _call(
    session: requests.Session,
    method: str,
    url: str,
    timeout: tuple[float, float],
    what: str,
    **kwargs: Any,
) -> requests.Response:
    try:
        return session.request(method, url, timeout=timeout, **kwargs)
    except requests.Timeout as exc:
        raise MonitoringUnreachable(f"{what}: no answer from {url} in time ({exc})", url) from exc
    except requests.RequestException as exc:
        raise MonitoringUnreachable(
            f"{what}: {url} is unreachable ({type(exc).__name__}: {exc})", url
        ) from exc


def _json(response: requests.Response, what: str) -> Any:
    try:
        return response.json()
    except ValueError as exc:
        raise MonitoringRefused(
            f"{what}: {response.url} answered HTTP {response.status_code} with no JSON: "
            f"{_snippet(response.text)}",
            response.url,
            response.status_code,
        ) from exc


def _snippet(text: str, limit: int = 200) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[:limit] + "..."


# --- Prometheus ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Series:
    """One series of an instant query's answer: its labels (``__name__`` included when the
    expression keeps it), its value and the time it was evaluated at (Unix seconds)."""

    labels: dict[str, str]
    value: float
    timestamp: float


class PrometheusClient:
    """``GET /api/v1/query`` on the Prometheus at ``base_url`` (``http://host:9090``, or with
    a path prefix when Prometheus is served under one)."""

    def __init__(
        self,
        base_url: str,
        timeout: tuple[float, float] = DEFAULT_TIMEOUT,
        session: requests.Session | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.session = session or requests.Session()

    def query(self, expr: str) -> list[Series]:
        """The series ``expr`` evaluates to now: an instant vector's series (none: an empty
        list), or a scalar as one series without labels. A range vector or a string is refused:
        the expression must be an instant one."""
        url = f"{self.base_url}/api/v1/query"
        what = f"Prometheus query {expr!r}"
        # Prometheus evaluates for at most its own --query.timeout; ask for no longer than
        # this client waits.
        params = {"query": expr, "timeout": f"{self.timeout[1]:g}s"}
        response = _call(self.session, "GET", url, self.timeout, what, params=params)
        body = _json(response, what)
        if not isinstance(body, dict):
            raise MonitoringRefused(
                f"{what}: {url} answered {_snippet(str(body))}", url, response.status_code
            )
        if body.get("status") != "success":
            kind = body.get("errorType") or f"HTTP {response.status_code}"
            raise MonitoringRefused(
                f"{what}: {kind}: {body.get('error') or _snippet(response.text)}",
                url,
                response.status_code,
            )
        return _series(body.get("data"), url, what, response.status_code)


def _series(data: Any, url: str, what: str, status: int) -> list[Series]:
    try:
        kind, result = data["resultType"], data["result"]
        if kind == "vector":
            return [
                Series(
                    labels={str(k): str(v) for k, v in item.get("metric", {}).items()},
                    value=float(item["value"][1]),
                    timestamp=float(item["value"][0]),
                )
                for item in result
            ]
        if kind == "scalar":
            return [Series(labels={}, value=float(result[1]), timestamp=float(result[0]))]
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise MonitoringRefused(
            f"{what}: {url} answered an unreadable result", url, status
        ) from exc
    raise MonitoringRefused(
        f"{what}: the result is a {kind}, not an instant vector (drop the range selector)",
        url,
        status,
    )


# --- Alertmanager ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Matcher:
    """One matcher of a silence: ``name="value"`` (``is_regex``: ``=~``; not ``is_equal``:
    ``!=`` or ``!~``)."""

    name: str
    value: str
    is_regex: bool = False
    is_equal: bool = True

    def to_api(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "value": self.value,
            "isRegex": self.is_regex,
            "isEqual": self.is_equal,
        }

    def __str__(self) -> str:
        op = {(False, True): "=", (False, False): "!=", (True, True): "=~", (True, False): "!~"}
        escaped = self.value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        return f'{self.name}{op[(self.is_regex, self.is_equal)]}"{escaped}"'


_MATCHER = re.compile(
    r"""\s*(?P<name>[A-Za-z_][A-Za-z0-9_]*)\s*(?P<op>=~|!~|!=|=)\s*
        (?:"(?P<quoted>(?:[^"\\]|\\.)*)"|(?P<bare>[^,"\s}]*))\s*(?:,|$)""",
    re.VERBOSE,
)


def _unescape(escape: re.Match[str]) -> str:
    # As Alertmanager reads a quoted value: \" \\ \n are escapes; any other backslash is
    # itself (so a regex's \. stays \.).
    char = escape[1]
    return "\n" if char == "n" else char


def parse_matchers(text: str) -> list[Matcher]:
    """Matchers written as Alertmanager and amtool write them: ``name="value"``, ``!=``,
    ``=~``, ``!~``, separated by commas, optionally in braces; a value may be unquoted if it
    has no comma, space or quote. ``ValueError`` names what cannot be read.

    (A small parser of our own: no Python package parses Alertmanager's matchers.)"""
    body = text.strip()
    if body.startswith("{") and body.endswith("}"):
        body = body[1:-1]
    matchers: list[Matcher] = []
    pos = 0
    while pos < len(body):
        found = _MATCHER.match(body, pos)
        if found is None or found.end() == pos:
            raise ValueError(f"cannot read matchers {text!r} at {body[pos:]!r}")
        op = found["op"]
        if found["quoted"] is not None:
            value = re.sub(r'\\(["\\n])', _unescape, found["quoted"])
        else:
            value = found["bare"]
        matchers.append(Matcher(found["name"], value, is_regex="~" in op, is_equal="!" not in op))
        pos = found.end()
    if not matchers:
        raise ValueError(f"no matchers in {text!r}")
    return matchers


@dataclass(frozen=True)
class Silence:
    """A silence as Alertmanager holds it; ``state`` is ``active``, ``pending`` (starts later)
    or ``expired``."""

    id: str
    state: str
    matchers: list[Matcher]
    starts_at: datetime
    ends_at: datetime
    created_by: str
    comment: str
    updated_at: datetime | None = None


def _timestamp(moment: datetime) -> str:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{moment!r} has no time zone: give an aware datetime (UTC)")
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _parse_time(text: str) -> datetime:
    # Alertmanager writes RFC 3339 with up to nanoseconds; Python reads at most microseconds.
    trimmed = re.sub(r"(\.\d{6})\d+", r"\1", text).replace("Z", "+00:00")
    return datetime.fromisoformat(trimmed)


class AlertmanagerClient:
    """Silences on the Alertmanager at ``base_url`` (``http://host:9093``)."""

    def __init__(
        self,
        base_url: str,
        timeout: tuple[float, float] = DEFAULT_TIMEOUT,
        session: requests.Session | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.session = session or requests.Session()

    def create_silence(
        self,
        matchers: list[Matcher],
        starts_at: datetime,
        ends_at: datetime,
        created_by: str,
        comment: str,
    ) -> str:
        """Create a silence; returns its id."""
        return self._post(None, matchers, starts_at, ends_at, created_by, comment)

    def update_silence(
        self,
        silence_id: str,
        matchers: list[Matcher],
        starts_at: datetime,
        ends_at: datetime,
        created_by: str,
        comment: str,
    ) -> str:
        """Replace what silence ``silence_id`` says; returns the id to record from now on.
        Alertmanager keeps the id when it can change the silence in place (a new end of an
        active silence); otherwise (new matchers or start of an active silence, an expired
        silence) it expires the old one and returns a new id."""
        return self._post(silence_id, matchers, starts_at, ends_at, created_by, comment)

    def extend(self, silence_id: str, ends_at: datetime) -> str:
        """Make silence ``silence_id`` end at ``ends_at``, all else kept; returns the id to
        record from now on (a new one if the silence had expired: see
        :meth:`update_silence`)."""
        silence = self.get(silence_id)
        return self._post(
            silence.id,
            silence.matchers,
            silence.starts_at,
            ends_at,
            silence.created_by,
            silence.comment,
        )

    def get(self, silence_id: str) -> Silence:
        url = f"{self.base_url}/api/v2/silence/{silence_id}"
        what = f"Alertmanager silence {silence_id}"
        response = _call(self.session, "GET", url, self.timeout, what)
        self._check(response, what, silence_id)
        return _silence(_json(response, what), url, what)

    def expire(self, silence_id: str) -> None:
        """Expire silence ``silence_id`` now. An expired silence stays expired (no error); an
        id Alertmanager does not know is :class:`SilenceNotFound`."""
        url = f"{self.base_url}/api/v2/silence/{silence_id}"
        what = f"expiring Alertmanager silence {silence_id}"
        response = _call(self.session, "DELETE", url, self.timeout, what)
        self._check(response, what, silence_id)

    def _post(
        self,
        silence_id: str | None,
        matchers: list[Matcher],
        starts_at: datetime,
        ends_at: datetime,
        created_by: str,
        comment: str,
    ) -> str:
        if not matchers:
            raise ValueError("a silence needs at least one matcher (it would silence everything)")
        body: dict[str, Any] = {
            "matchers": [m.to_api() for m in matchers],
            "startsAt": _timestamp(starts_at),
            "endsAt": _timestamp(ends_at),
            "createdBy": created_by,
            "comment": comment,
        }
        if silence_id is not None:
            body["id"] = silence_id
        url = f"{self.base_url}/api/v2/silences"
        what = f"Alertmanager silence of {', '.join(str(m) for m in matchers)}"
        response = _call(self.session, "POST", url, self.timeout, what, json=body)
        self._check(response, what, silence_id)
        answer = _json(response, what)
        new_id = answer.get("silenceID") if isinstance(answer, dict) else None
        if not isinstance(new_id, str) or not new_id:
            raise MonitoringRefused(
                f"{what}: {url} answered no silenceID: {_snippet(response.text)}",
                url,
                response.status_code,
            )
        return new_id

    def _check(self, response: requests.Response, what: str, silence_id: str | None) -> None:
        if response.ok:
            return
        text = _snippet(response.text)
        # 404 on a GET or update; Alertmanager 0.25 answers an expire of an unknown id 500
        # "silence not found".
        if silence_id is not None and (
            response.status_code == 404 or "silence not found" in response.text
        ):
            raise SilenceNotFound(
                f"{what}: Alertmanager has no silence {silence_id}",
                response.url,
                response.status_code,
            )
        raise MonitoringRefused(
            f"{what}: {response.url} answered HTTP {response.status_code}: {text}",
            response.url,
            response.status_code,
        )


def _silence(body: Any, url: str, what: str) -> Silence:
    try:
        return Silence(
            id=str(body["id"]),
            state=str(body["status"]["state"]),
            matchers=[
                Matcher(
                    name=str(m["name"]),
                    value=str(m["value"]),
                    is_regex=bool(m.get("isRegex", False)),
                    is_equal=bool(m.get("isEqual", True)),
                )
                for m in body["matchers"]
            ],
            starts_at=_parse_time(body["startsAt"]),
            ends_at=_parse_time(body["endsAt"]),
            created_by=str(body.get("createdBy", "")),
            comment=str(body.get("comment", "")),
            updated_at=_parse_time(body["updatedAt"]) if body.get("updatedAt") else None,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise MonitoringRefused(f"{what}: {url} answered an unreadable silence", url) from exc
