"""The BMS API client: batch reboot, job queries and the servers (list, details) over
``requests``.

One :class:`BmsClient` holds one pooled ``requests.Session``. Every call has a timeout, TLS is
verified by default, and the client never retries on its own: the task layer owns retries (see
``worker.pipeline.failures``) because only it knows whether a POST may be sent again. The single
exception is a 401 under token auth or temporary AK/SK credentials, answered by fetching a fresh
token or credential and sending once more (a 401 means the request was not accepted, so sending
it again cannot reboot anything twice).

Failures raise the errors of :mod:`worker.bms.errors`; read ``maybe_accepted`` on a failed POST.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from worker import __version__
from worker.bms.auth import TokenAuth
from worker.bms.errors import (
    BmsError,
    ConfigurationError,
    ProtocolError,
    decode_json,
    error_from_exception,
    error_from_response,
    protocol_error,
)
from worker.bms.models import Job, ServerDetails, ServerPage
from worker.bms.signing import AkSkAuth, canonical_query
from worker.bms.sources import CredentialSource, PasswordLogin, source_from_settings
from worker.text import clean

if TYPE_CHECKING:
    from worker.settings import Settings

log = logging.getLogger(__name__)

#: The API's documented limit of servers per batch call; we never send more.
MAX_SERVERS_PER_CALL = 1000
#: (connect, read) seconds when the caller gives none.
DEFAULT_TIMEOUT = (5.0, 30.0)
#: Connections kept per host; sized for a worker's concurrency.
DEFAULT_POOL_SIZE = 32
DEFAULT_USER_AGENT = f"bmsreboot/{__version__} {requests.utils.default_user_agent()}"
#: As the official SDK sends it.
JSON_CONTENT_TYPE = "application/json;charset=utf-8"
POWER_TYPES = ("HARD", "SOFT")
#: The API's largest page of ListBareMetalServers (its default is 25).
MAX_SERVERS_PER_PAGE = 1000
#: ``enterprise_project_id`` for every enterprise project the caller is granted.
ALL_GRANTED_EPS = "all_granted_eps"
_PATH_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_CONFIG_ERRORS = (
    requests.exceptions.InvalidURL,
    requests.exceptions.MissingSchema,
    requests.exceptions.InvalidSchema,
    requests.exceptions.InvalidHeader,
)


@runtime_checkable
class RefreshableAuth(Protocol):
    """An auth whose credential for a project can be dropped and fetched again; ``invalidate``
    says whether there is a new one to send with (a static AK/SK has none)."""

    def invalidate(self, project_id: str) -> bool: ...


def new_session(pool_maxsize: int = DEFAULT_POOL_SIZE) -> requests.Session:
    """A session with a pool of ``pool_maxsize`` connections and no automatic retries."""
    session = requests.Session()
    adapter = HTTPAdapter(
        pool_connections=4,
        pool_maxsize=pool_maxsize,
        # total=0: no retry of anything; read=False makes urllib3 raise the original read
        # error (so a read timeout stays a ReadTimeout, not a generic ConnectionError).
        max_retries=Retry(total=0, read=False, redirect=False),
    )
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return session


class BmsClient:
    """Calls ``/v1/{project_id}/baremetalservers/action``, ``/v1/{project_id}/jobs/{id}``,
    ``/v1/{project_id}/baremetalservers/detail`` and ``/v1/{project_id}/baremetalservers/{id}``."""

    def __init__(
        self,
        endpoint: str,
        auth: requests.auth.AuthBase,
        *,
        timeout: tuple[float, float] = DEFAULT_TIMEOUT,
        verify: bool | str = True,
        session: requests.Session | None = None,
        user_agent: str = DEFAULT_USER_AGENT,
        pool_maxsize: int = DEFAULT_POOL_SIZE,
    ) -> None:
        if not endpoint.startswith(("https://", "http://")):
            raise ConfigurationError(f"the BMS endpoint must be an http(s) URL, got {endpoint!r}")
        self.endpoint = endpoint.rstrip("/")
        self.auth = auth
        self.timeout = timeout
        self.verify = verify
        self.user_agent = user_agent
        self._owns_session = session is None
        self._session = session or new_session(pool_maxsize)
        self._owned_auth: TokenAuth | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> BmsClient:
        """AK/SK signing when ``HUAWEICLOUD_SDK_AK``/``_SK`` are set (with the security token
        ``HUAWEICLOUD_SDK_SECURITY_TOKEN`` of a temporary AK/SK, if set), else IAM token auth
        when the IAM user, password and domain are set, else :class:`ConfigurationError`."""
        return cls.for_source(
            settings.effective_bms_endpoint,
            source_from_settings(settings),
            iam_endpoint=settings.effective_iam_endpoint,
            timeout=(settings.connect_timeout, settings.read_timeout),
            verify=settings.ca_bundle or settings.verify_tls,
        )

    @classmethod
    def for_source(
        cls,
        endpoint: str,
        source: CredentialSource,
        *,
        iam_endpoint: str | None = None,
        timeout: tuple[float, float] = DEFAULT_TIMEOUT,
        verify: bool | str = True,
    ) -> BmsClient:
        """A client of one endpoint (one region) signing with ``source``: AK/SK from a
        :class:`CredentialProvider` (which may be shared by the clients of several regions;
        closing the client leaves it open), or tokens of a :class:`PasswordLogin` from
        ``iam_endpoint`` (the same region's IAM; the client owns that token auth)."""
        if isinstance(source, PasswordLogin):
            if not iam_endpoint:
                raise ConfigurationError("a password login needs the region's IAM endpoint")
            token_auth = source.token_auth(
                iam_endpoint, timeout=timeout, verify=verify, user_agent=DEFAULT_USER_AGENT
            )
            client = cls(endpoint, token_auth, timeout=timeout, verify=verify)
            client._owned_auth = token_auth
            return client
        return cls(endpoint, AkSkAuth(provider=source), timeout=timeout, verify=verify)

    def __repr__(self) -> str:
        return f"BmsClient(endpoint={self.endpoint!r}, auth={self.auth!r})"

    def add_response_hook(self, hook: Any) -> None:
        """Call ``hook(response)`` for every HTTP answer, IAM token answers included (metrics)."""
        self._session.hooks["response"].append(hook)
        if self._owned_auth is not None:
            self._owned_auth.add_response_hook(hook)

    def close(self) -> None:
        if self._owns_session:
            self._session.close()
        if self._owned_auth is not None:
            self._owned_auth.close()

    def __enter__(self) -> BmsClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- power actions: POST, never retried here ------------------------------------------------
    def batch_reboot(
        self, project_id: str, server_ids: Sequence[str], reboot_type: str = "HARD"
    ) -> str:
        """Reboot up to 1000 servers; returns the job id."""
        _check_power_type(reboot_type)
        return self._action(project_id, "reboot", {"type": reboot_type}, server_ids)

    # --- job queries ------------------------------------------------------------------------
    def get_job(self, project_id: str, job_id: str) -> Job:
        """The job with its sub-jobs, typed."""
        raw = self.get_job_raw(project_id, job_id)
        try:
            return Job.from_api(raw)
        except ValueError as exc:
            raise ProtocolError(f"the job answer is not a job: {exc}") from None

    def get_job_raw(self, project_id: str, job_id: str) -> dict[str, Any]:
        """The job exactly as the API's JSON."""
        response = self._send("GET", project_id, f"jobs/{_path_id('job_id', job_id)}")
        return decode_json(response, is_post=False)

    # --- servers ---------------------------------------------------------------------------
    def list_servers(
        self,
        project_id: str,
        *,
        name: str | None = None,
        status: str | None = None,
        tags: str | None = None,
        enterprise_project_id: str | None = None,
        flavor: str | None = None,
        limit: int = MAX_SERVERS_PER_PAGE,
        offset: int = 1,
    ) -> ServerPage:
        """One page of ListBareMetalServers (``GET .../baremetalservers/detail``).

        ``offset`` is a page number from 1, not a row offset; ``limit`` 1 to 1000 servers a
        page. ``name`` matches a part of the name; ``tags`` is one tag (``key=value`` or
        ``key``: the API takes one per call); ``enterprise_project_id`` may be
        :data:`ALL_GRANTED_EPS`. The page's ``count`` is every matching server: read pages until
        that many rows are read (:meth:`iter_servers`). A 403 (the credential lacks
        ``bms:servers:list``) raises PermissionDeniedError with the API's code."""
        if isinstance(limit, bool) or not isinstance(limit, int):
            raise ValueError(f"limit must be an integer, got {limit!r}")
        if not 1 <= limit <= MAX_SERVERS_PER_PAGE:
            raise ValueError(f"limit must be 1..{MAX_SERVERS_PER_PAGE}, got {limit}")
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 1:
            raise ValueError(f"offset is a page number from 1, got {offset!r}")
        filters = {
            "flavor": flavor,
            "name": name,
            "status": status,
            "tags": tags,
            "enterprise_project_id": enterprise_project_id,
        }
        for key, value in filters.items():
            if value is not None and (not isinstance(value, str) or not value):
                raise ValueError(f"{key} must be a non-empty string (one value), got {value!r}")
        query = [(k, v) for k, v in filters.items() if v is not None]
        query += [("limit", str(limit)), ("offset", str(offset))]
        response = self._send("GET", project_id, "baremetalservers/detail", query=query)
        try:
            return ServerPage.from_api(decode_json(response, is_post=False))
        except ValueError as exc:
            raise ProtocolError(f"the server list answer is not a page: {exc}") from None

    def iter_servers(
        self,
        project_id: str,
        *,
        name: str | None = None,
        status: str | None = None,
        tags: str | None = None,
        enterprise_project_id: str | None = None,
        flavor: str | None = None,
        limit: int = MAX_SERVERS_PER_PAGE,
    ) -> Iterator[ServerPage]:
        """Every page of a list, from page 1, until ``count`` rows are read (or a page comes
        back short or empty: the fleet shrank while we read). One call per page, made when the
        caller asks for the next page, so a caller can take a budget slot between pages.

        A server that moves between pages while they are read (one added or removed before it)
        can be seen twice or not at all, as with any paged API: de-duplicate by id, and read
        again when the answer must be complete."""
        read, offset = 0, 1
        while True:
            page = self.list_servers(
                project_id,
                name=name,
                status=status,
                tags=tags,
                enterprise_project_id=enterprise_project_id,
                flavor=flavor,
                limit=limit,
                offset=offset,
            )
            yield page
            read += len(page.servers)
            if read >= page.count or len(page.servers) < limit:
                return
            offset += 1

    def get_server(self, project_id: str, server_id: str) -> ServerDetails:
        """One server's details (``GET .../baremetalservers/{server_id}``); NotFoundError
        (``BMS.0040``) when it does not exist."""
        path = f"baremetalservers/{_path_id('server_id', server_id)}"
        raw = decode_json(self._send("GET", project_id, path), is_post=False)
        server = raw.get("server")
        try:
            if not isinstance(server, dict):
                raise ValueError("no server object")
            return ServerDetails.from_api(server)
        except ValueError as exc:
            raise ProtocolError(f"the server answer is not a server: {exc}") from None

    # --- the wire ---------------------------------------------------------------------------
    def _action(
        self, project_id: str, key: str, inner: dict[str, str], server_ids: Sequence[str]
    ) -> str:
        servers = _servers(server_ids)
        # json.dumps defaults and "type" before "servers": byte for byte what the SDK sends.
        body = json.dumps({key: {**inner, "servers": servers}}).encode("utf-8")
        response = self._send("POST", project_id, "baremetalservers/action", body)
        job_id = decode_json(response, is_post=True).get("job_id")
        if not isinstance(job_id, str) or not job_id:
            raise protocol_error(response, "the API accepted but sent no job_id", is_post=True)
        if len(job_id) > MAX_JOB_ID or not _PATH_ID.fullmatch(job_id):
            # We could not record it, or not poll it: the reboot may be running all the same.
            excerpt = clean(response.text[:300])
            raise protocol_error(
                response,
                f"the API accepted but its job_id cannot be used (at most {MAX_JOB_ID} letters, "
                f"digits, '.', '_' or '-'): answer {excerpt!r}",
                is_post=True,
            )
        return job_id

    def _send(
        self,
        method: str,
        project_id: str,
        path: str,
        body: bytes | None = None,
        *,
        query: Sequence[tuple[str, str]] = (),
    ) -> requests.Response:
        project_id = _path_id("project_id", project_id)
        url = f"{self.endpoint}/v1/{project_id}/{path}"
        if query:
            # On the wire exactly as signed (sorted, percent-encoded), as the official SDK does:
            # the gateway then has nothing to re-encode differently ("+" or "%20" for a space).
            url += "?" + canonical_query(query)
        headers = {
            "User-Agent": self.user_agent,
            "Accept": "application/json",
            "X-Project-Id": project_id,
        }
        if body is not None:
            headers["Content-Type"] = JSON_CONTENT_TYPE
        is_post = method == "POST"
        response = self._send_once(method, url, headers, body, is_post=is_post)
        if (
            response.status_code == 401
            and isinstance(self.auth, RefreshableAuth)
            and self.auth.invalidate(project_id)
        ):
            log.info("401 on %s %s: sending once more with a new credential", method, path)
            response = self._send_once(method, url, headers, body, is_post=is_post)
        if not 200 <= response.status_code < 300:
            raise error_from_response(response, is_post=is_post)
        return response

    def _send_once(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        body: bytes | None,
        *,
        is_post: bool,
    ) -> requests.Response:
        try:
            response = self._session.request(
                method,
                url,
                headers=headers,
                data=body,
                auth=self.auth,
                timeout=self.timeout,
                verify=self.verify,
                allow_redirects=False,
            )
        except BmsError:
            raise  # from the auth object (token fetch): the request itself was never sent
        except _CONFIG_ERRORS as exc:
            raise ConfigurationError(f"bad request setup: {type(exc).__name__}") from None
        except requests.RequestException as exc:
            error = error_from_exception(exc, is_post=is_post)
            log.warning("%s %s failed: %s", method, url, error)
            raise error from exc
        log.debug(
            "%s %s -> %s (request id %s)",
            method,
            url,
            response.status_code,
            response.headers.get("X-Request-Id"),
        )
        return response


#: The longest job id the audit database records (``batches.job_id``).
MAX_JOB_ID = 64


def _path_id(name: str, value: str) -> str:
    if not isinstance(value, str) or not _PATH_ID.fullmatch(value):
        raise ValueError(f"{name} must be letters, digits, '.', '_' or '-', got {value!r}")
    return value


def _check_power_type(value: str) -> None:
    if value not in POWER_TYPES:
        raise ValueError(f"type must be one of {POWER_TYPES}, got {value!r}")


def _servers(server_ids: Sequence[str]) -> list[dict[str, str]]:
    if isinstance(server_ids, str):
        raise ValueError("server_ids must be a sequence of ids, not one string")
    ids = list(server_ids)
    if not 1 <= len(ids) <= MAX_SERVERS_PER_CALL:
        raise ValueError(f"one call takes 1..{MAX_SERVERS_PER_CALL} server ids, got {len(ids)}")
    if not all(isinstance(i, str) and i for i in ids):
        raise ValueError("every server id must be a non-empty string")
    if len(set(ids)) != len(ids):
        # A server listed twice could be rebooted twice; the API refuses it anyway.
        raise ValueError("server_ids holds duplicates")
    return [{"id": i} for i in ids]
