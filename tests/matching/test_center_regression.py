"""Centre regression: linear, signed targets from the corner cell; decoding through the cell."""

from __future__ import annotations

import pytest
import torch
from torchvision.ops import box_iou

from cnet.matching.center_regression import (
    CenterRegression,
    centers_from_offsets,
    encode_center_regression,
)
from cnet.ops import gather_at
from cnet.parts import CornerFeatures
from cnet.postprocess import PostProcess
from cnet.targets import encode_corners
from cnet.types import Corners, Grid, GroundTruth, ImageMeta, Outputs

GRID = Grid(128, 128, 32, 32)  # 4 input pixels per cell


def _corners_at_gt(corners, which: str) -> Corners:
    """Corners [1, N] sitting exactly on image 0's GT cells, refined by the GT offset."""
    p = corners.points[0]
    cell, exact = (p.tl_int, p.tl) if which == "tl" else (p.br_int, p.br)
    n = len(p.labels)
    inds = (cell[:, 1] * GRID.out_w + cell[:, 0])[None]
    return Corners(torch.ones(1, n), p.labels[None], inds, exact[None, :, 0], exact[None, :, 1])


def test_targets_decode_back_to_the_exact_centres():
    gt = GroundTruth(
        torch.tensor([[10.0, 12.0, 61.0, 50.5], [30.3, 30.0, 100.0, 90.7], [3.0, 5.0, 9.0, 127.0]]),
        torch.tensor([0, 1, 2]),
    )
    corners = encode_corners([gt], GRID, 3)
    t = encode_center_regression(corners, GRID)
    p = corners.points[0]
    tl, br = _corners_at_gt(corners, "tl"), _corners_at_gt(corners, "br")
    tl_ct, br_ct = centers_from_offsets(
        tl, br, gather_at(t["tl_cr"], tl.inds), gather_at(t["br_cr"], br.inds), GRID.out_w
    )
    assert torch.allclose(tl_ct[0], p.center, atol=1e-5) and torch.allclose(br_ct[0], p.center, atol=1e-5)
    # linear offset from the integer cell, not the log-shift from the float corner
    assert torch.allclose(gather_at(t["tl_cr"], tl.inds)[0], p.center - p.tl_int)


def test_decoding_starts_from_the_integer_cell_not_the_refined_corner():
    cls = torch.zeros(1, 1, dtype=torch.int64)
    tl = Corners(torch.ones(1, 1), cls, torch.tensor([[3 * 32 + 2]]), torch.tensor([[2.7]]), torch.tensor([[3.9]]))
    br = Corners(torch.ones(1, 1), cls, torch.tensor([[9 * 32 + 8]]), torch.tensor([[8.2]]), torch.tensor([[9.5]]))
    shift = torch.tensor([[[1.5, -0.5]]])
    tl_ct, br_ct = centers_from_offsets(tl, br, shift, shift, 32)
    assert tl_ct.tolist() == [[[3.5, 2.5]]] and br_ct.tolist() == [[[6.5, 9.5]]]


def _perfect_outputs(matching, gt: GroundTruth) -> Outputs:
    corners = encode_corners([gt], GRID, 1)
    logit = lambda h: torch.logit(h.clamp(1e-6, 1 - 1e-6))  # noqa: E731
    level = {
        "tl_heat": logit(corners.tl_heat),
        "br_heat": logit(corners.br_heat),
        "tl_off": corners.tl_off,
        "br_off": corners.br_off,
    }
    level |= matching.targets_as_predictions(matching.encode_targets(corners, GRID), corners)
    return Outputs([level], (GRID.in_h, GRID.in_w))


def test_sub_cell_box_has_a_negative_target_and_still_decodes():
    # [42, 42, 47, 47] px -> tl 10.5 (cell 10), br 11.75 (cell 11), centre 11.125: the br cell lies
    # left of/above the centre, so br_cr = 11 - 11.125 < 0 (its log would be undefined)
    small = GroundTruth(torch.tensor([[42.0, 42.0, 47.0, 47.0]]), torch.zeros(1, dtype=torch.int64))
    matching = CenterRegression(8, 1)
    t = matching.encode_targets(encode_corners([small], GRID, 1), GRID)
    assert torch.allclose(t["br_cr"][0, :, 11, 11], torch.tensor([-0.125, -0.125]))
    assert torch.allclose(t["tl_cr"][0, :, 10, 10], torch.tensor([1.125, 1.125]))
    assert int((t["br_cr"] != 0).sum()) == 2 and int((t["tl_cr"] != 0).sum()) == 2  # only at the corner cells
    both = GroundTruth(
        torch.tensor([[42.0, 42.0, 47.0, 47.0], [8.0, 8.0, 40.0, 40.0]]), torch.zeros(2, dtype=torch.int64)
    )
    for gt in (small, both):
        det = PostProcess(matching)(_perfect_outputs(matching, gt), [ImageMeta(0, (128, 128), (128, 128))])[0]
        best_iou = box_iou(det.boxes, gt.boxes).max(dim=0).values
        assert (best_iou > 0.999).all()


def test_loss_is_exactly_zero_on_empty_ground_truth_and_on_perfect_predictions():
    matching = CenterRegression(8, 1)
    torch.manual_seed(0)
    pred = matching(CornerFeatures(*[torch.randn(1, 8, 32, 32) for _ in range(5)]))
    empty = encode_corners([GroundTruth.empty()], GRID, 1)
    halves = {"tl_center_regression": 0.0, "br_center_regression": 0.0}  # one term per corner
    assert matching.loss(pred, matching.encode_targets(empty, GRID), empty) == halves
    gt = GroundTruth(
        torch.tensor([[42.0, 42.0, 47.0, 47.0], [8.0, 8.0, 40.0, 40.0]]), torch.zeros(2, dtype=torch.int64)
    )
    corners = encode_corners([gt], GRID, 1)
    t = matching.encode_targets(corners, GRID)
    perfect = matching.loss(matching.targets_as_predictions(t, corners), t, corners)
    assert all(v.item() == 0.0 for v in perfect.values())
    assert all(v.item() > 0 for v in matching.loss(pred, t, corners).values())


def test_parameters_match_centripetal_defaults_and_validate():
    m = CenterRegression(8, 1)
    assert (m.mu_large, m.mu_small, m.area_threshold) == pytest.approx((1 / 2.1, 1 / 2.4, 3500.0))
    assert m.geometric_mean and m.center_weight and m.max_center_ratio is None
    assert m.loss_weights == {"center_regression": 1.0}
    with pytest.raises(ValueError, match=r"matching\.mu_large"):
        CenterRegression(8, 1, mu_large=0.0)
