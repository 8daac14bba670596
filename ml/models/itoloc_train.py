"""iToLoc training: batch losses, adversarial training and per-module fine-tuning as step functions.

Plain functions over torch tensors, run by the one loop (`ml.train.run_epochs`); all randomness
(shuffling, augmentation) comes from one CPU `torch.Generator`, so a seed gives the same run on CPU
and the same batches on CUDA.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import torch
from torch import nn
from torch.nn import functional as F

from ml.models.base import ProgressFn, no_progress
from ml.models.dropout import stochastic_passes
from ml.models.itoloc_net import ItolocConfig, ItolocNet, masked_log_softmax, rss_to_f, set_mc_dropout
from ml.train import Callback, EarlyStopping, EveryEpoch, LRSchedule, ProgressCallback, run_epochs, shuffled_indices


@dataclass
class Cells:
    """Reference cells as tensors on the training device."""

    xy: torch.Tensor  # (C, 2) float32 centres
    fkey: torch.Tensor  # (C,) int64 building+floor index
    zone_allowed: torch.Tensor  # (Z, C) bool: cells a scan of zone z may be located in


@dataclass
class Batch:
    """Rows to train on (all tensors on the training device, rows aligned)."""

    rss: torch.Tensor  # (n, N) float32 RSS over the row's zone AP list, NaN = not heard
    zone: torch.Tensor  # (n,) int64
    target: torch.Tensor  # (n,) int64 cell, or (n, C) float32 soft labels
    xy: torch.Tensor  # (n, 2) float32 true position
    fkey: torch.Tensor  # (n,) int64 true building+floor index
    domain: torch.Tensor  # (n,) int64

    def __len__(self) -> int:
        return int(self.rss.shape[0])

    def rows(self, idx: torch.Tensor) -> Batch:
        return Batch(*(t[idx] for t in (self.rss, self.zone, self.target, self.xy, self.fkey, self.domain)))


def augment(rss: torch.Tensor, cfg: ItolocConfig, gen: torch.Generator) -> torch.Tensor:
    """Training-time RSS noise: a per-scan offset (device gain) and random AP drop-out."""
    if cfg.aug_offset_db <= 0 and cfg.aug_drop <= 0:
        return rss
    n, m = rss.shape
    offset = (torch.rand(n, 1, generator=gen) * 2 - 1) * cfg.aug_offset_db
    drop = torch.rand(n, m, generator=gen) < cfg.aug_drop
    out = rss + offset.to(rss.device)
    return out.masked_fill(drop.to(rss.device), float("nan"))


def cell_distances(b: Batch, cells: Cells, cfg: ItolocConfig) -> torch.Tensor:
    """(B, C) distance from each row's true position to each cell, plus `floor_gap_m` off its floor."""
    dist = torch.cdist(b.xy, cells.xy, compute_mode="donot_use_mm_for_euclid_dist")
    return dist + cfg.floor_gap_m * (b.fkey[:, None] != cells.fkey[None, :]).to(dist.dtype)


def soft_labels(dist: torch.Tensor, b: Batch, cells: Cells, sigma: float) -> torch.Tensor:
    """Gaussian labels over the cells of the row's true floor (the true cell always gets the most)."""
    same = b.fkey[:, None] == cells.fkey[None, :]
    w = torch.exp(-0.5 * (dist / sigma) ** 2).masked_fill(~same, 0.0)
    w = w.scatter(1, b.target[:, None], 1.0)
    return w / w.sum(1, keepdim=True)


