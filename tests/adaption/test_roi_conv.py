"""RoI convolution: torchvision's offset layout, the computed sampling grid, the box-size targets."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import deform_conv2d

from cnet.adaption.roi_conv import RoIConv, encode_box_size, roi_offsets
from cnet.adaption.sampling import regular_locations, sampling_locations
from cnet.targets import encode_corners
from cnet.types import Grid, GroundTruth


def one_tap(i: int, j: int) -> torch.Tensor:
    """[1, 1, 3, 3] kernel that copies kernel tap (row i, column j) only."""
    w = torch.zeros(1, 1, 3, 3)
    w[0, 0, i, j] = 1.0
    return w


def test_torchvision_offsets_are_dy_dx_pairs_per_tap_row_major():
    """Shift one tap by (dy, dx) = (2, -1): output(y, x) = input(y - 1 + i + 2, x - 1 + j - 1)."""
    torch.manual_seed(0)
    x = torch.randn(1, 1, 6, 7)
    i, j = 0, 2  # tap k = 3 i + j = 2 -> channels 4 (dy) and 5 (dx)
    offset = torch.zeros(1, 18, 6, 7)
    offset[:, 2 * (3 * i + j)] = 2.0
    offset[:, 2 * (3 * i + j) + 1] = -1.0
    out = deform_conv2d(x, offset, one_tap(i, j), padding=1)
    expected = torch.zeros_like(x)  # input(y + 1, x), zero past the bottom edge
    expected[..., :-1, :] = x[..., 1:, :]
    assert torch.allclose(out, expected)
    swapped = torch.zeros_like(x)  # read as (dx, dy): input(y - 2, x + 3)
    swapped[..., 2:, :-3] = x[..., :-2, 3:]
    assert not torch.allclose(out, swapped)


def test_sampling_locations_are_where_deform_conv2d_samples():
    """For random offsets, each tap's output equals bilinear sampling at sampling_locations."""
    torch.manual_seed(1)
    h, w = 5, 6
    x = torch.randn(1, 1, h, w)
    offset = torch.randn(1, 18, h, w) * 0.8
    inds = torch.arange(h * w)[None]  # every cell
    loc = sampling_locations(offset, inds, w)  # [1, HW, 9, 2]
    for k in range(9):
        out = deform_conv2d(x, offset, one_tap(k // 3, k % 3), padding=1).flatten()
        gx = loc[0, :, k, 0] / (w - 1) * 2 - 1  # align_corners=True: -1 / 1 are pixel centres 0 / w-1
        gy = loc[0, :, k, 1] / (h - 1) * 2 - 1
        grid = torch.stack([gx, gy], -1)[None, None]  # [1, 1, HW, 2]
        ref = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True).flatten()
        assert torch.allclose(out, ref, atol=1e-5), k


@pytest.mark.parametrize("corner", ["tl", "br"])
def test_roi_sampling_points_are_the_bin_centres_of_the_box(corner):
    """Box 6 x 3 cells with top-left corner at cell (4, 5): x in {5, 7, 9}, y in {5.5, 6.5, 7.5}."""
    h, w = 12, 14
    size = torch.zeros(1, 2, h, w)
    size[:, 0], size[:, 1] = 6.0, 3.0
    cell = (4, 5) if corner == "tl" else (10, 8)  # both corners of the same box
    inds = torch.tensor([[cell[1] * w + cell[0]]])
    loc = sampling_locations(roi_offsets(size, corner), inds, w)[0, 0]  # [9, 2]
    ys, xs = torch.meshgrid(torch.tensor([5.5, 6.5, 7.5]), torch.tensor([5.0, 7.0, 9.0]), indexing="ij")
    expected = torch.stack([xs.flatten(), ys.flatten()], -1)  # row-major taps
    assert torch.allclose(loc, expected, atol=1e-5)


def test_roi_offsets_of_a_3x3_box_shift_every_tap_uniformly():
    """A 3 x 3 box has bin centres 1 apart, like the plain taps: only the box origin moves them."""
    size = torch.full((2, 2, 4, 5), 3.0)
    tl, br = roi_offsets(size, "tl"), roi_offsets(size, "br")
    # tl samples x + 0.5, x + 1.5, x + 2.5 -> every tap shifted by +1.5; br by -1.5
    assert torch.allclose(tl, torch.full_like(tl, 1.5)) and torch.allclose(br, torch.full_like(br, -1.5))
    with pytest.raises(ValueError, match="corner"):
        roi_offsets(size, "tr")


def test_module_places_the_points_from_its_regressed_size():
    """Size head forced to a constant (ln 6, ln 3): the eval-mode offsets give the expected grid,
    and the adapted feature equals deform_conv2d at those offsets."""
    torch.manual_seed(0)
    m = RoIConv(in_channels=4).eval()
    for corner in (m.tl, m.br):
        last = corner.size[-1]
        torch.nn.init.zeros_(last.weight)
        last.bias.data = torch.tensor([math.log(6.0), math.log(3.0)])
    tl_pool, br_pool = torch.randn(1, 4, 12, 14), torch.randn(1, 4, 12, 14)
    tl, _br, maps = m(tl_pool, br_pool)
    inds = torch.tensor([[5 * 14 + 4]])
    tl_loc = sampling_locations(maps["tl_dcn_offset"], inds, 14)[0, 0]
    br_loc = sampling_locations(maps["br_dcn_offset"], torch.tensor([[8 * 14 + 10]]), 14)[0, 0]
    assert torch.allclose(tl_loc, br_loc, atol=1e-4)
    assert torch.allclose(tl_loc[0], torch.tensor([5.0, 5.5])) and torch.allclose(tl_loc[8], torch.tensor([9.0, 7.5]))
    assert not torch.allclose(tl_loc, regular_locations(inds, 14)[0, 0])
    size = torch.tensor([6.0, 3.0]).view(1, 2, 1, 1).expand(1, 2, 12, 14)
    assert torch.allclose(tl, deform_conv2d(tl_pool, roi_offsets(size, "tl"), m.tl.weight, padding=1), atol=1e-6)
    assert maps["tl_box_size"].shape == (1, 2, 12, 14)
    assert set(m.train()(tl_pool, br_pool)[2]) == {"tl_box_size", "br_box_size"}  # offsets only in eval


def test_box_size_targets_and_loss():
    grid = Grid(64, 64, 16, 16)
    gt = GroundTruth(torch.tensor([[4.0, 8.0, 28.0, 20.0]]), torch.tensor([0]))  # 6 x 3 cells
    corners = encode_corners([gt], grid, 2)
    t = encode_box_size(corners, grid)
    expected = torch.tensor([math.log(6.0), math.log(3.0)])
    assert torch.allclose(t["tl_box_size"][0, :, 2, 1], expected)  # tl cell (1, 2)
    assert torch.allclose(t["br_box_size"][0, :, 5, 7], expected)  # br cell (7, 5)
    assert t["tl_box_size"].abs().sum() == expected.abs().sum()  # nothing elsewhere
    m = RoIConv(in_channels=4)
    perfect = {"tl_box_size": t["tl_box_size"], "br_box_size": t["br_box_size"]}
    assert m.loss(perfect, t, corners) == {"tl_box_size": 0, "br_box_size": 0}
    off = {k: v + 0.5 for k, v in perfect.items()}
    assert all(v > 0 for v in m.loss(off, t, corners).values())
    assert m.loss_weights == {"box_size": 0.05}
