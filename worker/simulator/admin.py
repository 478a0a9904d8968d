"""Inspection and control endpoints under ``/_simulator`` (outside the BMS API, no auth).

- ``GET /_simulator/stats``: counters (see ``stats.py``) and the jobs with their status.
- ``POST /_simulator/reset``: forget all state and counters; the knobs stay.
- ``GET /_simulator/config``: the knobs (secrets masked); ``POST`` patches them with a JSON
  object of the same field names (sets as lists) and answers the new knobs.
- ``POST /_simulator/inject``: ``{"route", "fault", "count"?, "delay"?}`` queues faults.
- ``POST /_simulator/servers``: ``{"id"|"ids", "project_id"?, <field>: <value>...}`` sets
  ``locked``, ``status``, ``host_status``, ``task_state`` or ``ip`` of inventory servers (the
  default project unless named) and answers ``{"servers": [<as the API shows them>]}``.
Bad input answers 400 ``{"error": "<why>"}``.
"""

from __future__ import annotations

import json
import time
from typing import Any

from worker.simulator.auth import Incoming
from worker.simulator.config import DEFAULT_PROJECT_ID
from worker.simulator.inventory import render
from worker.simulator.state import SimulatorState
from worker.simulator.wire import Reply, json_reply

PREFIX = "/_simulator/"


def _bad(why: str) -> Reply:
    return json_reply(400, {"error": why})


def _object(body: bytes) -> dict[str, Any]:
    try:
        value = json.loads(body.decode("utf-8") or "{}")
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"body is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ValueError("body must be a JSON object")
    return value


def handle(state: SimulatorState, request: Incoming) -> Reply | None:
    """The reply of an inspection endpoint, or None if ``request`` is not for one."""
    name = request.path.removeprefix(PREFIX) if request.path.startswith(PREFIX) else None
    try:
        if (request.method, name) == ("GET", "stats"):
            return json_reply(200, state.stats_json(time.time()))
        if (request.method, name) == ("POST", "reset"):
            state.reset()
            return json_reply(200, {"reset": True})
        if (request.method, name) == ("GET", "config"):
            return json_reply(200, state.config_json())
        if (request.method, name) == ("POST", "config"):
            state.configure(_object(request.body))
            return json_reply(200, state.config_json())
        if (request.method, name) == ("POST", "inject"):
            return _inject(state, _object(request.body))
        if (request.method, name) == ("POST", "servers"):
            return _servers(state, _object(request.body))
    except ValueError as error:
        return _bad(str(error))
    return None


def _inject(state: SimulatorState, spec: dict[str, Any]) -> Reply:
    route, fault = spec.get("route"), spec.get("fault")
    count, delay = spec.get("count", 1), spec.get("delay")
    if not isinstance(route, str) or not isinstance(fault, str):
        raise ValueError("route and fault are required strings")
    if isinstance(count, bool) or not isinstance(count, int):
        raise ValueError("count must be an integer")
    if delay is not None and (isinstance(delay, bool) or not isinstance(delay, int | float)):
        raise ValueError("delay must be a number of seconds")
    state.inject(route, fault, count, None if delay is None else float(delay))
    with state.lock:
        pending = state.faults.pending()
    return json_reply(200, {"pending": pending})


def _servers(state: SimulatorState, spec: dict[str, Any]) -> Reply:
    fields = dict(spec)
    project_id = fields.pop("project_id", DEFAULT_PROJECT_ID)
    ids = fields.pop("ids", None)
    one = fields.pop("id", None)
    if ids is None and one is not None:
        ids = [one]
    if not isinstance(project_id, str) or not project_id:
        raise ValueError("project_id must be a string")
    if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
        raise ValueError("give the server as id (a string) or ids (a list of strings)")
    views = state.set_servers(project_id, ids, fields, time.time())
    return json_reply(200, {"servers": [render(view) for view in views]})
