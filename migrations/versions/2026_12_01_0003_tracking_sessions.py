"""tracking sessions: floor plans, and the session id of session queries in the query log

Revision ID: 0003
Revises: 0001
Create Date: 2026-12-01 15:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "floor_plans",
        sa.Column("site_id", sa.String(length=32), nullable=False),
        sa.Column("floor", sa.String(length=64), nullable=False),
        sa.Column("geojson", sa.JSON(), nullable=False),
        sa.Column("source", sa.String(length=32), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["site_id"], ["sites.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("site_id", "floor"),
    )
    with op.batch_alter_table("queries", schema=None) as batch_op:
        batch_op.add_column(sa.Column("session_id", sa.String(length=64), nullable=True))
        batch_op.create_index("ix_queries_site_id_session_id", ["site_id", "session_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("queries", schema=None) as batch_op:
        batch_op.drop_index("ix_queries_site_id_session_id")
        batch_op.drop_column("session_id")
    op.drop_table("floor_plans")
