"""CornerNet/CentripetalNet data augmentation (mmdet ``PhotoMetricDistortion`` + ``RandomCenterCropPad``).

Images enter as ``np.ndarray [H, W, 3] uint8 RGB``; boxes as ``[N, 4] float32 xyxy`` in image pixels.
Transforms return ``(image [3, H', W'] float32 normalized RGB, GroundTruth, ImageMeta)`` with boxes in
network-input pixels. ``ImageMeta.image_id`` is -1 here; the dataset fills it in.

TrainTransform works on the crop window only, in float32 (issue #14: about 7x the images/s of
distorting and padding the whole image in numpy; reports/bench_data.md): the window is cut from the
uint8 image, distorted (:mod:`cnet.data.photometric`), padded with the mean (cv2.copyMakeBorder),
resized (cv2.resize: F.interpolate's bilinear rule, align_corners=False) and split into normalized
planes, all in reused per-thread work buffers (fresh multi-MB arrays cost as much in page faults as
the arithmetic). Its rng draws, crops, boxes, masks and flips are the original implementation's;
pixels differ by float rounding only (tests/data/test_transform_equivalence.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from cnet.data.photometric import (
    Photometric,
    Scratch,
    distort,
    draw_photometric,
    photometric_distort,
)
from cnet.types import GroundTruth, ImageMeta

__all__ = [
    "MEAN_RGB",
    "STD_RGB",
    "TestTransform",
    "TrainTransform",
    "corner_border",
    "photometric_distort",
]

MEAN_RGB = (123.675, 116.28, 103.53)
STD_RGB = (58.395, 57.12, 57.375)

# TrainTransform's work buffers (per thread; module level so the transform pickles to workers as is)
_SCRATCH = Scratch()


def corner_border(border: int, size: int) -> int:
    """CornerNet's border for an image side ``size``: halve ``border`` until ``size - b > b``.

    Random crop centres are drawn from ``[b, size - b)``. For border 128: size 100 -> 32,
    200 -> 64, 256 -> 64, 257 -> 128, 640 -> 128.
    """
    i = 1
    while size - border // i <= border // i:
        i *= 2
    return border // i


def _normalize(image: np.ndarray, mean: Tensor, std: Tensor) -> Tensor:
    """[H, W, 3] RGB 0..255 -> [3, H, W] float32 ``(x - mean) / std``."""
    t = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).permute(2, 0, 1)
    return (t - mean[:, None, None]) / std[:, None, None]


def _centres_in_patch(boxes: np.ndarray, cx: int, cy: int, half: int, h: int, w: int) -> np.ndarray:
    """[N] bool: box centre strictly inside the patch [max(cx - half, 0), min(cx + half, w)) (same for y)."""
    ctr_x, ctr_y = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    in_x = (ctr_x > max(cx - half, 0)) & (ctr_x < min(cx + half, w))
    return in_x & (ctr_y > max(cy - half, 0)) & (ctr_y < min(cy + half, h))


class TrainTransform:
    """Training augmentation: photometric distortion, random centre crop, resize, flip, normalize.

    Output: image [3, S, S] float32 normalized, GroundTruth boxes [N, 4] xyxy in the S x S input,
    labels [N] int64. The crop is an ``int(S * ratio)`` square canvas (filled with the mean pixel)
    around a random centre drawn from the image minus a :func:`corner_border` band; a crop is
    accepted when it contains the centre of at least one GT box (any crop when there is none).
    Kept boxes are translated, clipped to the canvas and dropped without positive extent; the
    canvas is resized to S x S and flipped horizontally with ``x' = S - x``. ``channel_swap_prob``
    is the photometric step's random channel permutation (mmdet: 0.5). ImageMeta.border/scale
    describe the crop + resize without the flip (informational; training does not use them).
    Instance ``masks`` [N, H, W] bool, when given, go through the same crop, selection, resize
    (bilinear, >= 0.5) and flip as the boxes and come out as ``GroundTruth.masks`` [N', S, S].
    The rng is drawn in a fixed order: photometric parameters, crop, flip.
    """

    def __init__(
        self,
        crop_size: int = 511,
        ratios: Sequence[float] = (0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3),
        border: int = 128,
        flip_prob: float = 0.5,
        photometric: bool = True,
        mean: Sequence[float] = MEAN_RGB,
        std: Sequence[float] = STD_RGB,
        channel_swap_prob: float = 0.5,
    ) -> None:
        if crop_size < 8 or not ratios or min(ratios) <= 0:
            raise ValueError(f"TrainTransform: need crop_size >= 8 and positive ratios, got {crop_size}, {ratios}")
        self.crop_size = int(crop_size)
        self.ratios = tuple(float(r) for r in ratios)
        self.border = int(border)
        self.flip_prob = float(flip_prob)
        self.photometric = bool(photometric)
        self.channel_swap_prob = float(channel_swap_prob)
        self.mean = torch.tensor(mean, dtype=torch.float32)
        self.std = torch.tensor(std, dtype=torch.float32)
        # float32 like the tensors; copies, not .numpy() views: pickling a transform to a spawned
        # DataLoader worker moves the tensors' storage to shared memory and would leave views dangling
        self._mean_np, self._std_np = np.array(mean, dtype=np.float32), np.array(std, dtype=np.float32)

    def __call__(
        self,
        image: np.ndarray,
        boxes: np.ndarray,
        labels: np.ndarray,
        rng: np.random.Generator,
        masks: np.ndarray | None = None,
    ) -> tuple[Tensor, GroundTruth, ImageMeta]:
        """Augment one image; see the class docstring. ``rng`` drives every random choice."""
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise TypeError(f"TrainTransform: expects a uint8 [H, W, 3] image, got {image.dtype} {image.shape}")
        h, w = image.shape[:2]
        boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        # rng order of the original: photometric draws, crop draws, flip draw
        photo = draw_photometric(rng, self.channel_swap_prob) if self.photometric else None
        cx, cy, side = self._choose_crop(h, w, boxes, rng)
        half = side // 2
        shift_x, shift_y = half - cx, half - cy  # canvas x = image x + shift_x

        inside = _centres_in_patch(boxes, cx, cy, half, h, w)
        boxes, labels = boxes[inside] + [shift_x, shift_y, shift_x, shift_y], labels[inside]
        boxes = boxes.clip(0, side)
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        boxes, labels = boxes[keep], labels[keep]
        gt_masks = None if masks is None else self._crop_masks(masks[inside][keep], cx, cy, side)

        s = self.crop_size
        scale = s / side
        perm = photo.perm if photo is not None and photo.perm is not None else (0, 1, 2)
        canvas = self._canvas(image, photo, perm, cx, cy, side)
        if side != s:  # same half-pixel-centre bilinear rule as F.interpolate(align_corners=False)
            canvas = cv2.resize(canvas, (s, s), dst=_SCRATCH.get("d", (s, s, 3)), interpolation=cv2.INTER_LINEAR)
        flip = bool(rng.random() < self.flip_prob)
        t = self._to_chw(canvas, perm, flip)
        gt_boxes = torch.from_numpy(np.ascontiguousarray(boxes * scale, dtype=np.float32))
        if gt_masks is not None:  # [N, side, side] -> [N, S, S], resampled like the image
            resized = F.interpolate(gt_masks[None].float(), size=(s, s), mode="bilinear", align_corners=False)
            gt_masks = resized[0] >= 0.5
        if flip:
            gt_boxes = torch.stack([s - gt_boxes[:, 2], gt_boxes[:, 1], s - gt_boxes[:, 0], gt_boxes[:, 3]], 1)
            gt_masks = None if gt_masks is None else gt_masks.flip(-1)
        meta = ImageMeta(
            image_id=-1, orig_size=(h, w), input_size=(s, s), border=(shift_y * scale, shift_x * scale), scale=scale
        )
        return t, GroundTruth(gt_boxes.reshape(-1, 4), torch.from_numpy(labels), gt_masks), meta

    def _canvas(
        self, image: np.ndarray, photo: Photometric | None, perm: tuple[int, int, int], cx: int, cy: int, side: int
    ) -> np.ndarray:
        """float32 [side, side, 3] in 0..255: the distorted window image[cy - side//2 : cy + side//2,
        cx - side//2 : cx + side//2] (clipped to the image) centred on a mean-filled square.

        Only the window is distorted (every photometric step is per pixel). Channels stay in image
        order; the fill is the mean permuted by ``perm``'s inverse, so that :meth:`_to_chw`'s
        channel selection turns the pixels into the permuted image and the fill into the mean.
        The result is a work buffer, valid until the next call in this thread.
        """
        h, w = image.shape[:2]
        half = side // 2
        x0, x1, y0, y1 = max(cx - half, 0), min(cx + half, w), max(cy - half, 0), min(cy + half, h)
        fill = [0.0, 0.0, 0.0]
        for i, c in enumerate(perm):
            fill[c] = float(self._mean_np[i])
        canvas = _SCRATCH.get("c", (side, side, 3))
        if x1 <= x0 or y1 <= y0:
            canvas[:] = fill
            return canvas
        region = image[y0:y1, x0:x1]
        if photo is not None:
            pix = distort(region, photo, _SCRATCH)
        else:
            pix = _SCRATCH.get("a", region.shape)
            np.copyto(pix, region)
        top, left = y0 + half - cy, x0 + half - cx
        bottom, right = side - (y1 + half - cy), side - (x1 + half - cx)
        return cv2.copyMakeBorder(pix, top, bottom, left, right, cv2.BORDER_CONSTANT, dst=canvas, value=fill)

    def _to_chw(self, canvas: np.ndarray, perm: tuple[int, int, int], flip: bool) -> Tensor:
        """float32 [S, S, 3] -> fresh [3, S, S] ``(canvas[..., perm[i]] - mean[i]) / std[i]``, mirrored
        in x when ``flip``. cv2.split writes the planes straight into the output (a third of the cost
        of a strided numpy or torch permute copy); the normalization then runs on contiguous planes."""
        s_h, s_w = canvas.shape[:2]
        out = np.empty((3, s_h, s_w), dtype=np.float32)
        src = cv2.flip(canvas, 1, dst=_SCRATCH.get("e", canvas.shape)) if flip else canvas
        planes = [out[perm.index(c)] for c in range(3)]  # canvas channel c -> output plane perm⁻¹(c)
        written = cv2.split(src, planes)
        if any(a is not b for a, b in zip(written, planes)):  # OpenCV allocated instead of filling `out`
            for a, b in zip(written, planes):
                b[...] = a
        out -= self._mean_np[:, None, None]
        out /= self._std_np[:, None, None]
        return torch.from_numpy(out)

    def _crop_masks(self, masks: np.ndarray, cx: int, cy: int, side: int) -> Tensor:
        """bool [N, H, W] -> bool [N, side, side]: the same window as :meth:`_canvas`, empty outside."""
        h, w = masks.shape[1:]
        half = side // 2
        x0, x1, y0, y1 = max(cx - half, 0), min(cx + half, w), max(cy - half, 0), min(cy + half, h)
        out = torch.zeros(len(masks), side, side, dtype=torch.bool)
        shift_x, shift_y = half - cx, half - cy
        if x1 > x0 and y1 > y0:
            out[:, y0 + shift_y : y1 + shift_y, x0 + shift_x : x1 + shift_x] = torch.from_numpy(
                np.ascontiguousarray(masks[:, y0:y1, x0:x1], dtype=bool)
            )
        return out

    def _choose_crop(self, h: int, w: int, boxes: np.ndarray, rng: np.random.Generator) -> tuple[int, int, int]:
        """Pick (centre x, centre y, canvas side) so the crop holds >= 1 GT centre (mmdet rule).

        mmdet retries forever; after 10 ratio draws we centre the crop on a random GT box instead,
        which only matters for tiny crop sizes on large images.
        """
        h_border, w_border = corner_border(self.border, h), corner_border(self.border, w)
        for _ in range(10):
            side = int(self.crop_size * self.ratios[int(rng.integers(len(self.ratios)))])
            half = side // 2
            for _ in range(50):
                cx = int(rng.integers(w_border, w - w_border))  # corner_border keeps this range non-empty
                cy = int(rng.integers(h_border, h - h_border))
                if len(boxes) == 0 or _centres_in_patch(boxes, cx, cy, half, h, w).any():
                    return cx, cy, side
        k = int(rng.integers(len(boxes)))
        return int((boxes[k, 0] + boxes[k, 2]) / 2), int((boxes[k, 1] + boxes[k, 3]) / 2), side


class TestTransform:
    """Test-time transform: keep the resolution, centre-pad to ``(h | pad_logical_or, w | pad_logical_or)``.

    ``pad_logical_or`` is mmdetection's ``test_pad_mode=['logical_or', 127]``: each side grows to the
    next ``k * 128 - 1`` (the hourglass halves it 7 times). The padding is filled with the mean pixel
    (0 after normalization). Output: image [3, h | pad_logical_or, w | pad_logical_or] float32, boxes
    shifted by the border, and ImageMeta with ``border = (top, left)`` of the image inside the input
    and ``scale = 1.0``.
    """

    __test__ = False  # not a pytest test class, despite the name

    def __init__(
        self, pad_logical_or: int = 127, mean: Sequence[float] = MEAN_RGB, std: Sequence[float] = STD_RGB
    ) -> None:
        self.pad_logical_or = int(pad_logical_or)
        self.mean = torch.tensor(mean, dtype=torch.float32)
        self.std = torch.tensor(std, dtype=torch.float32)

    def __call__(
        self,
        image: np.ndarray,
        boxes: np.ndarray,
        labels: np.ndarray,
        rng: np.random.Generator | None = None,
        masks: np.ndarray | None = None,
    ) -> tuple[Tensor, GroundTruth, ImageMeta]:
        """Pad one image (and its ``masks`` [N, H, W] bool, if given); ``rng`` is accepted for a uniform
        call signature and unused."""
        h, w = image.shape[:2]
        in_h, in_w = h | self.pad_logical_or, w | self.pad_logical_or
        top, left = in_h // 2 - h // 2, in_w // 2 - w // 2  # mmdet: image centre at the input centre
        out = torch.zeros(3, in_h, in_w)
        out[:, top : top + h, left : left + w] = _normalize(image, self.mean, self.std)
        gt_boxes = torch.as_tensor(
            np.asarray(boxes, dtype=np.float32).reshape(-1, 4) + [left, top, left, top], dtype=torch.float32
        )
        gt_labels = torch.as_tensor(np.asarray(labels, dtype=np.int64).reshape(-1))
        gt_masks = None
        if masks is not None:
            gt_masks = torch.zeros(len(masks), in_h, in_w, dtype=torch.bool)
            gt_masks[:, top : top + h, left : left + w] = torch.from_numpy(np.asarray(masks, dtype=bool))
        meta = ImageMeta(
            image_id=-1, orig_size=(h, w), input_size=(in_h, in_w), border=(float(top), float(left)), scale=1.0
        )
        return out, GroundTruth(gt_boxes, gt_labels, gt_masks), meta
