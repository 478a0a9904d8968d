"""A reboot counts when the server is back: verification after each job, and paced waves.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-01

- ``batches.status`` gains ``verifying`` (its job ended, its servers are watched until the
  inventory shows them back); ``server_results.status`` gains ``verifying`` and ``unhealthy``
  (not back within the health timeout, or seen ERROR/SHUTOFF after the reboot).
- ``server_results.verified_at``: when the server was seen back; ``returned_at``: when it came
  back, by the inventory's ``updated`` time (the learned boot time is made of these).
- ``batches.next_check_at``, ``checks``, ``boot_seconds``: the next check of a verifying
  batch, how many were made, and how long its servers took to come back (the learned boot
  time of the project).
- ``reboot_requests``: ``verify``, ``health_timeout``, ``health_check`` (a TCP or HTTP probe),
  ``soak_seconds`` (a pause after each verified batch), and the final count
  ``servers_unhealthy``; ``soak_until``, before which no batch of the request is released
  (a pause after each verified batch).
- The partial index of held servers covers ``verifying`` rows too: a server being verified in
  one request is not sent by another.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0011"
down_revision: str | Sequence[str] | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BATCH_STATES = (
    "pending",
    "submitting",
    "submitted",
    "succeeded",
    "failed",
    "partially_failed",
    "unknown",
    "rejected",
    "cancelled",
    "timed_out",
    "skipped",
)
SERVER_STATES = ("pending", "succeeded", "failed", "unknown", "cancelled", "skipped")


def _states(table: str, name: str, values: Sequence[str]) -> None:
    """Swap the CHECK constraint ``name`` of ``table``'s ``status`` for one listing ``values``."""
    with op.batch_alter_table(table) as batch:
        batch.drop_constraint(op.f(f"ck_{table}_{name}"), type_="check")
        batch.create_check_constraint(
            op.f(f"ck_{table}_{name}"), "status IN ('" + "', '".join(values) + "')"
        )


def _held(where: str) -> None:
    """The partial index of server rows another request must not send (worker.db.overlap)."""
    op.drop_index("ix_server_results_pending_server_id", table_name="server_results")
    op.create_index(
        "ix_server_results_pending_server_id",
        "server_results",
        ["server_id"],
        postgresql_where=sa.text(where),
        sqlite_where=sa.text(where),
    )


def upgrade() -> None:
    _states("batches", "batch_status", (*BATCH_STATES, "verifying"))
    _states("server_results", "server_status", (*SERVER_STATES, "verifying", "unhealthy"))
    json = sa.JSON(none_as_null=True).with_variant(
        postgresql.JSONB(none_as_null=True), "postgresql"
    )
    with op.batch_alter_table("server_results") as batch:
        batch.add_column(sa.Column("verified_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("returned_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("batches") as batch:
        batch.add_column(sa.Column("next_check_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("checks", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("boot_seconds", sa.Float(), nullable=True))
    with op.batch_alter_table("batches") as batch:
        batch.alter_column("checks", server_default=None)
    op.create_index("ix_batches_status_next_check_at", "batches", ["status", "next_check_at"])
    _held("status IN ('pending', 'verifying')")
    with op.batch_alter_table("reboot_requests") as batch:
        batch.add_column(sa.Column("verify", sa.Boolean(), nullable=True))
        batch.add_column(sa.Column("health_timeout", sa.Float(), nullable=True))
        batch.add_column(sa.Column("health_check", json, nullable=True))
        batch.add_column(sa.Column("soak_seconds", sa.Float(), nullable=True))
        batch.add_column(sa.Column("soak_until", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(
            sa.Column("servers_unhealthy", sa.Integer(), nullable=False, server_default="0")
        )
    with op.batch_alter_table("reboot_requests") as batch:
        batch.alter_column("servers_unhealthy", server_default=None)


def downgrade() -> None:
    left = (
        op.get_bind()
        .execute(
            sa.text(
                "SELECT (SELECT count(*) FROM server_results WHERE status IN"
                " ('verifying', 'unhealthy'))"
                " + (SELECT count(*) FROM batches WHERE status = 'verifying')"
            )
        )
        .scalar()
    )
    if left:
        raise RuntimeError(
            f"{left} server(s) or batch(es) are verifying or unhealthy, states the older schema "
            "does not know: purge those requests before downgrading"
        )
    with op.batch_alter_table("reboot_requests") as batch:
        batch.drop_column("servers_unhealthy")
        batch.drop_column("soak_until")
        batch.drop_column("soak_seconds")
        batch.drop_column("health_check")
        batch.drop_column("health_timeout")
        batch.drop_column("verify")
    op.drop_index("ix_batches_status_next_check_at", table_name="batches")
    _held("status = 'pending'")
    with op.batch_alter_table("batches") as batch:
        batch.drop_column("boot_seconds")
        batch.drop_column("checks")
        batch.drop_column("next_check_at")
    with op.batch_alter_table("server_results") as batch:
        batch.drop_column("returned_at")
        batch.drop_column("verified_at")
    _states("server_results", "server_status", SERVER_STATES)
    _states("batches", "batch_status", BATCH_STATES)
