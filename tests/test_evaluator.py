"""COCO evaluation of a predictor over loaders (cnet.evaluator): results files, box and mask figures,
the data-parallel shards put back in dataset order."""

from __future__ import annotations

import contextlib
import io
import json
import types

import pytest
import torch
from pycocotools.coco import COCO

from cnet.evaluator import _interleave, evaluate, segm_tag
from cnet.masks import encode_rle
from cnet.types import Detections

BOX = [10.0, 8.0, 40.0, 30.0]  # xyxy, original pixels of a 40 x 50 image


def rectangle() -> torch.Tensor:
    mask = torch.zeros(1, 40, 50, dtype=torch.bool)
    mask[0, 8:30, 10:40] = True
    return mask


def ground_truth() -> COCO:
    """Image 1 with one object of category 5: the rectangle ``BOX``, its mask an RLE."""
    coco = COCO()
    coco.dataset = {
        "images": [{"id": 1, "width": 50, "height": 40}],
        "categories": [{"id": 5, "name": "thing"}],
        "annotations": [
            {
                "id": 1, "image_id": 1, "category_id": 5, "iscrowd": 0, "area": 660.0,
                "bbox": [10.0, 8.0, 30.0, 22.0], "segmentation": encode_rle(rectangle())[0],
            }
        ],
    }  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


class StubPredictor:
    """Fixed detections of image 1 per variant (contiguous label 0 = category 5)."""

    def __init__(self, variants: dict[str, Detections], bootstrap: int = 0) -> None:
        self.dets, self.bootstrap = variants, bootstrap

    def variants(self) -> list[str]:
        return list(self.dets)

    def predict(self, loader, device):
        return [1], {v: [d] for v, d in self.dets.items()}


def loader() -> types.SimpleNamespace:
    return types.SimpleNamespace(dataset=types.SimpleNamespace(coco=ground_truth(), label_to_cat_id=[5]))


def detection(masks: bool) -> Detections:
    return Detections(
        torch.tensor([BOX]), torch.ones(1), torch.zeros(1, dtype=torch.int64),
        segmentations=encode_rle(rectangle()) if masks else None,
    )  # fmt: skip


def test_masks_add_the_segm_figures_beside_the_box_ones(tmp_path, capsys):
    predictor = StubPredictor({"": detection(masks=True), "oracle_": detection(masks=False)})
    metrics = evaluate(predictor, {"bbox": loader()}, torch.device("cpu"), tmp_path, "epoch 3")  # type: ignore[arg-type]
    assert metrics["bbox_AP"] == pytest.approx(1.0) and metrics["segm_AP"] == pytest.approx(1.0)
    assert metrics["oracle_bbox_AP"] == pytest.approx(1.0) and "oracle_segm_AP" not in metrics
    (result,) = json.loads((tmp_path / "results_bbox.json").read_text())
    assert result["bbox"] == [10.0, 8.0, 30.0, 22.0] and result["segmentation"]["size"] == [40, 50]
    assert "segmentation" not in json.loads((tmp_path / "results_oracle_bbox.json").read_text())[0]
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[")]
    assert printed == ["[bbox] epoch 3", "[segm] epoch 3", "[oracle_bbox] epoch 3"]  # variant-major


def test_bootstrap_adds_the_ap_interval_of_each_evaluation(tmp_path, capsys):
    """Two images with one object each, the detector finds image 1's. A resample draws image 1
    twice (AP 1, probability 1/4), once (recall 1/2: 51 of COCO's 101 recall thresholds, AP 51/101,
    probability 1/2) or never (AP 0, 1/4): the 95 % interval of 1000 resamples is [0, 1]."""
    coco = ground_truth()
    coco.dataset["images"].append({"id": 2, "width": 50, "height": 40})
    coco.dataset["annotations"].append(coco.dataset["annotations"][0] | {"id": 2, "image_id": 2})
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    two = types.SimpleNamespace(dataset=types.SimpleNamespace(coco=coco, label_to_cat_id=[5]))
    predictor = StubPredictor({"": detection(masks=False)}, bootstrap=1000)
    metrics = evaluate(predictor, {"bbox": two}, torch.device("cpu"), tmp_path)  # type: ignore[arg-type]
    assert metrics["bbox_AP"] == pytest.approx(51 / 101)
    assert (metrics["bbox_AP_ci_low"], metrics["bbox_AP_ci_high"]) == (0.0, pytest.approx(1.0))
    assert "AP 95% interval [0.000, 1.000]" in capsys.readouterr().out
    off = evaluate(StubPredictor({"": detection(masks=False)}), {"bbox": two}, torch.device("cpu"))  # type: ignore[arg-type]
    assert "bbox_AP_ci_low" not in off and off["bbox_AP"] == metrics["bbox_AP"]


def test_segm_tag_names():
    assert segm_tag("bbox") == "segm" and segm_tag("crowd_bbox") == "crowd_segm"
    assert segm_tag("oracle_bbox") == "oracle_segm" and segm_tag("val") == "val_segm"


def test_interleave_undoes_the_shard_sampler():
    # 5 items on 2 ranks: rank 0 holds items 0, 2, 4 and rank 1 items 1, 3
    assert _interleave([["a", "c", "e"], ["b", "d"]]) == ["a", "b", "c", "d", "e"]
    assert _interleave([[0, 1, 2]]) == [0, 1, 2]
