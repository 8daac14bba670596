"""Encoder-based transfer (paper 003): per-site encoders into a shared latent space, a shared base.

Pretraining (`pretrain_encoder`) trains one `MultiSiteNet` on one or more source sites at once:
each site has its own framer (its *encoder*: that site's AP vocabulary -> the latent Z^F) and its
own heads, all sites share the extractor (the *base*). Every step takes one batch of every site
and sums their task losses. What a source site's model version stores (`SourceArtifact`,
strategy "encoder") is the base plus every pretraining site's encoder and heads.

On the target (`encoder_recipe`): a fresh encoder and heads for the target's vocabulary and
floors, the base initialised from the artifact; first `freeze_epochs` epochs with the base
frozen (encoder + heads learn to use it), then everything, the base at `base_lr_scale` x lr.
When a pretraining site hears enough of the target's APs (neighbouring buildings of a campus,
an earlier survey of the same site), the target's encoder starts from that site's encoder:
its columns for the shared APs and its second layer (`align_aps`).
Given several encoder artifacts, each base is tried for the frozen stage and the one with the
best held-out score is kept.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ml.data.features import FingerprintSet
from ml.errors import InvalidParams
from ml.models.base import ProgressFn, no_progress
from ml.models.fpmodel import CallbackSlot, FPNetParams, Prepared, Recipe, prepare
from ml.models.fpnets import NetShape, SpecialisedNet, build_net, load_arrays, make_extractor, state_arrays
from ml.models.fptrain import (
    HoldoutMonitor,
    TrainData,
    adam,
    plain_step,
    pretrain_sae,
    shuffled_batches,
    task_loss,
    trainable,
)
from ml.seed import seeded
from ml.train import Callback, History, ProgressCallback, run_epochs


@dataclass(frozen=True)
class EncoderConfig:
    """Settings of encoder transfer."""

    pretrain_epochs: int = 60  # source side: joint epochs over the largest source site (capped by max_steps)
    freeze_epochs: int = 30  # target: first epochs with the pretrained base frozen
    base_lr_scale: float = 0.3  # target, afterwards: the base's learning rate as a fraction of lr
    align_aps: bool = True  # start the target's encoder from the pretraining site sharing the most APs ...
    min_shared_aps: int = 10  # ... when it shares at least this many (same campus, a resurvey); else fresh


class MultiSiteNet(nn.Module):
    """One `SpecialisedNet` per site (own framer = encoder, own heads), all sharing one extractor (base)."""

    def __init__(self, shapes: Sequence[NetShape]) -> None:
        super().__init__()
        if len({str(s.base_signature()) for s in shapes}) != 1:
            raise InvalidParams("all sites of a multi-site network need the same network kind and base shape")
        self.extractor = make_extractor(shapes[0])
        self.sites = nn.ModuleList()
        for s in shapes:
            net = SpecialisedNet(s)
            net.extractor = self.extractor
            self.sites.append(net)

    def site_net(self, i: int) -> SpecialisedNet:
        net = self.sites[i]
        assert isinstance(net, SpecialisedNet)
        return net


def _round_robin(datas: Sequence[TrainData], batch_size: int, gen: torch.Generator) -> Callable[[], Iterator[Any]]:
    """An epoch = one pass over the largest site; smaller sites are cycled (re-shuffled each pass)."""
    makers = [shuffled_batches(d, batch_size, gen) for d in datas]
    n_steps = max(len(d) // batch_size for d in datas) or 1

    def cycle(make: Callable[[], Iterator[TrainData]]) -> Iterator[TrainData]:
        while True:
            yield from make()

    def epoch() -> Iterator[list[TrainData]]:
        its = [cycle(m) for m in makers]
        for _ in range(n_steps):
            yield [next(it) for it in its]

    return epoch


def pretrain_encoder(
    kind: str,
    sites: Mapping[str, FingerprintSet],
    p: FPNetParams,
    epochs: int,
    seed: int,
    progress: ProgressFn = no_progress,
    device: str = "cpu",
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Joint pretraining on the source sites; (arrays, config) of the encoder source artifact."""
    preps = [prepare(kind, fs, p, seed, device) for fs in sites.values()]
    with seeded(seed):
        multi = MultiSiteNet([pr.shape for pr in preps])
    multi = multi.to(torch.device(device))
    with seeded(seed, torch.device(device)):
        epochs, history = _train_multi(multi, [pr.all for pr in preps], p, epochs, seed, progress)
    arrays = state_arrays(multi.extractor, "base.")
    for i in range(len(preps)):
        arrays.update(state_arrays(multi.site_net(i).framer, f"site{i}.framer."))
        arrays.update(state_arrays(multi.site_net(i).heads, f"site{i}.heads."))
    config = {
        "base": preps[0].shape.base_signature(),
        "sites": [
            {
                "name": name,
                "aps": pr.aps,
                "labels": pr.labels.to_json(),
                "shape": pr.shape.to_json(),
                "n_rows": len(pr.all),
            }
            for name, pr in zip(sites, preps, strict=True)
        ],
        "pretrain": {"epochs": epochs, "final": history.rows[-1] if history.rows else {}},
    }
    return arrays, config


