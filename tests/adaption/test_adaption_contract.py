"""Contract of every option in conf/adaption/: a new YAML is tested without new test code.

Shape kept; the Fig. 7 offsets in eval mode for every option that changes features; gradients
reach every parameter through the adapted features plus the option's own weighted loss; every
adaption composes with every matching strategy into a detector that trains one step.
"""

from __future__ import annotations

import pytest
import torch

from cnet.backbone import HourglassNet
from cnet.compose import group_options, option_factory
from cnet.criterion import CornerSum
from cnet.detector import CornerDetector
from cnet.targets import encode_corners
from cnet.types import Grid, GroundTruth

ADAPTIONS = group_options("adaption")
MATCHINGS = group_options("matching")
C, H, W = 8, 12, 12


def factory(group: str, name: str):
    return option_factory(group, name)


def pools(batch: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    return torch.randn(batch, C, H, W), torch.randn(batch, C, H, W)


def two_objects() -> list[GroundTruth]:
    boxes = [[4.0, 8.0, 28.0, 20.0], [20.0, 12.0, 44.0, 40.0]]  # input px; grid ratio 4
    return [GroundTruth(torch.tensor(boxes), torch.tensor([0, 1])), GroundTruth.empty()]


def test_the_four_table_5_options_exist():
    assert {"none", "dcn", "roi_conv", "cross_star"} <= set(ADAPTIONS)


def test_none_is_the_identity():
    tl_pool, br_pool = pools()
    tl, br, maps = factory("adaption", "none")(in_channels=C)(tl_pool, br_pool)
    assert tl is tl_pool and br is br_pool and maps == {}


@pytest.mark.parametrize("name", ADAPTIONS)
def test_feature_shape_is_kept_and_offsets_are_returned_in_eval(name):
    a = factory("adaption", name)(in_channels=C)
    tl_pool, br_pool = pools()
    for train in (True, False):
        tl, br, maps = a.train(train)(tl_pool, br_pool)
        assert tl.shape == tl_pool.shape and br.shape == br_pool.shape
        assert all(v.shape[0] == 2 and v.shape[-2:] == (H, W) for v in maps.values())
    # every feature-changing option here samples deformably: the picture needs its offsets
    keys = {"tl_dcn_offset", "br_dcn_offset"}
    if a.changes_features:
        assert keys <= set(maps) and all(maps[k].shape == (2, 18, H, W) for k in keys)
        assert torch.isfinite(maps["tl_dcn_offset"]).all()
    else:
        assert not keys & set(maps)


@pytest.mark.parametrize("name", ADAPTIONS)
def test_gradients_reach_every_parameter(name):
    a = factory("adaption", name)(in_channels=C).train()
    tl_pool, br_pool = pools()
    tl, br, maps = a(tl_pool, br_pool)
    grid = Grid(4 * H, 4 * W, H, W)
    corners = encode_corners(two_objects(), grid, 2)
    losses = CornerSum(2, {"adaption": a}).join(a.loss(maps, a.encode_targets(corners, grid), corners))
    assert set(losses) == set(a.loss_weights)
    total = tl.square().mean() + br.square().mean() + sum(a.loss_weights[k] * v for k, v in losses.items())
    assert all(torch.isfinite(v) and v >= 0 for v in losses.values())
    if not any(p.requires_grad for p in a.parameters()):
        return  # the identity: nothing to train
    total.backward()
    for pname, p in a.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"{name}: no gradient reaches {pname}"


@pytest.mark.parametrize("name", ADAPTIONS)
def test_own_losses_are_zero_without_objects(name):
    a = factory("adaption", name)(in_channels=C).train()
    _tl, _br, maps = a(*pools())
    grid = Grid(4 * H, 4 * W, H, W)
    corners = encode_corners([GroundTruth.empty(), GroundTruth.empty()], grid, 2)
    losses = a.loss(maps, a.encode_targets(corners, grid), corners)
    assert all(float(v.detach()) == 0 for v in losses.values())


@pytest.mark.parametrize("matching", MATCHINGS)
@pytest.mark.parametrize("adaption", ADAPTIONS)
def test_every_adaption_composes_with_every_matching(matching, adaption):
    torch.manual_seed(0)
    backbone = HourglassNet(
        num_stacks=1, stage_channels=(16, 16), stage_blocks=(1, 1), stem_channels=8, feat_channels=16
    )
    m_factory, a_factory = factory("matching", matching), factory("adaption", adaption)
    probe_a = a_factory(in_channels=16)
    # every configured strategy predicts from the adapted feature (the refusal is tested in test_detector)
    model = CornerDetector(backbone, 2, m_factory, a_factory)
    images = torch.randn(2, 3, 47, 47)  # output map 12 x 12
    criterion = CornerSum(2, model.parts)
    losses = criterion(model(images), two_objects())
    assert set(losses) == set(criterion.weight_dict)
    total = criterion.total(losses)
    assert torch.isfinite(total)
    total.backward()
    out = model.eval()(images)
    assert out.levels[-1]["tl_heat"].shape == (2, 2, 12, 12)
    assert ("tl_dcn_offset" in out.levels[-1]) == probe_a.changes_features
