"""iToLoc network (paper 002, section III, Fig. 8): config, fingerprint image, modules.

Pure torch, no I/O. The pieces:

- `rss_to_f` / `fingerprint_image`: the fingerprint-image transformer. RSS (dBm, NaN =
  not heard) is scaled to f = f0 + clip((rss - floor) / span, 0, 1), so f lies in
  [f0, f0 + 1] and is > 0 for every AP, heard or not (an unheard AP is encoded exactly
  like a reading at `rss_floor_dbm`: f = f0). The image is the N x N matrix
  f*_jk = (f_j - f_k) / f_k of the paper, which is therefore finite and bounded:
  -1 < f*_jk <= 1 / f0. With `log_image` it is passed through log1p, i.e.
  x_jk = log(f_j / f_k) = log f_j - log f_k (same information, antisymmetric,
  |x_jk| <= log((1 + f0) / f0), better conditioned for the first convolution).
- ME (feature extractor, one conv block = two 3x3 conv layers), three structurally
  different location-predictor modules M1 (3x3 conv blocks), M2 (5x5 conv blocks),
  M3 (residual blocks), and the domain discriminator MD behind a gradient-reversal
  layer. Every conv is followed by batch norm and LeakyReLU(0.1); dropout follows every
  max-pooling layer of the modules. With `image=False` the same blocks are built 1-D
  and read the scaled vector f directly (the paper's "1-D input" ablation).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ml.errors import InvalidParams
from ml.models.dropout import CallDropout
from ml.params import settings_from


@dataclass(frozen=True)
class ItolocConfig:
    # --- fingerprint image ---
    n_aps: int = 64  # N: APs per zone (image N x N); top-N by how often they are heard in the zone's training scans
    ap_min_heard: int = 8  # > 0: pick APs greedily so every training scan hears at least this many (see top_aps);
    # 0 = by frequency only (on an ILC mall floor that left 23% of the scans with an empty image)
    zones: str = "building"  # "building": one AP list per building (shared net, cells masked per zone) | "site"
    image: bool = True  # False: 1-D ablation (the scaled RSS vector through 1-D versions of the same blocks)
    rss_floor_dbm: float = -105.0  # readings are clipped up to this; unheard APs are encoded as this level
    rss_span_db: float = 75.0  # f = f0 + clip((rss - floor) / span, 0, 1) ** rss_power
    rss_power: float = 2.718  # "powed" RSS (Torres-Sospedra et al.): > 1 shrinks weak, unreliable readings
    f0: float = 0.1  # keeps f > 0 so f*_jk = (f_j - f_k) / f_k stays finite (max 1 / f0)
    log_image: bool = True  # feed log1p(f*_jk) = log f_j - log f_k (bounded by log((1 + f0) / f0))
    max_age_ms: float | None = None  # Android cached entries older than this count as not heard (None = keep all)
    # --- reference locations (softmax classes) ---
    cell_m: float = 3.0  # survey positions are snapped to a cell_m grid per building+floor; centre = mean position
    label_sigma_m: float = 0.0  # > 0: soft labels exp(-d^2 / 2 sigma^2) over the true floor's cells (0 = one-hot)
    top_cells: int = 8  # answer = probability-weighted mean of the top cells on the predicted floor
    # --- network (Fig. 8) ---
    width: int = 16  # channels of the first conv blocks (paper: 32; second blocks 2x); 32 did worse on a UJI holdout
    stem_pool: bool = True  # 2x2 max-pool after ME (not in the paper: 4x cheaper modules on CPU)
    pool_out: int = 8  # average-pooling output side before each FC (1 = global average pooling)
    dropout: float = 0.5  # after every max-pooling layer (paper: 0.5)
    # --- losses: L = La + gamma * Ls - lambda * Ld (+ floor_weight * Lf) ---
    adversarial: bool = True  # domain discriminator over (device, time-bucket) domains, gradient reversal
    lam: float = 0.1  # lambda, ramped up from 0 with the DANN schedule 2 / (1 + exp(-10 p)) - 1
    time_bucket_ms: int = 86_400_000  # time part of a domain: one day
    min_domain_rows: int = 20  # smaller (device, bucket) domains are pooled into one "other" domain
    spatial: bool = True  # spatial-constraint loss Ls
    gamma: float = 0.1  # weight of Ls
    spatial_scale_m: float = 10.0  # w_yc = min((distance + floor gap) / scale, cap)
    spatial_cap: float = 5.0
    floor_gap_m: float = 20.0  # distance added for a cell on another floor
    floor_weight: float = 0.0  # weight of an extra floor loss -log(probability mass on the true floor)
    # --- optimisation (paper: SGD, momentum 0.9, wd 1e-4, lr 0.1 / 10 on plateau, batch 32, 200 epochs) ---
    epochs: int = 10  # UJIIndoorLoc: best held-out epoch 4-8 (early stopping keeps it)
    batch_size: int = 128  # larger batches are faster per row on CPU
    # Small surveys (an ILC floor: ~1,500 scans) need more, smaller steps than epochs x batch_size give: the batch
    # shrinks (not below 32) until an epoch has min_batches_per_epoch batches, and epochs grow until training
    # takes min_steps steps (at most max_epochs). UJIIndoorLoc (18k rows) keeps 128 x 10 epochs.
    min_batches_per_epoch: int = 48
    min_steps: int = 1400
    max_epochs: int = 200
    lr: float = 0.05  # paper: 0.1 at batch 32 (not tried here)
    momentum: float = 0.9
    weight_decay: float = 1e-4
    lr_drops: tuple[float, ...] = (0.5, 0.75)  # fractions of training where lr is divided by 10
    aug_offset_db: float = 0.0  # per-scan uniform RSS offset in [-a, a] dB (device gain); 0 = off
    aug_drop: float = 0.0  # probability of dropping each heard AP of a training scan; 0 = off
    # --- held-out part of the training data (early stopping and error_m calibration) ---
    holdout: float = 0.1  # fraction of rows, whole groups (path, else user, else device) per floor
    early_stop: bool = True  # keep the epoch with the lowest held-out mean error
    refit: bool = False  # retrain on all rows for the chosen number of epochs (keeps the calibration)

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> ItolocConfig:
        cfg = settings_from(cls, params, "itoloc")
        cfg = replace(cfg, lr_drops=tuple(float(v) for v in cfg.lr_drops))  # JSON gives a list
        if cfg.zones not in ("building", "site"):
            raise InvalidParams("itoloc zones must be 'building' or 'site'")
        if cfg.n_aps < 4 or cfg.f0 <= 0 or cfg.rss_span_db <= 0:
            raise InvalidParams("itoloc needs n_aps >= 4, f0 > 0, rss_span_db > 0")
        return cfg


def rss_to_f(rss: torch.Tensor, cfg: ItolocConfig) -> torch.Tensor:
    """Scaled RSS f in [f0, f0 + 1]; NaN (not heard) -> f0."""
    level = torch.nan_to_num(rss, nan=cfg.rss_floor_dbm)
    return cfg.f0 + ((level - cfg.rss_floor_dbm) / cfg.rss_span_db).clamp(0.0, 1.0) ** cfg.rss_power


def fingerprint_image(f: torch.Tensor, log_image: bool) -> torch.Tensor:
    """(B, N) scaled RSS -> (B, 1, N, N) image of f*_jk = (f_j - f_k) / f_k (or its log1p)."""
    ratio = f[:, :, None] / f[:, None, :]
    img = torch.log(ratio) if log_image else ratio - 1.0
    return img[:, None]


class _Ops:
    """Conv/BN/pool constructors for 2-D (image) or 1-D (vector) inputs."""

    def __init__(self, dim: int) -> None:
        self.conv: type[nn.Conv1d] | type[nn.Conv2d] = nn.Conv2d if dim == 2 else nn.Conv1d
        self.bn: type[nn.BatchNorm1d] | type[nn.BatchNorm2d] = nn.BatchNorm2d if dim == 2 else nn.BatchNorm1d
        self.maxpool: type[nn.MaxPool1d] | type[nn.MaxPool2d] = nn.MaxPool2d if dim == 2 else nn.MaxPool1d
        self.avgpool: type[nn.AdaptiveAvgPool1d] | type[nn.AdaptiveAvgPool2d] = (
            nn.AdaptiveAvgPool2d if dim == 2 else nn.AdaptiveAvgPool1d
        )
        self.dim = dim

    def layer(self, cin: int, cout: int, k: int, act: bool = True) -> list[nn.Module]:
        mods: list[nn.Module] = [self.conv(cin, cout, k, padding=k // 2, bias=False), self.bn(cout)]
        return [*mods, nn.LeakyReLU(0.1)] if act else mods

    def block(self, cin: int, cout: int, k: int) -> nn.Sequential:
        """Conv block of Fig. 8: two (conv k x k, pad k // 2, BN, LeakyReLU) layers."""
        return nn.Sequential(*self.layer(cin, cout, k), *self.layer(cout, cout, k))

    def pooled(self, size: int) -> int:
        """Number of positions after the head's average pooling."""
        return int(size**self.dim)


class ResidualBlock(nn.Module):
    """Residual block of Fig. 8: x + (conv, BN, LReLU, conv, BN), then LReLU."""

    def __init__(self, ops: _Ops, channels: int, k: int = 3) -> None:
        super().__init__()
        self.body = nn.Sequential(*ops.layer(channels, channels, k), *ops.layer(channels, channels, k, act=False))
        self.act = nn.LeakyReLU(0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x + self.body(x))


class _GradReverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, lam: float) -> torch.Tensor:
        ctx.lam = lam
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return -ctx.lam * grad, None


