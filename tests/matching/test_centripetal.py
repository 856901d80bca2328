"""CentripetalNet's pairing rule (Eqs. 3-5) on hand-placed corners and centres, answers worked by hand.

The round trips elsewhere use perfect shifts, whose centres land exactly on the box centre; here
the centres sit off-centre, on the borders of the central region and on either side of the
area-3500 switch, for the paper's, the authors' and mmdetection's variants.
"""

from __future__ import annotations

import math

import pytest
import torch

from cnet.matching.centripetal import Centripetal, central_region_rule
from cnet.types import Corners, Grid

PAPER = dict(mu_large=1 / 2.1, mu_small=1 / 2.4, geometric_mean=True, center_weight=True, max_center_ratio=None)
AUTHORS = dict(mu_large=1 / 2.4, mu_small=1 / 2.1, geometric_mean=False, center_weight=False, max_center_ratio=None)
MMDET = dict(mu_large=1 / 2.1, mu_small=1 / 2.4, geometric_mean=False, center_weight=False, max_center_ratio=0.5)
GRID1 = Grid(64, 64, 64, 64)  # one input pixel per cell
GRID4 = Grid(256, 256, 64, 64)  # four input pixels per cell


def corner(x: float, y: float, score: float, width: int = 64) -> Corners:
    """One corner of class 0 at (x, y) (output-map units), batch of one; inds = its integer cell."""
    return Corners(
        torch.tensor([[score]]),
        torch.tensor([[0]]),
        torch.tensor([[int(y) * width + int(x)]]),
        torch.tensor([[float(x)]]),
        torch.tensor([[float(y)]]),
    )


def inside(box: tuple[float, ...], tl_ct: tuple[float, float], br_ct: tuple[float, float], grid: Grid, **mu) -> bool:
    """central_region_rule's verdict for one pair; box and centres in output-map units."""
    mu = {"mu_large": 0.5, "mu_small": 0.5, "area_threshold": 3500.0} | mu
    ok, _, _ = central_region_rule(
        corner(*box[:2], 0.5),
        corner(*box[2:], 0.5),
        torch.tensor([[tl_ct]]),
        torch.tensor([[br_ct]]),
        grid,
        **mu,
    )
    return bool(ok[0, 0, 0])


# box (10, 10, 40, 40), mu = 1/2 -> central region (17.5, 32.5) in x and in y
@pytest.mark.parametrize(
    "tl_ct, br_ct, kept",
    [
        ((25.0, 25.0), (25.0, 25.0), True),
        ((17.51, 32.49), (32.49, 17.51), True),
        ((17.5, 25.0), (25.0, 25.0), False),  # tl centre on the left border: strictly inside only
        ((32.5, 25.0), (25.0, 25.0), False),  # on the right border
        ((25.0, 25.0), (17.5, 25.0), False),
        ((25.0, 25.0), (25.0, 32.5), False),  # br centre on the bottom border
        ((25.0, 17.5), (25.0, 25.0), False),
        ((25.0, 25.0), (40.0, 25.0), False),  # far outside
    ],
)
def test_central_region_borders_are_strict(tl_ct, br_ct, kept):
    assert inside((10.0, 10.0, 40.0, 40.0), tl_ct, br_ct, GRID1) == kept


# box (0, 0, 50, 70) px has area 3500 (not > 3500: mu_small); 70.4 px high -> 3520 (mu_large).
# Centre (36, 35) px: |dx| = 11 from cx = 25 lies inside mu = 1/2.1 (half-width 11.90) but outside
# mu = 1/2.4 (half-width 10.42). On a 4 px grid the same box is 218.75 cells^2: area in cells would
# always pick mu_small.
@pytest.mark.parametrize(
    "rule, small_box_kept, large_box_kept",
    [(PAPER, False, True), (AUTHORS, True, False)],
    ids=["paper", "authors"],
)
@pytest.mark.parametrize("grid", [GRID1, GRID4], ids=["1px", "4px"])
def test_mu_switches_at_area_3500_input_pixels(rule, small_box_kept, large_box_kept, grid):
    r = grid.ratio_x
    mu = {"mu_large": rule["mu_large"], "mu_small": rule["mu_small"], "area_threshold": 3500.0}
    ct = (36.0 / r, 35.0 / r)
    assert inside((0.0, 0.0, 50.0 / r, 70.0 / r), ct, ct, grid, **mu) == small_box_kept
    assert inside((0.0, 0.0, 50.0 / r, 70.4 / r), ct, ct, grid, **mu) == large_box_kept


