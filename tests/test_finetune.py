"""The README's fine-tuning recipe, run as a user runs it (``python train.py``) on CPU: a tiny model
trained on the synthetic set stands in for COCO weights; ``+experiment=finetune init_from=RUN
init_classes=by_name`` on a class subset of coco_tiny beats the same schedule from random weights
on that subset, and MLflow holds both runs with the load report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from mlflow_records import run_records
from PIL import Image

from tests.data.paths import find_coco_tiny
from tests.test_train_cli import run_train, store

COCO_TINY = find_coco_tiny()
pytestmark = pytest.mark.skipif(COCO_TINY is None, reason="coco_tiny not found (../shared/data/coco_tiny)")

SUBSET = ("person",)  # coco_tiny's most frequent class: 40 train / 49 val images
SIDE = 127  # images scaled to this longer side (one 127-px test pad; CPU-sized)
# the stand-in for COCO weights: mmdetection's parts (the ones +experiment=finetune uses) on the synthetic set
SOURCE = [
    "matching=centripetal_mmdet", "criterion=corner_mean", "data.source.num_train=80", "data.source.num_val=8",
    "data.source.num_val_crowd=4", "schedule.epochs=3", "schedule.milestones=[2]", "test.flip=false",
    "trainer.progress=false",
]  # fmt: skip
EPOCHS = 8


def finetune_args(root: Path) -> list[str]:
    """``+experiment=finetune`` (lr, loss, test settings) on the tiny backbone, the CPU trainer and
    a CPU-sized schedule: the same for both runs."""
    return [
        "+experiment=finetune", "backbone=tiny", "trainer=demo", "trainer.batch_size=8", "trainer.progress=false",
        f"data.root={root}", "data.train_transform.crop_size=127", f"schedule.epochs={EPOCHS}",
        f"schedule.milestones=[{EPOCHS - 3}]", "schedule.warmup_iters=2",
    ]  # fmt: skip


def coco_subset(coco: Path, out: Path, names: tuple[str, ...], side: int) -> Path:
    """A COCO-format dataset (official layout) of coco_tiny's images with objects of ``names``, only
    those annotations, every image scaled to ``side`` px on its longer side (boxes with it)."""
    for split in ("train2017", "val2017"):
        data = json.loads((coco / split / "annotations.json").read_text())
        cats = [c for c in data["categories"] if c["name"] in names]
        anns = [a for a in data["annotations"] if a["category_id"] in {c["id"] for c in cats}]
        keep = {a["image_id"] for a in anns if not a.get("iscrowd")}
        images = [im for im in data["images"] if im["id"] in keep]
        (out / split).mkdir(parents=True)
        scale = {}
        for im in images:
            scale[im["id"]] = s = side / max(im["width"], im["height"])
            im["width"], im["height"] = round(im["width"] * s), round(im["height"] * s)
            with Image.open(coco / split / "images" / im["file_name"]) as img:
                small = img.convert("RGB").resize((im["width"], im["height"]), Image.BILINEAR)
            small.save(out / split / im["file_name"])
        for a in anns:
            s = scale.get(a["image_id"], 1.0)
            a["bbox"], a["area"] = [v * s for v in a["bbox"]], a.get("area", 0.0) * s * s
            a.pop("segmentation", None)  # no mask head here; crowd RLEs would not match the scaled image
        body = {"images": images, "annotations": [a for a in anns if a["image_id"] in keep], "categories": cats}
        (out / "annotations").mkdir(exist_ok=True)
        (out / "annotations" / f"instances_{split}.json").write_text(json.dumps(body))
    return out


@pytest.mark.slow  # three short CPU trainings
def test_finetuning_from_a_run_beats_random_weights_on_a_coco_subset(tmp_path):
    root = coco_subset(COCO_TINY, tmp_path / "subset", SUBSET, SIDE)  # type: ignore[arg-type]
    res = run_train([*SOURCE, f"hydra.run.dir={tmp_path}/source"], tmp_path, timeout=3000)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    tuned = run_train(
        [*finetune_args(root), f"init_from={tmp_path}/source", "init_classes=by_name", f"hydra.run.dir={tmp_path}/ft"],
        tmp_path,
        timeout=3000,
    )
    assert tuned.returncode == 0, tuned.stdout[-3000:] + tuned.stderr[-3000:]
    # the load report, printed: all but the class layers loaded (the synthetic shapes name no COCO class)
    assert "100.0% of the model's 282 tensors fit: 278 loaded, 4 class layers (0 of 1 classes copied" in tuned.stdout
    scratch = run_train([*finetune_args(root), f"hydra.run.dir={tmp_path}/scratch"], tmp_path, timeout=3000)
    assert scratch.returncode == 0, scratch.stdout[-3000:] + scratch.stderr[-3000:]

    runs = {Path(r["tags.output_dir"]).name: r for r in run_records(store(tmp_path), "finetune").to_dict("records")}
    assert sorted(runs) == ["ft", "scratch"] and all(r["status"] == "FINISHED" for r in runs.values())
    ft, rand = runs["ft"], runs["scratch"]
    assert ft["params.init_from"] == f"{tmp_path}/source" and rand["params.init_from"] == "null"
    assert ft["params.init_from.loaded"] == "278" and ft["params.init_from.loaded_share"] == "1.0000"
    assert not isinstance(rand.get("params.init_from.loaded"), str)  # no report: nothing was loaded
    client = MlflowClient(tracking_uri=store(tmp_path))
    assert "init_report.json" in {a.path for a in client.list_artifacts(ft["run_id"])}
    # same schedule, lr and data: only the starting weights differ
    assert ft["params.optim.lr"] == rand["params.optim.lr"] == "0.00025"
    figures = {k: (ft[f"metrics.{k}"], rand[f"metrics.{k}"]) for k in ("bbox_AP", "bbox_AP50", "bbox_AR100")}
    figures["train_total"] = (ft["metrics.train_total"], rand["metrics.train_total"])
    print("fine-tuned vs random weights:", {k: f"{a:.3f} vs {b:.3f}" for k, (a, b) in figures.items()})
    assert figures["bbox_AR100"][0] > figures["bbox_AR100"][1]
    assert figures["bbox_AP50"][0] > figures["bbox_AP50"][1]
    assert figures["train_total"][0] < figures["train_total"][1]  # it also fits the subset faster


@pytest.mark.slow  # train.py's start-up, twice
def test_a_bad_init_from_stops_with_one_line_before_tracking(tmp_path):
    from tests.test_mmdet_weights import evil_checkpoint
    from tests.test_train_cli import FAST, runs

    res = run_train([*FAST, f"init_from={tmp_path}/nothing.pt", f"hydra.run.dir={tmp_path}/a"], tmp_path)
    out = res.stdout + res.stderr
    assert res.returncode == 1 and "Traceback" not in out, out[-3000:]
    assert f"InitError: init_from={tmp_path}/nothing.pt: no such checkpoint file or run folder\n" in out
    marker = tmp_path / "ran"
    evil = evil_checkpoint(tmp_path / "evil.pth", marker)
    res = run_train([*FAST, f"init_from={evil}", f"hydra.run.dir={tmp_path}/b"], tmp_path)
    out = res.stdout + res.stderr
    assert res.returncode == 1 and "Traceback" not in out and not marker.exists(), out[-3000:]
    assert f"UnsafeFileError: {evil} was refused: reading it needs posix.system" in out
    assert runs(tmp_path) == [] and not (tmp_path / "b" / "checkpoints").exists()
