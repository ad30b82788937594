"""The Certificate Transparency monitor's position per log (``ct_log``).

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from certpilot.store import coltypes

revision = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    if sa.inspect(op.get_bind()).has_table("ct_log"):
        return  # created by a development build before migrations existed
    op.create_table(
        "ct_log",
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("head", coltypes.JSONText(), nullable=True),
        sa.Column("next_index", sa.BigInteger(), nullable=False),
        sa.Column("compact", coltypes.JSONText(), nullable=True),
        sa.Column("updated_at", coltypes.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("url"),
    )


def downgrade() -> None:
    op.drop_table("ct_log")
