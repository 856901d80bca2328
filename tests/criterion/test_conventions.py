"""How each loss term is normalised over the two corners, per convention, for every part option.

    term               split by corner   paper / CornerNet (corner_sum)   mmdetection (corner_mean)
    det, off           yes               L_tl + L_br                       (L_tl + L_br) / 2
    guiding, box_size  yes               L_tl + L_br  (P Eq. 6)            (L_tl + L_br) / 2
    centripetal        yes               L_tl + L_br  (P Eq. 2)            (L_tl + L_br) / 2
    center_regression  yes               L_tl + L_br                       (L_tl + L_br) / 2
    pull, push         no (both inside)  CornerNet's, weight 0.1           same (mmdetection does not halve)
    center_det/off     no (one map)      CenterNet's                       same
    mask               no                P Eq. 8, weight 1                 same

Each expected value is computed here from the raw maps and the loss primitives, not through the
parts' ``loss``; every level is summed (intermediate supervision). A part that adds a per-corner
term without a row above fails ``test_every_per_corner_term_has_a_stated_normalisation``.
"""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate
from torch import Tensor

from cnet.backbone import HourglassNet
from cnet.compose import build_detector, compose_config, group_options
from cnet.criterion import CornerMean, CornerSum, Criterion
from cnet.losses import corner_focal_loss, masked_smooth_l1
from cnet.targets import CornerTargets, encode_corners
from cnet.types import GroundTruth

K = 2
Level = dict[str, Tensor]
# per-corner term -> the stem of its tl_/br_ maps; terms not split by corner
MAPS = {"det": "heat", "off": "off", "guiding": "guiding", "box_size": "box_size", "centripetal": "cs"}
MAPS |= {"center_regression": "cr"}
WHOLE = {"pull", "push", "center_det", "center_off", "mask"}
JOIN = {CornerSum: lambda tl, br: tl + br, CornerMean: lambda tl, br: (tl + br) / 2}


def halves(term: str, level: Level, corners: CornerTargets, targets: Level) -> tuple[Tensor, Tensor]:
    """The tl and br losses of ``term`` from the raw maps (CornerNet's focal loss / SmoothL1 forms)."""
    k = MAPS[term]
    if term == "det":
        return corner_focal_loss(level["tl_heat"], corners.tl_heat), corner_focal_loss(
            level["br_heat"], corners.br_heat
        )
    if term == "off":  # max(1, n) as CornerNet
        return (
            masked_smooth_l1(level["tl_off"], corners.tl_off, corners.tl_mask, min_norm=1),
            masked_smooth_l1(level["br_off"], corners.br_off, corners.br_mask, min_norm=1),
        )
    return (  # n + eps: exactly 0 without objects (mmdetection's avg_factor)
        masked_smooth_l1(level[f"tl_{k}"], targets[f"tl_{k}"], corners.tl_mask),
        masked_smooth_l1(level[f"br_{k}"], targets[f"br_{k}"], corners.br_mask),
    )


def ground_truth() -> list[GroundTruth]:
    masks = torch.zeros(3, 32, 32, dtype=torch.bool)
    masks[0, 2:14, 2:20] = True
    masks[1, 10:30, 12:30] = True
    masks[2, 4:12, 20:30] = True
    boxes = torch.tensor([[2.0, 2.0, 20.0, 14.0], [12.0, 10.0, 30.0, 30.0], [20.0, 4.0, 30.0, 12.0]])
    first = GroundTruth(boxes[:2], torch.tensor([0, 1]), masks[:2])
    return [first, GroundTruth(boxes[2:], torch.tensor([1]), masks[2:])]


def build(matching: str, adaption: str):
    """A 2-stack detector with every part of ``matching`` x ``adaption`` and the mask head (on)."""
    cfg = compose_config([f"matching={matching}", f"adaption={adaption}", "mask_head=centripetal_mask"])
    torch.manual_seed(0)
    backbone = HourglassNet(num_stacks=2, stage_channels=(8, 8), stage_blocks=(1, 1), stem_channels=8, feat_channels=8)
    try:
        model = build_detector(cfg, K, backbone)
    except ValueError as err:  # an incompatible matching x adaption pair is refused at build time
        assert "use adaption=none" in str(err)
        pytest.skip(str(err))
    return model.train()


