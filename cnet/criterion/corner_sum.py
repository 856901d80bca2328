"""The paper's convention: a per-corner term is the sum of its two corners (Eqs. 2 and 6, CornerNet)."""

from __future__ import annotations

from torch import Tensor

from cnet.criterion.base import Criterion


class CornerSum(Criterion):
    """``L = L_tl + L_br`` for det, off, guiding, centripetal, ...: P Eqs. 2, 6 and 9; CornerNet's
    focal and offset losses add the two heatmaps' terms. The AE pull/push (already over both
    corners) and the mask loss are not split by corner, so they keep their paper weights against it."""

    def join_corners(self, tl: Tensor, br: Tensor) -> Tensor:
        return tl + br
