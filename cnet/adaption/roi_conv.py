"""``adaption=roi_conv``: AlignDet-style RoI convolution at the corners (Table 5, "RoI conv.").

Per corner, a branch (conv3x3 -> ReLU -> conv1x1) regresses the log width and height of the box
at each corner cell. The 3x3 sampling points of a deformable convolution over the corner-pooled
feature are then *computed*, not learned: the centres of the 3x3 bins of the box that the corner
cell and the regressed size imply (Fig. 5b). A top-left corner's box extends towards the bottom
right, a bottom-right corner's towards the top left. The size is detached before it places the
points, so only its own loss trains it.

The paper (§4.3) regresses the size "at the corners" but gives no loss weight; we use 0.05, the
weight of the cross-star module's guiding shift, with the same SmoothL1 at corner cells.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from cnet.adaption.deform import DeformImpl, deform_conv3x3
from cnet.adaption.guided import GuidedDeformation
from cnet.adaption.sampling import KERNEL, kernel_taps, xy_to_offsets
from cnet.parts import kp_layer
from cnet.targets import CornerTargets, scatter_at_corners
from cnet.types import Grid

# exp() of an untrained log size can overflow; e^10 cells is far beyond any map size
_MAX_LOG_SIZE = 10.0
# crops can leave sub-cell (or empty) boxes: keep log() finite
_MIN_SIZE = 1e-3
_CORNERS = ("tl", "br")


@torch.no_grad()
def encode_box_size(corners: CornerTargets, grid: Grid) -> dict[str, Tensor]:
    """Targets ``tl_box_size``/``br_box_size`` [B, 2, H, W]: (ln w, ln h) of the box in
    output-map units, written at each object's top-left / bottom-right corner cell."""
    shape = (len(corners.points), 2, grid.out_h, grid.out_w)
    vals = [(p.br - p.tl).clamp(min=_MIN_SIZE).log() for p in corners.points]  # [N, 2]
    return {
        "tl_box_size": scatter_at_corners(vals, [p.tl_int for p in corners.points], shape),
        "br_box_size": scatter_at_corners(vals, [p.br_int for p in corners.points], shape),
    }


def roi_offsets(size: Tensor, corner: str) -> Tensor:
    """Deformable-conv offsets that put the 3x3 taps at the bin centres of each cell's box.

    size: [B, 2, H, W] linear box (w, h) in output-map units. For a cell (x, y) the box is
    [x, x + w] x [y, y + h] for ``corner="tl"`` and [x - w, x] x [y - h, y] for ``"br"``; tap
    (i, j) samples p_ij = (x0 + (j + 0.5) w / 3, y0 + (i + 0.5) h / 3), so its offset is p_ij
    minus the plain tap (x + j - 1, y + i - 1). The result does not depend on (x, y) itself.
    Returns [B, 18, H, W] in torchvision's layout ((dy, dx) per tap, row-major).
    """
    if corner not in _CORNERS:
        raise ValueError(f"roi_offsets: corner must be one of {_CORNERS}, got {corner!r}")
    taps = kernel_taps(size.device, size.dtype)  # [9, 2] (j - 1, i - 1)
    start = 0.0 if corner == "tl" else -1.0  # box origin relative to the cell, in box sizes
    frac = start + (taps + 1 + 0.5) / KERNEL  # [9, 2] bin centre in box sizes from the cell
    sample = frac[None, :, :, None, None] * size[:, None]  # [B, 9, 2, H, W] (x, y) from the cell
    return xy_to_offsets(sample - taps[None, :, :, None, None])


class _CornerRoI(nn.Module):
    """One corner's box-size branch and 3x3 deformable conv (no bias) at the computed points."""

    def __init__(self, channels: int, corner: str, impl: DeformImpl = "auto") -> None:
        super().__init__()
        self.corner, self.impl = corner, impl
        self.size = kp_layer(channels, 2)
        self.weight = nn.Parameter(torch.empty(channels, channels, 3, 3))
        nn.init.normal_(self.weight, std=0.01)  # as the cross-star module

    def forward(self, pool: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        log_size = self.size(pool)  # [B, 2, H, W] (ln w, ln h)
        size = log_size.detach().clamp(max=_MAX_LOG_SIZE).exp()
        offset = roi_offsets(size, self.corner)  # [B, 18, H, W]
        return deform_conv3x3(pool, offset, self.weight, self.impl), log_size, offset


class RoIConv(GuidedDeformation):
    """RoI convolution over the box implied by each corner and its regressed size.

    Args:
        in_channels: channels of the corner-pooled feature (kept by the output).
        size_weight: weight of the box-size loss (not in the paper; 0.05 as the guiding shift).
        impl: deformable-conv implementation (:func:`cnet.adaption.deform.resolve_impl`).
    """

    def __init__(self, in_channels: int, size_weight: float = 0.05, impl: DeformImpl = "auto") -> None:
        tl, br = _CornerRoI(in_channels, "tl", impl), _CornerRoI(in_channels, "br", impl)
        super().__init__(in_channels, "box_size", size_weight, tl, br)

    def encode_targets(self, corners: CornerTargets, grid: Grid) -> dict[str, Tensor]:
        return encode_box_size(corners, grid)
