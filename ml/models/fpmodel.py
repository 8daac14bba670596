"""`dnn` and `cnnloc` as `LocModel`s: settings, the scratch recipe, hold-out selection, error_m.

Training a network for a site always goes the same way (`train_site_model`):

1. `prepare`: the site's labels and powed features; a seeded hold-out of whole groups (paths
   when every row has one, else survey positions: scans at one spot are near-duplicates),
   stratified by floor so that every floor keeps fit rows.
2. A *recipe* (scratch here; `encoder`/`msta` in `ml.transfer`) trains a network on the fit
   part; `HoldoutMonitor` keeps the epoch with the best held-out score (mean error + 15 m per
   floor miss) and stops after `patience` epochs without improvement.
3. `finalize`: error_m is calibrated on the hold-out (log-linear in the dropout spread and the
   floor uncertainty, non-negative slopes, median-matched; wknn's `fit_calibration`), then the
   recipe is re-run on all rows for the chosen number of epochs (`refit_all`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, ClassVar

import numpy as np
import torch

from ml.data.features import FingerprintSet
from ml.data.splits import HOLDOUT_BY, holdout_split
from ml.errors import InsufficientData, InvalidParams
from ml.models.base import LocModel, Prediction, ProgressFn, QueryBatch, no_progress
from ml.models.fpnets import NetShape, SiteLabels, SpecialisedNet, build_net, load_arrays, powed, state_arrays
from ml.models.fptrain import (
    Callback,
    History,
    HoldoutMonitor,
    ProgressCallback,
    Score,
    TaskWeights,
    TrainData,
    adam,
    error_features,
    infer,
    mc_spread,
    plain_step,
    pretrain_sae,
    run_epochs,
    score_net,
    seeded,
    shuffled_batches,
    trainable,
)
from ml.models.wknn import estimate_error, fit_calibration
from ml.params import settings_from

DEFAULT_CALIBRATION = [0.5, 1.0, 0.5, 1.0]  # used when there is no hold-out to calibrate on


@dataclass(frozen=True)
class FPNetParams:
    """Settings of `dnn`/`cnnloc`; every field can be set through `params`."""

    # --- input ---
    min_rss: float = -105.0  # dBm mapped to 0 (readings below are clipped); "not heard" is 0 too
    pow_beta: float = math.e  # exponent of the powed representation (wknn's default)
    max_age_ms: float | None = None  # older scan entries count as "not heard" (None: keep all; the network
    # learns what a cached entry is worth: on ILC 25% paths None beat 10 s by 1-5 m, dev seeds)
    # --- network (see NetShape) ---
    hidden: int = 256
    latent: int = 128
    rep: int = 128
    channels: int = 16
    dropout: float = 0.1
    input_dropout: float = 0.1
    # --- optimisation (Adam) ---
    epochs: int = 300  # upper bound; the hold-out picks the epoch actually used
    max_steps: int = 8000  # ... and at most this many batches (caps the epochs on large sites)
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-5
    floor_weight: float = 1.0  # floor cross-entropy beside the distance loss (normalised units)
    building_weight: float = 1.0
    # stop after this many epochs without a better hold-out score (40 until 2026-11-23: on 10% of a UJI building
    # that stopped dnn/cnnloc too early, 2-10% higher error than 80; docs/benchmarks/transfer.md, "Patience")
    patience: int = 80
    sae_epochs: int = 20  # cnnloc only: autoencoder pretraining of the framer
    # --- hold-out (selection, error_m calibration, transfer-vs-scratch choice) ---
    holdout_fraction: float = 0.2
    holdout_by: str = "auto"  # "auto" (path, else position) | "path" | "position" | "user" | "device" | "rows"
    floor_penalty_m: float = 15.0  # selection score: metres per floor miss
    refit_all: bool = True  # retrain on fit + hold-out rows for the chosen number of epochs
    mc_passes: int = 8  # dropout samples for the error estimate

    @classmethod
    def parse(cls, params: dict[str, Any]) -> FPNetParams:
        p = settings_from(cls, params, "dnn/cnnloc")
        p.validate()
        return p

    def validate(self) -> None:
        if self.min_rss >= 0:
            raise InvalidParams("min_rss must be negative (dBm)")
        if self.holdout_by not in HOLDOUT_BY:
            raise InvalidParams(f"holdout_by must be one of {', '.join(HOLDOUT_BY)}")
        if not 0 < self.holdout_fraction < 1:
            raise InvalidParams("holdout_fraction must be in (0, 1)")
        if self.epochs < 1 or self.max_steps < 1 or self.batch_size < 2 or self.lr <= 0:
            raise InvalidParams("need epochs >= 1, max_steps >= 1, batch_size >= 2, lr > 0")

    def shape(self, kind: str, n_in: int, labels: SiteLabels) -> NetShape:
        return NetShape(
            kind=kind,
            n_in=n_in,
            n_floors=labels.n_floors,
            n_buildings=labels.n_buildings,
            hidden=self.hidden,
            latent=self.latent,
            rep=self.rep,
            channels=self.channels,
            dropout=self.dropout,
            input_dropout=self.input_dropout,
        )

    def task_weights(self) -> TaskWeights:
        return TaskWeights(self.floor_weight, self.building_weight)


def features(rss: np.ndarray, age_ms: np.ndarray | None, p: FPNetParams) -> np.ndarray:
    if p.max_age_ms is not None and age_ms is not None:
        rss = np.where(age_ms > p.max_age_ms, np.nan, rss)  # NaN ages compare False: fresh
    return powed(rss, p.min_rss, p.pow_beta)


# ---------------------------------------------------------------- preparation


@dataclass
class Prepared:
    """A site's training rows, ready for any recipe."""

    kind: str
    aps: list[str]
    labels: SiteLabels
    p: FPNetParams
    shape: NetShape
    all: TrainData
    fit: TrainData
    hold: TrainData | None
    split_by: str
    seed: int
    device: torch.device

    @property
    def epochs(self) -> int:
        """`p.epochs`, capped so the fit rows see at most `p.max_steps` batches."""
        per_epoch = max(len(self.fit) // self.p.batch_size, 1)
        return max(1, min(self.p.epochs, self.p.max_steps // per_epoch))


def prepare(
    kind: str,
    train: FingerprintSet,
    p: FPNetParams,
    seed: int,
    device: str | torch.device,
    holdout: np.ndarray | None = None,
) -> Prepared:
    """Labels, features and the fit/hold-out rows. `holdout`: the caller's hold-out rows (the finetune
    pipeline's); None: `holdout_split` of `train` with the params' fraction and grouping."""
    if len(train) == 0:
        raise InsufficientData(f"{kind}: no training fingerprints")
    dev = torch.device(device)
    labels = SiteLabels.from_set(train)
    xy, floor, building = labels.encode(train)
    data = TrainData.from_arrays(features(train.rss, train.age_ms, p), xy, floor, building, dev)
    fit, hold, split_by = data, None, "none"
    if holdout is not None:
        hold_idx = np.unique(np.asarray(holdout, dtype=np.int64))
        fit_idx, split_by = np.setdiff1d(np.arange(len(train)), hold_idx), "caller"
    elif len(train) >= 10:
        fit_idx, hold_idx, split_by = holdout_split(train, p.holdout_fraction, seed, p.holdout_by)
    else:
        fit_idx, hold_idx = np.arange(len(train)), np.empty(0, dtype=np.int64)
    if len(fit_idx) >= 2 and len(hold_idx):
        fit = data.rows(torch.as_tensor(fit_idx, device=dev))
        hold = data.rows(torch.as_tensor(hold_idx, device=dev))
    shape = p.shape(kind, len(train.aps), labels)
    return Prepared(kind, list(train.aps), labels, p, shape, data, fit, hold, split_by, seed, dev)


# ---------------------------------------------------------------- recipes and candidates

# recipe(data, epochs, callbacks, net_hook) -> trained network. `net_hook` is called with the
# freshly built network before training starts (the hold-out monitor needs it).
Recipe = Callable[[TrainData, int, Sequence[Callback], Callable[[SpecialisedNet], None]], SpecialisedNet]


def scratch_recipe(prep: Prepared) -> Recipe:
    p = prep.p

    def recipe(
        data: TrainData, epochs: int, callbacks: Sequence[Callback], hook: Callable[[SpecialisedNet], None]
    ) -> SpecialisedNet:
        net = build_net(prep.shape, prep.seed, prep.device)
        hook(net)
        if prep.shape.kind == "cnnloc":
            pretrain_sae(net, data, p.sae_epochs, p.batch_size, p.lr, prep.seed)
        gen = torch.Generator().manual_seed(prep.seed)
        opt = adam([{"params": trainable(net)}], p.lr, p.weight_decay)
        run_epochs(
            [net], plain_step(net, p.task_weights()), shuffled_batches(data, p.batch_size, gen), opt, epochs, callbacks
        )
        return net

    return recipe


@dataclass
class Candidate:
    """A network trained on the fit rows, at its best hold-out epoch."""

    name: str
    net: SpecialisedNet
    recipe: Recipe
    best_epoch: int
    epochs_run: int
    holdout: Score | None
    curve: list[float]  # hold-out score per epoch
    history: list[dict[str, float]]
    seconds: float
    extra: dict[str, Any]

    def summary(self) -> dict[str, Any]:
        return {
            "holdout": self.holdout.to_json() if self.holdout else None,
            "best_epoch": self.best_epoch,
            "epochs_run": self.epochs_run,
            "train_s": round(self.seconds, 3),
            "holdout_curve": [round(v, 4) for v in self.curve],
            **self.extra,
        }


# Callbacks that need the network being trained are created from it when the recipe builds it.
NetCallback = Callable[[SpecialisedNet], Callback]


def train_candidate(
    name: str,
    recipe: Recipe,
    prep: Prepared,
    progress: ProgressFn = no_progress,
    net_callbacks: Sequence[NetCallback] = (),
    extra: dict[str, Any] | None = None,
) -> Candidate:
    p = prep.p
    t0 = time.perf_counter()
    history = History()
    monitor: list[HoldoutMonitor] = []
    slot = CallbackSlot()

    def hook(net: SpecialisedNet) -> None:
        if prep.hold is not None:
            monitor.append(HoldoutMonitor(net, prep.hold, prep.labels, p.floor_penalty_m, p.patience))
        slot.fill([*monitor, *(make(net) for make in net_callbacks)])

    cbs: list[Callback] = [history, ProgressCallback(progress, prep.epochs, 0.0, 1.0, f"training {name}"), slot]
    with seeded(prep.seed, prep.device):
        net = recipe(prep.fit, prep.epochs, cbs, hook)
    epochs_run = history.rows[-1]["epoch"] if history.rows else 0
    if monitor:
        monitor[0].restore()
        best, best_epoch, curve = monitor[0].best, monitor[0].best_epoch, monitor[0].curve
    else:
        best, best_epoch, curve = None, int(epochs_run), []
    return Candidate(
        name, net, recipe, best_epoch, int(epochs_run), best, curve, history.rows, time.perf_counter() - t0, extra or {}
    )


class CallbackSlot:
    """Forwards to the callbacks a recipe's hook creates once the network exists (every one is
    called; stops when any asks to)."""

    def __init__(self, callbacks: Sequence[Callback] = ()) -> None:
        self.callbacks = list(callbacks)

    def fill(self, callbacks: Sequence[Callback]) -> None:
        self.callbacks = list(callbacks)

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> bool:
        return any([cb.on_epoch_end(epoch, logs) for cb in self.callbacks])


def finalize(
    cls: type[FingerprintNet],
    cand: Candidate,
    prep: Prepared,
    report: dict[str, Any],
    progress: ProgressFn = no_progress,
    refit: bool | None = None,
) -> FingerprintNet:
    """Calibrate error_m on the hold-out, refit on all rows now if asked (default: `refit_all`), wrap as a
    LocModel. Not refitted now, the model keeps its recipe so that `LocModel.refit` can do it later (the
    finetune pipeline scores it on the hold-out first)."""
    calibration = list(DEFAULT_CALIBRATION)
    if prep.hold is not None and len(prep.hold) >= 5:
        calibration = calibrate(cand.net, prep.hold, prep.labels, prep.p.mc_passes)
    net = cand.net
    refit = (prep.p.refit_all if refit is None else refit) and prep.hold is not None
    if refit:
        progress(0.0, f"refitting {cand.name} on all {len(prep.all)} rows for {cand.best_epoch} epochs")
        net = refit_net(cand, prep)
    report = {**report, "refit_all": refit, "calibration": calibration}
    model = cls(prep.aps, prep.p, prep.labels, prep.shape, net, calibration, report)
    if not refit and prep.hold is not None and prep.p.refit_all:
        model._refit_from = (cand, prep)
    return model


def refit_net(cand: Candidate, prep: Prepared) -> SpecialisedNet:
    """The candidate's recipe re-run on every row (fit + hold-out) for its best number of epochs."""
    with seeded(prep.seed, prep.device):
        return cand.recipe(prep.all, max(cand.best_epoch, 1), [], lambda _: None)


def calibrate(net: SpecialisedNet, hold: TrainData, labels: SiteLabels, passes: int) -> list[float]:
    xy, _, _, p_floor = infer(net, hold.x, labels)
    spread = mc_spread(net, hold.x, labels, passes)
    err = np.hypot(*(xy - labels.decode_xy(hold.xy.cpu().numpy())).T)
    return fit_calibration(error_features(spread, p_floor), err)


def train_site_model(
    cls: type[FingerprintNet],
    train: FingerprintSet,
    p: FPNetParams,
    seed: int,
    progress: ProgressFn,
    device: str,
    holdout: np.ndarray | None = None,
) -> FingerprintNet:
    prep = prepare(cls.name, train, p, seed, device, holdout)
    cand = train_candidate("scratch", scratch_recipe(prep), prep, span_progress(progress, 0.0, 0.7))
    report = {
        "strategy": "scratch",
        "holdout_by": prep.split_by,
        "n_fit": len(prep.fit),
        "n_holdout": len(prep.hold) if prep.hold is not None else 0,
        "scratch": cand.summary(),
    }
    # A caller's hold-out (the finetune pipeline) scores this model before any refit: refit later, on request.
    later = None if holdout is None else False
    model = finalize(cls, cand, prep, report, span_progress(progress, 0.7, 1.0), refit=later)
    progress(1.0, "done")
    return model


def span_progress(progress: ProgressFn, lo: float, hi: float) -> ProgressFn:
    """`progress` with 0..1 mapped onto lo..hi."""

    def inner(fraction: float, message: str) -> None:
        progress(lo + (hi - lo) * min(max(fraction, 0.0), 1.0), message)

    return inner


# ---------------------------------------------------------------- the models


class FingerprintNet(LocModel):
    """A trained specialised network for one site (shared by `dnn` and `cnnloc`)."""

    name: ClassVar[str] = "fpnet"

    def __init__(
        self,
        aps: list[str],
        params: FPNetParams,
        labels: SiteLabels,
        shape: NetShape,
        net: SpecialisedNet,
        calibration: list[float],
        training: dict[str, Any] | None = None,
    ) -> None:
        self.aps = list(aps)
        self.params = params
        self.labels = labels
        self.shape = shape
        self.net = net.eval()
        self.device = next(net.parameters()).device
        self.calibration = [float(v) for v in calibration]
        self.training = training or {}
        self.fallback_error_m = max(4.0 * labels.scale, 1.0)  # about the site's diameter: queries hearing nothing
        # (candidate, prepared data) while a refit on all rows is still possible (in the process that trained it)
        self._refit_from: tuple[Candidate, Prepared] | None = None

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
    ) -> FingerprintNet:
        return train_site_model(cls, train, FPNetParams.parse(params), seed, progress, device, holdout)

    @classmethod
    def check_params(cls, params: dict[str, Any]) -> None:
        FPNetParams.parse(params)

    def refit(
        self, full: FingerprintSet, *, seed: int = 0, progress: ProgressFn = no_progress, device: str = "cpu"
    ) -> FingerprintNet | None:
        """The kept candidate's recipe (scratch, encoder or msta) on every row for its best epoch count; the
        hold-out calibration is kept. `full` must be the set this model was fitted on (hold-out included)."""
        if self._refit_from is None:
            return None
        cand, prep = self._refit_from
        if len(full) != len(prep.all):
            raise ValueError(f"refit needs the {len(prep.all)} rows the model was fitted on, got {len(full)}")
        progress(0.0, f"refitting {cand.name} on all {len(prep.all)} rows for {cand.best_epoch} epochs")
        net = refit_net(cand, prep)
        training = {**self.training, "refit_all": True}
        return type(self)(self.aps, self.params, self.labels, self.shape, net, self.calibration, training)

    def settings(self) -> dict[str, Any]:
        """This network's settings (the scratch recipe: a transfer-trained model is retrained from scratch)."""
        return asdict(self.params)

    def max_age_ms(self) -> float | None:
        return self.params.max_age_ms

    def tensor(self, rss: np.ndarray, age_ms: np.ndarray | None) -> torch.Tensor:
        return torch.as_tensor(features(rss, age_ms, self.params), device=self.device)

    def predict(self, batch: QueryBatch) -> Prediction:
        x = self.tensor(batch.rss, batch.age_ms)
        xy, floor, building, p_floor = infer(self.net, x, self.labels)
        spread = mc_spread(self.net, x, self.labels, self.params.mc_passes)
        err = estimate_error(error_features(spread, p_floor), self.calibration)
        empty = ~(x > 0).any(dim=1).cpu().numpy()
        err[empty] = np.maximum(err[empty], self.fallback_error_m)
        keys = self.labels.floor_keys
        return Prediction(
            xy=xy,
            floor=np.array([keys[f][1] for f in floor], dtype=object),
            building=np.array([self.labels.buildings[b] for b in building], dtype=object),
            error_m=np.asarray(err, dtype=np.float64),
        )

    def representations(self, batch: QueryBatch) -> tuple[np.ndarray, np.ndarray]:
        """(Z^F, Z^E) of each query in eval mode (what MSTA's surrogate teachers model)."""
        x = self.tensor(batch.rss, batch.age_ms)
        self.net.eval()
        with torch.no_grad():
            out = self.net(x)
        return out.zf.cpu().numpy(), out.ze.cpu().numpy()

    def arrays(self) -> dict[str, np.ndarray]:
        return state_arrays(self.net, "net.")

    def config(self) -> dict[str, Any]:
        return {
            "aps": list(self.aps),
            "params": asdict(self.params),
            "labels": self.labels.to_json(),
            "shape": self.shape.to_json(),
            "calibration": list(self.calibration),
            "training": self.training,
        }

    @classmethod
    def from_state(cls, arrays: dict[str, np.ndarray], config: dict[str, Any], device: str = "cpu") -> FingerprintNet:
        shape = NetShape(**config["shape"])
        if shape.kind != cls.name:
            raise ValueError(f"stored network is a {shape.kind!r}, not {cls.name!r}")
        net = SpecialisedNet(shape)
        load_arrays(net, arrays, "net.")
        params = replace(FPNetParams(), **config["params"])
        labels = SiteLabels.from_json(config["labels"])
        return cls(
            list(config["aps"]),
            params,
            labels,
            shape,
            net.to(torch.device(device)),
            config["calibration"],
            config.get("training"),
        )


class DNN(FingerprintNet):
    """MLP specialised network (position regression + floor/building classification)."""

    name: ClassVar[str] = "dnn"


class CNNLoc(FingerprintNet):
    """CNNLoc-style network: SAE front (reconstruction-pretrained) + 1-D CNN extractor."""

    name: ClassVar[str] = "cnnloc"


def held_out_score(model: FingerprintNet, fs: FingerprintSet) -> Score:
    """The selection score of a fitted model on labelled rows (over the model's vocabulary)."""
    fs = fs.with_aps(model.aps)
    xy, floor, building = model.labels.encode(fs)
    data = TrainData.from_arrays(features(fs.rss, fs.age_ms, model.params), xy, floor, building, model.device)
    return score_net(model.net, data, model.labels, model.params.floor_penalty_m)
