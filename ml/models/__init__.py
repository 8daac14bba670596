"""Model registry: name -> class. Each model module registers itself here."""

from __future__ import annotations

import importlib

from ml.models.base import LocModel

# name -> "module:Class"; imported lazily so wknn-only paths never import torch.
_MODELS: dict[str, str] = {
    "wknn": "ml.models.wknn:WKNN",
    "itoloc": "ml.models.itoloc:ITOLOC",
    "dnn": "ml.models.fpmodel:DNN",
    "cnnloc": "ml.models.fpmodel:CNNLoc",
    "mtloc": "ml.models.mtloc:MTLoc",
}


def available_models() -> list[str]:
    return sorted(_MODELS)


def get_model_class(name: str) -> type[LocModel]:
    if name not in _MODELS:
        raise KeyError(f"unknown model {name!r}; available: {', '.join(available_models())}")
    module, attr = _MODELS[name].split(":")
    cls: type[LocModel] = getattr(importlib.import_module(module), attr)
    return cls
