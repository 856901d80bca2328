"""The interface of a feature-adaption module (paper §3.2, Table 5).

An adaption module turns the corner-pooled features into the features the matching strategy
predicts from. Like a matching strategy it may own prediction layers, targets and loss terms
(the cross-star module's guiding shift, RoI convolution's box size); the criterion calls them
through this interface without knowing which module is active.
"""

from __future__ import annotations

from torch import Tensor, nn

from cnet.targets import CornerTargets
from cnet.types import Grid


class Adaption(nn.Module):
    """Base class; one instance per head level, handling both corners.

    ``changes_features`` is False only for the identity, so the detector can refuse to put a
    real adaption in front of a matching strategy that does not read adapted features.
    """

    changes_features: bool = True
    idle_in_some_steps: bool = False  # every training step reaches every parameter
    uses_masks: bool = False  # trains on boxes alone

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.in_channels = in_channels

    @property
    def loss_weights(self) -> dict[str, float]:
        return {}

    def set_epoch(self, epoch: int) -> None:
        """The 0-based epoch about to be trained (``Criterion.set_epoch``): no module depends on it."""

    def forward(self, tl_pool: Tensor, br_pool: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """Adapted ``(tl, br)`` features, each [B, C, H, W] like the input, plus extra maps."""
        raise NotImplementedError

    def encode_targets(self, corners: CornerTargets, grid: Grid) -> dict[str, Tensor]:
        """Targets of this module's own predictions (none by default)."""
        return {}

    def loss(self, pred: dict[str, Tensor], targets: dict[str, Tensor], corners: CornerTargets) -> dict[str, Tensor]:
        """Unweighted loss terms keyed like ``loss_weights``, or ``tl_<term>``/``br_<term>`` per corner
        (the criterion joins the two); none by default."""
        return {}
