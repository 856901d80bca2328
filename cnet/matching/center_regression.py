"""Centre regression: each corner regresses the *linear* offset to its box centre (Table 4).

Paper §4.3 compares the centripetal shift with directly regressing the offset from the
ground-truth corner *on the heatmap* (its integer cell) to the precise centre. The log of that
offset is undefined when rounding makes it negative, so this is the honest linear variant.
Targets (output-map units, signed, no clamping, no log; negative for sub-cell boxes):
    tl_cr = (cx - tl_int_x, cy - tl_int_y),  br_cr = (br_int_x - cx, br_int_y - cy).
Decoding: the centre implied by a corner is its integer cell +/- the gathered offset; pairs are
then tested with CentripetalNet's central-region rule and scored like ``Centripetal``.
"""
from __future__ import annotations

import torch
from torch import Tensor

from cnet.heads import CornerFeatures, kp_layer
from cnet.losses import masked_smooth_l1
from cnet.matching.base import gather_at
from cnet.matching.centripetal import CentralRegionMatching
from cnet.targets import CornerTargets, scatter_at_corners
from cnet.types import Corners, Grid


@torch.no_grad()
def encode_center_regression(corners: CornerTargets, grid: Grid) -> dict[str, Tensor]:
    """Dense linear centre offsets ``tl_cr``/``br_cr`` [B, 2, H, W], written at the corner cells."""
    shape = (len(corners.points), 2, grid.out_h, grid.out_w)
    tl_vals = [p.center - p.tl_int for p in corners.points]  # [N, 2], may be negative
    br_vals = [p.br_int - p.center for p in corners.points]
    return {
        "tl_cr": scatter_at_corners(tl_vals, [p.tl_int for p in corners.points], shape),
        "br_cr": scatter_at_corners(br_vals, [p.br_int for p in corners.points], shape),
    }


def decode_regressed_centers(
    tl: Corners, br: Corners, tl_cr: Tensor, br_cr: Tensor, width: int
) -> tuple[Tensor, Tensor]:
    """Centres implied by each corner [B, K, 2], output-map units: cell + tl_cr, cell - br_cr.

    tl_cr, br_cr: [B, K, 2] gathered offsets; ``width`` is the output map's W (cells from
    ``inds``). The offsets are measured from the integer cell, not the refined corner.
    """
    def cell(c: Corners) -> Tensor:
        return torch.stack([c.inds % width, c.inds // width], dim=-1).to(tl_cr.dtype)

    return cell(tl) + tl_cr, cell(br) - br_cr


class CenterRegression(CentralRegionMatching):
    """Linear centre regression + the centripetal pairing rule (paper §4.3, Table 4).

    Arguments as ``CentralRegionMatching``; ``loss_weight`` weighs the centre-regression loss
    (1, like the centripetal loss).
    """

    def __init__(self, in_channels: int, num_classes: int, **rule: float | bool | None) -> None:
        super().__init__(in_channels, num_classes, **rule)
        self.tl_cr = kp_layer(in_channels, 2)
        self.br_cr = kp_layer(in_channels, 2)

    @property
    def loss_weights(self) -> dict[str, float]:
        return {"center_regression": self._loss_weight}

    def forward(self, feats: CornerFeatures) -> dict[str, Tensor]:
        return {"tl_cr": self.tl_cr(feats.tl), "br_cr": self.br_cr(feats.br)}

    def encode_targets(self, corners: CornerTargets, grid: Grid) -> dict[str, Tensor]:
        return encode_center_regression(corners, grid)

    def loss(
        self, pred: dict[str, Tensor], targets: dict[str, Tensor], corners: CornerTargets
    ) -> dict[str, Tensor]:
        tl = masked_smooth_l1(pred["tl_cr"], targets["tl_cr"], corners.tl_mask)
        br = masked_smooth_l1(pred["br_cr"], targets["br_cr"], corners.br_mask)
        return {"center_regression": (tl + br) / 2}

    def targets_as_predictions(
        self, targets: dict[str, Tensor], corners: CornerTargets
    ) -> dict[str, Tensor]:
        return {"tl_cr": targets["tl_cr"], "br_cr": targets["br_cr"]}

    def decode_centers(
        self, pred: dict[str, Tensor], tl: Corners, br: Corners, grid: Grid
    ) -> tuple[Tensor, Tensor]:
        tl_cr = gather_at(pred["tl_cr"], tl.inds)  # [B, K, 2]
        br_cr = gather_at(pred["br_cr"], br.inds)
        return decode_regressed_centers(tl, br, tl_cr, br_cr, grid.out_w)
