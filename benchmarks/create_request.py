"""Time recording a large request in the audit database, and writing one batch's server rows.

    .venv/bin/python benchmarks/create_request.py [--servers 1000000] [--sqlite-servers 100000]
        [--batch-size 1000] [--runs 3] [--tiny] [--json-out PATH]

For each engine (PostgreSQL in a database of its own, created and dropped, on the server named
by ``BMSREBOOT_TEST_PG_*``, default postgres@127.0.0.1:5432; SQLite in a temporary file), in a
fresh database migrated to head, it times:

- ``record``: ``create_request`` + commit of one request of N unique servers, packed as intake
  has them (the request row, one row per batch holding its ids packed, one event);
- ``claim``: the claim of one batch (``pending -> submitting``), which writes that batch's
  ``server_results`` rows, + commit: what each API call adds to the write-ahead transaction.

It checks the rows, prints a table and writes JSON. ``--tiny`` records 2,000 servers.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy import func, select

from worker import ids
from worker.db.create import create_request
from worker.db.models import Batch, ServerResult
from worker.db.session import make_engine, unit_of_work, upgrade_database
from worker.db.states import BatchStatus
from worker.db.transitions import transition_batch

HOST = os.environ.get("BMSREBOOT_TEST_PG_HOST", "127.0.0.1")
PORT = int(os.environ.get("BMSREBOOT_TEST_PG_PORT", "5432"))
USER = os.environ.get("BMSREBOOT_TEST_PG_USER", "postgres")


def _admin(sql: str) -> None:
    with psycopg.connect(host=HOST, port=PORT, user=USER, dbname="postgres", autocommit=True) as c:
        c.execute(sql)  # type: ignore[arg-type]  # names below are generated, never user input


def run_once(url: str, packed: bytes, batch_size: int) -> tuple[float, float]:
    """Returns (seconds to record the request, seconds to claim its first batch)."""
    upgrade_database(url)
    engine = make_engine(url)
    try:
        request_id = uuid.uuid4()
        started = time.perf_counter()
        with unit_of_work(engine) as session:
            create_request(
                session,
                request_id=request_id,
                project_id="0123456789abcdef0123456789abcdef",
                packed_ids=packed,
                type="HARD",
                source="benchmark",
                batch_size=batch_size,
                actor="benchmark",
            )
        recorded = time.perf_counter() - started
        with unit_of_work(engine) as session:
            batch_ids = list(
                session.scalars(
                    select(Batch.id).where(Batch.request_id == request_id).order_by(Batch.index)
                )
            )
        started = time.perf_counter()
        with unit_of_work(engine) as session:
            transition_batch(session, batch_ids[0], BatchStatus.SUBMITTING, actor="benchmark")
        claimed = time.perf_counter() - started
        with unit_of_work(engine) as session:
            rows = session.scalar(select(func.count()).select_from(ServerResult))
            held = session.scalar(
                select(func.sum(Batch.size)).where(Batch.pending_ids.is_not(None))
            )
        expected = ids.count(packed)
        assert len(batch_ids) == -(-expected // batch_size), len(batch_ids)
        first = min(batch_size, expected)
        assert (rows, (held or 0) + first) == (first, expected), (rows, held)
        return recorded, claimed
    finally:
        engine.dispose()


def postgres(packed: bytes, batch_size: int) -> tuple[float, float]:
    name = f"bmsreboot_bench_{uuid.uuid4().hex[:12]}"
    _admin(f'CREATE DATABASE "{name}"')
    try:
        return run_once(f"postgresql+psycopg://{USER}@{HOST}:{PORT}/{name}", packed, batch_size)
    finally:
        _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def sqlite(packed: bytes, batch_size: int) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as directory:
        return run_once(f"sqlite:///{Path(directory) / 'audit.db'}", packed, batch_size)


def measure(
    engine: str, run: Callable[[bytes, int], tuple[float, float]], servers: int, args: Any
) -> dict[str, Any]:
    packed = os.urandom(servers * ids.SIZE)  # random UUID values: unique in practice
    results = [run(packed, args.batch_size) for _ in range(args.runs)]
    record = [r for r, _ in results]
    claim = [c for _, c in results]
    return {
        "engine": engine,
        "servers": servers,
        "batch_size": args.batch_size,
        "runs": args.runs,
        "record_s": record,
        "record_median_s": statistics.median(record),
        "claim_s": claim,
        "claim_median_s": statistics.median(claim),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", type=int, default=1_000_000, help="PostgreSQL request")
    parser.add_argument("--sqlite-servers", type=int, default=100_000, help="SQLite request")
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tiny", action="store_true", help="2,000 servers, one run")
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()
    if args.tiny:
        args.servers = args.sqlite_servers = 2000
        args.runs = 1
    rows = [
        measure("postgresql", postgres, args.servers, args),
        measure("sqlite", sqlite, args.sqlite_servers, args),
    ]
    print(f"record a request (create_request + commit), batches of {args.batch_size}:")
    print(
        f"  {'engine':<11} {'servers':>10} {'record, median (min-max)':>28} {'claim 1 batch':>15}"
    )
    for row in rows:
        spread = f"{min(row['record_s']):.2f}-{max(row['record_s']):.2f}"
        print(
            f"  {row['engine']:<11} {row['servers']:>10,} "
            f"{row['record_median_s']:>12.2f} s ({spread:>9} s) "
            f"{row['claim_median_s'] * 1000:>11.1f} ms"
        )
    if args.json_out:
        args.json_out.write_text(json.dumps({"scenario": "create_request", "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
