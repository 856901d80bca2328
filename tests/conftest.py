"""Shared fixtures: paths and small helpers used across the test suite."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
COCO_TINY = ROOT.parent / "shared" / "data" / "coco_tiny"


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(2)
    yield


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    """A small synthetic COCO-format dataset generated once per test session."""
    from cnet.data.synthetic import generate_synthetic

    return generate_synthetic(
        tmp_path_factory.mktemp("synth"), seed=0, num_train=24, num_val=8, num_val_crowd=4, image_size=96
    )