COMBINATIONS = [(m, a) for m in group_options("matching") for a in group_options("adaption")]


@pytest.mark.parametrize("convention", [CornerSum, CornerMean], ids=["corner_sum", "corner_mean"])
@pytest.mark.parametrize(("matching", "adaption"), COMBINATIONS)
def test_each_per_corner_term_is_normalised_as_its_convention_says(convention: type[Criterion], matching, adaption):
    model = build(matching, adaption)
    criterion = convention(K, model.parts)
    criterion.set_epoch(model.mask_head.start_epoch)
    gts = ground_truth()
    outputs = model(torch.randn(2, 3, 32, 32))
    with torch.no_grad():
        got = criterion(outputs, gts)
        corners = encode_corners(gts, outputs.grid, K)
        targets: Level = {}
        for part in model.parts.values():
            targets |= part.encode_targets(corners, outputs.grid)
        terms = set(criterion.weight_dict) & set(MAPS)
        want = {
            t: sum(JOIN[convention](*halves(t, level, corners, targets)) for level in outputs.levels) for t in terms
        }
    assert set(got) - WHOLE == terms
    for term in terms:
        assert torch.allclose(got[term], want[term], rtol=1e-6, atol=1e-8), (term, float(got[term]), float(want[term]))


@pytest.mark.parametrize(("matching", "adaption"), COMBINATIONS)
def test_every_per_corner_term_has_a_stated_normalisation_and_the_rest_are_not_halved(matching, adaption):
    model = build(matching, adaption)
    model.mask_head.set_epoch(model.mask_head.start_epoch)
    gts = ground_truth()
    outputs = model(torch.randn(2, 3, 32, 32))
    corners = encode_corners(gts, outputs.grid, K)
    for part in model.parts.values():
        raw = part.loss(outputs.levels[-1], part.encode_targets(corners, outputs.grid), corners)
        split = {k[3:] for k in raw if k.startswith(("tl_", "br_"))}
        assert split <= set(MAPS), f"{type(part).__name__}: per-corner terms {split - set(MAPS)} need a row above"
        assert set(raw) - {f"{c}_{t}" for t in split for c in ("tl", "br")} <= WHOLE
    with torch.no_grad():
        by_sum, by_mean = CornerSum(K, model.parts)(outputs, gts), CornerMean(K, model.parts)(outputs, gts)
    for term in set(by_sum) & WHOLE:  # the same value under both conventions
        assert torch.equal(by_sum[term], by_mean[term]), term


def test_the_paper_is_the_default_and_the_mmdetection_recipe_averages():
    backbone = HourglassNet(num_stacks=1, stage_channels=(8, 8), stage_blocks=(1, 1), stem_channels=8, feat_channels=8)
    paper = compose_config(["mask_head=centripetal_mask"])
    model = build_detector(paper, K, backbone)
    criterion = instantiate(paper.criterion)(K, model.parts)
    assert type(criterion) is CornerSum
    # Eq. 9: L = L_det + L_off + 0.05 L_guiding + L_cs + L_mask
    assert criterion.weight_dict == {"det": 1, "off": 1, "guiding": 0.05, "centripetal": 1, "mask": 1}
    ae = compose_config(["matching=ae1d", "adaption=none"])
    assert instantiate(ae.criterion)(K, build_detector(ae, K, backbone).parts).weight_dict == {
        "det": 1, "off": 1, "pull": 0.1, "push": 0.1,  # CornerNet's AE weights
    }  # fmt: skip
    mmdet = compose_config(["+experiment=mmdet", "data.root=/data/coco", "backbone=tiny"])
    assert type(instantiate(mmdet.criterion)(K, model.parts)) is CornerMean
