"""The one training loop and its generic callbacks.

`run_epochs` knows nothing about models: every epoch it puts its modules in train mode, draws
batches, asks a step function for (loss, logs), steps an optimiser and then tells its callbacks.
Scratch training, transfer stages, distillation, fine-tuning, co-training rounds and pretraining
are all this loop with different batches, step functions, parameter groups and callbacks.

Callbacks are called in order after every epoch with the epoch's mean logs; a callback may add
entries to `logs` (a validation score, say) that the callbacks after it see. Every callback sees
every epoch; training stops after an epoch when any of them returns True.

Randomness stays with the caller: batches come from the caller's (seeded, local) generator, so a
refactored training keeps its exact random stream.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Protocol

import torch
from torch import nn

from ml.models.base import ProgressFn

# step(batch) -> (loss to minimise, logs). Logs are averaged over the epoch's batches; a "loss"
# entry replaces the loop's own (detached) loss, e.g. a Python float when the caller wants the
# epoch mean summed in double precision.
StepFn = Callable[[Any], tuple[torch.Tensor, dict[str, Any]]]
StepLoss = StepFn  # the fingerprint networks' name for it


class Callback(Protocol):
    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> bool:
        """Called after every epoch (1-based, counted across stages); return True to stop."""
        ...


def run_epochs(
    modules: Sequence[nn.Module],
    step_loss: StepFn,
    batches: Callable[[], Iterable[Any]],
    opt: torch.optim.Optimizer,
    epochs: int,
    callbacks: Sequence[Callback] = (),
    first_epoch: int = 1,
    *,
    clip_grad_norm: float | None = None,
) -> int:
    """Train for up to `epochs` epochs; returns the last epoch run (first_epoch - 1 if none).

    `clip_grad_norm`: the optimiser's parameters' gradients are clipped to this total norm before
    every step."""
    last = first_epoch - 1
    clipped = [p for g in opt.param_groups for p in g["params"]] if clip_grad_norm is not None else []
    for epoch in range(first_epoch, first_epoch + epochs):
        for m in modules:
            m.train()
        sums: dict[str, Any] = {}
        n = 0
        for batch in batches():
            loss, logs = step_loss(batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if clip_grad_norm is not None:
                nn.utils.clip_grad_norm_(clipped, clip_grad_norm)
            opt.step()
            for k, v in {"loss": loss.detach(), **logs}.items():
                sums[k] = sums[k] + v if k in sums else v
            n += 1
        last = epoch
        means = {k: float(v) / max(n, 1) for k, v in sums.items()}
        stop = [cb.on_epoch_end(epoch, means) for cb in callbacks]  # every callback sees every epoch
        if any(stop):
            break
    return last


def shuffled_indices(
    n: int, batch_size: int, gen: torch.Generator, device: torch.device | None = None, min_rows: int = 1
) -> Iterator[torch.Tensor]:
    """One epoch of shuffled row indices in batches of `batch_size` (the permutation is drawn from
    `gen` on the CPU when the first batch is asked for); batches under `min_rows` rows are dropped
    (BatchNorm needs 2)."""
    perm = torch.randperm(n, generator=gen)
    if device is not None:
        perm = perm.to(device)
    for chunk in perm.split(batch_size):
        if len(chunk) >= min_rows:
            yield chunk


# ---------------------------------------------------------------- generic callbacks


class EarlyStopping:
    """Scores the module after every epoch (lower is better), keeps a copy of its best state and
    stops after `patience` epochs without a better score (None = never stop).

    `score()` may return any object; `key` turns it into the number compared (default: float).
    An epoch is better when its score is below the best one by more than `min_delta`. With
    `baseline`, the module's state before training counts as best with that score; without, the
    first epoch is always best. `name`: the score is also written into the epoch's logs under
    this key, for the callbacks after this one."""

    def __init__(
        self,
        module: nn.Module,
        score: Callable[[], Any],
        *,
        patience: int | None = None,
        min_delta: float = 0.0,
        key: Callable[[Any], float] = float,
        baseline: float | None = None,
        name: str | None = None,
        first_epoch: int = 1,
    ) -> None:
        self.module, self.score, self.key = module, score, key
        self.patience, self.min_delta, self.name = patience, min_delta, name
        self.best: Any = None  # the best epoch's score object
        self.best_value: float | None = baseline
        self.best_epoch = first_epoch - 1
        self.best_state = copy.deepcopy(module.state_dict()) if baseline is not None else None
        self.scores: list[float] = []  # key(score) per epoch
        self.stopped = False  # True once on_epoch_end has asked to stop

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> bool:
        s = self.score()
        value = self.key(s)
        self.scores.append(value)
        if self.name is not None:
            logs[self.name] = value
        if self.best_value is None or value < self.best_value - self.min_delta:
            self.best, self.best_value, self.best_epoch = s, value, epoch
            self.best_state = copy.deepcopy(self.module.state_dict())
        self.stopped = self.patience is not None and epoch - self.best_epoch >= self.patience
        return self.stopped

    def restore(self) -> None:
        """Load the best state kept (nothing if no epoch was scored and there was no baseline)."""
        if self.best_state is not None:
            self.module.load_state_dict(self.best_state)


class LRSchedule:
    """Sets the learning rate of every parameter group to `lr_of(epoch)` before each epoch (1-based):
    the first epoch's now, each next one's at the end of the one before."""

    def __init__(self, opt: torch.optim.Optimizer, lr_of: Callable[[int], float], first_epoch: int = 1) -> None:
        self.opt, self.lr_of = opt, lr_of
        self._set(first_epoch)

    def _set(self, epoch: int) -> None:
        for group in self.opt.param_groups:
            group["lr"] = self.lr_of(epoch)

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> bool:
        self._set(epoch + 1)
        return False


class History:
    """Per-epoch logs (rounded to `digits`; None = as they are), for reports."""

    def __init__(self, digits: int | None = 5) -> None:
        self.digits = digits
        self.rows: list[dict[str, float]] = []

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> bool:
        d = self.digits
        self.rows.append({"epoch": epoch, **{k: v if d is None else round(v, d) for k, v in logs.items()}})
        return False


class ProgressCallback:
    """Reports the fraction [lo, hi] of the run done after each epoch; the message is
    "<what>: epoch e/total, loss x" unless `describe(epoch, logs)` says otherwise."""

    def __init__(
        self,
        progress: ProgressFn,
        total_epochs: int,
        lo: float = 0.0,
        hi: float = 1.0,
        what: str = "training",
        describe: Callable[[int, dict[str, float]], str] | None = None,
    ) -> None:
        self.progress, self.total, self.lo, self.hi, self.what = progress, max(total_epochs, 1), lo, hi, what
        self.describe = describe

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> bool:
        frac = self.lo + (self.hi - self.lo) * min(epoch / self.total, 1.0)
        if self.describe is not None:
            message = self.describe(epoch, logs)
        else:
            message = f"{self.what}: epoch {epoch}/{self.total}, loss {logs.get('loss', float('nan')):.4f}"
        self.progress(frac, message)
        return False


class EveryEpoch:
    """Calls `fn(epoch, logs)` after every epoch (bookkeeping that needs no class of its own)."""

    def __init__(self, fn: Callable[[int, dict[str, float]], None]) -> None:
        self.fn = fn

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> bool:
        self.fn(epoch, logs)
        return False
