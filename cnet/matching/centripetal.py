"""CentripetalNet's matching: each corner regresses a log "centripetal shift" to its box centre.

Targets (Eq. 1, output-map units, measured from the float corner to the float centre):
    tl_cs = (ln(cx - tl_x), ln(cy - tl_y)),  br_cs = (ln(br_x - cx), ln(br_y - cy)).
Pairing (Eqs. 3-5): a pair is kept when both decoded centres fall strictly inside the central
region of the box it spans; the score is re-weighted by how close the two centres are.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from cnet.losses import masked_smooth_l1
from cnet.matching.base import Matching
from cnet.ops import gather_at
from cnet.parts import CornerFeatures, kp_layer
from cnet.targets import CornerTargets, scatter_at_corners
from cnet.types import Corners, Grid

# exp() of an untrained shift can overflow; e^10 cells is far beyond any map size
_MAX_LOG_SHIFT = 10.0
# a corner sitting on its centre would give ln(0); crops can leave sub-cell boxes
_MIN_SHIFT = 1e-3


@torch.no_grad()
def encode_centripetal(corners: CornerTargets, grid: Grid) -> dict[str, Tensor]:
    """Dense log-shift targets ``tl_cs``/``br_cs`` [B, 2, H, W], written at the corner cells."""
    shape = (len(corners.points), 2, grid.out_h, grid.out_w)
    tl_vals = [(p.center - p.tl).clamp(min=_MIN_SHIFT).log() for p in corners.points]  # [N, 2]
    br_vals = [(p.br - p.center).clamp(min=_MIN_SHIFT).log() for p in corners.points]
    return {
        "tl_cs": scatter_at_corners(tl_vals, [p.tl_int for p in corners.points], shape),
        "br_cs": scatter_at_corners(br_vals, [p.br_int for p in corners.points], shape),
    }


def centers_from_shifts(tl: Corners, br: Corners, tl_cs: Tensor, br_cs: Tensor) -> tuple[Tensor, Tensor]:
    """Centres implied by each corner, output-map units: tl + e^cs, br - e^cs -> [B, K, 2] each."""
    tl_xy = torch.stack([tl.xs, tl.ys], dim=-1)
    br_xy = torch.stack([br.xs, br.ys], dim=-1)
    tl_ct = tl_xy + tl_cs.clamp(max=_MAX_LOG_SHIFT).exp()
    br_ct = br_xy - br_cs.clamp(max=_MAX_LOG_SHIFT).exp()
    return tl_ct, br_ct


def central_region_rule(
    tl: Corners,
    br: Corners,
    tl_ct: Tensor,
    br_ct: Tensor,
    grid: Grid,
    mu_large: float,
    mu_small: float,
    area_threshold: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """Central-region test of all K x K pairs (Eqs. 3-4), in input pixels.

    tl_ct, br_ct: [B, K, 2] decoded centres (output-map units). Returns ``inside`` [B, K, K]
    (both centres strictly inside), the centre distance product |dx|*|dy| [B, K, K] and the
    central-region area [B, K, K], both in input pixels squared.
    """
    rx, ry = grid.ratio_x, grid.ratio_y
    x1, y1 = tl.xs[:, :, None] * rx, tl.ys[:, :, None] * ry  # [B, K, 1]
    x2, y2 = br.xs[:, None, :] * rx, br.ys[:, None, :] * ry  # [B, 1, K]
    w, h = x2 - x1, y2 - y1  # [B, K, K]
    mu = torch.where((w * h).abs() > area_threshold, mu_large, mu_small)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    rx1, rx2 = cx - mu * w / 2, cx + mu * w / 2
    ry1, ry2 = cy - mu * h / 2, cy + mu * h / 2
    tcx, tcy = tl_ct[..., 0][:, :, None] * rx, tl_ct[..., 1][:, :, None] * ry  # [B, K, 1]
    bcx, bcy = br_ct[..., 0][:, None, :] * rx, br_ct[..., 1][:, None, :] * ry  # [B, 1, K]
    inside = (
        (tcx > rx1) & (tcx < rx2) & (tcy > ry1) & (tcy < ry2) & (bcx > rx1) & (bcx < rx2) & (bcy > ry1) & (bcy < ry2)
    )
    dist = (bcx - tcx).abs() * (bcy - tcy).abs()
    region_area = ((rx2 - rx1) * (ry2 - ry1)).abs()
    return inside, dist, region_area


class CentralRegionMatching(Matching):
    """Pairs corners whose decoded centres both fall in the box's central region (Eqs. 3-5).

    Subclasses say how a corner decodes its centre (``implied_centers``); the pairing rule, its
    paper/mmdet/authors variants and the score are shared here.

    Args:
        in_channels: channels of the (adapted) corner feature.
        num_classes: number of object classes (unused by the layers, kept for the interface).
        mu_large: central-region scale for boxes with area > ``area_threshold`` (paper: 1/2.1).
        mu_small: central-region scale for the other boxes (paper: 1/2.4). The authors' release
            swaps the two (``conf/matching/centripetal_authors.yaml``).
        area_threshold: box area in input pixels that separates the two scales.
        geometric_mean: pair score = sqrt(s_tl * s_br) (paper) or (s_tl + s_br) / 2 (code).
        center_weight: multiply the score by Eq. 5's exp(-|dx||dy| / area(R_central)) (paper).
        max_center_ratio: reject pairs with |dx||dy| / area(R_central) above this (mmdet: 0.5).
        loss_weight: weight of the strategy's regression loss (Eq. 9: 1).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        mu_large: float = 1 / 2.1,
        mu_small: float = 1 / 2.4,
        area_threshold: float = 3500.0,
        geometric_mean: bool = True,
        center_weight: bool = True,
        max_center_ratio: float | None = None,
        loss_weight: float = 1.0,
    ) -> None:
        super().__init__(in_channels, num_classes)
        if not (0 < mu_large <= 1 and 0 < mu_small <= 1):
            raise ValueError(f"matching.mu_large/mu_small must lie in (0, 1], got {mu_large}, {mu_small}")
        self.mu_large, self.mu_small, self.area_threshold = mu_large, mu_small, area_threshold
        self.geometric_mean, self.center_weight = geometric_mean, center_weight
        self.max_center_ratio = max_center_ratio
        self._loss_weight = loss_weight

    def implied_centers(self, pred: dict[str, Tensor], tl: Corners, br: Corners, grid: Grid) -> tuple[Tensor, Tensor]:
        """Centres [B, K, 2] (output-map units) implied by each top-left and bottom-right corner."""
        raise NotImplementedError

    def pair(self, pred: dict[str, Tensor], tl: Corners, br: Corners, grid: Grid) -> Tensor:
        tl_ct, br_ct = self.implied_centers(pred, tl, br, grid)
        return self.score_pairs(tl, br, tl_ct, br_ct, grid)

    def score_pairs(self, tl: Corners, br: Corners, tl_ct: Tensor, br_ct: Tensor, grid: Grid) -> Tensor:
        """Scores [B, K, K] of all pairs (-1: rejected) from corners and centres [B, K, 2] in ``grid``'s map units."""
        inside, dist, region_area = central_region_rule(
            tl, br, tl_ct, br_ct, grid, self.mu_large, self.mu_small, self.area_threshold
        )
        # Eq. 5: the closer the two centres, relative to the central region, the higher the score
        ratio = dist / region_area.clamp(min=1e-6)
        scores = self.mean_score(tl, br, geometric=self.geometric_mean)
        if self.center_weight:
            scores = scores * torch.exp(-ratio)
        valid = self.geometric_validity(tl, br) & inside
        if self.max_center_ratio is not None:
            valid &= ratio <= self.max_center_ratio
        return torch.where(valid, scores, torch.full_like(scores, -1.0))


