"""The fingerprint networks' training pieces: data, losses, the hold-out monitor, SAE pretraining, inference.

They train with the one loop, `ml.train.run_epochs`: scratch training, encoder transfer (stages
with frozen parts), MSTA distillation (extra loss terms), multi-site pretraining and SAE
pretraining are all that loop with different batches, losses and parameter groups.

All randomness (shuffles, GAN noise) comes from one CPU `torch.Generator`, so a seed gives the
same batches on CPU and CUDA; weights are initialised on CPU (see `build_net`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ml.models.dropout import seeded_generator, stochastic_passes
from ml.models.fpnets import NetOut, SiteLabels, SpecialisedNet
from ml.seed import seeded
from ml.train import Callback as Callback
from ml.train import EarlyStopping, run_epochs, shuffled_indices
from ml.train import History as History
from ml.train import ProgressCallback as ProgressCallback
from ml.train import StepLoss as StepLoss

# Callback, History, ProgressCallback and seeded are re-exported: fpmodel and bench import them from here.


# ---------------------------------------------------------------- data


@dataclass
class TrainData:
    """A site's rows as tensors on the training device."""

    x: torch.Tensor  # (n, n_in) float32 powed features
    xy: torch.Tensor  # (n, 2) float32 normalised position
    floor: torch.Tensor  # (n,) int64 floor class
    building: torch.Tensor  # (n,) int64 building class

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def rows(self, idx: torch.Tensor) -> TrainData:
        return TrainData(self.x[idx], self.xy[idx], self.floor[idx], self.building[idx])

    @classmethod
    def from_arrays(
        cls, x: np.ndarray, xy: np.ndarray, floor: np.ndarray, building: np.ndarray, device: torch.device
    ) -> TrainData:
        def t(a: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
            return torch.as_tensor(np.ascontiguousarray(a), dtype=dtype).to(device)

        return cls(t(x, torch.float32), t(xy, torch.float32), t(floor, torch.int64), t(building, torch.int64))


def shuffled_batches(data: TrainData, batch_size: int, gen: torch.Generator) -> Callable[[], Iterator[TrainData]]:
    """One epoch of shuffled mini-batches (a last batch of one row is dropped: no batch statistics
    need it, but the MI estimator's shuffled pairs do)."""

    def epoch() -> Iterator[TrainData]:
        for chunk in shuffled_indices(len(data), batch_size, gen, data.x.device, min_rows=2):
            yield data.rows(chunk)

    return epoch


# ---------------------------------------------------------------- losses


@dataclass(frozen=True)
class TaskWeights:
    floor: float = 1.0  # cross-entropy weight of the floor head
    building: float = 1.0  # ... of the building head (sites with several buildings)


def distance_loss(pred: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    """Mean Euclidean distance (paper 004's J_MAE), smoothed at 0 so its gradient is finite."""
    return torch.sqrt(((pred - true) ** 2).sum(dim=1) + 1e-6).mean()


def task_loss(out: NetOut, batch: TrainData, w: TaskWeights) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    mae = distance_loss(out.xy, batch.xy)
    floor = F.cross_entropy(out.floor, batch.floor) if out.floor.shape[1] > 1 else mae * 0.0
    loss = mae + w.floor * floor
    logs = {"mae": mae.detach(), "floor_ce": floor.detach()}
    if out.building is not None:
        b = F.cross_entropy(out.building, batch.building)
        loss = loss + w.building * b
        logs["building_ce"] = b.detach()
    return loss, logs


def plain_step(net: SpecialisedNet, w: TaskWeights) -> StepLoss:
    def step(batch: TrainData) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        loss, logs = task_loss(net(batch.x), batch, w)
        return loss, logs

    return step


# ---------------------------------------------------------------- optimiser


def adam(groups: Sequence[dict[str, Any]], lr: float, weight_decay: float) -> torch.optim.Adam:
    return torch.optim.Adam([g for g in groups if g["params"]], lr=lr, weight_decay=weight_decay)


def trainable(*modules: nn.Module | None) -> list[nn.Parameter]:
    return [p for m in modules if m is not None for p in m.parameters()]


# ---------------------------------------------------------------- callbacks


@dataclass
class Score:
    """Held-out accuracy: mean 2-D error (m), floor hit rate, and the selection score."""

    mean_m: float
    floor_hit: float
    score: float  # mean_m + floor_penalty_m * (1 - floor_hit), lower is better

    def to_json(self) -> dict[str, float]:
        return {"mean_m": self.mean_m, "floor_hit": self.floor_hit, "score": self.score}


def score_net(net: SpecialisedNet, data: TrainData, labels: SiteLabels, penalty_m: float) -> Score:
    xy, floor, _, _ = infer(net, data.x, labels)
    true_xy = labels.decode_xy(data.xy.cpu().numpy())
    mean_m = float(np.hypot(*(xy - true_xy).T).mean())
    hit = float(np.mean(floor == data.floor.cpu().numpy()))
    return Score(mean_m, hit, mean_m + penalty_m * (1.0 - hit))


class HoldoutMonitor(EarlyStopping):
    """Scores the network on held-out rows after every epoch (`Score.score`), keeps the best state,
    stops after `patience` epochs without a better score."""

    def __init__(
        self, net: SpecialisedNet, hold: TrainData, labels: SiteLabels, penalty_m: float, patience: int
    ) -> None:
        super().__init__(
            net,
            lambda: score_net(net, hold, labels, penalty_m),
            patience=patience,
            min_delta=1e-9,
            key=lambda s: s.score,
        )
        self.best: Score | None = None

    @property
    def curve(self) -> list[float]:
        """Held-out score per epoch."""
        return self.scores


# ---------------------------------------------------------------- SAE pretraining (cnnloc)


def pretrain_sae(net: SpecialisedNet, data: TrainData, epochs: int, batch_size: int, lr: float, seed: int) -> None:
    """CNNLoc's stacked autoencoder: train the framer to reconstruct its input through a decoder
    that is then thrown away."""
    if epochs <= 0 or len(data) < 2:
        return
    s = net.shape
    with seeded(seed + 7):
        decoder = nn.Sequential(nn.Linear(s.latent, s.hidden), nn.ReLU(), nn.Linear(s.hidden, s.n_in), nn.Sigmoid())
    decoder = decoder.to(data.x.device)

    def step(batch: TrainData) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        rec = decoder(net.framer(batch.x))
        loss = F.mse_loss(rec, batch.x) * s.n_in / max(float(batch.x.gt(0).float().sum(1).mean()), 1.0)
        return loss, {}

    gen = torch.Generator().manual_seed(seed + 11)
    opt = adam([{"params": trainable(net.framer, decoder)}], lr, 0.0)
    run_epochs([net.framer, decoder], step, shuffled_batches(data, batch_size, gen), opt, epochs)


# ---------------------------------------------------------------- inference


@torch.no_grad()
def infer(
    net: SpecialisedNet, x: torch.Tensor, labels: SiteLabels, chunk: int = 4096
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(xy metres, floor class, building class, probability of the chosen floor) in eval mode.

    Hierarchical: the building is argmax of the building head, then the floor is the most likely
    floor class inside that building."""
    net.eval()
    fb = torch.as_tensor(labels.floor_building(), device=x.device)
    xy_parts, floor_parts, b_parts, p_parts = [], [], [], []
    for lo in range(0, x.shape[0], chunk):
        out = net(x[lo : lo + chunk])
        logits = out.floor
        if out.building is not None:
            b = out.building.argmax(dim=1)
            logits = logits.masked_fill(fb[None, :] != b[:, None], -math.inf)
        prob = torch.softmax(logits, dim=1)
        p, f = prob.max(dim=1)
        xy_parts.append(out.xy.cpu())
        floor_parts.append(f.cpu())
        b_parts.append(fb[f].cpu())
        p_parts.append(p.cpu())
    if not xy_parts:
        return np.zeros((0, 2)), np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
    xy = labels.decode_xy(torch.cat(xy_parts).numpy())
    return xy, torch.cat(floor_parts).numpy(), torch.cat(b_parts).numpy(), torch.cat(p_parts).double().numpy()


@torch.no_grad()
def mc_spread(net: SpecialisedNet, x: torch.Tensor, labels: SiteLabels, passes: int, seed: int = 0) -> np.ndarray:
    """RMS spread (m) of the position over `passes` dropout samples: the model's own uncertainty.

    Seeded and per row (every row sees the masks a one-row batch would), so the same query always gets
    the same estimate, alone or batched with others. The network stays in eval mode and the global RNG
    is untouched: safe to call from several threads on one shared network."""
    if passes < 2 or x.shape[0] == 0:
        return np.zeros(x.shape[0])
    outs = []
    net.eval()
    with stochastic_passes(seeded_generator(seed, x.device), per_row=True):
        for _ in range(passes):
            outs.append(net(x).xy)
    xy = torch.stack(outs).double()  # (T, n, 2)
    var = ((xy - xy.mean(dim=0, keepdim=True)) ** 2).sum(dim=2).mean(dim=0)
    return np.asarray(var.sqrt().cpu().numpy() * labels.scale)


def error_features(spread_m: np.ndarray, p_floor: np.ndarray) -> np.ndarray:
    """[1, log(1 + dropout spread in m), -log p(chosen floor)]: both grow with the real error."""
    return np.column_stack([np.ones(len(spread_m)), np.log1p(spread_m), -np.log(np.clip(p_floor, 1e-6, 1.0))])
