"""Multi-scale testing: views of one size share a forward pass, ``scales=[1]`` is single-scale
testing, and perfect maps decode to the ground truth at every scale (the views alone: test_views.py).

The stand-in model recognises each batch entry by its pixels (which view of the image it is) and
returns the perfect maps (targets fed back as predictions, as in the matching contract test) of the
boxes that view shows, for whatever input size it gets.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn
from torchvision.ops import box_iou

from cnet.compose import group_options, option_factory
from cnet.postprocess import PostProcess
from cnet.predictor import Predictor
from cnet.targets import encode_corners
from cnet.types import Grid, GroundTruth, ImageMeta, Outputs
from cnet.views import CORNERNET_SCALES, Scale, test_views

SIZE = 255  # plain input, already |127
GT = GroundTruth(torch.tensor([[20.0, 30.0, 120.0, 140.0], [130.0, 60.0, 240.0, 200.0]]), torch.tensor([0, 1]))
META = ImageMeta(7, (SIZE, SIZE), (SIZE, SIZE))


def perfect_level(matching, gt: GroundTruth, grid: Grid, num_classes: int = 3) -> dict[str, Tensor]:
    corners = encode_corners([gt], grid, num_classes)
    logit = lambda h: torch.logit(h.clamp(1e-6, 1 - 1e-6))  # noqa: E731
    level = {"tl_heat": logit(corners.tl_heat), "br_heat": logit(corners.br_heat)}
    level |= {"tl_off": corners.tl_off, "br_off": corners.br_off}
    return level | matching.targets_as_predictions(matching.encode_targets(corners, grid), corners)


class PerfectModel(nn.Module):
    """Perfect maps of the boxes each entry shows: ``views`` of ``image`` are known by their pixels."""

    def __init__(self, matching, image: Tensor, views: list) -> None:
        super().__init__()
        self.matching = matching
        self.known = [(v.apply(image), GroundTruth(v.apply_boxes(GT.boxes, (SIZE, SIZE)), GT.labels)) for v in views]
        self.sizes: list[tuple[int, ...]] = []  # input shape of every forward pass

    def forward(self, x: Tensor) -> Outputs:
        self.sizes.append(tuple(x.shape))
        h, w = x.shape[-2:]
        grid = Grid(h, w, (h + 1) // 4, (w + 1) // 4)
        levels = []
        for entry in x:
            gt = next(g for im, g in self.known if im.shape[-2:] == entry.shape[-2:] and torch.equal(im[0], entry))
            levels.append(perfect_level(self.matching, gt, grid))
        return Outputs([{k: torch.cat([lv[k] for lv in levels]) for k in levels[0]}], (h, w))


def image() -> Tensor:
    return torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("flip", [False, True])
def test_scales_one_equals_single_scale_exactly(flip):
    torch.manual_seed(0)
    matching = option_factory("matching", "centripetal")(in_channels=16, num_classes=3)
    x = image()
    model = PerfectModel(matching, x, test_views(flip))
    single = Predictor(model, PostProcess(matching), test_views(flip))(x, [META])[""][0]
    multi = Predictor(model, PostProcess(matching), test_views(flip, [1.0]))(x, [META])[""][0]
    scaled = Predictor(model, PostProcess(matching), [Scale(1.0, 127, f) for f in [False, True][: 1 + flip]])
    scaled_det = scaled(x, [META])[""][0]
    for a, b in ((single, multi), (single, scaled_det)):
        assert torch.equal(a.boxes, b.boxes) and torch.equal(a.scores, b.scores) and torch.equal(a.labels, b.labels)
    assert len(model.sizes) == 3 and model.sizes[0][0] == 1 + flip  # one forward pass, all views in one batch


def test_views_of_one_size_share_a_forward_pass():
    matching = option_factory("matching", "centripetal")(in_channels=16, num_classes=3)
    x = image()
    views = test_views(True, CORNERNET_SCALES, 127)
    model = PerfectModel(matching, x, views)
    Predictor(model, PostProcess(matching), views)(x, [META])
    # 0.5 -> 127; 0.75 and 1 -> 255; 1.25 and 1.5 -> 383: three passes, each with a view and its mirror
    assert model.sizes == [(2, 3, 127, 127), (4, 3, 255, 255), (4, 3, 383, 383)]


@pytest.mark.parametrize("name", group_options("matching"))
@pytest.mark.parametrize("scale", CORNERNET_SCALES)
def test_perfect_maps_decode_to_the_ground_truth_at_every_scale(name, scale):
    matching = option_factory("matching", name)(in_channels=16, num_classes=3)
    x = image()
    views = test_views(True, [scale], 127)
    det = Predictor(PerfectModel(matching, x, views), PostProcess(matching), views)(x, [META])[""][0]
    best_iou, best = box_iou(det.boxes, GT.boxes).max(dim=0)
    assert (best_iou > 0.999).all(), (name, scale, best_iou)
    assert torch.equal(det.labels[best], GT.labels)


@pytest.mark.parametrize("name", group_options("matching"))
def test_all_scales_merged_decode_to_the_ground_truth(name):
    matching = option_factory("matching", name)(in_channels=16, num_classes=3)
    x = image()
    views = test_views(True, CORNERNET_SCALES, 127)
    det = Predictor(PerfectModel(matching, x, views), PostProcess(matching), views)(x, [META])[""][0]
    assert len(det.boxes) <= 100
    best_iou, best = box_iou(det.boxes, GT.boxes).max(dim=0)
    assert (best_iou > 0.999).all() and torch.equal(det.labels[best], GT.labels)
    assert set(best.tolist()) == {0, 1} and det.scores[:2].min() > 0.5  # the two objects lead the list
