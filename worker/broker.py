"""The worker's side of the broker: a message we cannot read becomes a dead letter, never a
crash and never a silent drop (``worker.deadletter``).

Two places can meet a malformed message, and both are hooked here without forking Celery or
kombu:

- **The transport**, before Celery sees anything: an entry that is not JSON, a JSON value that
  is not a message envelope, a body that is not valid base64. kombu raises these from inside the
  event loop, and Celery stops the worker ("Unrecoverable error"). Our transports (subclasses of
  kombu's Redis and SQLAlchemy transports, selected by ``broker_transport`` in
  ``worker.celery``) catch them around the point where a raw entry becomes a message.
- **The consumer**, for a well-formed envelope whose task message is not one we can run: no
  ``task`` header, an unknown task, a body that is not ``[args, kwargs, embed]``, keyword
  arguments that are not a mapping, a content type we do not accept (pickle). ``Consumer``
  overrides Celery's handlers for these (which otherwise reject the message, dropping it) and
  guards the task handler itself (whose uncaught errors otherwise stop the worker).

Each becomes one row in ``dead_letters`` with the raw bytes and one log line, and the message
is acknowledged so that it is not redelivered.
"""

from __future__ import annotations

import json
from queue import Empty
from typing import Any

import redis.exceptions as redis_errors
from celery import signals
from celery.exceptions import InvalidTaskError
from celery.worker.consumer import Consumer as CeleryConsumer
from celery.worker.request import Request as CeleryRequest
from kombu.transport import redis as kombu_redis
from kombu.transport import sqlalchemy as kombu_sqlalchemy
from vine import promise

from worker import deadletter
from worker.db.session import get_engine
from worker.names import INTAKE_TASKS, REQUEST_REBOOT
from worker.redis_client import is_sentinel_url
from worker.settings import is_redis_url

# kombu's channels are only partly typed, and we override their private methods: typed as Any.
_CeleryConsumer: Any = CeleryConsumer
_CeleryRequest: Any = CeleryRequest
_RedisChannelBase: Any = kombu_redis.Channel
_RedisTransportBase: Any = kombu_redis.Transport
_SentinelChannelBase: Any = kombu_redis.SentinelChannel
_SentinelTransportBase: Any = kombu_redis.SentinelTransport
_SqlChannelBase: Any = kombu_sqlalchemy.Channel
_SqlTransportBase: Any = kombu_sqlalchemy.Transport


def _engine() -> Any:
    from worker.settings import get_settings

    return get_engine(get_settings().effective_database_url)


def _raw_of(message: Any) -> bytes:
    """The bytes of a kombu message as they came (its body and its envelope)."""
    try:
        envelope = {
            "headers": message.headers,
            "properties": message.properties,
            "content-type": message.content_type,
            "content-encoding": message.content_encoding,
            "body": message.body.decode("utf-8", "backslashreplace")
            if isinstance(message.body, bytes)
            else message.body,
        }
        return json.dumps(envelope, default=repr).encode()
    except Exception:
        return repr(message).encode()


def _queue_of(message: Any) -> str | None:
    info = getattr(message, "delivery_info", None) or {}
    queue = info.get("routing_key") or info.get("queue")
    return None if queue is None else str(queue)


def _task_of(message: Any) -> str | None:
    headers = getattr(message, "headers", None)
    if isinstance(headers, dict) and isinstance(headers.get("task"), str):
        return str(headers["task"])
    return None


def dead_letter_message(message: Any, error: BaseException | str) -> None:
    """Record a delivered message as a dead letter and acknowledge it."""
    deadletter.record(
        _engine(),
        raw=_raw_of(message),
        error=error,
        queue=_queue_of(message),
        task=_task_of(message),
    )
    try:
        message.ack()
    except Exception as exc:  # the channel may be gone; then it is redelivered, and ends here
        deadletter.log.warning("could not acknowledge a dead letter: %s", exc)


