"""Detections drawn on their image, coloured by error category (cnet.evaluation.mispair): the
panels of the runs' per-evaluation pictures (cnet.eval_artifacts) and of Table 4's mispair figure
(cnet.tools.mispair_figure). Mispairs are red with a dot on each of the two corners they joined."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from cnet.evaluation.mispair import SCORE_THRESHOLD

GT_COLOUR = (255, 255, 255)
COLOURS = {"tp": (40, 180, 60), "mispair": (235, 30, 30)}
OTHER_COLOUR = (255, 170, 0)  # duplicate, localisation, class confusion, background
WIDTHS = {"tp": 2, "mispair": 3}
PANEL_MIN_SIDE = 320  # synthetic images are small: scale up by an integer factor for the eye
TITLE_H = 36
LEGEND = "white: ground truth   green: true positive   red: mispair (corners of two objects)   orange: other errors"


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
