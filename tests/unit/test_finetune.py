"""The one finetune pipeline (ml.finetune): one holdout level, the number of networks the docs say, and metrics
that belong to the model the docs say (the scored one, trained without the holdout)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

import ml.models.fpmodel as fpmodel
from ml.data.features import FingerprintSet
from ml.data.splits import holdout_split
from ml.finetune import evaluate, finetune, fit_model
from ml.models import get_model_class
from ml.models.base import LocModel, ProgressFn, QueryBatch
from ml.models.itoloc import ITOLOC
from tests.unit.test_itoloc import TINY as ITOLOC_TINY
from tests.unit.test_itoloc import synthetic_site
from tests.unit.test_transfer import NET_ONLY, synth_site


@pytest.fixture(autouse=True, scope="module")
def _threads() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def site() -> FingerprintSet:
    return synth_site(5, 20, "f", n_paths=12, per_path=8)


def _recording(cls: type[LocModel], params: dict[str, Any]) -> tuple[list[LocModel], Any]:
    """`fit_model` that also keeps the model it returns (the scored one)."""
    scored: list[LocModel] = []
    inner = fit_model(cls, params, seed=0)

    def fit(rows: FingerprintSet, holdout: np.ndarray, progress: ProgressFn) -> LocModel:
        scored.append(inner(rows, holdout, progress))
        return scored[-1]

    return scored, fit


def _xy(model: LocModel, fs: FingerprintSet) -> np.ndarray:
    return model.predict(QueryBatch.from_set(fs.with_aps(model.aps))).xy


@pytest.mark.parametrize("name", ["dnn", "cnnloc"])
def test_scratch_network_finetune_trains_two_networks_scores_the_first_serves_the_refit(
    name: str, site: FingerprintSet, monkeypatch: pytest.MonkeyPatch
) -> None:
    built: list[Any] = []
    real_build = fpmodel.build_net

    def counting_build(*args: Any, **kwargs: Any) -> Any:
        built.append(real_build(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(fpmodel, "build_net", counting_build)
    params = {**NET_ONLY, "epochs": 4}
    scored, fit = _recording(get_model_class(name), params)
    done = finetune(site, fit, holdout_fraction=0.25, seed=0)

    assert len(built) == 2 and done.fits == 2 and done.refitted  # fit + refit, nothing nested
    assert len(scored) == 1 and done.model is not scored[0]
    h = holdout_split(site, 0.25, 0)
    assert np.array_equal(done.holdout.hold, h.hold) and done.holdout.by == "path"
    # the metrics are the scored model's (trained without the holdout) on the holdout ...
    assert done.metrics == evaluate(scored[0], site.subset(h.hold))
    # ... and what is served is that same recipe refitted once on every row: a fresh fit on all rows gives it
    built.clear()
    again = get_model_class(name).fit(site, {**params, "holdout_fraction": 0.25}, seed=0)
    assert len(built) == 2  # a direct fit holds out by itself with the same splitter, then refits once
    assert np.allclose(_xy(done.model, site), _xy(again, site))
    assert not np.allclose(_xy(done.model, site), _xy(scored[0], site))


def test_wknn_indexes_the_holdout_only_in_the_refit(site: FingerprintSet) -> None:
    scored, fit = _recording(get_model_class("wknn"), {})
    done = finetune(site, fit, holdout_fraction=0.25, seed=0)
    h = holdout_split(site, 0.25, 0)
    assert done.fits == 2 and done.refitted
    assert int(scored[0].survey.rows.indptr.shape[0] - 1) == len(h.fit)  # the scored map lacks the holdout
    assert int(done.model.survey.rows.indptr.shape[0] - 1) == len(site)  # the served map has every row
    assert done.metrics == evaluate(scored[0], site.subset(h.hold))
    assert done.model.params == scored[0].params and done.model.calibration == scored[0].calibration


def test_itoloc_is_served_as_scored_so_its_holdout_stays_unseen() -> None:
    fs = synthetic_site(n_per_floor=48)
    scored, fit = _recording(ITOLOC, {**ITOLOC_TINY, "epochs": 2})
    done = finetune(fs, fit, holdout_fraction=0.2, seed=0)
    assert done.fits == 1 and not done.refitted and done.model is scored[0]
    assert done.metrics == evaluate(done.model, fs.subset(done.holdout.hold))


def test_train_fraction_keeps_the_holdout_and_a_subset_of_the_rest(site: FingerprintSet) -> None:
    _, full = finetune_split(site, None)
    rows, part = finetune_split(site, 0.5)
    assert np.array_equal(part.hold, full.hold)  # the same holdout whatever the fraction
    assert set(part.fit) < set(full.fit) and len(rows) == len(part.fit) + len(part.hold)


def finetune_split(site: FingerprintSet, fraction: float | None) -> Any:
    from ml.finetune import split

    return split(site, fraction=0.25, seed=0, train_fraction=fraction)
