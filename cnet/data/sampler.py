"""Which images each process trains on: one global batch per optimizer step, split into micro-batches.

A global batch of ``G = batch_size x world_size x accum_steps`` images is drawn from one
permutation per epoch (every rank draws the same one). Micro-batch ``m`` of rank ``r`` is the
slice ``[(m * world_size + r) * batch_size, ... + batch_size)`` of the step's images, so two
processes with one step each see exactly the images one process sees over two accumulation
steps: the two set-ups train on the same samples, with BatchNorm statistics per micro-batch.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class GlobalBatchSampler(Sampler[list[int]]):
    """Micro-batches of dataset indices for one rank (a ``batch_sampler`` for ``DataLoader``).

    Args:
        num_samples: dataset size; the last incomplete global batch of an epoch is dropped.
        batch_size: images per micro-batch (per process and step).
        world_size, rank: the data-parallel group and this process's place in it.
        accum_steps: micro-batches per optimizer step on each process.
        generator: reseeded by :meth:`set_epoch`; pass the same one to the DataLoader, which
            draws its worker base seed from it first (the order then depends only on the epoch).
    """

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        world_size: int = 1,
        rank: int = 0,
        accum_steps: int = 1,
        generator: torch.Generator | None = None,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside a group of {world_size}")
        self.num_samples, self.batch_size = num_samples, batch_size
        self.world_size, self.rank, self.accum_steps = world_size, rank, accum_steps
        self.generator = generator if generator is not None else torch.Generator()
        self.start = 0  # micro-batches of this epoch already trained (mid-epoch resume)

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.world_size * self.accum_steps

    @property
    def steps_per_epoch(self) -> int:
        """Optimizer steps per epoch."""
        return self.num_samples // self.global_batch

    def set_epoch(self, epoch: int, seed: int = 0, start: int = 0) -> None:
        """Order of ``epoch`` (a function of epoch and seed only); skip the first ``start`` micro-batches."""
        self.generator.manual_seed(1000003 * (epoch + 1) + seed)
        self.start = start

    def __len__(self) -> int:
        return self.steps_per_epoch * self.accum_steps - self.start

    def __iter__(self) -> Iterator[list[int]]:
        perm = torch.randperm(self.num_samples, generator=self.generator).tolist()
        b, w = self.batch_size, self.world_size
        for step in range(self.steps_per_epoch):
            images = perm[step * self.global_batch : (step + 1) * self.global_batch]
            for m in range(self.accum_steps):
                if step * self.accum_steps + m < self.start:
                    continue
                first = (m * w + self.rank) * b
                yield images[first : first + b]


class ShardSampler(Sampler[int]):
    """Every ``world_size``-th index from ``rank``: evaluation split across processes, nothing repeated."""

    def __init__(self, num_samples: int, world_size: int = 1, rank: int = 0) -> None:
        self.indices = list(range(rank, num_samples, world_size))

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)
