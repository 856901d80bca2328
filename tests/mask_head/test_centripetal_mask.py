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


def test_each_images_proposals_carry_its_batch_index_and_read_its_feature():
    """A batch of 2 different images: the proposals with batch index i are exactly those decoded from
    image i's maps alone (clamped to the input), and their logits read image i's feature."""
    model = detector(start_epoch=0).train()
    out = model(torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1)))
    last, grid = out.levels[-1], out.grid
    rois, head = last["mask_rois"], model.mask_head
    assert sorted(set(rois[:, 0].tolist())) == [0.0, 1.0]
    for i in (0, 1):
        alone = {k: v[i : i + 1] for k, v in last.items() if not k.startswith("mask_")}
        ((boxes, _, labels),) = head.decoder(alone, grid, head.corner_topk, head.num_proposals)
        mine = rois[:, 0] == i
        assert torch.equal(rois[mine, 1:], boxes.clamp(min=0).minimum(torch.tensor([64.0] * 4)))
        assert torch.equal(last["mask_labels"][mine], labels)
        own = rois[mine].clone()
        own[:, 0] = 0  # the same boxes on image i's feature alone
        logits = head.mask_logits(out.features[i : i + 1], own, labels, (64, 64))
        torch.testing.assert_close(last["mask_logits"][mine], logits)


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


# ---------------------------------------------------------------- geometry on non-square inputs


def identity_head(channels: int, gain: float = 1.0, bias: float = 0.0) -> CentripetalMask:
    """A head with no 3x3 convs whose class-c logit is ``gain * feature channel c + bias`` at the
    RoIAligned point, each 14x14 cell repeated 2x2 by the transposed conv (features >= 0)."""
    h = CentripetalMask(channels, channels, num_convs=0)
    with torch.no_grad():
        h.upsample.weight.zero_()  # [in, out, 2, 2]
        h.predictor.weight.zero_()  # [out, in, 1, 1]
        for c in range(channels):
            h.upsample.weight[c, c] = 1.0
            h.predictor.weight[c, c] = gain
        h.upsample.bias.zero_()
        h.predictor.bias.fill_(bias)
    return h


def test_roi_align_samples_the_half_pixel_aligned_bin_centres_of_a_non_square_input():
    """Feature channel 0 holds its column index x, channel 1 its row index y, so a bilinear sample
    returns its own position and the class-0/1 logits are the (averaged) sampling points' x / y.
    Cell (j, i) of the 12 x 20 map covers input pixels [4j, 4j + 4) x [4i, 4i + 4) of the 48 x 80 input:
    its centre is at input x = 4j + 2, so input x lies at cell coordinate x / 4 - 0.5. Bin u of the 14
    across box (8, 12, 64, 40) is centred at input x = 8 + (u + 0.5) * 56 / 14 = 10 + 4u, i.e. cell
    2 + u, and at input y = 12 + (u + 0.5) * 28 / 14 = 13 + 2u, i.e. cell 2.75 + 0.5u (by hand; without
    the half-pixel rule every point is 0.5 cell further on, with x and y scales taken from the wrong
    side of the input they run 80/48 or 48/80 times as fast)."""
    ys, xs = torch.meshgrid(torch.arange(12.0), torch.arange(20.0), indexing="ij")
    features = torch.stack([xs, ys])[None]  # [1, 2, 12, 20]
    rois = torch.tensor([[0.0, 8.0, 12.0, 64.0, 40.0]] * 2)
    logits = identity_head(2).mask_logits(features, rois, torch.tensor([0, 1]), (48, 80))  # [2, 28, 28]
    u = torch.arange(14.0)
    want_x = (2 + u).repeat_interleave(2)  # each of the 14 bins is 2 of the 28 mask columns
    want_y = (2.75 + 0.5 * u).repeat_interleave(2)
    torch.testing.assert_close(logits[0], want_x[None, :].expand(28, 28), atol=1e-5, rtol=0)
    torch.testing.assert_close(logits[1], want_y[:, None].expand(28, 28), atol=1e-5, rtol=0)


def test_predicted_mask_of_a_known_object_on_a_non_square_image_pastes_back_onto_it():
    """A 56 x 88 image at border (top 4, left 8) of a 64 x 96 input holds one rectangle, x in [8, 56)
    and y in [8, 32) original px = input [16, 64) x [12, 36) = cells [4, 16) x [3, 9) of the 16 x 24
    feature, which is 1 there and 0 elsewhere (the mirrored view's feature is its mirror; the object is
    off-centre, so a view mapped back the wrong way would miss it). A head whose logit is
    20 * (feature - 0.5) predicts it. The detection box, input (12, 9, 68, 51), has 14 bins of 4 x 3 px
    whose edges fall on the object's, where the bilinear feature crosses 0.5: the bins either side
    average 0.125 / 0.875 (x) and 0.16 / 0.84 (y), symmetric about 0.5, so the pasted mask's edges are
    the object's and its IoU with the rectangle is 1. Unaligned RoIAlign moves the mask 2 px (IoU
    0.79); x and y scales taken from the wrong side of the input miss most of it (0.34)."""
    from cnet.masks import decode_rle
    from cnet.types import Detections, ImageMeta, Outputs
    from cnet.views import HFlip, Identity, ViewPass

    feature = torch.zeros(1, 16, 24)
    feature[0, 3:9, 4:16] = 1.0
    features = torch.stack([feature, feature.flip(-1)])  # [2 views, 1, 16, 24], view-major
    passes = [ViewPass([Identity(), HFlip()], Outputs([{}], (64, 96), features=features))]
    meta = ImageMeta(1, orig_size=(56, 88), input_size=(64, 96), border=(4.0, 8.0))
    det = Detections(torch.tensor([[4.0, 5.0, 60.0, 47.0]]), torch.ones(1), torch.zeros(1, dtype=torch.int64))
    (rles,) = identity_head(1, gain=20.0, bias=-10.0).segment(passes, (64, 96), [det], [meta])
    mask = decode_rle(rles, (56, 88))[0]
    truth = torch.zeros(56, 88, dtype=torch.bool)
    truth[8:32, 8:56] = True
    iou = float((mask & truth).sum() / (mask | truth).sum())
    assert iou > 0.99, iou
