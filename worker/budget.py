"""API budgets shared by every worker process and machine, with reservation semantics.

The BMS API allows 50 POSTs per minute per project on ``/baremetalservers/action`` and 2000 GETs
per minute on ``/jobs``; past that the gateway answers 429 (``APIGW.0308``). One budget exists
per (endpoint, project, route). A caller does not ask "may I call now?" but **reserves the next
free slot** and learns how long to wait for it: 100 batches waiting on one project get 100
distinct times, one interval apart, instead of all coming back at once.

The algorithm is GCRA (the generic cell rate algorithm, a token bucket kept as one number, the
*theoretical arrival time*): with an interval ``T = 60 / limit`` and a tolerance
``tau = (burst - 1) * T``, a call at ``now`` may go at ``max(tat - tau, now)``; reserving it moves
``tat`` to ``max(tat, now) + T``. A 429 cools the whole budget down: ``tat`` jumps to
``now + cooldown + tau``, so every worker waits, not only the one that met it.

Where it lives: in Redis when the broker is Redis (one Lua script per operation, atomic, using
Redis's own clock so that machines with drifting clocks agree), else in the audit database's
``api_budgets`` table (one short transaction, row-locked), which holds it across the prefork
children of one embedded worker.

Why not the ``limits`` library: it answers "is this call allowed now" (``hit``/``test``) and
"when does the window reset", for fixed and moving windows; it cannot hand out distinct future
slots to waiting callers, which is what spreads a queue of batches without a thundering herd.
GCRA is a dozen lines, so it is written here, once, for both stores.

The same stores keep two small coordination marks: *leases* (only one reconciler run at a
time) and *wake-ups* (one pending "release again at T" message per project, not one per caller).
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from worker.settings import is_redis_url

ACTION = "action"
JOB = "job"
#: The inventory: the server list, and one server's details (pre-flight, selectors).
LIST = "list"


@dataclass(frozen=True)
class Rate:
    """``limit`` calls per minute, up to ``burst`` of them back to back."""

    limit: int
    burst: int = 1

    @property
    def interval(self) -> float:
        return 60.0 / self.limit

    @property
    def tolerance(self) -> float:
        return (self.burst - 1) * self.interval


@dataclass(frozen=True)
class Reservation:
    """``granted``: the slot is yours, call after ``wait`` seconds. Not granted: nothing was
    reserved, and the next free slot is ``wait`` seconds away (beyond the caller's limit)."""

    granted: bool
    wait: float
    #: The slot itself, in epoch seconds on the store's clock (Redis's, or this machine's).
    at: float = 0.0


def budget_key(endpoint: str, project_id: str, route: str) -> str:
    # The endpoint is hashed: keys stay short and carry no URL (or anything in it).
    digest = hashlib.sha256(endpoint.encode()).hexdigest()[:12]
    return f"bmsreboot:budget:{digest}:{project_id}:{route}"


class Budget(Protocol):
    def reserve(self, key: str, rate: Rate, max_wait: float | None = None) -> Reservation:
        """Reserve the next slot unless it is more than ``max_wait`` seconds away."""

    def reserve_many(self, key: str, rate: Rate, count: int, max_wait: float) -> list[Reservation]:
        """Reserve up to ``count`` consecutive slots in one operation, each at most
        ``max_wait`` seconds away: the granted ones, in order (fewer, or none, when the
        budget is fuller than that)."""

    def cooldown(self, key: str, rate: Rate, seconds: float) -> None:
        """No slot of this budget before ``seconds`` from now (after a 429)."""

    def try_lease(self, key: str, seconds: float) -> str | None:
        """Hold ``key`` for ``seconds`` unless someone else holds it; the holder's token."""

    def release_lease(self, key: str, token: str) -> None:
        """Give up a lease early (only the holder's token does)."""

    def claim_wake(self, key: str, delay: float) -> bool:
        """True when the caller should schedule a wake-up in ``delay`` s: none is pending at or
        before that time. A wake-up overdue by more than ``WAKE_STALE`` s counts as lost."""

    def consume_wake(self, key: str) -> None:
        """The wake-up that is due now ran: later ones may be claimed again."""


#: A wake-up this late is taken as lost (its message gone), and may be claimed again.
WAKE_STALE = 2.0

_RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local interval, tau, max_wait = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local wait = tat - tau - now
if wait < 0 then wait = 0 end
if max_wait >= 0 and wait > max_wait then return {0, tostring(wait), tostring(now + wait)} end
local new_tat = tat + interval
redis.call('SET', KEYS[1], tostring(new_tat), 'PX', math.ceil((new_tat - now + tau) * 1000) + 1000)
return {1, tostring(wait), tostring(now + wait)}
"""

_RESERVE_MANY = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local interval, tau, max_wait = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local count = tonumber(ARGV[4])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local slots = {}
for i = 1, count do
  local wait = tat - tau - now
  if wait < 0 then wait = 0 end
  if wait > max_wait + 0.000001 then break end
  slots[#slots + 1] = tostring(now + wait)
  tat = tat + interval
end
if #slots > 0 then
  redis.call('SET', KEYS[1], tostring(tat), 'PX', math.ceil((tat - now + tau) * 1000) + 1000)
end
table.insert(slots, 1, tostring(now))
return slots
"""

_COOLDOWN = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local target = now + tonumber(ARGV[1]) + tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if target > tat then
  redis.call('SET', KEYS[1], tostring(target), 'PX', math.ceil((target - now) * 1000) + 1000)
end
return 1
"""

_CLAIM_WAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local at = now + tonumber(ARGV[1])
local cur = tonumber(redis.call('GET', KEYS[1]) or '-1')
if cur >= now - tonumber(ARGV[2]) and cur <= at + 0.05 then return 0 end
redis.call('SET', KEYS[1], tostring(at), 'PX', math.ceil((at - now + 600) * 1000))
return 1
"""

_CONSUME_WAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local cur = tonumber(redis.call('GET', KEYS[1]) or '-1')
if cur >= 0 and cur <= now + 0.05 then redis.call('DEL', KEYS[1]) end
return 1
"""

_RELEASE_LEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
"""


class RedisBudget:
    """Budgets in Redis: every operation is one atomic script on Redis's clock, on the primary
    (``worker.redis_client``: one address or Sentinel, retried through a failover)."""

    def __init__(self, url: str, options: Mapping[str, Any] | None = None) -> None:
        from worker.redis_client import redis_client

        self._redis = redis_client(url, options)
        self._reserve = self._redis.register_script(_RESERVE)
        self._reserve_many = self._redis.register_script(_RESERVE_MANY)
        self._cooldown = self._redis.register_script(_COOLDOWN)
        self._claim_wake = self._redis.register_script(_CLAIM_WAKE)
        self._consume_wake = self._redis.register_script(_CONSUME_WAKE)
        self._release_lease = self._redis.register_script(_RELEASE_LEASE)

    def reserve(self, key: str, rate: Rate, max_wait: float | None = None) -> Reservation:
        limit = -1.0 if max_wait is None else max_wait
        granted, wait, at = self._reserve(keys=[key], args=[rate.interval, rate.tolerance, limit])
        return Reservation(bool(int(granted)), float(wait), float(at))

    def reserve_many(self, key: str, rate: Rate, count: int, max_wait: float) -> list[Reservation]:
        if count <= 0:
            return []
        now, *slots = self._reserve_many(
            keys=[key], args=[rate.interval, rate.tolerance, max(max_wait, 0.0), count]
        )
        start = float(now)
        return [Reservation(True, float(at) - start, float(at)) for at in slots]

    def cooldown(self, key: str, rate: Rate, seconds: float) -> None:
        self._cooldown(keys=[key], args=[seconds, rate.tolerance])

    def try_lease(self, key: str, seconds: float) -> str | None:
        token = uuid.uuid4().hex
        taken = self._redis.set(key, token, nx=True, px=max(1, int(seconds * 1000)))
        return token if taken else None

    def release_lease(self, key: str, token: str) -> None:
        self._release_lease(keys=[key], args=[token])

    def claim_wake(self, key: str, delay: float) -> bool:
        return bool(int(self._claim_wake(keys=[key], args=[max(delay, 0.0), WAKE_STALE])))

    def consume_wake(self, key: str) -> None:
        self._consume_wake(keys=[key])


class DatabaseBudget:
    """Budgets in the audit database (``api_budgets``), one short transaction per operation.

    The row is read ``FOR UPDATE`` (on SQLite every transaction already holds the write lock),
    so the read-modify-write is atomic across processes. The clock is this machine's: the
    embedded default runs on one machine (``clock``: epoch seconds; a test may move it)."""

    def __init__(self, engine: Engine, clock: Callable[[], float] = time.time) -> None:
        self._engine = engine
        self._clock = clock

    def _update(self, key: str, change: Any) -> Any:
        """Run ``change(current value or None, now) -> (new value or None, result)``."""
        from worker.db.models import ApiBudget
        from worker.db.session import unit_of_work

        for _ in range(3):
            try:
                with unit_of_work(self._engine) as session:
                    row = session.scalar(
                        select(ApiBudget).where(ApiBudget.key == key).with_for_update()
                    )
                    now = self._clock()
                    new, result = change(None if row is None else row.value, now)
                    if new is not None:
                        if row is None:
                            session.add(ApiBudget(key=key, value=new))
                        else:
                            row.value = new
                    return result
            except IntegrityError:
                continue  # two first callers inserted the row at once: read it again
        raise RuntimeError(f"budget {key}: could not update")

    def reserve(self, key: str, rate: Rate, max_wait: float | None = None) -> Reservation:
        def change(tat: float | None, now: float) -> tuple[float | None, Reservation]:
            tat = max(tat or 0.0, now)
            wait = max(tat - rate.tolerance - now, 0.0)
            if max_wait is not None and wait > max_wait:
                return None, Reservation(False, wait, now + wait)
            return tat + rate.interval, Reservation(True, wait, now + wait)

        result: Reservation = self._update(key, change)
        return result

    def reserve_many(self, key: str, rate: Rate, count: int, max_wait: float) -> list[Reservation]:
        if count <= 0:
            return []

        def change(tat: float | None, now: float) -> tuple[float | None, list[Reservation]]:
            tat = max(tat or 0.0, now)
            slots: list[Reservation] = []
            while len(slots) < count:
                wait = max(tat - rate.tolerance - now, 0.0)
                if wait > max_wait + 1e-6:  # the sum of intervals, not a float's last digit
                    break
                slots.append(Reservation(True, wait, now + wait))
                tat += rate.interval
            return (tat if slots else None), slots

        result: list[Reservation] = self._update(key, change)
        return result

    def cooldown(self, key: str, rate: Rate, seconds: float) -> None:
        def change(tat: float | None, now: float) -> tuple[float | None, None]:
            target = now + seconds + rate.tolerance
            return (target if target > (tat or 0.0) else None), None

        self._update(key, change)

    def try_lease(self, key: str, seconds: float) -> str | None:
        # The row's value is the expiry; the token is the expiry itself, as text.
        def change(expires: float | None, now: float) -> tuple[float | None, str | None]:
            if expires is not None and expires > now:
                return None, None
            return now + seconds, repr(now + seconds)

        result: str | None = self._update(key, change)
        return result

    def release_lease(self, key: str, token: str) -> None:
        def change(expires: float | None, now: float) -> tuple[float | None, None]:
            return (0.0 if expires is not None and repr(expires) == token else None), None

        self._update(key, change)

    def claim_wake(self, key: str, delay: float) -> bool:
        def change(current: float | None, now: float) -> tuple[float | None, bool]:
            at = now + max(delay, 0.0)
            if current is not None and now - WAKE_STALE <= current <= at + 0.05:
                return None, False
            return at, True

        result: bool = self._update(key, change)
        return result

    def consume_wake(self, key: str) -> None:
        def change(current: float | None, now: float) -> tuple[float | None, None]:
            if current is not None and 0 <= current <= now + 0.05:
                return -1.0, None
            return None, None

        self._update(key, change)


def budget_for(
    broker_url: str | None, engine: Engine, options: Mapping[str, Any] | None = None
) -> Budget:
    """Redis when the broker is Redis (``options``: its transport options), else the audit
    database."""
    if broker_url is not None and is_redis_url(broker_url):
        return RedisBudget(broker_url, options)
    return DatabaseBudget(engine)
