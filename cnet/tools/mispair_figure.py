"""The paper's Fig. 1/6 from real runs: one look-alike-crowd image per matching strategy, with the
detections a reader would see (score >= 0.3) coloured by their error category, mispairs in red.

``python -m cnet.tools.report table4`` writes it as ``<out-dir>/table4_mispairs.png`` from the runs
that fill the table's rows (the first run shown in each row's cell). A run's per-detection
categories are its ``mispairs_<split>.json`` (written by evaluation, cnet.evaluation.mispair); the
image comes from the run's own config (its ``.hydra/config.yaml``), so every panel shows the same
image of the same split. The image picked is the one with the most mispairs over all panels.
"""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from cnet.evaluation.drawing import COLOURS, GT_COLOUR, TITLE_H, draw_panel, grid
from cnet.evaluation.mispair import SCORE_THRESHOLD
from cnet.tools.run_files import run_file

__all__ = ["COLOURS", "GT_COLOUR", "TITLE_H", "Panel", "draw_panel", "grid", "pick_image", "write_mispair_figure"]


@dataclass(frozen=True)
class Panel:
    """One strategy's detections on its run's split: COCO result records with ``error`` (see
    :func:`cnet.evaluation.mispair.classify_results`)."""

    name: str
    run_id: str
    records: list[dict[str, Any]]


def pick_image(panels: Sequence[Panel], threshold: float = SCORE_THRESHOLD) -> int | None:
    """The image id with the most shown mispairs summed over ``panels`` (ties: the lowest id);
    without any, the one with the most shown detections, then with the most detections; None
    without detections."""
    mispairs: Counter[int] = Counter()
    shown: Counter[int] = Counter()
    every: Counter[int] = Counter()
    for panel in panels:
        for rec in panel.records:
            every[int(rec["image_id"])] += 1
            if rec["score"] >= threshold:
                shown[int(rec["image_id"])] += 1
                mispairs[int(rec["image_id"])] += rec["error"] == "mispair"
    counts = next((c for c in (mispairs, shown, every) if any(c.values())), None)
    return None if counts is None else min(counts, key=lambda i: (-counts[i], i))


def write_mispair_figure(
    rows: Sequence[tuple[str, dict[str, Any]]], split: str, path: Path, tracking_uri: str
) -> Path | None:
    """Draw ``rows`` (row name, its run as a ``search_runs`` record) on one image of ``split`` (e.g.
    ``crowd_bbox``) to ``path``; None (nothing written) when no run has the files it needs."""
    from cnet.compose import build_val_sets, load_config  # Hydra and torch only when drawing

    panels: list[Panel] = []
    dataset = None
    with tempfile.TemporaryDirectory() as tmp:
        for name, run in rows:
            run = run | {"tracking_uri": tracking_uri}
            records_file = run_file(run, f"mispairs_{split}.json", Path(tmp) / run["run_id"])
            config_file = run_file(run, "config.yaml", Path(tmp) / run["run_id"])
            if records_file is None or config_file is None:
                continue
            panels.append(Panel(name, run["run_id"], json.loads(records_file.read_text())))
            if dataset is None:
                dataset = build_val_sets(load_config(config_file), check_images=False).get(split)
    if dataset is None:
        return None
    image_id = pick_image(panels)
    image_id = min(dataset.coco.imgs) if image_id is None else image_id  # no detections: still show the scene
    info = dataset.coco.imgs[image_id]
    with Image.open(Path(dataset.img_dir) / info["file_name"]) as im:
        image = np.array(im.convert("RGB"))
    gt = [a["bbox"] for a in dataset.coco.imgToAnns.get(image_id, []) if not a.get("iscrowd", 0)]
    drawn = [draw_panel(image, gt, [r for r in p.records if int(r["image_id"]) == image_id], p.name) for p in panels]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = path.with_name(path.name + ".tmp")
    grid(drawn).save(tmp_path, format="PNG")
    tmp_path.replace(path)
    return path
