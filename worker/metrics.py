"""Prometheus metrics: counters shared by every worker process, an exporter that reads them and
the audit database.

Workers count into one store (a Redis hash when the broker is Redis, else the audit database's
``metric_counters``), so the counters add up across every worker process and machine and
survive a restart of the exporter. ``bmsreboot metrics --port PORT`` serves them, with gauges
read from the audit database at each scrape. The names are fixed, for dashboards and alerts:

- ``bmsreboot_requests{status}``, ``bmsreboot_servers{status}`` (gauges);
- ``bmsreboot_batches_in_flight`` (gauge: ``submitting`` or ``submitted``);
- ``bmsreboot_api_calls_total{route,code}`` (``route`` = action | job | list | token, ``code`` = the
  HTTP status, or ``none`` when no answer came);
- ``bmsreboot_api_throttled_total{route}``;
- ``bmsreboot_budget_wait_seconds`` (histogram: how long a call waited for its budget slot);
- ``bmsreboot_polls_per_job`` and ``bmsreboot_detection_delay_seconds`` (histograms, observed
  when a job ends: its GETs, and the time from its own end to the audit database knowing it);
- ``bmsreboot_oldest_unfinished_batch_seconds`` (gauge), ``bmsreboot_dead_letters`` (gauge);
- ``bmsreboot_requests_gated`` (gauge: requests running whose alert gate is closed now);
- ``bmsreboot_webhook_deliveries_total{outcome}`` (``outcome`` = delivered | retry | failed |
  stopped: webhook and chat attempts by what came of them, ``worker.webhooks``);
- ``bmsreboot_reconcile_last_run_timestamp_seconds`` (gauge: the Unix time a reconciler run
  last ended; absent until one has);
- ``bmsreboot_queue_messages{queue}`` (gauge: messages ready on each of the worker's broker
  queues, read from the broker at each scrape; a queue the broker cannot count is left out).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Protocol

from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from worker.settings import is_redis_url

log = logging.getLogger("bmsreboot.metrics")

BUDGET_WAIT_BUCKETS = (0.0, 0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
POLLS_BUCKETS = (1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 50.0)
DELAY_BUCKETS = (0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0)
#: Seconds from a job's end to its server seen back (bare metal boots in minutes).
VERIFY_BUCKETS = (15.0, 30.0, 60.0, 120.0, 180.0, 300.0, 450.0, 600.0, 900.0, 1200.0, 1800.0)
HISTOGRAMS = {
    "bmsreboot_budget_wait_seconds": BUDGET_WAIT_BUCKETS,
    "bmsreboot_polls_per_job": POLLS_BUCKETS,
    "bmsreboot_detection_delay_seconds": DELAY_BUCKETS,
    "bmsreboot_verify_seconds": VERIFY_BUCKETS,
}
HASH_KEY = "bmsreboot:metrics"
#: Gauges a worker sets (not adds to): the store keeps the last value written.
RECONCILE_LAST_RUN = "bmsreboot_reconcile_last_run_timestamp_seconds"
#: The routes the client counts calls on (``route_of``); each has a 429 series from the start.
ROUTES = ("action", "job", "list", "token")
#: What an attempt at a webhook or chat delivery came to (``worker.webhooks``).
WEBHOOK_OUTCOMES = ("delivered", "retry", "failed", "stopped")


def _field(name: str, labels: Mapping[str, str]) -> str:
    return json.dumps([name, sorted(labels.items())], separators=(",", ":"))


def _parse(field: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    name, labels = json.loads(field)
    return name, tuple((k, v) for k, v in labels)


class CounterStore(Protocol):
    def incr(self, increments: Mapping[str, float]) -> None: ...

    def set(self, values: Mapping[str, float]) -> None: ...

    def read(self) -> dict[str, float]: ...


class RedisCounters:
    """Counters in a Redis hash, on the primary (``worker.redis_client``)."""

    def __init__(self, url: str, options: Mapping[str, Any] | None = None) -> None:
        from worker.redis_client import redis_client

        self._redis = redis_client(url, options)

    def incr(self, increments: Mapping[str, float]) -> None:
        with self._redis.pipeline(transaction=False) as pipe:
            for field, by in increments.items():
                pipe.hincrbyfloat(HASH_KEY, field, by)
            pipe.execute()

    def set(self, values: Mapping[str, float]) -> None:
        with self._redis.pipeline(transaction=False) as pipe:
            for field, value in values.items():
                pipe.hset(HASH_KEY, field, value)
            pipe.execute()

    def read(self) -> dict[str, float]:
        raw: dict[Any, Any] = self._redis.hgetall(HASH_KEY)
        return {(k.decode() if isinstance(k, bytes) else str(k)): float(v) for k, v in raw.items()}


class DatabaseCounters:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def incr(self, increments: Mapping[str, float]) -> None:
        self._upsert(increments, add=True)

    def set(self, values: Mapping[str, float]) -> None:
        self._upsert(values, add=False)

    def _upsert(self, values: Mapping[str, float], *, add: bool) -> None:
        """One row a key: its value added to the row's (``add``), or written over it."""
        from sqlalchemy.dialects import postgresql, sqlite

        from worker.db.models import MetricCounter
        from worker.db.session import unit_of_work

        dialect = self._engine.dialect.name
        insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
        with unit_of_work(self._engine) as session:
            for field, value in sorted(values.items()):
                stmt = insert(MetricCounter).values(key=field, value=value)
                new = MetricCounter.value + stmt.excluded.value if add else stmt.excluded.value
                session.execute(
                    stmt.on_conflict_do_update(
                        index_elements=[MetricCounter.key], set_={"value": new}
                    )
                )

    def read(self) -> dict[str, float]:
        from worker.db.models import MetricCounter
        from worker.db.session import unit_of_work

        with unit_of_work(self._engine) as session:
            rows = session.execute(select(MetricCounter.key, MetricCounter.value)).all()
            return {key: float(value) for key, value in rows}


