"""CentripetalNet as mmdetection decodes it (``CornerHead._decode_heatmap``, v2.x and v3.3.0).

mmdetection moves every position into image pixels *before* it pairs corners: the corners and the
centres they imply (tl + e^cs, br - e^cs) are scaled to input pixels, the left/top pad border is
subtracted and negative coordinates are clamped to 0. Every test then runs on the clamped values:
the box (and its area, which picks mu), its central region, "br not right of / below tl", "both
centres strictly inside" and |dx||dy| / area(R_central) > 0.5. A corner or centre predicted in the
padding, or past the top/left edge of the image, thus counts as sitting on that edge. The paper's
rule (``Centripetal``) pairs the positions as decoded and clips boxes to the image only at the end.

Only the top/left edge clamps (mmdetection does not clamp at the right/bottom). The final boxes are
built from the unclamped corners as for every strategy: the clipping to the image in
``cnet.types.unpad_boxes`` gives the same boxes as mmdetection's clamped ones.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor

from cnet.matching.centripetal import Centripetal
from cnet.types import Corners, Grid


def clamp_at_origin(xy: Tensor, grid: Grid) -> Tensor:
    """Output-map (x, y) [B, K, 2] -> image pixels: ``max(x * in_w / out_w - origin_x, 0)``, likewise y.

    ``grid.origin`` [B, 2] (input pixels) is where each entry's image begins; None means (0, 0).
    """
    px = xy * xy.new_tensor([grid.ratio_x, grid.ratio_y])
    if grid.origin is not None:
        px = px - grid.origin.to(px)[:, None, :]
    return px.clamp(min=0.0)


class CentripetalMmdet(Centripetal):
    """Centripetal shift matching with mmdetection's pairing positions (clamped at the image origin).

    Arguments as ``Centripetal``; ``conf/matching/centripetal_mmdet.yaml`` sets mmdetection's
    arithmetic-mean score, no Eq. 5 weight and the 0.5 rejection.
    """

    def pair(self, pred: dict[str, Tensor], tl: Corners, br: Corners, grid: Grid) -> Tensor:
        tl_ct, br_ct = self.implied_centers(pred, tl, br, grid)  # output-map units
        tl_px = clamp_at_origin(torch.stack([tl.xs, tl.ys], dim=-1), grid)
        br_px = clamp_at_origin(torch.stack([br.xs, br.ys], dim=-1), grid)
        # every position is now in image pixels: pair them on a grid of one pixel per cell
        pixels = Grid(grid.in_h, grid.in_w, grid.in_h, grid.in_w)
        scores = self.score_pairs(
            replace(tl, xs=tl_px[..., 0], ys=tl_px[..., 1]),
            replace(br, xs=br_px[..., 0], ys=br_px[..., 1]),
            clamp_at_origin(tl_ct, grid),
            clamp_at_origin(br_ct, grid),
            pixels,
        )
        return scores
