"""Self-maintenance updates (ml.selfupdate) on the synthetic corridor: walks teach the radio map the unsurveyed
half, the guard's traffic score sees an update that hurts, vanished APs are found only where walks went."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from ml.data.features import build_set
from ml.errors import InvalidParams
from ml.finetune import finetune, fit_model
from ml.models.base import LocModel, QueryBatch
from ml.models.wknn import WKNN
from ml.selfupdate import (
    Pair,
    UpdateConfig,
    Walk,
    build_candidate,
    drop_aps,
    learn,
    split_walks,
    track,
    traffic_guard,
    traffic_score,
    vanished_aps,
)
from ml.tracking.floorplan import Walkable
from ml.types import Fingerprint
from tests import synthetic_walks as sw


def _as_walks(samples: list[list[sw.WalkSample]]) -> list[Walk]:
    return [
        Walk(
            f"w{i}",
            [Fingerprint(wifi=s.wifi, x=np.nan, y=np.nan, floor="", timestamp=s.t_ms, sensors=s.sensors) for s in ss],
            [f"q{i}-{k}" for k in range(len(ss))],
        )
        for i, ss in enumerate(samples)
    ]


def _mean_error(model: LocModel, fps: list[Fingerprint]) -> float:
    fs = build_set(fps, aps=model.aps)
    pred = model.predict(QueryBatch.from_set(fs))
    return float(np.hypot(*(pred.xy - fs.xy).T).mean())


@pytest.fixture(scope="module")
def corridor() -> dict:
    w = sw.world(0)
    survey = sw.survey(w)
    done = finetune(build_set(survey), fit_model(WKNN, {}, seed=0), holdout_fraction=0.2, seed=0)
    plans = {"0": Walkable.from_collection(sw.PLAN)}
    return {"world": w, "survey": survey, "model": done.model, "hold": done.holdout.hold, "plans": plans}


def test_walks_teach_the_unsurveyed_half(corridor: dict) -> None:
    w, model = corridor["world"], corridor["model"]
    east = sw.scored(w, x_min=60.0)
    walks = _as_walks(sw.walks(w, 12))
    cfg = UpdateConfig()
    cand = learn(model, walks, [], corridor["survey"], corridor["hold"], corridor["plans"], cfg, {}, seed=0)
    assert cand is not None and cand.summary["n_pseudo_labels"] > 50
    before, after = _mean_error(model, east), _mean_error(cand.served, east)
    assert after < 0.85 * before, (before, after)
    # the survey is never replaced: the west half stays as good as it was
    west = [fp for fp in sw.scored(w, n=200, seed=3) if fp.x <= 48.0]
    assert _mean_error(cand.served, west) < 1.15 * _mean_error(model, west) + 0.5
    # the scored candidate never saw the survey holdout; the served one is refitted on it
    assert len(cand.scored.survey.xy) < len(cand.served.survey.xy)


def test_survey_only_candidate_is_the_active_model(corridor: dict) -> None:
    model, east = corridor["model"], sw.scored(corridor["world"], x_min=60.0)
    cand = build_candidate(model, corridor["survey"], corridor["hold"], [], [], {}, seed=0)
    assert _mean_error(cand.served, east) == pytest.approx(_mean_error(model, east))
    assert learn(model, [], [], corridor["survey"], corridor["hold"], None, UpdateConfig(), {}) is None


@pytest.fixture(scope="module")
def good_and_bad(corridor: dict) -> dict:
    """The corridor's walks split (12 to learn from, 4 held out), and two candidates learnt from them: the default
    update and one with 30 m of noise on every pseudo-label."""
    learn_walks, guard = split_walks(_as_walks(sw.walks(corridor["world"], 16)), UpdateConfig())
    args = (corridor["model"], learn_walks, [], corridor["survey"], corridor["hold"], corridor["plans"])
    good = learn(*args, UpdateConfig(), {})
    bad = learn(*args, UpdateConfig(label_noise_m=30.0), {})
    assert good is not None and bad is not None
    return {"learn": learn_walks, "guard": guard, "good": good, "bad": bad}


def test_traffic_score_rejects_noisy_labels_and_keeps_good_ones(corridor: dict, good_and_bad: dict) -> None:
    model, guard = corridor["model"], good_and_bad["guard"]
    assert len(guard) == 4 and len(good_and_bad["learn"]) == 12
    ref = track(model, guard, corridor["plans"], UpdateConfig(), cross=True)
    before = traffic_score(model, ref)
    assert before is not None and before["n"] > 0
    good, bad = good_and_bad["good"], good_and_bad["bad"]
    assert traffic_guard(before, traffic_score(good.served, ref), 0.02)[0]
    ok, reason = traffic_guard(before, traffic_score(bad.served, ref), 0.02)
    assert not ok and "recent traffic" in reason


def test_traffic_score_over_too_few_scans_does_not_decide() -> None:
    """A recent-traffic score over fewer than guard_min_scans held-out scans is reported but does not reject: the
    survey holdout alone decides (a mean over three scans of one walk is noise; the default, 1, lets any decide)."""
    before = {"n": 19, "walks": 1, "mean_m": 2.0, "floor_hit": 1.0}
    after = {"n": 19, "walks": 1, "mean_m": 4.0, "floor_hit": 0.5}
    ok, reason = traffic_guard(before, after, 0.15, 0.02, min_scans=20)
    assert ok and "not judged" in reason and "19 held-out scans" in reason
    ok, reason = traffic_guard({**before, "n": 20}, {**after, "n": 20}, 0.15, 0.02, min_scans=20)
    assert not ok and "4.00 m" in reason
    assert traffic_guard(before, after, 0.15, 0.02)[0] is False  # by default any number of scans decides
    assert UpdateConfig().guard_min_scans == 1
    with pytest.raises(InvalidParams, match="guard_min_scans"):
        UpdateConfig.split_params({"guard_min_scans": 0})


def test_shared_reference_judges_both_models_alike(corridor: dict, good_and_bad: dict) -> None:
    """guard_reference "both": the held-out walks tracked with the mean of the two models' answers; the noisy-label
    candidate still falls farther from those tracks than the active model, the good one does not."""
    model, guard = corridor["model"], good_and_bad["guard"]
    good, bad = good_and_bad["good"], good_and_bad["bad"]
    for cand, should_pass in ((good.served, True), (bad.served, False)):
        shared = track(Pair(model, cand), guard, corridor["plans"], UpdateConfig(), cross=True)
        ok, _ = traffic_guard(traffic_score(model, shared), traffic_score(cand, shared), 0.15)
        assert ok is should_pass
    # a pair of one model answers as that model
    same = track(Pair(model, model), guard, corridor["plans"], UpdateConfig(), cross=True)
    alone = track(model, guard, corridor["plans"], UpdateConfig(), cross=True)
    assert traffic_score(model, same) == traffic_score(model, alone)


def test_vanished_aps_only_where_walks_went(corridor: dict) -> None:
    w, model = corridor["world"], corridor["model"]
    fs = build_set(corridor["survey"])
    # an AP near the west end that the walks pass (they start at 5-30 m), and one in the unsurveyed east
    west_ap = next(n for n, p in zip(w.names, w.aps, strict=True) if p[0] < 30 and n in fs.aps)
    walks = _as_walks(sw.walks(w, 12, gone=frozenset({west_ap})))
    cfg = UpdateConfig()
    from ml.selfupdate import pseudo_labels

    located = pseudo_labels(track(model, walks, corridor["plans"], cfg), cfg)
    gone = vanished_aps(fs, located, cfg)
    assert gone == [west_ap]
    assert vanished_aps(fs, located, UpdateConfig(churn=False)) == []
    dropped = drop_aps(fs, gone)
    col = fs.aps.index(west_ap)
    assert np.isnan(dropped.rss[:, col]).all() and not np.isnan(fs.rss[:, col]).all()


def test_split_walks_holds_out_the_newest() -> None:
    walks = [Walk(f"w{i}", [Fingerprint(wifi=[], x=0, y=0, floor="", timestamp=1000 * (10 - i))] * 6) for i in range(8)]
    walks.append(Walk("short", [Fingerprint(wifi=[], x=0, y=0, floor="", timestamp=99_999)]))
    learn_walks, guard = split_walks(walks, UpdateConfig())
    assert [w.key for w in guard] == ["w1", "w0"]  # newest first timestamps, the short walk ignored
    assert len(learn_walks) == 6
    assert split_walks(walks[:1], UpdateConfig()) == (walks[:1], [])


@pytest.mark.parametrize(
    ("params", "needle"),
    [
        ({"single_query_labels": "maybe"}, "single_query_labels"),
        ({"guard_fraction": 1.0}, "guard_fraction"),
        ({"max_label_error_m": 0}, "max_label_error_m"),
        ({"rounds": 9}, "rounds"),
        ({"particles": "many"}, "particles"),
    ],
)
def test_bad_update_params_are_named(params: dict, needle: str) -> None:
    with pytest.raises(InvalidParams, match=needle):
        UpdateConfig.split_params(params)
    cfg, rest = UpdateConfig.split_params({"sigma": 0.5, "rounds": 1})
    assert cfg.rounds == 1 and rest == {"sigma": 0.5}


def test_integral_floats_for_int_update_settings_are_ints(corridor: dict) -> None:
    """{"particles": 10.0} (JSON numbers often arrive so) passed the check but reached the filter as a float
    ("'float' object cannot be interpreted as an integer" in the job): the checked settings carry ints."""
    given = {"particles": 10.0, "rounds": 1.0, "min_walk_queries": 5.0, "max_guard_walks": np.int64(3), "sigma": 0.5}
    cfg, rest = UpdateConfig.split_params(given)
    for name, want in (("particles", 10), ("rounds", 1), ("min_walk_queries", 5), ("max_guard_walks", 3)):
        assert getattr(cfg, name) == want and type(getattr(cfg, name)) is int, name
    assert rest == {"sigma": 0.5}
    assert type(UpdateConfig.split_params({"max_label_error_m": 12})[0].max_label_error_m) is int  # a float field
    with pytest.raises(InvalidParams, match=r"particles must be int, not 10\.5"):
        UpdateConfig.split_params({"particles": 10.5})
    tracked = track(corridor["model"], _as_walks(sw.walks(corridor["world"], 1)), corridor["plans"], cfg)
    assert len(tracked) == 1 and any(e is not None for e in tracked[0].track)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_update_settings_are_named_as_such(value: float) -> None:
    with pytest.raises(InvalidParams, match="max_label_error_m must be a finite number"):
        UpdateConfig.split_params({"max_label_error_m": value})
    with pytest.raises(InvalidParams, match="particles must be a finite number"):
        UpdateConfig.split_params({"particles": value})


def test_every_models_int_settings_take_integral_floats() -> None:
    """The same check (`ml.params`) reads finetune params: {"k": 5.0} for wknn failed inside the fit."""
    from ml.cotrain import CotrainConfig
    from ml.models.fpmodel import FPNetParams
    from ml.models.mtloc import MTLocConfig
    from ml.models.wknn import WKNNParams
    from ml.transfer import split_params

    w, _ = WKNNParams.parse({"k": 5.0, "max_tune_queries": 50.0})
    assert (w.k, w.max_tune_queries) == (5, 50) and type(w.k) is int and type(w.max_tune_queries) is int
    assert type(FPNetParams.parse({"hidden": 16.0}).hidden) is int
    assert type(MTLocConfig.parse({"steps": 4.0}).steps) is int
    assert type(CotrainConfig.from_params({"max_rounds": 2.0}).max_rounds) is int
    ap = split_params({"hidden": 16.0, "noise_dim": 8.0, "freeze_epochs": 3.0})
    assert type(ap.net.hidden) is int and type(ap.msta.noise_dim) is int and type(ap.encoder.freeze_epochs) is int


def test_coverage_tells_scans_unlike_the_survey() -> None:
    """Scans far from every survey point (the east end of a corridor surveyed only in its west half) are outside;
    scans among the survey points are inside. Outside fixes snap to the survey's edge, so tracking trusts them less."""
    from ml.selfupdate import Coverage

    w = sw.world(3)
    west = sw.survey(w, x_dense=50.0)
    west = [fp for fp in west if fp.x <= 50.0]
    done = finetune(build_set(west), fit_model(WKNN, {}, seed=0), holdout_fraction=0.2, seed=0)
    cov = Coverage.fit(west, done.holdout.hold, UpdateConfig(outside_sigma_m=30.0))
    assert cov is not None
    inside = cov.inside([fp for fp in sw.scored(w, n=60, seed=4) if fp.x < 45])
    outside = cov.inside([fp for fp in sw.scored(w, n=60, seed=5, x_min=85.0)])
    assert inside.mean() > 0.7 and outside.mean() < 0.2, (inside.mean(), outside.mean())
    assert Coverage.fit(west, done.holdout.hold, UpdateConfig(outside_sigma_m=0.0)) is None  # off: not built