def cross_entropy(logp: torch.Tensor, target: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy against cell indices (n,) or soft labels (n, C); disallowed cells skipped."""
    if target.dim() == 1:
        return F.nll_loss(logp, target)
    return -(target * logp.masked_fill(~allowed, 0.0)).sum(1).mean()


def floor_loss(logp: torch.Tensor, on_floor: torch.Tensor) -> torch.Tensor:
    """-log(probability mass on the true building+floor), (B, C) bool `on_floor`."""
    return -torch.logsumexp(logp.masked_fill(~on_floor, float("-inf")), 1).mean()


def location_loss(
    logits: torch.Tensor, target: torch.Tensor, allowed: torch.Tensor, w: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(cross-entropy La, spatial constraint Ls = sum_c w_yc p_c, log-probabilities) of one module."""
    logp = masked_log_softmax(logits, allowed)
    la = cross_entropy(logp, target, allowed)
    return la, (w * logp.exp()).sum(1).mean() if w is not None else logits.new_zeros(()), logp


def batch_targets(b: Batch, cells: Cells, cfg: ItolocConfig) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Labels (cell indices, soft labels with `label_sigma_m`) and the Ls weights
    w_yc = min((distance + floor gap) / scale, cap) (None without the spatial constraint)."""
    soft = cfg.label_sigma_m > 0 and b.target.dim() == 1
    if not (cfg.spatial or soft):
        return b.target, None
    dist = cell_distances(b, cells, cfg)
    target = soft_labels(dist, b, cells, cfg.label_sigma_m) if soft else b.target
    return target, (dist / cfg.spatial_scale_m).clamp(max=cfg.spatial_cap) if cfg.spatial else None


def batch_loss(
    net: ItolocNet, b: Batch, cells: Cells, cfg: ItolocConfig, lam: float, modules: tuple[int, ...] = (0, 1, 2)
) -> tuple[torch.Tensor, dict[str, float]]:
    """L = La + gamma * Ls - lambda * Ld (the minus by gradient reversal inside `net`)."""
    z = net.features(rss_to_f(b.rss, cfg))
    target, w = batch_targets(b, cells, cfg)
    allowed = cells.zone_allowed[b.zone]
    la = ls = lf = z.new_zeros(())
    on_floor = b.fkey[:, None] == cells.fkey[None, :]
    for k in modules:
        a, s, logp = location_loss(net.modules_loc[k](z), target, allowed, w)
        la, ls = la + a, ls + s
        if cfg.floor_weight > 0:
            lf = lf + floor_loss(logp, on_floor)
    loss = la + cfg.gamma * ls + cfg.floor_weight * lf
    ld = z.new_zeros(())
    if cfg.adversarial:
        ld = F.cross_entropy(net.domain_logits(z, lam), b.domain)
        loss = loss + ld
    return loss, {"la": la.item(), "ls": ls.item(), "ld": ld.item()}


def lr_at(cfg: ItolocConfig, lr: float, epoch: int, epochs: int) -> float:
    """Step schedule: divided by 10 at each fraction of training in `lr_drops`."""
    return lr * 0.1 ** sum(epoch >= d * epochs for d in cfg.lr_drops)


def dann_lambda(cfg: ItolocConfig, p: float) -> float:
    """lambda ramped from 0 to cfg.lam over training (DANN: 2 / (1 + exp(-10 p)) - 1)."""
    return cfg.lam * (2.0 / (1.0 + math.exp(-10.0 * p)) - 1.0)


def _epoch_batches(data: Batch, cfg: ItolocConfig, gen: torch.Generator) -> Callable[[], Iterator[Batch]]:
    """One epoch of shuffled, augmented batches (BatchNorm needs 2+ rows: a last batch of one row is dropped).
    The permutation is drawn from `gen` first, then each batch's augmentation."""

    def epoch() -> Iterator[Batch]:
        for idx in shuffled_indices(len(data), cfg.batch_size, gen, data.rss.device, min_rows=2):
            b = data.rows(idx)
            b.rss = augment(b.rss, cfg, gen)
            yield b

    return epoch


def train_net(
    net: ItolocNet,
    data: Batch,
    cells: Cells,
    cfg: ItolocConfig,
    *,
    seed: int,
    epochs: int,
    evaluate: Callable[[ItolocNet], float] | None = None,
    progress: ProgressFn = no_progress,
) -> list[dict[str, float]]:
    """Adversarial training of ME, M1-M3 and MD; with `evaluate` (held-out mean error),
    the weights of the best epoch are restored at the end. Returns per-epoch history."""
    opt = torch.optim.SGD(net.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(seed)
    steps = max(1, epochs * math.ceil(len(data) / cfg.batch_size))
    done = 0  # optimiser steps so far: lambda follows the DANN ramp over the whole run

    def step(b: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        nonlocal done
        loss, parts = batch_loss(net, b, cells, cfg, dann_lambda(cfg, done / steps))
        done += 1
        return loss, {"loss": loss.item(), **parts}  # Python floats: the epoch means are summed in double

    history: list[dict[str, float]] = []
    callbacks: list[Callback] = []
    best = None
    if evaluate is not None:
        best = EarlyStopping(net, lambda: evaluate(net), name="holdout_mean_m")
        callbacks.append(best)
    callbacks += [
        EveryEpoch(lambda epoch, logs: history.append({"epoch": float(epoch), **_NO_LOSS, **logs})),
        ProgressCallback(progress, epochs, describe=lambda epoch, logs: _describe(history[-1])),
        LRSchedule(opt, lambda epoch: lr_at(cfg, cfg.lr, epoch - 1, epochs)),
    ]
    run_epochs([net], step, _epoch_batches(data, cfg, gen), opt, epochs, callbacks)
    if best is not None and cfg.early_stop:
        best.restore()
    return history


_NO_LOSS = {"loss": 0.0, "la": 0.0, "ls": 0.0, "ld": 0.0}  # the history of an epoch without a batch


def _describe(row: dict[str, float]) -> str:
    text = f"epoch {int(row['epoch'])} loss {row['loss']:.3f}"
    text += f" (La {row['la']:.3f} Ls {row['ls']:.3f} Ld {row['ld']:.3f})"
    if "holdout_mean_m" in row:
        text += f" holdout {row['holdout_mean_m']:.2f} m"
    return text


def finetune_module(
    net: ItolocNet,
    k: int,
    data: Batch,
    cells: Cells,
    cfg: ItolocConfig,
    *,
    epochs: int,
    lr: float,
    seed: int,
    freeze_extractor: bool = True,
) -> None:
    """Fine-tune location module k on its own labelled set (hard or soft/smeared labels).

    ME is frozen (and its batch-norm statistics kept) unless `freeze_extractor` is False;
    the other modules and MD are never touched."""
    trained: list[nn.Module] = [net.modules_loc[k]] if freeze_extractor else [net.modules_loc[k], net.me]
    params = [p for m in trained for p in m.parameters()]
    opt = torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(seed)
    no_adv = replace(cfg, adversarial=False)

    def step(b: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        loss, _ = batch_loss(net, b, cells, no_adv, 0.0, modules=(k,))
        return loss, {}

    set_mc_dropout(net, False)  # everything else in eval mode; the loop puts `trained` in train mode
    schedule = LRSchedule(opt, lambda epoch: lr_at(cfg, lr, epoch - 1, epochs))
    run_epochs(trained, step, _epoch_batches(data, cfg, gen), opt, epochs, [schedule])
    net.eval()


@torch.no_grad()
def module_log_probs(
    net: ItolocNet, rss: torch.Tensor, zone: torch.Tensor, cells: Cells, cfg: ItolocConfig, *, mc_dropout: bool = False
) -> torch.Tensor:
    """(3, n, C) log-probabilities of M1, M2, M3 (cells outside the row's zone: -inf).

    `mc_dropout=True` keeps dropout active (batch norm in eval mode): one stochastic pass."""
    set_mc_dropout(net, False)  # eval everywhere (idempotent); the stochastic pass is this call's own
    out = []
    with stochastic_passes() if mc_dropout else contextlib.nullcontext():
        for i in range(0, len(rss), 512):
            z = net.features(rss_to_f(rss[i : i + 512], cfg))
            allowed = cells.zone_allowed[zone[i : i + 512]]
            out.append(torch.stack([masked_log_softmax(lg, allowed) for lg in net.location_logits(z)]))
    return torch.cat(out, 1) if out else torch.zeros(3, 0, cells.xy.shape[0], device=rss.device)
