"""Diagnostics that are off unless an operator asks for them: where a pool child's memory goes.

``BMSREBOOT_TRACEMALLOC_DIR=DIR`` makes every pool child start :mod:`tracemalloc` when it starts
(Celery's ``worker_process_init``, ``worker.celery``) and, every
``BMSREBOOT_TRACEMALLOC_INTERVAL`` seconds, append one JSON line to
``DIR/tracemalloc-PID.jsonl``: its RSS (``/proc/self/status``), what tracemalloc traces (current
and peak), the entries of each engine's compiled-statement cache (SQLAlchemy's LRU, 500 at
most), and the allocation sites that grew most since the first report (by file, and by
traceback of up to :data:`FRAMES` frames). The first report is the baseline: what a child
allocates while it warms up grows from it too. The first report's snapshot and the latest are
dumped beside it (``tracemalloc-PID-first.snap``, ``-latest.snap``;
:meth:`tracemalloc.Snapshot.load` reads them and :func:`report` compares two).

The reports are written from a thread of their own, so they never call ``gc.get_objects()``: the
list it returns holds a reference to every object, also to a tuple the task's thread is still
building, and CPython's ``tuple(generator)`` then fails with ``SystemError: bad argument to
internal function`` (``_PyTuple_Resize`` of a tuple referenced twice): a first version of this
module made two tasks fail that way in a 45-minute soak.

It is a diagnostic: tracemalloc slows every allocation and holds its traces in the process
(tens of MB), so RSS read with it on is not the RSS of a production child. Unset (the default)
costs one settings read when a child starts. ``benchmarks/soak.py --tracemalloc`` uses it.
"""

from __future__ import annotations

import json
import linecache
import logging
import os
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any

log = logging.getLogger("bmsreboot.diagnostics")

#: Frames kept a trace: deep enough to reach our own code from a library's allocation.
FRAMES = 16
#: Sites of each report, by file and by traceback.
TOP = 15
#: Frames of a traceback in a report, most recent last.
SHOWN_FRAMES = 8

_IGNORED = (
    tracemalloc.Filter(False, tracemalloc.__file__),
    tracemalloc.Filter(False, linecache.__file__),
    tracemalloc.Filter(False, __file__),
    tracemalloc.Filter(False, "<frozen importlib._bootstrap>"),
    tracemalloc.Filter(False, "<frozen importlib._bootstrap_external>"),
    tracemalloc.Filter(False, "<unknown>"),
)


def rss_kib(pid: int | str = "self") -> int:
    """The process's resident set size (``VmRSS``), KiB; 0 where ``/proc`` cannot say."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def compiled_cache_entries() -> dict[str, int]:
    """Entries of each process-wide engine's compiled-statement cache, by database name."""
    from worker.db.session import _engines

    out = {}
    for engine in list(_engines.values()):
        cache = getattr(engine, "_compiled_cache", None)
        if cache is not None:
            out[engine.url.database or ""] = len(cache)
    return out


def _frames(traceback: tracemalloc.Traceback) -> list[str]:
    return [f"{f.filename}:{f.lineno}" for f in list(traceback)[-SHOWN_FRAMES:]]


def grown(
    first: tracemalloc.Snapshot, now: tracemalloc.Snapshot, key: str
) -> list[tracemalloc.StatisticDiff]:
    """The sites that hold more from ``first`` to ``now``, the most first (``compare_to``
    sorts by the absolute difference: what shrank would crowd out what grew)."""
    diffs = [s for s in now.compare_to(first, key) if s.size_diff > 0]
    return sorted(diffs, key=lambda s: s.size_diff, reverse=True)


def report(first: tracemalloc.Snapshot, now: tracemalloc.Snapshot) -> dict[str, Any]:
    """What grew from ``first`` to ``now``: the top sites by file and by traceback."""
    by_file = grown(first, now, "filename")
    by_traceback = grown(first, now, "traceback")
    return {
        "by_file": [
            {
                "file": s.traceback[0].filename,
                "size_diff_kib": round(s.size_diff / 1024, 1),
                "size_kib": round(s.size / 1024, 1),
                "count_diff": s.count_diff,
            }
            for s in by_file[:TOP]
        ],
        "by_traceback": [
            {
                "frames": _frames(s.traceback),
                "size_diff_kib": round(s.size_diff / 1024, 1),
                "size_kib": round(s.size / 1024, 1),
                "count_diff": s.count_diff,
            }
            for s in by_traceback[:TOP]
        ],
    }


class MemoryTrace:
    """tracemalloc in this process, with a report every ``interval`` seconds (a daemon
    thread)."""

    def __init__(self, directory: Path, interval: float) -> None:
        self.directory = directory
        self.interval = interval
        self.pid = os.getpid()
        self.started = time.monotonic()
        self._first: tracemalloc.Snapshot | None = None
        self._stop = threading.Event()

    def path(self, suffix: str) -> Path:
        return self.directory / f"tracemalloc-{self.pid}{suffix}"

    def start(self) -> MemoryTrace:
        self.directory.mkdir(parents=True, exist_ok=True)
        if not tracemalloc.is_tracing():
            tracemalloc.start(FRAMES)
        threading.Thread(target=self._run, name="bmsreboot-tracemalloc", daemon=True).start()
        log.warning(
            "diagnostics: tracemalloc is on in pool process %d (BMSREBOOT_TRACEMALLOC_DIR), "
            "reports every %.0f s in %s",
            self.pid,
            self.interval,
            self.path(".jsonl"),
        )
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.tick()
            except Exception:  # a diagnostic never takes the worker down
                log.exception("diagnostics: the tracemalloc report failed")

    def tick(self) -> dict[str, Any]:
        """One report: appended to the JSON lines file, and returned."""
        snapshot = tracemalloc.take_snapshot().filter_traces(_IGNORED)
        current, peak = tracemalloc.get_traced_memory()
        line: dict[str, Any] = {
            "pid": self.pid,
            "at": round(time.time(), 1),
            "uptime_s": round(time.monotonic() - self.started, 1),
            "rss_kib": rss_kib(),
            "traced_kib": round(current / 1024, 1),
            "traced_peak_kib": round(peak / 1024, 1),
            "tracemalloc_overhead_kib": round(tracemalloc.get_tracemalloc_memory() / 1024, 1),
            "compiled_cache_entries": compiled_cache_entries(),
        }
        if self._first is None:
            self._first = snapshot
            snapshot.dump(str(self.path("-first.snap")))
        else:
            line |= report(self._first, snapshot)
            latest = self.path("-latest.snap")
            snapshot.dump(str(latest.with_suffix(".tmp")))
            latest.with_suffix(".tmp").replace(latest)
        with self.path(".jsonl").open("a") as out:
            out.write(json.dumps(line, separators=(",", ":")) + "\n")
        return line


def trace_memory(directory: Path, interval: float) -> MemoryTrace:
    """Start tracing this process's allocations, with a report every ``interval`` seconds."""
    return MemoryTrace(directory, interval).start()
