"""Alertmanager silences while servers reboot.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-15

- ``reboot_requests.silence``: whether the request's batches are silenced (a request's
  ``silence: false`` opts out); true for the requests recorded before.
- ``batches.silence_id``, ``silence_ends_at``, ``silence_error``: the batch's silence, when it
  ends (the moment it was expired, once it is), and why one could not be created, extended or
  expired; an index on ``silence_id`` for the reconciler (silences of ended batches).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | Sequence[str] | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("reboot_requests") as batch:
        batch.add_column(
            sa.Column("silence", sa.Boolean(), nullable=False, server_default=sa.true())
        )
    with op.batch_alter_table("reboot_requests") as batch:
        batch.alter_column("silence", server_default=None)
    with op.batch_alter_table("batches") as batch:
        batch.add_column(sa.Column("silence_id", sa.String(64), nullable=True))
        batch.add_column(sa.Column("silence_ends_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("silence_error", sa.Text(), nullable=True))
    op.create_index("ix_batches_silence_id", "batches", ["silence_id"])


def downgrade() -> None:
    op.drop_index("ix_batches_silence_id", table_name="batches")
    with op.batch_alter_table("batches") as batch:
        batch.drop_column("silence_error")
        batch.drop_column("silence_ends_at")
        batch.drop_column("silence_id")
    with op.batch_alter_table("reboot_requests") as batch:
        batch.drop_column("silence")
