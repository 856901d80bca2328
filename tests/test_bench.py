"""The benchmark script runs end to end at a tiny scale and reports every option with ratios."""

from __future__ import annotations

import json

from cnet.compose import group_options as options
from cnet.tools.bench import main


def test_bench_reports_every_option(tmp_path):
    out = tmp_path / "bench"
    main(["--repeats", "1", "--size", "12", "--channels", "8", "--adaption-batch", "1", "--out", str(out)])
    result = json.loads((tmp_path / "bench.json").read_text())
    assert {r["matching"] for r in result["decode"]} == set(options("matching"))
    assert {r["batch"] for r in result["decode"]} == {1, 8}
    assert {r["adaption"] for r in result["adaption"]} == set(options("adaption"))
    assert all(r["ms_per_image"] > 0 for r in result["decode"])
    ref = [r for r in result["decode"] if r["matching"] == "centripetal"]
    assert all(r["ratio"] == 1.0 for r in ref)
    assert "| centripetal | 1 |" in (tmp_path / "bench.md").read_text()
