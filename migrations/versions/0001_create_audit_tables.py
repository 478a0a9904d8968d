"""Create the audit tables: reboot_requests, batches, server_results, events.

Revision ID: 0001
Revises:
Create Date: 2026-11-26

Every migration must work with the code version before it (deploys roll), must not hold locks
for long on big tables (server_results, events), and must run on PostgreSQL and SQLite.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "reboot_requests",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("idempotency_key", sa.String(length=255), nullable=True),
        sa.Column("project_id", sa.String(length=64), nullable=False),
        sa.Column("region", sa.String(length=64), nullable=True),
        sa.Column("endpoint", sa.String(length=255), nullable=True),
        sa.Column(
            "type",
            sa.Enum(
                "HARD",
                "SOFT",
                name="reboot_type",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("source", sa.String(length=255), nullable=False),
        sa.Column("batch_size", sa.Integer(), nullable=False),
        sa.Column("max_in_flight", sa.Integer(), nullable=True),
        sa.Column("canary_size", sa.Integer(), nullable=True),
        sa.Column("failure_threshold", sa.Float(), nullable=True),
        sa.Column("notify_task", sa.String(length=255), nullable=True),
        sa.Column(
            "status",
            sa.Enum(
                "accepted",
                "running",
                "succeeded",
                "partially_failed",
                "failed",
                "halted",
                "cancelled",
                "rejected",
                name="request_status",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("servers_total", sa.Integer(), nullable=False),
        sa.Column("servers_succeeded", sa.Integer(), nullable=False),
        sa.Column("servers_failed", sa.Integer(), nullable=False),
        sa.Column("servers_unknown", sa.Integer(), nullable=False),
        sa.Column("servers_cancelled", sa.Integer(), nullable=False),
        sa.Column("duplicates_removed", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column(
            "rejection_reasons",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reboot_requests")),
        sa.UniqueConstraint("idempotency_key", name=op.f("uq_reboot_requests_idempotency_key")),
    )
    with op.batch_alter_table("reboot_requests", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_reboot_requests_created_at"), ["created_at"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_reboot_requests_status_finished_at"),
            ["status", "finished_at"],
            unique=False,
        )

    op.create_table(
        "batches",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("request_id", sa.Uuid(), nullable=False),
        sa.Column("index", sa.Integer(), nullable=False),
        sa.Column(
            "status",
            sa.Enum(
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
                name="batch_status",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("job_id", sa.String(length=64), nullable=True),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("submit_attempts", sa.Integer(), nullable=False),
        sa.Column("submitted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_polled_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("next_poll_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("deadline_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("poll_count", sa.Integer(), nullable=False),
        sa.Column("last_error_code", sa.String(length=64), nullable=True),
        sa.Column("last_error_message", sa.Text(), nullable=True),
        sa.Column("last_error_status", sa.Integer(), nullable=True),
        sa.Column("last_error_request_id", sa.String(length=255), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["request_id"],
            ["reboot_requests.id"],
            name=op.f("fk_batches_request_id_reboot_requests"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_batches")),
        sa.UniqueConstraint("job_id", name=op.f("uq_batches_job_id")),
        sa.UniqueConstraint("request_id", "index", name=op.f("uq_batches_request_id_index")),
    )
    with op.batch_alter_table("batches", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_batches_request_id_status"), ["request_id", "status"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_batches_status_next_poll_at"), ["status", "next_poll_at"], unique=False
        )

    op.create_table(
        "events",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column(
            "entity",
            sa.Enum(
                "request",
                "batch",
                "server",
                name="event_entity",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("request_id", sa.Uuid(), nullable=False),
        sa.Column("batch_id", sa.Uuid(), nullable=True),
        sa.Column("server_id", sa.String(length=64), nullable=True),
        sa.Column("from_state", sa.String(length=32), nullable=True),
        sa.Column("to_state", sa.String(length=32), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(length=255), nullable=False),
        sa.Column(
            "detail",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.ForeignKeyConstraint(
            ["batch_id"],
            ["batches.id"],
            name=op.f("fk_events_batch_id_batches"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["request_id"],
            ["reboot_requests.id"],
            name=op.f("fk_events_request_id_reboot_requests"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_events")),
    )
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_events_batch_id"), ["batch_id"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_events_request_id_at"), ["request_id", "at"], unique=False
        )

    op.create_table(
        "server_results",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("request_id", sa.Uuid(), nullable=False),
        sa.Column("batch_id", sa.Uuid(), nullable=False),
        sa.Column("server_id", sa.String(length=64), nullable=False),
        sa.Column(
            "status",
            sa.Enum(
                "pending",
                "succeeded",
                "failed",
                "unknown",
                "cancelled",
                name="server_status",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("error_code", sa.String(length=64), nullable=True),
        sa.Column("fail_reason", sa.Text(), nullable=True),
        sa.Column("sub_job_id", sa.String(length=64), nullable=True),
        sa.Column("begin_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("end_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["batch_id"],
            ["batches.id"],
            name=op.f("fk_server_results_batch_id_batches"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["request_id"],
            ["reboot_requests.id"],
            name=op.f("fk_server_results_request_id_reboot_requests"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_server_results")),
    )
    with op.batch_alter_table("server_results", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_server_results_batch_id_status"), ["batch_id", "status"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_server_results_request_id_status"),
            ["request_id", "status"],
            unique=False,
        )
        batch_op.create_index(
            batch_op.f("ix_server_results_server_id_updated_at"),
            ["server_id", "updated_at"],
            unique=False,
        )


def downgrade() -> None:
    with op.batch_alter_table("server_results", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_server_results_server_id_updated_at"))
        batch_op.drop_index(batch_op.f("ix_server_results_request_id_status"))
        batch_op.drop_index(batch_op.f("ix_server_results_batch_id_status"))

    op.drop_table("server_results")
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_events_request_id_at"))
        batch_op.drop_index(batch_op.f("ix_events_batch_id"))

    op.drop_table("events")
    with op.batch_alter_table("batches", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_batches_status_next_poll_at"))
        batch_op.drop_index(batch_op.f("ix_batches_request_id_status"))

    op.drop_table("batches")
    with op.batch_alter_table("reboot_requests", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_reboot_requests_status_finished_at"))
        batch_op.drop_index(batch_op.f("ix_reboot_requests_created_at"))

    op.drop_table("reboot_requests")
