"""The CT monitor's stored position (``certpilot.store.ct.CTStore``) on SQLite and PostgreSQL:
created by the first save, and never moved back (two replicas may read one window while they
disagree about who follows a log; the slower one's save must not undo the faster one's)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from certpilot.store.ct import CTStore

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
LOG = "https://ct.example.net/2026h2/"


def test_the_position_is_created_advanced_and_never_moved_back(store_url: str) -> None:
    with CTStore.open(store_url) as store:
        assert store.get(LOG) is None
        store.save(LOG, kind="rfc6962", head={"tree_size": 10}, next_index=10, compact=None,
                   now=NOW)  # fmt: skip
        store.save(LOG, kind="rfc6962", head={"tree_size": 90}, next_index=80, compact=None,
                   now=NOW + timedelta(seconds=1))  # fmt: skip
        # A replica that read an older window late: ignored.
        store.save(LOG, kind="rfc6962", head={"tree_size": 90}, next_index=40, compact=None,
                   now=NOW + timedelta(seconds=2))  # fmt: skip
        row = store.get(LOG)
        assert row is not None and row.next_index == 80
        assert row.updated_at.replace(tzinfo=UTC) == NOW + timedelta(seconds=1)
        # The same position with a newer head (the log grew, nothing new was read): saved.
        store.save(LOG, kind="rfc6962", head={"tree_size": 120}, next_index=80, compact=None,
                   now=NOW + timedelta(seconds=3))  # fmt: skip
        row = store.get(LOG)
        assert row is not None and row.head == {"tree_size": 120} and row.next_index == 80
        assert [r.url for r in store.all()] == [LOG]
