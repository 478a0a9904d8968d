"""Beat's scheduler on Redis: celery-redbeat, made to survive a flushed or restarted Redis.

celery-redbeat keeps beat's schedule in Redis and holds a lock there so that one of several
beat processes is the leader. Two things it does not do on its own, and which this project
relies on (the reconciler must run after the broker lost its data):

- **A lost lock stops beat for good**: after ``FLUSHDB`` (or a Redis restart without AOF) the
  leader's next lock extension raises ``LockNotOwnedError``, which ends the beat process (and a
  ``worker -B``'s embedded beat is not restarted). Here the scheduler tries to take the lock
  again instead: if it gets it, it goes on as leader; if another beat took it, it waits as a
  follower, sending nothing, and tries again at every tick.
- **A flushed schedule is not reinstalled**: the static entries (``beat_schedule``) are written
  to Redis at start only. Here, when the set of static entries is gone, they are installed
  again before the tick.
"""

from __future__ import annotations

import logging
from typing import Any

from redbeat.schedulers import RedBeatScheduler, get_redis
from redis.exceptions import LockError

log = logging.getLogger("bmsreboot.beat")

# redbeat ships no type information.
_Base: Any = RedBeatScheduler


class Scheduler(_Base):  # type: ignore[misc]
    """``redbeat.RedBeatScheduler`` that takes its lock again, and reinstalls its static
    entries, after Redis lost them."""

    def tick(self, *args: Any, **kwargs: Any) -> Any:
        if self.lock_key and self.lock is not None and not self._still_leader():
            return self.max_interval
        client = get_redis(self.app)
        if self.app.redbeat_conf.schedule and not client.exists(self.app.redbeat_conf.statics_key):
            log.warning("beat: the schedule is gone from Redis (flushed?); installing it again")
            self.setup_schedule()
        return super().tick(*args, **kwargs)

    def _still_leader(self) -> bool:
        """True when this beat holds the lock, taking it again if nobody does."""
        try:
            if self.lock.owned():
                return True
        except LockError:
            pass
        try:
            if self.lock.acquire(blocking=False):
                log.warning("beat: the lock was lost (Redis flushed or restarted); taken again")
                return True
        except LockError:
            pass
        log.info("beat: another beat holds the lock; waiting as a follower")
        return False
