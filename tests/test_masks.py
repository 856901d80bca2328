"""cnet.masks: segmentation decoding, RLE encode -> decode round trips, crop -> paste round trips."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cnet.masks import crop_masks, decode_rle, decode_segmentation, encode_rle, paste_masks


def disk(size: tuple[int, int], cx: float, cy: float, r: float) -> torch.Tensor:
    ys, xs = torch.meshgrid(torch.arange(size[0]) + 0.5, torch.arange(size[1]) + 0.5, indexing="ij")
    return (xs - cx) ** 2 + (ys - cy) ** 2 <= r**2


def triangle(size: tuple[int, int], x0: float, y0: float, side: float) -> torch.Tensor:
    ys, xs = torch.meshgrid(torch.arange(size[0]) + 0.5, torch.arange(size[1]) + 0.5, indexing="ij")
    return (ys >= y0) & (ys <= y0 + side) & ((xs - x0) <= (ys - y0)) & (xs >= x0)


def box_of(mask: torch.Tensor) -> torch.Tensor:
    ys, xs = mask.nonzero(as_tuple=True)
    return torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32)


def iou(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a & b).sum() / (a | b).sum())


def test_rle_encode_decode_round_trip():
    masks = torch.stack(
        [disk((40, 50), 20, 18, 9), triangle((40, 50), 5, 3, 30), torch.zeros(40, 50, dtype=torch.bool)]
    )
    rles = encode_rle(masks)
    assert len(rles) == 3 and all(isinstance(r["counts"], str) and r["size"] == [40, 50] for r in rles)
    assert torch.equal(decode_rle(rles, (40, 50)), masks)
    assert decode_rle([], (4, 5)).shape == (0, 4, 5) and encode_rle(masks[:0]) == []


def test_polygon_and_rle_segmentations_decode_to_the_same_bitmap():
    poly = [[2.0, 2.0, 12.0, 2.0, 12.0, 8.0, 2.0, 8.0]]  # the pixels [2, 12) x [2, 8)
    from_poly = decode_segmentation(poly, 10, 15)
    expected = np.zeros((10, 15), dtype=bool)
    expected[2:8, 2:12] = True
    assert (from_poly == expected).all()
    flat = expected.reshape(-1, order="F").astype(np.int8)  # uncompressed RLE: column-major runs, zeros first
    change = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
    counts = np.diff(np.concatenate([[0], change])).tolist()
    assert (decode_segmentation({"counts": counts, "size": [10, 15]}, 10, 15) == expected).all()
    compressed = encode_rle(torch.from_numpy(expected)[None])[0]
    assert (decode_segmentation(compressed, 10, 15) == expected).all()
    with pytest.raises(ValueError, match="segmentation"):
        decode_segmentation(3, 10, 15)


@pytest.mark.parametrize("size", [32, 48, 80, 150])
@pytest.mark.parametrize("shape", ["disk", "triangle"])
def test_mask_to_28x28_target_and_pasted_back_keeps_iou_above_0_9(size, shape):
    image = (200, 220)
    mask = (
        disk(image, 37.3 + size / 2, 21.6 + size / 2, size / 2)
        if shape == "disk"
        else triangle(image, 37.3, 21.6, size)
    )
    box = box_of(mask)
    target = crop_masks(mask[None], box[None], torch.tensor([0]), 28) >= 0.5  # the head's training target
    assert target.shape == (1, 28, 28)
    back = paste_masks(target.float(), box[None], image)[0] >= 0.5
    assert iou(back, mask) >= 0.9


def test_paste_is_zero_outside_its_box_and_handles_empty_boxes():
    out = paste_masks(torch.ones(2, 28, 28), torch.tensor([[10.0, 5.0, 20.0, 15.0], [3.0, 3.0, 3.0, 9.0]]), (30, 30))
    assert out[0, 5:15, 10:20].min() > 0.5 and out[0].sum() == out[0, 5:15, 10:20].sum()
    assert out[1].sum() == 0
