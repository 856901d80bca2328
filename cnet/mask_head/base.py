"""The interface of an instance-mask head (paper §3.3, Eq. 8; Table 6).

A mask head is a second stage on the last stack's backbone feature. In training the detector hands
it a ``propose`` callable (its own scored boxes before soft-NMS, computed without gradient only if
the head asks for them); the head returns maps that the criterion turns into its loss terms, like
any other part. At inference the predictor asks it for the mask probabilities of the final
detections (``predict_masks``). ``mask_head=none`` does neither.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import Tensor, nn

from cnet.targets import CornerTargets
from cnet.types import Grid

# propose(corner_topk, num_dets) -> per image (boxes [D, 4] xyxy input px, scores [D], labels [D]),
# sorted by score: the last stack's pairs before soft-NMS
Propose = Callable[[int, int], Sequence[tuple[Tensor, Tensor, Tensor]]]


class MaskHead(nn.Module):
    """Base class: one instance per detector, on the last stack's feature.

    ``uses_masks`` says whether training needs ``GroundTruth.masks`` (the run then has the training
    set decode the annotations' segmentations).
    """

    uses_masks: bool = False
    idle_in_some_steps: bool = False  # True: some steps give its parameters no gradient (Part)

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.in_channels, self.num_classes = in_channels, num_classes
        self.epoch = 0  # the epoch being trained (set_epoch); heads may start late

    @property
    def loss_weights(self) -> dict[str, float]:
        return {}

    def set_epoch(self, epoch: int) -> None:
        """The 0-based epoch about to be trained (called through ``Criterion.set_epoch``)."""
        self.epoch = int(epoch)

    def forward(self, features: Tensor, propose: Propose, input_size: tuple[int, int]) -> dict[str, Tensor]:
        """Training maps added to the last level (features [B, C, H, W]); none by default."""
        return {}

    def predict_masks(
        self, features: Tensor, rois: Tensor, labels: Tensor, input_size: tuple[int, int]
    ) -> Tensor | None:
        """Mask probabilities [R, M, M] of ``rois`` [R, 5] = (batch index, x1, y1, x2, y2 input px)
        with class ``labels`` [R]; None when the head predicts no masks."""
        return None

    def encode_targets(self, corners: CornerTargets, grid: Grid) -> dict[str, Tensor]:
        """Dense targets (none: mask targets depend on the proposals, built in ``loss``)."""
        return {}

    def loss(self, pred: dict[str, Tensor], targets: dict[str, Tensor], corners: CornerTargets) -> dict[str, Tensor]:
        """Unweighted loss terms keyed like ``loss_weights``, or ``tl_<term>``/``br_<term>`` per corner
        (the criterion joins the two); none by default."""
        return {}
