"""Assembles one training run from already-instantiated parts (no config objects here)."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, cast

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from cnet.criterion import Criterion
from cnet.data import CocoData, collate
from cnet.detector import CornerDetector
from cnet.oracle import CornerOracle
from cnet.postprocess import PostProcess
from cnet.predictor import Predictor, test_views
from cnet.schedule import warmup_multistep
from cnet.trainer import Callback, Trainer, TrainerConfig, TrainState

log = logging.getLogger(__name__)


class MetricLogger(Protocol):
    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...


class LogMetrics(Callback):
    """Training losses (``train_*``, step = completed epochs) and evaluation figures to a tracker."""

    def __init__(self, tracker: MetricLogger) -> None:
        self.tracker = tracker

    def on_train_epoch_end(self, trainer: Trainer, epoch: int, logs: dict[str, float]) -> None:
        self.tracker.log_metrics({f"train_{k}": v for k, v in logs.items()}, step=epoch)

    def on_evaluate(self, trainer: Trainer, epoch: int, metrics: dict[str, float]) -> None:
        self.tracker.log_metrics(metrics, step=epoch)


@dataclass
class ScheduleConfig:
    """``conf/schedule``: epochs, lr decay milestones (epochs) and warm-up (iterations)."""

    epochs: int
    milestones: list[int]
    gamma: float = 0.1
    warmup_iters: int = 500
    warmup_ratio: float = 1 / 3


@dataclass
class TestConfig:
    """``conf/test``: inference settings (see cnet.postprocess.PostProcess)."""

    __test__ = False  # not a pytest test class

    flip: bool = True
    matching_only: bool = True
    corner_topk: int = 100
    num_dets: int = 1000
    max_per_image: int = 100
    nms_sigma: float = 0.5
    nms_min_score: float = 1e-3
    kernel: int = 3


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class Run:
    """Datasets, loaders, detector, criterion, post-processor, optimizer and schedule of one job.

    ``parts`` are the detector's part factories by name (``matching``, ``adaption``, ``mask_head``: see
    :class:`cnet.detector.CornerDetector`). ``resume_run_id`` is the MLflow run of an interrupted
    earlier attempt in ``out_dir`` (None for a fresh run); ``fit(tracker)`` continues it to the
    end and evaluates; ``evaluate()`` scores a checkpoint without training.
    """

    def __init__(
        self,
        data: CocoData,
        train_transform: Callable,
        test_transform: Callable,
        backbone: nn.Module,
        parts: dict[str, Callable[..., Any]],
        optimizer: Callable[..., torch.optim.Optimizer],
        schedule: ScheduleConfig,
        trainer: TrainerConfig,
        test: TestConfig,
        out_dir: Path,
        seed: int = 0,
        device: str = "auto",
        extra_val: dict[str, CocoData] | None = None,
    ) -> None:
        seed_everything(seed)
        self.out_dir, self.device = out_dir, resolve_device(device)
        train_set = data.train_dataset(train_transform)
        val_sets = {"bbox": data.val_dataset(test_transform)}
        for name, extra in (extra_val or {}).items():  # e.g. "crowd": the look-alike-crowd split
            val_sets[f"{name}_bbox"] = extra.val_dataset(test_transform)
        g = torch.Generator().manual_seed(seed)
        self.train_loader = DataLoader(
            train_set,
            batch_size=trainer.batch_size,
            shuffle=True,
            drop_last=True,
            generator=g,
            num_workers=trainer.num_workers,
            collate_fn=collate,
            persistent_workers=False,
            pin_memory=self.device.type == "cuda",
        )
        if len(self.train_loader) == 0:
            raise ValueError(
                f"trainer.batch_size={trainer.batch_size} exceeds the {len(train_set)} training images; lower it"
            )
        self.val_loaders = {
            k: DataLoader(v, batch_size=1, shuffle=False, num_workers=trainer.num_workers, collate_fn=collate)
            for k, v in val_sets.items()
        }
        self.model = CornerDetector(backbone, train_set.num_classes, **cast(dict[str, Any], parts)).to(self.device)
        train_set.with_masks = self.model.uses_masks  # decode the segmentations only for a mask head
        self.num_parameters = sum(p.numel() for p in self.model.parameters())
        self.criterion = Criterion(train_set.num_classes, self.model.parts)
        self.postprocess = PostProcess(
            self.model.matching,
            test.corner_topk,
            test.num_dets,
            test.max_per_image,
            test.nms_sigma,
            test.nms_min_score,
            test.kernel,
        )
        oracle = CornerOracle(train_set.num_classes) if test.matching_only else None
        self.predictor = Predictor(
            self.model, self.postprocess, test_views(test.flip), oracle, mask_head=self.model.mask_head
        )
        self.optimizer = optimizer(self.model.parameters())
        self.scheduler = warmup_multistep(
            self.optimizer,
            len(self.train_loader),
            schedule.milestones,
            schedule.gamma,
            schedule.warmup_iters,
            schedule.warmup_ratio,
        )
        self.trainer = Trainer(
            self.model,
            self.criterion,
            self.optimizer,
            self.scheduler,
            self.train_loader,
            self.predictor,
            self.val_loaders,
            trainer,
            schedule.epochs,
            out_dir,
            self.device,
        )
        ckpt = self.trainer.checkpoint_path
        self.resume = TrainState.load(ckpt) if ckpt.exists() else None
        self.resume_run_id: str | None = self.resume.mlflow_run_id if self.resume else None
        log.info(
            "%d train / %s val images, %d classes, %d parameters, device %s%s",
            len(train_set),
            {k: len(v) for k, v in val_sets.items()},
            train_set.num_classes,
            self.num_parameters,
            self.device,
            f", resuming after epoch {self.resume.epoch}" if self.resume else "",
        )

    def fit(self, tracker: MetricLogger | None = None, callbacks: list[Callback] | None = None) -> dict[str, float]:
        """Train to the end of the schedule (continuing an interrupted attempt) and evaluate."""
        if self.resume is not None:
            self.trainer.load_state(self.resume)
        self.trainer.mlflow_run_id = getattr(tracker, "run_id", None)
        self.trainer.callbacks = ([LogMetrics(tracker)] if tracker is not None else []) + list(callbacks or [])
        return self.trainer.fit()

    def evaluate(self, checkpoint: Path | None = None, tracker: MetricLogger | None = None) -> dict[str, float]:
        """Evaluate the weights of ``checkpoint`` (default: this run's last) without training."""
        self.trainer.load_weights(TrainState.load(checkpoint or self.trainer.checkpoint_path))
        self.trainer.callbacks = [LogMetrics(tracker)] if tracker is not None else []
        return self.trainer.evaluate()
