"""Loss functions shared by the corner detector and its components (pure, unweighted)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def corner_focal_loss(pred_logits: Tensor, gt_heat: Tensor, alpha: float = 2.0, beta: float = 4.0) -> Tensor:
    """CornerNet's penalty-reduced focal loss on a heatmap.

    pred_logits, gt_heat: [B, C, H, W]. Positives are cells with gt == 1; negatives are weighted
    by (1 - gt)^beta so cells near a corner are penalised less. Normalised by max(1, #positives)
    over the whole batch. Log-sigmoid keeps it finite for saturated logits.
    """
    p = pred_logits.sigmoid()
    log_p = F.logsigmoid(pred_logits)
    log_1mp = F.logsigmoid(-pred_logits)
    pos = gt_heat.eq(1).to(p.dtype)
    pos_loss = -log_p * (1 - p) ** alpha * pos
    neg_loss = -log_1mp * p**alpha * (1 - gt_heat) ** beta  # zero at gt == 1
    return (pos_loss.sum() + neg_loss.sum()) / pos.sum().clamp(min=1)


def masked_smooth_l1(pred: Tensor, target: Tensor, mask: Tensor, beta: float = 1.0, min_norm: float = 0.0) -> Tensor:
    """SmoothL1 summed over cells where ``mask`` is 1, divided by the number of such cells.

    pred, target: [B, D, H, W]; mask: [B, 1, H, W]. With ``min_norm=0`` and an empty mask the
    loss is exactly 0 (mmdet's avg_factor + eps); ``min_norm=1`` is CornerNet's max(1, n).
    """
    loss = F.smooth_l1_loss(pred, target, reduction="none", beta=beta) * mask
    n = mask.sum()
    denom = n.clamp(min=min_norm) + torch.finfo(loss.dtype).eps
    return loss.sum() / denom


def ae_pull_push(tl_emb: Tensor, br_emb: Tensor, margin: float = 1.0) -> tuple[Tensor, Tensor]:
    """Associative-embedding pull and push of one image (CornerNet).

    tl_emb, br_emb: [N, D] embeddings of each object's two corners. Pull draws both to their mean;
    push separates object means by at least ``margin`` (L2 distance for D > 1, |.| for D = 1).
    N = 0 gives (0, 0); N = 1 gives push = 0.
    """
    n = tl_emb.shape[0]
    zero = tl_emb.sum() * 0
    if n == 0:
        return zero, zero
    mean = (tl_emb + br_emb) / 2  # [N, D]
    pull = (((tl_emb - mean) ** 2).sum(-1) + ((br_emb - mean) ** 2).sum(-1)).sum() / n
    if n == 1:
        return pull, zero
    diff = mean[:, None, :] - mean[None, :, :]  # [N, N, D]
    # eps keeps the sqrt differentiable when two means coincide
    dist = diff.abs().squeeze(-1) if mean.shape[1] == 1 else (diff.pow(2).sum(-1) + 1e-12).sqrt()
    off_diag = ~torch.eye(n, dtype=torch.bool, device=mean.device)
    push = F.relu(margin - dist)[off_diag].sum() / (n * (n - 1))
    return pull, push
