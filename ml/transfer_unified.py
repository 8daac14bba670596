"""Paper 003's unified multitask MLP (U-MLP): one network for several sites that classifies the
site (the "environment") and regresses the position inside it, usable for site detection.

The input is the union of the sites' AP vocabularies (an AP's column is shared by every site
that hears it); each training step takes an equal number of rows from every site (the paper
balances its environments the same way). Heads: site logits; per site a position (normalised in
that site's frame); floor logits over every site's floor classes, read only inside the site.
Loss = site cross-entropy + distance + floor cross-entropy. The framer and extractor are the
`dnn` ones, so its settings are `FPNetParams`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ml.data.features import FingerprintSet
from ml.errors import InsufficientData
from ml.models.base import ProgressFn, QueryBatch, no_progress
from ml.models.fpmodel import FPNetParams, features
from ml.models.fpnets import NetShape, SiteLabels, he_init, load_arrays, make_extractor, make_framer, state_arrays
from ml.models.fptrain import adam, distance_loss, trainable
from ml.seed import seeded
from ml.train import Callback, History, ProgressCallback, run_epochs


class UnifiedNet(nn.Module):
    def __init__(self, shape: NetShape, n_sites: int, n_floor_classes: int) -> None:
        super().__init__()
        self.framer = make_framer(shape)
        self.extractor = make_extractor(shape)
        self.site = nn.Linear(shape.rep, n_sites)
        self.xy = nn.Linear(shape.rep, 2 * n_sites)
        self.floor = nn.Linear(shape.rep, n_floor_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        ze = self.extractor(self.framer(x))
        return self.site(ze), self.xy(ze).view(x.shape[0], -1, 2), self.floor(ze)


@dataclass
class _SiteRows:
    x: torch.Tensor  # (n, m_site) features over the site's own vocabulary
    cols: torch.Tensor  # (m_site,) their columns in the union vocabulary
    xy: torch.Tensor  # (n, 2) normalised in the site's frame
    floor: torch.Tensor  # (n,) global floor class


@dataclass
class UnifiedModel:
    sites: list[str]
    aps: list[str]  # union vocabulary
    labels: list[SiteLabels]
    params: FPNetParams
    net: UnifiedNet
    training: dict[str, Any]

    # -- training

    @classmethod
    def fit(
        cls,
        sites: Mapping[str, FingerprintSet],
        params: dict[str, Any] | None = None,
        *,
        seed: int = 0,
        progress: ProgressFn = no_progress,
        device: str = "cpu",
    ) -> UnifiedModel:
        if len(sites) < 2:
            raise InsufficientData("the unified model needs at least two sites")
        p = FPNetParams.parse(params or {})
        dev = torch.device(device)
        aps = list(dict.fromkeys(a for fs in sites.values() for a in fs.aps))
        labels = [SiteLabels.from_set(fs) for fs in sites.values()]
        offsets = np.cumsum([0] + [lab.n_floors for lab in labels])
        index = {a: i for i, a in enumerate(aps)}
        rows = []
        for fs, lab, off in zip(sites.values(), labels, offsets, strict=False):
            xy, floor, _ = lab.encode(fs)
            rows.append(
                _SiteRows(
                    torch.as_tensor(features(fs.rss, fs.age_ms, p), device=dev),
                    torch.as_tensor([index[a] for a in fs.aps], device=dev),
                    torch.as_tensor(xy, device=dev),
                    torch.as_tensor(floor + off, device=dev),
                )
            )
        shape = replace(p.shape("dnn", len(aps), labels[0]), n_floors=int(offsets[-1]), n_buildings=1)
        with seeded(seed):
            net = UnifiedNet(shape, len(sites), int(offsets[-1]))
            he_init(net.framer)
            he_init(net.extractor)
        model = cls(list(sites), aps, labels, p, net.to(dev), {})
        with seeded(seed, dev):
            model.training = model._train(rows, offsets, seed, progress)
        return model

    def _train(self, rows: list[_SiteRows], offsets: np.ndarray, seed: int, progress: ProgressFn) -> dict[str, Any]:
        p = self.params
        per_site = max(p.batch_size // len(rows), 2)
        steps = max(max(len(r.x) for r in rows) // per_site, 1)
        epochs = max(1, min(p.epochs, p.max_steps // steps))
        gen = torch.Generator().manual_seed(seed)
        u = len(self.aps)
        floor_site = torch.as_tensor(np.repeat(np.arange(len(rows)), np.diff(offsets)), device=rows[0].x.device)

        def epoch() -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
            for _ in range(steps):
                xs, ys, fs, ss = [], [], [], []
                for s, r in enumerate(rows):
                    idx = torch.randint(len(r.x), (per_site,), generator=gen).to(r.x.device)
                    x = torch.zeros(per_site, u, device=r.x.device)
                    x[:, r.cols] = r.x[idx]
                    xs.append(x)
                    ys.append(r.xy[idx])
                    fs.append(r.floor[idx])
                    ss.append(torch.full((per_site,), s, device=r.x.device))
                yield torch.cat(xs), torch.cat(ys), torch.cat(fs), torch.cat(ss)

        def step(b: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
            x, y, floor, site = b
            site_logits, xy, floor_logits = self.net(x)
            own = floor_site[None, :] == site[:, None]
            site_ce = F.cross_entropy(site_logits, site)
            dist = distance_loss(xy[torch.arange(len(site), device=site.device), site], y)
            floor_ce = F.cross_entropy(floor_logits.masked_fill(~own, -1e9), floor)
            loss = site_ce + dist + p.floor_weight * floor_ce
            return loss, {"site_ce": site_ce.detach(), "mae": dist.detach(), "floor_ce": floor_ce.detach()}

        history = History()
        opt = adam([{"params": trainable(self.net)}], p.lr, p.weight_decay)
        cbs: list[Callback] = [history, ProgressCallback(progress, epochs, 0.0, 1.0, "training the unified model")]
        run_epochs([self.net], step, epoch, opt, epochs, cbs)
        return {
            "epochs": epochs,
            "steps_per_epoch": steps,
            "rows_per_site_per_step": per_site,
            "final": history.rows[-1] if history.rows else {},
        }

    # -- inference

    @torch.no_grad()
    def detect(self, batch: QueryBatch) -> np.ndarray:
        """(n, n_sites) site probabilities; `batch` is over `self.aps` (use `FingerprintSet.with_aps`)."""
        self.net.eval()
        x = torch.as_tensor(features(batch.rss, batch.age_ms, self.params), device=self._device())
        return np.asarray(torch.softmax(self.net(x)[0], dim=1).cpu().numpy(), dtype=np.float64)

    @torch.no_grad()
    def locate(self, batch: QueryBatch) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(site index, xy in that site's frame (m), floor label) per query."""
        self.net.eval()
        x = torch.as_tensor(features(batch.rss, batch.age_ms, self.params), device=self._device())
        site_logits, xy, floor_logits = self.net(x)
        site = site_logits.argmax(dim=1).cpu().numpy()
        xy_n, floor_l = xy.cpu().numpy(), floor_logits.cpu().numpy()
        offsets = np.cumsum([0] + [lab.n_floors for lab in self.labels])
        out_xy = np.zeros((len(site), 2))
        out_floor = np.empty(len(site), dtype=object)
        for i, s in enumerate(site):
            lab = self.labels[s]
            out_xy[i] = lab.decode_xy(xy_n[i, s])
            out_floor[i] = lab.floor_keys[int(np.argmax(floor_l[i, offsets[s] : offsets[s + 1]]))][1]
        return site, out_xy, out_floor

    def _device(self) -> torch.device:
        return next(self.net.parameters()).device

    # -- state

    def arrays(self) -> dict[str, np.ndarray]:
        return state_arrays(self.net, "net.")

    def config(self) -> dict[str, Any]:
        return {
            "sites": self.sites,
            "aps": self.aps,
            "labels": [lab.to_json() for lab in self.labels],
            "params": asdict(self.params),
            "training": self.training,
        }

    @classmethod
    def from_state(cls, arrays: dict[str, np.ndarray], config: dict[str, Any], device: str = "cpu") -> UnifiedModel:
        p = replace(FPNetParams(), **config["params"])
        labels = [SiteLabels.from_json(d) for d in config["labels"]]
        n_floor = sum(lab.n_floors for lab in labels)
        shape = replace(p.shape("dnn", len(config["aps"]), labels[0]), n_floors=n_floor, n_buildings=1)
        net = UnifiedNet(shape, len(labels), n_floor)
        load_arrays(net, arrays, "net.")
        return cls(
            list(config["sites"]),
            list(config["aps"]),
            labels,
            p,
            net.to(torch.device(device)),
            dict(config.get("training", {})),
        )
