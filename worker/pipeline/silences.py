"""Alertmanager silences while a batch's servers reboot, so that a planned reboot pages nobody.

With ``BMSREBOOT_ALERTMANAGER_URL`` set, and unless its request says ``silence: false``:

- **before its POST** (``worker.pipeline.submit``, before the claim is committed) a batch gets
  one silence of the servers it sends: its matchers from ``BMSREBOOT_SILENCE_MATCHERS``
  (``worker.silence_template``), ``createdBy`` ``bmsreboot``, a comment naming the request and
  the batch, ending after the expected job time (the project's learned job duration, else
  ``BMSREBOOT_POLL_FIRST_DELAY``) and boot time (its learned boot time, else
  ``BMSREBOOT_VERIFY_FIRST_DELAY``) and ``BMSREBOOT_SILENCE_MARGIN``. The claim records its id
  and end on the batch. A batch sent again after a POST that was not accepted updates the
  silence it has. If it cannot be created, one line is logged, ``silence_error`` is recorded
  (``status`` shows it) and the batch is sent all the same, unless
  ``BMSREBOOT_SILENCE_REQUIRED``: then it waits and tries again (it never reboots unsilenced).
- **while the job runs** its end is kept at least half a margin ahead (a slow job), and
  **while the batch verifies** it is moved to the verification deadline plus the margin;
- **an unhealthy server** leaves the silence at once: it is replaced by one without that
  server (``update_silence``; expired if that fails), so that its alerts page;
- **when the batch ends** (``ending.batch_ended``: its servers verified, its job over with
  verification off, or any other end) it is expired (``DELETE /api/v2/silence/{id}``), and
  ``silence_ends_at`` becomes the moment it was. The reconciler expires the silences of
  batches that ended while no worker could (:func:`expire_ended`).

A silence starts at the real time of the call (``utcnow``, which Alertmanager goes by); its
end is reckoned on the steps' clock (``Runtime.now``), as the deadlines it follows are. The
two are one clock in a worker; a test moves the second.

Every Alertmanager call is made outside any open transaction: what it needs is read and
committed first, then the call, then what it answered is recorded (as with the BMS API). No
row's ``updated_at`` moves for a silence: that column tells how old a claim or a check is.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update

from worker.bms.models import ServerDetails
from worker.censor import mask_url_credentials
from worker.db.models import Batch, RebootRequest
from worker.db.queries import learned_boot_seconds, learned_job_duration
from worker.db.session import after_commit, unit_of_work
from worker.db.states import TERMINAL_BATCH_STATES, BatchStatus
from worker.monitoring import AlertmanagerClient, Matcher, MonitoringError, SilenceNotFound
from worker.pipeline.inventory import (
    InventoryBusy,
    InventoryRefused,
    InventoryUnavailable,
    server_states,
)
from worker.pipeline.runtime import Runtime, log, utcnow
from worker.silence_template import Target, needs_inventory, render

CREATED_BY = "bmsreboot"
#: What keeps a silence from being made: Alertmanager's answer (or none), a template with no
#: value for a server, the inventory unreadable when the template needs names or addresses.
_FAILURES = (MonitoringError, ValueError, InventoryBusy, InventoryUnavailable, InventoryRefused)


@dataclass(frozen=True)
class Planned:
    """What the claim records of a batch's silence: the one made (``silence_id``, ``ends_at``;
    ``created``: a new id the batch does not hold yet), or why none could be (``error``)."""

    silence_id: str | None = None
    ends_at: datetime | None = None
    error: str | None = None
    created: bool = False

    def columns(self) -> dict[str, Any]:
        if self.error is not None:
            return {"silence_error": self.error[:1000]}
        return {
            "silence_id": self.silence_id,
            "silence_ends_at": self.ends_at,
            "silence_error": None,
        }


def comment(request_id: uuid.UUID, index: int, servers: int) -> str:
    return f"bmsreboot: request {request_id} batch {index} ({servers} servers rebooting)"


def before_post(
    rt: Runtime,
    batch_id: uuid.UUID,
    server_ids: Sequence[str],
    states: Mapping[str, ServerDetails | None] | None,
) -> Planned | None:
    """Silence the servers a batch is about to send (``states``: the pre-flight read, if it
    ran). None: no silence is wanted (no Alertmanager, or the request opted out)."""
    am = rt.alertmanager()
    if am is None:
        return None
    with unit_of_work(rt.engine) as session:
        batch = session.get_one(Batch, batch_id)
        request = session.get_one(RebootRequest, batch.request_id)
        if not request.silence:
            return None
        project_id, index, old = batch.project_id, batch.index, batch.silence_id
        request_id = request.id
        job = learned_job_duration(session, project_id, rt.settings.poll_history)
        boot = learned_boot_seconds(session, project_id, rt.settings.poll_history)
    now = rt.now()
    expected = (job if job is not None else rt.settings.poll_first_delay) + (
        boot if boot is not None else rt.settings.verify_first_delay
    )
    ends_at = now + timedelta(seconds=expected + rt.settings.silence_margin)
    text = comment(request_id, index, len(server_ids))
    try:
        matchers = render(
            rt.settings.silence_matchers, _targets(rt, project_id, server_ids, states)
        )
        silence_id = _put(am, old, matchers, utcnow(), ends_at, text)
    except _FAILURES as exc:
        error = f"silence not created: {mask_url_credentials(str(exc))}"
        log.warning("batch %s: %s", batch_id, error)
        return Planned(error=error)
    log.info("batch %s: silence %s until %s", batch_id, silence_id, ends_at.isoformat())
    return Planned(silence_id, ends_at, created=silence_id != old)


def _put(
    am: AlertmanagerClient,
    old: str | None,
    matchers: list[Matcher],
    now: datetime,
    ends_at: datetime,
    text: str,
) -> str:
    """Create the silence, or update the one the batch has (a batch sent again)."""
    if old is not None:
        try:
            return am.update_silence(old, matchers, now, ends_at, CREATED_BY, text)
        except SilenceNotFound:
            pass  # Alertmanager lost it (or it was purged): a new one
    return am.create_silence(matchers, now, ends_at, CREATED_BY, text)


def _targets(
    rt: Runtime,
    project_id: str,
    server_ids: Sequence[str],
    states: Mapping[str, ServerDetails | None] | None,
) -> list[Target]:
    """The servers as the template needs them: their ids alone, or (``{names}``, ``{ips}``)
    with what the inventory says, read now (through the list budget) unless given."""
    if not needs_inventory(rt.settings.silence_matchers):
        return [Target(sid) for sid in server_ids]
    if states is None or any(sid not in states for sid in server_ids):
        states = server_states(rt, project_id, server_ids)
    return [_target(sid, states.get(sid)) for sid in server_ids]


def _target(server_id: str, server: ServerDetails | None) -> Target:
    if server is None:
        return Target(server_id)
    return Target(server_id, server.name or None, server.first_fixed_ipv4())


def discard(planned: Planned | None, rt: Runtime) -> None:
    """The batch was not claimed after all (another worker has it, or nothing is left to
    send): a silence made for it here and recorded nowhere is expired."""
    am = rt.alertmanager()
    if planned is None or not planned.created or planned.silence_id is None or am is None:
        return
    try:
        am.expire(planned.silence_id)
    except MonitoringError as exc:
        log.warning(
            "silence %s of an unclaimed batch not expired: %s",
            planned.silence_id,
            mask_url_credentials(str(exc)),
        )


def _failed(rt: Runtime, batch_id: uuid.UUID, silence_id: str, what: str, exc: Exception) -> None:
    error = f"{what}: {mask_url_credentials(str(exc))}"
    log.warning("batch %s: silence %s %s", batch_id, silence_id, error)
    _record_in(rt, batch_id, silence_id, silence_error=error)


def _record_in(rt: Runtime, batch_id: uuid.UUID, current: str, **values: Any) -> None:
    """Record what Alertmanager answered about the batch's silence ``current`` (if it is
    still the batch's), without moving ``updated_at``."""
    if "silence_error" in values and values["silence_error"] is not None:
        values["silence_error"] = values["silence_error"][:1000]
    with unit_of_work(rt.engine) as session:
        session.execute(
            update(Batch)
            .where(Batch.id == batch_id, Batch.silence_id == current)
            .values(**values)
            .execution_options(synchronize_session=False)
        )


