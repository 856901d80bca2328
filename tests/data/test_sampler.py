"""GlobalBatchSampler: ranks x accumulation steps cover the same images as one process."""

from __future__ import annotations

import torch

from cnet.data.sampler import GlobalBatchSampler, ShardSampler


def micro_batches(world: int, accum: int, rank: int, epoch: int = 3, start: int = 0) -> list[list[int]]:
    sampler = GlobalBatchSampler(50, batch_size=2, world_size=world, rank=rank, accum_steps=accum)
    sampler.set_epoch(epoch, seed=7, start=start)
    return list(sampler)


def test_two_ranks_see_what_one_process_sees_over_two_accumulation_steps():
    single = micro_batches(1, 2, 0)  # step s: micro-batches 2s, 2s + 1
    rank0, rank1 = micro_batches(2, 1, 0), micro_batches(2, 1, 1)
    assert len(single) == 2 * len(rank0) == 24  # 50 // 4 = 12 steps, the last 2 images dropped
    assert rank0 == single[0::2] and rank1 == single[1::2]
    flat = [i for b in single for i in b]
    assert len(set(flat)) == len(flat) == 48  # no image twice in an epoch


def test_two_ranks_accumulating_two_steps_train_each_step_on_one_process_micro_batches():
    """World 2 x 2 accumulation steps against world 1 x 4: every optimizer step gets the same four
    micro-batches of 2 (same images, same BatchNorm groups), so DDP's step equals accumulation's."""
    single = micro_batches(1, 4, 0)
    ranks = [micro_batches(2, 2, r) for r in (0, 1)]
    assert len(single) == 2 * len(ranks[0]) == 24  # 50 // 8 = 6 steps
    for step in range(6):
        one = sorted(tuple(mb) for mb in single[4 * step : 4 * step + 4])
        two = sorted(tuple(mb) for r in ranks for mb in r[2 * step : 2 * step + 2])
        assert one == two, step


def test_order_depends_on_epoch_and_seed_only():
    assert micro_batches(1, 1, 0, epoch=3) == micro_batches(1, 1, 0, epoch=3)
    assert micro_batches(1, 1, 0, epoch=3) != micro_batches(1, 1, 0, epoch=4)
    a = GlobalBatchSampler(50, 2)
    a.set_epoch(3, seed=8)
    assert list(a) != micro_batches(1, 1, 0, epoch=3)


def test_start_skips_the_micro_batches_already_trained():
    full = micro_batches(1, 2, 0)
    assert micro_batches(1, 2, 0, start=5) == full[5:]
    sampler = GlobalBatchSampler(50, 2, accum_steps=2)
    sampler.set_epoch(3, seed=7, start=5)
    assert len(sampler) == len(full) - 5


def test_one_process_one_step_is_a_plain_shuffled_batching():
    """World 1, no accumulation: consecutive slices of one permutation drawn from the generator."""
    g = torch.Generator()
    sampler = GlobalBatchSampler(10, 3, generator=g)
    sampler.set_epoch(0)
    perm = torch.randperm(10, generator=torch.Generator().manual_seed(1000003)).tolist()
    assert list(sampler) == [perm[0:3], perm[3:6], perm[6:9]]


def test_shards_partition_the_indices():
    shards = [list(ShardSampler(11, 3, r)) for r in range(3)]
    assert sorted(i for s in shards for i in s) == list(range(11))
    assert shards[1] == [1, 4, 7, 10]
