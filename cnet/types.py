"""Data passed between the dataset, the detector, the criterion and the post-processor.

Coordinates are ``(x, y)`` in pixels of the *network input* (after augmentation and
padding) unless a field says otherwise. Boxes are ``xyxy`` floats.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor


@dataclass
class GroundTruth:
    """Training/eval targets of one image, in network-input pixels.

    boxes:  [N, 4] float32, xyxy
    labels: [N] int64, contiguous class index in [0, num_classes)
    masks:  [N, H, W] bool instance masks (optional, used by mask heads)
    """

    boxes: Tensor
    labels: Tensor
    masks: Tensor | None = None

    def to(self, device: torch.device | str) -> GroundTruth:
        return GroundTruth(
            self.boxes.to(device),
            self.labels.to(device),
            None if self.masks is None else self.masks.to(device),
        )

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    @staticmethod
    def empty() -> GroundTruth:
        return GroundTruth(torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64))


@dataclass(frozen=True)
class ImageMeta:
    """Where an image sits inside its network input, to map detections back.

    image_id:   the COCO image id
    orig_size:  (height, width) of the image as stored on disk
    input_size: (height, width) of the padded network input
    border:     (top, left): pixel offset of the image's origin inside the input
    scale:      input pixels per original pixel (1.0 at test time: resolution is kept)
    """

    image_id: int
    orig_size: tuple[int, int]
    input_size: tuple[int, int]
    border: tuple[float, float] = (0.0, 0.0)
    scale: float = 1.0


@dataclass(frozen=True)
class Grid:
    """Geometry shared by target encoding and decoding.

    The output map is ``out_h x out_w``; one output cell spans ``in_w / out_w`` input pixels
    (511 / 128 = 3.9921875 for HG-104, not exactly the stride 4).

    origin: [B, 2] float (x, y), input pixels: where each batch entry's image begins inside the
        network input, i.e. its (left, top) pad border as the entry's test view maps it (a mirrored
        view: the mirrored border; see ``cnet.views``). None: (0, 0) for every entry (training
        crops, target encoding). Only pairing rules that clamp at the image origin read it
        (``matching=centripetal_mmdet``).
    """

    in_h: int
    in_w: int
    out_h: int
    out_w: int
    origin: Tensor | None = field(default=None, compare=False)

    @property
    def ratio_x(self) -> float:
        return self.in_w / self.out_w

    @property
    def ratio_y(self) -> float:
        return self.in_h / self.out_h


@dataclass
class Corners:
    """Top-K corners of one kind (tl or br) for a batch, produced by the post-processor.

    scores:  [B, K] heatmap score after sigmoid
    classes: [B, K] int64 class index
    inds:    [B, K] int64 flat index ``y * W + x`` into the output map
    xs, ys:  [B, K] refined position (integer cell + predicted offset), in *output-map* units
    """

    scores: Tensor
    classes: Tensor
    inds: Tensor
    xs: Tensor
    ys: Tensor


@dataclass
class Detections:
    """Final detections of one image, in original-image pixels.

    boxes:  [D, 4] xyxy; scores: [D]; labels: [D] contiguous class index
    segmentations: D COCO compressed RLEs (original-image pixels) when a mask head is in use
    """

    boxes: Tensor
    scores: Tensor
    labels: Tensor
    segmentations: list[dict[str, Any]] | None = None


@dataclass
class Outputs:
    """What the detector returns: dense maps per hourglass stack.

    levels:     one dict per stack (the last is the final prediction; eval mode returns only it).
                Always ``tl_heat``/``br_heat`` [B, C, H, W] logits and ``tl_off``/``br_off``
                [B, 2, H, W]; plus the maps of the active adaption and matching components.
    input_size: (height, width) of the network input the maps were computed from.
    features:   [B, C, H, W] the last stack's backbone feature, for second-stage heads
                ``(features, boxes) -> maps`` (e.g. a mask head); None when not kept.
    """

    levels: list[dict[str, Tensor]]
    input_size: tuple[int, int]
    features: Tensor | None = None

    def float(self) -> Outputs:
        """The same maps in fp32 (after a mixed-precision forward: losses and decoding run in fp32)."""
        levels = [{k: v.float() for k, v in level.items()} for level in self.levels]
        return Outputs(levels, self.input_size, None if self.features is None else self.features.float())

    @property
    def grid(self) -> Grid:
        out_h, out_w = self.levels[-1]["tl_heat"].shape[-2:]
        return Grid(self.input_size[0], self.input_size[1], int(out_h), int(out_w))


def unpad_points(xy: Tensor, meta: ImageMeta) -> Tensor:
    """Network-input (x, y) [..., 2] -> original-image pixels: ``(x - left) / scale`` (no clipping)."""
    top, left = meta.border
    return (xy - xy.new_tensor([left, top])) / meta.scale


def pad_boxes(boxes: Tensor, meta: ImageMeta) -> Tensor:
    """Original-image xyxy boxes [N, 4] -> network-input pixels: ``x * scale + left`` (inverse of unpad)."""
    top, left = meta.border
    return boxes * meta.scale + boxes.new_tensor([left, top, left, top])


def image_frames(metas: list[ImageMeta]) -> Tensor:
    """[B, 4] xyxy of each image inside its network input (input pixels): ``pad_boxes`` of the whole image."""
    if not metas:
        return torch.zeros(0, 4)
    return torch.cat([pad_boxes(torch.tensor([[0.0, 0.0, m.orig_size[1], m.orig_size[0]]]), m) for m in metas])


def unpad_boxes(boxes: Tensor, meta: ImageMeta) -> Tensor:
    """Network-input xyxy boxes [N, 4] -> original-image pixels, clipped to ``meta.orig_size``.

    The inverse of the test transform's padding (and scale).
    """
    out = unpad_points(boxes.reshape(-1, 2, 2), meta).reshape(-1, 4)
    h, w = meta.orig_size
    return torch.stack(
        [out[:, 0].clamp(0, w), out[:, 1].clamp(0, h), out[:, 2].clamp(0, w), out[:, 3].clamp(0, h)],
        dim=-1,
    )
