"""Test-time masks of an RoI mask head: per-view probabilities mapped back and averaged, pasted, RLE-encoded.

Every final detection gets a mask: its probabilities in each test-time view (its box mapped into the
view with ``apply_boxes``, the map mapped back with ``invert_masks``) are averaged, pasted into
original-image pixels, thresholded at 0.5 and RLE-encoded (``Detections.segmentations``). A head
that predicts masks (``mask_head=centripetal_mask``) does this in its ``segment`` with its own
``predict_masks``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from cnet.masks import encode_rle, paste_masks
from cnet.types import Detections, ImageMeta, pad_boxes
from cnet.views import ViewPass

PASTE_CHUNK = 20  # detections pasted at once: bounds the [D, H, W] float buffer

# predict(features [N, C, h, w], rois [R, 5] (batch index, xyxy input px), labels [R], input_size)
# -> probabilities [R, M, M]
PredictMasks = Callable[[Tensor, Tensor, Tensor, tuple[int, int]], Tensor]


def view_mask_probs(
    predict: PredictMasks,
    passes: Sequence[ViewPass],
    input_size: tuple[int, int],
    i: int,
    b: int,
    det: Detections,
    meta: ImageMeta,
) -> Tensor:
    """[D, M, M] mask probabilities of image ``i``'s (of ``b``) detections ``det`` (boxes in original
    pixels), averaged over the views of ``passes`` (a view's map mapped back first).

    ``input_size``: (height, width) of the plain input batch; every pass must carry ``features``.
    """
    boxes = pad_boxes(det.boxes, meta)  # original -> plain input pixels
    total: Tensor | None = None
    count = 0
    for views, outputs in passes:
        if outputs.features is None:
            raise ValueError("mask inference needs Outputs.features (the last stack's backbone feature)")
        for v, view in enumerate(views):  # view-major batch: entry v * B + i
            batch_index = boxes.new_full((len(boxes), 1), float(v * b + i))
            rois = torch.cat([batch_index, view.apply_boxes(boxes, input_size)], 1)
            probs = view.invert_masks(predict(outputs.features, rois, det.labels, outputs.input_size))
            total = probs if total is None else total + probs
            count += 1
    if total is None:
        raise ValueError("mask inference needs at least one test-time view")
    return total / count


def encode_masks(probs: Tensor, boxes: Tensor, image_size: tuple[int, int]) -> list[dict[str, Any]]:
    """[D, M, M] probabilities over ``boxes`` [D, 4] (original px) -> D COCO RLEs of the masks ``probs >= 0.5``."""
    rles: list[dict[str, Any]] = []
    for s in range(0, len(probs), PASTE_CHUNK):
        rles += encode_rle(paste_masks(probs[s : s + PASTE_CHUNK], boxes[s : s + PASTE_CHUNK], image_size) >= 0.5)
    return rles
