"""Contract of every option in conf/mask_head/: a new YAML is tested without new test code.

Every mask head composes with every matching strategy and adaption module into a detector that
trains one step (its loss terms finite and weighted, no collision with the other parts' terms),
and at inference gives every final detection one mask of its image or declines (None).
"""

from __future__ import annotations

import pytest
import torch

from cnet.backbone import HourglassNet
from cnet.compose import build_detector, compose_config, group_options
from cnet.criterion import CornerSum
from cnet.mask_head import MaskHead
from cnet.types import Detections, GroundTruth, ImageMeta
from cnet.views import ViewPass, test_views

MASK_HEADS = group_options("mask_head")
K = 2


def test_the_table_6_options_exist():
    assert {"none", "centripetal_mask"} <= set(MASK_HEADS)


def ground_truth() -> list[GroundTruth]:
    masks = torch.zeros(2, 32, 32, dtype=torch.bool)
    masks[0, 2:14, 2:20] = True
    masks[1, 10:30, 12:30] = True
    boxes = torch.tensor([[2.0, 2.0, 20.0, 14.0], [12.0, 10.0, 30.0, 30.0]])
    return [GroundTruth(boxes, torch.tensor([0, 1]), masks), GroundTruth.empty()]


def build(mask_head: str, matching: str = "centripetal", adaption: str = "none"):
    overrides = [f"mask_head={mask_head}", f"matching={matching}", f"adaption={adaption}"]
    if mask_head != "none":
        overrides.append("mask_head.start_epoch=0")
    cfg = compose_config(overrides)
    torch.manual_seed(0)
    backbone = HourglassNet(num_stacks=2, stage_channels=(8, 8), stage_blocks=(1, 1), stem_channels=8, feat_channels=8)
    return build_detector(cfg, K, backbone)


@pytest.mark.parametrize("mask_head", MASK_HEADS)
@pytest.mark.parametrize("matching", group_options("matching"))
@pytest.mark.parametrize("adaption", group_options("adaption"))
def test_every_combination_composes_and_trains_a_step(mask_head, matching, adaption):
    try:
        model = build(mask_head, matching, adaption)
    except ValueError as err:  # an incompatible matching x adaption pair is refused at build time
        assert "use adaption=none" in str(err)
        return
    assert isinstance(model.mask_head, MaskHead) and model.parts["mask_head"] is model.mask_head
    criterion = CornerSum(K, model.parts)
    criterion.set_epoch(0)
    model.train()
    losses = criterion(model(torch.randn(2, 3, 32, 32)), ground_truth())
    assert set(model.mask_head.loss_weights) <= set(losses)
    assert all(torch.isfinite(v) for v in losses.values())
    total = criterion.total(losses)
    total.backward()
    assert model.uses_masks == (mask_head != "none")


@pytest.mark.parametrize("mask_head", MASK_HEADS)
def test_inference_gives_one_mask_per_detection_or_none(mask_head):
    model = build(mask_head).eval()
    images, views = torch.randn(1, 3, 32, 32), test_views(flip=True)
    with torch.no_grad():
        passes = [ViewPass(views, model(torch.cat([v.apply(images) for v in views])))]
    meta = ImageMeta(0, (30, 28), (32, 32), border=(1.0, 2.0))
    boxes = torch.tensor([[2.0, 2.0, 20.0, 14.0], [0.0, 0.0, 28.0, 30.0]])
    det = Detections(boxes, torch.ones(2), torch.tensor([0, 1]))
    (masks,) = model.mask_head.segment(passes, (32, 32), [det], [meta])
    if mask_head == "none":
        assert masks is None and not list(model.mask_head.parameters())
    else:
        assert masks is not None and len(masks) == 2 and all(m["size"] == [30, 28] for m in masks)
