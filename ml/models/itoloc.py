"""iToLoc (paper 002): adversarial CNN over fingerprint images, three location modules.

`ITOLOC.fit` builds the site layout (zones, per-zone AP lists, reference cells,
(device, time-bucket) domains; see `itoloc_site`), trains `ItolocNet` with
L = La + gamma * Ls - lambda * Ld (see `itoloc_train`), keeps the epoch with the best
mean error on a held-out part of the training data (whole groups: paths, else users,
else devices), and calibrates `error_m` on that hold-out.

Answer of a query: zone = the building whose APs are heard most strongly; the three
modules' softmaxes are averaged; floor = the building+floor with the most probability
mass; position = probability-weighted mean of the `top_cells` most likely cells on that
floor (no averaging across floors or far-away cells).

`error_m` = exp(w . [1, log1p(spread), log1p(disagreement), 1 - floor mass,
1 - top-cell mass]) - 1, w fitted by least squares on the hold-out (log-space), where
spread is the probability-weighted spread of the top cells around the answer and
disagreement the mean distance between the three modules' own answers and the answer.

For co-training (section IV): `module_probs` gives each module's probabilities
separately (optionally with dropout on: one stochastic pass per call), `decode` turns a
probability vector into an answer, `targets` maps labelled rows to one-hot cell labels,
`smear` implements output smearing (Eq. 12-13), and `fine_tune_modules` refines each
module on its own labelled set.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, ClassVar

import numpy as np
import torch

from ml.data.features import FingerprintSet
from ml.data.splits import holdout_split
from ml.evaluate import metrics
from ml.models.base import LocModel, Prediction, ProgressFn, QueryBatch, no_progress
from ml.models.itoloc_cotrain import ModuleSet, cotrain_update, smear
from ml.models.itoloc_net import ItolocConfig, ItolocNet
from ml.models.itoloc_site import (
    SiteLayout,
    build_layout,
    cell_of_rows,
    domain_labels,
    zone_labels,
    zone_of,
    zone_rss,
)
from ml.models.itoloc_train import Batch, Cells, finetune_module, module_log_probs, train_net
from ml.seed import seed_everything

# Calibration weights used when there is no hold-out: error_m = spread.
_DEFAULT_CALIB = np.array([0.0, 1.0, 0.0, 0.0, 0.0])


@dataclass
class Decoded:
    xy: np.ndarray  # (n, 2) answer
    fkey: np.ndarray  # (n,) building+floor index of the answer
    spread: np.ndarray  # (n,) probability-weighted spread of the top cells around xy
    floor_mass: np.ndarray  # (n,) probability of the chosen building+floor
    top_mass: np.ndarray  # (n,) probability of the top cells (of the whole vector)


class ITOLOC(LocModel):
    name: ClassVar[str] = "itoloc"
    # Co-training (section IV) judges its updates on data the model never saw: by default (`refit` False)
    # the finetune pipeline serves the model it scored, so the holdout stays unseen.
    supports_cotrain: ClassVar[bool] = True

    def __init__(
        self,
        cfg: ItolocConfig,
        layout: SiteLayout,
        domains: list[str],
        calib: np.ndarray,
        device: str = "cpu",
        history: list[dict[str, float]] | None = None,
    ) -> None:
        self.cfg = cfg
        self.layout = layout
        self.aps = layout.aps
        self.domains = domains
        self.calib = np.asarray(calib, dtype=np.float64)
        self.device = torch.device(device)
        self.history = history or []
        self._refit_pending = False  # set by `fit`: `cfg.refit` asked for a refit that the caller makes with `refit`
        self.calibration: dict[str, Any] = {}
        keys = [
            f"{z}\x1f{b}\x1f{f}"
            for z, b, f in zip(layout.cell_zone, layout.cell_building, layout.cell_floor, strict=True)
        ]
        uniq, self.cell_fkey = np.unique(np.array(keys, dtype=object), return_inverse=True)
        first = np.unique(self.cell_fkey, return_index=True)[1]
        self.fkey_floor = layout.cell_floor[first]
        self.fkey_building = layout.cell_building[first]
        self.fkey_names = [str(u) for u in uniq]
        zones = np.arange(len(layout.zone_names))[:, None] == layout.cell_zone[None, :]
        # Positions go to float32 tensors relative to this origin (projected coordinates such as
        # UJIIndoorLoc's ~4.9e6 m would lose metres in float32).
        self.origin = layout.cell_xy.mean(0) if len(layout.cell_xy) else np.zeros(2)
        self.cells = Cells(
            xy=self._tensor(layout.cell_xy - self.origin),
            fkey=self._tensor(self.cell_fkey, torch.int64),
            zone_allowed=self._tensor(zones, torch.bool),
        )
        self.net = ItolocNet(cfg, len(layout.cell_xy), len(domains)).to(self.device)

    # ----- training -------------------------------------------------------------------------

    @classmethod
    def check_params(cls, params: dict[str, Any]) -> None:
        ItolocConfig.from_params(dict(params))

    @classmethod
    def fit(
        cls,
        train: FingerprintSet,
        params: dict[str, Any],
        *,
        holdout: np.ndarray | None = None,
        seed: int = 0,
        progress: ProgressFn = no_progress,
        device: str = "cpu",
    ) -> ITOLOC:
        """Train on the rows outside the holdout (the caller's, else `holdout_split` with `cfg.holdout`), which
        picks the epoch and calibrates error_m. With `cfg.refit` the recipe is re-run on all rows: here when the
        model chose its own holdout, else by `refit` after the caller scored it."""
        cfg = ItolocConfig.from_params(dict(params))
        seed_everything(seed)
        held = np.zeros(len(train), dtype=bool)
        if holdout is None:
            held[holdout_split(train, cfg.holdout, seed).hold] = True
        else:
            held[np.asarray(holdout, dtype=np.int64)] = True
        cfg = schedule_for(cfg, int((~held).sum()))
        val = train.subset(held) if held.any() else None
        share = 0.5 if cfg.refit and val is not None and holdout is None else 1.0
        model = cls._train_once(train.subset(~held), val, cfg, seed, device, cfg.epochs, _scaled(progress, 0, share))
        if val is not None:
            model.calib = model.calibrate(val)
            model.calibration = model.holdout_report(val)
        if share < 1.0:
            epochs = cfg.epochs if not cfg.early_stop else model.best_epoch()
            full = cls._train_once(train, None, cfg, seed, device, epochs, _scaled(progress, share, 1.0))
            full.calib, full.history, full.calibration = model.calib, model.history + full.history, model.calibration
            model = full
        model._refit_pending = bool(cfg.refit and val is not None and holdout is not None)
        progress(1.0, "done")
        return model

    @classmethod
    def holdout_settings(cls, params: dict[str, Any]) -> tuple[float, str]:
        return ItolocConfig.from_params(dict(params)).holdout, "auto"

    def refit(
        self, full: FingerprintSet, *, seed: int = 0, progress: ProgressFn = no_progress, device: str = "cpu"
    ) -> ITOLOC | None:
        """With `cfg.refit`: all rows for the epoch the holdout chose, keeping the holdout's calibration."""
        if not self._refit_pending:
            return None
        epochs = self.cfg.epochs if not self.cfg.early_stop else self.best_epoch()
        model = type(self)._train_once(full, None, self.cfg, seed, device, epochs, progress)
        model.calib, model.history, model.calibration = self.calib, self.history + model.history, self.calibration
        return model

    @classmethod
    def _train_once(
        cls,
        fs: FingerprintSet,
        val: FingerprintSet | None,
        cfg: ItolocConfig,
        seed: int,
        device: str,
        epochs: int,
        progress: ProgressFn,
    ) -> ITOLOC:
        seed_everything(seed)
        layout = build_layout(fs, fs.fresh_rss(cfg.max_age_ms), cfg.n_aps, cfg.zones, cfg.cell_m, cfg.ap_min_heard)
        domain, names = domain_labels(fs, cfg.time_bucket_ms, cfg.min_domain_rows)
        model = cls(cfg, layout, names, _DEFAULT_CALIB, device)
        data = model._labelled(fs, domain)

        def evaluate(_: ItolocNet) -> float:
            assert val is not None
            return float(np.mean(np.hypot(*(model._answer(model._rss(val))[0].xy - val.xy).T)))

        model.history = train_net(
            model.net,
            data,
            model.cells,
            cfg,
            seed=seed,
            epochs=epochs,
            evaluate=evaluate if val is not None and len(val) else None,
            progress=progress,
        )
        return model

    def best_epoch(self) -> int:
        scored = [h for h in self.history if "holdout_mean_m" in h]
        if not scored:
            return self.cfg.epochs
        return int(min(scored, key=lambda h: h["holdout_mean_m"])["epoch"])

    def _rss(self, fs: FingerprintSet) -> np.ndarray:
        return fs.with_aps(self.aps).fresh_rss(self.cfg.max_age_ms)

    def _tensor(self, a: np.ndarray, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return torch.tensor(a, dtype=dtype, device=self.device)

    def _labelled(self, fs: FingerprintSet, domain: np.ndarray) -> Batch:
        """Training tensors for labelled rows (rows without a cell on their floor are dropped)."""
        cell = cell_of_rows(fs, self.layout, self.cfg.zones)
        keep = cell >= 0
        fs, cell, domain = fs.subset(keep), cell[keep], domain[keep]
        zone = self.layout.cell_zone[cell]
        rss = zone_rss(self._rss(fs), self.layout.zone_aps, zone)
        return Batch(
            rss=self._tensor(rss),
            zone=self._tensor(zone, torch.int64),
            target=self._tensor(cell, torch.int64),
            xy=self._tensor(fs.xy - self.origin),
            fkey=self._tensor(self.cell_fkey[cell], torch.int64),
            domain=self._tensor(domain, torch.int64),
        )

    # ----- inference ------------------------------------------------------------------------

    def zones_of(self, rss: np.ndarray) -> np.ndarray:
        """Zone (building) of each query, from which zone's APs are heard most strongly."""
        return zone_of(rss, self.layout.zone_aps, self.cfg.rss_floor_dbm)

    def module_probs(self, rss: np.ndarray, *, mc_dropout: bool = False) -> np.ndarray:
        """(3, n, C) cell probabilities of M1, M2, M3 for RSS over `aps` (NaN = not heard).

        With `mc_dropout` each call is one stochastic pass (dropout on, batch norm frozen)."""
        zone = self.zones_of(rss)
        zr = self._tensor(zone_rss(np.asarray(rss, dtype=np.float32), self.layout.zone_aps, zone))
        logp = module_log_probs(
            self.net, zr, self._tensor(zone, torch.int64), self.cells, self.cfg, mc_dropout=mc_dropout
        )
        return np.asarray(logp.exp().cpu().numpy(), dtype=np.float64)

    def decode(self, probs: np.ndarray) -> Decoded:
        """Answer from (n, C) cell probabilities: best building+floor, then top cells there."""
        n_f = len(self.fkey_names)
        floor_mass = probs @ np.eye(n_f)[self.cell_fkey]
        fbest = np.argmax(floor_mass, 1)
        p = np.where(self.cell_fkey[None, :] == fbest[:, None], probs, 0.0)
        k = min(self.cfg.top_cells, p.shape[1])
        idx = np.argpartition(-p, k - 1, axis=1)[:, :k]
        w = np.take_along_axis(p, idx, 1)
        w_sum = np.maximum(w.sum(1, keepdims=True), 1e-12)
        pts = self.layout.cell_xy[idx]  # (n, k, 2)
        xy = (w[..., None] * pts).sum(1) / w_sum
        spread = np.sqrt((w * ((pts - xy[:, None]) ** 2).sum(-1)).sum(1) / w_sum[:, 0])
        return Decoded(xy, fbest, spread, floor_mass[np.arange(len(p)), fbest], w.sum(1))

    def _answer(self, rss: np.ndarray) -> tuple[Decoded, np.ndarray]:
        """Ensemble answer and the uncertainty features used for error_m."""
        probs = self.module_probs(rss)
        ens = self.decode(probs.mean(0))
        each = [self.decode(p).xy for p in probs]
        disagree = np.mean([np.hypot(*(xy - ens.xy).T) for xy in each], 0)
        feats = np.stack(
            [np.ones(len(rss)), np.log1p(ens.spread), np.log1p(disagree), 1 - ens.floor_mass, 1 - ens.top_mass], 1
        )
        return ens, feats

    def calibrate(self, val: FingerprintSet) -> np.ndarray:
        """Least-squares fit (ridge 1e-3) of log1p(real error) on the uncertainty features."""
        ans, feats = self._answer(self._rss(val))
        err = np.hypot(*(ans.xy - val.xy).T)
        if len(val) < 2 * feats.shape[1]:
            return _DEFAULT_CALIB.copy()
        a = feats.T @ feats + 1e-3 * np.eye(feats.shape[1])
        return np.asarray(np.linalg.solve(a, feats.T @ np.log1p(err)), dtype=np.float64)

    def holdout_report(self, val: FingerprintSet) -> dict[str, Any]:
        """Accuracy and error_m quality on the hold-out (the calibration set itself)."""
        m = metrics(self.predict(QueryBatch.from_set(val)), val)
        keys = ("n", "mean_m", "median_m", "floor_hit", "error_estimate_spearman", "error_estimate_median_ratio")
        return {"weights": self.calib.tolist(), **{f"holdout_{k}": m[k] for k in keys}}

    def predict(self, batch: QueryBatch) -> Prediction:
        rss = np.asarray(batch.rss, dtype=np.float32)
        if self.cfg.max_age_ms is not None and batch.age_ms is not None:
            rss = np.where(batch.age_ms > self.cfg.max_age_ms, np.nan, rss).astype(np.float32)
        ans, feats = self._answer(rss)
        return Prediction(
            xy=ans.xy.astype(np.float64),
            floor=np.array(self.fkey_floor[ans.fkey], dtype=object),
            building=np.array(self.fkey_building[ans.fkey], dtype=object),
            error_m=np.maximum(np.expm1(feats @ self.calib), 0.0),
        )

    def max_age_ms(self) -> float | None:
        return self.cfg.max_age_ms

    # ----- co-training hooks ----------------------------------------------------------------

    def targets(self, fs: FingerprintSet) -> np.ndarray:
        """(n, C) one-hot labels of labelled rows (nearest cell on their building+floor; 0 if none)."""
        cell = cell_of_rows(fs, self.layout, self.cfg.zones)
        out = np.zeros((len(fs), len(self.layout.cell_xy)), dtype=np.float32)
        ok = cell >= 0
        out[np.flatnonzero(ok), cell[ok]] = 1.0
        return out

    def near_cells(self, radius_m: float) -> np.ndarray:
        """(C, C) bool: cells on the same building+floor within radius_m of each other (the diagonal always)."""
        d = np.hypot(*(self.layout.cell_xy[:, None, :] - self.layout.cell_xy[None, :, :]).transpose(2, 0, 1))
        same = self.cell_fkey[:, None] == self.cell_fkey[None, :]
        return np.asarray((same & (d <= radius_m)) | np.eye(len(d), dtype=bool))

    def zone_cells(self, target: np.ndarray) -> np.ndarray:
        """(n, C) bool: the cells of the zone (building) of each row's most likely cell."""
        zone = self.layout.cell_zone[np.argmax(target, 1)]
        return np.asarray(zone[:, None] == self.layout.cell_zone[None, :])

    def fine_tune_modules(
        self,
        sets: Sequence[ModuleSet | None],
        *,
        epochs: int = 5,
        lr: float = 0.01,
        seed: int = 0,
        freeze_extractor: bool = True,
        progress: ProgressFn = no_progress,
    ) -> None:
        """Fine-tune M1, M2, M3 on their own labelled sets (None = leave that module)."""
        seed_everything(seed)
        for k, s in enumerate(sets):
            if s is not None and len(s.rss) > 1:
                data = self._soft_batch(s)
                finetune_module(
                    self.net,
                    k,
                    data,
                    self.cells,
                    self.cfg,
                    epochs=epochs,
                    lr=lr,
                    seed=seed + k,
                    freeze_extractor=freeze_extractor,
                )
            progress((k + 1) / len(sets), f"fine-tuned module M{k + 1}")

    def cotrain(
        self,
        labeled: FingerprintSet,
        unlabeled: FingerprintSet,
        params: dict[str, Any],
        *,
        seed: int = 0,
        progress: ProgressFn = no_progress,
        device: str = "cpu",
    ) -> tuple[ITOLOC, dict[str, Any]]:
        """Section IV co-training on a copy (see `ml.models.itoloc_cotrain.cotrain_update`); `self` is unchanged.
        The error_m calibration is kept from the parent: it was fitted on the survey hold-out, which the
        update must not see (the service judges the update on it)."""
        copy = ITOLOC.from_state(self.arrays(), self.config(), device)
        summary = cotrain_update(copy, labeled, unlabeled, params, seed=seed, progress=progress)
        copy.net.eval()
        return copy, summary

    def _soft_batch(self, s: ModuleSet) -> Batch:
        cell = np.argmax(s.target, 1)
        zone = self.layout.cell_zone[cell]
        xy = s.xy if s.xy is not None else s.target @ self.layout.cell_xy
        return Batch(
            rss=self._tensor(zone_rss(np.asarray(s.rss, dtype=np.float32), self.layout.zone_aps, zone)),
            zone=self._tensor(zone, torch.int64),
            target=self._tensor(s.target),
            xy=self._tensor(xy - self.origin),
            fkey=self._tensor(self.cell_fkey[cell], torch.int64),
            domain=self._tensor(np.zeros(len(cell)), torch.int64),
        )

    # ----- serialization --------------------------------------------------------------------

    def arrays(self) -> dict[str, np.ndarray]:
        out = {f"net.{k}": v.detach().cpu().numpy() for k, v in self.net.state_dict().items()}
        out.update(
            zone_aps=self.layout.zone_aps,
            cell_xy=self.layout.cell_xy,
            cell_zone=self.layout.cell_zone,
            calib=self.calib,
        )
        return out

    def config(self) -> dict[str, Any]:
        cfg = asdict(self.cfg)
        cfg["lr_drops"] = list(self.cfg.lr_drops)
        return {
            "params": cfg,
            "aps": list(self.aps),
            "zone_names": list(self.layout.zone_names),
            "cell_floor": [str(f) for f in self.layout.cell_floor],
            "cell_building": [None if b is None else str(b) for b in self.layout.cell_building],
            "domains": list(self.domains),
            "history": self.history,
            "calibration": self.calibration,
        }

    @classmethod
    def from_state(cls, arrays: dict[str, np.ndarray], config: dict[str, Any], device: str = "cpu") -> ITOLOC:
        layout = SiteLayout(
            aps=list(config["aps"]),
            zone_names=list(config["zone_names"]),
            zone_aps=np.asarray(arrays["zone_aps"], dtype=np.int64),
            cell_xy=np.asarray(arrays["cell_xy"], dtype=np.float64),
            cell_floor=np.array(config["cell_floor"], dtype=object),
            cell_building=np.array(config["cell_building"], dtype=object),
            cell_zone=np.asarray(arrays["cell_zone"], dtype=np.int64),
        )
        cfg = ItolocConfig.from_params(dict(config["params"]))
        model = cls(cfg, layout, list(config["domains"]), arrays["calib"], device, list(config.get("history", [])))
        model.calibration = dict(config.get("calibration", {}))
        state = {k[4:]: torch.from_numpy(np.array(v)) for k, v in arrays.items() if k.startswith("net.")}
        model.net.load_state_dict(state)
        model.net.eval()
        return model


def schedule_for(cfg: ItolocConfig, n_rows: int) -> ItolocConfig:
    """The batch size and epochs actually used for `n_rows` training rows (see ItolocConfig.min_steps); the
    model stores the resolved values."""
    batch = cfg.batch_size
    if cfg.min_batches_per_epoch > 0 and n_rows < batch * cfg.min_batches_per_epoch:
        batch = min(batch, max(32, n_rows // cfg.min_batches_per_epoch))
    per_epoch = max(1, math.ceil(n_rows / batch))
    epochs = max(cfg.epochs, min(cfg.max_epochs, math.ceil(cfg.min_steps / per_epoch)))
    return replace(cfg, batch_size=batch, epochs=epochs)


def _scaled(progress: ProgressFn, start: float, end: float) -> ProgressFn:
    def inner(fraction: float, message: str) -> None:
        progress(start + (end - start) * fraction, message)

    return inner


__all__ = ["ITOLOC", "Decoded", "ItolocConfig", "ModuleSet", "smear", "zone_labels"]
