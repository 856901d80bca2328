"""Loss functions: focal loss against a direct formula, masked SmoothL1, AE pull/push."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cnet.losses import ae_pull_push, corner_focal_loss, masked_smooth_l1


def test_focal_loss_matches_the_formula():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 5, 5)
    gt = torch.rand(2, 3, 5, 5) * 0.9
    gt[0, 1, 2, 2] = gt[1, 0, 4, 4] = gt[1, 2, 0, 3] = 1  # 1 and 2 positives: per-image norms would differ
    p = logits.sigmoid()
    pos = gt == 1
    expected = (-(torch.log(p) * (1 - p) ** 2)[pos].sum() - (torch.log(1 - p) * p**2 * (1 - gt) ** 4)[~pos].sum()) / 3
    assert torch.allclose(corner_focal_loss(logits, gt), expected, rtol=1e-5)


def test_focal_loss_empty_ground_truth_is_positive_and_finite():
    loss = corner_focal_loss(torch.zeros(1, 2, 4, 4), torch.zeros(1, 2, 4, 4))
    assert loss > 0 and torch.isfinite(loss)
    # saturated logits stay finite thanks to log-sigmoid
    assert torch.isfinite(corner_focal_loss(torch.full((1, 1, 2, 2), 200.0), torch.zeros(1, 1, 2, 2)))


def test_masked_smooth_l1_normalises_by_masked_cells():
    pred, target = torch.zeros(1, 2, 3, 3), torch.ones(1, 2, 3, 3)
    mask = torch.zeros(1, 1, 3, 3)
    assert masked_smooth_l1(pred, target, mask).item() == 0.0
    mask[0, 0, 1, 1] = mask[0, 0, 2, 0] = 1
    # two cells x two channels, each SmoothL1(1) = 0.5, divided by 2 cells
    assert torch.isclose(masked_smooth_l1(pred, target, mask), torch.tensor(1.0))
    assert torch.isclose(masked_smooth_l1(pred, target, mask), F.smooth_l1_loss(pred, target) * 2)
    # a batch of 2: image 0 with 2 masked cells off by 1 (SmoothL1 0.5), image 1 with 1 cell off by 2 (1.5):
    # (2 x 2 x 0.5 + 1 x 2 x 1.5) / 3 cells of the batch = 5/3 (per image, then averaged: (1 + 3) / 2 = 2)
    two = torch.zeros(2, 1, 3, 3)
    two[0, 0, 1, 1] = two[0, 0, 2, 0] = two[1, 0, 0, 0] = 1
    target = torch.ones(2, 2, 3, 3)
    target[1] = 2.0
    assert torch.isclose(masked_smooth_l1(torch.zeros(2, 2, 3, 3), target, two), torch.tensor(5 / 3))


def test_ae_pull_push_properties():
    zero = torch.zeros(0, 1)
    pull, push = ae_pull_push(zero, zero)
    assert pull.item() == 0 and push.item() == 0
    pull, push = ae_pull_push(torch.tensor([[0.0]]), torch.tensor([[2.0]]))
    assert push.item() == 0 and pull.item() == 2.0  # (0-1)^2 + (2-1)^2
    # two objects whose means are 0.25 apart: push = relu(1 - 0.25) per ordered pair / (2*1)
    _, push = ae_pull_push(torch.tensor([[0.0], [0.25]]), torch.tensor([[0.0], [0.25]]))
    assert torch.isclose(push, torch.tensor(0.75))
    _, push2d = ae_pull_push(torch.tensor([[0.0, 0.0], [3.0, 4.0]]), torch.tensor([[0.0, 0.0], [3.0, 4.0]]))
    assert push2d.item() == 0.0  # 5 apart > margin
