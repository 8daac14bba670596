"""iToLoc's co-training update from unlabeled queries (paper 002, section IV; see `ml.cotrain` for the
rounds, the settings and the holdout guard).

The labeled survey rows keep their true labels; query fingerprints only ever carry pseudo-labels and
are never written back as survey data. `cotrain_update` changes the model it is given: pass a copy
(`ITOLOC.cotrain` does).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Protocol

import numpy as np

from ml.cotrain import CotrainConfig
from ml.data.features import FingerprintSet
from ml.models.base import ProgressFn, no_progress
from ml.seed import seed_everything

_MEAN_RELU_NORMAL = 0.3989  # E[max(z, 0)] for z ~ N(0, 1)


@dataclass
class ModuleSet:
    """Labelled rows for fine-tuning one module: RSS over the model's `aps`, soft cell labels."""

    rss: np.ndarray  # (n, m) float32 dBm, NaN = not heard
    target: np.ndarray  # (n, C) float32 rows summing to 1 (one-hot, smeared or pseudo-labels)
    xy: np.ndarray | None = None  # (n, 2) true positions for Ls; default: target-weighted cell centre


def smear(
    target: np.ndarray, std: float | np.ndarray, rng: np.random.Generator, allowed: np.ndarray | None = None
) -> np.ndarray:
    """Output smearing (Eq. 12-13): y' = y + ReLU(z * std), z ~ N(0, 1), renormalised (std: a scalar or (n, 1)).

    `allowed` ((n, C) bool, e.g. `ITOLOC.zone_cells(target)`) keeps the noise on cells the row may
    be located in; note that `target > 0` would keep a one-hot target unchanged."""
    noisy = target + np.maximum(rng.standard_normal(target.shape), 0.0) * std
    if allowed is not None:
        noisy = np.where(allowed, noisy, 0.0)
    return np.asarray(noisy / noisy.sum(1, keepdims=True), dtype=np.float32)


class CoTrainable(Protocol):
    """What the co-training loop needs from a three-module model (ml.models.itoloc.ITOLOC)."""

    aps: list[str]

    def module_probs(self, rss: np.ndarray, *, mc_dropout: bool = False) -> np.ndarray: ...
    def targets(self, fs: FingerprintSet) -> np.ndarray: ...
    def zone_cells(self, target: np.ndarray) -> np.ndarray: ...
    def near_cells(self, radius_m: float) -> np.ndarray: ...
    def fine_tune_modules(
        self, sets: Any, *, epochs: int, lr: float, seed: int, freeze_extractor: bool, progress: ProgressFn
    ) -> None: ...


