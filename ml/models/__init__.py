"""Model registry: the one list of model names, their classes, and the training strategies each supports.

The service's request schemas (app.schemas.api), its strategy checks (app.services.training) and the
benchmarks read these tables; nothing else spells the names out.
"""

from __future__ import annotations

import importlib

from ml.models.base import LocModel

# name -> "module:Class"; imported lazily so wknn-only paths never import torch. The order is the API's.
_MODELS: dict[str, str] = {
    "wknn": "ml.models.wknn:WKNN",
    "dnn": "ml.models.fpmodel:DNN",
    "cnnloc": "ml.models.fpmodel:CNNLoc",
    "itoloc": "ml.models.itoloc:ITOLOC",
    "mtloc": "ml.models.mtloc:MTLoc",
}
MODEL_NAMES: tuple[str, ...] = tuple(_MODELS)

SCRATCH = "scratch"
# Transfer strategies per model, beside "scratch" (which every model has): "encoder" and "msta" are
# ml.transfer's cross-site transfer of the fingerprint networks; "frozen" and "finetune" start mtloc's
# IMU-LSTM from one pretrained on the source sites (ml.models.mtloc), kept fixed or trained further.
TRANSFER_STRATEGIES: dict[str, tuple[str, ...]] = {
    "dnn": ("encoder", "msta"),
    "cnnloc": ("encoder", "msta"),
    "mtloc": ("frozen", "finetune"),
}
STRATEGY_NAMES: tuple[str, ...] = (SCRATCH, "frozen", "finetune", "msta", "encoder")


def available_models() -> list[str]:
    return sorted(_MODELS)


def get_model_class(name: str) -> type[LocModel]:
    if name not in _MODELS:
        raise KeyError(f"unknown model {name!r}; available: {', '.join(available_models())}")
    module, attr = _MODELS[name].split(":")
    cls: type[LocModel] = getattr(importlib.import_module(module), attr)
    return cls


def model_strategies(name: str) -> tuple[str, ...]:
    """Every strategy `name` trains with: "scratch", then its transfer strategies."""
    return (SCRATCH, *TRANSFER_STRATEGIES.get(name, ()))


def models_with_strategy(strategy: str) -> list[str]:
    """The models that support `strategy`, in registry order."""
    return [m for m in MODEL_NAMES if strategy in model_strategies(m)]
