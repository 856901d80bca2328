"""``postprocess(outputs, metas) -> detections``: corners, pairing, soft-NMS (paper §4.1).

sigmoid -> 3x3 local maxima -> top-K corners per side -> the matching strategy scores all K x K
pairs -> top ``num_dets`` pairs -> map to image pixels (undo padding) -> per-class Gaussian
soft-NMS -> top ``max_per_image``. Test-time views (cnet.predictor) merge their candidates
between ``candidates`` and ``finalize``.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor

from cnet.decode import Candidates, decode_candidates, pair_candidates
from cnet.matching.base import Matching
from cnet.nms import soft_nms
from cnet.types import Detections, ImageMeta, Outputs, image_frames, unpad_boxes

__all__ = ["Candidates", "PostProcess", "pair_candidates"]


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

    def candidates(self, outputs: Outputs, origin: Tensor | None = None) -> list[Candidates]:
        """Raw scored pairs per batch entry, boxes in input pixels (before NMS).

        origin: [B, 2] (x, y) input pixels where each entry's image begins (``Grid.origin``).
        """
        grid = replace(outputs.grid, origin=origin)
        return decode_candidates(outputs.levels[-1], grid, self.matching, self.corner_topk, self.num_dets, self.kernel)

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
        return self.finalize(self.candidates(outputs, image_frames(metas)[:, :2]), metas)
