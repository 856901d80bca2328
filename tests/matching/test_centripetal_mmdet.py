"""``matching=centripetal_mmdet`` pairs as mmdetection's ``CornerHead._decode_heatmap`` does.

mmdetection scales the corners and their implied centres to input pixels, subtracts the left/top
pad border and clamps negative coordinates to 0 *before* every pairing test. The answers below are
worked out by hand from that rule. The pad border (the grid's ``origin``) is left 8, top 16 input
pixels; one output cell is 2 input pixels (Grid(128, 128, 64, 64)). Positions are given in image
pixels (border removed); input = image + (8, 16), map = input / 2.

The unclamped rule with the same parameters (what ``centripetal_mmdet`` decoded before) and the
paper's rule (``centripetal``) pair the positions as decoded, ignoring the origin.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from cnet.matching.centripetal import Centripetal
from cnet.matching.centripetal_mmdet import CentripetalMmdet
from cnet.postprocess import PostProcess
from cnet.predictor import Predictor
from cnet.types import Corners, Grid, ImageMeta, Outputs
from cnet.views import HFlip, Identity, Scale

PAPER = dict(mu_large=1 / 2.1, mu_small=1 / 2.4, geometric_mean=True, center_weight=True, max_center_ratio=None)
MMDET = dict(mu_large=1 / 2.1, mu_small=1 / 2.4, geometric_mean=False, center_weight=False, max_center_ratio=0.5)
SIZE = 64  # output map side
GRID = Grid(128, 128, SIZE, SIZE)  # 2 input pixels per cell
BORDER = (8.0, 16.0)  # origin (x, y) = (left, top), input pixels: not square, so x/y cannot swap unseen


def image_to_map(xy: tuple[float, float]) -> tuple[float, float]:
    return ((xy[0] + BORDER[0]) / 2, (xy[1] + BORDER[1]) / 2)


def corners(xys: list[tuple[float, float]], scores: list[float]) -> Corners:
    """Class-0 corners at map positions ``xys`` (one per batch entry, K = 1)."""
    return Corners(
        torch.tensor([[s] for s in scores]),
        torch.zeros(len(xys), 1, dtype=torch.int64),
        torch.tensor([[int(y) * SIZE + int(x)] for x, y in xys]),
        torch.tensor([[float(x)] for x, _ in xys]),
        torch.tensor([[float(y)] for _, y in xys]),
    )


def shift_maps(tl, br, tl_ct, br_ct, batch: int = 1) -> dict[str, Tensor]:
    """Log centripetal shifts (Eq. 1) at the corner cells (map units) so they decode to tl_ct, br_ct."""
    tl_cs, br_cs = torch.zeros(batch, 2, SIZE, SIZE), torch.zeros(batch, 2, SIZE, SIZE)
    tl_cs[:, :, int(tl[1]), int(tl[0])] = torch.tensor([tl_ct[0] - tl[0], tl_ct[1] - tl[1]], dtype=torch.float64).log()
    br_cs[:, :, int(br[1]), int(br[0])] = torch.tensor([br[0] - br_ct[0], br[1] - br_ct[1]], dtype=torch.float64).log()
    return {"tl_cs": tl_cs, "br_cs": br_cs}


def score(matching, case: dict, origins: list[tuple[float, float] | None]) -> list[float]:
    """Score of the case's pair, once per entry of a batch with the given origins (None: no border)."""
    tl, br, tl_ct, br_ct = (image_to_map(case[k]) for k in ("tl", "br", "tl_ct", "br_ct"))
    b = len(origins)
    pred = shift_maps(tl, br, tl_ct, br_ct, b)
    if all(o is None for o in origins):
        grid = GRID
    else:
        grid = Grid(GRID.in_h, GRID.in_w, SIZE, SIZE, torch.tensor([o or (0.0, 0.0) for o in origins]))
    s = matching.pair(pred, corners([tl] * b, [case["s"][0]] * b), corners([br] * b, [case["s"][1]] * b), grid)
    assert s.shape == (b, 1, 1)
    return [float(v) for v in s[:, 0, 0]]


