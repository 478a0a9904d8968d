"""``SimulatorServer``: the simulator as an object, serving from a background thread.

    with SimulatorServer(SimulatorConfig(job_duration=0.2)) as sim:
        requests.get(f"{sim.base_url}/_simulator/stats")

It uses the standard library's ``ThreadingHTTPServer`` (one daemon thread per connection,
keep-alive): measured fast enough that clients, not the simulator, bound tests and benchmarks
(``docs/simulator.md``). ``stop()`` also closes idle keep-alive connections, so a client's pooled
socket cannot outlive the server it was talking to.
"""

from __future__ import annotations

import contextlib
import socket
import sys
import threading
from http.server import ThreadingHTTPServer
from types import TracebackType
from typing import Any

from worker.simulator.config import SimulatorConfig
from worker.simulator.handler import SimulatorHandler
from worker.simulator.state import SimulatorState


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256

    def __init__(self, address: tuple[str, int], handler: type[SimulatorHandler]) -> None:
        super().__init__(address, handler)
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.connections_lock:
            self.connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.connections_lock:
            self.connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        with self.connections_lock:
            open_now = list(self.connections)
        for conn in open_now:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that timed out or hung up mid-answer is normal here (slow, drop faults).
        if isinstance(sys.exc_info()[1], ConnectionError | TimeoutError):
            return
        super().handle_error(request, client_address)


class SimulatorServer:
    """A simulator on ``host:port`` (port 0 picks a free one). ``state`` is live, for tests."""

    def __init__(
        self,
        config: SimulatorConfig | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        verbose: bool = False,
    ) -> None:
        self.state = SimulatorState(config)
        self._address = (host, port)
        self._handler = type(
            "BoundSimulatorHandler", (SimulatorHandler,), {"state": self.state, "verbose": verbose}
        )
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def config(self) -> SimulatorConfig:
        return self.state.config

    def configure(self, **knobs: Any) -> SimulatorConfig:
        """Change knobs at runtime, e.g. ``configure(fail_fraction=0.5)``."""
        return self.state.configure(knobs)

    def start(self) -> SimulatorServer:
        """Bind and serve in a background daemon thread; returns self."""
        if self._httpd is None:
            self._httpd = _HTTPServer(self._address, self._handler)
            self._thread = threading.Thread(
                target=self._httpd.serve_forever,
                kwargs={"poll_interval": 0.05},
                name="bmsreboot-simulator",
                daemon=True,
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        httpd.shutdown()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        httpd.server_close()
        httpd.close_connections()

    def _require(self) -> _HTTPServer:
        if self._httpd is None:
            raise RuntimeError("the simulator is not started")
        return self._httpd

    @property
    def host(self) -> str:
        return str(self._require().server_address[0])

    @property
    def port(self) -> int:
        return int(self._require().server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> SimulatorServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
