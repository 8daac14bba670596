"""The Alembic migrations run from an empty database, down and up again (SQLite and PostgreSQL)."""

from __future__ import annotations

from sqlalchemy import create_engine, inspect

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
