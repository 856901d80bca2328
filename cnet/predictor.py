"""Inference: ``Predictor(model, postprocess, views)`` turns images into detections.

Each test-time view (identity, horizontal flip, a scale with or without flip) maps the input batch
with ``apply`` and maps its boxes back with ``invert``. Views whose inputs have the same size go
through the model as one batch (flip-only testing: one forward pass); views of different sizes are
separate passes. Their candidates are merged per image before soft-NMS (CornerNet/CentripetalNet
flip and multi-scale testing).
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
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from cnet import distributed
from cnet.evaluation.coco_eval import detections_to_coco, evaluate_coco, format_table, write_results
from cnet.evaluation.mispair import classify_results, mispair_figures
from cnet.masks import encode_rle, paste_masks
from cnet.ops import mirror_boxes
from cnet.postprocess import Candidates, PostProcess
from cnet.types import Detections, GroundTruth, ImageMeta, Outputs, image_frames, pad_boxes

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
    """One test-time view of the input. ``input_size`` is the (height, width) of the plain input."""

    def output_size(self, input_size: tuple[int, int]) -> tuple[int, int]:
        """(height, width) of the view's input batch for a plain input of ``input_size``."""
        ...

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

    def output_size(self, input_size: tuple[int, int]) -> tuple[int, int]:
        return input_size

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

    def output_size(self, input_size: tuple[int, int]) -> tuple[int, int]:
        return input_size

    def apply(self, images: Tensor) -> Tensor:
        return images.flip(-1)

    def apply_boxes(self, boxes: Tensor, input_size: tuple[int, int]) -> Tensor:
        return mirror_boxes(boxes, input_size[1])

    def invert(self, boxes: Tensor, input_size: tuple[int, int]) -> Tensor:
        return mirror_boxes(boxes, input_size[1])

    def invert_masks(self, maps: Tensor) -> Tensor:
        return maps.flip(-1)  # a mirrored box's map runs right to left


class Scale:
    """The plain input (mirrored first with ``flip``) resized by ``scale`` and centre-padded to
    ``h | pad_or, w | pad_or`` as the test transform pads (zeros: the mean pixel after
    normalization). ``invert`` removes that padding and divides by the realised per-axis ratio
    (``int(H * scale) / H``), so boxes come back in the plain input's pixels.

    The whole padded plain input is resized (CornerNet resizes the image, then pads): the two
    differ only in the one-pixel bilinear blend at the image's edge with the mean padding.
    """

    def __init__(self, scale: float, pad_or: int = 127, flip: bool = False) -> None:
        if scale <= 0:
            raise ValueError(f"test.scales: scale {scale} must be > 0")
        self.scale, self.pad_or, self.flip = float(scale), int(pad_or), flip

    def _resized(self, input_size: tuple[int, int]) -> tuple[int, int]:
        h, w = input_size
        return max(int(h * self.scale), 1), max(int(w * self.scale), 1)

    def output_size(self, input_size: tuple[int, int]) -> tuple[int, int]:
        rh, rw = self._resized(input_size)
        return rh | self.pad_or, rw | self.pad_or

    def _geometry(self, input_size: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """(offset [4], ratio [4]) so that view xyxy = plain xyxy * ratio + offset."""
        (h, w), (rh, rw) = input_size, self._resized(input_size)
        out_h, out_w = self.output_size(input_size)
        top, left = out_h // 2 - rh // 2, out_w // 2 - rw // 2
        sx, sy = rw / w, rh / h
        return torch.tensor([left, top, left, top], dtype=torch.float32), torch.tensor([sx, sy, sx, sy])

    def apply(self, images: Tensor) -> Tensor:
        size = (int(images.shape[-2]), int(images.shape[-1]))
        rh, rw = self._resized(size)
        out_h, out_w = self.output_size(size)
        x = images.flip(-1) if self.flip else images
        if (rh, rw) != size:
            x = F.interpolate(x, size=(rh, rw), mode="bilinear", align_corners=False)
        top, left = out_h // 2 - rh // 2, out_w // 2 - rw // 2
        out = x.new_zeros(*x.shape[:-2], out_h, out_w)
        out[..., top : top + rh, left : left + rw] = x
        return out

    def apply_boxes(self, boxes: Tensor, input_size: tuple[int, int]) -> Tensor:
        offset, ratio = (t.to(boxes) for t in self._geometry(input_size))
        boxes = mirror_boxes(boxes, input_size[1]) if self.flip else boxes
        return boxes * ratio + offset

    def invert(self, boxes: Tensor, input_size: tuple[int, int]) -> Tensor:
        offset, ratio = (t.to(boxes) for t in self._geometry(input_size))
        boxes = (boxes - offset) / ratio
        return mirror_boxes(boxes, input_size[1]) if self.flip else boxes

    def invert_masks(self, maps: Tensor) -> Tensor:
        # a box's map is box-relative: scaling leaves it as it is, mirroring reverses it
        return maps.flip(-1) if self.flip else maps


# CornerNet's multi-scale test set (conf/test/multiscale.yaml)
CORNERNET_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5)


