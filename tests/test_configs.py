"""Every option of every config group composes, and its components instantiate and fit together."""

from __future__ import annotations

import pytest
import torch
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from cnet.backbone import HourglassNet
from cnet.compose import build_detector, compose_config, group_options, instantiate_node

GROUPS = ["backbone", "matching", "adaption", "mask_head", "data", "optim", "schedule", "trainer", "test"]


options = group_options
compose_cfg = compose_config


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_option_composes(group, option):
    overrides = [f"{group}={option}"]
    if option == "coco":
        overrides.append("data.root=/data/coco")
    cfg = compose_cfg(overrides)
    OmegaConf.resolve(cfg)  # every interpolation resolves
    assert cfg[group] is not None


@pytest.mark.parametrize("matching", options("matching"))
@pytest.mark.parametrize("adaption", options("adaption"))
def test_matching_and_adaption_instantiate_into_a_detector(matching, adaption):
    cfg = compose_cfg([f"matching={matching}", f"adaption={adaption}"])
    backbone = HourglassNet(
        num_stacks=1, stage_channels=(16, 16), stage_blocks=(1, 1), stem_channels=8, feat_channels=16
    )
    model = build_detector(cfg, 3, backbone)
    out = model(torch.randn(1, 3, 31, 31))
    assert out.levels[-1]["tl_heat"].shape == (1, 3, 8, 8)


@pytest.mark.parametrize("backbone", ["tiny"])
def test_backbone_instantiates_and_runs(backbone):
    cfg = compose_cfg([f"backbone={backbone}"])
    net = instantiate_node(cfg.backbone)
    feats = net(torch.randn(1, 3, 127, 127))
    assert len(feats) == net.num_stacks and feats[-1].shape[-2:] == (32, 32)


def test_transforms_and_optim_instantiate_node():
    cfg = compose_cfg(["data=coco", "data.root=/data/coco"])
    assert instantiate_node(cfg.data.train_transform).crop_size == 511
    opt = instantiate_node(cfg.optim)([torch.nn.Parameter(torch.zeros(1))])
    assert isinstance(opt, torch.optim.Adam) and opt.param_groups[0]["lr"] == 5e-4


def test_unknown_option_is_rejected_with_the_key_named():
    with pytest.raises(ConfigCompositionException, match="matching"):
        compose_cfg(["matching=does_not_exist"])


@pytest.mark.parametrize("experiment", options("experiment"))
def test_every_experiment_composes(experiment):
    cfg = compose_cfg([f"+experiment={experiment}", "data.root=/data/coco"])
    OmegaConf.resolve(cfg)
    instantiate_node(cfg.matching)
    instantiate_node(cfg.adaption)
