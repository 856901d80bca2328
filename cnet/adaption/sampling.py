"""Where a 3x3 (deformable) convolution samples, for the Fig. 7 picture and the RoI-conv offsets.

torchvision's ``deform_conv2d`` (stride 1, padding 1, one offset group) computes output cell
(x, y) from kernel tap k = 3 i + j (row i, column j, row-major) at the input position

    (x + j - 1 + offset[2k + 1], y + i - 1 + offset[2k])

i.e. the 18 offset channels are (dy, dx) pairs, one per tap in row-major order
(tests/adaption/test_roi_conv.py checks this against a hand-computed result). Everything here is
in output-map units (cells); ``inds`` are flat cell indices ``y * W + x`` as in ``Corners``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from cnet.ops import cell_xy, gather_at

KERNEL = 3
NUM_TAPS = KERNEL * KERNEL


def kernel_taps(device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
    """[9, 2] (dx, dy) of the plain 3x3 taps relative to the output cell, row-major: (j - 1, i - 1)."""
    r = torch.arange(KERNEL, device=device, dtype=dtype) - (KERNEL - 1) / 2
    dy, dx = torch.meshgrid(r, r, indexing="ij")  # row i varies slowest
    return torch.stack([dx.flatten(), dy.flatten()], dim=-1)


def offsets_to_xy(offset: Tensor) -> Tensor:
    """torchvision offsets [B, 18, H, W] ((dy, dx) per tap) -> [B, 9, 2, H, W] as (dx, dy)."""
    b, c, h, w = offset.shape
    if c != 2 * NUM_TAPS:
        raise ValueError(f"deformable offsets need {2 * NUM_TAPS} channels, got shape {tuple(offset.shape)}")
    return offset.reshape(b, NUM_TAPS, 2, h, w).flip(2)


def xy_to_offsets(xy: Tensor) -> Tensor:
    """Inverse of :func:`offsets_to_xy`: [B, 9, 2, H, W] (dx, dy) -> [B, 18, H, W] (dy, dx) per tap."""
    b, _, _, h, w = xy.shape
    return xy.flip(2).reshape(b, 2 * NUM_TAPS, h, w)


def regular_locations(inds: Tensor, width: int) -> Tensor:
    """The plain 3x3 taps around each cell (``adaption=none``): [B, K] -> [B, K, 9, 2] (x, y)."""
    taps = kernel_taps(inds.device)  # [9, 2]
    return cell_xy(inds, width)[:, :, None, :] + taps


def sampling_locations(offset: Tensor, inds: Tensor, width: int) -> Tensor:
    """Deformable sampling points at the cells ``inds`` [B, K]: regular tap + learned offset.

    offset: [B, 18, H, W] in torchvision's layout; ``width`` must equal W. Returns [B, K, 9, 2]
    (x, y) in output-map units.
    """
    if offset.shape[-1] != width:
        raise ValueError(f"sampling_locations: width={width} but the offset map is {offset.shape[-1]} wide")
    per_cell = gather_at(offset, inds)  # [B, K, 18]
    dxy = per_cell.reshape(*per_cell.shape[:2], NUM_TAPS, 2).flip(-1)  # (dy, dx) -> (dx, dy)
    return regular_locations(inds, width).to(offset.dtype) + dxy
