"""What a Redis failover costs a run: the time from the kill to the first POST after it, and
the API calls beyond a run without one.

    .venv/bin/python benchmarks/failover.py [--servers 20000] [--batch-size 200] [--tiny]
        [--json-out PATH]

Three runs of one request each, with real processes (the scenario of
``tests/test_failover.py``, ``tests.fixtures.failover``: one worker of 4 processes, two beats,
``bmsreboot metrics``, the simulator at our budgets' limits, jobs of 1 s):

- ``none``: Redis behind three sentinels, nothing killed (the baseline of the calls);
- ``sentinel``: the primary killed with SIGKILL once 10 batches are accepted; the sentinels
  (1 s down-after) promote the replica;
- ``same-address``: one Redis killed, and once the worker saw it gone, an empty Redis back on
  its port (DCS's switch when the standby was behind).

Printed for each: seconds from the kill to the first job the simulator created once the
broker was back, the replica promoted or the empty Redis up (``kill_to_first_post_s``; a POST
in flight at the kill, which reaches the simulator just after it, does not count), from the
kill to the sentinels naming the new primary (``promoted_s``), from the kill to the request's
end, the POSTs and GETs, and the extra ones against ``none`` (a POST is one batch: an extra
POST would be a batch sent twice; -1: a batch cut off before its POST reached the API). It needs
PostgreSQL on this machine and ``redis-server``; its Redis servers are its own, on free ports.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.fixtures import failover  # noqa: E402 - after the path
from tests.fixtures.fleet import fleet_on  # noqa: E402
from tests.fixtures.services import RedisServer, SentinelGroup  # noqa: E402

MODES = ("none", "sentinel", "same-address")
#: ``--tiny``: servers and batch size. 40 batches: the kill comes once 10 are accepted, and
#: 30 are left to send after it, so a first POST after the kill is certain.
TINY = (400, 10)


def one(mode: str, servers: int, batch_size: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bmsreboot-failover-") as tmp:
        tmp_path = Path(tmp)
        promoted: list[float] = []
        if mode == "same-address":
            redis = RedisServer(tmp_path / "redis").start()
            try:
                with fleet_on(tmp_path, broker_url=redis.url(0)) as fleet:
                    run = failover.run(
                        fleet,
                        servers=servers,
                        batch_size=batch_size,
                        kill=redis.kill,
                        after_kill=failover.dcs_restart(fleet, redis),
                    )
            finally:
                redis.close()
        else:
            group = SentinelGroup(tmp_path / "sentinels").start()

            def wait_promoted() -> None:
                group.wait_promoted()
                promoted.append(time.time())

            try:
                with fleet_on(
                    tmp_path, broker_url=group.url(0), transport_options=group.transport_options
                ) as fleet:
                    run = failover.run(
                        fleet,
                        servers=servers,
                        batch_size=batch_size,
                        kill=group.kill_primary if mode == "sentinel" else lambda: None,
                        after_kill=wait_promoted if mode == "sentinel" else lambda: None,
                    )
            finally:
                group.close()
    first = run.first_post_after_kill
    return {
        "mode": mode,
        "servers": servers,
        "batches": run.batches,
        "kill_to_first_post_s": None if first is None else round(first, 2),
        "promoted_s": round(promoted[0] - run.killed_at, 2) if promoted else None,
        "kill_to_end_s": round(run.finished_at - run.killed_at, 1),
        "posts": run.posts,
        "gets": run.polls,
        "unknown_servers": int(run.outcomes.get("unknown", 0)),
        "rebooted_twice": sum(1 for n in run.stats["reboots"].values() if n > 1),
        "throttled": run.stats["calls"]["action"]["throttled"]
        + run.stats["calls"]["jobs"]["throttled"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--servers", type=int, default=20_000)
    parser.add_argument("--batch-size", type=int, default=200)
    parser.add_argument(
        "--tiny",
        action="store_true",
        help=f"the sentinel run alone, {TINY[0]} servers in batches of {TINY[1]} (CI's check "
        "that the script runs; no baseline, so no extra_gets)",
    )
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()
    servers, batch = TINY if args.tiny else (args.servers, args.batch_size)
    modes = ("sentinel",) if args.tiny else MODES
    rows = [one(mode, servers, batch) for mode in modes]
    base = next((r for r in rows if r["mode"] == "none"), None)
    for row in rows:
        row["extra_posts"] = row["posts"] - row["batches"]
        row["extra_gets"] = None if base is None else row["gets"] - base["gets"]
        print(json.dumps(row))
    report = {"scenario": {"servers": servers, "batch_size": batch}, "results": rows}
    if args.json_out:
        args.json_out.write_text(json.dumps(report, indent=2))
    bad = [r["mode"] for r in rows if r["rebooted_twice"] or r["kill_to_first_post_s"] is None]
    if bad:
        print(f"failed: {bad}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
