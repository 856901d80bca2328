"""Inference: ``Predictor(model, postprocess, views)`` turns images into detections.

Each test-time view (identity, horizontal flip, later a scale) maps the input batch with
``apply`` and maps its boxes back with ``invert``. All views go through the model as one batch;
their candidates are merged per image before soft-NMS (CornerNet/CentripetalNet flip testing).
With an ``oracle`` the same forward pass also gives the matching-only detections. With a mask head,
every final detection gets a mask: its probabilities in each view (mapped back with
``invert_masks``) are averaged, pasted into original-image pixels, thresholded at 0.5 and
RLE-encoded (``Detections.segmentations``); ``evaluate`` then adds the COCO ``segm`` figures.
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

from cnet.evaluation.coco_eval import detections_to_coco, evaluate_coco, format_table, write_results
from cnet.masks import encode_rle, paste_masks
from cnet.ops import mirror_boxes
from cnet.postprocess import Candidates, PostProcess
from cnet.types import Detections, GroundTruth, ImageMeta, Outputs, pad_boxes

Oracle = Callable[[Outputs, list[GroundTruth]], Outputs]
ORACLE_PREFIX = "oracle_"  # metric/results prefix of the matching-only variant
PASTE_CHUNK = 20  # detections pasted at once: bounds the [D, H, W] float buffer


class MaskPredictor(Protocol):
    """What the predictor needs from a mask head (cnet.mask_head.MaskHead)."""

    def predict_masks(
        self, features: Tensor, rois: Tensor, labels: Tensor, input_size: tuple[int, int]
    ) -> Tensor | None:
        """features [N, C, h, w], rois [R, 5] (batch index, xyxy input px), labels [R] ->
        probabilities [R, M, M], or None when the head predicts no masks."""
        ...


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

    def invert_masks(self, maps: Tensor) -> Tensor:
        """[R, M, M] maps of boxes ``apply_boxes`` put in the view -> the same boxes' maps in the plain input."""
        ...


class Identity:
    """The input as it is."""

    def apply(self, images: Tensor) -> Tensor:
        return images

    def apply_boxes(self, boxes: Tensor, input_size: tuple[int, int]) -> Tensor:
        return boxes

    def invert(self, boxes: Tensor, input_size: tuple[int, int]) -> Tensor:
        return boxes

    def invert_masks(self, maps: Tensor) -> Tensor:
        return maps


