"""The fleet's inventory as the pipeline reads it: which servers a selector names, and the
current state of a batch's servers just before its POST (pre-flight).

Every read goes through the project's **list budget** (``BMSREBOOT_LIST_RATE_LIMIT``, 500 a
minute, the API's documented limit of the list route; ``worker.budget``, shared by every
worker), one slot a call: a list page, or one server's details.

The list API (``docs/bms-api.md``) filters by one tag a call, a part of the name, and an
enterprise project; it has no filter by id. So:

- a **selector** is read with the filters the API has (its first tag, the name, the enterprise
  project), page after page until ``count`` servers are read, and the rest of it (the other
  tags) is applied here (:class:`Selector`);
- a **batch's servers** are read one by one when they are few (``SINGLE_GETS``), else as the
  project's whole list, which one process keeps for ``BMSREBOOT_PREFLIGHT_MAX_AGE`` seconds so
  that the batches released one after another share it (:func:`server_states`).

A refusal of the list route (403: the credential lacks ``bms:servers:list``) is
:class:`InventoryRefused`; any other failure (timeout, 5xx, an answer we cannot read) is
:class:`InventoryUnavailable`, and nothing is ever decided blind on it.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from worker.bms.client import MAX_SERVERS_PER_PAGE
from worker.bms.errors import BmsError, NotFoundError, PermissionDeniedError, ThrottledError
from worker.bms.models import ServerDetails
from worker.budget import LIST
from worker.pipeline.failures import throttle_cooldown
from worker.pipeline.runtime import Runtime, describe, log, utcnow

#: A batch of at most this many servers is read server by server, not as the whole list.
SINGLE_GETS = 5
#: List pages asked for at once (each at its own budget slot) while the last is read.
LOOKAHEAD = 3
#: A list slot farther away than this is not waited for in a task: the caller comes back.
MAX_WAIT = 2.0
#: What the pre-flight check refuses: host states in which a reboot cannot go well.
HOST_DOWN = frozenset({"DOWN", "UNKNOWN", "MAINTENANCE"})
#: The permission the list route needs, named when the API refuses it.
LIST_PERMISSION = "bms:servers:list"


class InventoryUnavailable(Exception):
    """The inventory could not be read now (timeout, 5xx, an unusable answer): try later."""


class InventoryRefused(Exception):
    """The API refused to list the servers (403): the credential lacks the permission."""


class InventoryBusy(Exception):
    """The project's list budget has no slot soon enough; ``wait`` seconds until one."""

    def __init__(self, wait: float) -> None:
        super().__init__(f"the list budget's next slot is {wait:.1f} s away")
        self.wait = wait


@dataclass(frozen=True)
class Selector:
    """Which servers of a project a request means: every listed tag (``key=value`` or
    ``key``), a part of the name, an enterprise project; every key optional, one at least."""

    tags: tuple[str, ...] = ()
    name: str | None = None
    enterprise_project_id: str | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Selector:
        return cls(
            tags=tuple(data.get("tags") or ()),
            name=data.get("name"),
            enterprise_project_id=data.get("enterprise_project_id"),
        )

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.tags:
            out["tags"] = list(self.tags)
        if self.name is not None:
            out["name"] = self.name
        if self.enterprise_project_id is not None:
            out["enterprise_project_id"] = self.enterprise_project_id
        return out

    def query(self) -> dict[str, str]:
        """What the list API filters by itself: one tag, the name, the enterprise project."""
        query: dict[str, str] = {}
        if self.tags:
            query["tags"] = self.tags[0]
        if self.name is not None:
            query["name"] = self.name
        if self.enterprise_project_id is not None:
            query["enterprise_project_id"] = self.enterprise_project_id
        return query

    def matches(self, server: ServerDetails) -> bool:
        """Every listed tag (a bare ``key`` matches any value of it), the name's part, the
        enterprise project: checked here too, whatever the API filtered."""
        for tag in self.tags:
            if "=" in tag:
                if tag not in server.tags:
                    return False
            elif not any(t == tag or t.startswith(f"{tag}=") for t in server.tags):
                return False
        if self.name is not None and self.name not in server.name:
            return False
        wanted = self.enterprise_project_id
        return wanted in (None, "all_granted_eps") or server.enterprise_project_id == wanted


def resolve(rt: Runtime, project_id: str, selector: Selector) -> list[str]:
    """The ids of the project's servers the selector matches, in the API's order, each once.
    Waits for each list slot (a selector is resolved once, at intake)."""
    found: dict[str, None] = {}
    for page in _pages(rt, project_id, selector, max_wait=None):
        for server in page:
            if selector.matches(server):
                found.setdefault(server.id.lower(), None)
    return list(found)


def server_states(
    rt: Runtime, project_id: str, server_ids: Iterable[str], *, after: datetime | None = None
) -> dict[str, ServerDetails | None]:
    """The current state of each server (None: the inventory does not have it), read no
    earlier than ``after`` (a verification reads what came after the job's end)."""
    wanted = [s.lower() for s in server_ids]
    if len(wanted) <= SINGLE_GETS:
        return {sid: _one(rt, project_id, sid) for sid in wanted}
    everything = _snapshot(rt, project_id, after)
    return {sid: everything.get(sid) for sid in wanted}


def is_back(server: ServerDetails) -> bool:
    """Whether a rebooted server is back: ACTIVE, no task running, not locked, its host up
    (or no host information)."""
    return (
        server.status == "ACTIVE"
        and not server.task_state
        and not server.locked
        and server.host_status in ("UP", "")
    )


