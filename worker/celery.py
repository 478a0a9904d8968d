"""The Celery application: ``celery -A worker worker`` finds ``app`` here.

Every setting below is chosen for "never reboot twice, never lose a request"; each says why.
Per-task policy (acks, retries, time limits) sits on the task declarations in ``tasks``.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from celery import Celery, signals
from kombu import Queue

from worker import censor
from worker.broker import transport_for
from worker.names import QUEUES, ROUTES
from worker.pipeline.backoff import VISIBILITY_SHARE
from worker.settings import ImproperlyConfigured as ImproperlyConfigured  # raised here
from worker.settings import Settings, get_settings, is_redis_url

log = logging.getLogger("bmsreboot.celery")


def longest_countdown(settings: Settings) -> float:
    jitter = 1.0 + settings.poll_jitter
    stale_recheck = (
        settings.connect_timeout + settings.read_timeout + settings.submit_stale_margin + 1
    )
    return max(settings.poll_max_interval, settings.submit_retry_max, stale_recheck) * jitter


def check_timing(settings: Settings) -> None:
    """Refuse settings under which a delayed message could outlive the visibility timeout."""
    limit = settings.visibility_timeout * VISIBILITY_SHARE
    longest = longest_countdown(settings)
    if longest > limit:
        raise ImproperlyConfigured(
            f"the longest countdown ({longest:.0f} s, with jitter) must stay below "
            f"{VISIBILITY_SHARE:.0%} of BMSREBOOT_VISIBILITY_TIMEOUT "
            f"({settings.visibility_timeout} s): lower BMSREBOOT_POLL_MAX_INTERVAL / "
            "BMSREBOOT_SUBMIT_RETRY_MAX or raise the visibility timeout"
        )
    if settings.task_time_limit + longest > settings.visibility_timeout:
        raise ImproperlyConfigured(
            "BMSREBOOT_TASK_TIME_LIMIT plus the longest countdown exceeds the visibility timeout"
        )


def check_broker(settings: Settings) -> None:
    """Refuse a Sentinel broker URL that cannot name its primary."""
    from worker.redis_client import is_sentinel_url, master_name, parse_sentinel_url

    url = settings.effective_broker_url
    if not is_sentinel_url(url):
        return
    try:
        parse_sentinel_url(url)
        master_name(settings.broker_transport_options)
    except ValueError as error:
        raise ImproperlyConfigured(f"BMSREBOOT_BROKER_URL: {error}") from None


def celery_config(settings: Settings) -> dict[str, Any]:
    visibility = {"visibility_timeout": settings.visibility_timeout}
    # kombu's SQLAlchemy transport hands every transport option to create_engine(), which
    # refuses unknown ones: the embedded broker gets none (it has no visibility timeout, and
    # polls its table once a second).
    transport_options = {} if settings.embedded_broker else dict(visibility)
    broker_url, transport = transport_for(settings.effective_broker_url)
    broker_options: dict[str, Any] = dict(transport_options)
    if is_redis_url(broker_url):
        # The operator's (BMSREBOOT_BROKER_TRANSPORT_OPTIONS: Sentinel's master_name, socket
        # timeouts for a DCS switch); the visibility timeout and the order stay ours.
        broker_options = {**settings.broker_transport_options, **broker_options}
        # A worker takes its next message from the first non-empty queue in the order of
        # QUEUES (intake, then submit and release, then poll) instead of kombu's round robin:
        # a new request or a cancel is not queued behind thousands of follow-ups, and a
        # project's release and submits go before polls, which the database times anyway
        # (BENCHMARKS.md, "Thousands of jobs in flight"). The price: a queue is read only while
        # the ones before it are empty, so a flood of requests holds the follow-ups back
        # until it is recorded (run a worker per queue with -Q to keep them apart).
        broker_options["queue_order_strategy"] = "priority"
    return {
        "broker_url": broker_url,
        # kombu's Redis and SQLAlchemy transports, guarded: an entry that cannot become a
        # message is a dead letter, not a crash of the worker (worker.broker).
        "broker_transport": transport,
        # Celery's consumer, guarded the same way for task messages we cannot run.
        "worker_consumer": "worker.broker:Consumer",
        # Results are never read back: the audit database is the record of work.
        "result_backend": None,
        "task_ignore_result": True,
        # JSON: messages are small dicts of ids that any producer can write. msgpack is also
        # accepted, for one thing: a large request's packed server ids as bytes (a million ids
        # are 16 MB as bytes; in JSON they need base64, which kombu's Redis transport then
        # base64-encodes again): see worker.pipeline.producer.send_payload.
        "task_serializer": "json",
        "accept_content": ["json", "msgpack"],
        "result_serializer": "json",
        # Three queues so a flood of polls never starves intake or submission; the default
        # queue stays "celery" so a producer's completion callback is routed as it expects.
        "task_queues": [Queue(name) for name in QUEUES],
        "task_routes": {name: {"queue": queue} for name, queue in ROUTES.items()},
        # Beat (``celery -A worker beat``, or ``worker -B`` on the embedded default) sends the
        # tasks that carry a schedule of their own (``tasks.BEAT``, beside each task).
        "beat_schedule_filename": str(settings.data_dir / "celerybeat-schedule"),
        **beat_scheduler(settings, broker_url),
        "task_default_queue": "celery",
        "task_create_missing_queues": True,
        # One message at a time per process: a prefetched message is a message a dying worker
        # takes with it until the visibility timeout.
        "worker_prefetch_multiplier": 1,
        # Countdown (ETA) messages are not bound by the prefetch window; bound them so thousands
        # of pending polls cannot pile into one worker's memory. A producer's countdown never
        # counts against it: worker.broker.eta_refusal.
        "worker_eta_task_limit": settings.eta_task_limit,
        # A pool child whose peak RSS passed this is replaced after its task (the task ends
        # and is acknowledged first: nothing is lost). A bound on whatever grows in a child
        # that is not ours to fix (BMSREBOOT_MAX_MEMORY_PER_CHILD, BENCHMARKS.md).
        "worker_max_memory_per_child": settings.max_memory_per_child or None,
        "task_time_limit": settings.task_time_limit,
        "task_soft_time_limit": max(settings.task_time_limit - 30, 10),
        # On broker connection loss, an acks-late task can no longer ack and is redelivered to
        # another worker while still running here: cancel it instead (Celery 6 default).
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "broker_connection_retry_on_startup": True,
        # Redis: all three settings, or the shortest wins (celery docs, Redis caveats).
        "broker_transport_options": broker_options,
        "result_backend_transport_options": transport_options,
        "visibility_timeout": settings.visibility_timeout,
        # Flower sees tasks from the moment they are sent, and when they start.
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "task_track_started": True,
        # Give running tasks time to finish and requeue held ETA messages on shutdown.
        "worker_soft_shutdown_timeout": 10.0,
        "worker_enable_soft_shutdown_on_idle": True,
        "worker_hijack_root_logger": False,
    }


def beat_scheduler(settings: Settings, broker_url: str) -> dict[str, Any]:
    """With Redis, beat runs celery-redbeat (``worker.beat``, which also survives a flushed
    Redis): its schedule lives in Redis and a lock makes one of several beat processes the
    leader (``celery -A worker beat`` needs no extra flag); the
    others wait and take over within ``BMSREBOOT_BEAT_LOCK_TIMEOUT`` of the leader's end.
    Otherwise Celery's own persistent scheduler keeps its file in the data dir."""
    from worker.redis_client import redbeat_options

    if not is_redis_url(broker_url):
        return {}
    lock = settings.beat_lock_timeout
    return {
        "beat_scheduler": "worker.beat:Scheduler",
        # redbeat_redis_url set, not left to redbeat's fallback to broker_url (which it says
        # goes away in 2.5.0); its password is masked wherever Celery shows the configuration
        # (worker.censor). For Sentinel, a redis-sentinel:// URL and the sentinels in
        # redbeat_redis_options; for one address, the same socket timeouts as the broker's.
        **redbeat_options(broker_url, settings.broker_transport_options),
        "redbeat_key_prefix": "bmsreboot:beat:",
        "redbeat_lock_key": "bmsreboot:beat:lock",
        "redbeat_lock_timeout": int(lock),
        # The leader renews its lock each loop: loop well within the lock's timeout.
        "beat_max_loop_interval": max(1.0, min(5.0, lock / 4)),
    }


