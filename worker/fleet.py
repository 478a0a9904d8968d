"""The fleet file: the accounts, regions and projects one deployment serves.

``BMSREBOOT_FLEET_FILE`` (TOML)::

    [[account]]
    name = "prod"
    credentials = { source = "env", ak_env = "PROD_AK", sk_env = "PROD_SK" }
    projects = [
      { id = "0123456789abcdef0123456789abcdef", region = "cn-north-4" },
      { id = "fedcba9876543210fedcba9876543210", region = "ap-southeast-1" },
    ]

    [[account]]
    name = "ops"
    credentials = { source = "agency", agency_urn = "iam::0a1b2c:agency:bmsreboot", from = "prod" }
    projects = [{ id = "00112233445566778899aabbccddeeff", region = "cn-south-1" }]

    [regions."cn-north-4"]          # optional endpoint overrides (tests, private clouds)
    bms = "https://bms.cn-north-4.myhuaweicloud.com"
    iam = "https://iam.cn-north-4.myhuaweicloud.com"
    sts = "https://sts.cn-north-4.myhuaweicloud.com"

- ``credentials`` is the table of :func:`worker.bms.sources.credentials_from_config` (sources
  ``env``, ``file``, ``metadata``, ``agency``, ``password``): names of environment variables
  and files, never a secret. An agency's ``from`` names another account of the file, whose
  credentials assume it.
- Each project id belongs to exactly one account and one region: a request's project picks
  its account (credentials), region and endpoints (:meth:`Fleet.client_for`). The projects of
  the file are the only ones the deployment touches.
- A region's endpoints are ``https://{bms,iam,sts}.{region}.myhuaweicloud.com`` unless
  ``[regions."<region>"]`` overrides them (``BMSREBOOT_STS_ENDPOINT``, when set, is every
  region's STS unless the file overrides it). An agency calls the STS endpoint of its account's
  first project's region, unless its credentials give their own ``sts_endpoint``.
  With a fleet file, ``BMSREBOOT_BMS_ENDPOINT`` and ``BMSREBOOT_IAM_ENDPOINT`` are not used.

A file with mistakes is refused whole, with one :class:`Problem` per mistake naming its line
(:class:`FleetError`; ``bmsreboot fleet check``). tomllib gives no positions, and neither does
tomlkit (python-poetry/tomlkit#55, open), so the lines are found by scanning the text for the
``[[account]]`` and ``[regions...]`` headers, the keys and the project ids (:class:`_Lines`):
good enough to point at the right line of any file a person writes.

One pooled :class:`~worker.bms.client.BmsClient` per (account, region) per process, created on
first use under a lock; an account's credential provider is shared by its regions' clients.
"""

from __future__ import annotations

import os
import re
import threading
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from worker.bms.client import BmsClient
from worker.bms.credentials import CredentialProvider
from worker.bms.errors import BmsError, ConfigurationError
from worker.bms.sources import SOURCES, CredentialSource, credentials_from_config
from worker.pipeline.message import PROJECT_ID_PATTERN, REGION_PATTERN

if TYPE_CHECKING:
    import requests

    from worker.schedules import Served
    from worker.settings import Settings

ACCOUNT_KEYS = frozenset({"name", "credentials", "projects"})
PROJECT_KEYS = frozenset({"id", "region"})
REGION_KEYS = frozenset({"bms", "iam", "sts"})
TOP_KEYS = frozenset({"account", "regions"})
PROJECT_ID_RE = re.compile(PROJECT_ID_PATTERN)
REGION_RE = re.compile(REGION_PATTERN)
ACCOUNT_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
#: The largest fleet file read (thousands of projects fit in far less).
MAX_FLEET_FILE_BYTES = 4 * 1024 * 1024


def default_endpoint(service: str, region: str) -> str:
    """Huawei Cloud's endpoint of ``service`` (bms, iam, sts) in ``region``."""
    return f"https://{service}.{region}.myhuaweicloud.com"


@dataclass(frozen=True)
class Problem:
    """One mistake of a fleet file, at its line (None: the whole file)."""

    line: int | None
    message: str

    def render(self, path: str | Path) -> str:
        return f"{path}:{self.line}: {self.message}" if self.line else f"{path}: {self.message}"


