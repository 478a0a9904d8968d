"""The outbox of webhooks and chat notifications: one row per event and destination.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02

``webhook_deliveries`` is written in the transaction that caused each event and delivered at
least once from there (``worker.webhooks``). Its rows go with their request (ON DELETE CASCADE,
and the retention purge deletes them explicitly), and finished ones also by age. States and
destination kinds are stored by value in VARCHAR with a named CHECK constraint, as elsewhere.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0009"
down_revision: str | Sequence[str] | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    json = sa.JSON(none_as_null=True).with_variant(
        postgresql.JSONB(none_as_null=True), "postgresql"
    )
    op.create_table(
        "webhook_deliveries",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("event_id", sa.Uuid(), nullable=False),
        sa.Column("type", sa.String(length=64), nullable=False),
        sa.Column("request_id", sa.Uuid(), nullable=False),
        sa.Column("document", json, nullable=False),
        sa.Column(
            "kind",
            sa.Enum(
                "webhook",
                "apprise",
                name="destination_kind",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("destination_key", sa.String(length=64), nullable=False),
        sa.Column(
            "status",
            sa.Enum(
                "pending",
                "delivered",
                "failed",
                "stopped",
                name="delivery_status",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("claimed_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_status", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.String(length=300), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["request_id"],
            ["reboot_requests.id"],
            name=op.f("fk_webhook_deliveries_request_id_reboot_requests"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_deliveries")),
        sa.UniqueConstraint(
            "event_id",
            "destination_key",
            name=op.f("uq_webhook_deliveries_event_id_destination_key"),
        ),
    )
    with op.batch_alter_table("webhook_deliveries") as batch:
        batch.create_index(
            batch.f("ix_webhook_deliveries_status_next_attempt_at"),
            ["status", "next_attempt_at"],
            unique=False,
        )
        batch.create_index(
            batch.f("ix_webhook_deliveries_request_id_destination_key_status"),
            ["request_id", "destination_key", "status"],
            unique=False,
        )
        batch.create_index(
            batch.f("ix_webhook_deliveries_created_at"), ["created_at"], unique=False
        )


def downgrade() -> None:
    op.drop_table("webhook_deliveries")
