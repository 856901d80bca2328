"""Associative embedding (ae1d / ae2d): target encoding, pull/push, threshold pairing."""

from __future__ import annotations

import math

import pytest
import torch

from cnet.matching.ae1d import AE1D
from cnet.matching.ae2d import AE2D
from cnet.matching.embedding import (
    embedding_distance,
    embedding_loss,
    encode_embedding_targets,
    perfect_embeddings,
)
from cnet.ops import gather_at
from cnet.targets import encode_corners
from cnet.types import Corners, Grid, GroundTruth

GRID = Grid(64, 64, 16, 16)  # 4 input pixels per cell


def _gt(boxes: list[list[float]]) -> GroundTruth:
    return GroundTruth(torch.tensor(boxes).reshape(-1, 4), torch.zeros(len(boxes), dtype=torch.int64))


def test_encoder_cells_padding_and_oracle_round_trip():
    gts = [
        _gt([[4.0, 8.0, 40.0, 30.0], [20.0, 22.0, 60.0, 62.0], [0.0, 0.0, 12.0, 12.0]]),
        _gt([[8.0, 4.0, 33.0, 50.0]]),
    ]
    corners = encode_corners(gts, GRID, 1)
    t = encode_embedding_targets(corners)
    assert t["ae_tl_inds"].shape == t["ae_br_inds"].shape == t["ae_mask"].shape == (2, 3)
    assert t["ae_mask"].tolist() == [[True, True, True], [True, False, False]]
    # flat index y * W + x of the floor cell, by hand: tl (4, 8) px -> cell (1, 2); br (40, 30) -> (10, 7)
    assert t["ae_tl_inds"][0, 0] == 2 * 16 + 1 and t["ae_br_inds"][0, 0] == 7 * 16 + 10
    # clamped to the map: br (60, 62) px -> cell (15, 15)
    assert t["ae_br_inds"][0, 1] == 15 * 16 + 15
    # oracle maps gathered back at the GT cells give each object's id, 2k
    for dim in (1, 2):
        tl_map, br_map = perfect_embeddings(t, dim, 16, 16)
        assert tl_map.shape == (2, dim, 16, 16)
        for m, inds in ((tl_map, t["ae_tl_inds"]), (br_map, t["ae_br_inds"])):
            emb = gather_at(m, inds)  # [B, M, D]
            ids = torch.arange(3.0).expand(2, 3) * 2
            assert torch.equal(emb[..., 0][t["ae_mask"]], ids[t["ae_mask"]])
            if dim == 2:
                assert (emb[..., 1] == 0).all()
        # zero everywhere else
        assert int((tl_map != 0).sum()) == 2  # object 0 of each image holds 0


def test_empty_batch_has_one_padded_slot_and_zero_losses():
    corners = encode_corners([GroundTruth.empty(), GroundTruth.empty()], GRID, 1)
    t = encode_embedding_targets(corners)
    assert t["ae_mask"].shape == (2, 1) and not t["ae_mask"].any()
    tl = torch.randn(2, 1, 16, 16, requires_grad=True)
    pull, push = embedding_loss(tl, torch.randn(2, 1, 16, 16), t)
    assert pull.item() == 0.0 and push.item() == 0.0
    pull.backward()  # still connected to the predictions
    assert tl.grad is not None and (tl.grad == 0).all()


@pytest.mark.parametrize("dim", [1, 2])
def test_one_object_pulls_but_never_pushes(dim):
    torch.manual_seed(0)
    t = encode_embedding_targets(encode_corners([_gt([[4.0, 8.0, 40.0, 30.0]])], GRID, 1))
    pull, push = embedding_loss(torch.randn(1, dim, 16, 16), torch.randn(1, dim, 16, 16), t)
    assert push.item() == 0.0 and pull.item() > 0


