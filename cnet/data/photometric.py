"""mmdet ``PhotoMetricDistortion`` split into a parameter draw and a fast application.

:func:`draw_photometric` makes exactly the rng draws of the original single-function version, in the
same order, so a (seed, epoch, index) keeps its decisions. :func:`distort` applies them to a uint8
region: the per-value steps (brightness, contrast) become one 256-entry float32 look-up table (the
same float32 arithmetic per value, so bit-identical), and the saturation/hue steps run through
OpenCV's float32 HSV conversion (equal to the numpy reference formulas in
tests/data/legacy_transforms.py up to float rounding). Every step is per pixel, so distorting only
the crop window gives the crop of the distorted image.
"""

from __future__ import annotations

import dataclasses
import math
import threading

import cv2
import numpy as np

# The loader's parallelism is DataLoader worker processes; OpenCV's own thread pool would
# oversubscribe their cores (and its per-call dispatch costs more than these small images gain).
cv2.setNumThreads(0)


@dataclasses.dataclass(frozen=True)
class Photometric:
    """One draw of the distortion; ``None``: that step does not fire.

    ``brightness``: added, in 0..255 units; ``contrast``: factor, applied before the HSV steps or
    (``contrast_last``) after them; ``saturation``: HSV S factor; ``hue``: degrees added to H;
    ``perm``: output channel i is input channel ``perm[i]``.
    """

    brightness: float | None = None
    contrast: float | None = None
    contrast_last: bool = False
    saturation: float | None = None
    hue: float | None = None
    perm: tuple[int, int, int] | None = None

    @property
    def uses_hsv(self) -> bool:
        return self.saturation is not None or self.hue is not None


def draw_photometric(rng: np.random.Generator, channel_swap_prob: float = 0.5) -> Photometric:
    """Each step fires with p = 0.5: brightness U(-32, 32), contrast U(0.5, 1.5) (before or after
    the HSV steps, p = 0.5), saturation U(0.5, 1.5), hue U(-18, 18); then a channel permutation
    with ``channel_swap_prob``. The draw order is the original implementation's (do not reorder)."""
    contrast_last = bool(rng.random() < 0.5)
    contrast = rng.uniform(0.5, 1.5) if rng.random() < 0.5 else None
    brightness = rng.uniform(-32, 32) if rng.random() < 0.5 else None
    saturation = rng.uniform(0.5, 1.5) if rng.random() < 0.5 else None
    hue = rng.uniform(-18, 18) if rng.random() < 0.5 else None
    perm = None
    if rng.random() < channel_swap_prob:
        p = rng.permutation(3)
        perm = (int(p[0]), int(p[1]), int(p[2]))
    return Photometric(brightness, contrast, contrast_last, saturation, hue, perm)


def value_table(p: Photometric) -> np.ndarray | None:
    """float32 [256]: the per-value steps as a table (None when none fires).

    Brightness, then contrast unless it comes after an HSV step that fires, each clipped to
    [0, 255] as in the original; the ops are the original's float32 ops on the values 0..255.
    """
    contrast = p.contrast if not (p.contrast_last and p.uses_hsv) else None
    if p.brightness is None and contrast is None:
        return None
    table = np.arange(256, dtype=np.float32)
    if p.brightness is not None:
        table = np.clip(table + p.brightness, 0, 255)
    if contrast is not None:
        table = np.clip(table * contrast, 0, 255)
    return table


class Scratch(threading.local):
    """Per-thread float32 work buffers, reused from image to image and grown on demand.

    A fresh multi-megabyte array is a fresh mmap (glibc returns large blocks to the OS on free),
    and faulting its pages in cost as much as the arithmetic on it (measured: the pipeline ran at
    half speed with fresh arrays). Views returned by :meth:`get` stay valid until the next call
    with the same name in the same thread: never return them to a caller.
    """

    def __init__(self) -> None:
        self._buffers: dict[str, np.ndarray] = {}

    def get(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        """A C-contiguous float32 view of ``shape`` on buffer ``name`` (contents undefined)."""
        size = math.prod(shape)
        buf = self._buffers.get(name)
        if buf is None or buf.size < size:
            buf = self._buffers[name] = np.empty(size, dtype=np.float32)
        return buf[:size].reshape(shape)


def distort(region: np.ndarray, p: Photometric, scratch: Scratch | None = None) -> np.ndarray:
    """uint8 [h, w, 3] RGB -> float32 [h, w, 3] in 0..255, every step but the channel permutation.

    The caller applies ``p.perm`` (TrainTransform folds it into its output copy). ``region`` may be
    a strided window of a larger image. With ``scratch`` the result lives in its buffers
    ``"a"``/``"b"`` (valid until their next use); without, it is a fresh array.
    """

    def buffer(name: str) -> np.ndarray | None:
        return None if scratch is None else scratch.get(name, region.shape)

    table = value_table(p)
    img: np.ndarray
    if table is not None:
        img = cv2.LUT(region, table, dst=buffer("a"))
    elif scratch is None:
        img = region.astype(np.float32)
    else:
        img = scratch.get("a", region.shape)
        np.copyto(img, region)
    if not p.uses_hsv:
        return img
    hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV, dst=buffer("b"))  # float32: H degrees [0, 360), S 0..1, V
    # H + hue and S x saturation in one per-pixel affine pass. OpenCV's HSV2RGB wraps H in [0, 720)
    # but not below 0, so a negative hue shift adds 360 instead of a modulo pass (checked against
    # the reference formulas in tests/data/test_photometric.py).
    hue = 0.0 if p.hue is None else (p.hue if p.hue >= 0 else p.hue + 360)
    saturation = 1.0 if p.saturation is None else p.saturation
    affine = np.array([[1, 0, 0, hue], [0, saturation, 0, 0], [0, 0, 1, 0]], dtype=np.float32)
    hsv = cv2.transform(hsv, affine, dst=buffer("a"))
    if saturation > 1:  # S <= 1 before, so only a gain above 1 needs the clip
        np.minimum(hsv[..., 1], 1, out=hsv[..., 1])
    img = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB, dst=buffer("b"))  # S <= 1: every channel lands in [0, V]
    if p.contrast is not None and p.contrast_last:
        np.multiply(img, p.contrast, out=img)
        np.minimum(img, 255, out=img)  # >= 0 already
    return img


def photometric_distort(image: np.ndarray, rng: np.random.Generator, channel_swap_prob: float = 0.5) -> np.ndarray:
    """mmdet PhotoMetricDistortion of a whole uint8 RGB [H, W, 3] image -> float32 [H, W, 3] in 0..255.

    Values are clipped to [0, 255] after every step (mmdet does not clip; clipping keeps the HSV
    round trip well defined). See :func:`draw_photometric` for the distribution.
    """
    if image.dtype != np.uint8:
        raise TypeError(f"photometric_distort: expects a uint8 image, got {image.dtype}")
    p = draw_photometric(rng, channel_swap_prob)
    img = distort(image, p)
    return np.ascontiguousarray(img[..., list(p.perm)]) if p.perm is not None else img
