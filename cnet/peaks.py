"""Top-k local maxima of a heatmap without suppressing and ranking every cell (the CPU decode's
hot spot: two 80 x 128 x 128 maps per image; ~2 ms instead of ~30 ms a map on one core).

``top_peak_indices(heat, k, kernel)`` returns exactly ``local_maxima(heat, kernel).reshape(B, -1).topk(k)``:
values, indices *and the order of ties*. Why a shorter row gives the same answer: on the CPU,
``torch.topk`` with ``64 k <= n`` (n cells per row) is a heap selection over the row in index
order. The first k cells fill a heap; a later cell enters it only if its value is strictly greater
than the heap's minimum, which is then the k-th largest value seen so far. The output, ties
included, depends only on the first k cells and the cells that enter, so removing cells that never
enter (keeping the order) changes nothing. The row handed to ``topk`` here is:

* the "head": the exact suppressed map of the fewest whole classes holding >= k cells;
* then, class range by class range (first as many classes as the head, then each range
  ``_STAGE_GROWTH`` times the classes before it), the cells above a floor that are local maxima.
  The floor is the k-th largest suppressed value found so far, a subset's, so at most the heap's
  minimum when the range starts: every cell left out is <= the floor or suppressed to 0, and 0
  never enters a heap of values >= 0;
* zeros at the end, so the row keeps ``64 k <= n'`` (the same heap-selection algorithm).

A cell above the floor is tested by gathering its k x k window, clamped at the border (a clamped
neighbour lies inside the window, so, like max_pool2d's -inf padding, it changes no maximum; NaN
propagates through both maxima). Elsewhere (CUDA, small maps, even kernels) the plain computation
runs. The argument rests on how torch's CPU topk works: tests/test_decode_speed.py compares the two,
ties included, so a torch release that selects differently fails there rather than silently.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from cnet.ops import cells_from_flat, local_maxima

# Each stage covers this many times the classes before it (the floor rises as they grow).
_STAGE_GROWTH = 4
# Cells per block of the coarse "any cell above the floor?" pass (a divisor of H W). Small, so the
# blocks one stage searches (~300 x 64 cells an image at COCO scale) usually stay below torch's
# parallel grain (32768): fewer thread hand-offs, which cost most on a busy machine.
_BLOCK = 64
# torch's CPU topk uses a heap selection when 64 k <= n (nth_element + sort otherwise)
_HEAP_RATIO = 64


def top_peak_indices(heat: Tensor, k: int, kernel: int = 3) -> tuple[Tensor, Tensor]:
    """Top-k of the k x k local maxima of ``heat`` [B, C, H, W] (values >= 0, e.g. sigmoid maps).

    Returns ``(scores, idx)``, each [B, K] with K = min(k, C H W), idx flat over (C, H, W): equal
    to ``local_maxima(heat, kernel).reshape(B, -1).topk(k)`` bit for bit.
    """
    b, c, h, w = heat.shape
    n, hw = c * h * w, h * w
    k = min(k, n)
    head = -(-k // hw)  # classes of the head: the fewest holding >= k cells
    if heat.device.type != "cpu" or kernel % 2 == 0 or k < 1 or _HEAP_RATIO * k > n or head >= c:
        return local_maxima(heat, kernel).reshape(b, n).topk(k)

    flat = heat.reshape(b, n).contiguous()  # blocks of bs cells are rows of flat.view(-1, bs)
    head_vals = _local_maxima_small(heat[:, :head], kernel).reshape(b, head * hw)  # exact, [B, head HW]
    best = head_vals.topk(k).values  # [B, K] the k largest values seen so far (a subset's)
    # Blocks of bs cells after the head and their maxima, in one pass over the map.
    bs = math.gcd(hw, _BLOCK)
    block_max = flat[:, head * hw :].reshape(b, -1, bs).amax(dim=2)  # [B, L]
    found: list[tuple[Tensor, Tensor, Tensor]] = []  # per stage: rows, flat positions, values [N]
    start = head
    while start < c:  # stages of growing class ranges, each against the floor of all before it
        stop = min(c, start * _STAGE_GROWTH if start > head else 2 * head)  # the head's floor is weakest
        rows, pos, vals = _cells_above(flat, block_max, best[:, -1:], start * hw, stop * hw, bs)
        peak = vals == _window_max(flat, rows, pos, c, h, w, kernel)
        rows, pos, vals = rows[peak], pos[peak], vals[peak]
        found.append((rows, pos, vals))
        best = _merge_best(best, rows, vals)
        start = stop
    rows, pos, vals = (torch.cat(t) for t in zip(*found))
    order = torch.argsort(rows, stable=True)  # by row; positions stay ascending within a row
    rows, pos, vals = rows[order], pos[order], vals[order]

    # Reduced rows [B, n']: head, then the row's peaks in index order, then zeros.
    counts = torch.bincount(rows, minlength=b)
    width = max(head * hw + int(counts.max()), _HEAP_RATIO * k)
    col = head * hw + _rank_in_row(rows, counts)
    red_vals = heat.new_zeros((b, width))
    red_vals[:, : head * hw] = head_vals
    red_vals[rows, col] = vals
    red_pos = torch.zeros((b, width), dtype=torch.long)  # reduced column -> flat cell index
    red_pos[:, : head * hw] = torch.arange(head * hw)
    red_pos[rows, col] = pos
    scores, red_idx = red_vals.topk(k)
    return scores, red_pos.gather(1, red_idx)


def top_keypoints(heat: Tensor, off: Tensor, k: int, kernel: int = 3) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``topk_cells(local_maxima(heat, kernel), off, k)`` bit for bit: the top-k peaks of ``heat``
    [B, C, H, W] (probabilities) refined by ``off`` [B, 2, H, W] -> ``(scores, classes, inds, xs,
    ys)``, each [B, K]."""
    scores, idx = top_peak_indices(heat, k, kernel)
    return cells_from_flat(scores, idx, heat, off)


