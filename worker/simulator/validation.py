"""Validation of a power-action body, ``POST /v1/{project_id}/baremetalservers/action``, and of
a ListBareMetalServers query, ``GET /v1/{project_id}/baremetalservers/detail?...``.

Rules (``docs/bms-api.md``, section 2): the body is a JSON object with exactly one of
``reboot`` / ``os-start`` / ``os-stop``; ``servers`` is a list of 1..1000 ``{"id": <UUID>}``
without duplicates; ``reboot.type`` is required and ``os-stop.type`` optional, both HARD or SOFT
(SOFT is accepted and behaves like HARD, as the docs say SOFT "does not take effect").
Malformed JSON is BMS.0001, more than 1000 servers BMS.0205, anything else BMS.0018.

A list query (:func:`parse_list_query`): ``limit`` 1..1000 (default 25, or 1000 when only
``offset`` is given, as the SDK's model describes the API), ``offset`` a page number from 1;
``name``, ``status``, ``tags`` (one tag), ``enterprise_project_id`` (``all_granted_eps``: every
one) and ``flavor`` filter; an empty value is no filter; ``detail`` and ``reservation_id`` are
accepted and ignored, and so is any other parameter. A bad number or a parameter given twice is
BMS.0018 (our choice: the documentation says nothing of either).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from worker.bms.client import MAX_SERVERS_PER_CALL, POWER_TYPES
from worker.simulator.inventory import Filters
from worker.simulator.wire import BMS_INVALID, BMS_OUT_OF_RANGE, BMS_PARSE, MESSAGES

ACTIONS = ("reboot", "os-start", "os-stop")
MAX_SERVERS = MAX_SERVERS_PER_CALL
TYPES = frozenset(POWER_TYPES)
#: Whether ``type`` must be present, per action; os-start takes no type and ignores one.
TYPE_REQUIRED = {"reboot": True, "os-stop": False}
#: The API's page size limits.
MAX_LIMIT = 1000
DEFAULT_LIMIT = 25
ALL_GRANTED_EPS = "all_granted_eps"
_FILTERS = ("name", "status", "tags", "enterprise_project_id", "flavor")
_UUID = re.compile(r"^[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$")


class Invalid(Exception):
    """A rejected body: the BMS code and message of the 400 answer."""

    def __init__(self, code: str, message: str | None = None) -> None:
        self.code = code
        self.message = message if message is not None else MESSAGES[code]
        super().__init__(f"{self.code}: {self.message}")


@dataclass(frozen=True)
class PowerAction:
    action: str
    type: str | None
    server_ids: tuple[str, ...]


def parse_action(body: bytes) -> PowerAction:
    """The action a body asks for; raises :class:`Invalid`."""
    try:
        document = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise Invalid(BMS_PARSE, MESSAGES[BMS_PARSE].format(_reason(exc))) from None
    if not isinstance(document, dict):
        raise Invalid(BMS_PARSE, MESSAGES[BMS_PARSE].format("body is not a JSON object"))
    keys = list(document)
    if len(keys) != 1 or keys[0] not in ACTIONS:
        raise Invalid(BMS_INVALID)
    action = keys[0]
    inner = document[action]
    if not isinstance(inner, dict):
        raise Invalid(BMS_INVALID)
    return PowerAction(action, _type(action, inner), _servers(inner.get("servers")))


def _reason(exc: Exception) -> str:
    return str(exc).split(":")[0] if isinstance(exc, json.JSONDecodeError) else "not UTF-8"


def _type(action: str, inner: dict[str, Any]) -> str | None:
    if action not in TYPE_REQUIRED:
        return None
    value = inner.get("type")
    if value is None and not TYPE_REQUIRED[action]:
        return None
    if value not in TYPES:
        raise Invalid(BMS_INVALID)
    return str(value)


def _servers(servers: Any) -> tuple[str, ...]:
    if not isinstance(servers, list) or not servers:
        raise Invalid(BMS_INVALID)
    # The count is checked before the entries: an oversized request is out of range whatever
    # it holds.
    if len(servers) > MAX_SERVERS:
        raise Invalid(BMS_OUT_OF_RANGE)
    ids: list[str] = []
    for entry in servers:
        server_id = entry.get("id") if isinstance(entry, dict) else None
        if not isinstance(server_id, str) or not _UUID.match(server_id):
            raise Invalid(BMS_INVALID)
        ids.append(server_id)
    if len(set(ids)) != len(ids):
        raise Invalid(BMS_INVALID)
    return tuple(ids)


def parse_list_query(target: str) -> Filters:
    """The filters and page of a list request's target; raises :class:`Invalid`."""
    pairs = parse_qsl(target.partition("?")[2], keep_blank_values=True)
    query: dict[str, str] = {}
    for key, value in pairs:
        if key in query:
            raise Invalid(BMS_INVALID, f"{MESSAGES[BMS_INVALID]} ({key} is given twice)")
        query[key] = value
    offset = _number(query, "offset", 1, None)
    default = MAX_LIMIT if "offset" in query and "limit" not in query else DEFAULT_LIMIT
    limit = _number(query, "limit", default, MAX_LIMIT)
    found = {name: query.get(name) or None for name in _FILTERS}
    if found["enterprise_project_id"] == ALL_GRANTED_EPS:
        found["enterprise_project_id"] = None
    return Filters(
        name=found["name"],
        status=found["status"],
        tag=found["tags"],
        enterprise_project_id=found["enterprise_project_id"],
        flavor=found["flavor"],
        limit=limit,
        offset=offset,
    )


def _number(query: dict[str, str], name: str, default: int, most: int | None) -> int:
    raw = query.get(name)
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= (most or int(raw)):
        bound = f"1 to {most}" if most else "a page number from 1"
        raise Invalid(BMS_INVALID, f"{MESSAGES[BMS_INVALID]} ({name} must be {bound})")
    return int(raw)
