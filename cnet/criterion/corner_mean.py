"""mmdetection's convention: a per-corner term is the mean of its two corners."""

from __future__ import annotations

from torch import Tensor

from cnet.criterion.base import Criterion


class CornerMean(Criterion):
    """``L = (L_tl + L_br) / 2`` for det, off, guiding, centripetal, ... (mmdetection's ``CornerHead``
    and ``CentripetalHead`` ``loss_by_feat_single``); the AE pull/push are not halved there either,
    so against detection they weigh twice what they weigh in the paper's :class:`CornerSum`."""

    def join_corners(self, tl: Tensor, br: Tensor) -> Tensor:
        return (tl + br) / 2
