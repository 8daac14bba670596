"""Specialised fingerprint networks `dnn` and `cnnloc`, their input features and labels.

Both networks are split as in paper 004 (MSTA) into three parts:

- Framer F: the site's input layers, AP vocabulary (n_in) -> a fixed-size latent Z^F. This is
  also paper 003's per-site *encoder*: the only part whose shape depends on the site.
- Extractor E: Z^F -> the specialised representation Z^E (the *shared base* of encoder transfer).
- Regressor R (`Heads`): Z^E -> position (normalised site coordinates), floor logits over the
  site's building-qualified floors and, when the site has several buildings, building logits.

`dnn` is an MLP (Félix et al. 2016 style); `cnnloc` follows CNNLoc (Song et al. 2019): a
stacked-autoencoder front (pretrained by reconstruction, see `ml.models.fptrain.pretrain_sae`)
feeding 1-D convolutions over its code.

Inputs are wknn's `powed` representation: ((rss - min_rss) / -min_rss) ** beta in [0, 1],
"not heard" (NaN, or a stale entry) = 0.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ml.data.features import FingerprintSet
from ml.errors import InvalidParams
from ml.models.dropout import CallDropout
from ml.seed import seeded

KINDS = ("dnn", "cnnloc")


# ---------------------------------------------------------------- features


def powed(rss: np.ndarray, min_rss: float, beta: float = math.e) -> np.ndarray:
    """(n, m) dBm with NaN = not heard -> float32 features in [0, 1], not heard = 0."""
    heard = ~np.isnan(rss)
    pos = (np.clip(np.where(heard, rss, min_rss), min_rss, 0.0) - min_rss) / -min_rss
    out = np.where(heard, pos**beta, 0.0)
    return np.asarray(out, dtype=np.float32)


# ---------------------------------------------------------------- labels


@dataclass
class SiteLabels:
    """How a site's labels map to network targets: floor classes, buildings, coordinate frame."""

    floor_keys: list[tuple[str | None, str]]  # (building, floor) per floor class, sorted
    buildings: list[str | None]  # building per building class, sorted
    center: tuple[float, float]  # xy mean of the training rows
    scale: float  # isotropic std of the training xy (metres per normalised unit)

    @classmethod
    def from_set(cls, fs: FingerprintSet) -> SiteLabels:
        keys = sorted({(b, str(f)) for b, f in zip(fs.building, fs.floor, strict=True)}, key=floor_key_order)
        buildings = sorted({b for b, _ in keys}, key=lambda b: b or "")
        center = fs.xy.mean(axis=0) if len(fs) else np.zeros(2)
        scale = float(np.sqrt(((fs.xy - center) ** 2).sum(axis=1).mean() / 2)) if len(fs) else 1.0
        return cls(keys, buildings, (float(center[0]), float(center[1])), max(scale, 1.0))

    @property
    def n_floors(self) -> int:
        return len(self.floor_keys)

    @property
    def n_buildings(self) -> int:
        return len(self.buildings)

    def floor_building(self) -> np.ndarray:
        """(n_floors,) building class of each floor class."""
        return np.array([self.buildings.index(b) for b, _ in self.floor_keys], dtype=np.int64)

    def encode(self, fs: FingerprintSet) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(normalised xy float32, floor class int64 (-1 unknown), building class int64 (-1 unknown))."""
        fidx = {k: i for i, k in enumerate(self.floor_keys)}
        bidx = {b: i for i, b in enumerate(self.buildings)}
        floor = np.array([fidx.get((b, str(f)), -1) for b, f in zip(fs.building, fs.floor, strict=True)])
        building = np.array([bidx.get(b, -1) for b in fs.building])
        xy = (fs.xy - np.asarray(self.center)) / self.scale
        return xy.astype(np.float32), floor.astype(np.int64), building.astype(np.int64)

    def decode_xy(self, xy_norm: np.ndarray) -> np.ndarray:
        return np.asarray(xy_norm, dtype=np.float64) * self.scale + np.asarray(self.center)

    def to_json(self) -> dict[str, Any]:
        return {
            "floor_keys": [[b, f] for b, f in self.floor_keys],
            "buildings": list(self.buildings),
            "center": list(self.center),
            "scale": self.scale,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> SiteLabels:
        keys = [(b, str(f)) for b, f in d["floor_keys"]]
        cx, cy = d["center"]
        return cls(keys, list(d["buildings"]), (float(cx), float(cy)), float(d["scale"]))


def floor_key_order(k: tuple[str | None, str]) -> tuple[str, str]:
    """Sort key of (building, floor) labels; a missing building sorts first."""
    return (k[0] or "", k[1])


# ---------------------------------------------------------------- networks


@dataclass(frozen=True)
class NetShape:
    """Everything needed to rebuild a network's modules (stored in configs and artifacts)."""

    kind: str  # "dnn" | "cnnloc"
    n_in: int  # the site's AP vocabulary size
    n_floors: int  # floor classes (building-qualified)
    n_buildings: int  # building classes; a building head exists only when > 1
    hidden: int = 256  # framer's first layer (cnnloc: SAE layer 1)
    latent: int = 128  # Z^F size (cnnloc: SAE code, the CNN's 1-D signal length)
    rep: int = 128  # Z^E size: the specialised representation aligned by MSTA
    channels: int = 16  # cnnloc: conv channels (doubled in the last conv)
    dropout: float = 0.1  # after hidden layers
    input_dropout: float = 0.1  # on the input features: randomly "unhears" APs while training

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise InvalidParams(f"network kind {self.kind!r}; choose from {', '.join(KINDS)}")
        if min(self.n_in, self.n_floors, self.n_buildings, self.hidden, self.latent, self.rep) < 1:
            raise InvalidParams(f"bad network shape {self}")
        if self.kind == "cnnloc" and self.latent % 4:
            raise InvalidParams("cnnloc needs latent divisible by 4 (two max-pools)")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def base_signature(self) -> dict[str, Any]:
        """What a transferred extractor must match."""
        return {k: getattr(self, k) for k in ("kind", "latent", "rep", "channels")}


