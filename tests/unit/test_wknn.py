"""WKNN: accuracy bounds on seeded synthetic sites and the small real fixtures, tuning, sparse
distances against dense references, hierarchy, stale-entry cutoff, serialization, site detection,
and the bench runner end to end on the fixtures."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from bench.core import main as bench_main
from ml.data.features import FingerprintSet, build_set
from ml.detect import detect_site, score_sites
from ml.evaluate import metrics
from ml.models import get_model_class
from ml.models.base import QueryBatch
from ml.models.wknn import (
    AGE_GRID_MS,
    DISTANCES,
    RAW_NOT_HEARD_DBM,
    REPRESENTATIONS,
    WKNN,
    SparseIndex,
    SparseRows,
    WKNNParams,
    distances,
    represent,
)
from ml.serialize import dumps, loads
from ml.types import Fingerprint, WifiReading
from tests.fixture_data import uji_data_dir

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
FAST = {"tune": False, "representation": "powed", "distance": "sorensen", "k": 3, "k_floor": 3, "k_building": 3}


# ---------------------------------------------------------------- synthetic sites


def _access_points(rng: np.random.Generator, buildings: list[str | None], floors: list[str]) -> list[tuple]:
    """8 APs per (building, floor); buildings 300 m apart so they never hear each other."""
    aps = []
    for bi, b in enumerate(buildings):
        for fi, _ in enumerate(floors):
            for j in range(8):
                aps.append((f"ap-{b}-{fi}-{j}", 300.0 * bi + rng.uniform(0, 40), rng.uniform(0, 20), fi, bi))
    return aps


def _scan(rng, aps, x, y, fi, bi, stale: bool) -> list[WifiReading]:
    out = []
    for name, ax, ay, afi, abi in aps:
        d = math.hypot(x + 300.0 * bi - ax, y - ay)
        rss = -35.0 - 25.0 * math.log10(max(d, 1.0)) - 15.0 * abs(fi - afi) + rng.normal(0, 2.0)
        if rss > -90 and abi == bi:
            out.append(WifiReading(name, round(rss), int(rng.uniform(0, 1500))))
    if stale:  # cached entries: the value from somewhere else, a minute old; poison unless cut by age
        for j in rng.choice(len(out), size=min(3, len(out)), replace=False):
            out[j] = WifiReading(out[j].bssid, round(rng.uniform(-60, -40)), int(rng.uniform(25_000, 60_000)))
    return out


def synthetic_site(
    seed: int = 0,
    buildings: tuple[str | None, ...] = ("A", "B"),
    floors: tuple[str, ...] = ("0", "1"),
    n_paths: int = 6,
    per_path: int = 20,
    stale: bool = False,
) -> list[Fingerprint]:
    """Walks (paths) across a 40 x 20 m floor plan of every floor of every building."""
    rng = np.random.default_rng(seed)
    aps = _access_points(np.random.default_rng(1234), list(buildings), list(floors))
    fps = []
    for bi, b in enumerate(buildings):
        for fi, f in enumerate(floors):
            for p in range(n_paths):
                y0 = rng.uniform(1, 19)
                for x in np.linspace(1, 39, per_path):
                    y = float(np.clip(y0 + rng.normal(0, 1.0), 0, 20))
                    wifi = _scan(rng, aps, float(x), y, fi, bi, stale)
                    fps.append(Fingerprint(wifi, float(x), y, f, b, device="d0", path=f"{b}{f}-{seed}-{p}"))
    return fps


def train_test(stale: bool = False, **kw) -> tuple[FingerprintSet, FingerprintSet]:
    train = build_set(synthetic_site(seed=0, stale=stale, **kw))
    test = build_set(synthetic_site(seed=1, n_paths=2, stale=stale, **kw), train.aps)
    return train, test


@pytest.fixture(scope="module")
def site() -> tuple[FingerprintSet, FingerprintSet]:
    return train_test()


@pytest.fixture(scope="module")
def tuned(site) -> WKNN:
    return WKNN.fit(site[0], {}, seed=0)


# ---------------------------------------------------------------- accuracy and tuning


def test_registered() -> None:
    assert get_model_class("wknn") is WKNN


def test_tuned_model_is_accurate_on_a_synthetic_site(site, tuned) -> None:
    _, test = site
    m = metrics(tuned.predict(QueryBatch.from_set(test)), test)
    # The site is 40 x 20 m per floor: guessing the centroid gives ~11 m, a wrong floor or building
    # makes the hit rates collapse.
    assert m["mean_m"] < 3.0
    assert m["building_hit"] == 1.0
    assert m["floor_hit"] >= 0.97
    assert m["error_estimate_spearman"] > 0.0


def test_tuning_reports_a_group_holdout_and_a_valid_choice(tuned) -> None:
    t = tuned.tuning
    assert t["tuned"] and t["holdout_by"] == "path"
    # stage 1: every cutoff with the default representation; stage 2: the other representations
    assert t["candidates"] == len(DISTANCES) * (len(AGE_GRID_MS) + len(REPRESENTATIONS) - 1)
    p = tuned.params
    assert p.representation in REPRESENTATIONS and p.distance in DISTANCES
    assert p.k >= 2  # noisy scans: averaging beats the single nearest neighbour
    assert tuned.max_age_ms() is None  # every entry is fresh: no cutoff beats keeping them all


def test_tuning_drops_stale_entries_when_they_hurt() -> None:
    train, test = train_test(stale=True, buildings=(None,), floors=("0",))
    model = WKNN.fit(train, {"representation": "positive", "distance": "sorensen"}, seed=0)
    assert model.max_age_ms() is not None and model.max_age_ms() <= 20_000
    plain = WKNN.fit(train, {**FAST, "max_age_ms": None})
    err_tuned = metrics(model.predict(QueryBatch.from_set(test)), test)["mean_m"]
    err_plain = metrics(plain.predict(QueryBatch.from_set(test)), test)["mean_m"]
    assert err_tuned < 0.8 * err_plain


def test_pinned_params_are_kept(site) -> None:
    pinned = {"representation": "raw", "distance": "euclidean", "k": 4, "max_age_ms": None}
    model = WKNN.fit(site[0], pinned, seed=0)
    assert (model.params.representation, model.params.distance, model.params.k) == ("raw", "euclidean", 4)
    assert model.tuning["candidates"] == 1


def test_untuned_fit_uses_the_given_settings(site) -> None:
    model = WKNN.fit(site[0], FAST)
    assert not model.tuning["tuned"]
    assert (model.params.k, model.params.representation) == (3, "powed")


def test_unknown_or_bad_params_are_rejected(site) -> None:
    with pytest.raises(ValueError, match="unknown wknn params"):
        WKNN.fit(site[0], {"kk": 3})
    with pytest.raises(ValueError, match="distance"):
        WKNN.fit(site[0], {"distance": "chebyshev"})


def test_fit_is_deterministic_for_a_seed(site) -> None:
    a = WKNN.fit(site[0], {"representation": "powed"}, seed=3)
    b = WKNN.fit(site[0], {"representation": "powed"}, seed=3)
    assert a.params == b.params and a.calibration == b.calibration


# ---------------------------------------------------------------- distances


def _dense_reference(a: np.ndarray, b: np.ndarray, kind: str) -> np.ndarray:
    """Plain dense formulas over every column, "not heard" = 0."""
    diff = a[:, None, :] - b[None, :, :]
    if kind == "euclidean":
        return np.sqrt((diff**2).sum(-1))
    if kind == "manhattan":
        return np.abs(diff).sum(-1)
    if kind == "sorensen":
        return np.abs(diff).sum(-1) / (a[:, None, :] + b[None, :, :]).sum(-1)
    dots = a @ b.T
    return 1.0 - dots / (np.linalg.norm(a, axis=1)[:, None] * np.linalg.norm(b, axis=1)[None, :])


def _random_rss(rng: np.random.Generator, n: int, m: int) -> np.ndarray:
    rss = rng.integers(-104, -20, size=(n, m)).astype(np.float32)
    rss[rng.random((n, m)) < 0.7] = np.nan
    rss[np.isnan(rss).all(axis=1), 0] = -70.0
    return rss


@pytest.mark.parametrize("representation", REPRESENTATIONS)
@pytest.mark.parametrize("kind", DISTANCES)
def test_sparse_distances_equal_dense_reference(representation: str, kind: str) -> None:
    rng = np.random.default_rng(7)
    train, query = _random_rss(rng, 40, 25), _random_rss(rng, 9, 25)
    p = replace(WKNNParams(), representation=representation)
    index = SparseIndex(SparseRows.from_dense(train), 25, p, -105.0)
    q = SparseRows.from_dense(query)
    qv = represent(q.rss, p, -105.0)
    mins, dots = index.overlap(q, qv)
    rid = q.row_ids()
    got = distances(kind, index, mins, dots, np.bincount(rid, qv, 9), np.bincount(rid, qv * qv, 9))

    def dense(rss: np.ndarray) -> np.ndarray:
        out = np.zeros(rss.shape)
        heard = ~np.isnan(rss)
        out[heard] = represent(rss[heard], p, -105.0)
        return out

    want = _dense_reference(dense(query), dense(train), kind)
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("kind", ["euclidean", "manhattan"])
def test_raw_representation_is_raw_db_with_not_heard_at_minus_110(kind: str) -> None:
    rng = np.random.default_rng(8)
    train, query = _random_rss(rng, 30, 20), _random_rss(rng, 5, 20)
    p = replace(WKNNParams(), representation="raw")
    index = SparseIndex(SparseRows.from_dense(train), 20, p, -105.0)
    q = SparseRows.from_dense(query)
    qv = represent(q.rss, p, -105.0)
    mins, dots = index.overlap(q, qv)
    rid = q.row_ids()
    got = distances(kind, index, mins, dots, np.bincount(rid, qv, 5), np.bincount(rid, qv * qv, 5))
    raw = lambda r: np.nan_to_num(r.astype(np.float64), nan=RAW_NOT_HEARD_DBM)  # noqa: E731
    want = _dense_reference(raw(query), raw(train), kind)
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-3)


# ---------------------------------------------------------------- hierarchy


def _fp(wifi: dict[str, float], x: float, y: float, floor: str, building: str | None) -> Fingerprint:
    return Fingerprint([WifiReading(b, r) for b, r in wifi.items()], x, y, floor, building, device="d")


def test_building_vote_overrules_the_single_nearest_neighbour() -> None:
    # One fingerprint of building B matches the query best; four of building A are close behind.
    fps = [_fp({"a": -50, "b": -60}, 100, 0, "0", "B")]
    fps += [_fp({"a": -52 - i, "b": -62}, float(i), 0, "0", "A") for i in range(4)]
    fps += [_fp({"c": -40}, 200, 0, "0", "B") for _ in range(3)]
    train = build_set(fps)
    query = build_set([_fp({"a": -50, "b": -60}, 0, 0, "0", "A")], train.aps)
    voting = WKNN.fit(train, {**FAST, "k_building": 5, "k": 2, "weighting": "uniform"})
    nearest = WKNN.fit(train, {**FAST, "k_building": 1, "k": 1})
    assert voting.predict(QueryBatch.from_set(query)).building[0] == "A"
    pred = voting.predict(QueryBatch.from_set(query))
    assert pred.xy[0, 0] < 4  # averaged inside building A only
    assert nearest.predict(QueryBatch.from_set(query)).building[0] == "B"


def test_floor_vote_is_restricted_to_the_chosen_building_and_position_to_the_floor() -> None:
    fps = [_fp({"a": -50 - i}, 10.0 + i, 0, "1", "A") for i in range(3)]
    fps += [_fp({"a": -51 - i}, 50.0 + i, 0, "2", "A") for i in range(2)]
    fps += [_fp({"z": -50}, 500, 0, "1", "B")]
    train = build_set(fps)
    query = build_set([_fp({"a": -50}, 0, 0, "1", "A")], train.aps)
    model = WKNN.fit(train, {**FAST, "k_floor": 5, "k": 5, "weighting": "uniform"})
    pred = model.predict(QueryBatch.from_set(query))
    assert (pred.building[0], pred.floor[0]) == ("A", "1")
    assert 10 <= pred.xy[0, 0] <= 12  # only floor 1's three fingerprints averaged


def test_sites_without_buildings_predict_building_none() -> None:
    train, test = train_test(buildings=(None,), floors=("B1", "F1"))
    model = WKNN.fit(train, FAST)
    pred = model.predict(QueryBatch.from_set(test))
    assert all(b is None for b in pred.building)
    assert metrics(pred, test)["floor_hit"] >= 0.95


# ---------------------------------------------------------------- ages, empty rows, duplicates


def test_age_cutoff_masks_stale_query_entries(site) -> None:
    train = site[0]
    model = WKNN.fit(train, {**FAST, "max_age_ms": 5000})
    assert model.max_age_ms() == 5000
    rss = train.rss[:5].copy()
    age = np.full(rss.shape, 100.0, dtype=np.float32)
    poisoned, poisoned_age = rss.copy(), age.copy()
    fake = (np.random.default_rng(0).random(rss.shape) < 0.5) & np.isnan(rss)
    poisoned[fake] = -30.0  # strong readings the scan did not really make ...
    poisoned_age[fake] = 60_000.0  # ... cached a minute ago
    clean = model.predict(QueryBatch(rss=rss, age_ms=age))
    dirty = model.predict(QueryBatch(rss=poisoned, age_ms=poisoned_age))
    np.testing.assert_array_equal(clean.xy, dirty.xy)
    unaware = model.predict(QueryBatch(rss=poisoned, age_ms=None))  # no ages: nothing is masked
    assert not np.array_equal(clean.xy, unaware.xy)


def test_empty_and_fully_stale_queries_get_a_fallback_not_a_crash(site) -> None:
    train = site[0]
    big = np.array([(b, f) == ("B", "1") for b, f in zip(train.building, train.floor, strict=True)])
    lopsided = train.subset(big | (np.arange(len(train)) % 2 == 0))  # B/1 is the most surveyed floor
    model = WKNN.fit(lopsided, {**FAST, "max_age_ms": 1e6})
    m = len(model.aps)
    rss = np.full((3, m), np.nan, dtype=np.float32)
    rss[1, 0] = -60.0
    rss[2, 1] = -50.0
    age = np.full((3, m), np.nan, dtype=np.float32)
    age[2, 1] = 1e9  # its only reading is stale
    pred = model.predict(QueryBatch(rss=rss, age_ms=age))
    assert (pred.building[0], pred.floor[0]) == ("B", "1") and (pred.building[2], pred.floor[2]) == ("B", "1")
    assert pred.error_m[0] > 40 and pred.error_m[2] > 40  # the site's extent, not a confident answer
    assert pred.error_m[1] < pred.error_m[0]
    assert np.isfinite(pred.xy).all()


def test_empty_and_duplicate_training_rows_are_dropped(site) -> None:
    train = site[0]
    extra = train.subset(np.r_[np.arange(len(train)), np.arange(10)])  # 10 exact duplicates
    extra.rss[-1] = np.nan  # and one row with nothing heard
    model = WKNN.fit(extra, FAST)
    assert len(model.arrays()["xy"]) == len(train)


# ---------------------------------------------------------------- serialization


def test_serialize_round_trip_gives_identical_predictions(site, tuned) -> None:
    _, test = site
    blob, config = dumps(tuned)
    again = loads(blob, json.loads(json.dumps(config)))
    a, b = tuned.predict(QueryBatch.from_set(test)), again.predict(QueryBatch.from_set(test))
    np.testing.assert_array_equal(a.xy, b.xy)
    np.testing.assert_array_equal(a.error_m, b.error_m)
    assert list(a.floor) == list(b.floor) and list(a.building) == list(b.building)
    assert again.max_age_ms() == tuned.max_age_ms()


# ---------------------------------------------------------------- real fixtures


def test_uji_fixture_slice() -> None:
    from ml.data.ujiindoorloc import read_ujiindoorloc

    train = build_set(list(read_ujiindoorloc(FIXTURES / "uji_train_small.csv")))
    test = build_set(list(read_ujiindoorloc(FIXTURES / "uji_validation_small.csv")), train.aps)
    model = WKNN.fit(train, {"representation": "powed", "distance": "sorensen"}, seed=0)
    m = metrics(model.predict(QueryBatch.from_set(test)), test)
    # 20 training scans per floor only; buildings are still easy, positions coarse.
    assert m["building_hit"] >= 0.95
    assert m["floor_hit"] >= 0.6
    assert m["mean_m"] < 30.0
    assert model.tuning["holdout_by"] == "position"


# ---------------------------------------------------------------- site detection


def test_detect_site_by_known_bssids_with_distance_tie_break() -> None:
    vocab = {"uji": {"WAP001", "WAP002"}, "mall1": {"aa:01", "aa:02", "aa:03"}, "mall2": {"aa:03", "bb:01"}}
    assert detect_site(["aa:01", "aa:02", "zz"], vocab).site == "mall1"  # type: ignore[union-attr]
    assert detect_site(["zz:zz"], vocab) is None
    assert detect_site([], vocab) is None
    tie = detect_site(["aa:03"], vocab, distance={"mall1": 0.9, "mall2": 0.2}.__getitem__)
    assert tie is not None and tie.site == "mall2" and tie.distance == 0.2
    scores = score_sites(["aa:03", "bb:01", "x"], vocab)
    assert scores[0].site == "mall2" and scores[0].known == 2 and math.isclose(scores[0].fraction, 2 / 3)


def test_nearest_distance_ranks_the_right_site_first(site, tuned) -> None:
    _, test = site
    other = build_set(synthetic_site(seed=5, buildings=("C",)))
    d_own = tuned.nearest_distance(QueryBatch.from_set(test))
    d_other = tuned.nearest_distance(QueryBatch.from_set(other.with_aps(tuned.aps)))
    assert np.isfinite(d_own).all()
    assert np.isinf(d_other).all()  # building C's APs are unknown to this model


# ---------------------------------------------------------------- bench runner


def test_bench_uji_on_the_fixtures_writes_metrics_and_cdf(tmp_path: Path) -> None:
    data = uji_data_dir(tmp_path)
    out = tmp_path / "out"
    argv = ["uji", "--data-dir", str(data), "--out", str(out), "--params", json.dumps(FAST), "--tag", "t"]
    assert bench_main(argv) == 0
    result = json.loads((out / "uji_wknn_t.json").read_text())
    assert result["n_train"] == 264 and result["n_test"] == 100
    assert result["metrics"]["building_hit"] >= 0.95
    assert result["latency"]["single_query_p50_ms"] > 0
    assert result["command"].startswith("siteloc bench uji")
    assert result["model_config"]["params"]["k"] == 3
    assert (out / "uji_wknn_t_cdf.png").stat().st_size > 1000

    # the report renders the run into a table, and keeps a table as it is when one of its runs is not here
    from bench.report import render

    table = "<!-- bench-table: accuracy uji_wknn_t.json {extra}-->\nold row\n<!-- /bench-table -->"
    text, missing = render(table.format(extra=""), out)
    assert not missing and "| uji_wknn_t | wknn | 264 / 100 |" in text and "old row" not in text
    text, missing = render(table.format(extra="uji_other.json "), out)
    assert missing == ["uji_other.json"] and "old row" in text and "| uji_wknn_t |" not in text
    # a second folder (the committed results) fills in what the first lacks; the first wins on a name clash
    committed = tmp_path / "committed"
    committed.mkdir()
    other = json.loads((out / "uji_wknn_t.json").read_text()) | {"n_test": 7}
    for name in ("uji_wknn_t", "uji_other"):
        (committed / f"{name}.json").write_text(json.dumps(other | {"name": name}))
    text, missing = render(table.format(extra="uji_other.json "), [out, committed])
    assert not missing and "| uji_wknn_t | wknn | 264 / 100 |" in text and "| uji_other | wknn | 264 / 7 |" in text


def test_bench_reports_a_missing_data_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_main(["uji", "--data-dir", str(tmp_path / "nope"), "--out", str(tmp_path)]) == 2
    assert "data directory not found" in capsys.readouterr().err


def test_every_bench_subcommand_parses_the_ilc_options() -> None:
    """`detect` builds ILC site splits too, so it must carry --split like `ilc` (it crashed without it)."""
    from bench.core import parse_args

    for sub in ("uji", "ilc", "detect"):
        assert parse_args([sub], "siteloc bench").split == "path"
    assert parse_args(["ilc", "--split", "time"], "siteloc bench").split == "time"
