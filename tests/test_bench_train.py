"""The training benchmark runs end to end at a tiny scale: 1 and 2 processes, and the model section."""

from __future__ import annotations

import json
import math

import pytest

from cnet.tools.bench_train import main


@pytest.mark.slow
def test_cpu_process_scaling_and_model_section(tmp_path):
    tiny = ["--overrides", "backbone=tiny", "adaption=none", "--size", "63", "--batch", "2"]
    result = main(["--device", "cpu", "--model", *tiny, "--steps", "2", "--warmup", "1",
                   "--test-h", "63", "--test-w", "127", "--out", str(tmp_path)])  # fmt: skip
    assert [r["processes"] for r in result["cpu"]] == [1, 2]
    assert all(r["images_per_s"] > 0 for r in result["cpu"])
    train = {r["precision"]: r for r in result["model"]["train"]}
    assert train.keys() == {"bf16", "fp32"}
    # FLOPs of one step are counted (forward + backward), and do not depend on the precision
    assert train["fp32"]["tflop_per_step"] > 0
    assert math.isclose(train["bf16"]["tflop_per_step"], train["fp32"]["tflop_per_step"], rel_tol=1e-6)
    assert result["model"]["inference"]["fp32"]["input"] == [63, 127]
    saved = json.loads((tmp_path / "bench_train.json").read_text())
    assert saved["cpu"][1]["batch_per_process"] == 2
    md = (tmp_path / "bench_train.md").read_text()
    assert "| 2 | 2 |" in md and "| fp32 | 2 |" in md
    # the cost of DDP's unused-parameter search, measured on the mask-head model
    assert [r["find_unused_parameters"] for r in result["find_unused"]] == [False, True]
    assert all(r["step_s"] > 0 for r in result["find_unused"])
    assert "| True |" in md and "mask_head=centripetal_mask" in md
