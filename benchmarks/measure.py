"""What a benchmark measures besides time: CPU seconds of process trees and Redis's memory.

A :class:`Sampler` thread reads ``/proc`` once a second (Linux only; elsewhere it reports 0):
each group of processes (a worker and all its descendants, the simulator, PostgreSQL's backends
of one database, ...) is summed as the CPU (user + system) its processes used between
:meth:`Sampler.start` and :meth:`Sampler.stop`; a process that starts in between counts from 0,
one that ends in between counts until its last sample (at most a second is lost). The whole
machine's busy CPU (``/proc/stat``, every process, ours or not) tells how much of the cores the
run had to share. Redis is
read with ``INFO``: its own CPU and ``used_memory`` (the whole instance), and the bytes held by
the keys of the benchmark's own database (``MEMORY USAGE`` of every key, which is exact and
cheap for the few hundred keys a run leaves there).
"""

from __future__ import annotations

import contextlib
import os
import resource
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import redis

TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def processes() -> dict[int, tuple[int, str, float]]:
    """pid -> (parent pid, command name, CPU seconds) of every process this user can see."""
    out: dict[int, tuple[int, str, float]] = {}
    proc = Path("/proc")
    if not proc.is_dir():
        return out
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
        except OSError:
            continue  # ended between the listing and the read
        name = text[text.index("(") + 1 : text.rindex(")")]
        fields = text[text.rindex(")") + 2 :].split()
        out[int(entry.name)] = (int(fields[1]), name, (int(fields[11]) + int(fields[12])) / TICK)
    return out


def machine_cpu() -> tuple[float, float]:
    """(busy, steal) CPU seconds of the whole machine since boot, from ``/proc/stat``."""
    try:
        first = Path("/proc/stat").read_text().splitlines()[0].split()
    except OSError:
        return 0.0, 0.0
    ticks = [int(v) for v in first[1:9]]  # user nice system idle iowait irq softirq steal
    busy = sum(ticks) - ticks[3] - ticks[4] - ticks[7]
    return busy / TICK, ticks[7] / TICK


def tree(procs: dict[int, tuple[int, str, float]], roots: Iterable[int]) -> set[int]:
    """The roots and all their descendants."""
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in procs.items():
        children.setdefault(ppid, []).append(pid)
    found: set[int] = set()
    todo = [r for r in roots if r in procs]
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo.extend(children.get(pid, []))
    return found


def named(procs: dict[int, tuple[int, str, float]], name: str) -> set[int]:
    return {pid for pid, (_, comm, _) in procs.items() if comm == name}


#: A group: given the processes of one sample, the pids that belong to it.
Group = Callable[[dict[int, tuple[int, str, float]]], set[int]]


#: The window of ``Sampler.busiest``: seconds.
BUSIEST_WINDOW = 10.0