def test_views(flip: bool, scales: Sequence[float] = (1.0,), pad_or: int = 127) -> list[View]:
    """The test-time views: per scale the image, plus its mirror with ``flip``.

    Scale 1 is the plain input itself (:class:`Identity`, :class:`HFlip`), so ``scales=[1]`` is
    single-scale testing exactly; other scales are :class:`Scale` views (``pad_or``: the test
    transform's padding).
    """
    views: list[View] = []
    for s in scales:
        if float(s) == 1.0:
            views += [Identity(), HFlip()] if flip else [Identity()]
        else:
            views += [Scale(s, pad_or), Scale(s, pad_or, flip=True)] if flip else [Scale(s, pad_or)]
    if not views:
        raise ValueError("test.scales is empty: give at least one scale, e.g. test.scales=[1]")
    return views


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

    def groups(self, input_size: tuple[int, int]) -> list[list[View]]:
        """The views by the size of their input (first-seen order): one forward pass per group."""
        by_size: dict[tuple[int, int], list[View]] = {}
        for view in self.views:
            by_size.setdefault(view.output_size(input_size), []).append(view)
        return list(by_size.values())

    @torch.no_grad()
    def __call__(
        self, images: Tensor, metas: list[ImageMeta], targets: list[GroundTruth] | None = None
    ) -> dict[str, list[Detections]]:
        size = (int(images.shape[-2]), int(images.shape[-1]))  # the plain input batch [B, 3, H, W]
        frames = image_frames(metas)  # [B, 4] the images inside the plain input; views map their origin
        with_oracle = self.oracle is not None and targets is not None
        cands: dict[str, list[list[Candidates]]] = {"": [], ORACLE_PREFIX: []}  # per view: per image
        passes: list[tuple[list[View], Outputs]] = []  # kept for the mask head
        for views in self.groups(size):
            outputs = self.model(torch.cat([view.apply(images) for view in views]))  # [V*B, ...]
            passes.append((views, outputs))
            cands[""] += self._per_view(outputs, views, size, frames)
            if with_oracle:
                assert self.oracle is not None and targets is not None
                view_targets = [
                    GroundTruth(view.apply_boxes(t.boxes, size), t.labels) for view in views for t in targets
                ]
                cands[ORACLE_PREFIX] += self._per_view(self.oracle(outputs, view_targets), views, size, frames)
        result = {"": self._merge(cands[""], metas)}
        if self.mask_head is not None and all(out.features is not None for _, out in passes):
            for i, (det, meta) in enumerate(zip(result[""], metas)):
                probs = self.mask_probs(passes, size, i, len(metas), det, meta)
                if probs is not None:
                    det.segmentations = self.encode_masks(probs, det.boxes, meta.orig_size)
        if with_oracle:
            result[ORACLE_PREFIX] = self._merge(cands[ORACLE_PREFIX], metas)
        return result

    def _per_view(
        self, outputs: Outputs, views: list[View], size: tuple[int, int], frames: Tensor
    ) -> list[list[Candidates]]:
        """Candidates of one forward pass (view-major: entry v * B + i), boxes in plain-input pixels; each
        entry's ``Grid.origin`` is its image frame's (``frames`` [B, 4]) top-left in the view (mirror: W - x2)."""
        b = len(frames)
        cands = self.postprocess.candidates(outputs, torch.cat([v.apply_boxes(frames, size)[:, :2] for v in views]))
        return [
            [Candidates(view.invert(c.boxes, size), c.scores, c.labels) for c in cands[v * b : (v + 1) * b]]
            for v, view in enumerate(views)
        ]

    def mask_probs(
        self,
        passes: list[tuple[list[View], Outputs]],
        size: tuple[int, int],
        i: int,
        b: int,
        det: Detections,
        meta: ImageMeta,
    ) -> Tensor | None:
        """[D, M, M] mask probabilities of image ``i``'s detections (boxes in original pixels),
        averaged over the views (a view's map mapped back first); None without masks."""
        assert self.mask_head is not None
        boxes = pad_boxes(det.boxes, meta)  # original -> plain input pixels
        total: Tensor | None = None
        for views, outputs in passes:
            assert outputs.features is not None
            for v, view in enumerate(views):  # view-major batch: entry v * B + i
                batch_index = boxes.new_full((len(boxes), 1), float(v * b + i))
                rois = torch.cat([batch_index, view.apply_boxes(boxes, size)], 1)
                probs = self.mask_head.predict_masks(outputs.features, rois, det.labels, outputs.input_size)
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

    def _merge(self, per_view: list[list[Candidates]], metas: list[ImageMeta]) -> list[Detections]:
        """All views' candidates of each image, concatenated in view order, then soft-NMS and top-k."""
        merged = []
        for i in range(len(metas)):
            merged.append(
                Candidates(
                    torch.cat([view[i].boxes for view in per_view]),
                    torch.cat([view[i].scores for view in per_view]),
                    torch.cat([view[i].labels for view in per_view]),
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

    Besides the 12 COCO figures: ``mispair_rate``, ``mispair_fp_rate`` and ``dAP_mispair``
    (cnet.evaluation.mispair), with per-detection categories in ``mispairs_<variant><loader>.json``.

    Loaders' datasets expose ``coco`` and ``label_to_cat_id``; each variant's detections are
    written to ``out_dir/results_<variant><loader>.json`` (with ``segmentation`` when they carry
    masks, which also gives the mask figures ``<variant><loader with bbox -> segm>_<figure>``,
    e.g. ``segm_AP`` beside ``bbox_AP``). Tables are printed in the order variant-major (plain
    first, then matching-only). In a data-parallel group each rank predicts its shard; rank 0
    gathers them in dataset order, scores them and shares the figures.
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
            # Wrong corner pairs (issue 15): ours-only figures beside the COCO ones.
            records = classify_results(dataset.coco, results)
            if out_dir is not None:
                write_results(out_dir / f"mispairs_{tag}.json", records)
            figures[tag] |= mispair_figures(dataset.coco, results, records, ap_before=figures[tag]["AP"])
            if any(d.segmentations is not None for d in per_image):
                figures[segm_tag(tag)] = evaluate_coco(dataset.coco, results, iou_type="segm")
    metrics: dict[str, float] = {}
    if env.is_main:
        for variant in predictor.variants():
            for name in loaders:
                tag = f"{variant}{name}"
                metrics |= {f"{tag}_{k}": v for k, v in figures[tag].items()}
                mis = "  ".join(
                    f"{k}={figures[tag][k]:.3f}" for k in ("mispair_rate", "mispair_fp_rate", "dAP_mispair")
                )
                print(f"[{tag}] {header}\n{format_table(figures[tag])}\n{mis}", flush=True)
                if segm_tag(tag) in figures:
                    metrics |= {f"{segm_tag(tag)}_{k}": v for k, v in figures[segm_tag(tag)].items()}
                    print(f"[{segm_tag(tag)}] {header}\n{format_table(figures[segm_tag(tag)])}", flush=True)
    return distributed.broadcast_object(metrics)


def segm_tag(tag: str) -> str:
    """The mask figures' name of a box evaluation: ``bbox`` -> ``segm``, ``crowd_bbox`` -> ``crowd_segm``."""
    return tag[: -len("bbox")] + "segm" if tag.endswith("bbox") else f"{tag}_segm"