# --- the end of a batch ----------------------------------------------------------------------


def after_end(batch: Batch, rt: Runtime) -> None:
    """``batch`` has ended (in the open unit of work): its silence, if one is still running,
    is expired once that unit has committed."""
    if batch.silence_id is None or batch.silence_ends_at is None:
        return
    if batch.silence_ends_at <= rt.now() or rt.alertmanager() is None:
        return
    batch_id, silence_id = batch.id, batch.silence_id
    after_commit(lambda: expire(rt, batch_id, silence_id))


def expire(rt: Runtime, batch_id: uuid.UUID, silence_id: str) -> bool:
    """Expire the batch's silence now and record it (``silence_ends_at``: now). False when
    Alertmanager could not be told (recorded in ``silence_error``; the reconciler tries
    again)."""
    am = rt.alertmanager()
    if am is None:
        return False
    try:
        am.expire(silence_id)
    except SilenceNotFound:
        pass  # nothing of it left to silence anything
    except MonitoringError as exc:
        _failed(rt, batch_id, silence_id, "not expired", exc)
        return False
    _record_in(rt, batch_id, silence_id, silence_ends_at=rt.now(), silence_error=None)
    log.info("batch %s: silence %s expired", batch_id, silence_id)
    return True


def expire_ended(rt: Runtime, limit: int) -> int:
    """The reconciler's part: expire the silences still running of batches that ended more
    than ``BMSREBOOT_RECONCILE_GRACE`` seconds ago (their worker was down, or Alertmanager
    was when they ended). Returns how many were expired."""
    if rt.alertmanager() is None:
        return 0
    now = rt.now()
    with unit_of_work(rt.engine) as session:
        rows = session.execute(
            select(Batch.id, Batch.silence_id)
            .where(
                Batch.silence_id.is_not(None),
                Batch.silence_ends_at > now,
                Batch.status.in_(TERMINAL_BATCH_STATES),
                Batch.finished_at < now - timedelta(seconds=rt.settings.reconcile_grace),
            )
            .limit(limit)
        ).all()
    expired = 0
    for batch_id, silence_id in rows:
        if not expire(rt, batch_id, str(silence_id)):
            break  # Alertmanager refuses or is down: not one timeout per row; the next run
        expired += 1
    return expired


