"""MTLoc (paper 000): sensor-window localization with a transferable IMU branch.

Three modality branches, concatenated and fused by an MLP (Table I, the paper's sizes by default):

    WiFi-DNN  : the site's `n_aps` most-heard APs (powed RSS, unheard 0) -> FC 128 -> FC 128
    IMU-LSTM  : 10 steps x 2 (|accel|, |gyro|; see ml.sensors) -> LSTM 128 (last hidden state)
    MAG-LSTM  : 10 steps x 1 (|mag|) -> LSTM 128
    fusion    : [wifi 128, imu 128, mag 128, presence 3] -> FC 128 -> (x, y)
                plus a floor head and a log-sigma head (the answer's own error scale)

Beyond Table I: the three presence values (each modality's coverage of the window, 0 = missing)
enter the fusion layer and multiply their branch's features, and training drops each modality at
random (`modality_dropout`) and cuts some windows short (`partial_rate`), so a query with WiFi only,
sensors only or a partial window still gets an answer; the log-sigma head is trained with a
Gaussian likelihood of the (detached) position error and calibrated on validation paths under the
same missing-modality patterns, so `error_m` grows when a modality is missing.

Beyond the paper (`knn_blend`, on by default): a WiFi kNN (`wknn`, fitted on the distinct scans of the training
windows) is blended with the network's position when the query has WiFi, with the weight that minimises the mean
error on the validation paths (0 when the network alone is better). The paper's network is what the bench reports
as `knn_blend=false`.

Transfer (paper 000 sections IV-B..D): `pretrain_imu` trains an IMU-LSTM regressor on source sites'
windows (Table IV: 1 layer, 128 units, RMSprop, lr 0.005) and returns it as an `ImuArtifact`;
`MTLoc.fit(..., imu_source=art, strategy="frozen" | "finetune")` starts the IMU-LSTM from it, frozen
or trainable. `pretrain_target="position"` regresses the source's (x, y) as in the paper;
`"speed"` (beyond the paper) regresses the distance walked during the window, which means the same
thing in every building.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from ml.data.features import FingerprintSet, reindex_columns
from ml.data.splits import holdout_split
from ml.errors import InsufficientData, InvalidParams
from ml.models.base import LocModel, Prediction, ProgressFn, QueryBatch, no_progress
from ml.models.fpnets import floor_key_order, powed
from ml.params import settings_from
from ml.seed import seed_torch
from ml.sensors import window_matrix, window_speed
from ml.serialize import FORMAT_VERSION, dump_arrays, load_arrays
from ml.train import Callback, EarlyStopping, EveryEpoch, ProgressCallback, run_epochs, shuffled_indices

STRATEGIES = ("scratch", "frozen", "finetune")
PRETRAIN_TARGETS = ("position", "speed")
ARTIFACT_KIND = "siteloc-mtloc-imu"
_RAYLEIGH_MEAN = math.sqrt(math.pi / 2)  # E|e| of a 2-D isotropic Gaussian error with scale sigma


@dataclass(frozen=True)
class MTLocConfig:
    n_aps: int = 750  # WiFi-DNN input: the site's most-heard APs (Table I: 750)
    wifi_hidden: int = 128
    imu_hidden: int = 128  # Table IV: 1 layer, 128 units
    mag_hidden: int = 128
    fusion_hidden: int = 128
    steps: int = 10  # 1 s at 10 Hz
    rate_hz: float = 10.0
    min_rss: float = -100.0
    epochs: int = 60
    batch_size: int = 128
    lr: float = 1e-3  # Adam for the multimodal network (the paper gives no optimiser for it)
    weight_decay: float = 0.0
    modality_dropout: float = 0.25  # per modality and window, while training
    partial_rate: float = 0.1  # share of training windows cut to a random shorter span
    ap_dropout: float = 0.0  # share of a training scan's heard APs hidden from the WiFi-DNN (beyond the paper)
    floor_weight: float = 1.0
    sigma_weight: float = 0.1
    val_fraction: float = 0.1  # validation paths: best epoch and error_m calibration
    patience: int = 15  # epochs without a better validation error before stopping; 0 = never
    pretrain_epochs: int = 100  # Table IV
    pretrain_lr: float = 0.005  # Table IV, RMSprop
    pretrain_batch_size: int = 128
    pretrain_target: str = "position"  # "position" (paper) | "speed" (beyond the paper)
    # Beyond the paper: blend the network's (x, y) with a WiFi kNN (ml.models.wknn, fitted on the survey's scans)
    # as alpha * knn + (1 - alpha) * network when the query has WiFi; alpha is chosen on the validation paths
    # (0 = the paper's network alone). False = never.
    knn_blend: bool = True

    @classmethod
    def parse(cls, params: Mapping[str, Any] | None) -> MTLocConfig:
        cfg = settings_from(cls, dict(params or {}), "mtloc")
        ints = ("n_aps", "wifi_hidden", "imu_hidden", "mag_hidden", "fusion_hidden", "steps", "batch_size")
        for name in (*ints, "pretrain_batch_size"):
            if int(getattr(cfg, name)) < 1:
                raise InvalidParams(f"mtloc param {name} must be >= 1")
        if cfg.steps < 2:
            raise InvalidParams("mtloc param steps must be >= 2")
        if cfg.epochs < 1 or cfg.pretrain_epochs < 1:
            raise InvalidParams("mtloc params epochs and pretrain_epochs must be >= 1")
        for name in ("modality_dropout", "partial_rate", "ap_dropout"):
            if not 0 <= getattr(cfg, name) < 1:
                raise InvalidParams(f"mtloc param {name} must be in [0, 1)")
        if cfg.patience < 0:
            raise InvalidParams("mtloc param patience must be >= 0 (0 = never stop early)")
        if not 0 <= cfg.val_fraction < 0.5:
            raise InvalidParams("mtloc param val_fraction must be in [0, 0.5)")
        if cfg.rate_hz <= 0 or cfg.lr <= 0 or cfg.pretrain_lr <= 0 or cfg.min_rss >= 0:
            raise InvalidParams("mtloc params rate_hz, lr, pretrain_lr must be > 0 and min_rss < 0")
        if cfg.pretrain_target not in PRETRAIN_TARGETS:
            raise InvalidParams(f"mtloc param pretrain_target must be one of {PRETRAIN_TARGETS}")
        return cfg


# ---------------------------------------------------------------- features


@dataclass
class Inputs:
    wifi: np.ndarray  # (n, n_aps) float32
    imu: np.ndarray  # (n, steps, 2) float32, standardised
    mag: np.ndarray  # (n, steps, 1) float32, standardised
    present: np.ndarray  # (n, 3) float32 coverage of wifi, imu, mag (0 = missing)


@dataclass
class Norm:
    """Standardisation of the sensor magnitudes (|accel|, |gyro|, |mag|)."""

    mean: np.ndarray  # (3,)
    std: np.ndarray  # (3,)

    @classmethod
    def fit(cls, feats: np.ndarray, cov: np.ndarray) -> Norm:
        mean, std = np.zeros(3), np.ones(3)
        for k in range(3):
            rows = feats[cov[:, k] > 0, :, k]
            if rows.size:
                mean[k], std[k] = float(rows.mean()), float(rows.std()) or 1.0
        return cls(mean, std)

    def apply(self, feats: np.ndarray, cov: np.ndarray) -> np.ndarray:
        out = (feats - self.mean.astype(np.float32)) / self.std.astype(np.float32)
        return np.where(cov[:, None, :] > 0, out, 0.0).astype(np.float32)

    def to_json(self) -> dict[str, list[float]]:
        return {"mean": [float(v) for v in self.mean], "std": [float(v) for v in self.std]}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Norm:
        return cls(np.asarray(d["mean"], dtype=np.float64), np.asarray(d["std"], dtype=np.float64))


def sensor_inputs(sensors: Any, n: int, cfg: MTLocConfig, norm: Norm) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(imu (n, steps, 2), mag (n, steps, 1), coverage (n, 2) of imu, mag) from SensorData rows."""
    feats, cov = window_matrix(sensors, n, cfg.steps, cfg.rate_hz)
    std = norm.apply(feats, cov)
    imu_cov = np.maximum(cov[:, 0], cov[:, 1])
    return std[:, :, :2], std[:, :, 2:], np.stack([imu_cov, cov[:, 2]], axis=1)