def _train_multi(
    multi: MultiSiteNet, datas: list[TrainData], p: FPNetParams, epochs: int, seed: int, progress: ProgressFn
) -> tuple[int, History]:
    if multi.site_net(0).shape.kind == "cnnloc":
        for i, d in enumerate(datas):
            pretrain_sae(multi.site_net(i), d, p.sae_epochs, p.batch_size, p.lr, seed + i)
    n_steps = max(max(len(d) // p.batch_size for d in datas), 1)
    epochs = max(1, min(epochs, p.max_steps // n_steps))
    w = p.task_weights()
    views = [multi.site_net(i) for i in range(len(datas))]

    def step(batches: list[TrainData]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        losses = [task_loss(v(b.x), b, w)[0] for v, b in zip(views, batches, strict=True)]
        return torch.stack(losses).mean(), {f"loss_{i}": loss.detach() for i, loss in enumerate(losses)}

    gen = torch.Generator().manual_seed(seed)
    history = History()
    opt = adam([{"params": trainable(multi)}], p.lr, p.weight_decay)
    cbs: list[Callback] = [history, ProgressCallback(progress, epochs, 0.0, 1.0, "pretraining the shared base")]
    run_epochs([multi], step, _round_robin(datas, p.batch_size, gen), opt, epochs, cbs)
    return epochs, history


# ---------------------------------------------------------------- target side


@dataclass
class Base:
    """One encoder artifact's tensors and config (its `base.*` and per-site encoders/heads)."""

    arrays: dict[str, np.ndarray]
    config: dict[str, Any]


def encoder_recipe(prep: Prepared, bases: Sequence[Base], cfg: EncoderConfig) -> tuple[Recipe, dict[str, Any]]:
    """The target recipe, with the base chosen among `bases`."""
    chosen, probe = _choose_base(prep, bases, cfg)
    aligned = _alignment(prep.aps, bases[chosen], cfg)

    def recipe(
        data: TrainData, epochs: int, callbacks: Sequence[Callback], hook: Callable[[SpecialisedNet], None]
    ) -> SpecialisedNet:
        return _train_from_base(prep, bases[chosen], cfg, data, epochs, callbacks, hook)

    return recipe, {"base_index": chosen, "base_probe": probe, "encoder_init": aligned or "fresh"}


def _alignment(aps: list[str], base: Base, cfg: EncoderConfig) -> dict[str, Any] | None:
    """The pretraining site sharing the most APs with the target, if it shares enough."""
    if not cfg.align_aps:
        return None
    sites = base.config.get("sites", [])
    shared = [len(set(aps) & set(s["aps"])) for s in sites]
    if not shared or max(shared) < cfg.min_shared_aps:
        return None
    i = int(np.argmax(shared))
    return {"site": sites[i]["name"], "index": i, "shared_aps": shared[i]}


def init_encoder_from(net: SpecialisedNet, aps: list[str], base: Base, site: int) -> None:
    """Start the target's encoder from pretraining site `site`'s: its second layer as is, its first
    layer's columns for the APs both sites hear (the other columns keep their random init)."""
    first, second = net.framer[1], net.framer[4]
    assert isinstance(first, nn.Linear) and isinstance(second, nn.Linear)
    pre = f"site{site}.framer."
    w1 = torch.as_tensor(base.arrays[pre + "1.weight"])
    if w1.shape[0] != first.out_features or tuple(base.arrays[pre + "4.weight"].shape) != tuple(second.weight.shape):
        raise InvalidParams("the artifact's encoder does not fit the target network (hidden/latent differ)")
    index = {a: j for j, a in enumerate(base.config["sites"][site]["aps"])}
    cols = [(t, index[a]) for t, a in enumerate(aps) if a in index]
    dst = torch.as_tensor([t for t, _ in cols], dtype=torch.int64)
    src = torch.as_tensor([j for _, j in cols], dtype=torch.int64)
    with torch.no_grad():
        first.weight[:, dst.to(first.weight.device)] = w1[:, src].to(first.weight.device)
        first.bias.copy_(torch.as_tensor(base.arrays[pre + "1.bias"]))
        second.weight.copy_(torch.as_tensor(base.arrays[pre + "4.weight"]))
        second.bias.copy_(torch.as_tensor(base.arrays[pre + "4.bias"]))


def _train_from_base(
    prep: Prepared,
    base: Base,
    cfg: EncoderConfig,
    data: TrainData,
    epochs: int,
    callbacks: Sequence[Callback],
    hook: Callable[[SpecialisedNet], None],
) -> SpecialisedNet:
    p = prep.p
    net = build_net(prep.shape, prep.seed, prep.device)
    load_arrays(net.extractor, base.arrays, "base.")
    aligned = _alignment(prep.aps, base, cfg)
    if aligned is not None:
        init_encoder_from(net, prep.aps, base, aligned["index"])
    hook(net)
    if prep.shape.kind == "cnnloc":
        pretrain_sae(net, data, p.sae_epochs, p.batch_size, p.lr, prep.seed)
    gen = torch.Generator().manual_seed(prep.seed)
    batches = shuffled_batches(data, p.batch_size, gen)
    step = plain_step(net, p.task_weights())
    n1 = min(cfg.freeze_epochs, epochs)
    net.extractor.requires_grad_(False)
    opt = adam([{"params": trainable(net.framer, net.heads)}], p.lr, p.weight_decay)
    last = run_epochs([net], step, batches, opt, n1, callbacks)
    net.extractor.requires_grad_(True)
    if last < n1 or epochs <= n1:  # stopped early, or no second stage
        return net
    groups: list[dict[str, Any]] = [
        {"params": trainable(net.framer, net.heads)},
        {"params": trainable(net.extractor), "lr": p.lr * cfg.base_lr_scale},
    ]
    run_epochs([net], step, batches, adam(groups, p.lr, p.weight_decay), epochs - n1, callbacks, first_epoch=n1 + 1)
    return net


def _choose_base(prep: Prepared, bases: Sequence[Base], cfg: EncoderConfig) -> tuple[int, list[float]]:
    """Index of the base whose frozen stage scores best on the hold-out (the only one if just one)."""
    if len(bases) == 1 or prep.hold is None:
        return 0, []
    scores = []
    n = max(1, min(cfg.freeze_epochs, prep.epochs))
    for base in bases:
        mon: list[HoldoutMonitor] = []

        def hook(net: SpecialisedNet, mon: list[HoldoutMonitor] = mon) -> None:
            assert prep.hold is not None
            mon.append(HoldoutMonitor(net, prep.hold, prep.labels, prep.p.floor_penalty_m, prep.p.patience))

        with seeded(prep.seed, prep.device):
            _train_from_base(prep, base, cfg, prep.fit, n, [CallbackSlot(mon)], hook)
        best = mon[0].best
        scores.append(best.score if best is not None else float("inf"))
    return int(np.argmin(scores)), [round(s, 4) for s in scores]


def check_base(prep: Prepared, config: dict[str, Any]) -> None:
    want = prep.shape.base_signature()
    have = config.get("base", {})
    if have != want:
        raise InvalidParams(
            f"encoder artifact base {have} does not fit the target network {want}; "
            "use the same kind/latent/rep/channels params as the source"
        )
