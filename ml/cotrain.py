"""Co-training model update from unlabeled queries (iToLoc, paper 002, section IV).

One update, in rounds t = 0, 1, ...:

1. Pool: the first N_t = 60 * 2^t unlabeled fingerprints of a seeded shuffle (capped at all of them).
2. Reliable fingerprint selection, for each module M_j: the other two modules must agree on the cell,
   their mean max-probability must exceed sigma (confident), and their agreed cell must survive K
   dropout-on passes, changing at most K/3 times (stable). Survivors, with that pseudo-label, join
   M_j's training set for this round.
3. M_j is fine-tuned (extractor frozen, lr 0.01) on labeled survey rows plus its pseudo-labeled rows.
4. Diversity augmentation: once the pool holds every unlabeled fingerprint, every `smear_every`-th
   round uses three output-smeared copies of the labeled set (Eq. 12-13), one per module, and lowers
   sigma by sigma_os.

The labeled survey rows keep their true labels; query fingerprints only ever carry pseudo-labels and
are never written back as survey data. The input model is not modified: the update is a copy.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Protocol

import numpy as np

from ml.data.features import FingerprintSet
from ml.models.base import ProgressFn, no_progress
from ml.params import settings_from
from ml.seed import seed_everything

_MEAN_RELU_NORMAL = 0.3989  # E[max(z, 0)] for z ~ N(0, 1)


@dataclass(frozen=True)
class CotrainConfig:
    pool_start: int = 60  # N_0; the pool doubles every round (N_t = 60 * 2^t)
    max_rounds: int = 8  # rounds in one update (at least enough to exhaust the pool is typical)
    sigma: float = 0.6  # confidence: mean probability mass of the two agreeing modules must exceed this
    # Cells within this distance (same building and floor) count as the same place for the agreement, confidence
    # and stability tests. 0 = the paper's exact-cell tests, which suit a few reference points; with a survey
    # snapped to 3 m cells (hundreds per floor) the modules' max-probability is ~0.03-0.05 (ILC site1 B1) and no
    # query ever passes sigma.
    agree_radius_m: float = 6.0
    sigma_os: float = 0.05  # sigma is lowered by this at every smearing round
    sigma_min: float = 0.3  # never below this
    dropout_passes: int = 10  # K: stochastic passes for the stability test (reject if > K/3 changes)
    smear_every: int = 3  # after the pool is exhausted, every this many rounds fine-tune on smeared sets
    # Output smearing (Eq. 12): y' = y + ReLU(z * std), renormalised. With hundreds of cells a fixed std buries the
    # label (std 0.05 over 600 cells adds ~12x its mass), so std is set per row to give this expected noise mass
    # relative to the label's 1: std = smear_mass / (E[ReLU(z)] * cells of the row's zone).
    smear_mass: float = 0.3
    lr: float = 0.01  # fine-tuning learning rate (paper)
    epochs: int = 2  # fine-tuning epochs per module per round
    labeled_per_round: int = 2000  # labeled rows mixed into each module's set per round (seeded sample)
    freeze_extractor: bool = True  # fine-tune the location modules only

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> CotrainConfig:
        cfg = settings_from(cls, params, "co-training")
        if cfg.pool_start < 1 or cfg.max_rounds < 1 or cfg.dropout_passes < 1 or cfg.epochs < 1:
            raise ValueError("pool_start, max_rounds, dropout_passes and epochs must be >= 1")
        if not 0 < cfg.sigma < 1:
            raise ValueError("sigma must be in (0, 1)")
        if cfg.agree_radius_m < 0:
            raise ValueError("agree_radius_m must be >= 0")
        return cfg


def holdout_guard(before: dict[str, Any], after: dict[str, Any], tolerance: float) -> tuple[bool, str]:
    """Keep an update only if it is not worse on the labeled holdout than the model it replaces: mean error at
    most (1 + tolerance) x, floor hit down by at most `tolerance`. Returns (promote, reason)."""
    if after["mean_m"] > before["mean_m"] * (1 + tolerance):
        return False, (
            f"rejected: holdout mean error {after['mean_m']:.2f} m is worse than the active version's "
            f"{before['mean_m']:.2f} m beyond the {tolerance:.0%} tolerance"
        )
    if after["floor_hit"] < before["floor_hit"] - tolerance:
        return False, (
            f"rejected: holdout floor hit {after['floor_hit']:.3f} fell below the active version's "
            f"{before['floor_hit']:.3f} beyond the tolerance"
        )
    return True, (
        f"promoted: holdout mean error {after['mean_m']:.2f} m vs {before['mean_m']:.2f} m (tolerance {tolerance:.0%})"
    )


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
    from ml.models.itoloc import ModuleSet, smear

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
        n_pool = min(cfg.pool_start * 2**t, len(unl_rss))
        if n_pool == 0:
            break
        pool = unl_rss[order[:n_pool]]
        smearing = False
        if n_pool == len(unl_rss):
            exhausted_rounds += 1
            smearing = exhausted_rounds % cfg.smear_every == 0
            if smearing:
                sigma = max(cfg.sigma_min, sigma - cfg.sigma_os)
        chosen, counts = select_reliable(model, pool, cfg, sigma)
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
