"""MTLoc (ml.models.mtloc) and its sensor features (ml.sensors): tiny configs, real torch training."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ml.data.features import build_set
from ml.data.ilc2020 import read_ilc_windows
from ml.models.base import QueryBatch
from ml.models.mtloc import MTLoc, MTLocConfig, pretrain_imu
from ml.sensors import window_features, window_speed
from ml.serialize import dumps, loads
from ml.types import SensorData

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
TINY = {
    "n_aps": 64,
    "wifi_hidden": 16,
    "imu_hidden": 8,
    "mag_hidden": 8,
    "fusion_hidden": 16,
    "epochs": 40,
    "batch_size": 32,
    "lr": 0.01,
    "pretrain_epochs": 3,
    "val_fraction": 0.0,
}


@pytest.fixture(scope="module")
def windows():
    return build_set(list(read_ilc_windows(FIXTURES / "ilc_site1_F1_small.tar.xz")))


@pytest.fixture(scope="module")
def model(windows):
    return MTLoc.fit(windows, TINY, seed=0)


def _gravity(n: int, rate: float) -> np.ndarray:
    return np.tile(np.array([[0.0, 3.0, 4.0]], dtype=np.float32), (n, 1))  # |v| = 5


def test_features_are_magnitudes_resampled_to_the_grid() -> None:
    s = SensorData(rate_hz=50.0, accel=_gravity(50, 50), gyro=None, mag=_gravity(25, 50))
    feats, cov = window_features(s, steps=10, rate_hz=10.0)
    assert feats.shape == (10, 3)
    assert np.allclose(feats[:, 0], 5.0) and np.allclose(feats[:, 2], 5.0)
    assert cov[0] == pytest.approx(1.0)
    assert cov[1] == 0.0 and np.all(feats[:, 1] == 0)  # missing gyroscope
    assert cov[2] == pytest.approx(24 / 50 / 0.9, rel=1e-3)  # half a second of magnetometer: a partial window


def test_features_follow_a_ramp_whatever_the_phone_rate() -> None:
    t = np.arange(100) / 100.0  # 1 s at 100 Hz, |accel| rising linearly 0 -> 9.9
    accel = np.stack([np.zeros(100), np.zeros(100), 10 * t], axis=1).astype(np.float32)
    feats, _ = window_features(SensorData(rate_hz=100.0, accel=accel), steps=10, rate_hz=10.0)
    assert np.allclose(feats[:, 0], 9.9 - (9 - np.arange(10)) * 1.0, atol=1e-4)


def test_window_speed_of_a_straight_walk() -> None:
    ts = np.arange(0, 5000, 100, dtype=np.int64)
    xy = np.stack([ts / 1000.0 * 1.2, np.zeros(len(ts))], axis=1)  # 1.2 m/s
    speed = window_speed(np.array(["p"] * len(ts), dtype=object), ts, xy, 1000.0)
    assert np.isnan(speed[:10]).all()  # no position one second before the first second
    assert np.allclose(speed[10:], 1.2)


def test_fits_the_site_and_answers_every_modality_pattern(windows, model) -> None:
    batch = QueryBatch.from_set(windows.with_aps(model.aps))
    pred = model.predict(batch)
    err = np.hypot(*(pred.xy - windows.xy).T)
    centroid = np.hypot(*(windows.xy - windows.xy.mean(axis=0)).T)
    assert err.mean() < 0.6 * centroid.mean(), (err.mean(), centroid.mean())
    assert np.all(np.isfinite(pred.error_m)) and np.all(pred.error_m > 0)
    wifi_only = QueryBatch(rss=batch.rss, sensors=None)
    no_wifi = QueryBatch(rss=np.full_like(batch.rss, np.nan), sensors=batch.sensors)
    partial = QueryBatch(
        rss=batch.rss,
        sensors=[SensorData(rate_hz=s.rate_hz, accel=s.accel[-3:], gyro=None, mag=s.mag[-4:]) for s in batch.sensors],
    )
    for b in (wifi_only, no_wifi, partial):
        p = model.predict(b)
        assert p.xy.shape == (len(windows), 2) and np.all(np.isfinite(p.xy)) and np.all(p.error_m > 0)


def test_round_trips_through_safetensors(windows, model) -> None:
    weights, config = dumps(model)
    again = loads(weights, config)
    batch = QueryBatch.from_set(windows.with_aps(model.aps))
    a, b = model.predict(batch), again.predict(batch)
    assert np.allclose(a.xy, b.xy) and np.allclose(a.error_m, b.error_m)
    assert list(a.floor) == list(b.floor)


@pytest.mark.parametrize("target", ["position", "speed"])
def test_frozen_keeps_the_pretrained_imu_lstm_and_finetune_trains_it(windows, target: str) -> None:
    params = {**TINY, "pretrain_target": target, "epochs": 3}
    art = pretrain_imu({"src": windows}, params, seed=1)
    assert art.config["target"] == target and len(art.config["loss"]) == 3
    frozen = MTLoc.fit(windows, params, seed=0, imu_source=art, strategy="frozen")
    tuned = MTLoc.fit(windows, params, seed=0, imu_source=art, strategy="finetune")
    for k, v in art.arrays.items():
        assert np.array_equal(frozen.arrays()[k], v), k
    assert any(not np.array_equal(tuned.arrays()[k], v) for k, v in art.arrays.items())
    assert frozen.info["imu_source"]["target"] == target


def test_bad_params_and_strategies_are_refused(windows) -> None:
    with pytest.raises(ValueError, match="unknown mtloc params"):
        MTLocConfig.parse({"layers": 3})
    with pytest.raises(ValueError, match="modality_dropout"):
        MTLocConfig.parse({"modality_dropout": 1.0})
    with pytest.raises(ValueError, match="need a pretrained IMU-LSTM"):
        MTLoc.fit(windows, TINY, strategy="frozen")
    no_sensors = build_set([])
    with pytest.raises(ValueError, match="sensor windows"):
        pretrain_imu({"src": no_sensors}, TINY)


def test_bench_runs_the_table_layouts_and_the_report_renders_them(tmp_path: Path) -> None:
    """`python -m bench.mtloc` end to end on the fixture trace archive (as both source and target site)."""
    import json

    from bench.mtloc import main
    from bench.report import render

    for site in ("src", "dst"):
        (tmp_path / "ilc2020" / site).mkdir(parents=True)
        (tmp_path / "ilc2020" / site / "F1.tar.xz").symlink_to(FIXTURES / "ilc_site1_F1_small.tar.xz")
    small = {k: v for k, v in TINY.items() if k not in ("epochs", "pretrain_epochs", "val_fraction")}
    argv = ["--data-dir", str(tmp_path), "--source", "src", "--target", "dst", "--fractions", "0.5,1"]
    argv += ["--epochs", "2", "--pretrain-epochs", "1", "--params", json.dumps(small), "--variant", "speed"]
    assert main([*argv, "--out", str(tmp_path / "out"), "--test-fraction", "0.25"]) == 0
    d = json.loads((tmp_path / "out" / "mtloc_dst_F1.json").read_text())
    assert d["wknn"]["n"] == d["n_test_windows"] > 0 and d["coverage_bound"]["n"] == d["n_test_windows"]
    strategies = {(r["strategy"], r["fraction"]) for r in d["runs"]}
    assert {("scratch", 1.0), ("frozen", 0.5), ("finetune", 1.0), ("frozen (speed)", 1.0)} <= strategies
    assert all("wipe_wifi+imu+mag" in r for r in d["runs"] if r["fraction"] == 1.0)
    doc = "\n".join(
        f"<!-- bench-table: {kind} mtloc_*.json -->\n<!-- /bench-table -->"
        for kind in ("mtloc_goal", "mtloc_fractions", "mtloc_wipe")
    )
    text, missing = render(doc, tmp_path / "out")
    assert not missing and text.count("| dst F1 |") >= 3, text
