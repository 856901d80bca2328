"""HourglassNet: reference parameter counts, output shapes at stride 4, gradient flow."""

from __future__ import annotations

import pytest
import torch

from cnet.backbone import HourglassNet

TINY = dict(
    num_stacks=1, stage_channels=(32, 32, 48, 48), stage_blocks=(1, 1, 1, 2), stem_channels=16, feat_channels=32
)


def _num_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        # docs/implementation_facts.md §1: HG-104, HG-52, and mmdet's test backbone (its stem is
        # stage_channels[0] // 2 = 32 wide).
        (dict(), 187_700_352),
        (dict(num_stacks=1), 93_662_848),
        (dict(num_stacks=1, stage_channels=(64, 64, 96, 96, 96, 128), stem_channels=32, feat_channels=64), 5_868_448),
    ],
)
def test_param_count_matches_reference(kwargs: dict, expected: int) -> None:
    with torch.device("meta"):  # no allocation or init: counting HG-104 stays fast
        model = HourglassNet(**kwargs)
    assert _num_params(model) == expected


def test_params_are_bias_free_convs_plus_bn_affine() -> None:
    with torch.device("meta"):
        model = HourglassNet(num_stacks=1)
    n_bn_channels = sum(m.num_features for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    # learnable params minus BN weight/bias are the conv weights; no conv has a bias
    conv_params = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert all(m.bias is None for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert _num_params(model) == conv_params + 2 * n_bn_channels


def test_output_shapes_511_two_stacks() -> None:
    torch.manual_seed(0)
    model = HourglassNet(
        num_stacks=2,
        stage_channels=(8, 8, 8, 8, 8, 12),
        stage_blocks=(1, 1, 1, 1, 1, 1),
        stem_channels=8,
        feat_channels=8,
    )
    assert model.num_stacks == 2 and model.out_channels == 8
    with torch.no_grad():
        outs = model.eval()(torch.randn(1, 3, 511, 511))
    assert isinstance(outs, list) and len(outs) == 2
    assert all(o.shape == (1, 8, 128, 128) for o in outs)


@pytest.mark.parametrize("hw, feat_hw", [((127, 127), (32, 32)), ((100, 90), (25, 23))])
def test_output_shapes_tiny(hw: tuple[int, int], feat_hw: tuple[int, int]) -> None:
    # (100, 90) gives odd inner sizes (25 -> 13 -> 7): upsampling must follow the skip's size
    model = HourglassNet(**TINY)
    outs = model(torch.randn(2, 3, *hw))
    assert len(outs) == 1
    assert outs[0].shape == (2, 32, *feat_hw)


def test_stem_wider_than_feat_and_stage_channels_differ() -> None:
    # stage_channels[0] (24) != feat_channels (16): the inter-stack join must remap channels
    model = HourglassNet(num_stacks=3, stage_channels=(24, 32), stage_blocks=(1, 1), stem_channels=8, feat_channels=16)
    outs = model(torch.randn(1, 3, 63, 63))
    assert [tuple(o.shape) for o in outs] == [(1, 16, 16, 16)] * 3


def test_gradients_reach_every_parameter() -> None:
    torch.manual_seed(0)
    model = HourglassNet(**{**TINY, "num_stacks": 2})
    outs = model(torch.randn(2, 3, 31, 31))
    sum(o.square().mean() for o in outs).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_stacks_are_not_shared_and_differ() -> None:
    torch.manual_seed(0)
    model = HourglassNet(**{**TINY, "num_stacks": 2}).eval()
    assert model.hourglasses[0] is not model.hourglasses[1]
    with torch.no_grad():
        first, second = model(torch.randn(1, 3, 31, 31))
    assert not torch.allclose(first, second)


def test_bn_init_and_default_conv_init() -> None:
    torch.manual_seed(0)
    model = HourglassNet(**TINY)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(torch.all(m.weight == 1) and torch.all(m.bias == 0) for m in bns)
    # PyTorch default conv init is kaiming_uniform(a=sqrt(5)): |w| <= 1 / sqrt(fan_in)
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):
            fan_in = m.weight[0].numel()
            assert m.weight.abs().max() <= fan_in**-0.5 + 1e-6


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(num_stacks=0), "num_stacks"),
        (dict(stage_channels=(8, 8, 8), stage_blocks=(1, 1)), "same length"),
        (dict(stage_channels=(8,), stage_blocks=(1,)), "same length"),
        (dict(stage_channels=(8, 8), stage_blocks=(1, 0)), ">= 1"),
    ],
)
def test_bad_config_raises(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        HourglassNet(**kwargs)


def test_bad_input_raises() -> None:
    model = HourglassNet(**TINY)
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        model(torch.randn(1, 1, 32, 32))
