"""Training engine end to end on a tiny synthetic set: train + evaluate, kill-and-resume, NaN guard."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch

from cnet.adaption.cross_star import CrossStar
from cnet.backbone import HourglassNet
from cnet.data import SyntheticData, TestTransform, TrainTransform
from cnet.matching.centripetal import Centripetal
from cnet.run import Run, ScheduleConfig, TestConfig, seed_everything
from cnet.trainer import Callback, NonFiniteLossError, TrainerConfig


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> SyntheticData:
    return SyntheticData(
        str(tmp_path_factory.mktemp("cache")), seed=0, num_train=16, num_val=4, num_val_crowd=2, image_size=60
    )


def make_run(data: SyntheticData, out_dir: Path, epochs: int = 2, lr: float = 5e-4) -> Run:
    seed_everything(0)
    backbone = HourglassNet(
        num_stacks=2, stage_channels=(16, 16, 24), stage_blocks=(1, 1, 1), stem_channels=8, feat_channels=16
    )
    return Run(
        data=data,
        train_transform=TrainTransform(crop_size=63),
        test_transform=TestTransform(pad_or=63),
        backbone=backbone,
        parts={"matching": functools.partial(Centripetal), "adaption": functools.partial(CrossStar)},
        optimizer=functools.partial(torch.optim.Adam, lr=lr),
        schedule=ScheduleConfig(epochs=epochs, milestones=[1], warmup_iters=2),
        trainer=TrainerConfig(batch_size=4, progress=False),
        test=TestConfig(flip=True, corner_topk=20, num_dets=100),
        out_dir=out_dir,
        seed=0,
    )


class Interrupt(Exception):
    pass


@pytest.mark.slow
def test_train_evaluate_and_kill_resume_match_uninterrupted(data, tmp_path):
    full = make_run(data, tmp_path / "full")
    metrics = full.fit()
    assert {"bbox_AP", "bbox_AP50", "bbox_AR100"} <= metrics.keys()
    assert (tmp_path / "full" / "results_bbox.json").exists()
    assert (tmp_path / "full" / "checkpoints" / "last.pt").exists()

    class StopAfterFirst(Callback):
        def on_checkpoint(self, trainer, epoch: int) -> None:
            if epoch == 1:
                raise Interrupt  # killed between epochs, after the epoch-1 checkpoint was written

    first = make_run(data, tmp_path / "cut")
    with pytest.raises(Interrupt):
        first.fit(callbacks=[StopAfterFirst()])
    resumed = make_run(data, tmp_path / "cut")
    assert resumed.resume is not None and resumed.resume.epoch == 1
    resumed.fit()
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed run diverged from the uninterrupted one"
    assert resumed.optimizer.param_groups[0]["lr"] == full.optimizer.param_groups[0]["lr"]


def test_nan_loss_stops_and_keeps_last_good_checkpoint(data, tmp_path):
    run = make_run(data, tmp_path, epochs=1)
    ckpt = tmp_path / "checkpoints" / "last.pt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"previous good checkpoint")
    with torch.no_grad():
        next(run.model.heads[-1].tl_heat.parameters()).fill_(float("nan"))
    with pytest.raises(NonFiniteLossError, match="epoch 0"):
        run.fit()
    assert ckpt.read_bytes() == b"previous good checkpoint"


def test_batch_larger_than_dataset_is_a_clear_error(data, tmp_path):
    with pytest.raises(ValueError, match=r"trainer\.batch_size"):
        backbone = HourglassNet(
            num_stacks=1, stage_channels=(16, 16), stage_blocks=(1, 1), stem_channels=8, feat_channels=16
        )
        Run(
            data,
            TrainTransform(crop_size=63),
            TestTransform(pad_or=63),
            backbone,
            {"matching": functools.partial(Centripetal), "adaption": functools.partial(CrossStar)},
            functools.partial(torch.optim.Adam),
            ScheduleConfig(1, [1]),
            TrainerConfig(batch_size=1000),
            TestConfig(),
            tmp_path,
        )
