"""Learning-rate schedule: linear warm-up, then step decay at epoch milestones (per iteration)."""

from __future__ import annotations

from collections.abc import Sequence

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


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
