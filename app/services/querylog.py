"""Group commit of the query log.

Every /locate answer must be durably stored before it is returned, but one
commit per request would cap throughput at the disk's fsync rate. A single
writer thread takes whatever rows are waiting, writes them in one transaction
and then releases all their requests: under load many requests share a commit,
at low load a request waits for just its own.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections import Counter
from concurrent.futures import Future
from typing import Any, cast

from prometheus_client import Histogram
from sqlalchemy import Table, bindparam, update

from app.db import Database
from app.models import Query, Site
from app.services.inference import gather, settle

log = logging.getLogger(__name__)

COMMIT_SECONDS = Histogram(
    "siteloc_querylog_commit_seconds",
    "Wall time of one query-log group commit",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
ROWS_PER_COMMIT = Histogram(
    "siteloc_querylog_rows_per_commit",
    "Query rows written by one group commit",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048),
)

_STOP = object()

# SQLAlchemy Core statements built once (their compiled form is cached): one multi-row INSERT for the group and
# one counter UPDATE per site, on one connection. The ORM's unit of work and bulk-update bookkeeping cost more
# than the writes themselves at a few rows per commit.
_INSERT = cast(Table, Query.__table__).insert()
_SITES = cast(Table, Site.__table__)
_COUNT = update(_SITES).where(_SITES.c.id == bindparam("site")).values(n_queries=_SITES.c.n_queries + bindparam("k"))
_ROW_KEYS = ("session_id", "key_id")  # optional in a row; every row of one INSERT must name the same columns


class QueryWriter:
    def __init__(self, db: Database, *, max_rows: int = 2000, max_wait_ms: float = 1.0) -> None:
        self._db = db
        self._max_rows = max_rows
        self._max_wait = max_wait_ms / 1000.0
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="siteloc-querylog", daemon=True)
        self._started = False
        self.commits = 0
        self.rows_written = 0

    def start(self) -> None:
        if not self._started:
            self._started = True
            self._thread.start()

    def submit(self, rows: list[dict[str, Any]]) -> Future[None]:
        """Queue rows for the next commit; the future resolves once they are committed."""
        fut: Future[None] = Future()
        self._queue.put((rows, fut))
        return fut

    async def write(self, rows: list[dict[str, Any]]) -> None:
        """`submit` for a coroutine: returns once the rows are committed (raises if the commit failed)."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self._queue.put((rows, (fut, loop)))
        await fut

    def stop(self) -> None:
        if self._started:
            self._queue.put(_STOP)
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            batch, stop = gather(self._queue, item, lambda it: len(it[0]), self._max_rows, self._max_wait, _STOP)
            self._write(batch)
            if stop:
                return

    def _write(self, batch: list[tuple[list[dict[str, Any]], Any]]) -> None:
        rows = [r for rs, _ in batch for r in rs]
        t0 = time.perf_counter()
        try:
            self._commit(rows)
        except Exception as exc:
            if len(batch) == 1:
                log.exception("query log commit of %d rows failed", len(rows))
                settle([(*_future(batch[0][1]), None, exc)])
                return
            # One bad request must not fail the others that shared its transaction: commit each on its own.
            log.warning(
                "query log group commit of %d rows failed; committing its %d requests one by one",
                len(rows),
                len(batch),
            )
            for item in batch:
                self._write([item])
            return
        COMMIT_SECONDS.observe(time.perf_counter() - t0)
        ROWS_PER_COMMIT.observe(len(rows))
        self.commits += 1
        self.rows_written += len(rows)
        settle([(*_future(f), None, None) for _, f in batch])

    def _commit(self, rows: list[dict[str, Any]]) -> None:
        for r in rows:
            for key in _ROW_KEYS:
                r.setdefault(key, None)
        # Sorted: writers in several processes lock site rows in one order, so they cannot deadlock.
        counts = [{"site": site_id, "k": k} for site_id, k in sorted(Counter(r["site_id"] for r in rows).items())]
        with self._db.engine.begin() as conn:
            conn.execute(_INSERT, rows)
            for c in counts:  # one statement each, in order (an executemany may not keep the order)
                conn.execute(_COUNT, c)


def _future(f: Any) -> tuple[Any, asyncio.AbstractEventLoop | None]:
    """(future, its event loop or None): `submit` queues a concurrent Future, `write` an (asyncio future, loop)."""
    return (f[0], f[1]) if isinstance(f, tuple) else (f, None)
