"""Co-training settings and the holdout guard (model-agnostic; iToLoc's update step is in
`ml.models.itoloc_cotrain`).

One update (paper 002, section IV), in rounds t = 0, 1, ...:

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

from dataclasses import dataclass
from typing import Any

from ml.errors import InvalidParams
from ml.params import settings_from


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
            raise InvalidParams("pool_start, max_rounds, dropout_passes and epochs must be >= 1")
        if not 0 < cfg.sigma < 1:
            raise InvalidParams("sigma must be in (0, 1)")
        if cfg.agree_radius_m < 0:
            raise InvalidParams("agree_radius_m must be >= 0")
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
