"""The interface of a corner-matching strategy (the ``matching`` Hydra group).

A strategy owns everything that decides which top-left and bottom-right corners form one box:
its prediction layers, its target encoding, its loss terms and its pairing rule. The detector,
the criterion and the post-processor call only the methods below, so adding a strategy never
touches them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor, nn

from cnet.parts import CornerFeatures
from cnet.targets import CornerTargets
from cnet.types import Corners, Grid


class Matching(nn.Module, ABC):
    """Base class of corner-matching strategies; one instance per head level.

    ``accepts_adapted_features`` says whether the strategy predicts from the adapted corner
    feature, i.e. whether a feature-adaption module in front of it makes sense; ``dense_terms``
    names its heatmap-like loss terms.
    """

    accepts_adapted_features: bool = True
    # loss terms supervising every cell (heatmaps): positive even without objects, unlike the
    # regression/embedding terms, which are exactly 0 then
    dense_terms: tuple[str, ...] = ()
    idle_in_some_steps: bool = False  # every training step reaches every parameter
    uses_masks: bool = False  # trains on boxes alone

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.num_classes = num_classes

    @property
    def loss_weights(self) -> dict[str, float]:
        """Weight of each loss term this strategy returns (keys equal those of ``loss``)."""
        return {}

    def set_epoch(self, epoch: int) -> None:
        """The 0-based epoch about to be trained (``Criterion.set_epoch``): no strategy depends on it."""

    @abstractmethod
    def forward(self, feats: CornerFeatures) -> dict[str, Tensor]:
        """Strategy-specific dense maps, e.g. ``{"tl_cs": [B, 2, H, W], "br_cs": [B, 2, H, W]}``."""

    @abstractmethod
    def encode_targets(self, corners: CornerTargets, grid: Grid) -> dict[str, Tensor]:
        """Targets for this strategy's maps, from the shared corner targets (pure, no grad)."""

    @abstractmethod
    def loss(self, pred: dict[str, Tensor], targets: dict[str, Tensor], corners: CornerTargets) -> dict[str, Tensor]:
        """Unweighted loss terms (scalars) keyed like ``loss_weights``, or ``tl_<term>``/``br_<term>``
        for a term measured per corner (the criterion joins the two)."""

    @abstractmethod
    def targets_as_predictions(self, targets: dict[str, Tensor], corners: CornerTargets) -> dict[str, Tensor]:
        """Perfect predictions built from the targets (round-trip tests, oracle studies)."""

    @abstractmethod
    def pair(self, pred: dict[str, Tensor], tl: Corners, br: Corners, grid: Grid) -> Tensor:
        """Score all K x K corner pairs.

        Returns ``scores`` [B, K, K] (tl on dim 1, br on dim 2) in [0, 1], with -1 for rejected pairs.
        """

    @staticmethod
    def geometric_validity(tl: Corners, br: Corners) -> Tensor:
        """[B, K, K] True where classes agree and br lies strictly right of and below tl."""
        same_class = tl.classes[:, :, None] == br.classes[:, None, :]
        ordered = (tl.xs[:, :, None] < br.xs[:, None, :]) & (tl.ys[:, :, None] < br.ys[:, None, :])
        return same_class & ordered

    @staticmethod
    def mean_score(tl: Corners, br: Corners, geometric: bool) -> Tensor:
        """[B, K, K] geometric (paper) or arithmetic (CornerNet/mmdet) mean of corner scores."""
        if geometric:
            return torch.sqrt(tl.scores[:, :, None] * br.scores[:, None, :])
        return (tl.scores[:, :, None] + br.scores[:, None, :]) / 2
