"""Requests that name their servers by a selector, and per-request pre-flight checks.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01

- ``reboot_requests.selector``: the selector (tags, name, enterprise project) the request's
  servers were resolved from at intake, for the record (``status`` shows it).
- ``reboot_requests.preflight``: whether each batch's servers are read from the inventory just
  before its POST (None: the deployment's ``BMSREBOOT_PREFLIGHT``).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0010"
down_revision: str | Sequence[str] | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    json = sa.JSON(none_as_null=True).with_variant(
        postgresql.JSONB(none_as_null=True), "postgresql"
    )
    with op.batch_alter_table("reboot_requests") as batch:
        batch.add_column(sa.Column("selector", json, nullable=True))
        batch.add_column(sa.Column("preflight", sa.Boolean(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("reboot_requests") as batch:
        batch.drop_column("preflight")
        batch.drop_column("selector")
