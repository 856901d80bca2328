"""Corner target encoding shared by every matching strategy (CornerNet's heatmaps and offsets).

All functions are pure: explicit arguments, no randomness, no I/O. Boxes come in network-input
pixels and are mapped to output-map ("feature") units with the grid's ratio (511 -> 128 gives
3.9921875 input pixels per cell).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from cnet.types import Grid, GroundTruth


def gaussian_radius(height: float, width: float, min_overlap: float = 0.3) -> float:
    """CornerNet's radius: the smallest of three quadratic solutions (kept with their quirks).

    A pair of corners inside the radius still forms a box with IoU >= ``min_overlap`` to the
    ground truth. ``height``/``width`` are the box size in output-map cells.
    """
    h, w, o = height, width, min_overlap
    b1 = h + w
    c1 = w * h * (1 - o) / (1 + o)
    r1 = (b1 - math.sqrt(b1**2 - 4 * c1)) / 2  # one corner inside, one outside
    b2 = 2 * (h + w)
    c2 = (1 - o) * w * h
    r2 = (b2 - math.sqrt(b2**2 - 16 * c2)) / 8  # both inside
    a3 = 4 * o
    b3 = -2 * o * (h + w)
    c3 = (o - 1) * w * h
    r3 = (b3 + math.sqrt(b3**2 - 4 * a3 * c3)) / (2 * a3)  # both outside
    return min(r1, r2, r3)


def gaussian_kernel(radius: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """[2r+1, 2r+1] unnormalised Gaussian with sigma = (2r+1)/6 and peak 1 at the centre."""
    d = 2 * radius + 1
    sigma = d / 6
    r = torch.arange(-radius, radius + 1, dtype=torch.float64)
    g = torch.exp(-(r[None, :] ** 2 + r[:, None] ** 2) / (2 * sigma**2))
    g[g < torch.finfo(torch.float64).eps * g.max()] = 0
    return g.to(dtype)


def draw_gaussian(heat: Tensor, x: int, y: int, radius: int) -> None:
    """Max-merge a Gaussian of ``radius`` centred at cell (x, y) into ``heat`` [H, W], in place."""
    height, width = heat.shape
    g = gaussian_kernel(radius, heat.dtype).to(heat.device)
    left, right = min(x, radius), min(width - x, radius + 1)
    top, bottom = min(y, radius), min(height - y, radius + 1)
    if left + right <= 0 or top + bottom <= 0:
        return
    patch = heat[y - top : y + bottom, x - left : x + right]
    gpatch = g[radius - top : radius + bottom, radius - left : radius + right]
    torch.maximum(patch, gpatch, out=patch)


@dataclass
class CornerPoints:
    """Per-object corner geometry of one image in output-map units.

    tl, br:         [N, 2] float (x, y) corner positions
    tl_int, br_int: [N, 2] int64 cell holding the corner (floor, clamped to the map)
    center:         [N, 2] float box centre
    labels:         [N] int64
    """

    tl: Tensor
    br: Tensor
    tl_int: Tensor
    br_int: Tensor
    center: Tensor
    labels: Tensor


def corner_points(gt: GroundTruth, grid: Grid) -> CornerPoints:
    """Map a GroundTruth's boxes [N, 4] (input pixels) to corner points on the output map."""
    scale = gt.boxes.new_tensor([1 / grid.ratio_x, 1 / grid.ratio_y])
    tl = gt.boxes[:, :2] * scale  # [N, 2]
    br = gt.boxes[:, 2:] * scale
    limit = torch.tensor([grid.out_w - 1, grid.out_h - 1], device=tl.device)
    tl_int = tl.long().clamp(min=0).minimum(limit)
    br_int = br.long().clamp(min=0).minimum(limit)
    return CornerPoints(tl, br, tl_int, br_int, (tl + br) / 2, gt.labels)


