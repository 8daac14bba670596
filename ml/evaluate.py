"""Accuracy metrics, the same everywhere: bench, finetune holdout, co-training guard."""

from __future__ import annotations

from typing import Any

import numpy as np

from ml.data.features import FingerprintSet
from ml.models.base import Prediction


def errors_m(pred: Prediction, truth: FingerprintSet) -> np.ndarray:
    return np.asarray(np.hypot(*(pred.xy - truth.xy).T), dtype=np.float64)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Rank correlation (ties broken by order); NaN when undefined."""
    if len(a) < 3:
        return float("nan")
    ra = np.argsort(np.argsort(a)).astype(np.float64)
    rb = np.argsort(np.argsort(b)).astype(np.float64)
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def metrics(pred: Prediction, truth: FingerprintSet) -> dict[str, Any]:
    """mean/median/P75/P95 2-D error (m), floor and building hit rates, error-estimate quality."""
    err = errors_m(pred, truth)
    out: dict[str, Any] = {
        "n": len(err),
        "mean_m": float(err.mean()) if len(err) else float("nan"),
        "median_m": float(np.median(err)) if len(err) else float("nan"),
        "p75_m": float(np.percentile(err, 75)) if len(err) else float("nan"),
        "p95_m": float(np.percentile(err, 95)) if len(err) else float("nan"),
    }
    out["floor_hit"] = float(np.mean(pred.floor.astype(str) == truth.floor.astype(str))) if len(err) else float("nan")
    known = np.array([b is not None for b in truth.building])
    if known.any():
        out["building_hit"] = float(np.mean(pred.building[known].astype(str) == truth.building[known].astype(str)))
    # How well the model's own error estimate ranks the real errors (1 = perfectly).
    out["error_estimate_spearman"] = spearman(pred.error_m, err)
    out["error_estimate_median_ratio"] = (
        float(np.median(pred.error_m) / np.median(err)) if len(err) and np.median(err) > 0 else float("nan")
    )
    return out
