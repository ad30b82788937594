"""Schema migrations (``certpilot/store/migrations``) on SQLite and PostgreSQL.

* a new database is created at the head revision, and the migrated schema is exactly what the
  SQLModel tables describe (alembic's own comparison finds no difference);
* a database at the first released schema (0001), holding data, is upgraded in place by simply
  opening it: nothing is lost, and the new behaviour works on the old rows (a forgotten
  location's sightings stay, schema 0003);
* a database from before migrations (tables made by ``create_all``, no version table) is
  upgraded the same way;
* a downgrade works, and a database newer than this certpilot is a one-line error;
* several processes opening one new PostgreSQL database at once (replicas starting together)
  all succeed, and the schema is created once.
"""

from __future__ import annotations

import multiprocessing
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlmodel import SQLModel

from certpilot.domain.audit import AuditDraft
from certpilot.domain.errors import StoreError
from certpilot.domain.x509 import cert_info
from certpilot.localca import LocalCA
from certpilot.store import AuditLog, Inventory, JobStore, NewJob, schema
from certpilot.store.ct import CTStore
from certpilot.store.slack import SlackStore

NOW = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


def _revision(url: str) -> str | None:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()


def _migrate(url: str, target: str, *, down: bool = False) -> None:
    with schema.SchemaStore.open(url) as store:
        if down:
            store.downgrade(target)
        else:
            store.upgrade(target)


def _tables(url: str) -> set[str]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return set(sa.inspect(conn).get_table_names())
    finally:
        engine.dispose()


def test_a_new_database_is_created_at_head_exactly_as_the_models_say(store_url: str) -> None:
    for store in (Inventory, JobStore, AuditLog, SlackStore, CTStore):
        store.open(store_url).close()  # each opener alone would create the whole schema
    assert _revision(store_url) == schema.head()
    import certpilot.store.tables  # noqa: F401  (every table on SQLModel.metadata)

    engine = sa.create_engine(store_url)
    try:
        with engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"compare_type": True})
            diff = compare_metadata(ctx, SQLModel.metadata)
    finally:
        engine.dispose()
    assert diff == [], diff


def test_the_first_released_schema_with_data_upgrades_by_opening_it(store_url: str) -> None:
    _migrate(store_url, "0001")
    assert _revision(store_url) == "0001"
    assert "ct_log" not in _tables(store_url)
    # Data written the way 0.1.0 wrote it: the stores' own SQL works on the 0001 tables.
    ca = LocalCA("Old", NOW - timedelta(days=30))
    leaf = cert_info(ca.issue(["old.test"], NOW).cert)
    engine = sa.create_engine(store_url)
    meta = sa.MetaData()
    with engine.begin() as conn:
        meta.reflect(conn)
        t = meta.tables
        conn.execute(
            t["certificate"].insert(),
            {
                "fingerprint_sha256": leaf.fingerprint_sha256,
                "serial": leaf.serial,
                "spki_sha256": leaf.spki_sha256,
                "subject": leaf.subject,
                "subject_cn": leaf.subject_cn,
                "issuer": leaf.issuer,
                "issuer_cn": leaf.issuer_cn,
                "sans": '["old.test"]',
                "not_before": leaf.not_before,
                "not_after": leaf.not_after,
                "key_type": leaf.key_type,
                "key_bits": leaf.key_bits,
                "signature_algorithm": leaf.signature_algorithm,
                "is_ca": False,
                "der": leaf.der,
                "first_seen": NOW,
                "last_seen": NOW,
            },
        )
        conn.execute(
            t["location"].insert(),
            {
                "ref": "tls://old.test:443#old.test",
                "source": "tls",
                "target": "old.test:443",
                "fingerprint_sha256": leaf.fingerprint_sha256,
                "last_fingerprint_sha256": leaf.fingerprint_sha256,
                "chain": f'["{leaf.fingerprint_sha256}"]',
                "problems": "[]",
                "problem_details": "[]",
                "labels": "{}",
                "first_seen": NOW,
                "last_scanned": NOW,
                "last_changed": NOW,
            },
        )
        conn.execute(
            t["sighting"].insert(),
            {
                "ref": "tls://old.test:443#old.test",
                "fingerprint_sha256": leaf.fingerprint_sha256,
                "first_seen": NOW,
                "last_seen": NOW,
            },
        )
    engine.dispose()
    with AuditLog.open(store_url) as audit:  # opening upgrades to head
        audit.append(
            AuditDraft(at=NOW, actor="cli:test", action="renew", subject="old.test", result="ok")
        )
    assert _revision(store_url) == schema.head()
    assert "ct_log" in _tables(store_url)
    with Inventory.open(store_url) as inv:
        (item,) = inv.items(now=NOW)
        assert item.ref == "tls://old.test:443#old.test" and item.serial == leaf.serial
        # 0003: forgetting the location keeps its history.
        inv.remove([item.ref], now=NOW + timedelta(minutes=1))
        (s,) = inv.sightings(ref=item.ref)
        assert s.fingerprint_sha256 == leaf.fingerprint_sha256 and not s.current
    with JobStore.open(store_url) as jobs:
        jobs.create(NewJob(key="after-upgrade", action="renew"), now=NOW)
    with AuditLog.open(store_url) as audit:
        assert audit.verify().ok


