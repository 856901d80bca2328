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
from PIL import Image, ImageDraw

from cnet.evaluation.mispair import SCORE_THRESHOLD
from cnet.tools.run_files import run_file

GT_COLOUR = (255, 255, 255)
COLOURS = {"tp": (40, 180, 60), "mispair": (235, 30, 30)}
OTHER_COLOUR = (255, 170, 0)  # duplicate, localisation, class confusion, background
WIDTHS = {"tp": 2, "mispair": 3}
PANEL_MIN_SIDE = 320  # synthetic images are small: scale up by an integer factor for the eye
TITLE_H = 36
LEGEND = "white: ground truth   green: true positive   red: mispair (corners of two objects)   orange: other errors"


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


def _xyxy(bbox: Sequence[float], scale: int) -> list[float]:
    x, y, w, h = (float(v) * scale for v in bbox)
    return [x, y, x + w, y + h]


def draw_panel(
    image: np.ndarray,
    gt_boxes: Sequence[Sequence[float]],
    records: Sequence[dict[str, Any]],
    title: str,
    threshold: float = SCORE_THRESHOLD,
) -> Image.Image:
    """One panel: ``image`` [H, W, 3] uint8 scaled up by an integer factor, ground truth boxes
    (COCO ``[x, y, w, h]``) in white, the records of this image scoring >= ``threshold`` coloured by
    category (mispairs in red, with a dot on each of the two corners they joined), ``title`` above."""
    scale = max(1, -(-PANEL_MIN_SIDE // min(image.shape[:2])))  # ceil
    h, w = image.shape[0] * scale, image.shape[1] * scale
    canvas = Image.new("RGB", (w, h + TITLE_H), (0, 0, 0))
    canvas.paste(Image.fromarray(image).resize((w, h), Image.Resampling.NEAREST), (0, TITLE_H))
    draw = ImageDraw.Draw(canvas)
    shift = np.array([0, TITLE_H, 0, TITLE_H])
    for box in gt_boxes:
        draw.rectangle(list(np.array(_xyxy(box, scale)) + shift), outline=GT_COLOUR, width=1)
    shown = sorted((r for r in records if r["score"] >= threshold), key=lambda r: r["error"] == "mispair")
    for rec in shown:  # mispairs last: on top
        x1, y1, x2, y2 = np.array(_xyxy(rec["bbox"], scale)) + shift
        colour = COLOURS.get(rec["error"], OTHER_COLOUR)
        draw.rectangle([x1, y1, x2, y2], outline=colour, width=WIDTHS.get(rec["error"], 1))
        if rec["error"] == "mispair":
            for cx, cy in ((x1, y1), (x2, y2)):
                draw.ellipse([cx - 5, cy - 5, cx + 5, cy + 5], fill=colour)
    n_mis = sum(r["error"] == "mispair" for r in shown)
    draw.text((6, 4), title, fill=(255, 255, 255))
    draw.text((6, 19), f"{n_mis} mispairs among {len(shown)} detections (score >= {threshold:g})", fill=(255, 200, 200))
    return canvas


def grid(panels: Sequence[Image.Image], columns: int = 3) -> Image.Image:
    """Panels left to right, ``columns`` per line, with the colour legend below."""
    columns = min(columns, len(panels))
    rows = -(-len(panels) // columns)
    pw, ph = max(p.width for p in panels), max(p.height for p in panels)
    out = Image.new("RGB", (columns * pw, rows * ph + 24), (20, 20, 20))
    for k, panel in enumerate(panels):
        out.paste(panel, ((k % columns) * pw, (k // columns) * ph))
    ImageDraw.Draw(out).text((6, rows * ph + 6), LEGEND, fill=(230, 230, 230))
    return out


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
