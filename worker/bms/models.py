"""Typed views of the BMS job API (``GET /v1/{project_id}/jobs/{job_id}``) and of the servers
(``GET /v1/{project_id}/baremetalservers/detail`` and ``.../baremetalservers/{server_id}``).

A batch power action creates one job with one sub-job per server; the outcome of a server is its
sub-job's ``status`` (decide per server, never from the parent's ``error_code``). Statuses stay
plain strings so a status the API adds later (``PENDING_PAYMENT``) passes through unharmed; so do
a server's ``status``, ``task_state`` and ``host_status``.

Parsing is defensive, as for jobs: a field of the wrong type reads as absent, never as a value
it does not hold. Only what nothing can be decided without (a job's id and status, a server's
id, a page's list and count) raises ValueError.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

#: A job or sub-job in one of these states will not change any more.
TERMINAL_JOB_STATUSES: frozenset[str] = frozenset({"SUCCESS", "FAIL"})


def parse_time(value: Any) -> datetime | None:
    """``2019-04-25T20:04:47.591Z`` as an aware datetime; None for null, empty or garbage."""
    if not isinstance(value, str) or not value:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _str(value: Any) -> str | None:
    return None if value is None else str(value)


def _dict(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


@dataclass(frozen=True, slots=True)
class SubJob:
    """One server's part of a batch job."""

    job_id: str | None
    status: str
    server_id: str | None
    job_type: str | None
    error_code: str | None
    fail_reason: str | None
    errorcode_message: str | None
    begin_time: datetime | None
    end_time: datetime | None

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_JOB_STATUSES

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> SubJob:
        entities = _dict(data.get("entities"))
        return cls(
            job_id=_str(data.get("job_id")),
            status=str(data.get("status") or ""),
            server_id=_str(entities.get("server_id")),
            job_type=_str(data.get("job_type")),
            error_code=_str(data.get("error_code")),
            fail_reason=_str(data.get("fail_reason")),
            errorcode_message=_str(entities.get("errorcode_message")),
            begin_time=parse_time(data.get("begin_time")),
            end_time=parse_time(data.get("end_time")),
        )


@dataclass(frozen=True, slots=True)
class Job:
    """A batch job and its sub-jobs, as ShowJobInfos returns it."""

    job_id: str
    status: str
    job_type: str | None
    error_code: str | None
    fail_reason: str | None
    begin_time: datetime | None
    end_time: datetime | None
    sub_jobs_total: int
    sub_jobs: tuple[SubJob, ...]

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_JOB_STATUSES

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> Job:
        """Build from the API's JSON; raises ValueError when it is not a job at all."""
        job_id, status = data.get("job_id"), data.get("status")
        if not isinstance(job_id, str) or not job_id or not isinstance(status, str):
            raise ValueError("a job needs a string job_id and status")
        entities = _dict(data.get("entities"))
        raw_subs = entities.get("sub_jobs")
        sub_jobs = tuple(
            SubJob.from_api(s)
            for s in (raw_subs if isinstance(raw_subs, list) else [])
            if isinstance(s, Mapping)
        )
        total = entities.get("sub_jobs_total")
        return cls(
            job_id=job_id,
            status=status,
            job_type=_str(data.get("job_type")),
            error_code=_str(data.get("error_code")),
            fail_reason=_str(data.get("fail_reason")),
            begin_time=parse_time(data.get("begin_time")),
            end_time=parse_time(data.get("end_time")),
            sub_jobs_total=total if isinstance(total, int) else len(sub_jobs),
            sub_jobs=sub_jobs,
        )


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None


def _ipv4(value: str) -> bool:
    try:
        return ipaddress.ip_address(value).version == 4
    except ValueError:
        return False


def _locked(value: Any) -> bool:
    # Only an explicit true is locked; the string form is accepted as some gateways send it.
    return value is True or (isinstance(value, str) and value.lower() == "true")


@dataclass(frozen=True, slots=True)
class Address:
    """One address of a server on one network (``addresses[network][i]``)."""

    addr: str
    version: int | None
    #: ``OS-EXT-IPS:type``: ``fixed`` (private) or ``floating``.
    type: str | None
    mac_addr: str | None

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> Address | None:
        addr = data.get("addr")
        if not isinstance(addr, str) or not addr:
            return None
        return cls(
            addr=addr,
            version=_int(data.get("version")),
            type=_str(data.get("OS-EXT-IPS:type")),
            mac_addr=_str(data.get("OS-EXT-IPS-MAC:mac_addr")),
        )