def counters_for(
    broker_url: str | None, engine: Engine, options: Mapping[str, Any] | None = None
) -> CounterStore:
    """A Redis hash when the broker is Redis (``options``: its transport options), else the
    audit database."""
    if broker_url is not None and is_redis_url(broker_url):
        return RedisCounters(broker_url, options)
    return DatabaseCounters(engine)


class Metrics:
    """What the pipeline records. Never fails the work it measures: a store that cannot be
    written loses the increment and logs it."""

    def __init__(self, store: CounterStore | None) -> None:
        self._store = store
        self._lock = threading.Lock()
        #: Open ``batched`` blocks, and what they gathered.
        self._depth = 0
        self._pending: dict[str, float] = {}

    @contextlib.contextmanager
    def batched(self) -> Iterator[None]:
        """Gather the increments made inside the block (by any thread: a sweep's API calls
        run side by side) and write them once at its end: one write for a sweep's hundreds
        of calls, not one each."""
        with self._lock:
            self._depth += 1
        try:
            yield
        finally:
            with self._lock:
                self._depth -= 1
                gathered: dict[str, float] | None = None
                if self._depth == 0 and self._pending:
                    gathered, self._pending = self._pending, {}
            if gathered:
                self._write(gathered)

    def _incr(self, increments: Mapping[str, float]) -> None:
        if self._store is None:
            return
        with self._lock:
            if self._depth:
                for field, by in increments.items():
                    self._pending[field] = self._pending.get(field, 0.0) + by
                return
        self._write(increments)

    def _write(self, increments: Mapping[str, float]) -> None:
        assert self._store is not None
        try:
            self._store.incr(increments)
        except Exception as exc:
            log.warning("metrics not recorded (%s: %s)", type(exc).__name__, exc)

    def reconciled(self, at: float) -> None:
        """A reconciler run ended at Unix time ``at``."""
        if self._store is None:
            return
        try:
            self._store.set({_field(RECONCILE_LAST_RUN, {}): at})
        except Exception as exc:
            log.warning("metrics not recorded (%s: %s)", type(exc).__name__, exc)

    def api_call(self, route: str, code: int | None) -> None:
        increments = {
            _field("bmsreboot_api_calls_total", {"route": route, "code": str(code or "none")}): 1.0
        }
        if code == 429:
            increments[_field("bmsreboot_api_throttled_total", {"route": route})] = 1.0
        self._incr(increments)

    def webhook_delivery(self, outcome: str, count: int = 1) -> None:
        """``count`` deliveries came to ``outcome`` (one of ``WEBHOOK_OUTCOMES``)."""
        self._incr({_field("bmsreboot_webhook_deliveries_total", {"outcome": outcome}): count})

    def observe(self, name: str, value: float) -> None:
        buckets = HISTOGRAMS[name]
        increments = {
            _field(f"{name}_bucket", {"le": _le(bound)}): 1.0
            for bound in (*buckets, math.inf)
            if value <= bound
        }
        increments[_field(f"{name}_sum", {})] = value
        increments[_field(f"{name}_count", {})] = 1.0
        self._incr(increments)


