"""What each evaluation leaves in the run's artifacts besides its figures: a picture of a few fixed
validation images (and look-alike-crowd images) with the detections drawn by error category, and
the error summary by category (counts and dAP) as a small table.

Under ``eval/epoch_<NNNN>/`` in the job folder and the run's artifacts: ``detections.png`` (one row
per split, the first ``num_images`` images of each in dataset order, so every evaluation shows the
same images), ``mispair_summary.md`` and ``mispair_summary.csv`` (MLflow's artifact view shows a
CSV as a table). The picture is also logged as MLflow's image ``detections`` at step = epoch: the
run's metrics tab shows it with a slider over the evaluations.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path
from typing import Any, Protocol

from PIL import Image

from cnet.data.coco import CocoDetection
from cnet.evaluation.drawing import draw_panel, grid
from cnet.evaluation.mispair import category_summary
from cnet.files import write_text_atomic
from cnet.trainer import Callback, Trainer

log = logging.getLogger(__name__)

# the splits drawn: the validation split and the look-alike crowd (the paper's Fig. 1/6 case)
PICTURE_SPLITS = ("bbox", "crowd_bbox")
NUM_IMAGES = 3


class ArtifactTracker(Protocol):
    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None: ...

    def log_image(self, image: Image.Image, key: str, step: int) -> None: ...


class EvaluationArtifacts(Callback):
    """After every evaluation (rank 0): the picture and the error summary, written to
    ``out_dir/eval/epoch_<NNNN>/`` and logged to ``tracker`` (see the module docstring).

    The splits are the trainer's latest (``trainer.eval_sets``: ``bbox``, ``crowd_bbox``, ..., the
    subsets of an evaluation between epochs); the per-detection categories are the
    ``mispairs_<variant><split>.json`` the evaluation just wrote.
    """

    def __init__(self, tracker: ArtifactTracker, out_dir: Path, num_images: int = NUM_IMAGES) -> None:
        self.tracker, self.out_dir, self.num_images = tracker, out_dir, num_images
        self.val_sets: dict[str, CocoDetection] = {}

    def on_evaluate(self, trainer: Trainer, epoch: int, metrics: dict[str, float]) -> None:
        self.val_sets = dict(trainer.eval_sets)
        folder = f"eval/epoch_{epoch:04d}"
        picture = self.picture(epoch)
        if picture is not None:
            path = self.out_dir / folder / "detections.png"
            save_png(picture, path)
            self.tracker.log_artifact(path, folder)
            self.tracker.log_image(picture, key="detections", step=epoch)
        tags = [f"{v}{name}" for v in trainer.predictor.variants() for name in self.val_sets]
        rows = self.summary([t for t in tags if f"{t}_AP" in metrics], metrics)
        tables = {"mispair_summary.md": summary_markdown(rows, epoch), "mispair_summary.csv": summary_csv(rows)}
        for name, text in tables.items():
            self.tracker.log_artifact(write_text_atomic(self.out_dir / folder / name, text), folder)

    def records(self, tag: str) -> list[dict[str, Any]]:
        """The per-detection categories of split ``tag`` at the latest evaluation."""
        return json.loads((self.out_dir / f"mispairs_{tag}.json").read_text())

    def picture(self, epoch: int) -> Image.Image | None:
        """One row per split of :data:`PICTURE_SPLITS` the run has: its first ``num_images`` images
        with ground truth and detections (score >= 0.3) drawn by error category."""
        panels, columns = [], 1
        for tag in (t for t in PICTURE_SPLITS if t in self.val_sets):
            dataset, by_image = self.val_sets[tag], _by_image(self.records(tag))
            shown = list(range(min(self.num_images, len(dataset))))
            columns = max(columns, len(shown))
            for index in shown:
                image_id = dataset.ids[index]
                gt = [a["bbox"] for a in dataset.coco.imgToAnns.get(image_id, []) if not a.get("iscrowd", 0)]
                title = f"{tag} image {image_id}, epoch {epoch}"
                panels.append(draw_panel(dataset.load_image(index), gt, by_image.get(image_id, []), title))
            panels += [Image.new("RGB", (1, 1))] * (columns - len(shown))  # rows line up by split
        return grid(panels, columns) if panels else None

    def summary(self, tags: list[str], metrics: dict[str, float]) -> list[dict[str, Any]]:
        """:func:`~cnet.evaluation.mispair.category_summary` of every split ``tag``, with a ``split`` key."""
        rows = []
        for tag in tags:
            dataset = self.val_sets[tag.removeprefix("oracle_")]
            for row in category_summary(dataset.coco, self.records(tag), metrics[f"{tag}_AP"]):
                rows.append({"split": tag, **row})
        return rows


def _by_image(records: list[dict[str, Any]]) -> dict[int, list[dict[str, Any]]]:
    out: dict[int, list[dict[str, Any]]] = {}
    for rec in records:
        out.setdefault(int(rec["image_id"]), []).append(rec)
    return out


def save_png(image: Image.Image, path: Path) -> Path:
    """``image`` as a PNG at ``path``, written whole (temporary file, then renamed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    image.save(tmp, format="PNG")
    tmp.replace(path)
    return path


def summary_markdown(rows: list[dict[str, Any]], epoch: int) -> str:
    """The summary as one Markdown table per split (category, shown, all, dAP)."""
    note = "shown: score >= 0.3; dAP: AP without that category's detections minus AP"
    lines = [f"# Error categories at epoch {epoch}", "", note, ""]
    for split in dict.fromkeys(r["split"] for r in rows):
        lines += [f"## {split}", "", "| category | shown | all | dAP |", "|---|---:|---:|---:|"]
        for r in (r for r in rows if r["split"] == split):
            d_ap = "" if r["dAP"] is None else f"{r['dAP']:+.4f}"
            lines.append(f"| {r['category']} | {r['shown']} | {r['all']} | {d_ap} |")
        lines.append("")
    return "\n".join(lines)


def summary_csv(rows: list[dict[str, Any]]) -> str:
    """The summary as CSV (split, category, shown, all, dAP; dAP empty for tp)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=["split", "category", "shown", "all", "dAP"], lineterminator="\n")
    writer.writeheader()
    writer.writerows({**r, "dAP": "" if r["dAP"] is None else f"{r['dAP']:.6f}"} for r in rows)
    return out.getvalue()
