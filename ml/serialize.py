"""Model <-> (safetensors bytes, JSON config). Never unpickles.

The config carries `format_version` and `model`; loading rejects versions this
code does not know, so an old server never misreads weights written by a newer one.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from ml.models import get_model_class
from ml.models.base import LocModel

FORMAT_VERSION = 1


class ModelFormatError(ValueError):
    """Stored weights or config that this version of siteloc cannot load."""


def dumps(model: LocModel) -> tuple[bytes, dict[str, Any]]:
    arrays = {k: np.ascontiguousarray(v) for k, v in model.arrays().items()}
    config = {"format_version": FORMAT_VERSION, "model": model.name, **model.config()}
    return st_save(arrays), config


def loads(blob: bytes, config: dict[str, Any], device: str = "cpu") -> LocModel:
    version = config.get("format_version")
    if version != FORMAT_VERSION:
        raise ModelFormatError(f"unsupported model format_version {version!r} (this build reads {FORMAT_VERSION})")
    try:
        cls = get_model_class(str(config.get("model")))
    except KeyError as exc:
        raise ModelFormatError(str(exc)) from exc
    arrays = st_load(blob)
    return cls.from_state(arrays, config, device=device)