class Centripetal(CentralRegionMatching):
    """Centripetal shift matching (paper §3.1): log shifts from each corner to its centre.

    Arguments as ``CentralRegionMatching``; ``loss_weight`` weighs the centripetal loss.
    """

    def __init__(self, in_channels: int, num_classes: int, **rule: Any) -> None:
        super().__init__(in_channels, num_classes, **rule)
        self.tl_cs = kp_layer(in_channels, 2)
        self.br_cs = kp_layer(in_channels, 2)

    @property
    def loss_weights(self) -> dict[str, float]:
        return {"centripetal": self._loss_weight}

    def forward(self, feats: CornerFeatures) -> dict[str, Tensor]:
        return {"tl_cs": self.tl_cs(feats.tl), "br_cs": self.br_cs(feats.br)}

    def encode_targets(self, corners: CornerTargets, grid: Grid) -> dict[str, Tensor]:
        return encode_centripetal(corners, grid)

    def loss(self, pred: dict[str, Tensor], targets: dict[str, Tensor], corners: CornerTargets) -> dict[str, Tensor]:
        tl = masked_smooth_l1(pred["tl_cs"], targets["tl_cs"], corners.tl_mask)
        br = masked_smooth_l1(pred["br_cs"], targets["br_cs"], corners.br_mask)
        return {"tl_centripetal": tl, "br_centripetal": br}  # joined by the criterion

    def targets_as_predictions(self, targets: dict[str, Tensor], corners: CornerTargets) -> dict[str, Tensor]:
        return {"tl_cs": targets["tl_cs"], "br_cs": targets["br_cs"]}

    def implied_centers(self, pred: dict[str, Tensor], tl: Corners, br: Corners, grid: Grid) -> tuple[Tensor, Tensor]:
        tl_cs = gather_at(pred["tl_cs"], tl.inds)  # [B, K, 2]
        br_cs = gather_at(pred["br_cs"], br.inds)
        return centers_from_shifts(tl, br, tl_cs, br_cs)
