"""The composed detector: forward in train/eval mode, criterion terms, empty-GT properties."""

from __future__ import annotations

import functools

import pytest
import torch

from cnet.adaption.cross_star import CrossStar
from cnet.adaption.none import NoAdaption
from cnet.backbone import HourglassNet
from cnet.criterion import CornerSum
from cnet.detector import CornerDetector, CornerHead
from cnet.mask_head.centripetal_mask import CentripetalMask
from cnet.matching.centripetal import Centripetal
from cnet.postprocess import PostProcess
from cnet.predictor import Predictor
from cnet.types import GroundTruth, ImageMeta
from cnet.views import test_views


def tiny_detector(adaption=CrossStar, num_stacks: int = 2) -> CornerDetector:
    torch.manual_seed(0)
    backbone = HourglassNet(
        num_stacks=num_stacks, stage_channels=(16, 16, 24), stage_blocks=(1, 1, 1), stem_channels=8, feat_channels=16
    )
    return CornerDetector(backbone, 3, functools.partial(Centripetal), functools.partial(adaption))


GT = [
    GroundTruth(torch.tensor([[4.0, 8.0, 40.0, 50.0], [30.0, 20.0, 60.0, 60.0]]), torch.tensor([0, 2])),
    GroundTruth.empty(),
]


def test_train_forward_has_one_level_per_stack_and_all_terms():
    model = tiny_detector()
    images = torch.randn(2, 3, 63, 63)
    out = model(images)
    assert len(out.levels) == 2 and out.input_size == (63, 63)
    lvl = out.levels[-1]
    assert lvl["tl_heat"].shape == (2, 3, 16, 16) and lvl["tl_cs"].shape == (2, 2, 16, 16)
    assert lvl["tl_guiding"].shape == (2, 2, 16, 16)
    criterion = CornerSum(3, model.parts)
    losses = criterion(out, GT)
    assert set(losses) == {"det", "off", "guiding", "centripetal"}
    assert criterion.weight_dict["guiding"] == 0.05
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())
    criterion.total(losses).backward()
    # intermediate supervision: every parameter of both stacks' heads gets a gradient
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, missing


@pytest.mark.parametrize("adaption", [NoAdaption, CrossStar])
def test_empty_ground_truth_losses(adaption):
    model = tiny_detector(adaption, num_stacks=1)
    criterion = CornerSum(3, model.parts)
    losses = criterion(model(torch.randn(1, 3, 31, 31)), [GroundTruth.empty()])
    assert losses["det"] > 0
    for k in losses.keys() - {"det"}:
        assert losses[k].item() == 0.0, k


def test_eval_forward_uses_last_level_and_flip_tta_decodes():
    model = tiny_detector().eval()
    images = torch.randn(1, 3, 63, 63)
    with torch.no_grad():
        out = model(images)
        assert len(out.levels) == 1
        views = test_views(flip=True)
        tta = model(torch.cat([v.apply(images) for v in views]))
    assert tta.levels[0]["tl_heat"].shape[0] == 2
    meta = ImageMeta(7, (60, 50), (63, 63), border=(1.0, 6.0))
    dets = Predictor(model, PostProcess(model.matching, max_per_image=20), views)(images, [meta])[""]
    assert len(dets) == 1
    d = dets[0]
    # an untrained head still pairs corners (heat prior 0.1); mirrored-back boxes keep x1 <= x2
    assert 0 < len(d.boxes) <= 20 and d.boxes.shape[1] == 4
    assert (d.boxes[:, 0] <= d.boxes[:, 2]).all() and (d.boxes[:, 1] <= d.boxes[:, 3]).all()
    assert (d.scores[:-1] >= d.scores[1:]).all() and ((d.scores > 0) & (d.scores <= 1)).all()
    assert ((d.labels >= 0) & (d.labels < 3)).all()


def test_corner_head_pools_towards_its_box():
    """A top-left corner looks right and down into its box, a bottom-right one left and up: a pixel
    far to the right of (or below) a cell reaches that cell's tl heatmap, never its br heatmap."""
    torch.manual_seed(0)
    head = CornerHead(8, 2, 8, Centripetal(8, 2), NoAdaption(8)).eval()
    feat = torch.randn(1, 8, 24, 24)
    with torch.no_grad():
        base = head(feat)

    def changed(pixel: tuple[int, int], cell: tuple[int, int]) -> dict[str, bool]:
        poked = feat.clone()
        poked[0, :, pixel[0], pixel[1]] += 50.0  # (row, column)
        with torch.no_grad():
            a, b = base, head(poked)
        return {k: not torch.allclose(a[k][..., cell[0], cell[1]], b[k][..., cell[0], cell[1]]) for k in a}

    for far in [(2, 20), (20, 2)]:  # right of and below cell (2, 2), beyond any 3x3 conv's reach
        seen = changed(far, (2, 2))
        assert seen["tl_heat"] and not seen["br_heat"], far
    for far in [(20, 2), (2, 20)]:  # left of and above cell (20, 20)
        seen = changed(far, (20, 20))
        assert seen["br_heat"] and not seen["tl_heat"], far


