"""CenterNet matching: centre targets round trip, the central-region rule, scores and losses."""

from __future__ import annotations

import math

import pytest
import torch

from cnet.losses import corner_focal_loss
from cnet.matching.center_heatmap import (
    CenterHeatmap,
    center_keypoints,
    center_region_scores,
    encode_center_targets,
)
from cnet.parts import CornerFeatures
from cnet.targets import encode_corners
from cnet.types import Corners, Grid, GroundTruth


def corners(xy: list[tuple[float, float]], scores: list[float], classes: list[int]) -> Corners:
    """A batch of one image with hand-placed points (output-map units); inds are unused here."""
    t = torch.tensor(xy, dtype=torch.float32)
    return Corners(
        torch.tensor([scores]),
        torch.tensor([classes]),
        torch.zeros(1, len(xy), dtype=torch.int64),
        t[None, :, 0],
        t[None, :, 1],
    )


def region_score(
    box: tuple[float, ...], center: tuple[float, float], grid: Grid, ct_class: int = 0, ct_score: float = 0.9
) -> float:
    tl = corners([box[:2]], [0.8], [0])
    br = corners([box[2:]], [0.6], [0])
    ct = corners([center], [ct_score], [ct_class])
    return float(center_region_scores(tl, br, ct, grid, 22500.0, 3.0, 5.0)[0, 0, 0])


GRID1 = Grid(64, 64, 64, 64)  # one input pixel per cell


@pytest.mark.parametrize(
    "center, kept",
    [
        ((25.0, 25.0), True),
        ((20.01, 29.99), True),  # inside (20, 30) x (20, 30)
        ((30.0, 25.0), False),
        ((25.0, 20.0), False),  # on the border: strictly inside only
        ((31.0, 25.0), False),
        ((25.0, 5.0), False),  # outside
    ],
)
def test_center_region_n3_borders(center, kept):
    # box (10, 10, 40, 40): area 900 <= 22500 -> n = 3 -> region x, y in (20, 30)
    s = region_score((10.0, 10.0, 40.0, 40.0), center, GRID1)
    assert s == (pytest.approx(0.9) if kept else -1.0)


def test_center_of_another_class_is_ignored():
    assert region_score((10.0, 10.0, 40.0, 40.0), (25.0, 25.0), GRID1, ct_class=1) == -1.0


def test_best_same_class_center_wins():
    tl, br = corners([(10.0, 10.0)], [0.8], [0]), corners([(40.0, 40.0)], [0.6], [0])
    ct = corners([(25.0, 25.0), (26.0, 24.0), (25.0, 25.0), (35.0, 25.0)], [0.3, 0.7, 0.95, 0.99], [0, 0, 1, 0])
    assert float(center_region_scores(tl, br, ct, GRID1, 22500.0, 3.0, 5.0)[0, 0, 0]) == pytest.approx(0.7)


@pytest.mark.parametrize("ratio", [1, 4])
def test_n_switches_at_area_22500_input_pixels(ratio):
    """(0, 0, 150, 150) px has area 22500 -> n = 3, region (50, 100); one pixel wider -> n = 5,
    region x (60.4, 90.6), y (60, 90). Areas are measured in input pixels, not cells."""
    grid = Grid(256 * ratio, 256 * ratio, 256, 256)
    cell = lambda *v: tuple(x / ratio for x in v)  # noqa: E731  input pixels -> cells
    for center, small_kept, large_kept in [
        ((55.0, 75.0), True, False),
        ((65.0, 75.0), True, True),
        ((75.0, 95.0), True, False),
    ]:
        small = region_score(cell(0.0, 0.0, 150.0, 150.0), cell(*center), grid)
        large = region_score(cell(0.0, 0.0, 151.0, 150.0), cell(*center), grid)
        assert (small >= 0) == small_kept and (large >= 0) == large_kept, center


def _pred_maps(
    h: int,
    w: int,
    emb: tuple[float, float],
    ct_cell: tuple[int, int],
    ct_off: tuple[float, float],
    ct_prob: float,
    ct_class: int = 0,
    num_classes: int = 2,
) -> dict[str, torch.Tensor]:
    """Embeddings emb[0] at the tl cell (10, 10), emb[1] at the br cell (40, 40); one centre peak."""
    tl_emb, br_emb = torch.zeros(1, 1, h, w), torch.zeros(1, 1, h, w)
    tl_emb[0, 0, 10, 10], br_emb[0, 0, 40, 40] = emb
    ct_heat = torch.full((1, num_classes, h, w), -20.0)
    ct_heat[0, ct_class, ct_cell[1], ct_cell[0]] = math.log(ct_prob / (1 - ct_prob))
    off = torch.zeros(1, 2, h, w)
    off[0, :, ct_cell[1], ct_cell[0]] = torch.tensor(ct_off)
    return {"tl_emb": tl_emb, "br_emb": br_emb, "ct_heat": ct_heat, "ct_off": off}


def _pair(pred: dict[str, torch.Tensor]) -> float:
    matching = CenterHeatmap(8, 2)
    tl = Corners(
        torch.tensor([[0.8]]),
        torch.tensor([[0]]),
        torch.tensor([[10 * 64 + 10]]),
        torch.tensor([[10.0]]),
        torch.tensor([[10.0]]),
    )
    br = Corners(
        torch.tensor([[0.6]]),
        torch.tensor([[0]]),
        torch.tensor([[40 * 64 + 40]]),
        torch.tensor([[40.0]]),
        torch.tensor([[40.0]]),
    )
    scores = matching.pair(pred, tl, br, GRID1)
    assert scores.shape == (1, 1, 1)
    return float(scores[0, 0, 0])


