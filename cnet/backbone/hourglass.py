"""Stacked HourglassNet backbone of CornerNet / CentripetalNet (HG-104 with the defaults).

Topology follows docs/implementation_facts.md §1 (CornerNet ``kp`` = mmdet ``HourglassNet``):
a stride-4 stem, ``num_stacks`` recursive hourglass modules built from BasicBlock residuals,
a 3x3 output conv per stack and a 1x1 join between consecutive stacks. Every stack's output
is returned so the detector can supervise each one (intermediate supervision).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from cnet.ops import conv_bn


class BasicBlock(nn.Module):
    """Residual unit: ReLU(BN(conv3x3(ReLU(BN(conv3x3_s(x))))) + skip(x)).

    x [B, Cin, H, W] -> [B, Cout, ceil(H/s), ceil(W/s)]. The skip is a strided 1x1 conv + BN
    when the shape changes (stride != 1 or Cin != Cout), the identity otherwise.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = conv_bn(in_channels, out_channels, 3, stride=stride)
        self.conv2 = conv_bn(out_channels, out_channels, 3, relu=False)
        self.skip: nn.Module = (
            conv_bn(in_channels, out_channels, 1, stride=stride, relu=False)
            if stride != 1 or in_channels != out_channels
            else nn.Identity()
        )

    def forward(self, x: Tensor) -> Tensor:
        """[B, Cin, H, W] -> [B, Cout, ceil(H/s), ceil(W/s)]."""
        out = self.conv2(self.conv1(x))
        # In-place is safe: BN's backward does not need its output, ReLU's needs only its own.
        out += self.skip(x)
        return F.relu(out, inplace=True)


def _blocks(in_channels: int, out_channels: int, num_blocks: int, stride: int = 1) -> nn.Sequential:
    """BasicBlocks whose first one changes channels and applies the stride (mmdet
    ``downsample_first=True``): [B, Cin, H, W] -> [B, Cout, ceil(H/s), ceil(W/s)]."""
    chans = [in_channels] + [out_channels] * num_blocks
    return nn.Sequential(*(BasicBlock(chans[i], chans[i + 1], stride if i == 0 else 1) for i in range(num_blocks)))


def _blocks_revr(in_channels: int, out_channels: int, num_blocks: int) -> nn.Sequential:
    """BasicBlocks whose last one changes channels (CornerNet ``make_layer_revr``, mmdet
    ``downsample_first=False``): [B, Cin, H, W] -> [B, Cout, H, W]."""
    chans = [in_channels] * num_blocks + [out_channels]
    return nn.Sequential(*(BasicBlock(chans[i], chans[i + 1]) for i in range(num_blocks)))


class HourglassModule(nn.Module):
    """One recursive hourglass: x [B, c0, H, W] -> [B, c0, H, W].

    ``up1`` keeps the resolution; ``low1`` halves it with a strided residual (no max-pool);
    ``low2`` recurses on ``stage_channels[1:]`` (or is ``stage_blocks[1]`` plain blocks at the
    innermost level); ``low3`` projects back to c0; the result is nearest-upsampled to ``up1``'s
    size and added (no activation after the sum). Upsampling to the skip's size rather than x2
    keeps odd sizes working (e.g. 25 -> 13 -> 25).
    """

    def __init__(self, depth: int, stage_channels: Sequence[int], stage_blocks: Sequence[int]) -> None:
        super().__init__()
        c0, c1 = stage_channels[0], stage_channels[1]
        n0 = stage_blocks[0]
        self.up1 = _blocks(c0, c0, n0)
        self.low1 = _blocks(c0, c1, n0, stride=2)
        self.low2: nn.Module = (
            HourglassModule(depth - 1, stage_channels[1:], stage_blocks[1:])
            if depth > 1
            else _blocks(c1, c1, stage_blocks[1])
        )
        self.low3 = _blocks_revr(c1, c0, n0)

    def forward(self, x: Tensor) -> Tensor:
        """[B, c0, H, W] -> [B, c0, H, W]."""
        up1 = self.up1(x)  # [B, c0, H, W]
        low = self.low3(self.low2(self.low1(x)))  # [B, c0, ceil(H/2), ceil(W/2)]
        return up1 + F.interpolate(low, size=up1.shape[-2:], mode="nearest")


