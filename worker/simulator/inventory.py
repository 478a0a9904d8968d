"""The simulated fleet: the servers of each project, their state, and how power actions move it.

Two sources, one per ``SimulatorConfig`` knob (they exclude each other):

``servers=N``
    N generated servers in **every** project, made on the project's first use.
    :func:`generated_server` is public so tests can compute them. Server ``i`` (1-based) of
    project ``P``:

    - id ``uuid5(NAMESPACE, f"{P}/{i}")``, name ``bms-{i:05d}``;
    - tags ``__type_baremetal`` (as BMS tags every bare-metal server), ``env=prod`` (odd ``i``)
      or ``env=staging`` (even), ``role=db`` (``i`` divisible by 5) or ``role=web``, and
      ``rack=r{(i - 1) // 40 + 1:03d}`` (40 servers a rack);
    - enterprise project ``ENTERPRISE_PROJECTS[(i - 1) % 3]``; flavor ``FLAVORS[1]`` when ``i``
      is divisible by 4, else ``FLAVORS[0]``;
    - fixed IPv4 ``10.(i // 65536).(i // 256 % 256).(i % 256)``; ``ACTIVE``, unlocked, host ``UP``.

``inventory=FILE``
    JSON lines, one server each (blank lines and ``#`` comments skipped): ``id`` (a UUID) and
    ``name`` required; ``tags`` (list of strings, ``[]``), ``enterprise_project_id`` (``"0"``),
    ``locked`` (false), ``status`` (``ACTIVE``), ``host_status`` (``UP``), ``task_state``
    (null), ``flavor`` (``FLAVORS[0]``), ``ip`` (derived from the id) and ``project_id`` (the
    default project) optional. Anything else is refused with its line number.

Without either there is no inventory: actions take any id (as before the inventory existed),
the list is empty and a server's details are 404.

**State follows the jobs.** A reboot is checked against the servers when it is accepted (an id
outside the inventory is ``BMS.0040``, a locked server ``BMS.0605``, one with a task or not
``ACTIVE`` ``BMS.0037``; nothing is accepted then). Once accepted, a server whose sub-job will
succeed shows ``HARD_REBOOT`` with task ``reboot_started_hard`` from acceptance until its job's
end plus ``boot_seconds`` (firmware and boot), then ``ACTIVE`` without a task, or ``ERROR`` for
ever when :func:`~worker.simulator.config.server_never_returns`. A server whose sub-job fails
is left as it was: it was not rebooted. ``os-stop`` shows task ``powering-off`` until its job
ends, then ``SHUTOFF``; ``os-start`` ``SHUTOFF`` with ``powering-on`` until the job's end plus
``boot_seconds``, then ``ACTIVE``. Like jobs, all of it is a function of the clock: a change is
*settled* (written into the server, at the time it happened) whenever anything looks.

Each reboot is recorded (:class:`Reboot`): when it was accepted, when its sub-job ended
``SUCCESS``, when the server came back or was lost. ``GET /_simulator/stats`` shows them per
server (``servers``), only up to the present.

Not thread-safe: ``SimulatorState`` calls it under its lock. Rendering (:func:`render`) works
on :class:`ServerView` snapshots, outside the lock.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from worker.simulator.config import DEFAULT_PROJECT_ID, SimulatorConfig, server_never_returns
from worker.simulator.wire import BMS_NO_SERVER

#: The namespace of generated server ids: ``uuid5(NAMESPACE, f"{project_id}/{index}")``.
NAMESPACE = uuid.UUID("6b1d6a2e-3c4f-5e8a-9b0c-1d2e3f405162")
#: "0" is the default enterprise project of every account; two more for spread.
ENTERPRISE_PROJECTS = (
    "0",
    str(uuid.uuid5(NAMESPACE, "enterprise-project/analytics")),
    str(uuid.uuid5(NAMESPACE, "enterprise-project/payments")),
)
FLAVORS = ("physical.s4.3xlarge", "physical.d2.large")
#: The BMS system tag carried by every bare-metal server.
BAREMETAL_TAG = "__type_baremetal"
#: Generated servers were created a second apart from this moment (2024-01-01T00:00:00Z).
BASE_CREATED = 1704067200.0
#: How long a generated rack is, in servers.
RACK_SIZE = 40

LOCKED = "BMS.0605"
POWERING_ON = "BMS.0035"
POWERING_OFF = "BMS.0036"
REBOOTING = "BMS.0037"
RUNNING = "BMS.0038"
STOPPED = "BMS.0039"

#: What a server shows while a power action runs: (status, task_state).
_BUSY = {
    "reboot": ("HARD_REBOOT", "reboot_started_hard"),
    "os-stop": ("ACTIVE", "powering-off"),
    "os-start": ("SHUTOFF", "powering-on"),
}
#: Whether the action ends in a boot (``boot_seconds`` after the job, and maybe no return).
_BOOTS = {"reboot": True, "os-stop": False, "os-start": True}
_FINAL = {"reboot": "ACTIVE", "os-stop": "SHUTOFF", "os-start": "ACTIVE"}
#: status -> (OS-EXT-STS:vm_state, OS-EXT-STS:power_state); others: (lower-case status, 0).
_VM_STATES = {
    "ACTIVE": ("active", 1),
    "HARD_REBOOT": ("active", 1),
    "REBOOT": ("active", 1),
    "SHUTOFF": ("shutoff", 4),
    "ERROR": ("error", 0),
    "BUILD": ("building", 0),
}
#: Fields an inventory line may hold.
_FILE_FIELDS = frozenset(
    {
        "id",
        "name",
        "tags",
        "enterprise_project_id",
        "locked",
        "status",
        "host_status",
        "task_state",
        "flavor",
        "ip",
        "project_id",
    }
)
#: Fields ``/_simulator/servers`` may set at runtime.
SETTABLE = frozenset({"locked", "status", "host_status", "task_state", "ip"})
_UUID = re.compile(r"^[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$")
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
#: Static filter results kept per project (name, tag, enterprise project, flavor).
_MATCH_CACHE = 64


@dataclass(frozen=True, slots=True)
class ServerSpec:
    """What a server is when the inventory is built."""

    id: str
    name: str
    tags: tuple[str, ...] = ()
    enterprise_project_id: str = "0"
    locked: bool = False
    status: str = "ACTIVE"
    host_status: str = "UP"
    task_state: str | None = None
    flavor: str = FLAVORS[0]
    ip: str = ""
    created: float = BASE_CREATED


def server_id(project_id: str, index: int) -> str:
    """The id of generated server ``index`` (1-based) of ``project_id``."""
    return str(uuid.uuid5(NAMESPACE, f"{project_id}/{index}"))


def generated_server(project_id: str, index: int) -> ServerSpec:
    """Generated server ``index`` (1-based) of ``project_id`` (the module docstring's rules)."""
    return ServerSpec(
        id=server_id(project_id, index),
        name=f"bms-{index:05d}",
        tags=(
            BAREMETAL_TAG,
            "env=prod" if index % 2 else "env=staging",
            "role=db" if index % 5 == 0 else "role=web",
            f"rack=r{(index - 1) // RACK_SIZE + 1:03d}",
        ),
        enterprise_project_id=ENTERPRISE_PROJECTS[(index - 1) % len(ENTERPRISE_PROJECTS)],
        flavor=FLAVORS[1] if index % 4 == 0 else FLAVORS[0],
        ip=f"10.{index // 65536 % 256}.{index // 256 % 256}.{index % 256}",
        created=BASE_CREATED + index,
    )


def generated_servers(project_id: str, count: int) -> list[ServerSpec]:
    return [generated_server(project_id, i) for i in range(1, count + 1)]


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode("utf-8")).digest()


