"""TrainState round trip: a trainer resumed from a checkpoint continues exactly where it stopped."""

from __future__ import annotations

from pathlib import Path

import torch

from cnet.schedule import warmup_multistep
from cnet.trainer import Trainer, TrainerConfig, TrainState


def make_trainer(out_dir: Path, seed: int) -> Trainer:
    torch.manual_seed(seed)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters(), lr=0.3)
    sched = warmup_multistep(opt, iters_per_epoch=2, milestones=(2,), gamma=0.1, warmup_iters=3)
    # only the state-carrying parts matter here: no data, no criterion, no predictor
    return Trainer(model, None, opt, sched, [], None, {}, TrainerConfig(), 3, out_dir, torch.device("cpu"))  # type: ignore[arg-type]


def advance(trainer: Trainer, steps: int) -> None:
    for _ in range(steps):
        trainer.model(torch.ones(1, 3)).sum().backward()
        trainer.optimizer.step()
        trainer.optimizer.zero_grad()
        trainer.scheduler.step()
        trainer.step += 1


def test_resumed_trainer_continues_weights_optimizer_schedule_and_counters(tmp_path):
    first = make_trainer(tmp_path, seed=0)
    advance(first, 3)  # past warm-up: factor 1
    first.epoch, first.mlflow_run_id, first.metrics = 1, "abc123", {"bbox_AP": 0.25}
    first.state().save(tmp_path / "last.pt")

    resumed = make_trainer(tmp_path, seed=1)  # different initial weights
    resumed.load_state(TrainState.load(tmp_path / "last.pt"))
    assert (resumed.epoch, resumed.step, resumed.mlflow_run_id) == (1, 3, "abc123")
    assert resumed.metrics == {"bbox_AP": 0.25}
    assert resumed.optimizer.param_groups[0]["lr"] == first.optimizer.param_groups[0]["lr"] == 0.3
    assert resumed.scheduler.last_epoch == 3
    advance(first, 2)  # iteration 4 = epoch-2 milestone: lr x 0.1
    advance(resumed, 2)
    assert resumed.optimizer.param_groups[0]["lr"] == first.optimizer.param_groups[0]["lr"] == 0.03
    for k, v in first.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k