def _shift_maps(tl: tuple[int, int], br: tuple[int, int], tl_ct, br_ct, size: int = 64) -> dict[str, torch.Tensor]:
    """Log centripetal shifts at the two corner cells so they decode to tl_ct and br_ct (Eq. 1)."""
    tl_cs, br_cs = torch.zeros(1, 2, size, size), torch.zeros(1, 2, size, size)
    tl_cs[0, :, tl[1], tl[0]] = torch.tensor([tl_ct[0] - tl[0], tl_ct[1] - tl[1]], dtype=torch.float64).log()
    br_cs[0, :, br[1], br[0]] = torch.tensor([br[0] - br_ct[0], br[1] - br_ct[1]], dtype=torch.float64).log()
    return {"tl_cs": tl_cs, "br_cs": br_cs}


def pair_score(rule: dict, tl_ct, br_ct, tl=(10, 10), br=(40, 40), s_tl: float = 0.8, s_br: float = 0.6) -> float:
    matching = Centripetal(8, 1, **rule)
    pred = _shift_maps(tl, br, tl_ct, br_ct)
    scores = matching.pair(pred, corner(*tl, s_tl), corner(*br, s_br), GRID1)
    return float(scores[0, 0, 0])


# box (10, 10, 40, 40): area 900 -> mu_small. Paper/mmdet: 1/2.4 -> region (18.75, 31.25), area
# 12.5^2 = 156.25. Authors: 1/2.1 -> region area (30 / 2.1)^2.
NEAR = ((24.0, 25.0), (26.0, 27.0))  # |dx||dy| = 2 * 2 = 4
FAR = ((20.0, 20.0), (30.0, 30.0))  # |dx||dy| = 10 * 10 = 100


def test_paper_score_is_geometric_mean_times_eq5_weight():
    assert pair_score(PAPER, *NEAR) == pytest.approx(math.sqrt(0.8 * 0.6) * math.exp(-4 / 156.25), rel=1e-5)
    assert pair_score(PAPER, *FAR) == pytest.approx(math.sqrt(0.8 * 0.6) * math.exp(-100 / 156.25), rel=1e-5)


def test_authors_score_is_the_plain_arithmetic_mean():
    assert pair_score(AUTHORS, *NEAR) == pytest.approx(0.7, rel=1e-6)
    assert pair_score(AUTHORS, *FAR) == pytest.approx(0.7, rel=1e-6)


def test_mmdet_rejects_pairs_whose_centres_are_far_apart():
    assert pair_score(MMDET, *NEAR) == pytest.approx(0.7, rel=1e-6)  # ratio 0.0256 <= 0.5
    assert pair_score(MMDET, *FAR) == -1.0  # ratio 100 / 156.25 = 0.64 > 0.5
    assert pair_score(PAPER, *FAR) > 0  # the paper keeps it, down-weighted


def test_centre_outside_the_region_rejects_the_pair():
    # tl centre at x = 18 < 18.75 (paper mu 1/2.4); the authors' wider region (17.86, 32.14) keeps it
    assert pair_score(PAPER, (18.0, 25.0), (25.0, 25.0)) == -1.0
    assert pair_score(AUTHORS, (18.0, 25.0), (25.0, 25.0)) == pytest.approx(0.7, rel=1e-6)


@pytest.mark.parametrize("rule", [PAPER, AUTHORS, MMDET], ids=["paper", "authors", "mmdet"])
def test_inverted_pairs_are_rejected(rule):
    # x inverted: tl right of br; y inverted: tl below br. Shifts point at the true centre (25, 25).
    matching = Centripetal(8, 1, **rule)
    for tl, br in [((40, 10), (10, 40)), ((10, 40), (40, 10))]:
        pred = {"tl_cs": torch.zeros(1, 2, 64, 64), "br_cs": torch.zeros(1, 2, 64, 64)}
        pred["tl_cs"][0, :, tl[1], tl[0]] = torch.tensor([abs(25.0 - tl[0]), abs(25.0 - tl[1])]).log()
        pred["br_cs"][0, :, br[1], br[0]] = torch.tensor([abs(br[0] - 25.0), abs(br[1] - 25.0)]).log()
        scores = matching.pair(pred, corner(*tl, 0.9), corner(*br, 0.9), GRID1)
        assert float(scores[0, 0, 0]) == -1.0, (tl, br)


def test_pairs_of_different_classes_are_rejected():
    matching = Centripetal(8, 2, **PAPER)
    pred = _shift_maps((10, 10), (40, 40), (25.0, 25.0), (25.0, 25.0))
    br = corner(40, 40, 0.6)
    br.classes[:] = 1
    scores = matching.pair(pred, corner(10, 10, 0.8), br, GRID1)
    assert float(scores[0, 0, 0]) == -1.0
