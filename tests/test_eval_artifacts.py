"""cnet.eval_artifacts: the picture and the error summary that every evaluation leaves in a run."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

from cnet.data.coco import CocoDetection
from cnet.eval_artifacts import EvaluationArtifacts
from cnet.evaluation.drawing import COLOURS


class _Tracker:
    def __init__(self) -> None:
        self.artifacts: list[tuple[Path, str | None]] = []
        self.images: list[tuple[Image.Image, str, int]] = []

    def log_artifact(self, path, artifact_path=None) -> None:
        self.artifacts.append((Path(path), artifact_path))

    def log_image(self, image, key, step) -> None:
        self.images.append((image, key, step))


class _Predictor:
    def variants(self) -> list[str]:
        return [""]


class _Trainer:
    def __init__(self, eval_sets: dict[str, CocoDetection]) -> None:
        self.predictor, self.eval_sets = _Predictor(), eval_sets


def _split(root: Path, name: str) -> CocoDetection:
    return CocoDetection(root / "images", root / f"instances_{name}.json", lambda *a: a)


def test_each_evaluation_draws_the_same_first_images_and_summarises_the_categories(synthetic_root, tmp_path):
    val_sets = {"bbox": _split(synthetic_root, "val"), "crowd_bbox": _split(synthetic_root, "val_crowd")}
    first = val_sets["bbox"].ids[0]
    gt = [a for a in val_sets["bbox"].coco.imgToAnns[first] if not a["iscrowd"]]
    x, y, w, h = gt[0]["bbox"]
    records = {  # one true positive and one box far from everything, called a mispair here to see it drawn
        "bbox": [
            {"image_id": first, "category_id": gt[0]["category_id"], "bbox": [x, y, w, h], "score": 0.9, "error": "tp"},
            {"image_id": first, "category_id": gt[0]["category_id"], "bbox": [2, 2, 20, 20], "score": 0.8,
             "error": "mispair"},
        ],
        "crowd_bbox": [],
    }  # fmt: skip
    for tag, recs in records.items():
        (tmp_path / f"mispairs_{tag}.json").write_text(json.dumps(recs))
    tracker = _Tracker()
    callback = EvaluationArtifacts(tracker, tmp_path, num_images=3)
    callback.on_evaluate(_Trainer(val_sets), 4, {"bbox_AP": 0.5, "crowd_bbox_AP": 0.0})

    folder = tmp_path / "eval" / "epoch_0004"
    assert {p.name for p, _ in tracker.artifacts} == {"detections.png", "mispair_summary.md", "mispair_summary.csv"}
    assert all(dest == "eval/epoch_0004" and p.parent == folder for p, dest in tracker.artifacts)
    ((image, key, step),) = tracker.images
    assert (key, step) == ("detections", 4)
    with Image.open(folder / "detections.png") as png:
        pixels = np.asarray(png.convert("RGB"))
    assert pixels.shape[:2] == (image.height, image.width)
    panel_w = image.width // 3  # three images a row, the val row above the crowd row
    assert image.height > 2 * 320  # two rows of panels scaled to >= 320 px
    red = np.all(pixels == COLOURS["mispair"], axis=-1)
    rows, cols = np.nonzero(red)
    assert len(rows) and cols.max() < panel_w and rows.max() < image.height // 2  # only in the first val panel

    table = list(csv.DictReader(io.StringIO((folder / "mispair_summary.csv").read_text())))
    by_key = {(r["split"], r["category"]): r for r in table}
    assert len(table) == 2 * 6
    assert (by_key[("bbox", "tp")]["all"], by_key[("bbox", "tp")]["dAP"]) == ("1", "")
    assert (by_key[("bbox", "mispair")]["shown"], by_key[("bbox", "mispair")]["all"]) == ("1", "1")
    assert by_key[("crowd_bbox", "mispair")]["all"] == "0" and float(by_key[("crowd_bbox", "mispair")]["dAP"]) == 0
    text = (folder / "mispair_summary.md").read_text()
    assert text.startswith("# Error categories at epoch 4") and "## crowd_bbox" in text
    assert "| mispair | 1 | 1 |" in text