# ---------------------------------------------------------------- network


class MTLocNet(nn.Module):
    def __init__(self, n_aps: int, n_floors: int, cfg: MTLocConfig) -> None:
        super().__init__()
        self.wifi = nn.Sequential(
            nn.Linear(n_aps, cfg.wifi_hidden), nn.ReLU(), nn.Linear(cfg.wifi_hidden, cfg.wifi_hidden), nn.ReLU()
        )
        self.imu = nn.LSTM(2, cfg.imu_hidden, num_layers=1, batch_first=True)
        self.mag = nn.LSTM(1, cfg.mag_hidden, num_layers=1, batch_first=True)
        width = cfg.wifi_hidden + cfg.imu_hidden + cfg.mag_hidden + 3
        self.fuse = nn.Sequential(nn.Linear(width, cfg.fusion_hidden), nn.ReLU())
        self.xy = nn.Linear(cfg.fusion_hidden, 2)
        self.floor = nn.Linear(cfg.fusion_hidden, max(n_floors, 1))
        self.log_sigma = nn.Linear(cfg.fusion_hidden, 1)

    def forward(
        self, wifi: torch.Tensor, imu: torch.Tensor, mag: torch.Tensor, present: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        on = (present > 0).to(wifi.dtype)
        w = self.wifi(wifi) * on[:, :1]
        _, (hi, _) = self.imu(imu)
        _, (hm, _) = self.mag(mag)
        h = self.fuse(torch.cat([w, hi[-1] * on[:, 1:2], hm[-1] * on[:, 2:3], present], dim=1))
        return self.xy(h), self.floor(h), self.log_sigma(h).squeeze(1)


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ---------------------------------------------------------------- IMU pretraining (the transferable part)


@dataclass
class ImuArtifact:
    """A pretrained IMU-LSTM: `arrays` are its `imu.*` weights; `config` says how it was made (JSON)."""

    arrays: dict[str, np.ndarray]
    config: dict[str, Any]

    def dumps(self) -> tuple[bytes, dict[str, Any]]:
        """(safetensors bytes, JSON config) in `ml.serialize`'s format."""
        return dump_arrays(self.arrays, self.config, kind=ARTIFACT_KIND)

    @classmethod
    def loads(cls, blob: bytes, config: Mapping[str, Any]) -> ImuArtifact:
        """ml.serialize.ModelFormatError for another artifact or an unknown format version."""
        return cls(load_arrays(blob, config, kind=ARTIFACT_KIND), dict(config))


class _ImuRegressor(nn.Module):
    def __init__(self, hidden: int, n_out: int) -> None:
        super().__init__()
        self.imu = nn.LSTM(2, hidden, num_layers=1, batch_first=True)
        self.head = nn.Linear(hidden, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, (h, _) = self.imu(x)
        out: torch.Tensor = self.head(h[-1])
        return out


def pretrain_imu(
    sites: Mapping[str, FingerprintSet],
    params: Mapping[str, Any] | None = None,
    *,
    seed: int = 0,
    progress: ProgressFn = no_progress,
    device: str = "cpu",
) -> ImuArtifact:
    """Pretrain the IMU-LSTM on the source sites' sensor windows (all sites jointly).

    Target "position": each site's (x, y), centred and scaled per site (one head, coordinates
    of different buildings overlap, as in the paper). "speed": metres walked during the window."""
    cfg = MTLocConfig.parse(params)
    feats_l, cov_l, y_l = [], [], []
    for fs in sites.values():
        if fs.sensors is None:
            continue
        feats, cov = window_matrix(fs.sensors, len(fs), cfg.steps, cfg.rate_hz)
        ok = (cov[:, 0] > 0) | (cov[:, 1] > 0)
        if cfg.pretrain_target == "speed":
            y = window_speed(fs.path, fs.timestamp, fs.xy, 1000.0 * (cfg.steps - 1) / cfg.rate_hz)[:, None]
            ok &= ~np.isnan(y[:, 0])
        else:
            y = (fs.xy - fs.xy.mean(axis=0)) / max(float(fs.xy.std()), 1e-6)
        feats_l.append(feats[ok])
        cov_l.append(cov[ok])
        y_l.append(y[ok])
    n = sum(len(f) for f in feats_l)
    if n < 2:
        raise InsufficientData(
            "IMU pretraining needs sensor windows (with accelerometer or gyroscope) on the source sites"
        )
    feats, cov, y = np.concatenate(feats_l), np.concatenate(cov_l), np.concatenate(y_l).astype(np.float32)
    norm = Norm.fit(feats, cov)
    x = norm.apply(feats, cov)[:, :, :2]
    y_mean, y_std = y.mean(axis=0), np.maximum(y.std(axis=0), 1e-6)
    y = (y - y_mean) / y_std
    dev = torch.device(device)
    seed_torch(seed)
    net = _ImuRegressor(cfg.imu_hidden, y.shape[1]).to(dev)
    opt = torch.optim.RMSprop(net.parameters(), lr=cfg.pretrain_lr)
    xt, yt = torch.from_numpy(x).to(dev), torch.from_numpy(y).to(dev)
    gen = torch.Generator().manual_seed(seed)
    losses: list[float] = []  # per-window mean squared error of each epoch
    squares = 0.0

    def step(b: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
        nonlocal squares
        loss = nn.functional.mse_loss(net(xt[b]), yt[b])
        squares += loss.item() * len(b)
        return loss, {}

    def end_epoch(epoch: int, logs: dict[str, float]) -> None:
        nonlocal squares
        losses.append(squares / n)
        squares = 0.0

    callbacks: list[Callback] = [
        EveryEpoch(end_epoch),
        ProgressCallback(
            progress,
            cfg.pretrain_epochs,
            describe=lambda epoch, logs: f"IMU-LSTM pretraining epoch {epoch}: mse {losses[-1]:.3f}",
        ),
    ]
    batches = partial(shuffled_indices, n, cfg.pretrain_batch_size, gen, dev)
    run_epochs([net], step, batches, opt, cfg.pretrain_epochs, callbacks, clip_grad_norm=5.0)
    arrays = {f"imu.{k}": v.detach().cpu().numpy() for k, v in net.imu.state_dict().items()}
    config = {
        "artifact": ARTIFACT_KIND,
        "format_version": FORMAT_VERSION,
        "sites": sorted(sites),
        "n_windows": int(n),
        **pretrain_settings(cfg, seed),
        "optimizer": "RMSprop",
        "norm": norm.to_json(),
        "loss": [round(v, 5) for v in losses],
    }
    return ImuArtifact(arrays, config)


def pretrain_settings(cfg: MTLocConfig, seed: int) -> dict[str, Any]:
    """What makes two IMU pretrainings on the same windows the same (kept in the artifact's config, so a stored
    artifact can be reused only when these match)."""
    return {
        "target": cfg.pretrain_target,
        "imu_hidden": cfg.imu_hidden,
        "steps": cfg.steps,
        "rate_hz": cfg.rate_hz,
        "epochs": cfg.pretrain_epochs,
        "lr": cfg.pretrain_lr,
        "batch_size": cfg.pretrain_batch_size,
        "seed": seed,
    }


# ---------------------------------------------------------------- the model


class MTLoc(LocModel):
    name = "mtloc"
    trains_on: ClassVar[str] = "windows"

    def __init__(
        self,
        aps: list[str],
        floors: list[tuple[str | None, str]],
        cfg: MTLocConfig,
        norm: Norm,
        center: np.ndarray,
        scale: float,
        net: MTLocNet,
        calibration: float = 1.0,
        info: dict[str, Any] | None = None,
        device: str = "cpu",
        knn: LocModel | None = None,
        alpha: float = 0.0,
        net_aps: list[str] | None = None,
    ) -> None:
        self.aps = aps
        self.net_aps = list(aps) if net_aps is None else net_aps
        index = {b: i for i, b in enumerate(aps)}
        self._net_cols = np.array([index[b] for b in self.net_aps], dtype=np.int64)
        self.knn = knn
        self.alpha = alpha
        self.floors = floors
        self.cfg = cfg
        self.norm = norm
        self.center = center
        self.scale = scale
        self.net = net
        self.calibration = calibration
        self.info = info or {}
        self.device = torch.device(device)

    @classmethod
    def check_params(cls, params: dict[str, Any]) -> None:
        MTLocConfig.parse(params)

    @classmethod
    def holdout_settings(cls, params: dict[str, Any]) -> tuple[float, str]:
        return MTLocConfig.parse(params).val_fraction, "path"

    # ------------------------------------------------------------ training

    @classmethod
    def fit(
        cls,
        train: FingerprintSet,
        params: dict[str, Any],
        *,
        seed: int = 0,
        progress: ProgressFn = no_progress,
        device: str = "cpu",
        imu_source: ImuArtifact | None = None,
        strategy: str = "scratch",
        holdout: np.ndarray | None = None,
    ) -> MTLoc:
        """Train on the windows outside the holdout (the caller's, else `holdout_split` of whole paths with
        `val_fraction` when there are at least 5 paths), which picks the epoch and calibrates error_m. MTLoc
        is served as scored: no refit."""
        cfg = MTLocConfig.parse(params)
        if strategy not in STRATEGIES:
            raise InvalidParams(f"mtloc strategy must be one of {STRATEGIES}, not {strategy!r}")
        if (strategy == "scratch") != (imu_source is None):
            raise InvalidParams("strategies 'frozen' and 'finetune' need a pretrained IMU-LSTM; 'scratch' takes none")
        if len(train) < 2:
            raise InsufficientData("mtloc needs at least 2 training windows")
        counts = (~np.isnan(train.rss)).sum(axis=0)
        aps = [b for b, c in zip(train.aps, counts, strict=True) if c > 0]  # the kNN reads them all
        keep = np.argsort(-counts, kind="stable")[: min(cfg.n_aps, len(train.aps))]
        keep = np.sort(keep[counts[keep] > 0])
        net_aps = [train.aps[i] for i in keep]  # the WiFi-DNN's input: the most-heard n_aps
        floors = sorted({(b, str(f)) for b, f in zip(train.building, train.floor, strict=True)}, key=floor_key_order)
        center = train.xy.mean(axis=0)
        scale = max(float(train.xy.std()), 1.0)
        feats, cov = window_matrix(train.sensors, len(train), cfg.steps, cfg.rate_hz)
        if imu_source is not None:
            _check_artifact(imu_source, cfg)
            src = Norm.from_json(imu_source.config["norm"])
            own = Norm.fit(feats, cov)  # the IMU statistics the source LSTM was trained on; the site's own for |mag|
            norm = Norm(np.r_[src.mean[:2], own.mean[2]], np.r_[src.std[:2], own.std[2]])
        else:
            norm = Norm.fit(feats, cov)
        dev = torch.device(device)
        seed_torch(seed)
        net = MTLocNet(len(net_aps), len(floors), cfg).to(dev)
        if imu_source is not None:
            net.imu.load_state_dict({k[4:]: torch.from_numpy(v) for k, v in imu_source.arrays.items()})
            if strategy == "frozen":
                for p in net.imu.parameters():
                    p.requires_grad_(False)
        info = {"strategy": strategy, "n_train_windows": len(train)}
        if imu_source is not None:
            info["imu_source"] = {k: imu_source.config.get(k) for k in ("sites", "target", "n_windows", "epochs")}
        model = cls(aps, floors, cfg, norm, center, scale, net, info=info, device=device, net_aps=net_aps)
        model._train(train, seed, progress, holdout)
        return model

    def _inputs(self, rss: np.ndarray, sensors: Any) -> Inputs:
        """`rss` over `self.aps` -> the network's inputs (WiFi over `net_aps`)."""
        net_rss = rss[:, self._net_cols]
        wifi = powed(net_rss, self.cfg.min_rss)
        imu, mag, cov = sensor_inputs(sensors, len(rss), self.cfg, self.norm)
        heard = (~np.isnan(net_rss)).any(axis=1).astype(np.float32)
        return Inputs(wifi, imu, mag, np.concatenate([heard[:, None], cov], axis=1).astype(np.float32))

    def _train(self, train: FingerprintSet, seed: int, progress: ProgressFn, holdout: np.ndarray | None) -> None:
        cfg = self.cfg
        fs = train.with_aps(self.aps)
        fit_idx, val_idx = np.arange(len(fs)), np.array([], dtype=np.int64)
        n_paths = len({p for p in fs.path if p is not None})
        if holdout is not None:
            val_idx = np.unique(np.asarray(holdout, dtype=np.int64))
            fit_idx = np.setdiff1d(fit_idx, val_idx)
        elif cfg.val_fraction > 0 and n_paths >= 5:
            fit_idx, val_idx, _ = holdout_split(fs, cfg.val_fraction, seed, "path")
        data = self._inputs(fs.rss, fs.sensors)
        xy = ((fs.xy - self.center) / self.scale).astype(np.float32)
        floor_index = {k: i for i, k in enumerate(self.floors)}
        floor = np.array([floor_index[(b, str(f))] for b, f in zip(fs.building, fs.floor, strict=True)])
        dev = self.device
        t = {
            "wifi": torch.from_numpy(data.wifi[fit_idx]).to(dev),
            "imu": torch.from_numpy(data.imu[fit_idx]).to(dev),
            "mag": torch.from_numpy(data.mag[fit_idx]).to(dev),
            "present": torch.from_numpy(data.present[fit_idx]).to(dev),
            "xy": torch.from_numpy(xy[fit_idx]).to(dev),
            "floor": torch.from_numpy(floor[fit_idx]).to(dev),
        }
        params = [p for p in self.net.parameters() if p.requires_grad]
        opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        gen = torch.Generator().manual_seed(seed)
        n = len(fit_idx)

        def step(b: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
            imu, mag, present = _augment(t["imu"][b], t["mag"][b], t["present"][b], cfg, gen)
            wifi = t["wifi"][b]
            if cfg.ap_dropout > 0:
                wifi = wifi * (torch.rand(wifi.shape, generator=gen).to(dev) >= cfg.ap_dropout)
            pred, floor_logits, log_sigma = self.net(wifi, imu, mag, present)
            return _loss(pred, floor_logits, log_sigma, t["xy"][b], t["floor"][b], cfg, len(self.floors)), {}

        best = None  # validation paths: keep the best epoch's weights, stop after `patience` epochs without better
        if len(val_idx):
            best = EarlyStopping(
                self.net,
                lambda: float(self._errors(data, val_idx, fs.xy).mean()),
                patience=cfg.patience or None,
                baseline=math.inf,  # an epoch must have a finite error to replace the initial weights
            )

        def describe(epoch: int, logs: dict[str, float]) -> str:
            if best is None:
                return f"epoch {epoch}"
            if best.stopped:
                return f"epoch {epoch}: stopping, best epoch {best.best_epoch}"
            return f"epoch {epoch}: validation mean error {best.scores[-1]:.2f} m"

        callbacks: list[Callback] = [] if best is None else [best]
        callbacks.append(ProgressCallback(progress, cfg.epochs, describe=describe))
        batches = partial(shuffled_indices, n, cfg.batch_size, gen, dev)
        run_epochs([self.net], step, batches, opt, cfg.epochs, callbacks, clip_grad_norm=5.0)
        if best is not None:
            best.restore()
        self.info.update(
            {
                "best_epoch": best.best_epoch if best is not None else cfg.epochs,
                "n_val_windows": len(val_idx),
                "val_history_m": [round(v, 3) for v in best.scores] if best is not None else [],
                "n_params": n_params(self.net),
            }
        )
        if cfg.knn_blend:
            self._fit_blend(fs, fit_idx, val_idx, data, seed)
        self.calibration = self._calibrate(fs, data, val_idx if len(val_idx) else fit_idx, seed)

    def _fit_blend(self, fs: FingerprintSet, fit_idx: np.ndarray, val_idx: np.ndarray, data: Inputs, seed: int) -> None:
        """Choose alpha on the validation paths with a kNN fitted on the fit paths; serve a kNN fitted on all."""
        from ml.models.wknn import WKNN

        wifi_rows = np.flatnonzero(~np.isnan(fs.rss).all(axis=1))
        if len(distinct_scans(fs.subset(wifi_rows))) < 2:
            return
        alpha = 0.5  # too few paths to validate: an even blend
        if len(val_idx):
            fit_scans = distinct_scans(fs.subset(np.intersect1d(fit_idx, wifi_rows)))
            val = np.intersect1d(val_idx, wifi_rows)
            if len(fit_scans) >= 2 and len(val):
                knn = WKNN.fit(fit_scans, {}, seed=seed)
                knn_xy = knn.predict(QueryBatch(rss=reindex_columns(fs.rss[val], self.aps, knn.aps))).xy
                net_xy, _, _ = self._forward(_rows_of(data, val))
                grid = np.linspace(0.0, 1.0, 11)
                errs = [np.hypot(*(a * knn_xy + (1 - a) * net_xy - fs.xy[val]).T).mean() for a in grid]
                alpha = float(grid[int(np.argmin(errs))])
                self.info["blend_val_mean_m"] = {
                    f"{a:.1f}": round(float(e), 3) for a, e in zip(grid, errs, strict=True)
                }
        self.alpha = alpha
        if alpha > 0:
            self.knn = WKNN.fit(distinct_scans(fs.subset(wifi_rows)), {}, seed=seed)
        self.info["knn_alpha"] = alpha

    def _errors(self, data: Inputs, idx: np.ndarray, xy_true: np.ndarray) -> np.ndarray:
        xy, _, _ = self._forward(_rows_of(data, idx))
        return np.hypot(*(xy - xy_true[idx]).T)

    def _calibrate(self, fs: FingerprintSet, data: Inputs, idx: np.ndarray, seed: int) -> float:
        """One factor so that median error_m = median real error on `idx` over the missing-modality patterns
        (all present, each modality dropped, sensors only, WiFi only)."""
        rng = np.random.default_rng(seed)
        est, real = [], []
        for drop in ((), (0,), (1,), (2,), (1, 2), (0, 2), (0, 1)):
            kept = np.delete(data.present[idx], list(drop), axis=1)
            sub = idx[kept.max(axis=1) > 0]  # windows that still have a modality once `drop` is gone
            if len(sub) == 0:
                continue
            sub = rng.choice(sub, size=min(len(sub), 2000), replace=False)
            inputs = _rows_of(data, sub)
            inputs.present[:, list(drop)] = 0.0
            rss = fs.rss[sub].copy()
            if 0 in drop:
                rss[:] = np.nan
            xy, _, sigma = self._answer(inputs, rss)
            est.append(sigma * _RAYLEIGH_MEAN)
            real.append(np.hypot(*(xy - fs.xy[sub]).T))
        e, r = np.concatenate(est), np.concatenate(real)
        return float(np.median(r) / max(float(np.median(e)), 1e-6))

    # ------------------------------------------------------------ inference

    @torch.no_grad()
    def _forward(self, data: Inputs) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(xy metres, floor probabilities, sigma metres) for prepared inputs."""
        self.net.eval()
        xs, fl, sg = [], [], []
        for i in range(0, len(data.wifi), 4096):
            sl = slice(i, i + 4096)
            args = [torch.from_numpy(a[sl]).to(self.device) for a in (data.wifi, data.imu, data.mag, data.present)]
            pred, floor_logits, log_sigma = self.net(*args)
            xs.append(pred.cpu().numpy())
            fl.append(torch.softmax(floor_logits, dim=1).cpu().numpy())
            sg.append(torch.exp(log_sigma.clamp(-8, 8)).cpu().numpy())
        if not xs:
            return np.zeros((0, 2)), np.zeros((0, len(self.floors))), np.zeros(0)
        xy = np.concatenate(xs).astype(np.float64) * self.scale + self.center
        return xy, np.concatenate(fl), np.concatenate(sg).astype(np.float64) * self.scale

    def _answer(self, data: Inputs, rss: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The network's answer, blended with the kNN's where the query has WiFi."""
        xy, p_floor, sigma = self._forward(data)
        if self.knn is not None and self.alpha > 0 and len(rss):
            has_wifi = ~np.isnan(rss).all(axis=1)
            if has_wifi.any():
                knn_rss = reindex_columns(rss, self.aps, self.knn.aps)[has_wifi]
                knn_xy = self.knn.predict(QueryBatch(rss=knn_rss)).xy
                xy[has_wifi] = self.alpha * knn_xy + (1 - self.alpha) * xy[has_wifi]
        return xy, p_floor, sigma

    def predict(self, batch: QueryBatch) -> Prediction:
        data = self._inputs(batch.rss, batch.sensors)
        xy, p_floor, sigma = self._answer(data, batch.rss)
        best = p_floor.argmax(axis=1) if len(p_floor) else np.zeros(0, dtype=np.int64)
        floor = np.array([self.floors[i][1] for i in best], dtype=object)
        building = np.array([self.floors[i][0] for i in best], dtype=object)
        error = sigma * _RAYLEIGH_MEAN * self.calibration
        return Prediction(xy=xy, floor=floor, building=building, error_m=error)

    # ------------------------------------------------------------ state

    def arrays(self) -> dict[str, np.ndarray]:
        out = {k: v.detach().cpu().numpy() for k, v in self.net.state_dict().items()}
        if self.knn is not None:
            out.update({f"knn.{k}": v for k, v in self.knn.arrays().items()})
        return out

    def settings(self) -> dict[str, Any]:
        """This model's settings (the scratch recipe: an IMU-transfer model is retrained from scratch)."""
        return asdict(self.cfg)

    def config(self) -> dict[str, Any]:
        return {
            "aps": list(self.aps),
            "net_aps": list(self.net_aps),
            "floors": [[b, f] for b, f in self.floors],
            "params": asdict(self.cfg),
            "norm": self.norm.to_json(),
            "center": [float(v) for v in self.center],
            "scale": float(self.scale),
            "calibration": float(self.calibration),
            "info": self.info,
            "knn_alpha": float(self.alpha),
            "knn": None if self.knn is None else self.knn.config(),
        }

    @classmethod
    def from_state(cls, arrays: dict[str, np.ndarray], config: dict[str, Any], device: str = "cpu") -> MTLoc:
        cfg = MTLocConfig.parse(config["params"])
        floors = [(b, str(f)) for b, f in config["floors"]]
        net_aps = list(config.get("net_aps") or config["aps"])
        net = MTLocNet(len(net_aps), len(floors), cfg)
        net.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in arrays.items() if not k.startswith("knn.")})
        knn = None
        if config.get("knn") is not None:
            from ml.models.wknn import WKNN

            knn_arrays = {k[4:]: v for k, v in arrays.items() if k.startswith("knn.")}
            knn = WKNN.from_state(knn_arrays, config["knn"])
        net.to(torch.device(device))
        return cls(
            list(config["aps"]),
            floors,
            cfg,
            Norm.from_json(config["norm"]),
            np.asarray(config["center"], dtype=np.float64),
            float(config["scale"]),
            net,
            calibration=float(config.get("calibration", 1.0)),
            info=dict(config.get("info") or {}),
            device=device,
            knn=knn,
            alpha=float(config.get("knn_alpha", 0.0)),
            net_aps=net_aps,
        )


# ---------------------------------------------------------------- helpers


def distinct_scans(fs: FingerprintSet) -> FingerprintSet:
    """One row per distinct WiFi scan of each path (windows repeat their latest scan), labelled with the
    earliest window that carries it: the position closest to when the scan was taken."""
    order = np.lexsort((fs.timestamp, fs.path.astype(str)))
    seen: set[tuple[object, bytes]] = set()
    keep = []
    for i in order:
        row = fs.rss[i]
        if np.isnan(row).all():
            continue
        key = (fs.path[i], np.nan_to_num(row, nan=1.0).tobytes())
        if key not in seen:
            seen.add(key)
            keep.append(i)
    return fs.subset(np.sort(np.asarray(keep, dtype=np.int64)))


def _rows_of(data: Inputs, idx: np.ndarray) -> Inputs:
    return Inputs(data.wifi[idx], data.imu[idx], data.mag[idx], data.present[idx].copy())


def _check_artifact(art: ImuArtifact, cfg: MTLocConfig) -> None:
    c = art.config
    if int(c.get("imu_hidden", -1)) != cfg.imu_hidden or int(c.get("steps", -1)) != cfg.steps:
        raise InvalidParams(
            f"the IMU artifact has imu_hidden={c.get('imu_hidden')}, steps={c.get('steps')}; "
            f"this model has imu_hidden={cfg.imu_hidden}, steps={cfg.steps}"
        )
    if abs(float(c.get("rate_hz", -1)) - cfg.rate_hz) > 1e-9:
        raise InvalidParams(f"the IMU artifact was trained at {c.get('rate_hz')} Hz, this model uses {cfg.rate_hz} Hz")


def _augment(
    imu: torch.Tensor, mag: torch.Tensor, present: torch.Tensor, cfg: MTLocConfig, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Modality dropout (never all of a window's modalities) and partial windows (the first steps held)."""
    b, steps = imu.shape[0], imu.shape[1]
    present = present.clone()
    if cfg.modality_dropout > 0:
        drop = torch.rand(b, 3, generator=gen).to(present.device) < cfg.modality_dropout
        survivors = (present > 0) & ~drop
        keep_all = survivors.sum(dim=1) == 0  # would lose everything: keep the window as it is
        drop[keep_all] = False
        present[drop] = 0.0
    if cfg.partial_rate > 0:
        cut = torch.rand(b, generator=gen).to(present.device) < cfg.partial_rate
        if bool(cut.any()):
            first = torch.randint(1, steps - 1, (b,), generator=gen).to(present.device)  # first kept step
            first = torch.where(cut, first, torch.zeros_like(first))
            steps_idx = torch.arange(steps, device=present.device)[None, :]
            src = torch.maximum(steps_idx, first[:, None])  # earlier steps repeat the first kept one
            imu = torch.gather(imu, 1, src[:, :, None].expand(-1, -1, imu.shape[2]))
            mag = torch.gather(mag, 1, src[:, :, None].expand(-1, -1, mag.shape[2]))
            frac = 1.0 - first.to(present.dtype) / (steps - 1)
            present[:, 1:] = torch.minimum(present[:, 1:], frac[:, None].expand(-1, 2))
    return imu * (present[:, 1:2, None] > 0), mag * (present[:, 2:3, None] > 0), present


def _loss(
    pred: torch.Tensor,
    floor_logits: torch.Tensor,
    log_sigma: torch.Tensor,
    xy: torch.Tensor,
    floor: torch.Tensor,
    cfg: MTLocConfig,
    n_floors: int,
) -> torch.Tensor:
    sq = ((pred - xy) ** 2).sum(dim=1)
    loss = sq.mean()
    if n_floors > 1:
        loss = loss + cfg.floor_weight * nn.functional.cross_entropy(floor_logits, floor)
    ls = log_sigma.clamp(-8, 8)
    nll = sq.detach() / (2 * torch.exp(2 * ls)) + 2 * ls  # 2-D isotropic Gaussian, sigma learns the error scale
    return loss + cfg.sigma_weight * nll.mean()
