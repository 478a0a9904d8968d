"""Shared API budgets: reservation semantics, cool-down, leases and wake-ups, on every store
(Redis, and the audit database on SQLite and PostgreSQL), including callers racing from
threads and from separate processes."""

from __future__ import annotations

import itertools
import multiprocessing
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from tests.fixtures.db import _drop_database, _new_database
from worker.budget import Budget, DatabaseBudget, Rate, RedisBudget, budget_for
from worker.db.models import Base
from worker.db.session import make_engine

STORES = [
    pytest.param("redis", marks=pytest.mark.redis),
    "sqlite",
    pytest.param("postgresql", marks=pytest.mark.postgres),
]


@pytest.fixture(params=STORES)
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """(kind, URL) of a fresh store: a flushed Redis database or a new audit database."""
    kind: str = request.param
    if kind == "redis":
        yield kind, request.getfixturevalue("redis_url")
        return
    url = _new_database(kind, tmp_path)
    engine = make_engine(url)
    Base.metadata.create_all(engine)
    engine.dispose()
    try:
        yield kind, url
    finally:
        _drop_database(kind, url)


def open_budget(kind: str, url: str) -> Budget:
    return RedisBudget(url) if kind == "redis" else DatabaseBudget(make_engine(url))


@pytest.fixture
def store(target: tuple[str, str]) -> Callable[[], Budget]:
    """A factory of budget handles on one shared store (each handle: its own connections)."""
    return lambda: open_budget(*target)


def key() -> str:
    return f"bmsreboot:budget:test:{uuid.uuid4().hex}:action"


def test_each_caller_gets_its_own_slot_one_interval_apart(store: Callable[[], Budget]) -> None:
    budget = store()
    rate = Rate(limit=6)  # one every 10 s
    k = key()
    slots = [budget.reserve(k, rate) for _ in range(5)]
    # Given no burst, the first goes now and each next one exactly an interval later
    assert slots[0].wait == 0.0
    assert all(s.granted for s in slots)
    for earlier, later in itertools.pairwise(slots):
        assert later.at - earlier.at == pytest.approx(10.0, abs=1e-6)
    assert 39.0 < slots[-1].wait <= 40.0


def test_a_burst_lets_that_many_go_at_once(store: Callable[[], Budget]) -> None:
    budget = store()
    rate = Rate(limit=6, burst=3)
    k = key()
    slots = [budget.reserve(k, rate) for _ in range(5)]
    assert [s.wait for s in slots[:3]] == [0.0, 0.0, 0.0]
    assert slots[3].at - slots[0].at == pytest.approx(10.0, abs=1e-6)
    assert slots[4].at - slots[0].at == pytest.approx(20.0, abs=1e-6)


def test_a_slot_beyond_max_wait_is_not_reserved(store: Callable[[], Budget]) -> None:
    budget = store()
    rate = Rate(limit=6)
    k = key()
    first = budget.reserve(k, rate, max_wait=5.0)
    assert first.granted
    refused = budget.reserve(k, rate, max_wait=5.0)
    assert not refused.granted
    assert refused.at - first.at == pytest.approx(10.0, abs=1e-6)
    # Nothing was taken: the next caller willing to wait gets that same slot
    taken = budget.reserve(k, rate)
    assert taken.granted
    assert taken.at == pytest.approx(refused.at, abs=1e-6)


def test_budgets_are_per_key(store: Callable[[], Budget]) -> None:
    budget = store()
    rate = Rate(limit=1)
    assert budget.reserve(key(), rate).wait == 0.0
    assert budget.reserve(key(), rate).wait == 0.0


def test_a_cooldown_pauses_the_whole_budget(store: Callable[[], Budget]) -> None:
    budget = store()
    rate = Rate(limit=6000)
    k = key()
    budget.reserve(k, rate)
    budget.cooldown(k, rate, 30.0)
    assert 29.0 < budget.reserve(k, rate).wait <= 30.0
    # A shorter cooldown never shortens a longer one
    budget.cooldown(k, rate, 5.0)
    assert budget.reserve(k, rate).wait > 28.0


def test_racing_threads_get_distinct_slots(store: Callable[[], Budget]) -> None:
    rate = Rate(limit=600)  # 0.1 s apart
    k = key()
    waits: list[float] = []
    lock = threading.Lock()
    barrier = threading.Barrier(8)

    def caller() -> None:
        budget = store()
        barrier.wait()
        for _ in range(5):
            slot = budget.reserve(k, rate).at
            with lock:
                waits.append(slot)

    threads = [threading.Thread(target=caller) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    slots = sorted(waits)
    assert len(slots) == 40
    # 40 distinct slots, each at least one interval after the one before
    gaps = [b - a for a, b in itertools.pairwise(slots)]
    assert min(gaps) >= 0.1 - 1e-6


def _reserve_in_process(kind: str, url: str, k: str, n: int, out: Any) -> None:
    budget = open_budget(kind, url)
    for _ in range(n):
        out.put(budget.reserve(k, Rate(limit=600)).at)


def test_separate_processes_share_one_budget(target: tuple[str, str]) -> None:
    k = key()
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_reserve_in_process, args=(*target, k, 10, out)) for _ in range(3)]
    for p in procs:
        p.start()
    slots = sorted(out.get(timeout=60) for _ in range(30))
    for p in procs:
        p.join(timeout=30)
    gaps = [b - a for a, b in itertools.pairwise(slots)]
    assert min(gaps) >= 0.1 - 1e-6


def test_a_lease_has_one_holder_until_released_or_expired(store: Callable[[], Budget]) -> None:
    first, second = store(), store()
    k = key()
    # Held far longer than this test runs, however slow the machine
    token = first.try_lease(k, 60)
    assert token is not None
    assert second.try_lease(k, 60) is None
    # Only the holder's token releases it
    second.release_lease(k, "not-the-token")
    assert second.try_lease(k, 60) is None
    first.release_lease(k, token)
    again = second.try_lease(k, 0.3)
    assert again is not None
    # Once its seconds have passed on the store's clock (Redis's own: it cannot be moved)
    time.sleep(0.4)
    assert first.try_lease(k, 0.3) is not None


def test_one_pending_wake_up_however_many_ask(store: Callable[[], Budget]) -> None:
    budget = store()
    k = key()
    assert budget.claim_wake(k, 10.0)
    # Someone wanting a wake-up later than the pending one relies on it
    assert not budget.claim_wake(k, 20.0)
    # An earlier one is needed, though: one due now
    assert budget.claim_wake(k, 0.0)
    # The due wake-up ran: later ones may be claimed again
    budget.consume_wake(k)
    assert budget.claim_wake(k, 5.0)


def test_a_lost_wake_up_is_claimed_again_once_stale(store: Callable[[], Budget]) -> None:
    from worker.budget import WAKE_STALE

    budget = store()
    k = key()
    assert budget.claim_wake(k, 0.0)
    assert not budget.claim_wake(k, 1.0)
    # Once it is overdue by WAKE_STALE on the store's clock (Redis's own: it cannot be moved)
    time.sleep(WAKE_STALE + 0.2)
    # Its message never ran (consume_wake was never called): it counts as lost
    assert budget.claim_wake(k, 1.0)


def test_redis_is_chosen_for_a_redis_broker_else_the_database(engine: Engine) -> None:
    assert isinstance(budget_for("redis://127.0.0.1:6379/3", engine), RedisBudget)
    assert isinstance(budget_for(None, engine), DatabaseBudget)
    assert isinstance(budget_for("sqla+sqlite:///x.db", engine), DatabaseBudget)