def test_a_database_from_before_migrations_is_upgraded_too(store_url: str) -> None:
    """``create_all`` databases have the tables but no version: the first migration creates
    only what they lack."""
    _migrate(store_url, "0001")
    engine = sa.create_engine(store_url)
    with engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE alembic_version"))
        conn.execute(sa.text("DROP TABLE slack_page"))  # that build never ran the bot
    engine.dispose()
    assert _revision(store_url) is None
    with Inventory.open(store_url):
        pass
    assert _revision(store_url) == schema.head()
    assert {"slack_page", "ct_log", "sighting"} <= _tables(store_url)


def test_downgrade_and_a_database_newer_than_this_certpilot(store_url: str) -> None:
    Inventory.open(store_url).close()
    _migrate(store_url, "0002", down=True)
    assert _revision(store_url) == "0002"
    _migrate(store_url, "0001", down=True)
    assert "ct_log" not in _tables(store_url)
    Inventory.open(store_url).close()  # and up again
    assert _revision(store_url) == schema.head()
    engine = sa.create_engine(store_url)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = '9999'"))
    engine.dispose()
    with pytest.raises(StoreError) as e:
        Inventory.open(store_url)
    line = e.value.one_line()
    assert "revision 9999" in line and "\n" not in line and "run a newer certpilot" in line


def _open_inventory(url: str) -> str:
    with Inventory.open(url) as inv:
        return str(inv.certificate_count())


def test_replicas_starting_together_create_the_schema_once(pg_url: str) -> None:
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(3) as pool:
        assert pool.map(_open_inventory, [pg_url] * 3) == ["0", "0", "0"]
    assert _revision(pg_url) == schema.head()


def test_head_is_alembics_head_and_a_current_database_never_loads_alembic(
    store_url: str, tmp_path: Path
) -> None:
    """``schema.HEAD`` is what alembic finds newest in ``migrations/versions``; opening a
    database that is already current reads its revision without importing alembic (a service
    process then never carries it), and reads the same revision alembic reads."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(schema.__file__).with_name("migrations")))
    assert ScriptDirectory.from_config(cfg).get_current_head() == schema.HEAD
    with schema.SchemaStore.open(store_url) as store:
        assert store.current() is None  # an empty database: no version table yet
    Inventory.open(store_url).close()
    with schema.SchemaStore.open(store_url) as store:
        assert store.current() == _revision(store_url) == schema.HEAD
    probe = (
        "import sys\n"
        "from certpilot.store import Inventory\n"
        "import certpilot.app\n"
        f"Inventory.open({store_url!r}).close()\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'alembic'))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip() == "[]", out.stderr