class FleetError(ConfigurationError):
    """A fleet file that cannot be used: every problem, each naming its line."""

    def __init__(self, path: str | Path, problems: list[Problem]) -> None:
        self.path = str(path)
        self.problems = problems
        first = problems[0].render(path) if problems else f"{path}: unusable"
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        super().__init__(f"{first}{more}")

    def lines(self) -> list[str]:
        return [problem.render(self.path) for problem in self.problems]


@dataclass(frozen=True)
class Region:
    name: str
    bms: str
    iam: str
    sts: str
    #: The endpoints the file overrides (bms, iam, sts).
    overridden: tuple[str, ...] = ()


@dataclass(frozen=True)
class Project:
    id: str  # lower case
    region: str
    account: str
    line: int


@dataclass
class Account:
    name: str
    #: The credentials table's ``source``.
    source: str
    projects: tuple[Project, ...]
    line: int
    #: The credential source; None when the file was read without credentials.
    credentials: CredentialSource | None = None

    def describe(self) -> str:
        """Where the account's credential comes from (never the secret)."""
        if self.credentials is None:
            return f"source {self.source} (not built here)"
        return self.credentials.describe()


@dataclass
class Fleet:
    """A parsed fleet file: accounts, regions and projects, and the clients that reach them."""

    path: Path
    accounts: dict[str, Account]
    regions: dict[str, Region]
    settings: Settings
    _clients: dict[tuple[str, str], BmsClient] = field(default_factory=dict, repr=False)
    _hooks: list[Callable[[requests.Response], Any]] = field(default_factory=list, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        self.projects: dict[str, Project] = {
            p.id: p for account in self.accounts.values() for p in account.projects
        }
        #: Every project of the file (lower case) and its region: the only ones served.
        self.project_regions: dict[str, str] = {p.id: p.region for p in self.projects.values()}

    # --- what a request's project picks -------------------------------------------------------
    def project(self, project_id: str) -> Project | None:
        return self.projects.get(project_id.lower())

    def region_for(self, project_id: str) -> str | None:
        project = self.project(project_id)
        return project.region if project else None

    def endpoint_for(self, project_id: str) -> str | None:
        project = self.project(project_id)
        return self.regions[project.region].bms if project else None

    def client_for(self, project_id: str) -> BmsClient:
        """The pooled client of the project's account and region (created on first use, one
        per (account, region) per process); ConfigurationError for a project outside the
        file."""
        project = self.project(project_id)
        if project is None:
            raise ConfigurationError(f"project {project_id} is not in the fleet file {self.path}")
        key = (project.account, project.region)
        client = self._clients.get(key)
        if client is not None:
            return client
        with self._lock:
            client = self._clients.get(key)
            if client is None:
                client = self._client(project)
                self._clients[key] = client
        return client

    def _client(self, project: Project) -> BmsClient:
        account = self.accounts[project.account]
        if account.credentials is None:
            raise ConfigurationError(
                f"the fleet file {self.path} was read without credentials: no API call"
            )
        region = self.regions[project.region]
        settings = self.settings
        client = BmsClient.for_source(
            region.bms,
            account.credentials,
            iam_endpoint=region.iam,
            timeout=(settings.connect_timeout, settings.read_timeout),
            verify=settings.ca_bundle or settings.verify_tls,
        )
        for hook in self._hooks:
            client.add_response_hook(hook)
        return client

    def add_response_hook(self, hook: Callable[[requests.Response], Any]) -> None:
        """Call ``hook(response)`` for every answer of every client, now and later (metrics)."""
        with self._lock:
            self._hooks.append(hook)
            for client in self._clients.values():
                client.add_response_hook(hook)

    def close(self) -> None:
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            client.close()
        for account in self.accounts.values():
            if isinstance(account.credentials, CredentialProvider):
                account.credentials.close()

    # --- for people -----------------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        """Accounts, regions and projects with their endpoints and where each credential comes
        from (``bmsreboot fleet --json``); never a secret."""
        return {
            "file": str(self.path),
            "accounts": [
                {
                    "name": account.name,
                    "source": account.source,
                    "credentials": account.describe(),
                    "line": account.line,
                    "projects": [
                        {
                            "id": p.id,
                            "region": p.region,
                            "endpoint": self.regions[p.region].bms,
                            "line": p.line,
                        }
                        for p in account.projects
                    ],
                }
                for account in self.accounts.values()
            ],
            "regions": {
                name: {
                    "bms": region.bms,
                    "iam": region.iam,
                    "sts": region.sts,
                    "overridden": list(region.overridden),
                }
                for name, region in sorted(self.regions.items())
            },
        }


# --- reading the file ---------------------------------------------------------------------
def load_fleet(
    path: str | Path,
    settings: Settings,
    *,
    environ: Mapping[str, str] | None = None,
    credentials: bool = True,
) -> Fleet:
    """The fleet file at ``path``; raises :class:`FleetError` with every problem.

    ``credentials``: build each account's credential source (reading its variables and files,
    no network call); without, only the accounts, regions and projects are read (a producer
    checking a request needs no credentials)."""
    path = Path(path)
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_FLEET_FILE_BYTES + 1)
    except FileNotFoundError:
        raise FleetError(path, [Problem(None, "no such fleet file")]) from None
    except IsADirectoryError:
        raise FleetError(path, [Problem(None, "is a directory, not a fleet file")]) from None
    except OSError as exc:
        raise FleetError(path, [Problem(None, f"cannot be read ({exc.strerror})")]) from None
    if len(data) > MAX_FLEET_FILE_BYTES:
        raise FleetError(path, [Problem(None, f"larger than {MAX_FLEET_FILE_BYTES} bytes")])
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FleetError(path, [Problem(None, f"not UTF-8 text (byte {exc.start})")]) from None
    return parse_fleet(text, path, settings, environ=environ, credentials=credentials)


def parse_fleet(
    text: str,
    path: str | Path,
    settings: Settings,
    *,
    environ: Mapping[str, str] | None = None,
    credentials: bool = True,
) -> Fleet:
    """As :func:`load_fleet`, from the file's text."""
    reader = _Reader(text, Path(path), settings, os.environ if environ is None else environ)
    return reader.read(credentials=credentials)


