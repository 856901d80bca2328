"""Training and evaluation loops. They know only ``model``, ``criterion`` and ``postprocess``.

``fit`` adds what a long run needs: an atomic checkpoint every epoch (model, optimizer,
scheduler, epoch, RNG states, MLflow run id), resuming from it when restarted in the same
output folder, a guard that stops on a non-finite loss, and MLflow logging.
"""
from __future__ import annotations

import logging
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from cnet.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from cnet.evaluation.coco_eval import detections_to_coco, evaluate_coco, format_table, write_results
from cnet.types import Detections, GroundTruth, ImageMeta, Outputs

log = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """Raised when a loss becomes NaN or Inf; the last good checkpoint is left untouched."""


Oracle = Callable[[Outputs, list[GroundTruth]], Outputs]


class MetricLogger(Protocol):
    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...


@dataclass
class TrainConfig:
    """Loop settings (``conf/trainer``).

    epochs: total epochs; clip_grad: max gradient L2 norm (None: off); eval_every: evaluate
    every n epochs besides the end (0: only at the end); progress: show a progress bar.
    """

    epochs: int
    clip_grad: float | None = 35.0
    eval_every: int = 0
    progress: bool = True


def to_device(images: Tensor, targets: list[GroundTruth], device: torch.device) -> tuple[Tensor, list[GroundTruth]]:
    return images.to(device, non_blocking=True), [t.to(device) for t in targets]


def train_one_epoch(
    model: nn.Module,
    criterion: Callable[[Outputs, list[GroundTruth]], dict[str, Tensor]],
    weight_dict: dict[str, float],
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    device: torch.device,
    epoch: int,
    clip_grad: float | None = None,
    progress: bool = True,
) -> dict[str, float]:
    """One pass over ``loader``; returns the mean of every weighted loss term and of the total."""
    model.train()
    sums: dict[str, float] = {}
    n_batches, n_images, t0 = 0, 0, time.perf_counter()
    bar = tqdm(loader, desc=f"epoch {epoch}", disable=not progress, leave=False, file=sys.stderr,
               mininterval=0.5 if sys.stderr.isatty() else 10.0)
    for it, (images, targets, _) in enumerate(bar):
        images, targets = to_device(images, targets, device)
        losses = criterion(model(images), targets)
        weighted = {k: weight_dict[k] * v for k, v in losses.items()}
        loss = sum(weighted.values())
        if not torch.isfinite(loss):
            parts = ", ".join(f"{k}={v.item():.4g}" for k, v in losses.items())
            raise NonFiniteLossError(f"loss is {loss.item()} at epoch {epoch}, iteration {it} ({parts})")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip_grad:
            nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
        optimizer.step()
        scheduler.step()
        for k, v in weighted.items():
            sums[k] = sums.get(k, 0.0) + v.item()
        sums["total"] = sums.get("total", 0.0) + loss.item()
        n_batches += 1
        n_images += images.shape[0]
        bar.set_postfix(loss=f"{loss.item():.3f}", img_s=f"{n_images / (time.perf_counter() - t0):.1f}")
    means = {k: v / max(n_batches, 1) for k, v in sums.items()}
    means["images_per_s"] = n_images / max(time.perf_counter() - t0, 1e-9)
    return means


@torch.no_grad()
def predict(
    model: nn.Module,
    postprocess: Callable[[Outputs, list[ImageMeta]], list[Detections]],
    loader: DataLoader,
    device: torch.device,
    progress: bool = False,
    oracle: Oracle | None = None,
) -> tuple[list[int], list[Detections]]:
    """Detections (original-image pixels) for every image of ``loader``, with their image ids.

    ``oracle(outputs, targets)`` may replace parts of the outputs with ground truth first
    (matching-only evaluation, cnet/oracle.py).
    """
    model.eval()
    ids, dets = [], []
    for images, targets, metas in tqdm(loader, desc="eval", disable=not progress, leave=False, file=sys.stderr):
        outputs = model(images.to(device))
        if oracle is not None:
            outputs = oracle(outputs, targets)
        out = postprocess(outputs, metas)
        ids += [m.image_id for m in metas]
        dets += [Detections(d.boxes.cpu(), d.scores.cpu(), d.labels.cpu()) for d in out]
    return ids, dets


def evaluate(
    model: nn.Module,
    postprocess: Callable[[Outputs, list[ImageMeta]], list[Detections]],
    loader: DataLoader,
    device: torch.device,
    results_path: Path | None = None,
    progress: bool = False,
    oracle: Oracle | None = None,
) -> dict[str, float]:
    """COCO box metrics of ``model`` on ``loader``'s dataset (which must expose ``coco`` and
    ``label_to_cat_id``); the detections are written to ``results_path`` as a COCO results file.
    """
    ids, dets = predict(model, postprocess, loader, device, progress, oracle)
    dataset = loader.dataset
    results = detections_to_coco(ids, dets, dataset.label_to_cat_id)
    if results_path is not None:
        write_results(results_path, results)
    return evaluate_coco(dataset.coco, results, iou_type="bbox")


