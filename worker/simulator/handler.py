"""HTTP plumbing: turn a received request into an ``Incoming``, write or withhold the reply.

HTTP/1.1 with keep-alive: every answer carries Content-Length, ``X-Request-Id`` and its content
type. A dropped reply closes the socket without a byte, as a load balancer losing the
connection would. Per-request log lines (``--verbose`` only) name method, path, status and time;
never headers or bodies, which hold signatures, tokens and passwords.
"""

from __future__ import annotations

import contextlib
import socket
import sys
import time
import uuid
from http.server import BaseHTTPRequestHandler
from typing import Any

from worker.simulator import admin, api
from worker.simulator.auth import Incoming
from worker.simulator.state import SimulatorState
from worker.simulator.wire import Reply

#: Bodies above this are refused unread; the gateway's AK/SK limit is 12 MB.
MAX_BODY = 12 * 1024 * 1024


class SimulatorHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server_version = "bmsreboot-simulator"
    sys_version = ""
    # Set per server class by SimulatorServer.
    state: SimulatorState
    verbose: bool = False

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_PUT(self) -> None:
        self._serve()

    def do_DELETE(self) -> None:
        self._serve()

    def do_PATCH(self) -> None:
        self._serve()

    def _serve(self) -> None:
        started = time.monotonic()
        request_id = uuid.uuid4().hex
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY:
            # Chunked bodies are not supported either: clients here always send a length.
            self.close_connection = True
            self._write(Reply(413 if length > 0 else 400, b""), request_id)
            return
        body = self.rfile.read(length) if length else b""
        target = self.path
        request = Incoming(
            method=self.command,
            target=target,
            # Not urlsplit: a target such as "//x" would lose its path to a netloc.
            path=target.partition("?")[0],
            headers={name.lower(): value for name, value in self.headers.items()},
            body=body,
            request_id=request_id,
        )
        reply = admin.handle(self.state, request)
        if reply is None:
            _, reply = api.dispatch(self.state, request)
        if reply.delay:
            time.sleep(reply.delay)
        if reply.drop:
            self._drop()
        else:
            self._write(reply, request_id)
        if self.verbose:
            status = "dropped" if reply.drop else str(reply.status)
            elapsed = (time.monotonic() - started) * 1000
            self.log_message("%s %s %s %.1fms", self.command, request.path, status, elapsed)

    def _write(self, reply: Reply, request_id: str) -> None:
        # One write per answer, headers and body together, and no Nagle: split writes meet the
        # peer's delayed ACK and cost 40 ms per keep-alive request.
        phrase = self.responses.get(reply.status, ("",))[0]
        lines = [
            f"{self.protocol_version} {reply.status} {phrase}",
            f"Content-Type: {reply.content_type}",
            f"Content-Length: {len(reply.body)}",
            f"X-Request-Id: {request_id}",
            *(f"{name}: {value}" for name, value in reply.headers),
        ]
        if self.close_connection:
            lines.append("Connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        self.wfile.write(head + reply.body)

    def _drop(self) -> None:
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def log_message(self, format: str, *args: Any) -> None:
        if self.verbose:
            sys.stderr.write(f"{self.log_date_time_string()} {format % args}\n")