# Case A: tl in the left padding. Unclamped box x -6..30 (w 36), y 10..40 (h 30): area 1080 <= 3500,
# mu = 1/2.4, central region x 12 -+ 36/4.8 = (4.5, 19.5), y 25 -+ 30/4.8 = (18.75, 31.25), area
# 15 * 12.5 = 187.5. Centres (7, 25) and (14, 27) lie inside it; |dx||dy| = 7 * 2 = 14, ratio
# 14 / 187.5 = 0.0747 <= 0.5: kept at (0.8 + 0.6) / 2 = 0.7 unclamped.
# mmdetection clamps tl to (0, 10): box x 0..30 (w 30), area 900, mu = 1/2.4, region x
# 15 -+ 6.25 = (8.75, 21.25): the tl centre x = 7 <= 8.75 is outside -> rejected.
EDGE_REJECTS = dict(tl=(-6.0, 10.0), br=(30.0, 40.0), tl_ct=(7.0, 25.0), br_ct=(14.0, 27.0), s=(0.8, 0.6))
# Case B: same corners, centres (20, 24) and (18, 26). Unclamped region x (4.5, 19.5): 20 >= 19.5 ->
# rejected by the unclamped and the paper rule. Clamped region x (8.75, 21.25), y (18.75, 31.25):
# both inside; |dx||dy| = 2 * 2 = 4, region area 12.5 * 12.5 = 156.25, ratio 0.0256 -> kept at 0.7.
EDGE_KEEPS = dict(tl=(-6.0, 10.0), br=(30.0, 40.0), tl_ct=(20.0, 24.0), br_ct=(18.0, 26.0), s=(0.8, 0.6))
# Case C: tl in the top padding, at (10, -12); br (70, 50); centres (30, 16) and (50, 32).
# Unclamped: w 60, h 62, area 3720 > 3500 -> mu = 1/2.1: region x 40 -+ 60/4.2 = (25.71, 54.29),
# y 19 -+ 62/4.2 = (4.24, 33.76), area (60/2.1)(62/2.1) = 3720/4.41 = 843.54; both centres inside,
# |dx||dy| = 20 * 16 = 320, ratio 0.3794 <= 0.5: kept at (0.9 + 0.4) / 2 = 0.65.
# mmdetection clamps tl to (10, 0): h 50, area 3000 <= 3500 -> mu = 1/2.4: region x 40 -+ 12.5 =
# (27.5, 52.5), y 25 -+ 50/4.8 = (14.58, 35.42), area 25 * 20.83 = 520.83; both centres inside, but
# the ratio 320 / 520.83 = 0.6144 > 0.5 -> rejected.
TOP_EDGE = dict(tl=(10.0, -12.0), br=(70.0, 50.0), tl_ct=(30.0, 16.0), br_ct=(50.0, 32.0), s=(0.9, 0.4))
# Without a border (origin None, or the same maps with the image at the input origin) the image
# begins at input (0, 0): every position above is >= 0 in input pixels, nothing clamps, and the
# rule is the unclamped one (the tests are translation invariant).


@pytest.mark.parametrize(
    "case, with_border, unclamped",
    [
        (EDGE_REJECTS, -1.0, 0.7),
        (EDGE_KEEPS, 0.7, -1.0),
        (TOP_EDGE, -1.0, 0.65),
    ],
    ids=["left_edge_rejects", "left_edge_keeps", "top_edge_area_and_ratio"],
)
def test_mmdet_clamps_at_the_image_origin_before_pairing(case, with_border, unclamped):
    mmdet = CentripetalMmdet(8, 1, **MMDET)
    assert score(mmdet, case, [BORDER]) == [pytest.approx(with_border)]
    assert score(mmdet, case, [None]) == [pytest.approx(unclamped)]  # no border: nothing to clamp
    # one batch, one origin per entry
    assert score(mmdet, case, [BORDER, (0.0, 0.0)]) == [pytest.approx(with_border), pytest.approx(unclamped)]
    # the same parameters without the clamp (what centripetal_mmdet decoded before) ignore the border
    assert score(Centripetal(8, 1, **MMDET), case, [BORDER]) == [pytest.approx(unclamped)]


def test_the_origin_is_x_then_y():
    # Case C in input pixels: tl (18, -12 + 16 = 4), br (78, 66), centres (38, 32), (58, 48).
    # Origin (x 0, y 16) clamps tl's y to the image top as the full border does (the x shift of 8 is a
    # translation: nothing lies past the left edge) -> rejected. Origin (x 16, y 0): tl (2, 4), nothing
    # clamps, the unclamped case -> kept at 0.65.
    mmdet = CentripetalMmdet(8, 1, **MMDET)
    assert score(mmdet, TOP_EDGE, [(0.0, 16.0)]) == [-1.0]
    assert score(mmdet, TOP_EDGE, [(16.0, 0.0)]) == [pytest.approx(0.65)]


def test_paper_rule_ignores_the_origin():
    # Case A unclamped: sqrt(0.8 * 0.6) * exp(-14 / 187.5); case B: rejected (20 >= 19.5);
    # case C: sqrt(0.9 * 0.4) = 0.6, times exp(-320 / 843.54)
    paper = Centripetal(8, 1, **PAPER)
    want = {
        "A": math.sqrt(0.48) * math.exp(-14 / 187.5),
        "B": -1.0,
        "C": 0.6 * math.exp(-320 / (3720 / 2.1**2)),
    }
    for name, case in (("A", EDGE_REJECTS), ("B", EDGE_KEEPS), ("C", TOP_EDGE)):
        for origins in ([None], [BORDER]):
            assert score(paper, case, origins) == [pytest.approx(want[name], rel=1e-5)], (name, origins)


