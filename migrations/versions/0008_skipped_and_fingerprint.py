"""Servers skipped (not sent, and why), and what a producer asked for.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01

- ``server_results.status`` and ``batches.status`` gain ``skipped``: a server not sent because
  another active request holds it (its batch ``skipped`` when none of its servers was left to
  send). States are stored by value in VARCHAR with a named CHECK constraint listing every
  value, so a new state is a constraint swap.
- ``reboot_requests.servers_skipped``: the final count of those.
- ``reboot_requests.fingerprint``: what the producer asked for (servers, type, project,
  policy), which a retry under the same request id or idempotency key must repeat.
- ``reboot_requests.not_before``: no batch is released before it (a producer's own field, or
  the countdown it put on the message).
- ``batches.job_missing_since``: since when the job API has not known the batch's job (it
  ends ``unknown`` after a while instead of being polled until its deadline).
- A partial index of the servers pending in some request, for the question "does another
  request hold this server?" asked at every claim.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
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
)
SERVER_STATES = ("pending", "succeeded", "failed", "unknown", "cancelled")


def _states(table: str, name: str, values: Sequence[str]) -> None:
    """Swap the CHECK constraint ``name`` of ``table``'s ``status`` for one listing ``values``."""
    with op.batch_alter_table(table) as batch:
        batch.drop_constraint(op.f(f"ck_{table}_{name}"), type_="check")
        batch.create_check_constraint(
            op.f(f"ck_{table}_{name}"), "status IN ('" + "', '".join(values) + "')"
        )


def upgrade() -> None:
    _states("batches", "batch_status", (*BATCH_STATES, "skipped"))
    _states("server_results", "server_status", (*SERVER_STATES, "skipped"))
    json = sa.JSON(none_as_null=True).with_variant(
        postgresql.JSONB(none_as_null=True), "postgresql"
    )
    with op.batch_alter_table("reboot_requests") as batch:
        batch.add_column(
            sa.Column("servers_skipped", sa.Integer(), nullable=False, server_default="0")
        )
        batch.add_column(sa.Column("fingerprint", json, nullable=True))
        batch.add_column(sa.Column("not_before", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("reboot_requests") as batch:
        batch.alter_column("servers_skipped", server_default=None)
    op.add_column("batches", sa.Column("job_missing_since", sa.DateTime(timezone=True)))
    op.create_index(
        "ix_server_results_pending_server_id",
        "server_results",
        ["server_id"],
        postgresql_where=sa.text("status = 'pending'"),
        sqlite_where=sa.text("status = 'pending'"),
    )


def downgrade() -> None:
    skipped = (
        op.get_bind()
        .execute(
            sa.text(
                "SELECT (SELECT count(*) FROM server_results WHERE status = 'skipped')"
                " + (SELECT count(*) FROM batches WHERE status = 'skipped')"
            )
        )
        .scalar()
    )
    if skipped:
        raise RuntimeError(
            f"{skipped} server(s) or batch(es) are skipped, a state the older schema does not "
            "know: purge those requests before downgrading"
        )
    op.drop_index("ix_server_results_pending_server_id", table_name="server_results")
    with op.batch_alter_table("batches") as batch:
        batch.drop_column("job_missing_since")
    with op.batch_alter_table("reboot_requests") as batch:
        batch.drop_column("not_before")
        batch.drop_column("fingerprint")
        batch.drop_column("servers_skipped")
    _states("server_results", "server_status", SERVER_STATES)
    _states("batches", "batch_status", BATCH_STATES)
