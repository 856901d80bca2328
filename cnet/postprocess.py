"""``postprocess(outputs, metas) -> detections``: corners, pairing, soft-NMS (paper §4.1).

sigmoid -> 3x3 local maxima -> top-K corners per side -> the matching strategy scores all K x K
pairs -> top ``num_dets`` pairs -> map to image pixels (undo padding) -> per-class Gaussian
soft-NMS -> top ``max_per_image``. With flip TTA both views' raw pairs are merged before NMS.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from cnet.matching.base import Matching, gather_at
from cnet.nms import soft_nms
from cnet.types import Corners, Detections, Grid, ImageMeta, Outputs


def local_maxima(heat: Tensor, kernel: int = 3) -> Tensor:
    """Zero every cell of ``heat`` [B, C, H, W] that is not the max of its k x k window."""
    hmax = F.max_pool2d(heat, kernel, stride=1, padding=(kernel - 1) // 2)
    return heat * (hmax == heat)


def topk_corners(heat: Tensor, off: Tensor, k: int) -> Corners:
    """Top-k cells over classes and positions; heat [B, C, H, W] probabilities, off [B, 2, H, W]."""
    b, c, h, w = heat.shape
    k = min(k, c * h * w)
    scores, idx = heat.reshape(b, -1).topk(k)  # [B, K]
    classes = idx // (h * w)
    inds = idx % (h * w)
    offsets = gather_at(off, inds)  # [B, K, 2]
    xs = (inds % w).to(heat.dtype) + offsets[..., 0]
    ys = (inds // w).to(heat.dtype) + offsets[..., 1]
    return Corners(scores, classes, inds, xs, ys)


def pair_candidates(
    scores: Tensor, tl: Corners, br: Corners, grid: Grid, num_dets: int
) -> list[tuple[Tensor, Tensor, Tensor]]:
    """Best ``num_dets`` valid pairs per image as (boxes [D, 4] input px, scores [D], labels [D])."""
    b, k, _ = scores.shape
    flat = scores.reshape(b, -1)
    top_scores, top_idx = flat.topk(min(num_dets, flat.shape[1]))  # [B, D]
    ti, bi = top_idx // k, top_idx % k
    out = []
    for i in range(b):
        keep = top_scores[i] >= 0  # rejected pairs carry -1
        t, r = ti[i][keep], bi[i][keep]
        boxes = torch.stack(
            [tl.xs[i, t] * grid.ratio_x, tl.ys[i, t] * grid.ratio_y,
             br.xs[i, r] * grid.ratio_x, br.ys[i, r] * grid.ratio_y], dim=-1
        )
        out.append((boxes, top_scores[i][keep], tl.classes[i, t]))
    return out


def to_image(boxes: Tensor, meta: ImageMeta) -> Tensor:
    """Input-pixel boxes [D, 4] -> original-image pixels, clipped to the image."""
    top, left = meta.border
    shift = boxes.new_tensor([left, top, left, top])
    out = (boxes - shift) / meta.scale
    h, w = meta.orig_size
    return torch.stack(
        [out[:, 0].clamp(0, w), out[:, 1].clamp(0, h), out[:, 2].clamp(0, w), out[:, 3].clamp(0, h)],
        dim=-1,
    )


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

    def candidates(self, outputs: Outputs) -> list[tuple[Tensor, Tensor, Tensor]]:
        """Raw scored pairs per batch entry, boxes in input pixels (before NMS)."""
        level, grid = outputs.levels[-1], outputs.grid
        tl = topk_corners(local_maxima(level["tl_heat"].sigmoid(), self.kernel), level["tl_off"], self.corner_topk)
        br = topk_corners(local_maxima(level["br_heat"].sigmoid(), self.kernel), level["br_off"], self.corner_topk)
        scores, _ = self.matching.pair(level, tl, br, grid)
        return pair_candidates(scores, tl, br, grid, self.num_dets)

    @torch.no_grad()
    def __call__(self, outputs: Outputs, metas: list[ImageMeta]) -> list[Detections]:
        cands = self.candidates(outputs)
        if outputs.flipped:  # second half of the batch saw the mirrored input
            n, in_w = len(cands) // 2, outputs.input_size[1]
            merged = []
            for (b0, s0, l0), (b1, s1, l1) in zip(cands[:n], cands[n:]):
                b1 = torch.stack([in_w - b1[:, 2], b1[:, 1], in_w - b1[:, 0], b1[:, 3]], dim=-1)
                merged.append((torch.cat([b0, b1]), torch.cat([s0, s1]), torch.cat([l0, l1])))
            cands = merged
        dets = []
        for (boxes, scores, labels), meta in zip(cands, metas):
            boxes, scores, labels = soft_nms(
                to_image(boxes, meta), scores, labels,
                sigma=self.nms_sigma, min_score=self.nms_min_score, max_dets=self.max_per_image,
            )
            dets.append(Detections(boxes, scores, labels))
        return dets
