"""The batched steps: one task run does the work of every batch that falls due together.

A submit, a poll or a check of one batch is little work (a few hundred bytes over HTTP and a
row or two); run as one task per batch, the task's own machinery (its message, the pool's
hand-over, its events, two transactions) cost several times the work, and 2000 jobs on 200
projects could not start at the pace of their budgets (BENCHMARKS.md, "Thousands of jobs in
flight"). So the steps that follow a batch's state are *sweeps*: ``bmsreboot.submit_due``,
``bmsreboot.poll_due`` and ``bmsreboot.verify_due`` each claim, in one statement across
projects, every batch whose time has come (``worker.db.sweeps``), make the API calls
concurrently (a bounded pool of threads, each call still at its own reserved slot), and write
the answers in one statement per kind of outcome.

What is due is always in the audit database (a released batch's slot, a submitted batch's
``next_poll_at``, a verifying batch's ``next_check_at``): a sweep message carries no batch,
only the step. A step that makes work due asks for the step's sweep by then
(``Dispatcher.submit``/``poll``/``verify`` of one batch become one pending sweep message per
step, shared by every worker through a wake-up mark: ``CeleryDispatcher``), and each sweep
ends by asking for the next one at the earliest time anything is due. A sweep that claimed
as many as it may take asks for another at once, which another worker process picks up: one
sweep never holds all the work. A lost sweep message is the reconciler's, like any lost
message: it finds the overdue rows and asks for the sweep again.

The one-batch tasks (``bmsreboot.submit_batch``, ``poll_batch``, ``verify_batch``) stay: a
message already queued, a producer of our own, or a batch that must be looked at on its own
(one found ``submitting`` by another message) still goes through them.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import TypeVar

from worker.pipeline.runtime import Runtime

#: The steps that sweep, by the name their wake-up mark and task carry.
SUBMIT = "submit"
POLL = "poll"
VERIFY = "verify"
STEPS = (SUBMIT, POLL, VERIFY)

#: Work due within this many seconds is taken by the sweep running now (each call still
#: waits for its own slot in its thread): fewer, fuller sweeps.
WINDOW = 0.25
#: Batches one sweep takes at most, and servers: a sweep that took this many asks for another
#: at once, so that several worker processes share a large backlog.
MAX_BATCHES = 50
MAX_SERVERS = 5000
#: Concurrent API calls in one sweep (threads; the client's connection pool is this size).
CONCURRENCY = 16

_T = TypeVar("_T")
_R = TypeVar("_R")


def lease_seconds(rt: Runtime) -> float:
    """A claimed poll or check is due again this long after its claim if its sweep died
    first: longer than a sweep's calls can take (its waves of ``CONCURRENCY``, each call up to
    its connect and read timeouts), plus the margin a submit's claim gets."""
    s = rt.settings
    waves = -(-MAX_BATCHES // CONCURRENCY)
    return waves * (s.connect_timeout + s.read_timeout) + s.submit_stale_margin


def wake_key(step: str) -> str:
    return f"bmsreboot:sweep:{step}"


def ask_next(rt: Runtime, step: str, *, idle: bool = False) -> None:
    """The end of a sweep: ask for the step's next sweep at the earliest time anything is
    due (nothing when nothing is). ``idle``: this sweep found work due but could take none
    (another sweep holds it): look again a window later, not at once.

    The step's wake-up mark is given up here, at the end, not when the sweep starts: while a
    sweep runs, a step that makes work due finds a sweep pending (this one) and sends none;
    this sweep's look at what is due, after its work, covers what was made due meanwhile.
    (A sweep that runs longer than the mark's staleness lets others send one; a sweep that
    dies leaves the mark to go stale, and the reconciler finds what it left due.)"""
    from worker.db.session import unit_of_work
    from worker.db.sweeps import next_due

    rt.budgets.consume_wake(wake_key(step))
    with unit_of_work(rt.engine) as session:
        due = next_due(session, step)
    if due is None:
        return
    wait = max((due - rt.now()).total_seconds(), WINDOW if idle else 0.0)
    rt.dispatcher.sweep(step, countdown=wait)


def by_outcome(outcome: Mapping[uuid.UUID, str]) -> dict[str, list[str]]:
    """A sweep's result, what Flower shows of its run: its batches by what happened to them."""
    grouped: dict[str, list[str]] = {}
    for batch_id, word in outcome.items():
        grouped.setdefault(word, []).append(str(batch_id))
    return grouped


_pool: tuple[int, ThreadPoolExecutor] | None = None
_pool_lock = threading.Lock()


def _executor() -> ThreadPoolExecutor:
    """The process's pool of call threads, made in the process that uses it (a prefork child
    does not inherit its parent's threads)."""
    global _pool
    with _pool_lock:
        if _pool is None or _pool[0] != os.getpid():
            _pool = (os.getpid(), ThreadPoolExecutor(CONCURRENCY, thread_name_prefix="bms-call"))
        return _pool[1]


def at_slots(
    rt: Runtime,
    items: Sequence[_T],
    slot: Callable[[_T], datetime | None],
    call: Callable[[_T], _R],
) -> list[_R | Exception]:
    """``call(item)`` for every item, concurrently (at most ``CONCURRENCY`` at once), each
    once ``slot(item)`` has come (None: at once); the answers in the items' order, an
    exception in place of an answer that raised (one call's failure is its own)."""

    def one(item: _T) -> _R | Exception:
        at = slot(item)
        wait = (at - rt.now()).total_seconds() if at is not None else 0.0
        if wait > 0:
            time.sleep(wait)
        try:
            return call(item)
        except Exception as exc:  # handed back: the caller decides per item
            return exc

    if len(items) == 1:
        return [one(items[0])]
    return list(_executor().map(one, items))
