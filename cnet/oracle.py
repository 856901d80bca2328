"""Matching-only evaluation: ground-truth corners, predicted matching (after CenterNet's oracle study).

The predicted corner heatmaps and offsets are replaced by the ground truth's, so every true corner
is found at its exact position and AP measures only how well the strategy pairs them. The matching
strategy's own maps (shifts, embeddings, centre heatmaps) stay as predicted.
"""

from __future__ import annotations

import torch

from cnet.ops import heat_to_logit
from cnet.targets import encode_corners
from cnet.types import GroundTruth, Outputs


class CornerOracle:
    """``oracle(outputs, targets) -> outputs`` with ground-truth ``tl/br_heat`` and ``tl/br_off``.

    ``targets`` holds one GroundTruth per batch entry, in the coordinates of the input that entry
    saw (the predictor maps them into each test-time view).
    """

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes

    @torch.no_grad()
    def __call__(self, outputs: Outputs, targets: list[GroundTruth]) -> Outputs:
        device = outputs.levels[-1]["tl_heat"].device
        corners = encode_corners([t.to(device) for t in targets], outputs.grid, self.num_classes)
        level = dict(outputs.levels[-1])
        level["tl_heat"] = heat_to_logit(corners.tl_heat)
        level["br_heat"] = heat_to_logit(corners.br_heat)
        level["tl_off"], level["br_off"] = corners.tl_off, corners.br_off
        return Outputs([level], outputs.input_size, outputs.features)
