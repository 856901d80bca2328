"""Gaussian soft-NMS, per class, vectorised across classes (docs/implementation_facts.md §6 item 12).

Convention of mmcv's ``soft_nms(method='gaussian')`` as used by mmdetection's CentripetalHead:
every remaining box of the picked box's class is decayed by ``exp(-IoU^2 / sigma)`` (no IoU
threshold in gaussian mode), IoU has no +1 pixel offset, and the *decayed* scores are returned.
"""

from __future__ import annotations

import torch
from torch import Tensor

# Rounds between early-stop checks: each check is a host sync (costly on CUDA); extra rounds
# only add picks that the final top-k discards.
_STOP_CHECK_EVERY = 4


def _group_by_class(labels: Tensor) -> tuple[Tensor, Tensor, Tensor, int]:
    """Slot every box into a padded per-class layout.

    labels: [N] int64 -> (order [N] box index per sorted position, cls_idx [N] row in [0, C),
    rank [N] column in [0, Nmax), Nmax) where C is the number of distinct labels.
    """
    order = torch.argsort(labels, stable=True)
    _, counts = torch.unique_consecutive(labels[order], return_counts=True)
    cls_idx = torch.repeat_interleave(torch.arange(counts.numel(), device=labels.device), counts)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(labels.numel(), device=labels.device) - starts[cls_idx]
    return order, cls_idx, rank, int(counts.max())


def soft_nms(
    boxes: Tensor,
    scores: Tensor,
    labels: Tensor,
    sigma: float = 0.5,
    min_score: float = 1e-3,
    max_dets: int = 100,
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-class Gaussian soft-NMS.

    boxes: [N, 4] xyxy (any pixel frame); scores: [N]; labels: [N] int64 class index.
    Returns (keep_boxes [D, 4], keep_scores [D] decayed, keep_labels [D]), D <= max_dets,
    sorted by decayed score, descending, on the input's device.

    Within each class the highest-scoring remaining box is picked, then every other remaining box
    of that class gets ``s <- s * exp(-IoU^2 / sigma)``; boxes whose score is (or falls) below
    ``min_score`` are dropped. All classes advance in lock-step on padded [C, Nmax] tensors, so the
    python loop runs at most max-boxes-per-class times, and stops early once ``max_dets`` picks
    are known to beat everything still alive (picked scores never increase within a class).
    """
    if sigma <= 0:
        raise ValueError(f"soft_nms: sigma must be > 0, got {sigma}")
    if boxes.ndim != 2 or boxes.shape[-1] != 4 or scores.shape != labels.shape or scores.shape[0] != boxes.shape[0]:
        raise ValueError(
            f"soft_nms: expected boxes [N, 4], scores [N], labels [N]; got {tuple(boxes.shape)}, "
            f"{tuple(scores.shape)}, {tuple(labels.shape)}"
        )
    valid = scores >= min_score
    boxes, scores, labels = boxes[valid], scores[valid], labels[valid]
    if scores.numel() == 0 or max_dets <= 0:
        return boxes.new_zeros((0, 4)), scores.new_zeros((0,)), labels.new_zeros((0,))

    order, cls_idx, rank, n_max = _group_by_class(labels)
    num_cls = int(cls_idx[-1]) + 1
    dtype = torch.promote_types(boxes.dtype, torch.float32)
    device = scores.device
    # Padded per-class layout, one contiguous [C, Nmax] plane each: x1, y1, x2, y2, area.
    pad_geo = torch.zeros((5, num_cls, n_max), dtype=dtype, device=device)
    sorted_boxes = boxes[order].to(dtype)
    pad_geo[:4, cls_idx, rank] = sorted_boxes.T
    pad_geo[4, cls_idx, rank] = (sorted_boxes[:, 2] - sorted_boxes[:, 0]).clamp(min=0) * (
        sorted_boxes[:, 3] - sorted_boxes[:, 1]
    ).clamp(min=0)
    x1, y1, x2, y2, area = pad_geo.unbind(0)  # each [C, Nmax]
    # Dead and padded slots hold -inf, so a row max is the best alive box of that class.
    pad_scores = torch.full((num_cls, n_max), float("-inf"), dtype=dtype, device=device)
    pad_scores[cls_idx, rank] = scores[order].to(dtype)
    pad_src = torch.full((num_cls, n_max), -1, dtype=torch.long, device=device)  # slot -> input index
    pad_src[cls_idx, rank] = order

    neg_inf = torch.tensor(float("-inf"), dtype=dtype, device=device)
    tiny = torch.finfo(dtype).tiny
    pick_scores: list[Tensor] = []  # each [C]; -inf where the class had nothing left
    pick_src: list[Tensor] = []  # each [C]
    best = neg_inf.expand(max_dets)  # [max_dets] the best picks so far (-inf until there are enough)
    for it in range(n_max):
        top_score, top_col = pad_scores.max(dim=1)  # [C], [C]
        col = top_col[:, None]  # [C, 1]
        pick_scores.append(top_score)
        pick_src.append(pad_src.gather(1, col)[:, 0])
        pad_scores.scatter_(1, col, float("-inf"))

        px1, py1, px2, py2, parea = pad_geo.gather(2, col[None].expand(5, -1, -1)).unbind(0)  # [C, 1]
        iw = (torch.minimum(x2, px2) - torch.maximum(x1, px1)).clamp_(min=0)
        ih = (torch.minimum(y2, py2) - torch.maximum(y1, py1)).clamp_(min=0)
        inter = iw * ih
        iou = inter / (area + parea - inter).clamp_(min=tiny)  # [C, Nmax], 0 for degenerate pairs
        decayed = pad_scores * torch.exp(iou.square_().mul_(-1.0 / sigma))
        # NaN (-inf * 0 after exp underflow) also fails the test and stays dead.
        pad_scores = torch.where(decayed >= min_score, decayed, neg_inf)

        # Picked scores never increase within a class: stop once the max_dets-th best pick
        # beats everything alive. Checked every few rounds to limit host syncs.
        if it % _STOP_CHECK_EVERY == _STOP_CHECK_EVERY - 1:
            best = torch.topk(torch.cat([best, *pick_scores[-_STOP_CHECK_EVERY:]]), max_dets).values
            if bool(best[-1] >= pad_scores.max()):
                break

    all_scores = torch.cat(pick_scores)
    all_src = torch.cat(pick_src)
    keep = all_scores > neg_inf
    all_scores, all_src = all_scores[keep], all_src[keep]
    top = torch.topk(all_scores, min(max_dets, all_scores.numel()))  # sorted, descending
    src = all_src[top.indices]
    return boxes[src], top.values.to(scores.dtype), labels[src]
