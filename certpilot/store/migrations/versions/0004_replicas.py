"""Replicas sharing the database: membership by heartbeat (``replica``).

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from certpilot.store import coltypes

revision = "0004"
down_revision: str | None = "0003"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    if sa.inspect(op.get_bind()).has_table("replica"):
        return  # a database whose version record was lost: the table is there already
    op.create_table(
        "replica",
        sa.Column("id", sa.String(length=128), nullable=False),
        sa.Column("host", sa.Text(), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("started_at", coltypes.UTCDateTime(timezone=True), nullable=False),
        sa.Column("heartbeat_at", coltypes.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_replica_heartbeat_at", "replica", ["heartbeat_at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_replica_heartbeat_at", table_name="replica")
    op.drop_table("replica")