@dataclass(frozen=True, slots=True)
class ServerDetails:
    """One bare-metal server, as the list and the details routes return it (the official SDK's
    ``ServerDetails``; the JSON names are in each field's comment)."""

    id: str
    name: str
    #: ``ACTIVE``, ``BUILD``, ``ERROR``, ``HARD_REBOOT``, ``REBOOT``, ``SHUTOFF``, ...
    status: str
    #: ``OS-EXT-STS:task_state``: ``reboot_started_hard``, ``rebooting``, ...; None when idle.
    task_state: str | None
    #: ``OS-EXT-STS:vm_state``: ``active``, ``stopped``, ``error``, ...
    vm_state: str | None
    #: ``OS-EXT-STS:power_state``: 0 no state, 1 running, 4 shut down.
    power_state: int | None
    locked: bool
    #: ``UP``, ``DOWN``, ``UNKNOWN``, ``MAINTENANCE``, or "" (no host information).
    host_status: str
    #: ``key=value`` or ``key`` strings.
    tags: tuple[str, ...]
    enterprise_project_id: str | None
    #: ``flavor.id``.
    flavor_id: str | None
    updated: datetime | None
    #: Network name -> its addresses, in the API's order.
    addresses: Mapping[str, tuple[Address, ...]]
    metadata: Mapping[str, str]

    def first_fixed_ipv4(self) -> str | None:
        """The first ``fixed`` IPv4 address over the networks in the API's order, if any."""
        for entries in self.addresses.values():
            for entry in entries:
                if entry.type == "fixed" and entry.version in (4, None) and _ipv4(entry.addr):
                    return entry.addr
        return None

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> ServerDetails:
        """Build from the API's JSON; raises ValueError when it has no id."""
        server_id = data.get("id")
        if not isinstance(server_id, str) or not server_id:
            raise ValueError("a server needs a string id")
        raw_tags = data.get("tags")
        tags = (
            tuple(t for t in raw_tags if isinstance(t, str) and t)
            if isinstance(raw_tags, list)
            else ()
        )
        addresses: dict[str, tuple[Address, ...]] = {}
        for network, entries in _dict(data.get("addresses")).items():
            if isinstance(entries, list):
                parsed = (Address.from_api(e) for e in entries if isinstance(e, Mapping))
                addresses[str(network)] = tuple(a for a in parsed if a is not None)
        metadata = {str(k): str(v) for k, v in _dict(data.get("metadata")).items() if v is not None}
        host_status = data.get("host_status")
        return cls(
            id=server_id,
            name=str(data.get("name") or ""),
            status=str(data.get("status") or ""),
            task_state=_str(data.get("OS-EXT-STS:task_state")) or None,
            vm_state=_str(data.get("OS-EXT-STS:vm_state")),
            power_state=_int(data.get("OS-EXT-STS:power_state")),
            locked=_locked(data.get("locked")),
            host_status=host_status if isinstance(host_status, str) else "",
            tags=tags,
            enterprise_project_id=_str(data.get("enterprise_project_id")),
            flavor_id=_str(_dict(data.get("flavor")).get("id")),
            updated=parse_time(data.get("updated")),
            addresses=addresses,
            metadata=metadata,
        )


@dataclass(frozen=True, slots=True)
class ServerPage:
    """One page of ListBareMetalServers: its servers and ``count``, every matching server."""

    servers: tuple[ServerDetails, ...]
    count: int

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> ServerPage:
        """Build from the API's JSON; raises ValueError when ``servers`` is not a list of servers
        or ``count`` not a number: a page read wrong could make a present server look absent."""
        raw, count = data.get("servers"), data.get("count")
        if not isinstance(raw, list) or isinstance(count, bool) or not isinstance(count, int):
            raise ValueError("a server page needs a servers list and an integer count")
        if not all(isinstance(s, Mapping) for s in raw):
            raise ValueError("every entry of servers must be an object")
        return cls(servers=tuple(ServerDetails.from_api(s) for s in raw), count=count)