_TOML_POSITION = re.compile(r"\s*\(at line (\d+), column \d+\)\s*$")


class _Reader:
    def __init__(
        self, text: str, path: Path, settings: Settings, environ: Mapping[str, str]
    ) -> None:
        self.text = text
        self.path = path
        self.settings = settings
        self.environ = environ
        self.problems: list[Problem] = []
        self.lines = _Lines(text)

    def problem(self, line: int | None, message: str) -> None:
        self.problems.append(Problem(line, message))

    def read(self, *, credentials: bool) -> Fleet:
        try:
            data = tomllib.loads(self.text)
        except tomllib.TOMLDecodeError as exc:
            # tomllib's message names the line and column, never the text.
            message = str(exc)
            position = _TOML_POSITION.search(message)
            line = int(position[1]) if position else None
            message = _TOML_POSITION.sub("", message)
            raise FleetError(self.path, [Problem(line, f"not valid TOML: {message}")]) from None
        for key in sorted(set(data) - TOP_KEYS):
            self.problem(
                self.lines.top_key(key),
                f"unknown key {key!r} (a fleet file holds [[account]] tables and an optional "
                "[regions] table)",
            )
        raw_accounts = data.get("account")
        if not isinstance(raw_accounts, list) or not raw_accounts:
            self.problem(
                self.lines.top_key("account") if "account" in data else None,
                "no [[account]] table: a fleet file names at least one account",
            )
            raw_accounts = []
        accounts = self._accounts(raw_accounts)
        regions = self._regions(data.get("regions", {}), accounts)
        if credentials:
            self._credentials(accounts, regions)
        if self.problems:
            self.problems.sort(key=lambda p: p.line or 0)
            raise FleetError(self.path, self.problems)
        built = {
            a.name: Account(a.name, a.source, a.projects, a.line, a.credentials) for a in accounts
        }
        return Fleet(self.path, built, regions, self.settings)

    # --- accounts and projects ------------------------------------------------------------------
    def _accounts(self, raw: list[Any]) -> list[_Account]:
        accounts: list[_Account] = []
        names: dict[str, int] = {}
        owners: dict[str, Project] = {}
        for index, item in enumerate(raw):
            span = self.lines.account(index)
            line = span.start
            if not isinstance(item, dict):
                self.problem(line, f"account #{index + 1} must be a table ([[account]])")
                continue
            name = item.get("name")
            named = isinstance(name, str) and name
            label = f"account {name!r}" if named else f"account #{index + 1}"
            for key in sorted(set(item) - ACCOUNT_KEYS):
                self.problem(
                    span.key(key),
                    f"{label}: unknown key {key!r} (its keys: {', '.join(sorted(ACCOUNT_KEYS))})",
                )
            if not isinstance(name, str) or not ACCOUNT_NAME_RE.match(name):
                self.problem(
                    span.key("name"),
                    f"{label} needs a name: 1 to 64 letters, digits, '.', '_' or '-' "
                    '(name = "prod")',
                )
                name = None
            elif name in names:
                self.problem(
                    span.key("name"),
                    f"account name {name!r} is used twice (also line {names[name]})",
                )
                name = None
            else:
                names[name] = span.key("name")
            spec = item.get("credentials")
            source = self._spec(spec, label, span)
            projects = self._projects(item.get("projects"), label, name, span, owners)
            if name is not None and source is not None and isinstance(spec, dict):
                listed = bool(item.get("projects"))
                accounts.append(_Account(name, source, spec, projects, line, span, listed))
        self._unused_accounts(accounts)
        return accounts

    def _spec(self, spec: Any, label: str, span: _Span) -> str | None:
        """The credentials table's source, checked as far as needs no building: a table with a
        known source, variable names that are names (never values)."""
        line = span.key("credentials")
        if not isinstance(spec, dict):
            self.problem(
                line,
                f'{label} needs credentials = {{ source = "..." }} (one of {", ".join(SOURCES)})',
            )
            return None
        source = spec.get("source")
        if source not in SOURCES:
            shown = repr(source) if isinstance(source, str) and len(source) <= 40 else "missing"
            self.problem(
                line,
                f"{label}: unknown credentials source {shown} (one of {', '.join(SOURCES)})",
            )
            return None
        ok = True
        for key, value in spec.items():
            if key.endswith("_env") and not _env_name(value):
                # Never echo it: it may be the secret itself, written where its name belongs.
                self.problem(
                    line,
                    f"{label}: {key} must name an environment variable (letters, digits, _), "
                    "not hold a value: put the secret in the variable and its name here",
                )
                ok = False
        return source if ok else None

    def _projects(
        self,
        raw: Any,
        label: str,
        account: str | None,
        span: _Span,
        owners: dict[str, Project],
    ) -> tuple[Project, ...]:
        line = span.key("projects")
        if raw is None:
            return ()
        if not isinstance(raw, list) or not all(isinstance(p, dict) for p in raw):
            self.problem(
                line, f'{label}: projects must be a list of {{ id = "...", region = "..." }}'
            )
            return ()
        projects: list[Project] = []
        seen: dict[str, int] = {}
        for item in raw:
            raw_id = item.get("id")
            at = span.value(raw_id, seen.get(str(raw_id).lower(), 0)) if raw_id else line
            if isinstance(raw_id, str):
                seen[raw_id.lower()] = seen.get(raw_id.lower(), 0) + 1
            for key in sorted(set(item) - PROJECT_KEYS):
                self.problem(
                    at, f"{label}: unknown key {key!r} in a project (its keys: id, region)"
                )
            if not isinstance(raw_id, str) or not PROJECT_ID_RE.match(raw_id):
                shown = _short(raw_id)
                self.problem(at, f"{label}: project id {shown} must be 32 hexadecimal characters")
                continue
            region = item.get("region")
            if not isinstance(region, str) or not REGION_RE.match(region):
                self.problem(
                    at,
                    f"{label}: project {raw_id} needs its region, a region name such as "
                    f"cn-north-4 (got {_short(region)})",
                )
                continue
            project = Project(raw_id.lower(), region, account or "", at)
            other = owners.get(project.id)
            if other is not None:
                where = (
                    "listed twice in this account"
                    if other.account == project.account
                    else f"also in account {other.account!r}: a project belongs to one account"
                )
                self.problem(at, f"project {raw_id} is {where} (line {other.line})")
                continue
            owners[project.id] = project
            projects.append(project)
        return tuple(projects)

    def _unused_accounts(self, accounts: list[_Account]) -> None:
        """An account with no project must sign for another (an agency's ``from``)."""
        callers = {a.caller for a in accounts if a.caller is not None}
        for account in accounts:
            if not account.listed and account.name not in callers:
                self.problem(
                    account.span.key("projects"),
                    f"account {account.name!r} has no projects and assumes no agency for "
                    "another account: it serves nothing",
                )

    # --- regions --------------------------------------------------------------------------------
    def _regions(self, raw: Any, accounts: list[_Account]) -> dict[str, Region]:
        used = {p.region for a in accounts for p in a.projects}
        overrides: dict[str, dict[str, str]] = {}
        if not isinstance(raw, dict):
            self.problem(
                self.lines.top_key("regions"),
                'regions must be tables: [regions."cn-north-4"] with bms, iam, sts',
            )
            raw = {}
        for name, table in raw.items():
            line = self.lines.region(name)
            if not REGION_RE.match(name):
                self.problem(line, f"{_short(name)} is not a region name (such as cn-north-4)")
                continue
            if not isinstance(table, dict):
                self.problem(line, f'regions."{name}" must be a table of bms, iam and sts URLs')
                continue
            for key in sorted(set(table) - REGION_KEYS):
                self.problem(
                    self.lines.region_key(name, key),
                    f'regions."{name}": unknown key {key!r} (its keys: bms, iam, sts)',
                )
            urls: dict[str, str] = {}
            for key in sorted(REGION_KEYS & set(table)):
                value = table[key]
                if not isinstance(value, str) or not re.match(r"^https?://[^\s/]+", value):
                    secretive = isinstance(value, str) and "@" in value  # user:password@host
                    shown = "" if secretive else f", got {_short(value)}"
                    self.problem(
                        self.lines.region_key(name, key),
                        f'regions."{name}".{key} must be an http(s) URL{shown}',
                    )
                    continue
                urls[key] = value.rstrip("/")
            if name not in used:
                self.problem(line, f'regions."{name}" is the region of no project (a typo?)')
            overrides[name] = urls
        regions = {}
        for name in sorted(used):
            urls = overrides.get(name, {})
            regions[name] = Region(
                name,
                urls.get("bms") or default_endpoint("bms", name),
                urls.get("iam") or default_endpoint("iam", name),
                urls.get("sts") or self.settings.sts_endpoint or default_endpoint("sts", name),
                tuple(sorted(urls)),
            )
        return regions

    # --- credentials ----------------------------------------------------------------------------
    def _credentials(self, accounts: list[_Account], regions: dict[str, Region]) -> None:
        """Build each account's source, the ``from`` of an agency before it. An account whose
        ``from`` names no account, or is part of a cycle, is not built (one problem each)."""
        by_name = {a.name: a for a in accounts}
        failed: set[str] = set()
        for account in accounts:
            caller = account.caller
            if caller is not None and caller not in by_name:
                known = ", ".join(sorted(by_name))
                self.problem(
                    account.span.key("credentials"),
                    f"account {account.name!r}: agency from {caller!r} names no account of "
                    f"this file (its accounts: {known})",
                )
                failed.add(account.name)
        for cycle in _cycles(by_name):
            first = by_name[cycle[0]]
            self.problem(
                first.span.key("credentials"),
                f"account {first.name!r}: agency from forms a cycle: {' -> '.join(cycle)}",
            )
            failed.update(cycle)
        built: dict[str, CredentialSource] = {}
        for account in _in_dependency_order(by_name, failed):
            if account.caller in failed:
                failed.add(account.name)  # its caller's problem is said already
                continue
            spec = dict(account.spec)
            if account.source == "agency" and "sts_endpoint" not in spec:
                region = account.projects[0].region if account.projects else None
                spec["sts_endpoint"] = (
                    regions[region].sts
                    if region is not None
                    else self.settings.effective_sts_endpoint
                )
            try:
                source = credentials_from_config(
                    spec, settings=self.settings, environ=self.environ, resolve=built.__getitem__
                )
            except (BmsError, ValueError) as error:
                self.problem(account.span.key("credentials"), f"account {account.name!r}: {error}")
                failed.add(account.name)
                continue
            account.credentials = built[account.name] = source


