"""The simulated BMS and IAM endpoints: routing and the order of checks of each call.

Order, as a gateway in front of a service would do it: route (404 APIGW.0101), injected
before-accept fault or random ``fault_5xx``, authentication (401 APIGW.0301 / 400 Common.0018),
rate limit (429 APIGW.0308), the caller's permission (403 BMS.0288, the inventory routes only),
body or query validation (400 BMS.*), unknown servers (400 BMS.0040, nothing accepted), with an
inventory the servers' state (400 BMS.0605 / BMS.0035-0039), then acceptance, after which an
injected after-accept fault or a random ``drop_after_accept`` may replace the answer. Every call
is counted in exactly one outcome.

Routes: ``action`` (POST .../baremetalservers/action), ``jobs`` (GET .../jobs/{id}),
``tokens`` (POST /v3/auth/tokens), ``servers`` (GET .../baremetalservers/detail, the list) and
``server`` (GET .../baremetalservers/{id}). The metadata and STS routes (``sts.py``) take the same
injected faults, and are counted alike.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time

from worker.simulator import sts, wire
from worker.simulator.auth import SIGNATURE_FAIL, AuthFailure, Incoming, TenantMismatch
from worker.simulator.config import PERMISSIONS
from worker.simulator.faults import Fault
from worker.simulator.inventory import render
from worker.simulator.state import Refused, SimulatorState
from worker.simulator.tokens import TokenRequestError, check_request, issue
from worker.simulator.validation import Invalid, parse_action, parse_list_query
from worker.simulator.wire import Reply

ACTION_PATH = re.compile(r"^/v1/([^/]+)/baremetalservers/action$")
JOB_PATH = re.compile(r"^/v1/([^/]+)/jobs/([^/]+)$")
LIST_PATH = re.compile(r"^/v1/([^/]+)/baremetalservers/detail$")
SERVER_PATH = re.compile(r"^/v1/([^/]+)/baremetalservers/((?!action$|detail$)[^/]+)$")
TOKENS_PATH = "/v3/auth/tokens"
#: The documented limit shown in an injected 429 on a route that has no limit configured.
DEFAULT_LIMITS = {
    "action": 50,
    "jobs": 2000,
    "tokens": 50,
    "servers": 500,
    "server": 1000,
    **dict.fromkeys(sts.ROUTES, 50),
}


def dispatch(state: SimulatorState, request: Incoming) -> tuple[str | None, Reply]:
    """The route name (None if no API matched) and the reply, with ``latency`` added."""
    route: str | None = None
    if request.method == "POST" and (match := ACTION_PATH.match(request.path)):
        route, reply = "action", _action(state, request, match[1])
    elif request.method == "GET" and (match := JOB_PATH.match(request.path)):
        route, reply = "jobs", _job(state, request, match[1], match[2])
    elif request.method == "GET" and (match := LIST_PATH.match(request.path)):
        route, reply = "servers", _servers(state, request, match[1])
    elif request.method == "GET" and (match := SERVER_PATH.match(request.path)):
        route, reply = "server", _server(state, request, match[1], match[2])
    elif request.method == "POST" and request.path == TOKENS_PATH:
        route, reply = "tokens", _tokens(state, request)
    elif (credential_route := sts.route_of(request)) is not None:
        route, reply = credential_route, _credentials(state, credential_route, request)
    else:
        reply = wire.no_route(request.request_id)
    latency = state.config.latency
    if latency and route is not None:
        reply = dataclasses.replace(reply, delay=reply.delay + latency)
    return route, reply


def _action(state: SimulatorState, request: Incoming, project_id: str) -> Reply:
    now = time.time()
    refused = _before(state, "action", request) or _gate(state, "action", request, project_id, now)
    if refused:
        return refused
    try:
        action = parse_action(request.body)
    except Invalid as invalid:
        state.count("action", "rejected")
        return wire.bms_error(400, invalid.code, invalid.message)
    if not state.config.unknown_servers.isdisjoint(action.server_ids):
        state.count("action", "rejected")
        return wire.bms_error(400, wire.BMS_NO_SERVER)
    try:
        job, fault = state.accept_action(project_id, action, now)
    except Refused as refusal:
        state.count("action", "rejected")
        return wire.bms_error(400, refusal.code, wire.refusal_message(refusal.code, action.action))
    return _after(state, "action", fault, wire.json_reply(200, {"job_id": job.job_id}))


def _job(state: SimulatorState, request: Incoming, project_id: str, job_id: str) -> Reply:
    now = time.time()
    refused = _before(state, "jobs", request) or _gate(state, "jobs", request, project_id, now)
    if refused:
        return refused
    job, fault = state.find_job(project_id, job_id, now)
    if job is None:
        state.count("jobs", "rejected")
        return wire.bms_error(404, wire.BMS_NO_JOB)
    return _after(state, "jobs", fault, Reply(200, job.body(now)))


def _servers(state: SimulatorState, request: Incoming, project_id: str) -> Reply:
    now = time.time()
    refused = (
        _before(state, "servers", request)
        or _gate(state, "servers", request, project_id, now)
        or _permission(state, "servers")
    )
    if refused:
        return refused
    try:
        filters = parse_list_query(request.target)
    except Invalid as invalid:
        state.count("servers", "rejected")
        return wire.bms_error(400, invalid.code, invalid.message)
    count, views, fault = state.list_servers(project_id, filters, now)
    body = {"servers": [render(view) for view in views], "count": count}
    return _after(state, "servers", fault, wire.json_reply(200, body))


def _server(state: SimulatorState, request: Incoming, project_id: str, server_id: str) -> Reply:
    now = time.time()
    refused = (
        _before(state, "server", request)
        or _gate(state, "server", request, project_id, now)
        or _permission(state, "server")
    )
    if refused:
        return refused
    view, fault = state.find_server(project_id, server_id, now)
    if view is None:
        state.count("server", "rejected")
        return wire.bms_error(404, wire.BMS_NO_SERVER)
    return _after(state, "server", fault, wire.json_reply(200, {"server": render(view)}))


def _permission(state: SimulatorState, route: str) -> Reply | None:
    """403 when the caller lacks the route's IAM permission (``denied_permissions``)."""
    permission = PERMISSIONS[route]
    if permission not in state.config.denied_permissions:
        return None
    state.count(route, "rejected")
    return wire.forbidden(permission)


