"""Per-project request budgets, as the API gateway enforces them.

BMS documents 50 requests per minute on ``/baremetalservers/action`` (listed for reboot, start
and stop; we share one bucket between them, the conservative reading) and 2000 per minute on
``/jobs``. Each (route, project) gets a token bucket holding ``limit`` tokens that refills at
``limit`` per minute: a fresh client may burst up to the limit, then gets ``limit`` a minute.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Bucket:
    limit: int
    tokens: float
    updated: float

    def take(self, now: float) -> bool:
        elapsed = max(0.0, now - self.updated)
        self.tokens = min(float(self.limit), self.tokens + elapsed * self.limit / 60.0)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class RateLimiter:
    """Token buckets keyed by (route, project). Not thread-safe: the caller holds the lock."""

    def __init__(self) -> None:
        self._buckets: dict[tuple[str, str], Bucket] = {}

    def allow(self, route: str, project_id: str, limit: int | None, now: float) -> bool:
        """Take one request from the bucket; False when the project is over ``limit``."""
        if limit is None:
            return True
        key = (route, project_id)
        bucket = self._buckets.get(key)
        if bucket is None or bucket.limit != limit:
            # A changed limit (configure, scale) starts a full bucket at the new size.
            bucket = self._buckets[key] = Bucket(limit, float(limit), now)
        return bucket.take(now)

    def clear(self) -> None:
        self._buckets.clear()
