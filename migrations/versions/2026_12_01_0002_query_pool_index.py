"""queries: partial index over the co-training pool (unused queries per site)

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01 15:00:00

The query log grows by one row per /locate. Two reads must not grow with it: the co-training pool (a site's
newest queries no update has used: `unused_queries`, `_load_queries`, the scheduler's due check) and the
retention delete. Retention deletes by primary-key range (ids are time-ordered), which the primary key
already serves; the pool gets this partial index, which holds only the unused rows (used ones, the bulk of a
long-lived table, are not in it), on PostgreSQL and SQLite alike.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_UNUSED = sa.text("used_by_job IS NULL")


def upgrade() -> None:
    op.create_index(
        "ix_queries_unused_site_id_id",
        "queries",
        ["site_id", "id"],
        unique=False,
        postgresql_where=_UNUSED,
        sqlite_where=_UNUSED,
    )


def downgrade() -> None:
    op.drop_index("ix_queries_unused_site_id_id", table_name="queries")
