"""``adaption=dcn``: a standard deformable convolution per corner (Table 5, "deformable conv.").

The offset field is learned from the corner-pooled feature itself by a 3x3 conv (Fig. 5a),
with no supervision and no extra loss. The offset conv starts at zero, so the module starts as a
plain 3x3 convolution and deforms only as training asks for it.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from cnet.adaption.base import Adaption
from cnet.adaption.deform import DeformImpl, deform_conv3x3
from cnet.adaption.sampling import NUM_TAPS


class _CornerDCN(nn.Module):
    """One corner's offset conv (C -> 18, zero init) and 3x3 deformable conv (no bias)."""

    def __init__(self, channels: int, impl: DeformImpl = "auto") -> None:
        super().__init__()
        self.impl = impl
        self.offset = nn.Conv2d(channels, 2 * NUM_TAPS, 3, padding=1)
        self.weight = nn.Parameter(torch.empty(channels, channels, 3, 3))
        nn.init.zeros_(self.offset.weight)
        assert self.offset.bias is not None
        nn.init.zeros_(self.offset.bias)
        nn.init.normal_(self.weight, std=0.01)  # as the cross-star module

    def forward(self, pool: Tensor) -> tuple[Tensor, Tensor]:
        offset = self.offset(pool)  # [B, 18, H, W]: (dy, dx) per tap, row-major
        return deform_conv3x3(pool, offset, self.weight, self.impl), offset


class DCN(Adaption):
    """Standard deformable convolution whose offsets a conv learns from the pool feature.

    Args:
        in_channels: channels of the corner-pooled feature (kept by the output).
        impl: deformable-conv implementation (:func:`cnet.adaption.deform.resolve_impl`).
    """

    def __init__(self, in_channels: int, impl: DeformImpl = "auto") -> None:
        super().__init__(in_channels)
        self.tl = _CornerDCN(in_channels, impl)
        self.br = _CornerDCN(in_channels, impl)

    def forward(self, tl_pool: Tensor, br_pool: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        tl, tl_offset = self.tl(tl_pool)
        br, br_offset = self.br(br_pool)
        maps: dict[str, Tensor] = {}
        if not self.training:  # sampling offsets, for the Fig. 7 picture
            maps = {"tl_dcn_offset": tl_offset, "br_dcn_offset": br_offset}
        return tl, br, maps
