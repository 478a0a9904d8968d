"""The audit database drives the work: release schedule, job timings, callbacks, API budgets.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27

- ``batches.project_id`` (copied from the request) with an index, so that choosing the next
  batch to release is one indexed query; ``next_attempt_at`` and ``released_at`` (the release
  schedule, visible to every worker, the reconciler and ``status``); ``job_ended_at`` and
  ``detected_at`` (the job's own end time, and when we learned it: adaptive polling).
- ``reboot_requests.notified_at``: the completion callback becomes at least once.
- ``api_budgets``: API budgets shared through the audit database when the broker is not Redis.

Existing pending batches are due at once (``next_attempt_at`` = their creation time).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    tz = sa.DateTime(timezone=True)
    with op.batch_alter_table("reboot_requests") as batch:
        batch.add_column(sa.Column("notified_at", tz, nullable=True))
    with op.batch_alter_table("batches") as batch:
        batch.add_column(sa.Column("project_id", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("next_attempt_at", tz, nullable=True))
        batch.add_column(sa.Column("released_at", tz, nullable=True))
        batch.add_column(sa.Column("job_ended_at", tz, nullable=True))
        batch.add_column(sa.Column("detected_at", tz, nullable=True))
    op.execute(
        "UPDATE batches SET project_id = (SELECT project_id FROM reboot_requests"
        " WHERE reboot_requests.id = batches.request_id)"
    )
    op.execute("UPDATE batches SET next_attempt_at = created_at WHERE status = 'pending'")
    with op.batch_alter_table("batches") as batch:
        batch.alter_column("project_id", existing_type=sa.String(length=64), nullable=False)
        batch.create_index("ix_batches_project_id_status_index", ["project_id", "status", "index"])
        batch.create_index("ix_batches_status_next_attempt_at", ["status", "next_attempt_at"])
        batch.create_index("ix_batches_project_id_job_ended_at", ["project_id", "job_ended_at"])
    op.create_table(
        "api_budgets",
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.Column("updated_at", tz, nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_api_budgets")),
    )


def downgrade() -> None:
    op.drop_table("api_budgets")
    with op.batch_alter_table("batches") as batch:
        batch.drop_index("ix_batches_project_id_job_ended_at")
        batch.drop_index("ix_batches_status_next_attempt_at")
        batch.drop_index("ix_batches_project_id_status_index")
        batch.drop_column("detected_at")
        batch.drop_column("job_ended_at")
        batch.drop_column("released_at")
        batch.drop_column("next_attempt_at")
        batch.drop_column("project_id")
    with op.batch_alter_table("reboot_requests") as batch:
        batch.drop_column("notified_at")
