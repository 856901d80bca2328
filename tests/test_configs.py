"""Every option of every config group composes, and its components instantiate and fit together."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from cnet.backbone import HourglassNet
from cnet.compose import (
    build_detector,
    build_model,
    compose_config,
    group_options,
    instantiate_node,
    load_config,
    to_dataclass,
)
from cnet.model import TestConfig

CONF = Path(__file__).resolve().parents[1] / "conf"

GROUPS = ["backbone", "matching", "adaption", "mask_head", "criterion", "data", "optim", "schedule", "trainer", "test"]


options = group_options
compose_cfg = compose_config


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_option_composes(group, option):
    overrides = [f"{group}={option}"]
    if option == "coco":
        overrides.append("data.root=/data/coco")
    cfg = compose_cfg(overrides)
    OmegaConf.resolve(cfg)  # every interpolation resolves
    # the composed group holds the option's own values (not another option's, not the default's)
    assert_holds(cfg[group], OmegaConf.load(CONF / group / f"{option}.yaml"), f"{group}={option}")


def assert_holds(node: Any, yaml: Any, where: str, skip: tuple[str, ...] = ()) -> None:
    """Every literal value of ``yaml`` is in ``node``; interpolations, ``???``, ``defaults``, ``skip`` aside."""
    for key, value in OmegaConf.to_container(yaml, resolve=False).items():  # type: ignore[union-attr]
        if key == "defaults" or key in skip or value == "???" or (isinstance(value, str) and "${" in value):
            continue
        if isinstance(value, dict):
            assert_holds(node[key], yaml[key], f"{where}.{key}")
        else:
            assert OmegaConf.to_container(node, resolve=True)[key] == value, f"{where}.{key}"


def test_default_config_infers_like_the_paper():
    """§4.1: top-100 corners per side, 1000 pairs, soft-NMS (mmdet's Gaussian sigma 0.5, score
    1e-3), 100 detections, 3x3 local maxima, flip testing; plus the matching-only evaluation."""
    cfg = compose_cfg([])
    test = to_dataclass(TestConfig, cfg.test)
    assert test == TestConfig(
        flip=True,
        matching_only=True,
        corner_topk=100,
        num_dets=1000,
        max_per_image=100,
        nms_sigma=0.5,
        nms_min_score=1e-3,
        kernel=3,
    )
    assert (cfg.matching._target_, cfg.adaption._target_) == (
        "cnet.matching.centripetal.Centripetal",
        "cnet.adaption.cross_star.CrossStar",
    )  # the paper's full model (#14): centripetal shift with the cross-star module


def test_test_bootstrap_reaches_the_predictor_and_zero_turns_it_off():
    """``test.bootstrap``: the image resamples of each evaluation's AP interval (1000 by default),
    handed to the predictor the evaluation reads it from; 0 turns it off, a negative count is refused."""
    assert build_model(compose_cfg(["backbone=tiny", "adaption=none"]), 3).predictor.bootstrap == 1000
    assert build_model(compose_cfg(["backbone=tiny", "adaption=none", "test.bootstrap=0"]), 3).predictor.bootstrap == 0
    with pytest.raises(ValueError, match=r"test.bootstrap=-1: give a number of resamples >= 0"):
        to_dataclass(TestConfig, compose_cfg(["test.bootstrap=-1"]).test)


def test_build_model_seeds_each_component_from_the_seed_alone():
    """The backbone's and the heads' initial weights depend on ``seed`` only: not on the global RNG
    before the call, nor (the heads) on which backbone was built first."""
    cfg = compose_cfg(["adaption=none", "mask_head=centripetal_mask", "seed=3"])
    first = build_model(cfg, 3)
    torch.rand(7)  # the global RNG moves on
    again = build_model(cfg, 3)
    other = build_model(cfg, 3, backbone=instantiate_node(cfg.backbone))  # initialised from another RNG state
    a, b, c = (m.model.state_dict() for m in (first, again, other))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert all(torch.equal(a[k], c[k]) for k in a if not k.startswith("backbone."))
    assert not all(torch.equal(a[k], c[k]) for k in a if k.startswith("backbone."))
    assert first.predictor.model is first.model and first.criterion.parts == first.model.parts
    reseeded = build_model(compose_cfg(["adaption=none", "mask_head=centripetal_mask", "seed=4"]), 3)
    assert not torch.equal(a["heads.0.tl_heat.0.weight"], reseeded.model.state_dict()["heads.0.tl_heat.0.weight"])


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
    spec = OmegaConf.load(CONF / "experiment" / f"{experiment}.yaml")
    # each `override /group: option` is applied, except keys the experiment sets itself
    for entry in spec.get("defaults", []):
        if isinstance(entry, str):  # `_self_` or another experiment this one builds on
            continue
        for target, option in entry.items():
            group = target.removeprefix("override ").strip("/")
            own = tuple(spec.get(group, {}).keys())
            assert_holds(cfg[group], OmegaConf.load(CONF / group / f"{option}.yaml"), f"{experiment}: {group}", own)
    assert_holds(cfg, spec, experiment, skip=("hydra",))


def test_a_saved_config_from_before_a_part_group_existed_builds_with_its_default():
    cfg = OmegaConf.create({k: v for k, v in compose_cfg([]).items() if k != "mask_head"})  # an old run's config
    model = build_detector(cfg, 3, HourglassNet(num_stacks=1, stage_channels=(16, 16), stage_blocks=(1, 1),
                                                stem_channels=8, feat_channels=16))  # fmt: skip
    assert model.mask_head is None or not model.uses_masks


def test_a_saved_config_with_a_renamed_key_loads_under_the_new_name(tmp_path):
    old = OmegaConf.to_container(compose_cfg([]), resolve=False)
    del old["data"]["test_transform"]["pad_logical_or"]  # type: ignore[index]
    old["data"]["test_transform"]["pad_or"] = 63  # type: ignore[index]  # the key's name before the rename
    OmegaConf.save(OmegaConf.create(old), tmp_path / "config.yaml")
    cfg = load_config(tmp_path / "config.yaml")
    assert "pad_or" not in cfg.data.test_transform
    assert instantiate_node(cfg.data.test_transform).pad_logical_or == 63
