"""The LR schedule: linear warm-up from warmup_ratio, then x gamma at each epoch milestone."""

from __future__ import annotations

import pytest
import torch

from cnet.schedule import warmup_multistep

# 10 iterations per epoch, milestones at epochs 3 and 5 -> iterations 30 and 50; warm-up 20 iterations
EXPECTED = [
    (0, 1 / 3),  # warm-up starts at warmup_ratio
    (10, 1 / 3 + (2 / 3) * 10 / 20),  # halfway: 2/3
    (19, 1 / 3 + (2 / 3) * 19 / 20),
    (20, 1.0),  # end of warm-up
    (29, 1.0),
    (30, 0.1),  # first milestone
    (49, 0.1),
    (50, 0.01),  # second milestone
    (200, 0.01),
]


def _scheduler(base_lr: float = 0.3):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=base_lr)
    return opt, warmup_multistep(opt, iters_per_epoch=10, milestones=(5, 3), gamma=0.1, warmup_iters=20)


@pytest.mark.parametrize("it, factor", EXPECTED)
def test_factor_at_iteration(it: int, factor: float):
    _, sched = _scheduler()
    assert sched.lr_lambdas[0](it) == pytest.approx(factor)


def test_stepping_once_per_iteration_sets_the_optimizer_lr():
    opt, sched = _scheduler(base_lr=0.3)
    seen = {}
    for it in range(60):
        seen[it] = opt.param_groups[0]["lr"]
        opt.step()
        sched.step()
    for it, factor in EXPECTED:
        if it in seen:
            assert seen[it] == pytest.approx(0.3 * factor), it


def test_milestone_inside_warm_up_multiplies_the_ramp():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = warmup_multistep(opt, iters_per_epoch=4, milestones=(1,), gamma=0.5, warmup_iters=8, warmup_ratio=0.0)
    assert sched.lr_lambdas[0](4) == pytest.approx(0.5 * 4 / 8)