# Case D: the br centre falls past the top edge. Corners (10, 4) and (60, 50), br centre (40, -3).
# Clamped: the centre is (40, 0); the box starts at y = 4, so the region starts at y > 4 and the
# centre is outside -> rejected. (A clamped centre sits on the image edge, and a valid box's region
# lies strictly inside the image, so clamping a centre never changes a verdict: the check that the
# centres are clamped is the white-box one below.)
CENTRE_PAST_TOP = dict(tl=(10.0, 4.0), br=(60.0, 50.0), tl_ct=(35.0, 27.0), br_ct=(40.0, -3.0), s=(0.8, 0.6))


class Spy(CentripetalMmdet):
    """Records the positions the pairing tests see (image pixels)."""

    def score_pairs(self, tl: Corners, br: Corners, tl_ct: Tensor, br_ct: Tensor, grid: Grid) -> Tensor:
        self.seen = (tl.xs.clone(), tl.ys.clone(), br.xs.clone(), br.ys.clone(), tl_ct.clone(), br_ct.clone(), grid)
        return super().score_pairs(tl, br, tl_ct, br_ct, grid)


def test_the_rule_sees_corners_and_centres_clamped_in_image_pixels():
    spy = Spy(8, 1, **MMDET)
    assert score(spy, CENTRE_PAST_TOP, [BORDER]) == [-1.0]
    tl_x, tl_y, br_x, br_y, tl_ct, br_ct, grid = spy.seen
    assert (grid.ratio_x, grid.ratio_y) == (1.0, 1.0)  # positions already in pixels
    assert [tl_x.item(), tl_y.item(), br_x.item(), br_y.item()] == [10.0, 4.0, 60.0, 50.0]
    torch.testing.assert_close(tl_ct[0, 0], torch.tensor([35.0, 27.0]))
    torch.testing.assert_close(br_ct[0, 0], torch.tensor([40.0, 0.0]))  # y = -3 clamped to 0
    score(spy, EDGE_REJECTS, [BORDER])
    assert spy.seen[0].item() == 0.0 and spy.seen[1].item() == 10.0  # tl (-6, 10) -> (0, 10)


# --- the origin each test view hands to the pairing


class FlatModel(nn.Module):
    """Flat maps of the right shape for any input: the pairing runs, its origins are what we check."""

    def forward(self, x: Tensor) -> Outputs:
        b, _, h, w = x.shape
        zeros = lambda: torch.zeros(b, 2, (h + 1) // 4, (w + 1) // 4)  # noqa: E731
        names = ("tl_heat", "br_heat", "tl_off", "br_off", "tl_cs", "br_cs")
        return Outputs([{k: zeros() for k in names}], (int(h), int(w)))


class OriginRecorder(CentripetalMmdet):
    def __init__(self) -> None:
        super().__init__(8, 2, **MMDET)
        self.origins: list[Tensor | None] = []

    def pair(self, pred, tl, br, grid):
        self.origins.append(grid.origin)
        return super().pair(pred, tl, br, grid)


# plain input 64 x 80 (h x w). Image 0: border (top 9, left 5), 50 x 60 -> x 5..65, y 9..59.
# Image 1: border (top 4, left 12), 56 x 60 -> x 12..72, y 4..60.
METAS = [ImageMeta(0, (50, 60), (64, 80), border=(9.0, 5.0)), ImageMeta(1, (56, 60), (64, 80), border=(4.0, 12.0))]


def test_every_view_hands_the_pairing_its_image_origin():
    rec = OriginRecorder()
    views = [Identity(), HFlip(), Scale(0.5, 127), Scale(0.5, 127, flip=True)]
    Predictor(FlatModel(), PostProcess(rec, corner_topk=4), views)(torch.rand(2, 3, 64, 80), METAS)
    plain, scaled = rec.origins  # one pass per input size, view-major: [view0 img0, view0 img1, view1 img0, ...]
    assert plain is not None and scaled is not None
    # identity: (left, top). Mirror x' = 80 - x: the image's right edge becomes its left one,
    # 80 - 65 = 15 and 80 - 72 = 8 (the mirrored border), y unchanged.
    assert plain.tolist() == [[5.0, 9.0], [12.0, 4.0], [15.0, 9.0], [8.0, 4.0]]
    # scale 0.5: 64 x 80 -> 32 x 40, centre-padded to 127 x 127 at top 63 - 16 = 47, left 63 - 20 = 43;
    # origin = plain origin * 0.5 + (43, 47); flipped: the mirrored origin (15, 9) and (8, 4) likewise
    assert scaled.tolist() == [[45.5, 51.5], [49.0, 49.0], [50.5, 51.5], [47.0, 49.0]]


def test_single_view_postprocess_takes_the_origin_from_the_metas():
    rec = OriginRecorder()
    PostProcess(rec, corner_topk=4)(FlatModel()(torch.rand(2, 3, 64, 80)), METAS)
    assert rec.origins[0] is not None and rec.origins[0].tolist() == [[5.0, 9.0], [12.0, 4.0]]
    rec.origins.clear()
    PostProcess(rec, corner_topk=4).candidates(FlatModel()(torch.rand(1, 3, 64, 80)))
    assert rec.origins == [None]  # no metas (training proposals): the input's own origin
