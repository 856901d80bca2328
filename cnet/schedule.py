"""Learning-rate schedule: linear warm-up, then step decay at epoch milestones (per iteration)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


@dataclass
class ScheduleConfig:
    """``conf/schedule``: epochs, lr decay milestones (epochs), warm-up (iterations), clipping.

    The paper's recipe (schedule=paper, ablation) has no warm-up and no gradient clipping;
    mmdetection's (schedule=mmdet) warms up for 500 iterations and clips the norm at 35.
    """

    epochs: int
    milestones: list[int] = field(default_factory=list)
    gamma: float = 0.1
    warmup_iters: int = 0
    warmup_ratio: float = 1 / 3
    clip_grad: float | None = None  # max gradient L2 norm (None: off)


def warmup_multistep(
    optimizer: Optimizer,
    iters_per_epoch: int,
    milestones: Sequence[int] = (180,),
    gamma: float = 0.1,
    warmup_iters: int = 500,
    warmup_ratio: float = 1 / 3,
) -> LambdaLR:
    """LR factor rises linearly from ``warmup_ratio`` to 1 over ``warmup_iters`` iterations, then is
    multiplied by ``gamma`` at each epoch in ``milestones``. Step it once per iteration.
    """
    steps = sorted(m * iters_per_epoch for m in milestones)

    def factor(it: int) -> float:
        warm = 1.0
        if it < warmup_iters:
            warm = warmup_ratio + (1 - warmup_ratio) * it / warmup_iters
        return warm * gamma ** sum(it >= s for s in steps)

    return LambdaLR(optimizer, factor)
