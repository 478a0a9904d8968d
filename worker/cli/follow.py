"""Following a request to its end: the one loop that ``submit --wait``, ``watch`` and the demo
share (the tests' harness calls it too)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from worker.db.states import IN_FLIGHT_BATCH_STATES, TERMINAL_REQUEST_STATES

#: Batches out of service (sent, or rebooted and not yet seen back), and those not ended.
IN_FLIGHT = tuple(sorted(IN_FLIGHT_BATCH_STATES))
OPEN_BATCH_STATES = ("pending", *IN_FLIGHT)

#: Exit codes of ``submit --wait`` and ``watch``.
EXIT_ALL_SUCCEEDED = 0
EXIT_NOT_ALL_SUCCEEDED = 1
EXIT_INVALID = 2
EXIT_WAIT_TIMEOUT = 3
EXIT_NOT_RECORDED = 4


class NotRecorded(TimeoutError):
    """No worker recorded the request in time (or there is no such request)."""


def follow(
    load: Callable[[], dict[str, Any] | None],
    *,
    timeout: float | None,
    interval: float = 1.0,
    on_status: Callable[[dict[str, Any] | None], None] | None = None,
    record_timeout: float | None = None,
) -> dict[str, Any]:
    """Call ``load`` every ``interval`` seconds until the request it returns is final; return
    that status. ``on_status`` sees every status read (None: not recorded yet).

    Raises :class:`NotRecorded` when the request is still not recorded after
    ``record_timeout`` seconds, or at ``timeout``; TimeoutError when it is recorded but not
    final after ``timeout`` seconds (None: never). The last sleep is cut short so that
    ``timeout`` is kept."""
    start = time.monotonic()
    deadline = None if timeout is None else start + timeout
    record_deadline = None if record_timeout is None else start + record_timeout
    recorded = False
    while True:
        status = load()
        if on_status is not None:
            on_status(status)
        if status is not None:
            recorded = True
            if status["status"] in TERMINAL_REQUEST_STATES:
                return status
        now = time.monotonic()
        ends = [d for d in (deadline, None if recorded else record_deadline) if d is not None]
        if ends and now >= min(ends):
            if not recorded:
                raise NotRecorded("no worker recorded the request in time")
            raise TimeoutError("the request did not finish in time")
        time.sleep(min([interval, *(end - now for end in ends)]))


def exit_code(status: dict[str, Any]) -> int:
    """0 when every server succeeded; 2 for a rejected request; 1 otherwise."""
    if status["status"] == "rejected":
        return EXIT_INVALID
    return EXIT_ALL_SUCCEEDED if status["status"] == "succeeded" else EXIT_NOT_ALL_SUCCEEDED


def summary(status: dict[str, Any]) -> dict[str, int]:
    """Batches and servers by state, and the API calls made so far (POSTs, GETs)."""
    batches: dict[str, int] = {}
    for batch in status["batches"]:
        batches[batch["status"]] = batches.get(batch["status"], 0) + 1
    posts = sum(b["submit_attempts"] for b in status["batches"])
    gets = sum(b["polls"] for b in status["batches"])
    throttled = sum(
        1 for b in status["batches"] if (b.get("last_error") or {}).get("status") == 429
    )
    return {
        "batches_total": len(status["batches"]),
        "batches_done": sum(n for state, n in batches.items() if state not in OPEN_BATCH_STATES),
        "batches_in_flight": sum(batches.get(state, 0) for state in IN_FLIGHT),
        "servers_total": status["servers"]["total"],
        "servers_done": status["servers"]["total"]
        - status["servers"]["pending"]
        - status["servers"].get("verifying", 0),
        "posts": posts,
        "gets": gets,
        "throttled_batches": throttled,
    }
