"""Nothing a producer or the API sends vanishes: dead letters, split batches, callback queues.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27

- ``dead_letters``: broker messages the worker could not read as tasks, kept with their bytes.
- ``batches.parent_batch_id``: a batch the API refused whole (``BMS.0040``, an unknown server)
  is split in halves to isolate the unknown ids; each split links to the batch it came from.
- ``reboot_requests.notify_queue``: the producer's queue for its completion callback.
- ``reboot_requests.rejected_idempotency_key``: a rejected request keeps the key it came with
  here, not in the unique ``idempotency_key``, so that it does not hold the key.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    tz = sa.DateTime(timezone=True)
    op.create_table(
        "dead_letters",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("received_at", tz, nullable=False),
        sa.Column("queue", sa.String(length=255), nullable=True),
        sa.Column("task", sa.String(length=255), nullable=True),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("raw", sa.LargeBinary(), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dead_letters")),
    )
    op.create_index(
        op.f("ix_dead_letters_received_at"), "dead_letters", ["received_at"], unique=False
    )
    with op.batch_alter_table("reboot_requests") as batch:
        batch.add_column(sa.Column("notify_queue", sa.String(length=255), nullable=True))
        batch.add_column(
            sa.Column("rejected_idempotency_key", sa.String(length=255), nullable=True)
        )
    # Rejected requests stop holding their keys.
    op.execute(
        "UPDATE reboot_requests SET rejected_idempotency_key = idempotency_key,"
        " idempotency_key = NULL WHERE status = 'rejected' AND idempotency_key IS NOT NULL"
    )
    with op.batch_alter_table("batches") as batch:
        batch.add_column(sa.Column("parent_batch_id", sa.Uuid(), nullable=True))
        batch.create_foreign_key(
            "fk_batches_parent_batch_id_batches",
            "batches",
            ["parent_batch_id"],
            ["id"],
            ondelete="CASCADE",
        )
        batch.create_index("ix_batches_parent_batch_id", ["parent_batch_id"])


def downgrade() -> None:
    with op.batch_alter_table("batches") as batch:
        batch.drop_index("ix_batches_parent_batch_id")
        batch.drop_constraint("fk_batches_parent_batch_id_batches", type_="foreignkey")
        batch.drop_column("parent_batch_id")
    with op.batch_alter_table("reboot_requests") as batch:
        batch.drop_column("rejected_idempotency_key")
        batch.drop_column("notify_queue")
    op.drop_index(op.f("ix_dead_letters_received_at"), table_name="dead_letters")
    op.drop_table("dead_letters")
