"""Query-log retention: `SITELOC_QUERY_RETENTION_DAYS`.

The query log is the largest table (one row per /locate, forever by default). With a retention set, the
scheduler (Celery beat in full mode, the embedded scheduler otherwise) deletes queries older than that, in
chunks of `chunk` rows per transaction so a delete never holds locks for long. Query ids are time-ordered
(16 hex digits of nanoseconds first), so "older than T" is a range of the primary key: no extra index.

Never deleted: the not-yet-used queries of a site with a co-training update queued or running (it reads the
newest unused queries of its site when it starts, and must find what made it due), whichever key's tracking
session they belong to (an update's walks are grouped by key and session id, its pool is the site's). Queries an
update has already used may go, like any other, once they are old enough. The DELETE itself re-checks that
condition, so an update queued between a chunk's SELECT and its DELETE keeps its queries (SQLite runs one writer
at a time, so there it is exact; on PostgreSQL an update committed while that one statement runs is not seen by
it).
"""

from __future__ import annotations

import logging
from collections import Counter
from datetime import UTC, datetime, timedelta

from sqlalchemy import and_, delete, or_, select, update

from app.db import Database
from app.models import Job, Query, Site

log = logging.getLogger(__name__)


def cutoff_id(before: datetime) -> str:
    """The smallest query id created at or after `before` (ids sort by creation time)."""
    return f"{int(before.timestamp() * 1e9):016x}" + "0" * 16


def delete_expired_queries(
    db: Database, *, retention_days: float | None, chunk: int = 5000, now: datetime | None = None
) -> int:
    """Delete the queries older than the retention (see the module docstring); returns how many."""
    if retention_days is None:
        return 0
    cutoff = cutoff_id((now or datetime.now(UTC)) - timedelta(days=retention_days))
    total = 0
    while True:
        with db.session() as s:
            busy = select(Job.site_id).where(Job.kind == "cotrain", Job.state.in_(("queued", "running")))
            deletable = and_(
                Query.id < cutoff,
                or_(Query.used_by_job.is_not(None), Query.site_id.not_in(busy)),
            )
            rows = s.execute(select(Query.id, Query.site_id).where(deletable).order_by(Query.id).limit(chunk)).all()
            if not rows:
                break
            gone = s.execute(
                delete(Query)
                .where(Query.id.in_([r[0] for r in rows]), deletable)
                .returning(Query.site_id)
                .execution_options(synchronize_session=False)
            ).all()
            for site_id, k in sorted(Counter(r[0] for r in gone).items()):  # same lock order as the query writer
                s.execute(update(Site).where(Site.id == site_id).values(n_queries=Site.n_queries - k))
        total += len(gone)
        if len(rows) < chunk:
            break
    if total:
        log.info("retention: deleted %d queries older than %s days", total, retention_days)
    return total