class Sampler:
    """Sample the groups' CPU and Redis every ``every`` seconds in a thread."""

    def __init__(
        self,
        groups: dict[str, Group],
        redis_url: str | None = None,
        every: float = 1.0,
    ) -> None:
        self.groups = groups
        self.every = every
        self._redis = redis.Redis.from_url(redis_url) if redis_url else None
        self._first: dict[str, dict[int, float]] = {g: {} for g in groups}
        self._last: dict[str, dict[int, float]] = {g: {} for g in groups}
        self._started = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)
        self._lock = threading.Lock()
        self._redis_cpu0 = 0.0
        self._self0 = 0.0
        self.used_memory: list[int] = []
        self.db_bytes: list[int] = []
        #: (monotonic time, CPU seconds of each group since the start), one a sample.
        self.series: list[tuple[float, dict[str, float]]] = []
        self.result: dict[str, Any] = {}

    # --- one sample ------------------------------------------------------------------------
    def _sample(self) -> None:
        procs = processes()
        with self._lock:
            for group, select in self.groups.items():
                first, last = self._first[group], self._last[group]
                for pid in select(procs):
                    cpu = procs[pid][2]
                    if pid not in first:
                        first[pid] = cpu if not self._started else 0.0
                    last[pid] = cpu
            if self._started:
                self.series.append((time.monotonic(), self._used()))
        if self._redis is not None:
            with contextlib.suppress(redis.RedisError):
                self.used_memory.append(int(self._redis.info("memory")["used_memory"]))
                self.db_bytes.append(self._db_bytes())

    def _db_bytes(self) -> int:
        assert self._redis is not None
        total = 0
        for key in self._redis.scan_iter(count=1000):
            total += int(self._redis.memory_usage(key, samples=0) or 0)
        return total

    def _used(self) -> dict[str, float]:
        return {
            group: sum(self._last[group][p] - self._first[group][p] for p in first)
            for group, first in self._first.items()
        }

    def busiest(self, window: float = BUSIEST_WINDOW) -> dict[str, float | None]:
        """Each group's most cores over any ``window`` seconds of samples (None if the run
        was shorter): the average hides a burst."""
        best: dict[str, float | None] = dict.fromkeys(self._first)
        points = [(self._t0, dict.fromkeys(self._first, 0.0)), *self.series]
        j = 0
        for t0, used0 in points:
            while j < len(points) and points[j][0] - t0 < window:
                j += 1
            if j == len(points):
                break
            t1, used1 = points[j]
            for group in best:
                cores = (used1[group] - used0[group]) / (t1 - t0)
                current = best[group]
                best[group] = cores if current is None else max(current, cores)
        return {g: None if v is None else round(v, 2) for g, v in best.items()}

    def _redis_cpu(self) -> float:
        if self._redis is None:
            return 0.0
        info = self._redis.info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self._sample()

    # --- the window ------------------------------------------------------------------------
    def start(self) -> Sampler:
        self._sample()
        self._started = True
        self._redis_cpu0 = self._redis_cpu()
        usage = resource.getrusage(resource.RUSAGE_SELF)
        self._self0 = usage.ru_utime + usage.ru_stime
        self._machine0 = machine_cpu()
        self._t0 = time.monotonic()
        self._thread.start()
        return self

    def stop(self) -> dict[str, Any]:
        """CPU seconds per group over the window, Redis's CPU and memory; also in ``result``."""
        self._stop.set()
        self._thread.join()
        self._sample()
        wall = time.monotonic() - self._t0
        usage = resource.getrusage(resource.RUSAGE_SELF)
        cpu = {group: round(used, 2) for group, used in self._used().items()}
        cpu["redis"] = round(self._redis_cpu() - self._redis_cpu0, 2)
        cpu["benchmark"] = round(usage.ru_utime + usage.ru_stime - self._self0, 2)
        busy, steal = (b - a for a, b in zip(self._machine0, machine_cpu(), strict=True))
        self.result = {
            "wall_s": round(wall, 2),
            "cpu_s": cpu,
            # Every process of the machine, ours and anyone else's (steal: taken by the host).
            "machine_cores_busy": round(busy / wall, 2),
            "machine_cores_stolen": round(steal / wall, 2),
            f"busiest_{BUSIEST_WINDOW:.0f}s_cores": self.busiest(),
        }
        if self.used_memory:
            self.result["redis_used_memory_mb"] = {
                "start": mb(self.used_memory[0]),
                "peak": mb(max(self.used_memory)),
                "end": mb(self.used_memory[-1]),
            }
            self.result["broker_db_mb"] = {
                "peak": mb(max(self.db_bytes)),
                "end": mb(self.db_bytes[-1]),
            }
        if self._redis is not None:
            self._redis.close()
        return self.result


def mb(n: int) -> float:
    return round(n / 2**20, 2)


def postgres_backends(database: str, procs: dict[int, tuple[int, str, float]]) -> set[int]:
    """The backends serving ``database``: PostgreSQL names them ``postgres`` and we find them
    by their process title (``postgres: [cluster:] user database host ...``)."""
    found = set()
    for pid in named(procs, "postgres"):
        with contextlib.suppress(OSError):
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").split()
            if database.encode() in cmdline[1:5]:
                found.add(pid)
    return found
