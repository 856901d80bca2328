import json
import subprocess
import sys
from pathlib import Path

import pytest

from cnet.tools.evaluate import main

REPO = Path(__file__).resolve().parents[2]
METRICS = ["AP", "AP50", "AP75", "APS", "APM", "APL", "AR1", "AR10", "AR100", "ARS", "ARM", "ARL"]


@pytest.fixture
def files(tmp_path):
    """GT with 2 images and categories 1 and 4, plus its GT-as-results file (score 1)."""
    anns = [
        {
            "id": 1,
            "image_id": 10,
            "category_id": 4,
            "bbox": [5, 5, 20, 30],
            "area": 600,
            "iscrowd": 0,
            "segmentation": [[5, 5, 25, 5, 25, 35, 5, 35]],
        },
        {
            "id": 2,
            "image_id": 11,
            "category_id": 1,
            "bbox": [50, 40, 100, 120],
            "area": 12000,
            "iscrowd": 0,
            "segmentation": [[50, 40, 150, 40, 150, 160, 50, 160]],
        },
    ]
    gt = {
        "images": [{"id": 10, "width": 200, "height": 200}, {"id": 11, "width": 200, "height": 200}],
        "categories": [{"id": 1, "name": "a"}, {"id": 4, "name": "b"}],
        "annotations": anns,
    }
    results = [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0} for a in anns
    ]
    gt_path, res_path = tmp_path / "gt.json", tmp_path / "res.json"
    gt_path.write_text(json.dumps(gt))
    res_path.write_text(json.dumps(results))
    return gt_path, res_path, results


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "cnet.evaluate", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )


def test_cli_prints_metrics_json(files):
    gt_path, res_path, _ = files
    proc = _cli(gt_path, res_path, "--iou-type", "bbox")
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads(proc.stdout)
    assert list(metrics) == METRICS
    assert metrics["AP"] == pytest.approx(1.0) and metrics["AR100"] == pytest.approx(1.0)


def test_cli_missing_file_is_a_one_line_error(files, tmp_path):
    gt_path, _, _ = files
    missing = tmp_path / "nope.json"
    proc = _cli(gt_path, missing)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert str(missing) in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_cli_rejects_bad_inputs(files, tmp_path, capsys):
    gt_path, res_path, results = files
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("[{not json")
    assert main([str(gt_path), str(bad_json)]) == 2
    assert "not valid JSON" in capsys.readouterr().err

    stray = tmp_path / "stray.json"
    stray.write_text(json.dumps(results + [dict(results[0], image_id=999)]))
    assert main([str(gt_path), str(stray)]) == 2
    err = capsys.readouterr().err
    assert "999" in err and "not in the ground truth" in err

    assert main([str(gt_path), str(res_path), "--iou-type", "segm"]) == 2
    assert "segmentation" in capsys.readouterr().err


def test_cli_segm(files, tmp_path, capsys):
    gt_path, _, _ = files
    gt = json.loads(gt_path.read_text())
    segm = tmp_path / "segm.json"
    segm.write_text(
        json.dumps(
            [
                {
                    "image_id": a["image_id"],
                    "category_id": a["category_id"],
                    "segmentation": a["segmentation"],
                    "score": 1.0,
                }
                for a in gt["annotations"]
            ]
        )
    )
    assert main([str(gt_path), str(segm), "--iou-type", "segm"]) == 0
    assert json.loads(capsys.readouterr().out)["AP"] == pytest.approx(1.0)


@pytest.mark.parametrize(
    "gt, results, message",
    [
        ({"images": [], "annotations": []}, [], "needs 'images', 'annotations' and 'categories'"),
        ([1, 2], [], "needs 'images', 'annotations' and 'categories'"),
        (None, {"image_id": 10}, "must hold a JSON list of detections, got dict"),
        (None, "not json", "not valid JSON"),
        ("missing", [], "ground-truth file not found"),
    ],
    ids=["gt-without-categories", "gt-is-a-list", "results-is-a-dict", "results-bad-json", "gt-missing"],
)
def test_cli_malformed_inputs_exit_2_with_one_line(files, tmp_path, capsys, gt, results, message):
    gt_path, _, _ = files
    if gt == "missing":
        gt_path = tmp_path / "no_gt.json"
    elif gt is not None:
        gt_path = tmp_path / "bad_gt.json"
        gt_path.write_text(json.dumps(gt))
    res_path = tmp_path / "bad_res.json"
    res_path.write_text(results if isinstance(results, str) else json.dumps(results))
    assert main([str(gt_path), str(res_path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and message in captured.err and len(captured.err.strip().splitlines()) == 1