def seen(server: ServerDetails) -> str:
    """What the inventory shows of a server, in a few words (a reason's last part)."""
    parts = [f"status {server.status}"]
    if server.task_state:
        parts.append(f"task_state {server.task_state}")
    if server.locked:
        parts.append("locked")
    if server.host_status and server.host_status != "UP":
        parts.append(f"host_status {server.host_status}")
    return ", ".join(parts)


def preflight_reason(server: ServerDetails) -> str | None:
    """Why a server must not be sent now (None: it may): what was seen, in the API's words."""
    if server.locked:
        return "locked"
    if server.status != "ACTIVE":
        return f"status {server.status}"
    if server.task_state:
        return f"task_state {server.task_state}"
    if server.host_status in HOST_DOWN:
        return f"host_status {server.host_status}"
    return None


# --- reading -------------------------------------------------------------------------------

#: Per project (its budget key): when the list was read (monotonic, and wall clock), and it.
_snapshots: dict[str, tuple[float, datetime, dict[str, ServerDetails]]] = {}
_snapshots_lock = threading.Lock()


def _snapshot(rt: Runtime, project_id: str, after: datetime | None) -> dict[str, ServerDetails]:
    """The project's whole list, read at most ``preflight_max_age`` seconds ago in this
    process and not before ``after`` (batches checked one after another share one read)."""
    key = rt.budget_key(project_id, LIST)
    max_age = rt.settings.preflight_max_age
    with _snapshots_lock:
        kept = _snapshots.get(key)
    if (
        kept is not None
        and time.monotonic() - kept[0] <= max_age
        and (after is None or kept[1] >= after)
    ):
        return kept[2]
    started, started_at = time.monotonic(), utcnow()
    servers: dict[str, ServerDetails] = {}
    for page in _pages(rt, project_id, None, max_wait=MAX_WAIT):
        for server in page:
            servers[server.id.lower()] = server
    with _snapshots_lock:
        _snapshots[key] = (started, started_at, servers)
    return servers


def forget_snapshots() -> None:
    """Drop every kept list (a test that changes the inventory under a running process)."""
    with _snapshots_lock:
        _snapshots.clear()


def _pages(
    rt: Runtime, project_id: str, selector: Selector | None, *, max_wait: float | None
) -> Iterator[tuple[ServerDetails, ...]]:
    """Every page of the list, in order. The first page says how many there are; the others
    are asked for ``LOOKAHEAD`` at a time, each at its own budget slot, so that reading and
    parsing one page overlaps the API's answering the next: the list budget, not our CPU,
    sets the pace. A page that comes back short ends the list (the fleet shrank meanwhile)."""
    query = selector.query() if selector is not None else {}
    client = rt.client_for(project_id)

    def page(offset: int) -> tuple[ServerDetails, ...]:
        try:
            found = client.list_servers(
                project_id,
                tags=query.get("tags"),
                name=query.get("name"),
                enterprise_project_id=query.get("enterprise_project_id"),
                limit=MAX_SERVERS_PER_PAGE,
                offset=offset,
            )
        except BmsError as exc:
            raise _failure(rt, project_id, exc) from exc
        pages_of[offset] = found.count
        return found.servers

    pages_of: dict[int, int] = {}
    _slot(rt, project_id, max_wait)
    first = page(1)
    yield first
    total = -(-pages_of[1] // MAX_SERVERS_PER_PAGE)
    if len(first) < MAX_SERVERS_PER_PAGE or total <= 1:
        return
    with ThreadPoolExecutor(LOOKAHEAD, thread_name_prefix="bmsreboot-list") as pool:
        asked: deque[Future[tuple[ServerDetails, ...]]] = deque()
        offsets = iter(range(2, total + 1))
        try:
            for offset in offsets:
                _slot(rt, project_id, max_wait)
                asked.append(pool.submit(page, offset))
                if len(asked) >= LOOKAHEAD:
                    servers = asked.popleft().result()
                    yield servers
                    if len(servers) < MAX_SERVERS_PER_PAGE:
                        return
            while asked:
                servers = asked.popleft().result()
                yield servers
                if len(servers) < MAX_SERVERS_PER_PAGE:
                    return
        finally:
            for future in asked:
                future.cancel()


def _one(rt: Runtime, project_id: str, server_id: str) -> ServerDetails | None:
    _slot(rt, project_id, MAX_WAIT)
    try:
        return rt.client_for(project_id).get_server(project_id, server_id)
    except NotFoundError:
        return None
    except BmsError as exc:
        raise _failure(rt, project_id, exc) from exc


def _slot(rt: Runtime, project_id: str, max_wait: float | None) -> None:
    slot = rt.budgets.reserve(rt.budget_key(project_id, LIST), rt.rate(LIST))
    rt.metrics.observe("bmsreboot_budget_wait_seconds", slot.wait)
    if max_wait is not None and slot.wait > max_wait:
        # The slot is taken all the same (a budget cannot give one back): the caller's next
        # try comes after it.
        raise InventoryBusy(slot.wait)
    if slot.wait > 0:
        time.sleep(slot.wait)


def _failure(rt: Runtime, project_id: str, exc: BmsError) -> Exception:
    if isinstance(exc, PermissionDeniedError):
        return InventoryRefused(
            f"the API refused to list the servers ({exc.code or 'HTTP 403'}: {exc.message}): "
            f"the credential lacks {LIST_PERMISSION}"
        )
    if exc.status is None:
        rt.metrics.api_call("list", None)  # no answer came: the response hook saw nothing
    if isinstance(exc, ThrottledError):
        cooldown = throttle_cooldown(exc, rt.settings)
        rt.budgets.cooldown(rt.budget_key(project_id, LIST), rt.rate(LIST), cooldown)
    log.warning("the inventory of project %s could not be read: %s", project_id, describe(exc))
    return InventoryUnavailable(describe(exc))