def _checkpoint_state(model, optimizer, scheduler, epoch: int, run_id: str | None, metrics: dict) -> dict:
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "epoch": epoch,
        "rng": rng_state(),
        "mlflow_run_id": run_id,
        "metrics": metrics,
    }


def resume_state(checkpoint_path: Path) -> dict | None:
    """The checkpoint to resume from, or None for a fresh run."""
    return load_checkpoint(checkpoint_path) if checkpoint_path.exists() else None


def fit(
    model: nn.Module,
    criterion: Callable[[Outputs, list[GroundTruth]], dict[str, Tensor]],
    weight_dict: dict[str, float],
    postprocess: Callable[[Outputs, list[ImageMeta]], list[Detections]],
    train_loader: DataLoader,
    val_loaders: dict[str, DataLoader],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    cfg: TrainConfig,
    out_dir: Path,
    device: torch.device,
    tracker: MetricLogger | None = None,
    resume: dict | None = None,
    eval_model: nn.Module | None = None,
    on_epoch_end: Callable[[int], None] | None = None,
    oracle: Oracle | None = None,
) -> dict[str, float]:
    """Train for ``cfg.epochs`` epochs (continuing from ``resume``), checkpointing each epoch,
    then evaluate on every val loader. Metrics are prefixed by the loader's name
    (``bbox_AP`` for "bbox", ``crowd_bbox_AP`` for "crowd_bbox"...); with an ``oracle`` each loader
    is evaluated a second time through it, prefixed ``oracle_`` (``oracle_bbox_AP``).
    Returns the final metrics.
    """
    ckpt_path = out_dir / "checkpoints" / "last.pt"
    run_id = getattr(tracker, "run_id", None)
    start = 0
    if resume is not None:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        set_rng_state(resume["rng"])
        start = int(resume["epoch"])
        log.info("resuming from %s after epoch %d", ckpt_path, start)
    eval_model = eval_model or model

    def run_eval(epoch: int) -> dict[str, float]:
        metrics: dict[str, float] = {}
        variants = {"": None} | ({"oracle_": oracle} if oracle is not None else {})
        for prefix, orc in variants.items():
            for name, loader in val_loaders.items():
                tag = f"{prefix}{name}"
                figures = evaluate(eval_model, postprocess, loader, device, out_dir / f"results_{tag}.json", oracle=orc)
                metrics |= {f"{tag}_{k}": v for k, v in figures.items()}
                print(f"[{tag}] epoch {epoch}\n{format_table(figures)}", flush=True)
        if tracker is not None:
            tracker.log_metrics(metrics, step=epoch)
        return metrics

    metrics: dict[str, float] = dict(resume.get("metrics", {})) if resume else {}
    for epoch in range(start, cfg.epochs):
        if hasattr(train_loader.dataset, "set_epoch"):
            train_loader.dataset.set_epoch(epoch)
        if hasattr(train_loader.sampler, "generator") and train_loader.sampler.generator is not None:
            train_loader.sampler.generator.manual_seed(1000003 * (epoch + 1))  # order depends on epoch only
        t0 = time.perf_counter()
        losses = train_one_epoch(model, criterion, weight_dict, train_loader, optimizer, scheduler,
                                 device, epoch, cfg.clip_grad, cfg.progress)
        losses["lr"] = optimizer.param_groups[0]["lr"]
        losses["epoch_time_s"] = time.perf_counter() - t0
        log.info("epoch %d: %s", epoch, " ".join(f"{k}={v:.4g}" for k, v in losses.items()))
        if tracker is not None:
            tracker.log_metrics({f"train_{k}": v for k, v in losses.items()}, step=epoch + 1)
        if cfg.eval_every and (epoch + 1) % cfg.eval_every == 0 and epoch + 1 < cfg.epochs:
            metrics = run_eval(epoch + 1)
        save_checkpoint(ckpt_path, _checkpoint_state(model, optimizer, scheduler, epoch + 1, run_id, metrics))
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1)
    metrics = run_eval(cfg.epochs)
    if not all(math.isfinite(v) for v in metrics.values()):
        log.warning("some evaluation figures are not finite: %s", metrics)
    save_checkpoint(ckpt_path, _checkpoint_state(model, optimizer, scheduler, cfg.epochs, run_id, metrics))
    return metrics
