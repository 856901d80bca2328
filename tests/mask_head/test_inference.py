"""Test-time masks (cnet.mask_head.inference): per-view maps mapped back and averaged, pasted, RLE-encoded."""

from __future__ import annotations

import torch
from torchvision.ops import roi_align

from cnet.mask_head.inference import encode_masks, view_mask_probs
from cnet.masks import decode_rle
from cnet.types import Detections, ImageMeta, Outputs
from cnet.views import HFlip, Identity, ViewPass


class ImageMask:
    """A stand-in ``predict_masks``: the RoIAligned first feature channel (flip-equivariant)."""

    def __init__(self) -> None:
        self.seen: list[torch.Tensor] = []

    def __call__(self, features, rois, labels, input_size):
        maps = roi_align(features[:, :1], rois, (28, 28), 1.0, sampling_ratio=2, aligned=True)[:, 0]
        self.seen.append(maps)
        return maps


def blob(h: int, w: int) -> torch.Tensor:
    """An asymmetric shape: a right triangle in [10, 40) x [8, 30) of a [h, w] image."""
    ys, xs = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    return ((xs >= 10) & (ys >= 8) & (ys < 30) & (xs - 10 < (ys - 8) * 30 / 22)).float()


def flip_pass(image: torch.Tensor) -> ViewPass:
    feats = torch.stack([image, image.flip(-1)])[:, None]  # views batched view-major: [2, 1, H, W]
    return ViewPass([Identity(), HFlip()], Outputs([{}], tuple(image.shape), features=feats))  # type: ignore[arg-type]


H, W = 48, 64
META = ImageMeta(image_id=1, orig_size=(40, 50), input_size=(H, W), border=(3.0, 5.0))
DET = Detections(torch.tensor([[4.0, 4.0, 36.0, 28.0]]), torch.ones(1), torch.zeros(1, dtype=torch.int64))


def test_flipped_view_masks_align_with_the_unflipped_ones():
    image = blob(H, W)
    predict = ImageMask()
    probs = view_mask_probs(predict, [flip_pass(image)], (H, W), 0, 1, DET, META)
    plain, mirrored = predict.seen
    assert not torch.allclose(plain, mirrored, atol=1e-3)  # the view's own map runs the other way ...
    assert torch.allclose(plain, mirrored.flip(-1), atol=1e-5)  # ... and lines up once mapped back
    assert torch.allclose(probs, plain, atol=1e-5)


def test_views_of_several_passes_are_averaged():
    image = blob(H, W)
    one = view_mask_probs(ImageMask(), [flip_pass(image)], (H, W), 0, 1, DET, META)
    two = view_mask_probs(ImageMask(), [flip_pass(image), flip_pass(image * 0.5)], (H, W), 0, 1, DET, META)
    assert torch.allclose(two, one * 0.75, atol=1e-6)  # (1 + 1 + 0.5 + 0.5) / 4


def test_masks_are_pasted_into_original_pixels_and_thresholded():
    image = blob(H, W)
    truth = image[3:43, 5:55] > 0.5  # the blob in original pixels: input minus the border (top 3, left 5)
    probs = view_mask_probs(ImageMask(), [flip_pass(image)], (H, W), 0, 1, DET, META)
    rles = encode_masks(probs, DET.boxes, META.orig_size)
    mask = decode_rle(rles, META.orig_size)[0]
    assert rles[0]["size"] == [40, 50]
    iou = float((mask & truth).sum() / (mask | truth).sum())
    assert iou > 0.9
