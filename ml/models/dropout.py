"""Dropout whose stochastic inference passes are chosen per call, not by the network's shared mode.

MC-dropout used to flip `net.train()` / `net.eval()` around its passes and draw from torch's global
RNG. A loaded model is shared by every request of an API process, so two concurrent predictions
could see each other's mode or RNG draws. Networks build `CallDropout` instead of `nn.Dropout`
(same parameters and state dict: none), stay in eval mode while serving, and a caller asks for
stochastic passes inside `stochastic_passes(...)`: a context variable, so it is private to the
calling thread (and task), with its own generator.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class _Passes:
    generator: torch.Generator | None  # None: torch's global generator (training-time co-training passes)
    per_row: bool  # one mask shared by every row: a row's answer does not depend on the rest of the batch


_ACTIVE: ContextVar[_Passes | None] = ContextVar("siteloc_stochastic_dropout", default=None)


@contextmanager
def stochastic_passes(generator: torch.Generator | None = None, *, per_row: bool = False) -> Iterator[None]:
    """Inside the block, every `CallDropout` in eval mode drops units (as in training) for this caller only.

    With `per_row`, each layer draws one mask of a single row's shape and applies it to every row, so a
    query in a batch of n gets exactly the draws it would get alone (the masks depend on the generator's
    state, not on the batch)."""
    token = _ACTIVE.set(_Passes(generator, per_row))
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def seeded_generator(seed: int, device: torch.device) -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    return g


class CallDropout(nn.Dropout):
    """`nn.Dropout` in training mode; in eval mode the identity unless the caller is inside `stochastic_passes`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            return super().forward(x)
        passes = _ACTIVE.get()
        if passes is None or self.p == 0.0:
            return x
        if self.p >= 1.0:
            return torch.zeros_like(x)
        shape = (1, *x.shape[1:]) if passes.per_row else x.shape
        # The same draws as ATen's CPU dropout: bernoulli(1 - p) noise scaled by 1 / (1 - p).
        noise = torch.empty(shape, dtype=x.dtype, device=x.device).bernoulli_(1 - self.p, generator=passes.generator)
        noise.div_(1 - self.p)
        return x * noise