def _tokens(state: SimulatorState, request: Incoming) -> Reply:
    refused = _before(state, "tokens", request)
    if refused:
        return refused
    config = state.config
    try:
        grant = check_request(request.body, config)
    except TokenRequestError as error:
        state.count("tokens", "rejected")
        return error.reply()
    value, token, reply = issue(grant, time.time(), config.token_ttl)
    return _after(state, "tokens", state.add_token(value, token), reply)


def _credentials(state: SimulatorState, route: str, request: Incoming) -> Reply:
    """The metadata service and STS (``sts.py``): faults around the route's own answer."""
    refused = _before(state, route, request)
    if refused:
        return refused
    reply, accepted = sts.handle(state, route, request, time.time())
    if not accepted:
        state.count(route, "rejected")
        return reply
    with state.lock:
        fault = state.faults.take_after(route)
    return _after(state, route, fault, reply)


def _before(state: SimulatorState, route: str, request: Incoming) -> Reply | None:
    """An injected before-accept fault, or a random 5xx; None to carry on."""
    fault = state.take_fault_before(route)
    name = fault.name if fault else None
    if (
        name is None
        and route not in ("tokens", *sts.ROUTES)
        and state.chance(state.config.fault_5xx)
    ):
        name = "5xx"
    if name is None:
        return None
    if name == "429":
        state.count(route, "throttled")
        return _throttled(state, route, request)
    if name == "401":
        state.count(route, "rejected")
        token = "x-auth-token" in request.headers
        detail = "The token must be updated" if token else SIGNATURE_FAIL
        return wire.auth_error(detail, request.request_id)
    if name == "drop_before":
        state.count(route, "dropped")
        return wire.DROP
    if name == "404":
        state.count(route, "rejected")
        return wire.bms_error(404, wire.BMS_NO_JOB)
    state.count(route, "faulted")
    return wire.internal_error()


def _gate(
    state: SimulatorState, route: str, request: Incoming, project_id: str, now: float
) -> Reply | None:
    """Authentication, then the rate limit; None when the call may proceed."""
    try:
        state.authenticate(request, project_id, now)
    except AuthFailure as failure:
        state.count(route, "rejected")
        return wire.auth_error(failure.detail, request.request_id)
    except TenantMismatch:
        state.count(route, "rejected")
        return wire.bms_error(400, wire.COMMON_TENANT)
    if not state.allow(route, project_id, time.monotonic()):
        state.count(route, "throttled")
        return _throttled(state, route, request)
    return None


def _throttled(state: SimulatorState, route: str, request: Incoming) -> Reply:
    config = state.config
    limit = config.rate_limit(route) or DEFAULT_LIMITS[route]
    return wire.throttled(limit, request.request_id, config.retry_after)


def _after(state: SimulatorState, route: str, fault: Fault | None, reply: Reply) -> Reply:
    """The answer to an accepted call, unless a fault replaces it."""
    name = fault.name if fault else None
    if name is None and route == "action" and state.chance(state.config.drop_after_accept):
        name = "drop"
    if name is None:
        state.count(route, "accepted")
        return reply
    if name == "drop":
        state.count(route, "dropped")
        return wire.DROP
    state.count(route, "faulted")
    if name == "slow" and fault is not None:
        return dataclasses.replace(reply, delay=fault.delay)
    if name == "gateway_502":
        return wire.gateway_502()
    if name == "no_sub_jobs":
        body = json.loads(reply.body)
        body.get("entities", {}).pop("sub_jobs", None)
        return wire.json_reply(reply.status, body)
    return wire.json_reply(200, {})  # no_job_id
