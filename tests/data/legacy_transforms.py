"""The data augmentation as it was before issue #14 (float64/float32 numpy over the whole image),
frozen here as the oracle of the equivalence tests: the fast TrainTransform must make the same rng
draws, crops, boxes and flips, and give the same pixels up to resampling/rounding."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from cnet.types import GroundTruth, ImageMeta

MEAN_RGB = (123.675, 116.28, 103.53)
STD_RGB = (58.395, 57.12, 57.375)


def corner_border(border: int, size: int) -> int:
    """CornerNet's border for an image side ``size``: halve ``border`` until ``size - b > b``.

    Random crop centres are drawn from ``[b, size - b)``. For border 128: size 100 -> 32,
    200 -> 64, 256 -> 64, 257 -> 128, 640 -> 128.
    """
    i = 1
    while size - border // i <= border // i:
        i *= 2
    return border // i


def rgb_to_hsv(rgb: np.ndarray) -> np.ndarray:
    """[..., 3] RGB in 0..255 -> [..., 3] HSV with H in degrees [0, 360), S in [0, 1], V in 0..255."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    v = rgb.max(-1)
    delta = v - rgb.min(-1)
    s = np.where(v > 0, delta / np.maximum(v, 1e-12), 0.0)
    d = np.maximum(delta, 1e-12)
    h = np.where(v == r, (g - b) / d, np.where(v == g, 2 + (b - r) / d, 4 + (r - g) / d))
    h = np.where(delta > 0, (60 * h) % 360, 0.0)
    return np.stack([h, s, v], -1).astype(rgb.dtype)


def hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
    """Inverse of :func:`rgb_to_hsv`: [..., 3] HSV (H degrees, S 0..1, V 0..255) -> RGB 0..255."""
    h, s, v = hsv[..., 0] / 60, hsv[..., 1], hsv[..., 2]
    channels = []
    for n in (5, 3, 1):  # the closed form f(n) = V - V S max(0, min(k, 4 - k, 1)), k = (n + H/60) mod 6
        k = (n + h) % 6
        channels.append(v - v * s * np.clip(np.minimum(k, 4 - k), 0, 1))
    return np.stack(channels, -1).astype(hsv.dtype)


def photometric_distort(image: np.ndarray, rng: np.random.Generator, channel_swap_prob: float = 0.5) -> np.ndarray:
    """mmdet PhotoMetricDistortion on float RGB [H, W, 3] in 0..255; returns float32 [H, W, 3].

    Each step has p = 0.5: brightness +U(-32, 32); contrast x U(0.5, 1.5), randomly before or after
    the HSV steps; saturation x U(0.5, 1.5); hue + U(-18, 18) degrees; then a random channel
    permutation with ``channel_swap_prob``. Values are clipped to [0, 255] after every step (mmdet
    does not clip; clipping keeps the HSV round trip well defined).
    """
    img = image.astype(np.float32)
    contrast_last = rng.random() < 0.5
    alpha = rng.uniform(0.5, 1.5) if rng.random() < 0.5 else None
    if rng.random() < 0.5:
        img = np.clip(img + rng.uniform(-32, 32), 0, 255)
    if alpha is not None and not contrast_last:
        img = np.clip(img * alpha, 0, 255)
    saturation = rng.uniform(0.5, 1.5) if rng.random() < 0.5 else None
    hue = rng.uniform(-18, 18) if rng.random() < 0.5 else None
    if saturation is not None or hue is not None:
        hsv = rgb_to_hsv(img)
        if saturation is not None:
            hsv[..., 1] = np.clip(hsv[..., 1] * saturation, 0, 1)
        if hue is not None:
            hsv[..., 0] = (hsv[..., 0] + hue) % 360
        img = np.clip(hsv_to_rgb(hsv), 0, 255)
    if alpha is not None and contrast_last:
        img = np.clip(img * alpha, 0, 255)
    if rng.random() < channel_swap_prob:
        img = img[..., rng.permutation(3)]
    return np.ascontiguousarray(img, dtype=np.float32)