class _FixedFeatureMatching(Centripetal):
    accepts_adapted_features = False  # a strategy that predicts from the un-adapted feature


def test_adaption_in_front_of_a_matching_that_ignores_it_is_refused():
    backbone = HourglassNet(
        num_stacks=1, stage_channels=(16, 16), stage_blocks=(1, 1), stem_channels=8, feat_channels=16
    )
    with pytest.raises(ValueError, match="adaption=CrossStar adapts the corner features"):
        CornerDetector(backbone, 3, _FixedFeatureMatching, CrossStar)
    CornerDetector(backbone, 3, _FixedFeatureMatching, NoAdaption)  # without adaption it is fine


def test_input_is_not_mutated():
    model = tiny_detector().eval()
    images = torch.randn(1, 3, 31, 31)
    copy = images.clone()
    with torch.no_grad():
        model(images)
    assert torch.equal(images, copy)


def test_the_detector_uses_masks_when_a_part_asks_for_them():
    model = tiny_detector(num_stacks=1)
    assert not model.uses_masks
    model.matching.uses_masks = True  # e.g. a strategy that pairs corners by instance masks
    assert model.uses_masks


# ---------------------------------------------------------------- gradient paths between the parts


def parameter_groups(model: CornerDetector) -> dict[str, list[torch.nn.Parameter]]:
    """The detector's parameters by the part that owns them (every stack's head together)."""
    heads = list(model.heads)
    groups: dict[str, list[torch.nn.Parameter]] = {"backbone": list(model.backbone.parameters())}

    def of(*names: str) -> list[torch.nn.Parameter]:
        return [p for h in heads for n in names for p in getattr(h, n).parameters()]

    groups |= {"pools": of("tl_pool", "br_pool"), "heat": of("tl_heat", "br_heat"), "off": of("tl_off", "br_off")}
    groups["matching"] = of("matching")
    adaptions = [h.adaption for h in heads]
    groups["guiding"] = [p for a in adaptions for c in (a.tl, a.br) for p in c.guiding.parameters()]
    groups["deform"] = [p for a in adaptions for c in (a.tl, a.br) for p in (c.offset.weight, c.weight)]
    groups["mask_head"] = list(model.mask_head.parameters())
    return groups


def reached_by(loss: torch.Tensor, groups: dict[str, list[torch.nn.Parameter]]) -> set[str]:
    """The groups in which a backward from ``loss`` alone leaves some non-zero gradient."""
    names = [name for name, params in groups.items() for _ in params]
    params = [p for ps in groups.values() for p in ps]
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return {name for name, g in zip(names, grads) if g is not None and bool(g.abs().sum() > 0)}


def test_each_loss_alone_trains_the_parts_it_must_and_no_others():
    """Cross-star + centripetal shift + mask head: every corner term flows through the corner pools
    into the backbone; the centripetal shift is predicted from the adapted (deformable) features, so
    it trains the offsets and the deformable weights, but not the guiding branch, whose output
    reaches the offsets detached (paper §3.2); the guiding loss trains that branch and nothing of the
    deformable convolution; the mask loss trains the mask head and the backbone, never the corner
    branches (its proposals are decoded without gradient)."""
    torch.manual_seed(0)
    backbone = HourglassNet(num_stacks=1, stage_channels=(8, 8), stage_blocks=(1, 1), stem_channels=8, feat_channels=8)
    model = CornerDetector(
        backbone, 3, Centripetal, CrossStar, pool_channels=8,
        mask_head=lambda **kw: CentripetalMask(**kw, channels=8, num_proposals=4, iou_threshold=0.0),
    ).train()  # fmt: skip
    masks = torch.zeros(3, 31, 31, dtype=torch.bool)
    masks[0, 4:25, 2:20], masks[1, 10:30, 15:30], masks[2, 1:15, 12:31] = True, True, True
    boxes = torch.tensor([[2.0, 4.0, 20.0, 25.0], [15.0, 10.0, 30.0, 30.0], [12.0, 1.0, 31.0, 15.0]])
    gt = GroundTruth(boxes, torch.tensor([0, 1, 2]), masks)  # every class: every proposal has its object
    losses = CornerSum(3, model.parts)(model(torch.randn(1, 3, 31, 31)), [gt])
    assert losses["mask"] > 0
    groups = parameter_groups(model)
    corner = {"backbone", "pools"}
    expected = {
        "det": corner | {"heat"},
        "off": corner | {"off"},
        "guiding": corner | {"guiding"},
        "centripetal": corner | {"deform", "matching"},
        "mask": {"backbone", "mask_head"},
    }
    assert set(losses) == set(expected)
    for term, want in expected.items():
        assert reached_by(losses[term], groups) == want, term
