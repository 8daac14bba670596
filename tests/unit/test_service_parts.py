"""Service building blocks that need no server: group commit, sensor codec, ids, settings."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import func, select

from app.config import Settings
from app.db import Database
from app.migrate import upgrade
from app.models import Query, Site
from app.services.codec import pack_sensors, unpack_sensors
from app.services.ids import time_ordered_id
from app.services.querylog import QueryWriter
from ml.types import SensorData
from tests.fixture_data import query_row


@pytest.fixture
def db(tmp_path: Path) -> Database:
    url = f"sqlite:///{tmp_path / 'q.db'}"
    upgrade(url)
    d = Database(url)
    with d.session() as s:
        s.add(Site(id="s1", name="s1"))
    return d


def test_group_commit_shares_transactions_and_stores_every_row(db: Database) -> None:
    writer = QueryWriter(db, max_rows=500, max_wait_ms=20)
    writer.start()
    futures = []
    lock = threading.Lock()

    def client(k: int) -> None:
        for i in range(50):
            fut = writer.submit([query_row("s1", k * 1000 + i)])
            with lock:
                futures.append(fut)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for f in futures:
        f.result(timeout=30)
    writer.stop()
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(Query)) == 400
        assert s.get(Site, "s1").n_queries == 400  # type: ignore[union-attr]
    assert writer.rows_written == 400
    assert writer.commits < 400 / 4  # requests shared commits


def test_failed_commit_fails_every_waiting_request(db: Database) -> None:
    writer = QueryWriter(db, max_wait_ms=0)
    writer.start()
    bad = {**query_row("s1", 0), "site_id": "no-such-site"}  # foreign key violation
    fut = writer.submit([bad])
    with pytest.raises(Exception, match="FOREIGN KEY"):
        fut.result(timeout=10)
    ok = writer.submit([query_row("s1", 1)])
    ok.result(timeout=10)  # the writer keeps going after a failed batch
    writer.stop()


def test_sensor_codec_round_trip_with_missing_modalities() -> None:
    rng = np.random.default_rng(0)
    s = SensorData(
        rate_hz=10.0,
        accel=rng.normal(size=(10, 3)).astype(np.float32),
        gyro=None,
        mag=rng.normal(size=(10, 3)).astype(np.float32),
    )
    back = unpack_sensors(pack_sensors(s))
    assert back.rate_hz == 10.0 and back.gyro is None
    assert back.accel is not None and np.array_equal(back.accel, s.accel)
    assert back.mag is not None and np.array_equal(back.mag, s.mag)
    with pytest.raises(ValueError):
        unpack_sensors(b"nope" + bytes(20))


@pytest.mark.parametrize("width", [3, 4])
def test_sensor_codec_keeps_the_rotation_vector_and_reads_v1_rows(width: int) -> None:
    """Self-maintenance replays stored sessions: their heading comes from the rotation vector, so it is stored too
    (each modality at its own length); rows written before (format SLW1: accel/gyro/mag) still read."""
    import struct

    rng = np.random.default_rng(1)
    rot = rng.normal(size=(12, width)).astype(np.float32)
    s = SensorData(rate_hz=50.0, accel=rng.normal(size=(10, 3)).astype(np.float32), rotation=rot)
    back = unpack_sensors(pack_sensors(s))
    assert back.rotation is not None and np.array_equal(back.rotation, rot) and back.gyro is None
    assert back.accel is not None and back.accel.shape == (10, 3)
    acc = rng.normal(size=(5, 3)).astype("<f4")
    v1 = struct.pack("<4sfHB", b"SLW1", 25.0, 5, 1) + acc.tobytes()
    old = unpack_sensors(v1)
    assert old.rate_hz == 25.0 and old.accel is not None and np.array_equal(old.accel, acc) and old.rotation is None


def test_query_ids_sort_by_creation() -> None:
    ids = [time_ordered_id() for _ in range(1000)]
    assert ids == sorted(ids) and len(set(ids)) == 1000


def test_settings_defaults_and_validation(tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path, database_url="", redis_url="")
    assert s.embedded and s.resolved_database_url == f"sqlite:///{tmp_path.resolve() / 'siteloc.db'}"
    assert s.visibility_timeout_s > s.job_hard_time_limit_s
    with pytest.raises(ValueError):
        Settings(device="tpu")  # type: ignore[arg-type]


def test_a_stored_source_artifact_in_an_unknown_format_is_rebuilt_not_fatal() -> None:
    from app.services.transfer import _load_cached
    from ml.models.mtloc import ImuArtifact

    assert _load_cached(ImuArtifact.loads, None) is None
    unknown = {"artifact": "imu-lstm", "format_version": 999}
    assert _load_cached(ImuArtifact.loads, (b"", unknown, 7)) is None
