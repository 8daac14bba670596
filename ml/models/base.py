"""The interface every localization model implements.

A model is trained from a `FingerprintSet` by its `fit` classmethod, answers
`predict` on a `QueryBatch` expressed over its own AP vocabulary (`aps`), and
round-trips through `arrays()`/`config()` -> `from_state()` so the service can
store it as safetensors bytes plus a JSON config (see `ml.serialize`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ml.data.features import FingerprintSet
from ml.types import SensorData

# progress(fraction 0..1, message)
ProgressFn = Callable[[float, str], None]


def no_progress(fraction: float, message: str) -> None:
    return None


@dataclass
class QueryBatch:
    """Queries over a model's AP vocabulary: NaN RSSI = not heard."""

    rss: np.ndarray  # (n, m) float32
    age_ms: np.ndarray | None = None  # (n, m) float32, NaN = unknown
    sensors: list[SensorData | None] | None = None
    device: list[str | None] | None = None

    def __len__(self) -> int:
        return int(self.rss.shape[0])

    @classmethod
    def from_set(cls, fs: FingerprintSet) -> QueryBatch:
        sensors = None if fs.sensors is None else list(fs.sensors)
        return cls(rss=fs.rss, age_ms=fs.age_ms, sensors=sensors, device=list(fs.device))


@dataclass
class Prediction:
    xy: np.ndarray  # (n, 2) float64 metres
    floor: np.ndarray  # (n,) object: floor labels
    building: np.ndarray  # (n,) object: building labels or None
    error_m: np.ndarray  # (n,) float64: the model's own estimate of its error
    # Optional, for tracking sessions: the survey points behind each answer on its floor, (n, K, 2) positions
    # and (n, K) weights (0 = padding). Models that have no such neighbours leave it None.
    neighbours: tuple[np.ndarray, np.ndarray] | None = None


class LocModel(ABC):
    name: ClassVar[str]
    # What the finetune job trains it on: the survey's WiFi scans, or its sensor windows (each with the
    # latest scan at or before the window's end).
    trains_on: ClassVar[str] = "scans"
    aps: list[str]

    @classmethod
    @abstractmethod
    def fit(
        cls,
        train: FingerprintSet,
        params: dict[str, Any],
        *,
        holdout: np.ndarray | None = None,
        seed: int = 0,
        progress: ProgressFn = no_progress,
        device: str = "cpu",
    ) -> LocModel:
        """Train on `train`; `params` overrides the model's config defaults.

        `holdout`: row indices of `train` that are never fitted, only used to pick settings/epochs and to
        calibrate `error_m` (the finetune pipeline, `ml.finetune`, passes its holdout here; an empty array
        means "no validation rows": fixed settings). None: the model holds out rows itself with
        `ml.data.splits.holdout_split` where it needs them, and uses all rows in the end (a direct call).
        """

    def refit(
        self, full: FingerprintSet, *, seed: int = 0, progress: ProgressFn = no_progress, device: str = "cpu"
    ) -> LocModel | None:
        """The same recipe refitted once on every row of `full` (train + holdout) with the settings and number of
        epochs this model chose on its holdout, keeping its error calibration; None when the model is served as
        scored (models that co-train keep the holdout unseen, so that updates can be judged on it)."""
        return None

    def settings(self) -> dict[str, Any] | None:
        """`params` that make `fit` repeat this model's recipe with the choices it made (no re-tuning): what a
        self-maintenance update retrains with on the survey plus pseudo-labels. None: not retrainable that way
        (itoloc updates by co-training instead)."""
        return None

    @classmethod
    def holdout_settings(cls, params: dict[str, Any]) -> tuple[float, str]:
        """(fraction, grouping) of the holdout this model's own settings ask for (the benchmarks' default; the
        service uses SITELOC_HOLDOUT_FRACTION unless the request's params name `holdout_fraction`)."""
        return float(params.get("holdout_fraction", 0.2)), str(params.get("holdout_by", "auto"))

    @classmethod
    def check_params(cls, params: dict[str, Any]) -> None:
        """Raise ValueError naming the problem when `params` cannot train this model (checked before queueing a
        job). The default accepts anything: such models report bad params when the job runs."""
        return None

    @abstractmethod
    def predict(self, batch: QueryBatch) -> Prediction: ...

    @abstractmethod
    def arrays(self) -> dict[str, np.ndarray]:
        """Every learned tensor, as numpy arrays (stored as safetensors)."""

    @abstractmethod
    def config(self) -> dict[str, Any]:
        """JSON-serialisable settings needed to rebuild the model (aps included)."""

    @classmethod
    @abstractmethod
    def from_state(cls, arrays: dict[str, np.ndarray], config: dict[str, Any], device: str = "cpu") -> LocModel: ...

    def max_age_ms(self) -> float | None:
        """Entries older than this are ignored at query time (None = keep all)."""
        return None

    # Models that can update themselves from unlabeled queries (co-training) set this and implement `cotrain`.
    supports_cotrain: ClassVar[bool] = False

    def cotrain(
        self,
        labeled: FingerprintSet,
        unlabeled: FingerprintSet,
        params: dict[str, Any],
        *,
        seed: int = 0,
        progress: ProgressFn = no_progress,
        device: str = "cpu",
    ) -> tuple[LocModel, dict[str, Any]]:
        """A new model updated from `unlabeled` (labels unknown) and the survey's `labeled` rows, plus a
        JSON summary of the update. `self` is left unchanged."""
        raise NotImplementedError(f"{self.name} does not support co-training")