class HFlip:
    """The horizontally mirrored input; mirroring is its own inverse."""

    def apply(self, images: Tensor) -> Tensor:
        return images.flip(-1)

    def apply_boxes(self, boxes: Tensor, input_size: tuple[int, int]) -> Tensor:
        return mirror_boxes(boxes, input_size[1])

    def invert(self, boxes: Tensor, input_size: tuple[int, int]) -> Tensor:
        return mirror_boxes(boxes, input_size[1])

    def invert_masks(self, maps: Tensor) -> Tensor:
        return maps.flip(-1)  # a mirrored box's map runs right to left


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
        mask_head: when given (and it predicts masks), the plain variant's detections carry
            ``segmentations`` computed on ``outputs.features``.
    """

    def __init__(
        self,
        model: nn.Module,
        postprocess: PostProcess,
        views: Sequence[View],
        oracle: Oracle | None = None,
        mask_head: MaskPredictor | None = None,
    ) -> None:
        if not views:
            raise ValueError("Predictor needs at least one test-time view")
        self.model, self.postprocess, self.views, self.oracle = model, postprocess, list(views), oracle
        self.mask_head = mask_head

    def variants(self) -> list[str]:
        """Detection variants a call returns: ``""`` and, with an oracle, ``"oracle_"``."""
        return [""] + ([ORACLE_PREFIX] if self.oracle is not None else [])

    @torch.no_grad()
    def __call__(
        self, images: Tensor, metas: list[ImageMeta], targets: list[GroundTruth] | None = None
    ) -> dict[str, list[Detections]]:
        outputs = self.model(torch.cat([view.apply(images) for view in self.views]))  # [V*B, ...]
        result = {"": self._merge(outputs, metas)}
        if self.mask_head is not None and outputs.features is not None:
            for i, (det, meta) in enumerate(zip(result[""], metas)):
                probs = self.mask_probs(outputs, i, len(metas), det, meta)
                if probs is not None:
                    det.segmentations = self.encode_masks(probs, det.boxes, meta.orig_size)
        if self.oracle is not None and targets is not None:
            size = outputs.input_size
            view_targets = [
                GroundTruth(view.apply_boxes(t.boxes, size), t.labels) for view in self.views for t in targets
            ]
            result[ORACLE_PREFIX] = self._merge(self.oracle(outputs, view_targets), metas)
        return result

    def mask_probs(self, outputs: Outputs, i: int, b: int, det: Detections, meta: ImageMeta) -> Tensor | None:
        """[D, M, M] mask probabilities of image ``i``'s detections (boxes in original pixels),
        averaged over the views (a view's map mapped back first); None without masks."""
        assert self.mask_head is not None and outputs.features is not None
        size = outputs.input_size
        boxes = pad_boxes(det.boxes, meta)  # original -> plain input pixels
        total: Tensor | None = None
        for v, view in enumerate(self.views):  # view-major batch: entry v * B + i
            rois = torch.cat([boxes.new_full((len(boxes), 1), float(v * b + i)), view.apply_boxes(boxes, size)], 1)
            probs = self.mask_head.predict_masks(outputs.features, rois, det.labels, size)
            if probs is None:
                return None
            probs = view.invert_masks(probs)
            total = probs if total is None else total + probs
        return None if total is None else total / len(self.views)

    @staticmethod
    def encode_masks(probs: Tensor, boxes: Tensor, image_size: tuple[int, int]) -> list[dict[str, Any]]:
        """[D, M, M] probabilities over ``boxes`` [D, 4] (original px) -> D COCO RLEs of the masks ``probs >= 0.5``."""
        rles: list[dict[str, Any]] = []
        for s in range(0, len(probs), PASTE_CHUNK):
            rles += encode_rle(paste_masks(probs[s : s + PASTE_CHUNK], boxes[s : s + PASTE_CHUNK], image_size) >= 0.5)
        return rles

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
                dets[variant] += [
                    Detections(d.boxes.cpu(), d.scores.cpu(), d.labels.cpu(), segmentations=d.segmentations)
                    for d in per_image
                ]
        return ids, dets


def evaluate(
    predictor: Predictor,
    loaders: dict[str, DataLoader],
    device: torch.device,
    out_dir: Path | None = None,
    header: str = "",
) -> dict[str, float]:
    """COCO box figures of every variant on every loader, as ``<variant><loader>_<figure>``.

    Loaders' datasets expose ``coco`` and ``label_to_cat_id``; each variant's detections are
    written to ``out_dir/results_<variant><loader>.json`` (with ``segmentation`` when they carry
    masks, which also gives the mask figures ``<variant><loader with bbox -> segm>_<figure>``,
    e.g. ``segm_AP`` beside ``bbox_AP``). Tables are printed in the order variant-major (plain
    first, then matching-only).
    """
    figures: dict[str, dict[str, float]] = {}
    for name, loader in loaders.items():
        dataset: Any = loader.dataset  # a CocoDetection: ``coco`` and ``label_to_cat_id``
        ids, dets = predictor.predict(loader, device)
        for variant, per_image in dets.items():
            tag = f"{variant}{name}"
            results = detections_to_coco(ids, per_image, dataset.label_to_cat_id)
            if out_dir is not None:
                write_results(out_dir / f"results_{tag}.json", results)
            figures[tag] = evaluate_coco(dataset.coco, results, iou_type="bbox")
            if any(d.segmentations is not None for d in per_image):
                figures[segm_tag(tag)] = evaluate_coco(dataset.coco, results, iou_type="segm")
    metrics: dict[str, float] = {}
    for variant in predictor.variants():
        for name in loaders:
            for tag in (f"{variant}{name}", segm_tag(f"{variant}{name}")):
                if tag in figures:
                    metrics |= {f"{tag}_{k}": v for k, v in figures[tag].items()}
                    print(f"[{tag}] {header}\n{format_table(figures[tag])}", flush=True)
    return metrics


def segm_tag(tag: str) -> str:
    """The mask figures' name of a box evaluation: ``bbox`` -> ``segm``, ``crowd_bbox`` -> ``crowd_segm``."""
    return tag[: -len("bbox")] + "segm" if tag.endswith("bbox") else f"{tag}_segm"
