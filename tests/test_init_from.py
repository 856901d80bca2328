"""init_from: what fits of a cnet checkpoint, a run folder or an mmdetection file is loaded, the rest
keeps the model's own initialisation, and the report says which is which."""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from cnet.compose import build_detector, build_init, build_model, class_layer_keys, compose_config
from cnet.data import SyntheticData, TestTransform, TrainTransform
from cnet.errors import InitError, UnsafeFileError
from cnet.init_from import InitFrom, checkpoint_file, init_weights, module_of, read_source
from cnet.mmdet_weights import cnet_to_mmdet_key
from cnet.run import Run
from cnet.schedule import ScheduleConfig
from cnet.trainer import TrainerConfig, TrainState
from tests.test_mmdet_weights import evil_checkpoint

SHAPES = ["square", "disk", "triangle", "diamond"]  # the synthetic set's classes, in label order
PRIOR_BIAS = -math.log(9)  # focal-loss prior 0.1: sigmoid(b) = 0.1
HEAT = ("heads.0.tl_heat.2.weight", "heads.0.tl_heat.2.bias", "heads.0.br_heat.2.weight", "heads.0.br_heat.2.bias")


@functools.cache
def config(*overrides: str):
    return compose_config(list(overrides))  # Hydra's compose is the slow part of building a model


def detector(num_classes: int, seed: int, *overrides: str) -> nn.Module:
    return build_detector(config(f"seed={seed}", *overrides), num_classes)


def save_cnet(model: nn.Module, path: Path, class_names: list[str]) -> Path:
    TrainState(3, 30, model.state_dict(), {}, {}, {}, class_names=class_names).save(path)
    return path


@functools.cache
def class_keys(num_classes: int, *overrides: str) -> frozenset[str]:
    return class_layer_keys(config(*overrides), num_classes)


def init_for(path: Path, num_classes: int, *overrides: str, **kw) -> InitFrom:
    return InitFrom(path, class_keys=class_keys(num_classes, *overrides), **kw)


def same(a: nn.Module, b: nn.Module, keys=None) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return all(torch.equal(sa[k], sb[k]) for k in (keys or sa))


def test_class_layer_keys_are_the_tensors_whose_rows_are_classes():
    # the heatmap convolutions' last layer, per stack; a mask head's per-class predictor; a centre heatmap's
    assert class_keys(4) == set(HEAT)
    two = class_keys(4, "backbone.num_stacks=2")
    assert two == set(HEAT) | {k.replace("heads.0", "heads.1") for k in HEAT}
    masked = class_keys(4, "mask_head=centripetal_mask")
    assert masked == set(HEAT) | {"mask_head.predictor.weight", "mask_head.predictor.bias"}
    assert class_keys(4, "mask_head=centripetal_mask", "mask_head.class_agnostic=true") == set(HEAT)
    centre = class_keys(4, "matching=center_heatmap", "adaption=none")
    assert {"heads.0.matching.ct_heat.2.weight", "heads.0.matching.ct_heat.2.bias"} <= centre


def test_a_cnet_checkpoint_loads_every_tensor(tmp_path):
    source = detector(4, seed=0)
    target = detector(4, seed=1)
    assert not same(source, target)
    path = save_cnet(source, tmp_path / "last.pt", SHAPES)
    report = init_weights(target, init_for(path, 4), SHAPES)
    assert same(source, target)
    total = len(source.state_dict())
    assert (len(report.loaded), len(report.class_layers), report.total) == (total - 4, 4, total)
    assert report.class_mode == "loaded" and report.share == 1.0
    assert not (report.missing or report.unexpected or report.mismatched)


def test_other_classes_reset_the_class_layers_to_the_prior_and_load_the_rest(tmp_path):
    source = detector(4, seed=0)
    path = save_cnet(source, tmp_path / "last.pt", SHAPES)
    target, fresh = detector(3, seed=1), detector(3, seed=1)
    report = init_weights(target, init_for(path, 3), ["person", "car", "dog"])
    state, src, new = target.state_dict(), source.state_dict(), fresh.state_dict()
    assert report.class_mode == "reset" and sorted(report.class_layers) == sorted(HEAT)
    for key in HEAT:  # the model's own initialisation: the focal-loss prior bias, weights as seeded
        assert torch.equal(state[key], new[key])
    assert torch.allclose(state["heads.0.tl_heat.2.bias"], torch.full((3,), PRIOR_BIAS))
    assert all(torch.equal(state[k], src[k]) for k in state if k not in HEAT)
    assert report.share == 1.0 and len(report.loaded) == len(state) - 4


