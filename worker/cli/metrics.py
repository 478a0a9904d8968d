"""``bmsreboot metrics``: the Prometheus exporter."""

from __future__ import annotations

from typing import Any

from worker.cli.errors import ensure_data_dir, port_errors
from worker.cli.params import PORT
from worker.metrics import counters_for, serve


def _metrics_command() -> Any:
    import click

    @click.command("metrics")
    @click.option(
        "--port", type=PORT, default=9808, show_default=True, help="Port to serve on (1-65535)."
    )
    @click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
    def metrics(port: int, host: str) -> None:
        """Serve Prometheus metrics at http://HOST:PORT/metrics (counters shared by every
        worker, gauges from the audit database and the broker's queues)."""
        import signal
        import threading

        from worker.celery import make_celery_app
        from worker.db.session import get_engine
        from worker.names import QUEUES
        from worker.pipeline.tasking import ready_messages
        from worker.settings import get_settings

        settings = get_settings()
        ensure_data_dir(settings)
        engine = get_engine(settings.effective_database_url)
        app = make_celery_app(settings)

        def queues() -> dict[str, int | None]:
            return {queue: ready_messages(app, queue) for queue in QUEUES}

        with port_errors(host, port):
            counters = counters_for(settings.broker_url, engine, settings.broker_transport_options)
            serve(host, port, counters, engine, queues)
        click.echo(f"bmsreboot metrics on http://{host}:{port}/metrics")
        stop = threading.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: stop.set())
        stop.wait()

    return metrics


metrics_cli = _metrics_command()
