"""``adaption=cross_star``: CentripetalNet's cross-star deformable convolution (paper §3.2).

Per corner: a guiding-shift branch (conv3x3 -> ReLU -> conv1x1, supervised by Eqs. 6-7) predicts
the shift from the corner cell to the box centre; its *detached* output is mapped by a 1x1 conv
to the 18 offsets of a 3x3 deformable convolution over the corner-pooled feature. Detaching keeps
the offset field from pulling the guiding shift away from its target.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from cnet.adaption.deform import DeformImpl, deform_conv3x3
from cnet.adaption.guided import GuidedDeformation
from cnet.parts import kp_layer
from cnet.targets import CornerTargets, cell_to_center_targets
from cnet.types import Grid


@torch.no_grad()
def encode_guiding_shift(corners: CornerTargets, grid: Grid) -> dict[str, Tensor]:
    """Guiding-shift targets [B, 2, H, W] at corner cells, linear, output-map units (Eq. 7).

    tl: (cx - floor(tl_x), cy - floor(tl_y));  br: (floor(br_x) - cx, floor(br_y) - cy).
    Both point from the integer corner cell to the float centre, so both are positive.
    """
    return cell_to_center_targets(corners, grid, "tl_guiding", "br_guiding")


class _CornerDeform(nn.Module):
    """One corner's guiding branch, offset conv and 3x3 deformable conv (no bias, as released)."""

    def __init__(self, channels: int, impl: DeformImpl = "auto") -> None:
        super().__init__()
        self.impl = impl
        self.guiding = kp_layer(channels, 2)
        self.offset = nn.Conv2d(2, 18, 1, bias=False)
        self.weight = nn.Parameter(torch.empty(channels, channels, 3, 3))
        nn.init.normal_(self.offset.weight, std=0.1)
        nn.init.normal_(self.weight, std=0.01)

    def forward(self, pool: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        guiding = self.guiding(pool)  # [B, 2, H, W]
        offset = self.offset(guiding.detach())  # [B, 18, H, W]: (dy, dx) per sampling point
        return deform_conv3x3(pool, offset, self.weight, self.impl), guiding, offset


class CrossStar(GuidedDeformation):
    """Cross-star deformable convolution guided by the corner-to-centre shift.

    Args:
        in_channels: channels of the corner-pooled feature (kept by the output).
        guiding_weight: weight alpha of the guiding-shift loss in Eq. 9 (paper: 0.05).
        impl: deformable-conv implementation (:func:`cnet.adaption.deform.resolve_impl`).
    """

    def __init__(self, in_channels: int, guiding_weight: float = 0.05, impl: DeformImpl = "auto") -> None:
        tl, br = _CornerDeform(in_channels, impl), _CornerDeform(in_channels, impl)
        super().__init__(in_channels, "guiding", guiding_weight, tl, br)

    def encode_targets(self, corners: CornerTargets, grid: Grid) -> dict[str, Tensor]:
        return encode_guiding_shift(corners, grid)
