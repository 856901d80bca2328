"""Corner target encoding: Gaussian radius, kernels and the worked vectors of the reference."""

from __future__ import annotations

import math

import pytest
import torch

from cnet.adaption.cross_star import encode_guiding_shift
from cnet.matching.centripetal import encode_centripetal
from cnet.targets import corner_points, draw_gaussian, encode_corners, gaussian_kernel, gaussian_radius
from cnet.types import Grid, GroundTruth

# docs/implementation_facts.md §4: s = 256, 64 x 64 output map
BOXES = torch.tensor([[23.6667, 23.8757, 238.6326, 151.8874], [123.6667, 123.8757, 138.6326, 251.8874]])
GRID = Grid(256, 256, 64, 64)


def test_gaussian_radius_worked_vectors():
    # (w, h) = (54, 33) -> r = min(12.960, 9.053, 17.142); (4, 33) -> min(2.033, 1.347, 3.500)
    assert gaussian_radius(33, 54, 0.3) == pytest.approx(9.053, abs=1e-3)
    assert gaussian_radius(33, 4, 0.3) == pytest.approx(1.347, abs=1e-3)
    assert int(gaussian_radius(33, 54)) == 9 and int(gaussian_radius(33, 4)) == 1


def test_gaussian_kernel_r2_centre_row():
    g = gaussian_kernel(2)
    expected = torch.tensor([0.056135, 0.486752, 1.0, 0.486752, 0.056135])
    assert torch.allclose(g[2], expected, atol=1e-6)
    assert g.shape == (5, 5) and torch.equal(g, g.T)


def test_draw_gaussian_clips_and_max_merges():
    heat = torch.zeros(6, 6)
    draw_gaussian(heat, 0, 0, 2)  # at the border: clipped, no error
    draw_gaussian(heat, 1, 0, 2)
    assert heat[0, 0] == 1 and heat[0, 1] == 1
    # max-merge: cell (2, 0) is closer to the second peak
    assert heat[0, 2] == pytest.approx(float(gaussian_kernel(2)[2, 3]))


def test_corner_points_and_offsets_worked_vectors():
    gt = GroundTruth(BOXES, torch.tensor([2, 3]))
    p = corner_points(gt, GRID)
    assert p.tl_int.tolist() == [[5, 5], [30, 30]]
    assert p.br_int.tolist() == [[59, 37], [34, 62]]
    t = encode_corners([gt], GRID, num_classes=4)
    tl_off = t.tl_off[0, :, 5, 5]
    br_off = t.br_off[0, :, 37, 59]
    assert torch.allclose(tl_off, torch.tensor([0.916675, 0.968925]), atol=1e-5)
    assert torch.allclose(br_off, torch.tensor([0.65815, 0.97185]), atol=1e-5)
    assert t.tl_heat[0, 2, 5, 5] == 1 and t.br_heat[0, 3, 62, 34] == 1
    assert t.tl_mask.sum() == 2 and t.br_mask.sum() == 2
    # radius 9 for the first box: the Gaussian reaches 9 cells, not 10
    assert t.tl_heat[0, 2, 5, 5 + 9] > 0 and t.tl_heat[0, 2, 5, 5 + 10] == 0


def test_guiding_and_centripetal_worked_vectors():
    gt = GroundTruth(BOXES, torch.tensor([2, 3]))
    corners = encode_corners([gt], GRID, num_classes=4)
    g = encode_guiding_shift(corners, GRID)
    cs = encode_centripetal(corners, GRID)
    assert torch.allclose(g["tl_guiding"][0, :, 5, 5], torch.tensor([27.7874125, 16.9703875]), atol=1e-4)
    assert torch.allclose(g["br_guiding"][0, :, 37, 59], torch.tensor([26.2125875, 15.0296125]), atol=1e-4)
    assert torch.allclose(g["tl_guiding"][0, :, 30, 30], torch.tensor([2.7874125, 16.9703875]), atol=1e-4)
    assert torch.allclose(g["br_guiding"][0, :, 62, 34], torch.tensor([1.2125875, 15.0296125]), atol=1e-4)
    assert torch.allclose(cs["tl_cs"][0, :, 5, 5], torch.tensor([3.2910379, 2.7726801]), atol=1e-5)
    assert torch.allclose(cs["br_cs"][0, :, 37, 59], torch.tensor([3.2910379, 2.7726801]), atol=1e-5)
    assert torch.allclose(cs["tl_cs"][0, :, 30, 30], torch.tensor([0.6263327, 2.7726801]), atol=1e-5)
    # nothing written outside the corner cells
    assert (cs["tl_cs"][0].abs().sum(0) > 0).sum() == 2


def test_empty_ground_truth_gives_empty_targets():
    t = encode_corners([GroundTruth.empty()], GRID, num_classes=3)
    assert t.tl_heat.sum() == 0 and t.tl_mask.sum() == 0 and t.tl_off.abs().sum() == 0
    assert math.isclose(float(encode_centripetal(t, GRID)["tl_cs"].abs().sum()), 0.0)


def test_a_non_square_grid_with_unequal_cell_sizes_by_hand():
    """64 x 128 input on a 16 x 16 map: a cell is 8 px wide and 4 px tall. Box (20, 7, 100, 57):
    tl (20 / 8, 7 / 4) = (2.5, 1.75) -> cell (2, 1), offset (0.5, 0.75); br (12.5, 14.25) -> cell
    (12, 14), offset (0.5, 0.25); centre (7.5, 8.0). Guiding shift (Eq. 7): tl (7.5 - 2, 8 - 1) =
    (5.5, 7), br (12 - 7.5, 14 - 8) = (4.5, 6); centripetal shift (Eq. 1): log(5), log(6.25) for both
    corners. x and y scaled by the other side's cell size would put every corner elsewhere."""
    grid = Grid(64, 128, 16, 16)
    gt = GroundTruth(torch.tensor([[20.0, 7.0, 100.0, 57.0]]), torch.tensor([1]))
    t = encode_corners([gt], grid, num_classes=2)
    assert t.tl_heat[0, 1, 1, 2] == 1 and t.br_heat[0, 1, 14, 12] == 1  # [class, row y, column x]
    assert t.tl_heat.eq(1).sum() == 1 and t.br_heat.eq(1).sum() == 1
    assert t.tl_off[0, :, 1, 2].tolist() == [0.5, 0.75] and t.br_off[0, :, 14, 12].tolist() == [0.5, 0.25]
    g, cs = encode_guiding_shift(t, grid), encode_centripetal(t, grid)
    assert g["tl_guiding"][0, :, 1, 2].tolist() == [5.5, 7.0] and g["br_guiding"][0, :, 14, 12].tolist() == [4.5, 6.0]
    want = torch.tensor([math.log(5.0), math.log(6.25)])
    assert torch.allclose(cs["tl_cs"][0, :, 1, 2], want) and torch.allclose(cs["br_cs"][0, :, 14, 12], want)