class Consumer(_CeleryConsumer):  # type: ignore[misc]
    """Celery's consumer, with every unreadable task message made a dead letter."""

    def on_unknown_message(self, body: Any, message: Any) -> None:
        dead_letter_message(message, "not a task message: no 'task' header")

    def on_unknown_task(self, body: Any, message: Any, exc: BaseException) -> None:
        dead_letter_message(message, f"unknown task: {exc}")

    def on_invalid_task(self, body: Any, message: Any, exc: BaseException) -> None:
        dead_letter_message(message, exc)

    def on_decode_error(self, message: Any, exc: BaseException) -> None:
        dead_letter_message(message, exc)

    def create_task_handler(self, promise: Any = promise) -> Any:
        handler = super().create_task_handler(promise)

        def guarded(message: Any) -> Any:
            try:
                refused = eta_refusal(message)
                if refused is not None:
                    dead_letter_message(message, refused)
                    return None
                return handler(message)
            except Exception as exc:
                # Anything the handler did not expect (a body that is not [args, kwargs,
                # embed], ...) would stop the worker for good: this message ends here.
                dead_letter_message(message, exc)
                return None

        return guarded


#: The header a producer's ETA moves to when a request is recorded at once (``eta_refusal``):
#: intake makes it the request's ``not_before``.
PRODUCER_ETA = "bmsreboot_producer_eta"
#: Beyond the longest countdown the worker ever gives (``countdown_ceiling``), this margin.
ETA_MARGIN = 60.0


def eta_refusal(message: Any) -> str | None:
    """A countdown (ETA) message is held in the worker's memory until it is due, and a worker
    holding ``worker_eta_task_limit`` of them consumes nothing else, polls included: a
    producer's mistake (or abuse) must not hold the pipeline hostage.

    - A request (``bmsreboot.request_reboot``) sent with a countdown is recorded at once: its
      ETA moves to a header intake makes the request's ``not_before`` (no batch is released
      before it), and the message runs now.
    - Intake's other tasks take no countdown from a producer (their own retries carry one:
      ``retries`` > 0): the reason, for a dead letter.
    - Any message due later than the worker ever schedules its own (``countdown_ceiling``) is
      not one of ours: the reason, for a dead letter.

    Returns None when the message goes on to Celery (changed or not)."""
    from datetime import UTC, datetime

    from worker.pipeline.backoff import countdown_ceiling
    from worker.settings import get_settings

    headers = getattr(message, "headers", None)
    if not isinstance(headers, dict) or not isinstance(headers.get("eta"), str):
        return None
    try:
        eta = datetime.fromisoformat(headers["eta"])
    except ValueError:
        return None  # Celery refuses it as an invalid task (a dead letter)
    if eta.tzinfo is None:
        eta = eta.replace(tzinfo=UTC)
    task = headers.get("task")
    ahead = (eta - datetime.now(UTC)).total_seconds()
    if task == REQUEST_REBOOT and not headers.get("retries"):
        headers[PRODUCER_ETA] = eta.isoformat()
        headers["eta"] = None
        return None
    if task in INTAKE_TASKS and not headers.get("retries"):
        return (
            f"{task} takes no countdown or ETA (this one is due {ahead:.0f} s from now): send it "
            "without one"
        )
    limit = countdown_ceiling(get_settings()) + ETA_MARGIN
    if ahead > limit:
        return (
            f"an ETA {ahead:.0f} s from now: this worker never schedules its own messages more "
            f"than {limit:.0f} s ahead, so this one is not its own"
        )
    return None


