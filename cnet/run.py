"""One training job (:class:`Run`) or one evaluation (:class:`Evaluation`) around a built
:class:`~cnet.model.Model` (built by :func:`cnet.compose.build_model`; no config objects here)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import DataLoader

from cnet import distributed
from cnet.checkpoint import TrainState, checkpoint_exists
from cnet.data import CocoData, collate
from cnet.data.coco import CocoDetection, Transform
from cnet.data.sampler import GlobalBatchSampler, ShardSampler
from cnet.errors import DataError
from cnet.init_from import InitFrom, InitReport, init_weights
from cnet.model import Model
from cnet.schedule import ScheduleConfig, warmup_multistep
from cnet.trainer import Callback, Trainer, TrainerConfig

log = logging.getLogger(__name__)


class MetricLogger(Protocol):
    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...


@runtime_checkable
class ReportLogger(Protocol):
    """A tracker that also takes params and text artifacts (cnet.tracking.Tracker): ``init_from``'s report."""

    def log_params(self, params: dict[str, str]) -> None: ...

    def log_text(self, text: str, artifact_file: str, local_dir: str | Path) -> None: ...


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
        logged = {k: v for k, v in metrics.items() if v != -1}
        self.tracker.log_metrics(logged | headline_sections(logged), step=epoch)


# MLflow's run page groups its metric charts by the prefix before "/", prefixed sections first in
# name order, the unprefixed ones last: the headline figures again as sections ``AP/<split>`` and
# ``mispair_rate/<split>`` make it open on box AP, look-alike-crowd AP, matching-only AP (oracle_*)
# and the mispair rates; ``bbox_AP`` & co. stay what tables and reports read
HEADLINE_FIGURES = ("AP", "mispair_rate")


def headline_sections(metrics: dict[str, float]) -> dict[str, float]:
    """``{"AP/bbox": metrics["bbox_AP"], "mispair_rate/crowd_bbox": ..., ...}`` for every split in ``metrics``."""
    return {
        f"{figure}/{key.removesuffix('_' + figure)}": value
        for key, value in metrics.items()
        for figure in HEADLINE_FIGURES
        if key.endswith(f"_{figure}") and not key.startswith("train_")
    }