def make_celery_app(settings: Settings | None = None) -> Celery:
    settings = settings or get_settings()
    check_timing(settings)
    check_broker(settings)
    # `celery inspect conf`, Flower's worker page and `celery report` mask every URL's password
    # (Celery's own censoring misses redbeat_redis_url): worker.censor.
    censor.install()
    celery_app = Celery("bmsreboot", include=["tasks", "tasks.webhooks"])
    celery_app.conf.update(celery_config(settings))
    return celery_app


app = make_celery_app()

if "flower" in sys.argv[1:] and get_settings().embedded_broker:
    # Flower needs events and broadcasts, which Celery's SQLAlchemy transport does not carry.
    print(
        "bmsreboot: Flower on the embedded broker shows no worker and no task (its transport "
        "carries no events); use `bmsreboot list` and `bmsreboot watch`, or Redis "
        "(BMSREBOOT_BROKER_URL) to see them here.",
        file=sys.stderr,
    )


@signals.worker_init.connect
def _prepare_database(**_: Any) -> None:
    """The embedded SQLite database is brought to the schema head on start; a configured
    database must be upgraded by the operator (``bmsreboot db upgrade``) and is only checked.

    A worker that cannot use its audit database must not consume anything: every message it
    took would fail and be lost. Celery's signal dispatch logs and swallows an exception
    raised here (and the worker would say ``ready``), so the worker exits instead, with one
    line: ``SystemExit`` is not an ``Exception`` and goes through."""
    from worker.db.session import database_is_current, upgrade_database

    settings = get_settings()
    url = settings.effective_database_url
    if settings.fleet_file is not None:
        _check_fleet(settings, url)
    elif not (settings.ak and settings.sk) and not (settings.iam_user and settings.iam_password):
        log.error(
            "NO CREDENTIALS: every batch this worker submits will fail. Set "
            "HUAWEICLOUD_SDK_AK and HUAWEICLOUD_SDK_SK (or BMSREBOOT_IAM_USER, "
            "BMSREBOOT_IAM_PASSWORD and BMSREBOOT_IAM_DOMAIN) and restart it; for the "
            "simulator, `bmsreboot simulator` prints the lines to export."
        )
    try:
        # The data dir holds beat's schedule file (worker -B) even when the databases are
        # elsewhere.
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        if settings.embedded_database:
            upgrade_database(url)
        elif not database_is_current(url):
            raise ImproperlyConfigured(
                "the audit database is not at the schema head: run `bmsreboot db upgrade`"
            )
    except Exception as exc:
        refuse_to_start(exc, url)


