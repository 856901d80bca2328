"""Instance-mask encoding as small pure functions (no randomness, no I/O).

* :func:`decode_segmentation`: a COCO ``segmentation`` (polygons, uncompressed or compressed RLE)
  -> bool bitmap [H, W];
* :func:`crop_masks`: bitmaps [N, H, W] -> the part inside each box, resampled to [P, M, M]
  (the mask head's training targets; RoIAlign with ``aligned=True``, as the features);
* :func:`paste_masks`: [D, M, M] maps back into image pixels [D, H, W] (the inverse of
  :func:`crop_masks` up to resampling);
* :func:`encode_rle` / :func:`decode_rle`: bool masks [D, H, W] <-> COCO compressed RLE dicts
  (``counts`` as str, JSON-ready).

Pixel ``(row i, col j)`` covers ``[j, j+1) x [i, i+1)`` (pycocotools' convention); boxes are xyxy
in the same pixels.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pycocotools import mask as mask_utils
from torch import Tensor
from torchvision.ops import roi_align


def decode_segmentation(segm: Any, height: int, width: int) -> np.ndarray:
    """A COCO annotation's ``segmentation`` -> bool [height, width].

    Polygons (list of ``[x0, y0, x1, y1, ...]``) are merged; uncompressed RLE (``counts`` a list)
    and compressed RLE (``counts`` a str/bytes) are decoded as they are.
    """
    if isinstance(segm, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(segm, height, width))
    elif isinstance(segm, dict) and isinstance(segm.get("counts"), list):
        rle = mask_utils.frPyObjects(segm, *segm["size"])
    elif isinstance(segm, dict) and "counts" in segm:
        rle = segm
    else:
        raise ValueError(f"segmentation must be polygons or an RLE dict, got {type(segm).__name__}")
    return mask_utils.decode(rle).astype(bool)


def crop_masks(masks: Tensor, boxes: Tensor, indices: Tensor, size: int) -> Tensor:
    """The region of ``masks[indices[p]]`` inside ``boxes[p]``, resampled to [P, size, size] in [0, 1].

    masks: [N, H, W] bool/float bitmaps; boxes: [P, 4] xyxy in the masks' pixels; indices: [P]
    int64 into N. Each output cell is the area average of its bin (adaptive RoIAlign sampling);
    threshold at 0.5 for a binary target.
    """
    if len(boxes) == 0:
        return masks.new_zeros(0, size, size, dtype=torch.float32)
    rois = torch.cat([indices[:, None].to(boxes.dtype), boxes], dim=1)  # [P, 5]: (index, x1, y1, x2, y2)
    out = roi_align(masks[:, None].float(), rois.float(), (size, size), 1.0, sampling_ratio=0, aligned=True)
    return out[:, 0]


def paste_masks(maps: Tensor, boxes: Tensor, image_size: tuple[int, int]) -> Tensor:
    """Mask maps [D, M, M] covering ``boxes`` [D, 4] (xyxy) -> [D, H, W] float, 0 outside the boxes.

    The bilinear inverse of :func:`crop_masks`: map cell ``u`` spans box-relative ``[u, u+1) / M``,
    so pixel centre ``x + 0.5`` samples the map at ``2 (x + 0.5 - x1) / (x2 - x1) - 1`` in
    ``grid_sample``'s ``align_corners=False`` units. Each box is pasted over its own pixels only.
    """
    h, w = image_size
    out = maps.new_zeros(len(maps), h, w)
    for d in range(len(maps)):
        x1, y1, x2, y2 = boxes[d].tolist()
        c0, c1 = max(int(np.floor(x1)), 0), min(int(np.ceil(x2)), w)
        r0, r1 = max(int(np.floor(y1)), 0), min(int(np.ceil(y2)), h)
        if c1 <= c0 or r1 <= r0 or x2 <= x1 or y2 <= y1:
            continue
        gx = 2 * (torch.arange(c0, c1, dtype=maps.dtype, device=maps.device) + 0.5 - x1) / (x2 - x1) - 1
        gy = 2 * (torch.arange(r0, r1, dtype=maps.dtype, device=maps.device) + 0.5 - y1) / (y2 - y1) - 1
        grid = torch.stack(torch.meshgrid(gx, gy, indexing="xy"), dim=-1)  # [rows, cols, 2] as (x, y)
        patch = F.grid_sample(maps[d][None, None], grid[None], mode="bilinear", align_corners=False)
        out[d, r0:r1, c0:c1] = patch[0, 0]
    return out


def encode_rle(masks: Tensor) -> list[dict[str, Any]]:
    """bool masks [D, H, W] -> D COCO compressed RLEs ``{"size": [H, W], "counts": str}``."""
    if len(masks) == 0:
        return []
    arr = np.asfortranarray(masks.detach().cpu().numpy().astype(np.uint8).transpose(1, 2, 0))  # [H, W, D]
    rles = mask_utils.encode(arr)
    return [{"size": [int(s) for s in r["size"]], "counts": r["counts"].decode("ascii")} for r in rles]


def decode_rle(rles: list[dict[str, Any]], image_size: tuple[int, int]) -> Tensor:
    """COCO RLEs (``counts`` str or bytes) -> bool [D, H, W]; ``image_size`` shapes an empty list."""
    if not rles:
        return torch.zeros(0, *image_size, dtype=torch.bool)
    coded = [{"size": r["size"], "counts": r["counts"]} for r in rles]
    for r in coded:
        if isinstance(r["counts"], str):  # JSON keeps counts as str; pycocotools wants bytes
            r["counts"] = r["counts"].encode("ascii")
    return torch.from_numpy(mask_utils.decode(coded).astype(bool)).permute(2, 0, 1).contiguous()
