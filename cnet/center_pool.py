"""CenterNet's centre pooling (Duan et al. 2019), for the ``center_heatmap`` matching strategy.

A centre keypoint sees the maximum response along its whole row plus the maximum along its
whole column; the module has exactly the corner-pool layout with those two pools.
"""

from __future__ import annotations

from cnet.corner_pool import CornerPool, column_max_pool, row_max_pool

__all__ = ["CenterPool", "column_max_pool", "row_max_pool"]


class CenterPool(CornerPool):
    """Centre-pool module: ``CornerPool`` with the row-max and column-max pools.

    x [B, Cin, H, W] -> [B, Cin, H, W]; ``pool_channels`` is 128 in CenterNet.
    """

    def __init__(self, in_channels: int, pool_channels: int) -> None:
        super().__init__(in_channels, pool_channels, ("row", "column"))