def _check_fleet(settings: Settings, database_url: str) -> None:
    """A fleet file with a mistake stops the worker before it consumes anything: every problem
    is logged (one line each), and the worker ends with the first."""
    from worker.fleet import FleetError, load_fleet

    try:
        fleet = load_fleet(settings.fleet_file or "", settings)
    except FleetError as error:
        for line in error.lines():
            log.critical("fleet file: %s", line)
        refuse_to_start(
            ImproperlyConfigured(f"{error}: see `bmsreboot fleet check {error.path}`"),
            database_url,
        )
        return
    ignored = [
        name
        for name, value in (
            ("BMSREBOOT_BMS_ENDPOINT", settings.bms_endpoint),
            ("BMSREBOOT_IAM_ENDPOINT", settings.iam_endpoint),
        )
        if value
    ]
    if ignored:
        log.warning(
            "%s not used with a fleet file: endpoints come from its [regions] tables",
            " and ".join(ignored),
        )
    log.info(
        "fleet file %s: %d accounts, %d projects in %d regions",
        fleet.path,
        len(fleet.accounts),
        len(fleet.projects),
        len(fleet.regions),
    )
    fleet.close()


def refuse_to_start(exc: BaseException, database_url: str) -> None:
    """End the worker before it consumes anything, with one line that says what to do."""
    from sqlalchemy.engine import make_url

    if isinstance(exc, ImproperlyConfigured):
        why = str(exc)
    else:
        where = make_url(database_url).render_as_string(hide_password=True)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        why = (
            f"cannot use the audit database {where} ({type(exc).__name__}: {first[:300]}): "
            "check BMSREBOOT_DATABASE_URL and that the database answers"
        )
    log.critical("bmsreboot worker not started: %s", why)
    raise SystemExit(f"bmsreboot: the worker did not start: {why}")


