"""A webhook URL per request.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-02

- ``reboot_requests.notify_url``: an http(s) URL that gets the request's webhooks (its
  events in the outbox, ``webhook_deliveries``), besides ``BMSREBOOT_WEBHOOK_URL``. Kept on a
  rejected request too, so that its ``request.rejected`` event reaches it.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | Sequence[str] | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("reboot_requests") as batch:
        batch.add_column(sa.Column("notify_url", sa.String(length=2000), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("reboot_requests") as batch:
        batch.drop_column("notify_url")
