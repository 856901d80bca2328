"""The training loop. It knows only ``model``, ``criterion`` and a ``Predictor`` for evaluation.

A :class:`Trainer` owns the model, criterion, optimizer, scheduler and loaders; its whole
resumable state is a :class:`TrainState`, which is exactly what a checkpoint holds. Per-epoch
side effects (metric logging, tests that stop a run) go through :class:`Callback` hooks.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from cnet.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from cnet.criterion import Criterion
from cnet.predictor import Predictor, evaluate
from cnet.types import GroundTruth

log = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """Raised when a loss becomes NaN or Inf; the last good checkpoint is left untouched."""


@dataclass
class TrainerConfig:
    """``conf/trainer``: batching and loop settings.

    batch_size: images per step; num_workers: loader processes; clip_grad: max gradient L2 norm
    (None: off); eval_every: evaluate every n epochs besides the end (0: only at the end);
    progress: show a progress bar.
    """

    batch_size: int = 16
    num_workers: int = 0
    clip_grad: float | None = 35.0
    eval_every: int = 0
    progress: bool = True


@dataclass
class TrainState:
    """Everything a run needs to continue: the checkpoint's keys, one to one.

    epoch: completed epochs; step: optimizer steps taken; model/optimizer/scheduler: state
    dicts; rng: :func:`cnet.checkpoint.rng_state`; mlflow_run_id: the run to continue logging
    into; metrics: the latest evaluation figures.
    """

    epoch: int
    step: int
    model: dict[str, Any]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    rng: dict[str, Any]
    mlflow_run_id: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> TrainState:
        """The state saved at ``path`` (see :func:`cnet.checkpoint.load_checkpoint` for errors)."""
        raw = load_checkpoint(path)
        known = {k: raw[k] for k in cls.__dataclass_fields__ if k in raw}
        known.setdefault("step", 0)
        return cls(**known)

    def save(self, path: Path) -> None:
        save_checkpoint(path, asdict(self))


class Callback:
    """Hooks called by :meth:`Trainer.fit`; override what you need."""

    def on_train_epoch_end(self, trainer: Trainer, epoch: int, logs: dict[str, float]) -> None:
        """After training epoch ``epoch`` (1-based count of completed epochs), before its checkpoint."""

    def on_evaluate(self, trainer: Trainer, epoch: int, metrics: dict[str, float]) -> None:
        """After an evaluation at ``epoch`` completed epochs."""

    def on_checkpoint(self, trainer: Trainer, epoch: int) -> None:
        """After the checkpoint of ``epoch`` completed epochs was written."""


def to_device(images: Tensor, targets: list[GroundTruth], device: torch.device) -> tuple[Tensor, list[GroundTruth]]:
    return images.to(device, non_blocking=True), [t.to(device) for t in targets]


class Trainer:
    """Trains for ``epochs`` epochs, checkpointing each, evaluating every ``eval_every`` and at the end.

    Args:
        model, criterion, optimizer, scheduler: the parts of one run (scheduler steps per iteration).
        train_loader: training batches ``(images, targets, metas)``.
        predictor, val_loaders: evaluation; metrics are ``<variant><loader>_<figure>``.
        config: loop settings; epochs: the schedule's length.
        out_dir: checkpoints (``checkpoints/last.pt``) and results files.
        callbacks: per-epoch hooks, called in order.
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
        epochs: int,
        out_dir: Path,
        device: torch.device,
        callbacks: list[Callback] | None = None,
    ) -> None:
        self.model, self.criterion, self.optimizer, self.scheduler = model, criterion, optimizer, scheduler
        self.train_loader, self.predictor, self.val_loaders = train_loader, predictor, val_loaders
        self.config, self.epochs, self.out_dir, self.device = config, epochs, out_dir, device
        self.callbacks = list(callbacks or [])
        self.epoch, self.step = 0, 0
        self.mlflow_run_id: str | None = None
        self.metrics: dict[str, float] = {}

    @property
    def checkpoint_path(self) -> Path:
        return self.out_dir / "checkpoints" / "last.pt"

    def state(self) -> TrainState:
        return TrainState(
            self.epoch,
            self.step,
            self.model.state_dict(),
            self.optimizer.state_dict(),
            self.scheduler.state_dict(),
            rng_state(),
            self.mlflow_run_id,
            dict(self.metrics),
        )

    def load_state(self, state: TrainState) -> None:
        """Continue from ``state`` (weights, optimizer, schedule, RNG, counters, run id, figures)."""
        self.model.load_state_dict(state.model)
        self.optimizer.load_state_dict(state.optimizer)
        self.scheduler.load_state_dict(state.scheduler)
        set_rng_state(state.rng)
        self.epoch, self.step = int(state.epoch), int(state.step)
        self.mlflow_run_id, self.metrics = state.mlflow_run_id, dict(state.metrics)

    def load_weights(self, state: TrainState) -> None:
        """Only the weights and figures of ``state`` (evaluating a checkpoint without training)."""
        self.model.load_state_dict(state.model)
        self.epoch, self.metrics = int(state.epoch), dict(state.metrics)

    def train_one_epoch(self, epoch: int) -> dict[str, float]:
        """One pass over the loader; the mean of every weighted loss term and of the total."""
        model, weight_dict = self.model, self.criterion.weight_dict
        model.train()
        sums: dict[str, float] = {}
        n_batches, n_images, t0 = 0, 0, time.perf_counter()
        bar = tqdm(
            self.train_loader,
            desc=f"epoch {epoch}",
            disable=not self.config.progress,
            leave=False,
            file=sys.stderr,
            mininterval=0.5 if sys.stderr.isatty() else 10.0,
        )
        for it, (images, targets, _) in enumerate(bar):
            images, targets = to_device(images, targets, self.device)
            losses = self.criterion(model(images), targets)
            weighted = {k: weight_dict[k] * v for k, v in losses.items()}
            loss = self.criterion.total(losses)
            if not torch.isfinite(loss):
                parts = ", ".join(f"{k}={v.item():.4g}" for k, v in losses.items())
                raise NonFiniteLossError(f"loss is {loss.item()} at epoch {epoch}, iteration {it} ({parts})")
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if self.config.clip_grad:
                nn.utils.clip_grad_norm_(model.parameters(), self.config.clip_grad)
            self.optimizer.step()
            self.scheduler.step()
            self.step += 1
            for k, v in weighted.items():
                sums[k] = sums.get(k, 0.0) + v.item()
            sums["total"] = sums.get("total", 0.0) + loss.item()
            n_batches += 1
            n_images += images.shape[0]
            bar.set_postfix(loss=f"{loss.item():.3f}", img_s=f"{n_images / (time.perf_counter() - t0):.1f}")
        means = {k: v / max(n_batches, 1) for k, v in sums.items()}
        means["images_per_s"] = n_images / max(time.perf_counter() - t0, 1e-9)
        return means

    def evaluate(self) -> dict[str, float]:
        """COCO figures of the current weights on every val loader (no training needed)."""
        self.metrics = evaluate(self.predictor, self.val_loaders, self.device, self.out_dir, f"epoch {self.epoch}")
        for cb in self.callbacks:
            cb.on_evaluate(self, self.epoch, self.metrics)
        return self.metrics

    def _set_epoch(self, epoch: int) -> None:
        loader = self.train_loader
        if hasattr(loader.dataset, "set_epoch"):
            loader.dataset.set_epoch(epoch)
        generator = getattr(loader.sampler, "generator", None)
        if generator is not None:
            generator.manual_seed(1000003 * (epoch + 1))  # order depends on the epoch only

    def fit(self) -> dict[str, float]:
        """Train from ``self.epoch`` to ``self.epochs``, checkpointing each epoch, then evaluate."""
        if self.epoch:
            log.info("resuming from %s after epoch %d", self.checkpoint_path, self.epoch)
        for epoch in range(self.epoch, self.epochs):
            self._set_epoch(epoch)
            self.criterion.set_epoch(epoch)
            t0 = time.perf_counter()
            logs = self.train_one_epoch(epoch)
            logs["lr"] = self.optimizer.param_groups[0]["lr"]
            logs["epoch_time_s"] = time.perf_counter() - t0
            self.epoch = epoch + 1
            log.info("epoch %d: %s", epoch, " ".join(f"{k}={v:.4g}" for k, v in logs.items()))
            for cb in self.callbacks:
                cb.on_train_epoch_end(self, self.epoch, logs)
            if self.config.eval_every and self.epoch % self.config.eval_every == 0 and self.epoch < self.epochs:
                self.evaluate()
            self.state().save(self.checkpoint_path)
            for cb in self.callbacks:
                cb.on_checkpoint(self, self.epoch)
        self.evaluate()
        if not all(math.isfinite(v) for v in self.metrics.values()):
            log.warning("some evaluation figures are not finite: %s", self.metrics)
        self.state().save(self.checkpoint_path)
        return self.metrics
