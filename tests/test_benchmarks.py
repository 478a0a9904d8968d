"""Every benchmark script runs once at its tiny size, so that none of them rots.

Each script in ``benchmarks/`` (as ``run_all.py`` finds them) runs as a subprocess with
``--tiny`` and ``--json-out``, on this test session's own Redis db (the ``redis_url`` fixture,
emptied of its claim marker) when it takes ``--redis-url``; the test asserts its exit code and
the keys of its JSON report, never a timing. ``run_all.py`` runs once on the quickest script,
and its summary is checked on a made-up report.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.services import OWNER_KEY, require_postgres, require_redis

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import run_all  # noqa: E402  (benchmarks/ is not a package)
import soak  # noqa: E402

#: The keys each report must have; a script not listed must at least name its scenario.
EXPECTED = {
    "fleet": {"scenario", "lower_bound_s", "results"},
    "inflight": {"scenario", "results"},
    "workers": {"scenario", "results", "speedup"},
    "simulator_polls": {"scenario", "results"},
    "create_request": {"scenario", "rows"},
    "intake": {"scenario", "recorded_median_s"},
    "soak": {"scenario", "results", "outcome"},
    "failover": {"scenario", "results"},
}
ROW_KEYS = {
    "fleet": {"contender", "wall_s", "gets_per_job", "throttled_429", "detect_median_s"},
    "inflight": {
        "pool",
        "most_jobs_at_once",
        "job_route_429",
        "gets_per_job",
        "detect_p90_s",
        "worker_cpu_s",
        "worker_cores",
        "worker_cpu_ms_per_call",
        "redis_used_memory_mb",
        "broker_db_mb",
    },
    "workers": {"workers", "wall_s", "cpu_s_per_1000_servers", "cores_used", "servers_rebooted"},
    "simulator_polls": {"where", "polls_per_s", "simulator_cpu_ms_per_poll"},
    "soak": {"process", "rss_start_mb", "rss_end_mb", "rss_slope_mb_per_min", "replaced"},
    "failover": {
        "mode",
        "kill_to_first_post_s",
        "promoted_s",
        "extra_posts",
        "rebooted_twice",
        "throttled",
    },
}
SCRIPTS = [p.stem for p in run_all.scripts()]


@pytest.mark.parametrize("name", SCRIPTS)
def test_a_benchmark_runs_at_its_tiny_size(name: str, tmp_path: Path, redis_url: str) -> None:
    require_postgres()
    require_redis()
    script = BENCHMARKS / f"{name}.py"
    options = run_all.options_of(script)
    assert "--tiny" in options, f"{name}.py needs a --tiny size"
    assert "--json-out" in options, f"{name}.py needs --json-out"
    out = tmp_path / "report.json"
    argv = [sys.executable, str(script), "--tiny", "--json-out", str(out)]
    if "--redis-url" in options:
        argv += ["--redis-url", redis_url]
        # A script wants an empty db: the claim's marker goes, while the claim's open
        # connection still keeps other test sessions off this db.
        import redis

        with redis.Redis.from_url(redis_url) as client:
            client.delete(OWNER_KEY)
    done = subprocess.run(argv, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert EXPECTED.get(name, {"scenario"}) <= set(report), sorted(report)
    rows = report.get("results")
    if name in ROW_KEYS:
        assert rows, report
        for row in rows:
            assert ROW_KEYS[name] <= set(row), sorted(row)
    if name == "soak":
        # A child counts as replaced only when the pool replaced it (the log's count).
        replaced = sum(row["replaced"] for row in rows)
        assert replaced == report["outcome"]["children_recycled_for_memory"], rows


def test_the_fleet_benchmarks_verification_scenario_runs_at_its_tiny_size(
    tmp_path: Path, redis_url: str
) -> None:
    require_postgres()
    require_redis()
    import redis

    with redis.Redis.from_url(redis_url) as client:
        client.delete(OWNER_KEY)
    out = tmp_path / "report.json"
    argv = [sys.executable, str(BENCHMARKS / "fleet.py"), "--tiny", "--boot-seconds", "2"]
    argv += ["--redis-url", redis_url, "--json-out", str(out)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["scenario"]["boot_seconds"] == 2.0
    (row,) = report["results"]
    assert {"wall_s", "x_bound", "list_calls_per_verified_server", "return_detect_median_s"} <= set(
        row
    )
    assert (row["verified"], row["servers_rebooted_twice"]) == (300, 0)


def test_the_soak_says_replaced_only_of_a_child_gone_before_its_last_sample() -> None:
    # Given a main process and two children sampled at 0, 60 and 120 s; one child left at 60 s
    sampler = soak.MemorySampler(worker_pid=1, beat_pid=2, every=60)
    sampler.roles = {1: "main", 10: "child", 11: "child", 12: "child"}
    mib = 1024
    sampler.samples = {
        1: [(0.0, 100 * mib, 50 * mib), (60.0, 100 * mib, 50 * mib), (120.0, 100 * mib, 50 * mib)],
        10: [(0.0, 100 * mib, 50 * mib), (60.0, 110 * mib, 60 * mib), (120.0, 120 * mib, 70 * mib)],
        11: [(0.0, 100 * mib, 50 * mib), (60.0, 130 * mib, 80 * mib)],
        12: [(60.0, 97 * mib, 50 * mib), (120.0, 98 * mib, 51 * mib)],
    }
    # When its rows are made for the window that ends at the last sample
    rows = {row["pid"]: row for row in sampler.rows(warmup=0.0, end=120.0)}
    # Then only the child that left is replaced, and the growing one has its slope (MB a minute)
    assert {pid: row["replaced"] for pid, row in rows.items()} == {
        1: False,
        10: False,
        11: True,
        12: False,
    }
    assert rows[10]["rss_slope_mb_per_min"] == 10.0
    assert (rows[10]["rss_start_mb"], rows[10]["rss_end_mb"]) == (100.0, 120.0)


def test_run_all_runs_the_scripts_and_writes_one_summary(tmp_path: Path) -> None:
    out = tmp_path / "all.json"
    argv = [sys.executable, str(BENCHMARKS / "run_all.py"), "--tiny", "--runs", "2"]
    argv += ["--only", "simulator_polls", "--json-out", str(out)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(out.read_text())
    runs = report["scripts"]["simulator_polls"]["runs"]
    assert [r["exit_code"] for r in runs] == [0, 0]
    summary = report["summary"]["simulator_polls"]
    assert summary["results[where=in-process].polls_per_s"]["runs"] == 2


def test_the_summary_gives_medians_with_their_spread() -> None:
    reports = [
        {"scenario": {"n": 1}, "results": [{"pool": "prefork", "wall_s": w}], "flag": True}
        for w in (3.0, 1.0, 2.0)
    ]
    assert run_all.summarize(reports) == {
        "results[pool=prefork].wall_s": {"median": 2.0, "min": 1.0, "max": 3.0, "runs": 3}
    }
