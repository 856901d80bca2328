"""Matching-only evaluation: ground-truth corners, predicted matching (after CenterNet's oracle study).

The predicted corner heatmaps and offsets are replaced by the ground truth's, so every true corner
is found at its exact position and AP measures only how well the strategy pairs them. The matching
strategy's own maps (shifts, embeddings, centre heatmaps) stay as predicted.
"""
from __future__ import annotations

import torch

from cnet.targets import encode_corners
from cnet.types import GroundTruth, Outputs

_EPS = 1e-6  # sigmoid(logit(1 - eps)) keeps the peaks at ~1 without infinities


def mirror(gt: GroundTruth, width: int) -> GroundTruth:
    """Ground truth of the horizontally flipped input (x' = W - x)."""
    b = gt.boxes
    return GroundTruth(torch.stack([width - b[:, 2], b[:, 1], width - b[:, 0], b[:, 3]], dim=-1), gt.labels)


class CornerOracle:
    """``oracle(outputs, targets) -> outputs`` with ground-truth ``tl/br_heat`` and ``tl/br_off``."""

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes

    @torch.no_grad()
    def __call__(self, outputs: Outputs, targets: list[GroundTruth]) -> Outputs:
        if outputs.flipped:  # flip TTA: the second half of the batch saw the mirrored images
            targets = list(targets) + [mirror(t, outputs.input_size[1]) for t in targets]
        device = outputs.levels[-1]["tl_heat"].device
        corners = encode_corners([t.to(device) for t in targets], outputs.grid, self.num_classes)
        level = dict(outputs.levels[-1])
        level["tl_heat"] = torch.logit(corners.tl_heat.clamp(_EPS, 1 - _EPS))
        level["br_heat"] = torch.logit(corners.br_heat.clamp(_EPS, 1 - _EPS))
        level["tl_off"], level["br_off"] = corners.tl_off, corners.br_off
        return Outputs([level], outputs.input_size, outputs.flipped)
