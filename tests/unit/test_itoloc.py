"""iToLoc model: image transform, training, determinism, serialization, ablations (CPU, seconds)."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest
import torch

from ml.data.features import FingerprintSet
from ml.data.splits import holdout_groups, holdout_split
from ml.evaluate import metrics
from ml.models.base import QueryBatch
from ml.models.itoloc import ITOLOC, ModuleSet, smear
from ml.models.itoloc_net import ItolocConfig, fingerprint_image, rss_to_f

TINY: dict[str, Any] = {
    "min_steps": 0,  # exactly `epochs` epochs (the default stretches small surveys to 1,400 steps)
    "n_aps": 12,
    "width": 8,
    "pool_out": 2,
    "dropout": 0.1,
    "cell_m": 5.0,
    "epochs": 15,
    "batch_size": 32,
    "lr": 0.05,
    "holdout": 0.15,
}


def synthetic_site(n_per_floor: int = 96, seed: int = 0, n_users: int = 4) -> FingerprintSet:
    """Two buildings x two floors, 20 m x 20 m each, surveyed on a 5 m grid of reference points;
    log-distance RSS from 10 APs per building (AP layout fixed, `seed` draws the scans)."""
    site = np.random.default_rng(1234)
    aps = [f"ap{i:02d}" for i in range(20)]
    ap_xy = site.uniform(0, 20, (20, 2)) + np.repeat([[0.0, 0.0], [100.0, 0.0]], 10, 0)
    ap_floor = site.integers(0, 2, 20)
    grid = np.stack(np.meshgrid(np.arange(4), np.arange(4)), -1).reshape(-1, 2) * 5.0 + 2.5
    rng = np.random.default_rng(seed)
    rows: dict[str, list[Any]] = {k: [] for k in ("rss", "xy", "floor", "building", "device", "user", "ts")}
    for b in range(2):
        for f in range(2):
            xy = grid[rng.integers(0, len(grid), n_per_floor)] + rng.normal(0, 0.5, (n_per_floor, 2)) + [100.0 * b, 0]
            dist = np.hypot(*(xy[:, None, :] - ap_xy[None]).transpose(2, 0, 1)) + 1.0
            rss = -35 - 25 * np.log10(dist) - 12 * np.abs(ap_floor[None] - f) + rng.normal(0, 3, dist.shape)
            device = rng.integers(0, 3, n_per_floor)
            rss = rss + (device[:, None] - 1) * 3.0
            rss[rss < -90] = np.nan
            rows["rss"].append(rss)
            rows["xy"].append(xy)
            rows["floor"] += [str(f)] * n_per_floor
            rows["building"] += [str(b)] * n_per_floor
            rows["device"] += [f"phone{d}" for d in device]
            rows["user"] += [f"u{u}" for u in rng.integers(0, n_users, n_per_floor)]
            rows["ts"].append(1_700_000_000_000 + rng.integers(0, 3, n_per_floor) * 86_400_000)
    rss = np.concatenate(rows["rss"]).astype(np.float32)
    n = len(rss)
    return FingerprintSet(
        aps=aps,
        rss=rss,
        age_ms=np.full_like(rss, np.nan),
        xy=np.concatenate(rows["xy"]),
        floor=np.array(rows["floor"], dtype=object),
        building=np.array(rows["building"], dtype=object),
        path=np.array([None] * n, dtype=object),
        device=np.array(rows["device"], dtype=object),
        user=np.array(rows["user"], dtype=object),
        timestamp=np.concatenate(rows["ts"]).astype(np.int64),
    )


@pytest.fixture(scope="module", autouse=True)
def _threads() -> None:
    torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="module")
def site() -> tuple[FingerprintSet, FingerprintSet]:
    train, test = synthetic_site(seed=0), synthetic_site(n_per_floor=30, seed=1)
    return train, test


@pytest.fixture(scope="module")
def trained(site: tuple[FingerprintSet, FingerprintSet]) -> ITOLOC:
    return ITOLOC.fit(site[0], TINY, seed=3)


def test_image_finite_for_unheard_aps() -> None:
    cfg = ItolocConfig()
    rss = torch.tensor([[np.nan, -40.0, -104.9, 0.0, -200.0, np.nan], [np.nan] * 6])
    f = rss_to_f(rss, cfg)
    assert torch.all(f >= cfg.f0) and torch.all(f <= cfg.f0 + 1)
    for log in (True, False):
        img = fingerprint_image(f, log)
        assert img.shape == (2, 1, 6, 6)
        assert torch.isfinite(img).all()
        assert torch.all(img[1] == 0)  # nothing heard: all ratios 1
    raw = fingerprint_image(f, False)[0, 0]
    assert torch.allclose(raw[1, 0], (f[0, 1] - f[0, 0]) / f[0, 0])
    assert float(raw.max()) <= 1 / cfg.f0 + 1e-5


def test_trains_and_beats_a_broken_model(trained: ITOLOC, site: tuple[FingerprintSet, FingerprintSet]) -> None:
    hist = trained.history
    assert hist[-1]["la"] < 0.7 * hist[0]["la"]  # loss falls
    m = metrics(trained.predict(QueryBatch.from_set(site[1])), site[1])
    # Guessing the floor's centre gives ~7.6 m; a model ignoring the RSS, worse.
    assert m["mean_m"] < 5.0, m
    assert m["building_hit"] > 0.97 and m["floor_hit"] > 0.85, m
    assert np.all(np.isfinite(trained.predict(QueryBatch.from_set(site[1])).error_m))


def test_error_estimate_ranks_errors(trained: ITOLOC, site: tuple[FingerprintSet, FingerprintSet]) -> None:
    m = metrics(trained.predict(QueryBatch.from_set(site[1])), site[1])
    assert m["error_estimate_spearman"] > 0.1, m
    assert 0.2 < m["error_estimate_median_ratio"] < 5, m


def test_same_seed_same_weights(site: tuple[FingerprintSet, FingerprintSet]) -> None:
    params = {**TINY, "epochs": 2}
    a = ITOLOC.fit(site[0], params, seed=7).arrays()
    b = ITOLOC.fit(site[0], params, seed=7).arrays()
    c = ITOLOC.fit(site[0], params, seed=8).arrays()
    assert a.keys() == b.keys()
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not all(np.array_equal(a[k], c[k]) for k in a)


def test_serialize_round_trip(trained: ITOLOC, site: tuple[FingerprintSet, FingerprintSet]) -> None:
    ser = pytest.importorskip("ml.serialize")
    from ml.models import _MODELS

    if "itoloc" not in _MODELS:
        pytest.skip("itoloc not registered yet")
    blob, config = ser.dumps(trained)
    again = ser.loads(blob, config)
    q = QueryBatch.from_set(site[1])
    p1, p2 = trained.predict(q), again.predict(q)
    assert np.array_equal(p1.xy, p2.xy)
    assert np.array_equal(p1.floor, p2.floor) and np.array_equal(p1.error_m, p2.error_m)


def test_state_round_trip_without_registry(trained: ITOLOC, site: tuple[FingerprintSet, FingerprintSet]) -> None:
    import json

    config = json.loads(json.dumps(trained.config()))
    again = ITOLOC.from_state({k: np.ascontiguousarray(v) for k, v in trained.arrays().items()}, config)
    q = QueryBatch.from_set(site[1])
    assert np.array_equal(trained.predict(q).xy, again.predict(q).xy)


@pytest.mark.parametrize("switch", [{"image": False}, {"adversarial": False}, {"spatial": False}])
def test_ablation_switches_run(switch: dict[str, Any], site: tuple[FingerprintSet, FingerprintSet]) -> None:
    model = ITOLOC.fit(site[0], {**TINY, "epochs": 2, **switch}, seed=1)
    pred = model.predict(QueryBatch.from_set(site[1]))
    assert pred.xy.shape == (len(site[1]), 2) and np.all(np.isfinite(pred.xy))


def test_unknown_param_rejected(site: tuple[FingerprintSet, FingerprintSet]) -> None:
    with pytest.raises(ValueError, match="unknown itoloc params"):
        ITOLOC.fit(site[0], {"no_such_knob": 1})


def test_cotraining_hooks(trained: ITOLOC, site: tuple[FingerprintSet, FingerprintSet]) -> None:
    test = site[1]
    rss = test.with_aps(trained.aps).rss
    probs = trained.module_probs(rss)
    assert probs.shape == (3, len(test), len(trained.layout.cell_xy))
    assert np.allclose(probs.sum(-1), 1.0, atol=1e-4)
    stochastic = [trained.module_probs(rss, mc_dropout=True) for _ in range(2)]
    assert not np.allclose(stochastic[0], stochastic[1])
    assert np.allclose(trained.module_probs(rss), probs)  # dropout off again afterwards
    target = trained.targets(test)
    smeared = smear(target, 0.05, np.random.default_rng(0), trained.zone_cells(target))
    assert np.allclose(smeared.sum(1), 1.0, atol=1e-5)
    assert np.all(smeared.argmax(1) == target.argmax(1)) and np.all(smeared.max(1) < 1)
    assert not np.any(smeared[~trained.zone_cells(target)])
    before = {k: v.copy() for k, v in trained.arrays().items()}
    import copy

    model = copy.deepcopy(trained)
    model.fine_tune_modules([None, ModuleSet(rss, smeared, test.xy), None], epochs=1)
    after = model.arrays()
    changed = {k for k in before if not np.array_equal(before[k], after[k])}
    assert changed and all(k.startswith("net.modules_loc.1.") for k in changed), sorted(changed)[:5]


def test_holdout_keeps_every_floor(site: tuple[FingerprintSet, FingerprintSet]) -> None:
    train = site[0]
    split = holdout_split(train, 0.2, 0)
    held = np.zeros(len(train), dtype=bool)
    held[split.hold] = True
    assert split.by == "position" and 0.05 < held.mean() < 0.35  # UJI has no paths: whole survey positions
    assert set(train.floor_key[~held]) == set(train.floor_key)
    col, _ = holdout_groups(train, split.by)
    assert col is not None and not set(col[held]) & set(col[~held])


def test_projected_coordinates_keep_precision(site: tuple[FingerprintSet, FingerprintSet]) -> None:
    """Positions ~4.9e6 m from the origin (UJIIndoorLoc's EPSG:3857) must not lose metres in the losses."""
    from ml.models.itoloc_site import build_layout, domain_labels
    from ml.models.itoloc_train import cell_distances

    train = dataclasses.replace(site[0], xy=site[0].xy + np.array([-7600.0, 4_864_900.0]))
    cfg = ItolocConfig.from_params(TINY)
    layout = build_layout(train, train.rss, cfg.n_aps, cfg.zones, cfg.cell_m)
    model = ITOLOC(cfg, layout, domain_labels(train, cfg.time_bucket_ms, 1)[1], np.zeros(5))
    batch = model._labelled(train, np.zeros(len(train), dtype=np.int64))
    got = cell_distances(batch, model.cells, cfg).numpy()
    want = np.hypot(*(train.xy[:, None, :] - layout.cell_xy[None]).transpose(2, 0, 1))
    want += cfg.floor_gap_m * (batch.fkey.numpy()[:, None] != model.cell_fkey[None, :])
    assert np.abs(got - want).max() < 0.01


def test_coverage_pick_leaves_no_scan_with_an_empty_image() -> None:
    """Two areas: 20 APs heard everywhere-ish in area A (often), 20 heard only in area B (rarely). By frequency
    alone the 8 picks all come from A and B's scans get an empty image; with ap_min_heard they do not."""
    from ml.models.itoloc_site import top_aps

    rng = np.random.default_rng(0)
    rss = np.full((100, 40), np.nan, dtype=np.float32)
    rss[:80, :20] = rng.uniform(-80, -40, (80, 20))  # area A: 80 scans
    rss[80:, 20:] = rng.uniform(-80, -40, (20, 20))  # area B: 20 scans
    heard = ~np.isnan(rss)
    by_count = top_aps(rss, 8)
    assert set(by_count.tolist()) <= set(range(20)) and heard[80:][:, by_count].sum(1).max() == 0
    covered = top_aps(rss, 8, min_heard=3)
    assert len(set(covered.tolist())) == 8
    assert heard[:, covered].sum(1).min() >= 3  # every scan hears at least 3 of the picks
