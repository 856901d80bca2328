"""Corner pooling (CornerNet §3.4; docs/implementation_facts.md §2).

Each directional pool is a running max along one axis of x [B, C, H, W], computed with
``torch.cummax`` (flipping the axis for the scans that run towards index 0). Rows index y
(top = row 0), columns index x (left = column 0). A top-left corner looks down and right into its
box, so it uses top_pool + left_pool; a bottom-right corner uses bottom_pool + right_pool.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from cnet.ops import conv_bn


def _reverse_cummax(x: Tensor, dim: int) -> Tensor:
    """out[..., k, ...] = max(x[..., k:, ...]) along ``dim`` (scan from the far end)."""
    return x.flip(dim).cummax(dim).values.flip(dim)


def top_pool(x: Tensor) -> Tensor:
    """[B, C, H, W] -> [B, C, H, W]; out[..., i, j] = max over rows i' >= i of x[..., i', j]."""
    return _reverse_cummax(x, 2)


def bottom_pool(x: Tensor) -> Tensor:
    """[B, C, H, W] -> [B, C, H, W]; out[..., i, j] = max over rows i' <= i of x[..., i', j]."""
    return x.cummax(2).values


def left_pool(x: Tensor) -> Tensor:
    """[B, C, H, W] -> [B, C, H, W]; out[..., i, j] = max over columns j' >= j of x[..., i, j']."""
    return _reverse_cummax(x, 3)


def right_pool(x: Tensor) -> Tensor:
    """[B, C, H, W] -> [B, C, H, W]; out[..., i, j] = max over columns j' <= j of x[..., i, j']."""
    return x.cummax(3).values


def row_max_pool(x: Tensor) -> Tensor:
    """[B, C, H, W] -> [B, C, H, W]; out[..., i, j] = max over all columns of row i (centre pooling)."""
    return left_pool(right_pool(x))


def column_max_pool(x: Tensor) -> Tensor:
    """[B, C, H, W] -> [B, C, H, W]; out[..., i, j] = max over all rows of column j (centre pooling)."""
    return top_pool(bottom_pool(x))


POOLS: dict[str, Callable[[Tensor], Tensor]] = {
    "top": top_pool,
    "bottom": bottom_pool,
    "left": left_pool,
    "right": right_pool,
    "row": row_max_pool,
    "column": column_max_pool,
}


class CornerPool(nn.Module):
    """Corner-pool module (CornerNet ``pool`` = mmdet ``BiCornerPool``).

    x [B, Cin, H, W] -> [B, Cin, H, W]:
        a = pool_1(ReLU(BN(conv3x3(x))))  and  b = pool_2(ReLU(BN(conv3x3(x))))  (pool_channels)
        r = ReLU(BN(conv3x3(a + b)) + BN(conv1x1(x)))
        out = ReLU(BN(conv3x3(r)))
    All convs are bias-free (each feeds a BN).

    Args:
        in_channels: channels of the input and of the output.
        pool_channels: channels of the two pooled branches (128 in CornerNet/CentripetalNet).
        directions: the two pools, ("top", "left") for the top-left corner,
            ("bottom", "right") for the bottom-right corner, ("row", "column") for CenterNet's
            centre pooling (``cnet.center_pool.CenterPool``).
    """

    def __init__(self, in_channels: int, pool_channels: int, directions: tuple[str, str]) -> None:
        super().__init__()
        if len(directions) != 2 or any(d not in POOLS for d in directions):
            raise ValueError(
                f"CornerPool: directions must be two of {sorted(POOLS)}, e.g. ('top', 'left'); got {directions!r}"
            )
        self.directions = tuple(directions)
        self.pool_1, self.pool_2 = POOLS[directions[0]], POOLS[directions[1]]
        self.branch_1 = conv_bn(in_channels, pool_channels, 3)
        self.branch_2 = conv_bn(in_channels, pool_channels, 3)
        self.merge = conv_bn(pool_channels, in_channels, 3, relu=False)  # no ReLU before the sum
        self.skip = conv_bn(in_channels, in_channels, 1, relu=False)
        self.out_conv = conv_bn(in_channels, in_channels, 3)

    def forward(self, x: Tensor) -> Tensor:
        """[B, Cin, H, W] -> [B, Cin, H, W] (pooled corner feature, same pixel grid)."""
        pooled = self.pool_1(self.branch_1(x)) + self.pool_2(self.branch_2(x))  # [B, P, H, W]
        r = self.merge(pooled) + self.skip(x)  # [B, Cin, H, W]
        return self.out_conv(r.relu_())

    def extra_repr(self) -> str:
        return f"directions={self.directions}"
