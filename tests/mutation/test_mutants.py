"""The curated mutation list stays valid: every snippet is found exactly once in the current source."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from mutants import MUTANTS, Mutant

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("m", MUTANTS, ids=lambda m: m.name)
def test_old_snippet_occurs_exactly_once(m: Mutant):
    text = (ROOT / m.file).read_text()
    assert text.count(m.old) == 1, f"{m.name}: update tests/mutation/mutants.py after the refactor of {m.file}"
    assert m.new != m.old  # a real change (deleting a whole line is one)
    for t in m.tests:
        assert (ROOT / t).is_file(), f"{m.name}: targeted test {t} does not exist"


def test_names_are_unique_and_components_are_covered():
    assert not [n for n, c in Counter(m.name for m in MUTANTS).items() if c > 1]
    assert len(MUTANTS) >= 25
    components = " ".join(m.component for m in MUTANTS)
    for part in ("data transforms", "targets", "ae1d", "ae2d", "center_heatmap", "center_regression", "centripetal"):
        assert part in components, part
    for part in ("none", "cross_star", "dcn", "roi_conv", "criterion", "postprocess", "NMS", "TTA", "schedule"):
        assert part in components, part
    for part in ("checkpoint", "tracking", "report", "mask_head", "gradient paths", "multi-scale views", "sampler"):
        assert part in components, part
    for part in ("accumulation", "report column selection"):
        assert part in components, part
