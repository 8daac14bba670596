"""queries.key_id: the API key that sent each query (a tracking session is the key's)

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-08 12:00:00

Live tracking sessions are keyed by the key that opened them and the client's session id
(`app.services.sessions`), so the query log records which key sent each query, and self-maintenance updates group
walks by (key_id, session_id): two apps that use the same session id are two walks, not one interleaved track.
Nullable, no default: adding it does not rewrite the table (instant on PostgreSQL whatever the table's size; a
plain ALTER TABLE ADD COLUMN on SQLite). Rows stored before this migration have none and group by session id
alone, as before. No index: walks are grouped within a site's unused queries, which migration 0002's partial index
already finds.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("queries") as batch:
        batch.add_column(sa.Column("key_id", sa.String(length=32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("queries") as batch:
        batch.drop_column("key_id")
