"""The /locate hot path's parts without a server: wknn's inverted-index query against the old dense
path, per-call MC dropout, the batching executor, the model cache and the query log's bad-row isolation."""

from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from sqlalchemy import func, select, update

from app.db import Database
from app.migrate import upgrade
from app.models import Query, Site
from app.runtime import freeze_startup_objects, tune_malloc
from app.services.inference import BatchExecutor
from app.services.notify import LocalNotifier
from app.services.querylog import QueryWriter
from app.services.registry import ModelCache, activate, publish_version
from bench.wknn_query import reference_of
from ml.data.features import FingerprintSet, build_set
from ml.data.ujiindoorloc import read_ujiindoorloc
from ml.models.base import QueryBatch
from ml.models.fpnets import NetShape, SiteLabels, build_net
from ml.models.fptrain import mc_spread
from ml.models.wknn import WKNN
from ml.seed import seeded
from ml.serialize import dumps
from tests.fixture_data import query_row

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


@pytest.fixture(scope="module")
def uji() -> tuple[FingerprintSet, FingerprintSet]:
    train = build_set(list(read_ujiindoorloc(FIXTURES / "uji_train_small.csv")))
    test = build_set(list(read_ujiindoorloc(FIXTURES / "uji_validation_small.csv")), train.aps)
    return train, test


@pytest.fixture(scope="module")
def wknn(uji: tuple[FingerprintSet, FingerprintSet]) -> WKNN:
    return WKNN.fit(uji[0], {}, seed=0)


# ---------------------------------------------------------------- wknn: inverted index vs the old dense path