@signals.after_setup_logger.connect
@signals.after_setup_task_logger.connect
def _json_logs(logger: logging.Logger | None = None, **_: Any) -> None:
    """``BMSREBOOT_LOG_FORMAT=json``: one JSON object a line (``worker.logs``)."""
    if logger is not None and get_settings().log_format == "json":
        from worker.logs import use_json

        use_json(logger)


@signals.beat_init.connect
def _prepare_beat(**_: Any) -> None:
    """Beat keeps its schedule file in the data dir, and says at once what is wrong with the
    schedule file (the valid entries run all the same)."""
    settings = get_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    if settings.schedule_file is not None:
        from worker.fleet import served_by
        from worker.schedules import load

        scope, unread = served_by(settings)
        if unread:
            log.error("fleet file: %s", unread)
        entries, problems = load(settings.schedule_file, settings.schedule_ids_dir, scope)
        for problem in problems:
            log.error("schedule file: %s (this entry is not run; the others are)", problem)
        log.info(
            "schedules: %d entries from %s (%d enabled)",
            len(entries),
            settings.schedule_file,
            sum(e.enabled for e in entries),
        )


@signals.worker_process_init.connect
def _fresh_connections(**_: Any) -> None:
    """A forked child must not share the parent's database connections."""
    from worker.db.session import get_engine

    get_engine(get_settings().effective_database_url).dispose(close=False)


@signals.worker_process_init.connect
def _diagnostics(**_: Any) -> None:
    """``BMSREBOOT_TRACEMALLOC_DIR`` (a diagnostic, off by default): the child traces its
    allocations and reports what grows (``worker.diagnostics``)."""
    settings = get_settings()
    if settings.tracemalloc_dir is not None:
        from worker.diagnostics import trace_memory

        trace_memory(settings.tracemalloc_dir, settings.tracemalloc_interval)


@signals.worker_process_shutdown.connect
def _say_why_a_child_leaves(pid: int = 0, exitcode: int | None = None, **_: Any) -> None:
    """A pool child past ``BMSREBOOT_MAX_MEMORY_PER_CHILD`` leaves after its task (billiard's
    ``EX_RECYCLE``) and the pool starts another; billiard's own warning goes to a logger nobody
    configures, so without this line a replacement leaves no trace. Sent in the child as it
    exits, with the peak RSS that billiard compared (``ru_maxrss``, KiB on Linux)."""
    import resource

    from billiard.pool import EX_RECYCLE

    limit = get_settings().max_memory_per_child
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if exitcode == EX_RECYCLE and limit and peak > limit:
        log.warning(
            "pool process %d replaced: its peak RSS of %d KiB passed "
            "BMSREBOOT_MAX_MEMORY_PER_CHILD (%d KiB); its last task had ended",
            pid,
            peak,
            limit,
        )
