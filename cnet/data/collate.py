"""Batch collation for the detection datasets."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from cnet.types import GroundTruth, ImageMeta


def collate(
    batch: Sequence[tuple[Tensor, GroundTruth, ImageMeta]],
) -> tuple[Tensor, list[GroundTruth], list[ImageMeta]]:
    """Stack items into ``(images [B, 3, Hmax, Wmax], targets, metas)``.

    Smaller images are padded at the bottom/right with 0 (the mean pixel after normalization), so
    their boxes and ``ImageMeta.border`` (top, left) stay valid; ``ImageMeta.input_size`` keeps each
    image's own unpadded input size. Training batches are all S x S and need no padding.
    """
    if not batch:
        raise ValueError("collate: empty batch")
    images, targets, metas = zip(*batch)
    h = max(int(im.shape[1]) for im in images)
    w = max(int(im.shape[2]) for im in images)
    out = images[0].new_zeros(len(images), images[0].shape[0], h, w)
    for i, im in enumerate(images):
        out[i, :, : im.shape[1], : im.shape[2]] = im
    return out, list(targets), list(metas)
