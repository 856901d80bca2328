"""The training criterion: ``criterion(outputs, targets) -> dict of named, unweighted losses``.

Shared terms (Eq. 9): ``det`` (corner focal loss) and ``off`` (sub-cell offsets). The active
adaption and matching components add their own terms (``guiding``, ``centripetal``, ``pull``,
...). Every term is averaged over the two corners and summed over the hourglass stacks
(intermediate supervision); ``weight_dict`` says how the engine weights them.
"""
from __future__ import annotations

from collections import defaultdict

from torch import Tensor

from cnet.adaption.base import Adaption
from cnet.losses import corner_focal_loss, masked_smooth_l1
from cnet.matching.base import Matching
from cnet.targets import encode_corners
from cnet.types import GroundTruth, Outputs


class Criterion:
    """Encodes targets from ground truth and computes every loss term.

    Args:
        num_classes: heatmap channels.
        matching, adaption: the detector's components; only their (parameter-free) target
            encoding and loss methods are used here.
        det_weight, off_weight: weights of the shared terms (paper: 1 and 1).
        min_overlap: IoU used to size the Gaussian around each corner (CornerNet: 0.3).
    """

    def __init__(
        self,
        num_classes: int,
        matching: Matching,
        adaption: Adaption,
        det_weight: float = 1.0,
        off_weight: float = 1.0,
        min_overlap: float = 0.3,
    ) -> None:
        self.num_classes = num_classes
        self.matching = matching
        self.adaption = adaption
        self.min_overlap = min_overlap
        self.weight_dict = {"det": det_weight, "off": off_weight}
        self.weight_dict |= adaption.loss_weights | matching.loss_weights

    def __call__(self, outputs: Outputs, targets: list[GroundTruth]) -> dict[str, Tensor]:
        grid = outputs.grid
        corners = encode_corners(targets, grid, self.num_classes, self.min_overlap)
        adaption_targets = self.adaption.encode_targets(corners, grid)
        matching_targets = self.matching.encode_targets(corners, grid)
        losses: dict[str, Tensor] = defaultdict(int)  # type: ignore[arg-type]
        for level in outputs.levels:
            det = corner_focal_loss(level["tl_heat"], corners.tl_heat)
            det = (det + corner_focal_loss(level["br_heat"], corners.br_heat)) / 2
            off = masked_smooth_l1(level["tl_off"], corners.tl_off, corners.tl_mask, min_norm=1)
            off = (off + masked_smooth_l1(level["br_off"], corners.br_off, corners.br_mask, min_norm=1)) / 2
            terms = {"det": det, "off": off}
            terms |= self.adaption.loss(level, adaption_targets, corners)
            terms |= self.matching.loss(level, matching_targets, corners)
            for k, v in terms.items():
                losses[k] = losses[k] + v
        return dict(losses)

    def total(self, losses: dict[str, Tensor]) -> Tensor:
        """Weighted sum of the named terms."""
        return sum(self.weight_dict[k] * v for k, v in losses.items())  # type: ignore[return-value]
