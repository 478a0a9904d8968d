"""Deterministic fault injection: per-route queues of faults, consumed in order.

``POST /_simulator/inject {"route", "fault", "count", "delay"?}`` appends ``count`` copies of a
fault to the route's queue. Faults that strike *before acceptance* (``5xx``, ``429``, ``401``,
``drop_before``) are taken by the next request on the route, whatever it holds. Faults that
strike *after acceptance* (``drop``, ``slow``, ``gateway_502``, ``no_job_id``, ``no_sub_jobs``:
the job's answer without ``entities.sub_jobs``; ``404`` before acceptance: the job API says
it does not know the job) wait at the head
of the queue for the next request that is accepted: a rejected request does not consume them,
so a test's injected "accept then drop" always lands on a real, executed action.

For ``jobs`` acceptance means the job was found; for ``tokens``, ``metadata_token``,
``securitykey`` and ``assume_agency`` that a token or credential was issued; for ``servers`` (the
list) that the query was valid; for ``server`` (one server) that it was found.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

#: The BMS and IAM routes, then the metadata and STS ones (``sts.py``).
ROUTES = (
    "action",
    "jobs",
    "tokens",
    "servers",
    "server",
    "metadata_token",
    "securitykey",
    "assume_agency",
)
BEFORE_ACCEPT = frozenset({"5xx", "429", "401", "404", "drop_before"})
AFTER_ACCEPT = frozenset({"drop", "slow", "gateway_502", "no_job_id", "no_sub_jobs"})
FAULTS = BEFORE_ACCEPT | AFTER_ACCEPT
DEFAULT_SLOW_DELAY = 10.0


@dataclass(frozen=True, slots=True)
class Fault:
    name: str
    delay: float = DEFAULT_SLOW_DELAY


class FaultQueues:
    """Not thread-safe: the caller holds the state lock."""

    def __init__(self) -> None:
        self._queues: dict[str, deque[Fault]] = {route: deque() for route in ROUTES}

    def add(self, route: str, fault: str, count: int = 1, delay: float | None = None) -> None:
        """Queue ``count`` copies of ``fault`` on ``route``. Raises ValueError on bad input."""
        if route not in ROUTES:
            raise ValueError(f"route must be one of {', '.join(ROUTES)}")
        if fault not in FAULTS:
            raise ValueError(f"fault must be one of {', '.join(sorted(FAULTS))}")
        if count < 1:
            raise ValueError("count must be at least 1")
        if delay is not None and delay < 0:
            raise ValueError("delay must not be negative")
        item = Fault(fault, DEFAULT_SLOW_DELAY if delay is None else delay)
        self._queues[route].extend([item] * count)

    def take_before(self, route: str) -> Fault | None:
        return self._take(route, BEFORE_ACCEPT)

    def take_after(self, route: str) -> Fault | None:
        return self._take(route, AFTER_ACCEPT)

    def _take(self, route: str, kinds: frozenset[str]) -> Fault | None:
        queue = self._queues[route]
        if queue and queue[0].name in kinds:
            return queue.popleft()
        return None

    def pending(self) -> dict[str, list[str]]:
        return {route: [f.name for f in queue] for route, queue in self._queues.items()}

    def clear(self) -> None:
        for queue in self._queues.values():
            queue.clear()
