"""Associative embedding (CornerNet, Law & Deng 2018): the shared base of ``ae1d`` and ``ae2d``.

Every corner predicts a D-dim embedding; training pulls an object's two embeddings together and
pushes different objects' means apart (margin 1); decoding keeps a pair only when its two
embeddings lie within ``threshold`` of each other. ``AE1D`` is CornerNet (D = 1); ``AE2D`` uses
D = 2 for a fair comparison with the 2-dim centripetal shift (paper Table 4).

Reusable by other strategies (e.g. a CenterNet-style centre-keypoint check on top of AE pairs):

* ``encode_embedding_targets(corners)`` -> ``{"ae_tl_inds", "ae_br_inds": [B, M] int64,
  "ae_mask": [B, M] bool}``: per-object flat corner cells, padded to the batch's max objects.
* ``embedding_loss(tl_emb, br_emb, targets, margin)`` -> ``(pull, push)`` scalars.
* ``embedding_distance(tl_emb, br_emb)`` -> [B, K, K] L2 distance of gathered embeddings.
* ``embedding_pairs_ok(tl_map, br_map, tl, br, threshold)`` -> ([B, K, K] bool, distances):
  same class, tl strictly above-left of br, and embeddings within ``threshold``.
* ``perfect_embeddings(targets, dim, height, width)`` -> ``(tl_map, br_map)`` [B, D, H, W]:
  object k's corners hold (2k, 0, ...), zero elsewhere (oracle / round-trip predictions).
* ``AssociativeEmbedding(Matching)``: prediction maps ``tl_emb``/``br_emb`` [B, D, H, W], loss
  keys ``pull``/``push``, arithmetic-mean pair score; subclasses may extend ``pair`` by calling
  ``super().pair`` and rejecting more pairs (score -1).
"""

from __future__ import annotations

import torch
from torch import Tensor

from cnet.losses import ae_pull_push
from cnet.matching.base import Matching
from cnet.ops import gather_at
from cnet.parts import CornerFeatures, kp_layer
from cnet.targets import CornerTargets
from cnet.types import Corners, Grid

# object k's perfect embedding; the spacing must exceed any sensible threshold (0.5)
_ORACLE_SPACING = 2.0


@torch.no_grad()
def encode_embedding_targets(corners: CornerTargets) -> dict[str, Tensor]:
    """Per-object corner cells of a batch, padded to M = max(1, max objects per image).

    Returns ``ae_tl_inds``/``ae_br_inds`` [B, M] int64 flat indices ``y * W + x`` of each
    object's tl/br cell (0 in padding) and ``ae_mask`` [B, M] bool (True for real objects).
    """
    b, width = len(corners.points), corners.tl_heat.shape[-1]
    m = max([1] + [len(p.labels) for p in corners.points])
    device = corners.tl_heat.device
    tl_inds = torch.zeros(b, m, dtype=torch.int64, device=device)
    br_inds = torch.zeros_like(tl_inds)
    mask = torch.zeros(b, m, dtype=torch.bool, device=device)
    for i, p in enumerate(corners.points):
        n = len(p.labels)
        tl_inds[i, :n] = p.tl_int[:, 1] * width + p.tl_int[:, 0]
        br_inds[i, :n] = p.br_int[:, 1] * width + p.br_int[:, 0]
        mask[i, :n] = True
    return {"ae_tl_inds": tl_inds, "ae_br_inds": br_inds, "ae_mask": mask}


def embedding_loss(
    tl_emb: Tensor, br_emb: Tensor, targets: dict[str, Tensor], margin: float = 1.0
) -> tuple[Tensor, Tensor]:
    """Pull and push of predicted embedding maps ``tl_emb``/``br_emb`` [B, D, H, W].

    ``ae_pull_push`` per image on the embeddings gathered at the objects' corner cells, *summed*
    over the images of the batch (one GPU's batch), as CornerNet and mmdetection do
    (docs/implementation_facts.md §5): the 0.1/0.1 weights were tuned for that scale.
    """
    tl_obj = gather_at(tl_emb, targets["ae_tl_inds"])  # [B, M, D]
    br_obj = gather_at(br_emb, targets["ae_br_inds"])
    mask = targets["ae_mask"]
    pulls, pushes = [], []
    for i in range(tl_emb.shape[0]):
        if mask[i].any():
            pull, push = ae_pull_push(tl_obj[i, mask[i]], br_obj[i, mask[i]], margin)
            pulls.append(pull)
            pushes.append(push)
    if not pulls:
        zero = (tl_emb.sum() + br_emb.sum()) * 0  # exact 0 that still reaches the layers
        return zero, zero
    return torch.stack(pulls).sum(), torch.stack(pushes).sum()


