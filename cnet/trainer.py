"""The training loop. It knows only ``model``, ``criterion`` and a ``Predictor`` for evaluation.

A :class:`Trainer` owns the model, criterion, optimizer, scheduler and loaders; its whole
resumable state is a :class:`TrainState`, which is exactly what a checkpoint holds. Per-epoch
side effects (metric logging, tests that stop a run) go through :class:`Callback` hooks.
Data-parallel runs wrap the model in DistributedDataParallel; rank 0 alone writes checkpoints.
A checkpoint is also written mid-epoch every ``checkpoint_every_min`` minutes and when SLURM
announces pre-emption (SIGUSR2, submitit's signal): a requeued job resumes at the same step.
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from cnet import distributed
from cnet.checkpoint import TrainState, rng_state, set_rng_state
from cnet.criterion import Criterion
from cnet.data.sampler import GlobalBatchSampler
from cnet.evaluator import evaluate, first_images
from cnet.predictor import Predictor
from cnet.schedule import ScheduleConfig
from cnet.types import GroundTruth

log = logging.getLogger(__name__)

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class NonFiniteLossError(FloatingPointError):
    """Raised when a loss becomes NaN or Inf; the last good checkpoint is left untouched."""


@dataclass
class TrainerConfig:
    """``conf/trainer``: batching, precision and loop settings.

    batch_size: images per process and micro-batch; global_batch: images per optimizer step over
    all processes (None: batch_size x processes; larger: gradient accumulation); num_workers:
    loader processes; eval_every: evaluate every n epochs besides the end (0: only at the end);
    eval_subset: those score the first n images of each val split (0: all; the end always all);
    progress: progress bar (rank 0); precision: fp32 | bf16 | fp16 autocast around the model
    (losses and targets stay fp32); channels_last, compile: memory format and torch.compile;
    sync_bn: SyncBatchNorm across processes (default: per-GPU statistics, as the paper);
    checkpoint_every_min: also checkpoint mid-epoch this often (0: off).
    """

    batch_size: int = 16
    global_batch: int | None = None
    num_workers: int = 0
    eval_every: int = 0
    eval_subset: int = 0
    progress: bool = True
    precision: str = "fp32"
    channels_last: bool = False
    compile: bool = False
    sync_bn: bool = False
    checkpoint_every_min: float = 0.0

    def accum_steps(self, world_size: int) -> int:
        """Micro-batches per optimizer step and process that reach ``global_batch``."""
        per_step = self.batch_size * world_size
        if self.global_batch is None:
            return 1
        if self.global_batch % per_step:
            raise ValueError(
                f"trainer.global_batch={self.global_batch} is not a multiple of trainer.batch_size="
                f"{self.batch_size} x {world_size} processes; change one of them"
            )
        return self.global_batch // per_step


class Callback:
    """Hooks called by :meth:`Trainer.fit` on rank 0; override what you need."""

    def on_train_epoch_end(self, trainer: Trainer, epoch: int, logs: dict[str, float]) -> None:
        """After training epoch ``epoch`` (1-based count of completed epochs), before its checkpoint."""

    def on_evaluate(self, trainer: Trainer, epoch: int, metrics: dict[str, float]) -> None:
        """After an evaluation at ``epoch`` completed epochs."""

    def on_checkpoint(self, trainer: Trainer, epoch: int) -> None:
        """After the checkpoint of ``epoch`` completed epochs was written."""

    def on_step(self, trainer: Trainer, step: int) -> None:
        """After optimizer step ``step`` (1-based)."""


def to_device(images: Tensor, targets: list[GroundTruth], device: torch.device) -> tuple[Tensor, list[GroundTruth]]:
    return images.to(device, non_blocking=True), [t.to(device) for t in targets]


class Trainer:
    """Trains for ``schedule.epochs`` epochs, checkpointing each, evaluating every ``eval_every`` and at the end.

    Args:
        model, criterion, optimizer, scheduler: the parts of one run (scheduler steps per optimizer step).
        train_loader: micro-batches ``(images, targets, metas)`` from a :class:`GlobalBatchSampler`.
        predictor, val_loaders: evaluation; metrics are ``<variant><loader>_<figure>``.
        config: loop settings; schedule: epochs and gradient clipping.
        out_dir: checkpoints (``checkpoints/last.pt``) and results files.
        callbacks: hooks, called in order (rank 0 only).
        seed: the run's seed (the data order of an epoch depends on epoch and seed only).
        class_names: the model's classes in label order, saved with every checkpoint.
    """

    def __init__(
        self,
        model: nn.Module,
        criterion: Criterion,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        train_loader: DataLoader,
        predictor: Predictor,
        val_loaders: dict[str, DataLoader],
        config: TrainerConfig,
        schedule: ScheduleConfig,
        out_dir: Path,
        device: torch.device,
        callbacks: list[Callback] | None = None,
        seed: int = 0,
        class_names: Sequence[str] = (),
    ) -> None:
        self.model, self.criterion, self.optimizer, self.scheduler = model, criterion, optimizer, scheduler
        self.train_loader, self.predictor, self.val_loaders = train_loader, predictor, val_loaders
        self.config, self.schedule, self.out_dir, self.device = config, schedule, out_dir, device
        self.epochs, self.seed = schedule.epochs, seed
        self.class_names = list(class_names)
        self.callbacks = list(callbacks or [])
        self.env = distributed.current()
        self.epoch, self.step, self.batch_in_epoch = 0, 0, 0
        self.epoch_sums: dict[str, float] = {}
        self.mlflow_run_id: str | None = None
        self.metrics: dict[str, float] = {}
        self.eval_sets: dict[str, Any] = {}  # the datasets of the latest evaluation, by loader name
        self.amp_dtype = PRECISIONS[config.precision]
        self.scaler = torch.amp.GradScaler(device.type, enabled=config.precision == "fp16")
        self.train_model = self._wrap(model)
        self._checkpoint_requested = False
        self._last_checkpoint = time.monotonic()

    def _wrap(self, model: nn.Module) -> nn.Module:
        """The module the training loop calls: channels-last, SyncBN, DDP and torch.compile as configured."""
        if self.config.channels_last:
            model.to(memory_format=torch.channels_last)
        if self.env.distributed:
            if self.config.sync_bn:
                model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
            ids = [self.device.index] if self.device.type == "cuda" else None
            model = nn.parallel.DistributedDataParallel(model, device_ids=ids, find_unused_parameters=self.find_unused)
        return cast(nn.Module, torch.compile(model)) if self.config.compile else model

    @property
    def find_unused(self) -> bool:
        """Whether DDP must search each step's graph for parameters without a gradient.

        Only where a part declares idle steps (a mask head before its ``start_epoch``): the search
        walks the autograd graph every step, so runs without such a part do not pay for it.
        Parameters idle on every rank keep ``grad = None``, as in one process.
        """
        return any(part.idle_in_some_steps for part in self.criterion.parts.values())

    @property
    def checkpoint_path(self) -> Path:
        return self.out_dir / "checkpoints" / "last.pt"

    @property
    def batch_sampler(self) -> GlobalBatchSampler:
        sampler = self.train_loader.batch_sampler
        assert isinstance(sampler, GlobalBatchSampler), "the train loader needs a GlobalBatchSampler"
        return sampler

    def state(self) -> TrainState:
        """The resumable state; in a group every rank must call it (the RNG states are gathered)."""
        rank_rng = distributed.all_gather_objects(rng_state())
        return TrainState(
            self.epoch, self.step, self.model.state_dict(), self.optimizer.state_dict(),
            self.scheduler.state_dict(), rank_rng[0], self.mlflow_run_id, dict(self.metrics),
            self.batch_in_epoch, dict(self.epoch_sums), rank_rng if self.env.distributed else [],
            list(self.class_names),
        )  # fmt: skip

    def load_state(self, state: TrainState) -> None:
        """Continue from ``state`` (weights, optimizer, schedule, RNG, counters, run id, figures)."""
        self.model.load_state_dict(state.model)
        self.optimizer.load_state_dict(state.optimizer)
        self.scheduler.load_state_dict(state.scheduler)
        same_world = len(state.rank_rng) == self.env.world_size
        set_rng_state(state.rank_rng[self.env.rank] if same_world else state.rng)
        self.epoch, self.step, self.batch_in_epoch = int(state.epoch), int(state.step), int(state.batch_in_epoch)
        self.epoch_sums = dict(state.epoch_sums)
        self.mlflow_run_id, self.metrics = state.mlflow_run_id, dict(state.metrics)

    def load_weights(self, state: TrainState) -> None:
        """Only the weights and figures of ``state`` (evaluating a checkpoint without training)."""
        self.model.load_state_dict(state.model)
        self.epoch, self.metrics = int(state.epoch), dict(state.metrics)

    def save(self) -> None:
        """Rank 0 writes the checkpoint (atomically); the others wait for it."""
        state = self.state()
        if self.env.is_main:
            state.save(self.checkpoint_path)
        distributed.barrier()
        self._last_checkpoint = time.monotonic()

    def _request_checkpoint(self, signum: int, frame: Any) -> None:
        self._checkpoint_requested = True

    def _checkpoint_due(self) -> bool:
        """True on every rank when any rank was signalled or the time-based interval ran out."""
        every = self.config.checkpoint_every_min
        due = self._checkpoint_requested or bool(every and time.monotonic() - self._last_checkpoint > 60 * every)
        if self.env.distributed:
            flag = torch.tensor([float(due)], device=self.device if self.device.type == "cuda" else "cpu")
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            due = bool(flag.item())
        return due

    def _forward_backward(self, images: Tensor, targets: list[GroundTruth], sync: bool) -> dict[str, Tensor]:
        """Weighted losses of one micro-batch; gradients accumulate (DDP all-reduces when ``sync``)."""
        if self.config.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        no_sync = getattr(self.train_model, "no_sync", None)
        ctx = no_sync() if (no_sync is not None and not sync) else contextlib.nullcontext()
        with ctx:
            with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.config.precision != "fp32"):
                outputs = self.train_model(images)
            losses = self.criterion(outputs.float(), targets)  # targets and losses in fp32
            loss = self.criterion.total(losses)
            if not torch.isfinite(loss):
                parts = ", ".join(f"{k}={v.item():.4g}" for k, v in losses.items())
                raise NonFiniteLossError(f"loss is {loss.item()} at epoch {self.epoch}, step {self.step} ({parts})")
            self.scaler.scale(loss / self.accum_steps).backward()
        weighted = {k: self.criterion.weight_dict[k] * v.detach() for k, v in losses.items()}
        return weighted | {"total": loss.detach()}

    def _optimizer_step(self) -> None:
        if self.schedule.clip_grad:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.schedule.clip_grad)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.step += 1

    def train_one_epoch(self, epoch: int) -> dict[str, float]:
        """The rest of epoch ``epoch``; the mean over its micro-batches of every weighted loss term and the total."""
        self.train_model.train()
        sums, n_images, t0 = self.epoch_sums, 0, time.perf_counter()
        step_times: list[float] = []  # wall time per optimizer step (the losses' .item() synchronises)
        t_step = t0
        bar = tqdm(self.train_loader, desc=f"epoch {epoch}", disable=not (self.config.progress and self.env.is_main),
                   leave=False, file=sys.stderr, mininterval=0.5 if sys.stderr.isatty() else 10.0)  # fmt: skip
        for images, targets in ((i, t) for i, t, _ in bar):
            images, targets = to_device(images, targets, self.device)
            last_micro = (self.batch_in_epoch + 1) % self.accum_steps == 0
            weighted = self._forward_backward(images, targets, sync=last_micro)
            for k, v in weighted.items():
                sums[k] = sums.get(k, 0.0) + v.item()
            self.batch_in_epoch += 1
            n_images += images.shape[0]
            img_s = n_images / (time.perf_counter() - t0)
            bar.set_postfix(loss=f"{weighted['total'].item():.3f}", img_s=f"{img_s:.1f}")
            if not last_micro:
                continue
            self._optimizer_step()
            now = time.perf_counter()
            step_times.append(now - t_step)
            t_step = now
            for cb in self.callbacks:
                cb.on_step(self, self.step)
            if self._checkpoint_due():
                self._checkpoint_mid_epoch()
        n = max(self.batch_in_epoch, 1)
        means = {k: v / n for k, v in sums.items()}
        means["images_per_s"] = n_images * self.env.world_size / max(time.perf_counter() - t0, 1e-9)
        if step_times:  # the median skips the first step's one-off costs (loader start, cuDNN autotuning)
            means["step_time_s"] = statistics.median(step_times)
        return means

    def _checkpoint_mid_epoch(self) -> None:
        self.save()
        log.info("mid-epoch checkpoint: epoch %d, micro-batch %d, step %d", self.epoch, self.batch_in_epoch, self.step)
        if self._checkpoint_requested:
            self._checkpoint_requested = False
            previous = self._previous_usr2
            if callable(previous):  # submitit: requeue this job, then exit
                previous(signal.SIGUSR2, None)

    def evaluate(self, loaders: dict[str, DataLoader] | None = None) -> dict[str, float]:
        """COCO figures of the current weights on every val loader (or ``loaders``); ``eval_sets``: their datasets."""
        loaders = self.val_loaders if loaders is None else loaders
        self.eval_sets = {k: loader.dataset for k, loader in loaders.items()}
        self.metrics = evaluate(self.predictor, loaders, self.device, self.out_dir, f"epoch {self.epoch}")
        if self.env.is_main:
            for cb in self.callbacks:
                cb.on_evaluate(self, self.epoch, self.metrics)
        return self.metrics

    def _evaluate_between_epochs(self) -> None:
        """An evaluation (of the first ``eval_subset`` images) that leaves training as it was: the RNG
        states are put back (each eval loader draws a seed from torch's), so the final checkpoint
        does not depend on ``eval_every``."""
        state, n = rng_state(), self.config.eval_subset
        try:
            self.evaluate(first_images(self.val_loaders, n) if n else None)
        finally:
            set_rng_state(state)

    @property
    def accum_steps(self) -> int:
        return self.batch_sampler.accum_steps

    def fit(self) -> dict[str, float]:
        """Train from the loaded state to ``epochs``, checkpointing each epoch, then evaluate."""
        if self.epoch or self.batch_in_epoch:
            log.info("resuming %s: epoch %d, micro-batch %d", self.checkpoint_path, self.epoch, self.batch_in_epoch)
        self._previous_usr2 = _install(signal.SIGUSR2, self._request_checkpoint)
        try:
            self._fit()
        finally:
            _install(signal.SIGUSR2, self._previous_usr2)
        return self.metrics

    def _fit(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        for epoch in range(self.epoch, self.epochs):
            self.batch_sampler.set_epoch(epoch, self.seed, start=self.batch_in_epoch)
            if hasattr(self.train_loader.dataset, "set_epoch"):
                self.train_loader.dataset.set_epoch(epoch)
            self.criterion.set_epoch(epoch)  # parts that start later (the mask head) know the epoch
            t0 = time.perf_counter()
            logs = self.train_one_epoch(epoch)
            logs["lr"] = self.optimizer.param_groups[0]["lr"]
            logs["epoch_time_s"] = time.perf_counter() - t0
            self.epoch, self.batch_in_epoch, self.epoch_sums = epoch + 1, 0, {}
            log.info("epoch %d: %s", epoch, " ".join(f"{k}={v:.4g}" for k, v in logs.items()))
            if self.env.is_main:
                for cb in self.callbacks:
                    cb.on_train_epoch_end(self, self.epoch, logs)
            if self.config.eval_every and self.epoch % self.config.eval_every == 0 and self.epoch < self.epochs:
                self._evaluate_between_epochs()
            self.save()
            if self.env.is_main:
                for cb in self.callbacks:
                    cb.on_checkpoint(self, self.epoch)
        self.evaluate()
        if not all(math.isfinite(v) for v in self.metrics.values()):
            log.warning("some evaluation figures are not finite: %s", self.metrics)
        self.save()


def _install(signum: int, handler: Any) -> Any:
    """Set a signal handler where that is possible (the main thread); return the previous one."""
    try:
        return signal.signal(signum, handler)
    except ValueError:  # not the main thread (e.g. a test runner's worker thread)
        return None
