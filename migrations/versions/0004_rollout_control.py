"""Rollout control: a cut-off time and a stop (brake, canary, cut-off, cancel) per request.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27

- ``reboot_requests.not_after``: no batch is released after it.
- ``reboot_requests.stop``: ``halted`` or ``cancelled`` once a rollout control stopped the
  request; it ends in that state when its batches in flight have ended.

The state machines grow in code only (states are stored by value in VARCHAR with a CHECK
constraint listing every value; no value is added here): an operator's decision may move an
``unknown`` or ``timed_out`` batch, its ``unknown`` servers and its request on.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

STATES = (
    "accepted",
    "running",
    "succeeded",
    "partially_failed",
    "failed",
    "halted",
    "cancelled",
    "rejected",
)


def upgrade() -> None:
    with op.batch_alter_table("reboot_requests") as batch:
        batch.add_column(sa.Column("not_after", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(
            sa.Column(
                "stop",
                sa.Enum(
                    *STATES,
                    name="request_status",
                    native_enum=False,
                    create_constraint=False,
                    length=32,
                ),
                nullable=True,
            )
        )
        batch.create_check_constraint(
            "stop_request_status", "stop IN ('" + "', '".join(STATES) + "')"
        )


def downgrade() -> None:
    with op.batch_alter_table("reboot_requests") as batch:
        batch.drop_constraint("stop_request_status", type_="check")
        batch.drop_column("stop")
        batch.drop_column("not_after")