@pytest.mark.parametrize("margin", [1.0, 1.5])
def test_push_by_hand_and_an_image_without_objects_adds_nothing(margin):
    two = _gt([[4.0, 8.0, 40.0, 30.0], [20.0, 22.0, 60.0, 62.0]])
    t = encode_embedding_targets(encode_corners([two, GroundTruth.empty()], GRID, 1))
    same = torch.full((2, 1, 16, 16), 0.7)
    pull, push = embedding_loss(same, same.clone(), t, margin)
    # identical means: relu(margin - 0) for both ordered pairs / (2 * 1); the empty image is ignored
    assert pull.item() == 0.0 and push.item() == pytest.approx(margin)
    # object 1's corners at 0.4: means 0 and 0.4 -> push = relu(1 - 0.4) = 0.6 (margin 1)
    tl, br = torch.zeros(2, 1, 16, 16), torch.zeros(2, 1, 16, 16)
    tl.view(2, -1)[0, t["ae_tl_inds"][0, 1]] = 0.4
    br.view(2, -1)[0, t["ae_br_inds"][0, 1]] = 0.4
    pull, push = embedding_loss(tl, br, t, 1.0)
    assert pull.item() == 0.0 and push.item() == pytest.approx(0.6)
    # tl 0 / br 0.4 on object 1: mean 0.2, pull = (0.2^2 + 0.2^2) / 2 objects = 0.04
    pull, _ = embedding_loss(torch.zeros(2, 1, 16, 16), br, t, 1.0)
    assert pull.item() == pytest.approx(0.04)


@pytest.mark.parametrize("cls", [AE1D, AE2D])
def test_pull_and_push_are_summed_over_the_images_of_the_batch(cls):
    """Two images, both with objects, worked by hand (margin 1; the embeddings on axis 0):

    image 0, two objects: tl/br 0.2/0.4 (mean 0.3, pull 0.1^2 + 0.1^2 = 0.02) and 1.0/1.0 (mean 1,
    pull 0): pull (0.02 + 0) / 2 = 0.01; the means are 0.7 apart: push 2 x relu(1 - 0.7) / (2 x 1) = 0.3.
    image 1, one object: tl/br 0.0/0.6 (mean 0.3): pull 0.3^2 + 0.3^2 = 0.18, push 0.
    The batch (one process's images, as CornerNet and mmdetection): pull 0.01 + 0.18 = 0.19, push 0.3
    (their mean over the images would be 0.095 and 0.15).
    """
    gts = [_gt([[4.0, 8.0, 40.0, 30.0], [20.0, 22.0, 60.0, 62.0]]), _gt([[8.0, 4.0, 33.0, 50.0]])]
    corners = encode_corners(gts, GRID, 1)
    t = encode_embedding_targets(corners)
    tl, br = torch.zeros(2, cls.dim, 16, 16), torch.zeros(2, cls.dim, 16, 16)
    for (i, k), (tl_value, br_value) in {(0, 0): (0.2, 0.4), (0, 1): (1.0, 1.0), (1, 0): (0.0, 0.6)}.items():
        tl.view(2, cls.dim, -1)[i, 0, t["ae_tl_inds"][i, k]] = tl_value
        br.view(2, cls.dim, -1)[i, 0, t["ae_br_inds"][i, k]] = br_value
    losses = cls(4, 1).loss({"tl_emb": tl, "br_emb": br}, t, corners)
    assert losses["pull"].item() == pytest.approx(0.19)
    assert losses["push"].item() == pytest.approx(0.3)


def _one_pair(tl_value: list[float], br_value: list[float]):
    """One tl at cell (1, 1) and one br at cell (5, 6) of a 8x8 map with given embeddings."""
    dim = len(tl_value)
    tl_map, br_map = torch.zeros(1, dim, 8, 8), torch.zeros(1, dim, 8, 8)
    tl_map[0, :, 1, 1] = torch.tensor(tl_value)
    br_map[0, :, 6, 5] = torch.tensor(br_value)
    cls = torch.zeros(1, 1, dtype=torch.int64)
    tl = Corners(torch.tensor([[0.9]]), cls, torch.tensor([[1 * 8 + 1]]), torch.tensor([[1.2]]), torch.tensor([[1.3]]))
    br = Corners(torch.tensor([[0.5]]), cls, torch.tensor([[6 * 8 + 5]]), torch.tensor([[5.4]]), torch.tensor([[6.1]]))
    return {"tl_emb": tl_map, "br_emb": br_map}, tl, br


