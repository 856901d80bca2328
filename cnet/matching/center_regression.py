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

from typing import Any

import torch
from torch import Tensor

from cnet.losses import masked_smooth_l1
from cnet.matching.centripetal import CentralRegionMatching
from cnet.ops import cell_xy, gather_at
from cnet.parts import CornerFeatures, kp_layer
from cnet.targets import CornerTargets, cell_to_center_targets
from cnet.types import Corners, Grid


@torch.no_grad()
def encode_center_regression(corners: CornerTargets, grid: Grid) -> dict[str, Tensor]:
    """Dense linear centre offsets ``tl_cr``/``br_cr`` [B, 2, H, W], written at the corner cells."""
    return cell_to_center_targets(corners, grid, "tl_cr", "br_cr")


def centers_from_offsets(tl: Corners, br: Corners, tl_cr: Tensor, br_cr: Tensor, width: int) -> tuple[Tensor, Tensor]:
    """Centres implied by each corner [B, K, 2], output-map units: cell + tl_cr, cell - br_cr.

    tl_cr, br_cr: [B, K, 2] gathered offsets; ``width`` is the output map's W (cells from
    ``inds``). The offsets are measured from the integer cell, not the refined corner.
    """
    return cell_xy(tl.inds, width, tl_cr.dtype) + tl_cr, cell_xy(br.inds, width, br_cr.dtype) - br_cr


class CenterRegression(CentralRegionMatching):
    """Linear centre regression + the centripetal pairing rule (paper §4.3, Table 4).

    Arguments as ``CentralRegionMatching``; ``loss_weight`` weighs the centre-regression loss
    (1, like the centripetal loss).
    """

    def __init__(self, in_channels: int, num_classes: int, **rule: Any) -> None:
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

    def loss(self, pred: dict[str, Tensor], targets: dict[str, Tensor], corners: CornerTargets) -> dict[str, Tensor]:
        tl = masked_smooth_l1(pred["tl_cr"], targets["tl_cr"], corners.tl_mask)
        br = masked_smooth_l1(pred["br_cr"], targets["br_cr"], corners.br_mask)
        return {"tl_center_regression": tl, "br_center_regression": br}  # joined by the criterion

    def targets_as_predictions(self, targets: dict[str, Tensor], corners: CornerTargets) -> dict[str, Tensor]:
        return {"tl_cr": targets["tl_cr"], "br_cr": targets["br_cr"]}

    def implied_centers(self, pred: dict[str, Tensor], tl: Corners, br: Corners, grid: Grid) -> tuple[Tensor, Tensor]:
        tl_cr = gather_at(pred["tl_cr"], tl.inds)  # [B, K, 2]
        br_cr = gather_at(pred["br_cr"], br.inds)
        return centers_from_offsets(tl, br, tl_cr, br_cr, grid.out_w)
