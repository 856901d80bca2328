"""Assembles one training run from already-instantiated parts (no config objects here)."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, cast

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from cnet import distributed
from cnet.checkpoint import checkpoint_exists
from cnet.criterion import CornerSum, Criterion
from cnet.data import CocoData, collate
from cnet.data.coco import CocoDetection
from cnet.data.sampler import GlobalBatchSampler, ShardSampler
from cnet.detector import CornerDetector
from cnet.oracle import CornerOracle
from cnet.postprocess import PostProcess
from cnet.predictor import Predictor
from cnet.schedule import ScheduleConfig, warmup_multistep
from cnet.trainer import Callback, Trainer, TrainerConfig, TrainState
from cnet.views import test_views

log = logging.getLogger(__name__)


class MetricLogger(Protocol):
    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...


class LogMetrics(Callback):
    """Training losses (``train_*``, step = completed epochs) and evaluation figures to a tracker."""

    def __init__(self, tracker: MetricLogger) -> None:
        self.tracker = tracker

    def on_train_epoch_end(self, trainer: Trainer, epoch: int, logs: dict[str, float]) -> None:
        # per-part totals (train_matching, train_adaption) compare across strategies whose own
        # terms differ (train_pull/train_push vs train_centripetal)
        totals: dict[str, float] = {}
        for term, part in trainer.criterion.part_of.items():
            if term in logs:
                totals[part] = totals.get(part, 0.0) + logs[term]
        self.tracker.log_metrics({f"train_{k}": v for k, v in (logs | totals).items()}, step=epoch)

    def on_evaluate(self, trainer: Trainer, epoch: int, metrics: dict[str, float]) -> None:
        # COCO writes -1 for "no objects of that size": not a value, so not logged
        self.tracker.log_metrics({k: v for k, v in metrics.items() if v != -1}, step=epoch)


@dataclass
class TestConfig:
    """``conf/test``: inference settings (see cnet.postprocess.PostProcess)."""

    __test__ = False  # not a pytest test class

    flip: bool = True
    scales: list[float] = field(default_factory=lambda: [1.0])  # multi-scale testing (with flip per scale)
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


# the paper's global batch (§4.1: 16 GPUs x 6 images), for which its lr 5e-4 was tuned
PAPER_GLOBAL_BATCH = 96


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto``: this process's GPU (its local rank) when CUDA is available, else the CPU."""
    if name == "auto":
        return torch.device(f"cuda:{distributed.cuda_index(local_rank)}" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def build_predictor(model: CornerDetector, num_classes: int, test: TestConfig, pad_or: int = 127) -> Predictor:
    """The post-processor and test-time views of ``test`` around ``model`` (``pad_or``: the test
    transform's padding, which scaled views repeat)."""
    postprocess = PostProcess(
        model.matching, test.corner_topk, test.num_dets, test.max_per_image,
        test.nms_sigma, test.nms_min_score, test.kernel,
    )  # fmt: skip
    oracle = CornerOracle(num_classes) if test.matching_only else None
    views = test_views(test.flip, test.scales, pad_or)
    return Predictor(model, postprocess, views, oracle, mask_head=model.mask_head)


def eval_loader(dataset: CocoDetection, num_workers: int = 0) -> DataLoader:
    """One image per batch, this rank's shard in dataset order (as the training run evaluates)."""
    env = distributed.current()
    return DataLoader(
        dataset, batch_size=1, sampler=ShardSampler(len(dataset), env.world_size, env.rank),
        num_workers=num_workers, collate_fn=collate,
    )  # fmt: skip


class Evaluation:
    """A detector, its predictor and validation loaders, without training data or optimizer:
    ``evaluate(checkpoint)`` scores a checkpoint's weights (cnet.tools.test).

    ``val_sets``: name (``bbox``, ``crowd_bbox``, ...) -> dataset; the model gets the first one's classes.
    """

    def __init__(
        self,
        val_sets: dict[str, CocoDetection],
        backbone: nn.Module,
        parts: dict[str, Callable[..., Any]],
        test: TestConfig,
        pad_or: int = 127,
        device: str = "auto",
        num_workers: int = 0,
    ) -> None:
        self.device = resolve_device(device, distributed.current().local_rank)
        self.val_sets = val_sets
        self.num_classes = next(iter(val_sets.values())).num_classes
        self.model = CornerDetector(backbone, self.num_classes, **cast(dict[str, Any], parts)).to(self.device)
        self.predictor = build_predictor(self.model, self.num_classes, test, pad_or)
        self.loaders = {k: eval_loader(v, num_workers) for k, v in val_sets.items()}

    def load(self, state: TrainState, source: Path) -> None:
        """The weights of ``state`` (read from ``source``); a model mismatch is one line naming it."""
        try:
            self.model.load_state_dict(state.model)
        except RuntimeError as err:
            lines = str(err).strip().splitlines()
            first = lines[1].strip() if len(lines) > 1 else lines[0]
            raise ValueError(
                f"checkpoint {source} does not fit the configured model ({first});"
                " check the backbone/matching/adaption overrides and the annotation file's categories"
            ) from err


class Run:
    """Datasets, loaders, detector, criterion, post-processor, optimizer and schedule of one job.

    ``parts`` are the detector's part factories by name (``matching``, ``adaption``, ``mask_head``: see
    :class:`cnet.detector.CornerDetector`); ``criterion`` is the loss convention's factory, called
    with the number of classes and the model's parts (``criterion=corner_sum``: the paper).
    ``resume_run_id`` is the MLflow run of an interrupted earlier attempt in ``out_dir`` (None for a
    fresh run); ``fit(tracker)`` continues it to the end and evaluates; ``evaluate()`` scores a
    checkpoint without training.
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
        criterion: Callable[..., Criterion] = CornerSum,
    ) -> None:
        seed_everything(seed)
        self.env = distributed.current()
        self.out_dir, self.device = out_dir, resolve_device(device, self.env.local_rank)
        if self.device.type == "cuda":  # TF32 matmuls/convolutions for the fp32 parts (bf16 autocast elsewhere)
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        train_set = data.train_dataset(train_transform)
        self.train_annotations = Path(train_set.ann_file)  # what the run trained on (tracked as its dataset)
        val_sets = {"bbox": data.val_dataset(test_transform)}
        for name, extra in (extra_val or {}).items():  # e.g. "crowd": the look-alike-crowd split
            val_sets[f"{name}_bbox"] = extra.val_dataset(test_transform)
        world, accum = self.env.world_size, trainer.accum_steps(self.env.world_size)
        # one generator shared by the sampler and the loader (which draws its worker seed from it first)
        g = torch.Generator().manual_seed(seed)
        sampler = GlobalBatchSampler(len(train_set), trainer.batch_size, world, self.env.rank, accum, g)
        if sampler.steps_per_epoch == 0:
            raise ValueError(
                f"trainer.batch_size={trainer.batch_size} x {world} processes x {accum} accumulation steps "
                f"exceeds the {len(train_set)} training images; lower trainer.batch_size or trainer.global_batch"
            )
        self.train_loader = DataLoader(
            train_set, batch_sampler=sampler, generator=g, num_workers=trainer.num_workers, collate_fn=collate,
            persistent_workers=False, pin_memory=self.device.type == "cuda",
        )  # fmt: skip
        self.val_loaders = {k: eval_loader(v, trainer.num_workers) for k, v in val_sets.items()}
        self.model = CornerDetector(backbone, train_set.num_classes, **cast(dict[str, Any], parts)).to(self.device)
        train_set.with_masks = self.model.uses_masks  # decode the segmentations only for a mask head
        self.num_parameters = sum(p.numel() for p in self.model.parameters())
        self.criterion = criterion(train_set.num_classes, self.model.parts)
        self.predictor = build_predictor(
            self.model, train_set.num_classes, test, int(getattr(test_transform, "pad_or", 127))
        )
        self.postprocess = self.predictor.postprocess
        self.optimizer = optimizer(self.model.parameters())
        self.scheduler = warmup_multistep(
            self.optimizer, sampler.steps_per_epoch, schedule.milestones, schedule.gamma,
            schedule.warmup_iters, schedule.warmup_ratio,
        )  # fmt: skip
        self.trainer = Trainer(
            self.model, self.criterion, self.optimizer, self.scheduler, self.train_loader, self.predictor,
            self.val_loaders, trainer, schedule, out_dir, self.device, seed=seed,
        )  # fmt: skip
        self.batch = {
            "world_size": world,
            "batch_per_process": trainer.batch_size,
            "accum_steps": accum,
            "global_batch": sampler.global_batch,
            "lr": self.scheduler.base_lrs[0],
            "precision": trainer.precision,
        }
        log.info("batch: %s", ", ".join(f"{k} {v}" for k, v in self.batch.items()))
        if sampler.global_batch != PAPER_GLOBAL_BATCH:
            log.info("global batch %d differs from the paper's %d", sampler.global_batch, PAPER_GLOBAL_BATCH)
        ckpt = self.trainer.checkpoint_path
        self.resume = TrainState.load(ckpt) if checkpoint_exists(ckpt) else None
        self.resume_run_id: str | None = self.resume.mlflow_run_id if self.resume else None
        log.info(
            "%d train / %s val images, %d classes, %d parameters, device %s%s",
            len(train_set),
            {k: len(v) for k, v in val_sets.items()},
            train_set.num_classes,
            self.num_parameters,
            self.device,
            f", resuming at epoch {self.resume.epoch} micro-batch {self.resume.batch_in_epoch}" if self.resume else "",
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
