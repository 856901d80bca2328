"""Contract of every strategy in conf/matching/: a new YAML is tested without new test code.

Round trip: targets fed back as perfect predictions decode to the ground-truth boxes (IoU 1);
losses: exactly 0 matching terms on empty ground truth, positive on two objects.
"""

from __future__ import annotations

import pytest
import torch
from torchvision.ops import box_iou

from cnet.compose import group_options, option_factory
from cnet.criterion import CornerSum
from cnet.parts import CornerFeatures
from cnet.postprocess import PostProcess
from cnet.targets import encode_corners
from cnet.types import Corners, Grid, GroundTruth, ImageMeta, Outputs

OPTIONS = group_options("matching")
C = 16  # feature channels of the test head


def build(name: str, num_classes: int = 3):
    return option_factory("matching", name)(in_channels=C, num_classes=num_classes)


def scenes() -> dict[str, tuple[Grid, GroundTruth]]:
    grid = Grid(128, 128, 32, 32)
    several = GroundTruth(
        torch.tensor(
            [
                [10.0, 12.0, 60.0, 50.0],
                [30.0, 30.0, 100.0, 90.0],
                [70.0, 5.0, 120.0, 40.0],
                [0.0, 60.0, 40.0, 128.0],
                [90.0, 100.0, 128.0, 128.0],
            ]
        ),  # overlapping, border
        torch.tensor([0, 1, 0, 1, 2]),
    )
    # look-alike crowd: one class, same size, neighbours overlap
    xy = [(4 + 22 * i, 6 + 26 * j) for i in range(5) for j in range(4)]
    crowd = GroundTruth(
        torch.tensor([[x, y, x + 30.0, y + 30.0] for x, y in xy]).clamp(max=128),
        torch.zeros(len(xy), dtype=torch.int64),
    )
    # a test-time input (|127) twice as wide as tall: its cells are 767/192 px wide, 383/96 px tall
    wide = GroundTruth(
        torch.tensor([[20.0, 30.0, 300.0, 200.0], [350.0, 40.0, 700.0, 370.0], [100.0, 250.0, 260.0, 380.0],
                      [500.0, 10.0, 760.0, 120.0]]),
        torch.tensor([0, 2, 1, 0]),
    )  # fmt: skip
    return {"several": (grid, several), "crowd": (grid, crowd), "wide": (Grid(383, 767, 96, 192), wide)}


def perfect_outputs(matching, gt: GroundTruth | list[GroundTruth], grid: Grid, num_classes: int) -> Outputs:
    """The targets of ``gt`` (one image, or a batch) as logits and maps: what a perfect model predicts."""
    corners = encode_corners(gt if isinstance(gt, list) else [gt], grid, num_classes)
    eps = 1e-6
    logit = lambda h: torch.logit(h.clamp(eps, 1 - eps))  # noqa: E731
    level = {
        "tl_heat": logit(corners.tl_heat),
        "br_heat": logit(corners.br_heat),
        "tl_off": corners.tl_off,
        "br_off": corners.br_off,
    }
    level |= matching.targets_as_predictions(matching.encode_targets(corners, grid), corners)
    return Outputs([level], (grid.in_h, grid.in_w))


@pytest.mark.parametrize("name", OPTIONS)
@pytest.mark.parametrize("scene", ["several", "crowd", "wide"])
def test_round_trip_recovers_ground_truth(name, scene):
    grid, gt = scenes()[scene]
    matching = build(name)
    out = perfect_outputs(matching, gt, grid, 3)
    meta = ImageMeta(0, (grid.in_h, grid.in_w), (grid.in_h, grid.in_w))
    det = PostProcess(matching, corner_topk=100)(out, [meta])[0]
    n = len(gt)
    assert len(det.boxes) >= n
    assert ((det.scores >= 0) & (det.scores <= 1)).all()
    # every ground-truth box is decoded exactly, with a near-perfect score
    iou = box_iou(det.boxes, gt.boxes)  # [D, N]
    best_iou, best = iou.max(dim=0)
    assert (best_iou > 0.999).all()
    assert (det.scores[best] > 0.5).all()  # soft-NMS decays look-alike neighbours a little
    assert torch.equal(det.labels[best], gt.labels)
    if scene != "crowd":  # no look-alike neighbours: the n best detections are exactly the GT
        assert (iou[:n].max(dim=1).values > 0.999).all()