def _le(bound: float) -> str:
    return "+Inf" if math.isinf(bound) else repr(float(bound))


def route_of(url: str) -> str | None:
    if "/baremetalservers/action" in url:
        return "action"
    if "/jobs/" in url:
        return "job"
    if "/baremetalservers/" in url:
        return "list"
    if "/auth/tokens" in url:
        return "token"
    return None


def response_hook(metrics: Metrics) -> Any:
    """A ``requests`` response hook that counts every API answer by route and status."""

    def hook(response: Any, *args: Any, **kwargs: Any) -> None:
        route = route_of(getattr(response, "url", "") or "")
        if route is not None:
            metrics.api_call(route, response.status_code)

    return hook


# --- the exporter ----------------------------------------------------------------------------


class Collector:
    """Builds every metric family at scrape: counters and histograms from the shared store,
    gauges from the audit database."""

    def __init__(
        self,
        store: CounterStore,
        engine: Engine,
        queues: Callable[[], Mapping[str, int | None]] | None = None,
    ) -> None:
        self._store = store
        self._engine = engine
        #: Messages ready on each broker queue (None: the broker could not say), or no gauge.
        self._queues = queues

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        values: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        for field, value in self._store.read().items():
            try:
                values[_parse(field)] = value
            except (ValueError, TypeError):
                continue
        calls = CounterMetricFamily(
            "bmsreboot_api_calls",
            "BMS API calls by route and HTTP status",
            labels=["route", "code"],
        )
        throttled = CounterMetricFamily(
            "bmsreboot_api_throttled", "429 answers by route", labels=["route"]
        )
        for route in ROUTES:
            throttled.add_metric([route], 0.0)
        deliveries = CounterMetricFamily(
            "bmsreboot_webhook_deliveries",
            "Webhook and chat delivery attempts by outcome",
            labels=["outcome"],
        )
        outcomes = dict.fromkeys(WEBHOOK_OUTCOMES, 0.0)
        for (name, labels), value in sorted(values.items()):
            label = dict(labels)
            if name == "bmsreboot_api_calls_total":
                calls.add_metric([label.get("route", ""), label.get("code", "")], value)
            elif name == "bmsreboot_api_throttled_total":
                throttled.add_metric([label.get("route", "")], value)
            elif name == "bmsreboot_webhook_deliveries_total":
                outcomes[label.get("outcome", "")] = value
        for outcome, value in outcomes.items():
            deliveries.add_metric([outcome], value)
        yield calls
        yield throttled
        yield deliveries
        for name, buckets in HISTOGRAMS.items():
            counts = [
                (_le(bound), values.get((f"{name}_bucket", (("le", _le(bound)),)), 0.0))
                for bound in (*buckets, math.inf)
            ]
            total = values.get((f"{name}_sum", ()), 0.0)
            yield HistogramMetricFamily(name, _HELP[name], buckets=counts, sum_value=total)
        last_run = values.get((RECONCILE_LAST_RUN, ()))
        if last_run is not None:
            yield GaugeMetricFamily(
                RECONCILE_LAST_RUN, "Unix time a reconciler run last ended", value=last_run
            )
        if self._queues is not None:
            depth = GaugeMetricFamily(
                "bmsreboot_queue_messages", "Messages ready on each broker queue", labels=["queue"]
            )
            for queue, count in self._queues().items():
                if count is not None:
                    depth.add_metric([queue], float(count))
            yield depth
        yield from self._gauges(GaugeMetricFamily)

    def _gauges(self, family: Any) -> Iterator[Any]:
        from worker.db.models import (
            SERVER_COUNT_COLUMNS,
            Batch,
            DeadLetter,
            RebootRequest,
            ServerResult,
            utcnow,
        )
        from worker.db.queries import packed_pending_servers
        from worker.db.session import unit_of_work
        from worker.db.states import (
            ACTIVE_REQUEST_STATES,
            IN_FLIGHT_BATCH_STATES,
            TERMINAL_BATCH_STATES,
            RequestStatus,
            ServerStatus,
        )

        with unit_of_work(self._engine) as session:
            requests = dict(
                session.execute(
                    select(RebootRequest.status, func.count()).group_by(RebootRequest.status)
                ).all()
            )
            finished = session.execute(
                select(
                    *(
                        func.coalesce(func.sum(getattr(RebootRequest, column)), 0)
                        for column in SERVER_COUNT_COLUMNS.values()
                    )
                ).where(RebootRequest.status.not_in(ACTIVE_REQUEST_STATES))
            ).one()
            active = dict(
                session.execute(
                    select(ServerResult.status, func.count())
                    .join(RebootRequest, RebootRequest.id == ServerResult.request_id)
                    .where(RebootRequest.status.in_(ACTIVE_REQUEST_STATES))
                    .group_by(ServerResult.status)
                ).all()
            )
            # Servers of batches not yet claimed have no rows yet (their ids are packed).
            active[ServerStatus.PENDING] = active.get(ServerStatus.PENDING, 0) + (
                session.scalar(select(packed_pending_servers())) or 0
            )
            in_flight = session.scalar(
                select(func.count())
                .select_from(Batch)
                .where(Batch.status.in_(IN_FLIGHT_BATCH_STATES))
            )
            oldest = session.scalar(
                select(func.min(Batch.created_at)).where(Batch.status.not_in(TERMINAL_BATCH_STATES))
            )
            dead = session.scalar(select(func.count()).select_from(DeadLetter))
            gated = session.scalar(
                select(func.count())
                .select_from(RebootRequest)
                .where(
                    RebootRequest.status.in_(ACTIVE_REQUEST_STATES),
                    RebootRequest.stop.is_(None),
                    RebootRequest.gate_closed_since.is_not(None),
                )
            )
        by_request = family("bmsreboot_requests", "Requests by status", labels=["status"])
        for request_status in RequestStatus:
            by_request.add_metric([request_status.value], float(requests.get(request_status, 0)))
        yield by_request
        servers = family("bmsreboot_servers", "Servers by status", labels=["status"])
        done = dict(zip(SERVER_COUNT_COLUMNS, finished, strict=True))
        for status in ServerStatus:
            servers.add_metric(
                [status.value], float(done.get(status, 0)) + float(active.get(status, 0))
            )
        yield servers
        yield family(
            "bmsreboot_batches_in_flight",
            "Batches submitting, submitted or verifying",
            value=in_flight or 0,
        )
        age = (utcnow() - oldest).total_seconds() if oldest is not None else 0.0
        yield family(
            "bmsreboot_oldest_unfinished_batch_seconds",
            "Age of the oldest batch not yet finished",
            value=age,
        )
        yield family(
            "bmsreboot_dead_letters", "Messages moved aside as dead letters", value=dead or 0
        )
        yield family(
            "bmsreboot_requests_gated",
            "Requests whose alert gate is closed now (their next batches held)",
            value=gated or 0,
        )


_HELP = {
    "bmsreboot_budget_wait_seconds": "Seconds a call waited for its API budget slot",
    "bmsreboot_polls_per_job": "GETs per job, observed when the job ends",
    "bmsreboot_detection_delay_seconds": "Seconds from a job's end to the audit DB knowing it",
    "bmsreboot_verify_seconds": "Seconds from a job's end to its server seen back",
}


def serve(
    host: str,
    port: int,
    store: CounterStore,
    engine: Engine,
    queues: Callable[[], Mapping[str, int | None]] | None = None,
) -> Sequence[Any]:
    """Start the exporter's HTTP server (a thread); returns what ``start_http_server`` gives."""
    from prometheus_client import CollectorRegistry, start_http_server

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Collector(store, engine, queues))
    result = start_http_server(port, addr=host, registry=registry)
    return result if isinstance(result, tuple) else (result,)
