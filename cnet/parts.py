"""Small building blocks shared by the corner head and its pluggable parts, and the parts' contract."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

from torch import Tensor, nn

from cnet.targets import CornerTargets
from cnet.types import Grid


def kp_layer(in_channels: int, out_channels: int, feat_channels: int | None = None) -> nn.Sequential:
    """CornerNet's prediction layer: conv3x3 (with bias) -> ReLU -> conv1x1 (with bias)."""
    feat = feat_channels or in_channels
    return nn.Sequential(
        nn.Conv2d(in_channels, feat, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(feat, out_channels, 1),
    )


def init_heatmap_bias(layer: nn.Sequential, prior_prob: float = 0.1) -> None:
    """Bias of the last conv so every cell starts at sigmoid = prior_prob (-2.1972 for 0.1)."""
    last = layer[-1]
    assert isinstance(last, nn.Conv2d) and last.bias is not None
    nn.init.constant_(last.bias, -math.log((1 - prior_prob) / prior_prob))


@dataclass
class CornerFeatures:
    """Features of one head level, handed to the matching strategy.

    backbone:        [B, C, H, W] the hourglass output of this level
    tl_pool/br_pool: [B, C, H, W] corner-pooled features
    tl/br:           [B, C, H, W] features after the adaption module (== pool when adaption=none)
    """

    backbone: Tensor
    tl_pool: Tensor
    br_pool: Tensor
    tl: Tensor
    br: Tensor


class Part(Protocol):
    """What the criterion needs from a pluggable part of the detector (matching, adaption, ...).

    ``loss`` returns unweighted scalar terms keyed like ``loss_weights``; a term measured once per
    corner comes as ``tl_<term>`` and ``br_<term>``, which the criterion joins by its convention
    (sum: the paper; mean: mmdetection). Term names must be unique across the parts of one
    detector (the criterion refuses a collision).
    ``idle_in_some_steps``: some training steps leave the part's parameters without a gradient
    (a head that starts late), so data-parallel training must look for unused parameters.
    ``uses_masks``: training needs ``GroundTruth.masks`` (the run has the training set decode the
    segmentations). ``set_epoch`` is called before every training epoch (0-based) through
    ``Criterion.set_epoch``; parts that do not depend on the epoch ignore it.
    """

    idle_in_some_steps: bool
    uses_masks: bool

    @property
    def loss_weights(self) -> dict[str, float]: ...

    def set_epoch(self, epoch: int) -> None: ...

    def encode_targets(self, corners: CornerTargets, grid: Grid) -> dict[str, Tensor]: ...

    def loss(
        self, pred: dict[str, Tensor], targets: dict[str, Tensor], corners: CornerTargets
    ) -> dict[str, Tensor]: ...
