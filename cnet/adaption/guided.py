"""Shared shape of the adaption modules whose sampling is guided by a supervised prediction.

Cross-star (guiding shift) and RoI convolution (box size) both run, per corner, a small branch
that regresses a 2-channel map at the corner cells and turns it into the offsets of a 3x3
deformable convolution. The per-corner branch is the subclass's; the wiring, the eval-time
offsets (for the Fig. 7 picture) and the SmoothL1 loss at corner cells live here.
"""

from __future__ import annotations

from torch import Tensor, nn

from cnet.adaption.base import Adaption
from cnet.losses import masked_smooth_l1
from cnet.targets import CornerTargets


class GuidedDeformation(Adaption):
    """Adaption from two per-corner modules ``(pool) -> (adapted, prediction, offset)``.

    Args:
        in_channels: channels of the corner-pooled feature (kept by the output).
        key: name of the supervised prediction: maps ``tl_<key>``/``br_<key>`` [B, 2, H, W],
            targets under the same names, loss term ``<key>``.
        loss_weight: weight of that loss term.
        tl, br: the per-corner modules.
    """

    def __init__(self, in_channels: int, key: str, loss_weight: float, tl: nn.Module, br: nn.Module) -> None:
        super().__init__(in_channels)
        self.key, self._loss_weight = key, loss_weight
        self.tl, self.br = tl, br

    @property
    def loss_weights(self) -> dict[str, float]:
        return {self.key: self._loss_weight}

    def forward(self, tl_pool: Tensor, br_pool: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        tl, tl_pred, tl_offset = self.tl(tl_pool)
        br, br_pred, br_offset = self.br(br_pool)
        maps = {f"tl_{self.key}": tl_pred, f"br_{self.key}": br_pred}
        if not self.training:  # sampling offsets [B, 18, H, W], for the Fig. 7 picture
            maps |= {"tl_dcn_offset": tl_offset, "br_dcn_offset": br_offset}
        return tl, br, maps

    def loss(self, pred: dict[str, Tensor], targets: dict[str, Tensor], corners: CornerTargets) -> dict[str, Tensor]:
        tl_key, br_key = f"tl_{self.key}", f"br_{self.key}"
        tl = masked_smooth_l1(pred[tl_key], targets[tl_key], corners.tl_mask)
        br = masked_smooth_l1(pred[br_key], targets[br_key], corners.br_mask)
        return {tl_key: tl, br_key: br}  # the criterion joins the two halves
