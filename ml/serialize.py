"""The one stored format: (safetensors bytes, JSON config). Never unpickles.

Every config carries `format_version`; a model's also `model`, any other artifact's `artifact`
(its kind: the IMU-LSTM of MTLoc transfer, a transfer source). Loading rejects versions and kinds
this code does not know, so an old server never misreads weights written by a newer one, and a
stored artifact of an old format raises `ModelFormatError` (the caller rebuilds it).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from ml.models import get_model_class
from ml.models.base import LocModel

FORMAT_VERSION = 1
_MARKERS = ("artifact", "format_version")


class ModelFormatError(ValueError):
    """Stored weights or config (a model's or an artifact's) that this version of siteloc cannot load."""


def dumps(model: LocModel) -> tuple[bytes, dict[str, Any]]:
    arrays = {k: np.ascontiguousarray(v) for k, v in model.arrays().items()}
    config = {"format_version": FORMAT_VERSION, "model": model.name, **model.config()}
    return st_save(arrays), config


def loads(blob: bytes, config: dict[str, Any], device: str = "cpu") -> LocModel:
    _check_version(config, "model")
    try:
        cls = get_model_class(str(config.get("model")))
    except KeyError as exc:
        raise ModelFormatError(str(exc)) from exc
    arrays = st_load(blob)
    return cls.from_state(arrays, config, device=device)


def dump_arrays(
    arrays: Mapping[str, np.ndarray], config: Mapping[str, Any], *, kind: str
) -> tuple[bytes, dict[str, Any]]:
    """(safetensors bytes, JSON config) of an artifact that is not a model: the config marked with
    `artifact` = kind and this build's `format_version` (it must be JSON-serialisable)."""
    marked = {
        "artifact": kind,
        "format_version": FORMAT_VERSION,
        **{k: v for k, v in config.items() if k not in _MARKERS},
    }
    return st_save({k: np.ascontiguousarray(v) for k, v in arrays.items()}), marked


def load_arrays(blob: bytes, config: Mapping[str, Any], *, kind: str) -> dict[str, np.ndarray]:
    """The arrays of a `kind` artifact written by `dump_arrays`; ModelFormatError for another kind or
    an unknown format version."""
    if config.get("artifact") != kind:
        raise ModelFormatError(f"not a {kind!r} artifact (its config says artifact={config.get('artifact')!r})")
    _check_version(config, f"{kind!r} artifact")
    return dict(st_load(blob))


def _check_version(config: Mapping[str, Any], what: str) -> None:
    version = config.get("format_version")
    if version != FORMAT_VERSION:
        raise ModelFormatError(f"unsupported {what} format_version {version!r} (this build reads {FORMAT_VERSION})")
