"""Matching-only evaluation: ground-truth corners + predicted matching maps, through flip TTA."""

from __future__ import annotations

import math

import torch
from test_predictor import IMAGES, check, input_boxes, setup

from cnet.oracle import CornerOracle
from cnet.types import GroundTruth, Outputs


def targets() -> list[GroundTruth]:
    return [GroundTruth(input_boxes(s), torch.tensor(s["labels"])) for s in IMAGES]


def test_oracle_with_flip_finds_every_object_twice_at_its_box():
    # the model's heatmaps are flat (no corner found): only the oracle's ground-truth corners,
    # mirrored for the flipped view, pair up with the predicted shifts of each view
    predictor, images, metas = setup(flip=True, oracle=CornerOracle(2), heat=False)
    out = predictor(images, metas, targets())
    assert set(out) == {"", "oracle_"}
    assert all((d.scores <= 0.01).all() for d in out[""])
    for d, spec in zip(out["oracle_"], IMAGES):
        want = []
        for box, label in zip(spec["boxes"], spec["labels"]):
            want += [(box, 1.0, label), (box, math.exp(-2.0), label)]  # heat 1 - 1e-6 at true corners
        check(d, want)


def test_oracle_replaces_only_corner_heat_and_offsets():
    level = {k: torch.randn(1, 2, 16, 20) for k in ("tl_heat", "br_heat", "tl_off", "br_off", "tl_cs", "br_cs")}
    out = CornerOracle(2)(
        Outputs([level], (64, 80)), [GroundTruth(torch.tensor([[14.0, 13.0, 30.0, 33.0]]), torch.tensor([1]))]
    )
    new = out.levels[-1]
    assert new["tl_cs"] is level["tl_cs"] and new["br_cs"] is level["br_cs"]
    assert torch.sigmoid(new["tl_heat"][0, 1, 3, 3]) > 0.999 and torch.sigmoid(new["br_heat"][0, 1, 8, 7]) > 0.999
    assert torch.sigmoid(new["tl_heat"][0, 0]).max() < 1e-5  # class 0 has no object
    assert new["tl_off"][0, :, 3, 3].tolist() == [0.5, 0.25] and new["br_off"][0, :, 8, 7].tolist() == [0.5, 0.25]
