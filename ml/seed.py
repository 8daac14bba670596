"""The one place that seeds random number generators.

`seed_everything` seeds every global generator a training run touches (Python, numpy, torch);
`seed_torch` only torch's (CPU and every CUDA device), for code whose numpy draws come from
local `np.random.default_rng` objects; `seeded` seeds torch for one block and restores the
previous state afterwards (weight initialisation, dropout masks), so the caller's random
stream is left alone. Batch order comes from explicit, local `torch.Generator` objects.
"""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch


def seed_torch(seed: int) -> None:
    import torch

    torch.manual_seed(seed)


def seed_everything(seed: int) -> np.random.Generator:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    os.environ["PYTHONHASHSEED"] = str(seed)
    with contextlib.suppress(ImportError):  # wknn-only installs do not need torch
        seed_torch(seed)
    return np.random.default_rng(seed)


@contextlib.contextmanager
def seeded(seed: int, device: torch.device | None = None) -> Iterator[None]:
    """torch's global RNG seeded for the block and restored afterwards: the CPU generator, and the
    generator of `device` when it is a CUDA device (`torch.manual_seed` reseeds every CUDA device;
    only that one is restored)."""
    import torch

    with torch.random.fork_rng(devices=[device] if device is not None and device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield
