"""Time ``create_request`` for a large request on a temporary PostgreSQL database.

    .venv/bin/python benchmarks/create_request.py [--servers 1000000] [--batch-size 1000]
        [--method copy|insert|both] [--sqlite]

It creates its own database (``bmsreboot_bench_<hex>`` on the server named by the
``BMSREBOOT_TEST_PG_*`` variables, default postgres@127.0.0.1:5432), builds the schema with the
migrations, times one ``create_request`` + commit per method (each in a fresh database), checks the
row counts, prints the numbers and drops the database. ``--sqlite`` also times the embedded engine.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import uuid
from pathlib import Path

import psycopg
from sqlalchemy import func, select

from worker.db import create as db_create
from worker.db.models import Batch, ServerResult
from worker.db.session import make_engine, unit_of_work, upgrade_database

HOST = os.environ.get("BMSREBOOT_TEST_PG_HOST", "127.0.0.1")
PORT = int(os.environ.get("BMSREBOOT_TEST_PG_PORT", "5432"))
USER = os.environ.get("BMSREBOOT_TEST_PG_USER", "postgres")


def _admin(sql: str) -> None:
    with psycopg.connect(host=HOST, port=PORT, user=USER, dbname="postgres", autocommit=True) as c:
        c.execute(sql)  # type: ignore[arg-type]  # names below are generated, never user input


def run_once(url: str, servers: list[str], batch_size: int) -> float:
    upgrade_database(url)
    engine = make_engine(url)
    try:
        request_id = uuid.uuid4()
        started = time.perf_counter()
        with unit_of_work(engine) as session:
            db_create.create_request(
                session,
                request_id=request_id,
                project_id="bench",
                server_ids=servers,
                type="HARD",
                source="benchmark",
                batch_size=batch_size,
                actor="benchmark",
            )
        elapsed = time.perf_counter() - started
        with unit_of_work(engine) as session:
            rows = session.scalar(select(func.count()).select_from(ServerResult))
            batches = session.scalar(select(func.count()).select_from(Batch))
        expected_batches = -(-len(servers) // batch_size)
        assert (rows, batches) == (len(servers), expected_batches), (rows, batches)
        return elapsed
    finally:
        engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", type=int, default=1_000_000)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--method", choices=["copy", "insert", "both"], default="both")
    parser.add_argument("--sqlite", action="store_true", help="also time the SQLite engine")
    args = parser.parse_args()
    servers = [str(uuid.uuid4()) for _ in range(args.servers)]  # BMS server ids are UUIDs
    methods = ["copy", "insert"] if args.method == "both" else [args.method]
    print(f"create_request: {args.servers:,} servers, batches of {args.batch_size}")
    for method in methods:
        name = f"bmsreboot_bench_{uuid.uuid4().hex[:12]}"
        _admin(f'CREATE DATABASE "{name}"')
        try:
            db_create.PG_COPY = method == "copy"
            seconds = run_once(
                f"postgresql+psycopg://{USER}@{HOST}:{PORT}/{name}", servers, args.batch_size
            )
            rate = args.servers / seconds
            print(f"  postgresql {method:<6} {seconds:7.2f} s  ({rate:,.0f} servers/s)")
        finally:
            db_create.PG_COPY = True
            _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    if args.sqlite:
        with tempfile.TemporaryDirectory() as directory:
            url = f"sqlite:///{Path(directory) / 'audit.db'}"
            seconds = run_once(url, servers, args.batch_size)
            print(
                f"  sqlite     insert {seconds:7.2f} s  ({args.servers / seconds:,.0f} servers/s)"
            )


if __name__ == "__main__":
    main()
