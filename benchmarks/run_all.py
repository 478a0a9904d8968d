"""Run every benchmark script, N times each, and summarize: medians with their min-max spread.

    .venv/bin/python benchmarks/run_all.py [--tiny] [--runs 3] [--only fleet,inflight]
        [--redis-url URL] [--json-out PATH]

Every ``benchmarks/*.py`` script but this one and the helper ``measure.py`` runs as its own
subprocess, one after the other (they would compete for the cores otherwise), with
``--json-out`` to a temporary file and, when asked and when the script has them, ``--tiny`` and
``--redis-url``; what a script supports is read from its ``--help``. A script without
``--tiny`` is skipped by a ``--tiny`` run (it would not be tiny); one without ``--json-out``
contributes its exit code and wall time only. Each script's output is printed as it runs.

At the end, each number of each script's JSON (``results`` rows are told apart by their first
field, such as ``contender`` or ``pool``) is printed as the median of the runs with its
minimum and maximum, and everything (every run's JSON and the summary) is written to one JSON
file. The exit code is 1 if any run failed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
NOT_SCRIPTS = {"run_all.py", "measure.py"}


def scripts() -> list[Path]:
    return sorted(p for p in HERE.glob("*.py") if p.name not in NOT_SCRIPTS)


def options_of(script: Path) -> str:
    done = subprocess.run(
        [sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=120
    )
    return done.stdout


def flatten(value: Any, prefix: str = "") -> dict[str, float]:
    """Every number of a JSON report by its path; rows of lists named by their first field."""
    out: dict[str, float] = {}
    if isinstance(value, bool):
        return out
    if isinstance(value, int | float):
        out[prefix] = float(value)
    elif isinstance(value, dict):
        for key, item in value.items():
            out |= flatten(item, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(value, list):
        for n, item in enumerate(value):
            label = str(n)
            if isinstance(item, dict) and item:
                first_key, first = next(iter(item.items()))
                label = f"{first_key}={first}"
            out |= flatten(item, f"{prefix}[{label}]")
    return out


def summarize(reports: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    values: dict[str, list[float]] = {}
    for report in reports:
        for path, number in flatten(report).items():
            if not path.startswith("scenario."):
                values.setdefault(path, []).append(number)
    return {
        path: {
            "median": round(statistics.median(vs), 3),
            "min": round(min(vs), 3),
            "max": round(max(vs), 3),
            "runs": len(vs),
        }
        for path, vs in values.items()
    }


def run_script(
    script: Path, args: argparse.Namespace, tmp: Path, run: int
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """One run: (the run's record, its JSON report or None)."""
    help_text = options_of(script)
    argv = [sys.executable, str(script)]
    if args.tiny:
        argv.append("--tiny")
    out = tmp / f"{script.stem}-{run}.json"
    if "--json-out" in help_text:
        argv += ["--json-out", str(out)]
    if args.redis_url and "--redis-url" in help_text:
        argv += ["--redis-url", args.redis_url]
    print(f"== {script.name}, run {run} of {args.runs}: {' '.join(argv[1:])}", flush=True)
    started = time.monotonic()
    code = subprocess.run(argv, check=False).returncode
    record: dict[str, Any] = {
        "argv": argv[1:],
        "exit_code": code,
        "wall_s": round(time.monotonic() - started, 2),
    }
    report = json.loads(out.read_text()) if code == 0 and out.exists() else None
    if report is None and "--json-out" not in help_text:
        record["note"] = "the script has no --json-out: exit code and wall time only"
    return record, report


def print_summary(summary: dict[str, dict[str, dict[str, float]]]) -> None:
    width = max((len(p) for s in summary.values() for p in s), default=10) + 2
    for name, paths in summary.items():
        print(f"\n{name}: median [min - max] of the runs")
        for path, v in paths.items():
            spread = f"[{v['min']:g} - {v['max']:g}]" if v["min"] != v["max"] else ""
            print(f"  {path:<{width}} {v['median']:>12g} {spread}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="each script at its tiny size")
    parser.add_argument("--runs", type=int, default=1, help="runs of each script")
    parser.add_argument("--only", help="comma list of script names (fleet,inflight,...)")
    parser.add_argument("--redis-url", help="an empty Redis db, for the scripts that take one")
    parser.add_argument("--json-out", type=Path, help="default: a file in the temp directory")
    args = parser.parse_args()
    chosen = scripts()
    if args.only:
        names = {n.strip().removesuffix(".py") for n in args.only.split(",")}
        unknown = names - {p.stem for p in chosen}
        if unknown:
            parser.error(f"no such script: {', '.join(sorted(unknown))}")
        chosen = [p for p in chosen if p.stem in names]
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    json_out = args.json_out or Path(tempfile.gettempdir()) / f"bmsreboot-benchmarks-{stamp}.json"
    everything: dict[str, Any] = {"started": stamp, "tiny": args.tiny, "scripts": {}}
    summary: dict[str, dict[str, dict[str, float]]] = {}
    failed = False
    with tempfile.TemporaryDirectory(prefix="bmsreboot-run-all-") as directory:
        tmp = Path(directory)
        for script in chosen:
            if args.tiny and "--tiny" not in options_of(script):
                print(f"== {script.name}: skipped (no --tiny)")
                everything["scripts"][script.stem] = {"skipped": "no --tiny"}
                continue
            runs, reports = [], []
            for run in range(1, args.runs + 1):
                record, report = run_script(script, args, tmp, run)
                failed |= record["exit_code"] != 0
                runs.append(record | {"report": report})
                if report is not None:
                    reports.append(report)
            everything["scripts"][script.stem] = {"runs": runs}
            if reports:
                summary[script.stem] = summarize(reports)
    everything["summary"] = summary
    print_summary(summary)
    for name, entry in everything["scripts"].items():
        for n, r in enumerate(entry.get("runs", []), 1):
            if r["exit_code"] != 0:
                print(f"FAILED: {name} run {n} exited with {r['exit_code']}")
    json_out.write_text(json.dumps(everything, indent=2) + "\n")
    print(f"\nwritten: {json_out}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
