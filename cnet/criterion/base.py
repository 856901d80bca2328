"""The training criterion: ``criterion(outputs, targets) -> dict of named, unweighted losses``.

Shared terms (Eq. 9): ``det`` (corner focal loss) and ``off`` (sub-cell offsets). The detector's
pluggable parts (adaption, matching, ...) add their own terms (``guiding``, ``centripetal``, ``pull``,
``mask``, ...). A term measured once per corner comes back from its part as a ``tl_<term>`` /
``br_<term>`` pair; the convention (a subclass: :class:`~cnet.criterion.corner_sum.CornerSum`, the
paper's, or :class:`~cnet.criterion.corner_mean.CornerMean`, mmdetection's) joins the two into
``<term>``. Terms not split by corner (pull, push, mask, the centre heatmap) pass through as they
are. Every term is summed over the hourglass stacks (intermediate supervision); ``weight_dict``
says how the engine weights them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import defaultdict
from collections.abc import Mapping

from torch import Tensor

from cnet.losses import corner_focal_loss, masked_smooth_l1
from cnet.parts import Part
from cnet.targets import encode_corners
from cnet.types import GroundTruth, Outputs


class Criterion(ABC):
    """Encodes targets from ground truth and computes every loss term.

    Args:
        num_classes: heatmap channels.
        parts: the detector's pluggable parts by name (``model.parts``: adaption, matching, ...);
            only their parameter-free ``encode_targets``/``loss``/``loss_weights`` are used here.
        det_weight, off_weight: weights of the shared terms (paper: 1 and 1).
        min_overlap: IoU used to size the Gaussian around each corner (CornerNet: 0.3).

    Raises ValueError when two parts (or a part and a shared term) name the same loss term.
    """

    def __init__(
        self,
        num_classes: int,
        parts: Mapping[str, Part],
        det_weight: float = 1.0,
        off_weight: float = 1.0,
        min_overlap: float = 0.3,
    ) -> None:
        self.num_classes = num_classes
        self.parts = dict(parts)
        self.min_overlap = min_overlap
        self.weight_dict = {"det": det_weight, "off": off_weight}
        self.part_of: dict[str, str] = {}  # loss term -> the part that owns it
        for name, part in self.parts.items():
            for term, weight in part.loss_weights.items():
                if term in self.weight_dict:
                    owner = f"part {self.part_of[term]!r}" if term in self.part_of else "the shared corner terms"
                    raise ValueError(f"loss term {term!r} of part {name!r} is already named by {owner}; rename one")
                self.part_of[term] = name
                self.weight_dict[term] = weight

    @abstractmethod
    def join_corners(self, tl: Tensor, br: Tensor) -> Tensor:
        """One term from its top-left and bottom-right halves (scalars)."""

    def __call__(self, outputs: Outputs, targets: list[GroundTruth]) -> dict[str, Tensor]:
        grid = outputs.grid
        corners = encode_corners(targets, grid, self.num_classes, self.min_overlap)
        part_targets = {name: part.encode_targets(corners, grid) for name, part in self.parts.items()}
        losses: dict[str, Tensor] = defaultdict(int)  # type: ignore[arg-type]
        for level in outputs.levels:
            terms = {
                "tl_det": corner_focal_loss(level["tl_heat"], corners.tl_heat),
                "br_det": corner_focal_loss(level["br_heat"], corners.br_heat),
                "tl_off": masked_smooth_l1(level["tl_off"], corners.tl_off, corners.tl_mask, min_norm=1),
                "br_off": masked_smooth_l1(level["br_off"], corners.br_off, corners.br_mask, min_norm=1),
            }
            for name, part in self.parts.items():
                terms |= part.loss(level, part_targets[name], corners)
            for k, v in self.join(terms).items():
                losses[k] = losses[k] + v
        return dict(losses)

    def join(self, terms: dict[str, Tensor]) -> dict[str, Tensor]:
        """``{tl_x, br_x, y}`` -> ``{x: join_corners(tl_x, br_x), y}`` for every named term."""
        out: dict[str, Tensor] = {}
        for term in self.weight_dict:
            if term in terms:
                out[term] = terms[term]
            elif f"tl_{term}" in terms and f"br_{term}" in terms:
                out[term] = self.join_corners(terms[f"tl_{term}"], terms[f"br_{term}"])
        unknown = set(terms) - set(out) - {f"{c}_{t}" for t in out for c in ("tl", "br")}
        if unknown:
            raise KeyError(f"loss terms {sorted(unknown)} have no weight: add them to the part's loss_weights")
        return out

    def set_epoch(self, epoch: int) -> None:
        """Tell every part which (0-based) epoch is about to be trained (e.g. a mask head that
        starts after the detector's pre-training; the others ignore it)."""
        for part in self.parts.values():
            part.set_epoch(epoch)

    def total(self, losses: dict[str, Tensor]) -> Tensor:
        """Weighted sum of the named terms (what the trainer back-propagates)."""
        return sum(self.weight_dict[k] * v for k, v in losses.items())  # type: ignore[return-value]
