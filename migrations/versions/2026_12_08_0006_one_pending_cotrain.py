"""jobs: at most one co-training update queued or running per site (a partial unique index)

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-08 12:30:00

`POST /sites/{id}/cotrain` checked for a pending update and then created one, with nothing in between: concurrent
requests (threads of one process, or several API processes) both got 202, both jobs ran and both versions were
promoted. uq_jobs_one_pending_cotrain makes the database the judge: the second insert conflicts (`INSERT ... ON
CONFLICT DO NOTHING`, app.services.jobs.create_job_unless_pending) and gets the same 409 as before; the scheduler
goes through the same insert. Both SQLite and PostgreSQL have partial indexes.

A database that already holds several pending updates of a site (that race) keeps one, the running one, else the
oldest, and marks the others failed, since the index could not be built over them.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_PENDING = "kind = 'cotrain' AND state IN ('queued', 'running')"


def upgrade() -> None:
    _fail_duplicate_pending_updates()
    op.create_index(
        "uq_jobs_one_pending_cotrain",
        "jobs",
        ["site_id"],
        unique=True,
        sqlite_where=sa.text(_PENDING),
        postgresql_where=sa.text(_PENDING),
    )


def downgrade() -> None:
    op.drop_index("uq_jobs_one_pending_cotrain", table_name="jobs")


def _fail_duplicate_pending_updates() -> None:
    conn = op.get_bind()
    rows = conn.execute(sa.text(f"SELECT id, site_id, state, created_at FROM jobs WHERE {_PENDING}")).all()
    by_site: dict[str, list[tuple[str, str, str]]] = {}
    for job_id, site_id, state, created in rows:
        by_site.setdefault(site_id, []).append((job_id, state, str(created)))
    extra = []
    for jobs in by_site.values():
        jobs.sort(key=lambda j: (j[1] != "running", j[2], j[0]))  # keep the running one, else the oldest
        extra += [j[0] for j in jobs[1:]]
    for job_id in extra:
        conn.execute(
            sa.text(
                "UPDATE jobs SET state = 'failed', message = 'failed', error = :error, finished_at = :now "
                "WHERE id = :id"
            ),
            {
                "id": job_id,
                "now": datetime.now(UTC),
                "error": "another update of this site was already queued or running (one update per site at a "
                "time); this one was not run",
            },
        )
