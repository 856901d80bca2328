"""Centre pooling (CenterNet: Keypoint Triplets, Duan et al. 2019, §3.3; ``pool_cross`` in [CT]).

A centre keypoint should see the most salient response along the whole row and the whole column
through it. Composing two opposite corner-pool scans gives the max over a full line:
``left_pool(right_pool(x))`` is the max over the whole row, ``top_pool(bottom_pool(x))`` the max
over the whole column (CenterNet composes Top then Bottom and Left then Right: same result).
"""
from __future__ import annotations

from torch import Tensor, nn

from cnet.backbone.hourglass import conv_bn
from cnet.corner_pool import bottom_pool, left_pool, right_pool, top_pool


def row_max_pool(x: Tensor) -> Tensor:
    """[B, C, H, W] -> [B, C, H, W]; out[..., i, j] = max over all columns j' of x[..., i, j']."""
    return left_pool(right_pool(x))


def column_max_pool(x: Tensor) -> Tensor:
    """[B, C, H, W] -> [B, C, H, W]; out[..., i, j] = max over all rows i' of x[..., i', j]."""
    return top_pool(bottom_pool(x))


class CenterPool(nn.Module):
    """Centre-pool module; same layout as ``cnet.corner_pool.CornerPool``.

    x [B, Cin, H, W] -> [B, Cin, H, W]:
        a = row_max(ReLU(BN(conv3x3(x))))  and  b = column_max(ReLU(BN(conv3x3(x))))  (pool_channels)
        r = ReLU(BN(conv3x3(a + b)) + BN(conv1x1(x)))
        out = ReLU(BN(conv3x3(r)))
    All convs are bias-free (each feeds a BN).

    Args:
        in_channels: channels of the input and of the output.
        pool_channels: channels of the two pooled branches (128 in CenterNet).
    """

    def __init__(self, in_channels: int, pool_channels: int) -> None:
        super().__init__()
        self.branch_row = conv_bn(in_channels, pool_channels, 3)
        self.branch_col = conv_bn(in_channels, pool_channels, 3)
        self.merge = conv_bn(pool_channels, in_channels, 3, relu=False)  # no ReLU before the sum
        self.skip = conv_bn(in_channels, in_channels, 1, relu=False)
        self.out_conv = conv_bn(in_channels, in_channels, 3)

    def forward(self, x: Tensor) -> Tensor:
        """[B, Cin, H, W] -> [B, Cin, H, W] (centre-pooled feature, same pixel grid)."""
        pooled = row_max_pool(self.branch_row(x)) + column_max_pool(self.branch_col(x))  # [B, P, H, W]
        r = self.merge(pooled) + self.skip(x)  # [B, Cin, H, W]
        return self.out_conv(r.relu_())
