"""The first released schema (certpilot 0.1.0): inventory, SLI events, audit chain,
remediation jobs and the Slack bot's pages.

Databases created before migrations existed (``create_all``) hold exactly these tables; they
are stamped with this revision (see ``certpilot.store.schema``) and upgraded from here.

Frozen: never edit a released migration; add a new one. Column types come from
``certpilot.store.coltypes``, whose DDL must stay stable for that reason.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

from certpilot.store import coltypes

revision = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None

TABLES = (
    "sighting",
    "location_scan",
    "location",
    "sli_sample",
    "sli_event",
    "sli_counter",
    "slack_request",
    "slack_page",
    "scan_run",
    "remediation_job",
    "event",
    "certificate",
    "audit_entry",
)


def upgrade() -> None:
    # Databases from before migrations (``create_all``) may hold some of these tables already
    # (each store created its own): create only what is missing, with its indexes.
    existing = set(sa.inspect(op.get_bind()).get_table_names())
    created: set[str] = set()

    def create_table(name: str, *args: Any, **kw: Any) -> None:
        if name not in existing:
            op.create_table(name, *args, **kw)
            created.add(name)

    def create_index(name: str, table: str, columns: list[str], **kw: Any) -> None:
        if table in created:
            op.create_index(name, table, columns, **kw)

    create_table(
        "audit_entry",
        sa.Column(
            "seq",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=False,
            nullable=False,
        ),
        sa.Column("at", coltypes.UTCDateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.Text(), nullable=False),
        sa.Column("action", sa.Text(), nullable=False),
        sa.Column("subject", sa.Text(), nullable=False),
        sa.Column("rule", sa.Text(), nullable=False),
        sa.Column("before", sa.Text(), nullable=False),
        sa.Column("after", sa.Text(), nullable=False),
        sa.Column("result", sa.Text(), nullable=False),
        sa.Column("detail", coltypes.JSONText(), nullable=False),
        sa.Column("prev_hash", sa.String(length=64), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("seq"),
    )
    create_table(
        "certificate",
        sa.Column("fingerprint_sha256", sa.String(length=64), nullable=False),
        sa.Column("serial", sa.String(), nullable=False),
        sa.Column("spki_sha256", sa.String(length=64), nullable=False),
        sa.Column("subject", sa.Text(), nullable=False),
        sa.Column("subject_cn", sa.String(), nullable=False),
        sa.Column("issuer", sa.Text(), nullable=False),
        sa.Column("issuer_cn", sa.String(), nullable=False),
        sa.Column("sans", coltypes.JSONText(), nullable=False),
        sa.Column("not_before", coltypes.UTCDateTime(timezone=True), nullable=False),
        sa.Column("not_after", coltypes.UTCDateTime(timezone=True), nullable=False),
        sa.Column("key_type", sa.String(), nullable=False),
        sa.Column("key_bits", sa.Integer(), nullable=False),
        sa.Column("signature_algorithm", sa.String(), nullable=False),
        sa.Column("is_ca", sa.Boolean(), nullable=False),
        sa.Column("der", sa.LargeBinary(), nullable=False),
        sa.Column("first_seen", coltypes.UTCDateTime(timezone=True), nullable=False),
        sa.Column("last_seen", coltypes.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("fingerprint_sha256"),
    )
    create_index("ix_certificate_not_after", "certificate", ["not_after"], unique=False)
    create_index("ix_certificate_serial", "certificate", ["serial"], unique=False)
    create_table(
        "event",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("at", coltypes.UTCDateTime(timezone=True), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("ref", sa.String(), nullable=False),
        sa.Column("fingerprint_sha256", sa.String(length=64), nullable=True),
        sa.Column("code", sa.String(length=64), nullable=True),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sqlite_autoincrement=True,
    )
    create_index("ix_event_ref", "event", ["ref"], unique=False)
    create_table(
        "remediation_job",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("action", sa.String(length=32), nullable=False),
        sa.Column("state", sa.String(length=32), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("names", coltypes.JSONText(), nullable=False),
        sa.Column("fingerprint", sa.String(length=64), nullable=False),
        sa.Column("ref", sa.Text(), nullable=False),
        sa.Column("issuer", sa.Text(), nullable=False),
        sa.Column("targets", coltypes.JSONText(), nullable=False),
        sa.Column("requester", sa.Text(), nullable=False),
        sa.Column("rule", sa.Text(), nullable=False),
        sa.Column("approvers", coltypes.JSONText(), nullable=False),
        sa.Column("second_person", sa.Boolean(), nullable=False),
        sa.Column("approvals", coltypes.JSONText(), nullable=False),
        sa.Column("key_type", sa.String(length=32), nullable=False),
        sa.Column("validity_days", sa.Integer(), nullable=True),
        sa.Column("reason", sa.Integer(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", coltypes.UTCDateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=False),
        sa.Column("old_serial", sa.Text(), nullable=False),
        sa.Column("new_serial", sa.Text(), nullable=False),
        sa.Column("new_fingerprint", sa.String(length=64), nullable=False),
        sa.Column("subject_chain_pem", sa.Text(), nullable=False),
        sa.Column("issued_chain_pem", sa.Text(), nullable=False),
        sa.Column("receipts", coltypes.JSONText(), nullable=False),
        sa.Column("verified", coltypes.JSONText(), nullable=False),
        sa.Column("state_times", coltypes.JSONText(), nullable=False),
        sa.Column("owner", sa.Text(), nullable=False),
        sa.Column("lease_until", coltypes.UTCDateTime(timezone=True), nullable=True),
        sa.Column("created_at", coltypes.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", coltypes.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("key"),
        sqlite_autoincrement=True,
    )
    create_index(
        "ix_remediation_job_next_attempt_at",
        "remediation_job",
        ["next_attempt_at"],
        unique=False,
    )
    create_index("ix_remediation_job_state", "remediation_job", ["state"], unique=False)
    create_table(
        "scan_run",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("source", sa.String(), nullable=False),
        sa.Column("started_at", coltypes.UTCDateTime(timezone=True), nullable=False),
        sa.Column("finished_at", coltypes.UTCDateTime(timezone=True), nullable=True),
        sa.Column("targets", sa.Integer(), nullable=False),
        sa.Column("observations", sa.Integer(), nullable=False),
        sa.Column("problems", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    create_table(
        "slack_page",
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("channel", sa.Text(), nullable=False),
        sa.Column("ts", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("severity", sa.String(length=16), nullable=False),
        sa.Column("signals", coltypes.JSONText(), nullable=False),
        sa.Column("jobs", coltypes.JSONText(), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("acknowledged_by", sa.Text(), nullable=False),
        sa.Column("silenced_until", coltypes.UTCDateTime(timezone=True), nullable=True),
        sa.Column("held_until", coltypes.UTCDateTime(timezone=True), nullable=True),
        sa.Column("updated_at", coltypes.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("key"),
    )
    create_index("ix_slack_page_status", "slack_page", ["status"], unique=False)
    create_table(
        "slack_request",
        sa.Column("signature", sa.String(length=80), nullable=False),
        sa.Column("at", coltypes.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("signature"),
    )
    create_index("ix_slack_request_at", "slack_request", ["at"], unique=False)
    create_table(
        "sli_counter",
        sa.Column("sli", sa.String(length=64), nullable=False),
        sa.Column("good_total", sa.Float(), nullable=False),
        sa.Column("bad_total", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("sli"),
    )
    create_table(
        "sli_event",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("at", coltypes.UTCDateTime(timezone=True), nullable=False),
        sa.Column("sli", sa.String(length=64), nullable=False),
        sa.Column("good", sa.Boolean(), nullable=False),
        sa.Column("ref", sa.Text(), nullable=False),
        sa.Column("value", sa.Float(), nullable=True),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sqlite_autoincrement=True,
    )
    create_index("ix_sli_event_at", "sli_event", ["at"], unique=False)
    create_table(
        "sli_sample",
        sa.Column("sli", sa.String(length=64), nullable=False),
        sa.Column("at", coltypes.UTCDateTime(timezone=True), nullable=False),
        sa.Column("good_total", sa.Float(), nullable=False),
        sa.Column("bad_total", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("sli", "at"),
        sqlite_with_rowid=False,
    )
    create_table(
        "location",
        sa.Column("ref", sa.String(), nullable=False),
        sa.Column("source", sa.String(), nullable=False),
        sa.Column("target", sa.Text(), nullable=False),
        sa.Column("fingerprint_sha256", sa.String(length=64), nullable=True),
        sa.Column("last_fingerprint_sha256", sa.String(length=64), nullable=True),
        sa.Column("chain", coltypes.JSONText(), nullable=False),
        sa.Column("problems", coltypes.JSONText(), nullable=False),
        sa.Column("problem_details", coltypes.JSONText(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("labels", coltypes.JSONText(), nullable=False),
        sa.Column("first_seen", coltypes.UTCDateTime(timezone=True), nullable=False),
        sa.Column("last_scanned", coltypes.UTCDateTime(timezone=True), nullable=False),
        sa.Column("last_changed", coltypes.UTCDateTime(timezone=True), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["fingerprint_sha256"],
            ["certificate.fingerprint_sha256"],
        ),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["scan_run.id"],
        ),
        sa.PrimaryKeyConstraint("ref"),
    )
    create_index("ix_location_source", "location", ["source"], unique=False)
    create_table(
        "location_scan",
        sa.Column("ref", sa.String(), nullable=False),
        sa.Column("state", sa.LargeBinary(), nullable=True),
        sa.Column("last_scanned", coltypes.UTCDateTime(timezone=True), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["ref"],
            ["location.ref"],
        ),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["scan_run.id"],
        ),
        sa.PrimaryKeyConstraint("ref"),
        sqlite_with_rowid=False,
    )
    create_table(
        "sighting",
        sa.Column("ref", sa.String(), nullable=False),
        sa.Column("fingerprint_sha256", sa.String(length=64), nullable=False),
        sa.Column("first_seen", coltypes.UTCDateTime(timezone=True), nullable=False),
        sa.Column("last_seen", coltypes.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["fingerprint_sha256"],
            ["certificate.fingerprint_sha256"],
        ),
        sa.ForeignKeyConstraint(
            ["ref"],
            ["location.ref"],
        ),
        sa.PrimaryKeyConstraint("ref", "fingerprint_sha256"),
        sqlite_with_rowid=False,
    )
    create_index(
        ("ix_sighting_fingerprint_sha256"), "sighting", ["fingerprint_sha256"], unique=False
    )


def downgrade() -> None:
    for table in TABLES:  # children first
        op.drop_table(table)
