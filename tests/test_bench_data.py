"""The data-pipeline benchmark runs on a tiny COCO-format folder and writes its report files
(structure only: no timing assertions)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cnet.tools.bench_data import main


def _coco_folder(root: Path, n: int = 3) -> None:
    """n JPEGs (64 x 80) with one box each, as a COCO-format split under root/imgs + root/ann.json."""
    (root / "imgs").mkdir(parents=True)
    rng = np.random.default_rng(0)
    images, anns = [], []
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)).save(root / "imgs" / f"{i}.jpg")
        images.append({"id": i + 1, "file_name": f"{i}.jpg", "height": 64, "width": 80})
        anns.append({"id": i + 1, "image_id": i + 1, "category_id": 1, "bbox": [10, 12, 30, 20], "area": 600,
                     "iscrowd": 0})  # fmt: skip
    doc = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "thing"}]}
    (root / "ann.json").write_text(json.dumps(doc))


def test_reports_decode_and_pipeline_rates(tmp_path: Path) -> None:
    _coco_folder(tmp_path / "coco")
    threads = torch.get_num_threads()
    args = ["--root", str(tmp_path / "coco"), "--images", "imgs", "--ann", "ann.json", "--crop", "63"]
    result = main([*args, "--limit", "2", "--passes", "3", "--warmup", "1", "--out", str(tmp_path / "out")])
    assert torch.get_num_threads() == threads  # the caller's setting is restored
    saved = json.loads((tmp_path / "out" / "bench_data.json").read_text())
    assert saved == json.loads(json.dumps(result))
    m = saved["measure"]
    assert m["images"] == 2 and saved["crop"] == 63 and saved["passes"] == 3
    for stage in ("decode", "pipeline"):
        assert set(m[stage]) == {"images_per_s", "images_per_s_cpu", "ms_per_image", "pass_wall_s", "pass_cpu_s"}
        assert len(m[stage]["pass_wall_s"]) == 3 and m[stage]["images_per_s"] > 0
    assert m["pipeline_over_decode"] > 0 and m["pipeline_over_decode_cpu"] > 0
    env = saved["environment"]
    assert {"load_average_start", "load_average_end", "torch", "opencv", "pillow", "cpus"} <= set(env)
    md = (tmp_path / "out" / "bench_data.md").read_text()
    assert "| JPEG decode only |" in md and "| full `__getitem__` (decode + TrainTransform) |" in md
    assert "Full pipeline / decode-only time:" in md and "crop 63" in md
    assert not list((tmp_path / "out").glob(".*.tmp"))  # the atomic writes left no temporary file


def test_missing_folder_is_one_clear_line(tmp_path: Path) -> None:
    missing = tmp_path / "no_coco"
    with pytest.raises(SystemExit) as info:
        main(["--root", str(missing), "--out", str(tmp_path / "out")])
    message = str(info.value.code)
    assert str(missing) in message and "--root" in message and "data.root" in message
    assert "COCO-format" in message and "\n" not in message
    assert not (tmp_path / "out").exists()
