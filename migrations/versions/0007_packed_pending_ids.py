"""A batch keeps its server ids packed until it is claimed: intake writes no server rows.

``batches.pending_ids`` holds the batch's server ids, 16 bytes each, until its
``server_results`` rows are written (when the batch is first claimed for submission or
settled). Batches recorded before this revision already have their rows and keep NULL here.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-27
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("batches", sa.Column("pending_ids", sa.LargeBinary(), nullable=True))


def downgrade() -> None:
    held = (
        op.get_bind()
        .execute(sa.text("SELECT count(*) FROM batches WHERE pending_ids IS NOT NULL"))
        .scalar()
    )
    if held:
        # Dropping the column would lose those batches' servers.
        raise RuntimeError(
            f"{held} batch(es) still hold their server ids packed: let their requests finish "
            "(or cancel them) before downgrading"
        )
    op.drop_column("batches", "pending_ids")