# the paper's global batch (§4.1: 16 GPUs x 6 images), for which its lr 5e-4 was tuned
PAPER_GLOBAL_BATCH = 96


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto``: this process's GPU (its local rank) when CUDA is available, else the CPU."""
    if name == "auto":
        return torch.device(f"cuda:{distributed.cuda_index(local_rank)}" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def eval_loader(dataset: CocoDetection, num_workers: int = 0) -> DataLoader:
    """One image per batch, this rank's shard in dataset order (as the training run evaluates)."""
    env = distributed.current()
    return DataLoader(
        dataset, batch_size=1, sampler=ShardSampler(len(dataset), env.world_size, env.rank),
        num_workers=num_workers, collate_fn=collate,
    )  # fmt: skip


class Evaluation:
    """A built model's predictor and validation loaders, without training data or optimizer:
    ``load(state)`` then ``cnet.predictor.evaluate`` scores a checkpoint's weights (cnet.tools.test).

    ``val_sets``: name (``bbox``, ``crowd_bbox``, ...) -> dataset; the model was built for the first one's
    classes. ``model``: the built triple (its criterion is not used).
    """

    def __init__(
        self, val_sets: dict[str, CocoDetection], model: Model, device: str = "auto", num_workers: int = 0
    ) -> None:
        self.device = resolve_device(device, distributed.current().local_rank)
        self.val_sets = val_sets
        self.model, self.predictor = model.model.to(self.device), model.predictor
        self.num_classes = self.model.num_classes
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
    """The training split and loaders, optimizer and schedule, Trainer and resume state of one job
    around a built ``model`` (detector, criterion and predictor: :class:`~cnet.model.Model`).

    ``data`` gives the training split, built here with the instance masks when the model has a mask
    head; ``val_sets`` are the evaluation splits by figure prefix (``bbox``, ``crowd_bbox``, ...), the
    model's classes those of ``bbox`` (the training split must list the same categories). ``seed``
    orders the data (the weights were seeded when the model was built). ``resume_run_id`` is the
    MLflow run of an interrupted earlier attempt in ``out_dir`` (None for a fresh run); ``fit(tracker)``
    continues it to the end and evaluates; ``evaluate()`` scores a checkpoint without training.
    ``init``: weights to start from (``init_from``; :mod:`cnet.init_from`), loaded here unless the job
    resumes its own checkpoint; ``init_report`` says what was loaded (None when nothing was).
    """

    def __init__(
        self,
        data: CocoData,
        train_transform: Transform,
        val_sets: dict[str, CocoDetection],
        model: Model,
        optimizer: Callable[..., torch.optim.Optimizer],
        schedule: ScheduleConfig,
        trainer: TrainerConfig,
        out_dir: Path,
        seed: int = 0,
        device: str = "auto",
        init: InitFrom | None = None,
    ) -> None:
        self.env = distributed.current()
        self.out_dir, self.device = out_dir, resolve_device(device, self.env.local_rank)
        if self.device.type == "cuda":  # TF32 matmuls/convolutions for the fp32 parts (bf16 autocast elsewhere)
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        self.model, self.criterion, self.predictor = model.model.to(self.device), model.criterion, model.predictor
        self.num_parameters = sum(p.numel() for p in self.model.parameters())
        train_set = self._train_set(data, train_transform, val_sets["bbox"])
        self.train_annotations = Path(train_set.ann_file)  # what the run trained on (tracked as its dataset)
        self.train_set, self.val_sets = train_set, val_sets
        self.train_loader, sampler = self._train_loader(train_set, trainer, seed)
        self.val_loaders = {k: eval_loader(v, trainer.num_workers) for k, v in val_sets.items()}
        self.optimizer, self.scheduler = self._optimizer(optimizer, schedule, sampler.steps_per_epoch)
        self.trainer = Trainer(
            self.model, self.criterion, self.optimizer, self.scheduler, self.train_loader, self.predictor,
            self.val_loaders, trainer, schedule, out_dir, self.device, seed=seed,
            class_names=val_sets["bbox"].class_names,
        )  # fmt: skip
        self.batch = self._batch(trainer, sampler)
        self.resume = self._resume()
        self.resume_run_id: str | None = self.resume.mlflow_run_id if self.resume else None
        self.init_report: InitReport | None = None
        if init is not None and self.resume is None:  # every rank loads the same weights
            self.init_report = init_weights(self.model, init, val_sets["bbox"].class_names)
        elif init is not None:
            log.info("resuming the run in %s: its own checkpoint, not init_from=%s", out_dir, init.path)
        self._log_summary(len(train_set), val_sets)

    def _train_set(self, data: CocoData, transform: Transform, val: CocoDetection) -> CocoDetection:
        """The training split, decoding the segmentations only for a mask head; its categories must be
        those of ``val`` (the model's classes, and the label -> category id map of the figures)."""
        train_set = data.train_dataset(transform, with_masks=self.model.uses_masks)
        if train_set.cat_ids != val.cat_ids:
            raise DataError(
                f"{train_set.ann_file} lists {train_set.num_classes} categories and {val.ann_file} "
                f"{val.num_classes}, or other ids; training and validation files need the same categories"
            )
        return train_set

    def _train_loader(
        self, train_set: CocoDetection, trainer: TrainerConfig, seed: int
    ) -> tuple[DataLoader, GlobalBatchSampler]:
        """This rank's share of each global batch, in an order fixed by ``seed`` and the epoch."""
        world, accum = self.env.world_size, trainer.accum_steps(self.env.world_size)
        # one generator shared by the sampler and the loader (which draws its worker seed from it first)
        g = torch.Generator().manual_seed(seed)
        sampler = GlobalBatchSampler(len(train_set), trainer.batch_size, world, self.env.rank, accum, g)
        if sampler.steps_per_epoch == 0:
            raise ValueError(
                f"trainer.batch_size={trainer.batch_size} x {world} processes x {accum} accumulation steps "
                f"exceeds the {len(train_set)} training images; lower trainer.batch_size or trainer.global_batch"
            )
        loader = DataLoader(
            train_set, batch_sampler=sampler, generator=g, num_workers=trainer.num_workers, collate_fn=collate,
            persistent_workers=False, pin_memory=self.device.type == "cuda",
        )  # fmt: skip
        return loader, sampler

    def _optimizer(
        self, optimizer: Callable[..., torch.optim.Optimizer], schedule: ScheduleConfig, steps_per_epoch: int
    ) -> tuple[torch.optim.Optimizer, LambdaLR]:
        """The optimizer over the model's parameters and its per-step learning-rate schedule."""
        opt = optimizer(self.model.parameters())
        scheduler = warmup_multistep(
            opt, steps_per_epoch, schedule.milestones, schedule.gamma, schedule.warmup_iters, schedule.warmup_ratio
        )
        return opt, scheduler

    def _batch(self, trainer: TrainerConfig, sampler: GlobalBatchSampler) -> dict[str, Any]:
        """The batch set-up (tracked as ``batch.*``), logged."""
        batch: dict[str, Any] = {
            "world_size": self.env.world_size,
            "batch_per_process": trainer.batch_size,
            "accum_steps": sampler.accum_steps,
            "global_batch": sampler.global_batch,
            "lr": self.scheduler.base_lrs[0],
            "precision": trainer.precision,
        }
        log.info("batch: %s", ", ".join(f"{k} {v}" for k, v in batch.items()))
        if sampler.global_batch != PAPER_GLOBAL_BATCH:
            log.info("global batch %d differs from the paper's %d", sampler.global_batch, PAPER_GLOBAL_BATCH)
        return batch

    def _resume(self) -> TrainState | None:
        """The state of an interrupted attempt in ``out_dir`` (its checkpoint), or None."""
        ckpt = self.trainer.checkpoint_path
        return TrainState.load(ckpt) if checkpoint_exists(ckpt) else None

    def _log_summary(self, num_train: int, val_sets: dict[str, CocoDetection]) -> None:
        """One line: the data, classes, parameters, device and where the run resumes."""
        log.info(
            "%d train / %s val images, %d classes, %d parameters, device %s%s",
            num_train,
            {k: len(v) for k, v in val_sets.items()},
            self.model.num_classes,
            self.num_parameters,
            self.device,
            f", resuming at epoch {self.resume.epoch} micro-batch {self.resume.batch_in_epoch}" if self.resume else "",
        )

    def fit(self, tracker: MetricLogger | None = None, callbacks: list[Callback] | None = None) -> dict[str, float]:
        """Train to the end of the schedule (continuing an interrupted attempt) and evaluate; a tracker
        that takes params also gets ``init_from``'s report (params ``init_from.*``, ``init_report.json``)."""
        if self.resume is not None:
            self.trainer.load_state(self.resume)
        if self.init_report is not None and isinstance(tracker, ReportLogger):
            tracker.log_params(self.init_report.params())
            tracker.log_text(self.init_report.to_json(), "init_report.json", self.out_dir)
        self.trainer.mlflow_run_id = getattr(tracker, "run_id", None)
        self.trainer.callbacks = ([LogMetrics(tracker)] if tracker is not None else []) + list(callbacks or [])
        return self.trainer.fit()

    def evaluate(self, checkpoint: Path | None = None, tracker: MetricLogger | None = None) -> dict[str, float]:
        """Evaluate the weights of ``checkpoint`` (default: this run's last) without training."""
        self.trainer.load_weights(TrainState.load(checkpoint or self.trainer.checkpoint_path))
        self.trainer.callbacks = [LogMetrics(tracker)] if tracker is not None else []
        return self.trainer.evaluate()