class CheckedRequest(_CeleryRequest):  # type: ignore[misc]
    """Celery's request, refusing a body whose third part (``embed``: callbacks, chain,
    chord) is not a mapping when the message arrives. Celery itself only finds out in the
    pool, where the run fails and the failure handler fails again on the same ``embed``: the
    message was acknowledged with one log line and nothing else. Refused here, it is an
    invalid task message, which ``Consumer.on_invalid_task`` makes a dead letter. Every task
    of ours names this class (``Request``, in ``tasks``)."""

    def __init__(self, message: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(message, *args, **kwargs)
        body = self._Request__payload  # Celery's decoded [args, kwargs, embed]
        embed = body[2] if isinstance(body, list | tuple) and len(body) == 3 else None
        if embed is not None and not isinstance(embed, dict):
            raise InvalidTaskError(
                f"the message body's third part (embed) must be a mapping, got "
                f"{type(embed).__name__}"
            )


def _dead_letter_entry(raw: Any, queue: Any, error: BaseException) -> None:
    """A raw broker entry that never became a message (nothing to acknowledge)."""
    if isinstance(raw, bytes):
        data = raw
    elif isinstance(raw, str):
        data = raw.encode("utf-8", "backslashreplace")
    else:
        data = json.dumps(raw, default=repr).encode()
    name = queue.decode("utf-8", "replace") if isinstance(queue, bytes) else queue
    deadletter.record(_engine(), raw=data, error=error, queue=None if name is None else str(name))


class _DeliverGuard:
    """Transport mix-in: an entry that fails to become a message is a dead letter. Our
    channels leave the entry's raw text in ``raw_entry`` just before delivering it, so that it
    is kept byte for byte (the event loop is single-threaded)."""

    raw_entry: Any = None

    def _deliver(self, message: Any, queue: Any) -> Any:
        raw, self.raw_entry = self.raw_entry, None
        try:
            return super()._deliver(message, queue)  # type: ignore[misc]
        except (redis_errors.ConnectionError, redis_errors.TimeoutError):
            # Redis went away while the message was handed over (a failover: Celery sends
            # its task-received event through the broker): the message is fine and goes back
            # to its queue with the unacknowledged ones; the consumer reconnects. Not a dead
            # letter. (Not kombu's whole connection_errors: that holds KeyError and OSError,
            # which a malformed entry raises too.)
            raise
        except Exception as exc:
            _dead_letter_entry(raw if raw is not None else message, queue, exc)
            return None


class _GuardedRedisChannel:
    """Channel mix-in for kombu's Redis channels (one Redis, or a primary found through
    Sentinel): a closed connection is said as a connection error, and an entry that is not
    JSON is a dead letter."""

    connection: Any
    client: Any
    connection_errors: Any
    sep: str

    def _connparams(self, asynchronous: bool = False) -> Any:
        # Celery 5.7.0 (celery/celery#10242) closes the connection once more after
        # ``collect()`` dropped its transport. On a Redis that went away (restarted, failed
        # over) kombu's first ``Channel.close()`` stopped on the dead socket before it marked
        # the channel closed, so the second one tries to give the held (countdown) messages
        # back through ``connection.client``, which is None by then: an AttributeError
        # ('NoneType' object has no attribute 'hostname') that is not a connection error, so
        # Celery's consumer does not ignore it and the worker dies ("Unrecoverable error").
        # Said as what it is, a connection error, the consumer ignores it and reconnects.
        # The held messages stay in Redis's unacked hash when Redis kept its data (redelivered
        # after the visibility timeout) and are gone when it did not; either way the audit
        # database still holds their work, which the reconciler re-drives within its grace.
        if self.connection is None or self.connection.client is None:
            raise redis_errors.ConnectionError("the broker connection is closed")
        return super()._connparams(asynchronous=asynchronous)  # type: ignore[misc]

    def _brpop_read(self, **options: Any) -> Any:
        # BRPOP has already taken the entry off the list when kombu parses it: keep the raw
        # reply, so that an entry that is not JSON can be recorded rather than crash the loop.
        client = self.client
        original = client.parse_response
        seen: dict[str, Any] = {}

        def parse_response(*args: Any, **kwargs: Any) -> Any:
            seen["reply"] = reply = original(*args, **kwargs)
            if reply:
                self.connection.raw_entry = reply[1]
            return reply

        client.parse_response = parse_response
        try:
            return super()._brpop_read(**options)  # type: ignore[misc]
        except self.connection_errors:
            raise
        except Empty:
            raise
        except Exception as exc:
            reply = seen.get("reply")
            if not reply:
                raise
            dest, item = reply
            queue = (dest.decode() if isinstance(dest, bytes) else dest).rsplit(self.sep, 1)[0]
            _dead_letter_entry(item, queue, exc)
            return True
        finally:
            del client.parse_response


class RedisChannel(_GuardedRedisChannel, _RedisChannelBase):  # type: ignore[misc]
    pass


class RedisTransport(_DeliverGuard, _RedisTransportBase):  # type: ignore[misc]
    Channel = RedisChannel


class SentinelChannel(_GuardedRedisChannel, _SentinelChannelBase):  # type: ignore[misc]
    """kombu's Sentinel channel (``sentinel://h:26379;sentinel://h2:26379`` with
    ``master_name`` in the transport options): each new connection asks the sentinels for the
    primary, so that after a failover the consumer's reconnect reaches the promoted replica."""


class SentinelTransport(_DeliverGuard, _SentinelTransportBase):  # type: ignore[misc]
    Channel = SentinelChannel


class SqlAlchemyChannel(_SqlChannelBase):  # type: ignore[misc]
    def _get(self, queue: str, timeout: float | None = None) -> Any:
        # kombu's _get marks the row taken, then parses it: a row that is not JSON would
        # raise out of the event loop every poll. Parse it here, and record it if it fails.
        from sqlalchemy import text

        obj = self._get_or_create(queue)
        if self.session.bind.name == "sqlite":
            self.session.execute(text("BEGIN IMMEDIATE TRANSACTION"))
        try:
            msg = (
                self.session.query(self.message_cls)
                .with_for_update()
                .filter(self.message_cls.queue_id == obj.id)
                .filter(self.message_cls.visible != False)  # noqa: E712 - SQL expression
                .order_by(self.message_cls.sent_at)
                .order_by(self.message_cls.id)
                .limit(1)
                .first()
            )
            if msg is None:
                raise Empty()
            msg.visible = False
            payload = msg.payload
        finally:
            self.session.commit()
        try:
            message = json.loads(payload)
            self.connection.raw_entry = payload
            return message
        except Exception as exc:
            _dead_letter_entry(payload, queue, exc)
            raise Empty() from None


class SqlAlchemyTransport(_DeliverGuard, _SqlTransportBase):  # type: ignore[misc]
    Channel = SqlAlchemyChannel


def transport_for(broker_url: str) -> tuple[str, str | None]:
    """The broker URL and our guarded transport for it (None: kombu's own, other brokers).

    kombu takes a ``transport+`` prefix of the URL over an explicit transport, so the
    SQLAlchemy URL loses its ``sqla+`` here: the transport is named instead."""
    if is_sentinel_url(broker_url):
        return broker_url, "worker.broker:SentinelTransport"
    if is_redis_url(broker_url):
        return broker_url, "worker.broker:RedisTransport"
    scheme = broker_url.split("://", 1)[0].lower()
    for prefix in ("sqla+", "sqlalchemy+"):
        if scheme.startswith(prefix):
            return broker_url[len(prefix) :], "worker.broker:SqlAlchemyTransport"
    return broker_url, None


@signals.task_internal_error.connect
def _internal_error(
    sender: Any = None,
    task_id: str | None = None,
    args: Any = None,
    kwargs: Any = None,
    request: Any = None,
    exception: BaseException | None = None,
    **_: Any,
) -> None:
    """A message whose task cannot even start (its keyword arguments are not a mapping, ...)
    fails in the pool, outside our code; Celery then acknowledges it. Record it first."""
    name = getattr(sender, "name", None)
    info = getattr(request, "delivery_info", None) or {}
    if isinstance(request, dict):
        info = request.get("delivery_info") or {}
    raw = json.dumps(
        {"task": name, "id": task_id, "args": args, "kwargs": kwargs}, default=repr
    ).encode()
    deadletter.record(
        _engine(),
        raw=raw,
        error=exception or "the task could not start",
        queue=info.get("routing_key") or info.get("queue"),
        task=name,
    )