def _normalize(image: np.ndarray, mean: Tensor, std: Tensor) -> Tensor:
    """[H, W, 3] RGB 0..255 -> [3, H, W] float32 ``(x - mean) / std``."""
    t = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).permute(2, 0, 1)
    return (t - mean[:, None, None]) / std[:, None, None]


def _centres_in_patch(boxes: np.ndarray, cx: int, cy: int, half: int, h: int, w: int) -> np.ndarray:
    """[N] bool: box centre strictly inside the patch [max(cx - half, 0), min(cx + half, w)) (same for y)."""
    ctr_x, ctr_y = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    in_x = (ctr_x > max(cx - half, 0)) & (ctr_x < min(cx + half, w))
    return in_x & (ctr_y > max(cy - half, 0)) & (ctr_y < min(cy + half, h))


class LegacyTrainTransform:
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

    def __call__(
        self,
        image: np.ndarray,
        boxes: np.ndarray,
        labels: np.ndarray,
        rng: np.random.Generator,
        masks: np.ndarray | None = None,
    ) -> tuple[Tensor, GroundTruth, ImageMeta]:
        """Augment one image; see the class docstring. ``rng`` drives every random choice."""
        h, w = image.shape[:2]
        boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        img = photometric_distort(image, rng, self.channel_swap_prob) if self.photometric else image.astype(np.float32)
        cx, cy, side = self._choose_crop(h, w, boxes, rng)
        canvas, shift_x, shift_y = self._crop(img, cx, cy, side)

        inside = _centres_in_patch(boxes, cx, cy, side // 2, h, w)
        boxes, labels = boxes[inside] + [shift_x, shift_y, shift_x, shift_y], labels[inside]
        boxes = boxes.clip(0, side)
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        boxes, labels = boxes[keep], labels[keep]
        gt_masks = None if masks is None else self._crop_masks(masks[inside][keep], cx, cy, side)

        s = self.crop_size
        scale = s / side
        t = _normalize(canvas, self.mean, self.std)
        t = F.interpolate(t[None], size=(s, s), mode="bilinear", align_corners=False)[0]
        gt_boxes = torch.from_numpy(np.ascontiguousarray(boxes * scale, dtype=np.float32))
        if gt_masks is not None:  # [N, side, side] -> [N, S, S], resampled like the image
            resized = F.interpolate(gt_masks[None].float(), size=(s, s), mode="bilinear", align_corners=False)
            gt_masks = resized[0] >= 0.5
        if rng.random() < self.flip_prob:
            t = t.flip(-1)
            gt_boxes = torch.stack([s - gt_boxes[:, 2], gt_boxes[:, 1], s - gt_boxes[:, 0], gt_boxes[:, 3]], 1)
            gt_masks = None if gt_masks is None else gt_masks.flip(-1)
        meta = ImageMeta(
            image_id=-1, orig_size=(h, w), input_size=(s, s), border=(shift_y * scale, shift_x * scale), scale=scale
        )
        return t.contiguous(), GroundTruth(gt_boxes.reshape(-1, 4), torch.from_numpy(labels), gt_masks), meta

    def _crop_masks(self, masks: np.ndarray, cx: int, cy: int, side: int) -> Tensor:
        """bool [N, H, W] -> bool [N, side, side]: the same window as :meth:`_crop`, empty outside."""
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

    def _crop(self, img: np.ndarray, cx: int, cy: int, side: int) -> tuple[np.ndarray, int, int]:
        """Paste img[cy - side//2 : cy + side//2, cx - side//2 : cx + side//2] (clipped to the image)
        at the centre of a mean-filled [side, side, 3] canvas; return (canvas, shift_x, shift_y),
        where canvas x = image x + shift_x."""
        h, w = img.shape[:2]
        half = side // 2
        x0, x1, y0, y1 = max(cx - half, 0), min(cx + half, w), max(cy - half, 0), min(cy + half, h)
        canvas = np.empty((side, side, 3), dtype=np.float32)
        canvas[:] = self.mean.numpy()
        shift_x, shift_y = half - cx, half - cy
        if x1 > x0 and y1 > y0:
            canvas[y0 + shift_y : y1 + shift_y, x0 + shift_x : x1 + shift_x] = img[y0:y1, x0:x1]
        return canvas, shift_x, shift_y
