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

Each loop of beat (leader or follower) also touches ``beat.alive`` in the data dir: ``python -m
worker.beat`` exits 0 while that file is younger than ``BMSREBOOT_BEAT_LOCK_TIMEOUT`` (the
healthcheck of docker-compose's beat). A loop runs at least every ``beat_max_loop_interval``
(5 s); a beat that has not looped for a lock timeout is stuck (on Redis, or in a tick), and a
leader that stuck has lost its lock anyway. That its process exists would not show it. (One
file per data dir: beats that share a data dir share it; each container has its own.)
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

from redbeat.schedulers import LUA_EXTEND_TO_SCRIPT, RedBeatScheduler, get_redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import LockError, ReadOnlyError
from redis.exceptions import TimeoutError as RedisTimeoutError

from worker.settings import Settings, get_settings

log = logging.getLogger("bmsreboot.beat")

# redbeat ships no type information.
_Base: Any = RedBeatScheduler

HEARTBEAT = "beat.alive"
#: Redis is not answering, or the server at its address is a replica now (a failover under
#: way; Sentinel's own "master not found" is a connection error): beat tries again at its
#: next loop instead of ending.
REDIS_DOWN = (RedisConnectionError, RedisTimeoutError, ReadOnlyError)
#: Seconds between two tries while Redis does not answer.
REDIS_RETRY = 1.0


def heartbeat_path(settings: Settings) -> Path:
    return settings.data_dir / HEARTBEAT


def beat_is_alive(settings: Settings, now: float | None = None) -> tuple[bool, str]:
    """Whether a beat looped within the lock timeout (its heartbeat file), and a line saying so."""
    path = heartbeat_path(settings)
    try:
        age = (time.time() if now is None else now) - path.stat().st_mtime
    except FileNotFoundError:
        return False, f"beat: not alive: it never looped ({path} does not exist)"
    if age > settings.beat_lock_timeout:
        return False, (
            f"beat: not alive: its last loop was {age:.0f} s ago "
            f"(more than BMSREBOOT_BEAT_LOCK_TIMEOUT, {settings.beat_lock_timeout:.0f} s)"
        )
    return True, f"beat: alive (last loop {age:.0f} s ago)"


class Scheduler(_Base):  # type: ignore[misc]
    """``redbeat.RedBeatScheduler`` that rides out a Redis that is down for a while, takes its
    lock again, and reinstalls its static entries, after Redis lost them."""

    lock: Any  # redbeat's redis-py Lock (None when this beat holds none)

    def tick(self, *args: Any, **kwargs: Any) -> Any:
        # redbeat's tick and Celery's beat loop let a ConnectionError end beat (a Redis
        # restart or failover: sibson/redbeat#285): try again shortly instead; once Redis
        # answers, _still_leader takes the lock again if it was lost with Redis's data.
        try:
            return self._tick(*args, **kwargs)
        except REDIS_DOWN as exc:
            log.warning(
                "beat: Redis is not answering (%s); trying again in %.0f s", exc, REDIS_RETRY
            )
            return REDIS_RETRY

    def close(self) -> None:
        try:
            super().close()
        except REDIS_DOWN as exc:
            log.warning("beat: lock not released, Redis is not answering (%s); it expires", exc)
            self.lock = None

    def _tick(self, *args: Any, **kwargs: Any) -> Any:
        self._heartbeat()
        if self.lock_key and self.lock is None and not self._take_lock():
            return self.max_interval
        if self.lock_key and self.lock is not None and not self._still_leader():
            return self.max_interval
        client = get_redis(self.app)
        if self.app.redbeat_conf.schedule and not client.exists(self.app.redbeat_conf.statics_key):
            log.warning("beat: the schedule is gone from Redis (flushed?); installing it again")
            self.setup_schedule()
        return super().tick(*args, **kwargs)

    def _heartbeat(self) -> None:
        try:
            heartbeat_path(get_settings()).touch()
        except OSError as exc:
            log.warning("beat: cannot touch its heartbeat file: %s", exc)

    def _take_lock(self) -> bool:
        """A beat whose lock redbeat could not take at start has none: redbeat's
        ``beat_init`` handler waits for it (a follower waits there for the leader's end), and
        when Redis goes away meanwhile (a failover) Celery swallows the error and beat goes
        on with no lock, which redbeat's tick then calls ``extend`` on (an AttributeError that
        ends beat). Here such a beat takes the lock if nobody holds it, as redbeat would have,
        and else waits as a follower, trying again at every tick."""
        client = get_redis(self.app)
        lock = client.lock(self.lock_key, timeout=self.lock_timeout, sleep=self.max_interval)
        # redbeat's own extend script: extend *to* the timeout, not by it
        lock.lua_extend = client.register_script(LUA_EXTEND_TO_SCRIPT)
        if not lock.acquire(blocking=False):
            log.info("beat: another beat holds the lock; waiting as a follower")
            return False
        log.warning("beat: the lock, not taken at start (Redis not answering), taken now")
        self.lock = lock
        return True

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


def main() -> int:
    """``python -m worker.beat``: exit 0 if this machine's beat looped lately (a healthcheck)."""
    alive, line = beat_is_alive(get_settings())
    print(line, file=sys.stdout if alive else sys.stderr)
    return 0 if alive else 1


if __name__ == "__main__":
    sys.exit(main())
