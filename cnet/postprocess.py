"""``postprocess(outputs, metas) -> detections``: corners, pairing, soft-NMS (paper §4.1).

sigmoid -> 3x3 local maxima -> top-K corners per side -> the matching strategy scores all K x K
pairs -> top ``num_dets`` pairs -> map to image pixels (undo padding) -> per-class Gaussian
soft-NMS -> top ``max_per_image``. Test-time views (cnet.predictor) merge their candidates
between ``candidates`` and ``finalize``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from cnet.matching.base import Matching
from cnet.nms import soft_nms
from cnet.ops import local_maxima, topk_cells
from cnet.types import Corners, Detections, Grid, ImageMeta, Outputs, unpad_boxes


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


class PostProcess:
    """Turns the detector's maps into per-image detections.

    Args:
        matching: the strategy that scores corner pairs (the detector's last level).
        corner_topk: corners kept per side (paper: 100).
        num_dets: pairs kept before NMS (CornerNet: 1000).
        max_per_image: detections kept after soft-NMS (paper: 100).
        nms_sigma, nms_min_score: Gaussian soft-NMS parameters (mmdet: 0.5, 1e-3).
        kernel: local-maximum window (3).
    """

    def __init__(
        self,
        matching: Matching,
        corner_topk: int = 100,
        num_dets: int = 1000,
        max_per_image: int = 100,
        nms_sigma: float = 0.5,
        nms_min_score: float = 1e-3,
        kernel: int = 3,
    ) -> None:
        self.matching = matching
        self.corner_topk, self.num_dets, self.max_per_image = corner_topk, num_dets, max_per_image
        self.nms_sigma, self.nms_min_score, self.kernel = nms_sigma, nms_min_score, kernel

    def candidates(self, outputs: Outputs) -> list[Candidates]:
        """Raw scored pairs per batch entry, boxes in input pixels (before NMS)."""
        level, grid = outputs.levels[-1], outputs.grid
        tl = Corners(
            *topk_cells(local_maxima(level["tl_heat"].sigmoid(), self.kernel), level["tl_off"], self.corner_topk)
        )
        br = Corners(
            *topk_cells(local_maxima(level["br_heat"].sigmoid(), self.kernel), level["br_off"], self.corner_topk)
        )
        scores, _ = self.matching.pair(level, tl, br, grid)
        return pair_candidates(scores, tl, br, grid, self.num_dets)

    @torch.no_grad()
    def finalize(self, candidates: list[Candidates], metas: list[ImageMeta]) -> list[Detections]:
        """Per image: input pixels -> original pixels, per-class soft-NMS, top ``max_per_image``."""
        dets = []
        for (boxes, scores, labels), meta in zip(candidates, metas):
            boxes, scores, labels = soft_nms(
                unpad_boxes(boxes, meta),
                scores,
                labels,
                sigma=self.nms_sigma,
                min_score=self.nms_min_score,
                max_dets=self.max_per_image,
            )
            dets.append(Detections(boxes, scores, labels))
        return dets

    @torch.no_grad()
    def __call__(self, outputs: Outputs, metas: list[ImageMeta]) -> list[Detections]:
        """One view per batch entry (no test-time augmentation)."""
        return self.finalize(self.candidates(outputs), metas)
