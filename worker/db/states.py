"""The state machines of requests, batches and servers, written once.

Every status change in the audit database goes through ``worker.db.transitions``, which checks it
against the tables below; anything else raises ``IllegalTransition``. Read a table as "from this
state, the pipeline may move to these states". A state with no entry is terminal.

Batch life, in words: a batch is ``pending`` until a worker claims it (``submitting``, committed
*before* the POST), then ``submitted`` once the API answered with a job id. A POST that was not
accepted sends it back to ``pending`` for a retry, or to ``failed`` after the last attempt. A POST
whose fate is unknown (timeout after sending) makes it ``unknown``: it is never resubmitted
automatically, because the servers may already be rebooting: only an operator's decision
(``bmsreboot resolve-unknown``) moves it on, to what the operator found or back to ``pending``.

A request that a rollout control stopped (failure brake, failed canary, cut-off, cancel) ends
``halted`` or ``cancelled`` once its batches in flight have ended.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from enum import StrEnum


class BatchStatus(StrEnum):
    PENDING = "pending"
    SUBMITTING = "submitting"
    SUBMITTED = "submitted"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    PARTIALLY_FAILED = "partially_failed"
    UNKNOWN = "unknown"
    REJECTED = "rejected"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"
    #: Nothing left to send: every server of the batch was skipped (see ServerStatus).
    SKIPPED = "skipped"
    #: The job ended; its servers are watched until the inventory shows them back.
    VERIFYING = "verifying"


class RequestStatus(StrEnum):
    ACCEPTED = "accepted"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    PARTIALLY_FAILED = "partially_failed"
    FAILED = "failed"
    HALTED = "halted"
    CANCELLED = "cancelled"
    REJECTED = "rejected"


class ServerStatus(StrEnum):
    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    UNKNOWN = "unknown"
    CANCELLED = "cancelled"
    #: Not sent, and why (``fail_reason``): another active request held it, or the pre-flight
    #: check saw it locked, busy or down.
    SKIPPED = "skipped"
    #: Its reboot's sub-job succeeded; not yet seen back (ACTIVE, idle, its host up).
    VERIFYING = "verifying"
    #: Rebooted, and not back within the health timeout, or seen ERROR/SHUTOFF after it.
    UNHEALTHY = "unhealthy"


class RebootType(StrEnum):
    """How the BMS API reboots a server (its ``reboot.type``)."""

    HARD = "HARD"
    SOFT = "SOFT"


class EventEntity(StrEnum):
    """What an ``events`` row is about."""

    REQUEST = "request"
    BATCH = "batch"
    SERVER = "server"


class DeliveryStatus(StrEnum):
    """Where one webhook or chat delivery is (``webhook_deliveries``, ``worker.webhooks``).

    ``pending`` until delivered; a worker holds it only while its ``claimed_until`` lease runs
    (compare-and-set, like a batch's claim). ``failed`` after ``BMSREBOOT_WEBHOOK_RETRY_HOURS``
    of attempts; ``stopped`` when the receiver answered 410 Gone for the request (or the chat
    target is no longer configured)."""

    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"
    STOPPED = "stopped"


class DestinationKind(StrEnum):
    """Where a delivery goes: a signed webhook POST, or a chat message through Apprise."""

    WEBHOOK = "webhook"
    APPRISE = "apprise"


_B = BatchStatus
BATCH_TRANSITIONS: dict[BatchStatus, frozenset[BatchStatus]] = {
    # failed or skipped without a POST: nothing left to send (pre-flight, another request).
    _B.PENDING: frozenset({_B.SUBMITTING, _B.CANCELLED, _B.SKIPPED, _B.FAILED}),
    _B.SUBMITTING: frozenset({_B.SUBMITTED, _B.PENDING, _B.UNKNOWN, _B.REJECTED, _B.FAILED}),
    _B.SUBMITTED: frozenset(
        {_B.SUCCEEDED, _B.FAILED, _B.PARTIALLY_FAILED, _B.TIMED_OUT, _B.UNKNOWN, _B.VERIFYING}
    ),
    _B.VERIFYING: frozenset({_B.SUCCEEDED, _B.FAILED, _B.PARTIALLY_FAILED, _B.UNKNOWN}),
    _B.SUCCEEDED: frozenset(),
    _B.FAILED: frozenset(),
    _B.PARTIALLY_FAILED: frozenset(),
    # An operator's decision only (``bmsreboot resolve-unknown``): what happened, or resubmit.
    # The pipeline itself never leaves these states: a resubmit could be a second reboot.
    _B.UNKNOWN: frozenset({_B.SUCCEEDED, _B.FAILED, _B.PENDING}),
    _B.TIMED_OUT: frozenset({_B.SUCCEEDED, _B.FAILED, _B.PENDING}),
    _B.REJECTED: frozenset(),
    _B.CANCELLED: frozenset(),
    _B.SKIPPED: frozenset(),
}

_R = RequestStatus
#: Final states that an operator's decision on an unknown batch may change: recomputed to
#: another final state, or back to ``running`` when a batch is resubmitted.
_REOPENABLE = frozenset({_R.RUNNING, _R.SUCCEEDED, _R.PARTIALLY_FAILED, _R.FAILED, _R.HALTED})
REQUEST_TRANSITIONS: dict[RequestStatus, frozenset[RequestStatus]] = {
    _R.ACCEPTED: frozenset({_R.RUNNING, _R.REJECTED, _R.CANCELLED, _R.HALTED}),
    _R.RUNNING: frozenset({_R.SUCCEEDED, _R.PARTIALLY_FAILED, _R.FAILED, _R.HALTED, _R.CANCELLED}),
    _R.HALTED: _REOPENABLE - {_R.HALTED} | {_R.CANCELLED},
    _R.PARTIALLY_FAILED: _REOPENABLE - {_R.PARTIALLY_FAILED},
    _R.FAILED: _REOPENABLE - {_R.FAILED},
    _R.CANCELLED: _REOPENABLE,
    _R.SUCCEEDED: frozenset(),
    _R.REJECTED: frozenset(),
}

_S = ServerStatus
SERVER_TRANSITIONS: dict[ServerStatus, frozenset[ServerStatus]] = {
    _S.PENDING: frozenset(
        {_S.SUCCEEDED, _S.FAILED, _S.UNKNOWN, _S.CANCELLED, _S.SKIPPED, _S.VERIFYING}
    ),
    # Back (succeeded), not back (unhealthy), or never seen (the list refused: unknown).
    _S.VERIFYING: frozenset({_S.SUCCEEDED, _S.UNHEALTHY, _S.UNKNOWN}),
    _S.UNHEALTHY: frozenset(),
    _S.SUCCEEDED: frozenset(),
    _S.FAILED: frozenset(),
    # An operator's decision only, as for unknown batches.
    _S.UNKNOWN: frozenset({_S.SUCCEEDED, _S.FAILED, _S.PENDING}),
    _S.CANCELLED: frozenset(),
    _S.SKIPPED: frozenset(),
}

#: Where the pipeline's work on an entity ends. Named, not derived from the tables: an
#: operator's decision may still move an ``unknown`` batch (and its request) on.
TERMINAL_BATCH_STATES: frozenset[BatchStatus] = frozenset(
    {
        _B.SUCCEEDED,
        _B.FAILED,
        _B.PARTIALLY_FAILED,
        _B.UNKNOWN,
        _B.REJECTED,
        _B.CANCELLED,
        _B.TIMED_OUT,
        _B.SKIPPED,
    }
)
TERMINAL_REQUEST_STATES: frozenset[RequestStatus] = frozenset(
    {_R.SUCCEEDED, _R.PARTIALLY_FAILED, _R.FAILED, _R.HALTED, _R.CANCELLED, _R.REJECTED}
)
#: Requests still at work: batches of theirs may be released, sent and followed.
ACTIVE_REQUEST_STATES: frozenset[RequestStatus] = frozenset({_R.ACCEPTED, _R.RUNNING})
#: Batches whose servers are out of service: sent or being sent, or rebooted and not yet seen
#: back. ``max_in_flight`` counts them (``worker.db.plan``), and a server in one is held from
#: every other request (``worker.db.overlap``).
IN_FLIGHT_BATCH_STATES: frozenset[BatchStatus] = frozenset(
    {_B.SUBMITTING, _B.SUBMITTED, _B.VERIFYING}
)
#: Batches an operator decides on: the reboot may or may not have happened.
UNDECIDED_BATCH_STATES: frozenset[BatchStatus] = frozenset({_B.UNKNOWN, _B.TIMED_OUT})


def past_cut_off(not_after: dt.datetime | None, now: dt.datetime) -> bool:
    """Whether a request's ``not_after`` has come: no batch is released, or POSTed, from then
    on (the one cut-off test; in SQL: ``worker.db.plan.before_cut_off``)."""
    return not_after is not None and now >= not_after


class IllegalTransition(Exception):
    """A state change the tables above do not allow, or one that lost a race to another worker."""

    def __init__(self, entity: str, id: object, current: str | None, target: str) -> None:
        self.entity = entity
        self.id = id
        self.current = current
        self.target = target
        super().__init__(f"{entity} {id}: cannot go from {current} to {target}")


def derive_batch_status(server_counts: Mapping[ServerStatus, int]) -> BatchStatus:
    """The final status of a batch from its servers once none is pending or verifying:
    ``succeeded`` if every one succeeded; ``unknown`` if every one is unknown (``failed``
    would invite a resubmission of servers that may have been rebooted); ``failed`` if none
    succeeded; else ``partially_failed``."""
    total = sum(server_counts.values())
    succeeded = server_counts.get(ServerStatus.SUCCEEDED, 0)
    if total and succeeded == total:
        return BatchStatus.SUCCEEDED
    if total and server_counts.get(ServerStatus.UNKNOWN, 0) == total:
        return BatchStatus.UNKNOWN
    if succeeded == 0:
        return BatchStatus.FAILED
    return BatchStatus.PARTIALLY_FAILED


def derive_request_status(
    batch_statuses: Iterable[BatchStatus], server_counts: Mapping[ServerStatus, int]
) -> RequestStatus:
    """The final status of a request whose batches are all terminal.

    Decided from the servers, because that is what an operator asks about:

    - every server cancelled (or, with no servers, every batch cancelled) → ``cancelled``;
    - every server succeeded → ``succeeded``;
    - no server succeeded → ``failed``;
    - otherwise → ``partially_failed``.

    ``unknown``, ``failed``, ``cancelled``, ``skipped``, ``unhealthy`` and any leftover
    ``pending`` server all count against success: a server we cannot vouch for was not
    successfully rebooted.
    """
    batches = list(batch_statuses)
    total = sum(server_counts.values())
    succeeded = server_counts.get(ServerStatus.SUCCEEDED, 0)
    if total == 0:
        if batches and all(b is BatchStatus.CANCELLED for b in batches):
            return RequestStatus.CANCELLED
        return RequestStatus.FAILED
    if server_counts.get(ServerStatus.CANCELLED, 0) == total:
        return RequestStatus.CANCELLED
    if succeeded == total:
        return RequestStatus.SUCCEEDED
    if succeeded == 0:
        return RequestStatus.FAILED
    return RequestStatus.PARTIALLY_FAILED
