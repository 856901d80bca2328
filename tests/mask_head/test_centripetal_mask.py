"""mask_head=centripetal_mask: proposal assignment, mask targets, the loss (Eq. 8) and start_epoch."""

from __future__ import annotations

import pytest
import torch

from cnet.adaption.none import NoAdaption
from cnet.backbone import HourglassNet
from cnet.criterion import CornerSum
from cnet.decode import ProposalDecoder
from cnet.detector import CornerDetector
from cnet.mask_head.centripetal_mask import CentripetalMask
from cnet.masks import crop_masks
from cnet.matching.centripetal import Centripetal
from cnet.targets import encode_corners
from cnet.types import Grid, GroundTruth

C, K = 8, 3


def ground_truth() -> list[GroundTruth]:
    masks = torch.zeros(2, 64, 64, dtype=torch.bool)
    masks[0, 8:30, 4:28] = True  # a rectangle filling its box
    masks[1, 20:50, 30:60] = torch.rand(30, 30, generator=torch.Generator().manual_seed(0)) > 0.5
    boxes = torch.tensor([[4.0, 8.0, 28.0, 30.0], [30.0, 20.0, 60.0, 50.0]])
    return [GroundTruth(boxes, torch.tensor([0, 2]), masks)]


def head(**kw) -> CentripetalMask:
    torch.manual_seed(0)
    return CentripetalMask(C, K, **kw)


def maps_for(h: CentripetalMask, boxes: list[list[float]], labels: list[int]) -> dict[str, torch.Tensor]:
    rois = torch.cat([torch.zeros(len(boxes), 1), torch.tensor(boxes).reshape(-1, 4)], dim=1)
    label_t = torch.tensor(labels, dtype=torch.int64)
    features = torch.randn(1, C, 16, 16)
    return {"mask_logits": h.mask_logits(features, rois, label_t, (64, 64)), "mask_rois": rois, "mask_labels": label_t}


def corners_of(gts: list[GroundTruth]):
    return encode_corners(gts, Grid(64, 64, 16, 16), K)


def test_shapes_class_specific_and_agnostic():
    for agnostic, channels in ((False, K), (True, 1)):
        h = head(class_agnostic=agnostic)
        assert h.predictor.out_channels == channels
        assert maps_for(h, [[0.0, 0.0, 20.0, 20.0]] * 3, [0, 1, 2])["mask_logits"].shape == (3, 28, 28)


def test_proposal_takes_the_same_class_object_with_iou_at_least_0_5():
    h, gts = head(), ground_truth()
    rois = torch.tensor(
        [[0, 4.0, 8.0, 28.0, 30.0], [0, 4.0, 8.0, 28.0, 30.0], [0, 32.0, 22.0, 60.0, 50.0], [0, 0, 0, 8, 8]]
    )
    targets, matched = h.assign(rois, torch.tensor([0, 1, 2, 0]), gts)
    assert matched.tolist() == [True, False, True, False]  # wrong class / no overlap are left out
    assert targets[0].all()  # the rectangle fills its own box
    expected = crop_masks(gts[0].masks, rois[2:3, 1:], torch.tensor([1]), 28) >= 0.5
    assert torch.equal(targets[2].bool(), expected[0])


def test_no_matched_proposal_gives_exactly_zero_loss():
    h, gts = head(), ground_truth()
    pred = maps_for(h, [[0.0, 0.0, 3.0, 3.0], [4.0, 8.0, 28.0, 30.0]], [0, 1])  # far away / wrong class
    loss = h.loss(pred, {}, corners_of(gts))["mask"]
    assert loss.item() == 0.0
    empty = h.loss(maps_for(h, [], []), {}, corners_of(gts))["mask"]
    assert empty.item() == 0.0
    assert h.loss({"tl_heat": torch.zeros(1)}, {}, corners_of(gts)) == {}  # levels without mask maps


def test_matched_loss_is_the_mean_cross_entropy_and_trains_the_head():
    h, gts = head(), ground_truth()
    pred = maps_for(h, [[4.0, 8.0, 28.0, 30.0], [30.0, 20.0, 60.0, 50.0]], [0, 2])
    loss = h.loss(pred, {}, corners_of(gts))["mask"]
    targets, _ = h.assign(pred["mask_rois"], pred["mask_labels"], gts)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(pred["mask_logits"], targets)
    assert torch.allclose(loss, expected) and loss > 0
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in h.parameters())


def test_missing_ground_truth_masks_is_a_one_line_error():
    h = head()
    gts = [GroundTruth(ground_truth()[0].boxes, torch.tensor([0, 2]))]
    pred = maps_for(h, [[4.0, 8.0, 28.0, 30.0]], [0])
    with pytest.raises(ValueError, match=r"GroundTruth\.masks"):
        h.loss(pred, {}, corners_of(gts))


def test_bad_sizes_name_the_key():
    with pytest.raises(ValueError, match=r"mask_head\.mask_size"):
        CentripetalMask(C, K, roi_size=14, mask_size=20)
    with pytest.raises(ValueError, match=r"mask_head\.num_proposals"):
        CentripetalMask(C, K, num_proposals=0)


def detector(start_epoch: int) -> CornerDetector:
    torch.manual_seed(0)
    backbone = HourglassNet(num_stacks=2, stage_channels=(8, 8), stage_blocks=(1, 1), stem_channels=8, feat_channels=8)
    return CornerDetector(
        backbone,
        K,
        matching=Centripetal,
        adaption=NoAdaption,
        pool_channels=8,
        mask_head=lambda **kw: CentripetalMask(**kw, start_epoch=start_epoch, num_proposals=8),
    )


def test_no_mask_gradient_before_start_epoch_then_the_head_trains():
    model = detector(start_epoch=1).train()
    criterion = CornerSum(K, model.parts)
    images, gts = torch.randn(1, 3, 64, 64), ground_truth()
    criterion.set_epoch(0)
    out = model(images)
    assert out.levels[-1]["mask_logits"].shape[0] == 0 and "mask_logits" not in out.levels[0]  # last stack only
    losses = criterion(out, gts)
    assert losses["mask"].item() == 0.0
    criterion.total(losses).backward()
    assert all(p.grad is None for p in model.mask_head.parameters())
    assert any(p.grad is not None for p in model.heads.parameters())
    criterion.set_epoch(1)
    out = model(images)
    rois = out.levels[-1]["mask_rois"]
    assert 0 < len(rois) <= 8 and out.levels[-1]["mask_logits"].shape == (len(rois), 28, 28)
    assert not rois.requires_grad and (rois[:, 1:] >= 0).all() and (rois[:, 1:] <= 64).all()


def test_predicted_masks_are_probabilities_of_each_roi():
    h = head()
    rois = torch.tensor([[0.0, 2.0, 2.0, 20.0, 14.0], [0.0, 0.0, 0.0, 63.0, 63.0]])
    probs = h.predict_masks(torch.randn(1, C, 16, 16), rois, torch.tensor([0, 2]), (64, 64))
    assert probs.shape == (2, 28, 28) and ((probs >= 0) & (probs <= 1)).all()


def test_the_detector_gives_the_head_its_last_stacks_decoder_outside_the_state_dict():
    model = detector(start_epoch=0)
    assert isinstance(model.mask_head.decoder, ProposalDecoder) and model.mask_head.decoder.matching is model.matching
    assert not [k for k in model.state_dict() if "decoder" in k]  # the matching is saved once, in its head
    with pytest.raises(ValueError, match="without a proposal decoder"):
        head()(torch.randn(1, C, 16, 16), {}, Grid(64, 64, 16, 16))  # built outside a detector
