"""Training criteria: the base :class:`Criterion` and one class per corner convention."""

from cnet.criterion.base import Criterion
from cnet.criterion.corner_mean import CornerMean
from cnet.criterion.corner_sum import CornerSum

__all__ = ["CornerMean", "CornerSum", "Criterion"]
