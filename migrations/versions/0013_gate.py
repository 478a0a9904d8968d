"""The alert gate before each wave: a request's gate and, while it is closed, why and until when.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-02

``reboot_requests`` gains:

- ``gate_query`` (PromQL), ``gate_exclude`` (a regular expression on alertname) and
  ``gate_timeout`` (seconds): the gate recorded at intake (None: no gate);
- ``gate_closed_since``, ``gate_reason``, ``gate_held_until``: while the gate is closed, since
  when, why, and before when the request's batches are not looked at again (all None while
  it is open).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | Sequence[str] | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("reboot_requests") as batch:
        batch.add_column(sa.Column("gate_query", sa.Text(), nullable=True))
        batch.add_column(sa.Column("gate_exclude", sa.Text(), nullable=True))
        batch.add_column(sa.Column("gate_timeout", sa.Float(), nullable=True))
        batch.add_column(sa.Column("gate_closed_since", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("gate_reason", sa.Text(), nullable=True))
        batch.add_column(sa.Column("gate_held_until", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("reboot_requests") as batch:
        batch.drop_column("gate_held_until")
        batch.drop_column("gate_reason")
        batch.drop_column("gate_closed_since")
        batch.drop_column("gate_timeout")
        batch.drop_column("gate_exclude")
        batch.drop_column("gate_query")
