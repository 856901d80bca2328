"""The benchmark script runs end to end at a tiny scale and reports every option with ratios."""

from __future__ import annotations

import json

import pytest

from cnet.compose import group_options as options
from cnet.tools.bench import main, with_ratios


def test_ratios_are_to_the_reference_of_the_same_group():
    rows = [
        {"m": "a", "b": 1, "ms": 2.0},
        {"m": "ref", "b": 1, "ms": 4.0},
        {"m": "a", "b": 8, "ms": 3.0},
        {"m": "ref", "b": 8, "ms": 1.5},
        {"m": "a", "b": 2, "ms": 1.0},  # no reference at batch 2: no ratio
    ]
    out = with_ratios(rows, "m", "ms", "ref", "b")
    assert [r.get("ratio") for r in out] == [0.5, 1.0, 2.0, 1.0, None]
    assert [r["ratio"] for r in with_ratios(rows[:2], "m", "ms", "ref")] == [0.5, 1.0]


def test_bench_reports_every_option(tmp_path):
    out = tmp_path / "bench"
    main(
        ["--repeats", "1", "--size", "12", "--channels", "8", "--adaption-batch", "1", "--out", str(out)]
        + ["--deform-shapes", "1x4x6x5,2x3x4x4", "--bootstrap-images", "40", "--bootstrap-resamples", "20"]
    )
    result = json.loads((tmp_path / "bench.json").read_text())
    assert {r["matching"] for r in result["decode"]} == set(options("matching"))
    assert {r["batch"] for r in result["decode"]} == {1, 8}
    assert {r["adaption"] for r in result["adaption"]} == set(options("adaption"))
    assert all(r["ms_per_image"] > 0 for r in result["decode"])
    # each option's ratio is to the reference option at the same batch size
    ref = {r["batch"]: r["ms_per_image"] for r in result["decode"] if r["matching"] == "centripetal"}
    for r in result["decode"]:
        assert r["ratio"] == pytest.approx(r["ms_per_image"] / ref[r["batch"]]), r
    assert "| centripetal | 1 |" in (tmp_path / "bench.md").read_text()
    # deform: plain conv, torchvision, native and fused (on CPU) per shape, ratios to plain conv
    assert {(r["impl"], r["shape"]) for r in result["deform"]} == {
        (i, s) for i in ("conv", "torchvision", "native", "fused") for s in ("1x4x6x5", "2x3x4x4")
    }
    for r in result["deform"]:
        conv = next(c for c in result["deform"] if c["impl"] == "conv" and c["shape"] == r["shape"])
        assert r["ratio"] == pytest.approx(r["ms_fwd_bwd"] / conv["ms_fwd_bwd"]), r
    assert "| native | 1x4x6x5 |" in (tmp_path / "bench.md").read_text()
    assert "| fused | 2x3x4x4 |" in (tmp_path / "bench.md").read_text()
    # bootstrap: 40 images x 100 detections, 20 resamples at once against COCOeval per resample (2 timed)
    boot = result["bootstrap"]
    assert (boot["images"], boot["detections"], boot["resamples"], boot["naive_timed"]) == (40, 4000, 20, 2)
    assert boot["ratio"] == pytest.approx(boot["naive_s"] / boot["resamples_s"])
    assert boot["naive_s"] == pytest.approx(20 * boot["naive_per_resample_s"])
    assert "## Bootstrap of COCO AP (20 resamples; 40 images x 100 detections" in (tmp_path / "bench.md").read_text()


def test_only_one_section_keeps_the_others(tmp_path):
    out = tmp_path / "bench"
    tiny = ["--size", "12", "--channels", "8", "--adaption-batch", "1", "--out", str(out)]
    main(["--repeats", "1", "--only", "decode", *tiny])
    decode = json.loads((tmp_path / "bench.json").read_text())["decode"]
    main(["--repeats", "2", "--only", "deform", "--deform-shapes", "1x2x3x3", *tiny])
    result = json.loads((tmp_path / "bench.json").read_text())
    assert result["decode"] == decode and result["repeats"] == 1 and result["deform_repeats"] == 2
    assert {r["shape"] for r in result["deform"]} == {"1x2x3x3"}
    assert "Only the deform section was re-run" in (tmp_path / "bench.md").read_text()
