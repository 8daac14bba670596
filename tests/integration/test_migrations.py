"""The Alembic migrations run from an empty database, down and up again (SQLite and PostgreSQL)."""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine, inspect
from sqlalchemy.exc import IntegrityError

from app.migrate import downgrade, upgrade
from tests.conftest import Backend, _create_pg_database, _drop_pg_database, full_mode_urls

TABLES = {"sites", "api_keys", "surveys", "fingerprints", "windows", "site_aps", "queries", "model_versions", "jobs"}


def _tables(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_upgrade_downgrade_upgrade_from_empty(backend: Backend, tmp_path: object) -> None:
    full = full_mode_urls()
    url = _create_pg_database(full[0]) if full else f"sqlite:///{tmp_path}/m.db"
    try:
        upgrade(url)
        assert _tables(url) >= TABLES
        downgrade(url, "base")
        assert not (TABLES & _tables(url))
        upgrade(url)
        assert _tables(url) >= TABLES
    finally:
        if full:
            _drop_pg_database(full[0], url)


def test_0006_keeps_one_pending_update_per_site(backend: Backend, tmp_path: object) -> None:
    """A database from before the unique index may hold several pending updates of a site (the race it closes):
    the migration keeps the running one (else the oldest) and fails the others, then builds the index."""
    from sqlalchemy import text

    full = full_mode_urls()
    url = _create_pg_database(full[0]) if full else f"sqlite:///{tmp_path}/m6.db"
    engine = create_engine(url)
    try:
        upgrade(url, "0005")
        jobs = [
            ("q-old", "a", "queued", "2026-12-01 10:00:00"),
            ("q-new", "a", "queued", "2026-12-01 11:00:00"),
            ("r", "b", "queued", "2026-12-01 10:00:00"),
            ("r-run", "b", "running", "2026-12-01 12:00:00"),
            ("done", "b", "succeeded", "2026-12-01 09:00:00"),
        ]
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO sites (id, name, n_queries, created_at) "
                    "VALUES ('a', 'a', 0, CURRENT_TIMESTAMP), ('b', 'b', 0, CURRENT_TIMESTAMP)"
                )
            )
            for job_id, site, state, created in jobs:
                conn.execute(
                    text(
                        "INSERT INTO jobs (id, kind, site_id, state, progress, message, params, attempts, created_at) "
                        "VALUES (:id, 'cotrain', :site, :state, 0, '', '{}', 0, :created)"
                    ),
                    {"id": job_id, "site": site, "state": state, "created": created},
                )
        upgrade(url)
        with engine.connect() as conn:
            states = dict(conn.execute(text("SELECT id, state FROM jobs")).all())
            want = {"q-old": "queued", "q-new": "failed", "r": "failed", "r-run": "running", "done": "succeeded"}
            assert states == want
            error = conn.execute(text("SELECT error FROM jobs WHERE id = 'q-new'")).scalar()
            assert "already queued or running" in error
            assert "key_id" in {c["name"] for c in inspect(conn).get_columns("queries")}
        with pytest.raises(IntegrityError), engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO jobs (id, kind, site_id, state, progress, message, params, attempts, created_at) "
                    "VALUES ('x', 'cotrain', 'a', 'running', 0, '', '{}', 0, '2026-12-02 00:00:00')"
                )
            )
    finally:
        engine.dispose()
        if full:
            _drop_pg_database(full[0], url)
