"""The CUDA path of the torch models (dnn, cnnloc, itoloc, mtloc): placement and CPU/CUDA parity.

Tests marked `gpu` need a CUDA device and are skipped (with the reason) where `torch.cuda.is_available()` is False;
`scripts/gpu_check.sh` runs them on a GPU machine with `SITELOC_DEVICE=cuda pytest -m gpu`. On a GPU they check, for a
model trained with device="cuda" on a tiny fixture config, that its parameters live on CUDA, that `predict` feeds
CUDA tensors to the network, and that the same weights answer the same on CPU and CUDA (saved with
`ml.serialize.dumps`, loaded with `loads(..., device=...)`): positions within 1e-3 m, the same floors.

The comparison itself (`compare_devices`) also runs on the CPU (`test_parity_code_path_on_cpu`, not marked), with
"cpu" on both sides, so CI exercises every line of it.

TF32 is switched off for the parity checks: PyTorch lets cuDNN convolutions use TF32 by default (10-bit mantissa),
which moves itoloc's cell probabilities by more than float32 rounding; what is checked here is device placement, not
that precision mode (docs/benchmarks/gpu.md).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from ml.data.features import FingerprintSet, build_set
from ml.models import get_model_class
from ml.models.base import LocModel, Prediction, QueryBatch
from ml.serialize import dumps, loads

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
KINDS = ("dnn", "cnnloc", "itoloc", "mtloc")
XY_TOL_M = 1e-3

# Tiny settings (seconds on a CPU): the real architectures, narrow and trained a few epochs.
TINY: dict[str, dict[str, Any]] = {
    "dnn": {"hidden": 64, "latent": 32, "rep": 32, "epochs": 4, "batch_size": 16, "refit_all": False, "mc_passes": 4},
    "cnnloc": {
        "hidden": 64,
        "latent": 32,
        "rep": 32,
        "channels": 4,
        "epochs": 3,
        "batch_size": 16,
        "refit_all": False,
        "sae_epochs": 2,
        "mc_passes": 4,
    },
    "itoloc": {
        "min_steps": 0,
        "n_aps": 12,
        "width": 8,
        "pool_out": 2,
        "cell_m": 5.0,
        "epochs": 3,
        "batch_size": 32,
        "holdout": 0.15,
    },
    "mtloc": {
        "n_aps": 64,
        "wifi_hidden": 16,
        "imu_hidden": 8,
        "mag_hidden": 8,
        "fusion_hidden": 16,
        "epochs": 3,
        "batch_size": 32,
        "val_fraction": 0.0,
        "knn_blend": False,  # the kNN blend runs in numpy on the CPU whatever the device
    },
}


def gpu_device() -> str:
    """The CUDA device under test: SITELOC_DEVICE when it names one ("cuda", "cuda:1"), else "cuda"."""
    dev = os.environ.get("SITELOC_DEVICE", "")
    return dev if dev.startswith("cuda") else "cuda"


def _no_cuda_reason() -> str:
    return (
        f"needs a CUDA device: torch.cuda.is_available() is False "
        f"(torch {torch.__version__}, CUDA build {torch.version.cuda})"
    )


def gpu_test(fn: Callable[..., None]) -> Callable[..., None]:
    """Marked `gpu` and skipped, with the reason, without CUDA."""
    skip = pytest.mark.skipif(not torch.cuda.is_available(), reason=_no_cuda_reason())
    return pytest.mark.gpu(skip(fn))


@pytest.fixture(scope="module", autouse=True)
def _threads() -> Iterator[None]:
    old = torch.get_num_threads()
    torch.set_num_threads(min(2, old))
    yield
    torch.set_num_threads(old)


@pytest.fixture
def exact_fp32() -> Iterator[None]:
    """TF32 off for matmuls and cuDNN during a parity check (see the module docstring); restored after."""
    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


# ---------------------------------------------------------------- data and models


@dataclass
class Site:
    train: FingerprintSet
    queries: FingerprintSet  # held-out rows (UJI validation; for mtloc, windows of the same trace)


_SITES: dict[str, Site] = {}


def site_for(kind: str) -> Site:
    """UJI fixture slices (3 buildings) for the fingerprint models; the ILC sensor-window fixture for mtloc."""
    key = "windows" if kind == "mtloc" else "uji"
    if key not in _SITES:
        if key == "uji":
            from ml.data.ujiindoorloc import read_ujiindoorloc

            train = build_set(list(read_ujiindoorloc(FIXTURES / "uji_train_small.csv")))
            test = build_set(list(read_ujiindoorloc(FIXTURES / "uji_validation_small.csv")), train.aps)
            _SITES[key] = Site(train, test)
        else:
            from ml.data.ilc2020 import read_ilc_windows

            windows = build_set(list(read_ilc_windows(FIXTURES / "ilc_site1_F1_small.tar.xz")))
            _SITES[key] = Site(windows, windows.subset(np.arange(0, len(windows), 3)))
    return _SITES[key]


_CPU_MODELS: dict[str, LocModel] = {}


def train_tiny(kind: str, device: str) -> LocModel:
    return get_model_class(kind).fit(site_for(kind).train, TINY[kind], seed=0, device=device)


def cpu_model(kind: str) -> LocModel:
    """The tiny model of `kind` trained on the CPU, trained once per session."""
    if kind not in _CPU_MODELS:
        _CPU_MODELS[kind] = train_tiny(kind, "cpu")
    return _CPU_MODELS[kind]


def query_batch(model: LocModel, kind: str) -> QueryBatch:
    return QueryBatch.from_set(site_for(kind).queries.with_aps(model.aps))


def torch_net(model: LocModel) -> torch.nn.Module:
    net = getattr(model, "net", None)
    assert isinstance(net, torch.nn.Module), f"{model.name} has no torch network in .net"
    return net


def parameter_devices(model: LocModel) -> set[str]:
    net = torch_net(model)
    return {t.device.type for t in [*net.parameters(), *net.buffers()]}


def predict_recording_devices(model: LocModel, batch: QueryBatch) -> tuple[Prediction, set[str]]:
    """`model.predict(batch)` and the device types of every tensor that entered a module of its network."""
    seen: set[str] = set()

    def record(_module: torch.nn.Module, args: tuple[Any, ...]) -> None:
        seen.update(a.device.type for a in args if isinstance(a, torch.Tensor))

    hooks = [m.register_forward_pre_hook(record) for m in torch_net(model).modules()]
    try:
        pred = model.predict(batch)
    finally:
        for h in hooks:
            h.remove()
    return pred, seen


@dataclass
class Parity:
    max_xy_diff_m: float
    floors_equal: bool
    n: int

    def ok(self) -> bool:
        return self.max_xy_diff_m < XY_TOL_M and self.floors_equal


def compare_devices(model: LocModel, batch: QueryBatch, device: str) -> tuple[Parity, LocModel]:
    """Save `model` (safetensors + JSON config, as the service stores it), load it on `device`, and compare the two
    models' answers to `batch`: the largest position difference and whether every floor (and building) agrees."""
    blob, config = dumps(model)
    other = loads(blob, json.loads(json.dumps(config)), device=device)
    a, b = model.predict(batch), other.predict(batch)
    assert a.xy.shape == b.xy.shape == (len(batch), 2)
    diff = float(np.max(np.abs(a.xy - b.xy))) if len(batch) else 0.0
    same = list(a.floor) == list(b.floor) and list(a.building) == list(b.building)
    return Parity(diff, same, len(batch)), other