@pytest.mark.parametrize("gap, accepted", [(0.4, True), (0.6, False), (0.5, True)])
def test_ae1d_threshold(gap, accepted):
    pred, tl, br = _one_pair([1.0], [1.0 + gap])
    scores = AE1D(4, 1).pair(pred, tl, br, Grid(32, 32, 8, 8))
    # accepted pairs score the arithmetic mean of the corner scores
    assert scores.item() == (pytest.approx(0.7) if accepted else -1.0)


@pytest.mark.parametrize("value, accepted", [(0.3, True), (0.4, False)])
def test_ae2d_uses_euclidean_distance(value, accepted):
    # both axes within 0.5, but the L2 distances are 0.42 and 0.57
    pred, tl, br = _one_pair([0.0, 0.0], [value, value])
    dist = embedding_distance(gather_at(pred["tl_emb"], tl.inds), gather_at(pred["br_emb"], br.inds))
    assert dist.item() == pytest.approx(math.sqrt(2) * value)
    scores = AE2D(4, 1).pair(pred, tl, br, Grid(32, 32, 8, 8))
    assert scores.item() == (pytest.approx(0.7) if accepted else -1.0)


def test_matching_embeddings_do_not_override_geometry_or_class():
    pred, tl, br = _one_pair([1.0], [1.0])
    grid = Grid(32, 32, 8, 8)
    assert AE1D(4, 1).pair(pred, tl, br, grid).item() == pytest.approx(0.7)
    inverted = Corners(br.scores, br.classes, br.inds, tl.xs - 1, tl.ys)  # br left of tl
    assert AE1D(4, 1).pair(pred, tl, inverted, grid).item() == -1.0
    other = Corners(br.scores, br.classes + 1, br.inds, br.xs, br.ys)
    assert AE1D(4, 2).pair(pred, tl, other, grid).item() == -1.0


def test_layers_dims_and_weights():
    assert AE1D(4, 1).tl_emb[-1].out_channels == 1 and AE2D(4, 1).br_emb[-1].out_channels == 2
    assert AE1D(4, 1).loss_weights == {"pull": 0.1, "push": 0.1}
    with pytest.raises(ValueError, match=r"matching\.threshold"):
        AE2D(4, 1, threshold=0.0)


@pytest.mark.parametrize("cls", [AE1D, AE2D])
@pytest.mark.parametrize(
    "tl_xy, br_xy, kept",
    [
        ((2.0, 3.0), (9.0, 12.0), True),
        ((9.0, 3.0), (2.0, 12.0), False),  # x inverted: br left of tl
        ((2.0, 12.0), (9.0, 3.0), False),  # y inverted: br above tl
        ((2.0, 3.0), (2.0, 12.0), False),  # same column: not strictly right
        ((2.0, 3.0), (9.0, 3.0), False),  # same row: not strictly below
    ],
)
def test_pairs_must_be_ordered_even_with_equal_embeddings(cls, tl_xy, br_xy, kept):
    def one(xy: tuple[float, float], score: float) -> Corners:
        cell = int(xy[1]) * 16 + int(xy[0])
        return Corners(
            torch.tensor([[score]]),
            torch.tensor([[0]]),
            torch.tensor([[cell]]),
            torch.tensor([[xy[0]]]),
            torch.tensor([[xy[1]]]),
        )

    matching = cls(8, 1)
    pred = {"tl_emb": torch.zeros(1, cls.dim, 16, 16), "br_emb": torch.zeros(1, cls.dim, 16, 16)}  # distance 0
    scores = matching.pair(pred, one(tl_xy, 0.8), one(br_xy, 0.6), GRID)
    assert float(scores[0, 0, 0]) == (pytest.approx(0.7) if kept else -1.0)
