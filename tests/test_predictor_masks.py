"""Predictor with a mask head: per-view masks mapped back and averaged, pasted, RLE-encoded."""

from __future__ import annotations

import torch
from torchvision.ops import roi_align

from cnet.masks import decode_rle
from cnet.predictor import HFlip, Identity, Predictor, segm_tag
from cnet.types import Detections, ImageMeta, Outputs


class ImageMask:
    """A stand-in head whose 'mask' is the RoIAligned first feature channel (flip-equivariant)."""

    def __init__(self) -> None:
        self.seen: list[torch.Tensor] = []

    def predict_masks(self, features, rois, labels, input_size):
        maps = roi_align(features[:, :1], rois, (28, 28), 1.0, sampling_ratio=2, aligned=True)[:, 0]
        self.seen.append(maps)
        return maps


def blob(h: int, w: int) -> torch.Tensor:
    """An asymmetric shape: a right triangle in [10, 40) x [8, 30) of a [h, w] image."""
    ys, xs = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    return ((xs >= 10) & (ys >= 8) & (ys < 30) & (xs - 10 < (ys - 8) * 30 / 22)).float()


def outputs_for(image: torch.Tensor) -> Outputs:
    feats = torch.stack([image, image.flip(-1)])[:, None]  # views batched view-major: [2, 1, H, W]
    return Outputs([{}], tuple(image.shape), features=feats)  # type: ignore[arg-type]


def test_flipped_view_masks_align_with_the_unflipped_ones():
    h, w = 48, 64
    image = blob(h, w)
    head = ImageMask()
    predictor = Predictor(torch.nn.Identity(), None, [Identity(), HFlip()], mask_head=head)  # type: ignore[arg-type]
    meta = ImageMeta(image_id=1, orig_size=(40, 50), input_size=(h, w), border=(3.0, 5.0))
    det = Detections(torch.tensor([[4.0, 4.0, 36.0, 28.0]]), torch.ones(1), torch.zeros(1, dtype=torch.int64))
    probs = predictor.mask_probs([(predictor.views, outputs_for(image))], (h, w), 0, 1, det, meta)
    plain, mirrored = head.seen
    assert not torch.allclose(plain, mirrored, atol=1e-3)  # the view's own map runs the other way ...
    assert torch.allclose(plain, mirrored.flip(-1), atol=1e-5)  # ... and lines up once mapped back
    assert probs is not None and torch.allclose(probs, plain, atol=1e-5)


def test_masks_are_pasted_into_original_pixels_and_thresholded():
    h, w = 48, 64
    image = blob(h, w)
    head = ImageMask()
    predictor = Predictor(torch.nn.Identity(), None, [Identity(), HFlip()], mask_head=head)  # type: ignore[arg-type]
    meta = ImageMeta(image_id=1, orig_size=(40, 50), input_size=(h, w), border=(3.0, 5.0))
    # the blob in original pixels: input minus the border (top 3, left 5)
    truth = image[3:43, 5:55] > 0.5
    det = Detections(torch.tensor([[4.0, 4.0, 36.0, 28.0]]), torch.ones(1), torch.zeros(1, dtype=torch.int64))
    probs = predictor.mask_probs([(predictor.views, outputs_for(image))], (h, w), 0, 1, det, meta)
    rles = predictor.encode_masks(probs, det.boxes, meta.orig_size)
    mask = decode_rle(rles, meta.orig_size)[0]
    assert rles[0]["size"] == [40, 50]
    iou = float((mask & truth).sum() / (mask | truth).sum())
    assert iou > 0.9


def test_segm_tag_names():
    assert segm_tag("bbox") == "segm" and segm_tag("crowd_bbox") == "crowd_segm"
    assert segm_tag("oracle_bbox") == "oracle_segm"
