"""COCO evaluation of a predictor over validation loaders (the loop the trainer and ``cnet.test`` run).

``evaluate(predictor, loaders, device, out_dir)``: every image of every loader through the
:class:`~cnet.predictor.Predictor`, the shards of a data-parallel group gathered in dataset order,
the detections written as COCO results files and scored with the COCO metrics of
:mod:`cnet.evaluation` (boxes, masks, wrong corner pairs). Not to be confused with
``python -m cnet.evaluate`` (:mod:`cnet.evaluate`), the command that scores a results file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import torch
from torch.utils.data import DataLoader

from cnet import distributed
from cnet.data.sampler import ShardSampler
from cnet.evaluation.coco_eval import detections_to_coco, evaluate_coco, format_table, write_results
from cnet.evaluation.mispair import classify_results, mispair_figures
from cnet.predictor import Predictor


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
    (cnet.evaluation.mispair), with per-detection categories in ``mispairs_<variant><loader>.json``,
    and with ``predictor.bootstrap`` resamples the AP's 95 % interval ``AP_ci_low`` / ``AP_ci_high``
    (cnet.evaluation.bootstrap; -1, so not logged, where AP is -1).

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
            figures[tag] = evaluate_coco(dataset.coco, results, iou_type="bbox", bootstrap=predictor.bootstrap)
            # Wrong corner pairs (issue 15): ours-only figures beside the COCO ones.
            records = classify_results(dataset.coco, results)
            if out_dir is not None:
                write_results(out_dir / f"mispairs_{tag}.json", records)
            figures[tag] |= mispair_figures(dataset.coco, results, records, ap_before=figures[tag]["AP"])
            if any(d.segmentations is not None for d in per_image):
                figures[segm_tag(tag)] = evaluate_coco(
                    dataset.coco, results, iou_type="segm", bootstrap=predictor.bootstrap
                )
    metrics: dict[str, float] = {}
    if env.is_main:
        for variant in predictor.variants():
            for name in loaders:
                tag = f"{variant}{name}"
                metrics |= {f"{tag}_{k}": v for k, v in figures[tag].items()}
                mis = "  ".join(
                    f"{k}={figures[tag][k]:.3f}" for k in ("mispair_rate", "mispair_fp_rate", "dAP_mispair")
                )
                print(f"[{tag}] {header}\n{format_table(figures[tag])}\n{mis}{ci_text(figures[tag])}", flush=True)
                if segm_tag(tag) in figures:
                    metrics |= {f"{segm_tag(tag)}_{k}": v for k, v in figures[segm_tag(tag)].items()}
                    table = format_table(figures[segm_tag(tag)]) + ci_text(figures[segm_tag(tag)])
                    print(f"[{segm_tag(tag)}] {header}\n{table}", flush=True)
    return distributed.broadcast_object(metrics)


def ci_text(figures: dict[str, float]) -> str:
    """A line with the AP's bootstrap interval when the figures have one (``AP_ci_low`` / ``AP_ci_high``)."""
    low, high = figures.get("AP_ci_low", -1.0), figures.get("AP_ci_high", -1.0)
    return f"\nAP 95% interval [{low:.3f}, {high:.3f}] (image bootstrap)" if low != -1 and high != -1 else ""


def first_images(loaders: dict[str, DataLoader], n: int) -> dict[str, DataLoader]:
    """``loaders`` over the first ``n`` images of their splits (``CocoDetection.first``: the ground
    truth of those images only), each rank its shard, as the loaders themselves shard."""
    env = distributed.current()
    subsets = {}
    for name, loader in loaders.items():
        subset = cast(Any, loader.dataset).first(n)
        sampler = ShardSampler(len(subset), env.world_size, env.rank)
        subsets[name] = DataLoader(subset, batch_size=1, sampler=sampler, num_workers=loader.num_workers,
                                   collate_fn=loader.collate_fn)  # fmt: skip
    return subsets


def segm_tag(tag: str) -> str:
    """The mask figures' name of a box evaluation: ``bbox`` -> ``segm``, ``crowd_bbox`` -> ``crowd_segm``."""
    return tag[: -len("bbox")] + "segm" if tag.endswith("bbox") else f"{tag}_segm"