def test_same_count_but_other_names_is_other_classes(tmp_path):
    path = save_cnet(detector(4, seed=0), tmp_path / "last.pt", SHAPES)
    target, fresh = detector(4, seed=1), detector(4, seed=1)
    report = init_weights(target, init_for(path, 4), ["a", "b", "c", "d"])
    assert report.class_mode == "reset"
    assert same(target, fresh, HEAT)


def test_by_name_copies_the_rows_of_classes_of_the_same_name(tmp_path):
    source = detector(4, seed=0)
    path = save_cnet(source, tmp_path / "last.pt", SHAPES)
    target, fresh = detector(3, seed=1), detector(3, seed=1)
    names = ["disk", "cat", "square"]  # disk = source row 1, square = source row 0, cat: none
    report = init_weights(target, init_for(path, 3, classes="by_name"), names)
    assert report.classes_copied == {"disk": "disk", "square": "square"}
    state, src, new = target.state_dict(), source.state_dict(), fresh.state_dict()
    for key in HEAT:
        assert torch.equal(state[key][0], src[key][1])
        assert torch.equal(state[key][2], src[key][0])
        assert torch.equal(state[key][1], new[key][1])  # cat keeps its initialisation
    assert state["heads.0.br_heat.2.bias"][1].item() == pytest.approx(PRIOR_BIAS)
    assert "2 of 3 classes copied by name" in report.summary()


