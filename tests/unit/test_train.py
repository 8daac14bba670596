"""The one training loop (ml.train): a tiny seeded regression, early stopping, LR schedule, clipping."""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from ml.seed import seeded
from ml.train import EarlyStopping, EveryEpoch, History, LRSchedule, run_epochs, shuffled_indices


def _problem() -> tuple[nn.Linear, torch.Tensor, torch.Tensor]:
    with seeded(0):
        x = torch.randn(64, 3)
        y = x @ torch.tensor([[1.0], [-2.0], [0.5]]) + 0.3
        net = nn.Linear(3, 1)
    return net, x, y


def _train(epochs: int, callbacks: list, clip: float | None = None) -> tuple[nn.Linear, int, torch.optim.SGD]:
    net, x, y = _problem()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    gen = torch.Generator().manual_seed(0)

    def step(b: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        return nn.functional.mse_loss(net(x[b]), y[b]), {}

    batches = partial(shuffled_indices, len(x), 16, gen)
    last = run_epochs([net], step, batches, opt, epochs, callbacks, clip_grad_norm=clip)
    return net, last, opt


def test_loss_falls_and_a_seed_gives_the_same_weights() -> None:
    history = History()
    net, last, _ = _train(20, [history])
    assert last == 20 and history.rows[-1]["loss"] < 0.05 * history.rows[0]["loss"]
    again, _, _ = _train(20, [])
    assert torch.equal(net.weight, again.weight) and torch.equal(net.bias, again.bias)
    clipped, _, _ = _train(20, [], clip=1e-3)
    assert not torch.equal(net.weight, clipped.weight)


def test_early_stopping_restores_the_best_epoch_and_stops_after_patience() -> None:
    scores = iter([3.0, 2.0, 2.5, 2.2, 2.1, 1.0])
    seen: list[float] = []
    net, _, _ = _problem()
    es = EarlyStopping(net, lambda: next(scores), patience=3, name="val")
    log = EveryEpoch(lambda epoch, logs: seen.append(logs["val"]))  # a later callback sees the score
    _, last, _ = _train(10, [es, log])
    assert last == 5 and es.stopped and es.best_epoch == 2 and es.scores == [3.0, 2.0, 2.5, 2.2, 2.1]
    assert seen == es.scores


def test_lr_schedule_sets_each_epochs_rate_before_it_runs() -> None:
    rates: list[float] = []
    net, _, _ = _problem()
    opt = torch.optim.SGD(net.parameters(), lr=1.0)
    sched = LRSchedule(opt, lambda epoch: 0.1 * epoch)
    assert opt.param_groups[0]["lr"] == 0.1
    for epoch in (1, 2, 3):
        rates.append(opt.param_groups[0]["lr"])
        sched.on_epoch_end(epoch, {})
    assert rates == [0.1, 0.2, 0.1 * 3]