@pytest.mark.parametrize("name", OPTIONS)
def test_round_trip_of_a_batch_gives_each_image_its_own_boxes(name):
    """Two images of different scenes in one batch: each image's detections are its own objects."""
    grid, several = scenes()["several"]
    mirrored = GroundTruth(torch.stack([128 - several.boxes[:, 2], several.boxes[:, 1], 128 - several.boxes[:, 0],
                                        several.boxes[:, 3]], 1)[:3], several.labels[:3])  # fmt: skip
    matching = build(name)
    out = perfect_outputs(matching, [several, mirrored], grid, 3)
    metas = [ImageMeta(i, (grid.in_h, grid.in_w), (grid.in_h, grid.in_w)) for i in range(2)]
    for det, gt in zip(PostProcess(matching, corner_topk=100)(out, metas), [several, mirrored]):
        iou = box_iou(det.boxes, gt.boxes)
        assert (iou.max(dim=0).values > 0.999).all() and (iou[: len(gt)].max(dim=1).values > 0.999).all()


@pytest.mark.parametrize("name", OPTIONS)
def test_rejected_pairs_never_appear(name):
    """Pairs of different classes or inverted geometry get -1 and are never decoded."""
    grid, gt = scenes()["several"]
    matching = build(name)
    out = perfect_outputs(matching, gt, grid, 3)
    pp = PostProcess(matching)
    level = out.levels[-1]
    from cnet.ops import local_maxima, topk_cells

    tl = Corners(*topk_cells(local_maxima(level["tl_heat"].sigmoid()), level["tl_off"], 20))
    br = Corners(*topk_cells(local_maxima(level["br_heat"].sigmoid()), level["br_off"], 20))
    scores = matching.pair(level, tl, br, grid)
    bad = (tl.classes[:, :, None] != br.classes[:, None, :]) | (tl.xs[:, :, None] >= br.xs[:, None, :])
    assert (scores[bad] == -1).all()
    assert ((scores[~bad] == -1) | ((scores[~bad] >= 0) & (scores[~bad] <= 1))).all()
    boxes, s, _ = pp.candidates(out)[0]
    assert (boxes[:, 2] > boxes[:, 0]).all() and (s >= 0).all()


def _features(b: int = 2, h: int = 16, w: int = 16) -> CornerFeatures:
    torch.manual_seed(0)
    f = [torch.randn(b, C, h, w) for _ in range(5)]
    return CornerFeatures(*f)


@pytest.mark.parametrize("name", OPTIONS)
def test_losses_on_empty_one_and_two_objects(name):
    grid = Grid(64, 64, 16, 16)
    matching = build(name)
    pred = matching(_features(1))
    for v in pred.values():
        assert v.shape[0] == 1 and v.shape[-2:] == (16, 16)
    empty = encode_corners([GroundTruth.empty()], grid, 3)
    join = CornerSum(3, {"matching": matching}).join  # per-corner halves -> the named terms
    losses = join(matching.loss(pred, matching.encode_targets(empty, grid), empty))
    assert set(losses) == set(matching.loss_weights)
    for k, v in losses.items():  # regression/embedding terms vanish; heatmap terms keep their negatives
        assert (v.item() > 0) if k in matching.dense_terms else (v.item() == 0.0), k
    two = GroundTruth(torch.tensor([[4.0, 6.0, 40.0, 30.0], [20.0, 22.0, 60.0, 62.0]]), torch.tensor([0, 2]))
    corners = encode_corners([two], grid, 3)
    losses = join(matching.loss(pred, matching.encode_targets(corners, grid), corners))
    assert set(losses) == set(matching.loss_weights)
    assert all(torch.isfinite(v) for v in losses.values())
    assert sum(v.item() for v in losses.values()) > 0
    total = sum(losses.values())
    total.backward()
    grads = [p.grad for p in matching.parameters()]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
