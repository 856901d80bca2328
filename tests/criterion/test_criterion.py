"""The criterion wires each map to its own targets: perfect maps give ~0 loss, levels add up."""

from __future__ import annotations

import pytest
import torch

from cnet.adaption.none import NoAdaption
from cnet.criterion import CornerSum
from cnet.matching.centripetal import Centripetal
from cnet.ops import heat_to_logit
from cnet.targets import encode_corners
from cnet.types import Grid, GroundTruth, Outputs

GRID = Grid(64, 64, 16, 16)
GT = [GroundTruth(torch.tensor([[6.0, 10.0, 30.0, 50.0], [34.0, 4.0, 58.0, 22.0]]), torch.tensor([0, 1]))]


def perfect_level(matching: Centripetal) -> dict[str, torch.Tensor]:
    corners = encode_corners(GT, GRID, 2)
    level = {
        "tl_heat": heat_to_logit(corners.tl_heat),
        "br_heat": heat_to_logit(corners.br_heat),
        "tl_off": corners.tl_off,
        "br_off": corners.br_off,
    }
    return level | matching.targets_as_predictions(matching.encode_targets(corners, GRID), corners)


def test_perfect_maps_give_near_zero_losses_and_swapped_heatmaps_do_not():
    matching = Centripetal(8, 2)
    criterion = CornerSum(2, {"matching": matching})
    level = perfect_level(matching)
    losses = criterion(Outputs([level], (64, 64)), GT)
    assert set(losses) == {"det", "off", "centripetal"}
    # the focal loss of a perfect Gaussian is small but not 0 (the peak's neighbours count a little)
    assert float(losses["det"]) < 0.05 and float(losses["off"]) < 1e-6 and float(losses["centripetal"]) < 1e-6
    swapped = level | {"tl_heat": level["br_heat"], "br_heat": level["tl_heat"]}
    assert float(criterion(Outputs([swapped], (64, 64)), GT)["det"]) > 1.0
    for key in ("tl_off", "br_off"):  # each offset map is checked against its own corner's targets
        wrong = level | {key: level[key] + 0.5}
        assert float(criterion(Outputs([wrong], (64, 64)), GT)["off"]) > 0.05, key


def test_terms_add_over_levels_and_total_weights_them():
    matching = Centripetal(8, 2)
    criterion = CornerSum(2, {"matching": matching}, det_weight=2.0, off_weight=3.0)
    level = perfect_level(matching) | {"tl_off": torch.zeros(1, 2, 16, 16)}
    one = criterion(Outputs([level], (64, 64)), GT)
    two = criterion(Outputs([level, level], (64, 64)), GT)
    for k in one:
        assert float(two[k]) == pytest.approx(2 * float(one[k]), rel=1e-6), k
    want = 2.0 * one["det"] + 3.0 * one["off"] + 1.0 * one["centripetal"]
    assert float(criterion.total(one)) == pytest.approx(float(want), rel=1e-6)


def test_two_parts_naming_one_term_are_refused():
    with pytest.raises(ValueError, match="centripetal"):
        CornerSum(2, {"matching": Centripetal(8, 2), "other": Centripetal(8, 2)})


class EpochPart(Centripetal):
    """A part that records the epochs it is told."""

    def __init__(self) -> None:
        super().__init__(8, 2)
        self.epochs: list[int] = []

    def set_epoch(self, epoch: int) -> None:
        self.epochs.append(epoch)


def test_set_epoch_reaches_every_part_and_the_bases_ignore_it():
    part = EpochPart()
    criterion = CornerSum(2, {"adaption": NoAdaption(8), "matching": part})
    criterion.set_epoch(3)
    assert part.epochs == [3]
    assert not NoAdaption(8).uses_masks and not Centripetal(8, 2).uses_masks  # box-only parts
