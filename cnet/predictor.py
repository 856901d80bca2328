"""Inference: ``Predictor(model, postprocess, views)`` turns images into detections.

Each test-time view (identity, horizontal flip, later a scale) maps the input batch with
``apply`` and maps its boxes back with ``invert``. All views go through the model as one batch;
their candidates are merged per image before soft-NMS (CornerNet/CentripetalNet flip testing).
With an ``oracle`` the same forward pass also gives the matching-only detections.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from cnet import distributed
from cnet.evaluation.coco_eval import detections_to_coco, evaluate_coco, format_table, write_results
from cnet.ops import mirror_boxes
from cnet.postprocess import Candidates, PostProcess
from cnet.types import Detections, GroundTruth, ImageMeta, Outputs

Oracle = Callable[[Outputs, list[GroundTruth]], Outputs]
ORACLE_PREFIX = "oracle_"  # metric/results prefix of the matching-only variant


class View(Protocol):
    """One test-time view of the input. ``input_size`` is the (height, width) the model sees."""

    def apply(self, images: Tensor) -> Tensor:
        """[B, 3, H, W] -> the view's input batch."""
        ...

    def apply_boxes(self, boxes: Tensor, input_size: tuple[int, int]) -> Tensor:
        """xyxy [N, 4] of the plain input -> the same objects in the view (ground truth, oracle)."""
        ...

    def invert(self, boxes: Tensor, input_size: tuple[int, int]) -> Tensor:
        """xyxy [N, 4] predicted in the view -> the plain input's pixels."""
        ...


class Identity:
    """The input as it is."""

    def apply(self, images: Tensor) -> Tensor:
        return images

    def apply_boxes(self, boxes: Tensor, input_size: tuple[int, int]) -> Tensor:
        return boxes

    def invert(self, boxes: Tensor, input_size: tuple[int, int]) -> Tensor:
        return boxes


class HFlip:
    """The horizontally mirrored input; mirroring is its own inverse."""

    def apply(self, images: Tensor) -> Tensor:
        return images.flip(-1)

    def apply_boxes(self, boxes: Tensor, input_size: tuple[int, int]) -> Tensor:
        return mirror_boxes(boxes, input_size[1])

    def invert(self, boxes: Tensor, input_size: tuple[int, int]) -> Tensor:
        return mirror_boxes(boxes, input_size[1])


def test_views(flip: bool) -> list[View]:
    """The paper's test-time views: the image, plus its mirror with ``flip``."""
    return [Identity(), HFlip()] if flip else [Identity()]


test_views.__test__ = False  # type: ignore[attr-defined]  # not a pytest test


