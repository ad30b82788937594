"""Sightings outlive their location: drop the ``sighting.ref`` foreign key.

Before, forgetting a location (an endpoint no longer configured, a deleted file or secret)
had to delete its sightings, so "what did this endpoint serve last month?" lost its answer
for locations that are gone. ``sighting.ref`` now names a location that may no longer exist,
as ``event.ref`` already did; the certificate foreign key stays.

SQLite cannot drop a constraint, and the constraint was created unnamed, so on both
databases the table is rebuilt: a new table, the rows copied, the old one dropped, the new
one renamed, its index recreated.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from certpilot.store import coltypes

revision = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None


def _create(name: str, *, ref_fk: bool) -> None:
    constraints: list[sa.Constraint] = [
        sa.ForeignKeyConstraint(["fingerprint_sha256"], ["certificate.fingerprint_sha256"]),
        sa.PrimaryKeyConstraint("ref", "fingerprint_sha256"),
    ]
    if ref_fk:
        constraints.append(sa.ForeignKeyConstraint(["ref"], ["location.ref"]))
    op.create_table(
        name,
        sa.Column("ref", sa.String(), nullable=False),
        sa.Column("fingerprint_sha256", sa.String(length=64), nullable=False),
        sa.Column("first_seen", coltypes.UTCDateTime(timezone=True), nullable=False),
        sa.Column("last_seen", coltypes.UTCDateTime(timezone=True), nullable=False),
        *constraints,
        sqlite_with_rowid=False,
    )


def _rebuild(*, ref_fk: bool) -> None:
    _create("sighting_new", ref_fk=ref_fk)
    op.execute(
        "INSERT INTO sighting_new (ref, fingerprint_sha256, first_seen, last_seen) "
        "SELECT ref, fingerprint_sha256, first_seen, last_seen FROM sighting"
    )
    op.drop_index("ix_sighting_fingerprint_sha256", table_name="sighting")
    op.drop_table("sighting")
    op.rename_table("sighting_new", "sighting")
    op.create_index(
        "ix_sighting_fingerprint_sha256", "sighting", ["fingerprint_sha256"], unique=False
    )


def upgrade() -> None:
    _rebuild(ref_fk=False)


def downgrade() -> None:
    # Sightings of locations that are gone cannot point at them again: they go.
    op.execute("DELETE FROM sighting WHERE ref NOT IN (SELECT ref FROM location)")
    _rebuild(ref_fk=True)