def make_framer(s: NetShape) -> nn.Sequential:
    return nn.Sequential(
        CallDropout(s.input_dropout),
        nn.Linear(s.n_in, s.hidden),
        nn.ReLU(),
        CallDropout(s.dropout),
        nn.Linear(s.hidden, s.latent),
        nn.ReLU(),
    )


def make_extractor(s: NetShape) -> nn.Sequential:
    if s.kind == "dnn":
        return nn.Sequential(
            CallDropout(s.dropout),
            nn.Linear(s.latent, s.rep),
            nn.ReLU(),
            CallDropout(s.dropout),
            nn.Linear(s.rep, s.rep),
            nn.ReLU(),
        )
    c = s.channels
    return nn.Sequential(  # CNNLoc: the SAE code as a 1-channel signal
        nn.Unflatten(1, (1, s.latent)),
        nn.Conv1d(1, c, 5, padding=2),
        nn.ReLU(),
        nn.Conv1d(c, c, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool1d(2),
        nn.Conv1d(c, 2 * c, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool1d(2),
        nn.Flatten(),
        CallDropout(s.dropout),
        nn.Linear(2 * c * (s.latent // 4), s.rep),
        nn.ReLU(),
    )


class Heads(nn.Module):
    """Regressor R: position (normalised), floor logits, building logits (None with one building)."""

    def __init__(self, s: NetShape) -> None:
        super().__init__()
        self.xy = nn.Linear(s.rep, 2)
        self.floor = nn.Linear(s.rep, s.n_floors)
        self.building = nn.Linear(s.rep, s.n_buildings) if s.n_buildings > 1 else None

    def forward(self, ze: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        b = self.building(ze) if self.building is not None else None
        return self.xy(ze), self.floor(ze), b


@dataclass
class NetOut:
    zf: torch.Tensor  # (B, latent) framer output Z^F
    ze: torch.Tensor  # (B, rep) representation Z^E
    xy: torch.Tensor  # (B, 2) normalised position
    floor: torch.Tensor  # (B, n_floors) logits
    building: torch.Tensor | None  # (B, n_buildings) logits


class SpecialisedNet(nn.Module):
    """F -> E -> R for one site."""

    def __init__(self, s: NetShape) -> None:
        super().__init__()
        self.shape = s
        self.framer = make_framer(s)
        self.extractor = make_extractor(s)
        self.heads = Heads(s)

    def forward(self, x: torch.Tensor) -> NetOut:
        zf = self.framer(x)
        ze = self.extractor(zf)
        xy, floor, building = self.heads(ze)
        return NetOut(zf, ze, xy, floor, building)


def build_net(s: NetShape, seed: int, device: torch.device) -> SpecialisedNet:
    """Initialised on CPU from `seed` (same weights on CPU and CUDA), then moved."""
    with seeded(seed):
        net = SpecialisedNet(s)
        he_init(net.framer)
        he_init(net.extractor)
    return net.to(device)


def he_init(module: nn.Module) -> None:
    """He (Kaiming) normal weights and zero biases for the ReLU layers: keeps the signal's scale
    through the stack, so training does not start on a plateau (PyTorch's default shrinks it)."""
    for m in module.modules():
        if isinstance(m, nn.Linear | nn.Conv1d):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def state_arrays(module: nn.Module, prefix: str) -> dict[str, np.ndarray]:
    return {f"{prefix}{k}": v.detach().cpu().numpy().copy() for k, v in module.state_dict().items()}


def load_arrays(module: nn.Module, arrays: dict[str, np.ndarray], prefix: str) -> None:
    """Load `prefix*` arrays into `module` (strict: every tensor must be present and match)."""
    own = module.state_dict()
    missing = [k for k in own if f"{prefix}{k}" not in arrays]
    if missing:
        raise ValueError(f"stored weights lack {prefix}{missing[0]} (and {len(missing) - 1} more)")
    for k, v in own.items():
        a = arrays[f"{prefix}{k}"]
        if tuple(a.shape) != tuple(v.shape):
            raise ValueError(f"stored {prefix}{k} has shape {a.shape}, network needs {tuple(v.shape)}")
    module.load_state_dict({k: torch.as_tensor(np.asarray(arrays[f"{prefix}{k}"])) for k in own})
