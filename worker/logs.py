"""``BMSREBOOT_LOG_FORMAT=json``: one JSON object a line, for log shippers.

Each line has ``time`` (UTC, ISO 8601), ``level``, ``logger``, ``process``, ``message`` and,
in a task, ``task`` and ``task_id``; ids the message names (request, batch, job) are also given
as fields (``request_id``, ``batch_id``, ``job_id``) so that a search needs no parsing.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
from typing import Any

_IDS = {
    "request_id": re.compile(r"\brequest ([0-9a-f-]{36})\b"),
    "batch_id": re.compile(r"\bbatch ([0-9a-f-]{36})\b"),
    "job_id": re.compile(r"\bjob ([A-Za-z0-9._-]{8,64})\b"),
}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        line: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "process": record.processName,
            "message": message,
        }
        for key, pattern in _IDS.items():
            found = pattern.search(message)
            if found:
                line[key] = found.group(1)
        task = _current_task()
        if task is not None:
            line["task"], line["task_id"] = task
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def use_json(logger: logging.Logger) -> None:
    """Give every handler of ``logger`` the JSON formatter."""
    for handler in logger.handlers:
        handler.setFormatter(JsonFormatter())


def _current_task() -> tuple[str, str] | None:
    """The task this process is running, if any (name, id)."""
    from celery import current_task

    try:
        task_id = current_task.request.id if current_task else None
    except Exception:
        return None
    return (current_task.name, task_id) if task_id else None
