"""Inference: ``Predictor(model, postprocess, views)`` turns images into detections.

Each test-time view (cnet.views: identity, horizontal flip, a scale with or without flip) maps the
input batch with ``apply`` and maps its boxes back with ``invert``. Views whose inputs have the same
size go through the model as one batch (flip-only testing: one forward pass); views of different
sizes are separate passes. Their candidates are merged per image before soft-NMS (CornerNet/
CentripetalNet flip and multi-scale testing).
With an ``oracle`` the same forward pass also gives the matching-only detections. The mask head
(``segment``, asked on every head) gives the final detections their masks from the same passes
(``Detections.segmentations``; ``mask_head=none``: none); cnet.evaluator then adds the COCO
``segm`` figures.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from cnet.mask_head.base import MaskHead
from cnet.mask_head.none import NoMask
from cnet.postprocess import Candidates, PostProcess
from cnet.types import Detections, GroundTruth, ImageMeta, Outputs, image_frames
from cnet.views import View, ViewPass

Oracle = Callable[[Outputs, list[GroundTruth]], Outputs]
ORACLE_PREFIX = "oracle_"  # metric/results prefix of the matching-only variant


NO_MASKS: MaskHead = NoMask(0, 0)  # the predictor of a detector without a mask head


class Predictor:
    """``predictor(images, metas, targets=None) -> {variant: detections per image}``.

    Args:
        model: ``model(images) -> Outputs``; switched to eval mode by :meth:`predict`.
        postprocess: ``candidates(outputs)`` and ``finalize(candidates, metas)``.
        views: test-time views, merged in this order before NMS.
        oracle: when given, ``targets`` passed to the call also yield the matching-only
            detections (variant ``"oracle_"``) from the same forward pass.
        mask_head: its ``segment`` gives the plain variant's detections their ``segmentations``
            (from ``outputs.features``); the default (no mask head) gives none.
        bootstrap: how many image resamples the evaluation of these detections (cnet.evaluator)
            draws for each AP's 95 % interval (``test.bootstrap``; 0: none).
    """

    def __init__(
        self,
        model: nn.Module,
        postprocess: PostProcess,
        views: Sequence[View],
        oracle: Oracle | None = None,
        mask_head: MaskHead = NO_MASKS,
        bootstrap: int = 0,
    ) -> None:
        if not views:
            raise ValueError("Predictor needs at least one test-time view")
        self.model, self.postprocess, self.views, self.oracle = model, postprocess, list(views), oracle
        self.mask_head, self.bootstrap = mask_head, bootstrap

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
        passes: list[ViewPass] = []  # kept for the mask head
        for views in self.groups(size):
            outputs = self.model(torch.cat([view.apply(images) for view in views]))  # [V*B, ...]
            passes.append(ViewPass(views, outputs))
            cands[""] += self._per_view(outputs, views, size, frames)
            if with_oracle:
                assert self.oracle is not None and targets is not None
                view_targets = [
                    GroundTruth(view.apply_boxes(t.boxes, size), t.labels) for view in views for t in targets
                ]
                cands[ORACLE_PREFIX] += self._per_view(self.oracle(outputs, view_targets), views, size, frames)
        result = {"": self._merge(cands[""], metas)}
        for det, rles in zip(result[""], self.mask_head.segment(passes, size, result[""], metas)):
            det.segmentations = rles
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