@pytest.mark.parametrize("distance", ["sorensen", "manhattan", "euclidean", "cosine"])
def test_wknn_inverted_index_answers_like_the_dense_reference(
    uji: tuple[FingerprintSet, FingerprintSet], wknn: WKNN, distance: str
) -> None:
    _, test = uji
    model = WKNN(
        wknn.aps, replace(wknn.params, distance=distance), wknn.min_rss, wknn.survey, wknn.groups, wknn.calibration
    )
    reference = reference_of(model)  # the dense per-query path the inverted index replaced
    batch = QueryBatch.from_set(test)
    got, want = model.predict(batch), reference.predict(batch)
    assert list(got.floor) == list(want.floor) and list(got.building) == list(want.building)
    np.testing.assert_allclose(got.xy, want.xy, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(got.error_m, want.error_m, rtol=1e-6, atol=1e-6)
    # and in batches of 32, as the executor calls it
    parts = [
        model.predict(QueryBatch(rss=test.rss[i : i + 32], age_ms=test.age_ms[i : i + 32]))
        for i in range(0, len(test), 32)
    ]
    np.testing.assert_allclose(np.concatenate([p.xy for p in parts]), want.xy, rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------- MC dropout per call


def _reference_mc_spread(net, x, labels, passes, seed=0):  # type: ignore[no-untyped-def]
    """The old mc_spread: the shared network in train mode, torch's global RNG."""
    outs = []
    with torch.no_grad(), seeded(seed, x.device):
        net.train()
        for _ in range(passes):
            outs.append(net(x).xy)
        net.eval()
    xy = torch.stack(outs).double()
    var = ((xy - xy.mean(dim=0, keepdim=True)) ** 2).sum(dim=2).mean(dim=0)
    return var.sqrt().numpy() * labels.scale


def test_mc_spread_is_per_row_and_leaves_the_network_alone(uji: tuple[FingerprintSet, FingerprintSet]) -> None:
    train, test = uji
    labels = SiteLabels.from_set(train)
    net = build_net(NetShape("dnn", len(train.aps), labels.n_floors, labels.n_buildings), 0, torch.device("cpu")).eval()
    x = torch.as_tensor(np.nan_to_num(test.rss[:12] + 110.0, nan=0.0) / 100.0, dtype=torch.float32)
    state = torch.random.get_rng_state()
    batched = mc_spread(net, x, labels, 8)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG is untouched
    assert not net.training
    # every row gets exactly what the old code gave that query alone
    alone = np.array([_reference_mc_spread(net, x[i : i + 1], labels, 8)[0] for i in range(len(x))])
    np.testing.assert_allclose(batched, alone, rtol=1e-5, atol=1e-6)
    assert (batched > 0).all()
    # concurrent calls from several threads on one network give the same answers
    results: list[np.ndarray] = []

    def call() -> None:
        for _ in range(5):
            results.append(mc_spread(net, x, labels, 8))

    threads = [threading.Thread(target=call) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for r in results:
        np.testing.assert_array_equal(r, batched)


# ---------------------------------------------------------------- batching executor


def test_executor_batches_concurrent_queries_and_answers_each_as_alone(
    uji: tuple[FingerprintSet, FingerprintSet], wknn: WKNN
) -> None:
    _, test = uji
    ex = BatchExecutor(wknn, label="wknn", max_rows=64, max_wait_ms=20)
    n = 40
    futures: dict[int, object] = {}
    lock = threading.Lock()

    def client(k: int) -> None:
        for i in range(k, n, 8):
            fut = ex.submit(QueryBatch(rss=test.rss[i : i + 1], age_ms=test.age_ms[i : i + 1]))
            with lock:
                futures[i] = fut

    threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    want = wknn.predict(QueryBatch(rss=test.rss[:n], age_ms=test.age_ms[:n]))
    for i, fut in futures.items():
        got = fut.result(timeout=30)  # type: ignore[attr-defined]
        np.testing.assert_allclose(got.xy[0], want.xy[i], rtol=1e-9)
        assert got.floor[0] == want.floor[i]
    assert ex.rows == n and ex.calls < n / 2  # queries shared predict calls
    ex.close()
    late = ex.submit(QueryBatch(rss=test.rss[:2], age_ms=test.age_ms[:2]))  # after close: still answered
    np.testing.assert_allclose(late.result(timeout=30).xy, want.xy[:2])


# ---------------------------------------------------------------- model cache


@pytest.fixture
def db(tmp_path: Path) -> Database:
    url = f"sqlite:///{tmp_path / 'c.db'}"
    upgrade(url)
    return Database(url)


def _publish(db: Database, site_id: str, model: WKNN) -> int:
    weights, config = dumps(model)
    with db.session() as s:
        if s.get(Site, site_id) is None:
            s.add(Site(id=site_id, name=site_id))
            s.flush()
        mv = publish_version(
            s,
            site_id=site_id,
            model="wknn",
            weights=weights,
            config=config,
            metrics=None,
            training={},
            source="finetune",
            job_id=None,
        )
        return mv.version


def test_model_cache_swaps_after_loading_remembers_misses_and_indexes_incrementally(
    db: Database, uji: tuple[FingerprintSet, FingerprintSet], wknn: WKNN
) -> None:
    _publish(db, "a", wknn)
    cache = ModelCache(db, device="cpu", refresh_s=3600, notifier=LocalNotifier(), negative_ttl_s=3600)
    first = cache.get("a")
    assert first is not None and first.version == 1
    assert set(cache.bssid_sites) == set(wknn.aps) and all(v == {"a"} for v in cache.bssid_sites.values())
    # an unknown site is looked up once, then remembered
    assert cache.get("b") is None and cache.known_missing("b") and not cache.site_known("b")
    _publish(db, "b", wknn)
    assert cache.get("b") is None  # still remembered (within the TTL) ...
    cache.invalidate("b")  # ... until a notice says it changed
    assert cache.get("b") is not None and cache.bssid_sites[wknn.aps[0]] == {"a", "b"}
    # activation of a new version: the old entry serves until the new one is loaded, then is closed
    v2 = _publish(db, "a", wknn)
    with db.session() as s:
        activate(s, site_id="a", version=v2)
    assert cache.peek("a") is first
    cache.invalidate("a")
    second = cache.peek("a")
    assert second is not None and second.version == v2 and first.executor._closed
    # a site whose model is withdrawn leaves the index
    with db.session() as s:
        s.execute(update(Site).where(Site.id == "b").values(active_version=None))
    cache.refresh()
    assert cache.peek("b") is None and cache.bssid_sites[wknn.aps[0]] == {"a"}
    cache.stop()


def test_model_cache_evicts_least_recently_used_over_budget_and_reloads(db: Database, wknn: WKNN) -> None:
    for sid in ("a", "b", "c"):
        _publish(db, sid, wknn)
    weights, _ = dumps(wknn)
    budget = 2 * len(weights) * 2  # two models (each counted at twice its stored size)
    cache = ModelCache(db, device="cpu", refresh_s=3600, notifier=LocalNotifier(), max_bytes=budget)
    cache.get("a"), cache.get("b")
    cache.peek("a")  # a is now the most recently used
    cache.get("c")
    assert cache.peek("b") is None and cache.peek("a") is not None and cache.peek("c") is not None
    assert cache.bssid_sites[wknn.aps[0]] == {"a", "b", "c"}  # evicted sites still detectable
    loads = cache.loads
    assert cache.get("b") is not None and cache.loads == loads + 1  # reloaded on demand
    cache.stop()


# ---------------------------------------------------------------- query log: one bad row fails alone


def test_a_bad_row_fails_only_its_own_request(db: Database) -> None:
    with db.session() as s:
        s.add(Site(id="s1", name="s1"))
    writer = QueryWriter(db, max_wait_ms=300)  # everything below lands in one group
    writer.start()
    good = [writer.submit([query_row("s1", i)]) for i in range(3)]
    bad = writer.submit([query_row("no-such-site", 9)])  # foreign key violation
    good += [writer.submit([query_row("s1", i), query_row("s1", i + 10)]) for i in range(3, 5)]
    with pytest.raises(Exception, match="FOREIGN KEY"):
        bad.result(timeout=30)
    for f in good:
        f.result(timeout=30)
    writer.stop()
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(Query)) == 7
        assert s.get(Site, "s1").n_queries == 7  # type: ignore[union-attr]


def test_one_group_stores_session_and_plain_rows_and_counts_each_site(db: Database) -> None:
    """Rows of one commit may differ in their optional columns (a session query names its session)."""
    with db.session() as s:
        s.add_all([Site(id="a", name="a"), Site(id="b", name="b")])
    writer = QueryWriter(db, max_wait_ms=300)
    writer.start()
    futures = [writer.submit([query_row("a", 1)]), writer.submit([{**query_row("b", 2), "session_id": "walk-1"}])]
    futures.append(writer.submit([query_row("b", 3), query_row("a", 4)]))
    for f in futures:
        f.result(timeout=30)
    writer.stop()
    assert writer.commits == 1
    with db.session() as s:
        sessions = {x: sid for x, sid in s.execute(select(Query.x, Query.session_id))}
        assert sessions == {1.0: None, 2.0: "walk-1", 3.0: None, 4.0: None}
        assert s.scalar(select(func.count()).where(Query.created_at.is_not(None))) == 4
        assert s.get(Site, "a").n_queries == 2 and s.get(Site, "b").n_queries == 2  # type: ignore[union-attr]


def test_startup_objects_are_frozen_once_per_process() -> None:
    import gc

    freeze_startup_objects()
    frozen = gc.get_freeze_count()
    assert frozen > 0
    freeze_startup_objects()  # a second runtime in the same process (tests) freezes nothing more
    assert gc.get_freeze_count() == frozen


def test_malloc_tuning_applies_on_glibc_and_can_be_switched_off() -> None:
    import platform

    assert tune_malloc(0) is False
    assert tune_malloc(128) is (platform.system() == "Linux" and platform.libc_ver()[0] == "glibc")


# ---------------------------------------------------------------- retention


def test_retention_deletes_old_queries_but_not_the_pool_of_a_pending_update(db: Database) -> None:
    from datetime import UTC, datetime, timedelta

    from app.models import Job
    from app.services.retention import cutoff_id, delete_expired_queries

    now = datetime(2026, 12, 1, tzinfo=UTC)
    old, new = cutoff_id(now - timedelta(days=40)), cutoff_id(now - timedelta(days=1))
    with db.session() as s:
        s.add_all([Site(id="a", name="a", n_queries=3), Site(id="b", name="b", n_queries=3)])
        s.flush()
        s.add(Job(id="j1", kind="cotrain", site_id="b", state="queued", params={}))
        s.flush()
        for site in ("a", "b"):
            for i, (prefix, used) in enumerate(((old, None), (old, "j0"), (new, None))):
                row = {**query_row(site, i), "id": prefix[:16] + f"{i:02d}{site}".ljust(16, "0"), "used_by_job": used}
                s.add(Query(**row))
    assert delete_expired_queries(db, retention_days=None, now=now) == 0
    assert delete_expired_queries(db, retention_days=30, now=now, chunk=1) == 3
    with db.session() as s:
        left = {(q.site_id, q.id[:16] == new[:16], q.used_by_job) for q in s.scalars(select(Query))}
        assert left == {("a", True, None), ("b", True, None), ("b", False, None)}  # b's unused old row stays
        assert s.get(Site, "a").n_queries == 1 and s.get(Site, "b").n_queries == 2  # type: ignore[union-attr]


def _two_keys_walks(db: Database, prefix: str) -> None:
    """Site "a": keys A and B each stored a walk "walk-1" (5 queries, the same timestamps), unused; 2 used rows."""
    with db.session() as s:
        s.add(Site(id="a", name="a", n_queries=12))
        s.flush()
        for k, (key, sid, used) in enumerate(
            [("A", "walk-1", None)] * 5 + [("B", "walk-1", None)] * 5 + [("A", None, "j0")] * 2
        ):
            row = {**query_row("a", k), "id": prefix[:16] + f"{k:016x}", "used_by_job": used}
            s.add(Query(**row, key_id=key, session_id=sid, client_timestamp=1_700_000_000_000 + 1000 * (k % 5)))


def test_retention_keeps_every_keys_walks_for_a_pending_update(db: Database) -> None:
    """Walks are grouped by (key, session id); the pool a pending update needs is the site's unused queries, so
    retention keeps both keys' walks whole, and deletes them like any other once the update is over."""
    from datetime import UTC, datetime, timedelta

    from app.models import Job
    from app.services.cotrain import _load_queries
    from app.services.retention import cutoff_id, delete_expired_queries

    now = datetime(2026, 12, 1, tzinfo=UTC)
    _two_keys_walks(db, cutoff_id(now - timedelta(days=40)))
    with db.session() as s:
        s.add(Job(id="j1", kind="cotrain", site_id="a", state="queued", params={}))
    assert delete_expired_queries(db, retention_days=30, now=now, chunk=3) == 2  # the used rows only
    with db.session() as s:
        pool = _load_queries(s, "a", 1000, 600.0)
        assert sorted((w.key, len(w.ids)) for w in pool.walks) == [("walk-1@A", 5), ("walk-1@B", 5)]
        s.execute(update(Job).where(Job.id == "j1").values(state="succeeded"))
    assert delete_expired_queries(db, retention_days=30, now=now) == 10


def test_retention_rechecks_for_a_pending_update_in_its_delete(db: Database) -> None:
    """An update queued between a chunk's SELECT and its DELETE keeps its pool: the DELETE re-checks."""
    from datetime import UTC, datetime, timedelta

    from sqlalchemy import event, text

    from app.services.retention import cutoff_id, delete_expired_queries

    now = datetime(2026, 12, 1, tzinfo=UTC)
    _two_keys_walks(db, cutoff_id(now - timedelta(days=40)))
    queued = []

    def queue_an_update(conn: object, cursor: object, statement: str, *args: object) -> None:
        if statement.lstrip().upper().startswith("DELETE FROM QUERIES") and not queued:
            queued.append(True)  # a request on another connection, committed before this DELETE runs
            with db.engine.begin() as other:
                other.execute(
                    text(
                        "INSERT INTO jobs (id, kind, site_id, state, progress, message, params, attempts, created_at) "
                        "VALUES ('j1', 'cotrain', 'a', 'queued', 0, 'queued', '{}', 0, CURRENT_TIMESTAMP)"
                    )
                )

    event.listen(db.engine, "before_cursor_execute", queue_an_update)
    try:
        assert delete_expired_queries(db, retention_days=30, now=now) == 2  # the used rows only
    finally:
        event.remove(db.engine, "before_cursor_execute", queue_an_update)
    assert queued
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(Query).where(Query.used_by_job.is_(None))) == 10
        assert s.get(Site, "a").n_queries == 10  # type: ignore[union-attr]


# ---------------------------------------------------------------- embedded mode on several processes


def test_one_embedded_worker_runs_jobs_and_another_takes_over(db: Database, tmp_path: Path) -> None:
    """Two API processes over one SQLite file: the holder of the lock runs every job, whichever process accepted
    it; when it stops, the other takes the lock and the jobs over. (flock conflicts between two open files in one
    process as between processes, so two workers here stand for two processes.)"""
    import time

    from app.config import Settings
    from app.models import Job
    from app.services.jobs import JobContext, create_job
    from worker.dispatch import EmbeddedWorker

    ctx = JobContext(db=db, settings=Settings(data_dir=tmp_path), device="cpu", notifier=LocalNotifier())
    lock = tmp_path / "siteloc.db.worker-lock"
    first, second = (EmbeddedWorker(ctx, lock_path=lock, poll_s=0.1) for _ in range(2))
    first.start()
    assert first.primary.wait(10)
    second.start()

    def run_via(worker: EmbeddedWorker) -> str:
        with db.session() as s:
            job_id = create_job(s, kind="no-such-kind", site_id=None, params={}).id  # fails fast, but it ran
        worker.enqueue(job_id)
        for _ in range(300):
            with db.session() as s:
                state = s.get(Job, job_id).state  # type: ignore[union-attr]
            if state not in ("queued", "running"):  # "running" is seen for a moment before the job ends
                return state
            time.sleep(0.05)
        return state

    assert run_via(second) == "failed"  # accepted by the non-holder, run by the holder
    assert not second.primary.is_set()
    first.stop()
    assert second.primary.wait(10)  # took over
    assert run_via(second) == "failed"
    second.stop()
