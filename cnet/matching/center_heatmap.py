"""CenterNet's matching (Duan et al. 2019, "Keypoint Triplets"; paper Table 4, "center prediction").

CornerNet's corners with 1-dim associative embeddings, plus a centre-keypoint heatmap predicted
from centre-pooled backbone features, with sub-cell centre offsets.
Targets (output-map units): a Gaussian at the centre cell floor((tl + br) / 2) of each box, sized
like the corners' (``gaussian_radius`` on the box size in cells, max-merge), and the centre's
sub-cell offset at that cell.
Pairing (docs/implementation_facts.md §11): a pair first passes the associative-embedding rule (same
class, br right of and below tl, |e_tl - e_br| <= threshold); it is then kept only if one of the
top-k centre keypoints *of its class* lies strictly inside its central region
    x in ( ((n+1) x1 + (n-1) x2) / 2n , ((n-1) x1 + (n+1) x2) / 2n ),  same for y,
with n = 3 for boxes of area <= 22500 input px^2 and n = 5 otherwise; its score becomes
(2 * (s_tl + s_br) / 2 + s_center) / 3 with the best such centre's score, and -1 otherwise.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from cnet.center_pool import CenterPool
from cnet.losses import corner_focal_loss, masked_smooth_l1
from cnet.matching.embedding import AssociativeEmbedding, embedding_pairs_ok
from cnet.ops import heat_to_logit
from cnet.parts import CornerFeatures, init_heatmap_bias, kp_layer
from cnet.peaks import top_keypoints
from cnet.targets import CornerTargets, draw_gaussian, gaussian_radius
from cnet.types import Corners, Grid


@torch.no_grad()
def encode_center_targets(corners: CornerTargets, grid: Grid, min_overlap: float = 0.3) -> dict[str, Tensor]:
    """Centre-keypoint targets of a batch, from the shared per-object corner points.

    Returns ``ct_heat`` [B, C, H, W] (Gaussian max-merged per class, 1 exactly at centre cells),
    ``ct_off`` [B, 2, H, W] sub-cell offsets (x, y) at the centre cells (a later object
    overwrites an earlier one at the same cell) and ``ct_mask`` [B, 1, H, W] (1.0 at cells
    holding a centre of any class).
    """
    b, c = len(corners.points), corners.tl_heat.shape[1]
    device = corners.tl_heat.device
    ct_heat = torch.zeros(b, c, grid.out_h, grid.out_w, device=device)
    ct_off = torch.zeros(b, 2, grid.out_h, grid.out_w, device=device)
    limit = torch.tensor([grid.out_w - 1, grid.out_h - 1], device=device)
    for i, p in enumerate(corners.points):
        if len(p.labels) == 0:
            continue
        ct_int = p.center.floor().long().clamp(min=0).minimum(limit)  # [N, 2] (x, y) cell
        size = (p.br - p.tl).ceil()  # [N, 2] (w, h) in cells, as for the corners
        for k in range(len(p.labels)):
            radius = max(0, int(gaussian_radius(float(size[k, 1]), float(size[k, 0]), min_overlap)))
            draw_gaussian(ct_heat[i, int(p.labels[k])], int(ct_int[k, 0]), int(ct_int[k, 1]), radius)
        ct_off[i, :, ct_int[:, 1], ct_int[:, 0]] = (p.center - ct_int).T
    ct_mask = (ct_heat == 1).any(dim=1, keepdim=True).float()
    return {"ct_heat": ct_heat, "ct_off": ct_off, "ct_mask": ct_mask}


def center_keypoints(ct_heat: Tensor, ct_off: Tensor, k: int, kernel: int = 3) -> Corners:
    """Top-k centre keypoints: ct_heat [B, C, H, W] logits, ct_off [B, 2, H, W] -> Corners [B, Kc].

    sigmoid -> k x k local maxima -> top-k over classes and cells; position = cell + offset
    (output-map units), class = heatmap channel.
    """
    return Corners(*top_keypoints(ct_heat.sigmoid(), ct_off, k, kernel))


def center_region_scores(
    tl: Corners,
    br: Corners,
    centers: Corners,
    grid: Grid,
    area_threshold: float,
    n_small: float,
    n_large: float,
) -> Tensor:
    """Best same-class centre score inside each pair's central region, -1 where none: [B, K, K].

    The region of box (x1, y1, x2, y2), in input pixels, spans ((n+1)x1 + (n-1)x2) / 2n to
    ((n-1)x1 + (n+1)x2) / 2n in x (same in y); n = n_small if the box area <= area_threshold,
    else n_large. Centres must lie strictly inside. Only the S (top-left corner, centre) couples
    of one class are tested, each against the K bottom-right corners ([S, K], not [B, K, K, Kc]).
    """
    rx, ry = grid.ratio_x, grid.ratio_y
    x1, y1 = tl.xs[:, :, None] * rx, tl.ys[:, :, None] * ry  # [B, K, 1]
    x2, y2 = br.xs[:, None, :] * rx, br.ys[:, None, :] * ry  # [B, 1, K]
    area = (x2 - x1) * (y2 - y1)  # [B, K, K]
    n = torch.where(area <= area_threshold, n_small, n_large)
    lx, hx = ((n + 1) * x1 + (n - 1) * x2) / (2 * n), ((n - 1) * x1 + (n + 1) * x2) / (2 * n)
    ly, hy = ((n + 1) * y1 + (n - 1) * y2) / (2 * n), ((n - 1) * y1 + (n + 1) * y2) / (2 * n)
    b, k = lx.shape[:2]
    same_class = tl.classes[:, :, None] == centers.classes[:, None, :]  # [B, K, Kc]
    bi, ti, ci = same_class.nonzero(as_tuple=True)  # [S] each: image, top-left corner, centre
    cx, cy = (centers.xs * rx)[bi, ci, None], (centers.ys * ry)[bi, ci, None]  # [S, 1]
    row = bi * k + ti  # [S] the couple's row of the [B K, K] pair layout
    # index_select and index_reduce_: unlike [bi, ti] indexing and scatter_reduce_, no thread hand-off
    lx, hx, ly, hy = (t.reshape(b * k, k).index_select(0, row) for t in (lx, hx, ly, hy))  # [S, K]
    inside = (cx > lx) & (cx < hx) & (cy > ly) & (cy < hy)  # [S, K]
    ct_scores = torch.where(inside, centers.scores[bi, ci, None], -1.0)  # [S, K]
    best = ct_scores.new_full((b * k, k), -1.0)  # row = image * K + top-left corner, column = bottom-right
    with warnings.catch_warnings():  # "index_reduce() is in beta"
        warnings.simplefilter("ignore", UserWarning)
        best.index_reduce_(0, row, ct_scores, "amax")
    return best.reshape(b, k, k)


class CenterHeatmap(AssociativeEmbedding):
    """CornerNet's 1-dim associative embedding + CenterNet's centre keypoints (Table 4).

    Args:
        in_channels: channels of the corner / backbone features.
        num_classes: channels of the centre heatmap.
        pool_channels: width of the centre-pool branches (CenterNet: 128).
        pull_weight, push_weight: AE loss weights (CornerNet/CenterNet: 0.1 each).
        margin: AE push margin (1).
        threshold: largest |e_tl - e_br| of an accepted pair (CornerNet: 0.5).
        center_det_weight: weight of the centre focal loss (CenterNet: 1).
        center_off_weight: weight of the centre offset loss (CenterNet: 1).
        min_overlap: IoU that sizes the centre Gaussians (the corners' rule: 0.3).
        center_topk: centre keypoints decoded per image (CenterNet ``top_k``: 70).
        area_threshold: box area in input pixels separating n_small from n_large (150^2).
        n_small, n_large: central-region scale n (region = middle 1/n of each side): 3 and 5.
    """

    dim = 1
    dense_terms = ("center_det",)

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        pool_channels: int = 128,
        pull_weight: float = 0.1,
        push_weight: float = 0.1,
        margin: float = 1.0,
        threshold: float = 0.5,
        center_det_weight: float = 1.0,
        center_off_weight: float = 1.0,
        min_overlap: float = 0.3,
        center_topk: int = 70,
        area_threshold: float = 22500.0,
        n_small: float = 3.0,
        n_large: float = 5.0,
    ) -> None:
        super().__init__(in_channels, num_classes, pull_weight, push_weight, margin, threshold)
        if n_small < 1 or n_large < 1:
            raise ValueError(f"matching.n_small/n_large must be >= 1, got {n_small}, {n_large}")
        if center_topk < 1:
            raise ValueError(f"matching.center_topk must be >= 1, got {center_topk}")
        self.min_overlap, self.center_topk = min_overlap, center_topk
        self.area_threshold, self.n_small, self.n_large = area_threshold, n_small, n_large
        self._center_det_weight, self._center_off_weight = center_det_weight, center_off_weight
        self.ct_pool = CenterPool(in_channels, pool_channels)
        self.ct_heat = kp_layer(in_channels, num_classes)
        self.ct_off = kp_layer(in_channels, 2)
        init_heatmap_bias(self.ct_heat)

    @property
    def loss_weights(self) -> dict[str, float]:
        return super().loss_weights | {
            "center_det": self._center_det_weight,
            "center_off": self._center_off_weight,
        }

    def forward(self, feats: CornerFeatures) -> dict[str, Tensor]:
        ct = self.ct_pool(feats.backbone)  # [B, C, H, W]; centres see the un-adapted feature
        return super().forward(feats) | {"ct_heat": self.ct_heat(ct), "ct_off": self.ct_off(ct)}

    def encode_targets(self, corners: CornerTargets, grid: Grid) -> dict[str, Tensor]:
        return super().encode_targets(corners, grid) | encode_center_targets(corners, grid, self.min_overlap)

    def loss(self, pred: dict[str, Tensor], targets: dict[str, Tensor], corners: CornerTargets) -> dict[str, Tensor]:
        det = corner_focal_loss(pred["ct_heat"], targets["ct_heat"])
        off = masked_smooth_l1(pred["ct_off"], targets["ct_off"], targets["ct_mask"], min_norm=1)
        return super().loss(pred, targets, corners) | {"center_det": det, "center_off": off}

    def targets_as_predictions(self, targets: dict[str, Tensor], corners: CornerTargets) -> dict[str, Tensor]:
        ct_logits = heat_to_logit(targets["ct_heat"])
        return super().targets_as_predictions(targets, corners) | {
            "ct_heat": ct_logits,
            "ct_off": targets["ct_off"],
        }

    def pair(self, pred: dict[str, Tensor], tl: Corners, br: Corners, grid: Grid) -> Tensor:
        ok, _ = embedding_pairs_ok(pred["tl_emb"], pred["br_emb"], tl, br, self.threshold)
        centers = center_keypoints(pred["ct_heat"], pred["ct_off"], self.center_topk)
        ct_score = center_region_scores(
            tl, br, centers, grid, self.area_threshold, self.n_small, self.n_large
        )  # [B, K, K], -1 where no centre
        box_score = self.mean_score(tl, br, geometric=False)  # CornerNet: (s_tl + s_br) / 2
        scores = (2 * box_score + ct_score) / 3
        keep = ok & (ct_score >= 0)
        return torch.where(keep, scores, torch.full_like(scores, -1.0))
