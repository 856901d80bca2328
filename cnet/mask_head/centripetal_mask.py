"""``mask_head=centripetal_mask``: the paper's RoIAlign instance-mask head (§3.3, Eq. 8).

Training: the top-``num_proposals`` pairs of the last stack before soft-NMS (no gradient) ->
RoIAlign 14x14 (``aligned=True``) on the last stack's backbone feature -> 4 x (conv3x3 + ReLU) ->
2x2 stride-2 transposed conv + ReLU -> conv1x1 to one mask channel per class (Mask R-CNN) or one
for all -> the proposal's class channel, [R, 28, 28] logits. A proposal trains on the same-class
ground-truth object it overlaps by IoU >= 0.5; its target is that object's mask cropped to the
proposal and resampled to 28x28. The loss ``mask`` is the per-pixel binary cross-entropy averaged
over the matched proposals (exactly 0 when none matches), on the last stack only (§4.1), from
epoch ``start_epoch`` on: before it the detector trains alone and the head gets no gradient.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import box_iou, roi_align

from cnet.mask_head.base import Decoder, MaskHead, Segmentations, no_decoder
from cnet.mask_head.inference import encode_masks, view_mask_probs
from cnet.masks import crop_masks
from cnet.targets import CornerTargets
from cnet.types import Detections, Grid, GroundTruth, ImageMeta
from cnet.views import ViewPass


class CentripetalMask(MaskHead):
    """RoIAlign mask head on the detector's own proposals.

    Args:
        in_channels, num_classes: the backbone feature's width and the number of classes.
        channels: conv width (None: ``in_channels``).
        num_convs, roi_size, mask_size: 4, 14 and 28 in the paper.
        class_agnostic: one mask channel for every class instead of one per class.
        num_proposals: k, pairs per image taken (by score, before soft-NMS) as proposals.
        corner_topk: corners per side decoded for them.
        iou_threshold: IoU with a same-class object for a proposal to be trained.
        start_epoch: first (0-based) epoch the head is trained.
        loss_weight: weight of ``mask`` (Eq. 9: 1).
        decoder: where the proposals come from (the detector gives its :class:`cnet.decode.ProposalDecoder`).
    """

    uses_masks = True

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        channels: int | None = None,
        num_convs: int = 4,
        roi_size: int = 14,
        mask_size: int = 28,
        class_agnostic: bool = False,
        num_proposals: int = 32,
        corner_topk: int = 100,
        iou_threshold: float = 0.5,
        start_epoch: int = 0,
        loss_weight: float = 1.0,
        decoder: Decoder = no_decoder,
    ) -> None:
        super().__init__(in_channels, num_classes, decoder)
        if mask_size != 2 * roi_size:
            raise ValueError(f"mask_head.mask_size={mask_size} must be 2 x mask_head.roi_size (one 2x upsampling)")
        if num_proposals < 1:
            raise ValueError(f"mask_head.num_proposals={num_proposals} must be >= 1")
        width = channels or in_channels
        layers: list[nn.Module] = []
        for i in range(num_convs):
            layers += [nn.Conv2d(in_channels if i == 0 else width, width, 3, padding=1), nn.ReLU(inplace=True)]
        self.convs = nn.Sequential(*layers)
        self.upsample = nn.ConvTranspose2d(width if num_convs else in_channels, width, 2, stride=2)
        self.predictor = nn.Conv2d(width, 1 if class_agnostic else num_classes, 1)
        for m in self.modules():  # Mask R-CNN's init (torchvision MaskRCNNHeads / predictor)
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)  # type: ignore[arg-type]
        self.roi_size, self.mask_size, self.class_agnostic = roi_size, mask_size, class_agnostic
        self.num_proposals, self.corner_topk = num_proposals, corner_topk
        self.iou_threshold, self.start_epoch, self.loss_weight = iou_threshold, start_epoch, loss_weight
        self.idle_in_some_steps = start_epoch > 0  # no gradient before start_epoch (DDP: find unused)

    @property
    def loss_weights(self) -> dict[str, float]:
        return {"mask": self.loss_weight}

    def mask_logits(self, features: Tensor, rois: Tensor, labels: Tensor, input_size: tuple[int, int]) -> Tensor:
        """features [B, C, H, W], rois [R, 5] (batch index, xyxy input px), labels [R] -> [R, M, M]."""
        h, w = features.shape[-2:]
        scale = rois.new_tensor([1.0, w / input_size[1], h / input_size[0], w / input_size[1], h / input_size[0]])
        x = roi_align(features, rois * scale, self.roi_size, 1.0, sampling_ratio=2, aligned=True)  # [R, C, 14, 14]
        x = F.relu(self.upsample(self.convs(x)))  # [R, C', 28, 28]
        logits = self.predictor(x)  # [R, K or 1, 28, 28]
        channel = torch.zeros_like(labels) if self.class_agnostic else labels
        return logits[torch.arange(len(rois), device=rois.device), channel]

    def forward(self, features: Tensor, level: dict[str, Tensor], grid: Grid) -> dict[str, Tensor]:
        """``mask_logits`` [R, M, M], ``mask_rois`` [R, 5], ``mask_labels`` [R] of the proposals that
        ``decoder`` finds in the last ``level``'s maps; R = 0 before start_epoch."""
        if self.epoch < self.start_epoch:  # the detector trains alone: no proposals, no gradient
            return {
                "mask_logits": features.new_zeros(0, self.mask_size, self.mask_size),
                "mask_rois": features.new_zeros(0, 5),
                "mask_labels": torch.zeros(0, dtype=torch.int64, device=features.device),
            }
        input_size = (grid.in_h, grid.in_w)
        with torch.no_grad():
            rois, labels = [], []
            limit = features.new_tensor([input_size[1], input_size[0]] * 2)
            for i, (boxes, _, cls) in enumerate(self.decoder(level, grid, self.corner_topk, self.num_proposals)):
                boxes = boxes.detach().clamp(min=0).minimum(limit)  # inside the input
                rois.append(torch.cat([boxes.new_full((len(boxes), 1), float(i)), boxes], dim=1))
                labels.append(cls)
            roi_t, label_t = torch.cat(rois).to(features.dtype), torch.cat(labels).long()
        return {
            "mask_logits": self.mask_logits(features, roi_t, label_t, input_size),
            "mask_rois": roi_t,
            "mask_labels": label_t,
        }

    @torch.no_grad()
    def predict_masks(self, features: Tensor, rois: Tensor, labels: Tensor, input_size: tuple[int, int]) -> Tensor:
        """Mask probabilities [R, M, M] of ``rois`` [R, 5] with classes ``labels`` [R]."""
        return self.mask_logits(features, rois, labels.long(), input_size).sigmoid()

    @torch.no_grad()
    def segment(
        self,
        passes: Sequence[ViewPass],
        input_size: tuple[int, int],
        detections: Sequence[Detections],
        metas: Sequence[ImageMeta],
    ) -> Segmentations:
        """Per image: its detections' masks, ``predict_masks`` averaged over the views of ``passes``,
        pasted, thresholded and RLE-encoded (cnet.mask_head.inference)."""
        b = len(metas)
        return [
            encode_masks(
                view_mask_probs(self.predict_masks, passes, input_size, i, b, det, meta), det.boxes, meta.orig_size
            )
            for i, (det, meta) in enumerate(zip(detections, metas))
        ]

    @torch.no_grad()
    def assign(self, rois: Tensor, labels: Tensor, gts: list[GroundTruth]) -> tuple[Tensor, Tensor]:
        """(targets [R, M, M] in {0, 1}, matched [R] bool): each proposal's same-class object with
        the highest IoU >= ``iou_threshold``, its mask cropped to the proposal."""
        targets = rois.new_zeros(len(rois), self.mask_size, self.mask_size)
        matched = torch.zeros(len(rois), dtype=torch.bool, device=rois.device)
        for i, gt in enumerate(gts):
            sel = (rois[:, 0] == i).nonzero().squeeze(1)
            if len(sel) == 0 or len(gt) == 0:
                continue
            if gt.masks is None:
                raise ValueError(
                    "mask_head=centripetal_mask needs GroundTruth.masks: build the training set with masks "
                    "(CocoDetection.with_masks)"
                )
            boxes = rois[sel, 1:]
            iou = box_iou(boxes, gt.boxes.to(boxes.dtype))  # [P, N]
            iou[labels[sel][:, None] != gt.labels[None, :]] = -1  # only objects of the proposal's class
            best, idx = iou.max(dim=1)
            ok = best >= self.iou_threshold
            if ok.any():
                crops = crop_masks(gt.masks, boxes[ok], idx[ok], self.mask_size)
                targets[sel[ok]] = (crops >= 0.5).to(targets.dtype)
                matched[sel[ok]] = True
        return targets, matched

    def loss(self, pred: dict[str, Tensor], targets: dict[str, Tensor], corners: CornerTargets) -> dict[str, Tensor]:
        """``mask`` (Eq. 8) on the level that carries mask logits (the last); nothing on the others."""
        if "mask_logits" not in pred:
            return {}
        logits = pred["mask_logits"]  # [R, M, M]
        mask_targets, matched = self.assign(pred["mask_rois"], pred["mask_labels"], corners.ground_truth)
        if not matched.any():
            return {"mask": logits.sum() * 0.0}  # exactly 0, still part of the graph
        return {"mask": F.binary_cross_entropy_with_logits(logits[matched], mask_targets[matched])}