@dataclass
class _Account:
    name: str
    source: str
    spec: dict[str, Any]
    projects: tuple[Project, ...]
    line: int
    span: _Span
    #: Whether it lists projects (a bad one is a problem of its own, not "no projects").
    listed: bool = True
    credentials: CredentialSource | None = None

    @property
    def caller(self) -> str | None:
        """The account an agency is assumed with (its ``from``, when a name)."""
        value = self.spec.get("from")
        return value if self.source == "agency" and isinstance(value, str) else None


def _cycles(accounts: Mapping[str, _Account]) -> list[list[str]]:
    """Each cycle of ``from`` names, once: ``[a, b, a]``."""
    cycles: list[list[str]] = []
    seen: set[str] = set()
    for start in accounts:
        path: list[str] = []
        name: str | None = start
        while name is not None and name in accounts and name not in seen and name not in path:
            path.append(name)
            name = accounts[name].caller
        if name is not None and name in path:
            cycles.append([*path[path.index(name) :], name])
        seen.update(path)
    return cycles


def _in_dependency_order(accounts: Mapping[str, _Account], skip: set[str]) -> list[_Account]:
    """Every account not in ``skip``, after the one its agency is assumed with."""
    ordered: list[_Account] = []
    placed: set[str] = set()

    def place(account: _Account) -> None:
        if account.name in placed or account.name in skip:
            return
        placed.add(account.name)
        if account.caller is not None and account.caller in accounts:
            place(accounts[account.caller])
        ordered.append(account)

    for account in accounts.values():
        place(account)
    return ordered


