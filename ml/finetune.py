"""The one finetune pipeline: split -> fit -> evaluate -> refit -> metrics.

Used by the service's finetune job, the co-training guard (`evaluate`) and the benchmarks. There is one
holdout level, made here with the one splitter (`ml.data.splits.holdout_split`):

1. split: a seeded fraction of whole groups per floor (paths, else survey positions) is held out;
   `train_fraction` (learning curves) then keeps a nested subset of the remaining groups;
2. fit: the model trains on the rest; the holdout only picks its settings/epochs and calibrates `error_m`;
3. evaluate: that model is scored on the holdout: these are the metrics reported for the version;
4. refit: models that support it (`LocModel.refit`: wknn, dnn, cnnloc) are refitted once on train + holdout
   with the chosen settings and served; the others (itoloc, mtloc) are served as scored.

So a scratch `dnn`/`cnnloc` finetune trains two networks (fit, refit), `itoloc`/`mtloc` one, and a transfer
finetune trains scratch and the transfer candidate, then refits the kept one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ml.data.features import FingerprintSet
from ml.data.splits import Holdout, holdout_split, train_fraction_subset
from ml.evaluate import errors_m
from ml.evaluate import metrics as score
from ml.models.base import LocModel, ProgressFn, QueryBatch, no_progress

# fit(rows, holdout row indices, progress) -> a model trained on the rows outside the holdout
FitFn = Callable[[FingerprintSet, np.ndarray, ProgressFn], LocModel]

PUBLIC_METRICS = ("mean_m", "median_m", "p75_m", "p95_m", "floor_hit", "building_hit", "n", "error_estimate_spearman")
# error_quantiles_m[i] is the holdout error (m) at fraction ERROR_QUANTILES[i]: 0, 0.05, ..., 1.
ERROR_QUANTILES = tuple(i / 20 for i in range(21))


@dataclass
class Finetuned:
    model: LocModel  # what is served: the refitted model, or the scored one
    metrics: dict[str, Any] | None  # the scored model on the holdout (None: no holdout)
    rows: np.ndarray  # indices into the input set that this finetune used (train_fraction applied)
    holdout: Holdout  # indices into the input set
    refitted: bool
    train_s: float
    fits: int  # how many times a model was fitted here (the pipeline's own count; a transfer fit trains two)
    extra: dict[str, Any] = field(default_factory=dict)


def split(
    fs: FingerprintSet, *, fraction: float, seed: int, by: str = "auto", train_fraction: float | None = None
) -> tuple[np.ndarray, Holdout]:
    """(rows used, holdout) as indices into `fs`; `train_fraction` < 1 keeps a subset of the training groups."""
    h = holdout_split(fs, fraction, seed, by)
    fit = h.fit
    if train_fraction is not None and train_fraction < 1:
        fit = fit[train_fraction_subset(fs.path[fit], train_fraction, seed)]
    return np.sort(np.concatenate([fit, h.hold])), Holdout(fit, h.hold, h.by)


def evaluate(model: LocModel, holdout: FingerprintSet) -> dict[str, Any] | None:
    """The public metrics of `model` on labelled rows (None when there are none); NaN/inf become None."""
    if len(holdout) == 0:
        return None
    pred = model.predict(QueryBatch.from_set(holdout.with_aps(model.aps)))
    m = score(pred, holdout)
    out = {
        k: (None if isinstance(m.get(k), float) and not np.isfinite(m[k]) else m.get(k))
        for k in PUBLIC_METRICS
        if k in m
    }
    # The holdout's error distribution, for CDF plots of a version (21 numbers, not the holdout itself).
    err = errors_m(pred, holdout)
    if np.isfinite(err).all():
        out["error_quantiles_m"] = [round(float(q), 3) for q in np.quantile(err, ERROR_QUANTILES)]
    return out


def finetune(
    fs: FingerprintSet,
    fit: FitFn,
    *,
    holdout_fraction: float,
    seed: int,
    holdout_by: str = "auto",
    train_fraction: float | None = None,
    refit: bool = True,
    progress: ProgressFn = no_progress,
    device: str = "cpu",
) -> Finetuned:
    """Split `fs`, fit on the training part, score on the holdout, refit once on everything when the model can."""
    import time

    rows, h = split(fs, fraction=holdout_fraction, seed=seed, by=holdout_by, train_fraction=train_fraction)
    used = fs.subset(rows)
    hold_in_used = np.flatnonzero(np.isin(rows, h.hold))
    t0 = time.perf_counter()
    model = fit(used, hold_in_used, span(progress, 0.0, 0.8))
    fits = 1
    metrics = evaluate(model, used.subset(hold_in_used))
    refitted = False
    if refit and len(hold_in_used):
        again = model.refit(used, seed=seed, progress=span(progress, 0.8, 0.98), device=device)
        if again is not None:
            model, refitted, fits = again, True, fits + 1
    return Finetuned(model, metrics, rows, h, refitted, time.perf_counter() - t0, fits)


def fit_model(cls: type[LocModel], params: dict[str, Any], *, seed: int, device: str = "cpu") -> FitFn:
    """The plain `FitFn` of a model class: `cls.fit` with `params` and the pipeline's holdout."""

    def fit(rows: FingerprintSet, holdout: np.ndarray, progress: ProgressFn) -> LocModel:
        return cls.fit(rows, params, holdout=holdout, seed=seed, progress=progress, device=device)

    return fit


def span(progress: ProgressFn, lo: float, hi: float) -> ProgressFn:
    def inner(fraction: float, message: str) -> None:
        progress(lo + (hi - lo) * min(max(fraction, 0.0), 1.0), message)

    return inner
