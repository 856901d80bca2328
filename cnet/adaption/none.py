"""``adaption=none``: the matching strategy reads the corner-pooled features directly."""

from __future__ import annotations

from torch import Tensor

from cnet.adaption.base import Adaption


class NoAdaption(Adaption):
    """Identity: returns the corner-pooled features unchanged."""

    changes_features = False

    def forward(self, tl_pool: Tensor, br_pool: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        return tl_pool, br_pool, {}