def _rank_in_row(rows: Tensor, counts: Tensor) -> Tensor:
    """Position of each entry among its row's entries: rows [N] sorted, counts [B] -> [N]."""
    starts = torch.cumsum(counts, 0) - counts
    return torch.arange(rows.numel()) - starts[rows]


def _merge_best(best: Tensor, rows: Tensor, vals: Tensor) -> Tensor:
    """The k largest of ``best`` [B, K] and the new values ``vals`` [N] of rows ``rows`` [N]."""
    if rows.numel() == 0:
        return best
    counts = torch.bincount(rows, minlength=best.shape[0])
    new = best.new_zeros((best.shape[0], int(counts.max())))  # zeros: never above a value >= 0
    new[rows, _rank_in_row(rows, counts)] = vals
    return torch.cat([best, new], dim=1).topk(best.shape[1]).values


def _cells_above(
    flat: Tensor, block_max: Tensor, floor: Tensor, lo: int, hi: int, bs: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Cells [lo, hi) of ``flat`` [B, n] above ``floor`` [B, 1], given the maxima ``block_max``
    [B, L] of the blocks of bs cells from ``n - L bs`` on: (row, flat position, value), each [N],
    in index order. (index_select, unlike indexing a large tensor, spawns no threads for few rows.)"""
    n, first = flat.shape[1], flat.shape[1] // bs - block_max.shape[1]  # first: block of block_max[:, 0]
    # a NaN block max hides the block's other cells: such blocks are searched too
    sel = (block_max[:, lo // bs - first : hi // bs - first] <= floor).logical_not_()
    blk_b, blk_i = sel.nonzero(as_tuple=True)  # [M] each
    blk = blk_i + lo // bs  # block index within the row
    cells = flat.view(-1, bs).index_select(0, blk_b * (n // bs) + blk)  # [M, bs]
    hit, col = (cells > floor[blk_b]).nonzero(as_tuple=True)  # [N] each
    return blk_b[hit], blk[hit] * bs + col, cells[hit, col]


def _local_maxima_small(heat: Tensor, kernel: int) -> Tensor:
    """:func:`cnet.ops.local_maxima` of a small [B, C, H, W] map, with the window max taken as a
    row max then a column max of shifted slices (max is exact and NaN-propagating either way;
    CPU max_pool2d is slow on a few channels)."""
    r = (kernel - 1) // 2
    rows = heat.clone()
    for d in range(1, r + 1):  # x - d and x + d, wherever they exist (max_pool2d pads with -inf)
        rows[..., d:] = torch.maximum(rows[..., d:], heat[..., :-d])
        rows[..., :-d] = torch.maximum(rows[..., :-d], heat[..., d:])
    hmax = rows.clone()
    for d in range(1, r + 1):
        hmax[..., d:, :] = torch.maximum(hmax[..., d:, :], rows[..., :-d, :])
        hmax[..., :-d, :] = torch.maximum(hmax[..., :-d, :], rows[..., d:, :])
    return torch.where(heat == hmax, heat, heat.new_zeros(()))


def _window_max(flat: Tensor, rows: Tensor, pos: Tensor, c: int, h: int, w: int, kernel: int) -> Tensor:
    """Max of the ``kernel`` x ``kernel`` window around cells ``pos`` [N] of rows ``rows`` [N] of
    ``flat`` [B, C H W]: [N], as max_pool2d (stride 1, same padding) gives at those cells."""
    r = (kernel - 1) // 2
    plane = rows * (c * h * w) + pos - pos % (h * w)  # [N] start of the cell's class plane
    y, x = (pos % (h * w)) // w, pos % w
    d = torch.arange(-r, r + 1)
    ny = (y[:, None] + d).clamp_(0, h - 1)  # [N, k]
    nx = (x[:, None] + d).clamp_(0, w - 1)
    nbr = plane[:, None, None] + ny[:, :, None] * w + nx[:, None, :]  # [N, k, k]
    return flat.reshape(-1).index_select(0, nbr.reshape(-1)).reshape(len(pos), kernel * kernel).amax(dim=1)