# --- while the batch is out ------------------------------------------------------------------


def _current(
    rt: Runtime, batch_id: uuid.UUID, status: BatchStatus
) -> tuple[str, datetime, str | None] | None:
    """The batch's silence (id, end, error) if it has one and is still ``status``."""
    with unit_of_work(rt.engine) as session:
        row = session.execute(
            select(Batch.silence_id, Batch.silence_ends_at, Batch.silence_error).where(
                Batch.id == batch_id, Batch.status == status
            )
        ).one_or_none()
    if row is None or row[0] is None or row[1] is None:
        return None
    return str(row[0]), row[1], row[2]


def keep(
    rt: Runtime,
    batch_id: uuid.UUID,
    silence_id: str | None,
    ends_at: datetime | None,
    until: datetime,
) -> None:
    """Make the batch's silence end no sooner than ``until`` (one call, only when it would)."""
    am = rt.alertmanager()
    if am is None or silence_id is None or ends_at is None or ends_at >= until:
        return
    try:
        new_id = am.extend(silence_id, until)
    except MonitoringError as exc:
        _failed(rt, batch_id, silence_id, "not extended", exc)
        return
    _record_in(
        rt, batch_id, silence_id, silence_id=new_id, silence_ends_at=until, silence_error=None
    )


def while_running(
    rt: Runtime, batch_id: uuid.UUID, silence_id: str | None, ends_at: datetime | None
) -> None:
    """A poll found the batch's job still running: its silence keeps at least half a margin
    ahead (a job slower than expected must not page)."""
    margin = rt.settings.silence_margin
    now = rt.now()
    if ends_at is not None and ends_at - now < timedelta(seconds=margin / 2):
        keep(rt, batch_id, silence_id, ends_at, now + timedelta(seconds=margin))


def while_verifying(
    rt: Runtime,
    batch_id: uuid.UUID,
    *,
    deadline: datetime,
    left: Sequence[str],
    states: Mapping[str, ServerDetails | None],
    dropped: Sequence[str],
) -> None:
    """A check of the verifying batch is booked, servers ``left`` still verifying: its silence
    ends at the verification deadline plus the margin, and covers ``left`` only once a server
    was found unhealthy (``dropped``), so that its alerts page now."""
    if rt.alertmanager() is None:
        return
    current = _current(rt, batch_id, BatchStatus.VERIFYING)
    if current is None:
        return
    silence_id, ends_at, error = current
    if ends_at <= rt.now():
        return  # expired (an unhealthy server's) or run out: never revived while verifying
    until = deadline + timedelta(seconds=rt.settings.silence_margin)
    if dropped or (error is not None and error.startswith("unhealthy")):
        _without(rt, batch_id, silence_id, left, states, max(ends_at, until), len(dropped))
    else:
        keep(rt, batch_id, silence_id, ends_at, until)


def _without(
    rt: Runtime,
    batch_id: uuid.UUID,
    silence_id: str,
    left: Sequence[str],
    states: Mapping[str, ServerDetails | None],
    until: datetime,
    dropped: int,
) -> None:
    """Replace the silence by one of ``left`` only; if that cannot be done, expire it (the
    servers still booting may page: an unhealthy one must)."""
    am = rt.alertmanager()
    assert am is not None
    with unit_of_work(rt.engine) as session:
        batch = session.get_one(Batch, batch_id)
        request_id, index, project_id = batch.request_id, batch.index, batch.project_id
    try:
        matchers = render(rt.settings.silence_matchers, _targets(rt, project_id, left, states))
        new_id = am.update_silence(
            silence_id, matchers, utcnow(), until, CREATED_BY, comment(request_id, index, len(left))
        )
    except _FAILURES as exc:
        log.warning(
            "batch %s: silence %s could not leave its %d unhealthy server(s) out (%s): expiring it",
            batch_id,
            silence_id,
            dropped,
            mask_url_credentials(str(exc)),
        )
        if expire(rt, batch_id, silence_id):
            return
        # Neither: the next check tries again (the error says so).
        _record_in(
            rt,
            batch_id,
            silence_id,
            silence_error=f"unhealthy servers still silenced: {mask_url_credentials(str(exc))}",
        )
        return
    _record_in(
        rt, batch_id, silence_id, silence_id=new_id, silence_ends_at=until, silence_error=None
    )
    log.info(
        "batch %s: silence %s replaced by %s without %d unhealthy server(s)",
        batch_id,
        silence_id,
        new_id,
        dropped,
    )
