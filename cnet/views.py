"""Test-time views: each maps the plain input batch (``apply``) and its boxes (``apply_boxes``) into
the view, and maps what the model predicts there back (``invert``, ``invert_masks``).

``test_views(flip, scales, pad_logical_or)`` lists the views of CornerNet/CentripetalNet flip and
multi-scale testing; :class:`cnet.predictor.Predictor` batches the views of one input size into one
forward pass (a :class:`ViewPass`) and merges their candidates before soft-NMS.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from cnet.ops import mirror_boxes
from cnet.types import Outputs


class View(Protocol):
    """One test-time view of the input. ``input_size`` is the (height, width) of the plain input."""

    def output_size(self, input_size: tuple[int, int]) -> tuple[int, int]:
        """(height, width) of the view's input batch for a plain input of ``input_size``."""
        ...

    def apply(self, images: Tensor) -> Tensor:
        """[B, 3, H, W] -> the view's input batch."""
        ...

    def apply_boxes(self, boxes: Tensor, input_size: tuple[int, int]) -> Tensor:
        """xyxy [N, 4] of the plain input -> the same objects in the view (ground truth, oracle)."""
        ...

    def invert(self, boxes: Tensor, input_size: tuple[int, int]) -> Tensor:
        """xyxy [N, 4] predicted in the view -> the plain input's pixels."""
        ...

    def invert_masks(self, maps: Tensor) -> Tensor:
        """[R, M, M] maps of boxes ``apply_boxes`` put in the view -> the same boxes' maps in the plain input."""
        ...


class Identity:
    """The input as it is."""

    def output_size(self, input_size: tuple[int, int]) -> tuple[int, int]:
        return input_size

    def apply(self, images: Tensor) -> Tensor:
        return images

    def apply_boxes(self, boxes: Tensor, input_size: tuple[int, int]) -> Tensor:
        return boxes

    def invert(self, boxes: Tensor, input_size: tuple[int, int]) -> Tensor:
        return boxes

    def invert_masks(self, maps: Tensor) -> Tensor:
        return maps


class HFlip:
    """The horizontally mirrored input; mirroring is its own inverse."""

    def output_size(self, input_size: tuple[int, int]) -> tuple[int, int]:
        return input_size

    def apply(self, images: Tensor) -> Tensor:
        return images.flip(-1)

    def apply_boxes(self, boxes: Tensor, input_size: tuple[int, int]) -> Tensor:
        return mirror_boxes(boxes, input_size[1])

    def invert(self, boxes: Tensor, input_size: tuple[int, int]) -> Tensor:
        return mirror_boxes(boxes, input_size[1])

    def invert_masks(self, maps: Tensor) -> Tensor:
        return maps.flip(-1)  # a mirrored box's map runs right to left


class Scale:
    """The plain input (mirrored first with ``flip``) resized by ``scale`` and centre-padded to
    ``h | pad_logical_or, w | pad_logical_or`` as the test transform pads (zeros: the mean pixel after
    normalization). ``invert`` removes that padding and divides by the realised per-axis ratio
    (``int(H * scale) / H``), so boxes come back in the plain input's pixels.

    The whole padded plain input is resized (CornerNet resizes the image, then pads): the two
    differ only in the one-pixel bilinear blend at the image's edge with the mean padding.
    """

    def __init__(self, scale: float, pad_logical_or: int = 127, flip: bool = False) -> None:
        if scale <= 0:
            raise ValueError(f"test.scales: scale {scale} must be > 0")
        self.scale, self.pad_logical_or, self.flip = float(scale), int(pad_logical_or), flip

    def _resized(self, input_size: tuple[int, int]) -> tuple[int, int]:
        h, w = input_size
        return max(int(h * self.scale), 1), max(int(w * self.scale), 1)

    def output_size(self, input_size: tuple[int, int]) -> tuple[int, int]:
        rh, rw = self._resized(input_size)
        return rh | self.pad_logical_or, rw | self.pad_logical_or

    def _geometry(self, input_size: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """(offset [4], ratio [4]) so that view xyxy = plain xyxy * ratio + offset."""
        (h, w), (rh, rw) = input_size, self._resized(input_size)
        out_h, out_w = self.output_size(input_size)
        top, left = out_h // 2 - rh // 2, out_w // 2 - rw // 2
        sx, sy = rw / w, rh / h
        return torch.tensor([left, top, left, top], dtype=torch.float32), torch.tensor([sx, sy, sx, sy])

    def apply(self, images: Tensor) -> Tensor:
        size = (int(images.shape[-2]), int(images.shape[-1]))
        rh, rw = self._resized(size)
        out_h, out_w = self.output_size(size)
        x = images.flip(-1) if self.flip else images
        if (rh, rw) != size:
            x = F.interpolate(x, size=(rh, rw), mode="bilinear", align_corners=False)
        top, left = out_h // 2 - rh // 2, out_w // 2 - rw // 2
        out = x.new_zeros(*x.shape[:-2], out_h, out_w)
        out[..., top : top + rh, left : left + rw] = x
        return out

    def apply_boxes(self, boxes: Tensor, input_size: tuple[int, int]) -> Tensor:
        offset, ratio = (t.to(boxes) for t in self._geometry(input_size))
        boxes = mirror_boxes(boxes, input_size[1]) if self.flip else boxes
        return boxes * ratio + offset

    def invert(self, boxes: Tensor, input_size: tuple[int, int]) -> Tensor:
        offset, ratio = (t.to(boxes) for t in self._geometry(input_size))
        boxes = (boxes - offset) / ratio
        return mirror_boxes(boxes, input_size[1]) if self.flip else boxes

    def invert_masks(self, maps: Tensor) -> Tensor:
        # a box's map is box-relative: scaling leaves it as it is, mirroring reverses it
        return maps.flip(-1) if self.flip else maps


# CornerNet's multi-scale test set (conf/test/multiscale.yaml)
CORNERNET_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5)


def test_views(flip: bool, scales: Sequence[float] = (1.0,), pad_logical_or: int = 127) -> list[View]:
    """The test-time views: per scale the image, plus its mirror with ``flip``.

    Scale 1 is the plain input itself (:class:`Identity`, :class:`HFlip`), so ``scales=[1]`` is
    single-scale testing exactly; other scales are :class:`Scale` views (``pad_logical_or``: the test
    transform's padding).
    """
    views: list[View] = []
    for s in scales:
        if float(s) == 1.0:
            views += [Identity(), HFlip()] if flip else [Identity()]
        else:
            views += (
                [Scale(s, pad_logical_or), Scale(s, pad_logical_or, flip=True)] if flip else [Scale(s, pad_logical_or)]
            )
    if not views:
        raise ValueError("test.scales is empty: give at least one scale, e.g. test.scales=[1]")
    return views


test_views.__test__ = False  # type: ignore[attr-defined]  # not a pytest test


class ViewPass(NamedTuple):
    """One forward pass over views of the same input size: ``outputs`` of their inputs batched
    view-major (entry ``v * B + i`` is image ``i`` in ``views[v]``)."""

    views: Sequence[View]
    outputs: Outputs