@pytest.mark.parametrize("name", ["dnn", "cnnloc", "itoloc", "mtloc"])
def test_every_model_updates_from_walks(corridor: dict, name: str) -> None:
    """The networks retrain their recipe on the survey plus the walks' pseudo-labels (itoloc co-trains with them);
    tiny settings: this checks the plumbing, not the accuracy."""
    from ml.models import get_model_class
    from tests.unit.test_gpu import TINY

    w = corridor["world"]
    params = dict(TINY[name])
    survey = corridor["survey"]
    if name == "mtloc":  # trains on sensor windows: a still phone at each survey point
        survey = [replace(fp, sensors=sw.window(0.0, steps_per_s=0.0)) for fp in survey]
    cls = get_model_class(name)
    done = finetune(build_set(survey), fit_model(cls, params, seed=0), holdout_fraction=0.2, seed=0)
    walks = _as_walks(sw.walks(w, 4))
    cand = learn(done.model, walks, [], survey, done.holdout.hold, corridor["plans"], UpdateConfig(), {}, seed=0)
    assert cand is not None and cand.summary["n_pseudo_labels"] > 0
    assert type(cand.served) is cls and cand.served is not done.model
    east = sw.scored(w, n=10, seed=9)
    pred = cand.served.predict(QueryBatch.from_set(build_set(east, aps=cand.served.aps)))
    assert np.isfinite(pred.xy).all() and len(pred.xy) == len(east)
    if name != "itoloc":
        assert cand.summary["retrained_on"]["pseudo"] == cand.summary["n_pseudo_labels"]
