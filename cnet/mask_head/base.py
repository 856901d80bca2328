"""The interface of an instance-mask head (paper §3.3, Eq. 8; Table 6).

A mask head is a second stage on the last stack's backbone feature. The detector gives it a
proposal ``decoder`` when it builds it (:class:`cnet.decode.ProposalDecoder`: the last stack's
scored boxes before soft-NMS, without gradient); in training the head decodes its proposals from the
last level's maps only if it wants them and returns maps that the criterion turns into its loss
terms, like any other part. At inference the predictor asks every head for the masks of the final
detections (``segment``); ``mask_head=none`` does neither (no proposals, no masks).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from torch import Tensor, nn

from cnet.targets import CornerTargets
from cnet.types import Detections, Grid, ImageMeta
from cnet.views import ViewPass

# per image: the COCO RLEs of its detections, or None (no masks)
Segmentations = list[list[dict[str, Any]] | None]


class Decoder(Protocol):
    """``decoder(level, grid, corner_topk, num_dets)`` -> per image (boxes [D, 4] xyxy input px,
    scores [D], labels [D]) sorted by score: one level's pairs before soft-NMS, without gradient."""

    def __call__(
        self, level: dict[str, Tensor], grid: Grid, corner_topk: int, num_dets: int
    ) -> Sequence[tuple[Tensor, Tensor, Tensor]]: ...


def no_decoder(
    level: dict[str, Tensor], grid: Grid, corner_topk: int, num_dets: int
) -> list[tuple[Tensor, Tensor, Tensor]]:
    """The decoder of a head built outside a detector: asking it for proposals is an error."""
    raise ValueError("this mask head was built without a proposal decoder (CornerDetector gives it one)")


class MaskHead(nn.Module):
    """Base class: one instance per detector, on the last stack's feature.

    ``uses_masks`` says whether training needs ``GroundTruth.masks`` (the run then has the training
    set decode the annotations' segmentations). ``decoder``: where the head's proposals come from.
    """

    uses_masks: bool = False
    idle_in_some_steps: bool = False  # True: some steps give its parameters no gradient (Part)

    def __init__(self, in_channels: int, num_classes: int, decoder: Decoder = no_decoder) -> None:
        super().__init__()
        self.in_channels, self.num_classes = in_channels, num_classes
        # a plain attribute, not a submodule: the decoder's matching belongs to the corner head
        self.decoder = decoder
        self.epoch = 0  # the epoch being trained (set_epoch); heads may start late

    @property
    def loss_weights(self) -> dict[str, float]:
        return {}

    def set_epoch(self, epoch: int) -> None:
        """The 0-based epoch about to be trained (called through ``Criterion.set_epoch``)."""
        self.epoch = int(epoch)

    def forward(self, features: Tensor, level: dict[str, Tensor], grid: Grid) -> dict[str, Tensor]:
        """Training maps added to the last level (features [B, C, H, W]; ``level``: the last level's
        maps, from which ``decoder`` gives proposals); none by default."""
        return {}

    def segment(
        self,
        passes: Sequence[ViewPass],
        input_size: tuple[int, int],
        detections: Sequence[Detections],
        metas: Sequence[ImageMeta],
    ) -> Segmentations:
        """Per image: COCO RLEs (original pixels) of its ``detections`` (boxes in original pixels),
        from the predictor's forward ``passes`` over the plain input of ``input_size``; None for
        every image by default (no masks)."""
        return [None] * len(detections)

    def encode_targets(self, corners: CornerTargets, grid: Grid) -> dict[str, Tensor]:
        """Dense targets (none: mask targets depend on the proposals, built in ``loss``)."""
        return {}

    def loss(self, pred: dict[str, Tensor], targets: dict[str, Tensor], corners: CornerTargets) -> dict[str, Tensor]:
        """Unweighted loss terms keyed like ``loss_weights``, or ``tl_<term>``/``br_<term>`` per corner
        (the criterion joins the two); none by default."""
        return {}