def _derived_ip(server: str) -> str:
    a, b, c = _digest(f"ip:{server}")[:3]
    return f"10.{a}.{b}.{max(c, 1)}"


def load_inventory(path: str) -> dict[str, tuple[ServerSpec, ...]]:
    """The servers of an inventory file, by project; ValueError naming the line when bad."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read the inventory {path}: {exc}") from None
    by_project: dict[str, list[ServerSpec]] = {}
    seen: set[tuple[str, str]] = set()
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            project, spec = _spec(json.loads(line))
        except (json.JSONDecodeError, ValueError, TypeError) as exc:
            raise ValueError(f"inventory {path}, line {number}: {exc}") from None
        if (project, spec.id) in seen:
            raise ValueError(f"inventory {path}, line {number}: server {spec.id} is listed twice")
        seen.add((project, spec.id))
        by_project.setdefault(project, []).append(spec)
    return {project: tuple(specs) for project, specs in by_project.items()}


def _text(line: Mapping[str, Any], name: str, default: str | None) -> str | None:
    value = line.get(name, default)
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{name} must be a string")
    return value


def _spec(line: Any) -> tuple[str, ServerSpec]:
    if not isinstance(line, dict):
        raise ValueError("a line must be a JSON object")
    unknown = set(line) - _FILE_FIELDS
    if unknown:
        raise ValueError(f"unknown field(s) {', '.join(sorted(unknown))}")
    sid = line.get("id")
    if not isinstance(sid, str) or not _UUID.match(sid):
        raise ValueError("id must be a UUID")
    name = _text(line, "name", None)
    if not name:
        raise ValueError("name is required")
    tags = line.get("tags", [])
    if not isinstance(tags, list) or not all(isinstance(t, str) and t for t in tags):
        raise ValueError("tags must be a list of non-empty strings")
    locked = line.get("locked", False)
    if not isinstance(locked, bool):
        raise ValueError("locked must be true or false")
    spec = ServerSpec(
        id=sid,
        name=name,
        tags=tuple(tags),
        enterprise_project_id=_text(line, "enterprise_project_id", "0") or "0",
        locked=locked,
        status=_text(line, "status", "ACTIVE") or "ACTIVE",
        host_status=_text(line, "host_status", "UP") or "",
        task_state=_text(line, "task_state", None) or None,
        flavor=_text(line, "flavor", FLAVORS[0]) or FLAVORS[0],
        ip=_text(line, "ip", None) or _derived_ip(sid),
    )
    return _text(line, "project_id", DEFAULT_PROJECT_ID) or DEFAULT_PROJECT_ID, spec


# --- state ------------------------------------------------------------------------------------


@dataclass(slots=True)
class Reboot:
    """One accepted reboot of one server, with the moments it passed (epoch seconds)."""

    accepted: float
    #: When its sub-job ends SUCCESS (``inf`` when stuck); None when the sub-job fails.
    job_end: float | None
    #: When it is back ACTIVE, or lost (ERROR); None when it is not rebooted.
    settles: float | None
    lost: bool
    #: Set when a test forced the server's state (``/_simulator/servers``) before it settled.
    cancelled: float | None = None

    def seen(self, moment: float | None, now: float) -> bool:
        """Whether ``moment`` has happened by ``now`` and was not cancelled before."""
        if moment is None or moment > now:
            return False
        return self.cancelled is None or moment <= self.cancelled


@dataclass(frozen=True, slots=True)
class Busy:
    """A power action in progress on one server."""

    action: str
    status: str
    task_state: str
    accepted: float
    #: When the server settles: the job's end, plus ``boot_seconds`` for a boot.
    until: float
    final: str
    record: Reboot | None


@dataclass(slots=True)
class Server:
    project_id: str
    index: int
    spec: ServerSpec
    status: str
    task_state: str | None
    locked: bool
    host_status: str
    ip: str
    updated: float
    busy: Busy | None = None
    reboots: list[Reboot] = field(default_factory=list)

    @classmethod
    def new(cls, project_id: str, index: int, spec: ServerSpec) -> Server:
        return cls(
            project_id=project_id,
            index=index,
            spec=spec,
            status=spec.status,
            task_state=spec.task_state,
            locked=spec.locked,
            host_status=spec.host_status,
            ip=spec.ip or _derived_ip(spec.id),
            updated=spec.created,
        )

    def settle(self, now: float) -> bool:
        """Apply a finished action; True when the server is still busy."""
        busy = self.busy
        if busy is None:
            return False
        if now < busy.until:
            return True
        self.status, self.task_state, self.updated, self.busy = busy.final, None, busy.until, None
        return False

    def visible(self) -> tuple[str, str | None, float]:
        """(status, task_state, updated) as the API shows them now (after :meth:`settle`)."""
        if self.busy is not None:
            return self.busy.status, self.busy.task_state, self.busy.accepted
        return self.status, self.task_state, self.updated

    def view(self) -> ServerView:
        status, task_state, updated = self.visible()
        return ServerView(
            self.project_id,
            self.index,
            self.spec,
            status,
            task_state,
            self.locked,
            self.host_status,
            self.ip,
            updated,
        )

    def history(self, now: float) -> dict[str, Any]:
        return {
            "project_id": self.project_id,
            "status": self.visible()[0],
            "reboots": [r.accepted for r in self.reboots],
            "job_ends": [r.job_end for r in self.reboots if r.seen(r.job_end, now)],
            "returned": [r.settles for r in self.reboots if not r.lost and r.seen(r.settles, now)],
            "lost": [r.settles for r in self.reboots if r.lost and r.seen(r.settles, now)],
        }


@dataclass(frozen=True, slots=True)
class ServerView:
    """A snapshot of one server, safe to render outside the lock."""

    project_id: str
    index: int
    spec: ServerSpec
    status: str
    task_state: str | None
    locked: bool
    host_status: str
    ip: str
    updated: float


@dataclass(frozen=True, slots=True)
class Filters:
    """A ListBareMetalServers query, validated (``worker.simulator.validation``)."""

    name: str | None = None
    status: str | None = None
    tag: str | None = None
    enterprise_project_id: str | None = None
    flavor: str | None = None
    limit: int = 25
    offset: int = 1

    def matches(self, spec: ServerSpec) -> bool:
        """The filters that never change for a server (all but ``status``)."""
        if self.name is not None and self.name not in spec.name:
            return False
        if self.flavor is not None and spec.flavor != self.flavor:
            return False
        if self.enterprise_project_id is not None and (
            spec.enterprise_project_id != self.enterprise_project_id
        ):
            return False
        return self.tag is None or has_tag(spec.tags, self.tag)


def has_tag(tags: Iterable[str], wanted: str) -> bool:
    """``key=value`` matches that tag exactly; a bare ``key`` matches the tag ``key`` or any
    ``key=...``."""
    if "=" in wanted:
        return wanted in tags
    return any(t == wanted or t.startswith(wanted + "=") for t in tags)


class ProjectServers:
    def __init__(self, project_id: str, specs: Iterable[ServerSpec]) -> None:
        self.servers = [Server.new(project_id, i, spec) for i, spec in enumerate(specs, start=1)]
        self.by_id = {s.spec.id: s for s in self.servers}
        self.busy: set[str] = set()
        #: Servers with a reboot record, in the order of their first reboot (for stats).
        self.rebooted: dict[str, None] = {}
        self._matches: dict[tuple[str | None, ...], list[Server]] = {}

    def settle(self, now: float) -> None:
        if self.busy:
            self.busy = {sid for sid in self.busy if self.by_id[sid].settle(now)}

    def matching(self, filters: Filters) -> list[Server]:
        key = (filters.name, filters.tag, filters.enterprise_project_id, filters.flavor)
        found = self._matches.get(key)
        if found is None:
            if len(self._matches) >= _MATCH_CACHE:
                self._matches.clear()
            found = self._matches[key] = [s for s in self.servers if filters.matches(s.spec)]
        if filters.status is None:
            return found
        return [s for s in found if s.visible()[0] == filters.status]


class Inventory:
    """The servers of every project, for one configuration of ``servers``/``inventory``."""

    def __init__(self, config: SimulatorConfig) -> None:
        self.enabled = config.has_inventory
        self._generate = config.servers
        self._file = load_inventory(config.inventory) if config.inventory is not None else None
        self._projects: dict[str, ProjectServers] = {}

    def clear(self) -> None:
        """Back to the servers as they were built (a reset); the file is not read again."""
        self._projects.clear()

    def project(self, project_id: str) -> ProjectServers:
        found = self._projects.get(project_id)
        if found is None:
            if self._file is not None:
                specs: Iterable[ServerSpec] = self._file.get(project_id, ())
            else:
                specs = generated_servers(project_id, self._generate)
            found = self._projects[project_id] = ProjectServers(project_id, specs)
        return found

    def settle(self, now: float) -> None:
        for project in self._projects.values():
            project.settle(now)

    # --- the API ------------------------------------------------------------------------------
    def refusal(self, project_id: str, action: str, server_ids: Iterable[str], now: float) -> str:
        """The code refusing a power action on ``server_ids``, or "" when it may run."""
        project = self.project(project_id)
        project.settle(now)
        servers = [project.by_id.get(sid) for sid in server_ids]
        present = [s for s in servers if s is not None]
        if len(present) < len(servers):
            return BMS_NO_SERVER
        if any(s.locked for s in present):
            return LOCKED
        for server in present:
            status, task_state, _ = server.visible()
            code = _conflict(action, status, task_state)
            if code:
                return code
        return ""

    def start(
        self,
        project_id: str,
        action: str,
        server_ids: Iterable[str],
        failures: Mapping[str, str],
        job_end: float,
        config: SimulatorConfig,
        now: float,
    ) -> None:
        """Record an accepted action (after :meth:`refusal` said yes) on its servers."""
        project = self.project(project_id)
        status, task_state = _BUSY[action]
        boots = _BOOTS[action]
        until = job_end + config.boot_seconds if boots else job_end
        for sid in server_ids:
            server = project.by_id[sid]
            ok = sid not in failures
            lost = ok and action == "reboot" and server_never_returns(sid, config)
            record = None
            if action == "reboot":
                record = Reboot(now, job_end if ok else None, until if ok else None, lost)
                server.reboots.append(record)
                project.rebooted[sid] = None
            if not ok:
                continue  # a failed sub-job leaves the server as it was
            final = "ERROR" if lost else _FINAL[action]
            server.busy = Busy(action, status, task_state, now, until, final, record)
            project.busy.add(sid)

    def page(self, project_id: str, filters: Filters, now: float) -> tuple[int, list[ServerView]]:
        """(every matching server's count, the views of page ``offset`` of ``limit``)."""
        if not self.enabled:
            return 0, []
        project = self.project(project_id)
        project.settle(now)
        found = project.matching(filters)
        first = (filters.offset - 1) * filters.limit
        return len(found), [s.view() for s in found[first : first + filters.limit]]

    def find(self, project_id: str, sid: str, now: float) -> ServerView | None:
        if not self.enabled:
            return None
        project = self.project(project_id)
        project.settle(now)
        server = project.by_id.get(sid)
        return None if server is None else server.view()

    # --- the admin API ------------------------------------------------------------------------
    def set_fields(
        self, project_id: str, server_ids: list[str], fields: Mapping[str, Any], now: float
    ) -> list[ServerView]:
        """Change servers at runtime. Setting ``status`` or ``task_state`` ends an action in
        progress (the server is what the test says from now on); the others leave it running.
        Raises ValueError (nothing changed) for an unknown server or a bad field."""
        if not self.enabled:
            raise ValueError("the simulator has no inventory (set servers or inventory)")
        changes = _settable(fields)
        project = self.project(project_id)
        project.settle(now)
        servers = [project.by_id.get(sid) for sid in server_ids]
        missing = [sid for sid, s in zip(server_ids, servers, strict=True) if s is None]
        if missing:
            raise ValueError(f"no server {missing[0]} in project {project_id}")
        views = []
        for server in servers:
            assert server is not None
            if {"status", "task_state"} & changes.keys() and server.busy is not None:
                status, task_state, _ = server.visible()
                if server.busy.record is not None:
                    server.busy.record.cancelled = now
                server.status, server.task_state, server.busy = status, task_state, None
                project.busy.discard(server.spec.id)
            for name, value in changes.items():
                setattr(server, name, value)
            server.updated = now
            views.append(server.view())
        return views

    def history(self, now: float) -> dict[str, dict[str, Any]]:
        """Per server with a reboot: its reboots and the moments they passed, up to ``now``."""
        self.settle(now)
        return {
            sid: project.by_id[sid].history(now)
            for project in self._projects.values()
            for sid in project.rebooted
        }


def _conflict(action: str, status: str, task_state: str | None) -> str:
    if task_state == "powering-on":
        return POWERING_ON
    if task_state == "powering-off":
        return POWERING_OFF
    if task_state:
        return REBOOTING
    if action == "os-start":
        return "" if status == "SHUTOFF" else RUNNING if status == "ACTIVE" else REBOOTING
    if status == "ACTIVE":
        return ""
    return STOPPED if action == "os-stop" and status == "SHUTOFF" else REBOOTING


def _settable(fields: Mapping[str, Any]) -> dict[str, Any]:
    unknown = set(fields) - SETTABLE
    if unknown:
        raise ValueError(f"cannot set {', '.join(sorted(unknown))}; settable: {sorted(SETTABLE)}")
    if not fields:
        raise ValueError(f"nothing to set; settable: {sorted(SETTABLE)}")
    changes: dict[str, Any] = {}
    for name, value in fields.items():
        if name == "locked":
            if not isinstance(value, bool):
                raise ValueError("locked must be true or false")
        elif name == "task_state":
            if value is not None and not isinstance(value, str):
                raise ValueError("task_state must be a string or null")
            value = value or None
        elif not isinstance(value, str) or (name != "host_status" and not value):
            raise ValueError(f"{name} must be a string")
        changes[name] = value
    return changes


# --- the wire ---------------------------------------------------------------------------------


def _time(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime(_TIME_FORMAT)


def _hex(value: str, length: int) -> str:
    return _digest(value).hex()[:length]


def render(view: ServerView) -> dict[str, Any]:
    """One server as ListBareMetalServers and its details show it (the SDK's ServerDetails)."""
    spec = view.spec
    vm_state, power_state = _VM_STATES.get(view.status, (view.status.lower(), 0))
    host = f"bms-host-{_hex('host:' + spec.id, 8)}"
    mac = _digest(f"mac:{spec.id}")
    return {
        "id": spec.id,
        "name": spec.name,
        "status": view.status,
        "created": _time(spec.created),
        "updated": _time(view.updated),
        "tenant_id": view.project_id,
        "user_id": _hex("user:" + view.project_id, 32),
        "hostId": _hex(view.project_id + host, 56),
        "addresses": {
            f"vpc-{_hex('vpc:' + view.project_id, 8)}": [
                {
                    "version": "4",
                    "addr": view.ip,
                    "OS-EXT-IPS:type": "fixed",
                    "OS-EXT-IPS-MAC:mac_addr": "fa:16:3e:" + ":".join(f"{b:02x}" for b in mac[:3]),
                    "OS-EXT-IPS:port_id": str(uuid.uuid5(NAMESPACE, f"port:{spec.id}")),
                }
            ]
        },
        "key_name": None,
        "image": {"id": str(uuid.uuid5(NAMESPACE, "image/ubuntu-22.04"))},
        "flavor": {"id": spec.flavor, "name": spec.flavor, "vcpus": "48", "ram": "196608"},
        "metadata": {
            "chargingMode": "0",
            "metering.resourcetype": "hws.resource.type.pm",
            "metering.resourcespeccode": f"{spec.flavor}.linux",
            "vpc_id": str(uuid.uuid5(NAMESPACE, f"vpc:{view.project_id}")),
            "image_name": "Ubuntu 22.04 server 64bit for BareMetal",
            "os_type": "Linux",
            "os_bit": "64",
        },
        "OS-EXT-STS:task_state": view.task_state,
        "OS-EXT-STS:vm_state": vm_state,
        "OS-EXT-STS:power_state": power_state,
        "OS-EXT-SRV-ATTR:host": host,
        "OS-EXT-SRV-ATTR:hostname": spec.name,
        "OS-EXT-SRV-ATTR:instance_name": f"instance-{view.index:08x}",
        "OS-EXT-AZ:availability_zone": "cn-north-4a",
        "OS-SRV-USG:launched_at": _time(spec.created),
        "description": "",
        "host_status": view.host_status,
        "locked": view.locked,
        "tags": list(spec.tags),
        "enterprise_project_id": spec.enterprise_project_id,
        "sys_tags": [{"key": "_sys_enterprise_project_id", "value": spec.enterprise_project_id}],
    }