class Predictor:
    """``predictor(images, metas, targets=None) -> {variant: detections per image}``.

    Args:
        model: ``model(images) -> Outputs``; switched to eval mode by :meth:`predict`.
        postprocess: ``candidates(outputs)`` and ``finalize(candidates, metas)``.
        views: test-time views, merged in this order before NMS.
        oracle: when given, ``targets`` passed to the call also yield the matching-only
            detections (variant ``"oracle_"``) from the same forward pass.
    """

    def __init__(
        self, model: nn.Module, postprocess: PostProcess, views: Sequence[View], oracle: Oracle | None = None
    ) -> None:
        if not views:
            raise ValueError("Predictor needs at least one test-time view")
        self.model, self.postprocess, self.views, self.oracle = model, postprocess, list(views), oracle

    def variants(self) -> list[str]:
        """Detection variants a call returns: ``""`` and, with an oracle, ``"oracle_"``."""
        return [""] + ([ORACLE_PREFIX] if self.oracle is not None else [])

    @torch.no_grad()
    def __call__(
        self, images: Tensor, metas: list[ImageMeta], targets: list[GroundTruth] | None = None
    ) -> dict[str, list[Detections]]:
        outputs = self.model(torch.cat([view.apply(images) for view in self.views]))  # [V*B, ...]
        result = {"": self._merge(outputs, metas)}
        if self.oracle is not None and targets is not None:
            size = outputs.input_size
            view_targets = [
                GroundTruth(view.apply_boxes(t.boxes, size), t.labels) for view in self.views for t in targets
            ]
            result[ORACLE_PREFIX] = self._merge(self.oracle(outputs, view_targets), metas)
        return result

    def _merge(self, outputs: Outputs, metas: list[ImageMeta]) -> list[Detections]:
        cands = self.postprocess.candidates(outputs)  # view-major: entry v * B + i
        b, size = len(metas), outputs.input_size
        merged = []
        for i in range(b):
            per_view = [cands[v * b + i] for v in range(len(self.views))]
            merged.append(
                Candidates(
                    torch.cat([view.invert(c.boxes, size) for view, c in zip(self.views, per_view)]),
                    torch.cat([c.scores for c in per_view]),
                    torch.cat([c.labels for c in per_view]),
                )
            )
        return self.postprocess.finalize(merged, metas)

    def predict(
        self, loader: DataLoader, device: torch.device, progress: bool = False
    ) -> tuple[list[int], dict[str, list[Detections]]]:
        """Detections (original-image pixels, on the CPU) of every image of ``loader`` and their ids."""
        self.model.eval()
        ids: list[int] = []
        dets: dict[str, list[Detections]] = {v: [] for v in self.variants()}
        for images, targets, metas in tqdm(loader, desc="eval", disable=not progress, leave=False, file=sys.stderr):
            out = self(images.to(device), metas, targets)
            ids += [m.image_id for m in metas]
            for variant, per_image in out.items():
                dets[variant] += [Detections(d.boxes.cpu(), d.scores.cpu(), d.labels.cpu()) for d in per_image]
        return ids, dets


def _interleave(per_rank: list[list[Any]]) -> list[Any]:
    """Undo :class:`cnet.data.sampler.ShardSampler`: rank r's k-th item is dataset item r + k * world."""
    world = len(per_rank)
    out: list[Any] = [None] * sum(len(items) for items in per_rank)
    for r, items in enumerate(per_rank):
        for k, item in enumerate(items):
            out[r + k * world] = item
    return out


def evaluate(
    predictor: Predictor,
    loaders: dict[str, DataLoader],
    device: torch.device,
    out_dir: Path | None = None,
    header: str = "",
) -> dict[str, float]:
    """COCO box figures of every variant on every loader, as ``<variant><loader>_<figure>``.

    Loaders' datasets expose ``coco`` and ``label_to_cat_id``; each variant's detections are
    written to ``out_dir/results_<variant><loader>.json``. Tables are printed in the order
    variant-major (plain first, then matching-only). In a data-parallel group each rank predicts
    its shard; rank 0 gathers them in dataset order, scores them and shares the figures.
    """
    env = distributed.current()
    figures: dict[str, dict[str, float]] = {}
    for name, loader in loaders.items():
        dataset: Any = loader.dataset  # a CocoDetection: ``coco`` and ``label_to_cat_id``
        ids, dets = predictor.predict(loader, device)
        if env.distributed:
            shards = distributed.all_gather_objects((ids, dets))
            ids = _interleave([s[0] for s in shards])
            dets = {v: _interleave([s[1][v] for s in shards]) for v in dets}
        if not env.is_main:
            continue
        for variant, per_image in dets.items():
            tag = f"{variant}{name}"
            results = detections_to_coco(ids, per_image, dataset.label_to_cat_id)
            if out_dir is not None:
                write_results(out_dir / f"results_{tag}.json", results)
            figures[tag] = evaluate_coco(dataset.coco, results, iou_type="bbox")
    metrics: dict[str, float] = {}
    if env.is_main:
        for variant in predictor.variants():
            for name in loaders:
                tag = f"{variant}{name}"
                metrics |= {f"{tag}_{k}": v for k, v in figures[tag].items()}
                print(f"[{tag}] {header}\n{format_table(figures[tag])}", flush=True)
    return distributed.broadcast_object(metrics)