def grad_reverse(x: torch.Tensor, lam: float) -> torch.Tensor:
    """Identity forward; multiplies the gradient by -lam on the way back (DANN)."""
    out: torch.Tensor = _GradReverse.apply(x, lam)
    return out


def _head(ops: _Ops, body: list[nn.Module], channels: int, pool_out: int, n_out: int) -> nn.Sequential:
    return nn.Sequential(*body, ops.avgpool(pool_out), nn.Flatten(), nn.Linear(channels * ops.pooled(pool_out), n_out))


class ItolocNet(nn.Module):
    """ME -> (M1, M2, M3) location logits over cells, and ME -> GRL -> MD domain logits."""

    def __init__(self, cfg: ItolocConfig, n_cells: int, n_domains: int) -> None:
        super().__init__()
        self.cfg = cfg
        ops = _Ops(2 if cfg.image else 1)
        w, p, drop = cfg.width, cfg.pool_out, cfg.dropout
        stem: list[nn.Module] = [ops.block(1, w, 3)]
        self.me = nn.Sequential(*stem, ops.maxpool(2)) if cfg.stem_pool else nn.Sequential(*stem)

        def pool() -> list[nn.Module]:
            return [ops.maxpool(2), CallDropout(drop)]

        m1 = [ops.block(w, w, 3), *pool(), ops.block(w, 2 * w, 3)]
        m2 = [ops.block(w, w, 5), *pool(), ops.block(w, 2 * w, 5)]
        m3 = [ResidualBlock(ops, w), *pool(), ResidualBlock(ops, w)]
        self.modules_loc = nn.ModuleList(
            [_head(ops, m1, 2 * w, p, n_cells), _head(ops, m2, 2 * w, p, n_cells), _head(ops, m3, w, p, n_cells)]
        )
        md = [ops.block(w, w, 3), *pool(), ops.block(w, 2 * w, 3)]
        self.md = _head(ops, md, 2 * w, p, max(n_domains, 1))

    def inputs(self, f: torch.Tensor) -> torch.Tensor:
        """Scaled RSS (B, N) -> network input: image (B, 1, N, N) or vector (B, 1, N)."""
        return fingerprint_image(f, self.cfg.log_image) if self.cfg.image else f[:, None]

    def features(self, f: torch.Tensor) -> torch.Tensor:
        """Z = ME(x)."""
        return self.me(self.inputs(f))

    def location_logits(self, z: torch.Tensor) -> list[torch.Tensor]:
        """Logits of M1, M2, M3 (each (B, C)), separately."""
        return [m(z) for m in self.modules_loc]

    def domain_logits(self, z: torch.Tensor, lam: float) -> torch.Tensor:
        return self.md(grad_reverse(z, lam))

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        """(3, B, C) location logits of the three modules."""
        return torch.stack(self.location_logits(self.features(f)))


def set_mc_dropout(net: nn.Module, on: bool) -> None:
    """Eval mode everywhere, except dropout layers in train mode when `on` (stochastic passes)."""
    net.eval()
    for m in net.modules():
        if isinstance(m, nn.Dropout):
            m.train(on)


def masked_log_softmax(logits: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """log-softmax over the cells allowed for each row ((B, C) bool); others get -inf."""
    return F.log_softmax(logits.masked_fill(~allowed, float("-inf")), dim=-1)