def test_by_name_needs_the_sources_class_names(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save(detector(4, seed=0).state_dict(), path)  # a bare state dict: no class names
    with pytest.raises(InitError, match=r"init_classes=by_name: .* does not name its \[4\] classes"):
        init_weights(detector(3, seed=1), init_for(path, 3, classes="by_name"), ["person", "car", "dog"])
    report = init_weights(detector(3, seed=1), init_for(path, 3), ["person", "car", "dog"])
    assert report.kind == "cnet state dict" and report.class_mode == "reset"


OTHER_BACKBONE = ("backbone.stage_channels=[32,48,48,64]", "backbone.feat_channels=48")


def test_a_source_that_mostly_does_not_fit_stops_with_its_share(tmp_path):
    source = detector(4, 0, *OTHER_BACKBONE)
    path = save_cnet(source, tmp_path / "last.pt", SHAPES)
    target = detector(4, seed=1)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    src, tgt = source.state_dict(), target.state_dict()
    fit = sum(1 for k, v in tgt.items() if k in src and src[k].shape == v.shape)  # the share, counted here
    assert fit / len(tgt) < 0.5
    with pytest.raises(InitError) as err:
        init_weights(target, init_for(path, 4), SHAPES)
    msg = str(err.value)
    assert f"only {fit / len(tgt):.0%} of the model's {len(tgt)} tensors fit" in msg
    assert "init_strict=false" in msg and "\n" not in msg
    assert all(torch.equal(before[k], v) for k, v in target.state_dict().items())  # untouched
    report = init_weights(target, init_for(path, 4, strict=False), SHAPES)
    assert report.share == pytest.approx(fit / len(tgt))
    assert len(report.loaded) + len(report.mismatched) + len(report.missing) + len(report.class_layers) == len(tgt)
    assert report.mismatched and all(
        (shapes[0], shapes[1]) == (list(src[k].shape), list(tgt[k].shape)) for k, shapes in report.mismatched.items()
    )
    assert all(torch.equal(target.state_dict()[k], src[k]) for k in report.loaded)


def test_an_mmdetection_file_is_renamed_in_memory_and_its_extra_parts_reported(tmp_path):
    source = detector(4, 0, "matching=centripetal_mmdet")
    mmdet = {cnet_to_mmdet_key(k): v for k, v in source.state_dict().items()}
    mmdet["bbox_head.tl_emb.0.0.conv.weight"] = torch.zeros(1, 32, 1, 1)  # CornerNet's embedding: no cnet part
    meta = {"CLASSES": tuple(SHAPES), "mmcv_version": "1.1.5", "epoch": 210, "config": "model = dict(...)"}
    torch.save({"state_dict": mmdet, "meta": meta}, tmp_path / "mmdet.pth")
    target = detector(4, 1, "matching=centripetal_mmdet")
    report = init_weights(target, init_for(tmp_path / "mmdet.pth", 4), list(reversed(SHAPES)))
    assert report.kind == "mmdetection checkpoint"
    assert report.unexpected == ["bbox_head.tl_emb.0.0.conv.weight"]
    assert same(source, target, [k for k in source.state_dict() if k not in HEAT])
    assert report.class_mode == "reset"  # the meta's CLASSES are the source's names: reversed here


def test_the_report_counts_per_module_and_logs_as_params_and_json(tmp_path):
    path = save_cnet(detector(4, 0), tmp_path / "last.pt", SHAPES)
    report = init_weights(detector(3, 1), init_for(path, 3), ["a", "b", "c"])
    rows = report.by_module()
    assert rows["heads.tl_heat"] == {"loaded": 2, "class": 2, "missing": 0, "mismatched": 0, "unexpected": 0}
    assert sum(r["loaded"] for r in rows.values()) == len(report.loaded)
    params = report.params()
    assert params["init_from.loaded_share"] == "1.0000" and params["init_from.class_layers"] == "4"
    body = json.loads(report.to_json())
    assert body["by_module"] == rows and body["class_mode"] == "reset"
    assert "heads.tl_heat" in report.table()
    assert module_of("backbone.hourglasses.0.up1.0.conv1.0.weight") == "backbone.hourglasses"
    assert module_of("heads.1.tl_heat.2.bias") == "heads.tl_heat"


def test_a_run_folder_means_its_last_checkpoint(tmp_path):
    ckpt = save_cnet(detector(4, 0), tmp_path / "run" / "checkpoints" / "last.pt", SHAPES)
    assert checkpoint_file(tmp_path / "run") == ckpt
    assert read_source(tmp_path / "run").class_names == SHAPES
    (tmp_path / "empty").mkdir()
    with pytest.raises(InitError, match=r"has no checkpoint checkpoints/last\.pt"):
        checkpoint_file(tmp_path / "empty")
    with pytest.raises(InitError, match="no such checkpoint file or run folder"):
        checkpoint_file(tmp_path / "nothing.pt")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(InitError, match="holds a list, not model weights"):
        read_source(tmp_path / "list.pt")


def test_the_config_keys_become_a_typed_init(tmp_path):
    assert build_init(compose_config([]), 4) is None
    init = build_init(compose_config([f"init_from={tmp_path}/x.pt", "init_classes=by_name", "init_strict=false"]), 4)
    assert init == InitFrom(tmp_path / "x.pt", "by_name", False, frozenset(HEAT))
    with pytest.raises(InitError, match="init_classes=names: use one of reset, by_name"):
        build_init(compose_config([f"init_from={tmp_path}/x.pt", "init_classes=names"]), 4)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> SyntheticData:
    return SyntheticData(
        str(tmp_path_factory.mktemp("cache")), seed=0, num_train=8, num_val=2, num_val_crowd=2, image_size=60
    )


def make_run(data: SyntheticData, out_dir: Path, init: InitFrom | None, seed: int = 1) -> Run:
    val_sets = {"bbox": data.val_dataset(TestTransform(pad_logical_or=63))}
    return Run(
        data=data,
        train_transform=TrainTransform(crop_size=63),
        val_sets=val_sets,
        model=build_model(config(f"seed={seed}"), 4),
        optimizer=functools.partial(torch.optim.Adam, lr=1e-3),
        schedule=ScheduleConfig(epochs=1, milestones=[1], warmup_iters=2),
        trainer=TrainerConfig(batch_size=4, progress=False),
        out_dir=out_dir,
        seed=seed,
        init=init,
    )


class Recorder:
    def __init__(self) -> None:
        self.params: dict[str, str] = {}
        self.texts: dict[str, str] = {}

    def log_metrics(self, metrics, step) -> None:
        pass

    def log_params(self, params) -> None:
        self.params |= params

    def log_text(self, text, artifact_file, local_dir) -> None:
        self.texts[artifact_file] = text


@pytest.mark.slow  # one short epoch and an evaluation
def test_a_run_starts_from_the_weights_with_a_fresh_optimizer_and_schedule(data, tmp_path):
    source = detector(4, 0)
    path = save_cnet(source, tmp_path / "src.pt", SHAPES)  # epoch 3, step 30 in the file: not resumed
    run = make_run(data, tmp_path / "run", init_for(path, 4))
    assert same(source, run.model) and run.resume is None
    assert run.trainer.epoch == 0 and run.trainer.step == 0 and not run.optimizer.state
    assert run.scheduler.last_epoch == 0
    assert run.init_report is not None and run.init_report.share == 1.0
    tracker = Recorder()
    run.fit(tracker)
    assert tracker.params["init_from.loaded"] == str(len(run.init_report.loaded))
    assert json.loads(tracker.texts["init_report.json"])["share"] == 1.0
    saved = TrainState.load(tmp_path / "run" / "checkpoints" / "last.pt")
    assert saved.epoch == 1 and saved.class_names == SHAPES  # its own checkpoint names its classes


def test_a_restarted_job_resumes_its_own_checkpoint_not_init_from(data, tmp_path):
    first = make_run(data, tmp_path / "run", None, seed=2)  # the job's first attempt, stopped after epoch 1
    first.trainer.epoch = 1
    first.trainer.save()
    path = save_cnet(detector(4, 0), tmp_path / "src.pt", SHAPES)
    again = make_run(data, tmp_path / "run", init_for(path, 4))
    assert again.init_report is None and again.resume is not None and again.resume.epoch == 1
    assert same(again.model, detector(4, seed=1))  # init_from did not touch the model ...
    again.trainer.load_state(again.resume)  # ... which Run.fit then continues from its own state
    assert same(again.model, first.model)


def test_a_file_that_would_run_code_is_refused_before_anything_loads(tmp_path):
    marker = tmp_path / "ran"
    evil = evil_checkpoint(tmp_path / "evil.pth", marker)
    target = detector(4, seed=1)
    with pytest.raises(UnsafeFileError, match=r"evil\.pth was refused: reading it needs posix\.system"):
        init_weights(target, init_for(evil, 4), SHAPES)
    assert not marker.exists() and same(target, detector(4, seed=1))


def test_the_released_hg104_file_starts_a_three_class_model_by_name(tmp_path):
    """mmdetection's released layout (the 1152-tensor schema, meta CLASSES), tensors on the meta device
    (no memory), into HG-104 for person / car / dog: every tensor fits, the 8 class layers (2 stacks x
    tl/br x weight/bias) take COCO's rows of those three classes."""
    from cnet.mmdet_weights import COCO_CLASSES
    from cnet.tools.convert import MODEL_OVERRIDES
    from tests.test_convert import SCHEMA

    state = {}
    for line in SCHEMA.read_text().splitlines():
        key, shape, dtype = line.split("\t")
        dims = [] if shape == "scalar" else [int(d) for d in shape.split("x")]
        state[key] = torch.empty(dims, dtype=getattr(torch, dtype), device="meta")
    torch.save({"meta": {"CLASSES": COCO_CLASSES, "epoch": 210}, "state_dict": state}, tmp_path / "hg104.pth")
    with torch.device("meta"):
        target = build_detector(config(*MODEL_OVERRIDES), 3)
    init = init_for(tmp_path / "hg104.pth", 3, *MODEL_OVERRIDES, classes="by_name")
    report = init_weights(target, init, ["person", "car", "dog"])
    assert (report.total, len(report.loaded), len(report.class_layers)) == (1152, 1144, 8)
    assert report.kind == "mmdetection checkpoint" and not (report.missing or report.unexpected or report.mismatched)
    assert report.classes_copied == {"person": "person", "car": "car", "dog": "dog"}
