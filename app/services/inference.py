"""Batched inference off the event loop: one executor per loaded model.

The same pattern as the query log's group commit (`querylog.py`): requests put
their (already featurised) rows on the model's queue and await a future; one
thread per model takes whatever is waiting, for at most `max_wait_ms` or
`max_rows` rows, answers all of it with one `predict` call and resolves the
futures. Under load the queue fills while a batch is being predicted, so
batches grow with the load and a query costs a fraction of a single call; at
low load a query waits only for its own call (plus at most `max_wait_ms`).

`predict` is only ever called from the executor's thread (or, for a model
already replaced, from a one-off thread), never on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import numpy as np
from prometheus_client import Histogram

from ml.models.base import LocModel, Prediction, QueryBatch

log = logging.getLogger(__name__)

PREDICT_SECONDS = Histogram(
    "siteloc_predict_seconds",
    "Wall time of one batched predict call",
    ["model"],
    buckets=(0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0),
)
BATCH_ROWS = Histogram(
    "siteloc_predict_batch_rows",
    "Queries answered by one predict call",
    ["model"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
)
QUEUE_DEPTH = Histogram(
    "siteloc_inference_queue_depth",
    "Requests still waiting in a model's queue when a batch is taken",
    ["model"],
    buckets=(0, 1, 2, 4, 8, 16, 32, 64, 128, 256),
)

_STOP = object()


@dataclass
class _Item:
    batch: QueryBatch
    future: Future[Prediction] | asyncio.Future[Prediction]
    loop: asyncio.AbstractEventLoop | None = None  # set for an asyncio future: settled on its loop


def gather(
    q: queue.SimpleQueue[Any] | queue.Queue[Any],
    first: Any,
    size: Callable[[Any], int],
    max_rows: int,
    max_wait_s: float,
    stop: object,
) -> tuple[list[Any], bool]:
    """`first` and whatever else arrives on `q` within `max_wait_s`, until `max_rows` (counted by `size`): one batch
    of the queue-plus-deadline pattern shared by the inference executors and the query writer. Returns the batch and
    whether `stop` was seen (answer the batch, then end)."""
    batch, n = [first], size(first)
    deadline = time.monotonic() + max_wait_s
    while n < max_rows:
        try:
            timeout = deadline - time.monotonic()
            nxt = q.get_nowait() if timeout <= 0 else q.get(timeout=timeout)
        except queue.Empty:
            break
        if nxt is stop:
            return batch, True
        batch.append(nxt)
        n += size(nxt)
    return batch, False


def settle(results: Sequence[tuple[Any, asyncio.AbstractEventLoop | None, Any, BaseException | None]]) -> None:
    """Resolve futures from a worker thread: concurrent ones at once, asyncio ones with one
    `call_soon_threadsafe` per event loop for the whole batch (one wake-up, not one per request)."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Any, Any, BaseException | None]]] = {}
    for fut, loop, value, exc in results:
        if loop is None:
            if exc is None:
                fut.set_result(value)
            else:
                fut.set_exception(exc)
        else:
            by_loop.setdefault(loop, []).append((fut, value, exc))
    for loop, items in by_loop.items():
        with contextlib.suppress(RuntimeError):  # a closed loop (shutdown): nobody awaits these any more
            loop.call_soon_threadsafe(_settle_on_loop, items)


def _settle_on_loop(items: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
    for fut, value, exc in items:
        if fut.done():  # cancelled: the client went away
            continue
        if exc is None:
            fut.set_result(value)
        else:
            fut.set_exception(exc)


class BatchExecutor:
    """Answers `submit(batch)` futures for one model with as few `predict` calls as the load allows."""

    def __init__(self, model: LocModel, *, label: str, max_rows: int = 64, max_wait_ms: float = 1.0) -> None:
        self._model = model
        self._label = label
        self._max_rows = max_rows
        self._max_wait = max_wait_ms / 1000.0
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False
        self.calls = 0
        self.rows = 0

    def submit(self, batch: QueryBatch) -> Future[Prediction]:
        """Queue the rows; the future resolves to their `Prediction` (rows in order)."""
        item = _Item(batch, Future())
        self._enqueue(item)
        return item.future  # type: ignore[return-value]

    async def predict(self, batch: QueryBatch) -> Prediction:
        """`submit` for a coroutine: awaits the rows' `Prediction` without blocking the event loop."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Prediction] = loop.create_future()
        self._enqueue(_Item(batch, future, loop))
        return await future

    def _enqueue(self, item: _Item) -> None:
        with self._lock:
            if self._closed:  # replaced or evicted after the request picked it up: answer it anyway
                threading.Thread(target=self._answer, args=([item],), daemon=True).start()
                return
            if self._thread is None:  # started on first use: a cached model nobody queries costs no thread
                self._thread = threading.Thread(target=self._run, name=f"siteloc-infer-{self._label}", daemon=True)
                self._thread.start()
            self._queue.put(item)

    def close(self) -> None:
        """Answer what is queued, then stop the thread (later submits still get an answer)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._thread is not None:
                self._queue.put(_STOP)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            batch, stop = gather(self._queue, item, lambda it: len(it.batch), self._max_rows, self._max_wait, _STOP)
            QUEUE_DEPTH.labels(self._label).observe(self._queue.qsize())
            self._answer(batch)
            if stop:
                return

    def _answer(self, items: list[_Item]) -> None:
        live = [it for it in items if it.loop is not None or it.future.set_running_or_notify_cancel()]  # type: ignore[union-attr]
        if not live:
            return
        try:
            merged = _concat([it.batch for it in live])
            t0 = time.perf_counter()
            pred = self._model.predict(merged)
            PREDICT_SECONDS.labels(self._label).observe(time.perf_counter() - t0)
            BATCH_ROWS.labels(self._label).observe(len(merged))
        except Exception as exc:
            if len(live) > 1:  # one bad query must not fail the others it was batched with
                settle([self._answer_alone(it) for it in live])
                return
            log.exception("%s predict failed", self._label)
            settle([(live[0].future, live[0].loop, None, exc)])
            return
        self.calls += 1
        self.rows += len(merged)
        results = []
        lo = 0
        for it in live:
            hi = lo + len(it.batch)
            results.append((it.future, it.loop, _slice(pred, lo, hi), None))
            lo = hi
        settle(results)

    def _answer_alone(self, item: _Item) -> tuple[Any, asyncio.AbstractEventLoop | None, Any, BaseException | None]:
        try:
            return item.future, item.loop, self._model.predict(item.batch), None
        except Exception as exc:
            log.exception("%s predict failed", self._label)
            return item.future, item.loop, None, exc


def _concat(batches: list[QueryBatch]) -> QueryBatch:
    if len(batches) == 1:
        return batches[0]
    ages = [b.age_ms if b.age_ms is not None else np.full(b.rss.shape, np.nan, dtype=np.float32) for b in batches]
    age = None if all(b.age_ms is None for b in batches) else np.concatenate(ages)
    return QueryBatch(
        rss=np.concatenate([b.rss for b in batches]),
        age_ms=age,
        sensors=[s for b in batches for s in (b.sensors or [None] * len(b))],
        device=[d for b in batches for d in (b.device or [None] * len(b))],
    )


def _slice(pred: Prediction, lo: int, hi: int) -> Prediction:
    return Prediction(
        xy=pred.xy[lo:hi], floor=pred.floor[lo:hi], building=pred.building[lo:hi], error_m=pred.error_m[lo:hi]
    )