@dataclass
class CornerTargets:
    """Dense corner targets of a batch.

    tl_heat, br_heat: [B, C, H, W] Gaussian heatmaps, 1 exactly at corner cells
    tl_off, br_off:   [B, 2, H, W] sub-cell offsets (x, y), written at corner cells only
    tl_mask, br_mask: [B, 1, H, W] 1.0 at cells holding a corner of any class
    points:           per-image CornerPoints, for strategies that need per-object targets
    ground_truth:     the per-image GroundTruth these were encoded from (instance-level parts:
                      a mask head reads the boxes, labels and masks)
    """

    tl_heat: Tensor
    br_heat: Tensor
    tl_off: Tensor
    br_off: Tensor
    tl_mask: Tensor
    br_mask: Tensor
    points: list[CornerPoints]
    ground_truth: list[GroundTruth] = field(default_factory=list)


@torch.no_grad()
def encode_corners(gts: list[GroundTruth], grid: Grid, num_classes: int, min_overlap: float = 0.3) -> CornerTargets:
    """Heatmap, offset and mask targets for both corners of every box (CornerNet, §4)."""
    device = gts[0].boxes.device if gts else torch.device("cpu")
    b, h, w = len(gts), grid.out_h, grid.out_w
    tl_heat = torch.zeros(b, num_classes, h, w, device=device)
    br_heat = torch.zeros_like(tl_heat)
    tl_off = torch.zeros(b, 2, h, w, device=device)
    br_off = torch.zeros_like(tl_off)
    points = []
    for i, gt in enumerate(gts):
        p = corner_points(gt, grid)
        points.append(p)
        if len(gt) == 0:
            continue
        size = (p.br - p.tl).ceil()  # [N, 2] (w, h) in cells
        for k in range(len(gt)):
            c = int(p.labels[k])
            radius = max(0, int(gaussian_radius(float(size[k, 1]), float(size[k, 0]), min_overlap)))
            (tx, ty), (bx, by) = p.tl_int[k].tolist(), p.br_int[k].tolist()
            draw_gaussian(tl_heat[i, c], tx, ty, radius)
            draw_gaussian(br_heat[i, c], bx, by, radius)
        # plain assignment: a later object overwrites an earlier one at the same cell
        tl_off[i, :, p.tl_int[:, 1], p.tl_int[:, 0]] = (p.tl - p.tl_int).T
        br_off[i, :, p.br_int[:, 1], p.br_int[:, 0]] = (p.br - p.br_int).T
    tl_mask = (tl_heat == 1).any(dim=1, keepdim=True).float()
    br_mask = (br_heat == 1).any(dim=1, keepdim=True).float()
    return CornerTargets(tl_heat, br_heat, tl_off, br_off, tl_mask, br_mask, points, list(gts))


def scatter_at_corners(values: list[Tensor], cells: list[Tensor], shape: tuple[int, int, int, int]) -> Tensor:
    """Write per-object vectors into a dense map by plain assignment.

    values: per image [N, D]; cells: per image [N, 2] int64 (x, y); shape: (B, D, H, W).
    """
    out = torch.zeros(shape, device=values[0].device if values else "cpu")
    for i, (v, c) in enumerate(zip(values, cells)):
        if len(v):
            out[i, :, c[:, 1], c[:, 0]] = v.T.to(out.dtype)
    return out


@torch.no_grad()
def cell_to_center_targets(corners: CornerTargets, grid: Grid, tl_key: str, br_key: str) -> dict[str, Tensor]:
    """Linear offsets from each corner's integer cell to its float box centre, [B, 2, H, W] each.

    tl: centre - tl_cell; br: br_cell - centre (output-map units), written at the corner cells.
    The cross-star guiding shift (Eq. 7) and the centre-regression ablation share these targets;
    the br value goes negative for sub-cell boxes.
    """
    shape = (len(corners.points), 2, grid.out_h, grid.out_w)
    tl_vals = [p.center - p.tl_int for p in corners.points]  # [N, 2]
    br_vals = [p.br_int - p.center for p in corners.points]
    return {
        tl_key: scatter_at_corners(tl_vals, [p.tl_int for p in corners.points], shape),
        br_key: scatter_at_corners(br_vals, [p.br_int for p in corners.points], shape),
    }