def _agreed(probs: np.ndarray, j: int, near: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For target module j: the other two modules' agreement mask, shared label, confidence.

    `near` ((C, C) bool) says which cells count as the same place. With the identity (agree_radius_m = 0) this is
    the paper's test: both argmax cells equal, confidence = mean of their max-probabilities. Otherwise the two
    argmax cells must be near each other, the label is the cell the pair finds most likely, and the confidence is
    the pair's mean probability mass on cells near that label."""
    a, b = (k for k in range(3) if k != j)
    la, lb = probs[a].argmax(1), probs[b].argmax(1)
    pair = probs[a] + probs[b]
    label = pair.argmax(1)
    conf = (pair * near[label]).sum(1) / 2
    return near[la, lb], label, conf


def select_reliable(
    model: CoTrainable, rss: np.ndarray, cfg: CotrainConfig, sigma: float
) -> tuple[list[tuple[np.ndarray, np.ndarray]], dict[str, list[int]]]:
    """Per module j, (row indices, pseudo-labels) of pool rows that pass all three tests."""
    near = model.near_cells(cfg.agree_radius_m)
    probs = model.module_probs(rss)
    stochastic = [model.module_probs(rss, mc_dropout=True) for _ in range(cfg.dropout_passes)]
    chosen: list[tuple[np.ndarray, np.ndarray]] = []
    counts: dict[str, list[int]] = {"agree": [], "confident": [], "stable": []}
    for j in range(3):
        agree, label, conf = _agreed(probs, j, near)
        confident = agree & (conf > sigma)
        changes = np.zeros(len(rss), dtype=np.int64)
        for p in stochastic:
            a, b = (k for k in range(3) if k != j)
            changes += ~near[(p[a] + p[b]).argmax(1), label]
        stable = confident & (changes <= cfg.dropout_passes / 3)
        idx = np.flatnonzero(stable)
        chosen.append((idx, label[idx]))
        counts["agree"].append(int(agree.sum()))
        counts["confident"].append(int(confident.sum()))
        counts["stable"].append(int(stable.sum()))
    return chosen, counts


def _none_chosen() -> tuple[list[tuple[np.ndarray, np.ndarray]], dict[str, list[int]]]:
    """`select_reliable` of an empty pool."""
    empty = np.zeros(0, dtype=np.int64)
    return [(empty, empty)] * 3, {"agree": [0] * 3, "confident": [0] * 3, "stable": [0] * 3}


def cotrain_update(
    model: Any,
    labeled: FingerprintSet,
    unlabeled: FingerprintSet,
    params: dict[str, Any],
    *,
    seed: int = 0,
    progress: ProgressFn = no_progress,
) -> dict[str, Any]:
    """Run the co-training rounds on `model` IN PLACE (pass a copy) and return the update's summary."""
    cfg = CotrainConfig.from_params(params)
    rng = seed_everything(seed)
    lab = labeled.with_aps(model.aps)
    lab_rss = lab.fresh_rss(model.max_age_ms())
    lab_target = model.targets(lab)
    has_cell = lab_target.sum(1) > 0
    lab_rss, lab_target, lab_xy = lab_rss[has_cell], lab_target[has_cell], lab.xy[has_cell]
    unl_rss = unlabeled.with_aps(model.aps).fresh_rss(model.max_age_ms())
    unl_rss = unl_rss[~np.all(np.isnan(unl_rss), axis=1)]  # queries that hear none of the model's APs teach nothing
    order = rng.permutation(len(unl_rss))
    n_cells = lab_target.shape[1]
    sigma, exhausted_rounds = cfg.sigma, 0
    rounds: list[dict[str, Any]] = []
    for t in range(cfg.max_rounds):
        # Without single queries the rounds still run on the labelled rows: they hold the pseudo-labels from
        # tracking sessions beside the survey, which the update must learn from (every round is then "exhausted").
        n_pool = min(cfg.pool_start * 2**t, len(unl_rss))
        pool = unl_rss[order[:n_pool]]
        smearing = False
        if n_pool == len(unl_rss):
            exhausted_rounds += 1
            smearing = exhausted_rounds % cfg.smear_every == 0
            if smearing:
                sigma = max(cfg.sigma_min, sigma - cfg.sigma_os)
        chosen, counts = select_reliable(model, pool, cfg, sigma) if n_pool else _none_chosen()
        sets = []
        for j, (idx, label) in enumerate(chosen):
            base = rng.choice(len(lab_rss), size=min(cfg.labeled_per_round, len(lab_rss)), replace=False)
            target = lab_target[base]
            if smearing:
                allowed = model.zone_cells(target)  # noise on the cells of the row's zone (building)
                std = cfg.smear_mass / (_MEAN_RELU_NORMAL * allowed.sum(1, keepdims=True))
                target = smear(target, std, np.random.default_rng(seed * 7 + t * 3 + j), allowed)
            pseudo = np.zeros((len(idx), n_cells), dtype=np.float32)
            pseudo[np.arange(len(idx)), label] = 1.0
            sets.append(
                ModuleSet(
                    rss=np.concatenate([lab_rss[base], pool[idx]]),
                    target=np.concatenate([target, pseudo]),
                    xy=None if len(idx) else lab_xy[base],
                )
            )
        model.fine_tune_modules(
            sets,
            epochs=cfg.epochs,
            lr=cfg.lr,
            seed=seed + t,
            freeze_extractor=cfg.freeze_extractor,
            progress=no_progress,
        )
        rounds.append(
            {
                "round": t,
                "pool": n_pool,
                "sigma": round(sigma, 4),
                "smeared": smearing,
                "accepted": [len(idx) for idx, _ in chosen],
                **counts,
            }
        )
        progress(
            (t + 1) / cfg.max_rounds,
            f"co-training round {t + 1}/{cfg.max_rounds}: pool {n_pool}, accepted {[len(i) for i, _ in chosen]}",
        )
    return {
        "config": asdict(cfg),
        "n_unlabeled": len(unl_rss),
        "n_labeled": len(lab_rss),
        "rounds": rounds,
        "accepted_total": [sum(r["accepted"][j] for r in rounds) for j in range(3)],
        "rejected_agreement": [sum(r["pool"] - r["agree"][j] for r in rounds) for j in range(3)],
        "rejected_confidence": [sum(r["agree"][j] - r["confident"][j] for r in rounds) for j in range(3)],
        "rejected_stability": [sum(r["confident"][j] - r["stable"][j] for r in rounds) for j in range(3)],
        "final_sigma": sigma,
    }