class HourglassNet(nn.Module):
    """Stacked hourglass backbone; the defaults give HourglassNet-104 (187,700,352 parameters).

    Args:
        num_stacks: number of hourglass modules (2 = HG-104, 1 = HG-52).
        stage_channels: channels per resolution level, outermost first; the hourglass
            downsamples ``len(stage_channels) - 1`` times.
        stage_blocks: BasicBlocks per level (same length as ``stage_channels``); the last entry
            is the number of blocks at the innermost resolution.
        stem_channels: width of the stride-2 7x7 stem conv.
        feat_channels: channels of each returned feature map.

    forward(x [B, 3, H, W]) returns a list of ``num_stacks`` tensors
    [B, feat_channels, ceil(H/4), ceil(W/4)] (511 -> 128), last stack last. Pixel (i, j) of a
    feature covers input pixel (4i, 4j) at stride 4. Conv weights keep PyTorch's default init
    and BN starts at weight 1 / bias 0, as in mmdet (which re-runs ``reset_parameters`` on
    every conv) and CornerNet; no pretraining.
    """

    def __init__(
        self,
        num_stacks: int = 2,
        stage_channels: Sequence[int] = (256, 256, 384, 384, 384, 512),
        stage_blocks: Sequence[int] = (2, 2, 2, 2, 2, 4),
        stem_channels: int = 128,
        feat_channels: int = 256,
    ) -> None:
        super().__init__()
        stage_channels, stage_blocks = tuple(stage_channels), tuple(stage_blocks)
        if num_stacks < 1:
            raise ValueError(f"HourglassNet: num_stacks must be >= 1, got {num_stacks}")
        if len(stage_channels) < 2 or len(stage_channels) != len(stage_blocks):
            raise ValueError(
                "HourglassNet: stage_channels and stage_blocks need the same length >= 2, got "
                f"{len(stage_channels)} and {len(stage_blocks)}"
            )
        if min(stage_blocks) < 1 or min(stage_channels) < 1:
            raise ValueError(
                f"HourglassNet: stage_channels {stage_channels} and stage_blocks {stage_blocks} must all be >= 1"
            )
        self.num_stacks = num_stacks
        self.out_channels = feat_channels
        c0 = stage_channels[0]
        depth = len(stage_channels) - 1

        self.stem = nn.Sequential(
            conv_bn(3, stem_channels, 7, stride=2),  # stride 2
            BasicBlock(stem_channels, c0, stride=2),  # stride 4
        )
        self.hourglasses = nn.ModuleList(
            HourglassModule(depth, stage_channels, stage_blocks) for _ in range(num_stacks)
        )
        self.out_convs = nn.ModuleList(conv_bn(c0, feat_channels, 3) for _ in range(num_stacks))
        # Join between stacks: the next hourglass reads c0 channels, the output has feat_channels,
        # so only the remap conv sees feat_channels (they are equal, 256, in HG-104).
        self.inter_convs = nn.ModuleList(conv_bn(c0, c0, 1, relu=False) for _ in range(num_stacks - 1))
        self.remap_convs = nn.ModuleList(conv_bn(feat_channels, c0, 1, relu=False) for _ in range(num_stacks - 1))
        self.inters = nn.ModuleList(BasicBlock(c0, c0) for _ in range(num_stacks - 1))

    def forward(self, x: Tensor) -> list[Tensor]:
        """x [B, 3, H, W] -> num_stacks x [B, feat_channels, ceil(H/4), ceil(W/4)]."""
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"HourglassNet: expected input [B, 3, H, W], got {tuple(x.shape)}")
        inter = self.stem(x)  # [B, c0, H/4, W/4]
        outs: list[Tensor] = []
        for i in range(self.num_stacks):
            out = self.out_convs[i](self.hourglasses[i](inter))  # [B, feat, H/4, W/4]
            outs.append(out)
            if i < self.num_stacks - 1:
                joined = self.inter_convs[i](inter) + self.remap_convs[i](out)
                inter = self.inters[i](F.relu(joined, inplace=True))
        return outs
