"""Corner maps of one level -> scored box candidates (before NMS), shared by the post-processor and
by second-stage heads that train on the detector's own proposals (the mask head, paper §3.3).

sigmoid -> 3x3 local maxima -> top-K corners per side -> the matching strategy scores all K x K
pairs -> the best ``num_dets`` valid pairs per image, boxes in network-input pixels.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from cnet.matching.base import Matching
from cnet.peaks import top_keypoints
from cnet.types import Corners, Grid


class Candidates(NamedTuple):
    """Scored pairs of one image before NMS: boxes [D, 4] xyxy, scores [D], labels [D]."""

    boxes: Tensor
    scores: Tensor
    labels: Tensor


def pair_candidates(scores: Tensor, tl: Corners, br: Corners, grid: Grid, num_dets: int) -> list[Candidates]:
    """Best ``num_dets`` valid pairs per image, boxes in input pixels."""
    b, k, _ = scores.shape
    flat = scores.reshape(b, -1)
    top_scores, top_idx = flat.topk(min(num_dets, flat.shape[1]))  # [B, D]
    ti, bi = top_idx // k, top_idx % k
    out = []
    for i in range(b):
        keep = top_scores[i] >= 0  # rejected pairs carry -1
        t, r = ti[i][keep], bi[i][keep]
        boxes = torch.stack(
            [
                tl.xs[i, t] * grid.ratio_x,
                tl.ys[i, t] * grid.ratio_y,
                br.xs[i, r] * grid.ratio_x,
                br.ys[i, r] * grid.ratio_y,
            ],
            dim=-1,
        )
        out.append(Candidates(boxes, top_scores[i][keep], tl.classes[i, t]))
    return out


def decode_candidates(
    level: dict[str, Tensor], grid: Grid, matching: Matching, corner_topk: int, num_dets: int, kernel: int = 3
) -> list[Candidates]:
    """One level's maps (``tl_heat``/``br_heat`` [B, C, H, W] logits, offsets, matching maps) ->
    per image the best ``num_dets`` scored pairs, boxes in input pixels, sorted by score."""
    tl = Corners(*top_keypoints(level["tl_heat"].sigmoid(), level["tl_off"], corner_topk, kernel))
    br = Corners(*top_keypoints(level["br_heat"].sigmoid(), level["br_off"], corner_topk, kernel))
    scores = matching.pair(level, tl, br, grid)
    return pair_candidates(scores, tl, br, grid, num_dets)


class ProposalDecoder:
    """``decoder(level, grid, corner_topk, num_dets)``: :func:`decode_candidates` with ``matching``,
    without gradient (cnet.mask_head.base.Decoder).

    The proposals of a second-stage head that trains on the detector's own pairs (the mask head):
    the detector hands one to the head when it builds it, so its forward only routes the maps and
    the head decodes them only if it wants proposals. A plain object, not a module: ``matching``
    stays a part of its corner head (no second copy in the state dict).
    """

    def __init__(self, matching: Matching, kernel: int = 3) -> None:
        self.matching, self.kernel = matching, kernel

    def __call__(self, level: dict[str, Tensor], grid: Grid, corner_topk: int, num_dets: int) -> list[Candidates]:
        with torch.no_grad():  # proposals carry no gradient
            return decode_candidates(level, grid, self.matching, corner_topk, num_dets, self.kernel)
