"""Counters behind ``GET /_simulator/stats``: how other tests prove no server was rebooted twice.

Each API call lands in exactly one outcome of its route: ``accepted`` (answered normally),
``throttled`` (429), ``rejected`` (auth, validation, unknown job), ``faulted`` (an injected or
random 5xx, a 502, ``no_job_id`` or ``slow``) or ``dropped`` (connection closed unanswered).
Server counters (``reboots``, ``actions``) count every action that was executed, including
those whose answer was then faulted or dropped: that is the point of those faults. With an
inventory, ``servers`` holds each rebooted server's timeline (``Inventory.history``).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from worker.simulator.faults import ROUTES
from worker.simulator.validation import ACTIONS

OUTCOMES = ("accepted", "throttled", "rejected", "faulted", "dropped")


class Stats:
    """Not thread-safe: the caller holds the state lock."""

    def __init__(self) -> None:
        self.calls: dict[str, Counter[str]] = {route: Counter() for route in ROUTES}
        self.actions: dict[str, Counter[str]] = {action: Counter() for action in ACTIONS}
        self.polls: Counter[str] = Counter()
        #: Authenticated calls by what signed them: token, permanent, metadata, agency:<urn>.
        self.signed_with: Counter[str] = Counter()
        #: The temporary AKs issued, by what they act as (metadata, agency:<urn>): a test
        #: derives their SKs (``sts.derive_sk``) to look for them where no secret may be.
        self.issued: dict[str, list[str]] = {}

    def count_call(self, route: str, outcome: str) -> None:
        self.calls[route][outcome] += 1

    def count_action(self, action: str, server_ids: tuple[str, ...]) -> None:
        self.actions[action].update(server_ids)

    def to_json(
        self, jobs: dict[str, dict[str, Any]], servers: dict[str, dict[str, Any]]
    ) -> dict[str, Any]:
        return {
            "reboots": dict(self.actions["reboot"]),
            "actions": {action: dict(counter) for action, counter in self.actions.items()},
            "calls": {
                route: {outcome: counter[outcome] for outcome in OUTCOMES}
                for route, counter in self.calls.items()
            },
            "polls": dict(self.polls),
            "signed_with": dict(self.signed_with),
            "issued": {source: list(aks) for source, aks in self.issued.items()},
            "jobs": jobs,
            "servers": servers,
        }
