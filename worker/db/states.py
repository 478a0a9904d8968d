"""The state machines of requests, batches and servers, written once.

Every status change in the audit database goes through ``worker.db.requests``, which checks it
against the tables below; anything else raises ``IllegalTransition``. Read a table as "from this
state, the pipeline may move to these states". A state with no entry is terminal.

Batch life, in words: a batch is ``pending`` until a worker claims it (``submitting``, committed
*before* the POST), then ``submitted`` once the API answered with a job id. A POST that was not
accepted sends it back to ``pending`` for a retry, or to ``failed`` after the last attempt. A POST
whose fate is unknown (timeout after sending) makes it ``unknown``: it is never resubmitted
automatically, because the servers may already be rebooting.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from enum import StrEnum
from typing import TypeVar


class BatchStatus(StrEnum):
    pending = "pending"
    submitting = "submitting"
    submitted = "submitted"
    succeeded = "succeeded"
    failed = "failed"
    partially_failed = "partially_failed"
    unknown = "unknown"
    rejected = "rejected"
    cancelled = "cancelled"
    timed_out = "timed_out"


class RequestStatus(StrEnum):
    accepted = "accepted"
    running = "running"
    succeeded = "succeeded"
    partially_failed = "partially_failed"
    failed = "failed"
    halted = "halted"
    cancelled = "cancelled"
    rejected = "rejected"


class ServerStatus(StrEnum):
    pending = "pending"
    succeeded = "succeeded"
    failed = "failed"
    unknown = "unknown"
    cancelled = "cancelled"


class RebootType(StrEnum):
    """How the BMS API reboots a server (its ``reboot.type``)."""

    HARD = "HARD"
    SOFT = "SOFT"


class EventEntity(StrEnum):
    """What an ``events`` row is about."""

    request = "request"
    batch = "batch"
    server = "server"


_B = BatchStatus
BATCH_TRANSITIONS: dict[BatchStatus, frozenset[BatchStatus]] = {
    _B.pending: frozenset({_B.submitting, _B.cancelled}),
    _B.submitting: frozenset({_B.submitted, _B.pending, _B.unknown, _B.rejected, _B.failed}),
    _B.submitted: frozenset({_B.succeeded, _B.failed, _B.partially_failed, _B.timed_out}),
    # Terminal. ``unknown`` stays terminal until operators get a way to decide (a later issue).
    _B.succeeded: frozenset(),
    _B.failed: frozenset(),
    _B.partially_failed: frozenset(),
    _B.unknown: frozenset(),
    _B.rejected: frozenset(),
    _B.cancelled: frozenset(),
    _B.timed_out: frozenset(),
}

_R = RequestStatus
REQUEST_TRANSITIONS: dict[RequestStatus, frozenset[RequestStatus]] = {
    _R.accepted: frozenset({_R.running, _R.rejected, _R.cancelled}),
    _R.running: frozenset({_R.succeeded, _R.partially_failed, _R.failed, _R.halted, _R.cancelled}),
    _R.halted: frozenset({_R.running, _R.cancelled}),
    _R.succeeded: frozenset(),
    _R.partially_failed: frozenset(),
    _R.failed: frozenset(),
    _R.cancelled: frozenset(),
    _R.rejected: frozenset(),
}

_S = ServerStatus
SERVER_TRANSITIONS: dict[ServerStatus, frozenset[ServerStatus]] = {
    _S.pending: frozenset({_S.succeeded, _S.failed, _S.unknown, _S.cancelled}),
    _S.succeeded: frozenset(),
    _S.failed: frozenset(),
    _S.unknown: frozenset(),
    _S.cancelled: frozenset(),
}

TERMINAL_BATCH_STATES: frozenset[BatchStatus] = frozenset(
    s for s, targets in BATCH_TRANSITIONS.items() if not targets
)
TERMINAL_REQUEST_STATES: frozenset[RequestStatus] = frozenset(
    s for s, targets in REQUEST_TRANSITIONS.items() if not targets
)
TERMINAL_SERVER_STATES: frozenset[ServerStatus] = frozenset(
    s for s, targets in SERVER_TRANSITIONS.items() if not targets
)


S = TypeVar("S", bound=StrEnum)


class IllegalTransition(Exception):
    """A state change the tables above do not allow, or one that lost a race to another worker."""

    def __init__(self, entity: str, id: object, current: str | None, target: str) -> None:
        self.entity = entity
        self.id = id
        self.current = current
        self.target = target
        super().__init__(f"{entity} {id}: cannot go from {current} to {target}")


def sources_of(table: Mapping[S, frozenset[S]], target: S) -> frozenset[S]:
    """The states from which ``target`` may be reached."""
    return frozenset(s for s, targets in table.items() if target in targets)


def derive_request_status(
    batch_statuses: Iterable[BatchStatus], server_counts: Mapping[ServerStatus, int]
) -> RequestStatus:
    """The final status of a request whose batches are all terminal.

    Decided from the servers, because that is what an operator asks about:

    - every server cancelled (or, with no servers, every batch cancelled) → ``cancelled``;
    - every server succeeded → ``succeeded``;
    - no server succeeded → ``failed``;
    - otherwise → ``partially_failed``.

    ``unknown``, ``failed``, ``cancelled`` and any leftover ``pending`` server all count against
    success: a server we cannot vouch for was not successfully rebooted.
    """
    batches = list(batch_statuses)
    total = sum(server_counts.values())
    succeeded = server_counts.get(ServerStatus.succeeded, 0)
    if total == 0:
        if batches and all(b is BatchStatus.cancelled for b in batches):
            return RequestStatus.cancelled
        return RequestStatus.failed
    if server_counts.get(ServerStatus.cancelled, 0) == total:
        return RequestStatus.cancelled
    if succeeded == total:
        return RequestStatus.succeeded
    if succeeded == 0:
        return RequestStatus.failed
    return RequestStatus.partially_failed
