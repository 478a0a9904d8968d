"""Health checks once the inventory shows a server back: a TCP connect or an HTTP GET.

A request's ``health_check`` is ``{"tcp_port": 22}`` (a TCP connect to the server's first fixed
IPv4 address, as Ansible's ``wait_for_connection`` does) or ``{"http_url":
"http://{ip}:9100/-/healthy"}`` (a 2xx answer is healthy; ``{ip}``, ``{id}`` and ``{name}`` are
filled in). Each probe is one short attempt (``BMSREBOOT_PROBE_TIMEOUT``), never a wait in a
loop: a failed probe is tried again at the batch's next check, until its health timeout. The
probes of one check run side by side (``CONCURRENCY`` at once), so a batch of 1000 servers is
probed in about the time of the slowest of them, not the sum.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import requests

from worker.bms.models import ServerDetails

#: Probes of one check at once.
CONCURRENCY = 32


def probe(check: Mapping[str, Any], server: ServerDetails, timeout: float) -> str | None:
    """Why the server fails the probe (None: it passes)."""
    ip = server.first_fixed_ipv4()
    if "tcp_port" in check:
        if ip is None:
            return "no fixed IPv4 address to probe"
        port = int(check["tcp_port"])
        try:
            with socket.create_connection((ip, port), timeout=timeout):
                return None
        except OSError as exc:
            return f"TCP {ip}:{port}: {exc.strerror or type(exc).__name__}"
    url = str(check["http_url"])
    if "{ip}" in url and ip is None:
        return "no fixed IPv4 address to probe"
    url = url.replace("{ip}", ip or "").replace("{id}", server.id).replace("{name}", server.name)
    try:
        # Our operator's own URL for their own server: no redirects followed, a short timeout.
        answer = requests.get(url, timeout=timeout, allow_redirects=False)
    except requests.RequestException as exc:
        return f"HTTP {url}: {type(exc).__name__}"
    if 200 <= answer.status_code < 300:
        return None
    return f"HTTP {url}: {answer.status_code}"


def probe_all(
    check: Mapping[str, Any], servers: list[ServerDetails], timeout: float
) -> dict[str, str | None]:
    """Each server's probe result (None: it passes), by id, the probes side by side."""
    if not servers:
        return {}
    with ThreadPoolExecutor(min(CONCURRENCY, len(servers)), "bmsreboot-probe") as pool:
        results = pool.map(lambda s: probe(check, s, timeout), servers)
        return {server.id.lower(): result for server, result in zip(servers, results, strict=True)}
