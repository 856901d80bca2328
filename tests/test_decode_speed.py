"""The fast CPU decode changes no value. Each shortcut is compared, bit for bit, with the computation
it replaced, kept here as a reference:

* ``local_maxima`` (channels-last pooling, ``where``) with CornerNet's
  ``heat * (max_pool2d(heat) == heat)`` (on maps without NaN, which ``where`` suppresses to 0);
* ``top_peak_indices`` / ``top_keypoints`` (cnet.peaks: rank only the cells that can reach the top k) with
  suppressing and ranking every cell, ties in the same order;
* ``center_region_scores`` (only the same-class corner/centre couples) with the dense
  [B, K, K, Kc] broadcast;
* and the whole post-processor, every matching strategy, batch 1 and > 1, at COCO scale.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

import cnet.decode as decode
import cnet.matching.center_heatmap as center_heatmap
import cnet.peaks as peaks
from cnet.compose import group_options, option_factory
from cnet.ops import local_maxima, topk_cells
from cnet.peaks import top_keypoints, top_peak_indices
from cnet.postprocess import PostProcess
from cnet.targets import encode_corners
from cnet.tools.bench import random_outputs
from cnet.types import Corners, Grid, GroundTruth, ImageMeta, Outputs


def reference(heat: Tensor, kernel: int = 3) -> Tensor:
    return heat * (F.max_pool2d(heat, kernel, stride=1, padding=(kernel - 1) // 2) == heat)


def reference_top_keypoints(heat: Tensor, off: Tensor, k: int, kernel: int = 3) -> tuple[Tensor, ...]:
    """The corner selection before cnet.peaks: suppress every cell, then rank every cell."""
    return topk_cells(local_maxima(heat, kernel), off, k)


def reference_center_region_scores(
    tl: Corners, br: Corners, centers: Corners, grid: Grid, area_threshold: float, n_small: float, n_large: float
) -> Tensor:
    """center_region_scores before the sparse rewrite: all pairs against all centres, [B, K, K, Kc]."""
    rx, ry = grid.ratio_x, grid.ratio_y
    x1, y1 = tl.xs[:, :, None] * rx, tl.ys[:, :, None] * ry
    x2, y2 = br.xs[:, None, :] * rx, br.ys[:, None, :] * ry
    area = (x2 - x1) * (y2 - y1)
    n = torch.where(area <= area_threshold, n_small, n_large)
    lx, hx = ((n + 1) * x1 + (n - 1) * x2) / (2 * n), ((n - 1) * x1 + (n + 1) * x2) / (2 * n)
    ly, hy = ((n + 1) * y1 + (n - 1) * y2) / (2 * n), ((n - 1) * y1 + (n + 1) * y2) / (2 * n)
    cx = (centers.xs * rx)[:, None, None, :]
    cy = (centers.ys * ry)[:, None, None, :]
    same_class = tl.classes[:, :, None, None] == centers.classes[:, None, None, :]
    inside = same_class & (cx > lx[..., None]) & (cx < hx[..., None]) & (cy > ly[..., None]) & (cy < hy[..., None])
    ct_scores = centers.scores[:, None, None, :].expand_as(inside)
    return torch.where(inside, ct_scores, torch.full_like(ct_scores, -1.0)).amax(dim=-1)


@pytest.mark.parametrize("kernel", [3, 5])
def test_local_maxima_equals_the_reference_bit_for_bit(kernel):
    g = torch.Generator().manual_seed(0)
    heat = torch.randn(2, 7, 33, 40, generator=g).sigmoid()
    heat[0, 0, 5:8, 5:8] = 0.5  # plateaus: ties are kept, as by the reference
    heat[1, 3] = heat[1, 3].round(decimals=1)
    out = local_maxima(heat, kernel)
    assert torch.equal(out, reference(heat, kernel)) and out.is_contiguous()


def _heat(b: int, c: int, h: int, w: int, kind: str, seed: int) -> Tensor:
    """Sigmoid maps [B, C, H, W] of one kind of trouble for a top-k of local maxima."""
    g = torch.Generator().manual_seed(seed)
    heat = (torch.randn(b, c, h, w, generator=g) * 2 - 3).sigmoid()
    if kind == "ties":  # few distinct values: plateaus, and ties across the k-th place
        heat = (heat * 6).round() / 6
    elif kind == "saturated":  # logits past ~17 all give exactly 1.0
        heat[torch.rand(heat.shape, generator=g) < 0.002] = 1.0
    elif kind == "empty_classes":  # whole classes (the head included) at 0 or one constant
        heat[:, : c // 2] = 0
        heat[:, -1] = 0.25
    elif kind == "nan":  # NaN is never a peak and spoils its neighbours, head and later classes
        heat[torch.rand(heat.shape, generator=g) < 0.01] = float("nan")
    elif kind == "few_peaks":  # fewer positive peaks than k: zeros of the head fill the top k
        heat = torch.zeros(b, c, h, w)
        heat[:, 1:, 3, 4] = 0.5
    return heat


@pytest.mark.parametrize("kind", ["random", "ties", "saturated", "empty_classes", "nan", "few_peaks"])
@pytest.mark.parametrize(
    "b,c,h,w,k,kernel",
    [
        (1, 80, 128, 128, 100, 3),
        (3, 80, 64, 48, 100, 3),
        (2, 9, 31, 37, 20, 5),
        (2, 40, 20, 24, 7, 1),
        (4, 3, 8, 5, 1, 3),
    ],
)
def test_top_peak_indices_equals_ranking_every_suppressed_cell(b, c, h, w, k, kernel, kind, monkeypatch):
    heat = _heat(b, c, h, w, kind, seed=b * c + h)
    ref = local_maxima(heat, kernel).reshape(b, -1).topk(k)  # NaN: 0, unlike reference()'s NaN * 0
    # the shortcut must answer by itself, without suppressing the whole map
    monkeypatch.setattr(peaks, "local_maxima", lambda *a: pytest.fail("fell back to the full map"))
    scores, idx = top_peak_indices(heat, k, kernel)
    assert torch.equal(scores, ref.values) and torch.equal(idx, ref.indices)


@pytest.mark.parametrize("b,c,h,w,k,kernel", [(2, 3, 8, 8, 10, 3), (1, 1, 40, 40, 5, 3), (2, 6, 16, 16, 100, 5)])
def test_top_peak_indices_falls_back_on_small_maps(b, c, h, w, k, kernel):
    heat = _heat(b, c, h, w, "ties", seed=1)
    ref = local_maxima(heat, kernel).reshape(b, -1).topk(min(k, heat[0].numel()))
    scores, idx = top_peak_indices(heat, k, kernel)
    assert torch.equal(scores, ref.values) and torch.equal(idx, ref.indices)


def test_top_keypoints_equals_topk_cells_of_the_suppressed_map():
    heat = _heat(2, 20, 40, 40, "ties", seed=3)
    off = torch.rand(2, 2, 40, 40, generator=torch.Generator().manual_seed(4))
    for a, b in zip(top_keypoints(heat, off, 50), reference_top_keypoints(heat, off, 50)):
        assert torch.equal(a, b)


def _corners(b: int, k: int, classes: int, g: torch.Generator, size: float) -> Corners:
    # positions on a half-cell lattice: centres land exactly on region borders, scores tie
    xs, ys = (torch.randint(0, int(2 * size), (2, b, k), generator=g) / 2).unbind(0)
    scores = torch.randint(1, 5, (b, k), generator=g) / 4
    return Corners(scores, torch.randint(0, classes, (b, k), generator=g), torch.zeros(b, k, dtype=torch.long), xs, ys)


@pytest.mark.parametrize("b,k,kc,classes", [(1, 100, 70, 80), (3, 40, 30, 3), (2, 10, 5, 1), (2, 6, 4, 50)])
def test_center_region_scores_equals_the_dense_reference(b, k, kc, classes):
    g = torch.Generator().manual_seed(k)
    grid = Grid(127, 127, 32, 32)
    tl, br, ct = (_corners(b, n, classes, g, 32.0) for n in (k, k, kc))
    for threshold in (22500.0, 100.0):
        args = (tl, br, ct, grid, threshold, 3.0, 5.0)
        assert torch.equal(center_heatmap.center_region_scores(*args), reference_center_region_scores(*args))


def busy_outputs(name: str, b: int, size: int, num_classes: int, seed: int) -> tuple[Outputs, torch.nn.Module]:
    """Perfect maps of 30 boxes per image (6 classes) plus noise, with saturated and rounded logits:
    every strategy keeps pairs, and soft-NMS has overlapping boxes of one class to decay."""
    torch.manual_seed(seed)  # the strategy's layers (unused by pairing, but keep runs alike)
    g = torch.Generator().manual_seed(seed)
    matching = option_factory("matching", name)(in_channels=8, num_classes=num_classes).eval()
    side = 4 * size - 1
    grid = Grid(side, side, size, size)
    gts = []
    for _ in range(b):
        xy = torch.rand(30, 2, generator=g) * side * 0.7
        wh = 8 + torch.rand(30, 2, generator=g) * side * 0.3
        gts.append(GroundTruth(torch.cat([xy, xy + wh], 1), torch.randint(0, 6, (30,), generator=g)))
    corners = encode_corners(gts, grid, num_classes)
    logit = lambda h: torch.logit(h.clamp(1e-6, 1 - 1e-6))  # noqa: E731
    level = {"tl_heat": logit(corners.tl_heat), "br_heat": logit(corners.br_heat)}
    level |= {"tl_off": corners.tl_off, "br_off": corners.br_off}
    level |= matching.targets_as_predictions(matching.encode_targets(corners, grid), corners)
    for key, value in level.items():
        level[key] = value + torch.randn(value.shape, generator=g) * (1.0 if "heat" in key else 0.05)
    for key in ("tl_heat", "br_heat"):
        heat = level[key]
        heat[torch.rand(heat.shape, generator=g) < 2e-5] = 30.0  # sigmoid 1.0 exactly: ties
        rounded = torch.rand(heat.shape, generator=g) < 0.3
        heat[rounded] = (heat[rounded] * 2).round() / 2
    return Outputs([level], (side, side)), matching


CASES = {
    "bench_b1": lambda name: random_outputs(name, 1, 128, 80, torch.device("cpu")),
    "bench_b2_small": lambda name: random_outputs(name, 2, 32, 5, torch.device("cpu")),
    "busy_b1": lambda name: busy_outputs(name, 1, 128, 80, seed=1),
    "busy_b3": lambda name: busy_outputs(name, 3, 64, 80, seed=2),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("name", group_options("matching"))
def test_every_matching_decodes_identical_detections(name, case, monkeypatch):
    outputs, matching = CASES[case](name)
    b = outputs.levels[-1]["tl_heat"].shape[0]
    metas = [ImageMeta(0, outputs.input_size, outputs.input_size)] * b
    pp = PostProcess(matching, corner_topk=100, num_dets=1000, max_per_image=100)
    fast = pp(outputs, metas)
    monkeypatch.setattr(decode, "top_keypoints", reference_top_keypoints)
    monkeypatch.setattr(center_heatmap, "top_keypoints", reference_top_keypoints)
    monkeypatch.setattr(center_heatmap, "center_region_scores", reference_center_region_scores)
    slow = pp(outputs, metas)
    if case.startswith("busy"):
        assert all(len(d.scores) > 20 for d in slow)  # the comparison covers real detections
    for a, b in zip(fast, slow):
        assert torch.equal(a.boxes, b.boxes) and torch.equal(a.scores, b.scores) and torch.equal(a.labels, b.labels)