def test_pair_keeps_box_with_center_inside_and_rescores():
    s = _pair(_pred_maps(64, 64, (1.0, 1.2), (25, 25), (0.5, 0.5), 0.9))
    assert s == pytest.approx((2 * (0.8 + 0.6) / 2 + 0.9) / 3, abs=1e-6)


@pytest.mark.parametrize(
    "emb, ct_cell, ct_off, ct_class",
    [
        ((1.0, 1.2), (29, 25), (1.0, 0.5), 0),  # decoded centre x = 30.0: on the region border
        ((1.0, 1.2), (25, 25), (0.5, 0.5), 1),  # centre of another class
        ((1.0, 1.6), (25, 25), (0.5, 0.5), 0),  # embeddings 0.6 > 0.5 apart: AE rejects first
    ],
)
def test_pair_rejects(emb, ct_cell, ct_off, ct_class):
    assert _pair(_pred_maps(64, 64, emb, ct_cell, ct_off, 0.9, ct_class)) == -1.0


def test_center_targets_round_trip_exactly():
    grid = Grid(512, 512, 128, 128)
    gt = GroundTruth(
        torch.tensor(
            [
                [10.3, 12.7, 200.9, 150.1],
                [100.0, 300.5, 130.2, 333.3],
                [400.1, 7.9, 511.0, 95.6],
                [0.0, 0.0, 512.0, 512.0],
            ]
        ),
        torch.tensor([2, 0, 2, 1]),
    )
    corner_t = encode_corners([gt], grid, 3)
    t = encode_center_targets(corner_t, grid)
    true = corner_t.points[0].center  # [N, 2] float box centres, cells
    ct_int = true.floor().long()
    assert (t["ct_heat"][0, gt.labels, ct_int[:, 1], ct_int[:, 0]] == 1).all()
    assert t["ct_mask"].sum() == len(gt) and t["ct_heat"].eq(1).sum() == len(gt)
    logits = torch.logit(t["ct_heat"].clamp(1e-6, 1 - 1e-6))
    ct = center_keypoints(logits, t["ct_off"], k=len(gt))
    got = torch.stack([ct.xs[0], ct.ys[0]], dim=-1)
    order = [int(((got - c).abs().sum(-1)).argmin()) for c in true]
    assert torch.equal(got[order], true)
    assert torch.equal(ct.classes[0, order], gt.labels)


def test_center_gaussian_uses_the_corner_radius():
    """Same box size -> the centre Gaussian is the corner Gaussian moved to the centre cell."""
    grid = Grid(128, 128, 128, 128)
    gt = GroundTruth(torch.tensor([[40.0, 40.0, 80.0, 70.0]]), torch.tensor([0]))
    corner_t = encode_corners([gt], grid, 1)
    ct = encode_center_targets(corner_t, grid)["ct_heat"][0, 0]
    tl = corner_t.tl_heat[0, 0]
    assert torch.equal(ct[55 - 10 : 55 + 11, 60 - 10 : 60 + 11], tl[40 - 10 : 40 + 11, 40 - 10 : 40 + 11])
    assert ct.count_nonzero() == tl.count_nonzero() > 1


def test_forward_keys_shapes_and_prior():
    torch.manual_seed(0)
    matching = CenterHeatmap(8, 3, pool_channels=4)
    feats = CornerFeatures(*[torch.randn(2, 8, 12, 10) for _ in range(5)])
    out = matching(feats)
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "tl_emb": (2, 1, 12, 10),
        "br_emb": (2, 1, 12, 10),
        "ct_heat": (2, 3, 12, 10),
        "ct_off": (2, 2, 12, 10),
    }
    assert matching.ct_heat[-1].bias.detach().sigmoid().allclose(torch.tensor(0.1))
    assert matching.loss_weights == {"pull": 0.1, "push": 0.1, "center_det": 1.0, "center_off": 1.0}


def test_centre_focal_loss_covers_empty_images_of_a_non_empty_batch():
    grid = Grid(64, 64, 16, 16)
    matching = CenterHeatmap(8, 3, pool_channels=4)
    pred = matching(CornerFeatures(*[torch.randn(2, 8, 16, 16) for _ in range(5)]))
    gts = [GroundTruth.empty(), GroundTruth(torch.tensor([[4.0, 6.0, 40.0, 30.0]]), torch.tensor([1]))]
    corner_t = encode_corners(gts, grid, 3)
    targets = matching.encode_targets(corner_t, grid)
    losses = matching.loss(pred, targets, corner_t)
    assert torch.equal(losses["center_det"], corner_focal_loss(pred["ct_heat"], targets["ct_heat"]))
    assert losses["center_off"] > 0


def test_bad_arguments_name_the_key():
    with pytest.raises(ValueError, match="n_small"):
        CenterHeatmap(8, 3, n_small=0.5)
    with pytest.raises(ValueError, match="center_topk"):
        CenterHeatmap(8, 3, center_topk=0)