def embedding_distance(tl_emb: Tensor, br_emb: Tensor) -> Tensor:
    """L2 distance of every tl/br pair: tl_emb, br_emb [B, K, D] -> [B, K, K].

    For D = 1 this is CornerNet's |e_tl - e_br|.
    """
    return (tl_emb[:, :, None, :] - br_emb[:, None, :, :]).pow(2).sum(-1).sqrt()


def embedding_pairs_ok(
    tl_map: Tensor, br_map: Tensor, tl: Corners, br: Corners, threshold: float
) -> tuple[Tensor, Tensor]:
    """Which of the K x K pairs associative embedding accepts.

    tl_map, br_map: [B, D, H, W] predicted embeddings. Returns ``ok`` [B, K, K] (same class, br
    strictly right of and below tl, embedding distance <= ``threshold``) and the distances
    [B, K, K].
    """
    dist = embedding_distance(gather_at(tl_map, tl.inds), gather_at(br_map, br.inds))
    return Matching.geometric_validity(tl, br) & (dist <= threshold), dist


@torch.no_grad()
def perfect_embeddings(targets: dict[str, Tensor], dim: int, height: int, width: int) -> tuple[Tensor, Tensor]:
    """Oracle maps [B, D, H, W]: object k's two corners hold (2k, 0, ...), zero elsewhere.

    Different objects differ by >= 2 > threshold, so only true pairs survive. Objects that
    share a corner cell keep the later object's value (plain assignment, like the targets).
    """
    tl_inds, br_inds, mask = targets["ae_tl_inds"], targets["ae_br_inds"], targets["ae_mask"]
    b, m = tl_inds.shape
    ids = torch.arange(m, device=tl_inds.device, dtype=torch.float32) * _ORACLE_SPACING
    maps = []
    for inds in (tl_inds, br_inds):
        flat = torch.zeros(b, dim, height * width, device=inds.device)
        for i in range(b):
            flat[i, 0, inds[i, mask[i]]] = ids[mask[i]]
        maps.append(flat.reshape(b, dim, height, width))
    return maps[0], maps[1]


class AssociativeEmbedding(Matching):
    """Associative-embedding matching with D-dim embeddings (CornerNet).

    Subclasses fix the embedding dimension D with the class attribute ``dim``.

    Args:
        in_channels: channels of the (adapted) corner feature.
        num_classes: number of object classes (unused by the layers, kept for the interface).
        pull_weight, push_weight: loss weights (mmdet CornerNet config and CornerNet: 0.1 each).
        margin: push margin between object means (1).
        threshold: largest L2 embedding distance of an accepted pair (CornerNet: 0.5).
    """

    dim: int  # embedding dimension D, set by each option

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        pull_weight: float = 0.1,
        push_weight: float = 0.1,
        margin: float = 1.0,
        threshold: float = 0.5,
    ) -> None:
        super().__init__(in_channels, num_classes)
        dim = self.dim
        if threshold <= 0 or margin <= 0:
            raise ValueError(f"matching.threshold and matching.margin must be > 0, got {threshold}, {margin}")
        self.margin, self.threshold = margin, threshold
        self._pull_weight, self._push_weight = pull_weight, push_weight
        self.tl_emb = kp_layer(in_channels, dim)
        self.br_emb = kp_layer(in_channels, dim)

    @property
    def loss_weights(self) -> dict[str, float]:
        return {"pull": self._pull_weight, "push": self._push_weight}

    def forward(self, feats: CornerFeatures) -> dict[str, Tensor]:
        return {"tl_emb": self.tl_emb(feats.tl), "br_emb": self.br_emb(feats.br)}

    def encode_targets(self, corners: CornerTargets, grid: Grid) -> dict[str, Tensor]:
        return encode_embedding_targets(corners)

    def loss(self, pred: dict[str, Tensor], targets: dict[str, Tensor], corners: CornerTargets) -> dict[str, Tensor]:
        pull, push = embedding_loss(pred["tl_emb"], pred["br_emb"], targets, self.margin)
        return {"pull": pull, "push": push}

    def targets_as_predictions(self, targets: dict[str, Tensor], corners: CornerTargets) -> dict[str, Tensor]:
        h, w = corners.tl_heat.shape[-2:]
        tl_map, br_map = perfect_embeddings(targets, self.dim, int(h), int(w))
        return {"tl_emb": tl_map, "br_emb": br_map}

    def pair(self, pred: dict[str, Tensor], tl: Corners, br: Corners, grid: Grid) -> Tensor:
        ok, _ = embedding_pairs_ok(pred["tl_emb"], pred["br_emb"], tl, br, self.threshold)
        scores = self.mean_score(tl, br, geometric=False)  # CornerNet: (s_tl + s_br) / 2
        return torch.where(ok, scores, torch.full_like(scores, -1.0))