def _env_name(value: Any) -> bool:
    """Whether ``value`` can be a variable's name and does not look like a key: an AK is 20
    capitals and digits, an SK 40 letters and digits, neither with an underscore."""
    if not isinstance(value, str) or not ENV_NAME_RE.match(value):
        return False
    looks_like_a_key = "_" not in value and len(value) >= 16 and any(c.isdigit() for c in value)
    return not looks_like_a_key


def _short(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --- where things are: line numbers -------------------------------------------------------
_HEADER = re.compile(r"^\s*(\[\[?)\s*([^\[\]]+?)\s*\]\]?\s*(?:#.*)?$")
_KEY = re.compile(r"""^\s*(?:"([^"]*)"|'([^']*)'|([A-Za-z0-9_-]+))\s*(?:\.|=)""")


@dataclass
class _Span:
    """A table's lines: ``start`` (its header) to ``end`` (exclusive)."""

    lines: list[str]
    start: int
    end: int
    #: The prefix of its sub-table headers (``account.`` for [account.credentials]).
    prefix: str = ""

    def key(self, key: str) -> int:
        """The line of ``key = ...`` (or its sub-table header), else the table's header."""
        for number in range(self.start, self.end):
            text = self.lines[number - 1]
            match = _KEY.match(text)
            if match and key in match.groups():
                return number
            header = _HEADER.match(text)
            if header and self.prefix and _dotted(header[2]) == f"{self.prefix}{key}":
                return number
        return self.start

    def value(self, value: Any, nth: int = 0) -> int:
        """The line of the ``nth`` string ``value`` (a project id), else the header."""
        if not isinstance(value, str):
            return self.start
        pattern = re.compile(r"""["']""" + re.escape(value) + r"""["']""", re.IGNORECASE)
        found = 0
        for number in range(self.start, self.end):
            if pattern.search(self.lines[number - 1]):
                if found == nth:
                    return number
                found += 1
        return self.start


def _dotted(key: str) -> str:
    """A header's dotted key without quotes or spaces: ``regions . "cn-north-4"`` ->
    ``regions.cn-north-4``."""
    parts = re.findall(r"""\s*(?:"([^"]*)"|'([^']*)'|([^.\s]+))\s*(?:\.|$)""", key)
    return ".".join(next(p for p in part if p) if any(part) else "" for part in parts)


class _Lines:
    """The headers of a fleet file and where each table's lines end. Lines inside multi-line
    strings are skipped; anything else that looks like a header is one (tomllib has parsed the
    file already, so a stray ``[x]`` inside a multi-line array is the only thing that could
    mislead it, and only for the line it points at)."""

    def __init__(self, text: str) -> None:
        self.text = text.splitlines()
        self.headers: list[tuple[int, str, bool]] = []  # (line, dotted key, array of tables)
        in_string: str | None = None
        for number, line in enumerate(self.text, start=1):
            for quote in ('"""', "'''"):
                if in_string in (None, quote) and line.count(quote) % 2:
                    in_string = quote if in_string is None else None
                    break
            else:
                if in_string is None:
                    match = _HEADER.match(line)
                    if match:
                        self.headers.append((number, _dotted(match[2]), match[1] == "[["))
        self.end = len(self.text) + 1

    def _span(self, index: int, prefix: str = "") -> _Span:
        line = self.headers[index][0]
        end = self.end
        for later, key, _ in self.headers[index + 1 :]:
            if not (prefix and key.startswith(prefix)):
                end = later
                break
        return _Span(self.text, line, end, prefix)

    def account(self, index: int) -> _Span:
        """The lines of the ``index``-th ``[[account]]`` (its sub-tables included)."""
        found = [i for i, (_, key, array) in enumerate(self.headers) if key == "account" and array]
        if index < len(found):
            return self._span(found[index], "account.")
        return _Span(self.text, 1, self.end)

    def region(self, name: str) -> int:
        for number, key, _ in self.headers:
            if key == f"regions.{name}":
                return number
        regions = self._regions_table()
        return regions.key(name) if regions else self.top_key("regions")

    def region_key(self, name: str, key: str) -> int:
        for index, (_, dotted, _) in enumerate(self.headers):
            if dotted == f"regions.{name}":
                return self._span(index).key(key)
        return self.region(name)

    def _regions_table(self) -> _Span | None:
        for index, (_, key, _) in enumerate(self.headers):
            if key == "regions":
                return self._span(index, "regions.")
        return None

    def top_key(self, key: str) -> int:
        """The line of a top-level ``key = ...`` or ``[key]`` / ``[key.x]`` header."""
        first = self.headers[0][0] if self.headers else self.end
        top = _Span(self.text, 1, first)
        for number in range(1, first):
            match = _KEY.match(self.text[number - 1])
            if match and key in match.groups():
                return number
        for number, dotted, _ in self.headers:
            if dotted == key or dotted.startswith(f"{key}."):
                return number
        return top.start


# --- the deployment's scope: the fleet file, or the settings -------------------------------
def read_scope(settings: Settings) -> Fleet | None:
    """The fleet file of ``settings`` read without credentials (what a producer checks a
    request against), or None without one. Re-read when the file changes."""
    if settings.fleet_file is None:
        return None
    path = Path(settings.fleet_file)
    try:
        stat = path.stat()
        stamp = (str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    except OSError:
        stamp = (str(path), 0, -1)
    with _SCOPES_LOCK:
        cached = _SCOPES.get(stamp)
    if cached is not None:
        return cached
    fleet = load_fleet(path, settings, credentials=False)
    with _SCOPES_LOCK:
        _SCOPES.clear()
        _SCOPES[stamp] = fleet
    return fleet


_SCOPES: dict[tuple[str, int, int], Fleet] = {}
_SCOPES_LOCK = threading.Lock()


def allowed_projects(settings: Settings, fleet: Fleet | None) -> frozenset[str] | None:
    """The projects this deployment may touch: the fleet file's, and those of
    ``BMSREBOOT_ALLOWED_PROJECTS`` when it is set too (a project must be in both); None: any."""
    listed = settings.allowed_project_ids
    if fleet is None:
        return listed
    ids = frozenset(fleet.projects)
    return ids if listed is None else ids & listed


def served(settings: Settings, fleet: Fleet | None) -> Served | None:
    """The projects a schedule entry may name (``worker.schedules``); None: any."""
    from worker.schedules import Served

    projects = allowed_projects(settings, fleet)
    if projects is None:
        return None
    if fleet is None:
        return Served(projects, "BMSREBOOT_ALLOWED_PROJECTS")
    if settings.allowed_project_ids is None:
        return Served(projects, f"the fleet file {fleet.path}")
    return Served(projects, f"both the fleet file {fleet.path} and BMSREBOOT_ALLOWED_PROJECTS")


def served_by(settings: Settings) -> tuple[Served | None, str | None]:
    """``served`` for a process without a runtime (beat, ``bmsreboot schedules``): the fleet
    file read without credentials; and, when it cannot be read, why (the projects are then
    checked by the worker alone)."""
    try:
        fleet = read_scope(settings)
    except FleetError as error:
        return served(settings, None), f"the projects are not checked against it: {error}"
    return served(settings, fleet), None


def settings_account(settings: Settings) -> dict[str, Any]:
    """Without a fleet file, the one account the settings describe (``bmsreboot fleet``)."""
    from worker.bms.sources import source_from_settings

    try:
        credentials = source_from_settings(settings).describe()
    except ConfigurationError as error:
        credentials = f"none: {error}"
    allowed = settings.allowed_project_ids
    return {
        "file": None,
        "accounts": [
            {
                "name": "settings",
                "credentials": credentials,
                "region": settings.region,
                "projects": sorted(allowed) if allowed is not None else None,
            }
        ],
        "regions": {
            settings.region: {
                "bms": settings.effective_bms_endpoint,
                "iam": settings.effective_iam_endpoint,
                "sts": settings.effective_sts_endpoint,
            }
        },
    }