# ---------------------------------------------------------------- CPU (CI): the comparison code itself


@pytest.mark.parametrize("kind", KINDS)
def test_parity_code_path_on_cpu(kind: str) -> None:
    model = cpu_model(kind)
    assert parameter_devices(model) == {"cpu"}
    batch = query_batch(model, kind)
    pred, seen = predict_recording_devices(model, batch)
    assert seen == {"cpu"} and np.all(np.isfinite(pred.xy))
    parity, other = compare_devices(model, batch, "cpu")
    assert parity.n == len(batch) > 0
    assert parity.ok(), parity
    assert parameter_devices(other) == {"cpu"}


def test_parity_notices_a_different_model() -> None:
    """The comparison would fail a model that answers differently (so a passing check means something)."""
    model = cpu_model("dnn")
    batch = query_batch(model, "dnn")
    blob, config = dumps(model)
    other = loads(blob, config)
    with torch.no_grad():
        for p in torch_net(other).parameters():
            p.add_(0.05)
    a, b = model.predict(batch), other.predict(batch)
    assert float(np.max(np.abs(a.xy - b.xy))) > XY_TOL_M


# ---------------------------------------------------------------- GPU


@gpu_test
@pytest.mark.parametrize("kind", KINDS)
def test_trains_and_answers_on_cuda(kind: str, exact_fp32: None) -> None:
    dev = gpu_device()
    torch.cuda.reset_peak_memory_stats(dev)
    model = train_tiny(kind, dev)
    assert parameter_devices(model) == {"cuda"}
    assert getattr(model, "device", torch.device(dev)).type == "cuda"
    assert torch.cuda.max_memory_allocated(dev) > 0
    batch = query_batch(model, kind)
    pred, seen = predict_recording_devices(model, batch)
    assert seen == {"cuda"}, f"predict fed {seen} tensors to the network"
    assert np.all(np.isfinite(pred.xy)) and np.all(np.isfinite(pred.error_m))
    # the CUDA-trained weights answer the same on the CPU
    parity, other = compare_devices(model, batch, "cpu")
    assert parameter_devices(other) == {"cpu"}
    assert parity.ok(), parity


@gpu_test
@pytest.mark.parametrize("kind", KINDS)
def test_cpu_weights_answer_the_same_on_cuda(kind: str, exact_fp32: None) -> None:
    model = cpu_model(kind)
    batch = query_batch(model, kind)
    parity, other = compare_devices(model, batch, gpu_device())
    assert parameter_devices(other) == {"cuda"}
    _, seen = predict_recording_devices(other, batch)
    assert seen == {"cuda"}
    assert parity.ok(), parity
