"""The simulated BMS and IAM endpoints: routing and the order of checks of each call.

Order, as a gateway in front of a service would do it: route (404 APIGW.0101), injected
before-accept fault or random ``fault_5xx``, authentication (401 APIGW.0301 / 400 Common.0018),
rate limit (429 APIGW.0308), body validation (400 BMS.*), unknown servers (400 BMS.0040, nothing
accepted), then acceptance, after which an injected after-accept fault or a random
``drop_after_accept`` may replace the answer. Every call is counted in exactly one outcome.
The metadata and STS routes (``sts.py``) take the same injected faults, and are counted alike.
"""

from __future__ import annotations

import dataclasses
import re
import time

from worker.simulator import sts, wire
from worker.simulator.auth import SIGNATURE_FAIL, AuthFailure, Incoming, TenantMismatch
from worker.simulator.faults import Fault
from worker.simulator.state import SimulatorState
from worker.simulator.tokens import TokenRequestError, check_request, issue
from worker.simulator.validation import Invalid, parse_action
from worker.simulator.wire import Reply

ACTION_PATH = re.compile(r"^/v1/([^/]+)/baremetalservers/action$")
JOB_PATH = re.compile(r"^/v1/([^/]+)/jobs/([^/]+)$")
TOKENS_PATH = "/v3/auth/tokens"
#: The documented limit shown in an injected 429 on a route that has no limit configured.
DEFAULT_LIMITS = {"action": 50, "jobs": 2000, "tokens": 50, **dict.fromkeys(sts.ROUTES, 50)}


def dispatch(state: SimulatorState, request: Incoming) -> tuple[str | None, Reply]:
    """The route name (None if no API matched) and the reply, with ``latency`` added."""
    route: str | None = None
    if request.method == "POST" and (match := ACTION_PATH.match(request.path)):
        route, reply = "action", _action(state, request, match[1])
    elif request.method == "GET" and (match := JOB_PATH.match(request.path)):
        route, reply = "jobs", _job(state, request, match[1], match[2])
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
    job, fault = state.accept_action(project_id, action, now)
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
    return wire.json_reply(200, {})  # no_job_id
