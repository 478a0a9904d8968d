"""Dead letters: broker messages the worker cannot read as tasks, moved aside, never lost.

A message on one of our queues that is not a task message we can run (a body that is not JSON,
not base64, not Celery's ``[args, kwargs, embed]``, a pickle, no ``task`` header, an unknown
task name, keyword arguments that are not a mapping) would otherwise stop the worker for good
(celery/celery#7975: an acks-late poison message is restored and kills it again on every
restart) or be dropped with one log line. Instead the consumer (``worker.broker``) records it
here, with its raw bytes, its queue and the error, logs one line, and acknowledges it: the
worker keeps consuming. A task run that fails for good (an argument it cannot use, an error
no retry can mend, retries exhausted) leaves one too (``tasks``: its name and arguments as
JSON), never an acknowledged message and nothing else. ``bmsreboot dead-letters`` lists them.

The audit database is the dead-letter place: it survives a flushed broker, and operators
already read it. If it cannot be written, the message is logged whole (base64) instead, so
nothing vanishes without a trace.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Engine

from worker.db.models import DeadLetter
from worker.db.session import unit_of_work
from worker.text import clean

log = logging.getLogger("bmsreboot.deadletter")

#: Bytes of a message kept; ``size`` records the whole length.
RAW_LIMIT = 1024 * 1024


def record(
    engine: Engine,
    *,
    raw: bytes,
    error: BaseException | str,
    queue: str | None = None,
    task: str | None = None,
) -> int | None:
    """Store one dead letter and log it once; its id, or None if even that failed (then the
    message is in the log, base64)."""
    what = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    what = clean(what, 2000)
    try:
        with unit_of_work(engine) as session:
            letter = DeadLetter(
                queue=None if queue is None else clean(queue, 255),
                task=None if task is None else clean(task, 255),
                error=what,
                raw=raw[:RAW_LIMIT],
                size=len(raw),
            )
            session.add(letter)
            session.flush()
            letter_id = letter.id
    except Exception as exc:
        log.error(
            "could not record a dead letter (%s) from queue %s: %s; the message, base64: %s",
            type(exc).__name__,
            queue,
            what,
            base64.b64encode(raw[:RAW_LIMIT]).decode(),
        )
        return None
    log.error("dead letter %d from queue %s (%d bytes): %s", letter_id, queue, len(raw), what)
    return letter_id


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes | bytearray):
        return {"base64": base64.b64encode(bytes(value)).decode()}
    return repr(value)


def task_message(task: str, task_id: str | None, args: Any, kwargs: Any) -> bytes:
    """A task run's message as JSON (``task``, ``id``, ``args``, ``kwargs``; bytes as base64),
    what a dead letter of a task that failed for good keeps, so that it can be sent again."""
    body = {"task": task, "id": task_id, "args": args, "kwargs": kwargs}
    return json.dumps(body, default=_jsonable).encode()


def as_dict(letter: DeadLetter, *, with_raw: bool = False) -> dict[str, Any]:
    excerpt = letter.raw[:200].decode("utf-8", errors="backslashreplace")
    out: dict[str, Any] = {
        "id": letter.id,
        "received_at": letter.received_at.isoformat(),
        "queue": letter.queue,
        "task": letter.task,
        "error": letter.error,
        "size": letter.size,
        "excerpt": clean(excerpt),
    }
    if with_raw:
        out["raw_base64"] = base64.b64encode(letter.raw).decode()
    return out


def recent(engine: Engine, limit: int = 100) -> Sequence[DeadLetter]:
    with unit_of_work(engine) as session:
        return list(session.scalars(select(DeadLetter).order_by(DeadLetter.id.desc()).limit(limit)))
